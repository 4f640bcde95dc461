// Package controlplane runs a Kubernetes control plane inside the current
// process: an embedded etcd and the real kube-apiserver from k8s.io/kubernetes,
// serving on loopback with their own CA. It is what `switchboard up` and the
// tests' API harness stand on, so every behaviour that crosses the API is the
// real API server's behaviour, not a fake's.
package controlplane

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

func init() {
	// The API server applies its logging configuration on start; a second
	// start in the same process (tests) must not fail on that.
	logsapi.ReapplyHandling = logsapi.ReapplyHandlingIgnoreUnchanged
}

// Config says where and how to run the control plane.
type Config struct {
	// StateDir holds etcd's data, the PKI and the admin kubeconfig. Reusing a
	// directory brings back the same cluster.
	StateDir string
	// ServiceCIDR is the range ClusterIPs come from (default 10.96.0.0/16);
	// an IPv4 and an IPv6 range, comma-separated as kube-apiserver's
	// --service-cluster-ip-range, make the cluster dual-stack, the first
	// being the primary family.
	ServiceCIDR string
	// NodePortRange is the range NodePorts come from (default 30000-32767).
	NodePortRange string
	// APIServerPort is the loopback port to serve on; 0 picks a free one.
	APIServerPort int
	// AdvertiseAddress is where the cluster's pods reach the API server: the
	// address the `kubernetes` Service's endpoints name, kept by upstream's
	// lease endpoint reconciler, and one of the serving certificate's SANs.
	// Unset (or loopback, which an endpoint may not be) advertises 127.0.0.1
	// and leaves the Service without endpoints.
	AdvertiseAddress netip.Addr
	// ClusterEgressSocket is a unix socket speaking HTTP CONNECT through
	// which the API server reaches nodes and pods (kube-apiserver's egress
	// selector "cluster": kubelets, pods/proxy, services/proxy, webhooks).
	// Empty dials directly from this process's network namespace.
	ClusterEgressSocket string
	// LogOutput receives the API server's and etcd's own logs (klog, zap).
	// Nil discards them: they are verbose and rarely what a user wants.
	LogOutput io.Writer
	// Profiling serves /debug/pprof/ on the API server (kube-apiserver's
	// --profiling, for its admin): the profiles are this whole process's.
	Profiling bool
}

// ControlPlane is a running etcd and kube-apiserver.
type ControlPlane struct {
	// RESTConfig authenticates as the cluster admin (system:masters).
	RESTConfig *rest.Config
	// KubeconfigPath is the admin kubeconfig written into the state dir.
	KubeconfigPath string
	// Client is a clientset built from RESTConfig.
	Client kubernetes.Interface
	// PKI is the cluster's CA and keys (the controller manager signs
	// service-account tokens and CSRs with them; kubelets' serving
	// certificates come from it).
	PKI PKI

	// EtcdSocket is the unix socket etcd serves on; its directory is
	// mode 0700, so only this process's user can connect.
	EtcdSocket string

	cancel        context.CancelFunc
	done          chan struct{}
	err           error
	etcd          *embed.Etcd
	tempSocketDir string
}

// apiServerOnce guards against a second kube-apiserver in one process: it
// registers global metrics, feature gates and admission plugins, so the test
// harness shares one instance per test binary instead.
var apiServerOnce sync.Mutex
var apiServerRunning bool

// Validate checks the configuration without touching anything, so bad
// input fails before a state directory, a PKI or etcd exists.
func (cfg Config) Validate() error {
	_, err := cfg.serviceCIDRs()
	if err != nil {
		return err
	}
	if cfg.NodePortRange != "" {
		// Named as kube-apiserver's flag (and `up`'s) that takes it.
		pr, err := utilnet.ParsePortRange(cfg.NodePortRange)
		if err != nil {
			return fmt.Errorf("--service-node-port-range %q: %w", cfg.NodePortRange, err)
		}
		if pr.Base < 1 || pr.Base+pr.Size-1 > 65535 {
			return fmt.Errorf("--service-node-port-range %q: ports must be within 1-65535", cfg.NodePortRange)
		}
	}
	if cfg.APIServerPort < 0 || cfg.APIServerPort > 65535 {
		return fmt.Errorf("API server port %d: want 0 (any free port) to 65535", cfg.APIServerPort)
	}
	if cfg.StateDir == "" {
		return errors.New("state directory: empty path")
	}
	return nil
}

