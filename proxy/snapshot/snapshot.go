// Package snapshot is the node proxy's immutable view of the cluster: every
// Service port with the endpoints it should send traffic to, already reduced
// to what a data plane needs. Building it is pure (API objects in, values
// out) so backends never look at API objects and tests need no cluster.
package snapshot

import (
	"hash/maphash"
	"iter"
	"net/netip"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/switchboard/switchboard/proxydebug"
)

// ServiceKey names a Service (namespace/name).
type ServiceKey struct {
	Namespace, Name string
}

func (k ServiceKey) String() string { return k.Namespace + "/" + k.Name }

// PortKey names one port of a Service; Port is the port's name ("" for an
// unnamed single port) and Protocol keeps same-named TCP/UDP ports apart.
type PortKey struct {
	ServiceKey
	Port     string
	Protocol v1.Protocol
}

func (k PortKey) String() string {
	return k.ServiceKey.String() + ":" + k.Port + "/" + string(k.Protocol)
}

// Endpoint is one backend address for a Service port, with the conditions
// that decide whether it is used (OutOfTopology: kube-proxy's
// topologyModeFromHints / availableForTopology put it in another zone or
// node). It is the debug wire type itself, so what the proxy programs and
// what doctor reads are one definition.
type Endpoint = proxydebug.Endpoint

// ServicePort is everything a backend needs to program one Service port.
type ServicePort struct {
	Key      PortKey
	Protocol v1.Protocol
	Port     int32
	NodePort int32
	// ClusterIPs holds one address per IP family the Service has.
	ClusterIPs []netip.Addr
	// ExternalIPs and LoadBalancerIPs are front-ends for external traffic.
	ExternalIPs              []netip.Addr
	LoadBalancerIPs          []netip.Addr
	LoadBalancerSourceRanges []netip.Prefix
	// InternalLocal and ExternalLocal are internalTrafficPolicy and
	// externalTrafficPolicy set to Local.
	InternalLocal       bool
	ExternalLocal       bool
	HealthCheckNodePort int32
	// AffinityTimeout is non-zero for sessionAffinity ClientIP.
	AffinityTimeout time.Duration
	// Endpoints are all endpoints from all of the Service's slices for this
	// port, sorted by address; use ClusterEndpoints/ExternalEndpoints to pick.
	Endpoints []Endpoint
}

// HasExternal reports whether the port has any front-end reachable from
// outside the cluster network.
func (sp *ServicePort) HasExternal() bool {
	return sp.NodePort != 0 || len(sp.ExternalIPs) > 0 || len(sp.LoadBalancerIPs) > 0
}

// ClusterEndpoints are the endpoints for traffic to the ClusterIP, per
// internalTrafficPolicy and upstream's order of preference.
func (sp *ServicePort) ClusterEndpoints() []Endpoint {
	if sp.InternalLocal {
		return sp.LocalPolicyEndpoints()
	}
	return sp.ClusterPolicyEndpoints()
}

// ExternalEndpoints are the endpoints for NodePort, externalIP and load
// balancer traffic, per externalTrafficPolicy.
func (sp *ServicePort) ExternalEndpoints() []Endpoint {
	if sp.ExternalLocal {
		return sp.LocalPolicyEndpoints()
	}
	return sp.ClusterPolicyEndpoints()
}

// ClusterPolicyEndpoints are the endpoints a Cluster traffic policy uses
// (kube-proxy's clusterEndpoints): the ready ones the topology hints give
// this node, or if no endpoint is ready anywhere the serving-and-
// terminating ones. Traffic from pods and from the node itself to an
// externalTrafficPolicy=Local front-end uses them too (kube-proxy's
// short-circuit).
func (sp *ServicePort) ClusterPolicyEndpoints() []Endpoint {
	return pick(sp.Endpoints, func(e Endpoint) bool { return !e.OutOfTopology }, nil)
}

// LocalPolicyEndpoints are the endpoints a Local traffic policy uses: this
// node's ready endpoints, or if none is ready its serving-and-terminating
// ones. Topology hints do not apply.
func (sp *ServicePort) LocalPolicyEndpoints() []Endpoint {
	local := func(e Endpoint) bool { return e.Local }
	return pick(sp.Endpoints, local, local)
}

// UsableEndpoints are the endpoints some traffic could use, on any node,
// regardless of traffic policy. A Service port with usable endpoints but
// none for a Local policy drops the traffic that policy governs; one
// without any rejects it.
func (sp *ServicePort) UsableEndpoints() []Endpoint { return pick(sp.Endpoints, nil, nil) }

