package dns

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// benchIndex is an index shaped like bench/dns's: ClusterIP Services with
// endpoints, headless Services (some endpoints with hostnames), a big
// headless Service whose answers need truncation, an ExternalName.
func benchIndex(clusterIP, headless int) *Index {
	x := NewIndex()
	x.SetNamespace("bench", true)
	ports := []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}}
	addSvc := func(name string, vip string, eps int, base int, hostnames bool) {
		spec := corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}, {Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}}
		if vip == "" {
			spec.ClusterIP = corev1.ClusterIPNone
		} else {
			spec.ClusterIP, spec.ClusterIPs = vip, []string{vip}
		}
		x.SetService("bench", name, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: name}, Spec: spec})
		sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: name + "-a"}, AddressType: discoveryv1.AddressTypeIPv4, Ports: ports}
		for i := range eps {
			n := base + i
			e := discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.%d.%d.%d", 100+n/65536, n/256%256, n%256)}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}
			if hostnames && i%2 == 0 {
				e.Hostname = ptr.To(fmt.Sprintf("%s-%d", name, i))
			}
			sl.Endpoints = append(sl.Endpoints, e)
		}
		x.SetSlice("bench", name, sl.Name, sl)
	}
	for i := range clusterIP {
		addSvc(fmt.Sprintf("svc%04d", i), fmt.Sprintf("10.96.%d.%d", i/256, i%256+1), 9, i*9, false)
	}
	for i := range headless {
		addSvc(fmt.Sprintf("hl%03d", i), "", 10, 100000+i*10, true)
	}
	addSvc("big", "", 60, 200000, false)
	x.SetService("bench", "ext", &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: "ext"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.org"}})
	return x
}

// slowReply is what the slow path sends for pkt over UDP, shuffled by seed.
func slowReply(t testing.TB, s *Server, pkt []byte, seed uint64) []byte {
	r := new(dns.Msg)
	if err := r.Unpack(pkt); err != nil {
		t.Fatalf("unpack: %v", err)
	}
	b, err := s.respond(r, "udp", seed).Pack()
	if err != nil {
		t.Fatalf("pack: %v", err)
	}
	return b
}

// fastReply is what the fast path sends for pkt, shuffled by seed, or nil
// when it leaves pkt to the slow path.
func fastReply(s *Server, pkt []byte, seed uint64) []byte {
	var q fastQuery
	if !parseFast(pkt, &q, make([]byte, 0, 256)) {
		return nil
	}
	q.seed, q.seeded = seed, true
	reply, _, ok := s.answerFast(&q, nil)
	if !ok {
		return nil
	}
	return reply
}

func query(name string, qtype uint16, id uint16, rd, cd bool, edns int, do bool) []byte {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id, m.RecursionDesired, m.CheckingDisabled = id, rd, cd
	if edns >= 0 {
		m.SetEdns0(uint16(edns), do)
	}
	b, err := m.Pack()
	if err != nil {
		panic(err)
	}
	return b
}

