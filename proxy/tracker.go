package proxy

import (
	"net/netip"
	"slices"
	"sync"
	"time"

	"k8s.io/client-go/tools/cache"

	"github.com/switchboard/switchboard/proxy/snapshot"
	"github.com/switchboard/switchboard/servicestore"
)

// Tracker turns informer events for Services and EndpointSlices into
// immutable snapshots and the list of Services that changed since the last
// one, so a backend's work grows with the change, not the cluster.
type Tracker struct {
	mu   sync.Mutex
	node snapshot.Node
	// objects are the Services and their slices, as the informers
	// deliver them; every change marks its Service dirty.
	objects *servicestore.Store
	// serviceHandler and sliceHandler feed objects.
	serviceHandler, sliceHandler cache.ResourceEventHandler
	dirty                        map[snapshot.ServiceKey]time.Time // first time it became dirty
	current                      *snapshot.Snapshot
	notify                       chan struct{}
	// serviceCIDRs are the cluster's Service CIDRs, for every snapshot.
	serviceCIDRs []netip.Prefix
}

// NewTracker returns an empty tracker for the proxy on node.
func NewTracker(node string) *Tracker {
	t := &Tracker{
		node:    snapshot.Node{Name: node},
		objects: servicestore.New(),
		dirty:   map[snapshot.ServiceKey]time.Time{},
		current: snapshot.New(nil),
		notify:  make(chan struct{}, 1),
	}
	t.serviceHandler, t.sliceHandler = t.objects.Handlers(&t.mu, func(k servicestore.Key) { t.markLocked(snapshot.ServiceKey(k)) })
	return t
}

// Changed is signalled (coalesced) whenever a change is pending; Next takes
// the signal with the changes, so a signal always means work.
func (t *Tracker) Changed() <-chan struct{} { return t.notify }

func (t *Tracker) markLocked(k snapshot.ServiceKey) {
	if _, ok := t.dirty[k]; !ok {
		t.dirty[k] = time.Now()
	}
	select {
	case t.notify <- struct{}{}:
	default:
	}
}

// OldestPending returns when the oldest unsynced change arrived (zero if
// none), for health checks.
func (t *Tracker) OldestPending() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	var oldest time.Time
	for _, at := range t.dirty {
		if oldest.IsZero() || at.Before(oldest) {
			oldest = at
		}
	}
	return oldest
}

// SetZone records this node's topology zone (its topology.kubernetes.io/zone
// label). Zone hints are read against it, so a change rebuilds every
// Service, as kube-proxy's OnTopologyChange does.
func (t *Tracker) SetZone(zone string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if zone == t.node.Zone {
		return
	}
	t.node.Zone = zone
	for k := range t.objects.Keys() {
		t.markLocked(snapshot.ServiceKey(k))
	}
}

// SetServiceCIDRs records the cluster's Service CIDRs (from its
// ServiceCIDR objects). The backend rebuilds its node-wide rules when the
// list changes (kube-proxy applies them at its next full sync).
func (t *Tracker) SetServiceCIDRs(cidrs []netip.Prefix) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if slices.Equal(cidrs, t.serviceCIDRs) {
		return
	}
	t.serviceCIDRs = cidrs
	select {
	case t.notify <- struct{}{}:
	default:
	}
}

// ServiceHandler is the informer handler for Services.
func (t *Tracker) ServiceHandler() cache.ResourceEventHandler { return t.serviceHandler }

// SliceHandler is the informer handler for EndpointSlices of any manager;
// a slice relabelled to another Service leaves the one it belonged to.
func (t *Tracker) SliceHandler() cache.ResourceEventHandler { return t.sliceHandler }

// Update is the result of Next: a new snapshot, what changed, and for
// latency metrics the newest last-change-trigger-time per changed Service.
type Update struct {
	Snapshot *snapshot.Snapshot
	Changed  []snapshot.ServiceKey
	Triggers []time.Time
	// Queued is when the oldest of the changes was queued (zero if none),
	// for health when the sync fails.
	Queued time.Time
}

// Next builds the snapshot for everything pending and clears the pending
// list. It costs what changed: the new snapshot shares everything else
// with the previous one.
func (t *Tracker) Next() Update {
	t.mu.Lock()
	defer t.mu.Unlock()
	var u Update
	changes := make(map[snapshot.ServiceKey][]*snapshot.ServicePort, len(t.dirty))
	for k, at := range t.dirty {
		if u.Queued.IsZero() || at.Before(u.Queued) {
			u.Queued = at
		}
		sk := servicestore.Key(k)
		sl := t.objects.Slices(sk)
		changes[k] = snapshot.BuildService(t.objects.Service(sk), sl, t.node)
		u.Changed = append(u.Changed, k)
		if tt := snapshot.LastChangeTriggerTime(sl); !tt.IsZero() {
			u.Triggers = append(u.Triggers, tt)
		}
	}
	// A fresh map, not clear: iterating a map costs what it once held,
	// and after the initial sync this one held every Service.
	t.dirty = map[snapshot.ServiceKey]time.Time{}
	// A mark since the last Next left a signal for changes this Next has
	// just taken: drop it, or the loop would wake to nothing pending.
	select {
	case <-t.notify:
	default:
	}
	t.current = t.current.With(changes)
	// Not yet handed out: the CIDRs ride along (a change of them makes
	// the backend rebuild its node-wide rules).
	t.current.ServiceCIDRs = t.serviceCIDRs
	u.Snapshot = t.current
	return u
}

// Requeue marks Services pending again after a failed sync.
func (t *Tracker) Requeue(keys []snapshot.ServiceKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, k := range keys {
		t.markLocked(k)
	}
}
