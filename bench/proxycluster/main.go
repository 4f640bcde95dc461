// Command proxycluster benchmarks `switchboard proxy` against upstream
// kube-proxy as real processes, in one run, for each proxy mode in -modes
// (each proxy in the same mode as its rival): one in-process kube-apiserver
// holds 5,000 ClusterIP Services x 10 endpoints, and each proxy runs inside
// its own network namespace (ip netns exec), reaching the API server
// through a TCP relay the benchmark opens on that namespace's loopback. It
// reports, per mode and proxy: the time from process start until all
// Services are programmed, the first full sync as the proxy itself reports
// it, single endpoint changes (the proxy's own sync duration and the time
// from the API write until its sync finished), the ruleset's size, RSS,
// and the latency of a new TCP connection to a ClusterIP (connect through
// the proxy's DNAT to a listener in the namespace; iptables matches
// Services one rule after another, so this grows with their number).
//
//	go build -o /tmp/sb ./cmd/switchboard
//	go run ./bench/proxycluster [-modes nftables,iptables] [-switchboard /tmp/sb] [-kube-proxy /tmp/ref/kube-proxy]
//
// -iptables-backend legacy (or nft) runs both proxies' iptables mode on
// that backend of the iptables binaries: the PATH they get starts with
// links named iptables, iptables-save, iptables-restore (and ip6tables-*)
// to the backend's tools, since kube-proxy runs whatever PATH names so.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/switchboard/switchboard/bench/measure"
	"github.com/switchboard/switchboard/controlplane"
	"github.com/switchboard/switchboard/netnamespace"
)

const ns = "bench"

var (
	nServices    = flag.Int("services", 5000, "ClusterIP Services")
	nEps         = flag.Int("endpoints", 10, "endpoints per Service")
	nChanges     = flag.Int("changes", 10, "single endpoint changes measured")
	sbBin        = flag.String("switchboard", "/tmp/sb", "switchboard binary (go build -o /tmp/sb ./cmd/switchboard)")
	kpBin        = flag.String("kube-proxy", "/tmp/ref/kube-proxy", "upstream kube-proxy binary; skipped if missing")
	startTimeout = flag.Duration("start-timeout", 15*time.Minute, "how long a proxy may take to program every Service")
	modes        = flag.String("modes", "nftables,iptables", "proxy modes to compare, in order")
	nProbes      = flag.Int("probes", 20, "Services with a local endpoint the connection latency is measured through")
	nConns       = flag.Int("connections", 400, "new connections measured per proxy")
	backend      = flag.String("iptables-backend", "", "iptables backend both proxies run, legacy or nft: their PATH starts with iptables* links to <tool>-<backend>; empty keeps the PATH's own")
)

// probeAddr is the one endpoint of the probe Services: an address on the
// loopback of each proxy's namespace, with a listener on probePort.
var probeAddr = netip.MustParseAddr("10.250.255.1")

const probePort = 8080

// rival is one proxy under test and the names of its metrics.
type rival struct {
	name     string
	node     string
	argv     func(kubeconfig string) []string
	syncDur  string // histogram of every sync's duration
	progLat  string // network programming latency histogram
	services string // gauge that reaches nServices when all is programmed ("" if none)
	written  string // counter of rules or elements written ("" if none)
	mode     string
	labels   string // label set of the IPv4 samples, e.g. {ip_family="IPv4"}

	netnsName, netnsPath string
	deleteNetns          func()
	cmd                  *exec.Cmd
	started              time.Time

	// results
	toProgrammed, firstSync time.Duration
	changeSync, changeWall  []time.Duration
	changeWritten           []float64
	extraSyncs              int
	progMean                time.Duration
	lines                   int
	rss, rssAnon, rssFile   string
	connect, direct         []time.Duration
}

