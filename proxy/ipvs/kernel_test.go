package ipvs

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	libipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/switchboard/switchboard/proxy/snapshot"
)

func fakeKernel(t *testing.T, f *Fake, opts Options) *Kernel {
	t.Helper()
	k, err := New(Config{IPVS: f, Addresses: f, Filter: f, Options: opts})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func svcPorts(name, cip string, mod func(*snapshot.ServicePort), eps ...snapshot.Endpoint) []*snapshot.ServicePort {
	sp := port(mod, eps...)
	sp.Key.ServiceKey = snapshot.ServiceKey{Namespace: "ns", Name: name}
	sp.ClusterIPs = addrs(cip)
	return []*snapshot.ServicePort{sp}
}

// TestKernelSyncs runs the Kernel against the in-memory IPVS: a full sync
// programs every Service and removes a stale virtual server on one of our
// addresses but not a foreign one; replacing one endpoint is one real
// server removed and one added, nothing else; a shared externalIP stays
// bound until its last Service goes; removing a Service removes its
// virtual servers and address; the read-back finds a real server deleted
// behind the Kernel's back, and the next full sync restores it.
func TestKernelSyncs(t *testing.T) {
	f := NewFake()
	// Left by an earlier run on an address of ours, and somebody else's.
	must(t, f.Add(netip.MustParseAddr("10.96.9.9")))
	stale := toService(VirtualServer{ServerKey: ServerKey{netip.MustParseAddr("10.96.9.9"), "TCP", 80}, Scheduler: "rr"})
	foreign := toService(VirtualServer{ServerKey: ServerKey{netip.MustParseAddr("172.16.0.1"), "TCP", 80}, Scheduler: "wrr"})
	must(t, f.NewService(stale))
	must(t, f.NewService(foreign))

	k := fakeKernel(t, f, Options{NodeIPs: addrs("10.0.1.1")})
	shared := func(sp *snapshot.ServicePort) { sp.ExternalIPs = addrs("192.0.2.1") }
	a := snapshot.ServiceKey{Namespace: "ns", Name: "a"}
	b := snapshot.ServiceKey{Namespace: "ns", Name: "b"}
	snap := snapshot.New(map[snapshot.ServiceKey][]*snapshot.ServicePort{
		a: svcPorts("a", "10.96.0.1", shared, ep("10.244.1.2"), ep("10.244.2.2")),
		b: svcPorts("b", "10.96.0.2", func(sp *snapshot.ServicePort) { shared(sp); sp.Port = 81 }, ep("10.244.3.2")),
	})
	must(t, k.Sync(snap, snapshot.Changes{Full: true}))
	want := []string{
		"tcp 10.96.0.1:80 rr", "tcp 10.96.0.1:80 rr -> 10.244.1.2:8080 w1", "tcp 10.96.0.1:80 rr -> 10.244.2.2:8080 w1",
		"tcp 10.96.0.2:81 rr", "tcp 10.96.0.2:81 rr -> 10.244.3.2:8080 w1",
		"tcp 172.16.0.1:80 wrr",
		"tcp 192.0.2.1:80 rr", "tcp 192.0.2.1:80 rr -> 10.244.1.2:8080 w1", "tcp 192.0.2.1:80 rr -> 10.244.2.2:8080 w1",
		"tcp 192.0.2.1:81 rr", "tcp 192.0.2.1:81 rr -> 10.244.3.2:8080 w1",
	}
	if got := f.Dump(); !slices.Equal(got, want) {
		t.Fatalf("after the full sync:\n got %q\nwant %q", got, want)
	}
	vips, _ := f.List()
	slices.SortFunc(vips, netip.Addr.Compare)
	if !slices.Equal(vips, addrs("10.96.0.1", "10.96.0.2", "192.0.2.1")) {
		t.Errorf("addresses %v", vips)
	}
	if !strings.Contains(string(f.Script), "10.96.0.1 . tcp . 80") {
		t.Errorf("filter table lacks the Service:\n%s", f.Script)
	}

	// Replace one endpoint of a: one real server out, one in, per
	// front-end (ClusterIP and externalIP).
	calls := f.Calls
	snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{a: svcPorts("a", "10.96.0.1", shared, ep("10.244.1.2"), ep("10.244.9.2"))})
	must(t, k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{a}}))
	if w := k.Stats().LastWrite; w.Added != 2 || w.Deleted != 2 || f.Calls-calls != 4 {
		t.Errorf("replacing an endpoint wrote %+v in %d calls, want 2 added and 2 deleted in 4", w, f.Calls-calls)
	}
	if got := f.Dump(); !slices.Contains(got, "tcp 10.96.0.1:80 rr -> 10.244.9.2:8080 w1") || slices.Contains(got, "tcp 10.96.0.1:80 rr -> 10.244.2.2:8080 w1") {
		t.Errorf("after the replacement: %q", got)
	}

	// Remove a: its virtual servers go, the shared externalIP stays (b).
	snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{a: nil})
	must(t, k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{a}}))
	vips, _ = f.List()
	slices.SortFunc(vips, netip.Addr.Compare)
	if !slices.Equal(vips, addrs("10.96.0.2", "192.0.2.1")) {
		t.Errorf("addresses after removing a: %v", vips)
	}
	for _, l := range f.Dump() {
		if strings.Contains(l, ":80 rr") {
			t.Errorf("a's virtual server left: %s", l)
		}
	}

	// A real server deleted behind our back: Inspect reports it, a full
	// sync puts it back.
	vsB := toService(VirtualServer{ServerKey: ServerKey{netip.MustParseAddr("10.96.0.2"), "TCP", 81}})
	must(t, f.DelDestination(vsB, &libipvs.Destination{Address: netip.MustParseAddr("10.244.3.2").AsSlice(), Port: 8080}))
	st, err := k.Inspect(b)
	must(t, err)
	if len(st[b].Missing) != 1 || !strings.Contains(st[b].Missing[0], "10.244.3.2:8080") {
		t.Errorf("Inspect missing %q, want the deleted real server", st[b].Missing)
	}
	must(t, k.Sync(snap, snapshot.Changes{Full: true}))
	if st, _ := k.Inspect(b); len(st[b].Missing) != 0 {
		t.Errorf("after a full sync still missing %q", st[b].Missing)
	}
	if s := k.Stats(); s.Rules != 2 || s.Elements != 2 {
		t.Errorf("stats %+v, want 2 virtual and 2 real servers", s)
	}
}

