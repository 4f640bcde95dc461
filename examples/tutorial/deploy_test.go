package tutorial

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/switchboard/switchboard/clustertest"
)

// TestTutorialThroughDeploy is the proof that deploy/ works on a cluster:
// `switchboard up --disable controller,proxy,dns` runs nodes and pods but
// none of switchboard's own Service networking; `kubectl apply -k deploy/`
// (the API server's address set in an overlay, as an operator sets it)
// starts the proxy DaemonSet and the dns and controller Deployments as pods
// running the image's binary, as their ServiceAccounts, through in-cluster
// config, with the manifests' securityContexts (the proxy as root with
// CAP_NET_ADMIN alone, the others as uid 65532 with none); then the README tutorial is replayed through them. Last, the
// controller's leader pod is deleted while a pod joins a Service: another
// replica (the standby, or the Deployment's replacement if it asks first)
// takes the Lease before the deleted one's would have expired, and the new
// pod is in the Service's EndpointSlice and answers through its ClusterIP.
func TestTutorialThroughDeploy(t *testing.T) {
	ws, cmds := workspace(t)
	startUp(t, ws, "--disable", "controller,proxy,dns")

	if !t.Run("DryRunServer", func(t *testing.T) { dryRunServer(t, ws) }) ||
		!t.Run("Apply", func(t *testing.T) { applyDeploy(t, ws) }) ||
		!t.Run("Tutorial", func(t *testing.T) { replay(t, ws, cmds) }) {
		t.FailNow()
	}
	t.Run("ControllerFailover", func(t *testing.T) { controllerFailover(t, ws, adminClient(t, ws)) })
}

// dryRunServer is CI's check that deploy/, as shipped, is valid for a
// cluster: kubectl apply --dry-run=server -k deploy/.
func dryRunServer(t *testing.T, ws string) {
	out := kubectl(t, ws, "apply", "--dry-run=server", "-k", "deploy/")
	for _, want := range []string{"daemonset.apps/switchboard-proxy created (server dry run)",
		"deployment.apps/switchboard-dns created (server dry run)", "deployment.apps/switchboard-controller created (server dry run)",
		"service/kube-dns created (server dry run)", "clusterrole.rbac.authorization.k8s.io/switchboard-proxy created (server dry run)"} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl apply --dry-run=server -k deploy/: no %q in:\n%s", want, out)
		}
	}
}

