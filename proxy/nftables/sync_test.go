package nftables

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/switchboard/switchboard/proxy/snapshot"
)

// fakeWorld is a Tables writing into a Fake, fed through the same path as
// the proxy: API objects, BuildService, a snapshot.
type fakeWorld struct {
	t    *testing.T
	fake *Fake
	k    *Tables
	snap *snapshot.Snapshot
}

func newFakeWorld(t *testing.T) *fakeWorld {
	f := NewFake()
	k, err := New(Config{Conn: f, Conntrack: f, NodeIPs: addrs("192.168.0.1")})
	must(t, err)
	return &fakeWorld{t: t, fake: f, k: k, snap: snapshot.New(nil)}
}

var webKey = snapshot.ServiceKey{Namespace: "ns", Name: "web"}

func webService() *v1.Service {
	return &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: v1.ServiceSpec{ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}}}
}

// webSlice is one slice of web with ready endpoints at addrs, in the order
// given (the controller's order is not the address order).
func webSlice(addrs ...string) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-x",
		Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}}}
	for _, a := range addrs {
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	return sl
}

// set makes the Service's ports in the next snapshot what BuildService
// makes of svc and its slices, and syncs that one change (or everything).
func (w *fakeWorld) set(key snapshot.ServiceKey, svc *v1.Service, full bool, sl ...*discoveryv1.EndpointSlice) {
	w.t.Helper()
	w.snap = w.snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{key: snapshot.BuildService(svc, sl, snapshot.Node{Name: "node-a"})})
	must(w.t, w.k.Sync(w.snap, snapshot.Changes{Full: full, Keys: []snapshot.ServiceKey{key}}))
}

// bucket returns the endpoint in each slot of a bucket map of the IPv4
// table, and fails if two elements share a slot.
func (w *fakeWorld) bucket(name string) map[uint32]netip.AddrPort {
	w.t.Helper()
	out := map[uint32]netip.AddrPort{}
	for _, e := range w.fake.Elements(nftables.TableFamilyIPv4, name) {
		slot := nativeUint32(e.Key[len(e.Key)-4:])
		a, _ := netip.AddrFromSlice(e.Val[:4])
		if _, dup := out[slot]; dup {
			w.t.Fatalf("%s: two elements in slot %d", name, slot)
		}
		out[slot] = netip.AddrPortFrom(a, uint16(e.Val[4])<<8|uint16(e.Val[5]))
	}
	return out
}

func nativeUint32(b []byte) uint32 {
	var v uint32
	// numgen's slot is in host byte order, little-endian here.
	for i := 3; i >= 0; i-- {
		v = v<<8 | uint32(b[i])
	}
	return v
}

func tenAddrs() []string {
	var out []string
	for i := range 10 {
		out = append(out, fmt.Sprintf("10.244.1.%d", 10+i))
	}
	return out
}

// TestReplacingAnEndpointWritesOneElement goes through BuildService, which
// sorts endpoints by address: replacing the pod that sorts last by one
// that sorts first (a rollout) must rewrite one element, not shift every
// slot; only a change in the number of endpoints moves the Service to
// another bucket.
func TestReplacingAnEndpointWritesOneElement(t *testing.T) {
	w := newFakeWorld(t)
	eps := tenAddrs()
	w.set(webKey, webService(), true, webSlice(eps...))
	before := w.bucket("svc-10")
	if len(before) != 10 {
		t.Fatalf("svc-10 holds %d elements, want 10", len(before))
	}

	for round, addr := range []string{"10.244.0.1", "10.244.1.55", "10.244.9.9"} {
		// Replace the endpoint that sorts last of the current ones.
		sorted := slices.Clone(eps)
		slices.SortFunc(sorted, func(a, b string) int { return netip.MustParseAddr(a).Compare(netip.MustParseAddr(b)) })
		gone := sorted[len(sorted)-1]
		if round == 1 {
			gone = sorted[0]
		}
		eps = slices.DeleteFunc(eps, func(a string) bool { return a == gone })
		eps = append(eps, addr)
		w.set(webKey, webService(), false, webSlice(eps...))
		if got := w.k.Stats().LastWrite; got != (Written{Added: 1, Deleted: 1}) {
			t.Errorf("replace %s by %s wrote %+v, want one element added and one deleted", gone, addr, got)
		}
		after := w.bucket("svc-10")
		changed := 0
		for slot, ep := range after {
			if before[slot] != ep {
				changed++
				if ep.Addr() != netip.MustParseAddr(addr) {
					t.Errorf("slot %d moved from %v to %v", slot, before[slot], ep)
				}
			}
		}
		if len(after) != 10 || changed != 1 {
			t.Fatalf("after replacing %s by %s: %d slots, %d changed; want 10 and 1", gone, addr, len(after), changed)
		}
		before = after
	}

	// An eleventh endpoint: the Service moves to the 11-slot bucket.
	w.set(webKey, webService(), false, webSlice(append(eps, "10.244.1.99")...))
	if n, m := len(w.bucket("svc-10")), len(w.bucket("svc-11")); n != 0 || m != 11 {
		t.Errorf("after scaling to 11: svc-10 holds %d, svc-11 %d; want 0 and 11", n, m)
	}
	if got := w.k.Stats().LastWrite; got != (Written{Added: 11, Deleted: 10}) {
		t.Errorf("scaling to 11 wrote %+v, want 11 added and 10 deleted", got)
	}
}

