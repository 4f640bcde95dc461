package doctor

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/switchboard/switchboard/netnamespace"
	"github.com/switchboard/switchboard/proxydebug"
)

// Finding codes of the data-plane checks.
const (
	CodeProxyUnreachable   = "ProxyStateUnavailable"
	CodeProxyNotProgrammed = "ProxyHasNotProgrammedService"
	CodeProxyStale         = "ProxyEndpointsStale"
	CodeKernelDrift        = "KernelRulesMissing"
	CodePacketPath         = "PacketPath"
	CodeDNSUnavailable     = "DNSCheckUnavailable"
	CodeDNSWrong           = "DNSAnswerWrong"
	CodeDNSResolves        = "DNSResolves"
)

// DataPlane reaches what the API does not hold: what each node's proxy has
// programmed, and cluster DNS as seen from inside the cluster network.
type DataPlane interface {
	// ProxyState reads node's proxy debug state (proxydebug.Path) narrowed
	// to one Service.
	ProxyState(ctx context.Context, node, namespace, name string) (*proxydebug.State, error)
	// Dial connects to address from the network of pod (nil: wherever the
	// data plane can reach the cluster network from) and says from where,
	// for the report ("pod default/client").
	Dial(ctx context.Context, pod *corev1.Pod, network, address string) (net.Conn, string, error)
}

// Options configure the checks that need more than the API.
type Options struct {
	// DataPlane, when set, adds the proxy, packet-path and DNS checks.
	DataPlane DataPlane
	// ClusterDomain is the DNS zone (default cluster.local).
	ClusterDomain string
	// DNSService is the cluster DNS Service (default kube-system/kube-dns).
	DNSService string
}

// checkTimeout bounds each node and DNS probe: a dead node must not hang
// the report.
const checkTimeout = 3 * time.Second

// observation is what the data-plane checks read once per doctor run, for
// one Service or a whole namespace: each node's proxy state and the cluster
// DNS server. A namespace of fifty Services costs one request per node, not
// fifty.
type observation struct {
	opts Options
	// nodesErr is set when the nodes could not be listed.
	nodesErr error
	nodes    []string
	states   []*proxydebug.State // per node; nil where errs has the reason
	errs     []error
	// dnsServer is the cluster DNS Service's address; dnsSkip, when set,
	// says why DNS cannot be checked.
	dnsServer netip.Addr
	dnsSkip   *Finding
}

// observe reads the data plane for the Service name of namespace (every
// Service of it when name is ""); nil when opts has no DataPlane.
func observe(ctx context.Context, client kubernetes.Interface, opts Options, namespace, name string) *observation {
	if opts.DataPlane == nil {
		return nil
	}
	o := &observation{opts: opts}
	if nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err != nil {
		o.nodesErr = err
	} else {
		for _, n := range nodes.Items {
			o.nodes = append(o.nodes, n.Name)
		}
	}
	o.states, o.errs = make([]*proxydebug.State, len(o.nodes)), make([]error, len(o.nodes))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, node := range o.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			cctx, cancel := context.WithTimeout(ctx, checkTimeout)
			defer cancel()
			o.states[i], o.errs[i] = opts.DataPlane.ProxyState(cctx, node, namespace, name)
		}()
	}
	wg.Wait()

	dnsNS, dnsName, _ := strings.Cut(cmp.Or(opts.DNSService, "kube-system/kube-dns"), "/")
	dnsSvc, err := client.CoreV1().Services(dnsNS).Get(ctx, dnsName, metav1.GetOptions{})
	if err != nil {
		o.dnsSkip = &Finding{Code: CodeDNSUnavailable, Severity: Warning,
			Message: fmt.Sprintf("did not check DNS: cluster DNS service %s/%s: %v", dnsNS, dnsName, err)}
	} else if o.dnsServer, err = netip.ParseAddr(dnsSvc.Spec.ClusterIP); err != nil {
		o.dnsSkip = &Finding{Code: CodeDNSUnavailable, Severity: Warning,
			Message: fmt.Sprintf("did not check DNS: cluster DNS service %s/%s has no ClusterIP", dnsNS, dnsName)}
	}
	return o
}

