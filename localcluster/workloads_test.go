package localcluster_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/switchboard/switchboard/clustertest"
)

// The tests of this file are what a new user types in the first ten
// minutes, with the system's kubectl on the shared two-node cluster:
// upstream's workload controllers (in process) making pods, the Services
// in front of them following, and a namespace's deletion taking everything
// of it away, down to processes, cgroups, network namespaces and rules.

// kubectlApply applies manifest (YAML) in namespace ns.
func kubectlApply(t *testing.T, ns, manifest string) {
	t.Helper()
	cmd := kubectl(t, "-n", ns, "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(manifest)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kubectl apply: %v\n%s\n%s", err, out, manifest)
	}
}

// clientPod runs a pod to send traffic and DNS queries from (the host's
// curl and getent, through the busybox image), and returns its name.
func clientPod(t *testing.T, c kubernetes.Interface, ns string) string {
	t.Helper()
	runningPod(t, c, ns, commandPod("client", "sleep", "3600"))
	return "client"
}

// currentPods waits until the pods matching selector are exactly want in
// number, each Ready and none terminating, and returns their IPs by name.
func currentPods(t *testing.T, c kubernetes.Interface, ns, selector string, want int) map[string]string {
	t.Helper()
	var ips map[string]string
	var last string
	clustertest.Eventually(t, fmt.Sprintf("%d Ready pods %s", want, selector), 2*time.Minute, func() error {
		pods, err := c.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return err
		}
		ips = map[string]string{}
		var states []string
		for _, p := range pods.Items {
			states = append(states, fmt.Sprintf("%s(ready=%v deleting=%v ip=%s)", p.Name, isReady(&p), p.DeletionTimestamp != nil, p.Status.PodIP))
			if isReady(&p) && p.DeletionTimestamp == nil && p.Status.PodIP != "" {
				ips[p.Name] = p.Status.PodIP
			}
		}
		last = strings.Join(states, " ")
		if len(pods.Items) != want || len(ips) != want {
			return fmt.Errorf("pods: %s", last)
		}
		return nil
	})
	return ips
}

// sliceAddresses is the set of ready endpoint addresses of a Service's
// EndpointSlices.
func sliceAddresses(c kubernetes.Interface, ns, svc string) ([]string, error) {
	slices, err := c.DiscoveryV1().EndpointSlices(ns).List(context.Background(),
		metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
	if err != nil {
		return nil, err
	}
	var addrs []string
	for _, s := range slices.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready == nil || *e.Conditions.Ready {
				addrs = append(addrs, e.Addresses...)
			}
		}
	}
	sort.Strings(addrs)
	return addrs, nil
}

func sortedValues(m map[string]string) []string {
	var v []string
	for _, x := range m {
		v = append(v, x)
	}
	sort.Strings(v)
	return v
}

var echoPodRE = regexp.MustCompile(`"pod":"([^"]+)"`)

// responders sends n requests to url from pod client (one kubectl exec)
// and returns which pods answered, by name, with how many answers each.
func responders(t *testing.T, ns, client, url string, n int) map[string]int {
	t.Helper()
	out := kubectlOut(t, "-n", ns, "exec", client, "--", "sh", "-c",
		fmt.Sprintf(`i=0; while [ $i -lt %d ]; do curl -s -m 2 %s; echo; i=$((i+1)); done`, n, url))
	got := map[string]int{}
	for _, m := range echoPodRE.FindAllStringSubmatch(out, -1) {
		got[m[1]]++
	}
	return got
}