// TestSyncAfterAFailedTransactionRebuilds checks a refused transaction
// leaves nothing half-applied in the Tables' memory: the next sync, even
// of one Service, rebuilds the tables from the snapshot.
func TestSyncAfterAFailedTransactionRebuilds(t *testing.T) {
	w := newFakeWorld(t)
	w.set(webKey, webService(), true, webSlice(tenAddrs()[:3]...))
	w.fake.FailFlush = fmt.Errorf("refused")
	w.snap = w.snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{webKey: snapshot.BuildService(webService(), []*discoveryv1.EndpointSlice{webSlice(tenAddrs()[:4]...)}, snapshot.Node{Name: "node-a"})})
	if err := w.k.Sync(w.snap, snapshot.Changes{Keys: []snapshot.ServiceKey{webKey}}); err == nil {
		t.Fatal("sync succeeded through a refused transaction")
	}
	if n := len(w.bucket("svc-4")); n != 0 {
		t.Fatalf("refused transaction applied %d elements", n)
	}
	other := snapshot.ServiceKey{Namespace: "ns", Name: "other"}
	svc := webService()
	svc.Name, svc.Spec.ClusterIP, svc.Spec.ClusterIPs = "other", "10.96.0.11", []string{"10.96.0.11"}
	sl := webSlice("10.244.2.1")
	sl.Labels[discoveryv1.LabelServiceName] = "other"
	w.set(other, svc, false, sl)
	if n, m, o := len(w.bucket("svc-3")), len(w.bucket("svc-4")), len(w.bucket("svc-1")); n != 0 || m != 4 || o != 1 {
		t.Errorf("after the rebuild svc-3/svc-4/svc-1 hold %d/%d/%d, want 0/4/1", n, m, o)
	}
}

// TestStatsCountsProgrammedRules checks Stats().Rules against the rules the
// transactions left in the (fake) tables, as buckets come and go.
func TestStatsCountsProgrammedRules(t *testing.T) {
	w := newFakeWorld(t)
	w.set(webKey, webService(), true, webSlice(tenAddrs()[:2]...))
	if got, want := w.k.Stats().Rules, len(w.fake.Rules()); got != want || want == 0 {
		t.Errorf("after a full sync: Stats().Rules = %d, tables hold %d", got, want)
	}
	w.set(webKey, webService(), false, webSlice(tenAddrs()[:5]...))
	if got, want := w.k.Stats().Rules, len(w.fake.Rules()); got != want {
		t.Errorf("after a new bucket: Stats().Rules = %d, tables hold %d", got, want)
	}
	w.set(webKey, webService(), true, webSlice(tenAddrs()[:5]...))
	if got, want := w.k.Stats().Rules, len(w.fake.Rules()); got != want {
		t.Errorf("after a second full sync: Stats().Rules = %d, tables hold %d", got, want)
	}
}

