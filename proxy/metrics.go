package proxy

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard/switchboard/proxy/nftables"
	"github.com/switchboard/switchboard/proxy/snapshot"
)

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
