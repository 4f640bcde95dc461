package endpointslice

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/testutil"
	esmetrics "k8s.io/endpointslice/metrics"

	"github.com/switchboard/switchboard/clustertest"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Main(m)) }

// writeCounter counts mutating requests that pass through a rest.Config,
// and answers the first throttle slice writes itself with 429 Too Many
// Requests, as API priority and fairness does when it sheds load.
type writeCounter struct {
	rt        http.RoundTripper
	writes    atomic.Int64
	slices    atomic.Int64
	throttle  atomic.Int64 // slice writes still to refuse
	throttled atomic.Int64
}

func (w *writeCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method != http.MethodGet {
		if strings.Contains(r.URL.Path, "/endpointslices") {
			if w.throttle.Add(-1) >= 0 {
				w.throttled.Add(1)
				return tooManyRequests(r), nil
			}
			w.slices.Add(1)
		}
		w.writes.Add(1)
	}
	return w.rt.RoundTrip(r)
}

func tooManyRequests(r *http.Request) *http.Response {
	if r.Body != nil {
		_ = r.Body.Close()
	}
	body := `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too many requests","reason":"TooManyRequests","code":429}`
	return &http.Response{StatusCode: http.StatusTooManyRequests, Status: "429 Too Many Requests", Request: r,
		Header: http.Header{"Retry-After": {"1"}, "Content-Type": {"application/json"}},
		Body:   io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body))}
}

// harness runs one controller whose informers see only namespace ns, so
// tests run in parallel without two controllers sharing a slice.
type harness struct {
	t       *testing.T
	client  kubernetes.Interface
	ns      string
	counter *writeCounter
	ctrl    *Controller
	stop    context.CancelFunc
	done    chan struct{}
}

func startController(t *testing.T, restCfg *rest.Config, ns string, max int32) *harness {
	t.Helper()
	return startControllerWith(t, restCfg, ns, Options{MaxEndpointsPerSlice: max}, 0)
}

// startControllerWith starts a controller with opts whose first throttle
// slice writes are answered with 429.
func startControllerWith(t *testing.T, restCfg *rest.Config, ns string, opts Options, throttle int64) *harness {
	t.Helper()
	cfg := rest.CopyConfig(restCfg)
	counter := &writeCounter{}
	counter.throttle.Store(throttle)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { counter.rt = rt; return counter }
	cfg.QPS, cfg.Burst = 500, 1000
	client := kubernetes.NewForConfigOrDie(cfg)
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(ns))
	ctrl, err := NewController(client, factory, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	h := &harness{t: t, client: client, ns: ns, counter: counter, ctrl: ctrl, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		if err := ctrl.Run(ctx, 4); err != nil && ctx.Err() == nil {
			t.Errorf("controller: %v", err)
		}
		factory.Shutdown()
	}()
	t.Cleanup(h.shutdown)
	return h
}

func (h *harness) shutdown() {
	h.stop()
	<-h.done
}

// idle waits until the controller's queue has been empty across the slice
// echo delay, i.e. every sync it will do on its own has happened.
func (h *harness) idle() {
	h.t.Helper()
	quiet := 0
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		if !h.ctrl.Synced() || h.ctrl.queue.Len() > 0 {
			quiet = 0
			return false, nil
		}
		quiet++
		return quiet > int(sliceChangeDelay/(100*time.Millisecond))+5, nil
	})
	if err != nil {
		h.t.Fatalf("controller never went idle: %v", err)
	}
}

type podSpec struct {
	name, ip, ip6    string
	labels           map[string]string
	ready            bool
	phase            v1.PodPhase
	ports            map[string]int32 // container port name -> number
	hostname, subdom string
	node             string
	terminating      bool
}

// defaultNode is the node pods run on unless a case names another: upstream
// leaves out pods whose node does not exist, so every namespace gets one.
func defaultNode(ns string) string { return ns + "-n" }

func createNode(t *testing.T, client kubernetes.Interface, node *v1.Node) {
	t.Helper()
	if _, err := client.CoreV1().Nodes().Create(context.Background(), node, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create node %s: %v", node.Name, err)
	}
	t.Cleanup(func() { _ = client.CoreV1().Nodes().Delete(context.Background(), node.Name, metav1.DeleteOptions{}) })
}

