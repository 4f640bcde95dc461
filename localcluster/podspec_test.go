package localcluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/switchboard/switchboard/clustertest"
	"github.com/switchboard/switchboard/echoserver"
)

// runToEnd creates a pod whose containers run once, waits for its final
// phase and returns the pod and each container's output by name.
func runToEnd(t *testing.T, c kubernetes.Interface, ns string, pod *corev1.Pod, phase corev1.PodPhase) (*corev1.Pod, map[string]string) {
	t.Helper()
	pod.Spec.RestartPolicy = corev1.RestartPolicyNever
	createPod(t, c, ns, pod)
	p := waitPod(t, c, ns, pod.Name, string(phase), func(p *corev1.Pod) bool {
		return p.Status.Phase == phase
	})
	out := map[string]string{}
	for _, ctr := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		b, err := c.CoreV1().Pods(ns).GetLogs(pod.Name, &corev1.PodLogOptions{Container: ctr.Name}).DoRaw(context.Background())
		if err == nil {
			out[ctr.Name] = string(b)
		}
	}
	return p, out
}

func shPod(name string, containers map[string]string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}}
	for n, script := range containers {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: n, Image: "busybox", Command: []string{"sh", "-c", script}})
	}
	return p
}

// mountRoot is where a test's pods mount their volumes: every container
// sees the host's file system, so a missing mount point is made on the
// host; "@/" in the pod's commands and mount paths becomes this root, which
// goes with the test.
func mountRoot(t *testing.T, ns string, pod *corev1.Pod) {
	root := filepath.Join(os.TempDir(), ns)
	t.Cleanup(func() { os.RemoveAll(root) })
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range list {
			for j := range list[i].Command {
				list[i].Command[j] = strings.ReplaceAll(list[i].Command[j], "@/", root+"/")
			}
			for j := range list[i].VolumeMounts {
				list[i].VolumeMounts[j].MountPath = strings.ReplaceAll(list[i].VolumeMounts[j].MountPath, "@/", root+"/")
			}
		}
	}
}

func wantLines(t *testing.T, what, out string, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if !strings.Contains(out, l+"\n") {
			t.Errorf("%s: output lacks line %q; it printed:\n%s", what, l, out)
		}
	}
}

// TestPodVolumes: two containers share an emptyDir; configMap, secret,
// downwardAPI and projected service-account token volumes hold what the
// kubelet's would, in the AtomicWriter layout.
func TestPodVolumes(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	ctx := context.Background()
	if _, err := c.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cm"},
		Data: map[string]string{"color": "blue", "size": "9"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "sec"},
		Data: map[string][]byte{"password": []byte("s3cret")}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := shPod("vols", map[string]string{
		"writer": `echo from-writer > @/shared/msg`,
		"reader": `while [ ! -f @/shared/msg ]; do sleep 0.1; done; cat @/shared/msg
echo color=$(cat @/cm/color); echo item=$(cat @/items/renamed); echo data=$(readlink @/cm/..data | cut -c1-2)
echo password=$(cat @/sec/password); echo labels:; cat @/dapi/labels; echo; echo name=$(cat @/dapi/name)
echo token=$(cat @/tok/token); touch @/cm/x 2>/dev/null || echo cm-readonly; touch @/sec/x 2>/dev/null || echo secret-readonly
sa=/var/run/secrets/kubernetes.io/serviceaccount; echo sa-ns=$(cat $sa/namespace); head -1 $sa/ca.crt; [ -s $sa/token ] && echo sa-token`,
	})
	pod.Labels = map[string]string{"app": "vols"}
	for i := range pod.Spec.Containers {
		pod.Spec.Containers[i].VolumeMounts = []corev1.VolumeMount{{Name: "shared", MountPath: "@/shared"}}
		if pod.Spec.Containers[i].Name == "reader" {
			pod.Spec.Containers[i].VolumeMounts = append(pod.Spec.Containers[i].VolumeMounts,
				corev1.VolumeMount{Name: "cm", MountPath: "@/cm", ReadOnly: true},
				corev1.VolumeMount{Name: "items", MountPath: "@/items"},
				corev1.VolumeMount{Name: "sec", MountPath: "@/sec"},
				corev1.VolumeMount{Name: "dapi", MountPath: "@/dapi"},
				corev1.VolumeMount{Name: "tok", MountPath: "@/tok"})
		}
	}
	pod.Spec.Volumes = []corev1.Volume{
		{Name: "shared", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: "cm", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}}}},
		{Name: "items", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"},
			Items: []corev1.KeyToPath{{Key: "size", Path: "renamed"}}}}},
		{Name: "sec", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "sec"}}},
		{Name: "dapi", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
			{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}},
			{Path: "name", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}}}},
		{Name: "tok", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr.To[int64](3600)}}}}}},
	}
	mountRoot(t, ns, pod)
	_, out := runToEnd(t, c, ns, pod, corev1.PodSucceeded)
	r := out["reader"]
	wantLines(t, "reader", r, "from-writer", "color=blue", "item=9", "data=..", "password=s3cret", `app="vols"`, "name=vols", "cm-readonly", "secret-readonly",
		// The service account admission's kube-api-access volume: token, the
		// published kube-root-ca.crt and the namespace.
		"sa-ns="+ns, "-----BEGIN CERTIFICATE-----", "sa-token")
	var token string
	for _, l := range strings.Split(r, "\n") {
		token, _ = strings.CutPrefix(l, "token=")
		if token != l {
			break
		}
	}
	review, err := c.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !review.Status.Authenticated || review.Status.User.Username != "system:serviceaccount:"+ns+":default" {
		t.Errorf("projected token authenticates as %+v, want the pod's service account", review.Status)
	}
	if names := review.Status.User.Extra["authentication.kubernetes.io/pod-name"]; len(names) != 1 || names[0] != "vols" {
		t.Errorf("token is bound to pod %v, want vols", names)
	}
}

