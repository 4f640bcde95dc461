package snapshot

import (
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

func TestBuildService(t *testing.T) {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeNodePort, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			ExternalTrafficPolicy: v1.ServiceExternalTrafficPolicyLocal, HealthCheckNodePort: 31000,
			Ports: []v1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromString("web"), NodePort: 30080, Protocol: v1.ProtocolTCP},
				{Name: "dns", Port: 53, TargetPort: intstr.FromInt32(5353), Protocol: v1.ProtocolUDP},
			},
		},
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "web-1"},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)},
			{Name: ptr.To("dns"), Port: ptr.To[int32](5353), Protocol: ptr.To(v1.ProtocolUDP)},
		},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.244.1.3"}, NodeName: ptr.To("n1"), Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}},
			{Addresses: []string{"10.244.2.3"}, NodeName: ptr.To("n2"), Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}},
			{Addresses: []string{"fd00::1"}},
		},
	}
	ports := BuildService(svc, []*discoveryv1.EndpointSlice{slice}, Node{Name: "n1"})
	if len(ports) != 2 {
		t.Fatalf("got %d ports, want 2", len(ports))
	}
	http := ports[0]
	if http.NodePort != 30080 || !http.ExternalLocal || http.HealthCheckNodePort != 31000 {
		t.Errorf("http port: %+v", http)
	}
	if len(http.Endpoints) != 2 {
		t.Fatalf("http endpoints: %+v (an IPv6 endpoint must not join an IPv4-only Service)", http.Endpoints)
	}
	if e := http.Endpoints[0]; e.Port != 8080 || !e.Local || !e.Ready {
		t.Errorf("named targetPort resolved from the slice: %+v", e)
	}
	if e := http.Endpoints[1]; e.Ready || !e.Serving || !e.Terminating || e.Local {
		t.Errorf("terminating endpoint: %+v", e)
	}
	if got := http.ExternalEndpoints(); len(got) != 1 || got[0].Addr != netip.MustParseAddr("10.244.1.3") {
		t.Errorf("external endpoints under Local policy: %+v", got)
	}
	if n := LocalReadyEndpoints(ports, true); n != 1 {
		t.Errorf("health check count %d, want 1", n)
	}
	if dns := ports[1]; dns.Protocol != v1.ProtocolUDP || dns.NodePort != 0 || len(dns.Endpoints) != 2 || dns.Endpoints[0].Port != 5353 {
		t.Errorf("dns port: %+v", dns)
	}
	if BuildService(&v1.Service{Spec: v1.ServiceSpec{ClusterIP: "None"}}, nil, Node{Name: "n1"}) != nil {
		t.Errorf("headless Service must not be programmed")
	}
}

// TestServingUnsetReadsAsTrue: the API documents an unset serving
// condition as true, and kube-proxy falls back to such an endpoint when
// none is ready (issue 15, item 2).
func TestServingUnsetReadsAsTrue(t *testing.T) {
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: v1.ServiceSpec{ClusterIP: "10.96.0.10", Ports: []v1.ServicePort{{Port: 80, Protocol: v1.ProtocolTCP}}}}
	slice := &discoveryv1.EndpointSlice{
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Port: ptr.To[int32](8080)}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.244.1.3"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false), Terminating: ptr.To(true)}},
		},
	}
	ports := BuildService(svc, []*discoveryv1.EndpointSlice{slice}, Node{Name: "n1"})
	if got := ports[0].ClusterEndpoints(); len(got) != 1 || !got[0].Serving {
		t.Errorf("cluster endpoints %+v, want the terminating endpoint with serving unset", got)
	}
}

// TestIPModeProxyNotCaptured: a load balancer ingress with ipMode Proxy
// proxies to the nodes itself; kube-proxy leaves its address alone.
func TestIPModeProxyNotCaptured(t *testing.T) {
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "lb"},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.10", Ports: []v1.ServicePort{{Port: 80, NodePort: 30080, Protocol: v1.ProtocolTCP}}},
		Status: v1.ServiceStatus{LoadBalancer: v1.LoadBalancerStatus{Ingress: []v1.LoadBalancerIngress{
			{IP: "192.0.2.1", IPMode: ptr.To(v1.LoadBalancerIPModeProxy)},
			{IP: "192.0.2.2", IPMode: ptr.To(v1.LoadBalancerIPModeVIP)},
			{IP: "192.0.2.3"},
		}}}}
	got := BuildService(svc, nil, Node{Name: "n1"})[0].LoadBalancerIPs
	want := []netip.Addr{netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")}
	if !slices.Equal(got, want) {
		t.Errorf("load balancer IPs %v, want %v", got, want)
	}
}

