// Package iptables programs Service traffic with iptables, in the layout of
// kube-proxy v1.36's iptables proxier, in chains of our own (prefix "SWB-")
// so it never touches kube-proxy's or anybody else's.
//
// Layout, per IP family (iptables and ip6tables):
//
//   - nat SWB-SERVICES, jumped to from PREROUTING and OUTPUT, holds one rule
//     per front-end (ClusterIP, externalIP, load balancer IP) that has
//     endpoints, jumping to the Service port's chains; its last rules send
//     traffic to the node's addresses on to SWB-NODEPORTS.
//   - per Service port: SWB-s<svc><port>-SVC balances over the
//     Cluster-policy endpoints with "statistic random" (1/n, 1/(n-1), ...),
//     SWB-s<svc><port>-SVL over the Local-policy ones, -EXT is the external
//     entry (masquerade, or eTP Local's short-circuit for pods and the
//     node), -FW checks loadBalancerSourceRanges. An endpoint whose own
//     traffic can be DNATed here (on this node, or behind an
//     externalTrafficPolicy Local short-circuit, or with no cluster CIDR)
//     has a chain SWB-s<svc><port>-<ep> that marks hairpin traffic for
//     masquerade, records ClientIP affinity with the "recent" match and
//     DNATs; any other endpoint is DNATed (and recorded) by its rule in the
//     policy chain itself (see ownChain in translatePort). kube-proxy names them
//     KUBE-SVC-<hash>, KUBE-SEP-<hash>...; ours share a prefix per Service
//     (<svc>, a hash of namespace/name) that sorts after every node-wide
//     chain, which a full sync needs to be linear with iptables-nft (see
//     restoreOrder in kernel.go).
//   - nat SWB-POSTROUTING masquerades packets SWB-MARK-MASQ marked.
//   - filter SWB-SERVICES rejects (no endpoints) or drops (no local
//     endpoints under internalTrafficPolicy Local) ClusterIP traffic;
//     SWB-EXTERNAL-SERVICES does the same for external front-ends;
//     SWB-PROXY-FIREWALL drops load balancer traffic the source ranges
//     did not admit; SWB-NODEPORTS accepts healthCheckNodePorts;
//     SWB-CLUSTER-IPS rejects a ClusterIP's unknown ports and drops the
//     unallocated rest of the Service CIDRs (as kube-proxy's nftables mode
//     does); SWB-FORWARD accepts marked and established forwarded traffic.
//
// This file is the pure half: Service ports in, rules out.
package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/switchboard/switchboard/proxy/snapshot"
)

// Chain names. Node-wide chains are fixed; per-Service-port and
// per-endpoint chains carry a hash, as kube-proxy's do.
const (
	ChainPrefix        = "SWB-"
	chainServices      = "SWB-SERVICES"
	chainNodePorts     = "SWB-NODEPORTS"
	chainPostrouting   = "SWB-POSTROUTING"
	chainMarkMasq      = "SWB-MARK-MASQ"
	chainExternal      = "SWB-EXTERNAL-SERVICES"
	chainForward       = "SWB-FORWARD"
	chainProxyFirewall = "SWB-PROXY-FIREWALL"
	chainClusterIPs    = "SWB-CLUSTER-IPS"
	// prefixService starts every chain a Service owns: lower case, so
	// that it sorts after the node-wide chains' upper case names.
	prefixService = "SWB-s"
	// The kinds of a Service port's chains, the last part of their names.
	kindCluster  = "SVC"
	kindLocal    = "SVL"
	kindExternal = "EXT"
	kindFirewall = "FW"
)

// oldServicePrefixes start the Service chains of earlier versions (named
// as kube-proxy's); a full sync deletes them.
var oldServicePrefixes = []string{"SWB-SVC-", "SWB-SVL-", "SWB-EXT-", "SWB-FW-", "SWB-SEP-"}

// masqMark is the mark bit that asks SWB-POSTROUTING to masquerade; the
// same bit the nftables mode uses, so switching modes keeps its meaning.
const masqMark = "0x4000"

// Table names.
const (
	TableFilter = "filter"
	TableNAT    = "nat"
)

// Rule is one rule in a chain shared by all Services (SWB-SERVICES and the
// like). Spec is what follows "-A <chain>", written as iptables-save
// prints it, so the kernel's state can be compared with it.
type Rule struct {
	Table, Chain, Spec string
}

