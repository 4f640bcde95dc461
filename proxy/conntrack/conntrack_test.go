package conntrack

import (
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/switchboard/switchboard/proxy/snapshot"
)

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

// ep is a ready (so serving) endpoint on target port 9090.
func ep(addr string, mod ...func(*snapshot.Endpoint)) snapshot.Endpoint {
	e := snapshot.Endpoint{Addr: netip.MustParseAddr(addr), Port: 9090, Ready: true, Serving: true}
	for _, m := range mod {
		m(&e)
	}
	return e
}

// servingTerminating is an endpoint going away that still serves.
func servingTerminating(e *snapshot.Endpoint) { e.Ready, e.Terminating = false, true }

// notServing is an endpoint going away that no longer serves.
func notServing(e *snapshot.Endpoint) { e.Ready, e.Serving, e.Terminating = false, false, true }

// udp is a UDP Service port 53 at ClusterIP 10.96.0.10 (and fd00::10).
func udp(mod func(*snapshot.ServicePort), eps ...snapshot.Endpoint) *snapshot.ServicePort {
	sp := &snapshot.ServicePort{Protocol: v1.ProtocolUDP, Port: 53, ClusterIPs: addrs("10.96.0.10", "fd00::10"), Endpoints: eps}
	if mod != nil {
		mod(sp)
	}
	return sp
}

// flow is a conntrack entry from client 10.0.1.2:40000 to dst, whose
// replies come from reply ("" for untranslated: from dst itself).
func flow(proto uint8, dst, reply string) *netlink.ConntrackFlow {
	d := netip.MustParseAddrPort(dst)
	r := d
	if reply != "" {
		r = netip.MustParseAddrPort(reply)
	}
	client := netip.MustParseAddrPort("10.0.1.2:40000")
	if d.Addr().Is6() {
		client = netip.MustParseAddrPort("[fd00:1::2]:40000")
	}
	f := &netlink.ConntrackFlow{FamilyType: unix.AF_INET}
	if d.Addr().Is6() {
		f.FamilyType = unix.AF_INET6
	}
	// net.ParseIP gives 16-byte IPv4 addresses, as parsed dumps may.
	f.Forward.Protocol, f.Forward.SrcIP, f.Forward.SrcPort = proto, net.ParseIP(client.Addr().String()), client.Port()
	f.Forward.DstIP, f.Forward.DstPort = net.ParseIP(d.Addr().String()), d.Port()
	f.Reverse.Protocol, f.Reverse.SrcIP, f.Reverse.SrcPort = proto, net.ParseIP(r.Addr().String()), r.Port()
	f.Reverse.DstIP, f.Reverse.DstPort = f.Forward.SrcIP, f.Forward.SrcPort
	return f
}

const (
	isUDP = unix.IPPROTO_UDP
	isTCP = unix.IPPROTO_TCP
)