// TestPodVolumeWaitsForConfigMap: a volume of a ConfigMap that does not
// exist keeps the container waiting, and it starts once the ConfigMap
// appears, as on a kubelet.
func TestPodVolumeWaitsForConfigMap(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	pod := commandPod("waits", "sh", "-c", "cat @/cm/k; sleep 100000")
	pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "cm", MountPath: "@/cm"}}
	pod.Spec.Volumes = []corev1.Volume{{Name: "cm", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: "later"}}}}}
	mountRoot(t, ns, pod)
	createPod(t, c, ns, pod)
	waitPod(t, c, ns, "waits", "waiting for its ConfigMap", func(p *corev1.Pod) bool {
		cs := p.Status.ContainerStatuses
		return len(cs) == 1 && cs[0].State.Waiting != nil && cs[0].State.Waiting.Reason == "ContainerCreating" &&
			strings.Contains(cs[0].State.Waiting.Message, `configmap "later" not found`)
	})
	evs, err := c.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range evs.Items {
		found = found || (e.Reason == "FailedMount" && e.InvolvedObject.Name == "waits" && strings.Contains(e.Message, `configmap "later" not found`))
	}
	if !found {
		t.Errorf("no FailedMount event for the missing ConfigMap; events: %+v", evs.Items)
	}
	if _, err := c.CoreV1().ConfigMaps(ns).Create(context.Background(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "later"},
		Data: map[string]string{"k": "v"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPod(t, c, ns, "waits", "Ready", isReady)
	// Gone before mountRoot's clean-up, which cannot remove a mount point
	// in use.
	grace := int64(0)
	if err := c.CoreV1().Pods(ns).Delete(context.Background(), "waits", metav1.DeleteOptions{GracePeriodSeconds: &grace}); err != nil {
		t.Fatal(err)
	}
	wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := c.CoreV1().Pods(ns).Get(ctx, "waits", metav1.GetOptions{})
		return err != nil, nil
	})
}

