package localcluster_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/switchboard/switchboard/clustertest"
	"github.com/switchboard/switchboard/echoserver"
	"github.com/switchboard/switchboard/localcluster"
)

var (
	cluster *localcluster.Cluster
	client  kubernetes.Interface
	// startErr is why the shared cluster is missing (not root, ...).
	startErr error
	// stateDir is the shared cluster's state directory.
	stateDir string
)

// TestMain doubles as the pods' echo server and as a stand-alone `up`
// (for the restart and cleanup tests), so these tests need no separately
// built binary.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "echo" {
		os.Exit(runEcho(os.Args[2:]))
	}
	if dir := os.Getenv("SWITCHBOARD_TEST_UP"); dir != "" {
		os.Exit(runUp(dir))
	}
	code := func() int {
		if os.Geteuid() != 0 {
			startErr = fmt.Errorf("needs root")
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "switchboard-localcluster-")
		if err != nil {
			panic(err)
		}
		defer os.RemoveAll(dir)
		stateDir = dir
		// Stop leaves the data plane serving; Down removes it, last.
		defer localcluster.Down(dir)
		cluster, startErr = localcluster.Start(context.Background(), testConfig(dir, 2))
		if startErr == nil {
			defer cluster.Stop()
			client, startErr = kubernetes.NewForConfig(cluster.ControlPlane.RESTConfig)
		}
		return m.Run()
	}()
	os.Exit(code)
}

func testConfig(dir string, nodes int) localcluster.Config {
	exe, _ := os.Executable()
	return localcluster.Config{StateDir: dir, Nodes: nodes, APIServerPort: 0, EchoCommand: []string{exe, "echo"},
		Logger: testLogger()}
}

func runEcho(args []string) int {
	s, ports, err := echoserver.ParseArgs(args)
	if err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := s.Serve(ctx, ports); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// strayLine stands for what a library writes straight to standard error
// while `up` runs: it must land in the log file, not on the terminal.
const strayLine = "stray line a library wrote to standard error"

func runUp(dir string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	nodes := 1
	fmt.Sscan(os.Getenv("SWITCHBOARD_TEST_UP_NODES"), &nodes)
	cfg := testConfig(dir, nodes)
	terminal, err := localcluster.DupStderr()
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	cfg.Terminal = terminal
	c, err := localcluster.Start(ctx, cfg)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("switchboard is up; export KUBECONFIG=" + c.ControlPlane.KubeconfigPath)
	fmt.Fprintln(os.Stderr, strayLine)
	<-ctx.Done()
	c.Stop()
	return 0
}

func need(t *testing.T) kubernetes.Interface {
	t.Helper()
	if startErr != nil {
		clustertest.Skip(t, "local cluster not started: "+startErr.Error())
	}
	return client
}

func namespace(t *testing.T, c kubernetes.Interface) string {
	t.Helper()
	ns := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(ns) > 40 {
		ns = ns[:40]
	}
	ns = strings.Trim(ns+"-"+rand.String(4), "-")
	if _, err := c.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return ns
}

func createPod(t *testing.T, c kubernetes.Interface, ns string, pod *corev1.Pod) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := c.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		return err == nil, nil // the namespace's service account may not exist yet
	})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, pod.Name, err)
	}
}

// waitPod waits until cond holds for the pod, and returns it.
func waitPod(t *testing.T, c kubernetes.Interface, ns, name string, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var last *corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := c.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = p
		return cond(p), nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s never %s; last status: %+v", ns, name, what, last.Status)
	}
	return last
}

func isReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func nginxPod(name string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "nginx"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "nginx", Image: "nginx",
			Ports: []corev1.ContainerPort{{ContainerPort: 80}}}}}}
}

func commandPod(name string, command ...string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox", Command: command}}}}
}

// inPod runs a command inside a pod's namespaces, as `switchboard exec` does.
func inPod(t *testing.T, ns, pod string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", cluster.Network.PodNS(ns, pod)}, args...)...).CombinedOutput()
	return string(out), err
}

func TestNodesReady(t *testing.T) {
	c := need(t)
	nodes, err := c.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Items) != 2 {
		t.Fatalf("%d nodes, want 2", len(nodes.Items))
	}
	zones := map[string]bool{}
	for _, n := range nodes.Items {
		ready := false
		for _, cond := range n.Status.Conditions {
			ready = ready || (cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue)
		}
		if !ready {
			t.Errorf("node %s not Ready: %+v", n.Name, n.Status.Conditions)
		}
		if n.Spec.PodCIDR == "" || len(n.Status.Addresses) == 0 || n.Status.Addresses[0].Type != corev1.NodeInternalIP {
			t.Errorf("node %s: podCIDR %q addresses %v", n.Name, n.Spec.PodCIDR, n.Status.Addresses)
		}
		zones[n.Labels[corev1.LabelTopologyZone]] = true
	}
	if len(zones) != 2 {
		t.Errorf("nodes spread over zones %v, want 2 zones", zones)
	}
	if out, err := exec.Command("kubectl", "--kubeconfig", cluster.ControlPlane.KubeconfigPath, "get", "nodes").CombinedOutput(); err != nil || strings.Count(string(out), " Ready ") != 2 {
		t.Errorf("kubectl get nodes: %v\n%s", err, out)
	}
}