// TestKernelAffinityAndScheduler: turning ClientIP affinity on updates the
// virtual server in place (persistent, with the timeout), keeping its real
// servers.
func TestKernelAffinityAndScheduler(t *testing.T) {
	f := NewFake()
	k := fakeKernel(t, f, Options{Scheduler: "sh"})
	a := snapshot.ServiceKey{Namespace: "ns", Name: "a"}
	snap := snapshot.New(map[snapshot.ServiceKey][]*snapshot.ServicePort{a: svcPorts("a", "10.96.0.1", nil, ep("10.244.1.2"))})
	must(t, k.Sync(snap, snapshot.Changes{Full: true}))
	snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{a: svcPorts("a", "10.96.0.1", func(sp *snapshot.ServicePort) {
		sp.AffinityTimeout = 10800e9
	}, ep("10.244.1.2"))})
	must(t, k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{a}}))
	want := []string{"tcp 10.96.0.1:80 sh persistent 10800", "tcp 10.96.0.1:80 sh persistent 10800 -> 10.244.1.2:8080 w1"}
	if got := f.Dump(); !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if w := k.Stats().LastWrite; w.Added != 1 || w.Deleted != 0 {
		t.Errorf("wrote %+v, want one update", w)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestFilterPartialSync: a full sync writes the whole filter table; a
// change of one Service writes, in one transaction, only that Service's
// set elements (no table rewrite, nothing of the other Service); an
// endpoint replaced is one hairpin element out and one in; a Service
// whose elements did not move writes no script; an element two
// Services share (an externalIP's address) is deleted only with its last
// user.
func TestFilterPartialSync(t *testing.T) {
	f := NewFake()
	k := fakeKernel(t, f, Options{NodeIPs: addrs("10.0.1.1")})
	shared := func(sp *snapshot.ServicePort) { sp.ExternalIPs = addrs("192.0.2.1") }
	a := snapshot.ServiceKey{Namespace: "ns", Name: "a"}
	b := snapshot.ServiceKey{Namespace: "ns", Name: "b"}
	snap := snapshot.New(map[snapshot.ServiceKey][]*snapshot.ServicePort{
		a: svcPorts("a", "10.96.0.1", shared, ep("10.244.1.2")),
		b: svcPorts("b", "10.96.0.2", func(sp *snapshot.ServicePort) { shared(sp); sp.Port = 81 }, ep("10.244.3.2")),
	})
	must(t, k.Sync(snap, snapshot.Changes{Full: true}))
	if s := string(f.Script); !strings.Contains(s, "delete table inet "+Table) || !strings.Contains(s, "10.96.0.2 . tcp . 81") {
		t.Fatalf("full sync did not rewrite the table:\n%s", s)
	}

	// a gets a second port: its served and masquerade elements are added,
	// nothing else is written.
	scripts := f.Scripts
	snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{a: append(svcPorts("a", "10.96.0.1", shared, ep("10.244.1.2")),
		svcPorts("a", "10.96.0.1", func(sp *snapshot.ServicePort) { shared(sp); sp.Port, sp.Key.Port = 90, "alt" }, ep("10.244.1.2"))...)})
	must(t, k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{a}}))
	got := string(f.Script)
	if f.Scripts != scripts+1 {
		t.Fatalf("partial sync applied %d scripts, want 1", f.Scripts-scripts)
	}
	for _, line := range strings.Split(strings.TrimSpace(got), "\n") {
		if !strings.HasPrefix(line, "add element inet "+Table+" ") {
			t.Errorf("partial sync wrote %q, want only added elements", line)
		}
	}
	for _, want := range []string{"10.96.0.1 . tcp . 90", "192.0.2.1 . tcp . 90"} {
		if !strings.Contains(got, want) {
			t.Errorf("partial sync lacks %s:\n%s", want, got)
		}
	}
	for _, not := range []string{"10.96.0.2", ". 80", ". 81", "vips4 {"} {
		if strings.Contains(got, not) {
			t.Errorf("partial sync wrote an unchanged element (%s):\n%s", not, got)
		}
	}

	// a back to one port: only the second port's elements are deleted.
	scripts = f.Scripts
	snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{a: svcPorts("a", "10.96.0.1", shared, ep("10.244.1.2"))})
	must(t, k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{a}}))
	got = string(f.Script)
	if f.Scripts != scripts+1 || !strings.HasPrefix(got, "delete element") || strings.Contains(got, "add element") || !strings.Contains(got, ". 90") {
		t.Errorf("dropping a's second port wrote %d scripts:\n%s", f.Scripts-scripts, got)
	}
	// Replacing a's endpoint: its hairpin element out, the new one in.
	snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{a: svcPorts("a", "10.96.0.1", shared, ep("10.244.8.2"))})
	must(t, k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{a}}))
	if got, want := string(f.Script), "delete element inet "+Table+" hairpin4 { 10.244.1.2 . tcp . 8080 . 10.244.1.2 }\n"+
		"add element inet "+Table+" hairpin4 { 10.244.8.2 . tcp . 8080 . 10.244.8.2 }\n"; got != want {
		t.Errorf("an endpoint change wrote\n%s\nwant\n%s", got, want)
	}

	// A change that moves no element (b's ports the same) writes no script.
	scripts = f.Scripts
	must(t, k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{b}}))
	if f.Scripts != scripts {
		t.Errorf("an unchanged Service wrote the filter table:\n%s", f.Script)
	}

	// Removing a deletes its ClusterIP but keeps the externalIP b shares.
	snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{a: nil})
	must(t, k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{a}}))
	got = string(f.Script)
	if !strings.Contains(got, "delete element inet "+Table+" vips4 { 10.96.0.1 }") || strings.Contains(got, "192.0.2.1 }") {
		t.Errorf("removing a wrote:\n%s", got)
	}
}