// checkDataPlane adds the data-plane findings to r and settles its verdict.
func checkDataPlane(ctx context.Context, o *observation, s Snapshot, r *Report) {
	svc := s.Service
	if o == nil || svc.Spec.Type == corev1.ServiceTypeExternalName {
		return
	}
	var found []Finding
	if svc.Spec.ClusterIP != corev1.ClusterIPNone && svc.Spec.ClusterIP != "" {
		found = append(found, proxyFindings(o, s)...)
	}
	found = append(found, dnsFindings(ctx, o, s)...)
	// Most likely cause first: problems, then warnings, then facts.
	rank := map[Severity]int{Problem: 0, Warning: 1, Info: 2}
	slices.SortStableFunc(found, func(a, b Finding) int { return rank[a.Severity] - rank[b.Severity] })
	r.Findings = append(r.Findings, found...)
	r.Healthy = !slices.ContainsFunc(r.Findings, func(f Finding) bool { return f.Severity == Problem })
}

// readyBySlicePort is what the EndpointSlices say each Service port should
// balance over: "name/PROTOCOL" -> ready "ip:port" endpoints.
func readyBySlicePort(slices []discoveryv1.EndpointSlice) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, sl := range slices {
		for _, p := range sl.Ports {
			if p.Port == nil {
				continue
			}
			key := portKey(ptr.Deref(p.Name, ""), string(protocolOf(ptr.Deref(p.Protocol, ""))))
			if out[key] == nil {
				out[key] = map[string]bool{}
			}
			for _, ep := range sl.Endpoints {
				if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
					continue
				}
				for _, a := range ep.Addresses {
					out[key][net.JoinHostPort(a, strconv.Itoa(int(*p.Port)))] = true
				}
			}
		}
	}
	return out
}

func portKey(name, proto string) string { return name + "/" + proto }

// proxyFindings compares what every node's proxy programmed for the
// Service with the EndpointSlices.
func proxyFindings(o *observation, s Snapshot) []Finding {
	if o.nodesErr != nil {
		return []Finding{{Code: CodeProxyUnreachable, Severity: Warning, Message: fmt.Sprintf("could not list nodes to ask their proxies: %v", o.nodesErr)}}
	}
	svc := s.Service
	want := readyBySlicePort(s.Slices)
	var out []Finding
	for i, node := range o.nodes {
		if o.errs[i] != nil {
			out = append(out, Finding{Code: CodeProxyUnreachable, Severity: Warning,
				Message: fmt.Sprintf("could not read the proxy state of node %s: %v", node, o.errs[i])})
			continue
		}
		st := o.states[i]
		var ds *proxydebug.Service
		for j := range st.Services {
			if st.Services[j].Namespace == svc.Namespace && st.Services[j].Name == svc.Name {
				ds = &st.Services[j]
			}
		}
		since := syncAge(st)
		if ds == nil {
			out = append(out, Finding{Code: CodeProxyNotProgrammed, Severity: Problem,
				Message: fmt.Sprintf("node %s's proxy has not programmed service %s/%s at all (%s)", node, svc.Namespace, svc.Name, since)})
			continue
		}
		if f, ok := staleEndpoints(node, ds, want, since); ok {
			out = append(out, f)
		}
		if ds.KernelError != "" {
			out = append(out, Finding{Code: CodeProxyUnreachable, Severity: Warning,
				Message: fmt.Sprintf("node %s's proxy could not read its %s back: %s", node, kernelStore(st.Mode), ds.KernelError)})
		} else if len(ds.Kernel.Missing) > 0 {
			out = append(out, Finding{Code: CodeKernelDrift, Severity: Problem,
				Message: fmt.Sprintf("node %s's proxy finds %d of the %d %s it applied for this service missing from the %s: something else flushed or edited them; restart the node's proxy to reprogram it",
					node, len(ds.Kernel.Missing), len(ds.Kernel.Applied), kernelUnit(st.Mode), kernelStore(st.Mode)),
				Details: ds.Kernel.Missing})
		}
		out = append(out, packetPath(node, st.Mode, ds, podsByIP(s.Pods)))
	}
	return out
}

// syncAge describes the proxy's sync state in words.
func syncAge(st *proxydebug.State) string {
	var parts []string
	if st.LastSync.IsZero() {
		parts = append(parts, "it has not synced yet")
	} else {
		parts = append(parts, fmt.Sprintf("last sync %s ago", time.Since(st.LastSync).Round(time.Millisecond)))
	}
	if !st.PendingSince.IsZero() {
		parts = append(parts, fmt.Sprintf("changes waiting since %s ago", time.Since(st.PendingSince).Round(time.Millisecond)))
	}
	if st.LastError != "" {
		parts = append(parts, "last error: "+st.LastError)
	}
	return strings.Join(parts, "; ")
}