func createPod(t *testing.T, client kubernetes.Interface, ns string, p podSpec) *v1.Pod {
	t.Helper()
	ctx := context.Background()
	if p.node == "" {
		p.node = defaultNode(ns)
		if _, err := client.CoreV1().Nodes().Get(ctx, p.node, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			createNode(t, client, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: p.node}})
		}
	}
	ctr := v1.Container{Name: "app", Image: "registry.invalid/app"}
	names := make([]string, 0, len(p.ports))
	for n := range p.ports {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		ctr.Ports = append(ctr.Ports, v1.ContainerPort{Name: n, ContainerPort: p.ports[n], Protocol: v1.ProtocolTCP})
	}
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.name, Labels: p.labels},
		Spec:       v1.PodSpec{Containers: []v1.Container{ctr}, Hostname: p.hostname, Subdomain: p.subdom, NodeName: p.node},
	}
	if p.terminating {
		pod.Finalizers = []string{"switchboard.dev/test-hold"}
	}
	created, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, p.name, err)
	}
	phase := p.phase
	if phase == "" {
		phase = v1.PodRunning
	}
	created.Status.Phase = phase
	if p.ip != "" {
		created.Status.PodIP = p.ip
		created.Status.PodIPs = []v1.PodIP{{IP: p.ip}}
		if p.ip6 != "" {
			created.Status.PodIPs = append(created.Status.PodIPs, v1.PodIP{IP: p.ip6})
		}
	}
	created.Status.Conditions = []v1.PodCondition{{Type: v1.PodReady, Status: condStatus(p.ready), LastTransitionTime: metav1.Now()}}
	updated, err := client.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("update status of pod %s/%s: %v", ns, p.name, err)
	}
	if p.terminating {
		t.Cleanup(func() {
			patch := []byte(`{"metadata":{"finalizers":null}}`)
			_, _ = client.CoreV1().Pods(ns).Patch(context.Background(), p.name, types.MergePatchType, patch, metav1.PatchOptions{})
		})
		if err := client.CoreV1().Pods(ns).Delete(ctx, p.name, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete pod %s/%s: %v", ns, p.name, err)
		}
	}
	return updated
}

func condStatus(b bool) v1.ConditionStatus {
	if b {
		return v1.ConditionTrue
	}
	return v1.ConditionFalse
}

func setReady(t *testing.T, client kubernetes.Interface, ns, name string, ready bool) {
	t.Helper()
	ctx := context.Background()
	pod, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status.Conditions = []v1.PodCondition{{Type: v1.PodReady, Status: condStatus(ready), LastTransitionTime: metav1.Now()}}
	if _, err := client.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("flip ready of pod %s/%s: %v", ns, name, err)
	}
}

func service(name string, selector map[string]string, targetPort intstr.IntOrString) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"team": "blue"}},
		Spec: v1.ServiceSpec{
			Selector: selector,
			Ports: []v1.ServicePort{{Name: "http", Port: 80, TargetPort: targetPort, Protocol: v1.ProtocolTCP,
				AppProtocol: ptr("http")}},
		},
	}
}

func ptr[T any](v T) *T { return &v }

