package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	componentbaseconfig "k8s.io/component-base/config"
	componentbaseoptions "k8s.io/component-base/config/options"
	"k8s.io/component-base/metrics/legacyregistry"

	"github.com/switchboard/switchboard/endpointslice"
	"github.com/switchboard/switchboard/workingset"
)

// controllerCmd is `switchboard controller`, a drop-in for
// kube-controller-manager's endpointslice-controller (run upstream's with
// --controllers=*,-endpointslice-controller).
//
// Pacing: every request goes through the client's token bucket, by
// default 500 requests/s with bursts of 1000 (--kube-api-qps/-burst), and at
// most --concurrent-service-endpoint-syncs (default 32) Services are synced
// at once, each with its writes one after another, so at most 32 writes are
// in flight. A pod flip costs one write; a restart with nothing changed
// costs none; a cold start costs one create per Service and address family,
// so 1,000 Services fit in one burst, where upstream's 20/s would take 50 s.
// Server-side, API priority and fairness classifies the controller's
// requests by its user (kube-controller-manager's service account lands in
// workload-high; the admin a benchmark uses is exempt) and queues them
// fairly per user, so 32 in flight cannot starve other clients. When the
// server sheds load with 429 (or a 5xx) and Retry-After, client-go waits
// that long and retries the same request, up to 10 times, each retry
// taking a token again; if it still fails, the Service goes back on the
// work queue with per-Service exponential backoff (5 ms doubling to 1000 s,
// 15 attempts, then until its next change) under an overall retry bucket of
// 10/s, burst 100, so a struggling API server sees fewer requests, not
// more.
func controllerCmd() *cobra.Command {
	var (
		cf        clientFlags
		lf        logFlags
		workers   int
		maxPerSlc int32
		metrics   string
		profiling bool
		gates     string
		// kube-controller-manager's leader election defaults, with our
		// own Lease name.
		le = componentbaseconfig.LeaderElectionConfiguration{
			LeaderElect:       true,
			LeaseDuration:     metav1.Duration{Duration: 15 * time.Second},
			RenewDeadline:     metav1.Duration{Duration: 10 * time.Second},
			RetryPeriod:       metav1.Duration{Duration: 2 * time.Second},
			ResourceLock:      resourcelock.LeasesResourceLock,
			ResourceName:      "switchboard-controller",
			ResourceNamespace: metav1.NamespaceSystem,
		}
	)
	cmd := &cobra.Command{
		Use:   "controller",
		Short: "Run the EndpointSlice controller: keep every selector Service's EndpointSlices",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := featureGates(gates); err != nil {
				return err
			}
			log, err := lf.logger(os.Stderr)
			if err != nil {
				return err
			}
			el, err := election(le)
			if err != nil {
				return err
			}
			rc, err := cf.restConfig("controller")
			if err != nil {
				return err
			}
			// While the caches fill and every Service is synced, the default
			// GOGC=100 keeps the collector to a quarter of the CPU it costs
			// at 25 (a cold start is CPU-bound: 1,000 Services take ~2 s of
			// CPU on a 2-core machine shared with the API server). Once the
			// first full sync is done, collect sooner and settle.
			onSynced := func() {
				workingset.CollectSooner()
				workingset.Settle()
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if metrics != "" {
				if err := serveControllerMetrics(ctx, metrics, profiling); err != nil {
					return err
				}
			}
			return endpointslice.RunElected(ctx, rc, endpointslice.Options{
				MaxEndpointsPerSlice: maxPerSlc,
				OnInitialSync:        onSynced,
				Logger:               log,
			}, workers, el)
		},
	}
	cf.addTo(cmd.Flags(), 500, 1000)
	cmd.Flags().IntVar(&workers, "concurrent-service-endpoint-syncs", 32, "Services synced in parallel")
	cmd.Flags().Int32Var(&maxPerSlc, "max-endpoints-per-slice", endpointslice.DefaultMaxEndpointsPerSlice, "endpoints per EndpointSlice, 1 to 1000")
	lf.addTo(cmd.Flags())
	componentbaseoptions.BindLeaderElectionFlags(&le, cmd.Flags())
	cmd.Flags().StringVar(&metrics, "metrics-bind-address", "", "address for /metrics (upstream's endpoint_slice_controller_* series) and /healthz, e.g. 127.0.0.1:10258; empty disables")
	cmd.Flags().StringVar(&gates, "feature-gates", "", "Kubernetes feature gates, e.g. WatchListClient=false (as kube-controller-manager's)")
	cmd.Flags().BoolVar(&profiling, "profiling", false, "serve /debug/pprof/ on the metrics address")
	return cmd
}

// election turns kube-controller-manager's leader election settings into
// the controller's; nil when --leader-elect=false.
func election(c componentbaseconfig.LeaderElectionConfiguration) (*endpointslice.Election, error) {
	if !c.LeaderElect {
		return nil, nil
	}
	if c.ResourceLock != resourcelock.LeasesResourceLock {
		return nil, fmt.Errorf("--leader-elect-resource-lock %q: only %q is supported", c.ResourceLock, resourcelock.LeasesResourceLock)
	}
	if c.ResourceName == "" || c.ResourceNamespace == "" {
		return nil, fmt.Errorf("--leader-elect-resource-name and --leader-elect-resource-namespace must not be empty")
	}
	if c.LeaseDuration.Duration <= c.RenewDeadline.Duration {
		return nil, fmt.Errorf("--leader-elect-lease-duration %v must be greater than --leader-elect-renew-deadline %v", c.LeaseDuration.Duration, c.RenewDeadline.Duration)
	}
	host, err := os.Hostname()
	if err != nil {
		return nil, fmt.Errorf("leader election identity: %w", err)
	}
	// As kube-controller-manager: the host (the pod's name) and a UUID,
	// unique even for two processes on one host.
	return &endpointslice.Election{
		Namespace:     c.ResourceNamespace,
		Name:          c.ResourceName,
		Identity:      host + "_" + string(uuid.NewUUID()),
		LeaseDuration: c.LeaseDuration.Duration,
		RenewDeadline: c.RenewDeadline.Duration,
		RetryPeriod:   c.RetryPeriod.Duration,
	}, nil
}

// serveControllerMetrics serves the process-wide Kubernetes metrics registry,
// where the EndpointSlice metrics live, and with profiling net/http/pprof,
// until ctx ends.
func serveControllerMetrics(ctx context.Context, addr string, profiling bool) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", legacyregistry.Handler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	if profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	return nil
}
