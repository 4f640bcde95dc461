package dns

import (
	"math/bits"

	"github.com/miekg/dns"
)

// Replies are reordered per query as CoreDNS's loadbalance plugin does with
// its round_robin policy (the `loadbalance` line of kubeadm's Corefile), so
// that the clients of a headless Service do not all pick the same first
// pod. plugin/loadbalance/loadbalance.go, for a reply with rcode NOERROR that
// is not a zone transfer, in each of the answer, authority and additional
// sections of more than one record: a section of only A or only AAAA
// records is shuffled whole; any other is partitioned into its CNAME
// records, then the rest (SRV, PTR, TXT, SOA, OPT...), both in their order,
// then its A and AAAA records shuffled together, then its MX records
// shuffled. The plugin sits before the cache and the server's scrub writer
// in the chain, so every reply is shuffled, cached or forwarded, before it
// is fitted to the client's buffer (truncation keeps a prefix of the
// shuffled records).
//
// The permutations are drawn from a per-reply seed so that the fast path,
// which moves records inside its cached wire form, and the slow path, which
// moves dns.RR values, give the same order for the same seed: the tests
// compare the two byte for byte.

// shuffler is a small PRNG (wyrand) seeded per reply.
type shuffler struct{ state uint64 }

func (s *shuffler) next() uint64 {
	s.state += 0xa0761d6478bd642f
	hi, lo := bits.Mul64(s.state, s.state^0xe7037ed1a0b428db)
	return hi ^ lo
}

// permute fills perm with a random permutation of 0..len(perm)-1 as
// roundRobinShuffle draws it: for each position j, swap with one of j..n-1.
// With fewer than two elements it draws nothing.
func (s *shuffler) permute(perm []int) {
	for i := range perm {
		perm[i] = i
	}
	if len(perm) < 2 {
		return
	}
	for j := range perm {
		// j + a number below n-j: the high word of next * (n-j), a
		// multiplication where a modulo would be a division.
		hi, _ := bits.Mul64(s.next(), uint64(len(perm)-j))
		p := j + int(hi)
		perm[j], perm[p] = perm[p], perm[j]
	}
}

// balance reorders m's sections as the loadbalance plugin does, drawing the
// shuffles from sh; with sh nil it only partitions them, which is the order
// the fast path caches and shuffles in place.
func balance(m *dns.Msg, sh *shuffler) {
	if m.Rcode != dns.RcodeSuccess || len(m.Question) == 0 ||
		m.Question[0].Qtype == dns.TypeAXFR || m.Question[0].Qtype == dns.TypeIXFR {
		return
	}
	m.Answer = balanceSection(m.Answer, sh)
	m.Ns = balanceSection(m.Ns, sh)
	m.Extra = balanceSection(m.Extra, sh)
}

// balanceSection is the plugin's roundRobin on one section. It returns a new
// slice when it reorders: the records may be shared with a cache.
func balanceSection(in []dns.RR, sh *shuffler) []dns.RR {
	if len(in) <= 1 {
		return in
	}
	var cname, rest, address, mx []dns.RR
	for _, rr := range in {
		switch rr.Header().Rrtype {
		case dns.TypeCNAME:
			cname = append(cname, rr)
		case dns.TypeA, dns.TypeAAAA:
			address = append(address, rr)
		case dns.TypeMX:
			mx = append(mx, rr)
		default:
			rest = append(rest, rr)
		}
	}
	// A section of only A or only AAAA records, shuffled whole in the
	// plugin, is the address group of this partition: the same order.
	out := make([]dns.RR, 0, len(in))
	out = append(append(out, cname...), rest...)
	out = append(out, shuffleRRs(address, sh)...)
	return append(out, shuffleRRs(mx, sh)...)
}

// shuffleRRs reorders rrs (in place) by a permutation drawn from sh.
func shuffleRRs(rrs []dns.RR, sh *shuffler) []dns.RR {
	if sh == nil || len(rrs) < 2 {
		return rrs
	}
	perm := make([]int, len(rrs))
	sh.permute(perm)
	out := make([]dns.RR, len(rrs))
	for i, p := range perm {
		out[i] = rrs[p]
	}
	return out
}

// balanceGroup tells which group of its section the plugin shuffles a
// record of type t in, numbered in the order it draws their shuffles: 0 for
// the addresses, 1 for the mail exchangers, -1 for none.
func balanceGroup(t uint16) int {
	switch t {
	case dns.TypeA, dns.TypeAAAA:
		return 0
	case dns.TypeMX:
		return 1
	}
	return -1
}
