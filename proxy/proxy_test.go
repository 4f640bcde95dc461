package proxy_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/switchboard/switchboard/clustertest"
	"github.com/switchboard/switchboard/netnamespace"
	"github.com/switchboard/switchboard/proxy"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Main(m)) }

// world is a test topology of network namespaces: a "node" whose proxy
// programs its own namespace and routes between a client namespace
// (10.0.1.2 and fd00:1::2, node side 10.0.1.1 and fd00:1::1) and backend
// namespaces (10.244.i.2 and fd00:244:i::2, node side .1 and ::1) that run
// TCP and UDP echo servers on port 8080 and 9090 of both families.
type world struct {
	t         *testing.T
	mode      string // proxy mode startProxy runs
	node      string // namespace names
	nodePath  string
	client    string
	clientNS  string
	backends  []string // backend IPv4 addresses
	backends6 []string // their IPv6 addresses, in the same order
	backendNS []string // their namespace paths, in the same order
}

const nodeIP = "10.0.1.1"

func newWorld(t *testing.T, backends int) *world {
	clustertest.RequireRoot(t)
	w := &world{t: t}
	mk := func(prefix string) (string, string) { return clustertest.NetNS(t, prefix) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	w.node, w.nodePath = mk("sbn")
	_, err := netnamespace.Exec(w.node, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	must(err)
	// A default route, as real nodes have: traffic to a VIP without
	// endpoints must reach the forward hook to be rejected.
	must(netnamespace.IP(w.node, "link", "add", "uplink", "type", "veth", "peer", "name", "uplink-peer"))
	must(netnamespace.IP(w.node, "link", "set", "uplink-peer", "up"))
	must(netnamespace.IP(w.node, "link", "set", "uplink", "up"))
	must(netnamespace.IP(w.node, "route", "add", "default", "dev", "uplink"))
	// link joins peerNS to the node: node side .1 (::1), peer side .2
	// (::2) of an IPv4 /24 and an IPv6 /64 (without duplicate address
	// detection, so the addresses work at once).
	link := func(peerNS, net4, net6 string) {
		dev := "v-" + peerNS[len(peerNS)-6:]
		must(netnamespace.IP(w.node, "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", peerNS))
		must(netnamespace.IP(w.node, "addr", "add", net4+".1/24", "dev", dev))
		must(netnamespace.IP(w.node, "addr", "add", net6+"::1/64", "dev", dev, "nodad"))
		must(netnamespace.IP(w.node, "link", "set", dev, "up"))
		must(netnamespace.IP(peerNS, "addr", "add", net4+".2/24", "dev", "eth0"))
		must(netnamespace.IP(peerNS, "addr", "add", net6+"::2/64", "dev", "eth0", "nodad"))
		must(netnamespace.IP(peerNS, "link", "set", "eth0", "up"))
		must(netnamespace.IP(peerNS, "route", "add", "default", "via", net4+".1"))
		must(netnamespace.IP(peerNS, "-6", "route", "add", "default", "via", net6+"::1"))
	}
	w.client, w.clientNS = mk("sbc")
	link(w.client, "10.0.1", "fd00:1")
	for i := 1; i <= backends; i++ {
		name, path := mk("sbb")
		addr := fmt.Sprintf("10.244.%d.2", i)
		link(name, fmt.Sprintf("10.244.%d", i), fmt.Sprintf("fd00:244:%d", i))
		w.backends = append(w.backends, addr)
		w.backends6 = append(w.backends6, fmt.Sprintf("fd00:244:%d::2", i))
		w.backendNS = append(w.backendNS, path)
		for _, port := range []int{8080, 9090} {
			serveEcho(t, path, addr, port)
		}
	}
	return w
}

// serveEcho answers every line (TCP) or datagram (UDP) with
// "<backend address> <peer address>", so a client learns which backend it
// reached and what source address that backend saw.
func serveEcho(t *testing.T, path, addr string, port int) {
	var l net.Listener
	var pc net.PacketConn
	err := netnamespace.Do(path, func() error {
		var err error
		if l, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); pc.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
					fmt.Fprintf(c, "%s %s\n", addr, c.RemoteAddr())
				}
			}()
		}
	}()
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(fmt.Appendf(nil, "%s %s\n", addr, from), from)
		}
	}()
}

// eachMode runs a test of behaviour every proxy mode must have once per
// mode, as subtests named after the mode (ipvs only where the kernel has
// IPVS).
func eachMode(t *testing.T, f func(t *testing.T, mode string)) {
	for _, mode := range proxy.Modes {
		t.Run(mode, func(t *testing.T) {
			if mode == proxy.ModeIPVS {
				clustertest.RequireIPVS(t)
			}
			f(t, mode)
		})
	}
}

// dial opens a TCP connection from the client namespace.
func (w *world) dial(target string) (net.Conn, error) {
	return dialFrom(w.clientNS, target, 3*time.Second)
}

// dialFrom opens a TCP connection from inside the namespace at path.
func dialFrom(path, target string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return netnamespace.Dial(ctx, path, "tcp", target)
}