// TestFastMatchesSlow checks the fast path's replies are byte for byte the
// slow path's, across names, types, case (the zone's included, as DNS 0x20
// sends it), IDs, flags, EDNS0 buffer sizes and the DO bit, including
// truncated replies; and that it takes the common queries rather than
// passing them on, glibc's search-path names and mixed case included.
func TestFastMatchesSlow(t *testing.T) {
	s := NewServer(Config{}, benchIndex(20, 5))
	names := []string{
		"svc0001.bench.svc.cluster.local.", "SVC0001.Bench.svc.CLUSTER.local.", "hl002.bench.svc.cluster.local.",
		"Hl002.bench.svc.cluster.local.", "_http._tcp.svc0003.bench.svc.cluster.local.", "_http._tcp.HL001.bench.svc.cluster.local.",
		"_http._tcp.hl001.bench.svc.cluster.local.", "_dns._udp.svc0003.bench.svc.cluster.local.", "_nope._tcp.svc0003.bench.svc.cluster.local.",
		"http.tcp.svc0004.bench.svc.cluster.local.", "_._tcp.svc0004.bench.svc.cluster.local.", "hl000-0.hl000.bench.svc.cluster.local.",
		"HL000-0.hl000.bench.svc.cluster.local.", "10-100-0-1.svc0000.bench.svc.cluster.local.", "nosuch.bench.svc.cluster.local.",
		"NoSuch.Bench.Svc.Cluster.Local.", "big.bench.svc.cluster.local.", "BIG.bench.svc.cluster.local.", "_http._tcp.big.bench.svc.cluster.local.",
		"ext.bench.svc.cluster.local.", "EXT.bench.svc.cluster.local.", "_http._tcp.ext.bench.svc.cluster.local.", "a.b.c.svc0001.bench.svc.cluster.local.",
		"bench.svc.cluster.local.", "svc.cluster.local.", "cluster.local.", "dns-version.cluster.local.", "x.svc0001.bench.pod.cluster.local.",
		"svc0001.bench.svc.example.org.", "svc0001.bench.svc.cluster.local.in-addr.arpa.",
		// DNS 0x20 case, the zone's included.
		"sVc0001.bEnch.sVc.ClUsTeR.LoCaL.", "HL002.bench.svc.Cluster.local.", "_HTTP._tcp.svc0003.bench.SVC.Cluster.Local.",
		"_http._tcp.hl001.bench.svc.CLUSTER.local.", "HL000-0.hl000.bench.svc.Cluster.local.", "nosuch.bench.svc.CLUSTER.LOCAL.",
		"BIG.bench.svc.cluster.LOCAL.", "Ext.bench.svc.Cluster.Local.", "dns-version.Cluster.Local.", "Cluster.Local.",
		// glibc's search path from a pod in bench: name.bench.svc.<zone>,
		// name.svc.<zone>, name.<zone>.
		"svc0001.bench.bench.svc.cluster.local.", "svc0001.svc.cluster.local.", "svc0001.cluster.local.",
		"api.github.com.bench.svc.cluster.local.", "api.github.com.svc.cluster.local.", "api.github.com.cluster.local.",
		"example.com.svc.cluster.local.", "example.com.cluster.local.", "Api.GitHub.com.Cluster.Local.", "bench.svc.Cluster.Local.",
		"nosuchns.svc.cluster.local.", "pod.cluster.local.", "x.pod.cluster.local.", "svc.CLUSTER.local.",
	}
	rng := rand.New(rand.NewPCG(3, 4))
	fast := 0
	for _, name := range names {
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeSRV, dns.TypeMX, dns.TypeCNAME, dns.TypeANY, 65280} {
			for _, edns := range []int{-1, 0, 100, 512, 1232, 1400, 4096, 65535} {
				for _, flags := range []int{0, 1, 2, 3} {
					if strings.HasSuffix(name, "example.org.") || strings.HasSuffix(name, ".arpa.") {
						continue // forwarded: no upstream in this test
					}
					pkt := query(name, qtype, uint16(rng.Uint32()), flags&1 != 0, flags&2 != 0, edns, flags&1 != 0)
					seed := rng.Uint64()
					got := fastReply(s, pkt, seed)
					if got == nil {
						continue
					}
					fast++
					if want := slowReply(t, s, pkt, seed); !bytes.Equal(got, want) {
						g, w := new(dns.Msg), new(dns.Msg)
						g.Unpack(got)
						w.Unpack(want)
						t.Errorf("%s %s edns %d flags %d: fast reply differs\n%x\n%v\nslow\n%x\n%v", name, dns.TypeToString[qtype], edns, flags, got, g, want, w)
					}
				}
			}
		}
	}
	// The common queries take the fast path, in either case.
	for _, pkt := range [][]byte{
		query("svc0001.bench.svc.cluster.local.", dns.TypeA, 1, true, false, -1, false),
		query("SVC0001.bench.svc.cluster.local.", dns.TypeA, 1, true, false, -1, false),
		query("hl001.bench.svc.cluster.local.", dns.TypeA, 1, true, false, 1232, true),
		query("_http._tcp.hl001.bench.svc.cluster.local.", dns.TypeSRV, 1, true, false, -1, false),
		query("nosuch.bench.svc.cluster.local.", dns.TypeA, 1, true, false, -1, false),
		query("sVc0001.bEnch.sVc.ClUsTeR.LoCaL.", dns.TypeA, 1, true, false, 4096, true),
		query("My-Svc.Bench.svc.cluster.local.", dns.TypeA, 1, true, false, 1232, false),
		query("NoSuch.Bench.Svc.Cluster.Local.", dns.TypeAAAA, 1, true, false, -1, false),
		query("_http._tcp.svc0003.bench.svc.Cluster.Local.", dns.TypeSRV, 1, true, false, 1232, false),
		query("hl001.bench.svc.CLUSTER.LOCAL.", dns.TypeA, 1, true, false, 1232, false),
		query("svc0001.bench.bench.svc.cluster.local.", dns.TypeAAAA, 1, true, false, -1, false),
		query("svc0001.svc.cluster.local.", dns.TypeA, 1, true, false, -1, false),
		query("api.github.com.cluster.local.", dns.TypeAAAA, 1, true, false, -1, false),
		query("bench.svc.cluster.local.", dns.TypeA, 1, true, false, -1, false),
		query("svc.cluster.local.", dns.TypeA, 1, true, false, -1, false),
	} {
		if fastReply(s, pkt, 1) == nil {
			r := new(dns.Msg)
			r.Unpack(pkt)
			t.Errorf("slow path for %v", r.Question)
		}
	}
	// And the unusual ones do not.
	opts := new(dns.Msg)
	opts.SetQuestion("svc0001.bench.svc.cluster.local.", dns.TypeA)
	opts.SetEdns0(1232, false)
	opts.IsEdns0().Option = append(opts.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
	two := new(dns.Msg)
	two.SetQuestion("svc0001.bench.svc.cluster.local.", dns.TypeA)
	two.Question = append(two.Question, two.Question[0])
	chaos := new(dns.Msg)
	chaos.SetQuestion("svc0001.bench.svc.cluster.local.", dns.TypeA)
	chaos.Question[0].Qclass = dns.ClassCHAOS
	escaped := new(dns.Msg)
	escaped.SetQuestion(`svc\0001.bench.svc.cluster.local.`, dns.TypeA)
	for _, m := range []*dns.Msg{opts, two, chaos, escaped} {
		b, _ := m.Pack()
		if fastReply(s, b, 1) != nil {
			t.Errorf("fast path took %v", m)
		}
	}
	if fast < 2000 {
		t.Errorf("fast path took only %d queries", fast)
	}
	t.Logf("%d queries compared", fast)
}

