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
//     KUBE-IPVS-FILTER).
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

// FilterText renders the packet-filter table for services (and NodePorts
// on nodeIPs) as an nft script: the table is created, deleted and
// created again with everything in it, in one transaction.
func FilterText(services []Service, clusterCIDRs []netip.Prefix) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {}\ndelete table inet %s\ntable inet %s {\n", Table, Table, Table)
	type set struct {
		name, typ, flags string
		elems            []string
	}
	fam := func(is4 bool) (string, string) {
		if is4 {
			return "4", "ipv4_addr"
		}
		return "6", "ipv6_addr"
	}
	key := func(k ServerKey) string {
		return k.Addr.String() + " . " + strings.ToLower(k.Protocol) + " . " + fmt.Sprint(k.Port)
	}
	var sets []*set
	bySuffix := map[string]*set{}
	get := func(name, typ, flags string) *set {
		if s := bySuffix[name]; s != nil {
			return s
		}
		s := &set{name: name, typ: typ, flags: flags}
		bySuffix[name] = s
		sets = append(sets, s)
		return s
	}
	for _, is4 := range []bool{true, false} {
		f, addr := fam(is4)
		get("vips"+f, addr, "")
		get("served"+f, addr+" . inet_proto . inet_service", "")
		get("masq-cluster"+f, addr+" . inet_proto . inet_service", "")
		get("masq-external"+f, addr+" . inet_proto . inet_service", "")
		get("hairpin"+f, addr+" . inet_proto . inet_service . "+addr, "")
		get("firewall"+f, addr+" . inet_proto . inet_service", "")
		get("allow"+f, addr+" . inet_proto . inet_service . "+addr, "interval")
	}
	nodePorts := get("masq-nodeports", "inet_proto . inet_service", "")
	add := func(name string, a netip.Addr, elem string) {
		f, _ := fam(a.Is4())
		s := bySuffix[name+f]
		if !slices.Contains(s.elems, elem) {
			s.elems = append(s.elems, elem)
		}
	}
	for _, svc := range services {
		for _, a := range svc.VIPs {
			add("vips", a, a.String())
		}
		for _, vs := range svc.Servers {
			if slices.Contains(svc.VIPs, vs.Addr) {
				add("served", vs.Addr, key(vs.ServerKey))
			}
		}
		for _, k := range svc.MasqCluster {
			add("masq-cluster", k.Addr, key(k))
		}
		for _, k := range svc.MasqExternal {
			add("masq-external", k.Addr, key(k))
		}
		for _, h := range svc.Hairpins {
			add("hairpin", h.Endpoint.Addr(), h.Endpoint.Addr().String()+" . "+strings.ToLower(h.Protocol)+" . "+fmt.Sprint(h.Endpoint.Port())+" . "+h.Endpoint.Addr().String())
		}
		for _, k := range svc.Firewalled {
			add("firewall", k.Addr, key(k))
		}
		for _, a := range svc.Allowed {
			add("allow", a.Addr, key(a.ServerKey)+" . "+a.Source.Masked().String())
		}
		for _, k := range svc.MasqNodePorts {
			e := strings.ToLower(k.Protocol) + " . " + fmt.Sprint(k.Port)
			if !slices.Contains(nodePorts.elems, e) {
				nodePorts.elems = append(nodePorts.elems, e)
			}
		}
	}
	for _, s := range sets {
		fmt.Fprintf(&b, "\tset %s {\n\t\ttype %s\n", s.name, s.typ)
		if s.flags != "" {
			fmt.Fprintf(&b, "\t\tflags %s\n", s.flags)
		}
		if len(s.elems) > 0 {
			slices.Sort(s.elems)
			fmt.Fprintf(&b, "\t\telements = { %s }\n", strings.Join(s.elems, ", "))
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
