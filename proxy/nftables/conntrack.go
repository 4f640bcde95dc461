package nftables

// Conntrack: the UDP flows a change leaves pointing at the wrong place,
// found from the elements that changed and cleared after the transaction.

import (
	"log/slog"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// goneUDPEndpoints lists UDP endpoint addresses a Service stopped using:
// their conntrack entries would keep steering a UDP "connection" to a dead
// pod, as UDP has no end to wait for.
func goneUDPEndpoints(old, now []Elem) []netip.Addr {
	still := map[netip.Addr]bool{}
	for _, e := range now {
		if e.IsMap() && e.Proto == v1.ProtocolUDP {
			still[e.To.Addr()] = true
		}
	}
	var gone []netip.Addr
	for _, e := range old {
		if e.IsMap() && e.Proto == v1.ProtocolUDP && !still[e.To.Addr()] && !slices.Contains(gone, e.To.Addr()) {
			gone = append(gone, e.To.Addr())
		}
	}
	return gone
}

// newlyActiveUDP lists the UDP front-ends (address and port; NodePorts on
// each node address of the family) that have endpoints now and had none
// before. A client may have sent to one while this proxy did not yet know
// the Service: that datagram was routed on untranslated and left a
// conntrack entry, which every later datagram of the flow keeps alive and
// follows, past the DNAT rules, for as long as the client keeps sending.
// kube-proxy clears these too.
func (k *Tables) newlyActiveUDP(is4 bool, old, now []Elem) []netip.AddrPort {
	type front struct {
		addr     netip.Addr
		port     uint16
		nodePort bool
	}
	fronts := func(elems []Elem) map[front]bool {
		m := map[front]bool{}
		for _, e := range elems {
			if e.IsMap() && e.Proto == v1.ProtocolUDP {
				m[front{e.Addr, e.Port, !e.Addr.IsValid()}] = true
			}
		}
		return m
	}
	before := fronts(old)
	var out []netip.AddrPort
	for f := range fronts(now) {
		if before[f] {
			continue
		}
		if !f.nodePort {
			out = append(out, netip.AddrPortFrom(f.addr, f.port))
			continue
		}
		for _, ip := range k.cfg.NodeIPs {
			if ip.Is4() == is4 {
				out = append(out, netip.AddrPortFrom(ip, f.port))
			}
		}
	}
	return out
}

// ClearUDPFlows deletes, per family (index 0 IPv4, 1 IPv6), the UDP
// conntrack entries of endpoints no longer used (gone: their flows would
// keep going to a dead pod, as UDP has no end to wait for) and the entries
// to front-ends that just got endpoints but were never translated (active:
// their reply comes from the front-end address itself, so the flows' next
// datagrams pass the DNAT rules; translated entries are left alone), as
// kube-proxy does. All filters of a family go in one call: each call dumps
// the whole conntrack table. The nftables and iptables modes share it.
func ClearUDPFlows(ct Conntrack, log *slog.Logger, gone [2][]netip.Addr, active [2][]netip.AddrPort) {
	for i := range 2 {
		fam := netlink.InetFamily(unix.AF_INET)
		if i == 1 {
			fam = unix.AF_INET6
		}
		var filters []netlink.CustomConntrackFilter
		for _, a := range gone[i] {
			f := &netlink.ConntrackFilter{}
			if f.AddIP(netlink.ConntrackReplySrcIP, a.AsSlice()) != nil || f.AddProtocol(unix.IPPROTO_UDP) != nil {
				continue
			}
			filters = append(filters, f)
		}
		for _, ap := range active[i] {
			f := &netlink.ConntrackFilter{}
			ip := ap.Addr().AsSlice()
			if f.AddProtocol(unix.IPPROTO_UDP) != nil || f.AddIP(netlink.ConntrackOrigDstIP, ip) != nil ||
				f.AddIP(netlink.ConntrackReplySrcIP, ip) != nil || f.AddPort(netlink.ConntrackOrigDstPort, ap.Port()) != nil {
				continue
			}
			filters = append(filters, f)
		}
		if len(filters) == 0 {
			continue
		}
		if n, err := ct.ConntrackDeleteFilters(netlink.ConntrackTable, fam, filters...); err != nil {
			log.Warn("clear UDP conntrack entries", "gone", gone[i], "untranslated", active[i], "err", err)
		} else if n > 0 {
			log.Debug("cleared UDP conntrack entries", "entries", n)
		}
	}
}
