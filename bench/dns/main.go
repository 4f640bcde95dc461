// Command dns benchmarks `switchboard dns` against CoreDNS's kubernetes
// plugin, in one run on one in-process control plane holding 1,000 ClusterIP
// Services x 9 endpoints plus 100 headless Services x 10 endpoints (Services
// and EndpointSlices as API objects). Each server runs as its own process on
// loopback with the same settings (CoreDNS with kubeadm's Corefile, with and
// without its cache) and is driven by dnsperf at saturation and at a fixed
// rate.
//
//	scripts/deps   # installs dnsperf
//	../shared/reference/build.sh /tmp/ref   # CoreDNS v1.15.0 as kubeadm runs it
//	go run ./bench/dns [-coredns /tmp/ref/coredns] [-duration 20s] [-baseline main=/tmp/sb-main,old=/tmp/sb-old]
//	go run ./bench/dns -flood 60000 -flood-rate 3000 -services 10 -headless 0 [-baseline /tmp/sb-main]
//
// The query mix, 100,000 queries in dnsperf's binary format, the table's
// heading printing each class's share. About half are queries as a stub or
// caching resolver sends them: 65% A of ClusterIP Services, 15% A
// of headless Services, 10% SRV of named ports, 10% names inside the zone
// that do not exist (NXDOMAIN); each in lower case (60%), in random
// DNS 0x20 case on every letter, zone included (20%), or with the Service
// and namespace labels capitalized as in My-Svc.Default.svc.cluster.local
// (20%); without EDNS0 (50%), or with an OPT record of buffer size 1232
// (25%), 4096 (15%) or 4096 with the DO bit (10%). The other half are
// getaddrinfo lookups as glibc sends them from a pod in namespace bench
// (search bench.svc.cluster.local svc.cluster.local cluster.local,
// ndots:5), A and AAAA for each search suffix in turn until one has the
// name: a Service's short name (40% of lookups: found at the first
// suffix, AAAA NODATA), a headless Service's (10%), "svc0042.bench" (20%:
// svc0042.bench.bench.svc.cluster.local NXDOMAIN, then found), and an
// external name such as api.github.com (30%: NXDOMAIN at all three
// suffixes; the name as typed, which then goes upstream, is left out: what
// forwarding costs is -flood's part).
//
// Saturation runs twice: without -v for QPS (dnsperf printing a line per
// query takes CPU from the shared cores), and with -v for latency.
// Latency percentiles come from dnsperf -v's per-query latencies; CPU per
// query is the server's utime+stime delta over the run divided by answered
// queries; RSS is VmRSS after the run, and its anonymous and file-backed
// parts (RssAnon, RssFile).
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"log"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/switchboard/switchboard/bench/measure"
	"github.com/switchboard/switchboard/controlplane"
)

const (
	ns   = "bench"
	zone = "cluster.local"
)

var (
	nClusterIP  = flag.Int("services", 1000, "ClusterIP Services")
	nClusterEPs = flag.Int("endpoints", 9, "endpoints per ClusterIP Service")
	nHeadless   = flag.Int("headless", 100, "headless Services")
	nHeadlessEP = flag.Int("headless-endpoints", 10, "endpoints per headless Service")
	duration    = flag.Duration("duration", 20*time.Second, "length of each dnsperf run")
	satClients  = flag.String("saturate", "-c 10 -T 2", "dnsperf flags for the saturation run (a deeper -q drops queries in socket buffers)")
	fixedQPS    = flag.Int("qps", 10000, "rate of the fixed-rate run")
	corednsBin  = flag.String("coredns", "coredns", "CoreDNS binary (v1.15.0, from ../shared/reference/build.sh DIR), a path or a name looked up in $PATH; skipped if missing")
	sbPrebuilt  = flag.String("binary", "", "switchboard binary to measure instead of building ./cmd/switchboard")
	sbBaseline  = flag.String("baseline", "", "other switchboard binaries (e.g. earlier commits') measured in the same run: comma-separated, each NAME=PATH or PATH (named \"baseline\")")
)

