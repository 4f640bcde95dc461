package doctor

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/switchboard/switchboard/clustertest"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Main(m)) }

// podState is how a scenario's pod should look once created.
type podState struct {
	name        string
	labels      map[string]string
	ports       []corev1.ContainerPort
	ip          string
	ready       bool
	waiting     string // container waiting reason, e.g. CrashLoopBackOff
	probe       bool   // has a readiness probe
	terminating bool
}

// scenario builds a Service and pods on the real API server, optionally the
// EndpointSlice an (absent or present) controller would have written.
type scenario struct {
	name      string
	svc       corev1.ServiceSpec
	pods      []podState
	sliceIPs  []string // ready endpoints in a hand-made slice; nil: no slice
	healthy   bool
	wantCodes []string // in order, as a prefix of the findings
	wantText  []string // substrings of the human output
}

func TestDoctorScenarios(t *testing.T) {
	client, _ := clustertest.Client(t)
	port80 := []corev1.ContainerPort{{ContainerPort: 80, Protocol: corev1.ProtocolTCP}}
	nginx := map[string]string{"app": "nginx"}
	svc80 := corev1.ServiceSpec{Selector: nginx, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(80)}}}

	for _, sc := range []scenario{{
		name: "label typo ngnix",
		svc:  svc80,
		pods: []podState{
			{name: "web-1", labels: map[string]string{"app": "ngnix"}, ports: port80, ip: "10.244.0.11", ready: true},
			{name: "db-1", labels: map[string]string{"app": "postgres"}, ports: port80, ip: "10.244.0.12", ready: true},
		},
		wantCodes: []string{CodeSelectorMatchesNone, CodeNearMissLabels},
		wantText:  []string{"selector app=nginx", "matches no pods", "pod web-1: label app=ngnix is a typo away from selector app=nginx"},
	}, {
		name:      "no pods at all",
		svc:       svc80,
		wantCodes: []string{CodeSelectorMatchesNone},
		wantText:  []string{"the namespace has no pods at all"},
	}, {
		name: "pods not ready: probe failing, crash looping, terminating",
		svc:  svc80,
		pods: []podState{
			{name: "probe", labels: nginx, ports: port80, ip: "10.244.0.21", probe: true},
			{name: "crash", labels: nginx, ports: port80, ip: "10.244.0.22", waiting: "CrashLoopBackOff"},
			{name: "going", labels: nginx, ports: port80, ip: "10.244.0.23", ready: true, terminating: true},
		},
		sliceIPs:  []string{},
		wantCodes: []string{CodePodsNotReady},
		wantText: []string{"all 3 pod(s) matching the selector are not ready",
			"pod probe: container c is running but its readiness probe is failing",
			"pod crash: container c is waiting: CrashLoopBackOff",
			"pod going: terminating"},
	}, {
		name: "numeric targetPort not declared",
		svc:  corev1.ServiceSpec{Selector: nginx, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
		pods: []podState{
			{name: "web-1", labels: nginx, ports: port80, ip: "10.244.0.31", ready: true},
		},
		sliceIPs:  []string{"10.244.0.31"},
		healthy:   true,
		wantCodes: []string{CodeTargetPortNotDeclared, CodeReady},
		wantText:  []string{"targetPort 8080/TCP", "pod web-1 declares 80/TCP"},
	}, {
		name: "named targetPort missing in some pods",
		svc:  corev1.ServiceSpec{Selector: nginx, Ports: []corev1.ServicePort{{Name: "web", Port: 80, TargetPort: intstr.FromString("http")}}},
		pods: []podState{
			{name: "named", labels: nginx, ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}, ip: "10.244.0.41", ready: true},
			{name: "plain", labels: nginx, ports: port80, ip: "10.244.0.42", ready: true},
		},
		sliceIPs:  []string{"10.244.0.41"},
		healthy:   true,
		wantCodes: []string{CodeNamedPortMissing, CodeReady},
		wantText:  []string{`named port "http"`, "1 of 2 matching pod(s)", "pod plain declares 80/TCP"},
	}, {
		name: "no endpointslices: controller not running",
		svc:  svc80,
		pods: []podState{
			{name: "web-1", labels: nginx, ports: port80, ip: "10.244.0.51", ready: true},
		},
		wantCodes: []string{CodeNoEndpointSlices},
		wantText:  []string{"has 1 ready pod(s) but no EndpointSlices", "controller is not running"},
	}, {
		name: "slices disagree with pods",
		svc:  svc80,
		pods: []podState{
			{name: "web-1", labels: nginx, ports: port80, ip: "10.244.0.61", ready: true},
			{name: "web-2", labels: nginx, ports: port80, ip: "10.244.0.62", ready: true},
		},
		sliceIPs:  []string{"10.244.0.61", "10.244.0.99"},
		healthy:   true,
		wantCodes: []string{CodeSlicesDisagree, CodeReady},
		wantText:  []string{"pod web-2 (10.244.0.62) is ready but not a ready endpoint", "endpoint 10.244.0.99 is ready but no ready matching pod"},
	}, {
		name: "healthy",
		svc:  svc80,
		pods: []podState{
			{name: "web-1", labels: nginx, ports: port80, ip: "10.244.0.71", ready: true},
		},
		sliceIPs:  []string{"10.244.0.71"},
		healthy:   true,
		wantCodes: []string{CodeReady},
		wantText:  []string{"has 1 ready endpoint(s)"},
	}} {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			ns := clustertest.Namespace(t, client)
			build(t, client, ns, sc)
			r, err := Diagnose(context.Background(), client, ns, "svc", Options{})
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			WriteText(&out, []Report{r})
			t.Log("\n" + out.String())
			if r.Healthy != sc.healthy {
				t.Errorf("healthy = %v, want %v", r.Healthy, sc.healthy)
			}
			var codes []string
			for _, f := range r.Findings {
				codes = append(codes, f.Code)
			}
			if len(codes) < len(sc.wantCodes) || strings.Join(codes[:len(sc.wantCodes)], ",") != strings.Join(sc.wantCodes, ",") {
				t.Errorf("findings %v, want them to start with %v", codes, sc.wantCodes)
			}
			for _, s := range sc.wantText {
				if !strings.Contains(out.String(), s) {
					t.Errorf("output lacks %q", s)
				}
			}
		})
	}
}

