// Command newservice measures how soon a new Service is usable on
// `switchboard up` with a large Service world loaded: from the API write
// that creates a Service in front of pods that are already Ready, to a
// client pod's first successful TCP connection through its ClusterIP.
//
// It starts `up --nodes N` on a fresh state directory, loads it with
// -services selectorless Services x -endpoints endpoints (Services and
// EndpointSlices written directly, bench/measure.LoadServices), waits for
// every node proxy to have programmed them, starts one server pod per node
// (the built-in echo server on port 80) and a client pod on the first node,
// then creates -runs Services, one at a time, each selecting the server
// pods. Each run is split by what was seen, all from the create call:
//
//   - created, seen: the create call returned; the Service's watch event
//     arrived here (as it arrives at the controller's and proxies'
//     informers): the API server's part;
//   - slice: the controller's EndpointSlice for the Service, with its ready
//     endpoints, arrived on a watch here;
//   - node-K: the first connection to the ClusterIP from node K's own
//     network namespace succeeded: that node's proxy has programmed the
//     Service with its endpoints (probed every 2 ms with real packets);
//   - client: the first connection from the client pod's network namespace
//     succeeded (the same probe);
//   - exec: after that, `kubectl exec client -- nc -z IP 80` through the API
//     server and the kubelet API: what a test that execs into the pod for
//     each attempt pays on top.
//
// Per node it also reports how many syncs the node's proxy made between the
// create and the client's connection, and their summed duration (the
// proxy's own switchboard_proxy_sync_duration_seconds).
//
//	go build -o /tmp/sb ./cmd/switchboard
//	go run ./bench/newservice [-switchboard /tmp/sb] [-services 5000] [-runs 20]
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/switchboard/switchboard/bench/measure"
	"github.com/switchboard/switchboard/localcluster"
	"github.com/switchboard/switchboard/netnamespace"
)

const (
	loadNS = "bench"
	runNS  = "newsvc"
	// proxyMetrics is where `up`'s node proxies serve /metrics, inside
	// their node's network namespace.
	proxyMetrics = "http://127.0.0.1:10249/metrics"
	syncDuration = "switchboard_proxy_sync_duration_seconds"
)

var (
	sbBin     = flag.String("switchboard", "/tmp/sb", "switchboard binary (go build -o /tmp/sb ./cmd/switchboard)")
	nNodes    = flag.Int("nodes", 2, "nodes of the cluster")
	nServices = flag.Int("services", 5000, "selectorless Services loaded before the runs")
	nEps      = flag.Int("endpoints", 10, "endpoints per loaded Service")
	nRuns     = flag.Int("runs", 20, "new Services measured, one at a time")
	verbose   = flag.Bool("v", false, "echo what `up` prints")
)

// node is one node of the cluster and where its proxy answers.
type node struct {
	name, netns string
}

// run is one new Service's timeline, each from the create call.
type run struct {
	// created is when the create call returned, seen when the Service's
	// watch event reached this process (as it reaches the controller's
	// and the proxies' informers).
	created, seen       time.Duration
	slice, client, exec time.Duration
	nodes               []time.Duration
	syncs               []float64       // per node: syncs from the create to the client's connection
	syncTime            []time.Duration // per node: their summed duration
}

