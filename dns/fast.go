package dns

import (
	"bytes"
	"encoding/binary"
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
// names equal to it, and the OPT record. Anything else (other names,
// mixed-case queries whose reply needs compression, EDNS0 options, several
// questions or records, TCP) falls back to the slow path, and the tests check
// the two agree byte for byte.

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
	mu     sync.Mutex
	// variants are the compressed forms for buffers full does not fit in.
	variants atomic.Pointer[[]variant]
}

// variant is a compressed reply for one client buffer size, without OPT.
type variant struct {
	size int
	opt  bool
	wire []byte
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
	if binary.BigEndian.Uint16(pkt[off+2:]) != dns.ClassINET {
		return false
	}
	off += 4
	q.qend = off
	q.opt, q.do, q.size = false, false, dns.MinMsgSize
	if ar == 1 {
		// An OPT record: root name, type OPT, class = UDP size, TTL =
		// extended rcode, version, flags; no options.
		if off+11 != len(pkt) || pkt[off] != 0 || binary.BigEndian.Uint16(pkt[off+1:]) != dns.TypeOPT ||
			binary.BigEndian.Uint16(pkt[off+9:]) != 0 {
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
	svc, ok := s.fastService(q)
	if !ok {
		return nil, 0, false
	}
	if svc == nil {
		return s.negativeFast(q, dns.RcodeNameError, out)
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
	var wire []byte
	switch {
	case len(cr.full)+optLen <= q.size:
		wire = cr.full
	case q.upper:
		// Compression in miekg/dns matches names case-sensitively, so a
		// mixed-case question compresses differently: leave it to the
		// slow path.
		return nil, 0, false
	default:
		if wire = s.variant(cr, q); wire == nil {
			return nil, 0, false
		}
	}
	out = append(out[:0], wire...)
	s.patchHeader(q, out, cr.rcode, wire[2]&0x02 != 0)
	if q.upper {
		name := q.pkt[12 : 12+len(q.lower)]
		copy(out[12:], name)
		for _, o := range cr.owners {
			copy(out[o:], name)
		}
	}
	return s.appendOPT(q, out), cr.rcode, true
}

// fastService finds the Service a name under svc.<zone> with at least a
// Service and namespace label names, or nil if there is none. ok is false
// for every other name.
func (s *Server) fastService(q *fastQuery) (svc *service, ok bool) {
	if s.zoneWire == nil || !bytes.HasSuffix(q.lower, s.zoneWire) {
		return nil, false
	}
	// SOA and TXT are NODATA below the apex whether or not the name
	// exists; a zone spelled with upper case shows in the SOA and SRV
	// targets, not only in owner names equal to the question.
	if q.qtype == dns.TypeSOA || q.qtype == dns.TypeTXT ||
		(q.upper && !bytes.Equal(q.pkt[12+len(q.lower)-len(s.zoneWire):12+len(q.lower)], s.zoneWire)) {
		return nil, false
	}
	k := q.nlabels - s.zoneLabels - 1 // labels before "svc"
	if k < 2 || int(q.labels[k+1]) != len(q.lower)-len(s.zoneWire) || string(q.label(k)) != "svc" {
		return nil, false
	}
	var key [128]byte
	ns, name := q.label(k-1), q.label(k-2)
	b := append(append(append(key[:0], ns...), '/'), name...)
	x := s.index
	x.mu.RLock()
	svc = x.services[string(b)]
	x.mu.RUnlock()
	if svc != nil && svc.externalName != "" {
		// Its answers follow the CNAME into other Services' records or
		// upstream, which this Service's cache could not keep current.
		return nil, false
	}
	return svc, true
}

// negativeFast builds a reply with no answer records and the zone's SOA in
// the authority section, as the slow path sends it uncompressed.
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
	cr := &cachedReply{name: bytes.Clone(q.lower), qtype: q.qtype, rcode: m.Rcode, negative: len(m.Answer) == 0}
	if cr.negative {
		return cr
	}
	m.Compress = false
	full, err := m.Pack()
	if err != nil {
		return nil
	}
	cr.full = full
	cr.owners = answerOwners(full, q.lower)
	return cr
}

// answerOwners lists the offsets of the answer section's owner names equal
// to name in an uncompressed message.
func answerOwners(msg, name []byte) []uint16 {
	an := int(binary.BigEndian.Uint16(msg[6:]))
	off := 12 + len(name) + 4
	var out []uint16
	for range an {
		if bytes.HasPrefix(msg[off:], name) {
			out = append(out, uint16(off))
		}
		end, ok := skipName(msg, off)
		if !ok || end+10 > len(msg) {
			return out
		}
		off = end + 10 + int(binary.BigEndian.Uint16(msg[end+8:]))
	}
	return out
}

// skipName returns the offset after the uncompressed name at off.
func skipName(msg []byte, off int) (int, bool) {
	for off < len(msg) {
		l := int(msg[off])
		if l == 0 {
			return off + 1, true
		}
		if l > 63 {
			return 0, false
		}
		off += 1 + l
	}
	return 0, false
}

// variant returns the compressed reply for q's buffer size and OPT, built
// through the slow path's fit for a lower-case query the first time.
func (s *Server) variant(cr *cachedReply, q *fastQuery) []byte {
	if p := cr.variants.Load(); p != nil {
		for _, v := range *p {
			if v.size == q.size && v.opt == q.opt {
				return v.wire
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
	wire, err := s.fit(req, m, "udp").Pack()
	if err != nil {
		return nil
	}
	if q.opt {
		// The OPT record is last; appendOPT adds it back per query.
		wire = wire[:len(wire)-11]
		binary.BigEndian.PutUint16(wire[10:], binary.BigEndian.Uint16(wire[10:])-1)
	}
	cr.mu.Lock()
	defer cr.mu.Unlock()
	var cur []variant
	if p := cr.variants.Load(); p != nil {
		cur = *p
	}
	if len(cur) < maxVariants {
		next := append(cur[:len(cur):len(cur)], variant{q.size, q.opt, wire})
		cr.variants.Store(&next)
	}
	return wire
}