// Chain is a nat chain one Service port owns, with its rules' specs.
type Chain struct {
	Name  string
	Rules []string
}

// Service is what one Service needs in one family's tables.
type Service struct {
	// Group is the prefix of the Service's chain names (set even when it
	// has no chain): a full sync writes Services in descending order of it.
	Group string
	// Rules go into the shared chains; Chains are the Service's own.
	Rules  []Rule
	Chains []Chain
}

// Options are the node-wide inputs to translation.
type Options struct {
	// ClusterCIDRs, when set, make traffic to ClusterIPs from outside them
	// masqueraded, and pod traffic to externalTrafficPolicy Local
	// front-ends short-circuited to all endpoints (kube-proxy's
	// detect-local-mode ClusterCIDR; the first CIDR of each family is used,
	// as kube-proxy takes one per family).
	ClusterCIDRs []netip.Prefix
	// NodeIPs are the addresses NodePorts answer on; a source range
	// holding one also admits the load balancer's own address.
	NodeIPs []netip.Addr
	// LargeCluster leaves the comments out of the endpoint chains' rules
	// and of the policy chains' rules that jump to them, as kube-proxy
	// does above LargeClusterEndpoints endpoints (40% less to write).
	LargeCluster bool
}

// LargeClusterEndpoints is kube-proxy's largeClusterEndpointsThreshold:
// with more endpoints than this, Options.LargeCluster is set.
const LargeClusterEndpoints = 1000