func main() {
	flag.Parse()
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	dir, err := os.MkdirTemp("", "sb-bench-newsvc-")
	measure.Must(err)
	log.Printf("switchboard up --nodes %d --state-dir %s", *nNodes, dir)
	up, err := measure.StartUp(*sbBin, dir, []string{"--nodes", fmt.Sprint(*nNodes)}, 10*time.Minute, *verbose)
	if err != nil {
		os.RemoveAll(dir)
		log.Fatal(err)
	}
	measure.AtExit = func() {
		if err := up.Down(*sbBin); err != nil {
			log.Print(err)
		}
		os.RemoveAll(dir)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() { <-sig; measure.AtExit(); os.Exit(1) }()
	log.Printf("up ready after %v", up.Ready.Round(time.Millisecond))

	ctx := context.Background()
	cfg, err := clientcmd.BuildConfigFromFlags("", up.Kubeconfig)
	measure.Must(err)
	cfg.QPS, cfg.Burst = 5000, 10000
	client := kubernetes.NewForConfigOrDie(protobuf(cfg))

	nodes := clusterNodes(ctx, client)
	for _, n := range []string{loadNS, runNS} {
		_, err = client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{})
		measure.Must(err)
	}
	start := time.Now()
	_, err = measure.LoadServices(ctx, client, loadNS, *nServices, *nEps)
	measure.Must(err)
	log.Printf("created %d Services x %d endpoints in %v", *nServices, *nEps, time.Since(start).Round(time.Millisecond))
	waitProgrammed(nodes, *nServices)
	log.Printf("every node proxy programmed them %v after the first create", time.Since(start).Round(time.Millisecond))

	client0 := startPods(ctx, client, nodes)
	pod0NetNS := "/run/netns/" + localcluster.NewNetwork(dir, netip.Prefix{}, netip.Prefix{}).PodNS(runNS, client0)
	time.Sleep(2 * time.Second) // let the pods' events settle

	apiBefore := apiServerMetrics(ctx, client)
	var runs []run
	fmt.Printf("\nnew Service on `up --nodes %d` with %d Services x %d endpoints loaded; times from the create call\n", *nNodes, *nServices, *nEps)
	header := fmt.Sprintf("%-4s %9s %9s %9s", "run", "created", "seen", "slice")
	for _, n := range nodes {
		header += fmt.Sprintf(" %9s", n.name)
	}
	header += fmt.Sprintf(" %9s %9s", "client", "+exec")
	for _, n := range nodes {
		header += fmt.Sprintf("  %s syncs", n.name)
	}
	fmt.Println(header)
	for i := range *nRuns {
		r := measureOne(ctx, client, cfg, nodes, pod0NetNS, client0, i)
		runs = append(runs, r)
		line := fmt.Sprintf("%-4d %9s %9s %9s", i, ms(r.created), ms(r.seen), ms(r.slice))
		for _, d := range r.nodes {
			line += fmt.Sprintf(" %9s", ms(d))
		}
		line += fmt.Sprintf(" %9s %9s", ms(r.client), ms(r.exec))
		for k := range nodes {
			line += fmt.Sprintf("  %2.0f (%s)", r.syncs[k], ms(r.syncTime[k]))
		}
		fmt.Println(line)
		time.Sleep(500 * time.Millisecond)
	}
	line := fmt.Sprintf("%-4s %9s %9s %9s", "p50", ms(median(runs, func(r run) time.Duration { return r.created })),
		ms(median(runs, func(r run) time.Duration { return r.seen })), ms(median(runs, func(r run) time.Duration { return r.slice })))
	for k := range nodes {
		line += fmt.Sprintf(" %9s", ms(median(runs, func(r run) time.Duration { return r.nodes[k] })))
	}
	line += fmt.Sprintf(" %9s %9s", ms(median(runs, func(r run) time.Duration { return r.client })),
		ms(median(runs, func(r run) time.Duration { return r.exec })))
	fmt.Println(line)
	line = fmt.Sprintf("%-4s %9s %9s %9s", "max", ms(maximum(runs, func(r run) time.Duration { return r.created })),
		ms(maximum(runs, func(r run) time.Duration { return r.seen })), ms(maximum(runs, func(r run) time.Duration { return r.slice })))
	for k := range nodes {
		line += fmt.Sprintf(" %9s", ms(maximum(runs, func(r run) time.Duration { return r.nodes[k] })))
	}
	line += fmt.Sprintf(" %9s %9s", ms(maximum(runs, func(r run) time.Duration { return r.client })),
		ms(maximum(runs, func(r run) time.Duration { return r.exec })))
	fmt.Println(line)
	apiAfter := apiServerMetrics(ctx, client)
	fmt.Println("\nthe API server during the runs (its own metrics; mean per request):")
	for _, q := range []struct {
		what, name string
		labels     []string
	}{
		{"POST services (whole request)", "apiserver_request_duration_seconds", []string{`verb="POST"`, `resource="services"`}},
		{"etcd create services", "etcd_request_duration_seconds", []string{`operation="create"`, `"services"`}},
		{"POST ipaddresses (ClusterIP)", "apiserver_request_duration_seconds", []string{`verb="POST"`, `resource="ipaddresses"`}},
		{"POST endpointslices", "apiserver_request_duration_seconds", []string{`verb="POST"`, `resource="endpointslices"`}},
	} {
		c := sumOf(apiAfter, q.name+"_count", q.labels) - sumOf(apiBefore, q.name+"_count", q.labels)
		sum := sumOf(apiAfter, q.name+"_sum", q.labels) - sumOf(apiBefore, q.name+"_sum", q.labels)
		if c > 0 {
			fmt.Printf("  %-32s %4.0f requests, mean %s\n", q.what, c, ms(time.Duration(sum/c*float64(time.Second))))
		}
	}
	measure.AtExit()
}