func main() {
	flag.Parse()
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	ctx := context.Background()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() { <-sig; measure.AtExit(); os.Exit(1) }()
	dir, err := os.MkdirTemp("", "sb-bench-proxy-")
	measure.Must(err)
	defer os.RemoveAll(dir)
	cp, err := controlplane.Start(ctx, controlplane.Config{StateDir: dir})
	measure.Must(err)
	defer cp.Stop()
	cfg := rest.CopyConfig(cp.RESTConfig)
	cfg.QPS, cfg.Burst = 5000, 10000
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	client := kubernetes.NewForConfigOrDie(cfg)

	measure.Must(backendPath(dir))
	_, err = client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	measure.Must(err)
	for _, node := range []string{"sb-node", "kp-node"} {
		measure.Must(registerNode(ctx, client, node))
	}
	start := time.Now()
	_, err = measure.LoadServices(ctx, client, ns, *nServices, *nEps)
	measure.Must(err)
	probeIPs := make([]string, *nProbes)
	measure.Parallel(*nProbes, 8, func(i int) {
		svc, err := client.CoreV1().Services(ns).Create(ctx, &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("probe-%d", i)},
			Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(probePort)}}},
		}, metav1.CreateOptions{})
		measure.Must(err)
		probeIPs[i] = svc.Spec.ClusterIP
		_, err = client.DiscoveryV1().EndpointSlices(ns).Create(ctx, probeSlice(i), metav1.CreateOptions{})
		measure.Must(err)
	})
	log.Printf("created %d Services x %d endpoints (and %d probe Services) in %v", *nServices, *nEps, *nProbes, time.Since(start).Round(time.Millisecond))

	gen := 0
	for _, mode := range strings.Split(*modes, ",") {
		rivals := newRivals(mode)
		runMode(ctx, client, dir, cp, rivals, probeIPs, &gen)
	}
}

// newRivals returns switchboard and, if its binary is there, kube-proxy,
// both in mode.
func newRivals(mode string) []*rival {
	rivals := []*rival{{
		name: "switchboard", node: "sb-node",
		argv: func(kc string) []string {
			return []string{*sbBin, "proxy", "--kubeconfig", kc, "--hostname-override", "sb-node",
				"--proxy-mode", mode, "--cluster-cidr", "10.244.0.0/16", "--healthz-bind-address", "127.0.0.1:10256", "--metrics-bind-address", "127.0.0.1:10249"}
		},
		syncDur: "switchboard_proxy_sync_duration_seconds", progLat: "switchboard_proxy_network_programming_duration_seconds",
		written:  "switchboard_proxy_nftables_elements_written_total",
		services: "switchboard_proxy_services", mode: mode,
	}}
	if _, err := os.Stat(*kpBin); err == nil {
		rivals = append(rivals, &rival{
			name: "kube-proxy", node: "kp-node",
			argv: func(kc string) []string {
				return []string{*kpBin, "--proxy-mode", mode, "--kubeconfig", kc, "--hostname-override", "kp-node",
					"--cluster-cidr", "10.244.0.0/16", "--conntrack-max-per-core", "0",
					"--healthz-bind-address", "127.0.0.1:10256", "--metrics-bind-address", "127.0.0.1:10249"}
			},
			syncDur: "kubeproxy_sync_proxy_rules_duration_seconds", progLat: "kubeproxy_network_programming_duration_seconds",
			// Its IPv4 proxier: the IPv6 one has nothing to program here.
			labels: `{ip_family="IPv4"}`, mode: mode,
		})
	} else {
		log.Printf("no kube-proxy at %s (../shared/reference/build.sh builds it): switchboard only", *kpBin)
	}
	return rivals
}

