package iptables

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/switchboard/switchboard/proxy/snapshot"
)

// render renders a translation as "table chain spec", one per rule.
func render(s Service) []string {
	var out []string
	for _, r := range s.Rules {
		out = append(out, r.Table+" "+r.Chain+" "+r.Spec)
	}
	for _, c := range s.Chains {
		for _, r := range c.Rules {
			out = append(out, "nat "+c.Name+" "+r)
		}
	}
	return out
}

func ep(addr string, mod ...func(*snapshot.Endpoint)) snapshot.Endpoint {
	e := snapshot.Endpoint{Addr: netip.MustParseAddr(addr), Port: 8080, Ready: true, Serving: true}
	for _, m := range mod {
		m(&e)
	}
	return e
}

func local(e *snapshot.Endpoint) { e.Local = true }
func terminating(e *snapshot.Endpoint) {
	e.Ready, e.Terminating = false, true
}

var key = snapshot.ServiceKey{Namespace: "ns", Name: "web"}

func port(mod func(*snapshot.ServicePort), eps ...snapshot.Endpoint) *snapshot.ServicePort {
	sp := &snapshot.ServicePort{Key: snapshot.PortKey{ServiceKey: key, Port: "http", Protocol: v1.ProtocolTCP}, Protocol: v1.ProtocolTCP, Port: 80,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Endpoints: eps}
	if mod != nil {
		mod(sp)
	}
	return sp
}