// TestFastIndexUpdates checks replies follow index changes: a Service's
// cached replies go when it changes, its negative ones carry the current
// SOA serial, and concurrent updates never yield a reply from neither the
// old nor the new state.
func TestFastIndexUpdates(t *testing.T) {
	x := benchIndex(2, 1)
	s := NewServer(Config{}, x)
	name := "svc0001.bench.svc.cluster.local."
	pkt := query(name, dns.TypeA, 7, true, false, -1, false)
	answers := func() []string {
		m := new(dns.Msg)
		if err := m.Unpack(fastReply(s, pkt, 1)); err != nil {
			t.Fatal(err)
		}
		return rrs(m.Answer)
	}
	if a := answers(); len(a) != 1 || !strings.HasSuffix(a[0], "10.96.0.2") {
		t.Fatalf("answer %v", a)
	}
	setVIP := func(vip string) {
		x.SetService("bench", "svc0001", &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: "svc0001"},
			Spec: corev1.ServiceSpec{ClusterIP: vip, ClusterIPs: []string{vip}}})
	}
	setVIP("10.96.9.9")
	if a := answers(); len(a) != 1 || !strings.HasSuffix(a[0], "10.96.9.9") {
		t.Fatalf("after the change: answer %v", a)
	}
	neg := query("svc0001.bench.svc.cluster.local.", dns.TypeAAAA, 7, true, false, -1, false)
	x.modified.Store(12345)
	if got, want := fastReply(s, neg, 1), slowReply(t, s, neg, 1); !bytes.Equal(got, want) || !bytes.Contains(got, []byte{0, 0, 0x30, 0x39}) {
		t.Errorf("NODATA with serial 12345:\n%x\nslow\n%x", got, want)
	}

	// Readers race a writer flipping the address: every reply has one of
	// the two, whole.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			setVIP([]string{"10.96.1.1", "10.96.2.2"}[i%2])
		}
	})
	for range 2 {
		wg.Go(func() {
			var q fastQuery
			scratch := make([]byte, 0, 256)
			var out []byte
			for range 20000 {
				if !parseFast(pkt, &q, scratch) {
					t.Error("not parsed")
					return
				}
				reply, _, ok := s.answerFast(&q, out)
				if !ok {
					t.Error("slow path")
					return
				}
				m := new(dns.Msg)
				if err := m.Unpack(reply); err != nil || len(m.Answer) != 1 {
					t.Errorf("reply %v: %v", m, err)
					return
				}
				if a := m.Answer[0].(*dns.A).A.String(); a != "10.96.1.1" && a != "10.96.2.2" && a != "10.96.9.9" {
					t.Errorf("answer %s", a)
					return
				}
				out = reply[:0]
			}
		})
	}
	time.Sleep(10 * time.Millisecond)
	close(stop)
	wg.Wait()
}

// TestServePacket checks the UDP loop end to end on SO_REUSEPORT sockets,
// over the wildcard address too (replies must leave from the address asked):
// fast answers, slow ones (a FORMERR for two questions, a response ignored),
// and that it stops with its context.
func TestServePacket(t *testing.T) {
	s := NewServer(Config{}, benchIndex(2, 1))
	for _, listen := range []string{"127.0.0.1:0", "0.0.0.0:0"} {
		ctx, cancel := context.WithCancel(context.Background())
		pcs, err := ListenUDP(listen, 2)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, len(pcs))
		for _, pc := range pcs {
			go func() { done <- s.ServePacket(ctx, pc) }()
		}
		port := pcs[0].LocalAddr().(*net.UDPAddr).Port
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		c := &dns.Client{Timeout: 2 * time.Second}
		m := new(dns.Msg)
		m.SetQuestion("SVC0001.bench.svc.cluster.local.", dns.TypeA)
		for range 20 { // several source ports, spread over both sockets
			in, _, err := c.Exchange(m, addr)
			if err != nil || len(in.Answer) != 1 || in.Answer[0].Header().Name != "SVC0001.bench.svc.cluster.local." {
				t.Fatalf("%s: %v %v", listen, in, err)
			}
		}
		two := m.Copy()
		two.Question = append(two.Question, two.Question[0])
		if in, _, err := c.Exchange(two, addr); err != nil || in.Rcode != dns.RcodeFormatError || len(in.Question) != 0 {
			t.Errorf("%s: two questions: %v %v", listen, in, err)
		}
		cancel()
		for range pcs {
			if err := <-done; err != nil {
				t.Error(err)
			}
		}
	}
}