// LocalReadyEndpoints is what a Service's healthCheckNodePort reports on an
// address of family is4, as kube-proxy's health server does: the number of
// distinct addresses of ready endpoints of that family on this node, over
// all of the Service's ports. Serving-but-terminating endpoints do not
// count, so load balancers drain a node whose pods are going away.
func LocalReadyEndpoints(ports []*ServicePort, is4 bool) int {
	seen := map[netip.Addr]bool{}
	for _, sp := range ports {
		for _, e := range sp.Endpoints {
			if e.Local && e.Ready && e.Addr.Is4() == is4 {
				seen[e.Addr] = true
			}
		}
	}
	return len(seen)
}

// pick applies upstream's preference: ready endpoints that readyOK
// accepts; if there are none, serving-and-terminating ones that
// terminatingOK accepts (so connections drain during a rollout instead of
// failing); if none, nothing. A nil filter accepts every endpoint.
func pick(all []Endpoint, readyOK, terminatingOK func(Endpoint) bool) []Endpoint {
	var ready, terminating []Endpoint
	for _, e := range all {
		switch {
		case e.Ready:
			if readyOK == nil || readyOK(e) {
				ready = append(ready, e)
			}
		case e.Serving && e.Terminating:
			if terminatingOK == nil || terminatingOK(e) {
				terminating = append(terminating, e)
			}
		}
	}
	if len(ready) > 0 {
		return ready
	}
	return terminating
}

// Snapshot is the immutable state of every Service port at one moment.
// Backends may keep a Snapshot; nobody mutates one that was handed out.
//
// It is a persistent map: With copies only the shards a change touches (and
// the array of shard pointers), so the next snapshot costs what changed,
// not what the cluster holds. At 50,000 Services a shard holds about 50.
type Snapshot struct {
	shards *[shardCount]map[ServiceKey][]*ServicePort
	// services, ports and endpoints are kept up to date by With, for
	// metrics that must not walk the cluster.
	services, ports, endpoints int
	// Generation increases with every snapshot.
	Generation uint64
	// ServiceCIDRs are the cluster's Service CIDRs (its ServiceCIDR
	// objects), sorted: new connections to an address in them that no
	// Service holds are dropped.
	ServiceCIDRs []netip.Prefix
}

// shardCount trades the fixed cost of a snapshot (copying the shard
// pointers: 8 KiB) against the cost of copying one shard per changed
// Service.
const shardCount = 1024

var shardSeed = maphash.MakeSeed()

func shardOf(k ServiceKey) int {
	var h maphash.Hash
	h.SetSeed(shardSeed)
	h.WriteString(k.Namespace)
	h.WriteByte('/')
	h.WriteString(k.Name)
	return int(h.Sum64() % shardCount)
}

// New returns a snapshot holding ports (Services without ports are left
// out); for tests and benchmarks, which build a world in one go.
func New(ports map[ServiceKey][]*ServicePort) *Snapshot {
	return (&Snapshot{}).With(ports)
}

// With returns a snapshot in which each key of changes maps to its new
// ports; a key with no ports is removed. s itself is not modified.
func (s *Snapshot) With(changes map[ServiceKey][]*ServicePort) *Snapshot {
	next := &Snapshot{shards: new([shardCount]map[ServiceKey][]*ServicePort), services: s.services,
		ports: s.ports, endpoints: s.endpoints, Generation: s.Generation + 1, ServiceCIDRs: s.ServiceCIDRs}
	if s.shards != nil {
		*next.shards = *s.shards
	}
	var copied [shardCount]bool
	for k, ports := range changes {
		i := shardOf(k)
		m := next.shards[i]
		if !copied[i] {
			copied[i] = true
			c := make(map[ServiceKey][]*ServicePort, len(m)+1)
			for k, v := range m {
				c[k] = v
			}
			next.shards[i], m = c, c
		}
		if old, ok := m[k]; ok {
			next.services--
			next.ports -= len(old)
			next.endpoints -= countEndpoints(old)
		}
		if len(ports) == 0 {
			delete(m, k)
			continue
		}
		m[k] = ports
		next.services++
		next.ports += len(ports)
		next.endpoints += countEndpoints(ports)
	}
	return next
}

func countEndpoints(ports []*ServicePort) int {
	n := 0
	for _, p := range ports {
		n += len(p.Endpoints)
	}
	return n
}

// Get returns the ports of one Service (nil if it has none).
func (s *Snapshot) Get(k ServiceKey) []*ServicePort {
	if s == nil || s.shards == nil {
		return nil
	}
	return s.shards[shardOf(k)][k]
}

// Len is the number of Services with ports.
func (s *Snapshot) Len() int {
	if s == nil {
		return 0
	}
	return s.services
}

