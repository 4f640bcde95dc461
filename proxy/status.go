package proxy

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/switchboard/switchboard/proxy/snapshot"
)

// healthTimeout is how long a change may stay unprogrammed before /healthz
// fails: kube-proxy's default (2 x 30s sync period).
const healthTimeout = 60 * time.Second

// syncStatus is what the sync loop reports of itself: when the data plane
// last took a snapshot, the oldest change still waiting, the last error and
// the snapshot programmed. /healthz and /livez, the healthCheckNodePort
// servers and the debug state read it; only the loop writes it.
type syncStatus struct {
	// tracker holds the changes not yet taken by the loop.
	tracker *Tracker
	// started is when the proxy started: programming latencies are
	// observed only for changes after it (earlier trigger times are the
	// cluster's history, not this proxy's latency).
	started time.Time

	mu sync.Mutex
	// lastUpdated is when the data plane last took a snapshot (or the
	// sync loop started), per family: one transaction programs both.
	lastUpdated time.Time
	// pendingSince is when the oldest change not yet programmed was
	// queued; a failed sync keeps it, so a proxy that keeps failing turns
	// unhealthy (kube-proxy's oldestPendingQueued).
	pendingSince time.Time
	// lastError is the error of the last failed sync, cleared by a
	// successful one.
	lastError     string
	lastErrorTime time.Time
	// programmed is the last snapshot the data plane took.
	programmed *snapshot.Snapshot
}

func newSyncStatus(t *Tracker) *syncStatus {
	return &syncStatus{tracker: t, started: time.Now()}
}

// loopStarted records the start of the sync loop, as kube-proxy's SyncLoop
// does, so a proxy whose first sync never succeeds still reports a time.
func (s *syncStatus) loopStarted(at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastUpdated = at
}

// failed records a failed sync of changes queued since queued (for
// health) and the error (for the debug state).
func (s *syncStatus) failed(at, queued time.Time, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastError, s.lastErrorTime = err.Error(), at
	if !queued.IsZero() && (s.pendingSince.IsZero() || queued.Before(s.pendingSince)) {
		s.pendingSince = queued
	}
}

// synced records a successful sync of snap.
func (s *syncStatus) synced(at time.Time, snap *snapshot.Snapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastUpdated = at
	s.pendingSince = time.Time{}
	s.programmed = snap
	s.lastError, s.lastErrorTime = "", time.Time{}
}

// statusView is a consistent copy of a syncStatus.
type statusView struct {
	lastUpdated, lastErrorTime time.Time
	lastError                  string
	programmed                 *snapshot.Snapshot
}

func (s *syncStatus) view() statusView {
	s.mu.Lock()
	defer s.mu.Unlock()
	return statusView{lastUpdated: s.lastUpdated, lastErrorTime: s.lastErrorTime, lastError: s.lastError, programmed: s.programmed}
}

// proxierHealth and proxyHealth are kube-proxy's healthz and livez bodies
// (pkg/proxy/healthcheck ProxierHealth and ProxyHealth), field for field:
// tools read them.
type proxierHealth struct {
	LastUpdated time.Time `json:"lastUpdated"`
	Healthy     bool      `json:"healthy"`
}

type proxyHealth struct {
	LastUpdated  time.Time `json:"lastUpdated"`
	CurrentTime  time.Time `json:"currentTime"`
	NodeEligible *bool     `json:"nodeEligible,omitempty"`
	Healthy      bool      `json:"healthy"`
	// Status is per IP family ("IPv4", "IPv6"): switchboard programs both
	// families' tables in every sync, as a dual-stack kube-proxy runs one
	// proxier per family.
	Status map[v1.IPFamily]proxierHealth `json:"status,omitempty"`
}

// health reports like kube-proxy's ProxyHealthServer.Health: healthy
// unless a change has waited longer than healthTimeout to be programmed.
func (s *syncStatus) health(now time.Time) proxyHealth {
	s.mu.Lock()
	last, pending := s.lastUpdated, s.pendingSince
	s.mu.Unlock()
	if oldest := s.tracker.OldestPending(); !oldest.IsZero() && (pending.IsZero() || oldest.Before(pending)) {
		pending = oldest
	}
	ph := proxyHealth{Healthy: true, CurrentTime: now, LastUpdated: last, Status: map[v1.IPFamily]proxierHealth{}}
	if last.IsZero() {
		// Still starting: kube-proxy is healthy and has no families yet.
		return ph
	}
	if !pending.IsZero() && now.Sub(pending) >= healthTimeout {
		ph.Healthy = false
	}
	for _, f := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		ph.Status[f] = proxierHealth{LastUpdated: last, Healthy: ph.Healthy}
	}
	return ph
}

// nodeEligible is kube-proxy's: the Node is known, not being deleted, and
// not tainted for deletion by the cluster autoscaler, so load balancers
// drain it in time.
func nodeEligible(n *v1.Node) bool {
	if n == nil || n.DeletionTimestamp != nil {
		return false
	}
	for _, t := range n.Spec.Taints {
		if t.Key == toBeDeletedTaint {
			return false
		}
	}
	return true
}

// toBeDeletedTaint is the cluster autoscaler's taint on a node it is about
// to remove (kube-proxy's healthcheck.ToBeDeletedTaint).
const toBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// healthzHandler serves /healthz and /livez from the sync status; nodeObj
// returns this proxy's Node (nil until seen), for /healthz's eligibility.
func healthzHandler(s *syncStatus, nodeObj func() *v1.Node) http.Handler {
	mux := http.NewServeMux()
	// /healthz answers like kube-proxy's: 503 when unhealthy or the node
	// is not eligible, with the ProxyHealth body.
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		now := time.Now()
		ph := s.health(now)
		eligible := nodeEligible(nodeObj())
		ph.NodeEligible = &eligible
		writeHealth(w, ph, ph.Healthy && eligible, now)
	})
	// /livez is /healthz without the node's eligibility.
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) {
		now := time.Now()
		ph := s.health(now)
		writeHealth(w, ph, ph.Healthy, now)
	})
	return mux
}

// writeHealth writes a health answer; a healthy answer's lastUpdated is
// the current time, as upstream keeps it for old clients.
func writeHealth(w http.ResponseWriter, ph proxyHealth, ok bool, now time.Time) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	} else {
		w.WriteHeader(http.StatusOK)
		ph.LastUpdated = now
	}
	out, _ := json.Marshal(ph)
	w.Write(out)
}
