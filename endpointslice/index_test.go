package endpointslice

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	esutil "k8s.io/endpointslice/util"

	"github.com/switchboard/switchboard/clustertest"
)

// TestIndexesMatchUpstreamScans checks that the indexed lookups return
// exactly what upstream's full scans return, on random pods and Services
// over a few namespaces, label keys and values, including nil and empty
// selectors and label changes with and without an endpoint change.
func TestIndexesMatchUpstreamScans(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	randLabels := func() map[string]string {
		if rng.IntN(8) == 0 {
			return nil
		}
		m := map[string]string{}
		for range rng.IntN(4) {
			m[fmt.Sprintf("k%d", rng.IntN(3))] = fmt.Sprintf("v%d", rng.IntN(3))
		}
		return m
	}
	nss := []string{"a", "b"}
	pods := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc, podLabelIndex: podLabelIndexFunc})
	fullPods := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	services := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc, serviceSelectorIdx: serviceSelectorIndexFunc})
	for i := range 300 {
		p := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: nss[i%2], Name: fmt.Sprintf("p%d", i), Labels: randLabels()}}
		if err := fullPods.Add(p); err != nil {
			t.Fatal(err)
		}
		cached, _ := trimPod(p.DeepCopy())
		if err := pods.Add(cached); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 60 {
		s := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: nss[i%2], Name: fmt.Sprintf("s%d", i)}}
		switch i % 10 {
		case 0: // nil: selects nothing
		case 1:
			s.Spec.Selector = map[string]string{} // selects everything
		default:
			s.Spec.Selector = randLabels()
			if s.Spec.Selector == nil {
				s.Spec.Selector = map[string]string{"k0": "v0"}
			}
		}
		if err := services.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	podLister := corelisters.NewPodLister(fullPods)
	svcLister := corelisters.NewServiceLister(services)

	for _, obj := range services.List() {
		s := obj.(*v1.Service)
		if s.Spec.Selector == nil {
			continue
		}
		want, err := podLister.Pods(s.Namespace).List(labels.Set(s.Spec.Selector).AsSelectorPreValidated())
		if err != nil {
			t.Fatal(err)
		}
		got, err := podsSelectedBy(pods, s.Namespace, s.Spec.Selector)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(podNames(got), podNames(want)) {
			t.Errorf("pods of %s/%s selector %v:\n got  %v\n want %v", s.Namespace, s.Name, s.Spec.Selector, podNames(got), podNames(want))
		}
	}

	for i := range 2000 {
		old := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: nss[i%2], Name: "x", ResourceVersion: "1", Labels: randLabels()},
			Status: v1.PodStatus{PodIP: "10.0.0.1"}}
		cur := old.DeepCopy()
		cur.ResourceVersion = "2"
		if rng.IntN(2) == 0 {
			cur.Labels = randLabels()
		}
		if rng.IntN(2) == 0 {
			cur.Status.PodIP = "10.0.0.2"
			cur.Status.PodIPs = []v1.PodIP{{IP: "10.0.0.2"}}
		}
		for _, ev := range [][2]any{{nil, cur}, {old, nil}, {old, cur}} {
			key := esutil.GetPodUpdateProjectionKey(ev[0], ev[1])
			if key == nil {
				continue
			}
			want, err := esutil.GetServicesToUpdate(svcLister, key)
			if err != nil {
				t.Fatal(err)
			}
			got, err := servicesToUpdate(services, key)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Equal(want) {
				t.Fatalf("services for %v -> %v: got %v, want %v", old.Labels, cur.Labels, got.List(), want.List())
			}
		}
	}
}

func podNames(pods []*v1.Pod) []string {
	out := make([]string, len(pods))
	for i, p := range pods {
		out[i] = p.Namespace + "/" + p.Name
	}
	slices.Sort(out)
	return out
}