// run is one server under test.
type run struct {
	name string
	cmd  []string
	port int
}

// result is one dnsperf run against one server.
type result struct {
	qps      float64
	answered int64
	lost     int64
	p50, p99 time.Duration
	cpuPerQ  time.Duration
	// rss is VmRSS; anon and file its parts (RssAnon: heap, stacks, the
	// Go runtime's; RssFile: the binary's pages and other mapped files).
	rss, anon, file string
}

func main() {
	flag.Parse()
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := exec.LookPath("dnsperf"); err != nil {
		log.Fatal("dnsperf not found: run scripts/deps")
	}
	dir, err := os.MkdirTemp("", "sb-bench-dns-")
	must(err)
	defer os.RemoveAll(dir)

	sbBin := *sbPrebuilt
	if sbBin == "" {
		sbBin = filepath.Join(dir, "sbdns")
		log.Printf("building switchboard into %s", sbBin)
		build := exec.Command("go", "build", "-o", sbBin, "./cmd/switchboard")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		must(build.Run())
	}

	cp, err := controlplane.Start(ctx, controlplane.Config{StateDir: filepath.Join(dir, "cp"), APIServerPort: 0})
	must(err)
	defer stopControlPlane(cp, cancel)
	must(controlplane.StartHousekeeping(ctx, cp.RESTConfig))
	cfg := rest.CopyConfig(cp.RESTConfig)
	cfg.QPS, cfg.Burst = 2000, 4000
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	client := kubernetes.NewForConfigOrDie(cfg)

	t0 := time.Now()
	populate(ctx, client)
	log.Printf("created %d ClusterIP Services x %d endpoints and %d headless x %d in %v",
		*nClusterIP, *nClusterEPs, *nHeadless, *nHeadlessEP, time.Since(t0).Round(time.Millisecond))

	queries := filepath.Join(dir, "queries.bin")
	var mix map[string]int
	if *floodN == 0 {
		mix, err = writeQueries(queries, 100000)
		must(err)
	}

	kc := cp.KubeconfigPath
	// The saturation runs never leave the zone (every server gets the same
	// upstream all the same); the flood sends everything to an upstream
	// that never answers.
	upstream := "127.0.0.1:1"
	if *floodN > 0 {
		var stop func()
		upstream, stop = blackhole()
		defer stop()
	}
	var runs []run
	sbs := []struct{ name, bin string }{{"switchboard", sbBin}}
	for _, b := range strings.Split(*sbBaseline, ",") {
		if b == "" {
			continue
		}
		name, bin, ok := strings.Cut(b, "=")
		if !ok {
			name, bin = "baseline", b
		}
		sbs = append(sbs, struct{ name, bin string }{name, bin})
	}
	for _, sb := range sbs {
		port := freePort()
		runs = append(runs, run{name: sb.name, port: port, cmd: []string{sb.bin, "dns", "--kubeconfig", kc,
			"--listen", fmt.Sprintf("127.0.0.1:%d", port), "--upstream", upstream, "--health-listen", fmt.Sprintf("127.0.0.1:%d", freePort())}})
	}
	if coredns, err := exec.LookPath(*corednsBin); err == nil {
		for _, cached := range []bool{true, false} {
			name := "coredns kubeadm"
			if !cached {
				name = "coredns no cache"
			}
			port := freePort()
			cf := filepath.Join(dir, fmt.Sprintf("Corefile-%d", port))
			must(os.WriteFile(cf, []byte(corefile(port, kc, cached, upstream)), 0o644))
			runs = append(runs, run{name: name, port: port, cmd: []string{coredns, "-conf", cf}})
		}
	} else {
		log.Printf("CoreDNS %s not found (%v), measuring switchboard only", *corednsBin, err)
	}

	type row struct {
		name            string
		quiet, sat, fix result
	}
	var rows []row
	var floods []floodResult
	var names []string
	for _, r := range runs {
		logf, err := os.Create(filepath.Join(dir, strings.ReplaceAll(r.name, " ", "-")+".log"))
		must(err)
		c := exec.Command(r.cmd[0], r.cmd[1:]...)
		c.Stdout, c.Stderr = logf, logf
		must(c.Start())
		addr := fmt.Sprintf("127.0.0.1:%d", r.port)
		if err := waitAnswer(addr, 60*time.Second); err != nil {
			c.Process.Kill()
			logf.Close()
			b, _ := os.ReadFile(logf.Name())
			log.Fatalf("%s never answered: %v\n%s", r.name, err, b)
		}
		log.Printf("%s (pid %d) answers on %s", r.name, c.Process.Pid, addr)
		if *floodN > 0 {
			floods = append(floods, flood(c.Process.Pid, addr))
			names = append(names, r.name)
			c.Process.Kill()
			c.Wait()
			logf.Close()
			continue
		}
		quiet := drive(c.Process.Pid, addr, queries, false, strings.Fields(*satClients))
		log.Printf("%s saturation without -v: %.0f QPS", r.name, quiet.qps)
		sat := drive(c.Process.Pid, addr, queries, true, strings.Fields(*satClients))
		log.Printf("%s saturation: %.0f QPS p50 %v p99 %v", r.name, sat.qps, sat.p50, sat.p99)
		fix := drive(c.Process.Pid, addr, queries, true, []string{"-c", "10", "-T", "2", "-Q", strconv.Itoa(*fixedQPS)})
		log.Printf("%s at %d QPS: %.0f QPS p50 %v p99 %v", r.name, *fixedQPS, fix.qps, fix.p50, fix.p99)
		rows = append(rows, row{r.name, quiet, sat, fix})
		c.Process.Kill()
		c.Wait()
		logf.Close()
	}

	if *floodN > 0 {
		printFlood(names, floods)
		return
	}
	fmt.Printf("\n%d ClusterIP Services x %d endpoints + %d headless x %d; %v per run; query mix:\n",
		*nClusterIP, *nClusterEPs, *nHeadless, *nHeadlessEP, *duration)
	classes := slices.Sorted(maps.Keys(mix))
	for _, c := range classes {
		fmt.Printf("  %5.1f%%  %s\n", 100*float64(mix[c])/float64(sumCounts(mix)), c)
	}
	line := measure.Table(36, rows, func(r row) string { return r.name })
	sat := "sat (" + *satClients + ")"
	fix := fmt.Sprintf("%dk QPS", *fixedQPS/1000)
	line(sat+" QPS, no -v", func(r row) string { return fmt.Sprintf("%.0f", r.quiet.qps) })
	line(sat+" CPU/q, no -v", func(r row) string { return r.quiet.cpuPerQ.Round(100 * time.Nanosecond).String() })
	line(sat+" QPS", func(r row) string { return fmt.Sprintf("%.0f", r.sat.qps) })
	line(sat+" p50", func(r row) string { return r.sat.p50.Round(time.Microsecond).String() })
	line(sat+" p99", func(r row) string { return r.sat.p99.Round(time.Microsecond).String() })
	line(sat+" lost", func(r row) string { return strconv.FormatInt(r.sat.lost, 10) })
	line(sat+" CPU/query", func(r row) string { return r.sat.cpuPerQ.Round(100 * time.Nanosecond).String() })
	line(fix+" QPS", func(r row) string { return fmt.Sprintf("%.0f", r.fix.qps) })
	line(fix+" p50", func(r row) string { return r.fix.p50.Round(time.Microsecond).String() })
	line(fix+" p99", func(r row) string { return r.fix.p99.Round(time.Microsecond).String() })
	line(fix+" lost", func(r row) string { return strconv.FormatInt(r.fix.lost, 10) })
	line(fix+" CPU/query", func(r row) string { return r.fix.cpuPerQ.Round(100 * time.Nanosecond).String() })
	line("RSS (VmRSS after runs)", func(r row) string { return r.fix.rss })
	line("RssAnon after runs", func(r row) string { return r.fix.anon })
	line("RssFile after runs", func(r row) string { return r.fix.file })
}

