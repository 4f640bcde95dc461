package dns

import (
	"net/netip"
	"strconv"
	"strings"

	"github.com/miekg/dns"
)

// answer is the outcome of looking a question up in the cluster zone.
type answer struct {
	rcode  int
	answer []dns.RR
	extra  []dns.RR
	// forward means the name is not ours after all (a reverse name of an
	// address the cluster does not know): ask the upstream resolvers, as
	// CoreDNS's `fallthrough in-addr.arpa ip6.arpa` does.
	forward bool
}

// dnsSchemaVersion is the version of the Kubernetes DNS specification
// served, answered at dns-version.<zone> as the specification requires.
const dnsSchemaVersion = "1.1.0"

// resolve answers q (whose name is lower case and fully qualified) from the
// index. zone is the cluster zone with its trailing dot.
func (s *Server) resolve(q dns.Question) answer {
	name := q.Name
	if strings.HasSuffix(name, ".in-addr.arpa.") || strings.HasSuffix(name, ".ip6.arpa.") {
		return s.resolvePTR(q)
	}
	zone := s.zone
	if name == zone {
		return s.apex(q)
	}
	rel, ok := strings.CutSuffix(name, "."+zone)
	if !ok {
		return answer{forward: true}
	}
	labels := strings.Split(rel, ".")
	n := len(labels)
	x := s.index
	x.mu.RLock()
	defer x.mu.RUnlock()
	switch {
	case n == 1 && labels[0] == "dns-version":
		// CoreDNS answers only TXT here, with a fixed TTL of 8 hours.
		if q.Qtype == dns.TypeTXT {
			hdr := s.hdr(name, dns.TypeTXT)
			hdr.Ttl = 28800
			return answer{answer: []dns.RR{&dns.TXT{Hdr: hdr, Txt: []string{dnsSchemaVersion}}}}
		}
		return answer{rcode: dns.RcodeNameError}
	case labels[n-1] == "svc":
		return s.resolveService(q, labels[:n-1])
	case labels[n-1] == "pod":
		return s.resolvePod(q, labels[:n-1])
	}
	return answer{rcode: dns.RcodeNameError}
}

// resolveService answers names under svc.<zone>; labels are what precedes
// "svc", e.g. [my-svc default] or [_http _tcp my-svc default].
func (s *Server) resolveService(q dns.Question, labels []string) answer {
	x := s.index
	switch len(labels) {
	case 0: // svc.<zone>: exists, holds nothing itself
		return answer{}
	case 1:
		if x.namespaceExists(labels[0]) {
			return answer{}
		}
		return answer{rcode: dns.RcodeNameError}
	}
	ns, svcName := labels[len(labels)-1], labels[len(labels)-2]
	svc := x.lookupService(ns, svcName)
	if svc == nil {
		return answer{rcode: dns.RcodeNameError}
	}
	svcFQDN := svcName + "." + ns + ".svc." + s.zone
	switch len(labels) {
	case 2:
		return s.serviceRecords(q, svc, svcFQDN, "", "")
	case 3: // endpoint.svc.ns.svc.zone (headless endpoints by hostname or dashed IP)
		var out answer
		found := false
		for _, e := range svc.endpoints {
			if e.label == labels[0] {
				found = true
				out.answer = append(out.answer, s.addrRR(q.Name, q.Qtype, e.addr)...)
			}
		}
		if !found {
			return answer{rcode: dns.RcodeNameError}
		}
		return out
	case 4: // _port._proto.svc.ns.svc.zone; CoreDNS makes the underscores
		// optional and lets a bare "_" match any port or protocol.
		portName := strings.TrimPrefix(labels[0], "_")
		proto := strings.TrimPrefix(labels[1], "_")
		return s.serviceRecords(q, svc, svcFQDN, anyLabel(portName), anyLabel(proto))
	}
	return answer{rcode: dns.RcodeNameError}
}

