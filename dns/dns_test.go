package dns

import (
	"bytes"
	"context"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/switchboard/switchboard/clustertest"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Main(m)) }

// testServer serves an index fed from the real API server on loopback.
type testServer struct {
	srv  *Server
	addr string
}

func startServer(t *testing.T, client kubernetes.Interface, upstreams []string) *testServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	idx := NewIndex()
	if err := idx.Watch(ctx, client); err != nil {
		t.Fatal(err)
	}
	srv := NewServer(Config{Upstreams: upstreams, UpstreamTimeout: 300 * time.Millisecond}, idx)
	// The UDP port the kernel picks may be taken for TCP by another
	// process (tests run in parallel on the machine): pick again.
	var pc net.PacketConn
	var l net.Listener
	for try := 0; l == nil; try++ {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if l, err = net.Listen("tcp", pc.LocalAddr().String()); err != nil {
			pc.Close()
			if try == 20 {
				t.Fatal(err)
			}
		}
	}
	go srv.ServePacket(ctx, pc)
	go srv.ServeListener(ctx, l)
	return &testServer{srv: srv, addr: pc.LocalAddr().String()}
}

func (ts *testServer) query(t *testing.T, network, name string, qtype uint16, edns uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edns > 0 {
		m.SetEdns0(edns, false)
	}
	c := &dns.Client{Net: network, Timeout: 2 * time.Second, UDPSize: 65535}
	in, _, err := c.Exchange(m, ts.addr)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", dns.TypeToString[qtype], name, network, err)
	}
	return in
}

// rrs renders records without TTL variance, sorted, for comparison.
func rrs(records []dns.RR) []string {
	var out []string
	for _, rr := range records {
		if rr.Header().Rrtype == dns.TypeOPT {
			continue
		}
		if soa, ok := rr.(*dns.SOA); ok {
			// The serial is the time of the index's last change.
			c := *soa
			c.Serial = 0
			rr = &c
		}
		out = append(out, strings.ReplaceAll(rr.String(), "\t", " "))
	}
	sort.Strings(out)
	return out
}

func create(t *testing.T, c kubernetes.Interface, ns string, objs ...any) {
	t.Helper()
	ctx := context.Background()
	for _, o := range objs {
		var err error
		switch o := o.(type) {
		case *corev1.Service:
			_, err = c.CoreV1().Services(ns).Create(ctx, o, metav1.CreateOptions{})
		case *discoveryv1.EndpointSlice:
			_, err = c.DiscoveryV1().EndpointSlices(ns).Create(ctx, o, metav1.CreateOptions{})
		case *corev1.Pod:
			var p *corev1.Pod
			status := o.Status
			err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
				p, err = c.CoreV1().Pods(ns).Create(ctx, o, metav1.CreateOptions{})
				return err == nil, nil
			})
			if err == nil {
				p.Status = status
				_, err = c.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
			}
		}
		if err != nil {
			t.Fatalf("create %T: %v", o, err)
		}
	}
}

func slice(name, svc string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4, Ports: ports, Endpoints: eps,
	}
}

func ep(ip string, ready bool, hostname string) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready)}}
	if hostname != "" {
		e.Hostname = ptr.To(hostname)
	}
	return e
}

