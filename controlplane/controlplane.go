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
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
	// LogOutput receives the API server's and etcd's own logs (klog, zap).
	// Nil discards them: they are verbose and rarely what a user wants.
	LogOutput io.Writer
}

// ControlPlane is a running etcd and kube-apiserver.
type ControlPlane struct {
	// RESTConfig authenticates as the cluster admin (system:masters).
	RESTConfig *rest.Config
	// KubeconfigPath is the admin kubeconfig written into the state dir.
	KubeconfigPath string
	// Client is a clientset built from RESTConfig.
	Client kubernetes.Interface

	cancel context.CancelFunc
	done   chan struct{}
	err    error
	etcd   *embed.Etcd
}

// apiServerOnce guards against a second kube-apiserver in one process: it
// registers global metrics, feature gates and admission plugins, so the test
// harness shares one instance per test binary instead.
var apiServerOnce sync.Mutex
var apiServerRunning bool

// Start brings up etcd and the API server and returns once the API server
// reports ready and the default namespace exists. Cancel ctx or call Stop to
// shut both down.
func Start(ctx context.Context, cfg Config) (*ControlPlane, error) {
	if cfg.ServiceCIDR == "" {
		cfg.ServiceCIDR = "10.96.0.0/16"
	}
	if cfg.NodePortRange == "" {
		cfg.NodePortRange = "30000-32767"
	}
	var prefixes []netip.Prefix
	for _, c := range strings.Split(cfg.ServiceCIDR, ",") {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			return nil, fmt.Errorf("service CIDR %q: %w", cfg.ServiceCIDR, err)
		}
		prefixes = append(prefixes, p)
	}
	if len(prefixes) > 2 || len(prefixes) == 2 && prefixes[0].Addr().Is4() == prefixes[1].Addr().Is4() {
		return nil, fmt.Errorf("service CIDR %q: want one range, or one IPv4 and one IPv6 range", cfg.ServiceCIDR)
	}
	prefix := prefixes[0]
	if cfg.LogOutput == nil {
		cfg.LogOutput = io.Discard
	}
	stateDir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir %s: %w", stateDir, err)
	}

	apiServerOnce.Lock()
	if apiServerRunning {
		apiServerOnce.Unlock()
		return nil, errors.New("a kube-apiserver is already running in this process")
	}
	apiServerRunning = true
	apiServerOnce.Unlock()

	pki := PKI{Dir: filepath.Join(stateDir, "pki")}
	if err := pki.Ensure(firstServiceIP(prefix)); err != nil {
		return nil, err
	}

	ctx, cancel := context.WithCancel(ctx)
	cp := &ControlPlane{cancel: cancel, done: make(chan struct{})}
	fail := func(err error) (*ControlPlane, error) {
		cancel()
		if cp.etcd != nil {
			cp.etcd.Close()
		}
		apiServerOnce.Lock()
		apiServerRunning = false
		apiServerOnce.Unlock()
		return nil, err
	}

	etcdURL, err := startEtcd(cp, filepath.Join(stateDir, "etcd"), cfg.LogOutput)
	if err != nil {
		return fail(err)
	}

	listener, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", cfg.APIServerPort))
	if err != nil {
		return fail(fmt.Errorf("listen for kube-apiserver on 127.0.0.1:%d: %w", cfg.APIServerPort, err))
	}
	port := listener.Addr().(*net.TCPAddr).Port

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
		"--advertise-address=127.0.0.1",
		"--bind-address=127.0.0.1",
		// One local API server: nobody else needs the kubernetes Service's
		// endpoints reconciled through leases.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
		"--enable-priority-and-fairness=true",
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

func firstServiceIP(p netip.Prefix) net.IP {
	return net.IP(p.Masked().Addr().Next().AsSlice())
}

func startEtcd(cp *ControlPlane, dir string, logOut io.Writer) (string, error) {
	clientPort, err := freePort()
	if err != nil {
		return "", err
	}
	peerPort, err := freePort()
	if err != nil {
		return "", err
	}
	ec := embed.NewConfig()
	ec.Name = "switchboard"
	ec.Dir = dir
	clientURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", clientPort)}
	peerURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}
	ec.ListenClientUrls = []url.URL{clientURL}
	ec.AdvertiseClientUrls = []url.URL{clientURL}
	ec.ListenPeerUrls = []url.URL{peerURL}
	ec.AdvertisePeerUrls = []url.URL{peerURL}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	// A restart reuses the existing member; the peer port is new each time,
	// which etcd accepts for a single-member cluster whose data dir exists.
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
	return clientURL.String(), nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
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