// anyLabel turns an empty port or protocol label (a bare "_") into the
// match-anything marker.
func anyLabel(l string) string {
	if l == "" {
		return matchAny
	}
	return l
}

// matchAny matches any port name or protocol; it cannot be a DNS label.
const matchAny = "\x00"

// serviceRecords answers a Service's own name (portName == "") or one of
// its _port._proto names.
func (s *Server) serviceRecords(q dns.Question, svc *service, svcFQDN, portName, proto string) answer {
	matches := func(p port) bool {
		if portName == "" {
			return true
		}
		return (portName == matchAny || (p.name != "" && p.name == portName)) && (proto == matchAny || proto == p.proto)
	}
	if portName != "" {
		any := false
		for _, p := range svc.ports {
			any = any || matches(p)
		}
		if !any {
			return answer{rcode: dns.RcodeNameError}
		}
	}
	if svc.externalName != "" {
		if portName != "" {
			return answer{rcode: dns.RcodeNameError}
		}
		target := dns.Fqdn(svc.externalName)
		return answer{answer: []dns.RR{&dns.CNAME{Hdr: s.hdr(q.Name, dns.TypeCNAME), Target: target}}}
	}
	if svc.headless && len(svc.endpoints) == 0 {
		// CoreDNS finds no items for a headless Service without ready
		// endpoints, which it answers as a name error.
		return answer{rcode: dns.RcodeNameError}
	}
	var out answer
	switch q.Qtype {
	case dns.TypeA, dns.TypeAAAA:
		if svc.headless {
			for _, e := range svc.endpoints {
				out.answer = append(out.answer, s.addrRR(q.Name, q.Qtype, e.addr)...)
			}
		} else {
			for _, a := range svc.clusterIPs {
				out.answer = append(out.answer, s.addrRR(q.Name, q.Qtype, a)...)
			}
		}
	case dns.TypeSRV:
		type target struct {
			name string
			port uint16
			addr netip.Addr
		}
		var targets []target
		if svc.headless {
			for _, e := range svc.endpoints {
				for _, p := range e.ports {
					if matches(p) {
						targets = append(targets, target{e.label + "." + svcFQDN, p.num, e.addr})
					}
				}
			}
		} else {
			for _, p := range svc.ports {
				if matches(p) {
					for _, a := range svc.clusterIPs {
						targets = append(targets, target{svcFQDN, p.num, a})
					}
				}
			}
		}
		// CoreDNS gives every target of one priority the weight
		// floor(100/n).
		weight := uint16(1)
		if len(targets) > 0 {
			weight = max(uint16(100/len(targets)), 1)
		}
		seen := map[string]bool{}
		for _, t := range targets {
			key := t.name + "|" + strconv.Itoa(int(t.port))
			if !seen[key] {
				seen[key] = true
				out.answer = append(out.answer, &dns.SRV{Hdr: s.hdr(q.Name, dns.TypeSRV), Priority: 0, Weight: weight, Port: t.port, Target: t.name})
			}
			extraKey := t.name + "|" + t.addr.String()
			if !seen[extraKey] {
				seen[extraKey] = true
				qt := dns.TypeA
				if t.addr.Is6() {
					qt = dns.TypeAAAA
				}
				out.extra = append(out.extra, s.addrRR(t.name, qt, t.addr)...)
			}
		}
	}
	return out
}

// resolvePod answers a-b-c-d.ns.pod.<zone> when a pod in ns has that
// address ("pods verified").
func (s *Server) resolvePod(q dns.Question, labels []string) answer {
	x := s.index
	switch len(labels) {
	case 0:
		return answer{}
	case 1:
		if x.namespaceExists(labels[0]) {
			return answer{}
		}
		return answer{rcode: dns.RcodeNameError}
	case 2:
	default:
		return answer{rcode: dns.RcodeNameError}
	}
	addr, ok := undash(labels[0])
	if !ok || !x.podExists(labels[1], addr) {
		return answer{rcode: dns.RcodeNameError}
	}
	return answer{answer: s.addrRR(q.Name, q.Qtype, addr)}
}

