package ipvs

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	libipvs "github.com/moby/ipvs"
	v1 "k8s.io/api/core/v1"

	"github.com/switchboard/switchboard/clustertest"
	"github.com/switchboard/switchboard/netnamespace"
	"github.com/switchboard/switchboard/proxy/snapshot"
)

// TestFilterTableInKernel applies the filter table with the real nft in a
// fresh namespace (this needs nftables, not IPVS): the script is accepted,
// applying it again replaces it, and with real packets a port of a
// Service address that no virtual server serves is rejected while a
// served one is not (listeners on both, the address on loopback); a
// partial sync's element delta serving that port lets it through, and
// its reverse rejects it again.
func TestFilterTableInKernel(t *testing.T) {
	clustertest.RequireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		clustertest.Skip(t, "needs nft")
	}
	name, path := clustertest.NetNS(t, "sbipvsf")
	s := Translate([]*snapshot.ServicePort{port(func(sp *snapshot.ServicePort) {
		sp.ClusterIPs, sp.NodePort = addrs("10.96.0.10", "fd00:96::10"), 30080
	}, ep("10.244.1.2"))}, Options{NodeIPs: addrs("10.0.1.1")})
	f := nftExec{netns: path}
	for range 2 {
		must(t, f.Apply(FilterText([]Service{s}, nil)))
	}
	out, err := netnamespace.Exec(name, "nft", "list", "table", "inet", Table)
	must(t, err)
	if strings.Count(out, "set vips4") != 1 || !strings.Contains(out, "10.96.0.10") {
		t.Fatalf("table after two applies:\n%s", out)
	}
	must(t, netnamespace.IP(name, "addr", "add", "10.96.0.10/32", "dev", "lo"))
	for _, p := range []string{"80", "81"} {
		var l net.Listener
		must(t, netnamespace.Do(path, func() (err error) { l, err = net.Listen("tcp", "10.96.0.10:"+p); return err }))
		defer l.Close()
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				io.WriteString(c, "hi")
				c.Close()
			}
		}()
	}
	if c, err := netnamespace.Dial(context.Background(), path, "tcp", "10.96.0.10:80"); err != nil {
		t.Errorf("served port: %v", err)
	} else {
		c.Close()
	}
	if c, err := netnamespace.Dial(context.Background(), path, "tcp", "10.96.0.10:81"); err == nil {
		c.Close()
		t.Errorf("a port no virtual server serves was not rejected")
	}
	// A partial sync's transaction (FilterDelta) serving port 81: the
	// port is reached; taking it back rejects it again.
	served81 := []filterElem{{"served4", "10.96.0.10 . tcp . 81"}}
	must(t, f.Apply(FilterDelta(served81, nil)))
	if c, err := netnamespace.Dial(context.Background(), path, "tcp", "10.96.0.10:81"); err != nil {
		t.Errorf("port 81 after the delta added it: %v", err)
	} else {
		c.Close()
	}
	must(t, f.Apply(FilterDelta(nil, served81)))
	if c, err := netnamespace.Dial(context.Background(), path, "tcp", "10.96.0.10:81"); err == nil {
		c.Close()
		t.Errorf("port 81 not rejected after the delta deleted it")
	}
	must(t, Cleanup(path))
	if out, err := netnamespace.Exec(name, "nft", "list", "tables"); err != nil || strings.Contains(out, Table) {
		t.Errorf("Cleanup left the table (%v):\n%s", err, out)
	}
}

// TestLiveIPVS programs a Service into a real kernel's IPVS in a fresh
// namespace: its address is bound to the dummy interface, the virtual and
// real servers read back as applied, a connection to the ClusterIP
// reaches the endpoint (a listener in the namespace), replacing the
// endpoint moves it, and Cleanup removes everything. It skips where the
// kernel has no IPVS (the one skip SWITCHBOARD_E2E=require accepts).
func TestLiveIPVS(t *testing.T) {
	clustertest.RequireIPVS(t)
	name, path := clustertest.NetNS(t, "sbipvs")
	must(t, netnamespace.IP(name, "addr", "add", "10.250.0.1/32", "dev", "lo"))
	must(t, netnamespace.IP(name, "addr", "add", "10.250.0.2/32", "dev", "lo"))
	k, err := New(Config{NetNS: path, Options: Options{NodeIPs: addrs("10.250.0.1")}})
	must(t, err)
	defer k.Close()
	for _, a := range []string{"10.250.0.1:8080", "10.250.0.2:8080"} {
		var l net.Listener
		must(t, netnamespace.Do(path, func() (err error) { l, err = net.Listen("tcp", a); return err }))
		defer l.Close()
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				io.WriteString(c, a)
				c.Close()
			}
		}()
	}
	web := snapshot.ServiceKey{Namespace: "ns", Name: "web"}
	snap := snapshot.New(map[snapshot.ServiceKey][]*snapshot.ServicePort{web: svcPorts("web", "10.96.0.10", nil, ep("10.250.0.1"))})
	must(t, k.Sync(snap, snapshot.Changes{Full: true}))
	check := func(want string) {
		t.Helper()
		st, err := k.Inspect(web)
		must(t, err)
		if len(st[web].Applied) == 0 || len(st[web].Missing) > 0 {
			t.Errorf("read-back: applied %q, missing %q", st[web].Applied, st[web].Missing)
		}
		c, err := netnamespace.Dial(context.Background(), path, "tcp", "10.96.0.10:80")
		if err != nil {
			t.Fatalf("connect through the ClusterIP: %v", err)
		}
		got, _ := io.ReadAll(c)
		c.Close()
		if string(got) != want {
			t.Errorf("reached %q, want %q", got, want)
		}
	}
	check("10.250.0.1:8080")
	snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{web: svcPorts("web", "10.96.0.10", nil, ep("10.250.0.2"))})
	must(t, k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{web}}))
	check("10.250.0.2:8080")
	must(t, Cleanup(path))
	if out, _ := netnamespace.Exec(name, "ip", "link", "show", Interface); strings.Contains(out, Interface) {
		t.Errorf("Cleanup left %s", Interface)
	}
}

