package nftables

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// sessionAffinity ClientIP, as kube-proxy's nftables mode does it: each
// endpoint of an affinity Service port has its own dynamic set of clients
// (aff-ID) and its own chain (aff-ep-ID) that records the client in that
// set and DNATs in one rule, so a client is only ever recorded with the
// translation it got, and an endpoint's clients go with its set, in the
// transaction that removes the endpoint. A second chain (aff-chk-ID)
// sends a client already in the set back to the endpoint.
//
// Per bucket size k, the chain affinity-balance-k first jumps to the
// check chain of each slot S of the front-end (verdict maps affchk-k-S,
// "front : jump aff-chk-ID"), then balances with "front . numgen random
// mod k" over affsvc-k ("front . slot : goto aff-ep-ID"). The services
// chain sends a front-end there when affchk-k-0 has it. Adding or
// removing one endpoint writes its set, its two chains and its two
// elements, nothing of the other endpoints. NodePorts and the
// short-circuit paths have the same (affinityKinds), so a client sticks
// to its endpoint through every front-end of the Service port, as with
// kube-proxy, whose Service port's chain every path goes through; another
// port of the Service has endpoints of its own (endpointID).
const (
	setAffinityEndpointPrefix = "aff-"
	affinityEndpointChain     = "aff-ep-"
	affinityCheckChain        = "aff-chk-"
)

// affinityKind is one path affinity front-ends are balanced on: the
// prefixes of its maps (balance: "front . slot : goto aff-ep-ID"; check,
// one per slot: "front : jump aff-chk-ID"), of its chain that balances
// per bucket size, the chain that sends front-ends there, and whether a
// front-end is "address . protocol . port" (else "protocol . port", a
// NodePort).
type affinityKind struct {
	balance, check, chain, from string
	withAddr                    bool
}

// affinityKinds are the paths as the plain buckets have them: svc-k from
// services, np-k from nodeports, scx-k and scnp-k from the short-circuit
// chains of externalTrafficPolicy Local.
var affinityKinds = [...]affinityKind{
	{setAffinityServicePrefix, setAffinityCheckPrefix, "affinity-balance-", "services", true},
	{setAffinityNodePortPrefix, setAffinityNodePortCheckPrefix, "affinity-np-balance-", "nodeports", false},
	{setAffinityShortCircuitPrefix, setAffinityShortCircuitCheckPrefix, "affinity-scx-balance-", "short-circuit", true},
	{setAffinityShortCircuitNodePortPrefix, setAffinityShortCircuitNodePortCheckPrefix, "affinity-scnp-balance-", "short-circuit-nodeport", false},
}

// affinityKindOf returns the kind whose balance or check map set is.
func affinityKindOf(set string) (affinityKind, bool) {
	// Every element is encoded through here: the other sets go by one
	// comparison.
	if !strings.HasPrefix(set, "aff") {
		return affinityKind{}, false
	}
	for _, k := range affinityKinds {
		if strings.HasPrefix(set, k.balance) || strings.HasPrefix(set, k.check) {
			return k, true
		}
	}
	return affinityKind{}, false
}

// elemSet is the set an element is in: an affchk-k (or other check map)
// element with slot S is in affchk-k-S, keyed by the front-end alone, so
// the rules need no constant slot in their keys (nft 1.0.6 prints those as
// "[invalid type]").
func elemSet(e Elem) string {
	if isAffinityCheck(e.Set) {
		return e.Set + "-" + strconv.Itoa(e.Slot)
	}
	return e.Set
}

// isAffinityBalance reports whether set is a balance map (affsvc-k,
// affnp-k, ...), whose elements go to an affinity endpoint's chain.
func isAffinityBalance(set string) bool {
	k, ok := affinityKindOf(set)
	return ok && strings.HasPrefix(set, k.balance)
}

// isAffinityCheck reports whether set is a check map (affchk-k, ...) or
// one of its per-slot sets.
func isAffinityCheck(set string) bool {
	k, ok := affinityKindOf(set)
	return ok && strings.HasPrefix(set, k.check)
}