// TestTutorialPods is the tutorial's start: three nginx pods come up Ready
// on both nodes, and a pod reaches another node's pod by IP and is seen
// with its own IP.
func TestTutorialPods(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	for _, name := range []string{"nginx-1", "nginx-2", "nginx-3"} {
		createPod(t, c, ns, nginxPod(name))
	}
	nodes := map[string]string{}
	ips := map[string]string{}
	for _, name := range []string{"nginx-1", "nginx-2", "nginx-3"} {
		p := waitPod(t, c, ns, name, "Ready", isReady)
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" || p.Status.HostIP == "" {
			t.Errorf("pod %s: phase %s podIP %q hostIP %q", name, p.Status.Phase, p.Status.PodIP, p.Status.HostIP)
		}
		nodes[name], ips[name] = p.Spec.NodeName, p.Status.PodIP
	}
	if nodes["nginx-1"] == nodes["nginx-2"] && nodes["nginx-2"] == nodes["nginx-3"] {
		t.Errorf("all pods on node %s; want them spread", nodes["nginx-1"])
	}
	for _, from := range []string{"nginx-1", "nginx-2", "nginx-3"} {
		for _, to := range []string{"nginx-1", "nginx-2", "nginx-3"} {
			if nodes[from] == nodes[to] && from != "nginx-1" {
				continue
			}
			out, err := inPod(t, ns, from, "curl", "-s", "--max-time", "5", "http://"+ips[to]+"/")
			if err != nil {
				t.Fatalf("%s -> %s (%s): %v %s", from, to, ips[to], err, out)
			}
			var r echoserver.Reply
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatalf("%s -> %s: reply %q: %v", from, to, out, err)
			}
			if r.Pod != to || !strings.HasPrefix(r.Peer, ips[from]+":") {
				t.Errorf("%s -> %s: answered by %s, peer %s; want %s seeing %s", from, to, r.Pod, r.Peer, to, ips[from])
			}
		}
	}
	resolv, _ := inPod(t, ns, "nginx-1", "cat", "/etc/resolv.conf")
	for _, want := range []string{"nameserver 10.96.0.10", "search " + ns + ".svc.cluster.local svc.cluster.local cluster.local", "options ndots:5"} {
		if !strings.Contains(resolv, want) {
			t.Errorf("pod resolv.conf lacks %q:\n%s", want, resolv)
		}
	}
}

func TestCommandAndCannotRun(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	createPod(t, c, ns, commandPod("sleeper", "sleep", "3600"))
	createPod(t, c, ns, commandPod("broken", "/no/such/command"))
	waitPod(t, c, ns, "sleeper", "Ready", isReady)
	p := waitPod(t, c, ns, "broken", "ContainerCannotRun", func(p *corev1.Pod) bool {
		return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].State.Waiting != nil &&
			p.Status.ContainerStatuses[0].State.Waiting.Reason == "ContainerCannotRun"
	})
	if msg := p.Status.ContainerStatuses[0].State.Waiting.Message; !strings.Contains(msg, "/no/such/command") {
		t.Errorf("waiting message %q does not name the command", msg)
	}
}

func TestReadinessProbe(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	flag := "/tmp/" + ns + "-ready"
	t.Cleanup(func() { os.Remove(flag) })
	pod := nginxPod("probed")
	pod.Spec.Containers[0].ReadinessProbe = &corev1.Probe{PeriodSeconds: 1,
		ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"test", "-e", flag}}}}
	createPod(t, c, ns, pod)
	waitPod(t, c, ns, "probed", "Running and not Ready", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning && !isReady(p) })
	os.WriteFile(flag, nil, 0o644)
	waitPod(t, c, ns, "probed", "Ready once the probe passes", isReady)
	os.Remove(flag)
	waitPod(t, c, ns, "probed", "not Ready once the probe fails", func(p *corev1.Pod) bool { return !isReady(p) })

	http := nginxPod("http-probed")
	http.Spec.Containers[0].ReadinessProbe = &corev1.Probe{PeriodSeconds: 1,
		ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(80)}}}
	createPod(t, c, ns, http)
	waitPod(t, c, ns, "http-probed", "Ready by its HTTP probe", isReady)
}

// TestGracefulDeletion: SIGTERM first, SIGKILL at the grace deadline, then
// the object is gone.
func TestGracefulDeletion(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	mark := "/tmp/" + ns + "-term"
	t.Cleanup(func() { os.Remove(mark) })
	armed := mark + "-armed"
	t.Cleanup(func() { os.Remove(armed) })
	polite := commandPod("polite", "sh", "-c", "trap 'echo TERM > "+mark+"; exit 0' TERM; touch "+armed+"; while true; do sleep 0.1; done")
	// Ready only once the trap is set, so the test cannot delete it before.
	polite.Spec.Containers[0].ReadinessProbe = &corev1.Probe{PeriodSeconds: 1,
		ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"test", "-e", armed}}}}
	createPod(t, c, ns, polite)
	createPod(t, c, ns, commandPod("stubborn", "sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"))
	waitPod(t, c, ns, "polite", "Ready", isReady)
	waitPod(t, c, ns, "stubborn", "Ready", isReady)
	grace := int64(2)
	for _, name := range []string{"polite", "stubborn"} {
		if err := c.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &grace}); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	p, err := c.CoreV1().Pods(ns).Get(context.Background(), "stubborn", metav1.GetOptions{})
	if err != nil || p.DeletionTimestamp == nil {
		t.Fatalf("stubborn pod should be Terminating with a deletionTimestamp: %v", err)
	}
	for _, name := range []string{"polite", "stubborn"} {
		err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			_, err := c.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			return err != nil, nil
		})
		if err != nil {
			t.Fatalf("pod %s never went away", name)
		}
	}
	if b, _ := os.ReadFile(mark); strings.TrimSpace(string(b)) != "TERM" {
		t.Errorf("polite pod did not get SIGTERM (mark %q)", b)
	}
	// The stubborn pod ignores SIGTERM, so it can only be gone after its
	// grace period ran out and SIGKILL came.
	if took := time.Since(start); took < time.Duration(grace)*time.Second-500*time.Millisecond {
		t.Errorf("stubborn pod gone after %v, before its %ds grace period", took, grace)
	}
	if _, err := os.Stat("/run/netns/" + cluster.Network.PodNS(ns, "stubborn")); err == nil {
		t.Errorf("network namespace of deleted pod still exists")
	}
}

