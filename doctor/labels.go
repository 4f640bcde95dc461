package doctor

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// labelMismatch says how one pod's labels come close to a selector without
// matching it. It exists because "the selector matches nothing" is almost
// always a typo, and naming the exact label turns a hunt into a one-line fix.
type labelMismatch struct {
	Pod string
	// Missing are selector keys the pod lacks entirely (no near key either).
	Missing []string
	// Near describes each selector entry that the pod nearly has.
	Near []string
	// score orders candidate pods: fewer, smaller differences first.
	score int
}

// nearMiss reports whether labels come within a typo of selector and how.
// A pod is a near miss when every selector entry is matched exactly or nearly
// (value or key within edit distance 2, a case difference, or key and value
// swapped), and at least one is not exact.
func nearMiss(pod string, selector, labels map[string]string) (labelMismatch, bool) {
	m := labelMismatch{Pod: pod}
	keys := slices.Sorted(maps.Keys(selector))
	// near counts entries within a typo; far counts entries with a wholly
	// different value or no such label. One far entry is still worth naming
	// when other entries match ("tier=backend" where "tier=frontend" was
	// wanted); a single-key selector with a different value is not a typo.
	near, far := 0, 0
	for _, k := range keys {
		want := selector[k]
		if got, ok := labels[k]; ok {
			switch {
			case got == want:
			case strings.EqualFold(got, want):
				near++
				m.Near = append(m.Near, fmt.Sprintf("label %s=%s differs from selector %s=%s only in case", k, got, k, want))
				m.score++
			case editDistance(got, want) <= 2:
				near++
				m.Near = append(m.Near, fmt.Sprintf("label %s=%s is a typo away from selector %s=%s", k, got, k, want))
				m.score += editDistance(got, want)
			default:
				far++
				m.Near = append(m.Near, fmt.Sprintf("label %s=%s, but the selector wants %s=%s", k, got, k, want))
				m.score += 5
			}
			continue
		}
		if got, ok := labels[want]; ok && got == k {
			near++
			m.Near = append(m.Near, fmt.Sprintf("label %s=%s has key and value swapped (selector wants %s=%s)", want, got, k, want))
			m.score += 2
			continue
		}
		if nk, ok := nearKey(k, want, labels); ok {
			near++
			m.Near = append(m.Near, fmt.Sprintf("label %s=%s has a key a typo away from selector %s=%s", nk, labels[nk], k, want))
			m.score += 1 + editDistance(strings.ToLower(nk), strings.ToLower(k))
			continue
		}
		far++
		m.Missing = append(m.Missing, k)
		m.Near = append(m.Near, fmt.Sprintf("label %s is missing (selector wants %s=%s)", k, k, want))
		m.score += 5
	}
	return m, near+far > 0 && far <= 1 && far < len(keys)
}

// nearKey finds a label whose key is a typo or case away from key and whose
// value matches the wanted value (or is itself near it).
func nearKey(key, want string, labels map[string]string) (string, bool) {
	best, bestD := "", 3
	for k, v := range labels {
		if k == key {
			continue
		}
		d := editDistance(strings.ToLower(k), strings.ToLower(key))
		if d <= 2 && (v == want || strings.EqualFold(v, want) || editDistance(v, want) <= 2) && d < bestD {
			best, bestD = k, d
		}
	}
	return best, best != ""
}

// editDistance is the optimal-string-alignment distance between a and b:
// insertions, deletions, substitutions and adjacent transpositions each cost
// one, so "ngnix" is one slip away from "nginx", not two. Label values are
// short (at most 63 characters), so a full matrix is cheap.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}

func formatSelector(sel map[string]string) string {
	parts := make([]string, 0, len(sel))
	for _, k := range slices.Sorted(maps.Keys(sel)) {
		parts = append(parts, k+"="+sel[k])
	}
	return strings.Join(parts, ",")
}