// BenchmarkAnswer compares answering the benchmark's query mix on the slow
// path (parse, resolve, pack) and the fast path, without sockets; "mixed"
// answers bench/dns's wider mix (DNS 0x20 and capitalized names, EDNS0
// buffer sizes and the DO bit, glibc's search-path names) as ServePacket
// does, fast where it can, and reports the share left to the slow path.
func BenchmarkAnswer(b *testing.B) {
	s := NewServer(Config{}, benchIndex(1000, 100))
	rng := rand.New(rand.NewPCG(1, 2))
	inZone := func() (string, uint16) {
		switch x := rng.IntN(100); {
		case x < 65:
			return fmt.Sprintf("svc%04d.bench.svc.cluster.local.", rng.IntN(1000)), dns.TypeA
		case x < 80:
			return fmt.Sprintf("hl%03d.bench.svc.cluster.local.", rng.IntN(100)), dns.TypeA
		case x < 90:
			if rng.IntN(2) == 0 {
				return fmt.Sprintf("_http._tcp.hl%03d.bench.svc.cluster.local.", rng.IntN(100)), dns.TypeSRV
			}
			return fmt.Sprintf("_http._tcp.svc%04d.bench.svc.cluster.local.", rng.IntN(1000)), dns.TypeSRV
		default:
			return fmt.Sprintf("nosuch%05d.bench.svc.cluster.local.", rng.IntN(100000)), dns.TypeA
		}
	}
	var pkts, mixed [][]byte
	for range 1000 {
		name, qtype := inZone()
		pkts = append(pkts, query(name, qtype, uint16(rng.Uint32()), true, false, -1, false))
	}
	for range 1000 {
		name, qtype := inZone()
		if rng.IntN(2) == 0 {
			if rng.IntN(2) == 0 {
				b := []byte(name)
				for i, c := range b {
					if c >= 'a' && c <= 'z' && rng.IntN(2) == 0 {
						b[i] = c - 'a' + 'A'
					}
				}
				name = string(b)
			}
			edns := []int{-1, -1, 1232, 4096}[rng.IntN(4)]
			mixed = append(mixed, query(name, qtype, uint16(rng.Uint32()), true, false, edns, edns == 4096 && rng.IntN(2) == 0))
			continue
		}
		typed := []string{fmt.Sprintf("svc%04d.bench", rng.IntN(1000)), "api.github.com", "example.com"}[rng.IntN(3)]
		for _, suffix := range []string{".bench.svc.cluster.local.", ".svc.cluster.local.", ".cluster.local."} {
			mixed = append(mixed, query(typed+suffix, dns.TypeA, uint16(rng.Uint32()), true, false, -1, false),
				query(typed+suffix, dns.TypeAAAA, uint16(rng.Uint32()), true, false, -1, false))
		}
	}
	b.Run("slow", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			slowReply(b, s, pkts[i%len(pkts)], uint64(i))
		}
	})
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		var q fastQuery
		scratch := make([]byte, 0, 256)
		out := make([]byte, 0, 4096)
		for i := 0; b.Loop(); i++ {
			if !parseFast(pkts[i%len(pkts)], &q, scratch) {
				b.Fatal("not parsed")
			}
			reply, _, ok := s.answerFast(&q, out)
			if !ok {
				b.Fatal("slow")
			}
			out = reply[:0]
		}
	})
	b.Run("mixed", func(b *testing.B) {
		b.ReportAllocs()
		var q fastQuery
		scratch := make([]byte, 0, 256)
		out := make([]byte, 0, 4096)
		slow, n := 0, 0
		for i := 0; b.Loop(); i++ {
			pkt := mixed[i%len(mixed)]
			n++
			if parseFast(pkt, &q, scratch) {
				if reply, _, ok := s.answerFast(&q, out); ok {
					out = reply[:0]
					continue
				}
			}
			slow++
			slowReply(b, s, pkt, uint64(i))
		}
		b.ReportMetric(100*float64(slow)/float64(n), "slow-%")
	})
}