// legacyAffinitySet is the one dynamic affinity map of earlier versions,
// filled by the chain legacyAffinityChains[2] from hooks after DNAT.
const legacyAffinitySet = "affinity"

var legacyAffinityChains = [...]string{"affinity-prerouting", "affinity-output", "affinity-record"}

// deleteLegacyAffinity queues deleting what an earlier version recorded
// affinity with, when adopting its table: its hooks would otherwise keep
// recording clients nothing reads. The skeleton has flushed the services
// chain, whose lookup used the map.
func (k *Tables) deleteLegacyAffinity(f *family) {
	for _, name := range legacyAffinityChains {
		k.conn.DelChain(&nftables.Chain{Name: name, Table: f.table})
	}
	k.conn.DelSet(&nftables.Set{Name: legacyAffinitySet, Table: f.table})
}

// endpointID names an affinity endpoint's set and chains: its Service
// port (the ClusterIP e.Addr2, the owner, with the port's name and
// protocol), endpoint and timeout (a new timeout makes new objects, as the
// set's timeout is part of its definition). Every front-end of the port
// (ClusterIP, external and load balancer IPs, NodePort) shares them, so a
// client sticks to its endpoint whichever it uses, as with kube-proxy;
// another port of the Service has its own even with the same target, as
// kube-proxy keeps one client list per Service port and endpoint.
func endpointID(e Elem) string {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s %s %s %s %d", e.Addr2, e.PortName, e.Proto, e.To, e.Timeout)
	return fmt.Sprintf("%016x", h.Sum64())
}

// affinityEndpointChanges returns the affinity endpoints whose elements
// are added and the IDs of those whose elements all go: deleted, and
// wanted by no element of now (the changed Services' elements, which hold
// every front-end sharing the endpoint). An endpoint that only changes
// slot (its front-end changed bucket), or keeps another front-end, is not
// gone: its clients stay.
func affinityEndpointChanges(add, del, now []Elem) (born []Elem, gone []string) {
	added := map[string]bool{}
	for _, e := range add {
		if isAffinityBalance(e.Set) {
			id := endpointID(e)
			added[id] = true
			born = append(born, e)
		}
	}
	wanted := map[string]bool{}
	for _, e := range now {
		if isAffinityBalance(e.Set) {
			wanted[endpointID(e)] = true
		}
	}
	for _, e := range del {
		if isAffinityBalance(e.Set) {
			if id := endpointID(e); !added[id] && !wanted[id] {
				gone = append(gone, id)
				wanted[id] = true // once
			}
		}
	}
	return born, gone
}

// addAffinityEndpoint queues the set and chains of the affinity endpoint
// of e (an affsvc-k element). An existing set is kept with its clients;
// the chains are rewritten.
func (k *Tables) addAffinityEndpoint(f *family, e Elem) {
	id := endpointID(e)
	timeout := time.Duration(e.Timeout) * time.Second
	set := &nftables.Set{Table: f.table, Name: setAffinityEndpointPrefix + id, KeyType: addrType(f.is4),
		Dynamic: true, HasTimeout: true, Timeout: timeout}
	if err := k.conn.AddSet(set, nil); err != nil {
		// AddSet only fails on invalid definitions, which are ours.
		panic(fmt.Sprintf("define set %s: %v", set.Name, err))
	}
	f.endpoints[id] = set
	chain := func(name string) *nftables.Chain {
		ch := k.conn.AddChain(&nftables.Chain{Name: name, Table: f.table})
		k.conn.FlushChain(ch)
		return ch
	}
	// "update @aff-ID { ip saddr } dnat to E": the record and the
	// translation are one rule.
	ep := chain(affinityEndpointChain + id)
	k.conn.AddRule(&nftables.Rule{Table: f.table, Chain: ep, Exprs: []expr.Any{
		saddr(f.is4, 1),
		&expr.Dynset{SrcRegKey: 1, SetName: set.Name, SetID: set.ID, Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: timeout},
		&expr.Immediate{Register: reg0, Data: e.To.Addr().AsSlice()},
		&expr.Immediate{Register: reg0 + addrLen(f.is4)/4, Data: binary.BigEndian.AppendUint16(nil, e.To.Port())},
		natTo(f.is4, reg0),
	}})
	// "ip saddr @aff-ID goto aff-ep-ID".
	chk := chain(affinityCheckChain + id)
	k.conn.AddRule(&nftables.Rule{Table: f.table, Chain: chk, Exprs: []expr.Any{
		saddr(f.is4, 1),
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		&expr.Verdict{Kind: expr.VerdictGoto, Chain: ep.Name},
	}})
}