// summary renders a slice's observable content canonically: address type,
// ports, then one line per endpoint.
func summary(s *discovery.EndpointSlice) string {
	var ports []string
	for _, p := range s.Ports {
		ap := ""
		if p.AppProtocol != nil {
			ap = "(" + *p.AppProtocol + ")"
		}
		ports = append(ports, fmt.Sprintf("%s:%d/%s%s", deref(p.Name), deref(p.Port), deref(p.Protocol), ap))
	}
	var eps []string
	for _, e := range s.Endpoints {
		line := fmt.Sprintf("%s r=%v s=%v t=%v", strings.Join(e.Addresses, ","),
			deref(e.Conditions.Ready), deref(e.Conditions.Serving), deref(e.Conditions.Terminating))
		if e.Hostname != nil {
			line += " host=" + *e.Hostname
		}
		if e.NodeName != nil && !strings.HasSuffix(*e.NodeName, "-n") {
			line += " node=" + *e.NodeName
		}
		if e.Zone != nil {
			line += " zone=" + *e.Zone
		}
		if e.TargetRef != nil {
			line += " ref=" + e.TargetRef.Kind + "/" + e.TargetRef.Name
		}
		eps = append(eps, line)
	}
	sort.Strings(eps)
	return fmt.Sprintf("%s [%s] {%s}", s.AddressType, strings.Join(ports, " "), strings.Join(eps, "; "))
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func ownSlicesOf(t *testing.T, client kubernetes.Interface, ns, svc string) []discovery.EndpointSlice {
	t.Helper()
	list, err := client.DiscoveryV1().EndpointSlices(ns).List(context.Background(), metav1.ListOptions{
		LabelSelector: discovery.LabelServiceName + "=" + svc + "," + discovery.LabelManagedBy + "=" + ManagedBy})
	if err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// waitSummaries waits until the Service's slices render exactly as want
// (order-insensitive) and returns them.
func waitSummaries(t *testing.T, client kubernetes.Interface, ns, svc string, want []string) []discovery.EndpointSlice {
	t.Helper()
	sort.Strings(want)
	var got []string
	var items []discovery.EndpointSlice
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		items = ownSlicesOf(t, client, ns, svc)
		got = got[:0]
		for i := range items {
			got = append(got, summary(&items[i]))
		}
		sort.Strings(got)
		return slices.Equal(got, want), nil
	})
	if err != nil {
		t.Fatalf("slices of service %s/%s:\n got  %q\n want %q", ns, svc, got, want)
	}
	return items
}