// stopControlPlane stops the housekeeping controllers and the control plane,
// but waits for it only so long: an API server that takes minutes to shut
// down must not keep the benchmark from finishing once its table is out.
func stopControlPlane(cp *controlplane.ControlPlane, cancel context.CancelFunc) {
	cancel()
	stopped := make(chan struct{})
	go func() { cp.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(15 * time.Second):
		log.Printf("control plane still stopping after 15s; exiting anyway")
	}
}

// corefile is kubeadm's default Corefile, bound to loopback and free ports
// so it runs beside other servers, forwarding to upstream (kubeadm's is
// /etc/resolv.conf); cached=false drops the `cache 30` line.
func corefile(port int, kubeconfig string, cached bool, upstream string) string {
	cache := "    cache 30\n"
	if !cached {
		cache = ""
	}
	return fmt.Sprintf(`.:%d {
    bind 127.0.0.1
    errors
    health 127.0.0.1:%d {
       lameduck 5s
    }
    ready 127.0.0.1:%d
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
       kubeconfig %s
    }
    prometheus 127.0.0.1:%d
    forward . %s {
       max_concurrent 1000
    }
%s    loop
    reload
    loadbalance
}
`, port, freePort(), freePort(), kubeconfig, freePort(), upstream, cache)
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func clusterName(i int) string  { return fmt.Sprintf("svc%04d", i) }
func headlessName(i int) string { return fmt.Sprintf("hl%03d", i) }

// populate creates the Services and, since no EndpointSlice controller runs,
// their slices.
func populate(ctx context.Context, client kubernetes.Interface) {
	_, err := client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	must(err)
	ports := []v1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: v1.ProtocolTCP}}
	name, proto, port := "http", v1.ProtocolTCP, int32(8080)
	slicePorts := []discovery.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}}
	ready := true
	create := func(svc string, headless bool, eps, base int) {
		spec := v1.ServiceSpec{Ports: ports, Selector: map[string]string{"app": svc}}
		if headless {
			spec.ClusterIP = v1.ClusterIPNone
		}
		_, err := client.CoreV1().Services(ns).Create(ctx, &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: svc}, Spec: spec}, metav1.CreateOptions{})
		must(err)
		slice := &discovery.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: svc + "-bench", Labels: map[string]string{discovery.LabelServiceName: svc}},
			AddressType: discovery.AddressTypeIPv4,
			Ports:       slicePorts,
		}
		for p := range eps {
			i := base + p
			slice.Endpoints = append(slice.Endpoints, discovery.Endpoint{
				Addresses:  []string{fmt.Sprintf("10.%d.%d.%d", 100+i/65536, (i/256)%256, i%256)},
				Conditions: discovery.EndpointConditions{Ready: &ready},
				TargetRef:  &v1.ObjectReference{Kind: "Pod", Namespace: ns, Name: fmt.Sprintf("%s-p%02d", svc, p)},
			})
		}
		_, err = client.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{})
		must(err)
	}
	measure.Parallel(*nClusterIP, 32, func(s int) { create(clusterName(s), false, *nClusterEPs, s**nClusterEPs) })
	base := *nClusterIP * *nClusterEPs
	measure.Parallel(*nHeadless, 32, func(s int) { create(headlessName(s), true, *nHeadlessEP, base+s**nHeadlessEP) })
}

