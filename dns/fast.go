package dns

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"
)

// The fast path answers the common query, one question about a Service name
// with at most a plain EDNS0 OPT record, from wire-format replies cached on
// the Service they were computed from. A Service is rebuilt (a new *service)
// whenever it or its EndpointSlices change, so its cached replies go with it
// and need no invalidation of their own. Every reply is first built by the
// slow path (miekg/dns parse, resolve, fit, pack) for the lower-case name, so
// the fast path only copies bytes and patches what varies per query: the ID,
// the RD and CD bits, the case of the question name and of the answer owner
// names equal to it, the zone as the client spelled it (DNS 0x20) where the
// slow path respells it (SOA names, SRV targets, additional owners), the OPT
// record, and the order of the records the loadbalance shuffle moves (the
// reply is cached partitioned, and a query's permutation moves rdata, or
// whole records in the uncompressed form). Names in the zone with no records
// of their own (a Service or namespace that does not exist, the names glibc's
// search path tries before or after the right one) get the zone's negative
// reply without a lookup beyond the index's maps. Anything else (pod names,
// the apex, mixed-case queries whose reply needs compression, EDNS0 options
// or versions, several questions or records, a truncated reply whose kept
// records differ in more than rdata, TCP) falls back to the slow path, and
// the tests check the two agree byte for byte for the same shuffle seed.

// maxCachedReplies bounds the replies cached per Service: its own name and
// ports, its endpoint names, in a few types. Clients asking for names that do
// not exist under an existing Service must not grow memory without bound.
const maxCachedReplies = 32

// maxVariants bounds the compressed (and possibly truncated) forms of one
// reply, one per distinct client buffer size it did not fit in whole.
const maxVariants = 4

// replyCache is the cache of one *service.
type replyCache struct {
	mu      sync.Mutex
	replies atomic.Pointer[[]*cachedReply] // copy on write: readers take no lock
}

// cachedReply is the reply to one (name, type) question about a Service.
type cachedReply struct {
	name  []byte // lower-case wire-format question name
	qtype uint16
	// negative replies (no answer records) are built per query from the
	// zone's SOA, whose serial changes with every index change.
	negative bool
	rcode    int
	// full is the uncompressed reply without OPT, ID 0 and RD, CD clear:
	// what the slow path sends whenever it fits the client's buffer.
	full []byte
	// owners are the offsets in full of answer owner names equal to the
	// question name, rewritten in the client's case as the slow path does.
	owners []uint16
	// groups are the runs of records in full the loadbalance plugin
	// shuffles per query (see balance.go), in the order it draws them;
	// only those of two records or more.
	groups []rrGroup
	// zones are the offsets in full of the cluster zone ending names the
	// slow path respells as the client spelled the zone: SRV targets in
	// the answer, additional records' owners.
	zones []uint16
	// ownersMove: a group whose records move whole holds an owner name
	// rewritten in the client's case, so mixed-case queries go slow;
	// zonesMove: one holds a zone respelled, so queries spelling the zone
	// in another case go slow.
	ownersMove, zonesMove bool
	mu                    sync.Mutex
	// variants are the compressed forms for buffers full does not fit in.
	variants atomic.Pointer[[]variant]
}

// rrGroup is one run of records of a section that a reply's shuffle
// reorders: its A and AAAA records, or its MX records.
type rrGroup struct {
	recs []wireRR
	// uniform: the records are the same but for rdata of one length (one
	// owner, type, TTL), so a shuffle moves rdata and nothing else.
	uniform bool
	// address: A or AAAA records, whose rdata holds no name, so that their
	// rdata can also move inside a compressed form.
	address bool
	sec     int // the section: 0 answer, 1 authority, 2 additional
	first   int // the index of its first record in the section
}

// wireRR locates one record in a wire-format message: where it starts,
// where its rdata starts, where it ends.
type wireRR struct {
	start, rdata, end int
	rrtype            uint16
}

// variant is a compressed reply for one client buffer size, without OPT.
type variant struct {
	size int
	opt  bool
	wire []byte
	// slots are, per group of the cachedReply, the rdata offsets in wire
	// of the group's records truncation kept (a prefix of the group).
	slots [][]int
	// slow: the shuffle cannot be done in this form (records of a kept
	// group differ in more than their rdata): the slow path answers.
	slow bool
}

