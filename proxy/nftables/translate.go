// Package nftables programs Service traffic into the kernel's nftables,
// through netlink, in a layout whose update cost grows with what changed.
//
// Layout (one table "switchboard" per IP family, never anyone else's):
// there are no per-Service chains, and per-endpoint chains only for
// sessionAffinity (affinity.go). A Service port with k
// endpoints owns k elements of the map svc-k, keyed
// "address . protocol . port . slot" with slot in [0,k), and one rule per
// bucket size k does "dnat to address . protocol . port . numgen random mod
// k map @svc-k". Because every member of a bucket has exactly k slots, numgen
// spreads evenly, and changing one endpoint rewrites one element. NodePorts
// use the same scheme keyed by "protocol . port" (maps np-k) behind a check
// for the node's addresses. Service ports without usable endpoints sit in
// sets that filter chains reject from, so clients fail at once; those whose
// endpoints are all on other nodes under a Local traffic policy sit in sets
// the filter chains drop from, as kube-proxy does.
//
// This file is the pure half: Service ports in, set elements out.
package nftables

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/switchboard/switchboard/proxy/snapshot"
)

// Set names. Bucket maps are named with their slot count appended.
const (
	setServicePrefix  = "svc-"
	setNodePortPrefix = "np-"
	// setNoEndpoints holds address . protocol . port front-ends with no
	// usable endpoint; setNoEndpointsNodePort the same for NodePorts.
	setNoEndpoints         = "no-endpoints"
	setNoEndpointsNodePort = "no-endpoints-nodeport"
	// setNoLocalEndpoints holds front-ends under a Local traffic policy
	// (internal for ClusterIPs, external for the rest) whose Service has
	// usable endpoints, but none on this node; setNoLocalEndpointsNodePort
	// the same for NodePorts. Their traffic is dropped, not rejected, as
	// kube-proxy does: the client (often a load balancer health-checking
	// nodes) should not take "refused" to mean the Service has no
	// endpoints at all.
	setNoLocalEndpoints         = "no-local-endpoints"
	setNoLocalEndpointsNodePort = "no-local-endpoints-nodeport"
	// setMasqExternal holds externalIP/LB front-ends under Cluster policy,
	// setMasqNodePort NodePorts under Cluster policy: their traffic is
	// masqueraded so replies come back through this node.
	setMasqExternal = "masq-external"
	setMasqNodePort = "masq-nodeport"
	// setMasqCluster holds ClusterIP front-ends; traffic to them from
	// outside the cluster CIDR is masqueraded.
	setMasqCluster = "masq-cluster"
	// setHairpin holds "endpoint . endpoint": a pod reaching itself
	// through its Service must be masqueraded or it would answer itself
	// directly.
	setHairpin = "hairpin"
	// setNodeIPs holds the node's addresses NodePorts answer on.
	setNodeIPs = "node-ips"
	// setAffinityPrefix+seconds holds the sessionAffinity ClientIP
	// front-ends with that timeout, for inspection. Their endpoints are
	// not in svc-k but in the verdict maps affsvc-k ("front-end .
	// slot : goto" the endpoint's chain, which records the client in the
	// endpoint's own dynamic set and DNATs, as kube-proxy's endpoint
	// chains do) and affchk-k (in the kernel, one map per slot S,
	// affchk-k-S, "front-end : jump" a chain sending a client already in
	// that set back to the endpoint).
	setAffinityServicePrefix = "affsvc-"
	setAffinityCheckPrefix   = "affchk-"
	// setAffinityNodePortPrefix and setAffinityNodePortCheckPrefix are
	// the same for NodePorts, keyed "protocol . port" like np-k: affinity
	// applies to a Service's NodePort as to its ClusterIP (kube-proxy
	// sends both through the Service's chain, which checks and records
	// the client).
	setAffinityNodePortPrefix      = "affnp-"
	setAffinityNodePortCheckPrefix = "affnpchk-"
	// The same for the short-circuit paths of externalTrafficPolicy
	// Local (scx-k, scnp-k): kube-proxy short-circuits to the Service's
	// chain, which keeps affinity.
	setAffinityShortCircuitPrefix              = "affscx-"
	setAffinityShortCircuitCheckPrefix         = "affscxchk-"
	setAffinityShortCircuitNodePortPrefix      = "affscnp-"
	setAffinityShortCircuitNodePortCheckPrefix = "affscnpchk-"
	// setLBRestricted holds load balancer front-ends with
	// loadBalancerSourceRanges; setLBAllowed "front-end . source range"
	// (an interval set). Restricted traffic from elsewhere is dropped.
	setLBRestricted   = "lb-restricted"
	setLBAllowed      = "lb-allowed"
	setAffinityPrefix = "affinity-"
	// setClusterIPs holds every programmed ClusterIP: a new connection to
	// one on a port its Service does not have is rejected, and one to
	// another address of the Service CIDRs dropped (kube-proxy's
	// cluster-ips-check chain).
	setClusterIPs = "cluster-ips"
	// setShortCircuit holds externalIP and LB front-ends under
	// externalTrafficPolicy Local with usable endpoints somewhere;
	// setShortCircuitNodePort the same for NodePorts. Traffic to them
	// from this node's pods (the cluster CIDRs) or from the node itself
	// is not external: it goes to the Cluster-policy endpoints in the
	// bucket maps scx-k (keyed like svc-k) and scnp-k (like np-k), as
	// kube-proxy's "short-circuit" rules send it.
	setShortCircuit               = "short-circuit"
	setShortCircuitNodePort       = "short-circuit-nodeport"
	setShortCircuitPrefix         = "scx-"
	setShortCircuitNodePortPrefix = "scnp-"
)

