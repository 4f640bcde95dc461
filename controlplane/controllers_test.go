package controlplane_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/switchboard/switchboard/clustertest"
	"github.com/switchboard/switchboard/controlplane"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Main(m)) }

// TestControllerManager runs upstream's controllers as `switchboard up` runs
// them, and checks one behaviour of each kind a cluster user or the
// conformance suite relies on.
func TestControllerManager(t *testing.T) {
	cp := clustertest.APIServer(t)
	client, _ := clustertest.Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := controlplane.StartControllerManager(ctx, cp, controlplane.KubeControllers); err != nil {
		t.Fatal(err)
	}
	t.Run("Deployment", func(t *testing.T) { testDeployment(t, client) })
	t.Run("NotReadyTaint", func(t *testing.T) { testNotReadyTaint(t, client) })
	t.Run("RootCAPublished", func(t *testing.T) { testRootCA(t, client, cp) })
	t.Run("Endpoints", func(t *testing.T) { testEndpoints(t, client) })
	t.Run("EndpointSliceMirroring", func(t *testing.T) { testMirroring(t, client) })
}

// testDeployment: a Deployment becomes pods, and deleting it cascades to
// its ReplicaSet and pods through the garbage collector.
func testDeployment(t *testing.T, client kubernetes.Interface) {
	ctx := context.Background()
	ns := clustertest.Namespace(t, client)
	labels := map[string]string{"app": "web"}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](3),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "nginx"}}},
			},
		},
	}
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := func(want int) func() error {
		return func() error {
			l, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			if len(l.Items) != want {
				return fmt.Errorf("%d pods, want %d", len(l.Items), want)
			}
			return nil
		}
	}
	clustertest.Eventually(t, "deployment web has 3 pods", time.Minute, pods(3))
	fg := metav1.DeletePropagationForeground
	if err := client.AppsV1().Deployments(ns).Delete(ctx, "web", metav1.DeleteOptions{PropagationPolicy: &fg}); err != nil {
		t.Fatal(err)
	}
	clustertest.Eventually(t, "pods of deleted deployment web are collected", time.Minute, pods(0))
}

// testNotReadyTaint: the API server taints a new Node not-ready; once the
// Node reports Ready, the node lifecycle controller lifts the taint, which
// is what lets the conformance suite (and any pod without a toleration)
// schedule there.
func testNotReadyTaint(t *testing.T, client kubernetes.Interface) {
	ctx := context.Background()
	name := readyNode(t, client, "taint-"+clustertest.Namespace(t, client))
	clustertest.Eventually(t, "ready node loses the not-ready taint", time.Minute, func() error {
		n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if hasNotReadyTaint(n) {
			return fmt.Errorf("taints %v", n.Spec.Taints)
		}
		return nil
	})
}

// readyNode creates a Node, checks the API server tainted it not-ready,
// reports it Ready and returns its name.
func readyNode(t *testing.T, client kubernetes.Interface, name string) string {
	t.Helper()
	ctx := context.Background()
	node, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	if !hasNotReadyTaint(node) {
		t.Fatalf("new node %s has taints %v, want the API server's %s", name, node.Spec.Taints, corev1.TaintNodeNotReady)
	}
	// The controllers write the new Node too (the TTL annotation), so the
	// status update retries on a conflict as a kubelet's does.
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
			Reason: "Test", LastHeartbeatTime: now, LastTransitionTime: now}}
		_, err = client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return name
}

func hasNotReadyTaint(n *corev1.Node) bool {
	return slices.ContainsFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == corev1.TaintNodeNotReady })
}

// testRootCA: every namespace gets kube-root-ca.crt holding the cluster CA,
// which in-cluster clients (and projected service-account volumes) read.
func testRootCA(t *testing.T, client kubernetes.Interface, cp *controlplane.ControlPlane) {
	ctx := context.Background()
	ns := clustertest.Namespace(t, client)
	want, err := os.ReadFile(cp.PKI.CACert())
	if err != nil {
		t.Fatal(err)
	}
	clustertest.Eventually(t, "kube-root-ca.crt published in "+ns, time.Minute, func() error {
		cm, err := client.CoreV1().ConfigMaps(ns).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cm.Data["ca.crt"] != string(want) {
			return fmt.Errorf("ca.crt is %q, want the cluster CA", cm.Data["ca.crt"])
		}
		return nil
	})
}

// testEndpoints: the Endpoints controller lists a Service's ready pods (the
// EndpointSlice controller is switchboard's and is not run here).
func testEndpoints(t *testing.T, client kubernetes.Interface) {
	ctx := context.Background()
	ns := clustertest.Namespace(t, client)
	sel := map[string]string{"app": "ep"}
	// The pod's node exists (the pod garbage collector deletes pods bound
	// to missing nodes) and is Ready.
	node := readyNode(t, client, "ep-"+ns)
	want := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "ep", Labels: sel},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "nginx"}}}}
	var pod *corev1.Pod
	clustertest.Eventually(t, "pod created", time.Minute, func() error { // the namespace's service account may lag
		var err error
		pod, err = client.CoreV1().Pods(ns).Create(ctx, want, metav1.CreateOptions{})
		return err
	})
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.5.0.7", PodIPs: []corev1.PodIP{{IP: "10.5.0.7"}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if _, err := client.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ep"},
		Spec: corev1.ServiceSpec{Selector: sel, Ports: []corev1.ServicePort{{Port: 80}}}}
	if _, err := client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	clustertest.Eventually(t, "Endpoints ep lists the ready pod", time.Minute, func() error {
		ep, err := client.CoreV1().Endpoints(ns).Get(ctx, "ep", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(ep.Subsets) != 1 || len(ep.Subsets[0].Addresses) != 1 || ep.Subsets[0].Addresses[0].IP != "10.5.0.7" {
			return fmt.Errorf("subsets %+v", ep.Subsets)
		}
		return nil
	})
}

// testMirroring: a selectorless Service's hand-made Endpoints are mirrored
// into an EndpointSlice by the mirroring controller.
func testMirroring(t *testing.T, client kubernetes.Interface) {
	ctx := context.Background()
	ns := clustertest.Namespace(t, client)
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ext"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}
	if _, err := client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ep := &corev1.Endpoints{ObjectMeta: metav1.ObjectMeta{Name: "ext"}, Subsets: []corev1.EndpointSubset{{
		Addresses: []corev1.EndpointAddress{{IP: "192.0.2.9"}}, Ports: []corev1.EndpointPort{{Port: 80}}}}}
	if _, err := client.CoreV1().Endpoints(ns).Create(ctx, ep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	clustertest.Eventually(t, "Endpoints ext mirrored into an EndpointSlice", time.Minute, func() error {
		l, err := client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=ext"})
		if err != nil {
			return err
		}
		for _, s := range l.Items {
			if s.Labels[discoveryv1.LabelManagedBy] == "endpointslicemirroring-controller.k8s.io" &&
				len(s.Endpoints) == 1 && s.Endpoints[0].Addresses[0] == "192.0.2.9" {
				return nil
			}
		}
		return fmt.Errorf("slices %+v", l.Items)
	})
}