// TestCachedPodRoundTrip checks that a pod rebuilt from the cache carries
// every field the reconciler reads, as the API server sent it.
func TestCachedPodRoundTrip(t *testing.T) {
	always := v1.ContainerRestartPolicyAlways
	now := metav1.Now()
	full := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: "u1", ResourceVersion: "7", Labels: map[string]string{"app": "x"},
			DeletionTimestamp: &now, Annotations: map[string]string{"big": "drop me"}, GenerateName: "p-"},
		Spec: v1.PodSpec{NodeName: "n1", Hostname: "h", Subdomain: "sub",
			Containers: []v1.Container{{Name: "app", Image: "img", Ports: []v1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: v1.ProtocolTCP}}},
				{Name: "noports", Image: "img"}},
			InitContainers: []v1.Container{{Name: "sidecar", RestartPolicy: &always, Ports: []v1.ContainerPort{{Name: "m", ContainerPort: 9000}}},
				{Name: "plain-init", Ports: []v1.ContainerPort{{Name: "x", ContainerPort: 1}}}}},
		Status: v1.PodStatus{Phase: v1.PodRunning, PodIP: "10.0.0.1", PodIPs: []v1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::1"}},
			Conditions: []v1.PodCondition{{Type: v1.PodScheduled, Status: v1.ConditionTrue},
				{Type: v1.PodReady, Status: v1.ConditionFalse, LastTransitionTime: now, Reason: "r", Message: "m"}}},
	}
	cached, err := trimPod(full.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	again, _ := trimPod(cached)
	if again != cached {
		t.Error("trimPod is not idempotent on a cached pod")
	}
	got := cached.(*cachedPod).toPod()
	want := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: "u1", ResourceVersion: "7", Labels: map[string]string{"app": "x"}, DeletionTimestamp: &now},
		Spec: v1.PodSpec{NodeName: "n1", Hostname: "h", Subdomain: "sub",
			Containers:     []v1.Container{{Name: "app", Ports: []v1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: v1.ProtocolTCP}}}},
			InitContainers: []v1.Container{{Name: "sidecar", RestartPolicy: &always, Ports: []v1.ContainerPort{{Name: "m", ContainerPort: 9000}}}}},
		Status: v1.PodStatus{Phase: v1.PodRunning, PodIP: "10.0.0.1", PodIPs: []v1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::1"}},
			Conditions: []v1.PodCondition{{Type: v1.PodReady, Status: v1.ConditionFalse, LastTransitionTime: now}}},
	}
	if !equality.Semantic.DeepEqual(got, want) {
		t.Errorf("rebuilt pod:\n got  %+v\n want %+v", got, want)
	}
	if cp := cached.(*cachedPod).DeepCopyObject().(*cachedPod); !equality.Semantic.DeepEqual(cp.toPod(), want) {
		t.Errorf("deep copy differs: %+v", cp.toPod())
	}
	if key := esutil.GetPodUpdateProjectionKey(asPod(cache.DeletedFinalStateUnknown{Key: "ns/p", Obj: cached}), nil); key == nil || key.Labels["app"] != "x" {
		t.Errorf("tombstone of a cached pod: projection key %+v", key)
	}
}

// TestInternedPodPartsAreSharedAndReleased checks that pods with equal
// labels and container ports share one copy of each, that different ones
// do not, and that a shared value's entry goes once no cached pod holds it.
func TestInternedPodPartsAreSharedAndReleased(t *testing.T) {
	pod := func(name, app string, port int32) *v1.Pod {
		return &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "intern-ns", Name: name, Labels: map[string]string{"app": app, "tier": "web"}},
			Spec: v1.PodSpec{Containers: []v1.Container{{Name: "app", Ports: []v1.ContainerPort{{Name: "http", ContainerPort: port, Protocol: v1.ProtocolTCP}}}}}}
	}
	trim := func(p *v1.Pod) *cachedPod {
		c, err := trimPod(p)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*cachedPod)
	}
	labelsBefore, ctrsBefore := podLabels.len(), podContainers.len()
	a, b, c := trim(pod("a", "intern-x", 8080)), trim(pod("b", "intern-x", 8080)), trim(pod("c", "intern-y", 9090))
	if a.labels != b.labels || a.containers != b.containers {
		t.Error("pods with equal labels and ports do not share them")
	}
	if a.labels == c.labels || a.containers == c.containers {
		t.Error("pods with different labels or ports share them")
	}
	if got := c.toPod().Spec.Containers[0].Ports[0].ContainerPort; got != 9090 {
		t.Errorf("pod c resolves port %d, want 9090", got)
	}
	if podLabels.len() != labelsBefore+2 || podContainers.len() != ctrsBefore+2 {
		t.Errorf("intern tables grew by %d labels and %d containers, want 2 and 2", podLabels.len()-labelsBefore, podContainers.len()-ctrsBefore)
	}
	runtime.KeepAlive(a)
	runtime.KeepAlive(b)
	runtime.KeepAlive(c)
	a, b, c = nil, nil, nil
	clustertest.Eventually(t, "interned pod parts released", 5*time.Second, func() error {
		runtime.GC()
		if podLabels.len() > labelsBefore || podContainers.len() > ctrsBefore {
			return fmt.Errorf("intern tables hold %d labels and %d containers after the pods went, want %d and %d",
				podLabels.len(), podContainers.len(), labelsBefore, ctrsBefore)
		}
		return nil
	})
}

// len reports how many keys have an entry (live or awaiting cleanup).
func (t *internTable[T]) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}
