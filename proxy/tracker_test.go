package proxy

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/switchboard/switchboard/proxy/snapshot"
)

// TestNextTakesTheSignal checks Changed fires only while changes are
// pending: a change marked before Next is taken with its signal, so the
// sync loop never wakes to an empty change list (which would mean a full
// sync).
func TestNextTakesTheSignal(t *testing.T) {
	tr := NewTracker("node-a")
	h := tr.ServiceHandler()
	svc := func(name string) *v1.Service {
		return &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}}
	}
	h.OnAdd(svc("a"), false)
	h.OnAdd(svc("b"), false)
	if u := tr.Next(); len(u.Changed) != 2 {
		t.Fatalf("changed %v, want a and b", u.Changed)
	}
	select {
	case <-tr.Changed():
		t.Fatal("signalled with nothing pending")
	default:
	}
	h.OnAdd(svc("c"), false)
	select {
	case <-tr.Changed():
	default:
		t.Fatal("a new change was not signalled")
	}
	if u := tr.Next(); len(u.Changed) != 1 {
		t.Fatalf("changed %v, want c", u.Changed)
	}
}

// TestRelabelledSliceMovesToItsNewService checks a slice whose Service
// label changes leaves the Service it belonged to, as upstream's
// EndpointSlice cache does.
func TestRelabelledSliceMovesToItsNewService(t *testing.T) {
	tr := NewTracker("node-a")
	sh, slh := tr.ServiceHandler(), tr.SliceHandler()
	for i := range 2 {
		sh.OnAdd(benchService(i), false)
	}
	sl := benchSlice(0, []string{"10.244.1.1", "10.244.1.2"})
	slh.OnAdd(sl, false)
	tr.Next()
	moved := sl.DeepCopy()
	moved.Labels[discoveryv1.LabelServiceName] = "svc-1"
	slh.OnUpdate(sl, moved)
	u := tr.Next()
	if len(u.Changed) != 2 {
		t.Fatalf("changed %v, want both Services", u.Changed)
	}
	eps := func(name string) int {
		ports := u.Snapshot.Get(snapshot.ServiceKey{Namespace: "bench", Name: name})
		if len(ports) != 1 {
			t.Fatalf("%s has %d ports, want 1", name, len(ports))
		}
		return len(ports[0].Endpoints)
	}
	if a, b := eps("svc-0"), eps("svc-1"); a != 0 || b != 2 {
		t.Errorf("after the relabel svc-0 has %d endpoints and svc-1 %d, want 0 and 2", a, b)
	}
	// Unlabelled, it belongs to no Service.
	gone := moved.DeepCopy()
	delete(gone.Labels, discoveryv1.LabelServiceName)
	slh.OnUpdate(moved, gone)
	u = tr.Next()
	if b := eps("svc-1"); b != 0 {
		t.Errorf("after removing the label svc-1 has %d endpoints, want 0", b)
	}
}

// TestNextSharesUnchangedServices checks a change builds only the changed
// Service: every other Service's ports are the previous snapshot's.
func TestNextSharesUnchangedServices(t *testing.T) {
	tr := NewTracker("node-a")
	sh, slh := tr.ServiceHandler(), tr.SliceHandler()
	for i := range 100 {
		sh.OnAdd(benchService(i), false)
		slh.OnAdd(benchSlice(i, []string{benchAddr(i, 0)}), false)
	}
	first := tr.Next().Snapshot
	slh.OnUpdate(benchSlice(7, []string{benchAddr(7, 0)}), benchSlice(7, []string{benchAddr(7, 1)}))
	u := tr.Next()
	if len(u.Changed) != 1 || u.Changed[0].Name != "svc-7" {
		t.Fatalf("changed %v, want svc-7", u.Changed)
	}
	for key, ports := range first.All() {
		same := u.Snapshot.Get(key)[0] == ports[0]
		if same == (key.Name == "svc-7") {
			t.Errorf("%s: shared with the previous snapshot %v", key, same)
		}
	}
	if s, p, e := u.Snapshot.Counts(); s != 100 || p != 100 || e != 100 {
		t.Errorf("counts %d/%d/%d, want 100/100/100", s, p, e)
	}
}