// TestRecords checks every record kind with its exact answer.
func TestRecords(t *testing.T) {
	client, _ := clustertest.Client(t)
	ns := clustertest.Namespace(t, client)
	httpPort := []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}}
	web := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: corev1.ServiceSpec{
		Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}, {Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}}}
	create(t, client, ns, web,
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "db"}, Spec: corev1.ServiceSpec{ClusterIP: "None",
			Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}},
		slice("db-a", "db", httpPort, ep("10.244.9.11", true, "db-0"), ep("10.244.9.12", true, ""), ep("10.244.9.13", false, "")),
		slice("db-b", "db", httpPort, ep("10.244.9.14", true, "")),
		slice("web-a", "web", httpPort, ep("10.244.9.21", true, "")),
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "empty"}, Spec: corev1.ServiceSpec{ClusterIP: "None"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ext"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.org"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "extip"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "192.0.2.1"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "alias"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "web." + ns + ".svc.cluster.local"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "dangling"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "nosuch." + ns + ".svc.cluster.local"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ds"}, Spec: corev1.ServiceSpec{
			IPFamilyPolicy: ptr.To(corev1.IPFamilyPolicyRequireDualStack), IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}},
			Status: corev1.PodStatus{PodIP: "10.244.9.12", PodIPs: []corev1.PodIP{{IP: "10.244.9.12"}}}},
	)
	svc, err := client.CoreV1().Services(ns).Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := svc.Spec.ClusterIP
	ds, err := client.CoreV1().Services(ns).Get(context.Background(), "ds", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds.Spec.ClusterIPs) != 2 {
		t.Fatalf("dual-stack service got cluster IPs %v", ds.Spec.ClusterIPs)
	}
	ds4, ds6 := ds.Spec.ClusterIPs[0], ds.Spec.ClusterIPs[1]
	ts := startServer(t, client, nil)
	z := "cluster.local."
	s := func(name string) string { return name + "." + ns + ".svc." + z }
	rev := func(ip string) string {
		p := strings.Split(ip, ".")
		return p[3] + "." + p[2] + "." + p[1] + "." + p[0] + ".in-addr.arpa."
	}
	soa := "cluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local."
	mixed := func(name string) string { return name + "." + ns + ".SvC.cLuStEr.LoCaL." }
	for _, tc := range []struct {
		name   string
		qtype  uint16
		rcode  int
		answer []string
		extra  []string
		soa    string // the authority SOA of an empty answer, when not soa
	}{
		{s("web"), dns.TypeA, dns.RcodeSuccess, []string{s("web") + " 30 IN A " + vip}, nil, ""},
		{strings.ToUpper(s("web")), dns.TypeA, dns.RcodeSuccess, []string{strings.ToUpper(s("web")) + " 30 IN A " + vip}, nil, ""},
		{s("web"), dns.TypeAAAA, dns.RcodeSuccess, nil, nil, ""}, // NODATA
		{s("web"), dns.TypeMX, dns.RcodeSuccess, nil, nil, ""},
		{"_http._tcp." + s("web"), dns.TypeSRV, dns.RcodeSuccess, []string{"_http._tcp." + s("web") + " 30 IN SRV 0 100 80 " + s("web")}, []string{s("web") + " 30 IN A " + vip}, ""},
		{"_dns._udp." + s("web"), dns.TypeSRV, dns.RcodeSuccess, []string{"_dns._udp." + s("web") + " 30 IN SRV 0 100 53 " + s("web")}, []string{s("web") + " 30 IN A " + vip}, ""},
		{"_http._udp." + s("web"), dns.TypeSRV, dns.RcodeNameError, nil, nil, ""},
		{"_nope._tcp." + s("web"), dns.TypeSRV, dns.RcodeNameError, nil, nil, ""},
		{s("web"), dns.TypeSRV, dns.RcodeSuccess, []string{s("web") + " 30 IN SRV 0 50 53 " + s("web"), s("web") + " 30 IN SRV 0 50 80 " + s("web")}, []string{s("web") + " 30 IN A " + vip}, ""},
		{s("nosuch"), dns.TypeA, dns.RcodeNameError, nil, nil, ""},
		// A dual-stack Service answers A and AAAA with its two cluster IPs,
		// and each has its PTR. As CoreDNS, its SRV weighs the port once
		// per cluster IP (100/2) before merging the two same-target
		// records into one.
		{s("ds"), dns.TypeA, dns.RcodeSuccess, []string{s("ds") + " 30 IN A " + ds4}, nil, ""},
		{s("ds"), dns.TypeAAAA, dns.RcodeSuccess, []string{s("ds") + " 30 IN AAAA " + ds6}, nil, ""},
		{"_http._tcp." + s("ds"), dns.TypeSRV, dns.RcodeSuccess, []string{"_http._tcp." + s("ds") + " 30 IN SRV 0 50 80 " + s("ds")},
			[]string{s("ds") + " 30 IN A " + ds4, s("ds") + " 30 IN AAAA " + ds6}, ""},
		{mustReverse(t, ds6), dns.TypePTR, dns.RcodeSuccess, []string{mustReverse(t, ds6) + " 30 IN PTR " + s("ds")}, nil, ""},
		{s("db"), dns.TypeA, dns.RcodeSuccess, []string{s("db") + " 30 IN A 10.244.9.11", s("db") + " 30 IN A 10.244.9.12", s("db") + " 30 IN A 10.244.9.14"}, nil, ""},
		{"db-0." + s("db"), dns.TypeA, dns.RcodeSuccess, []string{"db-0." + s("db") + " 30 IN A 10.244.9.11"}, nil, ""},
		{"10-244-9-12." + s("db"), dns.TypeA, dns.RcodeSuccess, []string{"10-244-9-12." + s("db") + " 30 IN A 10.244.9.12"}, nil, ""},
		{"10-244-9-13." + s("db"), dns.TypeA, dns.RcodeNameError, nil, nil, ""}, // not ready
		{"_http._tcp." + s("db"), dns.TypeSRV, dns.RcodeSuccess, []string{
			"_http._tcp." + s("db") + " 30 IN SRV 0 33 8080 10-244-9-12." + s("db"),
			"_http._tcp." + s("db") + " 30 IN SRV 0 33 8080 10-244-9-14." + s("db"),
			"_http._tcp." + s("db") + " 30 IN SRV 0 33 8080 db-0." + s("db")}, []string{
			"10-244-9-12." + s("db") + " 30 IN A 10.244.9.12", "10-244-9-14." + s("db") + " 30 IN A 10.244.9.14", "db-0." + s("db") + " 30 IN A 10.244.9.11"}, ""},
		{s("ext"), dns.TypeA, dns.RcodeSuccess, []string{s("ext") + " 30 IN CNAME example.org."}, nil, ""},
		{rev(vip), dns.TypePTR, dns.RcodeSuccess, []string{rev(vip) + " 30 IN PTR " + s("web")}, nil, ""},
		{rev("10.244.9.11"), dns.TypePTR, dns.RcodeSuccess, []string{rev("10.244.9.11") + " 30 IN PTR db-0." + s("db")}, nil, ""},
		{"dns-version." + z, dns.TypeTXT, dns.RcodeSuccess, []string{"dns-version." + z + ` 28800 IN TXT "1.1.0"`}, nil, ""},
		{"dns-version." + z, dns.TypeA, dns.RcodeNameError, nil, nil, ""},
		// As CoreDNS: endpoint names and PTRs exist for ClusterIP Services too,
		// port labels need no underscore, a bare "_" matches any, "*" nothing,
		// and a headless Service without ready endpoints is a name error.
		{"10-244-9-21." + s("web"), dns.TypeA, dns.RcodeSuccess, []string{"10-244-9-21." + s("web") + " 30 IN A 10.244.9.21"}, nil, ""},
		{rev("10.244.9.21"), dns.TypePTR, dns.RcodeSuccess, []string{rev("10.244.9.21") + " 30 IN PTR 10-244-9-21." + s("web")}, nil, ""},
		{"http.tcp." + s("web"), dns.TypeSRV, dns.RcodeSuccess, []string{"http.tcp." + s("web") + " 30 IN SRV 0 100 80 " + s("web")}, nil, ""},
		{"_._tcp." + s("web"), dns.TypeSRV, dns.RcodeSuccess, []string{"_._tcp." + s("web") + " 30 IN SRV 0 100 80 " + s("web")}, nil, ""},
		{"_*._tcp." + s("web"), dns.TypeSRV, dns.RcodeNameError, nil, nil, ""},
		{s("empty"), dns.TypeA, dns.RcodeNameError, nil, nil, ""},
		{"10-244-9-12." + ns + ".pod." + z, dns.TypeA, dns.RcodeSuccess, []string{"10-244-9-12." + ns + ".pod." + z + " 30 IN A 10.244.9.12"}, nil, ""},
		{"10-244-9-99." + ns + ".pod." + z, dns.TypeA, dns.RcodeNameError, nil, nil, ""}, // no such pod: verified
		{ns + ".svc." + z, dns.TypeA, dns.RcodeSuccess, nil, nil, ""},
		{"no-such-namespace.svc." + z, dns.TypeA, dns.RcodeNameError, nil, nil, ""},
		{"nonsense." + z, dns.TypeA, dns.RcodeNameError, nil, nil, ""},
		{z, dns.TypeNS, dns.RcodeSuccess, []string{z + " 30 IN NS ns.dns." + z}, nil, ""},
		// SRV on an endpoint name: findServices' endpoint branch, every
		// port of the endpoint, for headless and ClusterIP Services alike;
		// with _port._proto in front the name is too long: NXDOMAIN.
		{"db-0." + s("db"), dns.TypeSRV, dns.RcodeSuccess, []string{"db-0." + s("db") + " 30 IN SRV 0 100 8080 db-0." + s("db")},
			[]string{"db-0." + s("db") + " 30 IN A 10.244.9.11"}, ""},
		{"10-244-9-21." + s("web"), dns.TypeSRV, dns.RcodeSuccess, []string{"10-244-9-21." + s("web") + " 30 IN SRV 0 100 8080 10-244-9-21." + s("web")},
			[]string{"10-244-9-21." + s("web") + " 30 IN A 10.244.9.21"}, ""},
		{"_http._tcp.db-0." + s("db"), dns.TypeSRV, dns.RcodeNameError, nil, nil, ""},
		{"nobody." + s("db"), dns.TypeSRV, dns.RcodeNameError, nil, nil, ""},
		// SOA below the apex is NODATA, existing name or not; NS below it
		// answers as the fake A lookup; a reverse name's SOA is its zone's.
		{s("web"), dns.TypeSOA, dns.RcodeSuccess, nil, nil, ""},
		{s("nosuch"), dns.TypeSOA, dns.RcodeSuccess, nil, nil, ""},
		{"nonsense." + z, dns.TypeSOA, dns.RcodeSuccess, nil, nil, ""},
		{"dns-version." + z, dns.TypeSOA, dns.RcodeSuccess, nil, nil, ""},
		{s("web"), dns.TypeNS, dns.RcodeSuccess, nil, nil, ""},
		{s("nosuch"), dns.TypeNS, dns.RcodeNameError, nil, nil, ""},
		{rev(vip), dns.TypeSOA, dns.RcodeSuccess, nil, nil, "in-addr.arpa. 30 IN SOA ns.dns.in-addr.arpa. hostmaster.in-addr.arpa."},
		{"in-addr.arpa.", dns.TypeSOA, dns.RcodeSuccess, []string{"in-addr.arpa. 30 IN SOA ns.dns.in-addr.arpa. hostmaster.in-addr.arpa. 0 7200 1800 86400 30"}, nil, ""},
		// TXT is NODATA everywhere but dns-version.
		{s("web"), dns.TypeTXT, dns.RcodeSuccess, nil, nil, ""},
		{s("nosuch"), dns.TypeTXT, dns.RcodeSuccess, nil, nil, ""},
		// ExternalName: an IP address is no CNAME, so no items; a target in
		// the zone is followed for A and AAAA, and a dangling one or a type
		// the target lacks is NODATA; CNAME answers the CNAME alone; SRV and
		// other types are NODATA.
		{s("extip"), dns.TypeA, dns.RcodeNameError, nil, nil, ""},
		{s("extip"), dns.TypeCNAME, dns.RcodeNameError, nil, nil, ""},
		{s("alias"), dns.TypeA, dns.RcodeSuccess, []string{s("alias") + " 30 IN CNAME " + s("web"), s("web") + " 30 IN A " + vip}, nil, ""},
		{s("alias"), dns.TypeAAAA, dns.RcodeSuccess, nil, nil, ""},
		{s("alias"), dns.TypeCNAME, dns.RcodeSuccess, []string{s("alias") + " 30 IN CNAME " + s("web")}, nil, ""},
		{s("dangling"), dns.TypeA, dns.RcodeSuccess, nil, nil, ""},
		{s("ext"), dns.TypeSRV, dns.RcodeSuccess, nil, nil, ""},
		{s("ext"), dns.TypeMX, dns.RcodeSuccess, nil, nil, ""},
		// The zone as the client spelled it: SOA owner, NS and mailbox,
		// SRV targets (the Service's own names stay lower case); NS at an
		// apex spelled with upper case is NODATA (handler.go compares the
		// lower-cased name with the zone as spelled).
		{mixed("not-a-service"), dns.TypeA, dns.RcodeNameError, nil, nil, "cLuStEr.LoCaL. 30 IN SOA ns.dns.cLuStEr.LoCaL. hostmaster.cLuStEr.LoCaL."},
		{"_HtTp._TcP." + mixed("wEb"), dns.TypeSRV, dns.RcodeSuccess, []string{"_HtTp._TcP." + mixed("wEb") + " 30 IN SRV 0 100 80 web." + ns + ".svc.cLuStEr.LoCaL."},
			[]string{"web." + ns + ".svc.cLuStEr.LoCaL. 30 IN A " + vip}, ""},
		{"Cluster.local.", dns.TypeSOA, dns.RcodeSuccess, []string{"Cluster.local. 30 IN SOA ns.dns.Cluster.local. hostmaster.Cluster.local. 0 7200 1800 86400 30"}, nil, ""},
		{"Cluster.Local.", dns.TypeNS, dns.RcodeSuccess, nil, nil, "Cluster.Local. 30 IN SOA ns.dns.Cluster.Local. hostmaster.Cluster.Local."},
	} {
		t.Run(dns.TypeToString[tc.qtype]+" "+tc.name, func(t *testing.T) {
			var in *dns.Msg
			// The index follows the API through informers: wait for it.
			wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
				in = ts.query(t, "udp", tc.name, tc.qtype, 0)
				return in.Rcode == tc.rcode && strings.Join(rrs(in.Answer), "\n") == strings.Join(tc.answer, "\n"), nil
			})
			if in.Rcode != tc.rcode {
				t.Errorf("rcode %s, want %s", dns.RcodeToString[in.Rcode], dns.RcodeToString[tc.rcode])
			}
			if got := rrs(in.Answer); strings.Join(got, "\n") != strings.Join(tc.answer, "\n") {
				t.Errorf("answer\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.answer, "\n"))
			}
			if got := rrs(in.Extra); tc.extra != nil && strings.Join(got, "\n") != strings.Join(tc.extra, "\n") {
				t.Errorf("extra\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.extra, "\n"))
			}
			if !in.Authoritative {
				t.Error("answer from the cluster zone is not authoritative")
			}
			if len(in.Answer) == 0 {
				want := soa
				if tc.soa != "" {
					want = tc.soa
				}
				if len(in.Ns) != 1 || !strings.HasPrefix(strings.ReplaceAll(in.Ns[0].String(), "\t", " "), want) {
					t.Errorf("negative answer authority %v, want the zone SOA %q...", in.Ns, want)
				}
				if s, ok := in.Ns[0].(*dns.SOA); ok && (s.Refresh != 7200 || s.Retry != 1800 || s.Expire != 86400 || s.Minttl != 30) {
					t.Errorf("SOA timers %v", s)
				}
			}
		})
	}
}