// runMode starts each rival in turn, measures it, prints the mode's
// table and stops them. gen numbers the endpoint changes across modes.
func runMode(ctx context.Context, client kubernetes.Interface, dir string, cp *controlplane.ControlPlane, rivals []*rival, probeIPs []string, gen *int) {
	var err error
	// Namespaces and processes go away even when the run is interrupted.
	// all keeps every rival; rivals drops those that never programmed.
	all := rivals
	cleanup := func() {
		for _, r := range all {
			if r.cmd != nil && r.cmd.Process != nil {
				r.cmd.Process.Kill()
				r.cmd.Wait()
			}
			if r.deleteNetns != nil {
				r.deleteNetns()
			}
		}
	}
	defer cleanup()
	measure.AtExit = func() { cleanup(); cp.Stop(); os.RemoveAll(dir) }

	for _, r := range rivals {
		r.netnsName = netnamespace.Unique("sbbp")
		r.netnsPath, r.deleteNetns, err = netnamespace.Create(r.netnsName)
		measure.Must(err)
		measure.Must(listenProbe(r, probeIPs))
		kc, err := relayKubeconfig(cp, dir, r)
		measure.Must(err)
		argv := r.argv(kc)
		r.cmd = exec.Command("ip", append([]string{"netns", "exec", r.netnsName}, argv...)...)
		r.cmd.Env = toolEnv()
		logf, err := os.Create(filepath.Join(dir, r.name+".log"))
		measure.Must(err)
		r.cmd.Stdout, r.cmd.Stderr = logf, logf
		// One at a time: a start competes only with an idle rival.
		r.started = time.Now()
		measure.Must(r.cmd.Start())
		if !r.waitProgrammed() {
			// Reported as such; the rest of the mode runs without it.
			log.Printf("%s: not programmed within %v: stopped", r.name, *startTimeout)
			r.cmd.Process.Kill()
			r.cmd.Wait()
			continue
		}
		log.Printf("%s: programmed %d Services %v after start (first sync %v)", r.name, *nServices, r.toProgrammed, r.firstSync)
	}
	rivals = slices.DeleteFunc(slices.Clone(rivals), func(r *rival) bool { return r.toProgrammed == 0 })
	time.Sleep(3 * time.Second)
	for i := range *nChanges {
		idx := (i * 7919) % *nServices
		// Each change's own sync is the one that observes its trigger
		// time: the programming latency histogram counts only syncs of
		// changes with one, and this slice is the only one changing.
		type mark struct{ prog, syncs, syncSum, written float64 }
		before := map[*rival]mark{}
		for _, r := range rivals {
			m := r.metrics()
			before[r] = mark{m[r.progLat+"_count"+r.labels], m[r.syncDur+"_count"+r.labels], m[r.syncDur+"_sum"+r.labels], m[r.written]}
		}
		*gen++
		sl := measure.EndpointSlice(idx, *gen, *nEps)
		cur, err := client.DiscoveryV1().EndpointSlices(ns).Get(ctx, sl.Name, metav1.GetOptions{})
		measure.Must(err)
		sl.ResourceVersion = cur.ResourceVersion
		t0 := time.Now()
		sl.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: t0.UTC().Format(time.RFC3339Nano)}
		_, err = client.DiscoveryV1().EndpointSlices(ns).Update(ctx, sl, metav1.UpdateOptions{})
		measure.Must(err)
		// Both proxies are polled at once: one after the other, the
		// second's time could never be below the first's.
		var wg sync.WaitGroup
		for _, r := range rivals {
			wg.Add(1)
			go func() {
				defer wg.Done()
				b := before[r]
				deadline := time.Now().Add(30 * time.Second)
				var wall time.Duration
				for {
					m := r.metrics()
					if wall == 0 && m[r.progLat+"_count"+r.labels] > b.prog {
						wall = time.Since(t0)
					}
					// kube-proxy observes its sync's duration after the
					// programming latency (deferred): wait for both.
					c, s := m[r.syncDur+"_count"+r.labels], m[r.syncDur+"_sum"+r.labels]
					if wall != 0 && c > b.syncs {
						r.changeWall = append(r.changeWall, wall)
						// Syncs since the mark: normally just this
						// change's; a periodic one in between is
						// averaged in and counted.
						r.changeSync = append(r.changeSync, time.Duration((s-b.syncSum)/(c-b.syncs)*float64(time.Second)))
						r.extraSyncs += int(c-b.syncs) - 1
						if r.written != "" {
							r.changeWritten = append(r.changeWritten, m[r.written]-b.written)
						}
						return
					}
					if time.Now().After(deadline) {
						measure.Fatalf("%s: change %d not programmed in 30s", r.name, i)
					}
					time.Sleep(2 * time.Millisecond)
				}
			}()
		}
		wg.Wait()
		// kube-proxy's --nftables-min-sync-period is 1s: space the changes
		// so that neither proxy's rate limit delays one.
		time.Sleep(1500 * time.Millisecond)
	}
	for _, r := range rivals {
		c, s := r.histogram(r.progLat)
		if c > 0 {
			r.progMean = time.Duration(s / c * float64(time.Second))
		}
		pid := r.cmd.Process.Pid
		r.rss, r.rssAnon, r.rssFile = measure.MB(measure.Status(pid, "VmRSS")), measure.MB(measure.Status(pid, "RssAnon")), measure.MB(measure.Status(pid, "RssFile"))
		r.lines = rulesetLines(r)
		r.connect, r.direct = connectLatency(r, probeIPs)
	}
	backendNote := ""
	if rivals[0].mode == "iptables" && *backend != "" {
		backendNote = ", iptables backend " + *backend
	}
	fmt.Printf("\n--proxy-mode %s%s: %d ClusterIP Services x %d endpoints, one kube-apiserver, each proxy in its own netns (%d changes, %d new connections)\n",
		rivals[0].mode, backendNote, *nServices, *nEps, *nChanges, *nConns)
	row := measure.Table(40, all, func(r *rival) string { return r.name })
	row("start -> all Services programmed", func(r *rival) string {
		if r.toProgrammed == 0 {
			return "> " + startTimeout.String()
		}
		return r.toProgrammed.Round(time.Millisecond).String()
	})
	row("first full sync (self-reported)", func(r *rival) string {
		if r.toProgrammed == 0 {
			return "-"
		}
		return r.firstSync.Round(time.Millisecond).String()
	})
	row("one endpoint change: sync p50", func(r *rival) string { return pct(r.changeSync, 50) })
	row("one endpoint change: sync max", func(r *rival) string { return pct(r.changeSync, 100) })
	row("  other syncs during the changes", func(r *rival) string { return strconv.Itoa(r.extraSyncs) })
	row("  elements written per change", func(r *rival) string {
		if len(r.changeWritten) == 0 {
			return "-"
		}
		var sum float64
		for _, w := range r.changeWritten {
			sum += w
		}
		return strconv.FormatFloat(sum/float64(len(r.changeWritten)), 'f', 1, 64)
	})
	row("API write -> change programmed p50", func(r *rival) string { return pct(r.changeWall, 50) })
	row("API write -> change programmed max", func(r *rival) string { return pct(r.changeWall, 100) })
	row("programming latency mean (trigger time)", func(r *rival) string { return r.progMean.Round(10 * time.Microsecond).String() })
	row("new connection to a ClusterIP p50", func(r *rival) string { return pct(r.connect, 50) })
	row("new connection to a ClusterIP p99", func(r *rival) string { return pct(r.connect, 99) })
	row("  same, straight to the endpoint p50", func(r *rival) string { return pct(r.direct, 50) })
	row(rulesetName(rivals[0].mode), func(r *rival) string { return strconv.Itoa(r.lines) })
	row("RSS", func(r *rival) string { return r.rss })
	row("  of which anonymous", func(r *rival) string { return r.rssAnon })
	row("  of which file-backed", func(r *rival) string { return r.rssFile })
}