// staleEndpoints compares a node's programmed ready endpoints per port with
// the slices'.
func staleEndpoints(node string, ds *proxydebug.Service, want map[string]map[string]bool, since string) (Finding, bool) {
	var details []string
	for _, p := range ds.Ports {
		have := map[string]bool{}
		for _, e := range p.Endpoints {
			if e.Ready {
				have[e.AddrPort().String()] = true
			}
		}
		w := want[portKey(p.Name, p.Protocol)]
		label := p.Name
		if label == "" {
			label = strconv.Itoa(int(p.Port))
		}
		for _, ep := range slices.Sorted(maps.Keys(w)) {
			if !have[ep] {
				details = append(details, fmt.Sprintf("port %s/%s: endpoint %s is ready in the EndpointSlices but not programmed", label, p.Protocol, ep))
			}
		}
		for _, ep := range slices.Sorted(maps.Keys(have)) {
			if !w[ep] {
				details = append(details, fmt.Sprintf("port %s/%s: endpoint %s is programmed but no longer ready in the EndpointSlices", label, p.Protocol, ep))
			}
		}
	}
	if len(details) == 0 {
		return Finding{}, false
	}
	return Finding{Code: CodeProxyStale, Severity: Problem,
		Message: fmt.Sprintf("node %s's proxy programs endpoints that differ from the EndpointSlices (%s)", node, since),
		Details: details}, true
}

// podsByIP names the pod (and its node) behind each pod IP.
func podsByIP(pods []corev1.Pod) map[netip.Addr]string {
	out := map[netip.Addr]string{}
	for _, p := range pods {
		for _, ip := range podIPs(p) {
			if a, err := netip.ParseAddr(ip); err == nil {
				out[a] = fmt.Sprintf("%s on %s", p.Name, cmp.Or(p.Spec.NodeName, "no node"))
			}
		}
	}
	return out
}

// packetPath says, for one node, where a packet to each front-end goes.
func packetPath(node, mode string, ds *proxydebug.Service, who map[netip.Addr]string) Finding {
	f := Finding{Code: CodePacketPath, Severity: Info,
		Message: fmt.Sprintf("on node %s, packets to the service go:", node)}
	for _, p := range ds.Ports {
		to := func(eps []netip.AddrPort, local bool) string {
			if len(eps) == 0 {
				return "rejected (no usable endpoint)"
			}
			s := make([]string, len(eps))
			for i, e := range eps {
				s[i] = e.String()
				if w, ok := who[e.Addr()]; ok {
					s[i] += " (" + w + ")"
				}
			}
			how := "one of"
			if len(eps) == 1 {
				how = "to"
			}
			if local {
				how += " this node's"
			}
			return fmt.Sprintf("DNAT %s %s", how, strings.Join(s, ", "))
		}
		for _, ip := range p.ClusterIPs {
			f.Details = append(f.Details, fmt.Sprintf("%s -> %s", netip.AddrPortFrom(ip, uint16(p.Port)).String()+"/"+p.Protocol, to(p.ClusterEndpoints, p.InternalLocal)))
		}
		if p.NodePort != 0 {
			f.Details = append(f.Details, fmt.Sprintf("node port %d/%s -> %s", p.NodePort, p.Protocol, to(p.ExternalEndpoints, p.ExternalLocal)))
		}
		for _, ip := range append(slices.Clone(p.ExternalIPs), p.LoadBalancerIPs...) {
			f.Details = append(f.Details, fmt.Sprintf("%s -> %s", netip.AddrPortFrom(ip, uint16(p.Port)).String()+"/"+p.Protocol, to(p.ExternalEndpoints, p.ExternalLocal)))
		}
	}
	if len(ds.Kernel.Applied) > 0 {
		// The example shown is one that says where packets go (a map
		// element, key : target; an iptables DNAT rule) when there is one,
		// not one that only says the address is known.
		example := ds.Kernel.Applied[0]
		if i := slices.IndexFunc(ds.Kernel.Applied, func(e string) bool {
			return strings.Contains(e, " : ") || strings.Contains(e, " DNAT ") || strings.Contains(e, " -> ")
		}); i >= 0 {
			example = ds.Kernel.Applied[i]
		}
		f.Details = append(f.Details, fmt.Sprintf("as %d %s in the %s, e.g. %s", len(ds.Kernel.Applied), kernelUnit(mode), kernelStore(mode), example))
	}
	return f
}

