package clustertest

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// TestAPIServerDefaults checks what a fresh cluster must have: the kubernetes
// Service in the default service CIDR, the system namespaces, and a default
// service account in a new namespace so pods can be created.
func TestAPIServerDefaults(t *testing.T) {
	client, _ := Client(t)
	ctx := context.Background()
	svc, err := client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("kubernetes service: %v", err)
	}
	if svc.Spec.ClusterIP != "10.96.0.1" {
		t.Errorf("kubernetes service ClusterIP = %s, want 10.96.0.1", svc.Spec.ClusterIP)
	}
	for _, ns := range []string{"default", "kube-system", "kube-public", "kube-node-lease"} {
		if _, err := client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
			t.Errorf("namespace %s: %v", ns, err)
		}
	}
	ns := Namespace(t, client)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "nginx"}}},
	}
	// The ServiceAccount admission plugin refuses pods until the namespace's
	// default service account exists; the housekeeping controller makes it.
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("create pod in %s: never admitted: %v", ns, err)
	}
}

// TestNodePortRange checks the default NodePort range is enforced by the API.
func TestNodePortRange(t *testing.T) {
	client, _ := Client(t)
	ns := Namespace(t, client)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "np"},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Ports: []corev1.ServicePort{{Port: 80, NodePort: 29999}}},
	}
	_, err := client.CoreV1().Services(ns).Create(context.Background(), svc, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "30000-32767") {
		t.Fatalf("nodePort 29999: got %v, want an error naming the range 30000-32767", err)
	}
}

// TestKubectl checks the system's kubectl works against the admin kubeconfig.
func TestKubectl(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		Skip(t, "kubectl not installed")
	}
	cp := APIServer(t)
	out, err := exec.Command(kubectl, "--kubeconfig", cp.KubeconfigPath, "get", "svc", "kubernetes", "-o", "jsonpath={.spec.clusterIP}").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl get svc: %v\n%s", err, out)
	}
	if string(out) != "10.96.0.1" {
		t.Errorf("kubectl printed %q, want 10.96.0.1", out)
	}
}