// TestAffinityEndpointsComeAndGoWithTheirObjects checks sessionAffinity's
// layout through the fake: each endpoint has its own client set and
// chains; replacing one writes its two elements and objects only, deletes
// its clients with its set in the same transaction, and keeps the other
// endpoints' clients, also across a bucket change and a full resync.
func TestAffinityEndpointsComeAndGoWithTheirObjects(t *testing.T) {
	w := newFakeWorld(t)
	svc := webService()
	svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	svc.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](600)}}
	eps := tenAddrs()[:3]
	w.set(webKey, svc, true, webSlice(eps...))
	setOf := func(addr string) *nftables.Set {
		id := endpointID(Elem{Addr2: netip.MustParseAddr("10.96.0.10"), PortName: "http", Proto: v1.ProtocolTCP,
			To: netip.AddrPortFrom(netip.MustParseAddr(addr), 8080), Timeout: 600})
		return &nftables.Set{Table: w.k.fams[0].table, Name: setAffinityEndpointPrefix + id}
	}
	affinitySets := func() []string {
		var out []string
		for _, n := range w.fake.SetNames(nftables.TableFamilyIPv4) {
			if strings.HasPrefix(n, setAffinityEndpointPrefix) {
				out = append(out, n)
			}
		}
		return out
	}
	if got := affinitySets(); len(got) != 3 {
		t.Fatalf("3 affinity endpoints have sets %v, want 3", got)
	}
	if n := len(w.fake.Elements(nftables.TableFamilyIPv4, "affsvc-3")); n != 3 {
		t.Errorf("affsvc-3 holds %d elements, want 3", n)
	}
	for s := range 3 {
		if n := len(w.fake.Elements(nftables.TableFamilyIPv4, fmt.Sprintf("affchk-3-%d", s))); n != 1 {
			t.Errorf("affchk-3-%d holds %d elements, want 1", s, n)
		}
	}
	if n := len(w.fake.Elements(nftables.TableFamilyIPv4, "svc-3")); n != 0 {
		t.Errorf("an affinity front-end is in svc-3 too (%d elements)", n)
	}
	// Clients the packet path recorded, one per endpoint.
	client := nftables.SetElement{Key: netip.MustParseAddr("10.0.0.7").AsSlice()}
	for _, a := range eps {
		must(t, w.fake.SetAddElements(setOf(a), []nftables.SetElement{client}))
	}
	must(t, w.fake.Flush())
	hasClient := func(addr string) bool {
		return len(w.fake.Elements(nftables.TableFamilyIPv4, setOf(addr).Name)) == 1
	}

	// Replace eps[1]: its two elements and its objects go, nothing else.
	gone := eps[1]
	eps = []string{eps[0], eps[2], "10.244.0.1"}
	w.set(webKey, svc, false, webSlice(eps...))
	if got := w.k.Stats().LastWrite; got != (Written{Added: 2, Deleted: 2}) {
		t.Errorf("replacing an affinity endpoint wrote %+v, want its two elements added and deleted", got)
	}
	if slices.Contains(w.fake.SetNames(nftables.TableFamilyIPv4), setOf(gone).Name) {
		t.Errorf("the replaced endpoint's client set %s is still there", setOf(gone).Name)
	}
	if !hasClient(eps[0]) || !hasClient(eps[1]) || hasClient(eps[2]) {
		t.Errorf("clients of %s/%s/%s: %v/%v/%v, want true/true/false", eps[0], eps[1], eps[2], hasClient(eps[0]), hasClient(eps[1]), hasClient(eps[2]))
	}
	if got, want := w.k.Stats().Rules, len(w.fake.Rules()); got != want {
		t.Errorf("Stats().Rules = %d, tables hold %d", got, want)
	}

	// A fourth endpoint moves the front-end to another bucket; the
	// endpoints keep their sets and clients.
	w.set(webKey, svc, false, webSlice(append(eps, "10.244.0.2")...))
	if n, m := len(w.fake.Elements(nftables.TableFamilyIPv4, "affsvc-3")), len(w.fake.Elements(nftables.TableFamilyIPv4, "affsvc-4")); n != 0 || m != 4 {
		t.Errorf("after scaling to 4: affsvc-3 holds %d, affsvc-4 %d; want 0 and 4", n, m)
	}
	if !hasClient(eps[0]) || !hasClient(eps[1]) {
		t.Errorf("scaling to 4 lost the clients of the endpoints that stayed")
	}

	// A restarted proxy adopts the table: clients stay.
	k2, err := New(Config{Conn: w.fake, Conntrack: w.fake, NodeIPs: addrs("192.168.0.1")})
	must(t, err)
	w.k = k2
	w.set(webKey, svc, true, webSlice(append(eps, "10.244.0.2")...))
	if !hasClient(eps[0]) || !hasClient(eps[1]) || len(affinitySets()) != 4 {
		t.Errorf("after adoption: clients %v/%v, %d endpoint sets; want true/true, 4", hasClient(eps[0]), hasClient(eps[1]), len(affinitySets()))
	}

	// Affinity off: every endpoint's objects go.
	svc.Spec.SessionAffinity, svc.Spec.SessionAffinityConfig = v1.ServiceAffinityNone, nil
	w.set(webKey, svc, false, webSlice(append(eps, "10.244.0.2")...))
	if got := affinitySets(); len(got) != 0 {
		t.Errorf("without affinity, endpoint sets %v remain", got)
	}
	for _, r := range w.fake.Rules() {
		if strings.HasPrefix(r.Chain.Name, affinityEndpointChain) || strings.HasPrefix(r.Chain.Name, affinityCheckChain) {
			t.Errorf("without affinity, chain %s remains", r.Chain.Name)
		}
	}
	if n := len(w.fake.Elements(nftables.TableFamilyIPv4, "svc-4")); n != 4 {
		t.Errorf("without affinity svc-4 holds %d, want 4", n)
	}
}