// dnsFindings resolves the Service's name through cluster DNS from a pod of
// its namespace and compares the answer with what the API says.
func dnsFindings(ctx context.Context, o *observation, s Snapshot) []Finding {
	if o.dnsSkip != nil {
		return []Finding{*o.dnsSkip}
	}
	svc := s.Service
	domain := strings.Trim(cmp.Or(o.opts.ClusterDomain, "cluster.local"), ".")
	fqdn := fmt.Sprintf("%s.%s.svc.%s.", svc.Name, svc.Namespace, domain)
	server := o.dnsServer
	want := expectedAddrs(s)
	from := clientPod(s)
	var got []string
	var where string
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		cctx, cancel := context.WithTimeout(ctx, checkTimeout)
		addrs, w, rcode, err := lookup(cctx, o.opts.DataPlane, from, server, fqdn, qtype)
		cancel()
		where = w
		if err != nil {
			// From a pod, a DNS server that does not answer is what the
			// pod's applications see; from outside it may be our reach.
			sev := Warning
			if strings.HasPrefix(where, "pod ") {
				sev = Problem
			}
			return []Finding{{Code: CodeDNSUnavailable, Severity: sev,
				Message: fmt.Sprintf("cluster DNS %s did not answer %s from %s: %v", server, fqdn, cmp.Or(where, "this host"), err)}}
		}
		if rcode != dns.RcodeSuccess {
			return []Finding{{Code: CodeDNSWrong, Severity: Problem,
				Message: fmt.Sprintf("%s does not resolve from %s: cluster DNS %s answers %s", fqdn, where, server, dns.RcodeToString[rcode])}}
		}
		got = append(got, addrs...)
	}
	sort.Strings(got)
	if !slices.Equal(got, want) {
		return []Finding{{Code: CodeDNSWrong, Severity: Problem,
			Message: fmt.Sprintf("%s resolves from %s to [%s], but the API says [%s]", fqdn, where, strings.Join(got, " "), strings.Join(want, " "))}}
	}
	return []Finding{{Code: CodeDNSResolves, Severity: Info,
		Message: fmt.Sprintf("%s resolves from %s to %s", fqdn, where, strings.Join(got, " "))}}
}

// expectedAddrs is what cluster DNS should answer for the Service's name:
// its cluster IPs, or for a headless Service its ready endpoints.
func expectedAddrs(s Snapshot) []string {
	var out []string
	if s.Service.Spec.ClusterIP != corev1.ClusterIPNone {
		out = slices.Clone(s.Service.Spec.ClusterIPs)
		if len(out) == 0 && s.Service.Spec.ClusterIP != "" {
			out = []string{s.Service.Spec.ClusterIP}
		}
	} else {
		seen := map[string]bool{}
		for _, sl := range s.Slices {
			for _, ep := range sl.Endpoints {
				if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
					continue
				}
				for _, a := range ep.Addresses {
					if !seen[a] {
						seen[a] = true
						out = append(out, a)
					}
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

// clientPod picks the pod to ask from: a running pod of the namespace that
// is not a backend (a client's view), else a backend, else none.
func clientPod(s Snapshot) *corev1.Pod {
	sel := labels.SelectorFromSet(s.Service.Spec.Selector)
	var backend *corev1.Pod
	for i := range s.Pods {
		p := &s.Pods[i]
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" || p.Spec.HostNetwork || p.DeletionTimestamp != nil {
			continue
		}
		if len(s.Service.Spec.Selector) > 0 && sel.Matches(labels.Set(p.Labels)) {
			if backend == nil {
				backend = p
			}
			continue
		}
		return p
	}
	return backend
}

// lookup sends one query over UDP, and again over TCP when the answer is
// truncated, from pod's network.
func lookup(ctx context.Context, dp DataPlane, pod *corev1.Pod, server netip.Addr, fqdn string, qtype uint16) ([]string, string, int, error) {
	m := new(dns.Msg)
	m.SetQuestion(fqdn, qtype)
	m.RecursionDesired = true
	resp, where, err := exchange(ctx, dp, pod, "udp", server, m)
	if err == nil && resp.Truncated {
		resp, where, err = exchange(ctx, dp, pod, "tcp", server, m)
	}
	if err != nil {
		return nil, where, 0, err
	}
	var out []string
	for _, rr := range resp.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, rr.A.String())
		case *dns.AAAA:
			out = append(out, rr.AAAA.String())
		}
	}
	return out, where, resp.Rcode, nil
}