// ask sends one line on c and returns the echo's backend and peer.
func ask(c net.Conn) (backend, peer string, err error) {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("hi\n")); err != nil {
		return "", "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", "", err
	}
	f := strings.Fields(line)
	if len(f) != 2 {
		return "", "", fmt.Errorf("bad echo %q", line)
	}
	return f[0], f[1], nil
}

// request makes one new connection to target and returns the backend.
func (w *world) request(target string) (backend, peer string, err error) {
	c, err := w.dial(target)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	return ask(c)
}

// eventually is clustertest.Eventually with this package's patience.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	clustertest.Eventually(t, what, 30*time.Second, f)
}

// seen makes n connections and returns the set of backends reached.
func (w *world) seen(target string, n int) (map[string]bool, error) {
	got := map[string]bool{}
	for range n {
		b, _, err := w.request(target)
		if err != nil {
			return got, err
		}
		got[b] = true
	}
	return got, nil
}

// proxiedWorld is most tests' set-up: a world of n backends whose node
// runs a proxy in mode, and a namespace for the test's objects on the
// test API server.
func proxiedWorld(t *testing.T, mode string, n int) (*world, kubernetes.Interface, string) {
	t.Helper()
	w := newWorld(t, n)
	w.mode = mode
	client, _ := clustertest.Client(t)
	ns := clustertest.Namespace(t, client)
	startProxy(t, w, proxy.Config{Client: client})
	return w, client, ns
}

func startProxy(t *testing.T, w *world, cfg proxy.Config) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cfg.NetNS = w.nodePath
	if cfg.Mode == "" {
		cfg.Mode = w.mode
	}
	cfg.NodeIPs = []netip.Addr{netip.MustParseAddr(nodeIP)}
	if cfg.NodeName == "" {
		cfg.NodeName = "node-a"
	}
	go func() { done <- proxy.Run(ctx, cfg) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("proxy.Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

type epSpec struct {
	addr        string
	node        string
	ready       bool
	terminating bool
}

func service(t *testing.T, c kubernetes.Interface, ns, name string, mod func(*v1.Service)) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1.ServiceSpec{Ports: []v1.ServicePort{
			{Name: "tcp", Port: 80, TargetPort: intstr.FromString("echo"), Protocol: v1.ProtocolTCP},
			{Name: "udp", Port: 53, TargetPort: intstr.FromInt32(9090), Protocol: v1.ProtocolUDP},
		}},
	}
	if mod != nil {
		mod(svc)
	}
	svc, err := c.CoreV1().Services(ns).Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// setSlice writes the Service's one EndpointSlice of the endpoints' family
// (IPv4 when there are none), as an EndpointSlice controller would: the
// named target port "echo" resolves to 8080.
func setSlice(t *testing.T, c kubernetes.Interface, ns, svc string, eps []epSpec) {
	name, family := svc+"-x", discoveryv1.AddressTypeIPv4
	if len(eps) > 0 && strings.Contains(eps[0].addr, ":") {
		name, family = svc+"-x6", discoveryv1.AddressTypeIPv6
	}
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: family,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("tcp"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)},
			{Name: ptr.To("udp"), Port: ptr.To[int32](9090), Protocol: ptr.To(v1.ProtocolUDP)},
		},
	}
	for _, e := range eps {
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{e.addr}, NodeName: ptr.To(e.node),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(e.ready), Serving: ptr.To(e.ready || e.terminating), Terminating: ptr.To(e.terminating)}})
	}
	clustertest.ApplySlice(t, c, ns, sl)
}

func want(backends ...string) map[string]bool {
	m := map[string]bool{}
	for _, b := range backends {
		m[b] = true
	}
	return m
}

func sameSet(a, b map[string]bool) bool { return maps.Equal(a, b) }

func ready(addr, node string) epSpec { return epSpec{addr: addr, node: node, ready: true} }

func TestClusterIPBalancingScalingAndRefusal(t *testing.T) {
	eachMode(t, testClusterIPBalancingScalingAndRefusal)
}

