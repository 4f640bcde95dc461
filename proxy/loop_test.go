package proxy

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	gonft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/switchboard/switchboard/proxy/nftables"
)

// TestLoopProgramsEachChangeOnce runs the sync loop against the nftables
// writer on a fake netlink connection: the first sync programs everything,
// each later change is one transaction writing only what changed, and the
// metrics follow without walking the cluster.
func TestLoopProgramsEachChangeOnce(t *testing.T) {
	fake := nftables.NewFake()
	k, err := nftables.New(nftables.Config{Conn: fake, Conntrack: fake, NodeIPs: []netip.Addr{netip.MustParseAddr("192.168.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	tr := NewTracker("node-a")
	sh, slh := tr.ServiceHandler(), tr.SliceHandler()
	for i := range 3 {
		sh.OnAdd(benchService(i), false)
		slh.OnAdd(benchSlice(i, []string{benchAddr(i, 0), benchAddr(i, 1)}), false)
	}
	m := newMetrics()
	status := newSyncStatus(tr)
	hc := newHealthCheckServers("", nil, status, slog.Default())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- loop(ctx, Config{MinSyncInterval: time.Millisecond}, tr, k, m, status, hc, slog.Default())
	}()
	defer func() { cancel(); <-done }()

	// waitFor polls the fake until cond holds: the loop runs on its own.
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("never saw %s", what)
			}
		}
	}
	bucket := func(name string) int { return len(fake.Elements(gonft.TableFamilyIPv4, name)) }
	waitFor("the first sync", func() bool { return bucket("svc-2") == 6 })
	if got := fake.Transactions(); got != 1 {
		t.Errorf("%d transactions for the initial state, want 1", got)
	}

	// A rollout step in one Service: one element out, one in, one sync.
	slh.OnUpdate(benchSlice(1, []string{benchAddr(1, 0), benchAddr(1, 1)}), benchSlice(1, []string{"10.1.0.1", benchAddr(1, 1)}))
	waitFor("the replacement", func() bool { return fake.Transactions() == 2 })
	if got := k.Stats().LastWrite; got != (nftables.Written{Added: 1, Deleted: 1}) {
		t.Errorf("replacing one endpoint wrote %+v, want 1 added and 1 deleted", got)
	}

	// A Service deleted: its elements go, the gauges follow (they are set
	// after the transaction, so wait for them too).
	sh.OnDelete(benchService(0))
	waitFor("the deletion and its gauges", func() bool {
		return fake.Transactions() == 3 && testutil.ToFloat64(m.services) == 2 && testutil.ToFloat64(m.endpoints) == 4 &&
			testutil.ToFloat64(m.rules) == float64(len(fake.Rules()))
	})
	if n := bucket("svc-2"); n != 4 {
		t.Errorf("svc-2 holds %d elements after the deletion, want 4", n)
	}
}

// TestServiceCIDRChangeReachesTheKernel changes only the cluster's Service
// CIDRs: the loop wakes with no Service changed and the writer rebuilds
// its node-wide rules, so the new CIDR's drop rule is programmed.
func TestServiceCIDRChangeReachesTheKernel(t *testing.T) {
	fake := nftables.NewFake()
	k, err := nftables.New(nftables.Config{Conn: fake, Conntrack: fake, NodeIPs: []netip.Addr{netip.MustParseAddr("192.168.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	tr := NewTracker("node-a")
	tr.ServiceHandler().OnAdd(benchService(0), false)
	tr.SliceHandler().OnAdd(benchSlice(0, []string{benchAddr(0, 0)}), false)
	status := newSyncStatus(tr)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- loop(ctx, Config{MinSyncInterval: time.Millisecond}, tr, k, newMetrics(), status, newHealthCheckServers("", nil, status, slog.Default()), slog.Default())
	}()
	defer func() { cancel(); <-done }()
	// dropsTo says whether a rule of the IPv4 table drops traffic to addr
	// (the Service CIDR check compares the masked destination with it).
	dropsTo := func(addr string) bool {
		want := netip.MustParseAddr(addr).AsSlice()
		for _, r := range fake.Rules() {
			if r.Table.Family != gonft.TableFamilyIPv4 {
				continue
			}
			cmp, drop := false, false
			for _, e := range r.Exprs {
				switch e := e.(type) {
				case *expr.Cmp:
					cmp = cmp || bytes.Equal(e.Data, want)
				case *expr.Verdict:
					drop = e.Kind == expr.VerdictDrop
				}
			}
			if cmp && drop {
				return true
			}
		}
		return false
	}
	wait := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("never saw %s", what)
			}
		}
	}
	wait("the first sync", func() bool { return fake.Transactions() == 1 })
	if dropsTo("10.96.0.0") {
		t.Fatal("a drop rule for 10.96.0.0/16 before any ServiceCIDR was known")
	}
	tr.SetServiceCIDRs([]netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")})
	wait("the drop rule for 10.96.0.0/16", func() bool { return dropsTo("10.96.0.0") })
	if got := fake.Transactions(); got != 2 {
		t.Errorf("%d transactions, want 2 (one for the CIDR change)", got)
	}
}
