// Package ipvs programs Service traffic with IPVS, in the layout of
// kube-proxy v1.36's ipvs proxier:
//
//   - every ClusterIP, externalIP and load balancer IP is an address of a
//     dummy interface (kube-proxy's kube-ipvs0; ours is swb-ipvs0), so the
//     node accepts traffic to it and IPVS sees it in LOCAL_IN;
//   - one IPVS virtual server per front-end address, protocol and port
//     (NodePorts: one per node address), with the --ipvs-scheduler (rr by
//     default) and, for sessionAffinity ClientIP, persistence with the
//     affinity timeout;
//   - one real server per endpoint the traffic policy picks (weight 1,
//     masquerading forwarding), terminating endpoints as fallback;
//   - the packet-filter rules IPVS still needs, which kube-proxy keeps in
//     iptables and ipsets and this package in one nftables table with sets
//     (inet switchboard-ipvs): masquerade for traffic to a ClusterIP from
//     outside the cluster CIDR, to externalIPs, load balancers and
//     NodePorts of externalTrafficPolicy Cluster, and for hairpin traffic
//     (an endpoint reaching itself through its Service); a drop for load
//     balancer traffic the source ranges do not admit; a reject for a
//     Service address's ports no virtual server serves (kube-proxy's
//     KUBE-IPVS-FILTER); and a record of the NodePort virtual servers
//     created on node addresses, so cleanup removes only those;
//   - a removed real server holding connections drains at weight 0 first
//     (kube-proxy's graceful termination, graceful.go).
//
// This file is the pure half: Service ports in, virtual servers, addresses
// and filter set elements out.
package ipvs

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/switchboard/switchboard/proxy/snapshot"
)

// DefaultScheduler is kube-proxy's default --ipvs-scheduler.
const DefaultScheduler = "rr"

// Options are the node-wide inputs to translation.
type Options struct {
	// Scheduler is the IPVS scheduler of every virtual server ("" is rr).
	Scheduler string
	// NodeIPs are the addresses NodePorts answer on.
	NodeIPs []netip.Addr
	// ClusterCIDRs, when set, make traffic to ClusterIPs from outside them
	// masqueraded (kube-proxy's detect-local ClusterCIDR; the first of
	// each family is used).
	ClusterCIDRs []netip.Prefix
}

// ServerKey names a virtual server: address, protocol ("TCP", "UDP",
// "SCTP") and port.
type ServerKey struct {
	Addr     netip.Addr
	Protocol string
	Port     uint16
}

func (k ServerKey) String() string {
	return strings.ToLower(k.Protocol) + " " + netip.AddrPortFrom(k.Addr, k.Port).String()
}

// RealServer is one endpoint of a virtual server.
type RealServer struct {
	Addr   netip.AddrPort
	Weight int
}

// VirtualServer is one IPVS virtual service and its real servers.
type VirtualServer struct {
	ServerKey
	Scheduler string
	// Timeout, in seconds, makes the service persistent (sessionAffinity
	// ClientIP): a client keeps its real server while it has connections
	// or for Timeout after the last.
	Timeout uint32
	// Reals are sorted by address.
	Reals []RealServer
}

// Hairpin is an endpoint that reaching itself through a virtual server
// must be masqueraded (kube-proxy's KUBE-LOOP-BACK ipset entry).
type Hairpin struct {
	Endpoint netip.AddrPort
	Protocol string
}

// Allow admits a source range to a load balancer front-end.
type Allow struct {
	ServerKey
	Source netip.Prefix
}

// Service is what one Service needs: its virtual servers, the addresses
// the dummy interface holds for it, and its elements of the filter sets.
type Service struct {
	Servers []VirtualServer
	// VIPs are bound to the dummy interface.
	VIPs []netip.Addr
	// MasqCluster are ClusterIP front-ends masqueraded when the source is
	// outside the cluster CIDR (all of them when no CIDR is known).
	MasqCluster []ServerKey
	// MasqExternal are externalIP and load balancer front-ends of
	// externalTrafficPolicy Cluster: always masqueraded.
	MasqExternal []ServerKey
	// MasqNodePorts are the NodePorts of externalTrafficPolicy Cluster
	// (address left invalid: any of the node's).
	MasqNodePorts []ServerKey
	Hairpins      []Hairpin
	// Firewalled are load balancer front-ends with source ranges; Allowed
	// lists what they admit (everything else is dropped).
	Firewalled []ServerKey
	Allowed    []Allow
}

