// Package endpointslice keeps the EndpointSlices of every Service with a
// selector, with the observable content of upstream kube-controller-manager's
// EndpointSlice controller of the linked Kubernetes version.
//
// Desired-state computation and packing are upstream's own published
// reconciler (k8s.io/endpointslice): it is the definition of "what upstream
// writes", including placeholder slices, packing so that one pod change costs
// one slice write, trigger-time annotations and trafficDistribution hints.
// This package owns everything around it, designed for latency and memory:
// pod events are mapped to Services inline (no second queue hop) through a
// selector index, a sync finds its pods through a label index instead of
// scanning the namespace, the pod cache holds compact records (cachedPod)
// and the other caches trimmed objects, the client speaks protobuf, and slices of
// deleted Services are deleted here because a cluster may run without a
// garbage collector.
package endpointslice

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	reconcilerpkg "k8s.io/endpointslice"
	esmetrics "k8s.io/endpointslice/metrics"
	"k8s.io/endpointslice/topologycache"
	esutil "k8s.io/endpointslice/util"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/features"
)

// ManagedBy is the endpointslice.kubernetes.io/managed-by value on every slice
// this controller writes: upstream's own, because the controller replaces
// upstream's and clients (and the conformance suite) look for that value. So
// on a live switch-over it adopts the slices upstream's left, and the two
// must not run at once (turn upstream's off). Slices of any other manager
// are never touched.
const ManagedBy = "endpointslice-controller.k8s.io"

// LegacyManagedBy is the managed-by value switchboard wrote before it wrote
// upstream's. Such slices are adopted: relabelled on their Service's next
// sync, or deleted with the rest of a Service that is gone.
const LegacyManagedBy = "endpointslice-controller.switchboard.dev"

// DefaultMaxEndpointsPerSlice is upstream's default for
// --max-endpoints-per-slice.
const DefaultMaxEndpointsPerSlice = 100

// maxRetries is how often a failing Service is retried (with exponential
// backoff) before it is dropped until its next change; upstream's value.
const maxRetries = 15

// sliceChangeDelay is how long after a slice event we didn't cause the
// Service is resynced: upstream's endpointSliceChangeMinSyncDelay, which
// coalesces the echo of external edits.
const sliceChangeDelay = time.Second

// Options configure a Controller.
type Options struct {
	// MaxEndpointsPerSlice caps endpoints per slice (1..1000); 0 means 100.
	MaxEndpointsPerSlice int32
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// OnInitialSync, if set, is called once, after every Service of the
	// initial lists has been synced and the work queue first ran empty:
	// the moment a process can trade start-up speed for steady-state
	// memory (switchboard controller tightens its GC then).
	OnInitialSync func()
}

// Controller keeps EndpointSlices for Services with selectors.
type Controller struct {
	client kubernetes.Interface
	log    *slog.Logger

	services corelisters.ServiceLister
	nodes    corelisters.NodeLister
	// synced completes per informer once its store holds a full list.
	synced []cache.DoneChecker

	// Indexers of the pod, Service and slice informers (see index.go).
	podIndex, serviceIndex, sliceIndex cache.Indexer

	reconciler   *reconcilerpkg.Reconciler
	tracker      *esutil.EndpointSliceTracker
	triggerTimes *esutil.TriggerTimeTracker
	topology     *topologycache.TopologyCache
	broadcaster  record.EventBroadcaster

	queue         workqueue.TypedRateLimitingInterface[string]
	topologyQueue workqueue.TypedRateLimitingInterface[string]

	handlersSynced []cache.InformerSynced // every handler got its initial list
	busy           atomic.Int32           // syncs in progress
	onInitialSync  func()
}