// serviceCIDRs parses ServiceCIDR (default 10.96.0.0/16): one range, or an
// IPv4 and an IPv6 range, the first being the primary family.
func (cfg Config) serviceCIDRs() ([]netip.Prefix, error) {
	cidrs := cfg.ServiceCIDR
	if cidrs == "" {
		cidrs = "10.96.0.0/16"
	}
	var prefixes []netip.Prefix
	for _, c := range strings.Split(cidrs, ",") {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			return nil, fmt.Errorf("service CIDR %q: %w", cidrs, err)
		}
		prefixes = append(prefixes, p)
	}
	if len(prefixes) > 2 || len(prefixes) == 2 && prefixes[0].Addr().Is4() == prefixes[1].Addr().Is4() {
		return nil, fmt.Errorf("service CIDR %q: want one range, or one IPv4 and one IPv6 range", cidrs)
	}
	return prefixes, nil
}

// Start brings up etcd and the API server and returns once the API server
// reports ready and the default namespace exists. Cancel ctx or call Stop to
// shut both down.
//
// etcd serves on a unix socket in a directory only this process's user can
// enter, with no peer listener: the API server is its only client, and
// nobody else on the machine can read or write the cluster's objects
// behind the API server's authentication and admission (a pod written
// straight into etcd would run as root).
func Start(ctx context.Context, cfg Config) (*ControlPlane, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	prefixes, _ := cfg.serviceCIDRs()
	if cfg.ServiceCIDR == "" {
		cfg.ServiceCIDR = "10.96.0.0/16"
	}
	if cfg.NodePortRange == "" {
		cfg.NodePortRange = "30000-32767"
	}
	prefix := prefixes[0]
	// Upstream's default reconciler (lease) keeps default/kubernetes'
	// endpoints; a loopback address fails Endpoints validation, so without
	// an advertised address there is nothing to reconcile.
	advertise, reconciler := netip.MustParseAddr("127.0.0.1"), "none"
	if a := cfg.AdvertiseAddress; a.IsValid() && !a.IsLoopback() {
		advertise, reconciler = a, "lease"
	}
	if cfg.LogOutput == nil {
		cfg.LogOutput = io.Discard
	}
	stateDir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	// The port goes first: a taken port must fail before anything is
	// written or started.
	listener, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", cfg.APIServerPort))
	if err != nil {
		return nil, fmt.Errorf("listen for kube-apiserver on 127.0.0.1:%d: %w", cfg.APIServerPort, err)
	}
	port := listener.Addr().(*net.TCPAddr).Port
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		listener.Close()
		return nil, fmt.Errorf("state dir %s: %w", stateDir, err)
	}

	apiServerOnce.Lock()
	if apiServerRunning {
		apiServerOnce.Unlock()
		listener.Close()
		return nil, errors.New("a kube-apiserver is already running in this process")
	}
	apiServerRunning = true
	apiServerOnce.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	cp := &ControlPlane{cancel: cancel, done: make(chan struct{})}
	fail := func(err error) (*ControlPlane, error) {
		cancel()
		listener.Close()
		if cp.etcd != nil {
			cp.etcd.Close()
		}
		cp.removeSocketDir()
		apiServerOnce.Lock()
		apiServerRunning = false
		apiServerOnce.Unlock()
		return nil, err
	}

	pki := PKI{Dir: filepath.Join(stateDir, "pki")}
	if err := pki.Ensure(firstServiceIP(prefix), net.IP(advertise.AsSlice())); err != nil {
		return fail(err)
	}
	cp.PKI = pki
	etcdURL, err := startEtcd(cp, stateDir, cfg.LogOutput)
	if err != nil {
		return fail(err)
	}

	redirectKlog(cfg.LogOutput)

	s := options.NewServerRunOptions()
	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, f := range s.Flags().FlagSets {
		fs.AddFlagSet(f)
	}
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--etcd-prefix=/registry",
		"--service-cluster-ip-range=" + cfg.ServiceCIDR,
		"--service-node-port-range=" + cfg.NodePortRange,
		"--client-ca-file=" + pki.CACert(),
		"--tls-cert-file=" + pki.ServingCert(),
		"--tls-private-key-file=" + pki.ServingKey(),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki.ServiceAccountPub(),
		"--service-account-signing-key-file=" + pki.ServiceAccountKey(),
		"--authorization-mode=RBAC",
		"--advertise-address=" + advertise.String(),
		"--bind-address=127.0.0.1",
		"--endpoint-reconciler-type=" + reconciler,
		// Kubelets serve with certificates of the cluster CA and authorize
		// the API server through it, as kubeadm sets them up. Nodes have no
		// DNS names here: reach them by their InternalIP first.
		"--kubelet-certificate-authority=" + pki.CACert(),
		"--kubelet-client-certificate=" + pki.KubeletClientCert(),
		"--kubelet-client-key=" + pki.KubeletClientKey(),
		"--kubelet-preferred-address-types=InternalIP,Hostname,InternalDNS,ExternalDNS,ExternalIP",
		"--profiling=" + strconv.FormatBool(cfg.Profiling),
		"--enable-priority-and-fairness=true",
		// Clients outside this process (the cluster DNS process, a
		// user's kubectl --watch) hold watches that never drain: shut the
		// HTTP server down 2 s after the last short request instead of
		// waiting out --request-timeout (60 s) for them.
		"--shutdown-send-retry-after=true",
	}
	if cfg.ClusterEgressSocket != "" {
		path := filepath.Join(stateDir, "egress-selector.yaml")
		if err := writeEgressSelectorConfig(path, cfg.ClusterEgressSocket); err != nil {
			return fail(err)
		}
		args = append(args, "--egress-selector-config-file="+path)
	}
	if err := fs.Parse(args); err != nil {
		return fail(fmt.Errorf("kube-apiserver flags: %w", err))
	}
	s.SecureServing.Listener = listener
	s.SecureServing.BindPort = port
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return fail(fmt.Errorf("kube-apiserver component globals: %w", err))
	}
	completed, err := s.Complete(ctx)
	if err != nil {
		return fail(fmt.Errorf("complete kube-apiserver options: %w", err))
	}
	if errs := completed.Validate(); len(errs) > 0 {
		return fail(fmt.Errorf("kube-apiserver options: %v", errs))
	}
	go func() {
		defer close(cp.done)
		cp.err = app.Run(ctx, completed)
		cp.etcd.Close()
		<-cp.etcd.Server.StopNotify()
		cp.removeSocketDir()
		apiServerOnce.Lock()
		apiServerRunning = false
		apiServerOnce.Unlock()
	}()

	cp.RESTConfig = &rest.Config{
		Host: fmt.Sprintf("https://127.0.0.1:%d", port),
		TLSClientConfig: rest.TLSClientConfig{
			CAFile:   pki.CACert(),
			CertFile: pki.AdminCert(),
			KeyFile:  pki.AdminKey(),
		},
		QPS:   200,
		Burst: 400,
	}
	cp.Client, err = kubernetes.NewForConfig(cp.RESTConfig)
	if err != nil {
		return fail(err)
	}
	cp.KubeconfigPath = filepath.Join(stateDir, "kubeconfig")
	if err := WriteKubeconfig(cp.KubeconfigPath, cp.RESTConfig, pki); err != nil {
		return fail(err)
	}
	if err := cp.waitReady(ctx); err != nil {
		cp.Stop()
		return nil, err
	}
	return cp, nil
}

