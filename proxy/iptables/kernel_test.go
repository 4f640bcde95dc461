package iptables

import (
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/switchboard/switchboard/clustertest"
	"github.com/switchboard/switchboard/proxy/snapshot"
)

// variants are the iptables backends to run the kernel tests on: the one
// the distribution's "iptables" is, and legacy when it is installed.
func variants(t *testing.T) []string {
	out := []string{""}
	if _, err := exec.LookPath("iptables-legacy-restore"); err == nil {
		out = append(out, "legacy")
	}
	return out
}

func webPort(key snapshot.ServiceKey, proto v1.Protocol, port int32, eps ...string) *snapshot.ServicePort {
	sp := &snapshot.ServicePort{Key: snapshot.PortKey{ServiceKey: key, Port: strings.ToLower(string(proto)), Protocol: proto}, Protocol: proto, Port: port,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00:96::10")}, NodePort: 30080,
		LoadBalancerIPs: []netip.Addr{netip.MustParseAddr("192.0.2.10")}, LoadBalancerSourceRanges: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")},
		AffinityTimeout: 30 * time.Second}
	for _, e := range eps {
		sp.Endpoints = append(sp.Endpoints, snapshot.Endpoint{Addr: netip.MustParseAddr(e), Port: 8080, Ready: true, Serving: true, Local: true})
	}
	return sp
}

