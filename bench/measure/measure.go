// Package measure holds what the benchmark programs under bench/ share:
// reading a process's memory and CPU time from /proc, and spreading setup
// work over goroutines.
package measure

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Status returns one field of /proc/PID/status (pid 0: this process), e.g.
// Status(pid, "VmRSS") = "96232 kB", or "?" when it cannot be read.
func Status(pid int, field string) string {
	path := "/proc/self/status"
	if pid != 0 {
		path = fmt.Sprintf("/proc/%d/status", pid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	return "?"
}

// MB renders a /proc status size ("96232 kB") in megabytes.
func MB(kB string) string {
	var n int
	if _, err := fmt.Sscan(kB, &n); err != nil {
		return "?"
	}
	return fmt.Sprintf("%.1f MB", float64(n)/1024)
}

// Mem is a process's resident memory split by kind, rendered in MB: Anon
// (heap, stacks: what the program allocates) and File (mapped executable
// and libraries), from /proc/PID/status.
type Mem struct{ RSS, Anon, File string }

// Memory reads a process's RSS, RssAnon and RssFile (pid 0: this process).
func Memory(pid int) Mem {
	return Mem{RSS: MB(Status(pid, "VmRSS")), Anon: MB(Status(pid, "RssAnon")), File: MB(Status(pid, "RssFile"))}
}

// CPUTime is a process's user plus system time from /proc/PID/stat.
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15 of the whole line, in clock ticks (USER_HZ = 100).
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

// Parallel calls f(0) ... f(n-1) from workers goroutines.
func Parallel(n, workers int, f func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				f(i)
			}
		})
	}
	wg.Wait()
}

// Table prints a side-by-side header, "metric" then one column per result
// named by name, and returns a function that prints one metric's row.
func Table[R any](labelWidth int, results []R, name func(R) string) func(metric string, value func(R) string) {
	fmt.Printf("%-*s", labelWidth, "metric")
	for _, r := range results {
		fmt.Printf("%18s", name(r))
	}
	fmt.Println()
	return func(metric string, value func(R) string) {
		fmt.Printf("%-*s", labelWidth, metric)
		for _, r := range results {
			fmt.Printf("%18s", value(r))
		}
		fmt.Println()
	}
}

// Tree returns pid and every process descending from it (children, their
// children, ...), read from /proc: what a program costs with the helper
// processes it started.
func Tree(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return []int{pid}
	}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], p)
	}
	tree := []int{pid}
	for i := 0; i < len(tree); i++ {
		tree = append(tree, children[tree[i]]...)
	}
	return tree
}

// KB returns a /proc size field ("96232 kB") in kB, 0 when unreadable.
func KB(field string) int {
	var n int
	fmt.Sscan(field, &n)
	return n
}

// PSS returns a process's proportional set size from
// /proc/PID/smaps_rollup ("96232 kB"): its resident memory with pages
// shared between processes (the same executable mapped by a parent and
// its children) split between them, so a tree's PSS adds up.
func PSS(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Pss:"); ok {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	return "?"
}