// redirectKlog sends the API server's klog output to w only. klog also
// copies errors to stderr unless its stderr threshold is raised, which would
// flood a terminal or a test log with the API server's routine complaints.
func redirectKlog(w io.Writer) {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	fs.Set("logtostderr", "false")
	fs.Set("alsologtostderr", "false")
	fs.Set("stderrthreshold", "FATAL")
	klog.SetOutput(w)
}

// writeEgressSelectorConfig points kube-apiserver's "cluster" egress (its
// connections to kubelets, pods and services) at an HTTP CONNECT proxy on a
// unix socket; control-plane and etcd traffic stay direct.
func writeEgressSelectorConfig(path, socket string) error {
	cfg := fmt.Sprintf(`apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: %q
`, socket)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return fmt.Errorf("write egress selector config: %w", err)
	}
	return nil
}

func firstServiceIP(p netip.Prefix) net.IP {
	return net.IP(p.Masked().Addr().Next().AsSlice())
}

// etcdSocketName is etcd's client socket inside its socket directory.
const etcdSocketName = "etcd.sock"

// maxSocketPath is the longest path a unix socket can be bound at
// (sun_path is 108 bytes with its terminating NUL).
const maxSocketPath = 107

// startEtcd starts etcd with its data in STATE/etcd, serving clients only
// on a unix socket in STATE/etcd-socket (mode 0700, so only this user can
// connect), and with no peer listener at all: a one-member cluster never
// talks to peers. When the state directory's path is too long for a socket
// path, the socket directory is a fresh 0700 directory under the system's
// temporary directory instead, removed on stop.
func startEtcd(cp *ControlPlane, stateDir string, logOut io.Writer) (string, error) {
	dir := filepath.Join(stateDir, "etcd")
	sockDir := filepath.Join(stateDir, "etcd-socket")
	if len(filepath.Join(sockDir, etcdSocketName)) > maxSocketPath {
		tmp, err := os.MkdirTemp("", "switchboard-etcd-")
		if err != nil {
			return "", fmt.Errorf("etcd socket directory: %w", err)
		}
		sockDir, cp.tempSocketDir = tmp, tmp
	}
	if err := os.MkdirAll(sockDir, 0o700); err != nil {
		return "", fmt.Errorf("etcd socket directory: %w", err)
	}
	// MkdirAll keeps the mode of a directory that exists; the socket's
	// protection is this mode, so set it whatever was there.
	if err := os.Chmod(sockDir, 0o700); err != nil {
		return "", fmt.Errorf("etcd socket directory: %w", err)
	}
	socket := filepath.Join(sockDir, etcdSocketName)
	cp.EtcdSocket = socket
	ec := embed.NewConfig()
	ec.Name = "switchboard"
	ec.Dir = dir
	clientURL := url.URL{Scheme: "unix", Path: socket}
	ec.ListenClientUrls = []url.URL{clientURL}
	ec.ListenPeerUrls = nil
	// etcd wants advertised URLs in host:port form and records them in the
	// membership; nothing dials them (one member, one local client).
	placeholder := url.URL{Scheme: "unix", Host: "localhost:0"}
	ec.AdvertiseClientUrls = []url.URL{placeholder}
	ec.AdvertisePeerUrls = []url.URL{placeholder}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	// A restart reuses the existing member, whatever peer URL it was
	// created with: with its data directory present etcd takes the
	// membership from its write-ahead log.
	if fileExists(filepath.Join(dir, "member")) {
		ec.ClusterState = embed.ClusterStateFlagExisting
	}
	// etcd logs through zap; send its errors where the API server's logs
	// go rather than to the terminal.
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.New(zapcore.NewCore(
		zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(logOut), zapcore.ErrorLevel)))
	// A local, throwaway cluster: etcd's default snapshot and quota settings
	// are sized for production; keep memory small.
	ec.SnapshotCount = 10000
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return "", fmt.Errorf("start etcd in %s: %w", dir, err)
	}
	cp.etcd = e
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return "", errors.New("etcd did not become ready within 60s")
	}
	return "unix://" + socket, nil
}

