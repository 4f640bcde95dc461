package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	v1 "k8s.io/api/core/v1"

	"github.com/switchboard/switchboard/netnamespace"
	"github.com/switchboard/switchboard/proxy/nftables"
	"github.com/switchboard/switchboard/proxy/snapshot"
	"github.com/switchboard/switchboard/proxydebug"
)

// healthTimeout is how long a change may stay unprogrammed before /healthz
// fails: kube-proxy's default (2 x 30s sync period).
const healthTimeout = 60 * time.Second

// health serves /healthz, /livez and /metrics, and one server per
// healthCheckNodePort, all inside the proxy's network namespace.
type health struct {
	node    string
	netns   string
	nodeIPs []netip.Addr
	// nodeObj returns this proxy's Node (nil until seen), for
	// nodeEligible.
	nodeObj func() *v1.Node
	tracker *Tracker
	log     *slog.Logger
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
	// programmed is the last snapshot the data plane took; inspect reads
	// the data plane back (see proxydebug.Path).
	programmed *snapshot.Snapshot
	inspect    inspector
	// mode is the proxy mode, for the debug state.
	mode    string
	servers []*http.Server
	// hcnp are the open healthCheckNodePort servers; hcOf is what each
	// Service asks for, hcByPort which Service a port serves.
	hcnp     map[int32]*hcServer
	hcOf     map[snapshot.ServiceKey]hcWant
	hcByPort map[int32]snapshot.ServiceKey
}

func newHealth(node, netns string, nodeIPs []netip.Addr, nodeObj func() *v1.Node, t *Tracker, inspect inspector, log *slog.Logger) *health {
	return &health{node: node, netns: netns, nodeIPs: nodeIPs, nodeObj: nodeObj, tracker: t, inspect: inspect, log: log,
		started: time.Now(), hcnp: map[int32]*hcServer{}, hcOf: map[snapshot.ServiceKey]hcWant{}, hcByPort: map[int32]snapshot.ServiceKey{}}
}

// listen opens a TCP listener inside the proxy's network namespace.
func (h *health) listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := netnamespace.Do(h.netnsOrCurrent(), func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in %q: %w", addr, h.netns, err)
	}
	return l, nil
}

func (h *health) netnsOrCurrent() string {
	if h.netns == "" {
		return "/proc/thread-self/ns/net"
	}
	return h.netns
}

func (h *health) start(l net.Listener, handler http.Handler) *http.Server {
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.log.Error("health server stopped", "addr", l.Addr(), "err", err)
		}
	}()
	return srv
}