// undash parses an address written as a pod DNS label.
func undash(label string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(strings.ReplaceAll(label, "-", ".")); err == nil && a.Is4() {
		return a, true
	}
	if a, err := netip.ParseAddr(strings.ReplaceAll(label, "-", ":")); err == nil && a.Is6() {
		return a, true
	}
	return netip.Addr{}, false
}

// resolvePTR answers reverse names of addresses the cluster knows (cluster
// IPs, headless endpoints); others go upstream.
func (s *Server) resolvePTR(q dns.Question) answer {
	addr, ok := reverseAddr(q.Name)
	if !ok {
		return answer{forward: true}
	}
	x := s.index
	x.mu.RLock()
	names := x.ptr[addr]
	x.mu.RUnlock()
	if len(names) == 0 {
		return answer{forward: true}
	}
	if q.Qtype != dns.TypePTR {
		return answer{}
	}
	var out answer
	for _, n := range names {
		out.answer = append(out.answer, &dns.PTR{Hdr: s.hdr(q.Name, dns.TypePTR), Ptr: n + "." + s.zone})
	}
	return out
}

// reverseAddr parses 4.3.2.1.in-addr.arpa. or a nibble ip6.arpa. name.
func reverseAddr(name string) (netip.Addr, bool) {
	if rest, ok := strings.CutSuffix(name, ".in-addr.arpa."); ok {
		parts := strings.Split(rest, ".")
		if len(parts) != 4 {
			return netip.Addr{}, false
		}
		for i, j := 0, 3; i < j; i, j = i+1, j-1 {
			parts[i], parts[j] = parts[j], parts[i]
		}
		a, err := netip.ParseAddr(strings.Join(parts, "."))
		return a, err == nil && a.Is4()
	}
	if rest, ok := strings.CutSuffix(name, ".ip6.arpa."); ok {
		nibbles := strings.Split(rest, ".")
		if len(nibbles) != 32 {
			return netip.Addr{}, false
		}
		var b strings.Builder
		for i := 31; i >= 0; i-- {
			b.WriteString(nibbles[i])
			if i%4 == 0 && i != 0 {
				b.WriteByte(':')
			}
		}
		a, err := netip.ParseAddr(b.String())
		return a, err == nil && a.Is6()
	}
	return netip.Addr{}, false
}

// apex answers the zone's own name: SOA and NS, nothing else.
func (s *Server) apex(q dns.Question) answer {
	switch q.Qtype {
	case dns.TypeSOA:
		return answer{answer: []dns.RR{s.soa()}}
	case dns.TypeNS:
		return answer{answer: []dns.RR{&dns.NS{Hdr: s.hdr(q.Name, dns.TypeNS), Ns: "ns.dns." + s.zone}}}
	}
	return answer{}
}

// soa is the zone's SOA record as CoreDNS's kubernetes plugin builds it.
func (s *Server) soa() dns.RR {
	ttl := min(s.ttl, 300)
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: s.zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns:      "ns.dns." + s.zone,
		Mbox:    "hostmaster." + s.zone,
		Serial:  s.index.Serial(),
		Refresh: 7200,
		Retry:   1800,
		Expire:  86400,
		Minttl:  s.ttl,
	}
}

func (s *Server) hdr(name string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: s.ttl}
}

// addrRR returns an A or AAAA record for a when its family matches qtype.
func (s *Server) addrRR(name string, qtype uint16, a netip.Addr) []dns.RR {
	switch {
	case qtype == dns.TypeA && a.Is4():
		return []dns.RR{&dns.A{Hdr: s.hdr(name, dns.TypeA), A: a.AsSlice()}}
	case qtype == dns.TypeAAAA && a.Is6():
		return []dns.RR{&dns.AAAA{Hdr: s.hdr(name, dns.TypeAAAA), AAAA: a.AsSlice()}}
	}
	return nil
}