// NewController builds a controller on factory's informers; call
// factory.Start after NewController and before (or concurrently with) Run.
// Informers created here carry transforms that trim cached objects to the
// fields the controller reads, so a factory shared with code that needs full
// Pods must not be passed.
func NewController(client kubernetes.Interface, factory informers.SharedInformerFactory, opts Options) (*Controller, error) {
	max := opts.MaxEndpointsPerSlice
	if max == 0 {
		max = DefaultMaxEndpointsPerSlice
	}
	if max < 1 || max > 1000 {
		return nil, fmt.Errorf("max endpoints per slice %d: must be between 1 and 1000", max)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Controller{client: client, log: log, onInitialSync: opts.OnInitialSync}

	// Per-item exponential backoff (5 ms .. 1000 s) on errors, combined with an
	// overall token bucket for retries only: a storm of failing Services
	// cannot turn into a storm of requests. First attempts are never delayed.
	c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedMaxOfRateLimiter(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](5*time.Millisecond, 1000*time.Second),
			&workqueue.TypedBucketRateLimiter[string]{Limiter: rate.NewLimiter(rate.Limit(10), 100)},
		),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "switchboard_endpointslice"},
	)
	c.topologyQueue = workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())

	svcInf := factory.Core().V1().Services().Informer()
	podInf := factory.Core().V1().Pods().Informer()
	sliceInf := factory.Discovery().V1().EndpointSlices().Informer()
	nodeInf := factory.Core().V1().Nodes().Informer()
	for _, t := range []struct {
		inf cache.SharedIndexInformer
		fn  cache.TransformFunc
	}{{svcInf, trimService}, {podInf, trimPod}, {sliceInf, trimSlice}, {nodeInf, trimNode}} {
		if err := t.inf.SetTransform(t.fn); err != nil {
			return nil, fmt.Errorf("set informer transform: %w (pass a factory whose informers have not started)", err)
		}
	}
	for _, x := range []struct {
		inf  cache.SharedIndexInformer
		name string
		fn   cache.IndexFunc
	}{{podInf, podLabelIndex, podLabelIndexFunc}, {svcInf, serviceSelectorIdx, serviceSelectorIndexFunc}, {sliceInf, sliceServiceIndex, sliceServiceIndexFunc}} {
		if err := x.inf.AddIndexers(cache.Indexers{x.name: x.fn}); err != nil {
			return nil, fmt.Errorf("add informer index %s: %w", x.name, err)
		}
	}
	c.podIndex, c.serviceIndex, c.sliceIndex = podInf.GetIndexer(), svcInf.GetIndexer(), sliceInf.GetIndexer()
	c.services = factory.Core().V1().Services().Lister()
	c.nodes = factory.Core().V1().Nodes().Lister()
	c.synced = []cache.DoneChecker{svcInf.HasSyncedChecker(), podInf.HasSyncedChecker(), sliceInf.HasSyncedChecker(), nodeInf.HasSyncedChecker()}

	handlers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{svcInf, cache.ResourceEventHandlerFuncs{
			AddFunc:    c.enqueueObject,
			UpdateFunc: func(_, cur any) { c.enqueueObject(cur) },
			DeleteFunc: c.enqueueObject,
		}},
		{podInf, cache.ResourceEventHandlerDetailedFuncs{
			// Pods of the initial list need no mapping: every Service
			// they could select is queued by its own add event, and
			// mapping 10,000 pods to Services is most of a cold start's
			// CPU otherwise.
			AddFunc: func(obj any, isInInitialList bool) {
				if !isInInitialList {
					c.onPod(nil, obj)
				}
			},
			UpdateFunc: c.onPod,
			DeleteFunc: func(obj any) { c.onPod(obj, nil) },
		}},
		{sliceInf, cache.ResourceEventHandlerFuncs{
			AddFunc:    c.onSliceAdd,
			UpdateFunc: c.onSliceUpdate,
			DeleteFunc: c.onSliceDelete,
		}},
		{nodeInf, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { c.topologyQueue.Add("nodes") },
			UpdateFunc: c.onNodeUpdate,
			DeleteFunc: func(any) { c.topologyQueue.Add("nodes") },
		}},
	}
	for _, h := range handlers {
		reg, err := h.inf.AddEventHandler(h.h)
		if err != nil {
			return nil, fmt.Errorf("add informer handler: %w", err)
		}
		c.handlersSynced = append(c.handlersSynced, reg.HasSynced)
	}

	// Upstream's endpoint_slice_controller_* metrics: the reconciler
	// records changes, endpoints added/removed and desired counts; syncs are
	// counted in processNext. Registering is idempotent and process-wide.
	esmetrics.RegisterMetrics()
	c.broadcaster = record.NewBroadcaster()
	recorder := c.broadcaster.NewRecorder(scheme.Scheme, v1.EventSource{Component: "endpoint-slice-controller"})
	c.tracker = esutil.NewEndpointSliceTracker()
	c.triggerTimes = esutil.NewTriggerTimeTracker()
	c.topology = topologycache.NewTopologyCache()
	c.reconciler = reconcilerpkg.NewReconciler(client, c.nodes, max, c.tracker, c.topology, recorder, ManagedBy,
		reconcilerpkg.WithPreferSameTrafficDistributionEnabled(utilfeature.DefaultFeatureGate.Enabled(features.PreferSameTrafficDistribution)))
	return c, nil
}

