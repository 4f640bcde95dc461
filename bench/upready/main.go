// Command upready measures how long `switchboard up` takes to print its
// ready line, for a list of node counts: each run starts the binary on a
// fresh state directory (`--apiserver-port 0`), timestamps every line it
// prints until "switchboard is up", then interrupts it and times the
// shutdown. With -restart it also times a second `up` on the same state
// directory (a restart: etcd has the objects, the nodes exist).
//
//	go build -o /tmp/sb ./cmd/switchboard
//	go run ./bench/upready -switchboard /tmp/sb -nodes 1,3,100 -runs 3
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/switchboard/switchboard/bench/measure"
)

func main() {
	bin := flag.String("switchboard", "bin/switchboard", "switchboard binary to run")
	nodeList := flag.String("nodes", "1,3,100", "comma-separated node counts")
	runs := flag.Int("runs", 1, "runs per node count")
	restart := flag.Bool("restart", false, "also time a second `up` on the same state directory")
	timeout := flag.Duration("timeout", 15*time.Minute, "give up on one start after this long")
	verbose := flag.Bool("v", false, "print every line `up` prints, with its time since start")
	flag.Parse()

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
			r, err := start(*bin, n, dir, *timeout, *verbose)
			if err != nil {
				os.RemoveAll(dir)
				log.Fatalf("%d nodes: %v", n, err)
			}
			fmt.Printf("%-6d %-8s %12s %12s %10s\n", n, "fresh", r.ready.Round(time.Millisecond), r.stop.Round(time.Millisecond), r.peakRSS)
			fresh = append(fresh, r.ready)
			if *restart {
				r, err := start(*bin, n, dir, *timeout, *verbose)
				if err != nil {
					os.RemoveAll(dir)
					log.Fatalf("%d nodes, restart: %v", n, err)
				}
				fmt.Printf("%-6d %-8s %12s %12s %10s\n", n, "restart", r.ready.Round(time.Millisecond), r.stop.Round(time.Millisecond), r.peakRSS)
				again = append(again, r.ready)
			}
			os.RemoveAll(dir)
		}
		if *runs > 1 {
			fmt.Printf("%-6d %-8s %12s (median of %d)\n", n, "fresh", median(fresh).Round(time.Millisecond), len(fresh))
			if *restart {
				fmt.Printf("%-6d %-8s %12s (median of %d)\n", n, "restart", median(again).Round(time.Millisecond), len(again))
			}
		}
	}
}

type result struct {
	ready, stop time.Duration
	peakRSS     string
}

// start runs one `up` until its ready line, then interrupts it.
func start(bin string, nodes int, dir string, timeout time.Duration, verbose bool) (result, error) {
	u, err := measure.StartUp(bin, dir, []string{"--nodes", strconv.Itoa(nodes)}, timeout, verbose)
	if err != nil {
		return result{}, err
	}
	r := result{ready: u.Ready, peakRSS: measure.MB(measure.Status(u.Cmd.Process.Pid, "VmHWM"))}
	r.stop, err = u.Stop()
	return r, err
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
