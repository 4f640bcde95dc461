package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/switchboard/switchboard/proxy/snapshot"
)

// nftCacheWalk replays iptables-nft-restore's (1.8.x) list of the chains a
// --noflush input names (nft-cache.c, cache_chain_list_insert): each chain
// and jump target of each line is looked up, or inserted, after a walk
// from the smallest name. It returns the steps walked and the lines read.
func nftCacheWalk(text string) (steps, lines int) {
	var list []string // sorted
	visit := func(name string) {
		i, found := slices.BinarySearch(list, name)
		steps += i
		if !found {
			list = slices.Insert(list, i, name)
		}
	}
	for l := range strings.Lines(text) {
		lines++
		f := strings.Fields(l)
		switch {
		case len(f) == 0 || f[0] == "COMMIT" || strings.HasPrefix(f[0], "*"):
			if f != nil && strings.HasPrefix(f[0], "*") {
				list = nil
			}
		case strings.HasPrefix(f[0], ":"):
			visit(f[0][1:])
		case f[0] == "-A" || f[0] == "-X":
			visit(f[1])
			if j := slices.Index(f, "-j"); j > 0 && strings.HasPrefix(f[j+1], ChainPrefix) {
				visit(f[j+1])
			}
		}
	}
	return steps, lines
}

// TestFullTextOrderKeepsIPTablesNFTLinear: a full sync of 2,000 Services ×
// 10 endpoints, with stale chains of gone Services and endpoints, costs
// iptables-nft's chain list a few steps per line, where declaring every
// chain first (kube-proxy's order) costs thousands. The order is also
// valid: every chain is declared before a line uses it, and a stale chain
// is deleted only after every chain that jumped to it was flushed.
func TestFullTextOrderKeepsIPTablesNFTLinear(t *testing.T) {
	var services []Service
	var stale []string
	for i := range 2000 {
		key := snapshot.ServiceKey{Namespace: "bench", Name: fmt.Sprintf("s%d", i)}
		sp := &snapshot.ServicePort{Key: snapshot.PortKey{ServiceKey: key, Port: "http", Protocol: v1.ProtocolTCP}, Protocol: v1.ProtocolTCP, Port: 80,
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})}, NodePort: int32(30000 + i), ExternalLocal: true}
		for e := range 10 {
			sp.Endpoints = append(sp.Endpoints, snapshot.Endpoint{Addr: netip.AddrFrom4([4]byte{10, 244, byte(e), byte(i)}), Port: 8080, Ready: true, Serving: true, Local: e%2 == 0})
		}
		s := Translate([]*snapshot.ServicePort{sp}, true, Options{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}})
		if i%10 == 0 {
			// Gone: its chains are stale.
			for _, c := range s.Chains {
				stale = append(stale, c.Name)
			}
			continue
		}
		stale = append(stale, endpointChain(key, key.String()+":http", "tcp", netip.MustParseAddrPort("10.245.0.1:8080")))
		services = append(services, s)
	}
	stale = append(stale, "SWB-SVC-OLDNAMING0000000", "SWB-SEP-OLDNAMING0000000")
	text, _ := FullText(true, []netip.Addr{netip.MustParseAddr("10.0.1.1")}, nil, services, stale)
	steps, lines := nftCacheWalk(string(text))
	t.Logf("%d lines, %d steps (%.1f per line)", lines, steps, float64(steps)/float64(lines))
	if steps > 20*lines {
		t.Errorf("iptables-nft walks %d steps for %d lines: quadratic", steps, lines)
	}

	// Validity, per table: declared before used; deleted after the
	// chains jumping to it were flushed (declared) and never used again.
	declared, deleted := map[string]bool{}, map[string]bool{}
	jumpsTo := map[string][]string{} // the existing rules: stale chains' parents
	for _, c := range stale {
		if g := groupOf(c); g != "" && strings.HasSuffix(c, "-SVC") {
			for _, d := range stale {
				if groupOf(d) == g && d != c {
					jumpsTo[d] = append(jumpsTo[d], c)
				}
			}
		}
	}
	for l := range strings.Lines(string(text)) {
		f := strings.Fields(l)
		switch {
		case strings.HasPrefix(f[0], "*"):
			declared, deleted = map[string]bool{}, map[string]bool{}
		case strings.HasPrefix(f[0], ":"):
			declared[f[0][1:]] = true
		case f[0] == "-A":
			if !declared[f[1]] || deleted[f[1]] {
				t.Fatalf("rule in a chain not declared or deleted: %s", l)
			}
			if j := slices.Index(f, "-j"); j > 0 && strings.HasPrefix(f[j+1], ChainPrefix) && (!declared[f[j+1]] || deleted[f[j+1]]) {
				t.Fatalf("jump to a chain not declared or deleted: %s", l)
			}
		case f[0] == "-X":
			for _, p := range jumpsTo[f[1]] {
				if !declared[p] {
					t.Fatalf("%s deleted before %s, which jumps to it, was flushed", f[1], p)
				}
			}
			deleted[f[1]] = true
		}
	}
	for _, c := range stale {
		if !deleted[c] {
			t.Errorf("stale chain %s not deleted", c)
		}
	}

	// The same chains and rules declared first, as kube-proxy writes
	// them: the walk the order avoids.
	var b strings.Builder
	b.WriteString("*nat\n")
	for _, s := range services {
		for _, c := range s.Chains {
			b.WriteString(":" + c.Name + " - [0:0]\n")
		}
	}
	for _, s := range services {
		for _, c := range s.Chains {
			for _, r := range c.Rules {
				b.WriteString("-A " + c.Name + " " + r + "\n")
			}
		}
	}
	if naive, n := nftCacheWalk(b.String()); naive < 100*n {
		t.Errorf("declare-first order walks only %d steps for %d lines: the replay does not model the cost", naive, n)
	}
}
