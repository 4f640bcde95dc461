// Package dns is switchboard's cluster DNS: the Kubernetes DNS-Based Service
// Discovery specification served from an in-memory index that informers on
// Services, EndpointSlices, Pods and Namespaces keep current, answering as
// CoreDNS's kubernetes plugin does with kubeadm's Corefile, and forwarding
// names outside the zone to upstream resolvers through a cache.
package dns

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config configures a Server.
type Config struct {
	// Zone is the cluster domain, default "cluster.local".
	Zone string
	// TTL of answers from the cluster zone, default 30 (kubeadm's Corefile).
	TTL uint32
	// Upstreams are "host:port" resolvers for names outside the zone.
	Upstreams []string
	// UpstreamTimeout bounds one upstream exchange, default 2s.
	UpstreamTimeout time.Duration
	// CacheSize caps cached upstream answers, default 10000.
	CacheSize int
	// MaxConcurrent caps the queries waiting on an upstream at once, as
	// the forward plugin's max_concurrent (1000 in kubeadm's Corefile, the
	// default here; negative: no cap). A query beyond it is answered
	// REFUSED at once, as the plugin does, so that an upstream that stops
	// answering costs bounded memory and clients an immediate answer.
	MaxConcurrent int
	Logger        *slog.Logger
}

// Server answers DNS queries. Its zero value is not usable; use NewServer.
type Server struct {
	zone    string
	ttl     uint32
	index   *Index
	fwd     *forwarder
	log     *slog.Logger
	metrics *metrics
	ready   chan struct{}
	// The fast path's view of the zone: its name in lower-case wire format
	// (nil disables the fast path), its label count, and its SOA record
	// packed uncompressed, serial last but four timers, with the offsets
	// in it of the zone ending its three names.
	zoneWire   []byte
	zoneLabels int
	soaWire    []byte
	soaZones   [3]int
}

// NewServer returns a server answering from index.
func NewServer(cfg Config, index *Index) *Server {
	if cfg.Zone == "" {
		cfg.Zone = "cluster.local"
	}
	if cfg.TTL == 0 {
		cfg.TTL = 30
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{
		zone: dns.Fqdn(strings.ToLower(cfg.Zone)), ttl: cfg.TTL, index: index,
		fwd: newForwarder(cfg.Upstreams, cfg.UpstreamTimeout, cfg.CacheSize, cfg.MaxConcurrent), log: cfg.Logger,
		metrics: newMetrics(), ready: make(chan struct{}),
	}
	s.fwd.rejects = s.metrics.forwardRejects
	s.initFast()
	return s
}

// initFast prepares the fast path's wire-format zone and SOA. A zone under
// arpa. would overlap the reverse names resolve checks first, and the root
// zone holds no Service names the fast path could tell apart: both keep to
// the slow path.
func (s *Server) initFast() {
	if s.zone == "." || s.zone == "arpa." || strings.HasSuffix(s.zone, ".arpa.") {
		return
	}
	buf := make([]byte, 512)
	n, err := dns.PackDomainName(s.zone, buf, 0, nil, false)
	if err != nil {
		return
	}
	soa := make([]byte, 1024)
	m, err := dns.PackRR(s.soa(s.zone), soa, 0, nil, false)
	if err != nil {
		return
	}
	s.zoneWire, s.zoneLabels, s.soaWire = buf[:n], dns.CountLabel(s.zone), soa[:m]
	// The owner, then after type, class, TTL and length "ns.dns." and
	// "hostmaster." before the zone.
	ns := n + 10 + len("\x02ns\x03dns")
	s.soaZones = [3]int{0, ns, ns + n + len("\x0ahostmaster")}
}

// MarkReady makes /ready answer 200: call it once the index has synced.
func (s *Server) MarkReady() {
	select {
	case <-s.ready:
	default:
		close(s.ready)
	}
}

// ServeDNS implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	start := time.Now()
	proto := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		proto = "tcp"
	}
	m := s.respond(r, proto, rand.Uint64())
	w.WriteMsg(m)
	qtype := "other"
	if len(r.Question) == 1 {
		qtype = typeLabel(r.Question[0].Qtype)
	}
	s.metrics.observe(proto, qtype, dns.RcodeToString[m.Rcode], time.Since(start))
}

