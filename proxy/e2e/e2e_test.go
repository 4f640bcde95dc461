package e2e_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/switchboard/switchboard/clustertest"
	"github.com/switchboard/switchboard/echoserver"
	"github.com/switchboard/switchboard/localcluster"
	"github.com/switchboard/switchboard/netnamespace"
)

var (
	// cluster is the two-node local cluster every test of the package
	// shares, each in a Kubernetes namespace of its own.
	cluster *localcluster.Cluster
	client  kubernetes.Interface
	// startErr is why the shared cluster is missing (not root, ...).
	startErr error
)

// proxyModeEnv picks the node proxies' mode for a run of the suite
// (nftables when unset); scripts/ci runs the suite once per mode.
const proxyModeEnv = "SWITCHBOARD_E2E_PROXY_MODE"

// ignoreTermEnv, set on a container, makes its echo server ignore SIGTERM
// and keep serving through the pod's grace period, as a server draining its
// connections does: that is what makes an endpoint serving-and-terminating
// for a while.
const ignoreTermEnv = "SWITCHBOARD_E2E_IGNORE_SIGTERM"

// TestMain doubles as the pods' echo server (the cluster runs this binary
// with "echo"), so the tests need no separately built binary, and starts the
// shared cluster once.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "echo" {
		os.Exit(runEcho(os.Args[2:]))
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		startErr = errors.New("needs root")
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "switchboard-e2e-")
	if err != nil {
		startErr = err
		return m.Run()
	}
	defer os.RemoveAll(dir)
	exe, _ := os.Executable()
	// A state directory of its own gives this run's namespaces unique names
	// (their prefix is a hash of it).
	cluster, startErr = localcluster.Start(context.Background(), localcluster.Config{StateDir: dir, Nodes: 2,
		APIServerPort: 0, ProxyMode: os.Getenv(proxyModeEnv), EchoCommand: []string{exe, "echo"}, Logger: testLogger()})
	// Stop leaves the data plane serving (as for a restart of `up`); Down
	// removes it. Deferred first, so it runs last.
	defer localcluster.Down(dir)
	if startErr != nil {
		return m.Run()
	}
	defer cluster.Stop()
	cfg := rest.CopyConfig(cluster.ControlPlane.RESTConfig)
	cfg.QPS, cfg.Burst = 500, 1000
	client, startErr = kubernetes.NewForConfig(cfg)
	return m.Run()
}

func runEcho(args []string) int {
	s, ports, err := echoserver.ParseArgs(args)
	if err != nil {
		return 2
	}
	ctx := context.Background()
	if os.Getenv(ignoreTermEnv) != "" {
		signal.Ignore(syscall.SIGTERM) // SIGKILL at the end of the grace period ends it
	} else {
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, syscall.SIGTERM)
		defer stop()
	}
	if err := s.Serve(ctx, ports); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// testLogger keeps the cluster quiet unless SWITCHBOARD_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("SWITCHBOARD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// env is one test's view of the shared cluster: its own Kubernetes
// namespace, so tests run in parallel without seeing each other's objects.
type env struct {
	t  *testing.T
	c  kubernetes.Interface
	ns string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	if startErr != nil {
		clustertest.Skip(t, "local cluster not started: "+startErr.Error())
	}
	t.Parallel()
	return &env{t: t, c: client, ns: clustertest.Namespace(t, client)}
}

// The cluster's nodes, by name, and their addresses.
const node1, node2 = "node-1", "node-2"

func nodeIP(name string) string {
	for _, n := range cluster.Nodes() {
		if n.Name == name {
			return n.IP.String()
		}
	}
	panic("no node " + name)
}

// nodeNS is the network namespace of a node: traffic sent from there comes
// from a host outside the cluster's pod network, with the node's address.
func nodeNS(name string) string {
	for _, n := range cluster.Nodes() {
		if n.Name == name {
			return n.NetNS
		}
	}
	panic("no node " + name)
}

// podNS is the network namespace of a pod of the test's namespace.
func (e *env) podNS(pod string) string { return "/run/netns/" + cluster.Network.PodNS(e.ns, pod) }

