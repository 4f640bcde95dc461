// Package deploy's tests apply the manifests of this directory to the real
// kube-apiserver and run each component as its ServiceAccount: with the
// rights deploy/ grants it works, and with one verb fewer it fails with the
// API server's "forbidden" in its log. They run one after another: they
// share the cluster-scoped roles and the controller's Lease.
package deploy

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"

	"github.com/switchboard/switchboard/clustertest"
	"github.com/switchboard/switchboard/endpointslice"
	"github.com/switchboard/switchboard/netnamespace"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Main(m)) }

// TestKustomizationDryRunServer is the operator's first step: the API
// server accepts every object of `kubectl apply -k deploy/` (schemas,
// priority classes, the kube-dns clusterIP in the Service range).
func TestKustomizationDryRunServer(t *testing.T) {
	clustertest.APIServer(t)
	out := kubectl(t, "apply", "--dry-run=server", "-k", ".")
	for _, want := range []string{"daemonset.apps/switchboard-proxy", "deployment.apps/switchboard-dns", "deployment.apps/switchboard-controller",
		"service/kube-dns", "poddisruptionbudget.policy/switchboard-dns", "clusterrole.rbac.authorization.k8s.io/switchboard-controller"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run did not create %s:\n%s", want, out)
		}
	}
}