func testClusterIPBalancingScalingAndRefusal(t *testing.T, mode string) {
	w, client, ns := proxiedWorld(t, mode, 3)
	svc := service(t, client, ns, "web", nil)
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")

	// No endpoints yet: refused at once, not a timeout.
	eventually(t, "no-endpoint Service refuses", func() error {
		_, err := w.dial(vip)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("dial %s: got %v, want connection refused", vip, err)
		}
		return nil
	})

	b := w.backends
	setSlice(t, client, ns, "web", []epSpec{ready(b[0], "node-a"), ready(b[1], "node-b"), ready(b[2], "node-b")})
	eventually(t, "VIP reaches every ready backend", func() error {
		got, err := w.seen(vip, 40)
		if err != nil || !sameSet(got, want(b...)) {
			return fmt.Errorf("reached %v (err %v), want all of %v", got, err, b)
		}
		return nil
	})

	// Scale down, and an unready endpoint is not used.
	setSlice(t, client, ns, "web", []epSpec{ready(b[1], "node-b"), {addr: b[2], node: "node-b"}})
	eventually(t, "scaled down to one backend", func() error {
		got, err := w.seen(vip, 20)
		if err != nil || !sameSet(got, want(b[1])) {
			return fmt.Errorf("reached %v (err %v), want only %s", got, err, b[1])
		}
		return nil
	})

	// Terminating fallback: no ready endpoint, one serving-and-terminating.
	setSlice(t, client, ns, "web", []epSpec{{addr: b[0], node: "node-a", terminating: true}, {addr: b[1], node: "node-b"}})
	eventually(t, "terminating fallback", func() error {
		got, err := w.seen(vip, 10)
		if err != nil || !sameSet(got, want(b[0])) {
			return fmt.Errorf("reached %v (err %v), want only terminating %s", got, err, b[0])
		}
		return nil
	})

	// Scale to zero: refused again.
	setSlice(t, client, ns, "web", nil)
	eventually(t, "refused after scale to zero", func() error {
		_, err := w.dial(vip)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("dial: got %v, want connection refused", err)
		}
		return nil
	})
}

// TestDualStackClusterIP checks a dual-stack Service with an IPv4 and an
// IPv6 slice: each of its cluster IPs balances over the endpoints of its own
// family, with real packets through the node's ip and ip6 tables.
func TestDualStackClusterIP(t *testing.T) { eachMode(t, testDualStackClusterIP) }

func testDualStackClusterIP(t *testing.T, mode string) {
	w, client, ns := proxiedWorld(t, mode, 2)
	svc := service(t, client, ns, "web", func(s *v1.Service) {
		s.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicyRequireDualStack)
		s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol, v1.IPv4Protocol}
	})
	if len(svc.Spec.ClusterIPs) != 2 {
		t.Fatalf("dual-stack Service got cluster IPs %v", svc.Spec.ClusterIPs)
	}
	setSlice(t, client, ns, "web", []epSpec{ready(w.backends[0], "node-a"), ready(w.backends[1], "node-a")})
	setSlice(t, client, ns, "web", []epSpec{ready(w.backends6[0], "node-a"), ready(w.backends6[1], "node-a")})
	for _, ip := range svc.Spec.ClusterIPs {
		vip := net.JoinHostPort(ip, "80")
		eventually(t, "every backend answers on "+vip, func() error {
			got, err := w.seen(vip, 20)
			if err != nil {
				return err
			}
			if !sameSet(got, want(w.backends...)) {
				return fmt.Errorf("reached %v, want %v", got, w.backends)
			}
			return nil
		})
		// The echo reports the address it was reached from: the family of
		// the cluster IP, not a translation into the other.
		_, peer, err := w.request(vip)
		if err != nil {
			t.Fatal(err)
		}
		host, _, _ := net.SplitHostPort(peer)
		if a := netip.MustParseAddr(host); a.Is4() != netip.MustParseAddr(ip).Is4() {
			t.Errorf("request to %s arrived from %s", vip, peer)
		}
	}
}

func TestNodePortAndExternalTrafficPolicy(t *testing.T) {
	eachMode(t, testNodePortAndExternalTrafficPolicy)
}

func testNodePortAndExternalTrafficPolicy(t *testing.T, mode string) {
	w := newWorld(t, 2)
	w.mode = mode
	client, _ := clustertest.Client(t)
	ns := clustertest.Namespace(t, client)
	startProxy(t, w, proxy.Config{Client: client, NodeName: "node-a"})
	b := w.backends
	cluster := service(t, client, ns, "np", func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort })
	setSlice(t, client, ns, "np", []epSpec{ready(b[0], "node-a"), ready(b[1], "node-b")})
	local := service(t, client, ns, "local", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	})
	setSlice(t, client, ns, "local", []epSpec{ready(b[0], "node-a"), ready(b[1], "node-b")})

	np := net.JoinHostPort(nodeIP, fmt.Sprint(cluster.Spec.Ports[0].NodePort))
	eventually(t, "NodePort under Cluster policy reaches both backends, masqueraded", func() error {
		for range 30 {
			be, peer, err := w.request(np)
			if err != nil {
				return err
			}
			if strings.HasPrefix(peer, "10.0.1.2:") {
				return fmt.Errorf("backend %s saw the client's own address %s; Cluster policy must masquerade", be, peer)
			}
		}
		got, err := w.seen(np, 30)
		if err != nil || !sameSet(got, want(b...)) {
			return fmt.Errorf("reached %v (err %v)", got, err)
		}
		return nil
	})
	lp := net.JoinHostPort(nodeIP, fmt.Sprint(local.Spec.Ports[0].NodePort))
	eventually(t, "externalTrafficPolicy Local: only the local backend, client IP kept", func() error {
		for range 20 {
			be, peer, err := w.request(lp)
			if err != nil {
				return err
			}
			if be != b[0] || !strings.HasPrefix(peer, "10.0.1.2:") {
				return fmt.Errorf("reached %s seeing %s; want %s seeing 10.0.1.2", be, peer, b[0])
			}
		}
		return nil
	})
}

