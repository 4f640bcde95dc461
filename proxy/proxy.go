// Package proxy is the node proxy: it watches Services, EndpointSlices and
// its own Node, keeps an immutable snapshot of what to program (package
// snapshot), and hands each change to a Backend (package nftables, or
// package iptables in the iptables mode) in one small transaction. It also serves kube-proxy's health endpoints and
// Prometheus metrics.
package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/switchboard/switchboard/proxy/nftables"
	"github.com/switchboard/switchboard/proxy/snapshot"
	"github.com/switchboard/switchboard/servicestore"
)

// Backend programs snapshots into a data plane.
type Backend interface {
	// Sync programs snap: everything when changes.Full, else only the
	// Services in changes.Keys (those that differ from the previous
	// call's snapshot).
	Sync(snap *snapshot.Snapshot, changes snapshot.Changes) error
	// Stats counts what is programmed, for metrics.
	Stats() nftables.Stats
}

// Config configures Run.
type Config struct {
	// RESTConfig or Client reach the API server (Client wins if both).
	RESTConfig *rest.Config
	Client     kubernetes.Interface
	// NodeName is this node's name (endpoints with this nodeName are local).
	NodeName string
	// NodeIPs are the addresses NodePorts answer on; empty takes the
	// Node's InternalIP addresses.
	NodeIPs []netip.Addr
	// NodePortAddresses, when set, are kube-proxy's --nodeport-addresses
	// CIDRs: NodePorts and healthCheckNodePorts answer on the namespace's
	// addresses in them instead of on NodeIPs (kube-proxy's default
	// "primary").
	NodePortAddresses []netip.Prefix
	// NetNS is the network namespace to program and to serve health and
	// metrics in, as a path like /run/netns/NAME; "" is the current one.
	NetNS string
	// ClusterCIDRs: traffic to ClusterIPs from outside them is masqueraded.
	ClusterCIDRs []netip.Prefix
	// HealthzBindAddress serves /healthz and /livez (e.g. "0.0.0.0:10256");
	// MetricsBindAddress serves /metrics (e.g. "127.0.0.1:10249"). Empty
	// disables each.
	HealthzBindAddress string
	MetricsBindAddress string
	// EnableProfiling serves net/http/pprof under /debug/pprof/ on the
	// metrics address, as kube-proxy's enableProfiling does.
	EnableProfiling bool
	// OnInitialSync, if set, is called once, after the first full sync
	// has programmed the whole world: the moment a process can trade
	// start-up memory for steady-state memory (switchboard proxy settles
	// its working set then).
	OnInitialSync func()
	// Mode is the proxy mode, kube-proxy's --proxy-mode: ModeNFTables
	// (the default when empty), ModeIPTables or ModeIPVS. Starting in one
	// mode removes the rules of the others.
	Mode string
	// IPVSScheduler is the ipvs mode's scheduler (kube-proxy's
	// --ipvs-scheduler; "" is rr).
	IPVSScheduler string
	// MinSyncInterval coalesces bursts of changes; 0 uses 10ms.
	MinSyncInterval time.Duration
	Logger          *slog.Logger
}