// writeQueries writes n dnsperf queries in the benchmark's mix (see the
// package comment) in dnsperf's binary input format (-B: each query a
// two-byte length and the message), since the text format cannot vary case
// or EDNS0 per query; shuffled with a fixed seed so every server sees the
// same sequence. It returns each class's share, for the table's heading.
func writeQueries(path string, n int) (map[string]int, error) {
	rng := rand.New(rand.NewPCG(1, 2))
	var b []byte
	count := map[string]int{}
	add := func(class, name string, qtype uint16, edns int, do bool) {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		m.Id = uint16(rng.Uint32())
		if edns > 0 {
			m.SetEdns0(uint16(edns), do)
		}
		w, err := m.Pack()
		must(err)
		b = binary.BigEndian.AppendUint16(b, uint16(len(w)))
		b = append(b, w...)
		count[class]++
	}
	for total := 0; total < n; total = sumCounts(count) {
		// 78% of draws are direct queries, about half the queries since a
		// lookup sends 3.6 on average.
		if rng.IntN(100) < 78 {
			// A query as a stub or caching resolver sends it: the
			// in-zone mix, in some case, with or without EDNS0.
			var name string
			qtype := dns.TypeA
			switch x := rng.IntN(100); {
			case x < 65:
				name = fmt.Sprintf("%s.%s.svc.%s.", clusterName(rng.IntN(*nClusterIP)), ns, zone)
			case x < 80:
				name = fmt.Sprintf("%s.%s.svc.%s.", headlessName(rng.IntN(*nHeadless)), ns, zone)
			case x < 90:
				svc := clusterName(rng.IntN(*nClusterIP))
				if rng.IntN(2) == 0 {
					svc = headlessName(rng.IntN(*nHeadless))
				}
				name, qtype = fmt.Sprintf("_http._tcp.%s.%s.svc.%s.", svc, ns, zone), dns.TypeSRV
			default:
				name = fmt.Sprintf("nosuch%05d.%s.svc.%s.", rng.IntN(100000), ns, zone)
			}
			class := "direct"
			switch x := rng.IntN(100); {
			case x < 20:
				name, class = random0x20(rng, name), class+", 0x20 case"
			case x < 40:
				name, class = capitalized(name), class+", Capitalized"
			default:
				class += ", lower"
			}
			switch x := rng.IntN(100); {
			case x < 25:
				add(class+", EDNS0 1232", name, qtype, 1232, false)
			case x < 40:
				add(class+", EDNS0 4096", name, qtype, 4096, false)
			case x < 50:
				add(class+", EDNS0 4096 DO", name, qtype, 4096, true)
			default:
				add(class+", no EDNS0", name, qtype, 0, false)
			}
			continue
		}
		// A getaddrinfo lookup by glibc in a pod of namespace bench
		// (search bench.svc.cluster.local svc.cluster.local
		// cluster.local, ndots:5): A and AAAA per search suffix, the
		// suffixes in order until one has the name.
		search := []string{ns + ".svc." + zone, "svc." + zone, zone}
		lookup := func(class, typed string, found int) {
			for i, suffix := range search {
				if found >= 0 && i > found {
					return
				}
				for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
					add(class, typed+"."+suffix+".", qtype, 0, false)
				}
			}
		}
		switch x := rng.IntN(100); {
		case x < 40:
			lookup("search: Service", clusterName(rng.IntN(*nClusterIP)), 0)
		case x < 50:
			lookup("search: headless Service", headlessName(rng.IntN(*nHeadless)), 0)
		case x < 70:
			lookup("search: Service.namespace", clusterName(rng.IntN(*nClusterIP))+"."+ns, 1)
		default:
			// Then the name as typed goes upstream, which is not part of
			// this benchmark (see -flood).
			lookup("search: external name", externalNames[rng.IntN(len(externalNames))], -1)
		}
	}
	return count, os.WriteFile(path, b, 0o644)
}