// TestDeploymentScale: `kubectl create deployment web --image=nginx` as a
// user types it (no ports declared: nginx's image listens on 80), exposed
// with `kubectl expose`, scaled 3 → 5 → 3: each time the Service's
// EndpointSlices list exactly the current pods, and requests to its
// ClusterIP reach all of them and no other.
func TestDeploymentScale(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	kubectlOut(t, "-n", ns, "create", "deployment", "web", "--image=nginx", "--replicas=3")
	kubectlOut(t, "-n", ns, "expose", "deployment", "web", "--port=80")
	client := clientPod(t, c, ns)
	svc, err := c.CoreV1().Services(ns).Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, replicas := range []int{3, 5, 3} {
		kubectlOut(t, "-n", ns, "scale", "deployment/web", fmt.Sprintf("--replicas=%d", replicas))
		kubectlOut(t, "-n", ns, "rollout", "status", "deployment/web", "--timeout=2m")
		pods := currentPods(t, c, ns, "app=web", replicas)
		want := sortedValues(pods)
		clustertest.Eventually(t, fmt.Sprintf("%d replicas: EndpointSlices list the pods", replicas), time.Minute, func() error {
			got, err := sliceAddresses(c, ns, "web")
			if err != nil {
				return err
			}
			if !slices.Equal(got, want) {
				return fmt.Errorf("ready addresses %v, want the pods' %v", got, want)
			}
			return nil
		})
		// The proxies converge after the slices: a round in which a pod
		// that is gone answers (or none of them) starts the count again;
		// the test ends once every current pod answered and only they did.
		seen := map[string]int{}
		clustertest.Eventually(t, fmt.Sprintf("%d replicas: traffic to %s:80 reaches exactly the pods", replicas, svc.Spec.ClusterIP), time.Minute, func() error {
			got := responders(t, ns, client, "http://"+svc.Spec.ClusterIP+":80/", 10*replicas)
			for name := range got {
				if _, ok := pods[name]; !ok {
					seen = map[string]int{}
					return fmt.Errorf("pod %s answered; current pods %v", name, pods)
				}
			}
			if len(got) == 0 {
				return fmt.Errorf("no answer")
			}
			for name, n := range got {
				seen[name] += n
			}
			if len(seen) != len(pods) {
				return fmt.Errorf("answered so far: %v; pods %v", seen, pods)
			}
			return nil
		})
		t.Logf("%d replicas: answers per pod %v", replicas, seen)
	}
	// The name resolves to the same Service from the client.
	if got := responders(t, ns, client, "http://web."+ns+".svc.cluster.local/", 3); len(got) == 0 {
		t.Errorf("http://web.%s.svc.cluster.local/: no pod answered", ns)
	}
}

const statefulSetManifest = `apiVersion: v1
kind: Service
metadata:
  name: nginx
  labels: {app: nginx}
spec:
  clusterIP: None
  selector: {app: nginx}
  ports:
  - {port: 80, name: web}
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: nginx
  replicas: 3
  selector:
    matchLabels: {app: nginx}
  template:
    metadata:
      labels: {app: nginx}
    spec:
      containers:
      - name: nginx
        image: registry.k8s.io/nginx-slim:0.21
        ports:
        - {containerPort: 80, name: web}
`