func TestRestartWithBackoff(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	createPod(t, c, ns, commandPod("crasher", "sh", "-c", "exit 3"))
	p := waitPod(t, c, ns, "crasher", "in CrashLoopBackOff", func(p *corev1.Pod) bool {
		return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 1 &&
			p.Status.ContainerStatuses[0].State.Waiting != nil && p.Status.ContainerStatuses[0].State.Waiting.Reason == "CrashLoopBackOff"
	})
	last := p.Status.ContainerStatuses[0].LastTerminationState.Terminated
	if last == nil || last.ExitCode != 3 {
		t.Errorf("lastState.terminated = %+v, want exit code 3", last)
	}
	never := commandPod("once", "sh", "-c", "exit 0")
	never.Spec.RestartPolicy = corev1.RestartPolicyNever
	createPod(t, c, ns, never)
	waitPod(t, c, ns, "once", "Succeeded", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodSucceeded })
}

// TestRestartAndCleanup runs `up` as its own process (one API server per
// process), stops it and checks the pod keeps running (same process, same
// network namespace), restarts it on the same state directory and checks
// the pod is adopted with its IP and container (its restart counted had
// it been started again), a second `up` and a `down` refuse while `up`
// runs, the terminal gets one line per start-up phase and nothing written
// to standard error by others, a deleted pod's logs go with it, and
// nothing is left behind by `down`.
func TestRestartAndCleanup(t *testing.T) {
	clustertest.RequireRoot(t)
	dir := t.TempDir()
	down(t, dir)
	var terminal syncBuffer
	start := func() (*exec.Cmd, string) {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "SWITCHBOARD_TEST_UP="+dir)
		out, _ := cmd.StdoutPipe()
		cmd.Stderr = io.MultiWriter(os.Stderr, &terminal)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(out).ReadString('\n')
		kubeconfig, ok := strings.CutPrefix(strings.TrimSpace(line), "switchboard is up; export KUBECONFIG=")
		if !ok {
			cmd.Process.Kill()
			t.Fatalf("up printed %q", line)
		}
		go io.Copy(io.Discard, out)
		return cmd, kubeconfig
	}
	stop := func(cmd *exec.Cmd) {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}
	kubectl := func(kubeconfig string, args ...string) string {
		out, err := exec.Command("kubectl", append([]string{"--kubeconfig", kubeconfig}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	up, kc := start()
	manifest := filepath.Join(dir, "pod.yaml")
	os.WriteFile(manifest, []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: keeper, labels: {app: nginx}}\nspec: {containers: [{name: nginx, image: nginx, ports: [{containerPort: 80}]}]}\n"), 0o644)
	kubectl(kc, "apply", "-f", manifest)
	kubectl(kc, "wait", "--for=condition=Ready", "pod/keeper", "--timeout=60s")
	ip := kubectl(kc, "get", "pod", "keeper", "-o", "jsonpath={.status.podIP}")
	before := kubectl(kc, "get", "pod", "keeper", "-o", "jsonpath={.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].state.running.startedAt}")
	id := kubectl(kc, "get", "pod", "keeper", "-o", "jsonpath={.status.containerStatuses[0].containerID}")

	second := exec.Command(os.Args[0], "-test.run=^$")
	second.Env = append(os.Environ(), "SWITCHBOARD_TEST_UP="+dir)
	out, _ := second.CombinedOutput()
	if !strings.Contains(string(out), "already using state directory") {
		t.Errorf("second up on the same state dir: %q, want a refusal", out)
	}
	if err := localcluster.Down(dir); err == nil || !strings.Contains(err.Error(), "already using state directory") {
		t.Errorf("down while up runs: %v, want a refusal", err)
	}

	stop(up)
	// The data plane stays: the pod's process and its namespace.
	n := localcluster.NewNetwork(dir, cluster.Network.NodeCIDR, cluster.Network.PodCIDR)
	pid := containerPID(t, id)
	if !alive(pid) {
		t.Errorf("pod process %d ended with `up`; it should keep serving", pid)
	}
	if _, err := os.Stat("/run/netns/" + n.PodNS("default", "keeper")); err != nil {
		t.Errorf("pod network namespace removed with `up`: %v", err)
	}

	// The terminal got the phases and the ready line's companions only.
	for _, phase := range []string{"control plane ready", "1 node ready", "cluster DNS serving", "node proxies programmed"} {
		if !strings.Contains(terminal.String(), "switchboard: "+phase) {
			t.Errorf("terminal of up lacks the progress line %q:\n%s", phase, terminal.String())
		}
	}
	if strings.Contains(terminal.String(), strayLine) {
		t.Errorf("a line written to standard error reached the terminal instead of the log")
	}
	if log, _ := os.ReadFile(filepath.Join(dir, "logs", "control-plane.log")); !strings.Contains(string(log), strayLine) {
		t.Errorf("a line written to standard error is not in logs/control-plane.log")
	}

	// A log directory whose pod was deleted while up was down goes at start.
	ghost := filepath.Join(dir, "logs", "pods", "default_ghost_0d9c6f1e-0000-4000-8000-000000000000")
	if err := os.MkdirAll(ghost, 0o755); err != nil {
		t.Fatal(err)
	}
	up, kc = start()
	kubectl(kc, "wait", "--for=condition=Ready", "pod/keeper", "--timeout=60s")
	if again := kubectl(kc, "get", "pod", "keeper", "-o", "jsonpath={.status.podIP}"); again != ip {
		t.Errorf("pod IP after restart %s, want %s", again, ip)
	}
	if again := kubectl(kc, "get", "pod", "keeper", "-o", "jsonpath={.status.containerStatuses[0].containerID}"); again != id {
		t.Errorf("container after restart %s, want the adopted %s", again, id)
	}
	// RESTARTS never goes back, and counts the container's restart if up
	// had to start it again (the kubelet's count after a node reboot).
	after := kubectl(kc, "get", "pod", "keeper", "-o", "jsonpath={.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].state.running.startedAt}")
	var restartsBefore, restartsAfter int
	var startedBefore, startedAfter string
	fmt.Sscan(before, &restartsBefore, &startedBefore)
	fmt.Sscan(after, &restartsAfter, &startedAfter)
	want := restartsBefore
	if startedAfter != startedBefore {
		want++
	}
	t.Logf("keeper across a restart of up: restartCount %d -> %d, started at %s -> %s", restartsBefore, restartsAfter, startedBefore, startedAfter)
	if restartsAfter != want {
		t.Errorf("restartCount %d -> %d across a restart of up (container started at %s, then %s), want %d",
			restartsBefore, restartsAfter, startedBefore, startedAfter, want)
	}
	clustertest.Eventually(t, "log directory of a pod deleted while up was down removed", 30*time.Second, func() error {
		if _, err := os.Stat(ghost); err == nil {
			return fmt.Errorf("%s still exists", ghost)
		}
		return nil
	})
	keeperLogs := filepath.Join(dir, "logs", "pods", "default_keeper_"+kubectl(kc, "get", "pod", "keeper", "-o", "jsonpath={.metadata.uid}"))
	if _, err := os.Stat(keeperLogs); err != nil {
		t.Errorf("log directory of a live pod: %v", err)
	}
	kubectl(kc, "delete", "pod", "keeper", "--wait=true", "--timeout=60s")
	clustertest.Eventually(t, "log directory of a deleted pod removed", 30*time.Second, func() error {
		if _, err := os.Stat(keeperLogs); err == nil {
			return fmt.Errorf("%s still exists", keeperLogs)
		}
		return nil
	})
	stop(up)
	if err := localcluster.Down(dir); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, n.Prefix)
}

// syncBuffer is a bytes.Buffer safe for one writer and readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// upProcess is a `switchboard up` run as its own process (one API server
// per process) on a state directory, as a user runs it.
type upProcess struct {
	cmd        *exec.Cmd
	kubeconfig string
	client     kubernetes.Interface
}

// startUp runs `up` with nodes nodes on dir and waits for its ready line.
func startUp(t *testing.T, dir string, nodes int) *upProcess {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SWITCHBOARD_TEST_UP="+dir, fmt.Sprintf("SWITCHBOARD_TEST_UP_NODES=%d", nodes))
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	kubeconfig, ok := strings.CutPrefix(strings.TrimSpace(line), "switchboard is up; export KUBECONFIG=")
	if !ok {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("up printed %q", line)
	}
	go io.Copy(io.Discard, out)
	// A test that fails half-way must not leave `up` holding the state
	// directory (down, registered earlier, runs after this).
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return &upProcess{cmd: cmd, kubeconfig: kubeconfig, client: c}
}

// stop stops `up` as Ctrl-C does.
func (u *upProcess) stop() {
	u.cmd.Process.Signal(os.Interrupt)
	u.cmd.Wait()
}

func (u *upProcess) kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("kubectl", append([]string{"--kubeconfig", u.kubeconfig}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// down runs Down for dir when the test ends, so a failing test leaves
// nothing running either.
func down(t *testing.T, dir string) {
	t.Cleanup(func() {
		if err := localcluster.Down(dir); err != nil {
			t.Errorf("down: %v", err)
		}
	})
}

// containerPID is the host PID in a containerID of this runtime.
func containerPID(t *testing.T, id string) int {
	t.Helper()
	var pid int
	if _, err := fmt.Sscanf(id, "switchboard://%d", &pid); err != nil {
		t.Fatalf("containerID %q: %v", id, err)
	}
	return pid
}

// alive reports whether pid names a live (not zombie) process.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] != 'Z'
}

// cgroupOf is the directory of the cgroup holding pid in the hierarchy the
// local cluster uses (the one whose path has "/switchboard/" in it).
func cgroupOf(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 || !strings.Contains(f[2], "/switchboard/") {
			continue
		}
		var roots []string
		switch {
		case f[0] == "0":
			roots = []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"}
		case strings.Contains(f[1], "freezer"):
			roots = []string{"/sys/fs/cgroup/freezer"}
		}
		for _, r := range roots {
			if _, err := os.Stat(filepath.Join(r, f[2], "cgroup.procs")); err == nil {
				return filepath.Join(r, f[2])
			}
		}
	}
	t.Fatalf("process %d is in no switchboard cgroup:\n%s", pid, b)
	return ""
}

func cgroupPIDs(dir string) []int {
	b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		var p int
		fmt.Sscan(f, &p)
		pids = append(pids, p)
	}
	return pids
}

