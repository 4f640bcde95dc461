package iptables

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/switchboard/switchboard/proxy/snapshot"
)

// recorder is a Runner that keeps what it was asked to restore and fails
// restores while fail is set; Save returns an empty table. calls is every
// restore and command in order; a -C check finds nothing.
type recorder struct {
	restores []string
	calls    []string
	fail     bool
}

func (r *recorder) Restore(is4 bool, data []byte) error {
	if r.fail {
		return errors.New("restore refused")
	}
	r.restores = append(r.restores, string(data))
	r.calls = append(r.calls, family(is4)+"restore "+strings.Join(strings.Fields(string(data)), " "))
	return nil
}

// family prefixes a recorded call with its IP family.
func family(is4 bool) string {
	if is4 {
		return "4 "
	}
	return "6 "
}

// full is the full sync's restore among those recorded: the one that
// writes the node-wide chains' rules (a fresh node also gets the jumps'
// targets declared on their own first).
func (r *recorder) full() string {
	for _, s := range r.restores {
		if strings.Contains(s, "-A SWB-") {
			return s
		}
	}
	return ""
}
func (r *recorder) Save(bool, string) ([]byte, error) {
	return []byte("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"), nil
}
func (r *recorder) Run(is4 bool, args ...string) error {
	r.calls = append(r.calls, family(is4)+"run "+strings.Join(args, " "))
	if slices.Contains(args, "-C") {
		return errors.New("no such rule")
	}
	return nil
}
func (r *recorder) List(bool, string, string) ([]byte, error) { return nil, nil }

// noConntrack counts deletions and deletes nothing.
type noConntrack struct{ calls int }

func (n *noConntrack) ConntrackDeleteFilters(netlink.ConntrackTableType, netlink.InetFamily, ...netlink.CustomConntrackFilter) (uint, error) {
	n.calls++
	return 0, nil
}

// TestSyncWritesOnlyTheChangedServiceAndRecovers: a partial sync's input
// holds the changed Service's chains and rules and nothing of the others;
// a failed restore makes the next sync a full one; the changed UDP
// Service's conntrack entries are reconciled.
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
	full := rec.full()
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
		t.Error("the changed UDP Service's conntrack entries were not reconciled")
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
	if f := rec.full(); !strings.Contains(f, ":SWB-POSTROUTING") || !strings.Contains(f, "ns/a:http") {
		t.Errorf("the sync after a failure is not a full one:\n%v", rec.restores)
	}
}

// TestFreshNodeGetsItsJumpsBeforeTheFullRestore: on a node without chains
// of ours, the jumps' target chains are declared and the jumps inserted
// before the full sync's big restore (kube-proxy's order), so the legacy
// tools, which read and write a whole table per call, check and insert
// them in small tables; after the restore nothing is checked again.
func TestFreshNodeGetsItsJumpsBeforeTheFullRestore(t *testing.T) {
	rec := &recorder{}
	k, err := New(Config{Runner: rec, Conntrack: &noConntrack{}, NodeIPs: []netip.Addr{netip.MustParseAddr("10.0.1.1")}})
	if err != nil {
		t.Fatal(err)
	}
	a := snapshot.ServiceKey{Namespace: "ns", Name: "a"}
	sp := port(nil, ep("10.244.1.2"))
	sp.Key.ServiceKey = a
	sp.ClusterIPs = []netip.Addr{netip.MustParseAddr("10.96.0.1")}
	snap := snapshot.New(map[snapshot.ServiceKey][]*snapshot.ServicePort{a: {sp}})
	if err := k.Sync(snap, snapshot.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	var inserts int
	declared, big := -1, -1
	for i, c := range rec.calls {
		c, ok := strings.CutPrefix(c, "4 ")
		if !ok {
			continue
		}
		switch {
		case strings.HasPrefix(c, "restore") && strings.Contains(c, ":SWB-SERVICES") && !strings.Contains(c, "-A "):
			if declared < 0 {
				declared = i
				inserts = strings.Count(c, " -I ")
			}
		case strings.HasPrefix(c, "restore") && strings.Contains(c, "ns/a:http"):
			if big < 0 {
				big = i
			}
		case strings.HasPrefix(c, "run "):
			// One restore inserts them all: no process per jump.
			t.Errorf("call %d runs iptables on its own on a fresh node: %s", i, c)
		}
	}
	if declared < 0 || big < 0 || declared > big {
		t.Fatalf("want the jumps' targets declared before the full restore; calls:\n%s", strings.Join(rec.calls, "\n"))
	}
	if inserts != len(jumps) {
		t.Errorf("%d jumps inserted with the targets, want %d (IPv4)", inserts, len(jumps))
	}

	// A node that already has our chains (a restart) keeps them: nothing is
	// declared on its own, and the jumps are checked after the restore.
	rec2 := &recorder{}
	rec2Save := []byte("*nat\n:PREROUTING ACCEPT [0:0]\n:SWB-SERVICES - [0:0]\nCOMMIT\n")
	k2, err := New(Config{Runner: savedRunner{rec2, rec2Save}, Conntrack: &noConntrack{}, NodeIPs: []netip.Addr{netip.MustParseAddr("10.0.1.1")}})
	if err != nil {
		t.Fatal(err)
	}
	if err := k2.Sync(snap, snapshot.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rec2.restores[0], "ns/a:http") {
		t.Errorf("a node with our chains got a restore before the full one:\n%s", rec2.restores[0])
	}
}

// savedRunner is a recorder whose Save returns save.
type savedRunner struct {
	*recorder
	save []byte
}

func (s savedRunner) Save(bool, string) ([]byte, error) { return s.save, nil }
