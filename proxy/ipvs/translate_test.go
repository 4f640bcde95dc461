package ipvs

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/switchboard/switchboard/proxy/snapshot"
)

func ep(addr string, mod ...func(*snapshot.Endpoint)) snapshot.Endpoint {
	e := snapshot.Endpoint{Addr: netip.MustParseAddr(addr), Port: 8080, Ready: true, Serving: true}
	for _, m := range mod {
		m(&e)
	}
	return e
}

func local(e *snapshot.Endpoint) { e.Local = true }
func terminating(e *snapshot.Endpoint) {
	e.Ready, e.Terminating = false, true
}

var key = snapshot.ServiceKey{Namespace: "ns", Name: "web"}

func port(mod func(*snapshot.ServicePort), eps ...snapshot.Endpoint) *snapshot.ServicePort {
	sp := &snapshot.ServicePort{Key: snapshot.PortKey{ServiceKey: key, Port: "http", Protocol: v1.ProtocolTCP}, Protocol: v1.ProtocolTCP, Port: 80,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Endpoints: eps}
	if mod != nil {
		mod(sp)
	}
	return sp
}

// servers renders virtual servers as "proto addr:port sched [persistent
// N] -> real,real".
func servers(s Service) []string {
	var out []string
	for _, vs := range s.Servers {
		l := vs.ServerKey.String() + " " + vs.Scheduler
		if vs.Timeout > 0 {
			l += " persistent " + strconv.Itoa(int(vs.Timeout))
		}
		var reals []string
		for _, r := range vs.Reals {
			reals = append(reals, r.Addr.String())
		}
		out = append(out, l+" -> "+strings.Join(reals, ","))
	}
	return out
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

// TestTranslate checks each kube-proxy ipvs feature's virtual servers,
// addresses and filter elements.
func TestTranslate(t *testing.T) {
	node := Options{NodeIPs: addrs("10.0.1.1")}
	cip := ServerKey{netip.MustParseAddr("10.96.0.10"), "TCP", 80}
	lb := ServerKey{netip.MustParseAddr("192.0.2.10"), "TCP", 80}
	for _, tc := range []struct {
		name string
		opts Options
		sp   *snapshot.ServicePort
		want []string
		vips []netip.Addr
		// check inspects the rest.
		check func(t *testing.T, s Service)
	}{{
		name: "ClusterIP: one virtual server, a real server per endpoint, rr, its address bound, masqueraded from outside the cluster",
		sp:   port(nil, ep("10.244.2.2"), ep("10.244.1.2")),
		want: []string{"tcp 10.96.0.10:80 rr -> 10.244.1.2:8080,10.244.2.2:8080"},
		vips: addrs("10.96.0.10"),
		check: func(t *testing.T, s Service) {
			if !slices.Equal(s.MasqCluster, []ServerKey{cip}) || len(s.MasqExternal)+len(s.MasqNodePorts) != 0 {
				t.Errorf("masquerade: cluster %v external %v nodeports %v", s.MasqCluster, s.MasqExternal, s.MasqNodePorts)
			}
			if len(s.Hairpins) != 2 {
				t.Errorf("hairpins %v, want one per endpoint", s.Hairpins)
			}
		},
	}, {
		name: "--ipvs-scheduler",
		opts: Options{Scheduler: "lc"},
		sp:   port(nil, ep("10.244.1.2")),
		want: []string{"tcp 10.96.0.10:80 lc -> 10.244.1.2:8080"},
	}, {
		name: "sessionAffinity ClientIP: persistence with the timeout",
		sp:   port(func(sp *snapshot.ServicePort) { sp.AffinityTimeout = 3 * time.Hour }, ep("10.244.1.2")),
		want: []string{"tcp 10.96.0.10:80 rr persistent 10800 -> 10.244.1.2:8080"},
	}, {
		name: "no endpoints: the virtual server stays, without real servers (the bound address answers with a reset)",
		sp:   port(nil),
		want: []string{"tcp 10.96.0.10:80 rr -> "},
		vips: addrs("10.96.0.10"),
	}, {
		name: "UDP",
		sp: port(func(sp *snapshot.ServicePort) {
			sp.Protocol, sp.Key.Protocol, sp.Port = v1.ProtocolUDP, v1.ProtocolUDP, 53
		}, ep("10.244.1.2")),
		want: []string{"udp 10.96.0.10:53 rr -> 10.244.1.2:8080"},
	}, {
		name: "internalTrafficPolicy Local: only this node's endpoints",
		sp:   port(func(sp *snapshot.ServicePort) { sp.InternalLocal = true }, ep("10.244.1.2", local), ep("10.244.2.2")),
		want: []string{"tcp 10.96.0.10:80 rr -> 10.244.1.2:8080"},
	}, {
		name: "terminating endpoints serve when none is ready",
		sp:   port(nil, ep("10.244.1.2", terminating), ep("10.244.2.2", func(e *snapshot.Endpoint) { e.Ready, e.Serving, e.Terminating = false, false, true })),
		want: []string{"tcp 10.96.0.10:80 rr -> 10.244.1.2:8080"},
	}, {
		name: "NodePort: a virtual server per node address, masqueraded under externalTrafficPolicy Cluster",
		opts: Options{NodeIPs: addrs("10.0.1.1", "10.0.2.1")},
		sp:   port(func(sp *snapshot.ServicePort) { sp.NodePort = 30080 }, ep("10.244.1.2")),
		want: []string{"tcp 10.96.0.10:80 rr -> 10.244.1.2:8080", "tcp 10.0.1.1:30080 rr -> 10.244.1.2:8080", "tcp 10.0.2.1:30080 rr -> 10.244.1.2:8080"},
		vips: addrs("10.96.0.10"),
		check: func(t *testing.T, s Service) {
			if !slices.Equal(s.MasqNodePorts, []ServerKey{{Protocol: "TCP", Port: 30080}}) {
				t.Errorf("NodePort masquerade %v", s.MasqNodePorts)
			}
		},
	}, {
		name: "externalTrafficPolicy Local: external front-ends get only local endpoints and keep the client's address",
		opts: node,
		sp: port(func(sp *snapshot.ServicePort) {
			sp.NodePort, sp.ExternalLocal, sp.ExternalIPs = 30080, true, addrs("192.0.2.1")
		}, ep("10.244.1.2", local), ep("10.244.2.2")),
		want: []string{"tcp 10.96.0.10:80 rr -> 10.244.1.2:8080,10.244.2.2:8080", "tcp 192.0.2.1:80 rr -> 10.244.1.2:8080", "tcp 10.0.1.1:30080 rr -> 10.244.1.2:8080"},
		vips: addrs("10.96.0.10", "192.0.2.1"),
		check: func(t *testing.T, s Service) {
			if len(s.MasqExternal)+len(s.MasqNodePorts) != 0 {
				t.Errorf("eTP Local masquerades: %v %v", s.MasqExternal, s.MasqNodePorts)
			}
		},
	}, {
		name: "externalIPs and load balancer IPs: bound, served, masqueraded",
		sp: port(func(sp *snapshot.ServicePort) {
			sp.ExternalIPs, sp.LoadBalancerIPs = addrs("192.0.2.1"), addrs("192.0.2.10")
		}, ep("10.244.1.2")),
		want: []string{"tcp 10.96.0.10:80 rr -> 10.244.1.2:8080", "tcp 192.0.2.1:80 rr -> 10.244.1.2:8080", "tcp 192.0.2.10:80 rr -> 10.244.1.2:8080"},
		vips: addrs("10.96.0.10", "192.0.2.1", "192.0.2.10"),
		check: func(t *testing.T, s Service) {
			if len(s.MasqExternal) != 2 {
				t.Errorf("external masquerade %v", s.MasqExternal)
			}
		},
	}, {
		name: "loadBalancerSourceRanges: the load balancer is firewalled, the ranges (and its own address, a range holding the node's) admitted",
		opts: node,
		sp: port(func(sp *snapshot.ServicePort) {
			sp.LoadBalancerIPs = addrs("192.0.2.10")
			sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("10.0.0.0/16")}
		}, ep("10.244.1.2")),
		want: []string{"tcp 10.96.0.10:80 rr -> 10.244.1.2:8080", "tcp 192.0.2.10:80 rr -> 10.244.1.2:8080"},
		check: func(t *testing.T, s Service) {
			want := []Allow{{lb, netip.MustParsePrefix("198.51.100.0/24")}, {lb, netip.MustParsePrefix("10.0.0.0/16")}, {lb, netip.MustParsePrefix("192.0.2.10/32")}}
			if !slices.Equal(s.Firewalled, []ServerKey{lb}) || !slices.Equal(s.Allowed, want) {
				t.Errorf("firewall %v allowed %v", s.Firewalled, s.Allowed)
			}
		},
	}, {
		name: "dual stack: each family's endpoints behind its own ClusterIP",
		sp: port(func(sp *snapshot.ServicePort) { sp.ClusterIPs = addrs("10.96.0.10", "fd00:96::10") },
			ep("10.244.1.2"), ep("fd00:244::2")),
		want: []string{"tcp 10.96.0.10:80 rr -> 10.244.1.2:8080", "tcp [fd00:96::10]:80 rr -> [fd00:244::2]:8080"},
		vips: addrs("10.96.0.10", "fd00:96::10"),
	}} {
		t.Run(tc.name, func(t *testing.T) {
			s := Translate([]*snapshot.ServicePort{tc.sp}, tc.opts)
			if got := servers(s); !slices.Equal(got, tc.want) {
				t.Errorf("virtual servers:\n got %q\nwant %q", got, tc.want)
			}
			if tc.vips != nil && !slices.Equal(s.VIPs, tc.vips) {
				t.Errorf("addresses %v, want %v", s.VIPs, tc.vips)
			}
			if tc.check != nil {
				tc.check(t, s)
			}
		})
	}
}

