// Command upready measures how long `switchboard up` takes to print its
// ready line, for a list of node counts: each run starts the binary on a
// fresh state directory (`--apiserver-port 0`), timestamps every line it
// prints until "switchboard is up", then interrupts it, times the shutdown
// and runs `down` on the directory. With -restart it also times a second
// `up` on the same state directory (a restart: etcd has the objects, the
// nodes exist).
//
// With -idle it also measures, that long after the ready line, the memory
// of the whole process tree (`up` and what it started: the cluster DNS
// process, pods' processes), per process and in total, as RSS and as PSS
// (shared pages split, so the total adds up); with -heap DIR it runs `up`
// with --profiling and saves the API server's heap profile (the whole
// process's: kube-apiserver, etcd, controllers, proxies share one heap)
// at that moment, for `go tool pprof`.
//
//	go build -o /tmp/sb ./cmd/switchboard
//	go run ./bench/upready -switchboard /tmp/sb -nodes 1,3,100 -runs 3
//	go run ./bench/upready -switchboard /tmp/sb -nodes 2 -idle 60s -heap /tmp/heap
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/switchboard/switchboard/bench/measure"
)

func main() {
	bin := flag.String("switchboard", "bin/switchboard", "switchboard binary to run")
	nodeList := flag.String("nodes", "1,3,100", "comma-separated node counts")
	runs := flag.Int("runs", 1, "runs per node count")
	restart := flag.Bool("restart", false, "also time a second `up` on the same state directory")
	timeout := flag.Duration("timeout", 15*time.Minute, "give up on one start after this long")
	verbose := flag.Bool("v", false, "print every line `up` prints, with its time since start")
	idle := flag.Duration("idle", 0, "measure the process tree's memory this long after the ready line (0: do not)")
	heap := flag.String("heap", "", "directory to save a heap profile of `up` in at the idle measurement (runs up with --profiling)")
	flag.Parse()
	if *heap != "" && *idle == 0 {
		log.Fatal("-heap needs -idle")
	}
	opts := options{timeout: *timeout, verbose: *verbose, idle: *idle, heapDir: *heap}

	var counts []int
	for _, s := range strings.Split(*nodeList, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			log.Fatalf("-nodes %q: want positive integers", *nodeList)
		}
		counts = append(counts, n)
	}
	fmt.Printf("%-6s %-8s %12s %12s %10s\n", "nodes", "start", "ready", "stop", "peak RSS")
	for _, n := range counts {
		var fresh, again []time.Duration
		for range *runs {
			dir, err := os.MkdirTemp("", "upready-")
			if err != nil {
				log.Fatal(err)
			}
			r, err := start(*bin, n, dir, opts)
			if err != nil {
				remove(*bin, dir)
				log.Fatalf("%d nodes: %v", n, err)
			}
			fmt.Printf("%-6d %-8s %12s %12s %10s\n", n, "fresh", r.ready.Round(time.Millisecond), r.stop.Round(time.Millisecond), r.peakRSS)
			fmt.Print(r.idle)
			fresh = append(fresh, r.ready)
			if *restart {
				r, err := start(*bin, n, dir, opts)
				if err != nil {
					remove(*bin, dir)
					log.Fatalf("%d nodes, restart: %v", n, err)
				}
				fmt.Printf("%-6d %-8s %12s %12s %10s\n", n, "restart", r.ready.Round(time.Millisecond), r.stop.Round(time.Millisecond), r.peakRSS)
				fmt.Print(r.idle)
				again = append(again, r.ready)
			}
			remove(*bin, dir)
		}
		if *runs > 1 {
			fmt.Printf("%-6d %-8s %12s (median of %d)\n", n, "fresh", median(fresh).Round(time.Millisecond), len(fresh))
			if *restart {
				fmt.Printf("%-6d %-8s %12s (median of %d)\n", n, "restart", median(again).Round(time.Millisecond), len(again))
			}
		}
	}
}

type options struct {
	timeout, idle time.Duration
	verbose       bool
	heapDir       string
}

type result struct {
	ready, stop time.Duration
	peakRSS     string
	// idle is the idle measurement's report, empty without -idle.
	idle string
}

// start runs one `up` until its ready line (and the idle measurement),
// then interrupts it.
func start(bin string, nodes int, dir string, o options) (result, error) {
	args := []string{"--nodes", strconv.Itoa(nodes)}
	if o.heapDir != "" {
		args = append(args, "--profiling")
	}
	u, err := measure.StartUp(bin, dir, args, o.timeout, o.verbose)
	if err != nil {
		return result{}, err
	}
	r := result{ready: u.Ready}
	if o.idle > 0 {
		time.Sleep(o.idle)
		r.idle = idleReport(u.Cmd.Process.Pid, nodes, o.idle)
		if o.heapDir != "" {
			path := filepath.Join(o.heapDir, fmt.Sprintf("heap-%dnodes.pb.gz", nodes))
			if err := saveHeap(u.Kubeconfig, path); err != nil {
				u.Stop()
				return result{}, err
			}
			r.idle += fmt.Sprintf("  heap profile: %s (go tool pprof -top -sample_index=inuse_space %s)\n", path, path)
		}
	}
	r.peakRSS = measure.MB(measure.Status(u.Cmd.Process.Pid, "VmHWM"))
	r.stop, err = u.Stop()
	return r, err
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// remove runs `down` on a run's state directory (a stopped `up` leaves the
// data plane serving: the cluster DNS process, the namespaces and rules),
// then deletes the directory.
func remove(bin, dir string) {
	if out, err := exec.Command(bin, "down", "--state-dir", dir).CombinedOutput(); err != nil {
		log.Printf("switchboard down --state-dir %s: %v\n%s", dir, err, out)
	}
	os.RemoveAll(dir)
}

// idleReport measures the memory of up's process tree: one line per
// process (RSS, its anonymous part, PSS) and the totals.
func idleReport(pid, nodes int, after time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "  idle %s after ready, %d nodes: process tree of up (pid %d)\n", after, nodes, pid)
	fmt.Fprintf(&b, "  %8s %-28s %10s %10s %10s\n", "pid", "process", "RSS", "anon", "PSS")
	var rss, anon, pss int
	for _, p := range measure.Tree(pid) {
		r, a, s := measure.Status(p, "VmRSS"), measure.Status(p, "RssAnon"), measure.PSS(p)
		fmt.Fprintf(&b, "  %8d %-28s %10s %10s %10s\n", p, processName(p), measure.MB(r), measure.MB(a), measure.MB(s))
		rss, anon, pss = rss+measure.KB(r), anon+measure.KB(a), pss+measure.KB(s)
	}
	kb := func(n int) string { return measure.MB(strconv.Itoa(n) + " kB") }
	fmt.Fprintf(&b, "  %8s %-28s %10s %10s %10s\n", "", "total", kb(rss), kb(anon), kb(pss))
	return b.String()
}

// processName is a process's argv[0] (the linked programs and the cluster
// DNS process are this binary under another name).
func processName(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return "?"
	}
	name, _, _ := strings.Cut(string(b), "\x00")
	if len(name) > 28 {
		name = "..." + name[len(name)-25:]
	}
	return name
}

// saveHeap saves the API server's /debug/pprof/heap (up runs it with
// --profiling) to path.
func saveHeap(kubeconfig, path string) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	data, err := c.CoreV1().RESTClient().Get().AbsPath("/debug/pprof/heap").DoRaw(context.Background())
	if err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}