// Translate returns what the Service with ports needs. It is pure.
func Translate(ports []*snapshot.ServicePort, opts Options) Service {
	var s Service
	sched := opts.Scheduler
	if sched == "" {
		sched = DefaultScheduler
	}
	for _, sp := range ports {
		proto := string(sp.Protocol)
		server := func(addr netip.Addr, port int32, eps []snapshot.Endpoint) {
			vs := VirtualServer{ServerKey: ServerKey{Addr: addr, Protocol: proto, Port: uint16(port)}, Scheduler: sched}
			if sp.AffinityTimeout > 0 {
				vs.Timeout = uint32(sp.AffinityTimeout.Seconds())
			}
			for _, e := range eps {
				if e.Addr.Is4() == addr.Is4() && !slices.ContainsFunc(vs.Reals, func(r RealServer) bool { return r.Addr == e.AddrPort() }) {
					vs.Reals = append(vs.Reals, RealServer{Addr: e.AddrPort(), Weight: 1})
				}
			}
			slices.SortFunc(vs.Reals, func(a, b RealServer) int { return a.Addr.Compare(b.Addr) })
			s.Servers = append(s.Servers, vs)
			for _, r := range vs.Reals {
				h := Hairpin{Endpoint: r.Addr, Protocol: proto}
				if !slices.Contains(s.Hairpins, h) {
					s.Hairpins = append(s.Hairpins, h)
				}
			}
		}
		vip := func(a netip.Addr) {
			if !slices.Contains(s.VIPs, a) {
				s.VIPs = append(s.VIPs, a)
			}
		}
		internal, external := sp.ClusterEndpoints(), sp.ExternalEndpoints()
		for _, cip := range sp.ClusterIPs {
			server(cip, sp.Port, internal)
			vip(cip)
			s.MasqCluster = append(s.MasqCluster, ServerKey{cip, proto, uint16(sp.Port)})
		}
		lbs := slices.Concat(sp.ExternalIPs, sp.LoadBalancerIPs)
		for _, ip := range lbs {
			server(ip, sp.Port, external)
			vip(ip)
			if !sp.ExternalLocal {
				s.MasqExternal = append(s.MasqExternal, ServerKey{ip, proto, uint16(sp.Port)})
			}
		}
		for _, ip := range sp.LoadBalancerIPs {
			ranges := sp.SourceRanges(ip.Is4())
			if len(ranges) == 0 {
				continue
			}
			k := ServerKey{ip, proto, uint16(sp.Port)}
			s.Firewalled = append(s.Firewalled, k)
			for _, r := range ranges {
				s.Allowed = append(s.Allowed, Allow{k, r})
			}
			// A range holding a node address admits the load balancer's
			// own (traffic the node sends to it), as kube-proxy does.
			if slices.ContainsFunc(ranges, func(r netip.Prefix) bool { return slices.ContainsFunc(opts.NodeIPs, r.Contains) }) {
				s.Allowed = append(s.Allowed, Allow{k, netip.PrefixFrom(ip, ip.BitLen())})
			}
		}
		if sp.NodePort != 0 {
			for _, ip := range opts.NodeIPs {
				server(ip, sp.NodePort, external)
			}
			if !sp.ExternalLocal {
				s.MasqNodePorts = append(s.MasqNodePorts, ServerKey{Protocol: proto, Port: uint16(sp.NodePort)})
			}
		}
	}
	return s
}

// filterElem is one element of one set of the filter table.
type filterElem struct{ set, elem string }

// filterSet is one set of the filter table: its name, nft type and flags.
type filterSet struct{ name, typ, flags string }