// toolPATH is the PATH the proxies (and the benchmark's iptables-save) run
// with: -iptables-backend's directory of links first.
var toolPATH = os.Getenv("PATH")

// backendPath makes, under dir, the directory of iptables, ip6tables and
// their -save and -restore named as every proxy calls them, linked to the
// -iptables-backend variant of each, and puts it first on toolPATH. Both
// proxies then run the same backend whatever the distribution's
// alternatives chose (kube-proxy has no flag for it).
func backendPath(dir string) error {
	switch *backend {
	case "":
		return nil
	case "legacy", "nft":
	default:
		return fmt.Errorf("-iptables-backend %q: want legacy or nft", *backend)
	}
	bin := filepath.Join(dir, "iptables-"+*backend)
	if err := os.Mkdir(bin, 0o755); err != nil {
		return err
	}
	for _, family := range []string{"iptables", "ip6tables"} {
		for _, suffix := range []string{"", "-save", "-restore"} {
			target, err := exec.LookPath(family + "-" + *backend + suffix)
			if err != nil {
				return fmt.Errorf("-iptables-backend %s: %w", *backend, err)
			}
			if err := os.Symlink(target, filepath.Join(bin, family+suffix)); err != nil {
				return err
			}
		}
	}
	toolPATH = bin + string(os.PathListSeparator) + toolPATH
	log.Printf("iptables backend %s: proxies run with PATH=%s", *backend, toolPATH)
	return nil
}

// toolEnv is the benchmark's environment with PATH set to toolPATH.
func toolEnv() []string {
	return append(slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "PATH=") }), "PATH="+toolPATH)
}

// rulesetName says what rulesetLines counts in mode.
func rulesetName(mode string) string {
	if mode == "iptables" {
		return "iptables-save lines (filter + nat)"
	}
	return "nft list ruleset lines"
}

// rulesetLines counts the lines of the rival's programmed ruleset, as its
// mode's tool prints it.
func rulesetLines(r *rival) int {
	var out []byte
	var err error
	if r.mode == "iptables" {
		c := exec.Command("ip", "netns", "exec", r.netnsName, "iptables-save")
		c.Env = toolEnv()
		out, err = c.Output()
	} else {
		out, err = exec.Command("ip", "netns", "exec", r.netnsName, "nft", "list", "ruleset").Output()
	}
	if err != nil {
		return 0
	}
	return strings.Count(string(out), "\n")
}

