package iptables

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/switchboard/switchboard/proxy/snapshot"
)

// recorder is a Runner that keeps what it was asked to restore and fails
// restores while fail is set; Save returns an empty table.
type recorder struct {
	restores []string
	fail     bool
}

func (r *recorder) Restore(is4 bool, data []byte) error {
	if r.fail {
		return errors.New("restore refused")
	}
	r.restores = append(r.restores, string(data))
	return nil
}
func (r *recorder) Save(bool, string) ([]byte, error) {
	return []byte("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"), nil
}
func (r *recorder) Run(bool, ...string) error                 { return nil }
func (r *recorder) List(bool, string, string) ([]byte, error) { return nil, nil }

// noConntrack counts deletions and deletes nothing.
type noConntrack struct{ calls int }

func (n *noConntrack) ConntrackDeleteFilters(netlink.ConntrackTableType, netlink.InetFamily, ...netlink.CustomConntrackFilter) (uint, error) {
	n.calls++
	return 0, nil
}

// TestSyncWritesOnlyTheChangedServiceAndRecovers: a partial sync's input
// holds the changed Service's chains and rules and nothing of the others;
// a failed restore makes the next sync a full one; a removed UDP endpoint
// has its conntrack entries cleared.
func TestSyncWritesOnlyTheChangedServiceAndRecovers(t *testing.T) {
	rec, ct := &recorder{}, &noConntrack{}
	k, err := New(Config{Runner: rec, Conntrack: ct, NodeIPs: []netip.Addr{netip.MustParseAddr("10.0.1.1")}})
	if err != nil {
		t.Fatal(err)
	}
	a := snapshot.ServiceKey{Namespace: "ns", Name: "a"}
	b := snapshot.ServiceKey{Namespace: "ns", Name: "b"}
	mk := func(k snapshot.ServiceKey, cip string, eps ...snapshot.Endpoint) []*snapshot.ServicePort {
		sp := port(nil, eps...)
		sp.Key.ServiceKey = k
		sp.Protocol, sp.Key.Protocol = "UDP", "UDP"
		sp.ClusterIPs = []netip.Addr{netip.MustParseAddr(cip)}
		return []*snapshot.ServicePort{sp}
	}
	snap := snapshot.New(map[snapshot.ServiceKey][]*snapshot.ServicePort{
		a: mk(a, "10.96.0.1", ep("10.244.1.2")), b: mk(b, "10.96.0.2", ep("10.244.2.2")),
	})
	if err := k.Sync(snap, snapshot.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	full := rec.restores[0]
	if !strings.Contains(full, "ns/a:http") || !strings.Contains(full, "ns/b:http") || !strings.Contains(full, ":SWB-POSTROUTING") {
		t.Fatalf("full sync lacks a Service or the node-wide chains:\n%s", full)
	}

	rec.restores = nil
	snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{a: mk(a, "10.96.0.1", ep("10.244.3.2"))})
	if err := k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{a}}); err != nil {
		t.Fatal(err)
	}
	if len(rec.restores) != 1 {
		t.Fatalf("partial sync of one IPv4 Service ran %d restores, want 1", len(rec.restores))
	}
	part := rec.restores[0]
	if strings.Contains(part, "ns/b") || strings.Contains(part, "SWB-POSTROUTING") || strings.Contains(part, "*filter") {
		t.Errorf("partial sync rewrote more than Service a's chains:\n%s", part)
	}
	if !strings.Contains(part, "10.244.3.2:8080") || !strings.Contains(part, "-X "+endpointChain(a, "ns/a:http", "udp", netip.MustParseAddrPort("10.244.1.2:8080"))) {
		t.Errorf("partial sync lacks the new endpoint or the old one's deletion:\n%s", part)
	}
	if ct.calls == 0 {
		t.Error("the removed UDP endpoint's conntrack entries were not cleared")
	}
	if st := k.Stats(); st.LastWrite.Added == 0 || st.LastWrite.Deleted == 0 {
		t.Errorf("LastWrite %+v: want rules added and deleted", st.LastWrite)
	}

	// A failed restore: the next sync rebuilds everything.
	rec.fail = true
	snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{b: mk(b, "10.96.0.2")})
	if err := k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{b}}); err == nil {
		t.Fatal("Sync hid the failed restore")
	}
	rec.fail, rec.restores = false, nil
	if err := k.Sync(snap, snapshot.Changes{}); err != nil {
		t.Fatal(err)
	}
	if len(rec.restores) == 0 || !strings.Contains(rec.restores[0], ":SWB-POSTROUTING") || !strings.Contains(rec.restores[0], "ns/a:http") {
		t.Errorf("the sync after a failure is not a full one:\n%v", rec.restores)
	}
}