// TestPodEnv: env from every source, envFrom with a prefix, $(VAR)
// expansion in env, command and args, and the Service link variables.
func TestPodEnv(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	ctx := context.Background()
	if _, err := c.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cm"},
		Data: map[string]string{"color": "blue"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "sec"},
		Data: map[string][]byte{"password": []byte("s3cret")}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := c.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "my-db"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "sql", Port: 5432}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	script := `echo "arg=$0"; env | sort`
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "env", Labels: map[string]string{"tier": "db"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox",
			Command:   []string{"sh", "-c", script, "$(GREETING)"},
			Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")}},
			EnvFrom:   []corev1.EnvFromSource{{Prefix: "CM_", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}}}},
			Env: []corev1.EnvVar{
				{Name: "GREETING", Value: "hi-$(CM_color)-$$(literal)"},
				{Name: "COLOR", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}, Key: "color"}}},
				{Name: "PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}, Key: "password"}}},
				{Name: "MISSING", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}, Key: "k", Optional: ptr.To(true)}}},
				{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
				{Name: "POD_NS", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
				{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
				{Name: "NODE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
				{Name: "TIER", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['tier']"}}},
				{Name: "MEM_MI", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}}},
			}}}}}
	p, out := runToEnd(t, c, ns, pod, corev1.PodSucceeded)
	wantLines(t, "env", out["c"], "arg=hi-blue-$(literal)", "GREETING=hi-blue-$(literal)", "CM_color=blue", "COLOR=blue", "PASSWORD=s3cret",
		"POD_NAME=env", "POD_NS="+ns, "POD_IP="+p.Status.PodIP, "NODE="+p.Spec.NodeName, "TIER=db", "MEM_MI=64",
		"MY_DB_SERVICE_HOST="+svc.Spec.ClusterIP, "MY_DB_SERVICE_PORT=5432", "MY_DB_SERVICE_PORT_SQL=5432",
		"MY_DB_PORT=tcp://"+svc.Spec.ClusterIP+":5432", "MY_DB_PORT_5432_TCP_ADDR="+svc.Spec.ClusterIP, "MY_DB_PORT_5432_TCP_PROTO=tcp")
	if strings.Contains(out["c"], "MISSING=") {
		t.Errorf("an optional key of a missing ConfigMap is set:\n%s", out["c"])
	}

	// Without service links only the default namespace's kubernetes
	// Service is in the environment.
	noLinks := commandPod("nolinks", "sh", "-c", "env | sort")
	noLinks.Spec.EnableServiceLinks = ptr.To(false)
	_, out = runToEnd(t, c, ns, noLinks, corev1.PodSucceeded)
	if strings.Contains(out["c"], "MY_DB_") {
		t.Errorf("enableServiceLinks=false still has the namespace's Service variables:\n%s", out["c"])
	}
	if k, err := c.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{}); err == nil {
		wantLines(t, "nolinks", out["c"], "KUBERNETES_SERVICE_HOST="+k.Spec.ClusterIP)
	}
}

// TestInitContainers: init containers run one by one, in order, before
// the app container, and are reported; a failing one fails a pod that
// does not restart, and its app container never runs.
func TestInitContainers(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	mount := []corev1.VolumeMount{{Name: "w", MountPath: "@/work"}}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "inits"}, Spec: corev1.PodSpec{
		Volumes: []corev1.Volume{{Name: "w", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
		InitContainers: []corev1.Container{
			{Name: "first", Image: "busybox", Command: []string{"sh", "-c", "sleep 0.5; echo first >> @/work/order"}, VolumeMounts: mount},
			{Name: "second", Image: "busybox", Command: []string{"sh", "-c", "echo second >> @/work/order"}, VolumeMounts: mount},
		},
		Containers: []corev1.Container{{Name: "app", Image: "busybox", Command: []string{"sh", "-c", "echo app >> @/work/order; cat @/work/order"}, VolumeMounts: mount}},
	}}
	mountRoot(t, ns, pod)
	p, out := runToEnd(t, c, ns, pod, corev1.PodSucceeded)
	if out["app"] != "first\nsecond\napp\n" {
		t.Errorf("containers ran in the order %q, want first, second, app", out["app"])
	}
	if len(p.Status.InitContainerStatuses) != 2 {
		t.Fatalf("initContainerStatuses: %+v", p.Status.InitContainerStatuses)
	}
	for _, s := range p.Status.InitContainerStatuses {
		if s.State.Terminated == nil || s.State.Terminated.Reason != "Completed" || !s.Ready {
			t.Errorf("init container %s: %+v, want terminated Completed and ready", s.Name, s.State)
		}
	}

	// A sidecar (an init container with restartPolicy Always) runs beside
	// the app container.
	always := corev1.ContainerRestartPolicyAlways
	sidecar := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "sidecar"}, Spec: corev1.PodSpec{
		Volumes: []corev1.Volume{{Name: "w", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
		InitContainers: []corev1.Container{{Name: "side", Image: "busybox", RestartPolicy: &always, VolumeMounts: mount,
			Command: []string{"sh", "-c", "echo $$$$ > @/work/side; exec sleep 100000"}}},
		Containers: []corev1.Container{{Name: "app", Image: "busybox", VolumeMounts: mount,
			Command: []string{"sh", "-c", "while [ ! -s @/work/side ]; do sleep 0.1; done; echo sidecar-pid=$(cat @/work/side)"}}},
	}}
	mountRoot(t, ns, sidecar)
	_, out = runToEnd(t, c, ns, sidecar, corev1.PodSucceeded)
	wantLines(t, "app beside its sidecar", out["app"], "sidecar-pid=1")

	failing := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "failing"}, Spec: corev1.PodSpec{
		InitContainers: []corev1.Container{{Name: "init", Image: "busybox", Command: []string{"sh", "-c", "exit 3"}}},
		Containers:     []corev1.Container{{Name: "app", Image: "busybox", Command: []string{"sh", "-c", "echo ran"}}},
	}}
	p, out = runToEnd(t, c, ns, failing, corev1.PodFailed)
	if out["app"] != "" {
		t.Errorf("app container ran after its init container failed: %q", out["app"])
	}
	if s := p.Status.InitContainerStatuses; len(s) != 1 || s[0].State.Terminated == nil || s[0].State.Terminated.ExitCode != 3 {
		t.Errorf("failed init container status: %+v", s)
	}
	if s := p.Status.ContainerStatuses; len(s) != 1 || s[0].State.Waiting == nil || s[0].State.Waiting.Reason != "PodInitializing" {
		t.Errorf("app container status: %+v, want waiting PodInitializing", s)
	}
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodInitialized && cond.Status != corev1.ConditionFalse {
			t.Errorf("Initialized condition %s, want False", cond.Status)
		}
	}
}