// mustReverse is ip's reverse-lookup name (in-addr.arpa or ip6.arpa).
func mustReverse(t *testing.T, ip string) string {
	t.Helper()
	r, err := dns.ReverseAddr(ip)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestTruncation checks a headless answer too big for 512 bytes sets TC
// over UDP, fits in a large EDNS0 buffer, and comes whole over TCP.
func TestTruncation(t *testing.T) {
	client, _ := clustertest.Client(t)
	ns := clustertest.Namespace(t, client)
	var eps []discoveryv1.Endpoint
	for i := 1; i <= 60; i++ {
		eps = append(eps, ep(fmt.Sprintf("10.244.8.%d", i), true, ""))
	}
	create(t, client, ns, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "big"}, Spec: corev1.ServiceSpec{ClusterIP: "None"}},
		slice("big-a", "big", nil, eps...))
	ts := startServer(t, client, nil)
	name := "big." + ns + ".svc.cluster.local."
	var tcp *dns.Msg
	wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		tcp = ts.query(t, "tcp", name, dns.TypeA, 0)
		return len(tcp.Answer) == 60, nil
	})
	if len(tcp.Answer) != 60 || tcp.Truncated {
		t.Fatalf("TCP: %d answers, truncated %v; want 60, false", len(tcp.Answer), tcp.Truncated)
	}
	if udp := ts.query(t, "udp", name, dns.TypeA, 0); !udp.Truncated || len(udp.Answer) >= 60 {
		t.Errorf("UDP without EDNS0: truncated %v with %d answers; want TC and fewer", udp.Truncated, len(udp.Answer))
	}
	big := ts.query(t, "udp", name, dns.TypeA, 4096)
	if big.Truncated || len(big.Answer) != 60 || big.IsEdns0() == nil {
		t.Errorf("UDP with EDNS0 4096: truncated %v, %d answers, OPT %v; want whole with OPT", big.Truncated, len(big.Answer), big.IsEdns0())
	}
}