// Run runs the proxy until ctx ends. The rules stay in the kernel when it
// returns, so a restart adopts them without breaking connections.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "proxy", "node", cfg.NodeName)
	if cfg.NodeName == "" {
		return errors.New("proxy: node name is required")
	}
	client := cfg.Client
	if client == nil {
		if cfg.RESTConfig == nil {
			return errors.New("proxy: RESTConfig or Client is required")
		}
		var err error
		if client, err = kubernetes.NewForConfig(cfg.RESTConfig); err != nil {
			return fmt.Errorf("proxy: client: %w", err)
		}
	}
	if cfg.MinSyncInterval == 0 {
		cfg.MinSyncInterval = 10 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	tracker := NewTracker(cfg.NodeName)
	factory := informers.NewSharedInformerFactory(client, 0)
	svcInf := factory.Core().V1().Services().Informer()
	sliceInf := factory.Discovery().V1().EndpointSlices().Informer()
	if err := svcInf.SetTransform(servicestore.TrimService); err != nil {
		return fmt.Errorf("proxy: watch services: %w", err)
	}
	if err := sliceInf.SetTransform(servicestore.TrimSlice); err != nil {
		return fmt.Errorf("proxy: watch endpointslices: %w", err)
	}
	svcReg, err := svcInf.AddEventHandler(tracker.ServiceHandler())
	if err != nil {
		return fmt.Errorf("proxy: watch services: %w", err)
	}
	sliceReg, err := sliceInf.AddEventHandler(tracker.SliceHandler())
	if err != nil {
		return fmt.Errorf("proxy: watch endpointslices: %w", err)
	}
	nodeFactory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", cfg.NodeName).String()
		}))
	nodeInf := nodeFactory.Core().V1().Nodes().Informer()
	zone := func(o any) {
		if n, ok := o.(*v1.Node); ok {
			tracker.SetZone(n.Labels[v1.LabelTopologyZone])
		}
	}
	if _, err := nodeInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: zone, UpdateFunc: func(_, o any) { zone(o) },
	}); err != nil {
		return fmt.Errorf("proxy: watch node: %w", err)
	}
	// The Service CIDRs, as kube-proxy learns them (the
	// MultiCIDRServiceAllocator gate is GA and locked on): new connections
	// to an address in them that no Service holds are dropped.
	cidrInf := factory.Networking().V1().ServiceCIDRs().Informer()
	cidrReg, err := cidrInf.AddEventHandler(serviceCIDRHandler(cidrInf.GetStore(), tracker))
	if err != nil {
		return fmt.Errorf("proxy: watch servicecidrs: %w", err)
	}
	factory.Start(ctx.Done())
	nodeFactory.Start(ctx.Done())
	// Shutdown waits for the informers, which stop with ctx: cancel it
	// first, also when Run returns an error (the deferred cancel above
	// would run only after these, and Run would hang instead of failing).
	defer func() {
		cancel()
		nodeFactory.Shutdown()
		factory.Shutdown()
	}()

	nodeIPs := cfg.NodeIPs
	if len(nodeIPs) == 0 {
		var err error
		if nodeIPs, err = waitNodeIPs(ctx, nodeInf, cfg.NodeName, log); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
	// The handlers' registrations, not the informers: the first sync must
	// see every object the initial lists delivered, or it would program a
	// partial world and then stream the rest in as changes.
	if !cache.WaitForCacheSync(ctx.Done(), svcReg.HasSynced, sliceReg.HasSynced) {
		return nil // stopped before the first sync
	}
	// The Service CIDRs normally arrive with the rest: waiting a little
	// spares a second full sync. An API server without ServiceCIDRs (or a
	// role without list/watch on them) must not hold the proxy up; kube-
	// proxy does not wait for them either.
	cidrCtx, cidrCancel := context.WithTimeout(ctx, 2*time.Second)
	if !cache.WaitForCacheSync(cidrCtx.Done(), cidrReg.HasSynced) && ctx.Err() == nil {
		log.Warn("ServiceCIDRs not listed yet; unallocated Service addresses are dropped once they are")
	}
	cidrCancel()

	// The node's own addresses (kube-proxy's node IPs) admit a load
	// balancer's address as a source; NodePorts answer on nodePortIPs.
	primary, nodePortAddrs := nodeIPs, nodeIPs
	if len(cfg.NodePortAddresses) > 0 {
		if nodePortAddrs, err = nodePortIPs(cfg.NetNS, cfg.NodePortAddresses); err != nil {
			return fmt.Errorf("proxy: --nodeport-addresses: %w", err)
		}
		if len(nodePortAddrs) == 0 {
			log.Error("no address of the node matches --nodeport-addresses; NodePorts will not answer", "cidrs", cfg.NodePortAddresses)
		}
	}
	kern, err := newDataPlane(cfg, nodePortAddrs, primary, log)
	if err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	defer kern.Close()
	m := newMetrics()
	nodeObj := func() *v1.Node {
		if o, ok, _ := nodeInf.GetStore().GetByKey(cfg.NodeName); ok {
			return o.(*v1.Node)
		}
		return nil
	}
	status := newSyncStatus(tracker)
	hc := newHealthCheckServers(cfg.NetNS, nodePortAddrs, status, log)
	defer hc.close()
	debug := &debugState{node: cfg.NodeName, mode: cmp.Or(cfg.Mode, ModeNFTables), status: status, inspect: kern}
	stop, err := serveEndpoints(cfg, healthzHandler(status, nodeObj), debug, m, log)
	if err != nil {
		return err
	}
	defer stop()
	log.Info("proxy started", "netns", cfg.NetNS, "nodeIPs", nodeIPs, "nodePortAddresses", nodePortAddrs)
	return loop(ctx, cfg, tracker, kern, m, status, hc, log)
}

