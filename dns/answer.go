package dns

import (
	"net"
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
	// zone is the zone (lower case) whose SOA a reply without answer
	// records carries: the cluster zone unless set, in-addr.arpa. or
	// ip6.arpa. for reverse names, the other zones of kubeadm's
	// `kubernetes cluster.local in-addr.arpa ip6.arpa`.
	zone string
	// chase is a CNAME target outside the zone whose records of the
	// question's type go after the answer, looked up through the whole
	// server as CoreDNS's upstream (plugin/pkg/upstream, always set by the
	// kubernetes plugin's setup) does for plugin.A and plugin.AAAA.
	chase string
}

// dnsSchemaVersion is the version of the Kubernetes DNS specification
// served, answered at dns-version.<zone> as the specification requires.
const dnsSchemaVersion = "1.1.0"

// reverseZones are the reverse zones kubeadm's Corefile gives the
// kubernetes plugin besides the cluster zone.
var reverseZones = [...]string{"in-addr.arpa.", "ip6.arpa."}

// resolve answers q (whose name is lower case and fully qualified) from the
// index. lower reports that the client spelled the name in lower case.
func (s *Server) resolve(q dns.Question, lower bool) answer {
	name := q.Name
	// The kubernetes plugin refuses zone transfers anywhere in its zones
	// (handler.go returns dns.RcodeRefused; kubeadm's Corefile has no
	// transfer plugin), over UDP and TCP alike.
	transfer := q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR
	for _, rz := range reverseZones {
		if name == rz || strings.HasSuffix(name, "."+rz) {
			if transfer {
				return answer{rcode: dns.RcodeRefused}
			}
			return s.resolveReverse(q, rz)
		}
	}
	zone := s.zone
	if transfer && (name == zone || strings.HasSuffix(name, "."+zone)) {
		return answer{rcode: dns.RcodeRefused}
	}
	if name == zone {
		return s.apex(q, lower)
	}
	if !strings.HasSuffix(name, "."+zone) {
		return answer{forward: true}
	}
	switch q.Qtype {
	case dns.TypeSOA:
		// plugin/kubernetes/handler.go builds the SOA only when qname ==
		// zone; below the apex it has no records and no error: NODATA,
		// whether or not the name exists.
		return answer{}
	case dns.TypeTXT:
		// Kubernetes.Services (plugin/kubernetes/kubernetes.go) answers TXT
		// only for dns-version.<zone>, with a fixed TTL of 8 hours, and
		// returns no records and no error for every other name: NODATA,
		// never NXDOMAIN.
		if name == "dns-version."+zone {
			hdr := s.hdr(name, dns.TypeTXT)
			hdr.Ttl = 28800
			return answer{answer: []dns.RR{&dns.TXT{Hdr: hdr, Txt: []string{dnsSchemaVersion}}}}
		}
		return answer{}
	}
	x := s.index
	x.mu.RLock()
	defer x.mu.RUnlock()
	return s.lookup(q, nil)
}

// lookup answers q, a name in the cluster zone, with the index read-locked.
// cnames are the CNAME records followed to get here (plugin.A's
// previousRecords).
func (s *Server) lookup(q dns.Question, cnames []dns.RR) answer {
	name := q.Name
	if name == s.zone {
		return answer{} // a CNAME to the apex: plugin.A finds nothing there
	}
	rel, ok := strings.CutSuffix(name, "."+s.zone)
	if !ok {
		return answer{rcode: dns.RcodeNameError}
	}
	labels := strings.Split(rel, ".")
	n := len(labels)
	switch {
	case labels[n-1] == "svc":
		return s.resolveService(q, labels[:n-1], cnames)
	case labels[n-1] == "pod":
		return s.resolvePod(q, labels[:n-1])
	}
	// dns-version and anything else: parseRequest's errInvalidRequest.
	return answer{rcode: dns.RcodeNameError}
}