// TestGracefulTermination: as kube-proxy's ipvs mode, a TCP real server
// removed while it holds connections (active or inactive) goes to weight 0
// and stays, through partial and full syncs, until DrainTerminated finds
// it without connections; one without connections, and any UDP one, is
// deleted at once; an endpoint that comes back while draining is
// replaced with its weight; deleting the Service deletes its draining
// real servers with it.
func TestGracefulTermination(t *testing.T) {
	f := NewFake()
	k := fakeKernel(t, f, Options{})
	defer k.Close()
	a := snapshot.ServiceKey{Namespace: "ns", Name: "a"}
	u := snapshot.ServiceKey{Namespace: "ns", Name: "u"}
	udp := func(sp *snapshot.ServicePort) {
		sp.Protocol, sp.Key.Protocol, sp.Port = v1.ProtocolUDP, v1.ProtocolUDP, 53
	}
	tcpVS := ServerKey{netip.MustParseAddr("10.96.0.1"), "TCP", 80}
	udpVS := ServerKey{netip.MustParseAddr("10.96.0.2"), "UDP", 53}
	real := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	snap := snapshot.New(map[snapshot.ServiceKey][]*snapshot.ServicePort{
		a: svcPorts("a", "10.96.0.1", nil, ep("10.244.1.2"), ep("10.244.2.2"), ep("10.244.3.2")),
		u: svcPorts("u", "10.96.0.2", udp, ep("10.244.1.2"), ep("10.244.2.2")),
	})
	must(t, k.Sync(snap, snapshot.Changes{Full: true}))
	must(t, f.SetConnections(tcpVS, real("10.244.1.2:8080"), 1, 0))
	must(t, f.SetConnections(tcpVS, real("10.244.2.2:8080"), 0, 2))
	must(t, f.SetConnections(udpVS, real("10.244.1.2:8080"), 3, 0))

	// Only 10.244.3.2 remains in a, only 10.244.2.2 in u.
	snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{
		a: svcPorts("a", "10.96.0.1", nil, ep("10.244.3.2")),
		u: svcPorts("u", "10.96.0.2", udp, ep("10.244.2.2")),
	})
	must(t, k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{a, u}}))
	want := []string{
		"tcp 10.96.0.1:80 rr", "tcp 10.96.0.1:80 rr -> 10.244.1.2:8080 w0", "tcp 10.96.0.1:80 rr -> 10.244.2.2:8080 w0",
		"tcp 10.96.0.1:80 rr -> 10.244.3.2:8080 w1",
		"udp 10.96.0.2:53 rr", "udp 10.96.0.2:53 rr -> 10.244.2.2:8080 w1",
	}
	if got := f.Dump(); !slices.Equal(got, want) {
		t.Fatalf("after removing endpoints:\n got %q\nwant %q", got, want)
	}
	// A full sync leaves the draining ones as they are.
	must(t, k.Sync(snap, snapshot.Changes{Full: true}))
	if got := f.Dump(); !slices.Equal(got, want) {
		t.Fatalf("a full sync touched the draining real servers:\n got %q\nwant %q", got, want)
	}
	if n, err := k.DrainTerminated(); err != nil || n != 2 {
		t.Fatalf("DrainTerminated with connections left: %d draining (%v), want 2", n, err)
	}
	// The debug read-back shows them.
	st, err := k.Inspect(a)
	must(t, err)
	for _, w := range []string{
		"ipvs tcp 10.96.0.1:80 rr  -> 10.244.1.2:8080 draining (weight 0, 1 active, 0 inactive connections)",
		"ipvs tcp 10.96.0.1:80 rr  -> 10.244.2.2:8080 draining (weight 0, 0 active, 2 inactive connections)",
	} {
		if !slices.Contains(st[a].Applied, w) {
			t.Errorf("Inspect does not show %q:\n%s", w, strings.Join(st[a].Applied, "\n"))
		}
	}
	if len(st[a].Missing) != 0 {
		t.Errorf("Inspect reports missing %q", st[a].Missing)
	}

	// 10.244.2.2's connections end: the next check deletes it.
	must(t, f.SetConnections(tcpVS, real("10.244.2.2:8080"), 0, 0))
	if n, err := k.DrainTerminated(); err != nil || n != 1 {
		t.Fatalf("DrainTerminated: %d draining (%v), want 1", n, err)
	}
	if got := f.Dump(); slices.Contains(got, "tcp 10.96.0.1:80 rr -> 10.244.2.2:8080 w0") {
		t.Errorf("a drained real server stayed: %q", got)
	}

	// 10.244.1.2 comes back while draining: weight 1 again, not draining.
	snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{a: svcPorts("a", "10.96.0.1", nil, ep("10.244.1.2"), ep("10.244.3.2"))})
	must(t, k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{a}}))
	want = []string{
		"tcp 10.96.0.1:80 rr", "tcp 10.96.0.1:80 rr -> 10.244.1.2:8080 w1", "tcp 10.96.0.1:80 rr -> 10.244.3.2:8080 w1",
		"udp 10.96.0.2:53 rr", "udp 10.96.0.2:53 rr -> 10.244.2.2:8080 w1",
	}
	if got := f.Dump(); !slices.Equal(got, want) {
		t.Fatalf("after the endpoint came back:\n got %q\nwant %q", got, want)
	}
	if n, _ := k.DrainTerminated(); n != 0 {
		t.Errorf("%d still draining, want none", n)
	}

	// Draining again, then the Service goes: its virtual server and the
	// draining real server with it.
	must(t, f.SetConnections(tcpVS, real("10.244.3.2:8080"), 1, 0))
	snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{a: svcPorts("a", "10.96.0.1", nil, ep("10.244.1.2"))})
	must(t, k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{a}}))
	if got := f.Dump(); !slices.Contains(got, "tcp 10.96.0.1:80 rr -> 10.244.3.2:8080 w0") {
		t.Fatalf("not draining: %q", got)
	}
	snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{a: nil})
	must(t, k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{a}}))
	if n, err := k.DrainTerminated(); err != nil || n != 0 {
		t.Errorf("after deleting the Service: %d draining (%v)", n, err)
	}
	if got := f.Dump(); !slices.Equal(got, want[3:]) {
		t.Errorf("after deleting the Service:\n got %q\nwant %q", got, want[3:])
	}
}