func (h *health) serve(ctx context.Context, healthz, metricsAddr string, profiling bool, m *metrics) error {
	if healthz != "" {
		l, err := h.listen("tcp", healthz)
		if err != nil {
			return fmt.Errorf("proxy: healthz: %w", err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", h.healthz)
		mux.HandleFunc("/livez", h.livez)
		h.servers = append(h.servers, h.start(l, mux))
	}
	if metricsAddr != "" {
		l, err := h.listen("tcp", metricsAddr)
		if err != nil {
			return fmt.Errorf("proxy: metrics: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{}))
		mux.HandleFunc(proxydebug.Path, h.serveDebug)
		if profiling {
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		}
		h.servers = append(h.servers, h.start(l, mux))
	}
	return nil
}

func (h *health) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.servers {
		s.Close()
	}
	for _, s := range h.hcnp {
		s.close()
	}
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
func (h *health) health(now time.Time) proxyHealth {
	h.mu.Lock()
	last, pending := h.lastUpdated, h.pendingSince
	h.mu.Unlock()
	if oldest := h.tracker.OldestPending(); !oldest.IsZero() && (pending.IsZero() || oldest.Before(pending)) {
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
func (h *health) nodeEligible() bool {
	n := h.nodeObj()
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

// healthz answers like kube-proxy's /healthz: 503 when unhealthy or the
// node is not eligible, with the ProxyHealth body; a healthy answer's
// lastUpdated is the current time, as upstream keeps it for old clients.
func (h *health) healthz(w http.ResponseWriter, _ *http.Request) {
	now := time.Now()
	ph := h.health(now)
	eligible := h.nodeEligible()
	ph.NodeEligible = &eligible
	writeHealth(w, ph, ph.Healthy && eligible, now)
}

// livez is /healthz without the node's eligibility.
func (h *health) livez(w http.ResponseWriter, _ *http.Request) {
	now := time.Now()
	ph := h.health(now)
	writeHealth(w, ph, ph.Healthy, now)
}

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

// loopStarted records the start of the sync loop, as kube-proxy's SyncLoop
// does, so a proxy whose first sync never succeeds still reports a time.
func (h *health) loopStarted(at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastUpdated = at
}

// failed records a failed sync of changes queued since queued (for
// health) and the error (for proxydebug.Path).
func (h *health) failed(at, queued time.Time, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastError, h.lastErrorTime = err.Error(), at
	if !queued.IsZero() && (h.pendingSince.IsZero() || queued.Before(h.pendingSince)) {
		h.pendingSince = queued
	}
}

// hcServer answers one Service's healthCheckNodePort on each node address
// of the Service's families, as kube-proxy's service health server does
// (one per family, on the node's addresses, never on loopback).
type hcServer struct {
	servers []*http.Server
	h       *health
	mu      sync.Mutex
	svc     snapshot.ServiceKey
	// fams says which families the Service has ([0] IPv4, [1] IPv6); n
	// counts its ready local endpoints per family.
	fams [2]bool
	n    [2]int
}

func (s *hcServer) close() {
	for _, srv := range s.servers {
		srv.Close()
	}
}

// famIndex indexes per-family arrays: [0] IPv4, [1] IPv6.
func famIndex(is4 bool) int {
	if is4 {
		return 0
	}
	return 1
}

// handler serves the family is4's count.
func (s *hcServer) handler(is4 bool) http.Handler {
	fam := famIndex(is4)
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		svc, n := s.svc, s.n[fam]
		s.mu.Unlock()
		healthy := s.h.health(time.Now()).Healthy
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(n))
		if n != 0 && healthy {
			w.WriteHeader(http.StatusOK)
		} else {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		// kube-proxy's body, byte for byte (it dedents a template).
		fmt.Fprintf(w, "{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": %v\n}",
			svc.Namespace, svc.Name, n, healthy)
	})
}

// hcWant is what one Service asks of the healthCheckNodePort servers:
// the port, the Service's families and its ready local endpoints in each.
type hcWant struct {
	port int32
	fams [2]bool
	n    [2]int
}

// healthCheckOf is what a Service's ports ask of the healthCheckNodePort
// servers (per Service, not per port: the ports share their pods).
func healthCheckOf(ports []*snapshot.ServicePort) hcWant {
	var w hcWant
	for _, sp := range ports {
		if sp.HealthCheckNodePort == 0 {
			continue
		}
		w.port = sp.HealthCheckNodePort
		for _, ip := range sp.ClusterIPs {
			w.fams[famIndex(ip.Is4())] = true
			w.n[famIndex(ip.Is4())] = snapshot.LocalReadyEndpoints(ports, ip.Is4())
		}
		break
	}
	return w
}

// synced records a successful sync and brings the healthCheckNodePort
// servers of the changed Services in step with the snapshot; a full sync
// reconciles all of them.
func (h *health) synced(at time.Time, snap *snapshot.Snapshot, changes snapshot.Changes) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastUpdated = at
	h.pendingSince = time.Time{}
	h.programmed = snap
	h.lastError, h.lastErrorTime = "", time.Time{}
	touched := map[int32]bool{}
	set := func(key snapshot.ServiceKey, w hcWant) {
		old := h.hcOf[key]
		if old.port != 0 {
			touched[old.port] = true
			if h.hcByPort[old.port] == key {
				delete(h.hcByPort, old.port)
			}
		}
		if w.port == 0 {
			delete(h.hcOf, key)
			return
		}
		h.hcOf[key] = w
		h.hcByPort[w.port] = key
		touched[w.port] = true
	}
	if changes.Full {
		for port := range h.hcnp {
			touched[port] = true
		}
		h.hcOf, h.hcByPort = map[snapshot.ServiceKey]hcWant{}, map[int32]snapshot.ServiceKey{}
		for key, ports := range snap.All() {
			if w := healthCheckOf(ports); w.port != 0 {
				set(key, w)
			}
		}
	} else {
		for _, key := range changes.Keys {
			set(key, healthCheckOf(snap.Get(key)))
		}
	}
	for port := range touched {
		key, wanted := h.hcByPort[port]
		w := h.hcOf[key]
		if s, open := h.hcnp[port]; open {
			if wanted && s.fams == w.fams {
				s.mu.Lock()
				s.svc, s.n = key, w.n
				s.mu.Unlock()
				continue
			}
			s.close()
			delete(h.hcnp, port)
		}
		if !wanted {
			continue
		}
		s := &hcServer{h: h, svc: key, fams: w.fams, n: w.n}
		for _, ip := range h.nodeIPs {
			if !w.fams[famIndex(ip.Is4())] {
				continue
			}
			network := "tcp6"
			if ip.Is4() {
				network = "tcp4"
			}
			l, err := h.listen(network, netip.AddrPortFrom(ip, uint16(port)).String())
			if err != nil {
				h.log.Error("open healthCheckNodePort", "service", key, "port", port, "err", err)
				continue
			}
			s.servers = append(s.servers, h.start(l, s.handler(ip.Is4())))
		}
		h.hcnp[port] = s
	}
}

// metrics are the proxy's Prometheus metrics, on their own registry (the
// process may also host kube-apiserver's).
type metrics struct {
	registry           *prometheus.Registry
	syncDuration       prometheus.Histogram
	programmingLatency prometheus.Histogram
	syncErrors         prometheus.Counter
	services           prometheus.Gauge
	servicePorts       prometheus.Gauge
	endpoints          prometheus.Gauge
	elements           prometheus.Gauge
	rules              prometheus.Gauge
	written            prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "switchboard_proxy_sync_duration_seconds",
			Help: "Time from taking a change (or everything, for a full sync) from the informers' store to the end of its kernel write.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18)}),
		programmingLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "switchboard_proxy_network_programming_duration_seconds",
			Help: "Time from an EndpointSlice's last-change-trigger-time to its rules being programmed.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 18)}),
		syncErrors:   prometheus.NewCounter(prometheus.CounterOpts{Name: "switchboard_proxy_sync_errors_total", Help: "Failed syncs (each is retried)."}),
		services:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchboard_proxy_services", Help: "Services programmed."}),
		servicePorts: prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchboard_proxy_service_ports", Help: "Service ports programmed."}),
		endpoints:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchboard_proxy_endpoints", Help: "Endpoints known across all Service ports."}),
		elements:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchboard_proxy_nftables_elements", Help: "Set and map elements programmed."}),
		rules:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchboard_proxy_nftables_rules", Help: "Rules in the proxy's tables."}),
		written: prometheus.NewCounter(prometheus.CounterOpts{Name: "switchboard_proxy_nftables_elements_written_total",
			Help: "Set and map elements added or deleted by successful syncs (a replaced element counts twice)."}),
	}
	m.registry.MustRegister(m.syncDuration, m.programmingLatency, m.syncErrors, m.services, m.servicePorts, m.endpoints, m.elements, m.rules, m.written)
	return m
}

// record sets the gauges from counts the snapshot and the backend keep,
// so it costs nothing per Service; it is called once per successful sync.
func (m *metrics) record(snap *snapshot.Snapshot, st nftables.Stats) {
	m.written.Add(float64(st.LastWrite.Added + st.LastWrite.Deleted))
	services, ports, eps := snap.Counts()
	m.services.Set(float64(services))
	m.servicePorts.Set(float64(ports))
	m.endpoints.Set(float64(eps))
	m.elements.Set(float64(st.Elements))
	m.rules.Set(float64(st.Rules))
}
