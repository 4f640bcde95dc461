package servicestore

import (
	"slices"
	"sync"
	"testing"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

func slice(name, service string, addrs ...string) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name,
		Labels: map[string]string{discoveryv1.LabelServiceName: service}}, AddressType: discoveryv1.AddressTypeIPv4}
	if service == "" {
		sl.Labels = nil
	}
	for _, a := range addrs {
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}})
	}
	return sl
}

// names lists the slices the store holds for Service name.
func names(s *Store, name string) []string {
	var out []string
	for _, sl := range s.Slices(Key{"ns", name}) {
		out = append(out, sl.Name)
	}
	return out
}

// TestHandlersJoinAndRelabel feeds the informer handlers as the proxy and
// DNS do: a slice joins the Service its label names, arriving before or
// after it; relabelled it leaves the old Service (both are reported
// changed); unlabelled it belongs to none; a deletion seen only as
// DeletedFinalStateUnknown still removes it; and each change is reported
// with the lock held.
func TestHandlersJoinAndRelabel(t *testing.T) {
	s := New()
	var mu sync.Mutex
	var changed []string
	locked := func() bool {
		if mu.TryLock() {
			mu.Unlock()
			return false
		}
		return true
	}
	svcH, sliceH := s.Handlers(&mu, func(k Key) {
		if !locked() {
			t.Errorf("%s reported without the lock", k)
		}
		changed = append(changed, k.Name)
	})
	took := func(want ...string) {
		t.Helper()
		slices.Sort(changed)
		if !slices.Equal(changed, want) {
			t.Errorf("changed %v, want %v", changed, want)
		}
		changed = nil
	}

	a1 := slice("a-1", "a", "10.0.0.1")
	sliceH.OnAdd(a1, false) // before its Service
	took("a")
	svcH.OnAdd(&v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a"}}, false)
	took("a")
	sliceH.OnAdd(slice("a-0", "a", "10.0.0.2"), false)
	took("a")
	if got := names(s, "a"); !slices.Equal(got, []string{"a-0", "a-1"}) || s.Service(Key{"ns", "a"}) == nil {
		t.Fatalf("a holds %v (service %v), want a-0 and a-1 in name order", got, s.Service(Key{"ns", "a"}))
	}

	moved := slice("a-1", "b", "10.0.0.1")
	sliceH.OnUpdate(a1, moved)
	took("a", "b")
	if got, got2 := names(s, "a"), names(s, "b"); !slices.Equal(got, []string{"a-0"}) || !slices.Equal(got2, []string{"a-1"}) {
		t.Fatalf("after the relabel a holds %v and b %v", got, got2)
	}

	unlabelled := slice("a-1", "", "10.0.0.1")
	sliceH.OnUpdate(moved, unlabelled)
	took("b")
	if got := names(s, "b"); len(got) != 0 {
		t.Fatalf("after removing the label b holds %v", got)
	}
	sliceH.OnDelete(unlabelled)
	took()

	sliceH.OnDelete(cache.DeletedFinalStateUnknown{Key: "ns/a-0", Obj: slice("a-0", "a", "10.0.0.2")})
	took("a")
	svcH.OnDelete(cache.DeletedFinalStateUnknown{Key: "ns/a", Obj: &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a"}}})
	took("a")
	if n := len(slices.Collect(s.Keys())); n != 0 {
		t.Errorf("%d keys left after everything was deleted", n)
	}
}

// TestTrimSliceKeepsWhatTheReadersRead checks the slim slice keeps what
// the proxy (conditions, node, hints, trigger time) and DNS (hostname,
// readiness, ports) read, and drops the rest.
func TestTrimSliceKeepsWhatTheReadersRead(t *testing.T) {
	in := slice("a-1", "a", "10.0.0.1")
	in.Labels["other"] = "x"
	in.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: "2026-01-01T00:00:00Z", "other": "x"}
	in.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "m"}}
	in.Ports = []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](80)}}
	in.Endpoints[0].Hostname = ptr.To("web-0")
	in.Endpoints[0].NodeName = ptr.To("node-a")
	in.Endpoints[0].Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}
	in.Endpoints[0].Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "z"}}}
	in.Endpoints[0].TargetRef = &v1.ObjectReference{Kind: "Pod", Name: "web-0"}
	o, err := TrimSlice(in)
	if err != nil {
		t.Fatal(err)
	}
	out := o.(*discoveryv1.EndpointSlice)
	if len(out.Labels) != 1 || len(out.Annotations) != 1 || out.ManagedFields != nil || len(out.Ports) != 1 {
		t.Errorf("meta or ports: labels %v annotations %v managedFields %v ports %v", out.Labels, out.Annotations, out.ManagedFields, out.Ports)
	}
	e := out.Endpoints[0]
	if *e.Hostname != "web-0" || *e.NodeName != "node-a" || !*e.Conditions.Serving || e.Hints == nil || e.TargetRef != nil {
		t.Errorf("endpoint %+v", e)
	}
}
