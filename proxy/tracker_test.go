package proxy

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