// TestAffinityEndpointsSharedByFrontEnds: the ClusterIP and the NodePort
// of an affinity Service port share each endpoint's client set and chains
// (a client recorded through one sticks through the other, as with
// kube-proxy), and a front-end that goes leaves the others' clients.
func TestAffinityEndpointsSharedByFrontEnds(t *testing.T) {
	w := newFakeWorld(t)
	svc := webService()
	svc.Spec.Type = v1.ServiceTypeNodePort
	svc.Spec.Ports[0].NodePort = 30080
	svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	svc.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](600)}}
	eps := tenAddrs()[:3]
	w.set(webKey, svc, true, webSlice(eps...))
	endpointSets := func() []string {
		var out []string
		for _, n := range w.fake.SetNames(nftables.TableFamilyIPv4) {
			if strings.HasPrefix(n, setAffinityEndpointPrefix) {
				out = append(out, n)
			}
		}
		return out
	}
	if got := endpointSets(); len(got) != 3 {
		t.Fatalf("3 endpoints behind a ClusterIP and a NodePort have client sets %v, want 3 (shared)", got)
	}
	for _, m := range []string{"affsvc-3", "affnp-3"} {
		if n := len(w.fake.Elements(nftables.TableFamilyIPv4, m)); n != 3 {
			t.Errorf("%s holds %d elements, want 3", m, n)
		}
	}
	client := nftables.SetElement{Key: netip.MustParseAddr("10.0.0.7").AsSlice()}
	for _, name := range endpointSets() {
		must(t, w.fake.SetAddElements(&nftables.Set{Table: w.k.fams[0].table, Name: name}, []nftables.SetElement{client}))
	}
	must(t, w.fake.Flush())

	// The NodePort goes (type ClusterIP): the ClusterIP keeps every
	// endpoint's set and clients.
	svc.Spec.Type, svc.Spec.Ports[0].NodePort = v1.ServiceTypeClusterIP, 0
	w.set(webKey, svc, false, webSlice(eps...))
	if n := len(w.fake.Elements(nftables.TableFamilyIPv4, "affnp-3")); n != 0 {
		t.Errorf("without the NodePort affnp-3 holds %d elements", n)
	}
	sets := endpointSets()
	if len(sets) != 3 {
		t.Fatalf("without the NodePort the endpoint sets are %v, want the 3 the ClusterIP still uses", sets)
	}
	for _, name := range sets {
		if n := len(w.fake.Elements(nftables.TableFamilyIPv4, name)); n != 1 {
			t.Errorf("endpoint set %s lost its client with the NodePort (%d elements)", name, n)
		}
	}
}