// apiServerMetrics reads the API server's /metrics.
func apiServerMetrics(ctx context.Context, client kubernetes.Interface) map[string]float64 {
	body, err := client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		log.Printf("API server metrics: %v", err)
		return nil
	}
	return measure.ParseMetrics(bytes.NewReader(body))
}

// sumOf adds the samples of name whose labels hold every one of labels.
func sumOf(m map[string]float64, name string, labels []string) float64 {
	var sum float64
	for k, v := range m {
		rest, ok := strings.CutPrefix(k, name+"{")
		if !ok {
			continue
		}
		all := true
		for _, l := range labels {
			all = all && strings.Contains(rest, l)
		}
		if all {
			sum += v
		}
	}
	return sum
}

// measureOne creates Service newsvc-i in front of the server pods and
// times what follows.
func measureOne(ctx context.Context, client kubernetes.Interface, cfg *rest.Config, nodes []node, podNetNS, clientPod string, i int) run {
	name := fmt.Sprintf("newsvc-%d", i)
	w, err := client.DiscoveryV1().EndpointSlices(runNS).Watch(ctx, metav1.ListOptions{LabelSelector: discovery.LabelServiceName + "=" + name})
	measure.Must(err)
	defer w.Stop()
	sw, err := client.CoreV1().Services(runNS).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	measure.Must(err)
	defer sw.Stop()
	before := make([]map[string]float64, len(nodes))
	for k, n := range nodes {
		before[k] = measure.Metrics(n.netns, proxyMetrics)
	}
	r := run{nodes: make([]time.Duration, len(nodes)), syncs: make([]float64, len(nodes)), syncTime: make([]time.Duration, len(nodes))}
	t0 := time.Now()
	svc, err := client.CoreV1().Services(runNS).Create(ctx, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1.ServiceSpec{Selector: map[string]string{"app": "server"},
			Ports: []v1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(80)}}},
	}, metav1.CreateOptions{})
	measure.Must(err)
	r.created = time.Since(t0)
	addr := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	var wg sync.WaitGroup
	wg.Go(func() {
		for ev := range sw.ResultChan() {
			if ev.Type == watch.Added {
				r.seen = time.Since(t0)
				return
			}
		}
	})
	wg.Go(func() {
		for ev := range w.ResultChan() {
			if sl, ok := ev.Object.(*discovery.EndpointSlice); ok && ev.Type != watch.Deleted && readyEndpoints(sl) > 0 {
				r.slice = time.Since(t0)
				return
			}
		}
	})
	for k, n := range nodes {
		wg.Go(func() { r.nodes[k] = firstConnect(n.netns, addr, t0, fmt.Sprintf("%s from node %s", name, n.name)) })
	}
	wg.Go(func() { r.client = firstConnect(podNetNS, addr, t0, fmt.Sprintf("%s from pod %s", name, clientPod)) })
	wg.Wait()
	for k, n := range nodes {
		after := measure.Metrics(n.netns, proxyMetrics)
		r.syncs[k] = after[syncDuration+"_count"] - before[k][syncDuration+"_count"]
		r.syncTime[k] = time.Duration((after[syncDuration+"_sum"] - before[k][syncDuration+"_sum"]) * float64(time.Second))
	}
	execStart := time.Now()
	if out, err := execIn(ctx, client, cfg, clientPod, "nc", "-z", "-w", "2", svc.Spec.ClusterIP, "80"); err != nil {
		measure.Fatalf("exec nc in %s: %v: %s", clientPod, err, out)
	}
	r.exec = time.Since(execStart)
	return r
}

// firstConnect dials addr from inside the network namespace every 2 ms
// until a connection is accepted, and returns the time since t0 when it
// was. Before the proxy programs the Service the SYN is dropped (an
// unallocated address of the Service CIDR) or refused (a Service without
// endpoints); each attempt is a new connection, so the proxy's verdict on
// an earlier one does not stick to the next. A dropped SYN from a pod
// fails only by the attempt's timeout (from the node's own namespace the
// drop fails the connect at once), so the timeout is short: 5 ms, where an
// accepted connection on this host takes well under one.
func firstConnect(netnsPath, addr string, t0 time.Time, what string) time.Duration {
	deadline := t0.Add(time.Minute)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
		c, err := netnamespace.Dial(ctx, netnsPath, "tcp", addr)
		cancel()
		if err == nil {
			d := time.Since(t0)
			c.Close()
			return d
		}
		time.Sleep(2 * time.Millisecond)
	}
	measure.Fatalf("%s: no connection within a minute", what)
	return 0
}