// Elem is one desired set or map element in one family's table. Which
// fields are meaningful depends on Set; String renders it nft-style.
type Elem struct {
	Set   string
	Addr  netip.Addr // first address of the key, if the set has one
	Proto v1.Protocol
	Port  uint16
	Slot  int // numgen slot for bucket maps, else -1
	// Addr2 is the second address of the key (hairpin). Affinity
	// elements, whose keys have none, carry the Service port's ClusterIP
	// of the family here instead and its name in PortName: with the
	// protocol they name the Service port that owns the endpoint's
	// affinity objects, which all the port's front-ends share, and no
	// other port does (endpointID).
	Addr2 netip.Addr
	// PortName is the Service port's name ("" for an unnamed single
	// port) on affinity elements, unset on the others. The name, not the
	// number, as kube-proxy names its endpoint chains and their client
	// lists after the ServicePortName: renumbering a port keeps its
	// clients.
	PortName string
	// Range is the source prefix of lb-allowed elements.
	Range netip.Prefix
	To    netip.AddrPort
	// Timeout is the affinity timeout, in seconds, of affsvc-k and
	// affchk-k elements: it is part of the endpoint's objects.
	Timeout uint32
}

// IsMap reports whether the element carries a value.
func (e Elem) IsMap() bool { return e.To.IsValid() }

// String renders the element like nft lists it; it is also its identity.
func (e Elem) String() string {
	var parts []string
	if e.Addr.IsValid() {
		parts = append(parts, e.Addr.String())
	}
	if e.Proto != "" {
		parts = append(parts, strings.ToLower(string(e.Proto)), fmt.Sprint(e.Port))
	}
	if e.Slot >= 0 {
		parts = append(parts, fmt.Sprint(e.Slot))
	}
	affinity := isAffinityBalance(e.Set) || isAffinityCheck(e.Set)
	if e.Addr2.IsValid() && !affinity {
		parts = append(parts, e.Addr2.String())
	}
	if e.Range.IsValid() {
		parts = append(parts, e.Range.String())
	}
	s := e.Set + " " + strings.Join(parts, " . ")
	if e.IsMap() {
		s += " : " + e.To.Addr().String() + " . " + fmt.Sprint(e.To.Port())
	}
	if e.Timeout > 0 {
		s += " timeout " + fmt.Sprint(e.Timeout) + "s"
	}
	if e.Addr2.IsValid() && affinity {
		s += " of " + e.Addr2.String()
		if e.PortName != "" {
			// A DNS label: nothing to quote.
			s += " port " + e.PortName
		}
	}
	return s
}

// Options are the node-wide inputs to translation.
type Options struct {
	// ClusterCIDRs, when set, make traffic to ClusterIPs from outside them
	// masqueraded (kube-proxy's --cluster-cidr with detect-local-mode
	// ClusterCIDR), and traffic from inside them to externalTrafficPolicy
	// Local front-ends short-circuited to all endpoints.
	ClusterCIDRs []netip.Prefix
	// NodeIPs are the node's addresses: a loadBalancerSourceRanges entry
	// holding one also admits the load balancer's own address as a
	// source (a node reaching a VIP it holds locally comes from the VIP),
	// as kube-proxy does.
	NodeIPs []netip.Addr
}