// fastQuery is what the fast path parsed out of a query packet.
type fastQuery struct {
	pkt     []byte
	qend    int    // end of the question section
	lower   []byte // question name, lower case, wire format
	upper   bool   // the name had upper-case letters
	labels  [128]uint8
	nlabels int
	qtype   uint16
	opt     bool
	do      bool
	size    int // the reply size limit, as fit computes it for UDP
	// seed draws the reply's shuffle (see balance.go) when seeded, else a
	// random one is drawn for replies that have records to shuffle; perm is
	// scratch space for its permutations.
	seed   uint64
	seeded bool
	perm   []int
}

// parseFast parses pkt if it is a query the fast path may answer: one
// question of class IN whose name has only letters, digits, '-' and '_',
// and no other record than an OPT without options. scratch holds the
// lower-case name.
func parseFast(pkt []byte, q *fastQuery, scratch []byte) bool {
	if len(pkt) < 12+1+4 {
		return false
	}
	flags := binary.BigEndian.Uint16(pkt[2:])
	if flags&0x8000 != 0 || (flags>>11)&0xF != dns.OpcodeQuery {
		return false
	}
	if binary.BigEndian.Uint16(pkt[4:]) != 1 || binary.BigEndian.Uint16(pkt[6:]) != 0 || binary.BigEndian.Uint16(pkt[8:]) != 0 {
		return false
	}
	ar := binary.BigEndian.Uint16(pkt[10:])
	if ar > 1 {
		return false
	}
	off := 12
	q.nlabels = 0
	q.upper = false
	lower := scratch[:0]
	for {
		if off >= len(pkt) {
			return false
		}
		l := int(pkt[off])
		if l == 0 {
			lower = append(lower, 0)
			off++
			break
		}
		if l > 63 || off+1+l > len(pkt) || len(lower)+1+l+1 > 255 || q.nlabels == len(q.labels) {
			return false
		}
		q.labels[q.nlabels] = uint8(len(lower))
		q.nlabels++
		lower = append(lower, byte(l))
		for _, c := range pkt[off+1 : off+1+l] {
			switch {
			case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
			case c >= 'A' && c <= 'Z':
				c += 'a' - 'A'
				q.upper = true
			default:
				return false
			}
			lower = append(lower, c)
		}
		off += 1 + l
	}
	if q.nlabels == 0 || off+4 > len(pkt) {
		return false
	}
	q.qtype = binary.BigEndian.Uint16(pkt[off:])
	if binary.BigEndian.Uint16(pkt[off+2:]) != dns.ClassINET || q.qtype == dns.TypeAXFR || q.qtype == dns.TypeIXFR {
		return false
	}
	off += 4
	q.qend = off
	q.opt, q.do, q.size = false, false, dns.MinMsgSize
	if ar == 1 {
		// An OPT record: root name, type OPT, class = UDP size, TTL =
		// extended rcode, version, flags; no options. A version other
		// than 0 gets BADVERS from the slow path.
		if off+11 != len(pkt) || pkt[off] != 0 || binary.BigEndian.Uint16(pkt[off+1:]) != dns.TypeOPT ||
			pkt[off+6] != 0 || binary.BigEndian.Uint16(pkt[off+9:]) != 0 {
			return false
		}
		q.opt = true
		q.size = max(int(binary.BigEndian.Uint16(pkt[off+3:])), dns.MinMsgSize)
		q.do = pkt[off+7]&0x80 != 0
		off += 11
	}
	if off != len(pkt) {
		return false
	}
	q.pkt, q.lower = pkt, lower
	return true
}

// label returns the i-th label of the lower-case name.
func (q *fastQuery) label(i int) []byte {
	o := int(q.labels[i])
	return q.lower[o+1 : o+1+int(q.lower[o])]
}