// TestTranslate checks each kube-proxy iptables feature's rules, spelled as
// iptables-save prints them (the kernel test checks the spelling against
// the real tools).
func TestTranslate(t *testing.T) {
	svc := portChain(key, "ns/web:http", "tcp", kindCluster)
	svl := portChain(key, "ns/web:http", "tcp", kindLocal)
	ext := portChain(key, "ns/web:http", "tcp", kindExternal)
	fw := portChain(key, "ns/web:http", "tcp", kindFirewall)
	sep := func(a string) string {
		return endpointChain(key, "ns/web:http", "tcp", netip.AddrPortFrom(netip.MustParseAddr(a), 8080))
	}
	const cm = `-m comment --comment "ns/web:http"`
	opts := Options{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, NodeIPs: []netip.Addr{netip.MustParseAddr("10.0.1.1")}}
	nodePort := func(sp *snapshot.ServicePort) { sp.NodePort = 30080 }
	for _, tc := range []struct {
		name   string
		sp     *snapshot.ServicePort
		is4    bool
		opts   *Options // opts above when nil
		want   []string
		absent []string // substrings no rule may hold
	}{{
		name: "ClusterIP balanced with statistic, masquerade from outside the cluster CIDR, other nodes' endpoints DNATed in the SVC chain",
		sp:   port(nil, ep("10.244.1.2"), ep("10.244.2.2"), ep("10.244.3.2")),
		is4:  true,
		want: []string{
			`nat SWB-SERVICES -d 10.96.0.10/32 -p tcp ` + cm + ` -m tcp --dport 80 -j ` + svc,
			`filter SWB-CLUSTER-IPS -d 10.96.0.10/32 -m comment --comment "ns/web" -j REJECT --reject-with icmp-port-unreachable`,
			`nat ` + svc + ` ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp ` + cm + ` -m tcp --dport 80 -j SWB-MARK-MASQ`,
			`nat ` + svc + ` -p tcp ` + cm + ` -m statistic --mode random --probability 0.33333333349 -m tcp -j DNAT --to-destination 10.244.1.2:8080`,
			`nat ` + svc + ` -p tcp ` + cm + ` -m statistic --mode random --probability 0.50000000000 -m tcp -j DNAT --to-destination 10.244.2.2:8080`,
			`nat ` + svc + ` -p tcp ` + cm + ` -m tcp -j DNAT --to-destination 10.244.3.2:8080`,
		},
		// No pod elsewhere can send its own address here unmasqueraded:
		// no hairpin mark, no endpoint chain.
		absent: []string{"filter SWB-SERVICES", "recent", ext, sep("10.244.1.2"), "-s 10.244.1.2"},
	}, {
		name: "an endpoint on this node keeps kube-proxy's chain: the hairpin mark, then the DNAT",
		sp:   port(nil, ep("10.244.1.2", local), ep("10.244.2.2")),
		is4:  true,
		want: []string{
			`nat ` + svc + ` ` + cm + ` -m statistic --mode random --probability 0.50000000000 -j ` + sep("10.244.1.2"),
			`nat ` + svc + ` -p tcp ` + cm + ` -m tcp -j DNAT --to-destination 10.244.2.2:8080`,
			`nat ` + sep("10.244.1.2") + ` -s 10.244.1.2/32 ` + cm + ` -j SWB-MARK-MASQ`,
			`nat ` + sep("10.244.1.2") + ` -p tcp ` + cm + ` -m tcp -j DNAT --to-destination 10.244.1.2:8080`,
		},
		absent: []string{sep("10.244.2.2")},
	}, {
		name: "no cluster CIDR: every endpoint keeps its chain (nothing masquerades a non-pod source)",
		sp:   port(nil, ep("10.244.1.2"), ep("10.244.2.2")),
		is4:  true,
		opts: &Options{},
		want: []string{
			`nat ` + svc + ` ` + cm + ` -j ` + sep("10.244.2.2"),
			`nat ` + sep("10.244.2.2") + ` -s 10.244.2.2/32 ` + cm + ` -j SWB-MARK-MASQ`,
			`nat ` + sep("10.244.2.2") + ` -p tcp ` + cm + ` -m tcp -j DNAT --to-destination 10.244.2.2:8080`,
		},
	}, {
		name: "no endpoints: rejected, ClusterIP and NodePort, no chains",
		sp:   port(nodePort),
		is4:  true,
		want: []string{
			`filter SWB-SERVICES -d 10.96.0.10/32 -p tcp ` + cm + ` -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable`,
			`filter SWB-EXTERNAL-SERVICES -p tcp ` + cm + ` -m addrtype --dst-type LOCAL -m tcp --dport 30080 -j REJECT --reject-with icmp-port-unreachable`,
		},
		absent: []string{"nat ", "DNAT"},
	}, {
		name:   "internalTrafficPolicy Local without a local endpoint: dropped, not rejected",
		sp:     port(func(sp *snapshot.ServicePort) { sp.InternalLocal = true }, ep("10.244.2.2")),
		is4:    true,
		want:   []string{`filter SWB-SERVICES -d 10.96.0.10/32 -p tcp ` + cm + ` -m tcp --dport 80 -j DROP`},
		absent: []string{"nat SWB-SERVICES", "DNAT"},
	}, {
		name: "internalTrafficPolicy Local with a local endpoint: the SVL chain",
		sp:   port(func(sp *snapshot.ServicePort) { sp.InternalLocal = true }, ep("10.244.1.2", local), ep("10.244.2.2")),
		is4:  true,
		want: []string{
			`nat SWB-SERVICES -d 10.96.0.10/32 -p tcp ` + cm + ` -m tcp --dport 80 -j ` + svl,
			`nat ` + svl + ` ` + cm + ` -j ` + sep("10.244.1.2"),
		},
		absent: []string{svc, sep("10.244.2.2")},
	}, {
		name: "NodePort and externalIP under Cluster policy: masquerade then the SVC chain",
		sp: port(func(sp *snapshot.ServicePort) {
			nodePort(sp)
			sp.ExternalIPs = []netip.Addr{netip.MustParseAddr("192.0.2.1")}
		}, ep("10.244.1.2")),
		is4: true,
		want: []string{
			`nat SWB-NODEPORTS -p tcp ` + cm + ` -m tcp --dport 30080 -j ` + ext,
			`nat SWB-SERVICES -d 192.0.2.1/32 -p tcp ` + cm + ` -m tcp --dport 80 -j ` + ext,
			`nat ` + ext + ` ` + cm + ` -j SWB-MARK-MASQ`,
			`nat ` + ext + ` -j ` + svc,
		},
		absent: []string{"EXTERNAL-SERVICES"},
	}, {
		name: "externalTrafficPolicy Local: short-circuit for pods and the node, the SVL chain for the rest",
		sp: port(func(sp *snapshot.ServicePort) {
			nodePort(sp)
			sp.ExternalLocal, sp.HealthCheckNodePort = true, 31000
		}, ep("10.244.1.2", local), ep("10.244.2.2")),
		is4: true,
		want: []string{
			`nat ` + ext + ` -s 10.244.0.0/16 ` + cm + ` -j ` + svc,
			`nat ` + ext + ` ` + cm + ` -m addrtype --src-type LOCAL -j SWB-MARK-MASQ`,
			`nat ` + ext + ` ` + cm + ` -m addrtype --src-type LOCAL -j ` + svc,
			`nat ` + ext + ` -j ` + svl,
			`nat ` + svl + ` ` + cm + ` -j ` + sep("10.244.1.2"),
			// A pod elsewhere may come here through the short-circuit and
			// be sent to itself: the other node's endpoint keeps its
			// hairpin mark.
			`nat ` + svc + ` ` + cm + ` -j ` + sep("10.244.2.2"),
			`nat ` + sep("10.244.2.2") + ` -s 10.244.2.2/32 ` + cm + ` -j SWB-MARK-MASQ`,
			`filter SWB-NODEPORTS -p tcp -m comment --comment "ns/web" -m tcp --dport 31000 -j ACCEPT`,
		},
	}, {
		name: "externalTrafficPolicy Local without a local endpoint: external traffic dropped, short-circuit kept",
		sp:   port(func(sp *snapshot.ServicePort) { nodePort(sp); sp.ExternalLocal = true }, ep("10.244.2.2")),
		is4:  true,
		want: []string{
			`filter SWB-EXTERNAL-SERVICES -p tcp ` + cm + ` -m addrtype --dst-type LOCAL -m tcp --dport 30080 -j DROP`,
			`nat SWB-NODEPORTS -p tcp ` + cm + ` -m tcp --dport 30080 -j ` + ext,
			`nat ` + ext + ` ` + cm + ` -m addrtype --src-type LOCAL -j ` + svc,
		},
		absent: []string{svl, "-j " + svl},
	}, {
		name: "load balancer with source ranges: the FW chain admits, SWB-PROXY-FIREWALL drops the rest",
		sp: port(func(sp *snapshot.ServicePort) {
			sp.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("192.0.2.10")}
			sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("10.0.1.0/24"), netip.MustParsePrefix("2001:db8::/32")}
		}, ep("10.244.1.2")),
		is4: true,
		want: []string{
			`nat SWB-SERVICES -d 192.0.2.10/32 -p tcp ` + cm + ` -m tcp --dport 80 -j ` + fw,
			`nat ` + fw + ` -s 198.51.100.0/24 ` + cm + ` -j ` + ext,
			// A range holding the node's address admits the VIP itself.
			`nat ` + fw + ` -s 192.0.2.10/32 ` + cm + ` -j ` + ext,
			`filter SWB-PROXY-FIREWALL -d 192.0.2.10/32 -p tcp ` + cm + ` -m tcp --dport 80 -j DROP`,
		},
		absent: []string{"2001:db8"},
	}, {
		name: "sessionAffinity ClientIP: recent checks before balancing, set in the endpoint chain",
		sp:   port(func(sp *snapshot.ServicePort) { sp.AffinityTimeout = 600 * time.Second }, ep("10.244.1.2", local), ep("10.244.2.2", local)),
		is4:  true,
		want: []string{
			`nat ` + svc + ` ` + cm + ` -m recent --rcheck --seconds 600 --reap --name ` + sep("10.244.1.2") + ` --mask 255.255.255.255 --rsource -j ` + sep("10.244.1.2"),
			`nat ` + sep("10.244.2.2") + ` -p tcp ` + cm + ` -m recent --set --name ` + sep("10.244.2.2") + ` --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.244.2.2:8080`,
		},
	}, {
		name: "sessionAffinity ClientIP with other nodes' endpoints: check, record and DNAT in one rule",
		sp:   port(func(sp *snapshot.ServicePort) { sp.AffinityTimeout = 600 * time.Second }, ep("10.244.1.2"), ep("10.244.2.2")),
		is4:  true,
		want: []string{
			`nat ` + svc + ` -p tcp ` + cm + ` -m recent --rcheck --seconds 600 --reap --name ` + sep("10.244.1.2") + ` --mask 255.255.255.255 --rsource -m recent --set --name ` + sep("10.244.1.2") + ` --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.244.1.2:8080`,
			`nat ` + svc + ` -p tcp ` + cm + ` -m statistic --mode random --probability 0.50000000000 -m recent --set --name ` + sep("10.244.1.2") + ` --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.244.1.2:8080`,
			`nat ` + svc + ` -p tcp ` + cm + ` -m recent --set --name ` + sep("10.244.2.2") + ` --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.244.2.2:8080`,
		},
		absent: []string{"nat " + sep("10.244.1.2")},
	}, {
		name:   "terminating fallback: serving-and-terminating endpoints when none is ready",
		sp:     port(nil, ep("10.244.1.2", terminating), snapshot.Endpoint{Addr: netip.MustParseAddr("10.244.2.2"), Port: 8080}),
		is4:    true,
		want:   []string{`nat ` + svc + ` -p tcp ` + cm + ` -m tcp -j DNAT --to-destination 10.244.1.2:8080`},
		absent: []string{"10.244.2.2", "filter SWB-SERVICES"},
	}, {
		name: "IPv6: the family's endpoints only, bracketed DNAT, ICMPv6 reject",
		sp: port(func(sp *snapshot.ServicePort) {
			sp.ClusterIPs = append(sp.ClusterIPs, netip.MustParseAddr("fd00:96::10"))
		}, ep("10.244.1.2"), ep("fd00:244:1::2")),
		is4: false,
		want: []string{
			`nat SWB-SERVICES -d fd00:96::10/128 -p tcp ` + cm + ` -m tcp --dport 80 -j ` + svc,
			`nat ` + endpointChain(key, "ns/web:http", "tcp", netip.MustParseAddrPort("[fd00:244:1::2]:8080")) + ` -p tcp ` + cm + ` -m tcp -j DNAT --to-destination [fd00:244:1::2]:8080`,
			`filter SWB-CLUSTER-IPS -d fd00:96::10/128 -m comment --comment "ns/web" -j REJECT --reject-with icmp6-port-unreachable`,
		},
		absent: []string{"10.244.1.2", "10.96.0.10", "! -s"}, // no IPv6 cluster CIDR: no masquerade rule
	}, {
		name:   "no ClusterIP of the family: nothing",
		sp:     port(nil, ep("10.244.1.2")),
		is4:    false,
		absent: []string{""},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			o := opts
			if tc.opts != nil {
				o = *tc.opts
			}
			got := render(Translate([]*snapshot.ServicePort{tc.sp}, tc.is4, o))
			for _, w := range tc.want {
				if !slices.Contains(got, w) {
					t.Errorf("missing rule\n  %s\ngot:\n  %s", w, strings.Join(got, "\n  "))
				}
			}
			for _, a := range tc.absent {
				for _, g := range got {
					if strings.Contains(g, a) {
						t.Errorf("rule %q holds %q", g, a)
					}
				}
			}
		})
	}
}