// join joins the non-empty parts of a rule with single spaces, as
// iptables-save spells it.
func join(parts ...string) string {
	var b strings.Builder
	for _, p := range parts {
		if p == "" {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(p)
	}
	return b.String()
}

// Translate returns the rules and chains of one Service (all its ports) in
// the table of family is4. It is pure.
func Translate(ports []*snapshot.ServicePort, is4 bool, opts Options) Service {
	var s Service
	if len(ports) > 0 {
		s.Group = serviceGroup(ports[0].Key.ServiceKey)
	}
	seen := map[Rule]bool{}
	add := func(r Rule) {
		if !seen[r] {
			seen[r] = true
			s.Rules = append(s.Rules, r)
		}
	}
	for _, sp := range ports {
		translatePort(&s, add, sp, is4, opts)
	}
	return s
}

func translatePort(s *Service, add func(Rule), sp *snapshot.ServicePort, is4 bool, opts Options) {
	fam := func(eps []snapshot.Endpoint) []snapshot.Endpoint {
		var r []snapshot.Endpoint
		for _, e := range eps {
			if e.Addr.Is4() == is4 {
				r = append(r, e)
			}
		}
		return r
	}
	addrs := func(list []netip.Addr) []netip.Addr {
		var r []netip.Addr
		for _, a := range list {
			if a.Is4() == is4 {
				r = append(r, a)
			}
		}
		return r
	}
	cips := addrs(sp.ClusterIPs)
	if len(cips) == 0 {
		return
	}
	// kube-proxy's ServicePortName: namespace/name:port.
	name := sp.Key.ServiceKey.String() + ":" + sp.Key.Port
	cm := comment(name)
	proto := strings.ToLower(string(sp.Protocol))
	hasEndpoints := len(fam(sp.UsableEndpoints())) > 0
	clusterEPs := fam(sp.ClusterPolicyEndpoints())
	localEPs := fam(sp.LocalPolicyEndpoints())
	external := sp.HasExternal()
	// kube-proxy's UsesClusterEndpoints: eTP Local still needs them, for
	// the short-circuit.
	usesCluster := len(clusterEPs) > 0 && (!sp.InternalLocal || external)
	usesLocal := len(localEPs) > 0 && (sp.InternalLocal || (sp.ExternalLocal && external))
	// The chains' names share the port's prefix: two hashes, computed once.
	prefix := portPrefix(sp.Key.ServiceKey, name, proto)
	clusterChain := prefix + "-" + kindCluster
	localChain := prefix + "-" + kindLocal
	extChain := prefix + "-" + kindExternal
	fwChain := prefix + "-" + kindFirewall
	// sepName names endpoint e's chain, and its affinity list.
	sepName := func(e snapshot.Endpoint) string { return prefix + "-" + endpointHash(name, proto, e.AddrPort()) }

	internalChain, hasInternal := clusterChain, hasEndpoints
	if sp.InternalLocal {
		internalChain, hasInternal = localChain, hasEndpoints && len(localEPs) > 0
	}
	externalChain, hasExternal := clusterChain, hasEndpoints
	if sp.ExternalLocal {
		externalChain, hasExternal = localChain, hasEndpoints && len(localEPs) > 0
	}
	internalTarget, externalTarget := "", ""
	switch {
	case !hasEndpoints:
		internalTarget, externalTarget = reject(is4), reject(is4)
	default:
		if !hasInternal {
			internalTarget = "DROP"
		}
		if !hasExternal {
			externalTarget = "DROP"
		}
	}
	lbs := addrs(sp.LoadBalancerIPs)
	ranges := sp.SourceRanges(is4)
	usesFW := hasEndpoints && len(lbs) > 0 && len(ranges) > 0
	lbChain := extChain
	if usesFW {
		lbChain = fwChain
	}
	dport := func(port int32) string {
		return "-p " + proto + " " + cm + " -m " + proto + " --dport " + strconv.Itoa(int(port))
	}
	dst := func(a netip.Addr) string { return "-d " + host(a) }

	for _, cip := range cips {
		if hasInternal {
			add(Rule{TableNAT, chainServices, dst(cip) + " " + dport(sp.Port) + " -j " + internalChain})
		} else {
			add(Rule{TableFilter, chainServices, dst(cip) + " " + dport(sp.Port) + " -j " + internalTarget})
		}
		// Any other port of the ClusterIP is rejected (its own ports were
		// DNATed, rejected or dropped before this chain).
		add(Rule{TableFilter, chainClusterIPs, dst(cip) + " " + comment(sp.Key.ServiceKey.String()) + " -j " + reject(is4)})
	}
	for _, ip := range addrs(sp.ExternalIPs) {
		if hasEndpoints {
			add(Rule{TableNAT, chainServices, dst(ip) + " " + dport(sp.Port) + " -j " + extChain})
		}
		if !hasExternal {
			add(Rule{TableFilter, chainExternal, dst(ip) + " " + dport(sp.Port) + " -j " + externalTarget})
		}
	}
	for _, ip := range lbs {
		if hasEndpoints {
			add(Rule{TableNAT, chainServices, dst(ip) + " " + dport(sp.Port) + " -j " + lbChain})
		}
		if usesFW {
			add(Rule{TableFilter, chainProxyFirewall, dst(ip) + " " + dport(sp.Port) + " -j DROP"})
		}
		if !hasExternal {
			add(Rule{TableFilter, chainExternal, dst(ip) + " " + dport(sp.Port) + " -j " + externalTarget})
		}
	}
	if sp.NodePort != 0 {
		if hasEndpoints {
			add(Rule{TableNAT, chainNodePorts, dport(sp.NodePort) + " -j " + extChain})
		}
		if !hasExternal {
			add(Rule{TableFilter, chainExternal, "-p " + proto + " " + cm + " -m addrtype --dst-type LOCAL -m " + proto + " --dport " + strconv.Itoa(int(sp.NodePort)) + " -j " + externalTarget})
		}
	}
	if sp.HealthCheckNodePort != 0 {
		add(Rule{TableFilter, chainNodePorts, "-p tcp " + comment(sp.Key.ServiceKey.String()) + " -m tcp --dport " + strconv.Itoa(int(sp.HealthCheckNodePort)) + " -j ACCEPT"})
	}
	if !hasEndpoints {
		return
	}

	// The Service port's own chains.
	chains := map[string]*Chain{}
	var order []string
	use := func(n string) *Chain {
		if chains[n] == nil {
			chains[n] = &Chain{Name: n}
			order = append(order, n)
		}
		return chains[n]
	}
	local := localCIDR(opts.ClusterCIDRs, is4)
	if hasInternal && local.IsValid() {
		c := use(internalChain)
		for _, cip := range cips {
			c.Rules = append(c.Rules, "! -s "+local.String()+" "+dst(cip)+" "+dport(sp.Port)+" -j "+chainMarkMasq)
		}
	}
	if external {
		c := use(extChain)
		if !sp.ExternalLocal {
			c.Rules = append(c.Rules, cm+" -j "+chainMarkMasq)
		} else if usesCluster {
			// The short-circuit: pods and the node itself are not
			// external, so eTP Local does not apply to them.
			if local.IsValid() {
				c.Rules = append(c.Rules, "-s "+local.String()+" "+cm+" -j "+clusterChain)
			}
			c.Rules = append(c.Rules,
				cm+" -m addrtype --src-type LOCAL -j "+chainMarkMasq,
				cm+" -m addrtype --src-type LOCAL -j "+clusterChain)
		}
		if hasExternal {
			c.Rules = append(c.Rules, "-j "+externalChain)
		}
	}
	if usesFW {
		c := use(fwChain)
		allowFromNode := slices.ContainsFunc(ranges, func(r netip.Prefix) bool { return slices.ContainsFunc(opts.NodeIPs, r.Contains) })
		for _, r := range ranges {
			c.Rules = append(c.Rules, "-s "+r.String()+" "+cm+" -j "+extChain)
		}
		if allowFromNode {
			for _, ip := range lbs {
				c.Rules = append(c.Rules, "-s "+host(ip)+" "+cm+" -j "+extChain)
			}
		}
		// Anything else falls through to SWB-PROXY-FIREWALL's drop.
	}
	// Which endpoints get a chain of their own. kube-proxy gives each one a
	// chain (KUBE-SEP-*) because two things follow one random choice: the
	// hairpin mark ("-s <endpoint>": a pod reaching itself through the
	// Service must be masqueraded, or it answers itself) and the DNAT. The
	// mark can only matter where a packet from the endpoint's own address
	// is DNATed here: the endpoint is on this node (its pod's traffic, or a
	// host-network endpoint's), or it is a pod sent here through an
	// externalTrafficPolicy Local front-end's short-circuit, or there is
	// no cluster CIDR to masquerade the traffic of anything else that is
	// not a pod. A pod elsewhere reaches a ClusterIP through its own
	// node's rules; anything else reaches this one's already masqueraded
	// (from outside the cluster CIDR, or through an external front-end
	// under Cluster policy). Every other endpoint is one rule in the
	// policy chain that DNATs: a third of kube-proxy's rules and a tenth of
	// its chains, which is what a sync costs the iptables tools and the
	// kernel (both rewrite or revalidate the whole table).
	ownChain := func(e snapshot.Endpoint) bool {
		return e.Local || !local.IsValid() || (sp.ExternalLocal && external)
	}
	// recentSet records the client in endpoint e's affinity list (named
	// as its chain), with sessionAffinity ClientIP only: the name's hash
	// is not computed otherwise.
	recentSet := func(e snapshot.Endpoint) string {
		if sp.AffinityTimeout <= 0 {
			return ""
		}
		return "-m recent --set --name " + sepName(e) + " --mask " + fullMask(is4) + " --rsource"
	}
	// The endpoints' rules' comment (none in a large cluster).
	epcm := cm
	if opts.LargeCluster {
		epcm = ""
	}
	// toEndpoint is the rule that sends a policy chain's traffic that
	// matched matches to endpoint e: a jump to its chain, or the DNAT
	// itself (recording the client for affinity in the list named as
	// the chain would be, so records survive a change of layout).
	toEndpoint := func(e snapshot.Endpoint, matches string) string {
		if ownChain(e) {
			return join(epcm, matches, "-j "+sepName(e))
		}
		return join("-p "+proto, epcm, matches, recentSet(e), "-m "+proto+" -j DNAT --to-destination "+e.AddrPort().String())
	}
	var reachable []snapshot.Endpoint
	if usesCluster {
		balance(use(clusterChain), clusterEPs, sp.AffinityTimeout.Seconds(), sepName, toEndpoint)
		reachable = append(reachable, clusterEPs...)
	}
	if usesLocal {
		balance(use(localChain), localEPs, sp.AffinityTimeout.Seconds(), sepName, toEndpoint)
		reachable = append(reachable, localEPs...)
	}
	done := map[netip.AddrPort]bool{}
	for _, e := range reachable {
		if done[e.AddrPort()] {
			continue
		}
		done[e.AddrPort()] = true
		if !ownChain(e) {
			continue
		}
		c := use(sepName(e))
		c.Rules = append(c.Rules,
			join("-s "+host(e.Addr), epcm, "-j "+chainMarkMasq),
			join("-p "+proto, epcm, recentSet(e), "-m "+proto+" -j DNAT --to-destination "+e.AddrPort().String()))
	}
	for _, n := range order {
		s.Chains = append(s.Chains, *chains[n])
	}
}

// balance writes a policy chain's rules: affinity checks first (a client
// seen within the timeout goes back to its endpoint), then one rule per
// endpoint with the probability that spreads new connections evenly;
// toEndpoint writes the rule that sends matching traffic to an endpoint,
// sepName names an endpoint's affinity list.
func balance(c *Chain, eps []snapshot.Endpoint, affinity float64, sepName func(snapshot.Endpoint) string,
	toEndpoint func(e snapshot.Endpoint, matches string) string) {
	is4 := eps[0].Addr.Is4()
	if affinity > 0 {
		for _, e := range eps {
			c.Rules = append(c.Rules, toEndpoint(e, "-m recent --rcheck --seconds "+strconv.Itoa(int(affinity))+
				" --reap --name "+sepName(e)+" --mask "+fullMask(is4)+" --rsource"))
		}
	}
	for i, e := range eps {
		stat := ""
		if i < len(eps)-1 {
			stat = "-m statistic --mode random --probability " + probability(len(eps)-i)
		}
		c.Rules = append(c.Rules, toEndpoint(e, stat))
	}
}

// probability is 1/n as iptables-save prints it back: the statistic match
// keeps it as a fraction of 2^31.
func probability(n int) string {
	p := math.Round(0x80000000 / float64(n))
	return fmt.Sprintf("%.11f", p/0x80000000)
}

func reject(is4 bool) string {
	if is4 {
		return "REJECT --reject-with icmp-port-unreachable"
	}
	return "REJECT --reject-with icmp6-port-unreachable"
}

func fullMask(is4 bool) string {
	if is4 {
		return "255.255.255.255"
	}
	return "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
}

func hostSuffix(is4 bool) string {
	if is4 {
		return "/32"
	}
	return "/128"
}

// host renders a single address as iptables-save prints it.
func host(a netip.Addr) string { return a.String() + hostSuffix(a.Is4()) }

// localCIDR is the first cluster CIDR of the family (invalid if none).
func localCIDR(cidrs []netip.Prefix, is4 bool) netip.Prefix {
	for _, p := range cidrs {
		if p.Addr().Is4() == is4 {
			return p.Masked()
		}
	}
	return netip.Prefix{}
}

var encoding = base32.StdEncoding

// hash is the first n characters of the base32 SHA-256 of s.
func hash(s string, n int) string {
	h := sha256.Sum256([]byte(s))
	return encoding.EncodeToString(h[:])[:n]
}

// serviceGroup is the prefix of every chain of Service svc: 50 bits of
// hash tell 10^6 Services apart with a collision chance of 1 in 10^3.
func serviceGroup(svc snapshot.ServiceKey) string {
	return prefixService + hash(svc.String(), 10)
}

// groupOf returns the Service prefix of a chain name ("" for a chain no
// Service owns in this version's naming).
func groupOf(chain string) string {
	if n := len(prefixService) + 10; strings.HasPrefix(chain, prefixService) && len(chain) > n {
		return chain[:n]
	}
	return ""
}

// portChain names a Service port's chain of the given kind: the Service's
// prefix, 4 characters that tell its ports apart (name is kube-proxy's
// ServicePortName, namespace/name:port), the kind. 25 characters at most:
// iptables allows 28.
func portChain(svc snapshot.ServiceKey, name, proto, kind string) string {
	return portPrefix(svc, name, proto) + "-" + kind
}

// portPrefix is what a Service port's chains' names start with.
func portPrefix(svc snapshot.ServiceKey, name, proto string) string {
	return serviceGroup(svc) + hash(name+proto, 4)
}

// endpointChain names an endpoint's chain: the port's prefix and 8
// characters of the endpoint's hash, as kube-proxy's
// servicePortEndpointChainName hashes it (28 characters).
func endpointChain(svc snapshot.ServiceKey, name, proto string, ep netip.AddrPort) string {
	return portPrefix(svc, name, proto) + "-" + endpointHash(name, proto, ep)
}

// endpointHash is the part of an endpoint chain's name after its port's
// prefix.
func endpointHash(name, proto string, ep netip.AddrPort) string {
	return hash(name+proto+ep.String(), 8)
}

// isServiceChain tells the chains Services own (deleted when stale), in
// this version's naming or an earlier one's, from the node-wide ones.
func isServiceChain(name string) bool {
	if strings.HasPrefix(name, prefixService) {
		return true
	}
	for _, p := range oldServicePrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// comment is a comment match, quoted as iptables-save prints it.
func comment(s string) string { return "-m comment --comment \"" + s + "\"" }
