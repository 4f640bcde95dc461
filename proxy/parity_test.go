package proxy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/switchboard/switchboard/clustertest"
	"github.com/switchboard/switchboard/netnamespace"
	"github.com/switchboard/switchboard/proxy"
)

// The tests in this file each cover one behaviour where switchboard proxy
// differed from kube-proxy v1.36.3 (issue 15), with real packets.

// leaving counts the packets to addr that leave the node namespace by any
// interface (its default route answers for every address): a packet the
// proxy should have rejected or dropped must not be among them.
func leaving(t *testing.T, w *world, addr string) func() int {
	t.Helper()
	fam, table := "ip", "probe4"
	if strings.Contains(addr, ":") {
		fam, table = "ip6", "probe6"
	}
	name := table + strconv.Itoa(int(time.Now().UnixNano()%100000))
	if _, err := netnamespace.Exec(w.node, "nft", fmt.Sprintf("add table %s %s; add chain %s %s post { type filter hook postrouting priority 200; }; add rule %s %s post %s daddr %s counter",
		fam, name, fam, name, fam, name, fam, addr)); err != nil {
		t.Fatal(err)
	}
	return func() int {
		out, err := netnamespace.Exec(w.node, "nft", "list", "table", fam, name)
		if err != nil {
			t.Fatal(err)
		}
		i := strings.Index(out, "counter packets ")
		if i < 0 {
			t.Fatalf("no counter in %s", out)
		}
		n, _ := strconv.Atoi(strings.Fields(out[i+len("counter packets "):])[0])
		return n
	}
}

// ensureNode creates (or relabels) the proxy's Node object, as a kubelet
// would: kube-proxy reads its zone label and its eligibility from it.
func ensureNode(t *testing.T, c kubernetes.Interface, name string, labels map[string]string) {
	t.Helper()
	ctx := context.Background()
	n, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = c.CoreV1().Nodes().Create(ctx, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
		if err == nil {
			t.Cleanup(func() { c.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
		}
	} else if err == nil {
		n.Labels = labels
		_, err = c.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// slice writes the Service's IPv4 slice with full control of conditions
// and hints.
func slice(t *testing.T, c kubernetes.Interface, ns, svc string, eps ...discoveryv1.Endpoint) {
	clustertest.ApplySlice(t, c, ns, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: svc + "-x", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("tcp"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)},
			{Name: ptr.To("udp"), Port: ptr.To[int32](9090), Protocol: ptr.To(v1.ProtocolUDP)},
		},
		Endpoints: eps,
	})
}

func setLBIngress(t *testing.T, c kubernetes.Interface, svc *v1.Service, ing ...v1.LoadBalancerIngress) {
	t.Helper()
	svc.Status.LoadBalancer.Ingress = ing
	if _, err := c.CoreV1().Services(svc.Namespace).UpdateStatus(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func refused(ns, target string) error {
	c, err := dialFrom(ns, target, 2*time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("dial %s connected", target)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("dial %s: %v, want connection refused", target, err)
	}
	return nil
}

func unreachable(ns, target string) error {
	c, err := dialFrom(ns, target, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("dial %s connected", target)
	}
	return nil
}

// Item 1: a ClusterIP on a port its Service lacks is rejected; an address
// of the Service CIDRs no Service holds (never allocated, or a deleted
// Service's), IPv4 and IPv6, is dropped: neither leaves the node.
func TestServiceCIDRUnknownPortRejectedUnallocatedDropped(t *testing.T) {
	eachMode(t, testServiceCIDRUnknownPortRejectedUnallocatedDropped)
}

func testServiceCIDRUnknownPortRejectedUnallocatedDropped(t *testing.T, mode string) {
	w, client, ns := proxiedWorld(t, mode, 1)
	svc := service(t, client, ns, "web", nil)
	setSlice(t, client, ns, "web", []epSpec{ready(w.backends[0], "node-a")})
	gone := service(t, client, ns, "gone", func(s *v1.Service) {
		s.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicyRequireDualStack)
	})
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	eventually(t, "Service answers", func() error { _, _, err := w.request(vip); return err })

	eventually(t, "unknown port of a ClusterIP is rejected, from a pod and from the node", func() error {
		for _, from := range []string{w.clientNS, w.nodePath} {
			if err := refused(from, net.JoinHostPort(svc.Spec.ClusterIP, "81")); err != nil {
				return err
			}
		}
		return nil
	})
	if err := client.CoreV1().Services(ns).Delete(context.Background(), "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	targets := append([]string{"10.96.255.254", "fd00:10:96::fffe"}, gone.Spec.ClusterIPs...)
	for _, ip := range targets {
		count := leaving(t, w, ip)
		target := net.JoinHostPort(ip, "80")
		eventually(t, "unallocated "+ip+" is dropped on the node", func() error {
			before := count()
			for _, from := range []string{w.clientNS, w.nodePath} {
				if err := unreachable(from, target); err != nil {
					return err
				}
			}
			if n := count() - before; n != 0 {
				return fmt.Errorf("%d packets to %s left the node", n, ip)
			}
			return nil
		})
	}
}

// Item 2: an endpoint with serving unset is serving (the API's default);
// with no ready endpoint, a terminating one with serving unset still
// takes traffic.
func TestServingUnsetIsServing(t *testing.T) { eachMode(t, testServingUnsetIsServing) }

func testServingUnsetIsServing(t *testing.T, mode string) {
	w, client, ns := proxiedWorld(t, mode, 2)
	svc := service(t, client, ns, "web", nil)
	slice(t, client, ns, "web",
		discoveryv1.Endpoint{Addresses: []string{w.backends[0]}, NodeName: ptr.To("node-b"),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false), Terminating: ptr.To(true)}},
		discoveryv1.Endpoint{Addresses: []string{w.backends[1]}, NodeName: ptr.To("node-b"),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false), Terminating: ptr.To(true)}})
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	eventually(t, "terminating endpoint with serving unset takes the traffic", func() error {
		got, err := w.seen(vip, 10)
		if err != nil || !sameSet(got, want(w.backends[0])) {
			return fmt.Errorf("reached %v (err %v), want only %s", got, err, w.backends[0])
		}
		return nil
	})
}