// TestTerminationMessage: the message is the file at
// terminationMessagePath, or with FallbackToLogsOnError the log's end.
func TestTerminationMessage(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	// The mount point of a path that does not exist is made on the host.
	t.Cleanup(func() { os.Remove("/tmp/podspec-term-msg") })
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "term"}, Spec: corev1.PodSpec{Containers: []corev1.Container{
		{Name: "file", Image: "busybox", Command: []string{"sh", "-c", "echo -n done-well > /dev/termination-log"}},
		{Name: "custom", Image: "busybox", Command: []string{"sh", "-c", "echo -n custom-path > /tmp/podspec-term-msg; exit 1"},
			TerminationMessagePath: "/tmp/podspec-term-msg"},
		{Name: "logs", Image: "busybox", Command: []string{"sh", "-c", "echo line1; echo last-words; exit 2"},
			TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError},
	}}}
	p, _ := runToEnd(t, c, ns, pod, corev1.PodFailed)
	want := map[string]string{"file": "done-well", "custom": "custom-path", "logs": "line1\nlast-words\n"}
	for _, s := range p.Status.ContainerStatuses {
		if s.State.Terminated == nil || s.State.Terminated.Message != want[s.Name] {
			t.Errorf("container %s: state %+v, want message %q", s.Name, s.State, want[s.Name])
		}
	}
	if b, err := os.ReadFile("/tmp/podspec-term-msg"); err == nil && len(b) > 0 {
		t.Errorf("the container's termination message reached the host's file system: %q", b)
	}
}