func TestSliceContent(t *testing.T) {
	t.Parallel()
	client, restCfg := clustertest.Client(t)
	sel := map[string]string{"app": "web"}
	other := map[string]string{"app": "other"}
	type tcase struct {
		name   string
		svc    func(*v1.Service)
		target intstr.IntOrString
		pods   []podSpec
		node   *v1.Node
		want   []string
	}
	port := "[http:8080/TCP(http)]"
	cases := []tcase{{
		name:   "ready pods with numeric targetPort",
		target: intstr.FromInt32(8080),
		pods: []podSpec{
			{name: "a", ip: "10.1.0.1", labels: sel, ready: true},
			{name: "b", ip: "10.1.0.2", labels: sel, ready: true},
			{name: "c", ip: "10.1.0.3", labels: other, ready: true},
			{name: "noip", labels: sel, ready: true},
		},
		want: []string{"IPv4 " + port + " {10.1.0.1 r=true s=true t=false ref=Pod/a; 10.1.0.2 r=true s=true t=false ref=Pod/b}"},
	}, {
		name:   "named targetPort resolves per pod",
		target: intstr.FromString("web"),
		pods: []podSpec{
			{name: "a", ip: "10.1.1.1", labels: sel, ready: true, ports: map[string]int32{"web": 8080}},
			{name: "b", ip: "10.1.1.2", labels: sel, ready: true, ports: map[string]int32{"web": 9090, "metrics": 9100}},
			{name: "c", ip: "10.1.1.3", labels: sel, ready: true, ports: map[string]int32{"web": 8080}},
			// Upstream keeps a pod lacking the named port, in a slice without ports.
			{name: "d", ip: "10.1.1.4", labels: sel, ready: true, ports: map[string]int32{"other": 7000}},
		},
		want: []string{
			"IPv4 " + port + " {10.1.1.1 r=true s=true t=false ref=Pod/a; 10.1.1.3 r=true s=true t=false ref=Pod/c}",
			"IPv4 [http:9090/TCP(http)] {10.1.1.2 r=true s=true t=false ref=Pod/b}",
			"IPv4 [] {10.1.1.4 r=true s=true t=false ref=Pod/d}",
		},
	}, {
		name:   "not ready, terminating and terminal pods",
		target: intstr.FromInt32(8080),
		pods: []podSpec{
			{name: "ready", ip: "10.1.2.1", labels: sel, ready: true},
			{name: "unready", ip: "10.1.2.2", labels: sel, ready: false},
			{name: "leaving", ip: "10.1.2.3", labels: sel, ready: true, terminating: true},
			{name: "leaving-unready", ip: "10.1.2.4", labels: sel, ready: false, terminating: true},
			{name: "done", ip: "10.1.2.5", labels: sel, ready: false, phase: v1.PodSucceeded},
			{name: "failed", ip: "10.1.2.6", labels: sel, ready: false, phase: v1.PodFailed},
		},
		want: []string{"IPv4 " + port + " {10.1.2.1 r=true s=true t=false ref=Pod/ready; 10.1.2.2 r=false s=false t=false ref=Pod/unready; " +
			"10.1.2.3 r=false s=true t=true ref=Pod/leaving; 10.1.2.4 r=false s=false t=true ref=Pod/leaving-unready}"},
	}, {
		name:   "publishNotReadyAddresses",
		svc:    func(s *v1.Service) { s.Spec.PublishNotReadyAddresses = true },
		target: intstr.FromInt32(8080),
		pods: []podSpec{
			{name: "unready", ip: "10.1.3.1", labels: sel, ready: false},
			{name: "leaving", ip: "10.1.3.2", labels: sel, ready: false, terminating: true},
		},
		want: []string{"IPv4 " + port + " {10.1.3.1 r=true s=false t=false ref=Pod/unready; 10.1.3.2 r=true s=false t=true ref=Pod/leaving}"},
	}, {
		name:   "hostname only with matching subdomain, headless",
		svc:    func(s *v1.Service) { s.Spec.ClusterIP = v1.ClusterIPNone },
		target: intstr.FromInt32(8080),
		pods: []podSpec{
			{name: "web-0", ip: "10.1.4.1", labels: sel, ready: true, hostname: "web-0", subdom: "SVC"},
			{name: "web-1", ip: "10.1.4.2", labels: sel, ready: true, hostname: "web-1", subdom: "elsewhere"},
			{name: "web-2", ip: "10.1.4.3", labels: sel, ready: true, subdom: "SVC"},
		},
		want: []string{"IPv4 " + port + " {10.1.4.1 r=true s=true t=false host=web-0 ref=Pod/web-0; " +
			"10.1.4.2 r=true s=true t=false ref=Pod/web-1; 10.1.4.3 r=true s=true t=false ref=Pod/web-2}"},
	}, {
		name:   "nodeName and zone from the node",
		target: intstr.FromInt32(8080),
		node:   &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "NODE", Labels: map[string]string{v1.LabelTopologyZone: "zone-a"}}},
		pods: []podSpec{
			{name: "a", ip: "10.1.5.1", labels: sel, ready: true, node: "NODE"},
			{name: "b", ip: "10.1.5.2", labels: sel, ready: true, node: "unknown-node"},
		},
		// Like upstream, a pod on a node that does not exist is left out
		// (and the Service retried) unless publishNotReadyAddresses is set.
		want: []string{"IPv4 " + port + " {10.1.5.1 r=true s=true t=false node=NODE zone=zone-a ref=Pod/a}"},
	}, {
		// A Service that asks for no family is single-stack IPv4 (the
		// cluster's primary); a dual-stack pod contributes its IPv4
		// address only.
		name:   "dual-stack pod on an IPv4 Service",
		target: intstr.FromInt32(8080),
		pods: []podSpec{
			{name: "a", ip: "10.1.6.1", ip6: "fd00::6:1", labels: sel, ready: true},
		},
		want: []string{"IPv4 " + port + " {10.1.6.1 r=true s=true t=false ref=Pod/a}"},
	}, {
		name:   "dual-stack Service: one slice per family",
		target: intstr.FromInt32(8080),
		svc: func(s *v1.Service) {
			s.Spec.IPFamilyPolicy = ptr(v1.IPFamilyPolicyRequireDualStack)
			s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol, v1.IPv4Protocol}
		},
		pods: []podSpec{
			{name: "a", ip: "10.1.8.1", ip6: "fd00::8:1", labels: sel, ready: true},
			{name: "b", ip: "10.1.8.2", ip6: "fd00::8:2", labels: sel, ready: false},
			{name: "v4only", ip: "10.1.8.3", labels: sel, ready: true},
		},
		want: []string{
			"IPv4 " + port + " {10.1.8.1 r=true s=true t=false ref=Pod/a; 10.1.8.2 r=false s=false t=false ref=Pod/b; 10.1.8.3 r=true s=true t=false ref=Pod/v4only}",
			"IPv6 " + port + " {fd00::8:1 r=true s=true t=false ref=Pod/a; fd00::8:2 r=false s=false t=false ref=Pod/b}",
		},
	}, {
		name:   "IPv6-only Service",
		target: intstr.FromInt32(8080),
		svc:    func(s *v1.Service) { s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol} },
		pods: []podSpec{
			{name: "a", ip: "10.1.9.1", ip6: "fd00::9:1", labels: sel, ready: true},
			{name: "v4only", ip: "10.1.9.2", labels: sel, ready: true},
		},
		want: []string{"IPv6 " + port + " {fd00::9:1 r=true s=true t=false ref=Pod/a}"},
	}, {
		name:   "selector matching nothing gets one empty slice",
		target: intstr.FromInt32(8080),
		pods:   []podSpec{{name: "a", ip: "10.1.7.1", labels: other, ready: true}},
		want:   []string{"IPv4 [] {}"},
	}}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns := clustertest.Namespace(t, client)
			ctx := context.Background()
			svcName := fmt.Sprintf("svc%d", i)
			fix := func(s string) string {
				return strings.ReplaceAll(strings.ReplaceAll(s, "SVC", svcName), "NODE", ns+"-node")
			}
			if tc.node != nil {
				node := tc.node.DeepCopy()
				node.Name = fix(node.Name)
				createNode(t, client, node)
			}
			for _, p := range tc.pods {
				p.subdom, p.node = fix(p.subdom), fix(p.node)
				createPod(t, client, ns, p)
			}
			h := startController(t, restCfg, ns, 0)
			svc := service(svcName, sel, tc.target)
			if tc.svc != nil {
				tc.svc(svc)
			}
			created, err := client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			want := make([]string, len(tc.want))
			for i, w := range tc.want {
				want[i] = fix(w)
			}
			got := waitSummaries(t, client, ns, svcName, want)
			for _, s := range got {
				checkMeta(t, &s, created)
			}
			_ = h
		})
	}
}

