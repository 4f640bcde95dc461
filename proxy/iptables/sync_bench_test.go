package iptables

import (
	"flag"
	"fmt"
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/switchboard/switchboard/clustertest"
	"github.com/switchboard/switchboard/proxy/snapshot"
)

var (
	benchServices = flag.Int("services", 500, "BenchmarkKernelSync: Services (× 10 endpoints)")
	benchVariant  = flag.String("variant", "", "BenchmarkKernelSync: iptables backend (\"\", nft or legacy)")
)

// BenchmarkKernelSync programs -services Services × 10 endpoints (500 by
// default) into a fresh namespace with the distribution's iptables (or
// -variant's), then measures a full sync and a partial sync replacing one
// endpoint.
//
//	go test -run - -bench KernelSync ./proxy/iptables -args -services 5000 -variant legacy
func BenchmarkKernelSync(b *testing.B) {
	clustertest.RequireRoot(b)
	services := *benchServices
	_, path := clustertest.NetNS(b, "sbipb")
	k, err := New(Config{NetNS: path, Variant: *benchVariant, NodeIPs: []netip.Addr{netip.MustParseAddr("10.0.1.1")},
		Options: Options{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}})
	if err != nil {
		b.Fatal(err)
	}
	defer k.Close()
	mk := func(i, gen int) []*snapshot.ServicePort {
		key := snapshot.ServiceKey{Namespace: "bench", Name: fmt.Sprintf("s%d", i)}
		sp := &snapshot.ServicePort{Key: snapshot.PortKey{ServiceKey: key, Port: "http", Protocol: v1.ProtocolTCP}, Protocol: v1.ProtocolTCP, Port: 80,
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})}}
		for e := range 10 {
			sp.Endpoints = append(sp.Endpoints, snapshot.Endpoint{Addr: netip.AddrFrom4([4]byte{10, 244, byte(e + gen*10), byte(i % 250)}), Port: 8080, Ready: true, Serving: true})
		}
		return []*snapshot.ServicePort{sp}
	}
	all := map[snapshot.ServiceKey][]*snapshot.ServicePort{}
	for i := range services {
		all[snapshot.ServiceKey{Namespace: "bench", Name: fmt.Sprintf("s%d", i)}] = mk(i, 0)
	}
	snap := snapshot.New(all)
	if err := k.Sync(snap, snapshot.Changes{Full: true}); err != nil {
		b.Fatal(err)
	}
	b.Run("full", func(b *testing.B) {
		for b.Loop() {
			if err := k.Sync(snap, snapshot.Changes{Full: true}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(k.Stats().Rules), "rules")
	})
	b.Run("one-endpoint", func(b *testing.B) {
		gen := 0
		for b.Loop() {
			gen = 1 - gen
			key := snapshot.ServiceKey{Namespace: "bench", Name: "s7"}
			ports := mk(7, 0)
			ports[0].Endpoints[3].Addr = netip.AddrFrom4([4]byte{10, 245, byte(gen), 7})
			snap = snap.With(map[snapshot.ServiceKey][]*snapshot.ServicePort{key: ports})
			if err := k.Sync(snap, snapshot.Changes{Keys: []snapshot.ServiceKey{key}}); err != nil {
				b.Fatal(err)
			}
		}
		w := k.Stats().LastWrite
		b.ReportMetric(float64(w.Added), "rules-added")
		b.ReportMetric(float64(w.Deleted), "rules-deleted")
	})
}

// BenchmarkFullText times the Go half of a full sync of -services
// Services × 10 endpoints on other nodes (as bench/proxycluster has them):
// translating every Service and writing the restore input, no kernel.
//
//	go test -run - -bench FullText ./proxy/iptables -args -services 5000
func BenchmarkFullText(b *testing.B) {
	opts := Options{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, LargeCluster: true}
	all := map[snapshot.ServiceKey][]*snapshot.ServicePort{}
	for i := range *benchServices {
		key := snapshot.ServiceKey{Namespace: "bench", Name: fmt.Sprintf("s%d", i)}
		sp := &snapshot.ServicePort{Key: snapshot.PortKey{ServiceKey: key, Port: "http", Protocol: v1.ProtocolTCP}, Protocol: v1.ProtocolTCP, Port: 80,
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})}}
		for e := range 10 {
			sp.Endpoints = append(sp.Endpoints, snapshot.Endpoint{Addr: netip.AddrFrom4([4]byte{10, 244, byte(e), byte(i % 250)}), Port: 8080, Ready: true, Serving: true})
		}
		all[key] = []*snapshot.ServicePort{sp}
	}
	snap := snapshot.New(all)
	nodeIPs := []netip.Addr{netip.MustParseAddr("10.0.1.1")}
	b.ReportAllocs()
	for b.Loop() {
		applied := translateAll(snap, opts)
		services := make([]Service, 0, len(applied))
		for _, s := range applied {
			services = append(services, s[0])
		}
		data, _ := FullText(true, nodeIPs, snap.ServiceCIDRs, services, nil)
		b.SetBytes(int64(len(data)))
	}
}