// TestResolvConf: each dnsPolicy gives the kubelet's resolv.conf.
func TestResolvConf(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	cat := func(name string, policy corev1.DNSPolicy, cfg *corev1.PodDNSConfig) *corev1.Pod {
		p := commandPod(name, "cat", "/etc/resolv.conf")
		p.Spec.DNSPolicy, p.Spec.DNSConfig = policy, cfg
		return p
	}
	_, out := runToEnd(t, c, ns, cat("none", corev1.DNSNone, &corev1.PodDNSConfig{Nameservers: []string{"1.2.3.4"},
		Searches: []string{"example.test"}, Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: ptr.To("2")}}}), corev1.PodSucceeded)
	if want := "search example.test\nnameserver 1.2.3.4\noptions ndots:2\n"; out["c"] != want {
		t.Errorf("dnsPolicy None: resolv.conf\n%s\nwant\n%s", out["c"], want)
	}
	_, out = runToEnd(t, c, ns, cat("first", corev1.DNSClusterFirst, &corev1.PodDNSConfig{
		Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: ptr.To("1")}, {Name: "edns0"}}}), corev1.PodSucceeded)
	wantLines(t, "ClusterFirst", out["c"], "nameserver "+cluster.Config.DNSIP, "options ndots:1 edns0")
	if !strings.HasPrefix(out["c"], "search "+ns+".svc.cluster.local svc.cluster.local cluster.local") {
		t.Errorf("ClusterFirst: resolv.conf search path:\n%s", out["c"])
	}
	_, out = runToEnd(t, c, ns, cat("default", corev1.DNSDefault, nil), corev1.PodSucceeded)
	if strings.Contains(out["c"], cluster.Config.DNSIP) || strings.Contains(out["c"], "svc.cluster.local") {
		t.Errorf("dnsPolicy Default has the cluster's DNS:\n%s", out["c"])
	}
}

// TestHostNetworkPod: a hostNetwork pod has its node's IP, runs in its
// node's network namespace (another node reaches its port at the node's
// IP) and gets the node's resolver, as with the kubelet.
func TestHostNetworkPod(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	pod := nginxPod("hostnet")
	pod.Spec.HostNetwork = true
	pod.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 18080, HostPort: 18080}}
	createPod(t, c, ns, pod)
	p := waitPod(t, c, ns, "hostnet", "Ready", isReady)
	if p.Status.PodIP != p.Status.HostIP || p.Status.PodIP == "" {
		t.Errorf("hostNetwork pod IP %q, want its node's %q", p.Status.PodIP, p.Status.HostIP)
	}
	var other string
	for _, n := range cluster.Nodes() {
		if n.Name != p.Spec.NodeName {
			other = n.Name
		}
	}
	if other == "" {
		t.Skip("needs a second node to reach the pod from")
	}
	out, err := exec.Command("ip", "netns", "exec", cluster.Network.NodeNS(other),
		"curl", "-s", "--max-time", "5", "http://"+p.Status.HostIP+":18080/").CombinedOutput()
	if err != nil {
		t.Fatalf("node %s -> %s:18080: %v %s", other, p.Status.HostIP, err, out)
	}
	var r echoserver.Reply
	if err := json.Unmarshal(out, &r); err != nil || r.Pod != "hostnet" {
		t.Errorf("node IP port answered %q (%v), want the hostNetwork pod", out, err)
	}
	// The pod has no namespace of its own.
	if _, err := os.Stat("/run/netns/" + cluster.Network.PodNS(ns, "hostnet")); err == nil {
		t.Errorf("hostNetwork pod got its own network namespace")
	}
}

// TestHostPort: a pod's hostPort answers at its node's IP, from another
// node and from the node itself, and goes with the pod.
func TestHostPort(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	pod := nginxPod("hostport")
	pod.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 80, HostPort: 18081}}
	createPod(t, c, ns, pod)
	p := waitPod(t, c, ns, "hostport", "Ready", isReady)
	if p.Status.PodIP == p.Status.HostIP {
		t.Fatalf("pod with a hostPort has its node's IP %s, want its own", p.Status.PodIP)
	}
	get := func(node string) (string, error) {
		out, err := exec.Command("ip", "netns", "exec", cluster.Network.NodeNS(node),
			"curl", "-s", "--max-time", "5", "http://"+p.Status.HostIP+":18081/").CombinedOutput()
		return string(out), err
	}
	for _, n := range cluster.Nodes() {
		out, err := get(n.Name)
		if err != nil {
			t.Fatalf("node %s -> %s:18081: %v %s", n.Name, p.Status.HostIP, err, out)
		}
		var r echoserver.Reply
		if err := json.Unmarshal([]byte(out), &r); err != nil || r.Pod != "hostport" {
			t.Errorf("from node %s the hostPort answered %q (%v), want pod hostport", n.Name, out, err)
		}
	}
	grace := int64(0)
	if err := c.CoreV1().Pods(ns).Delete(context.Background(), "hostport", metav1.DeleteOptions{GracePeriodSeconds: &grace}); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := c.CoreV1().Pods(ns).Get(ctx, "hostport", metav1.GetOptions{})
		return err != nil, nil
	})
	if err != nil {
		t.Fatal("pod not deleted")
	}
	// Deleted with grace 0, the object goes at once, before the node has
	// torn the pod down: its rules go right after.
	clustertest.Eventually(t, "hostPort rules removed after the pod went", 30*time.Second, func() error {
		out, err := exec.Command("ip", "netns", "exec", cluster.Network.NodeNS(p.Spec.NodeName), "nft", "list", "tables").CombinedOutput()
		if err != nil {
			return fmt.Errorf("nft list tables: %v %s", err, out)
		}
		if strings.Contains(string(out), "sb-hostport-"+string(p.UID)[:8]) {
			return fmt.Errorf("left:\n%s", out)
		}
		return nil
	})
}