// Counts returns the Services, Service ports and endpoints the snapshot
// holds, without walking it.
func (s *Snapshot) Counts() (services, ports, endpoints int) {
	if s == nil {
		return 0, 0, 0
	}
	return s.services, s.ports, s.endpoints
}

// All iterates over every Service and its ports, in no particular order.
func (s *Snapshot) All() iter.Seq2[ServiceKey, []*ServicePort] {
	return func(yield func(ServiceKey, []*ServicePort) bool) {
		if s == nil || s.shards == nil {
			return
		}
		for _, m := range s.shards {
			for k, v := range m {
				if !yield(k, v) {
					return
				}
			}
		}
	}
}

// Changes says what a sync must program: everything (Full), or the
// Services in Keys, whose ports differ from what the previous sync of the
// same backend was given.
type Changes struct {
	Full bool
	Keys []ServiceKey
}

// Node is what building a Service needs to know of the proxy's own node.
type Node struct {
	// Name tells this node's endpoints (and node hints) from others.
	Name string
	// Zone is the node's topology.kubernetes.io/zone label, for zone
	// hints; "" when the node has none.
	Zone string
}

// BuildService reduces a Service and its EndpointSlices to ServicePorts for
// the proxy on node. It returns nil for Services the proxy does not program
// (headless, ExternalName, or without a ClusterIP).
func BuildService(svc *v1.Service, slicesOf []*discoveryv1.EndpointSlice, node Node) []*ServicePort {
	if svc == nil || svc.Spec.Type == v1.ServiceTypeExternalName {
		return nil
	}
	var cips []netip.Addr
	ipsOf := svc.Spec.ClusterIPs
	if len(ipsOf) == 0 && svc.Spec.ClusterIP != "" {
		ipsOf = []string{svc.Spec.ClusterIP}
	}
	for _, s := range ipsOf {
		if a, err := netip.ParseAddr(s); err == nil {
			cips = append(cips, a.Unmap())
		}
	}
	if len(cips) == 0 {
		return nil
	}
	key := ServiceKey{svc.Namespace, svc.Name}
	var ext, lbs []netip.Addr
	for _, s := range svc.Spec.ExternalIPs {
		if a, err := netip.ParseAddr(s); err == nil {
			ext = append(ext, a.Unmap())
		}
	}
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			// ipMode Proxy: the load balancer proxies to the nodes itself,
			// so its address must not be captured here or traffic from
			// inside the cluster would skip it (kube-proxy's IsVIPMode;
			// the LoadBalancerIPMode gate is GA and gone in 1.36).
			if ing.IPMode != nil && *ing.IPMode != v1.LoadBalancerIPModeVIP {
				continue
			}
			if a, err := netip.ParseAddr(ing.IP); err == nil {
				lbs = append(lbs, a.Unmap())
			}
		}
	}
	var ranges []netip.Prefix
	for _, s := range svc.Spec.LoadBalancerSourceRanges {
		// Validation lets whitespace padding through; kube-proxy trims it.
		if p, err := netip.ParsePrefix(strings.TrimSpace(s)); err == nil {
			ranges = append(ranges, p.Masked())
		}
	}
	var affinity time.Duration
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		affinity = 10800 * time.Second
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			affinity = time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
		}
	}
	var out []*ServicePort
	for _, p := range svc.Spec.Ports {
		proto := p.Protocol
		if proto == "" {
			proto = v1.ProtocolTCP
		}
		sp := &ServicePort{
			Key:                      PortKey{key, p.Name, proto},
			Protocol:                 proto,
			Port:                     p.Port,
			ClusterIPs:               cips,
			ExternalIPs:              ext,
			LoadBalancerIPs:          lbs,
			LoadBalancerSourceRanges: ranges,
			InternalLocal:            svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal,
			AffinityTimeout:          affinity,
		}
		if svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer {
			sp.NodePort = p.NodePort
		}
		if sp.HasExternal() {
			sp.ExternalLocal = svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
			if sp.ExternalLocal {
				sp.HealthCheckNodePort = svc.Spec.HealthCheckNodePort
			}
		}
		sp.Endpoints = endpointsFor(slicesOf, p.Name, proto, cips, node)
		out = append(out, sp)
	}
	return out
}

