package localcluster

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// TestAllocateIPRoundRobin: pod IPs are handed out as the CNI host-local
// plugin hands them out: the next free one after the last, wrapping round,
// so a released address is reused last; a pod keeps its previous address
// when it is free.
func TestAllocateIPRoundRobin(t *testing.T) {
	r := &podRuntime{node: NodeInfo{Name: "node-1", PodCIDR: netip.MustParsePrefix("10.244.1.0/24")}, ips: map[netip.Addr]types.UID{}}
	pod := func(i int) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{UID: types.UID(fmt.Sprint("uid-", i))}}
	}
	alloc := func(p *corev1.Pod) netip.Addr {
		t.Helper()
		a, err := r.allocateIP(p)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	if a := alloc(pod(1)); a != netip.MustParseAddr("10.244.1.2") {
		t.Fatalf("first pod IP %s, want 10.244.1.2 (after the gateway)", a)
	}
	b := alloc(pod(2))
	r.releaseIP(netip.MustParseAddr("10.244.1.2"), "uid-1")
	if c := alloc(pod(3)); c != b.Next() {
		t.Fatalf("after releasing 10.244.1.2 the next pod got %s, want %s: a released address is reused last", c, b.Next())
	}
	// A pod that had an address keeps it while it is free.
	again := pod(1)
	again.Status.PodIP = "10.244.1.2"
	if a := alloc(again); a != netip.MustParseAddr("10.244.1.2") {
		t.Fatalf("pod with previous IP 10.244.1.2 got %s", a)
	}
	// Fill the range (.2 to .254), release one, and the next takes it,
	// wrapping round; then the range is full.
	for i := 4; len(r.ips) < 253; i++ {
		alloc(pod(i))
	}
	r.releaseIP(b, "uid-2")
	if a := alloc(pod(1000)); a != b {
		t.Fatalf("full range with %s free handed out %s", b, a)
	}
	if a, err := r.allocateIP(pod(1001)); err == nil {
		t.Fatalf("full range handed out %s", a)
	}
}