// answerFast appends the reply to a query parsed by parseFast to out and
// returns it, with its rcode; ok is false when the slow path must answer.
func (s *Server) answerFast(q *fastQuery, out []byte) (reply []byte, rcode int, ok bool) {
	svc, rcode, ok := s.fastService(q)
	if !ok {
		return nil, 0, false
	}
	if svc == nil {
		return s.negativeFast(q, rcode, out)
	}
	cr := svc.cache.lookup(q.lower, q.qtype)
	if cr == nil {
		if cr = s.buildReply(q); cr == nil {
			return nil, 0, false
		}
		svc.cache.store(cr)
	}
	if cr.negative {
		return s.negativeFast(q, cr.rcode, out)
	}
	optLen := 0
	if q.opt {
		optLen = 11
	}
	// The zone as the client spelled it, when not in lower case.
	var zone []byte
	if q.upper {
		zone = q.pkt[12+len(q.lower)-len(s.zoneWire) : 12+len(q.lower)]
		if bytes.Equal(zone, s.zoneWire) {
			zone = nil
		}
	}
	if (q.upper && cr.ownersMove) || (zone != nil && cr.zonesMove) {
		return nil, 0, false
	}
	var v *variant
	switch {
	case len(cr.full)+optLen <= q.size:
	case q.upper:
		// Compression in miekg/dns matches names case-sensitively, so a
		// mixed-case question compresses differently: leave it to the
		// slow path.
		return nil, 0, false
	default:
		if v = s.variant(cr, q); v == nil || v.slow {
			return nil, 0, false
		}
	}
	if v == nil {
		out = append(out[:0], cr.full...)
		cr.shuffleFull(q, out)
	} else {
		out = append(out[:0], v.wire...)
		cr.shuffleVariant(q, v, out)
	}
	s.patchHeader(q, out, cr.rcode, out[2]&0x02 != 0)
	if q.upper {
		name := q.pkt[12 : 12+len(q.lower)]
		copy(out[12:], name)
		for _, o := range cr.owners {
			copy(out[o:], name)
		}
	}
	if zone != nil {
		for _, o := range cr.zones {
			copy(out[o:], zone)
		}
	}
	return s.appendOPT(q, out), cr.rcode, true
}

// fastService finds the Service a name under svc.<zone> with at least a
// Service and namespace label names. For a name in the zone that has no
// records of its own, it returns a nil Service and the rcode of the reply
// without answer records: NXDOMAIN for a Service or namespace that does not
// exist or a name neither under svc.<zone> nor pod.<zone> (how glibc's
// search path asks for name.svc.<zone> and name.<zone> after
// name.<namespace>.svc.<zone>), NODATA for svc.<zone> and an existing
// namespace's name. ok is false for every other name.
func (s *Server) fastService(q *fastQuery) (svc *service, rcode int, ok bool) {
	if s.zoneWire == nil || !bytes.HasSuffix(q.lower, s.zoneWire) {
		return nil, 0, false
	}
	// SOA and TXT are NODATA below the apex whether or not the name
	// exists, but dns-version.<zone> has a TXT record.
	if q.qtype == dns.TypeSOA || q.qtype == dns.TypeTXT {
		return nil, 0, false
	}
	k := q.nlabels - s.zoneLabels - 1 // labels before the one above the zone
	if k < 0 || int(q.labels[k+1]) != len(q.lower)-len(s.zoneWire) {
		return nil, 0, false // the apex, or a zone that is not whole labels
	}
	x := s.index
	switch top := string(q.label(k)); {
	case top == "pod":
		return nil, 0, false
	case top != "svc":
		// lookup: neither svc nor pod, dns-version included.
		return nil, dns.RcodeNameError, true
	case k == 0:
		return nil, dns.RcodeSuccess, true
	case k == 1:
		x.mu.RLock()
		exists := x.namespaceExists(string(q.label(0)))
		x.mu.RUnlock()
		if exists {
			return nil, dns.RcodeSuccess, true
		}
		return nil, dns.RcodeNameError, true
	}
	var key [128]byte
	ns, name := q.label(k-1), q.label(k-2)
	b := append(append(append(key[:0], ns...), '/'), name...)
	x.mu.RLock()
	svc = x.services[string(b)]
	x.mu.RUnlock()
	if svc == nil {
		return nil, dns.RcodeNameError, true
	}
	if svc.externalName != "" {
		// Its answers follow the CNAME into other Services' records or
		// upstream, which this Service's cache could not keep current.
		return nil, 0, false
	}
	return svc, 0, true
}