// Run waits for the caches and processes Services with workers goroutines
// until ctx ends.
func (c *Controller) Run(ctx context.Context, workers int) error {
	if workers < 1 {
		workers = 1
	}
	c.broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: c.client.CoreV1().Events("")})
	defer c.broadcaster.Shutdown()
	var wg sync.WaitGroup
	defer func() {
		c.queue.ShutDown()
		c.topologyQueue.ShutDown()
		wg.Wait()
	}()
	start := time.Now()
	// WaitFor wakes the moment the last list lands; WaitForCacheSync
	// polls every 100 ms, which a cold start would mostly spend waiting.
	if !cache.WaitFor(ctx, "", c.synced...) {
		return fmt.Errorf("endpointslice controller: caches not synced: %w", ctx.Err())
	}
	c.log.Info("endpointslice controller started", "workers", workers, "managedBy", ManagedBy, "cacheSync", time.Since(start).Round(time.Millisecond))
	for range workers {
		wg.Go(func() {
			for c.processNext(ctx) {
			}
		})
	}
	if c.onInitialSync != nil {
		wg.Go(func() {
			if c.waitInitialSync(ctx) {
				c.onInitialSync()
			}
		})
	}
	wg.Go(func() {
		for {
			key, quit := c.topologyQueue.Get()
			if quit {
				return
			}
			c.checkTopology()
			c.topologyQueue.Done(key)
		}
	})
	<-ctx.Done()
	return nil
}

// Synced reports whether the informer caches have synced.
func (c *Controller) Synced() bool {
	for _, s := range c.synced {
		select {
		case <-s.Done():
		default:
			return false
		}
	}
	return true
}

// waitInitialSync polls until every handler has seen its initial list and
// the queue is empty with no sync running; false if ctx ended first.
func (c *Controller) waitInitialSync(ctx context.Context) bool {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
		synced := true
		for _, s := range c.handlersSynced {
			synced = synced && s()
		}
		if synced && c.queue.Len() == 0 && c.busy.Load() == 0 {
			return true
		}
	}
}

func (c *Controller) processNext(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	c.busy.Add(1)
	defer c.busy.Add(-1)
	defer c.queue.Done(key)
	err := c.sync(ctx, key)
	trackSync(err)
	switch {
	case err == nil:
		c.queue.Forget(key)
	case c.queue.NumRequeues(key) < maxRetries:
		level := slog.LevelInfo
		if apierrors.IsConflict(err) || isStale(err) {
			level = slog.LevelDebug
		}
		c.log.Log(ctx, level, "sync service endpoint slices, retrying", "service", key, "err", err)
		c.queue.AddRateLimited(key)
	default:
		c.log.Error("sync service endpoint slices: retry budget exceeded, waiting for its next change", "service", key, "err", err)
		c.queue.Forget(key)
	}
	return true
}