// Items 3 and 4: loadBalancerSourceRanges hold for the node's own traffic
// too (a range with the node's address lets it in); an ingress with ipMode
// Proxy is left alone, so traffic to it reaches the real load balancer.
func TestLoadBalancerSourceRangesFromNodeAndIPModeProxy(t *testing.T) {
	eachMode(t, testLoadBalancerSourceRangesFromNodeAndIPModeProxy)
}

func testLoadBalancerSourceRangesFromNodeAndIPModeProxy(t *testing.T, mode string) {
	w, client, ns := proxiedWorld(t, mode, 1)
	svc := service(t, client, ns, "lb", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.LoadBalancerSourceRanges = []string{"192.168.0.0/16"}
	})
	setLBIngress(t, client, svc, v1.LoadBalancerIngress{IP: "192.0.2.10"},
		v1.LoadBalancerIngress{IP: "192.0.2.11", IPMode: ptr.To(v1.LoadBalancerIPModeProxy)})
	setSlice(t, client, ns, "lb", []epSpec{ready(w.backends[0], "node-a")})
	eventually(t, "node outside the source ranges is kept out", func() error {
		if _, _, err := w.request(net.JoinHostPort(svc.Spec.ClusterIP, "80")); err != nil {
			return err
		}
		return unreachable(w.nodePath, "192.0.2.10:80")
	})
	svc, err := client.CoreV1().Services(ns).Get(context.Background(), "lb", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Spec.LoadBalancerSourceRanges = []string{"10.0.0.0/8"}
	if _, err := client.CoreV1().Services(ns).Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "node inside the source ranges gets in", func() error {
		c, err := dialFrom(w.nodePath, "192.0.2.10:80", 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_, _, err = ask(c)
		return err
	})
	count := leaving(t, w, "192.0.2.11")
	before := count()
	if err := unreachable(w.clientNS, "192.0.2.11:80"); err != nil {
		t.Errorf("ipMode Proxy ingress: %v; want the connection left to the load balancer", err)
	}
	if count() == before {
		t.Errorf("nothing to the ipMode Proxy ingress 192.0.2.11 left the node")
	}
}

// Item 5: externalTrafficPolicy Local does not govern traffic from the
// node's pods or the node itself: without a local endpoint they reach the
// Service's other endpoints through its LB IP and NodePort, while an
// external client is dropped.
func TestExternalTrafficPolicyLocalShortCircuit(t *testing.T) {
	eachMode(t, testExternalTrafficPolicyLocalShortCircuit)
}