// TestKernelPartialSyncsCleanupAndReadBack programs Services into a fresh
// namespace with each iptables backend: a full sync, partial syncs that
// replace an endpoint, add and remove a Service (the read-back finds every
// applied rule, in iptables-save's own spelling, and no chain of a gone
// Service or endpoint is left), a full sync that deletes a stale chain an
// earlier run left, then Cleanup removing every rule and chain of ours
// and no one else's.
func TestKernelPartialSyncsCleanupAndReadBack(t *testing.T) {
	clustertest.RequireRoot(t)
	for _, variant := range variants(t) {
		t.Run("variant="+variant, func(t *testing.T) {
			_, path := clustertest.NetNS(t, "sbip")
			run := ExecRunner{NetNS: path, Variant: variant}
			// Somebody else's chain and rule, which must survive.
			must(t, run.Restore(true, []byte("*nat\n:OTHER - [0:0]\n-A OTHER -j RETURN\n-A PREROUTING -j OTHER\nCOMMIT\n")))
			// Service chains earlier runs left behind: one named as
			// before this version, two of a gone Service, one jumping to
			// the other.
			must(t, run.Restore(true, []byte("*nat\n:SWB-SVC-STALESTALESTALE - [0:0]\n-A SWB-SVC-STALESTALESTALE -j RETURN\n"+
				":SWB-sSTALESTALEAAAA-SVC - [0:0]\n:SWB-sSTALESTALEAAAA-STALEEND - [0:0]\n"+
				"-A SWB-sSTALESTALEAAAA-SVC -j SWB-sSTALESTALEAAAA-STALEEND\n-A SWB-sSTALESTALEAAAA-STALEEND -j RETURN\nCOMMIT\n")))

			k, err := New(Config{NetNS: path, Variant: variant, NodeIPs: []netip.Addr{netip.MustParseAddr("10.0.1.1")},
				Options: Options{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}})
			must(t, err)
			defer k.Close()
			web := snapshot.ServiceKey{Namespace: "ns", Name: "web"}
			dns := snapshot.ServiceKey{Namespace: "ns", Name: "dns"}
			ports := map[snapshot.ServiceKey][]*snapshot.ServicePort{
				web: {webPort(web, v1.ProtocolTCP, 80, "10.244.1.2", "10.244.2.2", "fd00:244:1::2"), webPort(web, v1.ProtocolUDP, 53, "10.244.1.2")},
			}
			snap := snapshot.New(ports)
			snap.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}
			must(t, k.Sync(snap, snapshot.Changes{Full: true}))
			readBack(t, k, web)
			saved := save(t, run)
			if strings.Contains(saved, "STALE") {
				t.Errorf("full sync left a stale chain:\n%s", saved)
			}
			if !strings.Contains(saved, "-A OTHER -j RETURN") || !strings.Contains(saved, "-A PREROUTING -j OTHER") {
				t.Errorf("full sync touched a foreign chain:\n%s", saved)
			}

			// Rules flushed behind the proxy's back are reported missing
			// (the next syncs of web rewrite the chain).
			svcChain := portChain(web, "ns/web:tcp", "tcp", kindCluster)
			must(t, run.Run(true, "-t", "nat", "-F", svcChain))
			st, err := k.Inspect(web)
			must(t, err)
			if !slices.ContainsFunc(st[web].Missing, func(m string) bool { return strings.Contains(m, svcChain) }) {
				t.Errorf("the flushed chain's rules are not reported missing: %q", st[web].Missing)
			}

			// Replace an endpoint (its chain goes), add a Service.
			snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{
				web: {webPort(web, v1.ProtocolTCP, 80, "10.244.1.2", "10.244.3.2", "fd00:244:1::2"), webPort(web, v1.ProtocolUDP, 53, "10.244.3.2")},
				dns: {webPort(dns, v1.ProtocolUDP, 5353)},
			})
			must(t, k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{web, dns}}))
			readBack(t, k, web, dns)
			saved = save(t, run)
			gone := endpointChain(web, "ns/web:tcp", "tcp", netip.MustParseAddrPort("10.244.2.2:8080"))
			if strings.Contains(saved, gone) {
				t.Errorf("chain %s of the replaced endpoint is still there:\n%s", gone, saved)
			}
			// dns has no endpoints: its ClusterIP port is rejected.
			if !strings.Contains(saved, "-A SWB-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment \"ns/dns:udp\" -m udp --dport 5353 -j REJECT") {
				t.Errorf("no reject rule for the endpoint-less Service:\n%s", saved)
			}

			// A full sync that knows the table (no listing) after another
			// replacement, then a restart whose first full sync lists it:
			// each deletes the chain of the endpoint it no longer has.
			for i, ip := range []string{"10.244.4.2", "10.244.5.2"} {
				if i == 1 {
					k2, err := New(Config{NetNS: path, Variant: variant, NodeIPs: []netip.Addr{netip.MustParseAddr("10.0.1.1")},
						Options: Options{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}})
					must(t, err)
					defer k2.Close()
					k = k2
				}
				snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{
					web: {webPort(web, v1.ProtocolTCP, 80, ip, "10.244.3.2", "fd00:244:1::2"), webPort(web, v1.ProtocolUDP, 53, "10.244.3.2")},
				})
				must(t, k.Sync(snap, snapshot.Changes{Full: true}))
				readBack(t, k, web, dns)
				saved = save(t, run)
				// The jumps the first sync inserted with its restore are
				// found by the restarted proxy's checks: each is there once
				// per family.
				for _, j := range jumps {
					if n := strings.Count(saved, "-A "+j.chain+" "+j.spec()+"\n"); n != 2 {
						t.Errorf("full sync %d: jump %q is there %d times, want once per family", i, j.spec(), n)
					}
				}
				for _, old := range []string{"10.244.1.2:8080", "10.244.4.2:8080"}[:i+1] {
					if c := endpointChain(web, "ns/web:tcp", "tcp", netip.MustParseAddrPort(old)); strings.Contains(saved, c) {
						t.Errorf("full sync %d left the chain of replaced endpoint %s:\n%s", i, old, saved)
					}
				}
			}

			// Remove web: none of its chains stays.
			snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{web: nil})
			must(t, k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{web}}))
			saved = save(t, run)
			for _, c := range chainsOf([]byte(saved)) {
				if isServiceChain(c) {
					t.Errorf("chain %s left after its Service went", c)
				}
			}
			if strings.Contains(saved, "ns/web:") {
				t.Errorf("rules of a removed Service left:\n%s", saved)
			}

			must(t, Cleanup(run))
			saved = save(t, run)
			if strings.Contains(saved, ChainPrefix) {
				t.Errorf("Cleanup left rules or chains of ours:\n%s", saved)
			}
			if !strings.Contains(saved, "-A OTHER -j RETURN") || !strings.Contains(saved, "-A PREROUTING -j OTHER") {
				t.Errorf("Cleanup touched a foreign chain:\n%s", saved)
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// save dumps both tables of both families.
func save(t *testing.T, r Runner) string {
	t.Helper()
	var b strings.Builder
	for _, is4 := range []bool{true, false} {
		for _, table := range []string{TableFilter, TableNAT} {
			out, err := r.Save(is4, table)
			must(t, err)
			b.Write(out)
		}
	}
	return b.String()
}

// readBack checks that the kernel holds every rule applied for keys,
// spelled as iptables-save spells it.
func readBack(t *testing.T, k *Kernel, keys ...snapshot.ServiceKey) {
	t.Helper()
	st, err := k.Inspect(keys...)
	must(t, err)
	for _, key := range keys {
		if len(st[key].Applied) == 0 {
			t.Errorf("%s: nothing applied", key)
		}
		if len(st[key].Missing) > 0 {
			t.Errorf("%s: the kernel lacks applied rules (or spells them otherwise):\n%s", key, strings.Join(st[key].Missing, "\n"))
		}
	}
}

// TestLargeClusterReadsBack: above LargeClusterEndpoints endpoints the
// endpoints' rules lose their comments (the ClusterIP's rule keeps its)
// and, on each backend, read back from iptables-save as applied.
func TestLargeClusterReadsBack(t *testing.T) {
	sp := webPort(snapshot.ServiceKey{Namespace: "ns", Name: "big"}, v1.ProtocolTCP, 80)
	for i := range LargeClusterEndpoints + 1 {
		sp.Endpoints = append(sp.Endpoints, snapshot.Endpoint{Addr: netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}), Port: 8080, Ready: true, Serving: true})
	}
	s := Translate([]*snapshot.ServicePort{sp}, true, Options{LargeCluster: true})
	for _, c := range s.Chains {
		for _, r := range c.Rules {
			if strings.Contains(r, "--comment") && (strings.Contains(r, "DNAT") || strings.Contains(r, "--probability") || strings.Contains(r, "-j "+chainMarkMasq) && strings.HasPrefix(r, "-s 10.244.")) {
				t.Fatalf("endpoint rule keeps its comment in a large cluster: %s", r)
			}
		}
	}
	if !strings.Contains(render(s)[0], "--comment") {
		t.Errorf("the ClusterIP rule lost its comment: %s", render(s)[0])
	}
	clustertest.RequireRoot(t)
	for _, variant := range variants(t) {
		t.Run("variant="+variant, func(t *testing.T) {
			_, path := clustertest.NetNS(t, "sbipl")
			k, err := New(Config{NetNS: path, Variant: variant, NodeIPs: []netip.Addr{netip.MustParseAddr("10.0.1.1")}})
			must(t, err)
			defer k.Close()
			key := sp.Key.ServiceKey
			must(t, k.Sync(snapshot.New(map[snapshot.ServiceKey][]*snapshot.ServicePort{key: {sp}}), snapshot.Changes{Full: true}))
			readBack(t, k, key)
		})
	}
}