// negativeFast builds a reply with no answer records and the zone's SOA in
// the authority section, as the slow path sends it uncompressed: the zone
// in the SOA's names spelled as the client spelled it.
func (s *Server) negativeFast(q *fastQuery, rcode int, out []byte) ([]byte, int, bool) {
	optLen := 0
	if q.opt {
		optLen = 11
	}
	if q.qend+len(s.soaWire)+optLen > q.size {
		return nil, 0, false
	}
	out = append(out[:0], q.pkt[:q.qend]...)
	binary.BigEndian.PutUint16(out[6:], 0)  // ANCOUNT
	binary.BigEndian.PutUint16(out[8:], 1)  // NSCOUNT
	binary.BigEndian.PutUint16(out[10:], 0) // ARCOUNT, OPT added below
	s.patchHeader(q, out, rcode, false)
	n := len(out)
	out = append(out, s.soaWire...)
	binary.BigEndian.PutUint32(out[n+len(s.soaWire)-20:], s.index.Serial())
	if q.upper {
		zone := q.pkt[12+len(q.lower)-len(s.zoneWire) : 12+len(q.lower)]
		for _, o := range s.soaZones {
			copy(out[n+o:], zone)
		}
	}
	return s.appendOPT(q, out), rcode, true
}

// patchHeader sets the reply's ID and flags: QR, AA, the query's RD and CD,
// the rcode, and TC when the reply was truncated.
func (s *Server) patchHeader(q *fastQuery, out []byte, rcode int, truncated bool) {
	out[0], out[1] = q.pkt[0], q.pkt[1]
	var tc byte
	if truncated {
		tc = 0x02
	}
	out[2] = 0x80 | 0x04 | tc | q.pkt[2]&0x01
	out[3] = q.pkt[3]&0x10 | byte(rcode&0xF)
}

// appendOPT adds the OPT record fit adds when the query had one: the
// client's buffer size capped at 1232 and its DO bit.
func (s *Server) appendOPT(q *fastQuery, out []byte) []byte {
	if !q.opt {
		return out
	}
	binary.BigEndian.PutUint16(out[10:], binary.BigEndian.Uint16(out[10:])+1)
	var do byte
	if q.do {
		do = 0x80
	}
	size := uint16(min(q.size, 1232))
	return append(out, 0, byte(dns.TypeOPT>>8), byte(dns.TypeOPT), byte(size>>8), byte(size), 0, 0, do, 0, 0, 0)
}

// lookup returns the cached reply to (name, qtype), or nil.
func (c *replyCache) lookup(name []byte, qtype uint16) *cachedReply {
	if p := c.replies.Load(); p != nil {
		for _, r := range *p {
			if r.qtype == qtype && bytes.Equal(r.name, name) {
				return r
			}
		}
	}
	return nil
}

// store adds r unless the cache is full or already holds its question.
func (c *replyCache) store(r *cachedReply) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var cur []*cachedReply
	if p := c.replies.Load(); p != nil {
		cur = *p
	}
	if len(cur) >= maxCachedReplies {
		return
	}
	for _, o := range cur {
		if o.qtype == r.qtype && bytes.Equal(o.name, r.name) {
			return
		}
	}
	next := append(cur[:len(cur):len(cur)], r)
	c.replies.Store(&next)
}

// buildReply computes the reply to q's question through the slow path, for
// the lower-case name, unfitted and uncompressed.
func (s *Server) buildReply(q *fastQuery) *cachedReply {
	name, _, err := dns.UnpackDomainName(q.lower, 0)
	if err != nil {
		return nil
	}
	req := new(dns.Msg)
	req.Question = []dns.Question{{Name: name, Qtype: q.qtype, Qclass: dns.ClassINET}}
	m, forward := s.zoneReply(req)
	if forward {
		return nil
	}
	if m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError {
		return nil
	}
	cr := &cachedReply{name: bytes.Clone(q.lower), qtype: q.qtype, rcode: m.Rcode, negative: len(m.Answer) == 0}
	if cr.negative {
		return cr
	}
	balance(m, nil)
	m.Compress = false
	full, err := m.Pack()
	if err != nil {
		return nil
	}
	secs, ok := wireSections(full)
	if !ok {
		return nil
	}
	cr.full = full
	cr.owners = answerOwners(full, q.lower, secs[0])
	cr.zones = s.respelledZones(full, secs)
	if cr.groups, ok = shuffleGroups(full, secs); !ok {
		return nil
	}
	for _, g := range cr.groups {
		if g.uniform {
			continue
		}
		in := func(o uint16) bool { return int(o) >= g.recs[0].start && int(o) < g.recs[len(g.recs)-1].end }
		cr.ownersMove = cr.ownersMove || slices.ContainsFunc(cr.owners, in)
		cr.zonesMove = cr.zonesMove || slices.ContainsFunc(cr.zones, in)
	}
	return cr
}