// startUpstream runs a UDP resolver on loopback answering with handle,
// standing in for the host's upstream DNS.
func startUpstream(t *testing.T, handle func(dns.ResponseWriter, *dns.Msg)) *dns.Server {
	t.Helper()
	up := &dns.Server{Addr: "127.0.0.1:0", Net: "udp", Handler: dns.HandlerFunc(handle)}
	started := make(chan struct{})
	up.NotifyStartedFunc = func() { close(started) }
	go up.ListenAndServe()
	<-started
	t.Cleanup(func() { up.Shutdown() })
	return up
}

// TestForwarding checks out-of-zone names go upstream, are cached, and
// that with no upstream answering the client gets SERVFAIL, not silence.
func TestForwarding(t *testing.T) {
	client, _ := clustertest.Client(t)
	var asked atomic.Int32
	up := startUpstream(t, func(w dns.ResponseWriter, r *dns.Msg) {
		asked.Add(1)
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP("192.0.2.7")}}
		w.WriteMsg(m)
	})
	ts := startServer(t, client, []string{up.PacketConn.LocalAddr().String()})
	for i := 0; i < 3; i++ {
		in := ts.query(t, "udp", "www.example.com.", dns.TypeA, 0)
		if in.Rcode != dns.RcodeSuccess || len(in.Answer) != 1 || in.Answer[0].(*dns.A).A.String() != "192.0.2.7" {
			t.Fatalf("forwarded answer %v", in)
		}
	}
	if n := asked.Load(); n != 1 {
		t.Errorf("upstream asked %d times for one name; want 1 (cache)", n)
	}
	dead := startServer(t, client, []string{"127.0.0.1:1"})
	if in := dead.query(t, "udp", "www.example.com.", dns.TypeA, 0); in.Rcode != dns.RcodeServerFailure {
		t.Errorf("no upstream: rcode %s, want SERVFAIL", dns.RcodeToString[in.Rcode])
	}
}

