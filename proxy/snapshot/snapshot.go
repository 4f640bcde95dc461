// Package snapshot is the node proxy's immutable view of the cluster: every
// Service port with the endpoints it should send traffic to, already reduced
// to what a data plane needs. Building it is pure (API objects in, values
// out) so backends never look at API objects and tests need no cluster.
package snapshot

import (
	"net/netip"
	"slices"

	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
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
// that decide whether it is used.
type Endpoint struct {
	Addr        netip.Addr `json:"addr"`
	Port        int32      `json:"port"`
	Ready       bool       `json:"ready"`
	Serving     bool       `json:"serving"`
	Terminating bool       `json:"terminating"`
	// Local is true when the endpoint runs on this proxy's node.
	Local bool `json:"local"`
}

// AddrPort is the endpoint's destination.
func (e Endpoint) AddrPort() netip.AddrPort { return netip.AddrPortFrom(e.Addr, uint16(e.Port)) }

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
func (sp *ServicePort) ClusterEndpoints() []Endpoint { return pick(sp.Endpoints, sp.InternalLocal) }

// ExternalEndpoints are the endpoints for NodePort, externalIP and load
// balancer traffic, per externalTrafficPolicy.
func (sp *ServicePort) ExternalEndpoints() []Endpoint { return pick(sp.Endpoints, sp.ExternalLocal) }

// UsableEndpoints are the endpoints some traffic could use, on any node,
// regardless of traffic policy. A Service port with usable endpoints but
// none for a Local policy drops the traffic that policy governs; one
// without any rejects it.
func (sp *ServicePort) UsableEndpoints() []Endpoint { return pick(sp.Endpoints, false) }

// LocalReadyCount is the number of local endpoints a healthCheckNodePort
// reports: those external traffic would use.
func (sp *ServicePort) LocalReadyCount() int {
	if !sp.ExternalLocal {
		return 0
	}
	return len(sp.ExternalEndpoints())
}

// pick applies upstream's preference: ready endpoints; if there are none,
// serving-and-terminating ones (so connections drain during a rollout
// instead of failing); if none, nothing. localOnly first restricts the pool
// to this node's endpoints.
func pick(all []Endpoint, localOnly bool) []Endpoint {
	var ready, terminating []Endpoint
	for _, e := range all {
		if localOnly && !e.Local {
			continue
		}
		switch {
		case e.Ready:
			ready = append(ready, e)
		case e.Serving && e.Terminating:
			terminating = append(terminating, e)
		}
	}
	if len(ready) > 0 {
		return ready
	}
	return terminating
}

// Snapshot is the immutable state of every Service port at one moment.
// Backends may keep a Snapshot; the tracker never mutates one it handed out.
type Snapshot struct {
	// Ports maps each Service to its ports.
	Ports map[ServiceKey][]*ServicePort
	// Generation increases with every snapshot.
	Generation uint64
}

// Node is what the proxy knows of its own node.
type Node struct {
	Name string
	IPs  []netip.Addr
}

// BuildService reduces a Service and its EndpointSlices to ServicePorts for
// the proxy on node. It returns nil for Services the proxy does not program
// (headless, ExternalName, or without a ClusterIP).
func BuildService(svc *v1.Service, slicesOf []*discoveryv1.EndpointSlice, node string) []*ServicePort {
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
			if a, err := netip.ParseAddr(ing.IP); err == nil {
				lbs = append(lbs, a.Unmap())
			}
		}
	}
	var ranges []netip.Prefix
	for _, s := range svc.Spec.LoadBalancerSourceRanges {
		if p, err := netip.ParsePrefix(s); err == nil {
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
func endpointsFor(slicesOf []*discoveryv1.EndpointSlice, name string, proto v1.Protocol, cips []netip.Addr, node string) []Endpoint {
	families := map[bool]bool{}
	for _, a := range cips {
		families[a.Is4()] = true
	}
	seen := map[netip.AddrPort]bool{}
	var out []Endpoint
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
			e := Endpoint{
				Addr:        a,
				Port:        port,
				Ready:       c.Ready == nil || *c.Ready,
				Serving:     c.Serving == nil && (c.Ready == nil || *c.Ready) || c.Serving != nil && *c.Serving,
				Terminating: c.Terminating != nil && *c.Terminating,
				Local:       ep.NodeName != nil && *ep.NodeName == node && node != "",
			}
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b Endpoint) int {
		if c := a.Addr.Compare(b.Addr); c != 0 {
			return c
		}
		return int(a.Port) - int(b.Port)
	})
	return out
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
