package endpointslice

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Run is the whole controller process: it builds a protobuf client and its
// own informer factory from cfg (whose QPS and Burst pace the writes), starts
// the informers and runs workers until ctx ends. `switchboard controller` and
// `switchboard up` call it.
func Run(ctx context.Context, cfg *rest.Config, opts Options, workers int) error {
	return RunElected(ctx, cfg, opts, workers, nil)
}

// Election configures Lease-based leader election among replicas, as
// kube-controller-manager's --leader-elect* flags do.
type Election struct {
	// Namespace and Name of the coordination.k8s.io Lease.
	Namespace, Name string
	// Identity of this replica in the Lease (unique per process).
	Identity string
	// LeaseDuration is how long standbys wait after the last renewal
	// before taking over; RenewDeadline is how long the leader keeps
	// trying to renew before it gives up; RetryPeriod paces both.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// ErrLeadershipLost is returned by RunElected when another replica took
// the Lease: the process should exit (and be restarted), as
// kube-controller-manager does, since its caches and queue assumed sole
// writership.
var ErrLeadershipLost = errors.New("leader election lost")

// RunElected is Run with leader election when el is non-nil: the replica
// fills its caches at once (a warm standby, so a takeover starts syncing
// without waiting for lists) and runs workers only while it holds the Lease.
// When ctx ends, workers stop first and then the Lease is released, so a
// rolling update hands over without waiting out the lease duration.
func RunElected(ctx context.Context, cfg *rest.Config, opts Options, workers int, el *Election) error {
	cfg = rest.CopyConfig(cfg)
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("endpointslice controller client for %s: %w", cfg.Host, err)
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	c, err := NewController(client, factory, opts)
	if err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if el == nil {
		return c.Run(ctx, workers)
	}
	return c.runElected(ctx, cfg, workers, *el)
}

func (c *Controller) runElected(ctx context.Context, cfg *rest.Config, workers int, el Election) error {
	// The Lease has its own client: its own rate limiter, so renewals
	// never queue behind a burst of slice writes, and a timeout of half
	// the renew deadline, so one hung request cannot cost the lease (as
	// client-go's NewFromKubeconfig).
	lcfg := rest.CopyConfig(cfg)
	lcfg.Timeout = max(el.RenewDeadline/2, time.Second)
	lclient, err := kubernetes.NewForConfig(rest.AddUserAgent(lcfg, "leader-election"))
	if err != nil {
		return fmt.Errorf("leader election client: %w", err)
	}
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, el.Namespace, el.Name,
		lclient.CoreV1(), lclient.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: el.Identity})
	if err != nil {
		return fmt.Errorf("leader election lock %s/%s: %w", el.Namespace, el.Name, err)
	}
	// The elector runs on its own context: on shutdown it is cancelled
	// only after the workers stopped, and then releases the Lease.
	electCtx, stopElecting := context.WithCancel(context.Background())
	defer stopElecting()
	var led atomic.Bool
	var runErr error
	ran := make(chan struct{}) // closed when a leader's workers have stopped
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		Name:            el.Name,
		LeaseDuration:   el.LeaseDuration,
		RenewDeadline:   el.RenewDeadline,
		RetryPeriod:     el.RetryPeriod,
		ReleaseOnCancel: true,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(leadCtx context.Context) {
				led.Store(true)
				defer close(ran)
				defer stopElecting()
				c.log.Info("leading: started syncing", "lease", el.Namespace+"/"+el.Name, "identity", el.Identity)
				runCtx, cancel := context.WithCancel(leadCtx)
				defer cancel()
				stop := context.AfterFunc(ctx, cancel)
				defer stop()
				runErr = c.Run(runCtx, workers)
			},
			OnStoppedLeading: func() {
				if led.Load() && ctx.Err() == nil {
					c.log.Error("leader election lost: another replica holds the lease; exiting", "lease", el.Namespace+"/"+el.Name, "identity", el.Identity)
				}
			},
			OnNewLeader: func(id string) {
				if id != el.Identity {
					c.log.Info("standing by: another replica leads", "lease", el.Namespace+"/"+el.Name, "leader", id)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leader election %s/%s: %w", el.Namespace, el.Name, err)
	}
	// A standby stops electing as soon as ctx ends; a leader stops when
	// its workers have (OnStartedLeading).
	stopStandby := context.AfterFunc(ctx, func() {
		if !led.Load() {
			stopElecting()
		}
	})
	defer stopStandby()
	c.log.Info("leader election: waiting for the lease", "lease", el.Namespace+"/"+el.Name, "identity", el.Identity)
	le.Run(electCtx)
	if led.Load() {
		<-ran // le.Run returns without waiting for OnStartedLeading
	}
	switch {
	case ctx.Err() != nil:
		if runErr != nil && !errors.Is(runErr, context.Canceled) {
			return runErr
		}
		return nil
	case led.Load():
		if runErr != nil && !errors.Is(runErr, context.Canceled) {
			return runErr
		}
		return fmt.Errorf("lease %s/%s as %s: %w", el.Namespace, el.Name, el.Identity, ErrLeadershipLost)
	default:
		return fmt.Errorf("leader election %s/%s stopped before leading", el.Namespace, el.Name)
	}
}