// TestMalformed checks bad queries get an error rcode and the server lives on.
func TestMalformed(t *testing.T) {
	srv := NewServer(Config{}, NewIndex())
	two := new(dns.Msg)
	two.SetQuestion("a.cluster.local.", dns.TypeA)
	two.Question = append(two.Question, dns.Question{Name: "b.cluster.local.", Qtype: dns.TypeA, Qclass: dns.ClassINET})
	if m := srv.respond(two, "udp", 0); m.Rcode != dns.RcodeFormatError {
		t.Errorf("two questions: %s, want FORMERR", dns.RcodeToString[m.Rcode])
	}
	upd := new(dns.Msg)
	upd.SetUpdate("cluster.local.")
	if m := srv.respond(upd, "udp", 0); m.Rcode != dns.RcodeNotImplemented {
		t.Errorf("UPDATE: %s, want NOTIMP", dns.RcodeToString[m.Rcode])
	}
	weird := new(dns.Msg)
	weird.SetQuestion("x.svc.cluster.local.", 65280)
	if m := srv.respond(weird, "udp", 0); m.Rcode != dns.RcodeNameError {
		t.Errorf("unknown type for a missing name: %s, want NXDOMAIN", dns.RcodeToString[m.Rcode])
	}
}

// FuzzRespond feeds arbitrary packets through parsing and answering: no
// input may panic, and every answer must pack within the size limit.
func FuzzRespond(f *testing.F) {
	for _, name := range []string{"web.default.svc.cluster.local.", "_http._tcp.db.ns.svc.cluster.local.", "1.0.96.10.in-addr.arpa.", "dns-version.cluster.local.", "10-244-1-2.ns.pod.cluster.local."} {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		b, _ := m.Pack()
		f.Add(b)
	}
	idx := NewIndex()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	idx.SetService("default", "web", svc)
	idx.SetNamespace("default", true)
	srv := NewServer(Config{}, idx)
	bench := NewServer(Config{}, benchIndex(5, 2))
	for _, name := range []string{"svc0001.bench.svc.cluster.local.", "_http._tcp.HL001.bench.svc.cluster.local.", "big.bench.svc.cluster.local."} {
		for _, edns := range []int{-1, 1232} {
			f.Add(query(name, dns.TypeSRV, 9, true, true, edns, true))
		}
	}
	// What CoreDNS answers before any lookup: EDNS versions above 0, two
	// OPT records, zone transfers, another class.
	for _, edit := range []func(*dns.Msg){
		func(m *dns.Msg) { m.SetEdns0(1232, true); m.IsEdns0().SetVersion(1) },
		func(m *dns.Msg) {
			m.SetEdns0(1232, false)
			m.Extra = append(m.Extra, &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT, Class: 512}})
		},
		func(m *dns.Msg) { m.Question[0].Qtype = dns.TypeAXFR },
		func(m *dns.Msg) { m.Question[0].Qtype = dns.TypeIXFR; m.SetEdns0(4096, false) },
		func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS },
	} {
		for _, name := range []string{"hl001.bench.svc.cluster.local.", "cluster.local.", "in-addr.arpa."} {
			m := new(dns.Msg)
			m.SetQuestion(name, dns.TypeA)
			edit(m)
			b, _ := m.Pack()
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		// The fast path, where it answers, answers as the slow path.
		// The shuffle's seed, varied with the input.
		h := fnv.New64a()
		h.Write(b)
		seed := h.Sum64()
		if fast := fastReply(bench, b, seed); fast != nil {
			if slow := slowReply(t, bench, b, seed); !bytes.Equal(fast, slow) {
				t.Fatalf("fast reply\n%x\nslow\n%x", fast, slow)
			}
		}
		r := new(dns.Msg)
		if err := r.Unpack(b); err != nil {
			return // the wire server answers FORMERR before us
		}
		m := srv.respond(r, "udp", 0)
		if len(r.Question) == 1 && r.Opcode == dns.OpcodeQuery {
			want := -1
			switch opt := r.IsEdns0(); {
			case optCount(r) > 1:
				want = dns.RcodeFormatError
			case r.Question[0].Qclass != dns.ClassINET:
				want = dns.RcodeRefused
			case opt != nil && opt.Version() != 0:
				want = dns.RcodeBadVers
			case (r.Question[0].Qtype == dns.TypeAXFR || r.Question[0].Qtype == dns.TypeIXFR) &&
				dns.IsSubDomain("cluster.local.", strings.ToLower(dns.Fqdn(r.Question[0].Name))):
				want = dns.RcodeRefused
			}
			if want >= 0 && m.Rcode != want {
				t.Fatalf("%v: rcode %s, want %s", r.Question[0], dns.RcodeToString[m.Rcode], dns.RcodeToString[want])
			}
		}
		out, err := m.Pack()
		if err != nil {
			t.Fatalf("reply does not pack: %v", err)
		}
		if len(out) > 65535 {
			t.Fatalf("reply of %d bytes", len(out))
		}
	})
}

