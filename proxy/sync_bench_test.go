package proxy

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/switchboard/switchboard/netnamespace"
	"github.com/switchboard/switchboard/proxy/nftables"
	"github.com/switchboard/switchboard/proxy/snapshot"
)

func benchService(i int) *v1.Service {
	ip := fmt.Sprintf("10.%d.%d.%d", 96+i>>16, i>>8&255, i&255)
	return &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: fmt.Sprintf("svc-%d", i)},
		Spec: v1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip},
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}}}
}

func benchAddr(i, j int) string {
	n := 1<<20 + i*16 + j + 1
	return fmt.Sprintf("10.%d.%d.%d", n>>16, n>>8&255, n&255)
}

func benchSlice(i int, addrs []string) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: fmt.Sprintf("svc-%d-abc", i),
		Labels: map[string]string{discoveryv1.LabelServiceName: fmt.Sprintf("svc-%d", i)}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}}}
	for _, a := range addrs {
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	return sl
}

// BenchmarkOneEndpointChange times the sync loop's whole work for one
// endpoint replaced (a rollout: the pod whose address sorts last gives way
// to one whose address sorts first), from taking the change from the
// tracker to the end of the kernel write and the health and metrics
// updates, with N Services x 10 endpoints programmed into a real kernel
// in a network namespace. It reports the elements each change wrote.
func BenchmarkOneEndpointChange(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root for a network namespace")
	}
	for _, n := range []int{5000, 50000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			name := netnamespace.Unique("sbbench")
			path, del, err := netnamespace.Create(name)
			if err != nil {
				b.Fatal(err)
			}
			defer del()
			k, err := nftables.New(nftables.Config{NetNS: path, NodeIPs: []netip.Addr{netip.MustParseAddr("192.168.0.1")},
				Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
			if err != nil {
				b.Fatal(err)
			}
			defer k.Close()
			t := NewTracker("node")
			sh, slh := t.ServiceHandler(), t.SliceHandler()
			cur := make([][]string, n)
			for i := range n {
				sh.OnAdd(benchService(i), false)
				for j := range 10 {
					cur[i] = append(cur[i], benchAddr(i, j))
				}
				slh.OnAdd(benchSlice(i, cur[i]), false)
			}
			m := newMetrics()
			status := newSyncStatus(t)
			hc := newHealthCheckServers(path, nil, status, slog.Default())
			u := t.Next()
			full := snapshot.Changes{Full: true, Keys: u.Changed}
			if err := k.Sync(u.Snapshot, full); err != nil {
				b.Fatal(err)
			}
			status.synced(time.Now(), u.Snapshot)
			hc.update(u.Snapshot, full)
			m.record(u.Snapshot, k.Stats())
			var elems int
			var kernel time.Duration
			b.ResetTimer()
			for c := range b.N {
				i := (c * 97) % n
				old := benchSlice(i, cur[i])
				cur[i] = append([]string{fmt.Sprintf("10.15.%d.%d", c>>8&255, c&255)}, cur[i][:9]...)
				slh.OnUpdate(old, benchSlice(i, cur[i]))
				u := t.Next() // the change is taken here
				changes := snapshot.Changes{Keys: u.Changed}
				ks := time.Now()
				if err := k.Sync(u.Snapshot, changes); err != nil {
					b.Fatal(err)
				}
				kernel += time.Since(ks)
				status.synced(time.Now(), u.Snapshot)
				hc.update(u.Snapshot, changes)
				st := k.Stats()
				m.record(u.Snapshot, st)
				elems += st.LastWrite.Added + st.LastWrite.Deleted
			}
			b.ReportMetric(float64(elems)/float64(b.N), "elements/op")
			b.ReportMetric(float64(kernel.Microseconds())/float64(b.N), "kernel-µs/op")
		})
	}
}