func TestRestartKeepsEstablishedConnections(t *testing.T) {
	eachMode(t, testRestartKeepsEstablishedConnections)
}

func testRestartKeepsEstablishedConnections(t *testing.T, mode string) {
	w := newWorld(t, 2)
	w.mode = mode
	client, _ := clustertest.Client(t)
	ns := clustertest.Namespace(t, client)
	stop := startProxy(t, w, proxy.Config{Client: client})
	svc := service(t, client, ns, "web", nil)
	setSlice(t, client, ns, "web", []epSpec{ready(w.backends[0], "node-a"), ready(w.backends[1], "node-a")})
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	var conns []net.Conn
	eventually(t, "connections through the VIP", func() error {
		c, err := w.dial(vip)
		if err != nil {
			return err
		}
		if _, _, err := ask(c); err != nil {
			c.Close()
			return err
		}
		conns = append(conns, c)
		if len(conns) < 5 {
			return errors.New("need more")
		}
		return nil
	})
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	first := map[net.Conn]string{}
	for _, c := range conns {
		be, _, err := ask(c)
		if err != nil {
			t.Fatal(err)
		}
		first[c] = be
	}
	// Steady traffic on every connection while the proxy stops and a new
	// one adopts the table.
	stopTraffic := make(chan struct{})
	errs := make(chan error, len(conns))
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stopTraffic:
					return
				default:
				}
				be, _, err := ask(c)
				if err == nil && be != first[c] {
					err = fmt.Errorf("connection moved from %s to %s", first[c], be)
				}
				if err != nil {
					errs <- err
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	stop()
	startProxy(t, w, proxy.Config{Client: client})
	// The new proxy must have adopted the table and be programming it: a
	// change made now shows up for new connections, while the established
	// ones keep their backend.
	setSlice(t, client, ns, "web", []epSpec{ready(w.backends[1], "node-a")})
	eventually(t, "restarted proxy programs changes", func() error {
		got, err := w.seen(vip, 10)
		if err != nil || !sameSet(got, want(w.backends[1])) {
			return fmt.Errorf("reached %v (err %v), want only %s", got, err, w.backends[1])
		}
		return nil
	})
	close(stopTraffic)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("established connection broken by restart: %v", err)
	}
}

// TestUDPStaleConntrackCleared: a UDP flow (one client socket, so one
// conntrack entry) that started before the proxy's first sync, and so went
// out untranslated, reaches the Service's endpoint after that sync, as
// kube-proxy reconciles conntrack on its first sync too; when that
// endpoint leaves the Service, the same flow moves to the new one.
func TestUDPStaleConntrackCleared(t *testing.T) { eachMode(t, testUDPStaleConntrackCleared) }

func testUDPStaleConntrackCleared(t *testing.T, mode string) {
	w := newWorld(t, 2)
	w.mode = mode
	client, _ := clustertest.Client(t)
	ns := clustertest.Namespace(t, client)
	svc := service(t, client, ns, "dns", nil)
	b := w.backends
	setSlice(t, client, ns, "dns", []epSpec{ready(b[0], "node-a")})
	// The node tracks connections before the proxy runs, as real nodes
	// do (their CNI's rules use conntrack): a namespace without any rule
	// using conntrack would not track the early datagram at all.
	if _, err := netnamespace.Exec(w.node, "nft", "add table inet sbtest; "+
		"add chain inet sbtest early { type filter hook forward priority 10; }; "+
		"add rule inet sbtest early ct state invalid counter"); err != nil {
		t.Fatal(err)
	}
	u := newUDPFlow(t, w, svc.Spec.ClusterIP, 53)
	// No proxy yet: the datagram is routed on (out of the uplink) and
	// leaves an untranslated conntrack entry, which every later datagram
	// of the socket keeps alive.
	if be, err := u.query(); err == nil {
		t.Fatalf("%s answered before the proxy ran", be)
	}
	if !hasUDPEntry(t, w, netip.MustParseAddrPort(net.JoinHostPort(svc.Spec.ClusterIP, "53"))) {
		t.Fatal("the early datagram left no conntrack entry: the test would show nothing")
	}
	startProxy(t, w, proxy.Config{Client: client})
	eventually(t, "the flow started before the first sync reaches the endpoint", u.reaches(b[0]))
	// The same client socket must move to the new endpoint once the old
	// one is removed.
	setSlice(t, client, ns, "dns", []epSpec{ready(b[1], "node-a")})
	eventually(t, "UDP flow moved to the new endpoint", u.reaches(b[1]))
}

// TestUDPFlowToServingTerminatingEndpointKept: as kube-proxy does, a UDP
// flow to an endpoint that is terminating but still serving is kept, even
// though new flows go to the ready endpoint only ("changes to the service
// should not affect existing flows"); once the endpoint leaves the
// Service, the flow moves.
func TestUDPFlowToServingTerminatingEndpointKept(t *testing.T) {
	eachMode(t, testUDPFlowToServingTerminatingEndpointKept)
}