// filterSets are the filter table's sets, in the order they are declared.
var filterSets = func() []filterSet {
	var out []filterSet
	for _, f := range []struct{ suffix, addr string }{{"4", "ipv4_addr"}, {"6", "ipv6_addr"}} {
		out = append(out,
			filterSet{"vips" + f.suffix, f.addr, ""},
			filterSet{"served" + f.suffix, f.addr + " . inet_proto . inet_service", ""},
			filterSet{"masq-cluster" + f.suffix, f.addr + " . inet_proto . inet_service", ""},
			filterSet{"masq-external" + f.suffix, f.addr + " . inet_proto . inet_service", ""},
			filterSet{"hairpin" + f.suffix, f.addr + " . inet_proto . inet_service . " + f.addr, ""},
			filterSet{"firewall" + f.suffix, f.addr + " . inet_proto . inet_service", ""},
			filterSet{"allow" + f.suffix, f.addr + " . inet_proto . inet_service . " + f.addr, "interval"},
			filterSet{"nodeports" + f.suffix, f.addr + " . inet_proto . inet_service", ""})
	}
	return append(out, filterSet{"masq-nodeports", "inet_proto . inet_service", ""})
}()

// filterElems lists the set elements one Service contributes to the
// filter table (without duplicates; Services may share some, as an
// externalIP's address).
func filterElems(svc Service) []filterElem {
	var out []filterElem
	add := func(name string, a netip.Addr, elem string) {
		if a.IsValid() {
			name += map[bool]string{true: "4", false: "6"}[a.Is4()]
		}
		e := filterElem{name, elem}
		if !slices.Contains(out, e) {
			out = append(out, e)
		}
	}
	key := func(k ServerKey) string {
		return k.Addr.String() + " . " + strings.ToLower(k.Protocol) + " . " + fmt.Sprint(k.Port)
	}
	for _, a := range svc.VIPs {
		add("vips", a, a.String())
	}
	for _, vs := range svc.Servers {
		if slices.Contains(svc.VIPs, vs.Addr) {
			add("served", vs.Addr, key(vs.ServerKey))
		} else {
			// A NodePort's virtual server, on a node address: no rule
			// looks at this set; it records which virtual servers on
			// addresses not ours are, so Cleanup removes them (and only
			// them).
			add("nodeports", vs.Addr, key(vs.ServerKey))
		}
	}
	for _, k := range svc.MasqCluster {
		add("masq-cluster", k.Addr, key(k))
	}
	for _, k := range svc.MasqExternal {
		add("masq-external", k.Addr, key(k))
	}
	for _, h := range svc.Hairpins {
		a := h.Endpoint.Addr()
		add("hairpin", a, a.String()+" . "+strings.ToLower(h.Protocol)+" . "+fmt.Sprint(h.Endpoint.Port())+" . "+a.String())
	}
	for _, k := range svc.Firewalled {
		add("firewall", k.Addr, key(k))
	}
	for _, a := range svc.Allowed {
		add("allow", a.Addr, key(a.ServerKey)+" . "+a.Source.Masked().String())
	}
	for _, k := range svc.MasqNodePorts {
		add("masq-nodeports", netip.Addr{}, strings.ToLower(k.Protocol)+" . "+fmt.Sprint(k.Port))
	}
	return out
}

// FilterDelta renders, as one nft transaction, adding and deleting set
// elements of the filter table (what a partial sync writes: only the
// elements of the Services that changed); nil when there is nothing.
func FilterDelta(add, del []filterElem) []byte {
	if len(add)+len(del) == 0 {
		return nil
	}
	var b strings.Builder
	write := func(verb string, elems []filterElem) {
		bySet := map[string][]string{}
		for _, e := range elems {
			bySet[e.set] = append(bySet[e.set], e.elem)
		}
		for _, s := range filterSets {
			if es := bySet[s.name]; len(es) > 0 {
				slices.Sort(es)
				fmt.Fprintf(&b, "%s element inet %s %s { %s }\n", verb, Table, s.name, strings.Join(es, ", "))
			}
		}
	}
	write("delete", del)
	write("add", add)
	return []byte(b.String())
}