// TestCleanupRemovesOwnServers: the Kernel's filter table, applied with
// the real nft in a fresh namespace, records its NodePort virtual servers
// (on the node's address, shared with other IPVS users); a restarted
// Kernel's full sync removes a NodePort of the previous run no Service
// wants; cleanup, on the in-memory IPVS, removes every virtual server
// switchboard created (ClusterIP and NodePort, both protocols) and leaves
// another user's on the same node address and elsewhere.
func TestCleanupRemovesOwnServers(t *testing.T) {
	clustertest.RequireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		clustertest.Skip(t, "needs nft")
	}
	_, path := clustertest.NetNS(t, "sbipvsc")
	f := NewFake()
	k, err := New(Config{IPVS: f, Addresses: f, Filter: nftExec{netns: path},
		Options: Options{NodeIPs: addrs("10.0.1.1", "fd00:1::1")}})
	must(t, err)
	defer k.Close()
	foreign := []*libipvs.Service{
		toService(VirtualServer{ServerKey: ServerKey{netip.MustParseAddr("10.0.1.1"), "TCP", 22}, Scheduler: "rr"}),
		toService(VirtualServer{ServerKey: ServerKey{netip.MustParseAddr("10.0.1.1"), "UDP", 30080}, Scheduler: "rr"}),
		toService(VirtualServer{ServerKey: ServerKey{netip.MustParseAddr("172.16.0.1"), "TCP", 80}, Scheduler: "wrr"}),
	}
	for _, s := range foreign {
		must(t, f.NewService(s))
	}
	a := snapshot.ServiceKey{Namespace: "ns", Name: "a"}
	b := snapshot.ServiceKey{Namespace: "ns", Name: "b"}
	snap := snapshot.New(map[snapshot.ServiceKey][]*snapshot.ServicePort{
		a: svcPorts("a", "10.96.0.1", func(sp *snapshot.ServicePort) { sp.NodePort = 30080 }, ep("10.244.1.2")),
		b: svcPorts("b", "10.96.0.2", func(sp *snapshot.ServicePort) {
			sp.Protocol, sp.Key.Protocol, sp.NodePort, sp.ExternalLocal = v1.ProtocolUDP, v1.ProtocolUDP, 30053, true
		}, ep("10.244.2.2")),
	})
	must(t, k.Sync(snap, snapshot.Changes{Full: true}))
	// A NodePort added by a partial sync is recorded too.
	snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{a: append(
		svcPorts("a", "10.96.0.1", func(sp *snapshot.ServicePort) { sp.NodePort = 30080 }, ep("10.244.1.2")),
		svcPorts("a", "10.96.0.1", func(sp *snapshot.ServicePort) { sp.Port, sp.Key.Port, sp.NodePort = 81, "alt", 30081 }, ep("10.244.1.2"))...)})
	must(t, k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{a}}))
	if len(f.Dump()) <= len(foreign) {
		t.Fatalf("nothing programmed: %q", f.Dump())
	}
	nodePorts, err := readNodePorts(path)
	must(t, err)
	had := hasTable(path)
	slices.SortFunc(nodePorts, func(x, y ServerKey) int { return strings.Compare(x.String(), y.String()) })
	var got []string
	for _, k := range nodePorts {
		got = append(got, k.String())
	}
	want := []string{"tcp 10.0.1.1:30080", "tcp 10.0.1.1:30081", "tcp [fd00:1::1]:30080", "tcp [fd00:1::1]:30081",
		"udp 10.0.1.1:30053", "udp [fd00:1::1]:30053"}
	slices.Sort(want)
	slices.Sort(got)
	if !had || !slices.Equal(got, want) {
		t.Fatalf("recorded NodePorts %q (table there: %v), want %q", got, had, want)
	}
	// A restarted Kernel whose first full sync lacks b removes b's
	// NodePort virtual servers, known from the table's record, and still
	// not the other user's on the node address.
	k2, err := New(Config{IPVS: f, Addresses: f, Filter: nftExec{netns: path},
		Options: Options{NodeIPs: addrs("10.0.1.1", "fd00:1::1")}})
	must(t, err)
	defer k2.Close()
	snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{b: nil})
	must(t, k2.Sync(snap, snapshot.Changes{Full: true}))
	for _, l := range f.Dump() {
		if strings.Contains(l, ":30053") {
			t.Errorf("a NodePort of a previous run left after the full sync: %s", l)
		}
	}
	for _, s := range foreign {
		key, _ := serverKey(s)
		if !slices.ContainsFunc(f.Dump(), func(l string) bool { return strings.HasPrefix(l, key.String()+" ") }) {
			t.Errorf("the full sync removed another user's virtual server %s", key)
		}
	}
	nodePorts, err = readNodePorts(path)
	must(t, err)
	ours, _ := f.List()
	must(t, cleanupServers(f, ours, nodePorts))
	left := f.Dump()
	wantLeft := []string{"tcp 10.0.1.1:22 rr", "tcp 172.16.0.1:80 wrr", "udp 10.0.1.1:30080 rr"}
	if !slices.Equal(left, wantLeft) {
		t.Errorf("after cleanup:\n got %q\nwant %q", left, wantLeft)
	}
	must(t, Cleanup(path))
	if hasTable(path) {
		t.Errorf("Cleanup left the table")
	}
}