// TestControllerWithItsServiceAccount runs two controller replicas as the
// switchboard-controller ServiceAccount: one leads and writes slices; killed
// (its Lease not released), the other takes over once the lease expires and
// serves a Service created meanwhile; stopped with SIGTERM, it releases the
// Lease. Then, without "create" on endpointslices, and without "update" on
// its Lease, the controller logs the API server's refusal.
func TestControllerWithItsServiceAccount(t *testing.T) {
	admin := applyDeploy(t)
	ns := clustertest.Namespace(t, admin)
	kc := serviceAccountKubeconfig(t, admin, "switchboard-controller")
	args := []string{"controller", "--kubeconfig", kc, "--leader-elect-lease-duration=3s", "--leader-elect-renew-deadline=2s", "--leader-elect-retry-period=250ms"}

	a := start(t, args...)
	waitLog(t, a, "leading: started syncing")
	b := start(t, args...)
	waitLog(t, b, "standing by")
	createService(t, admin, ns, "before")
	waitSlice(t, admin, ns, "before")

	a.kill()
	createService(t, admin, ns, "during-failover")
	waitLog(t, b, "leading: started syncing")
	waitSlice(t, admin, ns, "during-failover")
	b.stop(t)
	lease, err := admin.CoordinationV1().Leases("kube-system").Get(context.Background(), "switchboard-controller", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if h := ptr.Deref(lease.Spec.HolderIdentity, ""); h != "" {
		t.Errorf("lease still held by %q after the leader's SIGTERM: it should release it", h)
	}

	withoutVerb(t, admin, "switchboard-controller", "endpointslices", "create")
	c := start(t, args...)
	createService(t, admin, ns, "forbidden")
	waitLog(t, c, "is forbidden", "system:serviceaccount:kube-system:switchboard-controller", "cannot create resource", "endpointslices")
	c.kill()

	// Leader election's Role: without "update" on its Lease (released
	// above, so taking it is an update) no replica can lead, and the log
	// says why.
	kubectl(t, "apply", "-k", ".")
	withoutNamespacedVerb(t, admin, "switchboard-controller-leader-election", "leases", "update")
	d := start(t, args...)
	waitLog(t, d, "is forbidden", "system:serviceaccount:kube-system:switchboard-controller", "cannot update resource", "leases")
}

// TestDNSWithItsServiceAccount serves a Service's name as the
// switchboard-dns ServiceAccount; without "watch" on Services, Namespaces
// and Pods, dns logs the refusal.
func TestDNSWithItsServiceAccount(t *testing.T) {
	admin := applyDeploy(t)
	ns := clustertest.Namespace(t, admin)
	svc := createService(t, admin, ns, "web")
	kc := serviceAccountKubeconfig(t, admin, "switchboard-dns")
	run := func() (*proc, string, string) {
		addr, health := freePort(t), freePort(t)
		return start(t, "dns", "--kubeconfig", kc, "--listen", addr, "--health-listen", health, "--upstream", "127.0.0.1:9"), addr, health
	}
	d, addr, health := run()
	clustertest.Eventually(t, "dns ready", time.Minute, func() error { return ready(health) })
	m := new(dns.Msg)
	m.SetQuestion("web."+ns+".svc.cluster.local.", dns.TypeA)
	r, err := dns.Exchange(m, addr)
	if err != nil {
		t.Fatalf("query: %v (log:\n%s)", err, d.log())
	}
	if a, ok := answerA(r); !ok || a != svc.Spec.ClusterIP {
		t.Fatalf("web.%s: %v, want %s", ns, r.Answer, svc.Spec.ClusterIP)
	}
	d.stop(t)

	withoutVerb(t, admin, "switchboard-dns", "services", "watch")
	// client-go's informers fall back from a watch to a list, so dns
	// (like CoreDNS) still starts, from a snapshot it cannot keep
	// current: the log says why.
	d, _, _ = run()
	waitLog(t, d, "is forbidden", "system:serviceaccount:kube-system:switchboard-dns", "cannot watch resource", "services")
}

// TestProxyWithItsServiceAccount programs a Service into a network
// namespace's nftables as the switchboard-proxy ServiceAccount; without
// "watch" on EndpointSlices the proxy logs the refusal.
func TestProxyWithItsServiceAccount(t *testing.T) {
	clustertest.RequireRoot(t)
	admin := applyDeploy(t)
	ns := clustertest.Namespace(t, admin)
	svc := createService(t, admin, ns, "web")
	clustertest.ApplySlice(t, admin, ns, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.0.5"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
	})
	netnsName, path := clustertest.NetNS(t, "sbrbac")
	kc := serviceAccountKubeconfig(t, admin, "switchboard-proxy")
	// The first run reads kube-proxy's file, as the DaemonSet does: the
	// kubeconfig and verbosity come from it, the flag's node name wins over
	// its hostnameOverride, and the conntrack section is named as ignored.
	config := filepath.Join(t.TempDir(), "config.conf")
	if err := os.WriteFile(config, []byte(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
hostnameOverride: not-this-node
clientConnection:
  kubeconfig: `+kc+`
clusterCIDR: 10.244.0.0/16
healthzBindAddress: ""
metricsBindAddress: ""
conntrack:
  maxPerCore: 32768
logging:
  verbosity: 4
`), 0o600); err != nil {
		t.Fatal(err)
	}
	p := start(t, "proxy", "--config", config, "--hostname-override", "rbac-node", "--node-ip", "10.0.0.1", "--netns", path,
		"--healthz-bind-address", "", "--metrics-bind-address", "")
	waitLog(t, p, "kube-proxy configuration field not applied", "conntrack")
	waitLog(t, p, "proxy started", "node=rbac-node")
	waitLog(t, p, "level=DEBUG", "synced")
	clustertest.Eventually(t, "the Service's cluster IP in the proxy's table", time.Minute, func() error {
		out, err := netnamespace.Exec(netnsName, "nft", "list", "table", "ip", "switchboard")
		if err != nil {
			return err
		}
		if !strings.Contains(out, svc.Spec.ClusterIP) || !strings.Contains(out, "10.244.0.5") {
			return fmt.Errorf("%s or 10.244.0.5 not programmed; proxy log:\n%s", svc.Spec.ClusterIP, p.log())
		}
		return nil
	})
	p.stop(t)
	// SIGTERM leaves the rules for the next proxy to adopt.
	if out, err := netnamespace.Exec(netnsName, "nft", "list", "table", "ip", "switchboard"); err != nil || !strings.Contains(out, svc.Spec.ClusterIP) {
		t.Errorf("rules gone after SIGTERM: %v\n%s", err, out)
	}

	withoutVerb(t, admin, "switchboard-proxy", "endpointslices", "watch")
	p = start(t, "proxy", "--kubeconfig", kc, "--hostname-override", "rbac-node", "--node-ip", "10.0.0.1",
		"--netns", path, "--healthz-bind-address", "", "--metrics-bind-address", "")
	waitLog(t, p, "is forbidden", "system:serviceaccount:kube-system:switchboard-proxy", "cannot watch resource", "endpointslices")
	p.stop(t)

	// --cleanup removes the table and exits.
	if out, err := exec.Command(switchboard(t), "proxy", "--cleanup", "--netns", path).CombinedOutput(); err != nil {
		t.Fatalf("proxy --cleanup: %v\n%s", err, out)
	}
	if out, err := netnamespace.Exec(netnsName, "nft", "list", "tables"); err != nil || strings.Contains(out, "switchboard") {
		t.Errorf("after --cleanup: %v\n%s", err, out)
	}
}

// applyDeploy applies deploy/ (`kubectl apply -k`) to the test API server
// once per test, so each test starts from the manifests' own rights, and
// returns an admin client.
func applyDeploy(t *testing.T) kubernetes.Interface {
	t.Helper()
	admin, _ := clustertest.Client(t)
	kubectl(t, "apply", "-k", ".")
	return admin
}

// withoutVerb removes verb from every rule of ClusterRole role that covers
// resource; the next test's applyDeploy restores it.
func withoutVerb(t *testing.T, admin kubernetes.Interface, role, resource, verb string) {
	t.Helper()
	ctx := context.Background()
	cr, err := admin.RbacV1().ClusterRoles().Get(ctx, role, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cr.Rules = dropVerb(t, "ClusterRole "+role, cr.Rules, resource, verb)
	if _, err := admin.RbacV1().ClusterRoles().Update(ctx, cr, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kubectl(t, "apply", "-k", ".") })
}

// withoutNamespacedVerb is withoutVerb for Role kube-system/role.
func withoutNamespacedVerb(t *testing.T, admin kubernetes.Interface, role, resource, verb string) {
	t.Helper()
	ctx := context.Background()
	r, err := admin.RbacV1().Roles("kube-system").Get(ctx, role, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r.Rules = dropVerb(t, "Role kube-system/"+role, r.Rules, resource, verb)
	if _, err := admin.RbacV1().Roles("kube-system").Update(ctx, r, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kubectl(t, "apply", "-k", ".") })
}

// dropVerb is rules without verb on resource; it fails the test when no
// rule granted it (the test would prove nothing).
func dropVerb(t *testing.T, role string, rules []rbacv1.PolicyRule, resource, verb string) []rbacv1.PolicyRule {
	t.Helper()
	found := false
	for i, r := range rules {
		if slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
			rules[i].Verbs = slices.DeleteFunc(slices.Clone(r.Verbs), func(v string) bool { return v == verb })
			found = true
		}
	}
	if !found {
		t.Fatalf("%s grants no %s on %s", role, verb, resource)
	}
	return rules
}

// serviceAccountKubeconfig writes a kubeconfig that authenticates as
// kube-system/sa with a token from the TokenRequest API, as a pod's
// projected token does.
func serviceAccountKubeconfig(t *testing.T, admin kubernetes.Interface, sa string) string {
	t.Helper()
	tr, err := admin.CoreV1().ServiceAccounts("kube-system").CreateToken(context.Background(), sa,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s: %v", sa, err)
	}
	rc := clustertest.APIServer(t).RESTConfig
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: rc.Host, CertificateAuthority: rc.CAFile, CertificateAuthorityData: rc.CAData}
	cfg.AuthInfos[sa] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: sa}
	cfg.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), sa+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func createService(t *testing.T, admin kubernetes.Interface, ns, name string) *corev1.Service {
	t.Helper()
	svc, err := admin.CoreV1().Services(ns).Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func waitSlice(t *testing.T, admin kubernetes.Interface, ns, svc string) {
	t.Helper()
	clustertest.Eventually(t, "EndpointSlice of "+ns+"/"+svc, time.Minute, func() error {
		l, err := admin.DiscoveryV1().EndpointSlices(ns).List(context.Background(), metav1.ListOptions{
			LabelSelector: discoveryv1.LabelServiceName + "=" + svc + "," + discoveryv1.LabelManagedBy + "=" + endpointslice.ManagedBy})
		if err != nil {
			return err
		}
		if len(l.Items) == 0 {
			return fmt.Errorf("none yet")
		}
		return nil
	})
}

// answerA is the one A record of r.
func answerA(r *dns.Msg) (string, bool) {
	if len(r.Answer) != 1 {
		return "", false
	}
	a, ok := r.Answer[0].(*dns.A)
	if !ok {
		return "", false
	}
	return a.A.String(), true
}

func ready(health string) error {
	resp, err := http.Get("http://" + health + "/ready")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/ready: %s", resp.Status)
	}
	return nil
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// proc is a switchboard component running as a child process.
type proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func start(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(switchboard(t), args...), out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("switchboard %s:\n%s", strings.Join(args, " "), p.log())
		}
	})
	return p
}

func (p *proc) log() string { return p.out.String() }

func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		t.Fatalf("no exit a minute after SIGTERM:\n%s", p.log())
	}
	if !p.cmd.ProcessState.Success() {
		t.Errorf("exit after SIGTERM: %v\n%s", p.cmd.ProcessState, p.log())
	}
}

// waitLog waits for a line of p's log that holds every one of parts (the
// log quotes values, so a message is matched by its words).
func waitLog(t *testing.T, p *proc, parts ...string) {
	t.Helper()
	clustertest.Eventually(t, fmt.Sprintf("a log line with %q", parts), time.Minute, func() error {
		for _, line := range strings.Split(p.log(), "\n") {
			if !slices.ContainsFunc(parts, func(s string) bool { return !strings.Contains(line, s) }) {
				return nil
			}
		}
		select {
		case <-p.done:
			t.Fatalf("exited (%v) before logging %q:\n%s", p.cmd.ProcessState, parts, p.log())
		default:
		}
		return fmt.Errorf("not yet in:\n%s", p.log())
	})
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// switchboard builds cmd/switchboard once per test binary (as the README
// tutorial's test does, so the build cache serves both).
func switchboard(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "switchboard-deploy-test-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "switchboard")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/switchboard")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build switchboard: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// kubectl runs kubectl as the test API server's admin, from this directory.
func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("kubectl")
	if err != nil {
		bin = filepath.Join("..", "bin", "kubectl")
		if _, err := os.Stat(bin); err != nil {
			clustertest.Skip(t, "needs kubectl on PATH or bin/kubectl (scripts/deps)")
		}
	}
	out, err := exec.Command(bin, append([]string{"--kubeconfig", clustertest.APIServer(t).KubeconfigPath}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
