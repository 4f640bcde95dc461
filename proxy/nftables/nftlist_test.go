package nftables

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/switchboard/switchboard/clustertest"
	"github.com/switchboard/switchboard/netnamespace"
	"github.com/switchboard/switchboard/proxy/snapshot"
)

// TestNftListsEveryFeature programs every feature the proxy has, in both
// families, into a fresh namespace and requires the distribution's nft tool
// to print the ruleset back: an operator's first debugging command must not
// crash (nft 1.0.6, Debian 12's, aborted on affinity keys made of
// conntrack addresses). Then it updates and removes the Services
// incrementally and lists again.
func TestNftListsEveryFeature(t *testing.T) {
	clustertest.RequireRoot(t)
	node, nodePath := clustertest.NetNS(t, "sbnl")
	mustAddr := netip.MustParseAddr
	local := func(a string, port int32) snapshot.Endpoint {
		return snapshot.Endpoint{Addr: mustAddr(a), Port: port, Ready: true, Serving: true, Local: true}
	}
	remote := func(a string, port int32) snapshot.Endpoint {
		return snapshot.Endpoint{Addr: mustAddr(a), Port: port, Ready: true, Serving: true}
	}
	port := func(name string, mod func(*snapshot.ServicePort)) *snapshot.ServicePort {
		sp := &snapshot.ServicePort{Key: snapshot.PortKey{ServiceKey: snapshot.ServiceKey{Namespace: "ns", Name: name}, Protocol: v1.ProtocolTCP},
			Protocol: v1.ProtocolTCP, Port: 80}
		mod(sp)
		return sp
	}
	eps := []snapshot.Endpoint{local("10.244.1.2", 8080), remote("10.244.2.2", 8080), local("fd00:244:1::2", 8080), remote("fd00:244:2::2", 8080)}
	ports := []*snapshot.ServicePort{
		port("affinity", func(sp *snapshot.ServicePort) {
			sp.ClusterIPs = []netip.Addr{mustAddr("10.96.0.10"), mustAddr("fd00:96::10")}
			sp.AffinityTimeout = 30 * time.Second
			sp.ExternalIPs = []netip.Addr{mustAddr("192.0.2.1"), mustAddr("2001:db8::1")}
			sp.NodePort = 30010
			sp.Endpoints = eps
		}),
		port("lb-local", func(sp *snapshot.ServicePort) {
			sp.ClusterIPs = []netip.Addr{mustAddr("10.96.0.11"), mustAddr("fd00:96::11")}
			sp.NodePort, sp.HealthCheckNodePort, sp.ExternalLocal = 30080, 31000, true
			sp.AffinityTimeout = 60 * time.Second
			sp.LoadBalancerIPs = []netip.Addr{mustAddr("198.51.100.1"), mustAddr("2001:db8::2")}
			sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
			sp.Endpoints = []snapshot.Endpoint{remote("10.244.2.2", 8080), remote("fd00:244:2::2", 8080)}
		}),
		port("lb-cluster", func(sp *snapshot.ServicePort) {
			sp.Protocol, sp.Port = v1.ProtocolUDP, 53
			sp.ClusterIPs = []netip.Addr{mustAddr("10.96.0.12")}
			sp.NodePort = 30053
			sp.LoadBalancerIPs = []netip.Addr{mustAddr("198.51.100.2")}
			sp.Endpoints = eps[:2]
		}),
		port("internal-local", func(sp *snapshot.ServicePort) {
			sp.Protocol = v1.ProtocolSCTP
			sp.ClusterIPs = []netip.Addr{mustAddr("fd00:96::13")}
			sp.InternalLocal = true
			sp.Endpoints = []snapshot.Endpoint{remote("fd00:244:2::2", 8080)}
		}),
		port("empty", func(sp *snapshot.ServicePort) {
			sp.ClusterIPs = []netip.Addr{mustAddr("10.96.0.14")}
			sp.NodePort = 30014
		}),
	}
	all := map[snapshot.ServiceKey][]*snapshot.ServicePort{}
	for _, sp := range ports {
		all[sp.Key.ServiceKey] = append(all[sp.Key.ServiceKey], sp)
	}
	snap := snapshot.New(all)
	snap.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("fd00:96::/112")}
	// The table an earlier version left: affinity recorded from hooks
	// after DNAT into one map. Adoption deletes that recorder.
	for _, fam := range []string{"ip", "ip6"} {
		saddr := fam + " saddr"
		if _, err := netnamespace.Exec(node, "nft", "add table "+fam+" switchboard; "+
			"add set "+fam+" switchboard affinity { type "+map[string]string{"ip": "ipv4_addr", "ip6": "ipv6_addr"}[fam]+"; flags dynamic,timeout; timeout 1h; }; "+
			"add chain "+fam+" switchboard affinity-record; "+
			"add rule "+fam+" switchboard affinity-record update @affinity { "+saddr+" }; "+
			"add chain "+fam+" switchboard affinity-prerouting { type filter hook prerouting priority -90; }; "+
			"add rule "+fam+" switchboard affinity-prerouting ct state new jump affinity-record; "+
			"add chain "+fam+" switchboard affinity-output { type filter hook output priority -90; }; "+
			"add rule "+fam+" switchboard affinity-output ct state new jump affinity-record"); err != nil {
			t.Fatalf("write the earlier version's affinity recorder: %v", err)
		}
	}
	k, err := New(Config{NetNS: nodePath, NodeIPs: []netip.Addr{mustAddr("10.0.1.1"), mustAddr("fd00:1::1")},
		Options: Options{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/48")}}})
	must(t, err)
	defer k.Close()
	list := func(what string) string {
		t.Helper()
		out, err := netnamespace.Exec(node, "nft", "list", "ruleset")
		if err != nil {
			t.Fatalf("nft list ruleset after %s: %v\n%s", what, err, out)
		}
		// nft prints what it cannot type as "[invalid type]": the ruleset
		// would not load back.
		if strings.Contains(out, "invalid") {
			t.Errorf("nft cannot type part of the ruleset after %s:\n%s", what, out)
		}
		return out
	}
	must(t, k.Sync(snap, snapshot.Changes{Full: true}))
	out := list("a full sync")
	for _, want := range []string{"update @aff-", "vmap @affchk-", "numgen random mod 2 vmap @affsvc-2", "numgen random mod 2 vmap @affnp-2", "vmap @affnpchk-2-1", "vmap @affscx-1", "vmap @affscnpchk-1-0", "fib saddr type local", "cluster-ips-check", "filter-output-pre-dnat", "10.96.0.0/16"} {
		if !strings.Contains(out, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, out)
		}
	}

	for _, legacy := range []string{"affinity-record", "affinity-prerouting", "set affinity {"} {
		if strings.Contains(out, legacy) {
			t.Errorf("adoption left the earlier version's %q:\n%s", legacy, out)
		}
	}

	// Incremental: endpoints move, a Service goes.
	changes := map[snapshot.ServiceKey][]*snapshot.ServicePort{}
	var changed []snapshot.ServiceKey
	for key, ps := range snap.All() {
		changed = append(changed, key)
		if key.Name == "empty" {
			changes[key] = nil
			continue
		}
		sp := *ps[0]
		sp.Endpoints = append(append([]snapshot.Endpoint{}, sp.Endpoints...), local("10.244.1.3", 8080), local("fd00:244:1::3", 8080))
		changes[key] = []*snapshot.ServicePort{&sp}
	}
	must(t, k.Sync(snap.With(changes), snapshot.Changes{Keys: changed}))
	list("an incremental sync")
}
