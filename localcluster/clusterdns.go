package localcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/switchboard/switchboard/workingset"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/clientcmd"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/switchboard/switchboard/dns"
	"github.com/switchboard/switchboard/netnamespace"
)

// kubeDNSSlice is the kube-dns Service's EndpointSlice that lists the
// nodes' DNS sockets.
const kubeDNSSlice = "kube-dns-nodes"

// dnsManagedBy marks the kube-dns EndpointSlice as the local cluster's own.
const dnsManagedBy = "localcluster.switchboard.dev"

// clusterDNSName is argv[0] of the cluster DNS process `up` starts (see
// containerInitName for why a name and not a subcommand).
const clusterDNSName = "switchboard-cluster-dns"

func init() {
	if filepath.Base(os.Args[0]) == clusterDNSName && len(os.Args) == 2 {
		if err := serveClusterDNS(os.Args[1]); err != nil {
			fmt.Fprintf(os.Stderr, "switchboard: cluster DNS: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// dnsSpec is what the cluster DNS process is told, as JSON in its argv[1].
// A running process whose spec equals the one `up` would start is adopted.
type dnsSpec struct {
	// Server and Kubeconfig reach the API server (Server only tells a
	// restart on another address, which needs a new process).
	Server     string `json:"server"`
	Kubeconfig string `json:"kubeconfig"`
	// Cgroup is the cgroup to join first, on v1 (see cgroups.place).
	Cgroup    string      `json:"cgroup"`
	Listen    []dnsListen `json:"listen"`
	Upstreams []string    `json:"upstreams"`
}

// dnsListen is one node's DNS address: IP:53 in the node's namespace.
type dnsListen struct {
	NetNS string `json:"netns"`
	Addr  string `json:"addr"`
}

// dnsRecord identifies the running cluster DNS process.
type dnsRecord struct {
	Spec       string `json:"spec"`
	PID        int    `json:"pid"`
	StartTicks uint64 `json:"startTicks"`
}

// serveClusterDNS is the cluster DNS process: one server answering on every
// node's address, fed by the API server. It outlives the `up` that started
// it, so names keep resolving while `up` restarts; its informers reconnect
// to the next one.
func serveClusterDNS(arg string) error {
	var spec dnsSpec
	if err := json.Unmarshal([]byte(arg), &spec); err != nil {
		return fmt.Errorf("spec: %w", err)
	}
	if spec.Cgroup != "" {
		if err := os.WriteFile(filepath.Join(spec.Cgroup, "cgroup.procs"), []byte("0"), 0); err != nil {
			return fmt.Errorf("join cgroup %s: %w", spec.Cgroup, err)
		}
	}
	workingset.Release()
	workingset.CollectSooner()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	rc, err := clientcmd.BuildConfigFromFlags("", spec.Kubeconfig)
	if err != nil {
		return err
	}
	rc.UserAgent = "switchboard-cluster-dns"
	rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	idx := dns.NewIndex()
	if err := idx.Watch(ctx, client); err != nil {
		return err
	}
	srv := dns.NewServer(dns.Config{Upstreams: spec.Upstreams, Logger: log}, idx)
	srv.MarkReady()
	errc := make(chan error, 2*len(spec.Listen))
	for _, l := range spec.Listen {
		var pc net.PacketConn
		var tl net.Listener
		err := netnamespace.Do(l.NetNS, func() error {
			var err error
			if pc, err = net.ListenPacket("udp", l.Addr); err != nil {
				return err
			}
			tl, err = net.Listen("tcp", l.Addr)
			return err
		})
		if err != nil {
			return fmt.Errorf("listen on %s in %s: %w", l.Addr, l.NetNS, err)
		}
		go func() { errc <- srv.ServePacket(ctx, pc) }()
		go func() { errc <- srv.ServeListener(ctx, tl) }()
	}
	workingset.Settle()
	log.Info("serving cluster DNS", "nodes", len(spec.Listen), "upstreams", spec.Upstreams)
	var errs []error
	for range 2 * len(spec.Listen) {
		errs = append(errs, <-errc)
	}
	return errors.Join(errs...)
}

// startClusterDNS makes sure the cluster DNS process runs and answers on
// every node, reachable from every pod at the kube-dns Service's ClusterIP
// (its EndpointSlice lists the nodes' addresses, like a node-local DNS, so
// our own node proxies carry the traffic). The process an earlier `up`
// left is kept when it serves the same nodes from the same API server;
// otherwise it is ended by its cgroup and a new one started.
func (c *Cluster) startClusterDNS(ctx context.Context, client kubernetes.Interface) error {
	// Forwarded queries leave from the host's namespace, so the host's
	// resolvers are the upstreams.
	upstreams, err := dns.Nameservers("/etc/resolv.conf")
	if err != nil {
		c.Config.Logger.Warn("cluster DNS will not resolve names outside the cluster", "err", err)
	}
	spec := dnsSpec{Server: c.ControlPlane.RESTConfig.Host, Kubeconfig: c.ControlPlane.KubeconfigPath, Upstreams: upstreams}
	if !c.cg.v2 {
		spec.Cgroup = c.cg.dir("dns")
	}
	for _, n := range c.nodes {
		spec.Listen = append(spec.Listen, dnsListen{NetNS: n.NetNS, Addr: netip.AddrPortFrom(n.IP, 53).String()})
	}
	b, _ := json.Marshal(spec)
	recPath := filepath.Join(c.Config.StateDir, "run", "dns.json")
	var rec dnsRecord
	if raw, err := os.ReadFile(recPath); err == nil && json.Unmarshal(raw, &rec) == nil &&
		rec.Spec == string(b) && rec.StartTicks != 0 && startTicks(rec.PID) == rec.StartTicks && c.cg.contains("dns", rec.PID) {
		c.Config.Logger.Info("adopted cluster DNS", "pid", rec.PID)
	} else {
		if err := c.cg.kill("dns"); err != nil {
			return fmt.Errorf("end the previous cluster DNS: %w", err)
		}
		if _, err := c.cg.create("dns"); err != nil {
			return err
		}
		attr := &syscall.SysProcAttr{Setsid: true}
		_, placed, err := c.cg.place(attr, "dns")
		if err != nil {
			return err
		}
		defer placed()
		logf, err := os.OpenFile(filepath.Join(c.Config.StateDir, "logs", "dns.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		defer logf.Close()
		cmd := &exec.Cmd{Path: selfExe, Args: []string{clusterDNSName, string(b)}, Stdout: logf, Stderr: logf, SysProcAttr: attr}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start cluster DNS: %w", err)
		}
		// Reap it if it ends while this `up` runs; otherwise it outlives us.
		go cmd.Wait()
		rec = dnsRecord{Spec: string(b), PID: cmd.Process.Pid, StartTicks: startTicks(cmd.Process.Pid)}
		raw, _ := json.Marshal(rec)
		if err := os.WriteFile(recPath, raw, 0o600); err != nil {
			return err
		}
	}
	if err := c.waitClusterDNS(ctx); err != nil {
		return err
	}
	return c.ensureKubeDNSService(ctx, client)
}

// stopClusterDNS is startClusterDNS's opposite, for a cluster whose DNS
// is deployed as pods: it ends the DNS process an earlier run left and
// deletes the kube-dns EndpointSlice that pointed at it, so the deployed
// kube-dns Service's endpoints are its pods alone. The Service stays:
// kubectl apply adopts it.
func (c *Cluster) stopClusterDNS(ctx context.Context, client kubernetes.Interface) error {
	if err := c.cg.kill("dns"); err != nil {
		return fmt.Errorf("end the previous cluster DNS: %w", err)
	}
	if err := os.Remove(filepath.Join(c.Config.StateDir, "run", "dns.json")); err != nil && !os.IsNotExist(err) {
		return err
	}
	err := client.DiscoveryV1().EndpointSlices(metav1.NamespaceSystem).Delete(ctx, kubeDNSSlice, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("endpointslice kube-system/%s: %w", kubeDNSSlice, err)
	}
	return nil
}

// waitClusterDNS waits until every node's DNS address answers a name the
// cluster always has.
func (c *Cluster) waitClusterDNS(ctx context.Context) error {
	q := new(mdns.Msg)
	q.SetQuestion("kubernetes.default.svc.cluster.local.", mdns.TypeA)
	for _, n := range c.nodes {
		addr := netip.AddrPortFrom(n.IP, 53).String()
		var last error
		err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			conn, err := netnamespace.Dial(ctx, n.NetNS, "udp", addr)
			if err != nil {
				last = err
				return false, nil
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(time.Second))
			dc := &mdns.Conn{Conn: conn}
			if err := dc.WriteMsg(q); err != nil {
				last = err
				return false, nil
			}
			r, err := dc.ReadMsg()
			if err != nil {
				last = err
				return false, nil
			}
			if r.Rcode != mdns.RcodeSuccess || len(r.Answer) == 0 {
				last = fmt.Errorf("answered %s with %d records", mdns.RcodeToString[r.Rcode], len(r.Answer))
				return false, nil
			}
			return true, nil
		})
		if err != nil {
			return fmt.Errorf("cluster DNS on node %s (%s) does not answer (log: %s): %v", n.Name, addr,
				filepath.Join(c.Config.StateDir, "logs", "dns.log"), last)
		}
	}
	return nil
}

// ensureKubeDNSService creates kube-system/kube-dns at the cluster DNS
// address, and its EndpointSlice listing the nodes' DNS sockets.
func (c *Cluster) ensureKubeDNSService(ctx context.Context, client kubernetes.Interface) error {
	ports := []corev1.ServicePort{
		{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
		{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP},
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: metav1.NamespaceSystem,
			Labels: map[string]string{"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
		Spec: corev1.ServiceSpec{ClusterIP: c.Config.DNSIP, Ports: ports},
	}
	// Look first: on a restarted cluster the Service exists, and creating
	// it again fails on its taken ClusterIP before its taken name.
	_, err := client.CoreV1().Services(svc.Namespace).Get(ctx, svc.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = client.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	}
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("service kube-system/kube-dns at %s: %w", c.Config.DNSIP, err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: kubeDNSSlice, Namespace: metav1.NamespaceSystem, Labels: map[string]string{
			discoveryv1.LabelServiceName: "kube-dns", discoveryv1.LabelManagedBy: dnsManagedBy}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for _, p := range ports {
		slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{Name: ptr.To(p.Name), Port: ptr.To(p.Port), Protocol: ptr.To(p.Protocol)})
	}
	for _, n := range c.nodes {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{n.IP.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
			NodeName:   ptr.To(n.Name), Zone: ptr.To(n.Zone)})
	}
	slices := client.DiscoveryV1().EndpointSlices(metav1.NamespaceSystem)
	cur, err := slices.Get(ctx, slice.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = slices.Create(ctx, slice, metav1.CreateOptions{})
	case err == nil:
		slice.ResourceVersion = cur.ResourceVersion
		_, err = slices.Update(ctx, slice, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("endpointslice kube-system/%s: %w", kubeDNSSlice, err)
	}
	return nil
}