// checkMeta checks the labels, owner reference and annotation every slice
// carries.
func checkMeta(t *testing.T, s *discovery.EndpointSlice, svc *v1.Service) {
	t.Helper()
	wantLabels := map[string]string{
		discovery.LabelServiceName: svc.Name,
		discovery.LabelManagedBy:   ManagedBy,
		"team":                     "blue",
	}
	if svc.Spec.ClusterIP == v1.ClusterIPNone {
		wantLabels[v1.IsHeadlessService] = ""
	}
	for k, v := range wantLabels {
		if got, ok := s.Labels[k]; !ok || got != v {
			t.Errorf("slice %s label %s = %q (present %v), want %q", s.Name, k, got, ok, v)
		}
	}
	if len(s.Labels) != len(wantLabels) {
		t.Errorf("slice %s labels %v, want %v", s.Name, s.Labels, wantLabels)
	}
	if len(s.OwnerReferences) != 1 || s.OwnerReferences[0].UID != svc.UID || s.OwnerReferences[0].Kind != "Service" ||
		!deref(s.OwnerReferences[0].Controller) {
		t.Errorf("slice %s owner references %+v, want the Service %s as controller", s.Name, s.OwnerReferences, svc.UID)
	}
	if !strings.HasPrefix(s.Name, svc.Name+"-") {
		t.Errorf("slice name %s does not start with %s-", s.Name, svc.Name)
	}
	if len(s.Endpoints) > 0 {
		if _, err := time.Parse(time.RFC3339Nano, s.Annotations[v1.EndpointsLastChangeTriggerTime]); err != nil {
			t.Errorf("slice %s annotation %s: %v", s.Name, v1.EndpointsLastChangeTriggerTime, err)
		}
	}
}