// loop syncs pending changes, coalescing bursts; the first sync programs
// everything (adopting what an earlier run left).
func loop(ctx context.Context, cfg Config, t *Tracker, b Backend, m *metrics, status *syncStatus, hc *healthCheckServers, log *slog.Logger) error {
	first := true
	status.loopStarted(time.Now())
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		// The sync's duration runs from taking the change to the end of
		// the kernel write, like kube-proxy's: everything a change waits
		// for once the loop has it.
		start := time.Now()
		u := t.Next()
		changes := snapshot.Changes{Full: first, Keys: u.Changed}
		err := b.Sync(u.Snapshot, changes)
		done := time.Now()
		m.syncDuration.Observe(done.Sub(start).Seconds())
		if err != nil {
			m.syncErrors.Inc()
			status.failed(done, u.Queued, err)
			log.Error("sync failed; retrying", "err", err)
			t.Requeue(u.Changed)
			retry.Reset(time.Second)
		} else {
			// A retry still pending would wake the loop to nothing.
			retry.Stop()
			if first && cfg.OnInitialSync != nil {
				cfg.OnInitialSync()
			}
			for _, tt := range u.Triggers {
				if tt.After(status.started) {
					m.programmingLatency.Observe(done.Sub(tt).Seconds())
				}
			}
			status.synced(done, u.Snapshot)
			hc.update(u.Snapshot, changes)
			m.record(u.Snapshot, b.Stats())
			first = false
			log.Debug("synced", "changed", len(u.Changed), "full", changes.Full, "took", done.Sub(start))
		}
		last := time.Now()
		select {
		case <-ctx.Done():
			return nil
		case <-t.Changed():
		case <-retry.C:
		}
		// At most one sync per MinSyncInterval, so a burst coalesces; a
		// change after a quiet spell is programmed at once.
		if wait := cfg.MinSyncInterval - time.Since(last); wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
	}
}

// serviceCIDRHandler hands the union of every ServiceCIDR's CIDRs to the
// tracker on each change.
func serviceCIDRHandler(store cache.Store, t *Tracker) cache.ResourceEventHandler {
	update := func() {
		var cidrs []netip.Prefix
		for _, o := range store.List() {
			sc, ok := o.(*networkingv1.ServiceCIDR)
			if !ok {
				continue
			}
			for _, s := range sc.Spec.CIDRs {
				if p, err := netip.ParsePrefix(s); err == nil {
					cidrs = append(cidrs, p.Masked())
				}
			}
		}
		slices.SortFunc(cidrs, func(a, b netip.Prefix) int {
			if c := a.Addr().Compare(b.Addr()); c != 0 {
				return c
			}
			return a.Bits() - b.Bits()
		})
		t.SetServiceCIDRs(slices.Compact(cidrs))
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { update() },
		UpdateFunc: func(_, _ any) { update() },
		DeleteFunc: func(any) { update() },
	}
}

// waitNodeIPs waits for the Node to report InternalIP addresses, as
// kube-proxy does: NodePorts need them.
func waitNodeIPs(ctx context.Context, inf cache.SharedIndexInformer, name string, log *slog.Logger) ([]netip.Addr, error) {
	warned := false
	for {
		if obj, ok, _ := inf.GetStore().GetByKey(name); ok {
			var ips []netip.Addr
			for _, a := range obj.(*v1.Node).Status.Addresses {
				if a.Type != v1.NodeInternalIP {
					continue
				}
				if ip, err := netip.ParseAddr(a.Address); err == nil {
					ips = append(ips, ip.Unmap())
				}
			}
			if len(ips) > 0 {
				return ips, nil
			}
		}
		if !warned {
			log.Info("waiting for the node's InternalIP addresses")
			warned = true
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("proxy: node %s has no InternalIP: %w", name, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