// TestExecSeesContainer: kubectl exec runs with the container's
// environment (every env source) and in its mounts (its volumes).
func TestExecSeesContainer(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	if _, err := c.CoreV1().ConfigMaps(ns).Create(context.Background(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cm"},
		Data: map[string]string{"color": "blue"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := commandPod("shell", "sleep", "3600")
	pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "COLOR", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}, Key: "color"}}}}
	pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "cm", MountPath: "@/cm"}}
	pod.Spec.Volumes = []corev1.Volume{{Name: "cm", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}}}}}
	mountRoot(t, ns, pod)
	runningPod(t, c, ns, pod)
	t.Cleanup(func() {
		// The pod goes before mountRoot's clean-up of its mount point.
		c.CoreV1().Pods(ns).Delete(context.Background(), "shell", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
		wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			_, err := c.CoreV1().Pods(ns).Get(ctx, "shell", metav1.GetOptions{})
			return err != nil, nil
		})
	})
	mount := pod.Spec.Containers[0].VolumeMounts[0].MountPath
	out := kubectlOut(t, "-n", ns, "exec", "shell", "--", "sh", "-c", "echo color=$COLOR; echo svc=$KUBERNETES_SERVICE_HOST; cat "+mount+"/color")
	wantLines(t, "exec", out+"\n", "color=blue")
	if !strings.Contains(out, "svc=10.") || !strings.HasSuffix(strings.TrimSpace(out), "blue") {
		t.Errorf("exec output %q, want the Service variables and the ConfigMap volume", out)
	}
}

