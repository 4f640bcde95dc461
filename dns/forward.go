package dns

import (
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// forwarder sends names outside the cluster zone to upstream resolvers, in
// order, and caches their answers for their TTL (negative answers for the
// SOA minimum), so a pod's repeated lookups of the same external name cost
// one upstream query.
type forwarder struct {
	upstreams []string
	timeout   time.Duration
	max       int
	// maxConcurrent caps the queries in flight to upstreams (0: none);
	// inflight counts them, and rejects the queries refused at the cap.
	maxConcurrent int64
	inflight      atomic.Int64
	rejects       prometheus.Counter
	mu            sync.Mutex
	cache         map[cacheKey]cacheEntry
}

type cacheKey struct {
	name  string
	qtype uint16
	do    bool
}

type cacheEntry struct {
	msg     *dns.Msg
	expires time.Time
}

// defaultMaxConcurrent is kubeadm's Corefile's `max_concurrent 1000`.
const defaultMaxConcurrent = 1000

func newForwarder(upstreams []string, timeout time.Duration, max, maxConcurrent int) *forwarder {
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	if max == 0 {
		max = 10000
	}
	switch {
	case maxConcurrent == 0:
		maxConcurrent = defaultMaxConcurrent
	case maxConcurrent < 0:
		maxConcurrent = 0
	}
	return &forwarder{upstreams: upstreams, timeout: timeout, max: max, maxConcurrent: int64(maxConcurrent),
		cache: map[cacheKey]cacheEntry{}}
}

// forward returns the upstream answer to r, or nil and the rcode to answer
// instead: REFUSED beyond the cap on concurrent queries (the forward
// plugin's max_concurrent returns dns.RcodeRefused, which the server writes
// as the reply), SERVFAIL when no upstream answered.
func (f *forwarder) forward(r *dns.Msg) (*dns.Msg, int) {
	q := r.Question[0]
	key := cacheKey{strings.ToLower(q.Name), q.Qtype, r.IsEdns0() != nil && r.IsEdns0().Do()}
	now := time.Now()
	f.mu.Lock()
	if e, ok := f.cache[key]; ok && now.Before(e.expires) {
		f.mu.Unlock()
		m := e.msg.Copy()
		m.Id = r.Id
		age := uint32(now.Sub(e.expires.Add(-ttlOf(e.msg))).Seconds())
		for _, rrs := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
			for _, rr := range rrs {
				if rr.Header().Rrtype != dns.TypeOPT && rr.Header().Ttl > age {
					rr.Header().Ttl -= age
				}
			}
		}
		return m, dns.RcodeSuccess
	}
	f.mu.Unlock()
	// Counted as the plugin does, after the cache (before it in the
	// chain) missed: a query only waits here while an upstream is asked.
	if f.maxConcurrent > 0 {
		n := f.inflight.Add(1)
		defer f.inflight.Add(-1)
		if n > f.maxConcurrent {
			if f.rejects != nil {
				f.rejects.Inc()
			}
			return nil, dns.RcodeRefused
		}
	}
	for _, up := range f.upstreams {
		in, err := f.exchange(r, up)
		if err != nil || in == nil {
			continue
		}
		if in.Rcode == dns.RcodeSuccess || in.Rcode == dns.RcodeNameError {
			f.store(key, in, now)
		}
		return in, dns.RcodeSuccess
	}
	return nil, dns.RcodeServerFailure
}

// exchange asks one upstream over UDP and retries over TCP when the answer
// was truncated.
func (f *forwarder) exchange(r *dns.Msg, upstream string) (*dns.Msg, error) {
	c := &dns.Client{Net: "udp", Timeout: f.timeout, UDPSize: dns.DefaultMsgSize}
	in, _, err := c.Exchange(r, upstream)
	if err == nil && in.Truncated {
		c.Net = "tcp"
		in, _, err = c.Exchange(r, upstream)
	}
	return in, err
}

func (f *forwarder) store(key cacheKey, m *dns.Msg, now time.Time) {
	ttl := ttlOf(m)
	if ttl <= 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.cache) >= f.max {
		for k, e := range f.cache { // evict expired first, else anything
			if now.After(e.expires) || len(f.cache) >= f.max {
				delete(f.cache, k)
			}
			if len(f.cache) < f.max*9/10 {
				break
			}
		}
	}
	f.cache[key] = cacheEntry{msg: m.Copy(), expires: now.Add(ttl)}
}

// ttlOf is how long an answer may be cached: its smallest record TTL, or
// for a negative answer the SOA's minimum, capped at an hour.
func ttlOf(m *dns.Msg) time.Duration {
	ttl := uint32(3600)
	seen := false
	for _, rr := range m.Answer {
		ttl, seen = min(ttl, rr.Header().Ttl), true
	}
	if !seen {
		for _, rr := range m.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				ttl, seen = min(ttl, soa.Minttl, soa.Hdr.Ttl), true
			}
		}
	}
	if !seen {
		return 0
	}
	return time.Duration(ttl) * time.Second
}

// Nameservers reads the nameserver lines of a resolv.conf as host:53, the
// default upstreams for names outside the cluster zone.
func Nameservers(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read upstream resolvers from %s: %w", path, err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "nameserver" {
			out = append(out, net.JoinHostPort(f[1], "53"))
		}
	}
	return out, nil
}