// TestPodRecords checks pod records follow CoreDNS v1.15.0 for terminating
// pods: one first seen terminating has none, one that was running keeps
// its record until it is gone; and only the primary address counts.
func TestPodRecords(t *testing.T) {
	client, _ := clustertest.Client(t)
	ns := clustertest.Namespace(t, client)
	ctx := context.Background()
	const hold = "switchboard.dev/test-hold"
	pod := func(name, ip string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Finalizers: []string{hold}},
			Spec:   corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}},
			Status: corev1.PodStatus{PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}}
	}
	release := func(name string) {
		if p, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
			p.Finalizers = nil
			client.CoreV1().Pods(ns).Update(ctx, p, metav1.UpdateOptions{})
		}
	}
	t.Cleanup(func() { release("early"); release("late") })
	create(t, client, ns, pod("early", "10.244.7.1"), pod("late", "10.244.7.2"))
	// "early" is terminating (held by its finalizer) before DNS starts.
	if err := client.CoreV1().Pods(ns).Delete(ctx, "early", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, client, nil)
	name := func(ip string) string { return strings.ReplaceAll(ip, ".", "-") + "." + ns + ".pod.cluster.local." }
	if in := ts.query(t, "udp", name("10.244.7.1"), dns.TypeA, 0); in.Rcode != dns.RcodeNameError {
		t.Errorf("pod first seen terminating: %s, want NXDOMAIN", dns.RcodeToString[in.Rcode])
	}
	if in := ts.query(t, "udp", name("10.244.7.2"), dns.TypeA, 0); in.Rcode != dns.RcodeSuccess || len(in.Answer) != 1 {
		t.Fatalf("running pod: %v", in)
	}
	if err := client.CoreV1().Pods(ns).Delete(ctx, "late", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // let the update reach the index
	if in := ts.query(t, "udp", name("10.244.7.2"), dns.TypeA, 0); in.Rcode != dns.RcodeSuccess || len(in.Answer) != 1 {
		t.Errorf("pod turned terminating: %v, want its record still", in)
	}
	release("late")
	var in *dns.Msg
	wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		in = ts.query(t, "udp", name("10.244.7.2"), dns.TypeA, 0)
		return in.Rcode == dns.RcodeNameError, nil
	})
	if in.Rcode != dns.RcodeNameError {
		t.Errorf("deleted pod: %s, want NXDOMAIN", dns.RcodeToString[in.Rcode])
	}
}