// TestStatefulSet: the StatefulSet tutorial's web behind the headless
// Service nginx: pods web-0..2, each with its stable hostname (kernel
// hostname, /etc/hosts) and DNS name web-N.nginx.NS.svc.cluster.local
// resolving, from another pod, to its IP; a deleted pod comes back under
// the same name and hostname, and its DNS name follows its new pod.
func TestStatefulSet(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	kubectlApply(t, ns, statefulSetManifest)
	client := clientPod(t, c, ns)
	kubectlOut(t, "-n", ns, "rollout", "status", "statefulset/web", "--timeout=3m")
	pods := currentPods(t, c, ns, "app=nginx", 3)
	for i := range 3 {
		if _, ok := pods[fmt.Sprintf("web-%d", i)]; !ok {
			t.Fatalf("pods %v, want web-0, web-1, web-2", pods)
		}
	}

	// checkIdentity checks pod name's hostname and DNS name against ip.
	checkIdentity := func(name, ip string) {
		t.Helper()
		fqdn := fmt.Sprintf("%s.nginx.%s.svc.cluster.local", name, ns)
		if got := strings.TrimSpace(kubectlOut(t, "-n", ns, "exec", name, "--", "hostname")); got != name {
			t.Errorf("pod %s: hostname %q", name, got)
		}
		hosts := kubectlOut(t, "-n", ns, "exec", name, "--", "cat", "/etc/hosts")
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(ip) + `\s+` + regexp.QuoteMeta(fqdn) + `\s+` + name + `\s*$`).MatchString(hosts) {
			t.Errorf("pod %s: /etc/hosts has no line %q:\n%s", name, ip+"\t"+fqdn+"\t"+name, hosts)
		}
		clustertest.Eventually(t, fqdn+" resolves to "+ip+" from pod "+client, time.Minute, func() error {
			cmd := kubectl(t, "-n", ns, "exec", client, "--", "getent", "ahostsv4", fqdn)
			out, err := cmd.CombinedOutput()
			if err != nil {
				return fmt.Errorf("getent: %v %s", err, out)
			}
			if f := strings.Fields(string(out)); len(f) == 0 || f[0] != ip || strings.Count(string(out), "STREAM") != 1 {
				return fmt.Errorf("getent ahostsv4 %s: %q", fqdn, out)
			}
			return nil
		})
	}
	for name, ip := range pods {
		checkIdentity(name, ip)
	}
	// The headless Service's name resolves to every pod.
	out := kubectlOut(t, "-n", ns, "exec", client, "--", "getent", "ahostsv4", "nginx."+ns+".svc.cluster.local")
	for name, ip := range pods {
		if !strings.Contains(out, ip+" ") {
			t.Errorf("nginx.%s.svc.cluster.local: %q, want %s's %s", ns, out, name, ip)
		}
	}

	// Delete web-1: the controller makes it again, same name.
	old, err := c.CoreV1().Pods(ns).Get(context.Background(), "web-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kubectlOut(t, "-n", ns, "delete", "pod", "web-1", "--timeout=2m")
	again := waitPod(t, c, ns, "web-1", "back and Ready", func(p *corev1.Pod) bool {
		return p.UID != old.UID && isReady(p) && p.DeletionTimestamp == nil && p.Status.PodIP != ""
	})
	t.Logf("web-1: %s (uid %s) -> %s (uid %s)", old.Status.PodIP, old.UID, again.Status.PodIP, again.UID)
	if again.Status.PodIP == old.Status.PodIP {
		// As with CNI host-local, a released address is handed out last;
		// the same address would also leave the DNS check below blind.
		t.Errorf("recreated web-1 got its predecessor's IP %s", old.Status.PodIP)
	}
	checkIdentity("web-1", again.Status.PodIP)
}

// daemonSetPort is the DaemonSet's pods' port in their nodes' network
// namespaces; no other test of the package uses it.
const daemonSetPort = 18090