// removeSocketDir removes the temporary socket directory, if one was made.
func (cp *ControlPlane) removeSocketDir() {
	if cp.tempSocketDir != "" {
		os.RemoveAll(cp.tempSocketDir)
	}
}

// waitReady polls /readyz, then waits for the default namespace and the
// kubernetes Service that the API server's bootstrap controller creates, and
// finally ensures the objects a fresh cluster has (service accounts).
func (cp *ControlPlane) waitReady(ctx context.Context) error {
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		select {
		case <-cp.done:
			return false, fmt.Errorf("kube-apiserver exited: %v", cp.err)
		default:
		}
		var status int
		cp.Client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&status)
		if status != 200 {
			return false, nil
		}
		if _, err := cp.Client.CoreV1().Namespaces().Get(ctx, metav1.NamespaceDefault, metav1.GetOptions{}); err != nil {
			return false, nil
		}
		if _, err := cp.Client.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{}); err != nil {
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("wait for kube-apiserver to be ready: %w", err)
	}
	return nil
}

// Stop shuts the API server and etcd down and waits for both to finish.
func (cp *ControlPlane) Stop() {
	cp.cancel()
	<-cp.done
}

// Done is closed once the control plane has stopped.
func (cp *ControlPlane) Done() <-chan struct{} { return cp.done }

// Err is why the control plane stopped, valid after Done is closed.
func (cp *ControlPlane) Err() error { return cp.err }

// WriteKubeconfig writes an admin kubeconfig for cfg, referring to the PKI's
// files by absolute path so it works from any working directory.
func WriteKubeconfig(path string, cfg *rest.Config, pki PKI) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["switchboard"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthority: pki.CACert()}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificate: pki.AdminCert(), ClientKey: pki.AdminKey()}
	kc.Contexts["switchboard"] = &clientcmdapi.Context{Cluster: "switchboard", AuthInfo: "admin", Namespace: corev1.NamespaceDefault}
	kc.CurrentContext = "switchboard"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}
