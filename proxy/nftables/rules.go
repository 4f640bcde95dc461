package nftables

// Rules: the tables' fixed chains and rules, the sets, and the rule each
// bucket map gets when first used.

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// masqMark is the packet mark that asks postrouting to masquerade; the same
// bit kube-proxy uses, so the two never disagree on a shared node.
const masqMark = 0x4000

func (k *Tables) addSet(f *family, name string) *nftables.Set {
	key, data, concat := setTypes(f.is4, name)
	s := &nftables.Set{Table: f.table, Name: name, KeyType: key, Concatenation: concat}
	if data != nftables.TypeInvalid {
		s.IsMap, s.DataType = true, data
	}
	if name == setLBAllowed {
		s.Interval = true
	}
	if err := k.conn.AddSet(s, nil); err != nil {
		// AddSet only fails on invalid definitions, which are ours.
		panic(fmt.Sprintf("define set %s: %v", name, err))
	}
	f.sets[name] = s
	return s
}

// ensureBucket creates a bucket map and its DNAT rule the first time a
// bucket size is used. Buckets are kept once made: an empty map costs one
// failed lookup per new connection.
func (k *Tables) ensureBucket(f *family, name string) {
	slots, ok := bucketSlots(name)
	if !ok || f.buckets[name] {
		return
	}
	if kind, ok := affinityKindOf(name); ok {
		k.ensureAffinityBucket(f, slots, kind)
		return
	}
	set := k.addSet(f, name)
	f.buckets[name] = true
	rule := func(chain string, ex []expr.Any) {
		k.conn.AddRule(&nftables.Rule{Table: f.table, Chain: f.chains[chain], Exprs: ex})
	}
	switch {
	case strings.HasPrefix(name, setAffinityPrefix):
		// Listed for inspection; affinity-record has a rule per front-end.
	case strings.HasPrefix(name, setServicePrefix):
		rule("services", dnatExprs(f.is4, true, slots, set))
	case strings.HasPrefix(name, setShortCircuitPrefix):
		rule("short-circuit", dnatExprs(f.is4, true, slots, set))
	case strings.HasPrefix(name, setShortCircuitNodePortPrefix):
		rule("short-circuit-nodeport", dnatExprs(f.is4, false, slots, set))
	default:
		rule("nodeports", dnatExprs(f.is4, false, slots, set))
	}
}

// Registers: 8 is NFT_REG32_00; concatenations use consecutive 32-bit ones.
const reg0 = 8

func addrLen(is4 bool) uint32 {
	if is4 {
		return 4
	}
	return 16
}

func daddr(is4 bool, reg uint32) expr.Any {
	off := uint32(16)
	if !is4 {
		off = 24
	}
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: addrLen(is4)}
}

func saddr(is4 bool, reg uint32) expr.Any {
	off := uint32(12)
	if !is4 {
		off = 8
	}
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: addrLen(is4)}
}

// frontEnd loads "daddr . l4proto . dport" (withAddr) or "l4proto . dport"
// into consecutive registers from reg0 and returns the next free register.
func frontEnd(is4, withAddr bool) ([]expr.Any, uint32) {
	r := uint32(reg0)
	var out []expr.Any
	if withAddr {
		out = append(out, daddr(is4, r))
		r += addrLen(is4) / 4
	}
	out = append(out,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: r},
		&expr.Payload{DestRegister: r + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	)
	return out, r + 2
}

func dnatExprs(is4, withAddr bool, slots uint32, set *nftables.Set) []expr.Any {
	ex, r := frontEnd(is4, withAddr)
	nfproto := uint32(unix.NFPROTO_IPV4)
	if !is4 {
		nfproto = unix.NFPROTO_IPV6
	}
	return append(ex,
		&expr.Numgen{Register: r, Modulus: slots, Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: reg0, DestRegister: reg0, IsDestRegSet: true, SetName: set.Name, SetID: set.ID},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: nfproto, RegAddrMin: reg0, RegProtoMin: reg0 + addrLen(is4)/4, Specified: true},
	)
}

