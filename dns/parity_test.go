package dns

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// serveLoopback serves s on a loopback UDP socket (the fast path's loop)
// and a TCP listener on the same port until the test ends.
func serveLoopback(t *testing.T, s *Server) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pcs, err := ListenUDP("127.0.0.1:0", 1)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", pcs[0].LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 2)
	go func() { s.ServePacket(ctx, pcs[0]); done <- struct{}{} }()
	go func() { s.ServeListener(ctx, l); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done })
	return pcs[0].LocalAddr().String()
}

// exchange sends m over network and returns the reply.
func exchange(t *testing.T, network, addr string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second, UDPSize: 65535}
	in, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%v over %s: %v", m.Question, network, err)
	}
	return in
}

// addrs lists the A and AAAA addresses of records, in order.
func addrs(records []dns.RR) []string {
	var out []string
	for _, rr := range records {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, rr.A.String())
		case *dns.AAAA:
			out = append(out, rr.AAAA.String())
		}
	}
	return out
}

// TestBalanceSection checks the partition of the loadbalance plugin's
// roundRobin: CNAMEs, then the other types in their order, then addresses,
// then MX; a section of only addresses keeps them all.
func TestBalanceSection(t *testing.T) {
	rr := func(s string) dns.RR {
		r, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	in := []dns.RR{rr("a. 30 IN A 192.0.2.1"), rr("b. 30 IN CNAME a."), rr("a. 30 IN MX 10 m1."), rr("_x._tcp.a. 30 IN SRV 0 1 2 a."),
		rr("a. 30 IN AAAA 2001:db8::1"), rr("a. 30 IN MX 20 m2."), rr("c. 30 IN CNAME b.")}
	var got []string
	for _, r := range balanceSection(slices.Clone(in), nil) {
		got = append(got, dns.TypeToString[r.Header().Rrtype]+" "+r.Header().Name)
	}
	want := []string{"CNAME b.", "CNAME c.", "SRV _x._tcp.a.", "A a.", "AAAA a.", "MX a.", "MX a."}
	if !slices.Equal(got, want) {
		t.Errorf("partition %v, want %v", got, want)
	}
	// Shuffled: the same records, CNAMEs and SRV in place, and across
	// seeds every address comes first.
	first := map[string]bool{}
	for seed := range uint64(200) {
		out := balanceSection(slices.Clone(in), &shuffler{seed})
		if len(out) != len(in) || out[0] != in[1] || out[1] != in[6] || out[2] != in[3] {
			t.Fatalf("seed %d: %v", seed, out)
		}
		first[dns.TypeToString[out[3].Header().Rrtype]] = true
	}
	if len(first) != 2 {
		t.Errorf("first address types over 200 seeds: %v, want A and AAAA", first)
	}
}

// TestLoadBalance checks replies rotate per query as CoreDNS's loadbalance
// plugin makes them: a headless Service's addresses in every order, the
// same set each time, the truncated reply to a small buffer keeping a
// different subset; SRV records in place with their additional addresses
// shuffled; a CNAME ahead of the addresses it leads to. The fast path
// (uncompressed and truncated forms), the slow path, UDP and TCP all rotate.
func TestLoadBalance(t *testing.T) {
	x := benchIndex(2, 3)
	x.SetService("bench", "alias", &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: "alias"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "hl001.bench.svc.cluster.local"}})
	s := NewServer(Config{}, x)
	hl := "hl001.bench.svc.cluster.local."
	var want []string
	for i := range 10 {
		want = append(want, fmt.Sprintf("10.%d.%d.%d", 100+(100010+i)/65536, (100010+i)/256%256, (100010+i)%256))
	}
	slices.Sort(want)

	for _, tc := range []struct {
		name     string
		qtype    uint16
		edns     int
		fast     bool // the fast path answers it
		section  func(*dns.Msg) []dns.RR
		set      []string // the addresses, when the section has them all
		fixed    func(*dns.Msg) string
		distinct int // how many first addresses the seeds must show at least
	}{
		{"headless A", dns.TypeA, -1, true, func(m *dns.Msg) []dns.RR { return m.Answer }, want, nil, 10},
		{"headless A, EDNS0", dns.TypeA, 1232, true, func(m *dns.Msg) []dns.RR { return m.Answer }, want, nil, 10},
		{"big headless A truncated to 512 bytes", dns.TypeA, -1, true, func(m *dns.Msg) []dns.RR { return m.Answer }, nil, nil, 20},
		{"headless SRV", dns.TypeSRV, 4096, true, func(m *dns.Msg) []dns.RR { return m.Extra }, want,
			func(m *dns.Msg) string { return fmt.Sprint(m.Answer) }, 10},
		{"CNAME to a headless Service", dns.TypeA, -1, false, func(m *dns.Msg) []dns.RR { return m.Answer[1:] }, want,
			func(m *dns.Msg) string { return m.Answer[0].String() }, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := hl
			switch {
			case strings.HasPrefix(tc.name, "big"):
				name = "big.bench.svc.cluster.local."
			case strings.HasPrefix(tc.name, "CNAME"):
				name = "alias.bench.svc.cluster.local."
			case tc.qtype == dns.TypeSRV:
				name = "_http._tcp." + hl
			}
			firsts, seen := map[string]bool{}, map[string]bool{}
			fixed := ""
			for seed := range uint64(300) {
				pkt := query(name, tc.qtype, uint16(seed), true, false, tc.edns, false)
				slow := slowReply(t, s, pkt, seed)
				fast := fastReply(s, pkt, seed)
				if tc.fast && !bytes.Equal(fast, slow) {
					t.Fatalf("seed %d: fast reply %x, slow %x", seed, fast, slow)
				}
				if !tc.fast && fast != nil {
					t.Fatalf("seed %d: the fast path answered", seed)
				}
				m := new(dns.Msg)
				if err := m.Unpack(slow); err != nil {
					t.Fatal(err)
				}
				got := addrs(tc.section(m))
				if len(got) == 0 {
					t.Fatalf("seed %d: no addresses in %v", seed, m)
				}
				firsts[got[0]] = true
				for _, a := range got {
					seen[a] = true
				}
				if tc.set != nil {
					sorted := slices.Sorted(slices.Values(got))
					if !slices.Equal(sorted, tc.set) {
						t.Fatalf("seed %d: addresses %v, want %v", seed, sorted, tc.set)
					}
				}
				if tc.fixed != nil {
					if f := tc.fixed(m); fixed == "" {
						fixed = f
					} else if f != fixed {
						t.Fatalf("seed %d: %s moved: %s, first %s", seed, tc.name, f, fixed)
					}
				}
			}
			if len(firsts) < tc.distinct {
				t.Errorf("first addresses over 300 seeds: %d distinct, want at least %d", len(firsts), tc.distinct)
			}
			if tc.set == nil && len(seen) != 60 {
				t.Errorf("truncated replies kept %d distinct addresses over 300 seeds, want all 60", len(seen))
			}
		})
	}

	// End to end: both transports rotate.
	addr := serveLoopback(t, s)
	for _, network := range []string{"udp", "tcp"} {
		firsts := map[string]bool{}
		for range 100 {
			m := new(dns.Msg)
			m.SetQuestion(hl, dns.TypeA)
			in := exchange(t, network, addr, m)
			if got := addrs(in.Answer); len(got) != 10 {
				t.Fatalf("%s: %v", network, in)
			} else {
				firsts[got[0]] = true
			}
		}
		if len(firsts) < 2 {
			t.Errorf("%s: 100 queries all answered first %v", network, firsts)
		}
	}
	// An error reply is left alone, and a single record has nothing to move.
	for seed := range uint64(20) {
		pkt := query("svc0001.bench.svc.cluster.local.", dns.TypeA, 1, true, false, -1, false)
		if got, want := slowReply(t, s, pkt, seed), slowReply(t, s, pkt, 0); !bytes.Equal(got, want) {
			t.Fatalf("one-record reply changed with the seed")
		}
	}
}