// trackSync counts a sync in endpoint_slice_controller_syncs by result, as
// upstream's controller does ("stale" when the slice cache lagged behind our
// own writes).
func trackSync(err error) {
	result := "success"
	if err != nil {
		result = "error"
		if isStale(err) {
			result = "stale"
		}
	}
	esmetrics.EndpointSliceSyncs.WithLabelValues(result).Inc()
}

func isStale(err error) bool {
	var s *staleCacheError
	return errors.As(err, &s)
}

type staleCacheError struct{ service string }

func (e *staleCacheError) Error() string {
	return "endpoint slice cache of service " + e.service + " is older than our last write"
}

// sync brings the slices of Service key (namespace/name) to their desired
// state: mirrors upstream's syncService, plus deleting the slices of a
// Service that no longer exists.
func (c *Controller) sync(ctx context.Context, key string) error {
	namespace, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	svc, err := c.services.Services(namespace).Get(name)
	if apierrors.IsNotFound(err) {
		c.triggerTimes.DeleteService(namespace, name)
		c.reconciler.DeleteService(namespace, name)
		c.tracker.DeleteService(namespace, name)
		return c.deleteOrphans(ctx, namespace, name)
	}
	if err != nil {
		return fmt.Errorf("get service %s: %w", key, err)
	}
	if svc.Spec.Type == v1.ServiceTypeExternalName || svc.Spec.Selector == nil {
		// Like upstream: such Services get no slices from a controller, and
		// whatever slices exist are someone else's to manage.
		return nil
	}
	pods, err := podsSelectedBy(c.podIndex, namespace, svc.Spec.Selector)
	if err != nil {
		return fmt.Errorf("list pods of service %s: %w", key, err)
	}
	slices, err := c.ownSlices(namespace, name)
	if err != nil {
		return err
	}
	if c.tracker.StaleSlices(svc, slices) {
		return &staleCacheError{service: key}
	}
	trigger := c.triggerTimes.ComputeEndpointLastChangeTriggerTime(namespace, svc, pods)
	if err := c.reconciler.Reconcile(klog.Background(), svc, pods, slices, trigger); err != nil {
		return fmt.Errorf("reconcile endpoint slices of service %s: %w", key, err)
	}
	return nil
}

// ownManager says whether the slice is this controller's: upstream's
// manager value, or the one switchboard wrote before (the reconciler
// relabels those when it reconciles them).
func ownManager(s *discovery.EndpointSlice) bool {
	m := s.Labels[discovery.LabelManagedBy]
	return m == ManagedBy || m == LegacyManagedBy
}

// ownSlices lists the live slices this controller manages for a Service.
func (c *Controller) ownSlices(namespace, name string) ([]*discovery.EndpointSlice, error) {
	all, err := c.sliceIndex.ByIndex(sliceServiceIndex, namespace+"/"+name)
	if err != nil {
		return nil, fmt.Errorf("list endpoint slices of service %s/%s: %w", namespace, name, err)
	}
	out := make([]*discovery.EndpointSlice, 0, len(all))
	for _, obj := range all {
		if s, ok := obj.(*discovery.EndpointSlice); ok && ownManager(s) && s.DeletionTimestamp == nil {
			out = append(out, s)
		}
	}
	return out, nil
}