// Translate returns the elements one Service port needs in the table of
// family is4. It is pure: the same port always yields the same elements.
func Translate(sp *snapshot.ServicePort, is4 bool, opts Options) []Elem {
	var out []Elem
	fam := func(eps []snapshot.Endpoint) []snapshot.Endpoint {
		var r []snapshot.Endpoint
		for _, e := range eps {
			if e.Addr.Is4() == is4 {
				r = append(r, e)
			}
		}
		return r
	}
	clusterEPs := fam(sp.ClusterEndpoints())
	externalEPs := fam(sp.ExternalEndpoints())
	// Upstream decides per family too: endpoints of the other family do
	// not make this one's front-ends "without local endpoints".
	noEndpoints, noEndpointsNodePort := setNoEndpoints, setNoEndpointsNodePort
	if len(fam(sp.UsableEndpoints())) > 0 {
		noEndpoints, noEndpointsNodePort = setNoLocalEndpoints, setNoLocalEndpointsNodePort
	}
	// The ClusterIP of this family and the port's name own the port's
	// affinity endpoints: a client recorded through one front-end is
	// sent to the same endpoint through the others, and another port of
	// the Service balances it on its own, as kube-proxy's per-endpoint
	// recent lists and sets of each Service port do.
	var owner netip.Addr
	for _, cip := range sp.ClusterIPs {
		if cip.Is4() == is4 {
			owner = cip
			break
		}
	}
	secs := uint32(sp.AffinityTimeout.Seconds())
	// affinity adds the balance and check elements of the front-end addr
	// (none for a NodePort) . protocol . port over eps.
	affinity := func(balancePrefix, checkPrefix string, addr netip.Addr, port int32, eps []snapshot.Endpoint) {
		balance, check := bucket(balancePrefix, len(eps)), bucket(checkPrefix, len(eps))
		for i, e := range eps {
			out = append(out,
				Elem{Set: balance, Addr: addr, Proto: sp.Protocol, Port: uint16(port), Slot: i, To: e.AddrPort(), Timeout: secs, Addr2: owner, PortName: sp.Key.Port},
				Elem{Set: check, Addr: addr, Proto: sp.Protocol, Port: uint16(port), Slot: i, To: e.AddrPort(), Timeout: secs, Addr2: owner, PortName: sp.Key.Port})
		}
	}
	front := func(addr netip.Addr, eps []snapshot.Endpoint) {
		if len(eps) == 0 {
			out = append(out, Elem{Set: noEndpoints, Addr: addr, Proto: sp.Protocol, Port: uint16(sp.Port), Slot: -1})
			return
		}
		if sp.AffinityTimeout > 0 {
			out = append(out, Elem{Set: setAffinityPrefix + strconv.Itoa(int(secs)), Addr: addr, Proto: sp.Protocol, Port: uint16(sp.Port), Slot: -1})
			affinity(setAffinityServicePrefix, setAffinityCheckPrefix, addr, sp.Port, eps)
			return
		}
		name := bucket(setServicePrefix, len(eps))
		for i, e := range eps {
			out = append(out, Elem{Set: name, Addr: addr, Proto: sp.Protocol, Port: uint16(sp.Port), Slot: i, To: e.AddrPort()})
		}
	}
	used := map[netip.Addr]bool{}
	hasFamily := false
	for _, cip := range sp.ClusterIPs {
		if cip.Is4() != is4 {
			continue
		}
		hasFamily = true
		out = append(out, Elem{Set: setClusterIPs, Addr: cip, Slot: -1})
		front(cip, clusterEPs)
		if len(opts.ClusterCIDRs) > 0 && len(clusterEPs) > 0 {
			out = append(out, Elem{Set: setMasqCluster, Addr: cip, Proto: sp.Protocol, Port: uint16(sp.Port), Slot: -1})
		}
		for _, e := range clusterEPs {
			used[e.Addr] = true
		}
	}
	if !hasFamily {
		return nil
	}
	// Under externalTrafficPolicy Local, traffic from this node's pods and
	// from the node itself skips the policy for the Cluster-policy
	// endpoints (kube-proxy's short-circuit), so it works on nodes
	// without a local endpoint too.
	var shortCircuit []snapshot.Endpoint
	if sp.ExternalLocal {
		shortCircuit = fam(sp.ClusterPolicyEndpoints())
		for _, e := range shortCircuit {
			used[e.Addr] = true
		}
	}
	ranges := sp.SourceRanges(is4)
	allowFromNode := slices.ContainsFunc(ranges, func(r netip.Prefix) bool { return slices.ContainsFunc(opts.NodeIPs, r.Contains) })
	for li, list := range [][]netip.Addr{sp.ExternalIPs, sp.LoadBalancerIPs} {
		for _, ip := range list {
			if ip.Is4() != is4 {
				continue
			}
			if li == 1 && len(ranges) > 0 {
				out = append(out, Elem{Set: setLBRestricted, Addr: ip, Proto: sp.Protocol, Port: uint16(sp.Port), Slot: -1})
				for _, r := range ranges {
					out = append(out, Elem{Set: setLBAllowed, Addr: ip, Proto: sp.Protocol, Port: uint16(sp.Port), Slot: -1, Range: r})
				}
				if allowFromNode {
					out = append(out, Elem{Set: setLBAllowed, Addr: ip, Proto: sp.Protocol, Port: uint16(sp.Port), Slot: -1,
						Range: netip.PrefixFrom(ip, ip.BitLen())})
				}
			}
			front(ip, externalEPs)
			if !sp.ExternalLocal && len(externalEPs) > 0 {
				out = append(out, Elem{Set: setMasqExternal, Addr: ip, Proto: sp.Protocol, Port: uint16(sp.Port), Slot: -1})
			}
			if len(shortCircuit) > 0 {
				out = append(out, Elem{Set: setShortCircuit, Addr: ip, Proto: sp.Protocol, Port: uint16(sp.Port), Slot: -1})
				if sp.AffinityTimeout > 0 {
					affinity(setAffinityShortCircuitPrefix, setAffinityShortCircuitCheckPrefix, ip, sp.Port, shortCircuit)
				} else {
					name := bucket(setShortCircuitPrefix, len(shortCircuit))
					for i, e := range shortCircuit {
						out = append(out, Elem{Set: name, Addr: ip, Proto: sp.Protocol, Port: uint16(sp.Port), Slot: i, To: e.AddrPort()})
					}
				}
			}
		}
	}
	if sp.NodePort != 0 {
		if len(externalEPs) == 0 {
			out = append(out, Elem{Set: noEndpointsNodePort, Proto: sp.Protocol, Port: uint16(sp.NodePort), Slot: -1})
		}
		if sp.AffinityTimeout > 0 {
			affinity(setAffinityNodePortPrefix, setAffinityNodePortCheckPrefix, netip.Addr{}, sp.NodePort, externalEPs)
		} else {
			for i, e := range externalEPs {
				out = append(out, Elem{Set: bucket(setNodePortPrefix, len(externalEPs)), Proto: sp.Protocol, Port: uint16(sp.NodePort), Slot: i, To: e.AddrPort()})
			}
		}
		if !sp.ExternalLocal && len(externalEPs) > 0 {
			out = append(out, Elem{Set: setMasqNodePort, Proto: sp.Protocol, Port: uint16(sp.NodePort), Slot: -1})
		}
		if len(shortCircuit) > 0 {
			out = append(out, Elem{Set: setShortCircuitNodePort, Proto: sp.Protocol, Port: uint16(sp.NodePort), Slot: -1})
			if sp.AffinityTimeout > 0 {
				affinity(setAffinityShortCircuitNodePortPrefix, setAffinityShortCircuitNodePortCheckPrefix, netip.Addr{}, sp.NodePort, shortCircuit)
			} else {
				for i, e := range shortCircuit {
					out = append(out, Elem{Set: bucket(setShortCircuitNodePortPrefix, len(shortCircuit)), Proto: sp.Protocol, Port: uint16(sp.NodePort), Slot: i, To: e.AddrPort()})
				}
			}
		}
	}
	if sp.HasExternal() {
		for _, e := range externalEPs {
			used[e.Addr] = true
		}
	}
	// Hairpin: a packet from an endpoint's own address DNATed back to it
	// here must be masqueraded, or the endpoint answers itself. That
	// happens for an endpoint on this node (its pod's or host-network
	// process's traffic) and for a pod elsewhere that the pods' (cluster
	// CIDR) short-circuit of an externalTrafficPolicy Local external front-end
	// (NodePort, external or load balancer IP of this node) sends back to
	// itself. A pod elsewhere reaches a ClusterIP through its own node's
	// rules. (kube-proxy marks every endpoint; the one case this leaves
	// out is a client outside the pod network that is itself an endpoint
	// and routes ClusterIP traffic through this node, with no cluster CIDR
	// to masquerade it.)
	var viaShortCircuit map[netip.Addr]bool // nil (no allocation) for most Services
	if sp.HasExternal() && len(shortCircuit) > 0 && slices.ContainsFunc(opts.ClusterCIDRs, func(p netip.Prefix) bool { return p.Addr().Is4() == is4 }) {
		viaShortCircuit = make(map[netip.Addr]bool, len(shortCircuit))
		for _, e := range shortCircuit {
			viaShortCircuit[e.Addr] = true
		}
	}
	for _, e := range append(append(clusterEPs, externalEPs...), shortCircuit...) {
		if used[e.Addr] && (e.Local || viaShortCircuit[e.Addr]) {
			out = append(out, Elem{Set: setHairpin, Addr: e.Addr, Addr2: e.Addr, Slot: -1})
			delete(used, e.Addr)
		}
	}
	return out
}