// TestScaleAndFlips covers packing past 100 endpoints, one write per Ready
// flip, the max-per-slice option, and a restart that writes nothing.
func TestScaleAndFlips(t *testing.T) {
	t.Parallel()
	client, restCfg := clustertest.Client(t)
	for _, tc := range []struct {
		name    string
		max     int32
		pods    int
		wantMin int // slices needed
	}{
		{"default 100 per slice, 250 pods", 0, 250, 3},
		{"20 per slice, 45 pods", 20, 45, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns := clustertest.Namespace(t, client)
			ctx := context.Background()
			sel := map[string]string{"app": "big"}
			for i := range tc.pods {
				createPod(t, client, ns, podSpec{name: fmt.Sprintf("p%03d", i), ip: fmt.Sprintf("10.2.%d.%d", i/200, i%200+1), labels: sel, ready: true})
			}
			if _, err := client.CoreV1().Services(ns).Create(ctx, service("big", sel, intstr.FromInt32(80)), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			h := startController(t, restCfg, ns, tc.max)
			max := int(tc.max)
			if max == 0 {
				max = 100
			}
			waitFor(t, func() bool {
				items := ownSlicesOf(t, client, ns, "big")
				n := 0
				for _, s := range items {
					if len(s.Endpoints) > max {
						t.Fatalf("slice %s has %d endpoints, max %d", s.Name, len(s.Endpoints), max)
					}
					n += len(s.Endpoints)
				}
				return n == tc.pods && len(items) == tc.wantMin
			})
			h.idle()

			// One flip, one slice write, counted in upstream's metrics.
			before := h.counter.writes.Load()
			updates, syncs := counterValue(t, esmetrics.EndpointSliceChanges.WithLabelValues("update")), counterValue(t, esmetrics.EndpointSliceSyncs.WithLabelValues("success"))
			setReady(t, client, ns, "p007", false)
			waitFor(t, func() bool { return endpointReady(t, client, ns, "big", "p007") == "false" })
			h.idle()
			if got := h.counter.writes.Load() - before; got != 1 {
				t.Errorf("writes for one Ready flip = %d, want 1", got)
			}
			// Other tests' controllers share the process-wide counters, so
			// only a lower bound holds.
			if got := counterValue(t, esmetrics.EndpointSliceChanges.WithLabelValues("update")) - updates; got < 1 {
				t.Errorf("endpoint_slice_controller_changes{operation=update} grew by %v, want >= 1", got)
			}
			if got := counterValue(t, esmetrics.EndpointSliceSyncs.WithLabelValues("success")) - syncs; got < 1 {
				t.Errorf("endpoint_slice_controller_syncs{result=success} grew by %v, want >= 1", got)
			}

			// Restart: a fresh controller converges without writing.
			h.shutdown()
			h2 := startController(t, restCfg, ns, tc.max)
			h2.idle()
			if got := h2.counter.writes.Load(); got != 0 {
				t.Errorf("writes after restart with nothing changed = %d, want 0", got)
			}
			// ...and still reacts.
			setReady(t, client, ns, "p007", true)
			waitFor(t, func() bool { return endpointReady(t, client, ns, "big", "p007") == "true" })
		})
	}
}

func endpointReady(t *testing.T, client kubernetes.Interface, ns, svc, pod string) string {
	for _, s := range ownSlicesOf(t, client, ns, svc) {
		for _, e := range s.Endpoints {
			if e.TargetRef != nil && e.TargetRef.Name == pod {
				return fmt.Sprint(deref(e.Conditions.Ready))
			}
		}
	}
	return "absent"
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		return cond(), nil
	})
	if err != nil {
		t.Fatalf("condition not reached: %v", err)
	}
}

