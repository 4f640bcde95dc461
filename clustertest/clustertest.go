// Package clustertest gives other packages' tests a real cluster to run
// against: the real kube-apiserver (started once per test binary, in process,
// on loopback) and a fresh namespace per test, so tests can run in parallel
// without seeing each other's objects.
package clustertest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/switchboard/switchboard/controlplane"
	"github.com/switchboard/switchboard/netnamespace"
)

// RequireEnv is the environment variable that turns every skip for a missing
// privilege or kernel feature into a failure. CI sets it to "require" so that
// a green run proves the end-to-end tests really ran.
const RequireEnv = "SWITCHBOARD_E2E"

// Skip skips the test with reason, or fails it when RequireEnv=require.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv(RequireEnv) == "require" {
		t.Fatalf("%s=require but: %s", RequireEnv, reason)
	}
	t.Skip(reason)
}

// RequireIPVS skips unless the kernel has IPVS (/proc/net/ip_vs). It is
// the one skip RequireEnv=require accepts: CI kernels commonly lack
// CONFIG_IP_VS, and the IPVS mode's translation is tested without it
// (against proxy/ipvs's Fake); the skip says so in its reason.
func RequireIPVS(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
		t.Skip("the kernel has no IPVS (no /proc/net/ip_vs: CONFIG_IP_VS is not set or ip_vs is not loaded); " +
			"allowed under " + RequireEnv + "=require, the translation is tested against the in-memory IPVS")
	}
}

// RequireRoot skips (or fails, see Skip) unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root")
	}
}

var (
	shared     *controlplane.ControlPlane
	sharedDir  string
	sharedErr  error
	sharedOnce sync.Once
	// stopHousekeeping ends the housekeeping controllers' watches first, so
	// the API server has no long-running requests left to drain on stop.
	stopHousekeeping context.CancelFunc
)

// Main wraps a test binary's TestMain so the shared API server, if one was
// started, is stopped and its state removed when the tests finish:
//
//	func TestMain(m *testing.M) { os.Exit(clustertest.Main(m)) }
func Main(m *testing.M) int {
	code := m.Run()
	if shared != nil {
		stopHousekeeping()
		stopped := make(chan struct{})
		go func() { shared.Stop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(10 * time.Second):
			// The process exits next anyway; do not let a slow graceful
			// shutdown hold the test binary for a minute.
		}
	}
	if sharedDir != "" {
		os.RemoveAll(sharedDir)
	}
	return code
}

// ServiceCIDRs are the test API server's Service ranges: dual-stack, so
// tests can create IPv6 and dual-stack Services; a Service that asks for
// nothing is IPv4, as on a single-stack cluster.
const ServiceCIDRs = "10.96.0.0/16,fd00:10:96::/112"

// APIServer returns the test binary's shared control plane, starting it on
// first use (about 4 s). Tests should isolate themselves with Namespace.
func APIServer(t testing.TB) *controlplane.ControlPlane {
	t.Helper()
	sharedOnce.Do(func() {
		sharedDir, sharedErr = os.MkdirTemp("", "switchboard-apiserver-")
		if sharedErr != nil {
			return
		}
		start := time.Now()
		shared, sharedErr = controlplane.Start(context.Background(), controlplane.Config{StateDir: sharedDir, ServiceCIDR: ServiceCIDRs})
		if sharedErr == nil {
			var hkCtx context.Context
			hkCtx, stopHousekeeping = context.WithCancel(context.Background())
			sharedErr = controlplane.StartHousekeeping(hkCtx, shared.RESTConfig)
		}
		if sharedErr == nil {
			t.Logf("kube-apiserver ready in %v at %s", time.Since(start).Round(time.Millisecond), shared.RESTConfig.Host)
		}
	})
	if sharedErr != nil {
		t.Fatalf("start kube-apiserver: %v", sharedErr)
	}
	return shared
}

// Client returns a clientset for the shared API server with its own rate
// limits, so a test that floods the API does not slow its neighbours.
func Client(t testing.TB) (kubernetes.Interface, *rest.Config) {
	t.Helper()
	cfg := rest.CopyConfig(APIServer(t).RESTConfig)
	cfg.QPS, cfg.Burst = 1000, 2000
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("clientset: %v", err)
	}
	return c, cfg
}

// Namespace creates a namespace with a unique name derived from the test's
// name and deletes it when the test ends.
func Namespace(t testing.TB, client kubernetes.Interface) string {
	t.Helper()
	base := strings.ToLower(t.Name())
	base = strings.Map(func(r rune) rune {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			return r
		}
		return '-'
	}, base)
	if len(base) > 40 {
		base = base[:40]
	}
	name := strings.Trim(fmt.Sprintf("%s-%s", base, rand.String(5)), "-")
	ctx := context.Background()
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = client.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	return name
}

// NetNS creates a network namespace with a unique name starting with
// prefix (so parallel and crashed runs never collide) and loopback up, and
// deletes it when the test ends. It returns the name and the path.
func NetNS(t testing.TB, prefix string) (name, path string) {
	t.Helper()
	RequireRoot(t)
	name = netnamespace.Unique(prefix)
	path, del, err := netnamespace.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(del)
	return name, path
}

// Eventually retries f every 100ms until it returns nil, and fails the test
// with what and f's last error once timeout has passed: state converges
// through the API server, controllers and proxies at whatever pace a loaded
// machine allows.
func Eventually(t testing.TB, what string, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ApplySlice creates the EndpointSlice sl in namespace ns, or replaces the
// one of that name, as a test standing in for an EndpointSlice controller
// does on every change.
func ApplySlice(t testing.TB, c kubernetes.Interface, ns string, sl *discoveryv1.EndpointSlice) {
	t.Helper()
	ctx := context.Background()
	slices := c.DiscoveryV1().EndpointSlices(ns)
	cur, err := slices.Get(ctx, sl.Name, metav1.GetOptions{})
	if err == nil {
		sl.ResourceVersion = cur.ResourceVersion
		_, err = slices.Update(ctx, sl, metav1.UpdateOptions{})
	} else {
		_, err = slices.Create(ctx, sl, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatalf("apply endpoint slice %s/%s: %v", ns, sl.Name, err)
	}
}