// TestStale checks kube-proxy's CleanStaleEntries rule case by case: which
// entries a set of Service ports makes stale in one family.
func TestStale(t *testing.T) {
	withFronts := func(sp *snapshot.ServicePort) {
		sp.NodePort = 30053
		sp.ExternalIPs = addrs("192.0.2.7", "2001:db8::7")
		sp.LoadBalancerIPs = addrs("198.51.100.9")
	}
	for _, tc := range []struct {
		name  string
		is4   bool
		ports []*snapshot.ServicePort
		flow  *netlink.ConntrackFlow
		stale bool
	}{
		{"untranslated flow to the ClusterIP (sent before the rules)", true,
			[]*snapshot.ServicePort{udp(nil, ep("10.244.1.2"))}, flow(isUDP, "10.96.0.10:53", ""), true},
		{"flow to a ready endpoint", true,
			[]*snapshot.ServicePort{udp(nil, ep("10.244.1.2"))}, flow(isUDP, "10.96.0.10:53", "10.244.1.2:9090"), false},
		{"flow to an endpoint that left", true,
			[]*snapshot.ServicePort{udp(nil, ep("10.244.1.2"))}, flow(isUDP, "10.96.0.10:53", "10.244.9.9:9090"), true},
		{"flow to a serving terminating endpoint while another is ready", true,
			[]*snapshot.ServicePort{udp(nil, ep("10.244.1.2"), ep("10.244.2.2", servingTerminating))},
			flow(isUDP, "10.96.0.10:53", "10.244.2.2:9090"), false},
		{"flow to a terminating endpoint that stopped serving", true,
			[]*snapshot.ServicePort{udp(nil, ep("10.244.1.2"), ep("10.244.2.2", notServing))},
			flow(isUDP, "10.96.0.10:53", "10.244.2.2:9090"), true},
		{"flow to an endpoint out of this node's topology", true,
			[]*snapshot.ServicePort{udp(nil, ep("10.244.1.2"), ep("10.244.2.2", func(e *snapshot.Endpoint) { e.OutOfTopology = true }))},
			flow(isUDP, "10.96.0.10:53", "10.244.2.2:9090"), false},
		{"flow to a remote endpoint of an internalTrafficPolicy Local Service", true,
			[]*snapshot.ServicePort{udp(func(sp *snapshot.ServicePort) { sp.InternalLocal = true },
				ep("10.244.1.2", func(e *snapshot.Endpoint) { e.Local = true }), ep("10.244.2.2"))},
			flow(isUDP, "10.96.0.10:53", "10.244.2.2:9090"), false},
		{"flow to an endpoint address at another port", true,
			[]*snapshot.ServicePort{udp(nil, ep("10.244.1.2"))}, flow(isUDP, "10.96.0.10:53", "10.244.1.2:9091"), true},
		{"Service without serving endpoints: its flows stay", true,
			[]*snapshot.ServicePort{udp(nil, ep("10.244.1.2", notServing))}, flow(isUDP, "10.96.0.10:53", ""), false},
		{"Service without endpoints: its flows stay", true,
			[]*snapshot.ServicePort{udp(nil)}, flow(isUDP, "10.96.0.10:53", "10.244.1.2:9090"), false},
		{"ClusterIP at another port", true,
			[]*snapshot.ServicePort{udp(nil, ep("10.244.1.2"))}, flow(isUDP, "10.96.0.10:54", ""), false},
		{"TCP entry to a UDP front-end", true,
			[]*snapshot.ServicePort{udp(nil, ep("10.244.1.2"))}, flow(isTCP, "10.96.0.10:53", ""), false},
		{"TCP Service", true,
			[]*snapshot.ServicePort{udp(func(sp *snapshot.ServicePort) { sp.Protocol = v1.ProtocolTCP }, ep("10.244.1.2"))},
			flow(isTCP, "10.96.0.10:53", ""), false},
		{"untranslated flow to an external IP", true,
			[]*snapshot.ServicePort{udp(withFronts, ep("10.244.1.2"))}, flow(isUDP, "192.0.2.7:53", ""), true},
		{"untranslated flow to a load-balancer VIP", true,
			[]*snapshot.ServicePort{udp(withFronts, ep("10.244.1.2"))}, flow(isUDP, "198.51.100.9:53", ""), true},
		{"translated flow to a load-balancer VIP", true,
			[]*snapshot.ServicePort{udp(withFronts, ep("10.244.1.2"))}, flow(isUDP, "198.51.100.9:53", "10.244.1.2:9090"), false},
		{"untranslated flow to the NodePort of any address", true,
			[]*snapshot.ServicePort{udp(withFronts, ep("10.244.1.2"))}, flow(isUDP, "203.0.113.1:30053", ""), true},
		{"translated flow to the NodePort", true,
			[]*snapshot.ServicePort{udp(withFronts, ep("10.244.1.2"))}, flow(isUDP, "10.0.1.1:30053", "10.244.1.2:9090"), false},
		// kube-proxy checks the NodePort after the front-end: a flow
		// kept by its front-end is still stale if its port is another
		// Service's NodePort and the reply is not from that one's
		// endpoints.
		{"front-end port that is another Service's NodePort", true,
			[]*snapshot.ServicePort{udp(nil, ep("10.244.1.2")), udp(func(sp *snapshot.ServicePort) {
				sp.ClusterIPs, sp.Port, sp.NodePort = addrs("10.96.0.11"), 80, 53
			}, ep("10.244.3.2"))},
			flow(isUDP, "10.96.0.10:53", "10.244.1.2:9090"), true},
		{"two Services sharing an external IP keep each other's flows", true,
			[]*snapshot.ServicePort{udp(withFronts, ep("10.244.1.2")), udp(func(sp *snapshot.ServicePort) {
				sp.ClusterIPs, sp.ExternalIPs = addrs("10.96.0.11"), addrs("192.0.2.7")
			}, ep("10.244.3.2"))},
			flow(isUDP, "192.0.2.7:53", "10.244.3.2:9090"), false},
		{"IPv6 entry in the IPv4 rule", true,
			[]*snapshot.ServicePort{udp(nil, ep("10.244.1.2"), ep("fd00:244::2"))}, flow(isUDP, "[fd00::10]:53", ""), false},
		{"untranslated IPv6 flow to a dual-stack ClusterIP", false,
			[]*snapshot.ServicePort{udp(nil, ep("10.244.1.2"), ep("fd00:244::2"))}, flow(isUDP, "[fd00::10]:53", ""), true},
		{"IPv6 flow to an IPv6 endpoint", false,
			[]*snapshot.ServicePort{udp(nil, ep("10.244.1.2"), ep("fd00:244::2"))}, flow(isUDP, "[fd00::10]:53", "[fd00:244::2]:9090"), false},
		{"IPv6 external IP", false,
			[]*snapshot.ServicePort{udp(withFronts, ep("fd00:244::2"))}, flow(isUDP, "[2001:db8::7]:53", ""), true},
		{"dual-stack Service with IPv4 endpoints only: IPv6 flows stay", false,
			[]*snapshot.ServicePort{udp(withFronts, ep("10.244.1.2"))}, flow(isUDP, "[fd00::10]:53", ""), false},
		{"IPv4-only Service: its NodePort is not reconciled in IPv6", false,
			[]*snapshot.ServicePort{udp(func(sp *snapshot.ServicePort) { withFronts(sp); sp.ClusterIPs = addrs("10.96.0.10") },
				ep("10.244.1.2"), ep("fd00:244::2"))},
			flow(isUDP, "[fd00:1::1]:30053", ""), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewStale(tc.is4, slices.Values(tc.ports))
			if got := s.MatchConntrackFlow(tc.flow); got != tc.stale {
				t.Errorf("stale = %v, want %v", got, tc.stale)
			}
		})
	}
}