// TestTopologyHints follows kube-proxy's topologyModeFromHints: node hints
// first (when every ready endpoint has one and one is for this node), then
// zone hints (likewise), else no topology; hints of one family do not
// decide the other's.
func TestTopologyHints(t *testing.T) {
	zone := func(z ...string) *discoveryv1.EndpointHints {
		h := &discoveryv1.EndpointHints{}
		for _, n := range z {
			h.ForZones = append(h.ForZones, discoveryv1.ForZone{Name: n})
		}
		return h
	}
	withNodes := func(h *discoveryv1.EndpointHints, n ...string) *discoveryv1.EndpointHints {
		for _, x := range n {
			h.ForNodes = append(h.ForNodes, discoveryv1.ForNode{Name: x})
		}
		return h
	}
	type epIn struct {
		addr  string
		ready bool
		hints *discoveryv1.EndpointHints
	}
	cases := []struct {
		name string
		eps  []epIn
		zone string
		want []string
	}{
		{"zone hints for this zone", []epIn{{"10.0.0.1", true, zone("a")}, {"10.0.0.2", true, zone("b")}, {"10.0.0.3", true, zone("a", "b")}}, "a", []string{"10.0.0.1", "10.0.0.3"}},
		{"no hint for this zone: all", []epIn{{"10.0.0.1", true, zone("a")}, {"10.0.0.2", true, zone("b")}}, "c", []string{"10.0.0.1", "10.0.0.2"}},
		{"node without a zone label: all", []epIn{{"10.0.0.1", true, zone("a")}, {"10.0.0.2", true, zone("b")}}, "", []string{"10.0.0.1", "10.0.0.2"}},
		{"a ready endpoint without hints: all", []epIn{{"10.0.0.1", true, zone("a")}, {"10.0.0.2", true, nil}}, "a", []string{"10.0.0.1", "10.0.0.2"}},
		{"an unready endpoint without hints does not count", []epIn{{"10.0.0.1", true, zone("a")}, {"10.0.0.2", true, zone("b")}, {"10.0.0.3", false, nil}}, "a", []string{"10.0.0.1"}},
		{"node hints win over zone hints", []epIn{{"10.0.0.1", true, withNodes(zone("a"), "n2")}, {"10.0.0.2", true, withNodes(zone("a"), "n1")}}, "a", []string{"10.0.0.2"}},
		{"node hints not for this node: zone hints", []epIn{{"10.0.0.1", true, withNodes(zone("a"), "n2")}, {"10.0.0.2", true, withNodes(zone("b"), "n3")}}, "a", []string{"10.0.0.1"}},
		{"other family's hints do not decide", []epIn{{"10.0.0.1", true, zone("a")}, {"10.0.0.2", true, zone("b")}, {"fd00::1", true, nil}}, "a", []string{"10.0.0.1"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
				Spec: v1.ServiceSpec{ClusterIPs: []string{"10.96.0.10", "fd00:96::10"}, Ports: []v1.ServicePort{{Port: 80, Protocol: v1.ProtocolTCP}}}}
			sl4 := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv4, Ports: []discoveryv1.EndpointPort{{Port: ptr.To[int32](8080)}}}
			sl6 := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv6, Ports: []discoveryv1.EndpointPort{{Port: ptr.To[int32](8080)}}}
			for _, e := range tc.eps {
				ep := discoveryv1.Endpoint{Addresses: []string{e.addr}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(e.ready)}, Hints: e.hints}
				if netip.MustParseAddr(e.addr).Is4() {
					sl4.Endpoints = append(sl4.Endpoints, ep)
				} else {
					sl6.Endpoints = append(sl6.Endpoints, ep)
				}
			}
			sp := BuildService(svc, []*discoveryv1.EndpointSlice{sl4, sl6}, Node{Name: "n1", Zone: tc.zone})[0]
			var got []string
			for _, e := range sp.ClusterEndpoints() {
				if e.Addr.Is4() {
					got = append(got, e.Addr.String())
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("cluster endpoints %v, want %v", got, tc.want)
			}
		})
	}
}