// answerOwners lists the offsets of the answer records' owner names equal
// to name in an uncompressed message.
func answerOwners(msg, name []byte, answer []wireRR) []uint16 {
	var out []uint16
	for _, rr := range answer {
		if bytes.HasPrefix(msg[rr.start:], name) {
			out = append(out, uint16(rr.start))
		}
	}
	return out
}

// respelledZones lists the offsets of the zone ending the names zoneReply
// respells for a client that spelled the zone in another case, in an
// uncompressed message: the answer's SRV targets, the additional records'
// owner names.
func (s *Server) respelledZones(msg []byte, secs [3][]wireRR) []uint16 {
	var out []uint16
	add := func(name int) {
		// Walk the labels: the zone must be whole labels of the name.
		for name < len(msg) && msg[name] != 0 {
			if bytes.HasPrefix(msg[name:], s.zoneWire) {
				out = append(out, uint16(name))
				return
			}
			name += 1 + int(msg[name])
		}
	}
	for _, rr := range secs[0] {
		if rr.rrtype == dns.TypeSRV {
			add(rr.rdata + 6) // priority, weight, port, then the target
		}
	}
	for _, rr := range secs[2] {
		add(rr.start)
	}
	return out
}

// wireSections lists the records of the answer, authority and additional
// sections of a wire-format message, compressed or not.
func wireSections(msg []byte) (secs [3][]wireRR, ok bool) {
	if len(msg) < 12 {
		return secs, false
	}
	off := 12
	for range binary.BigEndian.Uint16(msg[4:]) {
		if off, ok = skipName(msg, off); !ok || off+4 > len(msg) {
			return secs, false
		}
		off += 4
	}
	for i := range secs {
		for range binary.BigEndian.Uint16(msg[6+2*i:]) {
			start := off
			if off, ok = skipName(msg, off); !ok || off+10 > len(msg) {
				return secs, false
			}
			rr := wireRR{start: start, rdata: off + 10, rrtype: binary.BigEndian.Uint16(msg[off:])}
			rr.end = rr.rdata + int(binary.BigEndian.Uint16(msg[off+8:]))
			if rr.end > len(msg) {
				return secs, false
			}
			secs[i] = append(secs[i], rr)
			off = rr.end
		}
	}
	return secs, off == len(msg)
}

// skipName returns the offset after the name at off, which may end in a
// compression pointer.
func skipName(msg []byte, off int) (int, bool) {
	for off < len(msg) {
		l := int(msg[off])
		switch {
		case l == 0:
			return off + 1, true
		case l&0xC0 == 0xC0:
			return off + 2, off+2 <= len(msg)
		case l > 63:
			return 0, false
		}
		off += 1 + l
	}
	return 0, false
}

// shuffleGroups finds the groups of a partitioned (balance with no
// shuffler) uncompressed message that the shuffle reorders, in the order it
// draws them: per section, its addresses, then its MX records. ok is false
// if a group is not one run, which balance never leaves.
func shuffleGroups(msg []byte, secs [3][]wireRR) (groups []rrGroup, ok bool) {
	for sec, rrs := range secs {
		for kind := range 2 {
			g := rrGroup{sec: sec, first: -1, address: kind == 0, uniform: true}
			for i, rr := range rrs {
				if balanceGroup(rr.rrtype) != kind {
					continue
				}
				if g.first < 0 {
					g.first = i
				} else if g.first+len(g.recs) != i {
					return nil, false
				}
				if len(g.recs) > 0 {
					r0 := g.recs[0]
					g.uniform = g.uniform && rr.end-rr.rdata == r0.end-r0.rdata &&
						bytes.Equal(msg[rr.start:rr.rdata], msg[r0.start:r0.rdata])
				}
				g.recs = append(g.recs, rr)
			}
			if len(g.recs) >= 2 {
				groups = append(groups, g)
			}
		}
	}
	return groups, true
}

// shuffler returns the shuffle of q's reply.
func (q *fastQuery) shuffler() shuffler {
	if q.seeded {
		return shuffler{q.seed}
	}
	return shuffler{rand.Uint64()}
}