// respond builds the reply to r, sized for the transport, its records
// shuffled as the loadbalance plugin does with the permutations seed draws.
func (s *Server) respond(r *dns.Msg, proto string, seed uint64) *dns.Msg {
	m := new(dns.Msg)
	if len(r.Question) != 1 || r.Opcode != dns.OpcodeQuery {
		m.SetRcode(r, dns.RcodeFormatError)
		if r.Opcode != dns.OpcodeQuery {
			m.SetRcode(r, dns.RcodeNotImplemented)
		}
		return m
	}
	if optCount(r) > 1 {
		// RFC 6891 6.1.1: FORMERR, which MUST be returned; with no OPT
		// of its own, since which of the client's would it answer?
		m.SetRcode(r, dns.RcodeFormatError)
		return m
	}
	if r.Question[0].Qclass != dns.ClassINET {
		// core/dnsserver refuses other classes unless a plugin that
		// answers them (chaos, not in kubeadm's Corefile) is loaded.
		m.SetRcode(r, dns.RcodeRefused)
		return s.fit(r, m, proto)
	}
	if m := badVersion(r); m != nil {
		return m
	}
	m, forward := s.zoneReply(r)
	if forward {
		up, rcode := s.fwd.forward(r)
		if up == nil {
			// As CoreDNS's errorFunc: the rcode alone.
			m = new(dns.Msg)
			m.SetRcode(r, rcode)
			return s.fit(r, m, proto)
		}
		m = up
	}
	balance(m, &shuffler{seed})
	return s.fit(r, m, proto)
}

// optCount is how many OPT records r has.
func optCount(r *dns.Msg) int {
	n := 0
	for _, rr := range r.Extra {
		if rr.Header().Rrtype == dns.TypeOPT {
			n++
		}
	}
	return n
}

// badVersion answers a query with an EDNS version other than 0 as CoreDNS
// does (plugin/pkg/edns.Version, before any plugin): BADVERS, with an OPT
// record of version 0 carrying the extended rcode, nothing else.
func badVersion(r *dns.Msg) *dns.Msg {
	opt := r.IsEdns0()
	if opt == nil || opt.Version() == 0 {
		return nil
	}
	m := new(dns.Msg)
	m.SetReply(r)
	o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
	o.SetVersion(0)
	m.Rcode = dns.RcodeBadVers
	o.SetExtendedRcode(dns.RcodeBadVers)
	m.Extra = []dns.RR{o}
	return m
}

// zoneReply answers r's one question from the cluster zone, before fitting
// it to the client, or reports that it belongs upstream.
func (s *Server) zoneReply(r *dns.Msg) (m *dns.Msg, forward bool) {
	q := r.Question[0]
	asked := dns.Fqdn(q.Name)
	q.Name = strings.ToLower(asked)
	a := s.resolve(q, q.Name == asked)
	if a.forward {
		return nil, true
	}
	if a.rcode == dns.RcodeRefused {
		// A zone transfer: the kubernetes plugin returns the rcode
		// without writing, and the server answers it alone.
		m = new(dns.Msg)
		m.SetRcode(r, dns.RcodeRefused)
		return m, false
	}
	m = new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	m.Rcode = a.rcode
	m.Answer, m.Extra = a.answer, a.extra
	if a.chase != "" {
		// plugin/pkg/upstream: the target is asked of the whole server
		// with the client's request, question replaced, and whatever
		// answer records come back follow the CNAME.
		sub := r.Copy()
		sub.SetQuestion(a.chase, q.Qtype)
		up, fwd := s.zoneReply(sub)
		if fwd {
			up, _ = s.fwd.forward(sub)
		}
		if up != nil {
			m.Answer = append(m.Answer, up.Answer...)
		}
	}
	// CoreDNS's handler takes the zone from the query name as the client
	// spelled it (zone = qname[len(qname)-len(zone):]), and plugin.SOA and
	// the SRV targets built from msg.Service keys (zone path, then the
	// Service's own lower-case names) carry that spelling.
	zone := a.zone
	if zone == "" {
		zone = s.zone
	}
	spelled := zone
	if n := len(asked) - len(zone); n >= 0 && strings.EqualFold(asked[n:], zone) {
		spelled = asked[n:]
	}
	if len(m.Answer) == 0 {
		m.Ns = []dns.RR{s.soa(spelled)}
	}
	if spelled != zone {
		respell := func(name string) string {
			if n := len(name) - len(zone); n >= 0 && name[n:] == zone {
				return name[:n] + spelled
			}
			return name
		}
		for i, rr := range m.Answer {
			switch rr := rr.(type) {
			case *dns.SOA:
				m.Answer[i] = s.soa(spelled)
			case *dns.SRV:
				rr.Target = respell(rr.Target)
			}
		}
		for _, rr := range m.Extra {
			rr.Header().Name = respell(rr.Header().Name)
		}
	}
	// Answer in the case the client asked in (dns0x20).
	for _, rr := range m.Answer {
		if strings.EqualFold(rr.Header().Name, r.Question[0].Name) {
			rr.Header().Name = r.Question[0].Name
		}
	}
	return m, false
}

