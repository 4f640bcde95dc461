package doctor

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/switchboard/switchboard/clustertest"
	"github.com/switchboard/switchboard/proxy"
)

// TestDataPlaneFindings runs real node proxies in network namespaces the
// test makes, behind Nodes on the real API server, and checks each
// data-plane finding: the packet path per node, a node whose proxy cannot
// be reached, a proxy that lags the EndpointSlices (a sync period of an
// hour, like a kube-proxy with a huge --min-sync-period) and has not even
// seen a new Service, rules flushed from the kernel behind the proxy's
// back, and a cluster without a DNS Service.
func TestDataPlaneFindings(t *testing.T) {
	client, _ := clustertest.Client(t)
	ns := clustertest.Namespace(t, client)
	ctx := context.Background()
	nodeNS := map[string]string{}
	node := func(suffix string) string { return ns + "-" + suffix }
	for _, n := range []string{"fast", "slow", "gone"} {
		name := node(n)
		if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
		if n != "gone" {
			_, nodeNS[name] = clustertest.NetNS(t, "sbdoc")
		} else {
			nodeNS[name] = "/run/netns/" + name + "-does-not-exist"
		}
	}
	dp := NamespaceDataPlane{
		NodeNetNS: func(n string) string { return nodeNS[n] },
		PodNetNS:  func(string, string) string { return "" },
	}
	opts := Options{DataPlane: dp, DNSService: ns + "/no-dns"}

	svc := createService(t, client, ns, "web")
	setEndpoints(t, client, ns, "web", "10.244.0.11")
	startNodeProxy(t, client, node("fast"), nodeNS[node("fast")], 0)
	startNodeProxy(t, client, node("slow"), nodeNS[node("slow")], time.Hour)

	cip := svc.Spec.ClusterIP
	diagnose := func(name string) Report {
		t.Helper()
		r, err := Diagnose(ctx, client, ns, name, opts)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	var r Report
	deadline := time.Now().Add(30 * time.Second)
	for {
		r = diagnose("web")
		if len(findings(r, CodePacketPath)) == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	text := reportText(t, r)
	for _, want := range []string{
		fmt.Sprintf("on node %s, packets to the service go:", node("fast")),
		fmt.Sprintf("%s:80/TCP -> DNAT to 10.244.0.11:8080", cip),
		fmt.Sprintf("svc-1 %s . tcp . 80 . 0 : 10.244.0.11 . 8080", cip),
		fmt.Sprintf("could not read the proxy state of node %s", node("gone")),
		fmt.Sprintf("did not check DNS: cluster DNS service %s/no-dns", ns),
	} {
		if !strings.Contains(text, want) {
			t.Errorf("report lacks %q:\n%s", want, text)
		}
	}
	if !r.Healthy {
		t.Errorf("an unreachable node and no DNS are warnings, not problems:\n%s", text)
	}

	// The slow proxy synced once; what changes now waits an hour there.
	setEndpoints(t, client, ns, "web", "10.244.0.11", "10.244.0.12")
	createService(t, client, ns, "late")
	setEndpoints(t, client, ns, "late", "10.244.0.13")
	deadline = time.Now().Add(30 * time.Second)
	for {
		r = diagnose("web")
		if len(findings(r, CodeProxyStale)) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	text = reportText(t, r)
	stale := findings(r, CodeProxyStale)
	if r.Healthy || len(stale) != 1 || !strings.Contains(stale[0].Message, "node "+node("slow")+"'s proxy") ||
		!strings.Contains(stale[0].Message, "changes waiting since") ||
		!slices.Contains(stale[0].Details, "port http/TCP: endpoint 10.244.0.12:8080 is ready in the EndpointSlices but not programmed") {
		t.Errorf("want the slow node's stale endpoint 10.244.0.12:8080:\n%s", text)
	}
	t.Logf("stale report:\n%s", text)
	r = diagnose("late")
	if f := findings(r, CodeProxyNotProgrammed); r.Healthy || len(f) != 1 || !strings.Contains(f[0].Message, node("slow")) {
		t.Errorf("want the slow node not to have programmed service late:\n%s", reportText(t, r))
	}

	// Somebody flushes the fast node's bucket map.
	path := nodeNS[node("fast")]
	out, err := exec.Command("ip", "netns", "exec", path[strings.LastIndex(path, "/")+1:], "nft", "flush", "map", "ip", "switchboard", "svc-2").CombinedOutput()
	if err != nil {
		t.Fatalf("nft flush: %v: %s", err, out)
	}
	r = diagnose("web")
	drift := findings(r, CodeKernelDrift)
	if r.Healthy || len(drift) != 1 || !strings.Contains(drift[0].Message, "node "+node("fast")+"'s proxy finds 2 of") ||
		!slices.Contains(drift[0].Details, fmt.Sprintf("svc-2 %s . tcp . 80 . 1 : 10.244.0.12 . 8080", cip)) {
		t.Errorf("want the fast node's flushed elements reported:\n%s", reportText(t, r))
	}
}

func createService(t *testing.T, c kubernetes.Interface, ns, name string) *corev1.Service {
	t.Helper()
	svc, err := c.CoreV1().Services(ns).Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// setEndpoints writes (or rewrites) the Service's one hand-made slice.
func setEndpoints(t *testing.T, c kubernetes.Interface, ns, svc string, ips ...string) {
	t.Helper()
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: svc + "-manual", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for _, ip := range ips {
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	clustertest.ApplySlice(t, c, ns, sl)
}

// startNodeProxy runs a real node proxy programming netns, its metrics
// (and debug) server on the namespace's loopback.
func startNodeProxy(t *testing.T, c kubernetes.Interface, node, netns string, minSync time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- proxy.Run(ctx, proxy.Config{Client: c, NodeName: node, NodeIPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")},
			NetNS: netns, MetricsBindAddress: "127.0.0.1:10249", MinSyncInterval: minSync})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("proxy on %s: %v", node, err)
		}
	})
}

func findings(r Report, code string) []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if f.Code == code {
			out = append(out, f)
		}
	}
	return out
}

func reportText(t *testing.T, r Report) string {
	var b strings.Builder
	if err := WriteText(&b, []Report{r}); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