// bucketNames caches bucket map names: building them per element would
// dominate a full sync.
var bucketNames = map[string][]string{setServicePrefix: nil, setNodePortPrefix: nil, setShortCircuitPrefix: nil, setShortCircuitNodePortPrefix: nil,
	setAffinityServicePrefix: nil, setAffinityCheckPrefix: nil, setAffinityNodePortPrefix: nil, setAffinityNodePortCheckPrefix: nil,
	setAffinityShortCircuitPrefix: nil, setAffinityShortCircuitCheckPrefix: nil,
	setAffinityShortCircuitNodePortPrefix: nil, setAffinityShortCircuitNodePortCheckPrefix: nil}

func bucket(prefix string, n int) string {
	if n < 64 {
		if names := bucketNames[prefix]; names != nil {
			return names[n]
		}
	}
	return prefix + strconv.Itoa(n)
}

func init() {
	for p := range bucketNames {
		names := make([]string, 64)
		for i := range names {
			names[i] = p + strconv.Itoa(i)
		}
		bucketNames[p] = names
	}
}

// TranslateService returns the elements of all ports of one Service in
// both families, the unit the kernel applier diffs.
func TranslateService(ports []*snapshot.ServicePort, opts Options) (v4, v6 []Elem) {
	for _, sp := range ports {
		v4 = append(v4, Translate(sp, true, opts)...)
		v6 = append(v6, Translate(sp, false, opts)...)
	}
	return v4, v6
}