func testExternalTrafficPolicyLocalShortCircuit(t *testing.T, mode string) {
	w := newWorld(t, 2)
	w.mode = mode
	client, _ := clustertest.Client(t)
	ns := clustertest.Namespace(t, client)
	startProxy(t, w, proxy.Config{Client: client, ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}})
	svc := service(t, client, ns, "lb", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	})
	setLBIngress(t, client, svc, v1.LoadBalancerIngress{IP: "192.0.2.30"})
	// The pod in backend namespace 0 has no endpoint of this Service; the
	// only endpoint is on another node.
	setSlice(t, client, ns, "lb", []epSpec{ready(w.backends[1], "node-b")})
	np := net.JoinHostPort(nodeIP, fmt.Sprint(svc.Spec.Ports[0].NodePort))
	pod := w.backendNS[0]
	eventually(t, "pod and node reach the remote endpoint through LB IP and NodePort", func() error {
		for _, c := range []struct{ from, target string }{{pod, "192.0.2.30:80"}, {pod, np}, {w.nodePath, np}, {w.nodePath, "192.0.2.30:80"}} {
			conn, err := dialFrom(c.from, c.target, 2*time.Second)
			if err != nil {
				return fmt.Errorf("%s from %s: %w", c.target, c.from, err)
			}
			be, _, err := ask(conn)
			conn.Close()
			if err != nil || be != w.backends[1] {
				return fmt.Errorf("%s from %s reached %q (%v)", c.target, c.from, be, err)
			}
		}
		return nil
	})
	if err := unreachable(w.clientNS, np); err != nil {
		t.Errorf("external client on a node without local endpoints: %v; want dropped", err)
	}
}

// Items 6, 7 and 8: the healthCheckNodePort counts only ready local
// endpoints and answers on the node's addresses only; /healthz and /livez
// carry kube-proxy's body.
func TestHealthCheckNodePortAndHealthzLikeKubeProxy(t *testing.T) {
	eachMode(t, testHealthCheckNodePortAndHealthzLikeKubeProxy)
}

func testHealthCheckNodePortAndHealthzLikeKubeProxy(t *testing.T, mode string) {
	w := newWorld(t, 2)
	w.mode = mode
	client, _ := clustertest.Client(t)
	ns := clustertest.Namespace(t, client)
	ensureNode(t, client, "node-a", nil)
	startProxy(t, w, proxy.Config{Client: client, HealthzBindAddress: "127.0.0.1:10256"})
	svc := service(t, client, ns, "lb", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	})
	hc := svc.Spec.HealthCheckNodePort
	setSlice(t, client, ns, "lb", []epSpec{{addr: w.backends[0], node: "node-a", terminating: true}, ready(w.backends[1], "node-b")})
	hcURL := fmt.Sprintf("http://%s:%d/", nodeIP, hc)
	wantBody := func(n int) string {
		return fmt.Sprintf("{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": \"lb\"\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": true\n}", ns, n)
	}
	eventually(t, "only a terminating local endpoint: 503, none counted", func() error {
		resp, body, err := httpGet(w.clientNS, hcURL)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusServiceUnavailable || body != wantBody(0) {
			return fmt.Errorf("got %d %q", resp.StatusCode, body)
		}
		return nil
	})
	setSlice(t, client, ns, "lb", []epSpec{ready(w.backends[0], "node-a"), ready(w.backends[1], "node-b")})
	eventually(t, "a ready local endpoint: 200, one counted", func() error {
		resp, body, err := httpGet(w.clientNS, hcURL)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || body != wantBody(1) {
			return fmt.Errorf("got %d %q", resp.StatusCode, body)
		}
		return nil
	})
	if resp, body, err := httpGet(w.nodePath, fmt.Sprintf("http://127.0.0.1:%d/", hc)); err == nil {
		t.Errorf("healthCheckNodePort answers on 127.0.0.1: %d %s", resp.StatusCode, body)
	}

	for _, path := range []string{"/healthz", "/livez"} {
		resp, body, err := httpGet(w.nodePath, "http://127.0.0.1:10256"+path)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %v %v %s", path, resp, err, body)
		}
		var got map[string]json.RawMessage
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("%s body %s: %v", path, body, err)
		}
		keys := []string{"currentTime", "healthy", "lastUpdated", "status"}
		if path == "/healthz" {
			keys = append(keys, "nodeEligible")
			if string(got["nodeEligible"]) != "true" {
				t.Errorf("/healthz nodeEligible %s", got["nodeEligible"])
			}
		}
		slices.Sort(keys)
		if k := slices.Sorted(maps.Keys(got)); !slices.Equal(k, keys) {
			t.Errorf("%s fields %v, want kube-proxy's %v", path, k, keys)
		}
		if string(got["healthy"]) != "true" {
			t.Errorf("%s healthy %s", path, got["healthy"])
		}
		var status map[string]map[string]json.RawMessage
		if err := json.Unmarshal(got["status"], &status); err != nil {
			t.Fatal(err)
		}
		for _, fam := range []string{"IPv4", "IPv6"} {
			if s, ok := status[fam]; !ok || string(s["healthy"]) != "true" || len(s["lastUpdated"]) == 0 {
				t.Errorf("%s status[%s] = %v", path, fam, s)
			}
		}
	}
}