// FilterText renders the packet-filter table for services (and NodePorts
// on nodeIPs) as an nft script: the table is created, deleted and
// created again with everything in it, in one transaction (a full sync;
// partial syncs write FilterDelta).
func FilterText(services []Service, clusterCIDRs []netip.Prefix) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {}\ndelete table inet %s\ntable inet %s {\n", Table, Table, Table)
	fam := func(is4 bool) (string, string) {
		if is4 {
			return "4", "ipv4_addr"
		}
		return "6", "ipv6_addr"
	}
	elems := map[string][]string{}
	seen := map[filterElem]bool{}
	for _, svc := range services {
		for _, e := range filterElems(svc) {
			if !seen[e] {
				seen[e] = true
				elems[e.set] = append(elems[e.set], e.elem)
			}
		}
	}
	for _, s := range filterSets {
		fmt.Fprintf(&b, "\tset %s {\n\t\ttype %s\n", s.name, s.typ)
		if s.flags != "" {
			fmt.Fprintf(&b, "\t\tflags %s\n", s.flags)
		}
		if es := elems[s.name]; len(es) > 0 {
			slices.Sort(es)
			fmt.Fprintf(&b, "\t\telements = { %s }\n", strings.Join(es, ", "))
		}
		b.WriteString("\t}\n")
	}
	local := func(is4 bool) string {
		for _, p := range clusterCIDRs {
			if p.Addr().Is4() == is4 {
				return p.Masked().String()
			}
		}
		return ""
	}
	b.WriteString("\tchain mark-masq {\n\t\tmeta mark set meta mark | " + masqMark + "\n\t}\n")
	b.WriteString("\tchain services {\n")
	for _, is4 := range []bool{true, false} {
		f, _ := fam(is4)
		ip := "ip"
		if !is4 {
			ip = "ip6"
		}
		masq := ip + " daddr . meta l4proto . th dport @masq-cluster" + f
		if l := local(is4); l != "" {
			masq += " " + ip + " saddr != " + l
		}
		b.WriteString("\t\t" + masq + " jump mark-masq\n")
		b.WriteString("\t\t" + ip + " daddr . meta l4proto . th dport @masq-external" + f + " jump mark-masq\n")
	}
	b.WriteString("\t\tfib daddr type local meta l4proto . th dport @masq-nodeports jump mark-masq\n\t}\n")
	b.WriteString("\tchain nat-prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump services\n\t}\n")
	b.WriteString("\tchain nat-output {\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}\n")
	b.WriteString("\tchain nat-postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n")
	b.WriteString("\t\tip saddr . meta l4proto . th dport . ip daddr @hairpin4 masquerade\n")
	b.WriteString("\t\tip6 saddr . meta l4proto . th dport . ip6 daddr @hairpin6 masquerade\n")
	b.WriteString("\t\tmeta mark & " + masqMark + " == 0 return\n")
	b.WriteString("\t\tmeta mark set meta mark ^ " + masqMark + "\n\t\tmasquerade fully-random\n\t}\n")
	b.WriteString("\tchain filter-input {\n\t\ttype filter hook input priority filter; policy accept;\n")
	for _, is4 := range []bool{true, false} {
		f, _ := fam(is4)
		ip := "ip"
		if !is4 {
			ip = "ip6"
		}
		b.WriteString("\t\tct state new " + ip + " daddr . meta l4proto . th dport @firewall" + f + " " + ip + " daddr . meta l4proto . th dport . " + ip + " saddr != @allow" + f + " drop\n")
		b.WriteString("\t\tct state new " + ip + " daddr @vips" + f + " " + ip + " daddr . meta l4proto . th dport != @served" + f + " reject\n")
	}
	b.WriteString("\t}\n}\n")
	return []byte(b.String())
}

// Table is the nftables table of the filter rules.
const Table = "switchboard-ipvs"

// masqMark is the mark bit that asks for masquerading, as in the other
// modes.
const masqMark = "0x4000"