// TestPodSysctls: a safe sysctl of the pod is set in its network namespace
// before the container drops to its user (uid 65532 then listens on port
// 53, as deploy/'s dns does), and nowhere else; an unsafe one gets the pod
// rejected at admission as the kubelet rejects it (upstream's e2e "should
// not launch unsafe, but not explicitly enabled sysctls on the node" waits
// for the pod to fail with reason SysctlForbidden): Failed, the kubelet's
// reason and message, a Warning event, nothing of it set up, its status
// written once.
func TestPodSysctls(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	const file = "/proc/sys/net/ipv4/ip_unprivileged_port_start"
	pod := commandPod("sysctl", "sh", "-c", "cat "+file+"; id -u")
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](65532),
		Sysctls: []corev1.Sysctl{{Name: "net.ipv4.ip_unprivileged_port_start", Value: "0"}}}
	p, out := runToEnd(t, c, ns, pod, corev1.PodSucceeded)
	if out["c"] != "0\n65532\n" {
		t.Errorf("container printed %q, want the pod's sysctl (0) and its user (65532)", out["c"])
	}
	node, err := exec.Command("ip", "netns", "exec", cluster.Network.NodeNS(p.Spec.NodeName), "cat", file).CombinedOutput()
	if err != nil || string(node) == "0\n" {
		t.Errorf("node %s's %s: %q (%v): the pod's sysctl leaked to its node", p.Spec.NodeName, file, node, err)
	}

	unsafe := commandPod("unsafe", "sleep", "3600")
	unsafe.Spec.SecurityContext = &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{{Name: "kernel.msgmax", Value: "65536"}}}
	createPod(t, c, ns, unsafe)
	w := waitPod(t, c, ns, "unsafe", "failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	const msg = `forbidden sysctl: "kernel.msgmax" not allowlisted`
	if w.Status.Reason != "SysctlForbidden" || w.Status.Message != "Pod was rejected: "+msg {
		t.Errorf("failed with reason %q, message %q; want SysctlForbidden, %q", w.Status.Reason, w.Status.Message, "Pod was rejected: "+msg)
	}
	for _, cs := range w.Status.ContainerStatuses {
		if cs.State.Running != nil || cs.State.Terminated != nil {
			t.Errorf("container %s of a rejected pod started: %+v", cs.Name, cs.State)
		}
	}
	if len(w.Status.ContainerStatuses) != 0 || w.Status.PodIP != "" {
		t.Errorf("rejected pod has containers %+v, IP %q: the kubelet reports neither", w.Status.ContainerStatuses, w.Status.PodIP)
	}
	if _, err := os.Stat(filepath.Join("/run/netns", cluster.Network.PodNS(ns, "unsafe"))); err == nil {
		t.Errorf("rejected pod has a network namespace")
	}
	// Never admitted again: no second event, no second status write.
	time.Sleep(2 * time.Second)
	again, err := c.CoreV1().Pods(ns).Get(context.Background(), "unsafe", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if again.ResourceVersion != w.ResourceVersion {
		t.Errorf("rejected pod's status written again: %+v", again.Status)
	}
	evs, err := c.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rejections := 0
	for _, e := range evs.Items {
		if e.InvolvedObject.Name == "unsafe" && e.Reason == "SysctlForbidden" {
			rejections++
			if e.Type != corev1.EventTypeWarning || e.Message != msg || e.Source.Component != "kubelet" {
				t.Errorf("rejection event %s %q from %s, want Warning %q from kubelet", e.Type, e.Message, e.Source.Component, msg)
			}
		}
	}
	if rejections != 1 {
		t.Errorf("%d SysctlForbidden events, want one; events: %+v", rejections, evs.Items)
	}
}

// TestPodCapabilities: a container's securityContext.capabilities are the
// runtime's default set with its adds and drops, in its effective,
// permitted and bounding sets, and allowPrivilegeEscalation: false sets
// no_new_privs, as containerd and runc apply them (deploy/'s proxy runs as
// root with NET_ADMIN alone).
func TestPodCapabilities(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	pod := commandPod("caps", "grep", "-E", "^(CapEff|CapPrm|CapBnd|NoNewPrivs):", "/proc/self/status")
	pod.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false),
		Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_ADMIN"}}}
	_, out := runToEnd(t, c, ns, pod, corev1.PodSucceeded)
	// CAP_NET_ADMIN is bit 12.
	wantLines(t, "drop ALL, add NET_ADMIN", strings.ReplaceAll(out["c"], "\t", " "),
		"CapPrm: 0000000000001000", "CapEff: 0000000000001000", "CapBnd: 0000000000001000", "NoNewPrivs: 1")

	pod = commandPod("defaults", "grep", "-E", "^CapEff:", "/proc/self/status")
	pod.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"NET_RAW"}}}
	_, out = runToEnd(t, c, ns, pod, corev1.PodSucceeded)
	// The runtime's 14 default capabilities without NET_RAW (bit 13).
	wantLines(t, "the default set without NET_RAW", strings.ReplaceAll(out["c"], "\t", " "), "CapEff: 00000000a80405fb")

	// No securityContext at all: the runtime's default set, as on any node
	// (not every capability of up: no NET_ADMIN, no SYS_ADMIN).
	pod = commandPod("unnamed", "grep", "-E", "^(CapEff|CapBnd):", "/proc/self/status")
	_, out = runToEnd(t, c, ns, pod, corev1.PodSucceeded)
	wantLines(t, "the default set", strings.ReplaceAll(out["c"], "\t", " "), "CapEff: 00000000a80425fb", "CapBnd: 00000000a80425fb")

	bad := commandPod("bad", "sleep", "3600")
	bad.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_WIZARD"}}}
	createPod(t, c, ns, bad)
	w := waitPod(t, c, ns, "bad", "waiting with CreateContainerError", func(p *corev1.Pod) bool {
		return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].State.Waiting != nil &&
			p.Status.ContainerStatuses[0].State.Waiting.Reason == "CreateContainerError"
	})
	if msg := w.Status.ContainerStatuses[0].State.Waiting.Message; !strings.Contains(msg, "NET_WIZARD") {
		t.Errorf("waiting message %q does not name the capability", msg)
	}
}
