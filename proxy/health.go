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
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/switchboard/switchboard/netnamespace"
	"github.com/switchboard/switchboard/proxy/nftables"
	"github.com/switchboard/switchboard/proxy/snapshot"
)

// healthTimeout is how long a change may stay unprogrammed before /healthz
// fails: kube-proxy's default (2 x 30s sync period).
const healthTimeout = 60 * time.Second

// health serves /healthz, /livez and /metrics, and one server per
// healthCheckNodePort, all inside the proxy's network namespace.
type health struct {
	node    string
	netns   string
	tracker *Tracker
	log     *slog.Logger
	started time.Time

	mu          sync.Mutex
	lastUpdated time.Time
	// lastError is the error of the last failed sync, cleared by a
	// successful one.
	lastError     string
	lastErrorTime time.Time
	// programmed is the last snapshot the data plane took; inspect reads
	// the data plane back (see DebugPath).
	programmed *snapshot.Snapshot
	inspect    inspector
	servers    []*http.Server
	hcnp       map[int32]*hcServer
}

func newHealth(node, netns string, t *Tracker, inspect inspector, log *slog.Logger) *health {
	return &health{node: node, netns: netns, tracker: t, inspect: inspect, log: log, started: time.Now(), hcnp: map[int32]*hcServer{}}
}

// listen opens a TCP listener inside the proxy's namespace.
func (h *health) listen(addr string) (net.Listener, error) {
	var l net.Listener
	err := netnamespace.Do(h.netnsOrCurrent(), func() error {
		var err error
		l, err = net.Listen("tcp", addr)
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
		l, err := h.listen(healthz)
		if err != nil {
			return fmt.Errorf("proxy: healthz: %w", err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", h.healthz)
		mux.HandleFunc("/livez", h.healthz)
		h.servers = append(h.servers, h.start(l, mux))
	}
	if metricsAddr != "" {
		l, err := h.listen(metricsAddr)
		if err != nil {
			return fmt.Errorf("proxy: metrics: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{}))
		mux.HandleFunc(DebugPath, h.serveDebug)
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
		s.srv.Close()
	}
}

// healthz answers like kube-proxy: 200 unless a change has waited longer
// than healthTimeout, with a JSON body of timestamps.
func (h *health) healthz(w http.ResponseWriter, _ *http.Request) {
	h.mu.Lock()
	last := h.lastUpdated
	h.mu.Unlock()
	now := time.Now()
	oldest := h.tracker.OldestPending()
	healthy := !last.IsZero() && (oldest.IsZero() || now.Sub(oldest) < healthTimeout)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if !healthy {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(map[string]any{
		"lastUpdated":  last.Format(time.RFC3339Nano),
		"currentTime":  now.Format(time.RFC3339Nano),
		"nodeEligible": true,
	})
}

// failed records a failed sync for DebugPath.
func (h *health) failed(at time.Time, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastError, h.lastErrorTime = err.Error(), at
}

// hcServer answers a healthCheckNodePort for external load balancers.
type hcServer struct {
	srv *http.Server
	mu  sync.Mutex
	svc snapshot.ServiceKey
	n   int
}

// ServeHTTP answers like kube-proxy's service health server: 200 with the
// count of local endpoints, or 503 when there are none, so a load balancer
// sends externalTrafficPolicy=Local traffic only to nodes with endpoints.
func (s *hcServer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	svc, n := s.svc, s.n
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(n))
	if n == 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(map[string]any{
		"service":             map[string]string{"namespace": svc.Namespace, "name": svc.Name},
		"localEndpoints":      n,
		"serviceProxyHealthy": true,
	})
}

// synced records a successful sync and reconciles the healthCheckNodePort
// servers with the snapshot.
func (h *health) synced(at time.Time, snap *snapshot.Snapshot) {
	want := map[int32]*hcServer{}
	for key, ports := range snap.Ports {
		for _, sp := range ports {
			if sp.HealthCheckNodePort == 0 {
				continue
			}
			s := want[sp.HealthCheckNodePort]
			if s == nil {
				s = &hcServer{svc: key}
				want[sp.HealthCheckNodePort] = s
			}
			// Per Service, not per port: the ports share their pods.
			s.n = max(s.n, sp.LocalReadyCount())
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastUpdated = at
	h.programmed = snap
	h.lastError, h.lastErrorTime = "", time.Time{}
	for port, s := range h.hcnp {
		if _, ok := want[port]; !ok {
			s.srv.Close()
			delete(h.hcnp, port)
		}
	}
	for port, w := range want {
		if s, ok := h.hcnp[port]; ok {
			s.mu.Lock()
			s.svc, s.n = w.svc, w.n
			s.mu.Unlock()
			continue
		}
		l, err := h.listen(":" + strconv.Itoa(int(port)))
		if err != nil {
			h.log.Error("open healthCheckNodePort", "service", w.svc, "port", port, "err", err)
			continue
		}
		w.srv = h.start(l, w)
		h.hcnp[port] = w
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
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "switchboard_proxy_sync_duration_seconds",
			Help: "Time to program one change (or a full sync) into the kernel.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18)}),
		programmingLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "switchboard_proxy_network_programming_duration_seconds",
			Help: "Time from an EndpointSlice's last-change-trigger-time to its rules being programmed.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 18)}),
		syncErrors:   prometheus.NewCounter(prometheus.CounterOpts{Name: "switchboard_proxy_sync_errors_total", Help: "Failed syncs (each is retried)."}),
		services:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchboard_proxy_services", Help: "Services programmed."}),
		servicePorts: prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchboard_proxy_service_ports", Help: "Service ports programmed."}),
		endpoints:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchboard_proxy_endpoints", Help: "Endpoints known across all Service ports."}),
		elements:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchboard_proxy_nftables_elements", Help: "Set and map elements programmed."}),
		rules:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchboard_proxy_nftables_rules", Help: "Rules in the proxy's tables."}),
	}
	m.registry.MustRegister(m.syncDuration, m.programmingLatency, m.syncErrors, m.services, m.servicePorts, m.endpoints, m.elements, m.rules)
	return m
}

func (m *metrics) record(snap *snapshot.Snapshot, st nftables.Stats) {
	var ports, eps int
	for _, ps := range snap.Ports {
		ports += len(ps)
		for _, p := range ps {
			eps += len(p.Endpoints)
		}
	}
	m.services.Set(float64(len(snap.Ports)))
	m.servicePorts.Set(float64(ports))
	m.endpoints.Set(float64(eps))
	m.elements.Set(float64(st.Elements))
	m.rules.Set(float64(st.Rules))
}