// TestAffinityEndpointsPerServicePort: two ports of one Service with the
// same protocol and target port keep their clients apart, as kube-proxy
// keeps one client list per Service port and endpoint: each port's
// front-ends check and record in the port's own endpoint sets. A port
// that goes takes its elements and sets along and nothing of the other's.
func TestAffinityEndpointsPerServicePort(t *testing.T) {
	w := newFakeWorld(t)
	svc := webService()
	svc.Spec.Ports = append(svc.Spec.Ports, v1.ServicePort{Name: "alt", Port: 81, Protocol: v1.ProtocolTCP})
	svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	svc.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](600)}}
	eps := tenAddrs()[:2]
	slice := func(ports ...string) *discoveryv1.EndpointSlice {
		sl := webSlice(eps...)
		sl.Ports = nil
		for _, p := range ports {
			sl.Ports = append(sl.Ports, discoveryv1.EndpointPort{Name: ptr.To(p), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)})
		}
		return sl
	}
	w.set(webKey, svc, true, slice("http", "alt"))
	setOf := func(port, addr string) string {
		return setAffinityEndpointPrefix + endpointID(Elem{Addr2: netip.MustParseAddr("10.96.0.10"), PortName: port, Proto: v1.ProtocolTCP,
			To: netip.AddrPortFrom(netip.MustParseAddr(addr), 8080), Timeout: 600})
	}
	endpointSets := func() []string {
		var out []string
		for _, n := range w.fake.SetNames(nftables.TableFamilyIPv4) {
			if strings.HasPrefix(n, setAffinityEndpointPrefix) {
				out = append(out, n)
			}
		}
		slices.Sort(out)
		return out
	}
	want := []string{setOf("http", eps[0]), setOf("http", eps[1]), setOf("alt", eps[0]), setOf("alt", eps[1])}
	slices.Sort(want)
	if got := endpointSets(); !slices.Equal(got, want) {
		t.Fatalf("2 endpoints behind 2 ports with target 8080 have client sets %v, want one per port and endpoint %v", got, want)
	}
	// Each front-end checks the client sets of its own port: the check
	// maps jump to the chain that looks the client up in them.
	checks := map[uint16]map[string]bool{}
	for s := range 2 {
		for _, e := range w.fake.Elements(nftables.TableFamilyIPv4, fmt.Sprintf("affchk-2-%d", s)) {
			port := uint16(e.Key[8])<<8 | uint16(e.Key[9])
			if checks[port] == nil {
				checks[port] = map[string]bool{}
			}
			checks[port][strings.TrimPrefix(e.VerdictData.Chain, affinityCheckChain)] = true
		}
	}
	for port, name := range map[uint16]string{80: "http", 81: "alt"} {
		for _, a := range eps {
			if id := strings.TrimPrefix(setOf(name, a), setAffinityEndpointPrefix); !checks[port][id] || len(checks[port]) != 2 {
				t.Errorf("port %d checks the clients of %v, want those of port %s's endpoints", port, checks[port], name)
			}
		}
	}
	client := nftables.SetElement{Key: netip.MustParseAddr("10.0.0.7").AsSlice()}
	must(t, w.fake.SetAddElements(&nftables.Set{Table: w.k.fams[0].table, Name: setOf("http", eps[0])}, []nftables.SetElement{client}))
	must(t, w.fake.Flush())

	// Port alt goes: its front-end's five elements (affinity-600,
	// affsvc-2 and affchk-2 per endpoint) and its two sets, nothing else.
	svc.Spec.Ports = svc.Spec.Ports[:1]
	w.set(webKey, svc, false, slice("http", "alt"))
	if got := w.k.Stats().LastWrite; got != (Written{Deleted: 5}) {
		t.Errorf("dropping port alt wrote %+v, want its 5 elements deleted", got)
	}
	want = []string{setOf("http", eps[0]), setOf("http", eps[1])}
	slices.Sort(want)
	if got := endpointSets(); !slices.Equal(got, want) {
		t.Errorf("without port alt the client sets are %v, want port http's %v", got, want)
	}
	if n := len(w.fake.Elements(nftables.TableFamilyIPv4, setOf("http", eps[0]))); n != 1 {
		t.Errorf("port http's client set of %s holds %d clients after port alt went, want 1", eps[0], n)
	}

	// The records are the port's by name, as kube-proxy's: renumbering
	// it rewrites its front-end's elements and keeps its clients.
	svc.Spec.Ports[0].Port = 88
	w.set(webKey, svc, false, slice("http", "alt"))
	if got := endpointSets(); !slices.Equal(got, want) {
		t.Errorf("after renumbering port http the client sets are %v, want %v", got, want)
	}
	if n := len(w.fake.Elements(nftables.TableFamilyIPv4, setOf("http", eps[0]))); n != 1 {
		t.Errorf("renumbering port http left %d clients in its client set of %s, want 1", n, eps[0])
	}
}