// TestDaemonSetHostNetwork: a DaemonSet of hostNetwork pods gets one pod
// per node, with its node's IP, serving in its node's network namespace
// (its hostname, asked at the node's IP, is the node's name).
func TestDaemonSetHostNetwork(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	kubectlApply(t, ns, fmt.Sprintf(`apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: node-agent
spec:
  selector:
    matchLabels: {app: node-agent}
  template:
    metadata:
      labels: {app: node-agent}
    spec:
      hostNetwork: true
      containers:
      - name: agent
        image: registry.k8s.io/e2e-test-images/agnhost:2.53
        args: [netexec, --http-port=%d, --udp-port=-1]
        ports:
        - {containerPort: %d}
`, daemonSetPort, daemonSetPort))
	client := clientPod(t, c, ns)
	kubectlOut(t, "-n", ns, "rollout", "status", "daemonset/node-agent", "--timeout=2m")
	nodes := cluster.Nodes()
	currentPods(t, c, ns, "app=node-agent", len(nodes))
	pods, err := c.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=node-agent"})
	if err != nil {
		t.Fatal(err)
	}
	onNode := map[string]corev1.Pod{}
	for _, p := range pods.Items {
		if prev, ok := onNode[p.Spec.NodeName]; ok {
			t.Errorf("node %s runs two pods: %s and %s", p.Spec.NodeName, prev.Name, p.Name)
		}
		onNode[p.Spec.NodeName] = p
	}
	for _, n := range nodes {
		p, ok := onNode[n.Name]
		if !ok {
			t.Errorf("node %s runs no pod of the DaemonSet", n.Name)
			continue
		}
		if p.Status.PodIP != n.IP.String() || p.Status.HostIP != n.IP.String() {
			t.Errorf("pod %s on %s: podIP %s hostIP %s, want the node's %s", p.Name, n.Name, p.Status.PodIP, p.Status.HostIP, n.IP)
		}
		if _, err := os.Stat("/run/netns/" + cluster.Network.PodNS(ns, p.Name)); err == nil {
			t.Errorf("hostNetwork pod %s got a network namespace of its own", p.Name)
		}
		// Ready without a probe means started, maybe not yet listening.
		url := fmt.Sprintf("http://%s:%d/hostname", n.IP, daemonSetPort)
		clustertest.Eventually(t, url+" answers with node "+n.Name+"'s hostname", 30*time.Second, func() error {
			out, err := kubectl(t, "-n", ns, "exec", client, "--", "curl", "-sS", "-m", "5", url).CombinedOutput()
			if err != nil || string(out) != n.Name {
				return fmt.Errorf("%v: %q", err, out)
			}
			return nil
		})
	}
	if t.Failed() {
		t.Logf("pods: %+v", onNode)
	}
}

// TestNamespaceDeletion: `kubectl delete namespace` empties it: its
// objects go, and with its pods their processes (a grandchild too), their
// cgroups and network namespaces, and with its Services their rules in
// every node's proxy.
func TestNamespaceDeletion(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	kubectlOut(t, "-n", ns, "create", "deployment", "web", "--image=nginx", "--replicas=2")
	kubectlOut(t, "-n", ns, "expose", "deployment", "web", "--port=80")
	// A pod whose shell starts a grandchild. As PID 1 of its container it
	// ignores SIGTERM: the grace period's end kills it, keep that short.
	tree := commandPod("tree", "sh", "-c", "sleep 3600 & wait")
	tree.Spec.TerminationGracePeriodSeconds = ptr.To[int64](2)
	runningPod(t, c, ns, tree)
	kubectlOut(t, "-n", ns, "rollout", "status", "deployment/web", "--timeout=2m")
	currentPods(t, c, ns, "app=web", 2)
	svc, err := c.CoreV1().Services(ns).Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pods, err := c.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	var cgroups, netnss []string
	for _, p := range pods.Items {
		if len(p.Status.ContainerStatuses) == 0 {
			t.Fatalf("pod %s has no container status", p.Name)
		}
		cg := cgroupOf(t, containerPID(t, p.Status.ContainerStatuses[0].ContainerID))
		cgroups = append(cgroups, cg)
		if p.Name == "tree" {
			// Running means the shell started; its child may not have.
			clustertest.Eventually(t, "pod tree runs its grandchild", 30*time.Second, func() error {
				if got := cgroupPIDs(cg); len(got) < 2 {
					return fmt.Errorf("cgroup %s holds %v", cg, got)
				}
				return nil
			})
		}
		pids = append(pids, cgroupPIDs(cg)...)
		netns := "/run/netns/" + cluster.Network.PodNS(ns, p.Name)
		if _, err := os.Stat(netns); err != nil {
			t.Fatalf("pod %s: %v", p.Name, err)
		}
		netnss = append(netnss, netns)
	}
	// Every node's proxy has programmed the Service: its ClusterIP is in
	// the node's ruleset.
	rulesWith := func(ip string) []string {
		var nodes []string
		for _, n := range cluster.Nodes() {
			out, err := exec.Command("ip", "netns", "exec", cluster.Network.NodeNS(n.Name), "nft", "list", "ruleset").CombinedOutput()
			if err != nil {
				t.Fatalf("nft list ruleset on %s: %v %s", n.Name, err, out)
			}
			if regexp.MustCompile(`\b` + regexp.QuoteMeta(ip) + `\b`).Match(out) {
				nodes = append(nodes, n.Name)
			}
		}
		return nodes
	}
	clustertest.Eventually(t, "every node programs the Service", time.Minute, func() error {
		if got := rulesWith(svc.Spec.ClusterIP); len(got) != len(cluster.Nodes()) {
			return fmt.Errorf("ClusterIP %s in the rules of nodes %v", svc.Spec.ClusterIP, got)
		}
		return nil
	})

	kubectlOut(t, "delete", "namespace", ns, "--timeout=3m")
	if _, err := c.CoreV1().Namespaces().Get(context.Background(), ns, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("namespace %s after kubectl delete: %v", ns, err)
	}
	waitGone(t, "deleted namespace's pods", pids)
	clustertest.Eventually(t, "pods' cgroups and network namespaces removed", 30*time.Second, func() error {
		for _, p := range append(slices.Clone(cgroups), netnss...) {
			if _, err := os.Stat(p); err == nil {
				return fmt.Errorf("%s still exists", p)
			}
		}
		return nil
	})
	clustertest.Eventually(t, "Service's rules removed from every node", 30*time.Second, func() error {
		if got := rulesWith(svc.Spec.ClusterIP); len(got) != 0 {
			return fmt.Errorf("ClusterIP %s still in the rules of nodes %v", svc.Spec.ClusterIP, got)
		}
		return nil
	})
}