// Item 9: topology hints. With zone hints on the slice, the ClusterIP
// reaches only the endpoints hinted for this node's zone; when none is
// hinted for it, all of them.
func TestTopologyHints(t *testing.T) { eachMode(t, testTopologyHints) }

func testTopologyHints(t *testing.T, mode string) {
	w := newWorld(t, 2)
	w.mode = mode
	client, _ := clustertest.Client(t)
	ns := clustertest.Namespace(t, client)
	ensureNode(t, client, "node-a", map[string]string{v1.LabelTopologyZone: "zone-a"})
	startProxy(t, w, proxy.Config{Client: client})
	svc := service(t, client, ns, "web", nil)
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	hinted := func(addr, zone string) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: []string{addr}, NodeName: ptr.To("node-b"), Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			Hints: &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: zone}}}}
	}
	slice(t, client, ns, "web", hinted(w.backends[0], "zone-a"), hinted(w.backends[1], "zone-b"))
	eventually(t, "only the endpoint hinted for zone-a", func() error {
		got, err := w.seen(vip, 20)
		if err != nil || !sameSet(got, want(w.backends[0])) {
			return fmt.Errorf("reached %v (err %v), want only %s", got, err, w.backends[0])
		}
		return nil
	})
	slice(t, client, ns, "web", hinted(w.backends[0], "zone-c"), hinted(w.backends[1], "zone-b"))
	eventually(t, "no endpoint for zone-a: all", func() error {
		got, err := w.seen(vip, 30)
		if err != nil || !sameSet(got, want(w.backends...)) {
			return fmt.Errorf("reached %v (err %v), want all", got, err)
		}
		return nil
	})
}

// Item 7 with kube-proxy's --nodeport-addresses: NodePorts and the
// healthCheckNodePort answer on the node's addresses in the CIDRs only.
func TestNodePortAddresses(t *testing.T) {
	w := newWorld(t, 1)
	client, _ := clustertest.Client(t)
	ns := clustertest.Namespace(t, client)
	startProxy(t, w, proxy.Config{Client: client, NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}})
	svc := service(t, client, ns, "lb", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	})
	setSlice(t, client, ns, "lb", []epSpec{ready(w.backends[0], "node-a")})
	np, hc := fmt.Sprint(svc.Spec.Ports[0].NodePort), fmt.Sprint(svc.Spec.HealthCheckNodePort)
	eventually(t, "NodePort and health check answer on the address in --nodeport-addresses", func() error {
		if _, _, err := w.request(net.JoinHostPort("10.244.1.1", np)); err != nil {
			return err
		}
		resp, _, err := httpGet(w.clientNS, "http://"+net.JoinHostPort("10.244.1.1", hc)+"/")
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("health check: %d", resp.StatusCode)
		}
		return nil
	})
	if err := refused(w.clientNS, net.JoinHostPort(nodeIP, np)); err != nil {
		t.Errorf("NodePort on an address outside --nodeport-addresses: %v", err)
	}
	if err := refused(w.clientNS, net.JoinHostPort(nodeIP, hc)); err != nil {
		t.Errorf("health check on an address outside --nodeport-addresses: %v", err)
	}
}