// httpPort is the echo pods' TCP port, named so Services can use a named
// targetPort; dnsPort their UDP port.
var (
	httpPort = corev1.ContainerPort{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}
	dnsPort  = corev1.ContainerPort{Name: "dns", ContainerPort: 5353, Protocol: corev1.ProtocolUDP}
)

// echoPod is a pod pinned to node that runs the echo server on ports.
func echoPod(name, node string, labels map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "echo", Image: "echo", Ports: ports}}}}
}

// clientPod is a pod to send traffic from: it serves nothing.
func clientPod(name, node string) *corev1.Pod { return echoPod(name, node, nil) }

// run creates the pods and waits until they are Ready; it returns their IPs.
func (e *env) run(pods ...*corev1.Pod) map[string]string {
	e.t.Helper()
	for _, p := range pods {
		e.create(p)
	}
	ips := map[string]string{}
	for _, p := range pods {
		ips[p.Name] = e.waitReady(p.Name).Status.PodIP
	}
	return ips
}

func (e *env) create(p *corev1.Pod) {
	e.t.Helper()
	var err error
	deadline := time.Now().Add(30 * time.Second)
	for {
		// The namespace's service account may not exist yet.
		if _, err = e.c.CoreV1().Pods(e.ns).Create(context.Background(), p, metav1.CreateOptions{}); err == nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("create pod %s: %v", p.Name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func isReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (e *env) waitReady(name string) *corev1.Pod {
	e.t.Helper()
	var last *corev1.Pod
	deadline := time.Now().Add(90 * time.Second)
	for {
		p, err := e.c.CoreV1().Pods(e.ns).Get(context.Background(), name, metav1.GetOptions{})
		if err == nil {
			last = p
			if isReady(p) && p.Status.PodIP != "" {
				return p
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("pod %s never Ready; last: %v %+v", name, err, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// service creates a Service selecting selector, port 80 to the named
// targetPort "http"; mod adjusts it first.
func (e *env) service(name string, selector map[string]string, mod func(*corev1.Service)) *corev1.Service {
	e.t.Helper()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Selector: selector, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP}}}}
	if mod != nil {
		mod(svc)
	}
	svc, err := e.c.CoreV1().Services(e.ns).Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatalf("create service %s: %v", name, err)
	}
	return svc
}

// label sets (or, with value "", removes) a label of a pod.
func (e *env) label(pod, key, value string) {
	e.t.Helper()
	v := "null"
	if value != "" {
		v = strconv.Quote(value)
	}
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%s}}}`, key, v)
	if _, err := e.c.CoreV1().Pods(e.ns).Patch(context.Background(), pod, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		e.t.Fatalf("label pod %s: %v", pod, err)
	}
}

func (e *env) delete(pod string, grace int64) {
	e.t.Helper()
	if err := e.c.CoreV1().Pods(e.ns).Delete(context.Background(), pod, metav1.DeleteOptions{GracePeriodSeconds: &grace}); err != nil {
		e.t.Fatalf("delete pod %s: %v", pod, err)
	}
}

// eventually is clustertest.Eventually with this package's patience.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	clustertest.Eventually(t, what, 60*time.Second, f)
}

// conn is a TCP connection made from inside a namespace, speaking HTTP/1.1
// keep-alive to an echo server.
type conn struct {
	net.Conn
	r *bufio.Reader
}

func dial(from, target string, timeout time.Duration) (*conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := netnamespace.Dial(ctx, from, "tcp", target)
	if err != nil {
		return nil, err
	}
	return &conn{Conn: c, r: bufio.NewReader(c)}, nil
}

// get makes one request on the connection and returns the echo's reply.
func (c *conn) get() (echoserver.Reply, error) {
	var r echoserver.Reply
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: e2e\r\n\r\n"); err != nil {
		return r, err
	}
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		return r, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return r, fmt.Errorf("echo reply %q: %w", body, err)
	}
	return r, nil
}

// request makes one new connection from the namespace at from to target
// and returns the reply.
func request(from, target string) (echoserver.Reply, error) {
	c, err := dial(from, target, 10*time.Second)
	if err != nil {
		return echoserver.Reply{}, err
	}
	defer c.Close()
	return c.get()
}

// seen makes n new connections and returns the pods that answered.
func seen(from, target string, n int) (map[string]bool, error) {
	got := map[string]bool{}
	for range n {
		r, err := request(from, target)
		if err != nil {
			return got, err
		}
		got[r.Pod] = true
	}
	return got, nil
}

func set(names ...string) map[string]bool {
	m := map[string]bool{}
	for _, n := range names {
		m[n] = true
	}
	return m
}

func sameSet(a, b map[string]bool) bool { return maps.Equal(a, b) }

// reaches waits until n new connections from from to target are answered
// by exactly the pods named.
func reaches(t *testing.T, from, target string, n int, pods ...string) {
	t.Helper()
	eventually(t, fmt.Sprintf("%s reaches %v", target, pods), func() error {
		got, err := seen(from, target, n)
		if err != nil || !sameSet(got, set(pods...)) {
			return fmt.Errorf("reached %v (err %v), want exactly %v", keys(got), err, pods)
		}
		return nil
	})
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func vip(svc *corev1.Service, port int32) string {
	return net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(port)))
}

// TestClusterIPReachesEveryReadyBackend: a client pod reaches VIP:port and,
// over repeated requests, every ready backend on both nodes and never an
// unready one, through a named and through a numeric targetPort.
func TestClusterIPReachesEveryReadyBackend(t *testing.T) {
	e := newEnv(t)
	web := map[string]string{"app": "web"}
	unready := echoPod("web-unready", node2, web, httpPort)
	unready.Spec.Containers[0].ReadinessProbe = &corev1.Probe{PeriodSeconds: 1,
		ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"false"}}}}
	e.create(unready)
	e.run(echoPod("web-1", node1, web, httpPort), echoPod("web-2", node2, web, httpPort), echoPod("web-3", node2, web, httpPort),
		clientPod("client", node1))
	named := e.service("named", web, nil)
	numeric := e.service("numeric", web, func(s *corev1.Service) {
		s.Spec.Ports = []corev1.ServicePort{{Name: "http", Port: 8000, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}
	})
	from := e.podNS("client")
	for _, target := range []string{vip(named, 80), vip(numeric, 8000)} {
		reaches(t, from, target, 40, "web-1", "web-2", "web-3")
		r, err := request(from, target)
		if err != nil || r.Port != 8080 {
			t.Errorf("%s: reply %+v (err %v), want the pod's port 8080", target, r, err)
		}
	}
}

// TestNoEndpointsRefusedAtOnce: a Service whose selector matches no pod
// refuses a connection at once (ICMP port unreachable or a reset), instead
// of leaving the client to time out.
func TestNoEndpointsRefusedAtOnce(t *testing.T) {
	e := newEnv(t)
	e.run(clientPod("client", node1))
	svc := e.service("nobody", map[string]string{"app": "nobody"}, nil)
	from, target := e.podNS("client"), vip(svc, 80)
	eventually(t, "connection to a Service without endpoints refused", func() error {
		start := time.Now()
		// A dropped SYN would take the whole 10 s timeout.
		c, err := dial(from, target, 10*time.Second)
		took := time.Since(start)
		if err == nil {
			c.Close()
			return errors.New("connected to a Service without endpoints")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("dial: %v after %v, want connection refused", err, took)
		}
		// Generous slack for a loaded machine; a timeout is 10 s.
		if took > 2*time.Second {
			t.Errorf("connection refused only after %v, want at once", took)
		}
		return nil
	})
}

// TestScaleUpAndDown: pods added to and removed from a Service's selector
// set are reflected in where new connections go; scaled to zero, the
// Service refuses.
func TestScaleUpAndDown(t *testing.T) {
	e := newEnv(t)
	app := map[string]string{"app": "scale"}
	e.run(echoPod("scale-1", node1, app, httpPort), clientPod("client", node2))
	svc := e.service("scale", app, nil)
	from, target := e.podNS("client"), vip(svc, 80)
	reaches(t, from, target, 10, "scale-1")

	e.run(echoPod("scale-2", node2, app, httpPort), echoPod("scale-3", node1, app, httpPort))
	reaches(t, from, target, 40, "scale-1", "scale-2", "scale-3")

	e.delete("scale-1", 5)
	e.delete("scale-2", 5)
	reaches(t, from, target, 20, "scale-3")

	e.delete("scale-3", 5)
	eventually(t, "refused when scaled to zero", func() error {
		c, err := dial(from, target, 10*time.Second)
		if err == nil {
			c.Close()
			return errors.New("still connects")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("dial: %v, want connection refused", err)
		}
		return nil
	})
}

// TestTerminatingEndpointsStillServe: when the only endpoints left are
// terminating but still serving (a pod in its grace period, draining), the
// Service keeps sending new connections to them rather than refusing.
func TestTerminatingEndpointsStillServe(t *testing.T) {
	e := newEnv(t)
	app := map[string]string{"app": "drain"}
	drainer := echoPod("drainer", node2, app, httpPort)
	drainer.Spec.Containers[0].Env = []corev1.EnvVar{{Name: ignoreTermEnv, Value: "1"}}
	ips := e.run(drainer, clientPod("client", node1))
	svc := e.service("drain", app, nil)
	from, target := e.podNS("client"), vip(svc, 80)
	reaches(t, from, target, 5, "drainer")

	// The pod ignores SIGTERM, so it serves through its grace period and is
	// killed at its end; the test is done long before.
	e.delete("drainer", 30)
	eventually(t, "slice shows the endpoint serving and terminating, none ready", func() error {
		slices, err := e.c.DiscoveryV1().EndpointSlices(e.ns).List(context.Background(),
			metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=drain"})
		if err != nil {
			return err
		}
		var found bool
		for _, sl := range slices.Items {
			for _, ep := range sl.Endpoints {
				c := ep.Conditions
				if ptr.Deref(c.Ready, false) {
					return fmt.Errorf("endpoint %v still ready", ep.Addresses)
				}
				found = found || (ep.Addresses[0] == ips["drainer"] && ptr.Deref(c.Serving, false) && ptr.Deref(c.Terminating, false))
			}
		}
		if !found {
			return errors.New("no serving-and-terminating endpoint yet")
		}
		return nil
	})
	// The proxies sync within milliseconds of the slice change; keep asking
	// for a while so a proxy that dropped the endpoint would be caught. Paced:
	// back to back, about one run in eight saw EHOSTUNREACH near the 3,000th
	// connection in 3 s from one pod (cause not yet found; paced, 8 of 8
	// runs pass), which is load this check does not need.
	deadline := time.Now().Add(3 * time.Second)
	for n := 0; n < 10 || time.Now().Before(deadline); n++ {
		r, err := request(from, target)
		if err != nil || r.Pod != "drainer" {
			t.Fatalf("request %d with only a terminating endpoint: %+v, %v; want the terminating pod to answer", n, r, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSessionAffinityClientIP: with sessionAffinity ClientIP a client keeps
// its backend over new connections, and moves (and sticks again) when that
// backend leaves the Service.
func TestSessionAffinityClientIP(t *testing.T) {
	e := newEnv(t)
	app := map[string]string{"app": "sticky"}
	e.run(echoPod("sticky-1", node1, app, httpPort), echoPod("sticky-2", node2, app, httpPort),
		echoPod("sticky-3", node2, app, httpPort), clientPod("client", node1))
	svc := e.service("sticky", app, func(s *corev1.Service) {
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](600)}}
	})
	from, target := e.podNS("client"), vip(svc, 80)
	var first string
	eventually(t, "first connection", func() error {
		r, err := request(from, target)
		first = r.Pod
		return err
	})
	got, err := seen(from, target, 30)
	if err != nil || !sameSet(got, set(first)) {
		t.Fatalf("with ClientIP affinity reached %v (err %v), want only %s", keys(got), err, first)
	}
	e.label(first, "app", "")
	eventually(t, "affinity moves off the backend that left", func() error {
		got, err := seen(from, target, 20)
		if err != nil || len(got) != 1 || got[first] {
			return fmt.Errorf("reached %v (err %v), want one backend other than %s", keys(got), err, first)
		}
		return nil
	})
}

// TestNodePortFromOtherNode: a NodePort (externalTrafficPolicy Cluster)
// opened on node-1 answers a client pod on node-2, balancing over the pods
// of both nodes and masquerading, so the backends never see the client.
func TestNodePortFromOtherNode(t *testing.T) {
	e := newEnv(t)
	app := map[string]string{"app": "np"}
	ips := e.run(echoPod("np-1", node1, app, httpPort), echoPod("np-2", node2, app, httpPort), clientPod("client", node2))
	svc := e.service("np", app, func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort })
	from := e.podNS("client")
	target := net.JoinHostPort(nodeIP(node1), strconv.Itoa(int(svc.Spec.Ports[0].NodePort)))
	reaches(t, from, target, 30, "np-1", "np-2")
	for range 10 {
		r, err := request(from, target)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(r.Peer, ips["client"]+":") {
			t.Fatalf("%s saw the client's own address %s; Cluster policy must masquerade", r.Pod, r.Peer)
		}
	}
}

// TestExternalTrafficPolicyLocal: each node's NodePort of a Service with
// externalTrafficPolicy Local reaches only that node's pod, which sees the
// client's own address. The clients are the nodes themselves: hosts outside
// the pod network, as an external client or load balancer is (a pod's
// traffic to a NodePort counts as internal upstream).
func TestExternalTrafficPolicyLocal(t *testing.T) {
	e := newEnv(t)
	app := map[string]string{"app": "etp"}
	e.run(echoPod("etp-1", node1, app, httpPort), echoPod("etp-2", node2, app, httpPort))
	svc := e.service("etp", app, func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	})
	np := strconv.Itoa(int(svc.Spec.Ports[0].NodePort))
	for _, c := range []struct{ from, to, pod string }{{node2, node1, "etp-1"}, {node1, node2, "etp-2"}} {
		target := net.JoinHostPort(nodeIP(c.to), np)
		eventually(t, fmt.Sprintf("%s -> %s: only %s, seeing the client's address", c.from, target, c.pod), func() error {
			for range 20 {
				r, err := request(nodeNS(c.from), target)
				if err != nil {
					return err
				}
				if r.Pod != c.pod || !strings.HasPrefix(r.Peer, nodeIP(c.from)+":") {
					return fmt.Errorf("answered by %s seeing %s; want %s seeing %s", r.Pod, r.Peer, c.pod, nodeIP(c.from))
				}
			}
			return nil
		})
	}
}

// TestLocalPolicyWithoutLocalEndpointsDrops: a Service with endpoints, but
// none on this node, under a Local traffic policy drops the traffic that
// policy governs, as kube-proxy does, instead of refusing it (refusal is for
// a Service with no endpoints at all): external traffic to the NodePort for
// externalTrafficPolicy Local, a pod's traffic to the ClusterIP for
// internalTrafficPolicy Local. The other kind of traffic still flows.
func TestLocalPolicyWithoutLocalEndpointsDrops(t *testing.T) {
	e := newEnv(t)
	app := map[string]string{"app": "remote"}
	e.run(echoPod("remote", node2, app, httpPort), clientPod("client", node1))
	etp := e.service("etp", app, func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	})
	itp := e.service("itp", app, func(s *corev1.Service) {
		s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
	})
	from := e.podNS("client")
	// The ClusterIP of the externalTrafficPolicy Local Service uses every
	// endpoint; once it answers, node-1's proxy knows the endpoint exists.
	reaches(t, from, vip(etp, 80), 5, "remote")
	dropped := func(from, target string) func() error {
		return func() error {
			c, err := dial(from, target, 1500*time.Millisecond)
			if err == nil {
				c.Close()
				return fmt.Errorf("%s connected", target)
			}
			if ne := net.Error(nil); !errors.As(err, &ne) || !ne.Timeout() {
				return fmt.Errorf("%s: %v, want a timeout (dropped)", target, err)
			}
			return nil
		}
	}
	eventually(t, "NodePort on a node without local endpoints drops external traffic",
		dropped(nodeNS(node2), net.JoinHostPort(nodeIP(node1), strconv.Itoa(int(etp.Spec.Ports[0].NodePort)))))
	eventually(t, "ClusterIP under internalTrafficPolicy Local drops a pod's traffic on a node without local endpoints",
		dropped(from, vip(itp, 80)))
	// On node-2, where the endpoint is, both work.
	e.run(clientPod("client-2", node2))
	reaches(t, e.podNS("client-2"), vip(itp, 80), 5, "remote")
	reaches(t, nodeNS(node1), net.JoinHostPort(nodeIP(node2), strconv.Itoa(int(etp.Spec.Ports[0].NodePort))), 5, "remote")
}

// TestUDPStaleConntrackCleared: a UDP client keeps one socket (one conntrack
// entry) to the ClusterIP; when its endpoint leaves the Service, the proxy
// clears the entry and the same socket reaches the live endpoint. The old
// pod keeps running and answering, so a stale entry would show.
func TestUDPStaleConntrackCleared(t *testing.T) {
	e := newEnv(t)
	e.run(echoPod("udp-old", node2, map[string]string{"app": "udp"}, dnsPort), echoPod("udp-new", node1, nil, dnsPort),
		clientPod("client", node1))
	svc := e.service("udp", map[string]string{"app": "udp"}, func(s *corev1.Service) {
		s.Spec.Ports = []corev1.ServicePort{{Name: "dns", Port: 53, TargetPort: intstr.FromString("dns"), Protocol: corev1.ProtocolUDP}}
	})
	q := newUDPClient(t, e.podNS("client"), svc.Spec.ClusterIP, 53)
	// Queries to the VIP keep the conntrack entry alive throughout.
	eventually(t, "UDP through the ClusterIP reaches udp-old", q.want("udp-old"))
	e.label("udp-new", "app", "udp")
	e.label("udp-old", "app", "")
	eventually(t, "the same UDP socket moves to udp-new", q.want("udp-new"))
}

// TestUDPFlowStartedBeforeTheService: a UDP client that sends to a ClusterIP
// before the Service exists (or before its node's proxy has heard of it)
// leaves an untranslated conntrack entry, which its later datagrams keep
// alive; once the Service has endpoints the proxy clears it, so the same
// socket reaches the Service instead of sending past it forever.
func TestUDPFlowStartedBeforeTheService(t *testing.T) {
	e := newEnv(t)
	app := map[string]string{"app": "late"}
	e.run(echoPod("late", node2, app, dnsPort), clientPod("client", node1))
	var q *udpClient
	e.serviceAtFreeIP(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "late"},
		Spec: corev1.ServiceSpec{Selector: app, Ports: []corev1.ServicePort{
			{Name: "dns", Port: 53, TargetPort: intstr.FromString("dns"), Protocol: corev1.ProtocolUDP}}},
	}, func(ip string) {
		if q != nil {
			q.pc.Close()
		}
		q = newUDPClient(t, e.podNS("client"), ip, 53)
		// Sent before the Service exists: routed on, untranslated.
		if _, err := q.query(); err == nil {
			t.Fatalf("%s answered before it was a Service", ip)
		}
	})
	eventually(t, "the early UDP socket reaches the Service", q.want("late"))
}

// serviceAtFreeIP creates svc at a ClusterIP chosen before it exists,
// calling before(ip) first: a client may then send to the address before
// the Service is there. It retries with another address when the chosen one
// is taken.
func (e *env) serviceAtFreeIP(svc *corev1.Service, before func(ip string)) *corev1.Service {
	e.t.Helper()
	for i := 0; ; i++ {
		ip := fmt.Sprintf("10.96.%d.%d", 200+i%50, 1+int(time.Now().UnixNano()/1000)%250)
		before(ip)
		svc.Spec.ClusterIP = ip
		created, err := e.c.CoreV1().Services(e.ns).Create(context.Background(), svc, metav1.CreateOptions{})
		if err == nil {
			return created
		}
		if i > 20 {
			e.t.Fatalf("create service %s at a chosen ClusterIP: %v", svc.Name, err)
		}
	}
}

// TestSessionAffinityAfterAnEarlyConnection: a connection attempt that
// starts before its ClientIP-affinity Service is programmed goes out
// untranslated, and its first packet is retransmitted once the Service is
// programmed. That retransmission must not be recorded as the client's
// affinity (to the ClusterIP itself), or every later connection of the
// client would bypass the Service for the affinity timeout.
func TestSessionAffinityAfterAnEarlyConnection(t *testing.T) {
	e := newEnv(t)
	app := map[string]string{"app": "early"}
	e.run(echoPod("early-1", node1, app, httpPort), echoPod("early-2", node2, app, httpPort), clientPod("client", node1))
	from := e.podNS("client")
	var early sync.WaitGroup
	svc := e.serviceAtFreeIP(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "early"},
		Spec: corev1.ServiceSpec{Selector: app, SessionAffinity: corev1.ServiceAffinityClientIP,
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP}}},
	}, func(ip string) {
		early.Add(1)
		go func() {
			defer early.Done()
			// Its SYN is retransmitted after 1 s, when the Service is
			// programmed (on a loaded machine perhaps not, and the test
			// shows nothing, but never fails wrongly).
			if c, err := dial(from, net.JoinHostPort(ip, "80"), 5*time.Second); err == nil {
				c.Close()
			}
		}()
		// Let the first SYN leave before the Service exists; ordering, not
		// an assertion.
		time.Sleep(200 * time.Millisecond)
	})
	early.Wait()
	target := vip(svc, 80)
	var first string
	eventually(t, "new connections reach the Service", func() error {
		r, err := request(from, target)
		first = r.Pod
		return err
	})
	got, err := seen(from, target, 20)
	if err != nil || !sameSet(got, set(first)) {
		t.Fatalf("reached %v (err %v), want only %s", keys(got), err, first)
	}
}

// udpClient is one UDP socket in a namespace, so one conntrack entry per
// destination for as long as it keeps sending.
type udpClient struct {
	pc net.PacketConn
	to *net.UDPAddr
}

func newUDPClient(t *testing.T, from, ip string, port int) *udpClient {
	t.Helper()
	var pc net.PacketConn
	if err := netnamespace.Do(from, func() error {
		var err error
		pc, err = net.ListenPacket("udp4", ":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return &udpClient{pc: pc, to: &net.UDPAddr{IP: net.ParseIP(ip), Port: port}}
}

// query sends one datagram and returns the pod that answered.
func (u *udpClient) query() (string, error) {
	u.pc.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := u.pc.WriteTo([]byte("q"), u.to); err != nil {
		return "", err
	}
	buf := make([]byte, 1024)
	for {
		n, _, err := u.pc.ReadFrom(buf)
		if err != nil {
			return "", err
		}
		var r echoserver.Reply
		if err := json.Unmarshal(buf[:n], &r); err != nil {
			return "", err
		}
		if r.Protocol == "UDP" {
			return r.Pod, nil
		}
	}
}

func (u *udpClient) want(pod string) func() error {
	return func() error {
		got, err := u.query()
		if err == nil && got != pod {
			err = fmt.Errorf("answered by %s, want %s", got, pod)
		}
		return err
	}
}

// TestProxyRestartKeepsEstablishedConnections: connections through a
// ClusterIP carry steady traffic while the client node's proxy is stopped
// and a new one adopts its table; none of them breaks or moves, and the new
// proxy programs later changes.
func TestProxyRestartKeepsEstablishedConnections(t *testing.T) {
	e := newEnv(t)
	app := map[string]string{"app": "restart"}
	e.run(echoPod("restart-1", node1, app, httpPort), echoPod("restart-2", node2, app, httpPort), clientPod("client", node1))
	svc := e.service("restart", app, nil)
	from, target := e.podNS("client"), vip(svc, 80)
	reaches(t, from, target, 30, "restart-1", "restart-2")

	const conns = 6
	type flow struct {
		c       *conn
		backend string
		n       atomic.Int64
		err     atomic.Pointer[error]
	}
	flows := make([]*flow, conns)
	for i := range flows {
		c, err := dial(from, target, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		r, err := c.get()
		if err != nil {
			t.Fatal(err)
		}
		flows[i] = &flow{c: c, backend: r.Pod}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, f := range flows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r, err := f.c.get()
				if err == nil && r.Pod != f.backend {
					err = fmt.Errorf("connection moved from %s to %s", f.backend, r.Pod)
				}
				if err != nil {
					f.err.Store(&err)
					return
				}
				f.n.Add(1)
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cluster.RestartProxy(ctx, node1); err != nil {
		t.Fatal(err)
	}
	before := make([]int64, conns)
	for i, f := range flows {
		before[i] = f.n.Load()
	}
	// The new run must program changes: restart-1 leaves the Service, so new
	// connections go to restart-2 only, while the established ones to
	// restart-1 (still running) keep flowing.
	e.label("restart-1", "app", "")
	reaches(t, from, target, 20, "restart-2")
	eventually(t, "every connection carries traffic after the restart", func() error {
		for i, f := range flows {
			if err := f.err.Load(); err != nil {
				t.Fatalf("connection %d (to %s) broken by the proxy restart: %v", i, f.backend, *err)
			}
			if f.n.Load() <= before[i]+2 {
				return fmt.Errorf("connection %d (to %s) made no progress since the restart", i, f.backend)
			}
		}
		return nil
	})
	close(stop)
	wg.Wait()
	for i, f := range flows {
		if err := f.err.Load(); err != nil {
			t.Errorf("connection %d (to %s) broken: %v", i, f.backend, *err)
		}
	}
}

// TestServiceCIDRAddressesWithoutAServiceStayOnTheNode (issue 15, item 1):
// from a pod, a ClusterIP's port its Service lacks is refused at once, and
// an address of the Service CIDR no Service holds is dropped (a timeout),
// as kube-proxy does, instead of being routed off the node.
func TestServiceCIDRAddressesWithoutAServiceStayOnTheNode(t *testing.T) {
	e := newEnv(t)
	app := map[string]string{"app": "cidr"}
	e.run(echoPod("cidr-1", node2, app, httpPort), clientPod("client", node1))
	svc := e.service("cidr", app, nil)
	from := e.podNS("client")
	reaches(t, from, vip(svc, 80), 5, "cidr-1")
	eventually(t, "unknown port of a ClusterIP refused", func() error {
		_, err := dial(from, net.JoinHostPort(svc.Spec.ClusterIP, "81"), 2*time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("got %v, want connection refused", err)
		}
		return nil
	})
	// The last address of the default 10.96.0.0/16 is never handed out
	// while the tests' few Services use the range.
	eventually(t, "unallocated Service CIDR address dropped", func() error {
		c, err := dial(from, "10.96.255.254:80", 1500*time.Millisecond)
		if err == nil {
			c.Close()
			return errors.New("connected")
		}
		if ne := net.Error(nil); !errors.As(err, &ne) || !ne.Timeout() {
			return fmt.Errorf("%v, want a timeout (dropped)", err)
		}
		return nil
	})
}

// TestExternalTrafficPolicyLocalFromPodsShortCircuits (issue 15, item 5):
// a pod's traffic to a NodePort under externalTrafficPolicy Local is not
// external: on a node without a local endpoint it still reaches the
// Service's endpoint on the other node, as with kube-proxy.
func TestExternalTrafficPolicyLocalFromPodsShortCircuits(t *testing.T) {
	e := newEnv(t)
	app := map[string]string{"app": "sc"}
	e.run(echoPod("sc-remote", node2, app, httpPort), clientPod("client", node1))
	svc := e.service("sc", app, func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	})
	np := net.JoinHostPort(nodeIP(node1), strconv.Itoa(int(svc.Spec.Ports[0].NodePort)))
	reaches(t, e.podNS("client"), np, 5, "sc-remote")
	reaches(t, nodeNS(node1), np, 5, "sc-remote")
}

// TestPodReachesItselfThroughItsService: hairpin. A pod that is its
// Service's only endpoint reaches itself through the ClusterIP (on its own
// node) and through the other node's NodePort under externalTrafficPolicy
// Local (the pods' short-circuit sends it back across to itself). Both
// times the proxy must masquerade, or the pod gets a packet from its own
// address and the connection never completes; the pod sees a node's
// address, never its own.
func TestPodReachesItselfThroughItsService(t *testing.T) {
	e := newEnv(t)
	app := map[string]string{"app": "self"}
	ips := e.run(echoPod("self", node2, app, httpPort))
	svc := e.service("self", app, func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	})
	from := e.podNS("self")
	for _, target := range []string{
		net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(svc.Spec.Ports[0].Port))),
		net.JoinHostPort(nodeIP(node1), strconv.Itoa(int(svc.Spec.Ports[0].NodePort))),
	} {
		eventually(t, "self -> "+target+" answered by self, masqueraded", func() error {
			r, err := request(from, target)
			if err != nil {
				return err
			}
			if r.Pod != "self" || strings.HasPrefix(r.Peer, ips["self"]+":") {
				return fmt.Errorf("answered by %s seeing %s; want self seeing a node's address", r.Pod, r.Peer)
			}
			return nil
		})
	}
}