// TestTranslateIsPure: the same input yields the same rules, in the same
// order (partial syncs diff on them).
func TestTranslateIsPure(t *testing.T) {
	sp := port(func(sp *snapshot.ServicePort) { sp.NodePort = 30080; sp.AffinityTimeout = time.Minute }, ep("10.244.1.2"), ep("10.244.2.2"))
	a := render(Translate([]*snapshot.ServicePort{sp}, true, Options{}))
	b := render(Translate([]*snapshot.ServicePort{sp}, true, Options{}))
	if !slices.Equal(a, b) {
		t.Errorf("two translations differ:\n%v\n%v", a, b)
	}
}

// TestPartialRewritesOnlyWhatChanged: replacing one endpoint rewrites the
// policy chain and the two endpoint chains, and no shared rule.
func TestPartialRewritesOnlyWhatChanged(t *testing.T) {
	old := Translate([]*snapshot.ServicePort{port(nil, ep("10.244.1.2"), ep("10.244.2.2"))}, true, Options{})
	now := Translate([]*snapshot.ServicePort{port(nil, ep("10.244.1.2"), ep("10.244.3.2"))}, true, Options{})
	var p partial
	p.add(old, now)
	text := string(p.text())
	if strings.Contains(text, "*filter") || len(p.del)+len(p.ins) != 0 {
		t.Errorf("shared rules rewritten:\n%s", text)
	}
	gone := endpointChain(key, "ns/web:http", "tcp", netip.MustParseAddrPort("10.244.2.2:8080"))
	kept := endpointChain(key, "ns/web:http", "tcp", netip.MustParseAddrPort("10.244.1.2:8080"))
	if !strings.Contains(text, "-X "+gone+"\n") {
		t.Errorf("the replaced endpoint's chain is not deleted:\n%s", text)
	}
	if strings.Contains(text, kept) && !strings.Contains(text, "-j "+kept) {
		t.Errorf("the unchanged endpoint's chain is rewritten:\n%s", text)
	}
	if strings.Contains(text, ":"+kept) {
		t.Errorf("the unchanged endpoint's chain is redeclared:\n%s", text)
	}
}

