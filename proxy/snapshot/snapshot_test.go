package snapshot

import (
	"net/netip"
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
	ports := BuildService(svc, []*discoveryv1.EndpointSlice{slice}, "n1")
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
	if n := http.LocalReadyCount(); n != 1 {
		t.Errorf("health check count %d, want 1", n)
	}
	if dns := ports[1]; dns.Protocol != v1.ProtocolUDP || dns.NodePort != 0 || len(dns.Endpoints) != 2 || dns.Endpoints[0].Port != 5353 {
		t.Errorf("dns port: %+v", dns)
	}
	if BuildService(&v1.Service{Spec: v1.ServiceSpec{ClusterIP: "None"}}, nil, "n1") != nil {
		t.Errorf("headless Service must not be programmed")
	}
}
