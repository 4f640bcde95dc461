package nftables

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"

	"github.com/switchboard/switchboard/proxy/snapshot"
)

func ep(addr string, port int32, ready, serving, terminating, local bool) snapshot.Endpoint {
	return snapshot.Endpoint{Addr: netip.MustParseAddr(addr), Port: port, Ready: ready, Serving: serving, Terminating: terminating, Local: local}
}

func ready(addr string, port int32) snapshot.Endpoint {
	return ep(addr, port, true, true, false, false)
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func TestTranslate(t *testing.T) {
	base := func(mod func(*snapshot.ServicePort)) *snapshot.ServicePort {
		sp := &snapshot.ServicePort{Protocol: v1.ProtocolTCP, Port: 80, ClusterIPs: addrs("10.96.0.10")}
		mod(sp)
		return sp
	}
	cases := []struct {
		name string
		sp   *snapshot.ServicePort
		is4  bool
		opts Options
		want []string
		// withClusterIPs keeps the cluster-ips elements (every case has
		// them; most leave them out of want).
		withClusterIPs bool
		// also is another port of sp's Service, translated after it.
		also *snapshot.ServicePort
	}{{
		name: "every ClusterIP is listed, whatever its endpoints, for cluster-ips-check",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.ClusterIPs = addrs("10.96.0.10", "fd00:96::10")
		}),
		is4:            true,
		withClusterIPs: true,
		want:           []string{"cluster-ips 10.96.0.10", "no-endpoints 10.96.0.10 . tcp . 80"},
	}, {
		name: "ClusterIP with two ready endpoints fills bucket 2, numeric targetPort",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.Endpoints = []snapshot.Endpoint{ready("10.244.1.2", 8080), ready("10.244.2.2", 8080)}
		}),
		is4:  true,
		want: []string{"svc-2 10.96.0.10 . tcp . 80 . 0 : 10.244.1.2 . 8080", "svc-2 10.96.0.10 . tcp . 80 . 1 : 10.244.2.2 . 8080"},
	}, {
		name: "UDP and SCTP ports",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.Protocol, sp.Port = v1.ProtocolUDP, 53
			sp.Endpoints = []snapshot.Endpoint{ready("10.244.1.2", 5353)}
		}),
		is4:  true,
		want: []string{"svc-1 10.96.0.10 . udp . 53 . 0 : 10.244.1.2 . 5353"},
	}, {
		name: "no endpoints: rejected",
		sp:   base(func(*snapshot.ServicePort) {}),
		is4:  true,
		want: []string{"no-endpoints 10.96.0.10 . tcp . 80"},
	}, {
		name: "unready endpoints only: rejected",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.Endpoints = []snapshot.Endpoint{ep("10.244.1.2", 80, false, false, false, false)}
		}),
		is4:  true,
		want: []string{"no-endpoints 10.96.0.10 . tcp . 80"},
	}, {
		name: "ready preferred over serving-terminating",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.Endpoints = []snapshot.Endpoint{ep("10.244.1.2", 80, false, true, true, false), ready("10.244.1.3", 80)}
		}),
		is4:  true,
		want: []string{"svc-1 10.96.0.10 . tcp . 80 . 0 : 10.244.1.3 . 80"},
	}, {
		name: "terminating fallback when none is ready",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.Endpoints = []snapshot.Endpoint{ep("10.244.1.2", 80, false, true, true, false), ep("10.244.1.3", 80, false, false, true, false)}
		}),
		is4:  true,
		want: []string{"svc-1 10.96.0.10 . tcp . 80 . 0 : 10.244.1.2 . 80"},
	}, {
		name: "internalTrafficPolicy Local uses local endpoints only; local endpoint gets a hairpin entry",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.InternalLocal = true
			sp.Endpoints = []snapshot.Endpoint{ep("10.244.1.2", 80, true, true, false, true), ready("10.244.2.2", 80)}
		}),
		is4:  true,
		want: []string{"svc-1 10.96.0.10 . tcp . 80 . 0 : 10.244.1.2 . 80", "hairpin 10.244.1.2 . 10.244.1.2"},
	}, {
		name: "internalTrafficPolicy Local without local endpoints, endpoints elsewhere: dropped, as kube-proxy does",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.InternalLocal = true
			sp.Endpoints = []snapshot.Endpoint{ready("10.244.2.2", 80)}
		}),
		is4:  true,
		want: []string{"no-local-endpoints 10.96.0.10 . tcp . 80"},
	}, {
		name: "internalTrafficPolicy Local without any endpoint: rejected",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.InternalLocal = true
			sp.Endpoints = []snapshot.Endpoint{ep("10.244.2.2", 80, false, false, false, false)}
		}),
		is4:  true,
		want: []string{"no-endpoints 10.96.0.10 . tcp . 80"},
	}, {
		name: "NodePort, externalIP and LB IP under Cluster policy are masqueraded",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.NodePort = 30080
			sp.ExternalIPs = addrs("192.0.2.1")
			sp.LoadBalancerIPs = addrs("198.51.100.1")
			sp.Endpoints = []snapshot.Endpoint{ready("10.244.2.2", 80)}
		}),
		is4: true,
		want: []string{
			"svc-1 10.96.0.10 . tcp . 80 . 0 : 10.244.2.2 . 80",
			"svc-1 192.0.2.1 . tcp . 80 . 0 : 10.244.2.2 . 80", "masq-external 192.0.2.1 . tcp . 80",
			"svc-1 198.51.100.1 . tcp . 80 . 0 : 10.244.2.2 . 80", "masq-external 198.51.100.1 . tcp . 80",
			"np-1 tcp . 30080 . 0 : 10.244.2.2 . 80", "masq-nodeport tcp . 30080",
		},
	}, {
		name: "externalTrafficPolicy Local: local endpoints only, no masquerade; ClusterIP keeps all",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.NodePort = 30080
			sp.ExternalLocal = true
			sp.Endpoints = []snapshot.Endpoint{ep("10.244.1.2", 80, true, true, false, true), ready("10.244.2.2", 80)}
		}),
		is4: true,
		want: []string{
			"svc-2 10.96.0.10 . tcp . 80 . 0 : 10.244.1.2 . 80", "svc-2 10.96.0.10 . tcp . 80 . 1 : 10.244.2.2 . 80",
			"np-1 tcp . 30080 . 0 : 10.244.1.2 . 80",
			// Pods and the node itself short-circuit to every endpoint.
			"short-circuit-nodeport tcp . 30080",
			"scnp-2 tcp . 30080 . 0 : 10.244.1.2 . 80", "scnp-2 tcp . 30080 . 1 : 10.244.2.2 . 80",
			"hairpin 10.244.1.2 . 10.244.1.2",
		},
	}, {
		name: "externalTrafficPolicy Local without local endpoints, endpoints elsewhere: NodePort, externalIP and LB IP dropped, as kube-proxy does",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.NodePort = 30080
			sp.ExternalLocal = true
			sp.ExternalIPs = addrs("192.0.2.1")
			sp.LoadBalancerIPs = addrs("198.51.100.1")
			sp.Endpoints = []snapshot.Endpoint{ready("10.244.2.2", 80)}
		}),
		is4: true,
		want: []string{
			"svc-1 10.96.0.10 . tcp . 80 . 0 : 10.244.2.2 . 80",
			"no-local-endpoints 192.0.2.1 . tcp . 80",
			"short-circuit 192.0.2.1 . tcp . 80", "scx-1 192.0.2.1 . tcp . 80 . 0 : 10.244.2.2 . 80",
			"no-local-endpoints 198.51.100.1 . tcp . 80",
			"short-circuit 198.51.100.1 . tcp . 80", "scx-1 198.51.100.1 . tcp . 80 . 0 : 10.244.2.2 . 80",
			"no-local-endpoints-nodeport tcp . 30080",
			"short-circuit-nodeport tcp . 30080", "scnp-1 tcp . 30080 . 0 : 10.244.2.2 . 80",
		},
	}, {
		name: "externalTrafficPolicy Local with a terminating endpoint elsewhere only: still dropped, not rejected",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.NodePort = 30080
			sp.ExternalLocal = true
			sp.Endpoints = []snapshot.Endpoint{ep("10.244.2.2", 80, false, true, true, false)}
		}),
		is4: true,
		want: []string{
			"svc-1 10.96.0.10 . tcp . 80 . 0 : 10.244.2.2 . 80",
			"no-local-endpoints-nodeport tcp . 30080",
			"short-circuit-nodeport tcp . 30080", "scnp-1 tcp . 30080 . 0 : 10.244.2.2 . 80",
		},
	}, {
		name: "externalTrafficPolicy Local without any endpoint: everything rejected",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.NodePort = 30080
			sp.ExternalLocal = true
		}),
		is4: true,
		want: []string{
			"no-endpoints 10.96.0.10 . tcp . 80",
			"no-endpoints-nodeport tcp . 30080",
		},
	}, {
		name: "externalTrafficPolicy Local, endpoints elsewhere only in the other family: this family rejects",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.NodePort = 30080
			sp.ExternalLocal = true
			sp.Endpoints = []snapshot.Endpoint{ready("fd00:244::2", 80)}
		}),
		is4: true,
		want: []string{
			"no-endpoints 10.96.0.10 . tcp . 80",
			"no-endpoints-nodeport tcp . 30080",
		},
	}, {
		name: "sessionAffinity ClientIP balances to and checks per-endpoint chains, under the timeout",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.AffinityTimeout = 30 * time.Second
			sp.ExternalIPs = addrs("192.0.2.1")
			sp.Endpoints = []snapshot.Endpoint{ready("10.244.2.2", 80)}
		}),
		is4: true,
		want: []string{
			"affinity-30 10.96.0.10 . tcp . 80",
			"affsvc-1 10.96.0.10 . tcp . 80 . 0 : 10.244.2.2 . 80 timeout 30s of 10.96.0.10", "affchk-1 10.96.0.10 . tcp . 80 . 0 : 10.244.2.2 . 80 timeout 30s of 10.96.0.10",
			"affinity-30 192.0.2.1 . tcp . 80",
			"affsvc-1 192.0.2.1 . tcp . 80 . 0 : 10.244.2.2 . 80 timeout 30s of 10.96.0.10", "affchk-1 192.0.2.1 . tcp . 80 . 0 : 10.244.2.2 . 80 timeout 30s of 10.96.0.10",
			"masq-external 192.0.2.1 . tcp . 80",
		},
	}, {
		name: "sessionAffinity ClientIP applies to the NodePort too, keyed protocol . port",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.AffinityTimeout = 10800 * time.Second
			sp.NodePort = 30080
			sp.Endpoints = []snapshot.Endpoint{ready("10.244.2.2", 80), ready("10.244.2.3", 80)}
		}),
		is4: true,
		want: []string{
			"affinity-10800 10.96.0.10 . tcp . 80",
			"affsvc-2 10.96.0.10 . tcp . 80 . 0 : 10.244.2.2 . 80 timeout 10800s of 10.96.0.10", "affchk-2 10.96.0.10 . tcp . 80 . 0 : 10.244.2.2 . 80 timeout 10800s of 10.96.0.10",
			"affsvc-2 10.96.0.10 . tcp . 80 . 1 : 10.244.2.3 . 80 timeout 10800s of 10.96.0.10", "affchk-2 10.96.0.10 . tcp . 80 . 1 : 10.244.2.3 . 80 timeout 10800s of 10.96.0.10",
			"affnp-2 tcp . 30080 . 0 : 10.244.2.2 . 80 timeout 10800s of 10.96.0.10", "affnpchk-2 tcp . 30080 . 0 : 10.244.2.2 . 80 timeout 10800s of 10.96.0.10",
			"affnp-2 tcp . 30080 . 1 : 10.244.2.3 . 80 timeout 10800s of 10.96.0.10", "affnpchk-2 tcp . 30080 . 1 : 10.244.2.3 . 80 timeout 10800s of 10.96.0.10",
			"masq-nodeport tcp . 30080",
		},
	}, {
		name: "sessionAffinity with externalTrafficPolicy Local: the short-circuit paths keep affinity, on the same endpoint objects",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.AffinityTimeout = 60 * time.Second
			sp.NodePort = 30080
			sp.ExternalLocal = true
			sp.ExternalIPs = addrs("192.0.2.1")
			sp.Endpoints = []snapshot.Endpoint{ep("10.244.1.2", 80, true, true, false, true), ready("10.244.2.2", 80)}
		}),
		is4: true,
		want: []string{
			"affinity-60 10.96.0.10 . tcp . 80",
			"affsvc-2 10.96.0.10 . tcp . 80 . 0 : 10.244.1.2 . 80 timeout 60s of 10.96.0.10", "affchk-2 10.96.0.10 . tcp . 80 . 0 : 10.244.1.2 . 80 timeout 60s of 10.96.0.10",
			"affsvc-2 10.96.0.10 . tcp . 80 . 1 : 10.244.2.2 . 80 timeout 60s of 10.96.0.10", "affchk-2 10.96.0.10 . tcp . 80 . 1 : 10.244.2.2 . 80 timeout 60s of 10.96.0.10",
			"affinity-60 192.0.2.1 . tcp . 80",
			"affsvc-1 192.0.2.1 . tcp . 80 . 0 : 10.244.1.2 . 80 timeout 60s of 10.96.0.10", "affchk-1 192.0.2.1 . tcp . 80 . 0 : 10.244.1.2 . 80 timeout 60s of 10.96.0.10",
			"short-circuit 192.0.2.1 . tcp . 80",
			"affscx-2 192.0.2.1 . tcp . 80 . 0 : 10.244.1.2 . 80 timeout 60s of 10.96.0.10", "affscxchk-2 192.0.2.1 . tcp . 80 . 0 : 10.244.1.2 . 80 timeout 60s of 10.96.0.10",
			"affscx-2 192.0.2.1 . tcp . 80 . 1 : 10.244.2.2 . 80 timeout 60s of 10.96.0.10", "affscxchk-2 192.0.2.1 . tcp . 80 . 1 : 10.244.2.2 . 80 timeout 60s of 10.96.0.10",
			"affnp-1 tcp . 30080 . 0 : 10.244.1.2 . 80 timeout 60s of 10.96.0.10", "affnpchk-1 tcp . 30080 . 0 : 10.244.1.2 . 80 timeout 60s of 10.96.0.10",
			"short-circuit-nodeport tcp . 30080",
			"affscnp-2 tcp . 30080 . 0 : 10.244.1.2 . 80 timeout 60s of 10.96.0.10", "affscnpchk-2 tcp . 30080 . 0 : 10.244.1.2 . 80 timeout 60s of 10.96.0.10",
			"affscnp-2 tcp . 30080 . 1 : 10.244.2.2 . 80 timeout 60s of 10.96.0.10", "affscnpchk-2 tcp . 30080 . 1 : 10.244.2.2 . 80 timeout 60s of 10.96.0.10",
			"hairpin 10.244.1.2 . 10.244.1.2",
		},
	}, {
		// kube-proxy names an endpoint's chain and client list after the
		// ServicePortName: a client stuck to a pod through one port is
		// balanced afresh through the other.
		name: "sessionAffinity: two ports of a Service with the same protocol and target port own distinct endpoint records",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.Key.Port = "http"
			sp.AffinityTimeout = 30 * time.Second
			sp.NodePort = 30080
			sp.Endpoints = []snapshot.Endpoint{ready("10.244.2.2", 8080)}
		}),
		also: base(func(sp *snapshot.ServicePort) {
			sp.Key.Port, sp.Port = "alt", 81
			sp.AffinityTimeout = 30 * time.Second
			sp.NodePort = 30081
			sp.Endpoints = []snapshot.Endpoint{ready("10.244.2.2", 8080)}
		}),
		is4: true,
		want: []string{
			"affinity-30 10.96.0.10 . tcp . 80",
			"affsvc-1 10.96.0.10 . tcp . 80 . 0 : 10.244.2.2 . 8080 timeout 30s of 10.96.0.10 port http", "affchk-1 10.96.0.10 . tcp . 80 . 0 : 10.244.2.2 . 8080 timeout 30s of 10.96.0.10 port http",
			"affnp-1 tcp . 30080 . 0 : 10.244.2.2 . 8080 timeout 30s of 10.96.0.10 port http", "affnpchk-1 tcp . 30080 . 0 : 10.244.2.2 . 8080 timeout 30s of 10.96.0.10 port http",
			"masq-nodeport tcp . 30080",
			"affinity-30 10.96.0.10 . tcp . 81",
			"affsvc-1 10.96.0.10 . tcp . 81 . 0 : 10.244.2.2 . 8080 timeout 30s of 10.96.0.10 port alt", "affchk-1 10.96.0.10 . tcp . 81 . 0 : 10.244.2.2 . 8080 timeout 30s of 10.96.0.10 port alt",
			"affnp-1 tcp . 30081 . 0 : 10.244.2.2 . 8080 timeout 30s of 10.96.0.10 port alt", "affnpchk-1 tcp . 30081 . 0 : 10.244.2.2 . 8080 timeout 30s of 10.96.0.10 port alt",
			"masq-nodeport tcp . 30081",
		},
	}, {
		name: "loadBalancerSourceRanges restrict the LB ingress IP, not the ClusterIP",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.LoadBalancerIPs = addrs("198.51.100.1")
			sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("fd00::/8")}
			sp.Endpoints = []snapshot.Endpoint{ready("10.244.2.2", 80)}
		}),
		is4: true,
		want: []string{
			"svc-1 10.96.0.10 . tcp . 80 . 0 : 10.244.2.2 . 80",
			"lb-restricted 198.51.100.1 . tcp . 80", "lb-allowed 198.51.100.1 . tcp . 80 . 203.0.113.0/24",
			"svc-1 198.51.100.1 . tcp . 80 . 0 : 10.244.2.2 . 80", "masq-external 198.51.100.1 . tcp . 80",
		},
	}, {
		name: "loadBalancerSourceRanges per family: none of this family, or 0.0.0.0/0, lift the restriction",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.LoadBalancerIPs = addrs("198.51.100.1")
			sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("0.0.0.0/0")}
			sp.Endpoints = []snapshot.Endpoint{ready("10.244.2.2", 80)}
		}),
		is4: true,
		want: []string{
			"svc-1 10.96.0.10 . tcp . 80 . 0 : 10.244.2.2 . 80",
			"svc-1 198.51.100.1 . tcp . 80 . 0 : 10.244.2.2 . 80", "masq-external 198.51.100.1 . tcp . 80",
		},
	}, {
		name: "loadBalancerSourceRanges holding a node IP also admit the LB IP itself as a source",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.LoadBalancerIPs = addrs("198.51.100.1")
			sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
			sp.Endpoints = []snapshot.Endpoint{ready("10.244.2.2", 80)}
		}),
		is4:  true,
		opts: Options{NodeIPs: addrs("10.0.1.1")},
		want: []string{
			"svc-1 10.96.0.10 . tcp . 80 . 0 : 10.244.2.2 . 80",
			"lb-restricted 198.51.100.1 . tcp . 80", "lb-allowed 198.51.100.1 . tcp . 80 . 10.0.0.0/8", "lb-allowed 198.51.100.1 . tcp . 80 . 198.51.100.1/32",
			"svc-1 198.51.100.1 . tcp . 80 . 0 : 10.244.2.2 . 80", "masq-external 198.51.100.1 . tcp . 80",
		},
	}, {
		name: "topology: Cluster policy uses only the endpoints hinted for this node's zone; Local policy ignores hints",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.NodePort, sp.ExternalLocal = 30080, true
			out := ready("10.244.2.2", 80)
			out.OutOfTopology = true
			sp.Endpoints = []snapshot.Endpoint{ep("10.244.1.2", 80, true, true, false, true), out, ready("10.244.3.2", 80)}
			sp.Endpoints[0].OutOfTopology = true
		}),
		is4: true,
		want: []string{
			"svc-1 10.96.0.10 . tcp . 80 . 0 : 10.244.3.2 . 80",
			"np-1 tcp . 30080 . 0 : 10.244.1.2 . 80",
			"short-circuit-nodeport tcp . 30080", "scnp-1 tcp . 30080 . 0 : 10.244.3.2 . 80",
			"hairpin 10.244.1.2 . 10.244.1.2",
		},
	}, {
		name: "cluster CIDR known: ClusterIP listed for off-cluster masquerade",
		sp:   base(func(sp *snapshot.ServicePort) { sp.Endpoints = []snapshot.Endpoint{ready("10.244.2.2", 80)} }),
		is4:  true,
		opts: Options{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}},
		want: []string{"svc-1 10.96.0.10 . tcp . 80 . 0 : 10.244.2.2 . 80", "masq-cluster 10.96.0.10 . tcp . 80"},
	}, {
		name: "externalTrafficPolicy Local with a cluster CIDR: a pod elsewhere that the pods' short-circuit sends back to itself is masqueraded (hairpin)",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.NodePort, sp.ExternalLocal = 30080, true
			sp.Endpoints = []snapshot.Endpoint{ready("10.244.2.2", 80)}
		}),
		is4:  true,
		opts: Options{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}},
		want: []string{
			"svc-1 10.96.0.10 . tcp . 80 . 0 : 10.244.2.2 . 80", "masq-cluster 10.96.0.10 . tcp . 80",
			"no-local-endpoints-nodeport tcp . 30080", "short-circuit-nodeport tcp . 30080", "scnp-1 tcp . 30080 . 0 : 10.244.2.2 . 80",
			"hairpin 10.244.2.2 . 10.244.2.2",
		},
	}, {
		name: "dual-stack: IPv6 table gets the IPv6 ClusterIP and IPv6 endpoints",
		sp: base(func(sp *snapshot.ServicePort) {
			sp.ClusterIPs = addrs("10.96.0.10", "fd00:96::10")
			sp.Endpoints = []snapshot.Endpoint{ready("10.244.2.2", 80), ready("fd00:244::2", 80)}
		}),
		is4:  false,
		want: []string{"svc-1 fd00:96::10 . tcp . 80 . 0 : fd00:244::2 . 80"},
	}, {
		name: "single-stack IPv4 Service: nothing in the IPv6 table",
		sp:   base(func(sp *snapshot.ServicePort) { sp.Endpoints = []snapshot.Endpoint{ready("10.244.2.2", 80)} }),
		is4:  false,
		want: nil,
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			elems := Translate(tc.sp, tc.is4, tc.opts)
			if tc.also != nil {
				elems = append(elems, Translate(tc.also, tc.is4, tc.opts)...)
			}
			var got []string
			// ids are each endpoint's affinity objects (client set
			// and chains): one per Service port, which all its
			// front-ends share.
			ids := map[netip.AddrPort]map[string]bool{}
			for _, e := range elems {
				if isAffinityBalance(e.Set) {
					if ids[e.To] == nil {
						ids[e.To] = map[string]bool{}
					}
					ids[e.To][endpointID(e)] = true
				}
				if e.Set == setClusterIPs && !tc.withClusterIPs {
					continue
				}
				got = append(got, e.String())
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("elements (-want +got):\n%s", diff)
			}
			ports := 1
			if tc.also != nil {
				ports = 2
			}
			for ep, objs := range ids {
				if len(objs) != ports {
					t.Errorf("endpoint %s has %d affinity objects %v over %d Service ports, want one per port", ep, len(objs), objs, ports)
				}
			}
		})
	}
}

// TestSharedElementsStayUntilTheLastUser checks the reference counts of
// elements several Services may want (hairpin entries of a pod behind two
// Services).
func TestSharedElementsStayUntilTheLastUser(t *testing.T) {
	k := &Tables{applied: map[snapshot.ServiceKey][2][]Elem{}}
	k.refs[0], k.refs[1] = map[Elem]int{}, map[Elem]int{}
	hp := Elem{Set: setHairpin, Addr: netip.MustParseAddr("10.244.1.2"), Addr2: netip.MustParseAddr("10.244.1.2"), Slot: -1}
	k.diff(0, nil, []Elem{hp})
	k.diff(0, nil, []Elem{hp})
	if _, del := k.diff(0, []Elem{hp}, nil); len(del) != 0 {
		t.Fatalf("hairpin element deleted while another Service still uses it")
	}
	if _, del := k.diff(0, []Elem{hp}, nil); len(del) != 1 {
		t.Fatalf("hairpin element kept after its last user left")
	}
}