func build(t *testing.T, c kubernetes.Interface, ns string, sc scenario) {
	t.Helper()
	ctx := context.Background()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "svc"}, Spec: sc.svc}
	if _, err := c.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service: %v", err)
	}
	for _, ps := range sc.pods {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: ps.name, Labels: ps.labels},
			Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{
				Name: "c", Image: "nginx", Ports: ps.ports,
			}}},
		}
		if ps.probe {
			pod.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(80)}}}
		}
		if ps.terminating {
			pod.Finalizers = []string{"switchboard.dev/test-hold"}
		}
		var created *corev1.Pod
		// The namespace's default service account appears moments after
		// the namespace; pod admission waits for it.
		err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			var err error
			created, err = c.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
			return err == nil, nil
		})
		if err != nil {
			t.Fatalf("create pod %s: %v", ps.name, err)
		}
		readyStatus := corev1.ConditionFalse
		if ps.ready {
			readyStatus = corev1.ConditionTrue
		}
		cs := corev1.ContainerStatus{Name: "c", Ready: ps.ready, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}
		if ps.waiting != "" {
			cs.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: ps.waiting, Message: "back-off restarting failed container"}}
		}
		created.Status = corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: ps.ip, PodIPs: []corev1.PodIP{{IP: ps.ip}},
			Conditions:        []corev1.PodCondition{{Type: corev1.PodReady, Status: readyStatus}},
			ContainerStatuses: []corev1.ContainerStatus{cs},
		}
		if _, err := c.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("pod %s status: %v", ps.name, err)
		}
		if ps.terminating {
			if err := c.CoreV1().Pods(ns).Delete(ctx, ps.name, metav1.DeleteOptions{}); err != nil {
				t.Fatalf("delete pod %s: %v", ps.name, err)
			}
			t.Cleanup(func() {
				c.CoreV1().Pods(ns).Patch(context.Background(), ps.name, "application/merge-patch+json",
					[]byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
			})
		}
	}
	if sc.sliceIPs == nil {
		return
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "svc-manual", Labels: map[string]string{
			discoveryv1.LabelServiceName: "svc", discoveryv1.LabelManagedBy: "doctor-test"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Port: ptr.To[int32](80)}},
	}
	for _, ip := range sc.sliceIPs {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	if _, err := c.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create slice: %v", err)
	}
}