// StableSlots returns now with the slots of its bucket elements renumbered
// so that an endpoint old already had for the same front-end in the same
// bucket keeps its slot, and new endpoints take the slots gone ones left.
// Translate numbers slots by position in the address-sorted endpoint
// list, where replacing one pod by another shifts every slot after the
// first of the two addresses; with StableSlots, replacing one endpoint
// rewrites one element wherever its address sorts, and only a change in
// the number of endpoints (another bucket) rewrites a front-end's
// elements. old is what was applied for the same Service and family.
func StableSlots(old, now []Elem) []Elem {
	type group struct {
		set   string
		addr  netip.Addr
		proto v1.Protocol
		port  uint16
		// An endpoint's affsvc and affchk elements take
		// the same slot: both groups have the same members, in the same
		// order, and the same previous slots.
	}
	var prev map[group]map[netip.AddrPort]int
	for _, e := range old {
		if e.Slot < 0 || !e.IsMap() {
			continue
		}
		g := group{e.Set, e.Addr, e.Proto, e.Port}
		if prev == nil {
			prev = map[group]map[netip.AddrPort]int{}
		}
		if prev[g] == nil {
			prev[g] = map[netip.AddrPort]int{}
		}
		prev[g][e.To] = e.Slot
	}
	if prev == nil {
		return now
	}
	members := map[group][]int{}
	for i, e := range now {
		if e.Slot < 0 || !e.IsMap() {
			continue
		}
		if g := (group{e.Set, e.Addr, e.Proto, e.Port}); prev[g] != nil {
			members[g] = append(members[g], i)
		}
	}
	if len(members) == 0 {
		return now
	}
	out := slices.Clone(now)
	for g, idx := range members {
		// The bucket's name carries its size, so the group had as many
		// slots before as it has members now.
		taken := make([]bool, len(idx))
		var fresh []int
		for _, i := range idx {
			if s, ok := prev[g][out[i].To]; ok && s < len(taken) && !taken[s] {
				out[i].Slot, taken[s] = s, true
			} else {
				fresh = append(fresh, i)
			}
		}
		free := 0
		for _, i := range fresh {
			for taken[free] {
				free++
			}
			out[i].Slot, taken[free] = free, true
		}
	}
	return out
}