// resolveService answers names under svc.<zone>; labels are what precedes
// "svc", e.g. [my-svc default] or [_http _tcp my-svc default].
func (s *Server) resolveService(q dns.Question, labels []string, cnames []dns.RR) answer {
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
		return s.serviceRecords(q, svc, svcFQDN, "", "", "", cnames)
	case 3: // endpoint.svc.ns.svc.zone (endpoints by hostname or dashed IP)
		// findServices skips ExternalName Services for endpoint names.
		if svc.externalName != "" {
			return answer{rcode: dns.RcodeNameError}
		}
		found := false
		for _, e := range svc.endpoints {
			found = found || e.label == labels[0]
		}
		if !found {
			return answer{rcode: dns.RcodeNameError}
		}
		return s.serviceRecords(q, svc, svcFQDN, "", "", labels[0], cnames)
	case 4: // _port._proto.svc.ns.svc.zone; CoreDNS makes the underscores
		// optional and lets a bare "_" match any port or protocol.
		portName := strings.TrimPrefix(labels[0], "_")
		proto := strings.TrimPrefix(labels[1], "_")
		return s.serviceRecords(q, svc, svcFQDN, anyLabel(portName), anyLabel(proto), "", cnames)
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

// serviceRecords answers a Service's own name (portName == ""), one of its
// _port._proto names, or (endpoint != "") the name of its endpoints with
// that label. The endpoint name answers as findServices makes it: only the
// endpoints with that label, with every port of theirs, whether or not the
// Service is headless.
func (s *Server) serviceRecords(q dns.Question, svc *service, svcFQDN, portName, proto, endpoint string, cnames []dns.RR) answer {
	matches := func(p port) bool {
		if portName == "" {
			return true
		}
		return (portName == matchAny || (p.name != "" && p.name == portName)) && (proto == matchAny || proto == p.proto)
	}
	if svc.externalName != "" {
		return s.externalRecords(q, svc, portName, cnames)
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
	if svc.headless && len(svc.endpoints) == 0 {
		// CoreDNS finds no items for a headless Service without ready
		// endpoints, which it answers as a name error.
		return answer{rcode: dns.RcodeNameError}
	}
	byEndpoint := svc.headless || endpoint != ""
	var out answer
	switch q.Qtype {
	case dns.TypeA, dns.TypeAAAA:
		if byEndpoint {
			for _, e := range svc.endpoints {
				if endpoint == "" || e.label == endpoint {
					out.answer = append(out.answer, s.addrRR(q.Name, q.Qtype, e.addr)...)
				}
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
		if byEndpoint {
			for _, e := range svc.endpoints {
				if endpoint != "" && e.label != endpoint {
					continue
				}
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

// maxCNAMEs is how many CNAME records plugin.A follows before it stops
// adding more (len(previousRecords) > 7 in plugin/backend_lookup.go).
const maxCNAMEs = 7

// externalRecords answers an ExternalName Service's name as CoreDNS does.
// findServices (plugin/kubernetes/kubernetes.go) keeps the Service only when
// msg.Service.HostType of its externalName is CNAME, i.e. the name does not
// parse as an IP address, and not for _port._proto names: otherwise no items,
// a name error. plugin.CNAME answers the CNAME alone; plugin.A and
// plugin.AAAA follow it (chaseCNAME); Services drops CNAME targets from SRV
// answers and plugin.MX wants mail records, so every other type is NODATA.
func (s *Server) externalRecords(q dns.Question, svc *service, portName string, cnames []dns.RR) answer {
	if portName != "" || net.ParseIP(svc.externalName) != nil {
		return answer{rcode: dns.RcodeNameError}
	}
	cname := &dns.CNAME{Hdr: s.hdr(q.Name, dns.TypeCNAME), Target: dns.Fqdn(svc.externalName)}
	switch q.Qtype {
	case dns.TypeCNAME:
		return answer{answer: []dns.RR{cname}}
	case dns.TypeA, dns.TypeAAAA:
		return s.chaseCNAME(q, cname, cnames)
	}
	return answer{}
}

// chaseCNAME follows cname as plugin.A (plugin/backend_lookup.go) does: a
// target at or below the query name is a loop and gives nothing, as does
// one already followed or one past maxCNAMEs; a target in the zone is
// looked up here and the CNAME kept only when that found records (so a
// dangling in-zone CNAME is NODATA); a target outside it is looked up
// through the whole server (answer.chase) and the CNAME kept whatever that
// finds.
func (s *Server) chaseCNAME(q dns.Question, cname *dns.CNAME, cnames []dns.RR) answer {
	target := strings.ToLower(cname.Target)
	if target == q.Name || strings.HasSuffix(target, "."+q.Name) || len(cnames) > maxCNAMEs {
		return answer{}
	}
	for _, rr := range cnames {
		if c, ok := rr.(*dns.CNAME); ok && c.Target == cname.Target {
			return answer{} // dnsutil.DuplicateCNAME
		}
	}
	if target != s.zone && !strings.HasSuffix(target, "."+s.zone) {
		return answer{answer: []dns.RR{cname}, chase: cname.Target}
	}
	next := s.lookup(dns.Question{Name: target, Qtype: q.Qtype, Qclass: q.Qclass}, append(cnames, cname))
	if next.rcode != dns.RcodeSuccess || len(next.answer) == 0 {
		return answer{}
	}
	return answer{answer: append([]dns.RR{cname}, next.answer...), chase: next.chase}
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

// resolveReverse answers a name in the reverse zone rz. CoreDNS answers
// SOA there itself (the zone's SOA at rz, NODATA below it: handler.go builds
// the SOA only when qname == zone); for other types its fake A lookup finds
// no items under a reverse zone (Records returns errNoItems for reverse
// names), so the query falls through to forward; PTR answers what the
// cluster knows and falls through for the rest.
func (s *Server) resolveReverse(q dns.Question, rz string) answer {
	switch q.Qtype {
	case dns.TypeSOA:
		if q.Name == rz {
			return answer{answer: []dns.RR{s.soa(rz)}, zone: rz}
		}
		return answer{zone: rz}
	case dns.TypePTR:
		return s.resolvePTR(q)
	}
	return answer{forward: true}
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

// apex answers the zone's own name: SOA and NS, nothing else. handler.go
// answers NS only when state.Name() (the query name lower-cased) equals the
// zone as the client spelled it, so an apex NS query with any upper-case
// letter falls through to its fake A lookup and gets NODATA.
func (s *Server) apex(q dns.Question, lower bool) answer {
	switch q.Qtype {
	case dns.TypeSOA:
		return answer{answer: []dns.RR{s.soa(s.zone)}}
	case dns.TypeNS:
		if lower {
			return answer{answer: []dns.RR{&dns.NS{Hdr: s.hdr(q.Name, dns.TypeNS), Ns: "ns.dns." + s.zone}}}
		}
	}
	return answer{}
}

// soa is the SOA record of zone (the cluster zone or a reverse zone, spelled
// as the client did) as plugin.SOA (plugin/backend_lookup.go) builds it for
// the kubernetes plugin.
func (s *Server) soa(zone string) dns.RR {
	ttl := min(s.ttl, 300)
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns:      "ns.dns." + zone,
		Mbox:    "hostmaster." + zone,
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