// fit sizes m to what the client can take: over UDP 512 bytes, or its EDNS0
// buffer size; over TCP 64 KiB. Truncate drops records and sets TC so the
// client retries over TCP.
func (s *Server) fit(r, m *dns.Msg, proto string) *dns.Msg {
	m.Id = r.Id
	size := dns.MinMsgSize
	if opt := r.IsEdns0(); opt != nil {
		size = max(int(opt.UDPSize()), dns.MinMsgSize)
		if m.IsEdns0() == nil {
			m.SetEdns0(uint16(min(size, 1232)), opt.Do())
		}
	}
	if proto == "tcp" {
		size = dns.MaxMsgSize
	}
	m.Truncate(size)
	return m
}

// ServeListener answers TCP queries on l until ctx ends.
func (s *Server) ServeListener(ctx context.Context, l net.Listener) error {
	srv := &dns.Server{Listener: l, Handler: s, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second}
	return serveUntil(ctx, srv, srv.ActivateAndServe)
}

func serveUntil(ctx context.Context, srv *dns.Server, serve func() error) error {
	done := make(chan error, 1)
	go func() { done <- serve() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		srv.Shutdown()
		<-done
		return nil
	}
}

// HealthHandler serves /health (alive), /ready (index synced) and /metrics.
func (s *Server) HealthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "OK") })
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		select {
		case <-s.ready:
			fmt.Fprintln(w, "OK")
		default:
			http.Error(w, "index not synced", http.StatusServiceUnavailable)
		}
	})
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}))
	return mux
}

// metrics are the server's Prometheus series, on a registry of its own.
type metrics struct {
	registry  *prometheus.Registry
	requests  *prometheus.CounterVec
	responses *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	// forwardRejects counts queries refused at the cap on concurrent
	// forwarded queries, as coredns_forward_max_concurrent_rejects_total.
	forwardRejects prometheus.Counter
	// The fast path's series, resolved ahead of the queries.
	fastRequests  [256]lazy[prometheus.Counter]
	fastResponses [16]lazy[prometheus.Counter]
	fastDuration  lazy[prometheus.Observer]
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "switchboard_dns", Name: "requests_total",
			Help: "DNS requests by transport and query type."}, []string{"proto", "type"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "switchboard_dns", Name: "responses_total",
			Help: "DNS responses by rcode."}, []string{"rcode"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "switchboard_dns", Name: "request_duration_seconds",
			Help: "Time to answer a request.", Buckets: prometheus.ExponentialBuckets(0.00001, 4, 10)}, []string{"proto"}),
	}
	m.forwardRejects = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "switchboard_dns", Name: "forward_max_concurrent_rejects_total",
		Help: "Queries refused because the concurrent forwarded queries were at --max-concurrent."})
	m.registry.MustRegister(m.requests, m.responses, m.duration, m.forwardRejects)
	return m
}

// observeFast counts a fast-path UDP query with series looked up once per
// type and rcode rather than by label hashing per query.
func (m *metrics) observeFast(qtype uint16, rcode int, d time.Duration) {
	requests := func() prometheus.Counter { return m.requests.WithLabelValues("udp", typeLabel(qtype)) }
	if int(qtype) < len(m.fastRequests) {
		m.fastRequests[qtype].get(requests).Inc()
	} else {
		requests().Inc()
	}
	m.fastResponses[rcode&0xF].get(func() prometheus.Counter { return m.responses.WithLabelValues(dns.RcodeToString[rcode]) }).Inc()
	m.fastDuration.get(func() prometheus.Observer { return m.duration.WithLabelValues("udp") }).Observe(d.Seconds())
}

// lazy holds a series looked up on first use, so that series appear only
// once a query of their kind was answered, as with WithLabelValues.
type lazy[T any] struct{ p atomic.Pointer[T] }

func (l *lazy[T]) get(lookup func() T) T {
	if p := l.p.Load(); p != nil {
		return *p
	}
	v := lookup()
	l.p.Store(&v)
	return v
}

func typeLabel(qtype uint16) string {
	if t, ok := dns.TypeToString[qtype]; ok {
		return t
	}
	return "other"
}

func (m *metrics) observe(proto, qtype, rcode string, d time.Duration) {
	m.requests.WithLabelValues(proto, qtype).Inc()
	m.responses.WithLabelValues(rcode).Inc()
	m.duration.WithLabelValues(proto).Observe(d.Seconds())
}