// execIn runs argv in the client pod's container through the API server
// and the node's kubelet API, as kubectl exec does (WebSocket, falling back
// to SPDY).
func execIn(ctx context.Context, client kubernetes.Interface, cfg *rest.Config, pod string, argv ...string) (string, error) {
	req := client.CoreV1().RESTClient().Post().Resource("pods").Namespace(runNS).Name(pod).SubResource("exec").
		VersionedParams(&v1.PodExecOptions{Container: "client", Command: argv, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ws, err := remotecommand.NewWebSocketExecutor(cfg, "GET", req.URL().String())
	if err != nil {
		return "", err
	}
	spdy, err := remotecommand.NewSPDYExecutor(cfg, "POST", req.URL())
	if err != nil {
		return "", err
	}
	ex, err := remotecommand.NewFallbackExecutor(ws, spdy, httpstream.IsUpgradeFailure)
	if err != nil {
		return "", err
	}
	var out bytes.Buffer
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out, Stderr: &out})
	return out.String(), err
}

// startPods starts one server pod per node (the echo server on port 80,
// label app=server) and a client pod on the first node, waits for them to
// be Ready, and returns the client's name.
func startPods(ctx context.Context, client kubernetes.Interface, nodes []node) string {
	var names []string
	for k, n := range nodes {
		name := fmt.Sprintf("server-%d", k)
		_, err := client.CoreV1().Pods(runNS).Create(ctx, &v1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "server"}},
			Spec: v1.PodSpec{NodeName: n.name, Containers: []v1.Container{{Name: "server", Image: "nginx",
				Ports: []v1.ContainerPort{{ContainerPort: 80}}}}},
		}, metav1.CreateOptions{})
		measure.Must(err)
		names = append(names, name)
	}
	_, err := client.CoreV1().Pods(runNS).Create(ctx, &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "client"},
		Spec: v1.PodSpec{NodeName: nodes[0].name, Containers: []v1.Container{{Name: "client", Image: "busybox",
			Command: []string{"sleep", "infinity"}}}},
	}, metav1.CreateOptions{})
	measure.Must(err)
	names = append(names, "client")
	deadline := time.Now().Add(3 * time.Minute)
	for _, name := range names {
		for {
			p, err := client.CoreV1().Pods(runNS).Get(ctx, name, metav1.GetOptions{})
			measure.Must(err)
			if podReady(p) {
				break
			}
			if time.Now().After(deadline) {
				measure.Fatalf("pod %s/%s not Ready within 3 minutes: %+v", runNS, name, p.Status)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return "client"
}

func podReady(p *v1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == v1.PodReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

func readyEndpoints(sl *discovery.EndpointSlice) int {
	n := 0
	for _, e := range sl.Endpoints {
		if e.Conditions.Ready == nil || *e.Conditions.Ready {
			n++
		}
	}
	return n
}

// clusterNodes lists the Nodes and finds their network namespaces from the
// state directory they publish (localcluster.StateDirAnnotation).
func clusterNodes(ctx context.Context, client kubernetes.Interface) []node {
	list, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	measure.Must(err)
	var out []node
	for _, n := range list.Items {
		dir := n.Annotations[localcluster.StateDirAnnotation]
		if dir == "" {
			measure.Fatalf("node %s has no %s annotation: not a node of `switchboard up`", n.Name, localcluster.StateDirAnnotation)
		}
		out = append(out, node{name: n.Name, netns: "/run/netns/" + localcluster.NewNetwork(dir, netip.Prefix{}, netip.Prefix{}).NodeNS(n.Name)})
	}
	slices.SortFunc(out, func(a, b node) int { return strings.Compare(a.name, b.name) })
	return out
}

// waitProgrammed waits until every node's proxy reports at least n
// Services programmed beyond the ones it had before the load.
func waitProgrammed(nodes []node, n int) {
	deadline := time.Now().Add(10 * time.Minute)
	for _, nd := range nodes {
		for measure.Metrics(nd.netns, proxyMetrics)["switchboard_proxy_services"] < float64(n) {
			if time.Now().After(deadline) {
				measure.Fatalf("node %s: the proxy did not program %d Services within 10 minutes", nd.name, n)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func protobuf(cfg *rest.Config) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.ContentType = "application/vnd.kubernetes.protobuf"
	return c
}

func median(runs []run, f func(run) time.Duration) time.Duration {
	ds := make([]time.Duration, len(runs))
	for i, r := range runs {
		ds[i] = f(r)
	}
	slices.Sort(ds)
	return ds[(len(ds)-1)/2]
}

func maximum(runs []run, f func(run) time.Duration) time.Duration {
	var m time.Duration
	for _, r := range runs {
		m = max(m, f(r))
	}
	return m
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}