// externalNames are names outside the cluster a pod looks up.
var externalNames = []string{"example.com", "www.example.com", "api.github.com", "registry-1.docker.io",
	"storage.googleapis.com", "s3.amazonaws.com", "login.microsoftonline.com", "pypi.org"}

func sumCounts(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// random0x20 flips the case of each letter at random, as resolvers using
// DNS 0x20 (draft-vixie-dnsext-dns0x20) do.
func random0x20(rng *rand.Rand, name string) string {
	b := []byte(name)
	for i, c := range b {
		if c >= 'a' && c <= 'z' && rng.IntN(2) == 0 {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// capitalized upper-cases the first letter of every label before "svc",
// as in My-Svc.Default.svc.cluster.local typed by hand:
// "Svc0001.Bench.svc.cluster.local.", "_http._tcp.Svc0001.Bench.svc.cluster.local.".
func capitalized(name string) string {
	b := []byte(name)
	for i, c := range b {
		if strings.HasPrefix(string(b[i:]), "svc.") {
			break
		}
		if (i == 0 || b[i-1] == '.') && c >= 'a' && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// waitAnswer polls until the server answers a known Service's A record.
func waitAnswer(addr string, timeout time.Duration) error {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(clusterName(0)+"."+ns+".svc."+zone), dns.TypeA)
	c := &dns.Client{Timeout: 500 * time.Millisecond}
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		r, _, err := c.Exchange(q, addr)
		switch {
		case err != nil:
			last = err
		case r.Rcode == dns.RcodeSuccess && len(r.Answer) > 0:
			return nil
		default:
			last = fmt.Errorf("rcode %s, %d answers", dns.RcodeToString[r.Rcode], len(r.Answer))
		}
		time.Sleep(200 * time.Millisecond)
	}
	return last
}

var (
	reCompleted = regexp.MustCompile(`Queries completed:\s+(\d+)`)
	reLost      = regexp.MustCompile(`Queries lost:\s+(\d+)`)
	reQPS       = regexp.MustCompile(`Queries per second:\s+([\d.]+)`)
)

// drive runs dnsperf -v against addr and reads its per-query latencies.
// Without verbose, dnsperf spends no CPU printing per-query lines (the
// machine's cores are shared with the server), so QPS is higher but there
// are no percentiles.
func drive(pid int, addr, queries string, verbose bool, extra []string) result {
	host, port, _ := net.SplitHostPort(addr)
	args := []string{"-s", host, "-p", port, "-B", "-d", queries, "-l", strconv.Itoa(int(duration.Seconds()))}
	if verbose {
		args = append(args, "-v")
	}
	args = append(args, extra...)
	c := exec.Command("dnsperf", args...)
	out, err := c.StdoutPipe()
	must(err)
	c.Stderr = os.Stderr
	cpu0, err := measure.CPUTime(pid)
	must(err)
	must(c.Start())
	var lat []time.Duration
	var summary strings.Builder
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "> ") {
			f := strings.Fields(l)
			if s, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
				lat = append(lat, time.Duration(s*float64(time.Second)))
			}
			continue
		}
		summary.WriteString(l)
		summary.WriteByte('\n')
	}
	must(c.Wait())
	cpu1, err := measure.CPUTime(pid)
	must(err)
	cpu := cpu1 - cpu0
	fmt.Fprintf(os.Stderr, "dnsperf %s\n%s", strings.Join(args, " "), summary.String())
	var r result
	s := summary.String()
	if m := reCompleted.FindStringSubmatch(s); m != nil {
		r.answered, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reLost.FindStringSubmatch(s); m != nil {
		r.lost, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reQPS.FindStringSubmatch(s); m != nil {
		r.qps, _ = strconv.ParseFloat(m[1], 64)
	}
	if r.answered > 0 {
		r.cpuPerQ = cpu / time.Duration(r.answered)
	}
	slices.Sort(lat)
	if len(lat) > 0 {
		r.p50 = lat[len(lat)*50/100]
		r.p99 = lat[len(lat)*99/100]
	}
	r.rss = measure.Status(pid, "VmRSS")
	r.anon = measure.Status(pid, "RssAnon")
	r.file = measure.Status(pid, "RssFile")
	return r
}