// TestAdoptionDeletesTheLegacyAffinityRecorder adopts a table an earlier
// version wrote, whose hooks recorded affinity in one map after DNAT:
// the hooks, their chain and the map go in the adopting full sync.
func TestAdoptionDeletesTheLegacyAffinityRecorder(t *testing.T) {
	f := NewFake()
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		tbl := f.AddTable(&nftables.Table{Name: TableName, Family: fam})
		set := &nftables.Set{Table: tbl, Name: legacyAffinitySet, KeyType: nftables.TypeIPAddr, Dynamic: true, HasTimeout: true}
		must(t, f.AddSet(set, nil))
		record := f.AddChain(&nftables.Chain{Name: "affinity-record", Table: tbl})
		f.AddRule(&nftables.Rule{Table: tbl, Chain: record, Exprs: []expr.Any{
			&expr.Dynset{SrcRegKey: 1, SetName: set.Name, SetID: set.ID, Operation: 1}}})
		for _, hook := range []string{"affinity-prerouting", "affinity-output"} {
			ch := f.AddChain(&nftables.Chain{Name: hook, Table: tbl})
			f.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: record.Name}}})
		}
	}
	must(t, f.Flush())
	k, err := New(Config{Conn: f, Conntrack: f, NodeIPs: addrs("192.168.0.1")})
	must(t, err)
	w := &fakeWorld{t: t, fake: f, k: k, snap: snapshot.New(nil)}
	w.set(webKey, webService(), true, webSlice(tenAddrs()[:2]...))
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		if slices.Contains(f.SetNames(fam), legacyAffinitySet) {
			t.Errorf("family %v: the legacy affinity map is still there", fam)
		}
	}
	for _, r := range f.Rules() {
		if slices.Contains(legacyAffinityChains[:], r.Chain.Name) {
			t.Errorf("legacy chain %s still has rules", r.Chain.Name)
		}
	}
	if n := len(w.bucket("svc-2")); n != 2 {
		t.Errorf("svc-2 holds %d elements, want 2", n)
	}
}

// TestServiceCIDRChangeRewritesDropRules changes only the Service CIDRs
// between two syncs that name no Service: Sync must rebuild the node-wide
// rules (a full sync), so an address of a new CIDR is dropped and one of a
// removed CIDR no longer is, while the Services' elements stay as they were
// and the rule count follows what was programmed.
func TestServiceCIDRChangeRewritesDropRules(t *testing.T) {
	w := newFakeWorld(t)
	w.snap.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}
	w.set(webKey, webService(), true, webSlice("10.244.1.1", "10.244.1.2"))
	drops := func() []string {
		var out []string
		for _, r := range w.fake.Rules() {
			if r.Table.Family != nftables.TableFamilyIPv4 || r.Chain.Name != "cluster-ips-check" {
				continue
			}
			var dst string
			drop := false
			for _, e := range r.Exprs {
				switch e := e.(type) {
				case *expr.Cmp:
					if a, ok := netip.AddrFromSlice(e.Data); ok {
						dst = a.String()
					}
				case *expr.Verdict:
					drop = e.Kind == expr.VerdictDrop
				}
			}
			if drop {
				out = append(out, dst)
			}
		}
		slices.Sort(out)
		return out
	}
	if got := drops(); !slices.Equal(got, []string{"10.96.0.0"}) {
		t.Fatalf("drop rules for %v, want 10.96.0.0", got)
	}
	bucket := w.bucket("svc-2")
	step := func(cidrs []string, want []string) {
		t.Helper()
		tx := w.fake.Transactions()
		w.snap = w.snap.With(nil)
		w.snap.ServiceCIDRs = nil
		for _, c := range cidrs {
			w.snap.ServiceCIDRs = append(w.snap.ServiceCIDRs, netip.MustParsePrefix(c))
		}
		must(t, w.k.Sync(w.snap, snapshot.Changes{}))
		if got := w.fake.Transactions(); got != tx+1 {
			t.Errorf("CIDRs %v: %d transactions, want 1", cidrs, got-tx)
		}
		if got := drops(); !slices.Equal(got, want) {
			t.Errorf("CIDRs %v: drop rules for %v, want %v", cidrs, got, want)
		}
		if got := w.bucket("svc-2"); !maps.Equal(got, bucket) {
			t.Errorf("CIDRs %v: web's bucket %v, want it unchanged %v", cidrs, got, bucket)
		}
		if got, want := w.k.Stats().Rules, len(w.fake.Rules()); got != want {
			t.Errorf("CIDRs %v: Stats().Rules %d, the table holds %d", cidrs, got, want)
		}
	}
	step([]string{"10.96.0.0/16", "10.97.0.0/16"}, []string{"10.96.0.0", "10.97.0.0"})
	step([]string{"10.97.0.0/16"}, []string{"10.97.0.0"})
}