// endpointsFor collects the endpoints of the slices' port named name (the
// slice carries the resolved targetPort number, which is how named target
// ports work), deduplicated by address and limited to the Service's
// families.
func endpointsFor(slicesOf []*discoveryv1.EndpointSlice, name string, proto v1.Protocol, cips []netip.Addr, node Node) []Endpoint {
	families := map[bool]bool{}
	for _, a := range cips {
		families[a.Is4()] = true
	}
	seen := map[netip.AddrPort]bool{}
	var out []Endpoint
	// hints[i] are out[i]'s topology hints.
	var hints []*discoveryv1.EndpointHints
	for _, sl := range slicesOf {
		if sl.AddressType != discoveryv1.AddressTypeIPv4 && sl.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		var port int32 = -1
		for _, sp := range sl.Ports {
			n, pr := "", v1.ProtocolTCP
			if sp.Name != nil {
				n = *sp.Name
			}
			if sp.Protocol != nil {
				pr = *sp.Protocol
			}
			if n == name && pr == proto && sp.Port != nil {
				port = *sp.Port
			}
		}
		if port <= 0 {
			continue
		}
		for _, ep := range sl.Endpoints {
			if len(ep.Addresses) == 0 {
				continue
			}
			a, err := netip.ParseAddr(ep.Addresses[0])
			if err != nil || !families[a.Unmap().Is4()] {
				continue
			}
			a = a.Unmap()
			ap := netip.AddrPortFrom(a, uint16(port))
			if seen[ap] {
				continue
			}
			seen[ap] = true
			c := ep.Conditions
			// Unset conditions read as the API documents them: ready and
			// serving true, terminating false (as kube-proxy reads them).
			e := Endpoint{
				Addr:        a,
				Port:        port,
				Ready:       c.Ready == nil || *c.Ready,
				Serving:     c.Serving == nil || *c.Serving,
				Terminating: c.Terminating != nil && *c.Terminating,
				Local:       ep.NodeName != nil && *ep.NodeName == node.Name && node.Name != "",
			}
			out = append(out, e)
			hints = append(hints, ep.Hints)
		}
	}
	for _, is4 := range []bool{true, false} {
		applyTopology(out, hints, is4, node)
	}
	slices.SortFunc(out, func(a, b Endpoint) int {
		if c := a.Addr.Compare(b.Addr); c != 0 {
			return c
		}
		return int(a.Port) - int(b.Port)
	})
	return out
}

// applyTopology marks the endpoints of one family that topology hints keep
// from this node's Cluster-policy traffic, as kube-proxy's
// topologyModeFromHints and availableForTopology do per Service port and
// family: if every ready endpoint has a node hint and one is for this
// node, only those hinted for it (PreferSameNode; the
// PreferSameTrafficDistribution gate is GA and locked on in 1.36);
// otherwise if every ready endpoint has a zone hint and one is for this
// node's zone, only those (PreferSameZone); otherwise all of them.
func applyTopology(eps []Endpoint, hints []*discoveryv1.EndpointHints, is4 bool, node Node) {
	forNode := func(h *discoveryv1.EndpointHints) bool {
		return h != nil && slices.ContainsFunc(h.ForNodes, func(n discoveryv1.ForNode) bool { return n.Name == node.Name })
	}
	forZone := func(h *discoveryv1.EndpointHints) bool {
		return h != nil && slices.ContainsFunc(h.ForZones, func(z discoveryv1.ForZone) bool { return z.Name == node.Zone })
	}
	anyReady, allNode, allZone, someNode, someZone := false, true, true, false, false
	for i, e := range eps {
		if e.Addr.Is4() != is4 || !e.Ready {
			continue
		}
		anyReady = true
		h := hints[i]
		if h == nil || len(h.ForNodes) == 0 {
			allNode = false
		} else if forNode(h) {
			someNode = true
		}
		if h == nil || len(h.ForZones) == 0 {
			allZone = false
		} else if forZone(h) {
			someZone = true
		}
	}
	var keep func(*discoveryv1.EndpointHints) bool
	switch {
	case !anyReady:
		return
	case allNode && someNode:
		keep = forNode
	case allZone && someZone:
		keep = forZone
	default:
		return
	}
	for i := range eps {
		if eps[i].Addr.Is4() == is4 && !keep(hints[i]) {
			eps[i].OutOfTopology = true
		}
	}
}

// LastChangeTriggerTime is the newest endpoints.kubernetes.io/last-change-trigger-time
// of the slices, for network-programming latency; zero when absent.
func LastChangeTriggerTime(slicesOf []*discoveryv1.EndpointSlice) time.Time {
	var t time.Time
	for _, sl := range slicesOf {
		s, ok := sl.Annotations[v1.EndpointsLastChangeTriggerTime]
		if !ok {
			continue
		}
		if v, err := time.Parse(time.RFC3339Nano, s); err == nil && v.After(t) {
			t = v
		}
	}
	return t
}