// applyDeploy applies deploy/ through an overlay, as an operator does, and
// waits for the DaemonSet and the Deployments to be rolled out.
func applyDeploy(t *testing.T, ws string) {
	// The proxy reaches the API server at its own address (kubeadm: the
	// control plane endpoint), which is the kubernetes Service's endpoint.
	hostPort := kubectl(t, ws, "get", "endpointslices", "-l", discoveryv1.LabelServiceName+"=kubernetes",
		"-o", "jsonpath={.items[0].endpoints[0].addresses[0]} {.items[0].ports[0].port}")
	host, port, ok := strings.Cut(hostPort, " ")
	if !ok {
		t.Fatalf("kubernetes Service's endpoint: %q", hostPort)
	}
	overlay := filepath.Join(ws, "overlay")
	if err := os.MkdirAll(overlay, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: kube-system
resources:
  - ../deploy
configMapGenerator:
  - name: switchboard-apiserver
    behavior: replace
    literals:
      - host=`+host+`
      - port=`+port+`
`), 0o644); err != nil {
		t.Fatal(err)
	}
	kubectl(t, ws, "apply", "-k", "overlay")
	for _, w := range []string{"daemonset/switchboard-proxy", "deployment/switchboard-dns", "deployment/switchboard-controller"} {
		if out, err := kubectlErr(ws, "-n", "kube-system", "rollout", "status", w, "--timeout=3m"); err != nil {
			pods, _ := kubectlErr(ws, "-n", "kube-system", "get", "pods", "-o", "wide")
			logs, _ := kubectlErr(ws, "-n", "kube-system", "logs", "-l", "app.kubernetes.io/name=switchboard", "--prefix", "--tail=20")
			t.Fatalf("rollout status %s: %v\n%s\n%s\n%s", w, err, out, pods, logs)
		}
	}
	// Each pod runs the image's binary as its component, not a stand-in
	// (the echo server would answer the probes too): its log says so.
	client := adminClient(t, ws)
	ctx := context.Background()
	pods, err := client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=switchboard"})
	if err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != 6 {
		t.Fatalf("%d switchboard pods, want 2 proxies, 2 dns, 2 controllers", len(pods.Items))
	}
	started := map[string]string{"proxy": "proxy started", "dns": "serving cluster DNS", "controller": "leader election: waiting for the lease"}
	for _, p := range pods.Items {
		want := started[p.Labels["app.kubernetes.io/component"]]
		clustertest.Eventually(t, "pod "+p.Name+" logs "+want, time.Minute, func() error {
			b, err := client.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
			if err != nil {
				return err
			}
			if want == "" || !strings.Contains(string(b), want) {
				return fmt.Errorf("no %q in:\n%s", want, b)
			}
			return nil
		})
	}
}

// controllerFailover deletes the controller's leader pod and, at once,
// adds a pod to my-awesome-service.
func controllerFailover(t *testing.T, ws string, client kubernetes.Interface) {
	ctx := context.Background()
	leases := client.CoordinationV1().Leases("kube-system")
	before, err := leases.Get(ctx, "switchboard-controller", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	holder := ptr.Deref(before.Spec.HolderIdentity, "")
	// client-go's identity as the controller makes it: HOSTNAME_UUID, the
	// hostname being the pod's name.
	leader, _, _ := strings.Cut(holder, "_")
	if _, err := client.CoreV1().Pods("kube-system").Get(ctx, leader, metav1.GetOptions{}); err != nil {
		t.Fatalf("lease holder %q is no pod: %v", holder, err)
	}
	expiry := before.Spec.RenewTime.Add(time.Duration(ptr.Deref(before.Spec.LeaseDurationSeconds, 0)) * time.Second)
	replicas, err := client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=controller"})
	if err != nil {
		t.Fatal(err)
	}
	var standby string
	for _, p := range replicas.Items {
		if p.Name != leader {
			standby = p.Name
		}
	}
	if len(replicas.Items) != 2 || standby == "" {
		t.Fatalf("controller pods %v: want the leader %s and a standby", replicas.Items, leader)
	}

	if err := client.CoreV1().Pods("kube-system").Delete(ctx, leader, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	nginx1, err := client.CoreV1().Pods("default").Get(ctx, "nginx-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c := nginx1.Spec.Containers[0]
	joiner, err := client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "nginx-4", Labels: nginx1.Labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: c.Name, Image: c.Image, Ports: c.Ports}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	var after *metav1.MicroTime
	clustertest.Eventually(t, "another controller replica holds the lease", 2*time.Minute, func() error {
		l, err := leases.Get(ctx, "switchboard-controller", metav1.GetOptions{})
		if err != nil {
			return err
		}
		h := ptr.Deref(l.Spec.HolderIdentity, "")
		if h == "" || h == holder {
			return fmt.Errorf("holder %q", h)
		}
		// Another replica: the standby, or the Deployment's replacement
		// for the deleted pod when it asks first (the standby asks every
		// retry period, 2 s; a new pod at once). Either is a running
		// controller pod other than the deleted one.
		newLeader, _, _ := strings.Cut(h, "_")
		p, err := client.CoreV1().Pods("kube-system").Get(ctx, newLeader, metav1.GetOptions{})
		if err != nil || p.Labels["app.kubernetes.io/component"] != "controller" || newLeader == leader {
			t.Fatalf("lease taken by %q, which is no other controller replica (%v)", h, err)
		}
		if newLeader == standby {
			t.Logf("the standby %s took over", standby)
		} else {
			t.Logf("the deleted leader's replacement %s took over before the standby %s asked", newLeader, standby)
		}
		t.Logf("lease: %s -> %s (acquired %s, the deleted leader's lease ran to %s)", holder, h,
			l.Spec.AcquireTime.UTC().Format(time.RFC3339Nano), expiry.UTC().Format(time.RFC3339Nano))
		after = l.Spec.AcquireTime
		return nil
	})
	// The leader releases the Lease on SIGTERM: the next one need not
	// wait for it to expire.
	if after == nil || !after.Time.Before(expiry) {
		t.Errorf("the new leader acquired the lease at %v, not before the deleted leader's ran out (%s): was it released?", after, expiry)
	}

	// The pod that joined during the failover is in the Service's slices
	// (written by the new leader) and answers through its ClusterIP.
	clustertest.Eventually(t, "nginx-4 in my-awesome-service's EndpointSlice", 2*time.Minute, func() error {
		p, err := client.CoreV1().Pods("default").Get(ctx, joiner.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.PodIP == "" {
			return fmt.Errorf("nginx-4 has no IP yet")
		}
		l, err := client.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=my-awesome-service"})
		if err != nil {
			return err
		}
		var ready []string
		for _, s := range l.Items {
			for _, e := range s.Endpoints {
				if ptr.Deref(e.Conditions.Ready, false) {
					ready = append(ready, e.Addresses...)
				}
			}
		}
		if !slices.Contains(ready, p.Status.PodIP) {
			return fmt.Errorf("ready endpoints %v lack nginx-4's %s", ready, p.Status.PodIP)
		}
		return nil
	})
	reachesAll(t, ws, nil, "bin/switchboard exec client -- curl -s http://my-awesome-service", []string{`"pod":"nginx-4"`})
}

func adminClient(t *testing.T, ws string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(ws, ".switchboard", "kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return client
}

// kubectl runs kubectl in ws as the cluster's admin.
func kubectl(t *testing.T, ws string, args ...string) string {
	t.Helper()
	out, err := kubectlErr(ws, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func kubectlErr(ws string, args ...string) (string, error) {
	c := exec.Command("kubectl", append([]string{"--kubeconfig", filepath.Join(ws, ".switchboard", "kubeconfig")}, args...)...)
	c.Dir = ws
	out, err := c.CombinedOutput()
	return string(out), err
}