// TestExternalNameUpstream checks an ExternalName outside the zone is
// followed through the upstream resolvers for A queries, as CoreDNS's
// plugin/pkg/upstream lookup through the whole server does.
func TestExternalNameUpstream(t *testing.T) {
	client, _ := clustertest.Client(t)
	ns := clustertest.Namespace(t, client)
	up := startUpstream(t, func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if r.Question[0].Qtype == dns.TypeA {
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP("192.0.2.7")}}
		}
		w.WriteMsg(m)
	})
	create(t, client, ns, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ext"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.org"}})
	ts := startServer(t, client, []string{up.PacketConn.LocalAddr().String()})
	name := "ext." + ns + ".svc.cluster.local."
	var in *dns.Msg
	wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		in = ts.query(t, "udp", name, dns.TypeA, 0)
		return len(in.Answer) == 2, nil
	})
	if in.Rcode != dns.RcodeSuccess || len(in.Answer) != 2 {
		t.Fatalf("A %s: %v", name, in)
	}
	if c, ok := in.Answer[0].(*dns.CNAME); !ok || c.Target != "example.org." || c.Hdr.Name != name {
		t.Errorf("first answer %v, want %s CNAME example.org.", in.Answer[0], name)
	}
	if a, ok := in.Answer[1].(*dns.A); !ok || a.Hdr.Name != "example.org." || a.A.String() != "192.0.2.7" {
		t.Errorf("second answer %v, want example.org. A 192.0.2.7", in.Answer[1])
	}
	// No AAAA upstream: the CNAME alone.
	if in := ts.query(t, "udp", name, dns.TypeAAAA, 0); in.Rcode != dns.RcodeSuccess || len(in.Answer) != 1 {
		t.Errorf("AAAA %s: %v, want the CNAME alone", name, in)
	}
}