// listenProbe puts probeAddr on the loopback of the rival's namespace with
// a listener that accepts and closes, and routes the probe ClusterIPs
// there from that address: a connection to one is DNATed by the proxy's
// rules (its output path) to the listener.
func listenProbe(r *rival, probeIPs []string) error {
	if err := netnamespace.IP(r.netnsName, "addr", "add", probeAddr.String()+"/32", "dev", "lo"); err != nil {
		return err
	}
	for _, ip := range probeIPs {
		if err := netnamespace.IP(r.netnsName, "route", "add", ip+"/32", "dev", "lo", "src", probeAddr.String()); err != nil {
			return err
		}
	}
	var l net.Listener
	if err := netnamespace.Do(r.netnsPath, func() error {
		var err error
		l, err = net.Listen("tcp", netip.AddrPortFrom(probeAddr, probePort).String())
		return err
	}); err != nil {
		return err
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return nil
}

// connectLatency times *nConns new TCP connections (connect returned) to
// the probe ClusterIPs in turn from inside the rival's namespace, and as
// many straight to the listener.
func connectLatency(r *rival, probeIPs []string) (vip, direct []time.Duration) {
	ctx := context.Background()
	dial := func(addr string) time.Duration {
		t0 := time.Now()
		c, err := netnamespace.Dial(ctx, r.netnsPath, "tcp", addr)
		d := time.Since(t0)
		if err != nil {
			measure.Fatalf("%s: connect to %s: %v", r.name, addr, err)
		}
		c.Close()
		return d
	}
	for i := range *nConns {
		vip = append(vip, dial(net.JoinHostPort(probeIPs[i%len(probeIPs)], "80")))
		direct = append(direct, dial(netip.AddrPortFrom(probeAddr, probePort).String()))
	}
	return vip, direct
}

func pct(ds []time.Duration, p int) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s) - 1) * p / 100
	return s[i].Round(10 * time.Microsecond).String()
}

// probeSlice is probe Service i's EndpointSlice: one ready endpoint, the
// listener in each proxy's namespace.
func probeSlice(i int) *discovery.EndpointSlice {
	return &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("probe-%d-bench", i), Labels: map[string]string{
			discovery.LabelServiceName: fmt.Sprintf("probe-%d", i), discovery.LabelManagedBy: "bench"}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](probePort), Protocol: ptr.To(v1.ProtocolTCP)}},
		Endpoints: []discovery.Endpoint{{Addresses: []string{probeAddr.String()},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
			NodeName:   ptr.To("elsewhere")}},
	}
}

// registerNode creates a Node with an InternalIP: kube-proxy waits for one.
func registerNode(ctx context.Context, c kubernetes.Interface, name string) error {
	n, err := c.CoreV1().Nodes().Create(ctx, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name,
		Labels: map[string]string{v1.LabelHostname: name}}}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	n.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "10.0.0.1"}}
	n.Status.Conditions = []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue}}
	_, err = c.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	return err
}

// relayKubeconfig opens 127.0.0.1:6443 inside the rival's namespace,
// relaying to the API server on the host's loopback (TLS stays end to end:
// the serving certificate is valid for 127.0.0.1), and writes a kubeconfig
// pointing there.
func relayKubeconfig(cp *controlplane.ControlPlane, dir string, r *rival) (string, error) {
	u, err := url.Parse(cp.RESTConfig.Host)
	if err != nil {
		return "", err
	}
	var l net.Listener
	if err := netnamespace.Do(r.netnsPath, func() error {
		var err error
		l, err = net.Listen("tcp", "127.0.0.1:6443")
		return err
	}); err != nil {
		return "", err
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", u.Host)
				if err != nil {
					return
				}
				defer up.Close()
				go io.Copy(up, c)
				io.Copy(c, up)
			}()
		}
	}()
	kc, err := clientcmd.LoadFromFile(cp.KubeconfigPath)
	if err != nil {
		return "", err
	}
	for _, cl := range kc.Clusters {
		cl.Server = "https://127.0.0.1:6443"
	}
	path := filepath.Join(dir, r.name+".kubeconfig")
	return path, clientcmd.WriteToFile(*kc, path)
}

// metrics reads the rival's /metrics inside its namespace.
func (r *rival) metrics() map[string]float64 {
	return measure.Metrics(r.netnsPath, "http://127.0.0.1:10249/metrics")
}

func (r *rival) histogram(name string) (count, sum float64) {
	m := r.metrics()
	return m[name+"_count"+r.labels], m[name+"_sum"+r.labels]
}

// waitProgrammed waits for the first sync that holds every Service
// (false: not within -start-timeout).
func (r *rival) waitProgrammed() bool {
	deadline := time.Now().Add(*startTimeout)
	for time.Now().Before(deadline) {
		m := r.metrics()
		count, sum := m[r.syncDur+"_count"+r.labels], m[r.syncDur+"_sum"+r.labels]
		done := count >= 1
		if r.services != "" {
			done = done && m[r.services] >= float64(*nServices)
		}
		if done {
			r.toProgrammed = time.Since(r.started)
			r.firstSync = time.Duration(sum / count * float64(time.Second))
			return true
		}
		if r.cmd.ProcessState != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}