// TestStaleEmpty: only UDP Service ports with serving endpoints of the
// family make a rule; without one no table need be dumped.
func TestStaleEmpty(t *testing.T) {
	for _, tc := range []struct {
		name  string
		is4   bool
		ports []*snapshot.ServicePort
		empty bool
	}{
		{"nothing", true, nil, true},
		{"TCP only", true, []*snapshot.ServicePort{udp(func(sp *snapshot.ServicePort) { sp.Protocol = v1.ProtocolTCP }, ep("10.244.1.2"))}, true},
		{"UDP without serving endpoints", true, []*snapshot.ServicePort{udp(nil, ep("10.244.1.2", notServing))}, true},
		{"UDP with only other-family endpoints", false, []*snapshot.ServicePort{udp(nil, ep("10.244.1.2"))}, true},
		{"UDP with a serving endpoint", true, []*snapshot.ServicePort{udp(nil, ep("10.244.1.2", servingTerminating))}, false},
	} {
		if got := NewStale(tc.is4, slices.Values(tc.ports)).Empty(); got != tc.empty {
			t.Errorf("%s: Empty() = %v, want %v", tc.name, got, tc.empty)
		}
	}
}

// table is a conntrack table in memory: ConntrackDeleteFilters dumps and
// deletes as the netlink handle does, counting dumps.
type table struct {
	flows map[uint8][]*netlink.ConntrackFlow
	dumps int
}

func (tb *table) ConntrackDeleteFilters(_ netlink.ConntrackTableType, fam netlink.InetFamily, filters ...netlink.CustomConntrackFilter) (uint, error) {
	tb.dumps++
	var n uint
	tb.flows[uint8(fam)] = slices.DeleteFunc(tb.flows[uint8(fam)], func(f *netlink.ConntrackFlow) bool {
		for _, fl := range filters {
			if fl.MatchConntrackFlow(f) {
				n++
				return true
			}
		}
		return false
	})
	return n, nil
}

// TestClean: each family's table is dumped once when it has something to
// reconcile and not at all otherwise; only stale entries go.
func TestClean(t *testing.T) {
	stale4, kept4 := flow(isUDP, "10.96.0.10:53", ""), flow(isUDP, "10.96.0.10:53", "10.244.1.2:9090")
	tcp4 := flow(isTCP, "10.96.0.10:53", "")
	tb := &table{flows: map[uint8][]*netlink.ConntrackFlow{
		unix.AF_INET:  {stale4, kept4, tcp4},
		unix.AF_INET6: {flow(isUDP, "[fd00::10]:53", "")},
	}}
	key := snapshot.ServiceKey{Namespace: "ns", Name: "dns"}
	other := snapshot.ServiceKey{Namespace: "ns", Name: "web"}
	web := udp(func(sp *snapshot.ServicePort) { sp.Protocol = v1.ProtocolTCP; sp.ClusterIPs = addrs("10.96.0.20") }, ep("10.244.5.2"))
	snap := snapshot.New(map[snapshot.ServiceKey][]*snapshot.ServicePort{key: {udp(nil, ep("10.244.1.2"))}, other: {web}})

	Clean(tb, slog.Default(), PortsOf(snap, []snapshot.ServiceKey{other}))
	if tb.dumps != 0 {
		t.Errorf("a sync of a TCP Service dumped the conntrack table %d times, want 0", tb.dumps)
	}
	Clean(tb, slog.Default(), AllPorts(snap))
	if tb.dumps != 1 {
		t.Errorf("dumped %d times, want once (IPv4; no IPv6 endpoints)", tb.dumps)
	}
	if got := tb.flows[unix.AF_INET]; !slices.Equal(got, []*netlink.ConntrackFlow{kept4, tcp4}) {
		t.Errorf("IPv4 entries left: %v, want the translated UDP and the TCP one", got)
	}
	if len(tb.flows[unix.AF_INET6]) != 1 {
		t.Error("an IPv6 entry was deleted though the Service has no IPv6 endpoint")
	}
	Clean(nil, slog.Default(), AllPorts(snap)) // no conntrack socket: nothing to do, no panic
}