// exchange sends m to server:53 over network from pod's network.
func exchange(ctx context.Context, dp DataPlane, pod *corev1.Pod, network string, server netip.Addr, m *dns.Msg) (*dns.Msg, string, error) {
	c, where, err := dp.Dial(ctx, pod, network, netip.AddrPortFrom(server, 53).String())
	if err != nil {
		return nil, where, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	dc := &dns.Conn{Conn: c}
	if err := dc.WriteMsg(m); err != nil {
		return nil, where, err
	}
	resp, err := dc.ReadMsg()
	return resp, where, err
}

// APIServerDataPlane reaches a real cluster's node proxies through the API
// server's node proxy subresource (nodes/NAME:PORT/proxy), which needs the
// proxies' metrics address on the node's IP (switchboard proxy
// --metrics-bind-address 0.0.0.0:10249), and sends DNS queries from this
// host, which reaches ClusterIPs when it is a node of the cluster.
type APIServerDataPlane struct {
	Client kubernetes.Interface
	// ProxyPort is the proxies' metrics port (default 10249).
	ProxyPort int
}

// ProxyState implements DataPlane.
func (a APIServerDataPlane) ProxyState(ctx context.Context, node, namespace, name string) (*proxydebug.State, error) {
	port := a.ProxyPort
	if port == 0 {
		port = 10249
	}
	body, err := a.Client.CoreV1().RESTClient().Get().Resource("nodes").
		Name(fmt.Sprintf("%s:%d", node, port)).SubResource("proxy").Suffix(proxydebug.Path).
		Param("namespace", namespace).Param("name", name).DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("through the API server's node proxy to port %d: %w", port, err)
	}
	return decodeProxyState(body, "node "+node)
}

// decodeProxyState parses a DebugPath answer read from where.
func decodeProxyState(body []byte, where string) (*proxydebug.State, error) {
	var st proxydebug.State
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("decode %s of %s: %w", proxydebug.Path, where, err)
	}
	return &st, nil
}

// Dial implements DataPlane: from this host, whatever pod is asked for.
func (a APIServerDataPlane) Dial(ctx context.Context, _ *corev1.Pod, network, address string) (net.Conn, string, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, address)
	return c, "this host", err
}

// FetchProxyState GETs a proxy's DebugPath for one Service with client,
// whose transport decides how the proxy's address is reached.
func FetchProxyState(ctx context.Context, client *http.Client, base, namespace, name string) (*proxydebug.State, error) {
	u := base + proxydebug.Path + "?" + url.Values{"namespace": {namespace}, "name": {name}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return decodeProxyState(body, u)
}

// NamespaceDataPlane reaches nodes and pods that are network namespaces on
// this host: the nodes and pods of `switchboard up`, or a test's. It needs
// root.
type NamespaceDataPlane struct {
	// NodeNetNS returns the path of node's network namespace.
	NodeNetNS func(node string) string
	// PodNetNS returns the path of a pod's network namespace.
	PodNetNS func(namespace, name string) string
	// ProxyAddress is the proxies' metrics address inside their node's
	// namespace (default 127.0.0.1:10249).
	ProxyAddress string
	// FallbackNode is the node DNS is asked from when the namespace has no
	// running pod.
	FallbackNode string
}

// ProxyState implements DataPlane.
func (d NamespaceDataPlane) ProxyState(ctx context.Context, node, namespace, name string) (*proxydebug.State, error) {
	path := d.NodeNetNS(node)
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("node network namespace: %w", err)
	}
	return FetchProxyState(ctx, netnamespace.HTTPClient(path, checkTimeout), "http://"+cmp.Or(d.ProxyAddress, "127.0.0.1:10249"), namespace, name)
}

// Dial implements DataPlane.
func (d NamespaceDataPlane) Dial(ctx context.Context, pod *corev1.Pod, network, address string) (net.Conn, string, error) {
	path, where := "", ""
	if pod != nil {
		path, where = d.PodNetNS(pod.Namespace, pod.Name), "pod "+pod.Namespace+"/"+pod.Name
	}
	if _, err := os.Stat(path); path == "" || err != nil {
		if d.FallbackNode == "" {
			return nil, where, fmt.Errorf("no network namespace for %s", cmp.Or(where, "a pod"))
		}
		path, where = d.NodeNetNS(d.FallbackNode), "node "+d.FallbackNode
	}
	c, err := netnamespace.Dial(ctx, path, network, address)
	return c, where, err
}

// kernelStore names where a proxy of mode keeps its state, and kernelUnit
// what the state is made of (a proxy without a mode is an nftables one).
func kernelStore(mode string) string {
	switch mode {
	case proxydebug.ModeIPTables:
		return "iptables chains (SWB-*)"
	case proxydebug.ModeIPVS:
		return "IPVS virtual servers"
	}
	return "nftables table switchboard"
}

func kernelUnit(mode string) string {
	switch mode {
	case proxydebug.ModeIPTables:
		return "rule(s)"
	case proxydebug.ModeIPVS:
		return "virtual or real server(s)"
	}
	return "nftables element(s)"
}
