// Package conntrack clears the UDP conntrack entries a sync leaves
// pointing at the wrong place, with kube-proxy's rule (CleanStaleEntries
// in k8s.io/kubernetes/pkg/proxy/conntrack, v1.36), for every proxy mode.
//
// UDP has no end a connection could wait for: as long as a client keeps
// sending, its conntrack entry lives and every datagram follows it, past
// the DNAT rules (or IPVS). An entry made before the Service had endpoints
// (untranslated, to the front-end itself) or to an endpoint since gone
// would steer the flow wrong forever. So after a sync, for each UDP
// Service port with at least one serving endpoint, every UDP entry to one
// of its front-ends whose reply does not come from one of its serving
// endpoints is deleted. Flows to a serving endpoint are kept whatever the
// traffic policy, topology or termination says ("changes to the service
// should not affect existing flows"), as TCP connections are.
package conntrack

import (
	"fmt"
	"iter"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/switchboard/switchboard/proxy/snapshot"
)

// Conntrack is the part of a conntrack netlink handle the clean-up uses;
// *netlink.Handle implements it. One call dumps the family's whole table
// once and deletes the entries any filter matches.
type Conntrack interface {
	ConntrackDeleteFilters(table netlink.ConntrackTableType, family netlink.InetFamily, filters ...netlink.CustomConntrackFilter) (uint, error)
}

// Stale is kube-proxy's rule for one IP family, built from Service ports:
// the front-ends of UDP Service ports with serving endpoints, each with
// the endpoints replies may come from. It is a netlink
// CustomConntrackFilter matching the entries to delete.
type Stale struct {
	// fronts maps a ClusterIP, load-balancer VIP or external IP with the
	// Service port to the serving endpoints (address and target port).
	fronts map[netip.AddrPort]map[netip.AddrPort]bool
	// nodePorts maps a NodePort (on any address) to the serving endpoints.
	nodePorts map[uint16]map[netip.AddrPort]bool
}

// NewStale builds the rule for the family is4 from ports, as kube-proxy's
// proxier of that family sees them: a port counts only if its Service has
// a ClusterIP of the family, and only its endpoints, external IPs and
// load-balancer VIPs of the family count. (LoadBalancerIPs are already
// kube-proxy's LoadBalancerVIPs: snapshot.BuildService leaves out ipMode
// Proxy ingress addresses, as kube-proxy does.) Ports that are not UDP or
// have no serving endpoint of the family are left out: their flows stay.
//
// Two Service ports claiming the same front-end (a conflicting external
// IP) share it: replies from either's endpoints keep a flow, where
// kube-proxy would pick one of them arbitrarily.
func NewStale(is4 bool, ports iter.Seq[*snapshot.ServicePort]) *Stale {
	s := &Stale{fronts: map[netip.AddrPort]map[netip.AddrPort]bool{}, nodePorts: map[uint16]map[netip.AddrPort]bool{}}
	of := func(a netip.Addr) bool { return a.Is4() == is4 }
	for sp := range ports {
		if sp.Protocol != v1.ProtocolUDP {
			continue
		}
		var cip netip.Addr
		for _, a := range sp.ClusterIPs {
			if of(a) {
				cip = a
				break
			}
		}
		if !cip.IsValid() {
			continue
		}
		serving := map[netip.AddrPort]bool{}
		for _, e := range sp.Endpoints {
			if e.Serving && of(e.Addr) {
				serving[netip.AddrPortFrom(e.Addr, uint16(e.Port))] = true
			}
		}
		if len(serving) == 0 {
			continue
		}
		add := func(m map[netip.AddrPort]bool) map[netip.AddrPort]bool {
			if m == nil {
				return serving
			}
			merged := make(map[netip.AddrPort]bool, len(m)+len(serving))
			for e := range m {
				merged[e] = true
			}
			for e := range serving {
				merged[e] = true
			}
			return merged
		}
		port := uint16(sp.Port)
		front := func(a netip.Addr) {
			if of(a) {
				f := netip.AddrPortFrom(a, port)
				s.fronts[f] = add(s.fronts[f])
			}
		}
		front(cip)
		for _, a := range sp.LoadBalancerIPs {
			front(a)
		}
		for _, a := range sp.ExternalIPs {
			front(a)
		}
		if sp.NodePort != 0 {
			np := uint16(sp.NodePort)
			s.nodePorts[np] = add(s.nodePorts[np])
		}
	}
	return s
}