// deleteOrphans deletes our slices of a Service that is gone. Upstream leaves
// this to the garbage collector through the owner reference; doing it here
// keeps clusters without one clean. Each delete is preconditioned on the
// slice's UID so a slice recreated meanwhile is never hit.
func (c *Controller) deleteOrphans(ctx context.Context, namespace, name string) error {
	slices, err := c.ownSlices(namespace, name)
	if err != nil {
		return err
	}
	var errs []error
	for _, s := range slices {
		uid := s.UID
		err := c.client.DiscoveryV1().EndpointSlices(namespace).Delete(ctx, s.Name,
			metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			errs = append(errs, fmt.Errorf("delete endpoint slice %s/%s of deleted service: %w", namespace, s.Name, err))
			continue
		}
		c.log.Debug("deleted endpoint slice of deleted service", "slice", namespace+"/"+s.Name)
	}
	return errors.Join(errs...)
}

func (c *Controller) enqueueObject(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		c.log.Error("service event without key", "err", err)
		return
	}
	c.queue.Add(key)
}

// onPod maps a pod change to the Services it affects right in the event
// handler: upstream routes it through a second queue first, which costs a
// goroutine hand-off per flip.
func (c *Controller) onPod(old, cur any) {
	key := esutil.GetPodUpdateProjectionKey(asPod(old), asPod(cur))
	if key == nil {
		return
	}
	services, err := servicesToUpdate(c.serviceIndex, key)
	if err != nil {
		c.log.Error("map pod to services", "err", err)
		return
	}
	for s := range services {
		c.queue.Add(s)
	}
}

func (c *Controller) onSliceAdd(obj any) {
	s, ok := obj.(*discovery.EndpointSlice)
	if !ok {
		return
	}
	if c.reconciler.ManagedByController(s) && c.tracker.ShouldSync(s) || s.Labels[discovery.LabelManagedBy] == LegacyManagedBy {
		c.enqueueForSlice(s)
	}
}

func (c *Controller) onSliceUpdate(oldObj, curObj any) {
	prev, ok1 := oldObj.(*discovery.EndpointSlice)
	cur, ok2 := curObj.(*discovery.EndpointSlice)
	if !ok1 || !ok2 {
		return
	}
	if prev.Labels[discovery.LabelServiceName] != cur.Labels[discovery.LabelServiceName] {
		c.enqueueForSlice(cur)
		c.enqueueForSlice(prev)
		return
	}
	if c.reconciler.ManagedByChanged(prev, cur) || (c.reconciler.ManagedByController(cur) && c.tracker.ShouldSync(cur)) {
		c.enqueueForSlice(cur)
	}
}

func (c *Controller) onSliceDelete(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	s, ok := obj.(*discovery.EndpointSlice)
	if !ok {
		return
	}
	if c.reconciler.ManagedByController(s) && c.tracker.Has(s) && !c.tracker.HandleDeletion(s) {
		c.enqueueForSlice(s)
	}
}

func (c *Controller) enqueueForSlice(s *discovery.EndpointSlice) {
	key, err := reconcilerpkg.ServiceControllerKey(s)
	if err != nil {
		return
	}
	c.queue.AddAfter(key, sliceChangeDelay)
}

func (c *Controller) onNodeUpdate(oldObj, curObj any) {
	prev, ok1 := oldObj.(*v1.Node)
	cur, ok2 := curObj.(*v1.Node)
	if !ok1 || !ok2 {
		return
	}
	if nodeReady(prev) != nodeReady(cur) || prev.Labels[v1.LabelTopologyZone] != cur.Labels[v1.LabelTopologyZone] {
		c.topologyQueue.Add("nodes")
	}
}

// checkTopology feeds node zones and CPUs to the topology cache (used for
// topology-aware hints) and resyncs Services whose hints became invalid.
func (c *Controller) checkTopology() {
	nodes, err := c.nodes.List(labels.Everything())
	if err != nil {
		return
	}
	c.topology.SetNodes(klog.Background(), nodes)
	for _, key := range c.topology.GetOverloadedServices() {
		c.queue.Add(key)
	}
}

func nodeReady(n *v1.Node) bool {
	for _, cond := range n.Status.Conditions {
		if cond.Type == v1.NodeReady {
			return cond.Status == v1.ConditionTrue
		}
	}
	return false
}