// permutation draws the next group's permutation of n from q's shuffle.
func (q *fastQuery) permutation(sh *shuffler, n int) []int {
	if cap(q.perm) < n {
		q.perm = make([]int, n)
	}
	p := q.perm[:n]
	sh.permute(p)
	return p
}

// shuffleFull shuffles the groups of out, a copy of cr.full, for q's seed.
func (cr *cachedReply) shuffleFull(q *fastQuery, out []byte) {
	if len(cr.groups) == 0 {
		return
	}
	sh := q.shuffler()
	for _, g := range cr.groups {
		perm := q.permutation(&sh, len(g.recs))
		if g.uniform {
			for i, p := range perm {
				copy(out[g.recs[i].rdata:], cr.full[g.recs[p].rdata:g.recs[p].end])
			}
			continue
		}
		off := g.recs[0].start
		for _, p := range perm {
			off += copy(out[off:], cr.full[g.recs[p].start:g.recs[p].end])
		}
	}
}

// shuffleVariant shuffles the groups of out, a copy of v.wire: the records
// truncation kept of each group get the rdata of the first records of the
// group's permutation, which is what truncating the shuffled reply keeps.
func (cr *cachedReply) shuffleVariant(q *fastQuery, v *variant, out []byte) {
	if len(cr.groups) == 0 {
		return
	}
	sh := q.shuffler()
	for gi, g := range cr.groups {
		perm := q.permutation(&sh, len(g.recs)) // drawn even if none was kept
		for i, o := range v.slots[gi] {
			src := g.recs[perm[i]]
			copy(out[o:], cr.full[src.rdata:src.end])
		}
	}
}

// variantSlots finds where the kept records of each of cr's groups have
// their rdata in wire, a compressed and possibly truncated form of the same
// partitioned reply; ok is false when a kept group cannot be shuffled by
// moving rdata.
func (cr *cachedReply) variantSlots(wire []byte) (slots [][]int, ok bool) {
	secs, ok := wireSections(wire)
	if !ok {
		return nil, false
	}
	slots = make([][]int, len(cr.groups))
	for gi, g := range cr.groups {
		kept := min(max(len(secs[g.sec])-g.first, 0), len(g.recs))
		if kept == 0 {
			continue
		}
		if !g.uniform || !g.address {
			return nil, false
		}
		for i, rr := range secs[g.sec][g.first : g.first+kept] {
			// The same record as in full, unshuffled: a form built from
			// another state of the index does not match.
			src := g.recs[i]
			if rr.rrtype != src.rrtype || !bytes.Equal(wire[rr.rdata:rr.end], cr.full[src.rdata:src.end]) {
				return nil, false
			}
			slots[gi] = append(slots[gi], rr.rdata)
		}
	}
	return slots, true
}

// variant returns the compressed reply for q's buffer size and OPT, built
// through the slow path's fit for a lower-case query the first time.
func (s *Server) variant(cr *cachedReply, q *fastQuery) *variant {
	if p := cr.variants.Load(); p != nil {
		for i := range *p {
			if v := &(*p)[i]; v.size == q.size && v.opt == q.opt {
				return v
			}
		}
	}
	name, _, err := dns.UnpackDomainName(q.lower, 0)
	if err != nil {
		return nil
	}
	req := new(dns.Msg)
	req.Question = []dns.Question{{Name: name, Qtype: q.qtype, Qclass: dns.ClassINET}}
	if q.opt {
		req.SetEdns0(uint16(q.size), false)
	}
	m, forward := s.zoneReply(req)
	if forward {
		return nil
	}
	balance(m, nil)
	wire, err := s.fit(req, m, "udp").Pack()
	if err != nil {
		return nil
	}
	if q.opt {
		// The OPT record is last; appendOPT adds it back per query.
		wire = wire[:len(wire)-11]
		binary.BigEndian.PutUint16(wire[10:], binary.BigEndian.Uint16(wire[10:])-1)
	}
	v := variant{size: q.size, opt: q.opt, wire: wire}
	var ok bool
	v.slots, ok = cr.variantSlots(wire)
	v.slow = !ok
	cr.mu.Lock()
	defer cr.mu.Unlock()
	var cur []variant
	if p := cr.variants.Load(); p != nil {
		cur = *p
	}
	if len(cur) < maxVariants {
		next := append(cur[:len(cur):len(cur)], v)
		cr.variants.Store(&next)
	}
	return &v
}