// Empty reports whether no entry can match, so the table need not be
// dumped.
func (s *Stale) Empty() bool { return len(s.fronts) == 0 && len(s.nodePorts) == 0 }

// MatchConntrackFlow reports whether flow is stale, in kube-proxy's order:
// a UDP entry whose original destination is a front-end and whose reply
// source is not one of that front-end's serving endpoints; else one whose
// original destination port is a NodePort (whatever the address) and
// whose reply source is not one of that NodePort's serving endpoints.
func (s *Stale) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	if flow.Forward.Protocol != unix.IPPROTO_UDP {
		return false
	}
	// An address the dump lacks is the zero Addr: no front-end has it and
	// no endpoint replies from it, as kube-proxy's "<nil>" strings.
	dst := addrPort(flow.Forward.DstIP, flow.Forward.DstPort)
	reply := addrPort(flow.Reverse.SrcIP, flow.Reverse.SrcPort)
	if eps, ok := s.fronts[dst]; ok && !eps[reply] {
		return true
	}
	if eps, ok := s.nodePorts[dst.Port()]; ok && !eps[reply] {
		return true
	}
	return false
}

func addrPort(ip net.IP, port uint16) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), port)
}

// Clean deletes, in each IP family, the UDP entries NewStale's rule finds
// stale for ports (which it may iterate twice: once per family). kube-
// proxy's proxiers do this over all Service ports after a sync; a partial
// sync may pass only the Service ports it changed, the others having been
// reconciled when they last changed. A family whose rule is empty is not
// dumped at all, so a sync touching no UDP Service with serving endpoints
// costs nothing. Failures are logged, not returned, as kube-proxy does:
// the rules are applied and the next sync reconciles again.
func Clean(ct Conntrack, log *slog.Logger, ports iter.Seq[*snapshot.ServicePort]) {
	if ct == nil {
		return
	}
	for _, is4 := range []bool{true, false} {
		s := NewStale(is4, ports)
		if s.Empty() {
			continue
		}
		fam, name := netlink.InetFamily(unix.AF_INET), "IPv4"
		if !is4 {
			fam, name = unix.AF_INET6, "IPv6"
		}
		start := time.Now()
		n, err := ct.ConntrackDeleteFilters(netlink.ConntrackTable, fam, s)
		if err != nil {
			log.Warn("clear stale UDP conntrack entries", "ipFamily", name, "deleted", n,
				"err", fmt.Errorf("reconcile %s conntrack entries: %w", name, err))
			continue
		}
		log.Debug("cleared stale UDP conntrack entries", "ipFamily", name, "deleted", n, "took", time.Since(start))
	}
}

// AllPorts iterates over every Service port of snap, for a full sync.
func AllPorts(snap *snapshot.Snapshot) iter.Seq[*snapshot.ServicePort] {
	return func(yield func(*snapshot.ServicePort) bool) {
		for _, ports := range snap.All() {
			for _, sp := range ports {
				if !yield(sp) {
					return
				}
			}
		}
	}
}

// PortsOf iterates over the Service ports of keys in snap, for a partial
// sync; Services gone from snap have none (their flows stay, as kube-
// proxy leaves those of a Service without endpoints).
func PortsOf(snap *snapshot.Snapshot, keys []snapshot.ServiceKey) iter.Seq[*snapshot.ServicePort] {
	return func(yield func(*snapshot.ServicePort) bool) {
		for _, k := range keys {
			for _, sp := range snap.Get(k) {
				if !yield(sp) {
					return
				}
			}
		}
	}
}