// waitGone waits until none of pids lives.
func waitGone(t *testing.T, what string, pids []int) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		for _, p := range pids {
			if alive(p) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Errorf("%s: processes %v still run", what, pids)
	}
}

// TestKill9ProcessTree: kill -9 of `up` leaves the pods' trees running
// (grandchildren included, in their cgroups); the next `up` adopts them
// (and starts again, counting a restart, a container that died meanwhile),
// ends by its cgroup the tree of a pod that is gone (an orphan cgroup,
// as a pod deleted while no `up` ran leaves), and deleting an adopted pod
// ends its whole tree, grandchildren that were never that `up`'s children
// included.
func TestKill9ProcessTree(t *testing.T) {
	clustertest.RequireRoot(t)
	dir := t.TempDir()
	down(t, dir)
	up := startUp(t, dir, 1)
	ns := "default"
	// The subshell's sleep is a grandchild of the container's PID 1.
	createPod(t, up.client, ns, commandPod("tree", "sh", "-c", "(sleep 100000 &); sleep 100000"))
	createPod(t, up.client, ns, commandPod("lost", "sleep", "100000"))
	tree := waitPod(t, up.client, ns, "tree", "Ready", isReady)
	lost := waitPod(t, up.client, ns, "lost", "Ready", isReady)
	cg := cgroupOf(t, containerPID(t, tree.Status.ContainerStatuses[0].ContainerID))
	var pids []int
	// Settled once both sleeps run: the subshell that started the
	// grandchild has exited by then (the shell waits for it before its own
	// sleep), so no pid taken here ends by itself.
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		pids = cgroupPIDs(cg)
		sleeps := 0
		for _, p := range pids {
			if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p)); strings.TrimSpace(string(comm)) == "sleep" {
				sleeps++
			}
		}
		return sleeps >= 2, nil
	})
	if err != nil {
		t.Fatalf("pod tree's cgroup %s holds %v, want the shell, its sleep and the grandchild sleep", cg, pids)
	}

	up.cmd.Process.Kill()
	up.cmd.Wait()
	for _, p := range pids {
		if !alive(p) {
			t.Errorf("process %d of pod tree ended with a kill -9 of `up`", p)
		}
	}
	// A container that dies while no `up` runs is started again by the
	// next one and counted as a restart.
	lostPID := containerPID(t, lost.Status.ContainerStatuses[0].ContainerID)
	syscall.Kill(lostPID, syscall.SIGKILL)
	waitGone(t, "killed container of pod lost", []int{lostPID})

	// An orphan: a process tree in the cgroup of a pod the API does not
	// have, as one deleted while no `up` ran leaves behind.
	orphanCg := filepath.Join(filepath.Dir(cg), "pod-00000000-0000-0000-0000-00000000dead")
	if err := os.Mkdir(orphanCg, 0o755); err != nil {
		t.Fatal(err)
	}
	orphan := exec.Command("sh", "-c", "sleep 100000 & wait")
	orphan.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	go orphan.Wait()
	if err := os.WriteFile(filepath.Join(orphanCg, "cgroup.procs"), []byte(fmt.Sprint(orphan.Process.Pid)), 0); err != nil {
		t.Fatal(err)
	}
	var orphanPIDs []int
	wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		orphanPIDs = cgroupPIDs(orphanCg)
		return len(orphanPIDs) >= 2, nil
	})

	up = startUp(t, dir, 1)
	defer up.stop()
	waitGone(t, "orphan cgroup's tree after the next up", orphanPIDs)
	if _, err := os.Stat(orphanCg); err == nil {
		t.Errorf("orphan cgroup %s not removed", orphanCg)
	}
	again := waitPod(t, up.client, ns, "tree", "Ready", isReady)
	if again.Status.ContainerStatuses[0].ContainerID != tree.Status.ContainerStatuses[0].ContainerID {
		t.Errorf("pod tree restarted (%s -> %s); it should have been adopted",
			tree.Status.ContainerStatuses[0].ContainerID, again.Status.ContainerStatuses[0].ContainerID)
	}
	for _, p := range pids {
		if !alive(p) {
			t.Errorf("process %d of adopted pod tree ended", p)
		}
	}
	relost := waitPod(t, up.client, ns, "lost", "running again", func(p *corev1.Pod) bool {
		cs := p.Status.ContainerStatuses
		return isReady(p) && len(cs) == 1 && cs[0].ContainerID != lost.Status.ContainerStatuses[0].ContainerID
	})
	if got, want := relost.Status.ContainerStatuses[0].RestartCount, lost.Status.ContainerStatuses[0].RestartCount+1; got != want {
		t.Errorf("restartCount of a container lost while up was down: %d, want %d", got, want)
	}
	grace := int64(1)
	if err := up.client.CoreV1().Pods(ns).Delete(context.Background(), "tree", metav1.DeleteOptions{GracePeriodSeconds: &grace}); err != nil {
		t.Fatal(err)
	}
	waitGone(t, "deleted adopted pod's tree", pids)
	if _, err := os.Stat(cg); err == nil {
		t.Errorf("cgroup %s of the deleted pod not removed", cg)
	}
}