// deleteAffinityEndpoint queues deleting an affinity endpoint's chains
// and set (with its clients). The elements that jumped to the chains must
// be deleted earlier in the transaction.
func (k *Tables) deleteAffinityEndpoint(f *family, id string) {
	set := f.endpoints[id]
	if set == nil {
		return
	}
	k.conn.DelChain(&nftables.Chain{Name: affinityCheckChain + id, Table: f.table})
	k.conn.DelChain(&nftables.Chain{Name: affinityEndpointChain + id, Table: f.table})
	k.conn.DelSet(set)
	delete(f.endpoints, id)
}

// ensureAffinityBucket creates, for front-ends of kind with slots
// endpoints, its balance map and check maps, its balance chain and the
// rule of kind.from that sends those front-ends there (for the services
// chain: affsvc-k, affchk-k-S, affinity-balance-k). Kept once made, as the
// other buckets.
func (k *Tables) ensureAffinityBucket(f *family, slots uint32, kind affinityKind) {
	withAddr := kind.withAddr
	balance, check := bucket(kind.balance, int(slots)), bucket(kind.check, int(slots))
	bs := k.addSet(f, balance)
	f.buckets[balance], f.buckets[check] = true, true
	ch := k.conn.AddChain(&nftables.Chain{Name: kind.chain + strconv.Itoa(int(slots)), Table: f.table})
	k.conn.FlushChain(ch)
	f.chains[ch.Name] = ch
	// "ip daddr . meta l4proto . th dport vmap @affchk-k-S" per slot: a
	// client known to the endpoint in slot S goes back to it.
	var first *nftables.Set
	for s := range slots {
		name := elemSet(Elem{Set: check, Slot: int(s)})
		cs := k.addSet(f, name)
		f.buckets[name] = true
		if s == 0 {
			first = cs
		}
		ex, _ := frontEnd(f.is4, withAddr)
		ex = append(ex, &expr.Lookup{SourceRegister: reg0, DestRegister: 0, IsDestRegSet: true, SetName: cs.Name, SetID: cs.ID})
		k.conn.AddRule(&nftables.Rule{Table: f.table, Chain: ch, Exprs: ex})
	}
	// "ip daddr . meta l4proto . th dport . numgen random mod k vmap
	// @affsvc-k": a new client is balanced to an endpoint chain, which
	// records it.
	ex, r := frontEnd(f.is4, withAddr)
	ex = append(ex, &expr.Numgen{Register: r, Modulus: slots, Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: reg0, DestRegister: 0, IsDestRegSet: true, SetName: balance, SetID: bs.ID})
	k.conn.AddRule(&nftables.Rule{Table: f.table, Chain: ch, Exprs: ex})
	// "ip daddr . meta l4proto . th dport @affchk-k-0 goto
	// affinity-balance-k".
	ex, _ = frontEnd(f.is4, withAddr)
	ex = append(ex, &expr.Lookup{SourceRegister: reg0, SetName: first.Name, SetID: first.ID},
		&expr.Verdict{Kind: expr.VerdictGoto, Chain: ch.Name})
	k.conn.AddRule(&nftables.Rule{Table: f.table, Chain: f.chains[kind.from], Exprs: ex})
}