// TestFilterText: the filter table holds each Service's elements in the
// sets its rules match, per family, and masquerades ClusterIP traffic
// only from outside the cluster CIDR.
func TestFilterText(t *testing.T) {
	s := Translate([]*snapshot.ServicePort{port(func(sp *snapshot.ServicePort) {
		sp.ClusterIPs, sp.NodePort, sp.LoadBalancerIPs = addrs("10.96.0.10", "fd00:96::10"), 30080, addrs("192.0.2.10")
		sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
	}, ep("10.244.1.2"), ep("fd00:244::2"))}, Options{NodeIPs: addrs("10.0.1.1")})
	text := string(FilterText([]Service{s}, []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}))
	for _, want := range []string{
		"delete table inet switchboard-ipvs\n",
		"set vips4 {\n\t\ttype ipv4_addr\n\t\telements = { 10.96.0.10, 192.0.2.10 }",
		"set vips6 {\n\t\ttype ipv6_addr\n\t\telements = { fd00:96::10 }",
		"set served4 {\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\telements = { 10.96.0.10 . tcp . 80, 192.0.2.10 . tcp . 80 }",
		"elements = { 10.244.1.2 . tcp . 8080 . 10.244.1.2 }",
		"elements = { fd00:244::2 . tcp . 8080 . fd00:244::2 }",
		"elements = { tcp . 30080 }",
		"elements = { 192.0.2.10 . tcp . 80 . 198.51.100.0/24 }",
		"ip daddr . meta l4proto . th dport @masq-cluster4 ip saddr != 10.244.0.0/16 jump mark-masq",
		"ip6 daddr . meta l4proto . th dport @masq-cluster6 jump mark-masq",
		"ip daddr @vips4 ip daddr . meta l4proto . th dport != @served4 reject",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("filter table lacks %q:\n%s", want, text)
		}
	}
}