// conntrackDumps records the conntrack clean-ups a Kernel runs (and
// deletes nothing).
type conntrackDumps struct {
	families []netlink.InetFamily
	filters  []netlink.CustomConntrackFilter
}

func (c *conntrackDumps) ConntrackDeleteFilters(_ netlink.ConntrackTableType, fam netlink.InetFamily, filters ...netlink.CustomConntrackFilter) (uint, error) {
	c.families = append(c.families, fam)
	c.filters = append(c.filters, filters...)
	return 0, nil
}

// TestKernelCleansUDPConntrack: as kube-proxy's ipvs proxier, the Kernel
// reconciles UDP conntrack after a sync: after a full one, with a filter
// that takes an untranslated flow to a UDP ClusterIP for stale; after a
// partial one only if a changed Service is UDP with serving endpoints.
func TestKernelCleansUDPConntrack(t *testing.T) {
	f, ct := NewFake(), &conntrackDumps{}
	k, err := New(Config{IPVS: f, Addresses: f, Filter: f, Conntrack: ct})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	dns := snapshot.ServiceKey{Namespace: "ns", Name: "dns"}
	web := snapshot.ServiceKey{Namespace: "ns", Name: "web"}
	udp := func(sp *snapshot.ServicePort) {
		sp.Protocol, sp.Key.Protocol, sp.Port = v1.ProtocolUDP, v1.ProtocolUDP, 53
	}
	snap := snapshot.New(map[snapshot.ServiceKey][]*snapshot.ServicePort{
		dns: svcPorts("dns", "10.96.0.10", udp, ep("10.244.1.2")),
		web: svcPorts("web", "10.96.0.20", nil, ep("10.244.2.2")),
	})
	must(t, k.Sync(snap, snapshot.Changes{Full: true}))
	if !slices.Equal(ct.families, []netlink.InetFamily{unix.AF_INET}) || len(ct.filters) != 1 {
		t.Fatalf("full sync dumped families %v with %d filters, want IPv4 once with one", ct.families, len(ct.filters))
	}
	untranslated := &netlink.ConntrackFlow{}
	untranslated.Forward.Protocol, untranslated.Forward.DstIP, untranslated.Forward.DstPort = unix.IPPROTO_UDP, net.ParseIP("10.96.0.10"), 53
	untranslated.Reverse.Protocol, untranslated.Reverse.SrcIP, untranslated.Reverse.SrcPort = unix.IPPROTO_UDP, net.ParseIP("10.96.0.10"), 53
	if !ct.filters[0].MatchConntrackFlow(untranslated) {
		t.Error("the filter keeps an untranslated flow to the UDP ClusterIP")
	}
	snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{web: svcPorts("web", "10.96.0.20", nil, ep("10.244.3.2"))})
	must(t, k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{web}}))
	if len(ct.families) != 1 {
		t.Errorf("a partial sync of a TCP Service dumped the conntrack table")
	}
	snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{dns: svcPorts("dns", "10.96.0.10", udp, ep("10.244.4.2"))})
	must(t, k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{dns}}))
	if len(ct.families) != 2 {
		t.Errorf("a partial sync of a UDP Service did not reconcile conntrack (%d dumps)", len(ct.families))
	}
}