// TestRestartUnderTraffic: a client pod requests a Service by DNS name and
// by ClusterIP in a loop while `up` is stopped (SIGINT) and started again
// on the same state directory; not one request may fail.
func TestRestartUnderTraffic(t *testing.T) {
	clustertest.RequireRoot(t)
	dir := t.TempDir()
	down(t, dir)
	up := startUp(t, dir, 2)
	ns := "default"
	for i := 1; i <= 3; i++ {
		pod := nginxPod(fmt.Sprintf("web-%d", i))
		createPod(t, up.client, ns, pod)
	}
	createPod(t, up.client, ns, commandPod("client", "sleep", "100000"))
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: corev1.ServiceSpec{
		Selector: map[string]string{"app": "nginx"}, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(80)}}}}
	svc, err := up.client.CoreV1().Services(ns).Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"web-1", "web-2", "web-3", "client"} {
		waitPod(t, up.client, ns, name, "Ready", isReady)
	}
	clientNS := localcluster.NewNetwork(dir, netip.Prefix{}, netip.Prefix{}).PodNS(ns, "client")
	targets := map[string]string{"DNS name": "http://web/", "ClusterIP": "http://" + svc.Spec.ClusterIP + "/"}
	get := func(url string) error {
		out, err := exec.Command("ip", "netns", "exec", clientNS, "curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", url).CombinedOutput()
		if err == nil && string(out) != "200" {
			err = fmt.Errorf("HTTP %s", out)
		}
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	// The Service answers before the restart, or the count means nothing.
	for what, url := range targets {
		err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
			return get(url) == nil, nil
		})
		if err != nil {
			t.Fatalf("Service by %s never answered before the restart: %v", what, get(url))
		}
	}
	stop := make(chan struct{})
	type result struct {
		sent, failed int
		first        error
	}
	results := map[string]*result{}
	done := make(chan struct{})
	for what, url := range targets {
		r := &result{}
		results[what] = r
		go func() {
			defer func() { done <- struct{}{} }()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r.sent++
				if err := get(url); err != nil {
					r.failed++
					if r.first == nil {
						r.first = err
					}
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	time.Sleep(time.Second)
	up.stop()
	up = startUp(t, dir, 2)
	defer up.stop()
	time.Sleep(2 * time.Second)
	close(stop)
	for range targets {
		<-done
	}
	for what, r := range results {
		t.Logf("by %s: %d requests across the restart, %d failed", what, r.sent, r.failed)
		if r.failed > 0 {
			t.Errorf("by %s: %d of %d requests failed across a restart of up; first: %v", what, r.failed, r.sent, r.first)
		}
	}
}

func assertNothingLeft(t *testing.T, prefix string) {
	t.Helper()
	for _, dir := range []string{"/run/netns", "/etc/netns"} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), prefix+"-") {
				t.Errorf("%s/%s left behind", dir, e.Name())
			}
		}
	}
	for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/freezer"} {
		if _, err := os.Stat(filepath.Join(root, "switchboard", prefix)); err == nil {
			t.Errorf("cgroup %s left behind", filepath.Join(root, "switchboard", prefix))
		}
	}
}

func TestBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  localcluster.Config
		want string
	}{
		{"overlapping pod and service CIDR", localcluster.Config{Nodes: 1, PodCIDR: "10.96.0.0/16"}, "overlap"},
		{"zero nodes", localcluster.Config{Nodes: 0}, "--nodes must be at least 1"},
		{"bad CIDR", localcluster.Config{Nodes: 1, NodeCIDR: "nonsense"}, "--node-cidr"},
		{"unwritable state dir", localcluster.Config{Nodes: 1, StateDir: "/proc/switchboard-state"}, "/proc/switchboard-state"},
		{"API server port out of range", localcluster.Config{Nodes: 1, APIServerPort: 70000}, "--apiserver-port 70000"},
		{"bad node port range", localcluster.Config{Nodes: 1, NodePortRange: "30000-x"}, "--service-node-port-range"},
		{"node port range beyond 65535", localcluster.Config{Nodes: 1, NodePortRange: "65000-66000"}, "--service-node-port-range"},
		{"cluster DNS outside the service CIDR", localcluster.Config{Nodes: 1, DNSIP: "10.0.0.10"}, "--cluster-dns 10.0.0.10"},
		{"too many nodes", localcluster.Config{Nodes: 201}, "--nodes 201"},
		{"unknown component to disable", localcluster.Config{Nodes: 1, Disable: []string{"kube-proxy"}}, `--disable "kube-proxy"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fresh := tc.cfg.StateDir == ""
			if fresh {
				tc.cfg.StateDir = filepath.Join(t.TempDir(), "state")
			}
			_, err := localcluster.Start(context.Background(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.want)
			}
			// Bad flags fail before anything is written (no state
			// directory, PKI or etcd data), and Validate alone says so.
			if _, err := os.Stat(tc.cfg.StateDir); fresh && err == nil {
				t.Errorf("state directory %s created by a start that failed on its flags", tc.cfg.StateDir)
			}
			if err := tc.cfg.Validate(); tc.name != "unwritable state dir" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Validate: got %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

// testLogger keeps the cluster quiet unless SWITCHBOARD_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("SWITCHBOARD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// TestRestartProxy: a node's proxy restarts on request (proxy/e2e checks
// that connections survive it); a node the cluster lacks is an error.
func TestRestartProxy(t *testing.T) {
	need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cluster.RestartProxy(ctx, "node-9"); err == nil || !strings.Contains(err.Error(), "node-9") {
		t.Errorf("restart proxy of a missing node: got %v, want an error naming it", err)
	}
	if err := cluster.RestartProxy(ctx, "node-2"); err != nil {
		t.Fatal(err)
	}
}

// TestClusterAsConformanceExpects checks what the conformance suite needs
// from `up` before its first test: every Node loses the API server's
// not-ready taint (upstream's node lifecycle controller), every namespace
// has kube-root-ca.crt, a pod pinned by required node affinity (as a
// DaemonSet's are) lands there, and default/kubernetes has the
// advertised API server endpoint (upstream's lease reconciler).
func TestClusterAsConformanceExpects(t *testing.T) {
	c := need(t)
	ctx := context.Background()
	clustertest.Eventually(t, "nodes lose the not-ready taint", time.Minute, func() error {
		nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, n := range nodes.Items {
			for _, taint := range n.Spec.Taints {
				if taint.Key == corev1.TaintNodeNotReady {
					return fmt.Errorf("node %s still tainted %v", n.Name, n.Spec.Taints)
				}
			}
		}
		return nil
	})
	ns := namespace(t, c)
	clustertest.Eventually(t, "kube-root-ca.crt in "+ns, time.Minute, func() error {
		_, err := c.CoreV1().ConfigMaps(ns).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		return err
	})
	clustertest.Eventually(t, "default/kubernetes endpoints", time.Minute, func() error {
		ep, err := c.CoreV1().Endpoints(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
		if err != nil {
			return err
		}
		want := cluster.Network.NodeCIDR.Addr().Next().String()
		if len(ep.Subsets) != 1 || len(ep.Subsets[0].Addresses) != 1 || ep.Subsets[0].Addresses[0].IP != want {
			return fmt.Errorf("subsets %+v, want address %s", ep.Subsets, want)
		}
		return nil
	})
	// A pod pinned by a matchFields term, as a DaemonSet's are, to the node
	// spreading would not pick: the one with more pods (node-2 on a tie).
	pods, err := c.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, p := range pods.Items {
		count[p.Spec.NodeName]++
	}
	target := "node-2"
	if count["node-1"] > count["node-2"] {
		target = "node-1"
	}
	pod := nginxPod("pinned")
	pod.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchFields: []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{target}}},
		}}}}}
	createPod(t, c, ns, pod)
	if p := waitPod(t, c, ns, "pinned", "scheduled", func(p *corev1.Pod) bool { return p.Spec.NodeName != "" }); p.Spec.NodeName != target {
		t.Errorf("pod pinned to %s by node affinity runs on %s", target, p.Spec.NodeName)
	}
}

// TestPodContainment: a pod's command runs as a kubelet's container does:
// PID 1 of its own PID namespace, its own mount, UTS and IPC namespaces,
// the hostname and /etc/hosts the kubelet gives (spec.hostname and
// subdomain), the securityContext's user and groups (container over pod),
// in the pod's cgroup; deleting the pod ends its whole tree.
func TestPodContainment(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	// $$$$: the kubelet reduces $$ to $ in command and args, as it expands
	// $(VAR) references, so the shell sees $$.
	script := `echo pid=$$$$; echo host=$(hostname); echo uid=$(id -u) gid=$(id -g) groups=$(id -G);
for n in ipc uts pid mnt; do echo ns-$n=$(readlink /proc/self/ns/$n); done; cat /etc/hosts; echo end;
(sleep 100000 &); exec sleep 100000`
	pod := commandPod("contained", "sh", "-c", script)
	pod.Spec.Hostname, pod.Spec.Subdomain = "h1", "sub"
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](1000), RunAsGroup: ptr.To[int64](3000),
		SupplementalGroups: []int64{4000}}
	pod.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsUser: ptr.To[int64](1234)}
	createPod(t, c, ns, pod)
	nonRoot := commandPod("nonroot", "sleep", "100000")
	nonRoot.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true)}
	createPod(t, c, ns, nonRoot)
	p := waitPod(t, c, ns, "contained", "Ready", isReady)
	waitPod(t, c, ns, "nonroot", "refused to run as root", func(p *corev1.Pod) bool {
		cs := p.Status.ContainerStatuses
		return len(cs) == 1 && cs[0].State.Waiting != nil && cs[0].State.Waiting.Reason == "CreateContainerConfigError" &&
			strings.Contains(cs[0].State.Waiting.Message, "runAsNonRoot")
	})

	var out string
	wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		b, _ := c.CoreV1().Pods(ns).GetLogs("contained", &corev1.PodLogOptions{}).DoRaw(ctx)
		out = string(b)
		return strings.Contains(out, "end\n"), nil
	})
	got := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		for _, f := range strings.Fields(line) {
			if k, v, ok := strings.Cut(f, "="); ok {
				got[k] = v
			}
		}
	}
	for k, want := range map[string]string{"pid": "1", "host": "h1", "uid": "1234", "gid": "3000"} {
		if got[k] != want {
			t.Errorf("%s = %q, want %q; container printed:\n%s", k, got[k], want, out)
		}
	}
	if !strings.Contains(out, "groups=3000 4000") {
		t.Errorf("supplementary groups: want 3000 4000; container printed:\n%s", out)
	}
	for _, n := range []string{"ipc", "uts", "pid", "mnt"} {
		host, _ := os.Readlink("/proc/self/ns/" + n)
		if got["ns-"+n] == "" || got["ns-"+n] == host {
			t.Errorf("%s namespace %q, want one of the container's own (the host's is %s)", n, got["ns-"+n], host)
		}
	}
	if want := p.Status.PodIP + "\th1.sub." + ns + ".svc.cluster.local\th1\n"; !strings.Contains(out, want) {
		t.Errorf("/etc/hosts lacks %q:\n%s", want, out)
	}

	cg := cgroupOf(t, containerPID(t, p.Status.ContainerStatuses[0].ContainerID))
	if !strings.HasSuffix(cg, "/pod-"+string(p.UID)) {
		t.Errorf("container runs in cgroup %s, want the pod's (pod-%s)", cg, p.UID)
	}
	var pids []int
	wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		pids = cgroupPIDs(cg)
		return len(pids) >= 2, nil
	})
	if len(pids) < 2 {
		t.Fatalf("pod cgroup holds %v, want PID 1 and the background sleep", pids)
	}
	grace := int64(0)
	if err := c.CoreV1().Pods(ns).Delete(context.Background(), "contained", metav1.DeleteOptions{GracePeriodSeconds: &grace}); err != nil {
		t.Fatal(err)
	}
	waitGone(t, "deleted pod's tree", pids)
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		_, err := os.Stat(cg)
		return err != nil, nil
	})
	if err != nil {
		t.Errorf("cgroup %s of the deleted pod not removed", cg)
	}
}

// TestImages runs the images the conformance suite uses without a registry:
// agnhost (linked in) as netexec and serve-hostname, pause, busybox through
// the host's shell, nginx as the echo server, and an image nothing can run,
// which waits with its reason while the others serve.
func TestImages(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	const agnhost = "registry.k8s.io/e2e-test-images/agnhost:2.56"
	pod := func(name string, ctr corev1.Container) *corev1.Pod {
		ctr.Name = "c"
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PodSpec{Containers: []corev1.Container{ctr}}}
	}
	createPod(t, c, ns, pod("netexec", corev1.Container{Image: agnhost, Args: []string{"netexec", "--http-port=8080", "--udp-port=-1"},
		Env: []corev1.EnvVar{{Name: "GREETING", Value: "hello"}}}))
	createPod(t, c, ns, pod("hostnames", corev1.Container{Image: agnhost, Command: []string{"/agnhost", "serve-hostname"}, Args: []string{"--port", "9376"}}))
	createPod(t, c, ns, pod("pause", corev1.Container{Image: "registry.k8s.io/pause:3.10"}))
	createPod(t, c, ns, pod("shell", corev1.Container{Image: "busybox", Command: []string{"sh", "-c", "echo hi $(GREETING); sleep 3600"},
		Env: []corev1.EnvVar{{Name: "GREETING", Value: "from busybox"}}}))
	createPod(t, c, ns, pod("unknown", corev1.Container{Image: "registry.example/shop/app:1.0", Command: []string{"/app", "--serve"}}))
	createPod(t, c, ns, pod("nginx", corev1.Container{Image: "nginx", Ports: []corev1.ContainerPort{{ContainerPort: 80}}}))
	// porter serves TLS with the certificate its image holds.
	createPod(t, c, ns, pod("porter", corev1.Container{Image: agnhost, Command: []string{"/agnhost", "porter"},
		Env: []corev1.EnvVar{{Name: "SERVE_PORT_80", Value: "plain"}, {Name: "SERVE_TLS_PORT_443", Value: "over tls"}}}))
	// One container runs, one never can: the pod stays Pending.
	mixed := pod("mixed", corev1.Container{Image: "registry.k8s.io/pause:3.10"})
	mixed.Spec.Containers = append(mixed.Spec.Containers, corev1.Container{Name: "never", Image: "registry.example/shop/app:1.0", Command: []string{"/app"}})
	createPod(t, c, ns, mixed)

	for _, name := range []string{"netexec", "hostnames", "pause", "shell", "nginx"} {
		waitPod(t, c, ns, name, "Ready", isReady)
	}
	netexec := waitPod(t, c, ns, "netexec", "Ready", isReady)
	hostnames := waitPod(t, c, ns, "hostnames", "Ready", isReady)

	// The agnhost containers are the linked program under its image path.
	pid := containerPID(t, netexec.Status.ContainerStatuses[0].ContainerID)
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00"); strings.Join(got, " ") != "/agnhost netexec --http-port=8080 --udp-port=-1" {
		t.Errorf("netexec container runs %q, want the image's entrypoint with the container's args", got)
	}
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, l := range strings.Split(string(st), "\n") {
			if strings.HasPrefix(l, "VmRSS:") {
				t.Logf("agnhost netexec container %s", strings.Join(strings.Fields(l), " "))
			}
		}
	}

	// From another pod: netexec's own endpoints, serve-hostname's answer.
	get := func(url string) string {
		t.Helper()
		var out string
		err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
			o, err := inPod(t, ns, "shell", "wget", "-qO-", "-T", "2", url)
			out = o
			return err == nil, nil
		})
		if err != nil {
			t.Fatalf("GET %s from pod shell: %v: %s", url, err, out)
		}
		return out
	}
	if got := get("http://" + netexec.Status.PodIP + ":8080/hostName"); got != "netexec" {
		t.Errorf("netexec /hostName = %q, want the pod's hostname", got)
	}
	if got := get("http://" + netexec.Status.PodIP + ":8080/echo?msg=x"); got != "x" {
		t.Errorf("netexec /echo?msg=x = %q", got)
	}
	if got := get("http://" + hostnames.Status.PodIP + ":9376/"); got != "hostnames" {
		t.Errorf("serve-hostname answered %q, want the pod's hostname", got)
	}

	// busybox's command ran through the host's shell, $(VAR) expanded.
	var printed string
	err = wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		b, _ := c.CoreV1().Pods(ns).GetLogs("shell", &corev1.PodLogOptions{}).DoRaw(ctx)
		printed = string(b)
		return printed == "hi from busybox\n", nil
	})
	if err != nil {
		t.Errorf("busybox container printed %q, want %q", printed, "hi from busybox\n")
	}

	// nginx is the echo server, and the pod says so.
	np := waitPod(t, c, ns, "nginx", "Ready", isReady)
	if !strings.Contains(np.Status.Message, "echo server") {
		t.Errorf("nginx pod's status message %q does not say the echo server runs it", np.Status.Message)
	}

	// The unknown image waits with its reason.
	up := waitPod(t, c, ns, "unknown", "waiting with ErrImagePull", func(p *corev1.Pod) bool {
		return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].State.Waiting != nil &&
			p.Status.ContainerStatuses[0].State.Waiting.Reason == "ErrImagePull"
	})
	if msg := up.Status.ContainerStatuses[0].State.Waiting.Message; !strings.Contains(msg, "registry.example/shop/app:1.0") {
		t.Errorf("waiting message %q does not name the image", msg)
	}
	if up.Status.Phase != corev1.PodPending {
		t.Errorf("pod with an unrunnable image is %s, want Pending", up.Status.Phase)
	}
	// Its log request fails as the kubelet's does.
	body, err := c.CoreV1().Pods(ns).GetLogs("unknown", &corev1.PodLogOptions{}).DoRaw(context.Background())
	var st metav1.Status
	if json.Unmarshal(body, &st) != nil || st.Code != 400 ||
		st.Message != `container "c" in pod "unknown" is waiting to start: image can't be pulled` {
		t.Errorf("logs of a container that cannot start: %v %s, want the kubelet's BadRequest", err, body)
	}

	// The pod phase is the kubelet's: Pending while any container has
	// not started yet, however many others run.
	mp := waitPod(t, c, ns, "mixed", "one container running, one waiting", func(p *corev1.Pod) bool {
		return len(p.Status.ContainerStatuses) == 2 && p.Status.ContainerStatuses[0].State.Running != nil &&
			p.Status.ContainerStatuses[1].State.Waiting != nil && p.Status.ContainerStatuses[1].State.Waiting.Reason == "ErrImagePull"
	})
	if mp.Status.Phase != corev1.PodPending {
		t.Errorf("pod with one container running and one waiting is %s, want Pending", mp.Status.Phase)
	}

	// porter answers on its TLS port with the image's certificate.
	porter := waitPod(t, c, ns, "porter", "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	var tlsOut string
	err = wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		tlsOut, err = inPod(t, ns, "shell", "curl", "-sk", "--max-time", "2", "https://"+porter.Status.PodIP+":443/")
		return err == nil, nil
	})
	if err != nil || tlsOut != "over tls" {
		t.Errorf("porter's TLS port 443 answered %q (%v), want %q", tlsOut, err, "over tls")
	}

	// The other pods still serve.
	if got := get("http://" + netexec.Status.PodIP + ":8080/echo?msg=still"); got != "still" {
		t.Errorf("netexec /echo after the others = %q", got)
	}
}