// TestAdoptsUpstreamAndLegacySlices is a live switch-over: slices that
// upstream's controller wrote (the same managed-by value as ours) and slices
// an older switchboard wrote (its own value) are taken over in place, under
// their names, and end with upstream's value; none is duplicated.
func TestAdoptsUpstreamAndLegacySlices(t *testing.T) {
	t.Parallel()
	client, restCfg := clustertest.Client(t)
	ns := clustertest.Namespace(t, client)
	ctx := context.Background()
	owners := map[string]metav1.OwnerReference{}
	for _, app := range []string{"up", "leg"} {
		sel := map[string]string{"app": app}
		createPod(t, client, ns, podSpec{name: app + "-pod", ip: map[string]string{"up": "10.4.0.1", "leg": "10.4.0.2"}[app], labels: sel, ready: true})
		svc, err := client.CoreV1().Services(ns).Create(ctx, service(app, sel, intstr.FromInt32(80)), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		owners[app] = *metav1.NewControllerRef(svc, v1.SchemeGroupVersion.WithKind("Service"))
	}
	// What the previous manager wrote: the Service's endpoint, by address
	// and pod, in a slice the Service owns, as the new manager would write.
	left := func(name, svc, manager, ip string) *discovery.EndpointSlice {
		return &discovery.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: name, OwnerReferences: []metav1.OwnerReference{owners[svc]}, Labels: map[string]string{
				discovery.LabelServiceName: svc, discovery.LabelManagedBy: manager}},
			AddressType: discovery.AddressTypeIPv4,
			Ports:       []discovery.EndpointPort{{Name: ptr("http"), Port: ptr[int32](80), Protocol: ptr(v1.ProtocolTCP), AppProtocol: ptr("http")}},
			Endpoints: []discovery.Endpoint{{Addresses: []string{ip},
				Conditions: discovery.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)},
				TargetRef:  &v1.ObjectReference{Kind: "Pod", Namespace: ns, Name: svc + "-pod"}}},
		}
	}
	for _, s := range []*discovery.EndpointSlice{left("up-kcm", "up", ManagedBy, "10.4.0.1"), left("leg-old", "leg", LegacyManagedBy, "10.4.0.2")} {
		if _, err := client.DiscoveryV1().EndpointSlices(ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	h := startController(t, restCfg, ns, 0)
	waitSummaries(t, client, ns, "up", []string{"IPv4 [http:80/TCP(http)] {10.4.0.1 r=true s=true t=false ref=Pod/up-pod}"})
	waitSummaries(t, client, ns, "leg", []string{"IPv4 [http:80/TCP(http)] {10.4.0.2 r=true s=true t=false ref=Pod/leg-pod}"})
	h.idle()
	for svc, name := range map[string]string{"up": "up-kcm", "leg": "leg-old"} {
		list, err := client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discovery.LabelServiceName + "=" + svc})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != 1 || list.Items[0].Name != name || list.Items[0].Labels[discovery.LabelManagedBy] != ManagedBy {
			var got []string
			for _, s := range list.Items {
				got = append(got, s.Name+" managed-by="+s.Labels[discovery.LabelManagedBy])
			}
			t.Errorf("slices of service %s: %v, want only %s managed-by=%s", svc, got, name, ManagedBy)
		}
	}
}