// TestRcodes checks the replies CoreDNS gives before any lookup, over UDP
// (the fast path's socket loop) and TCP: BADVERS for an EDNS version other
// than 0, with an OPT of version 0; FORMERR for two OPT records; REFUSED for
// zone transfers in the cluster and reverse zones, and for a class other
// than IN.
func TestRcodes(t *testing.T) {
	s := NewServer(Config{}, benchIndex(2, 1))
	addr := serveLoopback(t, s)
	svc := "svc0001.bench.svc.cluster.local."
	q := func(name string, qtype uint16, edit func(*dns.Msg)) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		if edit != nil {
			edit(m)
		}
		return m
	}
	version := func(v uint8) func(*dns.Msg) {
		return func(m *dns.Msg) {
			m.SetEdns0(1232, false)
			m.IsEdns0().SetVersion(v)
		}
	}
	twoOPT := func(m *dns.Msg) {
		m.SetEdns0(1232, false)
		m.Extra = append(m.Extra, &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT, Class: 4096}})
	}
	chaos := func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }
	for _, tc := range []struct {
		name  string
		m     *dns.Msg
		rcode int
		opt   bool // the reply carries an OPT record
	}{
		{"EDNS version 0", q(svc, dns.TypeA, version(0)), dns.RcodeSuccess, true},
		{"EDNS version 1", q(svc, dns.TypeA, version(1)), dns.RcodeBadVers, true},
		{"EDNS version 255 outside the zone", q("example.org.", dns.TypeA, version(255)), dns.RcodeBadVers, true},
		{"two OPT records", q(svc, dns.TypeA, twoOPT), dns.RcodeFormatError, false},
		{"AXFR of the zone", q("cluster.local.", dns.TypeAXFR, nil), dns.RcodeRefused, false},
		{"IXFR of the zone", q("cluster.local.", dns.TypeIXFR, nil), dns.RcodeRefused, false},
		{"AXFR of a Service name", q(svc, dns.TypeAXFR, nil), dns.RcodeRefused, false},
		{"AXFR with EDNS0", q(svc, dns.TypeAXFR, version(0)), dns.RcodeRefused, true},
		{"AXFR of a reverse zone", q("in-addr.arpa.", dns.TypeAXFR, nil), dns.RcodeRefused, false},
		{"AXFR of ip6.arpa", q("8.b.d.0.1.0.0.2.ip6.arpa.", dns.TypeAXFR, nil), dns.RcodeRefused, false},
		{"class CH", q(svc, dns.TypeA, chaos), dns.RcodeRefused, false},
	} {
		for _, network := range []string{"udp", "tcp"} {
			t.Run(network+" "+tc.name, func(t *testing.T) {
				in := exchange(t, network, addr, tc.m)
				if in.Rcode != tc.rcode {
					t.Errorf("rcode %s, want %s", dns.RcodeToString[in.Rcode], dns.RcodeToString[tc.rcode])
				}
				if in.Id != tc.m.Id || !in.Response || len(in.Question) != 1 || in.Question[0] != tc.m.Question[0] {
					t.Errorf("reply header or question: %v", in)
				}
				if (in.IsEdns0() != nil) != tc.opt {
					t.Errorf("OPT %v, want one: %v", in.IsEdns0(), tc.opt)
				}
				if tc.rcode != dns.RcodeSuccess && (len(in.Answer) != 0 || len(in.Ns) != 0 || in.Authoritative) {
					t.Errorf("error reply with records or AA: %v", in)
				}
				if tc.rcode == dns.RcodeBadVers {
					// plugin/pkg/edns.Version: an OPT of version 0, no size.
					if o := in.IsEdns0(); o == nil || o.Version() != 0 || o.UDPSize() != 0 || len(in.Extra) != 1 {
						t.Errorf("BADVERS OPT %v", in.Extra)
					}
				}
			})
		}
	}
}