func testUDPFlowToServingTerminatingEndpointKept(t *testing.T, mode string) {
	w, client, ns := proxiedWorld(t, mode, 2)
	svc := service(t, client, ns, "dns", nil)
	b := w.backends
	setSlice(t, client, ns, "dns", []epSpec{ready(b[0], "node-a")})
	old := newUDPFlow(t, w, svc.Spec.ClusterIP, 53)
	eventually(t, "UDP through the VIP", old.reaches(b[0]))
	setSlice(t, client, ns, "dns", []epSpec{{addr: b[0], node: "node-a", terminating: true}, ready(b[1], "node-a")})
	// A new flow reaching b[1] shows the change is programmed (each try
	// is a new socket: a flow that started before the change would stay
	// on b[0], being kept as well); the clean-up follows within the same
	// sync, so the old flow is watched for a while after.
	eventually(t, "a new flow reaches the ready endpoint", func() error {
		fresh := newUDPFlow(t, w, svc.Spec.ClusterIP, 53)
		defer fresh.conn.Close()
		return fresh.reaches(b[1])()
	})
	for range 10 {
		if err := old.reaches(b[0])(); err != nil {
			t.Fatalf("the flow to the serving terminating endpoint: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	setSlice(t, client, ns, "dns", []epSpec{ready(b[1], "node-a")})
	eventually(t, "the flow moves once its endpoint left", old.reaches(b[1]))
}

// hasUDPEntry reports whether the node's conntrack table holds a UDP
// entry whose original destination is dst.
func hasUDPEntry(t *testing.T, w *world, dst netip.AddrPort) bool {
	t.Helper()
	ns, err := netns.GetFromPath(w.nodePath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	flows, err := h.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range flows {
		a, _ := netip.AddrFromSlice(f.Forward.DstIP)
		if f.Forward.Protocol == unix.IPPROTO_UDP && netip.AddrPortFrom(a.Unmap(), f.Forward.DstPort) == dst {
			return true
		}
	}
	return false
}

// udpFlow is one UDP client socket in the client namespace, so one
// conntrack entry for as long as it keeps sending.
type udpFlow struct {
	conn net.PacketConn
	to   *net.UDPAddr
}

func newUDPFlow(t *testing.T, w *world, ip string, port int) *udpFlow {
	t.Helper()
	var conn net.PacketConn
	if err := netnamespace.Do(w.clientNS, func() error {
		var err error
		conn, err = net.ListenPacket("udp", "10.0.1.2:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &udpFlow{conn: conn, to: &net.UDPAddr{IP: net.ParseIP(ip), Port: port}}
}

// query sends one datagram and returns the backend that answered.
func (u *udpFlow) query() (string, error) {
	u.conn.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := u.conn.WriteTo([]byte("q"), u.to); err != nil {
		return "", err
	}
	buf := make([]byte, 256)
	n, _, err := u.conn.ReadFrom(buf)
	if err != nil {
		return "", err
	}
	return strings.Fields(string(buf[:n]))[0], nil
}

// reaches checks that one query is answered by backend.
func (u *udpFlow) reaches(backend string) func() error {
	return func() error {
		be, err := u.query()
		if err == nil && be != backend {
			err = fmt.Errorf("reached %s, want %s", be, backend)
		}
		return err
	}
}

func TestSessionAffinitySticks(t *testing.T) { eachMode(t, testSessionAffinitySticks) }

func testSessionAffinitySticks(t *testing.T, mode string) {
	w, client, ns := proxiedWorld(t, mode, 3)
	svc := service(t, client, ns, "sticky", func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](600)}}
	})
	b := w.backends
	setSlice(t, client, ns, "sticky", []epSpec{ready(b[0], "node-a"), ready(b[1], "node-a"), ready(b[2], "node-a")})
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	var first string
	eventually(t, "first connection", func() error {
		var err error
		first, _, err = w.request(vip)
		return err
	})
	got, err := w.seen(vip, 30)
	if err != nil || !sameSet(got, want(first)) {
		t.Fatalf("with ClientIP affinity reached %v (err %v), want only %s", got, err, first)
	}
	// The sticky endpoint goes away: the client is re-balanced at once.
	var rest []epSpec
	for _, a := range b {
		if a != first {
			rest = append(rest, ready(a, "node-a"))
		}
	}
	setSlice(t, client, ns, "sticky", rest)
	eventually(t, "affinity moves off a removed endpoint", func() error {
		got, err := w.seen(vip, 10)
		if err != nil || len(got) != 1 || got[first] {
			return fmt.Errorf("reached %v (err %v), want one backend other than %s", got, err, first)
		}
		return nil
	})
}

// TestSessionAffinityNodePort: ClientIP affinity holds for a Service's
// NodePort as for its ClusterIP (kube-proxy applies it to external traffic
// too), a client keeps its endpoint across the two, and affinity follows
// the Service when switched off and on.
func TestSessionAffinityNodePort(t *testing.T) { eachMode(t, testSessionAffinityNodePort) }

func testSessionAffinityNodePort(t *testing.T, mode string) {
	w, client, ns := proxiedWorld(t, mode, 3)
	svc := service(t, client, ns, "sticky-np", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	})
	b := w.backends
	setSlice(t, client, ns, "sticky-np", []epSpec{ready(b[0], "node-a"), ready(b[1], "node-a"), ready(b[2], "node-a")})
	np := net.JoinHostPort(nodeIP, fmt.Sprint(svc.Spec.Ports[0].NodePort))
	sticks := func(what string) {
		t.Helper()
		eventually(t, what, func() error {
			if _, _, err := w.request(np); err != nil {
				return err
			}
			got, err := w.seen(np, 30)
			if err != nil || len(got) != 1 {
				return fmt.Errorf("with ClientIP affinity the NodePort reached %v (err %v), want one backend", got, err)
			}
			return nil
		})
	}
	sticks("the NodePort keeps its client on one backend")
	// The client's endpoint is the Service port's, whichever front-end it
	// uses (kube-proxy records clients per endpoint).
	first, _, err := w.request(np)
	if err != nil {
		t.Fatal(err)
	}
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	if got, err := w.seen(vip, 30); err != nil || !sameSet(got, want(first)) {
		t.Errorf("through the ClusterIP the NodePort's client reached %v (err %v), want only %s", got, err, first)
	}
	setAffinity := func(a v1.ServiceAffinity) {
		t.Helper()
		s, err := client.CoreV1().Services(ns).Get(context.Background(), "sticky-np", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.Spec.SessionAffinity = a
		if a == v1.ServiceAffinityNone {
			s.Spec.SessionAffinityConfig = nil
		}
		if _, err := client.CoreV1().Services(ns).Update(context.Background(), s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	setAffinity(v1.ServiceAffinityNone)
	eventually(t, "without affinity the NodePort spreads again", func() error {
		got, err := w.seen(np, 30)
		if err != nil || len(got) < 2 {
			return fmt.Errorf("without affinity the NodePort reached %v (err %v), want several backends", got, err)
		}
		return nil
	})
	setAffinity(v1.ServiceAffinityClientIP)
	sticks("affinity switched back on holds again")
}

// TestSessionAffinityShortCircuit: under externalTrafficPolicy Local the
// node's own traffic to a NodePort goes to every endpoint (kube-proxy's
// short-circuit through the Service's chain), and ClientIP affinity holds
// there too.
func TestSessionAffinityShortCircuit(t *testing.T) { eachMode(t, testSessionAffinityShortCircuit) }

func testSessionAffinityShortCircuit(t *testing.T, mode string) {
	w, client, ns := proxiedWorld(t, mode, 3)
	svc := service(t, client, ns, "sticky-local", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	})
	b := w.backends
	// Every endpoint on another node: only the short-circuit reaches them.
	setSlice(t, client, ns, "sticky-local", []epSpec{ready(b[0], "node-b"), ready(b[1], "node-b"), ready(b[2], "node-b")})
	np := net.JoinHostPort(nodeIP, fmt.Sprint(svc.Spec.Ports[0].NodePort))
	fromNode := func() (string, error) {
		c, err := dialFrom(w.nodePath, np, 3*time.Second)
		if err != nil {
			return "", err
		}
		defer c.Close()
		be, _, err := ask(c)
		return be, err
	}
	eventually(t, "the node's own connections to the NodePort stick to one endpoint", func() error {
		got := map[string]bool{}
		for range 30 {
			be, err := fromNode()
			if err != nil {
				return err
			}
			got[be] = true
		}
		if len(got) != 1 {
			return fmt.Errorf("reached %v, want one backend", got)
		}
		return nil
	})
}

// TestSessionAffinityPerServicePort: two ports of one Service with the same
// protocol and target port keep their clients apart, as kube-proxy keeps a
// client list per Service port and endpoint. The client is stuck to
// backend 1 through port 81 while that port has it alone, and to backend 0
// through port 80 likewise; then port 81 gets backend 0 too. Records
// shared by the two ports would hold the client on backend 0 through port
// 81 as well (its affinity check tries backend 0 first, in the lower
// slot); per port, it stays on backend 1.
func TestSessionAffinityPerServicePort(t *testing.T) { eachMode(t, testSessionAffinityPerServicePort) }

func testSessionAffinityPerServicePort(t *testing.T, mode string) {
	w, client, ns := proxiedWorld(t, mode, 2)
	svc := service(t, client, ns, "sticky-ports", func(s *v1.Service) {
		s.Spec.Ports = []v1.ServicePort{
			{Name: "web", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: v1.ProtocolTCP},
			{Name: "alt", Port: 81, TargetPort: intstr.FromInt32(8080), Protocol: v1.ProtocolTCP},
			// probe shows when a change of the slice that also
			// carries it is programmed.
			{Name: "probe", Port: 82, TargetPort: intstr.FromInt32(9090), Protocol: v1.ProtocolTCP},
		}
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](600)}}
	})
	// slice is the Service's slice of backend b with the ports given
	// (all of a slice's endpoints serve all its ports).
	slice := func(name, b string, ports map[string]int32) {
		sl := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: "sticky-ports"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{b}, NodeName: ptr.To("node-a"),
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}}},
		}
		for n, p := range ports {
			sl.Ports = append(sl.Ports, discoveryv1.EndpointPort{Name: ptr.To(n), Port: ptr.To(p), Protocol: ptr.To(v1.ProtocolTCP)})
		}
		clustertest.ApplySlice(t, client, ns, sl)
	}
	b := w.backends
	slice("sticky-ports-0", b[0], map[string]int32{"web": 8080})
	slice("sticky-ports-1", b[1], map[string]int32{"alt": 8080})
	port := func(p int) string { return net.JoinHostPort(svc.Spec.ClusterIP, fmt.Sprint(p)) }
	reaches := func(p int, backend string) func() error {
		return func() error {
			got, err := w.seen(port(p), 5)
			if err != nil || !sameSet(got, want(backend)) {
				return fmt.Errorf("port %d reached %v (err %v), want only %s", p, got, err, backend)
			}
			return nil
		}
	}
	eventually(t, "port 81 records the client with backend 1, its only endpoint", reaches(81, b[1]))
	eventually(t, "port 80 records the client with backend 0, its only endpoint", reaches(80, b[0]))
	slice("sticky-ports-0", b[0], map[string]int32{"web": 8080, "alt": 8080, "probe": 9090})
	eventually(t, "port 82 (in the same slice change as backend 0 for port 81) reaches backend 0", reaches(82, b[0]))
	if got, err := w.seen(port(81), 20); err != nil || !sameSet(got, want(b[1])) {
		t.Errorf("with backend 0 added to port 81, port 81 reached %v (err %v), want only %s, its own record: "+
			"the client was recorded with %s through port 80 only", got, err, b[1], b[0])
	}
}