// TestOwnershipBoundaries covers what the controller must leave alone and
// what it must clean up: foreign slices, selectorless Services, ExternalName
// Services, slices of deleted Services, and slices it owns but a user edited.
func TestOwnershipBoundaries(t *testing.T) {
	t.Parallel()
	client, restCfg := clustertest.Client(t)
	ns := clustertest.Namespace(t, client)
	ctx := context.Background()
	sel := map[string]string{"app": "x"}
	createPod(t, client, ns, podSpec{name: "a", ip: "10.3.0.1", labels: sel, ready: true})

	// A selectorless Service with a hand-made slice, and a foreign-managed
	// slice naming a selector Service.
	if _, err := client.CoreV1().Services(ns).Create(ctx, service("manual", nil, intstr.FromInt32(80)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	foreign := func(name, svc, manager string) *discovery.EndpointSlice {
		return &discovery.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
				discovery.LabelServiceName: svc, discovery.LabelManagedBy: manager}},
			AddressType: discovery.AddressTypeIPv4,
			Endpoints:   []discovery.Endpoint{{Addresses: []string{"192.0.2.1"}}},
		}
	}
	for _, s := range []*discovery.EndpointSlice{foreign("manual-1", "manual", "someone"), foreign("sel-other", "sel", "other-controller.example.com")} {
		if _, err := client.DiscoveryV1().EndpointSlices(ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ext := &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ext"}, Spec: v1.ServiceSpec{Type: v1.ServiceTypeExternalName, ExternalName: "example.com", Selector: sel}}
	if _, err := client.CoreV1().Services(ns).Create(ctx, ext, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A slice of ours whose Service is already gone (e.g. deleted while the
	// controller was down, with no garbage collector running).
	orphan := foreign("gone-abc", "gone", ManagedBy)
	if _, err := client.DiscoveryV1().EndpointSlices(ns).Create(ctx, orphan, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	h := startController(t, restCfg, ns, 0)
	if _, err := client.CoreV1().Services(ns).Create(ctx, service("sel", sel, intstr.FromInt32(80)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitSummaries(t, client, ns, "sel", []string{"IPv4 [http:80/TCP(http)] {10.3.0.1 r=true s=true t=false ref=Pod/a}"})
	waitFor(t, func() bool {
		_, err := client.DiscoveryV1().EndpointSlices(ns).Get(ctx, "gone-abc", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})

	// A user edit to our slice is reverted.
	own := ownSlicesOf(t, client, ns, "sel")[0]
	own.Endpoints[0].Addresses = []string{"10.3.9.9"}
	if _, err := client.DiscoveryV1().EndpointSlices(ns).Update(ctx, &own, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitSummaries(t, client, ns, "sel", []string{"IPv4 [http:80/TCP(http)] {10.3.0.1 r=true s=true t=false ref=Pod/a}"})

	// Deleting the Service deletes its slices (no garbage collector here).
	if err := client.CoreV1().Services(ns).Delete(ctx, "sel", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(ownSlicesOf(t, client, ns, "sel")) == 0 })
	h.idle()

	for _, name := range []string{"manual-1", "sel-other"} {
		s, err := client.DiscoveryV1().EndpointSlices(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("foreign slice %s: %v", name, err)
		}
		if s.Generation != 1 {
			t.Errorf("foreign slice %s was written (generation %d)", name, s.Generation)
		}
	}
	if n := len(ownSlicesOf(t, client, ns, "ext")) + len(ownSlicesOf(t, client, ns, "manual")); n != 0 {
		t.Errorf("%d slices of ours for ExternalName/selectorless Services, want 0", n)
	}
}

func counterValue(t *testing.T, c metrics.CounterMetric) float64 {
	t.Helper()
	v, err := testutil.GetCounterMetricValue(c)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestThrottledWrites covers what the controller does when the API server
// sheds its writes with 429 and Retry-After (API priority and fairness):
// client-go waits and retries the same request, so the Service converges
// with exactly one successful write and no extra syncs; and OnInitialSync
// fires once the first full sync is done.
func TestThrottledWrites(t *testing.T) {
	t.Parallel()
	client, restCfg := clustertest.Client(t)
	ns := clustertest.Namespace(t, client)
	ctx := context.Background()
	sel := map[string]string{"app": "t"}
	createPod(t, client, ns, podSpec{name: "a", ip: "10.4.0.1", labels: sel, ready: true})
	if _, err := client.CoreV1().Services(ns).Create(ctx, service("thr", sel, intstr.FromInt32(80)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	synced := make(chan struct{})
	var calls atomic.Int32
	h := startControllerWith(t, restCfg, ns, Options{OnInitialSync: func() {
		if calls.Add(1) == 1 {
			close(synced)
		}
	}}, 2)
	start := time.Now()
	waitSummaries(t, client, ns, "thr", []string{"IPv4 [http:80/TCP(http)] {10.4.0.1 r=true s=true t=false ref=Pod/a}"})
	select {
	case <-synced:
	case <-time.After(30 * time.Second):
		t.Fatal("OnInitialSync not called")
	}
	h.idle()
	if got := h.counter.throttled.Load(); got != 2 {
		t.Errorf("throttled slice writes = %d, want 2", got)
	}
	if got := h.counter.slices.Load(); got != 1 {
		t.Errorf("slice writes that reached the API server = %d, want 1", got)
	}
	if took := time.Since(start); took < 2*time.Second {
		t.Errorf("converged in %v: Retry-After (1 s, twice) was not honoured", took)
	}
	if got := calls.Load(); got != 1 {
		t.Errorf("OnInitialSync called %d times, want 1", got)
	}
}