// TestForwardCap checks that beyond MaxConcurrent queries waiting on an
// upstream, a forwarded query gets REFUSED at once, as the forward plugin's
// max_concurrent answers, and that the slots free as answers come.
func TestForwardCap(t *testing.T) {
	// The upstream holds every query until the test lets it answer.
	up, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	type held struct {
		from net.Addr
		m    *dns.Msg
	}
	queries := make(chan held, 100)
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := up.ReadFrom(buf)
			if err != nil {
				return
			}
			m := new(dns.Msg)
			if m.Unpack(buf[:n]) == nil {
				queries <- held{from, m}
			}
		}
	}()
	answer := func(h held) {
		r := new(dns.Msg)
		r.SetReply(h.m)
		r.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: h.m.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 9)}}
		b, _ := r.Pack()
		up.WriteTo(b, h.from)
	}
	const limit = 3
	s := NewServer(Config{Upstreams: []string{up.LocalAddr().String()}, UpstreamTimeout: time.Minute, MaxConcurrent: limit}, benchIndex(1, 0))
	addr := serveLoopback(t, s)
	ask := func(name string) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		return exchange(t, "udp", addr, m)
	}
	replies := make(chan *dns.Msg, limit)
	for i := range limit {
		go func() {
			m := new(dns.Msg)
			m.SetQuestion(fmt.Sprintf("held%d.example.org.", i), dns.TypeA)
			c := &dns.Client{Timeout: time.Minute}
			in, _, err := c.Exchange(m, addr)
			if err != nil {
				t.Error(err)
			}
			replies <- in
		}()
	}
	var pending []held
	for range limit {
		pending = append(pending, <-queries) // the upstream holds them all
	}
	// The cap is reached: the next one is refused without asking.
	for range 2 {
		if in := ask("over.example.org."); in.Rcode != dns.RcodeRefused || len(in.Answer) != 0 {
			t.Errorf("beyond the cap: %v, want REFUSED", in)
		}
	}
	if n := testutil.ToFloat64(s.metrics.forwardRejects); n != 2 {
		t.Errorf("rejects counted %v, want 2", n)
	}
	select {
	case h := <-queries:
		t.Errorf("a query beyond the cap reached the upstream: %v", h.m.Question)
	default:
	}
	for _, h := range pending {
		answer(h)
	}
	for range limit {
		if in := <-replies; in == nil || in.Rcode != dns.RcodeSuccess || len(in.Answer) != 1 {
			t.Errorf("held query: %v", in)
		}
	}
	// The slots are free again.
	done := make(chan *dns.Msg)
	go func() { done <- ask("after.example.org.") }()
	answer(<-queries)
	if in := <-done; in.Rcode != dns.RcodeSuccess || len(in.Answer) != 1 {
		t.Errorf("after the answers: %v", in)
	}
}