// natTo DNATs to the address . port in registers from reg.
func natTo(is4 bool, reg uint32) expr.Any {
	nfproto := uint32(unix.NFPROTO_IPV4)
	if !is4 {
		nfproto = unix.NFPROTO_IPV6
	}
	return &expr.NAT{Type: expr.NATTypeDestNAT, Family: nfproto, RegAddrMin: reg, RegProtoMin: reg + addrLen(is4)/4, Specified: true}
}

func lookup(set *nftables.Set) expr.Any {
	return &expr.Lookup{SourceRegister: reg0, SetName: set.Name, SetID: set.ID}
}

func setMasqMark() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^uint32(masqMark)), Xor: binaryutil.NativeEndian.PutUint32(masqMark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}
}

// skeleton queues the table, its chains (flushed) and fixed rules, and all
// sets (flushed), in the transaction being built.
func (k *Tables) skeleton(f *family, existing []string) {
	c := k.conn
	c.AddTable(f.table)
	add := func(r *nftables.Rule) { c.AddRule(r) }
	f.chains, f.sets, f.buckets = map[string]*nftables.Chain{}, map[string]*nftables.Set{}, map[string]bool{}
	chain := func(name string, hook *nftables.ChainHook, prio int32, typ nftables.ChainType) *nftables.Chain {
		ch := &nftables.Chain{Name: name, Table: f.table}
		if hook != nil {
			ch.Hooknum, ch.Priority, ch.Type = hook, nftables.ChainPriorityRef(nftables.ChainPriority(prio)), typ
			accept := nftables.ChainPolicyAccept
			ch.Policy = &accept
		}
		ch = c.AddChain(ch)
		c.FlushChain(ch)
		f.chains[name] = ch
		return ch
	}
	services := chain("services", nil, 0, "")
	nodeports := chain("nodeports", nil, 0, "")
	rejects := chain("reject-check", nil, 0, "")
	clusterIPs := chain("cluster-ips-check", nil, 0, "")
	shortCircuit := chain("short-circuit", nil, 0, "")
	shortCircuitNP := chain("short-circuit-nodeport", nil, 0, "")
	firewall := chain("firewall-check", nil, 0, "")
	for _, name := range []string{setLBRestricted, setLBAllowed, setNoEndpoints, setNoEndpointsNodePort, setNoLocalEndpoints, setNoLocalEndpointsNodePort,
		setMasqExternal, setMasqNodePort, setMasqCluster, setHairpin, setNodeIPs, setClusterIPs, setShortCircuit, setShortCircuitNodePort} {
		k.addSet(f, name)
	}
	for _, name := range existing {
		c.FlushSet(k.addSet(f, name))
	}
	for name := range f.sets {
		c.FlushSet(f.sets[name])
	}
	jump := func(to string) expr.Any { return &expr.Verdict{Kind: expr.VerdictJump, Chain: to} }
	ctNew := []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
	for _, h := range []struct {
		name string
		hook *nftables.ChainHook
		prio int32
		typ  nftables.ChainType
		to   []string
	}{
		{"nat-prerouting", nftables.ChainHookPrerouting, -100, nftables.ChainTypeNAT, []string{"services"}},
		{"nat-output", nftables.ChainHookOutput, -100, nftables.ChainTypeNAT, []string{"services"}},
		// Before DNAT (priority -100), while the destination is still the
		// load balancer's address; on the output path too, so the node's
		// own traffic is held to loadBalancerSourceRanges (kube-proxy's
		// filter-prerouting-pre-dnat and filter-output-pre-dnat).
		{"filter-prerouting", nftables.ChainHookPrerouting, -110, nftables.ChainTypeFilter, []string{"firewall-check"}},
		{"filter-output-pre-dnat", nftables.ChainHookOutput, -110, nftables.ChainTypeFilter, []string{"firewall-check"}},
		// After DNAT: what is still addressed to a front-end had no
		// endpoint; what is still addressed to a ClusterIP or the Service
		// CIDRs is to a port or address no Service has.
		{"filter-input", nftables.ChainHookInput, -10, nftables.ChainTypeFilter, []string{"reject-check"}},
		{"filter-forward", nftables.ChainHookForward, -10, nftables.ChainTypeFilter, []string{"reject-check", "cluster-ips-check"}},
		{"filter-output", nftables.ChainHookOutput, -10, nftables.ChainTypeFilter, []string{"reject-check", "cluster-ips-check"}},
	} {
		ch := chain(h.name, h.hook, h.prio, h.typ)
		for _, to := range h.to {
			ex := []expr.Any{jump(to)}
			if h.typ == nftables.ChainTypeFilter {
				// Only new connections are judged.
				ex = append(slices.Clone(ctNew), ex...)
			}
			add(&nftables.Rule{Table: f.table, Chain: ch, Exprs: ex})
		}
	}
	post := chain("nat-postrouting", nftables.ChainHookPostrouting, 100, nftables.ChainTypeNAT)
	add(&nftables.Rule{Table: f.table, Chain: post, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(masqMark), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
		&expr.Masq{},
	}})
	add(&nftables.Rule{Table: f.table, Chain: post, Exprs: []expr.Any{
		saddr(f.is4, reg0), daddr(f.is4, reg0+addrLen(f.is4)/4), lookup(f.sets[setHairpin]), &expr.Masq{},
	}})

	// inCIDR matches a source (or destination) address in cidr.
	inCIDR := func(cidr netip.Prefix, src bool) []expr.Any {
		mask := make([]byte, addrLen(f.is4))
		for i := 0; i < cidr.Bits(); i++ {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		load := daddr(f.is4, 1)
		if src {
			load = saddr(f.is4, 1)
		}
		return []expr.Any{load,
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: addrLen(f.is4), Mask: mask, Xor: make([]byte, addrLen(f.is4))},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: cidr.Masked().Addr().AsSlice()},
		}
	}
	var clusterCIDRs []netip.Prefix
	for _, cidr := range k.cfg.Options.ClusterCIDRs {
		if cidr.Addr().Is4() == f.is4 {
			clusterCIDRs = append(clusterCIDRs, cidr)
		}
	}

	// Marks come first: DNAT ends the chain.
	ex, _ := frontEnd(f.is4, true)
	add(&nftables.Rule{Table: f.table, Chain: services, Exprs: append(append(ex, lookup(f.sets[setMasqExternal])), setMasqMark()...)})
	for _, cidr := range clusterCIDRs {
		rule := inCIDR(cidr, true)
		rule[len(rule)-1].(*expr.Cmp).Op = expr.CmpOpNeq
		ex, _ := frontEnd(f.is4, true)
		add(&nftables.Rule{Table: f.table, Chain: services, Exprs: append(append(append(rule, ex...), lookup(f.sets[setMasqCluster])), setMasqMark()...)})
	}
	add(&nftables.Rule{Table: f.table, Chain: services, Exprs: []expr.Any{
		daddr(f.is4, reg0), lookup(f.sets[setNodeIPs]), jump("nodeports"),
	}})
	// externalTrafficPolicy Local short-circuit: traffic from the node
	// itself ("fib saddr type local") or from its pods (the cluster CIDRs,
	// as kube-proxy's detect-local-mode ClusterCIDR) to a Local front-end
	// goes to the Cluster-policy endpoints.
	local := []expr.Any{
		&expr.Fib{Register: 1, FlagSADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}
	sources := [][]expr.Any{local}
	for _, cidr := range clusterCIDRs {
		sources = append(sources, inCIDR(cidr, true))
	}
	// The set first: the source test costs a route lookup.
	for _, src := range sources {
		ex, _ := frontEnd(f.is4, true)
		add(&nftables.Rule{Table: f.table, Chain: services, Exprs: append(append(append(ex, lookup(f.sets[setShortCircuit])), src...), jump("short-circuit"))})
	}
	ex, _ = frontEnd(f.is4, false)
	add(&nftables.Rule{Table: f.table, Chain: nodeports, Exprs: append(append(ex, lookup(f.sets[setMasqNodePort])), setMasqMark()...)})
	for _, src := range sources {
		ex, _ := frontEnd(f.is4, false)
		add(&nftables.Rule{Table: f.table, Chain: nodeports, Exprs: append(append(append(ex, lookup(f.sets[setShortCircuitNodePort])), src...), jump("short-circuit-nodeport"))})
	}
	// The node's own traffic to a Local front-end is masqueraded: its
	// source may be the front-end itself (kube-proxy's "masquerade local
	// traffic").
	for _, ch := range []*nftables.Chain{shortCircuit, shortCircuitNP} {
		add(&nftables.Rule{Table: f.table, Chain: ch, Exprs: append(slices.Clone(local), setMasqMark()...)})
	}

	// loadBalancerSourceRanges: "ip daddr . l4proto . th dport
	// @lb-restricted ip daddr . l4proto . th dport . ip saddr != @lb-allowed drop".
	ex, r := frontEnd(f.is4, true)
	ex = append(ex, lookup(f.sets[setLBRestricted]), saddr(f.is4, r),
		&expr.Lookup{SourceRegister: reg0, SetName: setLBAllowed, SetID: f.sets[setLBAllowed].ID, Invert: true},
		&expr.Verdict{Kind: expr.VerdictDrop})
	add(&nftables.Rule{Table: f.table, Chain: firewall, Exprs: ex})

	reject := &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3} // port unreachable
	if !f.is4 {
		reject = &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 4}
	}
	// filter applies verdict to front-ends in set (address . protocol .
	// port) and to NodePorts in nodePortSet reached on the node's addresses.
	filter := func(set, nodePortSet string, verdict expr.Any) {
		ex, _ := frontEnd(f.is4, true)
		add(&nftables.Rule{Table: f.table, Chain: rejects, Exprs: append(ex, lookup(f.sets[set]), verdict)})
		ex, _ = frontEnd(f.is4, false)
		add(&nftables.Rule{Table: f.table, Chain: rejects, Exprs: append([]expr.Any{
			daddr(f.is4, 1), &expr.Lookup{SourceRegister: 1, SetName: setNodeIPs, SetID: f.sets[setNodeIPs].ID},
		}, append(ex, lookup(f.sets[nodePortSet]), verdict)...)})
	}
	filter(setNoEndpoints, setNoEndpointsNodePort, reject)
	// Endpoints only on other nodes under a Local policy: dropped, like
	// kube-proxy's "drop" verdict in its no-endpoint maps.
	filter(setNoLocalEndpoints, setNoLocalEndpointsNodePort, &expr.Verdict{Kind: expr.VerdictDrop})
	// kube-proxy's cluster-ips-check: a ClusterIP on a port its Service
	// does not have is rejected; any other address of the Service CIDRs
	// (unallocated, or a deleted Service's) is dropped, so it never leaves
	// the node by its default route.
	add(&nftables.Rule{Table: f.table, Chain: clusterIPs, Exprs: []expr.Any{
		daddr(f.is4, reg0), lookup(f.sets[setClusterIPs]), reject,
	}})
	for _, cidr := range k.serviceCIDRs {
		if cidr.Addr().Is4() == f.is4 {
			add(&nftables.Rule{Table: f.table, Chain: clusterIPs, Exprs: append(inCIDR(cidr, false), &expr.Verdict{Kind: expr.VerdictDrop})})
		}
	}
	for _, name := range existing {
		k.ensureBucket(f, name)
	}
}