// TestKubectlLogsFollow: `kubectl logs -f` on a running pod streams the
// lines it prints as it prints them: consecutive lines arrive, in order,
// while the container goes on running; and `kubectl logs deploy/NAME`
// finds a Deployment's pod, as users type it.
func TestKubectlLogsFollow(t *testing.T) {
	c := need(t)
	ns := namespace(t, c)
	runningPod(t, c, ns, commandPod("ticker", "sh", "-c", `i=0; while :; do echo "tick $i"; i=$((i+1)); sleep 0.2; done`))
	follow := kubectl(t, "-n", ns, "logs", "-f", "ticker")
	stdout, err := follow.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { follow.Process.Kill(); follow.Wait() })
	sc := bufio.NewScanner(stdout)
	first := -1
	for n := 0; n < 15; n++ { // the lines written before, then 10 new ones
		if !sc.Scan() {
			t.Fatalf("kubectl logs -f ended after %d lines: %v", n, sc.Err())
		}
		var i int
		if _, err := fmt.Sscanf(sc.Text(), "tick %d", &i); err != nil {
			t.Fatalf("kubectl logs -f: line %q", sc.Text())
		}
		if first < 0 {
			first = i
		} else if i != first+n {
			t.Fatalf("kubectl logs -f: line %d is %q, want tick %d", n, sc.Text(), first+n)
		}
	}
	// Lines arrived while the container runs, not at its end.
	p, err := c.CoreV1().Pods(ns).Get(context.Background(), "ticker", metav1.GetOptions{})
	if err != nil || len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].State.Running == nil {
		t.Fatalf("ticker no longer running: %v %+v", err, p.Status.ContainerStatuses)
	}

	kubectlOut(t, "-n", ns, "create", "deployment", "printer", "--image=busybox", "--", "sh", "-c", "echo hello from $HOSTNAME; sleep 3600")
	kubectlOut(t, "-n", ns, "rollout", "status", "deployment/printer", "--timeout=2m")
	pods := currentPods(t, c, ns, "app=printer", 1)
	var want string
	for name := range pods {
		want = "hello from " + name + "\n"
	}
	clustertest.Eventually(t, "kubectl logs deploy/printer", 30*time.Second, func() error {
		if got := kubectlOut(t, "-n", ns, "logs", "deploy/printer"); got != want {
			return fmt.Errorf("%q, want %q", got, want)
		}
		return nil
	})
}