// TestPartialInlineEndpoints: where endpoints are DNATed in the policy
// chain, replacing one rewrites that chain alone: no chain is declared or
// deleted.
func TestPartialInlineEndpoints(t *testing.T) {
	opts := Options{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}
	old := Translate([]*snapshot.ServicePort{port(nil, ep("10.244.1.2"), ep("10.244.2.2"))}, true, opts)
	now := Translate([]*snapshot.ServicePort{port(nil, ep("10.244.1.2"), ep("10.244.3.2"))}, true, opts)
	var p partial
	p.add(old, now)
	text := string(p.text())
	svc := portChain(key, "ns/web:http", "tcp", kindCluster)
	if got := strings.Count(text, "\n:"); got != 1 || !strings.Contains(text, ":"+svc+" ") {
		t.Errorf("want only %s redeclared (flushed), got %d declarations:\n%s", svc, got, text)
	}
	if strings.Contains(text, "-X ") || strings.Contains(text, "*filter") {
		t.Errorf("a chain deleted or a shared rule rewritten:\n%s", text)
	}
	if !strings.Contains(text, "--to-destination 10.244.3.2:8080") || strings.Contains(text, "10.244.2.2") {
		t.Errorf("the new endpoint is not DNATed in place of the old one:\n%s", text)
	}
}