// httpGet fetches url from inside the namespace at path.
func httpGet(path, url string) (*http.Response, string, error) {
	resp, err := netnamespace.HTTPClient(path, 3*time.Second).Get(url)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, string(body), err
}

func TestLoadBalancerHealthCheckNodePortHealthzMetricsAndHairpin(t *testing.T) {
	eachMode(t, testLoadBalancerHealthCheckNodePortHealthzMetricsAndHairpin)
}

func testLoadBalancerHealthCheckNodePortHealthzMetricsAndHairpin(t *testing.T, mode string) {
	w := newWorld(t, 2)
	w.mode = mode
	client, _ := clustertest.Client(t)
	ns := clustertest.Namespace(t, client)
	ensureNode(t, client, "node-a", nil)
	startProxy(t, w, proxy.Config{Client: client, NodeName: "node-a",
		HealthzBindAddress: "127.0.0.1:10256", MetricsBindAddress: "127.0.0.1:10249"})
	b := w.backends
	svc := service(t, client, ns, "lb", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	})
	svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "192.0.2.10"}}
	if _, err := client.CoreV1().Services(ns).UpdateStatus(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	hc := svc.Spec.HealthCheckNodePort
	if hc == 0 {
		t.Fatal("API server allocated no healthCheckNodePort")
	}
	hcURL := fmt.Sprintf("http://%s:%d/", nodeIP, hc)
	setSlice(t, client, ns, "lb", []epSpec{ready(b[1], "node-b")})
	eventually(t, "health check reports no local endpoints", func() error {
		resp, body, err := httpGet(w.clientNS, hcURL)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, `"localEndpoints": 0`) {
			return fmt.Errorf("got %d %s", resp.StatusCode, body)
		}
		return nil
	})
	setSlice(t, client, ns, "lb", []epSpec{ready(b[0], "node-a"), ready(b[1], "node-b")})
	eventually(t, "health check reports the local endpoint", func() error {
		resp, body, err := httpGet(w.clientNS, hcURL)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"localEndpoints": 1`) ||
			resp.Header.Get("X-Load-Balancing-Endpoint-Weight") != "1" || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			return fmt.Errorf("got %d %v %s", resp.StatusCode, resp.Header, body)
		}
		return nil
	})
	eventually(t, "LB ingress IP reaches only the local endpoint with the client's address", func() error {
		for range 10 {
			be, peer, err := w.request("192.0.2.10:80")
			if err != nil {
				return err
			}
			if be != b[0] || !strings.HasPrefix(peer, "10.0.1.2:") {
				return fmt.Errorf("reached %s seeing %s", be, peer)
			}
		}
		return nil
	})

	// loadBalancerSourceRanges: a range holding the client lets it in, one
	// that does not keeps it out (dropped, as kube-proxy does).
	restrict := func(cidr string) {
		s, err := client.CoreV1().Services(ns).Get(context.Background(), "lb", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.Spec.LoadBalancerSourceRanges = []string{cidr}
		if _, err := client.CoreV1().Services(ns).Update(context.Background(), s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	restrict("192.168.0.0/16")
	eventually(t, "client outside loadBalancerSourceRanges is kept out", func() error {
		c, err := dialFrom(w.clientNS, "192.0.2.10:80", 500*time.Millisecond)
		if err == nil {
			c.Close()
			return errors.New("connected from outside the allowed ranges")
		}
		return nil
	})
	restrict("10.0.1.0/24")
	eventually(t, "client inside loadBalancerSourceRanges gets in", func() error {
		_, _, err := w.request("192.0.2.10:80")
		return err
	})

	// Hairpin: the local pod reaches itself through the ClusterIP; it
	// must see the node's address, not its own, or its reply would bypass
	// the reverse translation.
	self := service(t, client, ns, "self", nil)
	setSlice(t, client, ns, "self", []epSpec{ready(b[0], "node-a")})
	backendNS := w.backendNS[0]
	eventually(t, "hairpin is masqueraded", func() error {
		c, err := dialFrom(backendNS, net.JoinHostPort(self.Spec.ClusterIP, "80"), 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		be, peer, err := ask(c)
		if err != nil {
			return err
		}
		if be != b[0] || !strings.HasPrefix(peer, "10.244.1.1:") {
			return fmt.Errorf("reached %s seeing %s; want %s seeing the node 10.244.1.1", be, peer, b[0])
		}
		return nil
	})

	resp, body, err := httpGet(w.nodePath, "http://127.0.0.1:10256/healthz")
	if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(body, `"lastUpdated"`) {
		t.Errorf("/healthz: %v %v %s", resp, err, body)
	}
	resp, body, err = httpGet(w.nodePath, "http://127.0.0.1:10256/livez")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("/livez: %v %v %s", resp, err, body)
	}
	_, body, err = httpGet(w.nodePath, "http://127.0.0.1:10249/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"switchboard_proxy_sync_duration_seconds_count", "switchboard_proxy_services ", "switchboard_proxy_nftables_elements "} {
		if !strings.Contains(body, m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
}

// TestSwitchingModesRemovesThePreviousModesRules runs the proxy on one node
// in each mode in turn, as an operator switching --proxy-mode would: each
// run serves the VIP with real packets, and removes what the previous mode
// programmed (kube-proxy's --cleanup), so no stale translation is left.
func TestSwitchingModesRemovesThePreviousModesRules(t *testing.T) {
	w := newWorld(t, 1)
	client, _ := clustertest.Client(t)
	ns := clustertest.Namespace(t, client)
	svc := service(t, client, ns, "web", nil)
	setSlice(t, client, ns, "web", []epSpec{ready(w.backends[0], "node-a")})
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	nftTables := func() string {
		out, err := netnamespace.Exec(w.node, "nft", "list", "tables")
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	iptChains := func() string {
		var b strings.Builder
		for _, bin := range []string{"iptables-save", "ip6tables-save"} {
			out, err := netnamespace.Exec(w.node, bin)
			if err != nil {
				t.Fatal(err)
			}
			b.WriteString(out)
		}
		return b.String()
	}
	for _, mode := range []string{proxy.ModeNFTables, proxy.ModeIPTables, proxy.ModeNFTables} {
		stop := startProxy(t, w, proxy.Config{Client: client, Mode: mode})
		// The previous mode's rules may serve the VIP until the new run's
		// first sync: wait for the state only this mode leaves, then send.
		eventually(t, mode+" mode alone programs the node", func() error {
			hasTable := strings.Contains(nftTables(), "switchboard")
			hasChains := strings.Contains(iptChains(), "SWB-")
			if (mode == proxy.ModeNFTables) != hasTable || (mode == proxy.ModeIPTables) != hasChains {
				return fmt.Errorf("nftables table %v, iptables chains of ours %v", hasTable, hasChains)
			}
			return nil
		})
		eventually(t, mode+" mode serves the VIP", func() error {
			b, _, err := w.request(vip)
			if err == nil && b != w.backends[0] {
				err = fmt.Errorf("reached %s", b)
			}
			return err
		})
		stop()
	}
}

// TestRunReturnsItsError: an error after the informers started (here, a
// network namespace that does not exist) is returned, not swallowed by a
// wait for informers that stop only with the caller's context.
func TestRunReturnsItsError(t *testing.T) {
	c, _ := clustertest.Client(t)
	done := make(chan error, 1)
	go func() {
		done <- proxy.Run(context.Background(), proxy.Config{Client: c, NodeName: "node-missing-netns",
			NodeIPs: []netip.Addr{netip.MustParseAddr(nodeIP)}, NetNS: "/run/netns/switchboard-test-no-such-namespace"})
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "switchboard-test-no-such-namespace") {
			t.Errorf("proxy.Run: %v, want an error naming the namespace", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("proxy.Run did not return its error (it waits for informers that stop only with ctx)")
	}
}
