// Command proxy benchmarks the node proxy's nftables backend: in a network
// namespace it creates, it programs N Services x M endpoints, then applies
// single endpoint changes (a pod replaced by one whose address sorts
// elsewhere; one endpoint added), and reports full-sync time, per-change
// times, the elements each change wrote, and the process's RSS.
//
//	go run ./bench/proxy [-services 5000] [-endpoints 10] [-changes 50]
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/switchboard/switchboard/bench/measure"
	"github.com/switchboard/switchboard/netnamespace"
	"github.com/switchboard/switchboard/proxy/nftables"
	"github.com/switchboard/switchboard/proxy/snapshot"
)

func main() {
	services := flag.Int("services", 5000, "number of Services")
	endpoints := flag.Int("endpoints", 10, "endpoints per Service")
	changes := flag.Int("changes", 50, "single-endpoint changes to time")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the full sync to this file")
	flag.Parse()
	profile = *cpuprofile
	if err := run(*services, *endpoints, *changes); err != nil {
		fmt.Fprintln(os.Stderr, "bench/proxy:", err)
		os.Exit(1)
	}
}

func addr4(n int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)})
}

func service(i, eps, gen int) []*snapshot.ServicePort {
	sp := &snapshot.ServicePort{
		Key:        snapshot.PortKey{ServiceKey: snapshot.ServiceKey{Namespace: "bench", Name: fmt.Sprintf("svc-%d", i)}, Port: "http", Protocol: v1.ProtocolTCP},
		Protocol:   v1.ProtocolTCP,
		Port:       80,
		ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
	}
	for j := range eps {
		sp.Endpoints = append(sp.Endpoints, snapshot.Endpoint{Addr: addr4(1<<20 + i*eps + j + gen*1000003%(1<<19)), Port: 8080, Ready: true, Serving: true})
	}
	return []*snapshot.ServicePort{sp}
}

var profile string

func run(nSvc, nEps, nChanges int) error {
	name := netnamespace.Unique("sbbench")
	path, del, err := netnamespace.Create(name)
	if err != nil {
		return err
	}
	defer del()
	// A run stopped with Ctrl-C or kill would skip the deferred delete and
	// leave its namespace (and the table in it) behind: delete it on the
	// way out. The process exits at once, closing its netlink sockets, so
	// nothing holds the namespace after that.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		sig := <-sigs
		del()
		fmt.Fprintf(os.Stderr, "bench/proxy: %v: removed network namespace %s\n", sig, name)
		os.Exit(130)
	}()
	k, err := nftables.New(nftables.Config{NetNS: path, NodeIPs: []netip.Addr{netip.MustParseAddr("192.168.0.1")},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return err
	}
	defer k.Close()
	all := map[snapshot.ServiceKey][]*snapshot.ServicePort{}
	for i := range nSvc {
		sps := service(i, nEps, 0)
		all[sps[0].Key.ServiceKey] = sps
	}
	snap := snapshot.New(all)
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return err
		}
		pprof.StartCPUProfile(f)
	}
	start := time.Now()
	if err := k.Sync(snap, snapshot.Changes{Full: true}); err != nil {
		return err
	}
	full := time.Since(start)
	if profile != "" {
		pprof.StopCPUProfile()
	}
	fmt.Printf("services=%d endpoints/service=%d\n", nSvc, nEps)
	fmt.Printf("full sync: %v\n", full.Round(time.Microsecond))

	// One endpoint replaced by a pod whose address sorts first (a
	// rollout: the list is sorted by address, as BuildService sorts it),
	// and one endpoint added (the Service moves to the next bucket). Each
	// is one transaction; the elements it wrote are counted.
	var replace, scale []time.Duration
	var replaceWritten, scaleWritten int
	sync := func(sps []*snapshot.ServicePort) (time.Duration, int, error) {
		key := sps[0].Key.ServiceKey
		snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{key: sps})
		start := time.Now()
		err := k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{key}})
		took := time.Since(start)
		w := k.Stats().LastWrite
		return took, w.Added + w.Deleted, err
	}
	for c := range nChanges {
		i := (c * 97) % nSvc
		sps := service(i, nEps, 0)
		eps := sps[0].Endpoints
		eps[len(eps)-1].Addr = netip.AddrFrom4([4]byte{10, 0, byte(c >> 8), byte(c)})
		slices.SortFunc(eps, func(a, b snapshot.Endpoint) int { return a.Addr.Compare(b.Addr) })
		took, n, err := sync(sps)
		if err != nil {
			return err
		}
		replace, replaceWritten = append(replace, took), replaceWritten+n
		// Put it back, so the next round starts from the same state.
		if _, _, err := sync(service(i, nEps, 0)); err != nil {
			return err
		}

		j := (c*89 + 13) % nSvc
		took, n, err = sync(service(j, nEps+1, 0))
		if err != nil {
			return err
		}
		scale, scaleWritten = append(scale, took), scaleWritten+n
		if _, _, err := sync(service(j, nEps, 0)); err != nil {
			return err
		}
	}
	report("one endpoint replaced", replace)
	fmt.Printf("  elements written per replacement: %.1f\n", float64(replaceWritten)/float64(max(1, len(replace))))
	report("one endpoint added (bucket move)", scale)
	fmt.Printf("  elements written per addition: %.1f\n", float64(scaleWritten)/float64(max(1, len(scale))))
	runtime.GC()
	fmt.Printf("process RSS: %s (peak %s)\n", measure.Status(0, "VmRSS"), measure.Status(0, "VmHWM"))
	out, err := netnamespace.Exec(name, "nft", "list", "ruleset")
	if err != nil {
		return err
	}
	fmt.Printf("ruleset lines: %d\n", strings.Count(out, "\n"))
	if os.Getenv("BENCH_DUMP") != "" {
		fmt.Print(out)
	}
	return nil
}

func report(what string, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	p := func(q float64) time.Duration { return d[min(len(d)-1, int(q*float64(len(d))))] }
	fmt.Printf("%s: n=%d median=%v p99=%v max=%v\n", what, len(d), p(0.5).Round(time.Microsecond), p(0.99).Round(time.Microsecond), d[len(d)-1].Round(time.Microsecond))
}