// TestRelabelledSliceLeavesItsService moves a slice to another Service by
// its label, through the API: the endpoint's records leave the Service it
// belonged to and answer under the new one, as CoreDNS's endpoint index
// does; unlabelled, it answers under neither.
func TestRelabelledSliceLeavesItsService(t *testing.T) {
	client, _ := clustertest.Client(t)
	ns := clustertest.Namespace(t, client)
	ctx := context.Background()
	httpPort := []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}}
	headless := func(name string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.ServiceSpec{ClusterIP: "None",
			Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	}
	create(t, client, ns, headless("a"), headless("b"), slice("x", "a", httpPort, ep("10.244.9.31", true, "")))
	ts := startServer(t, client, nil)
	name := func(svc string) string { return svc + "." + ns + ".svc.cluster.local." }
	answers := func(svc string) string {
		return strings.Join(rrs(ts.query(t, "udp", name(svc), dns.TypeA, 0).Answer), ",")
	}
	// waitFor polls until a and b answer as wanted: the index follows the
	// API through a watch.
	waitFor := func(wantA, wantB string) {
		t.Helper()
		var a, b string
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if a, b = answers("a"), answers("b"); a == wantA && b == wantB {
				return
			}
		}
		t.Fatalf("a answers %q, want %q; b answers %q, want %q", a, wantA, b, wantB)
	}
	rec := func(svc string) string { return name(svc) + " 30 IN A 10.244.9.31" }
	waitFor(rec("a"), "")
	relabel := func(label string) {
		t.Helper()
		sl, err := client.DiscoveryV1().EndpointSlices(ns).Get(ctx, "x", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if label == "" {
			delete(sl.Labels, discoveryv1.LabelServiceName)
		} else {
			sl.Labels[discoveryv1.LabelServiceName] = label
		}
		if _, err := client.DiscoveryV1().EndpointSlices(ns).Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	relabel("b")
	waitFor("", rec("b"))
	relabel("")
	waitFor("", "")
}
