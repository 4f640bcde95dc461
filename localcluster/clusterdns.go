package localcluster

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/switchboard/switchboard/dns"
	"github.com/switchboard/switchboard/netnamespace"
)

// dnsManagedBy marks the kube-dns EndpointSlice as the local cluster's own.
const dnsManagedBy = "localcluster.switchboard.dev"

// startClusterDNS runs cluster DNS in process, reachable from every pod at
// the kube-dns Service's ClusterIP: one server, with a UDP and a TCP socket
// opened inside each node's namespace on the node's address, and the
// kube-system/kube-dns Service pointing at those addresses (like a
// node-local DNS), so our own node proxies carry the traffic.
func (c *Cluster) startClusterDNS(ctx context.Context, client kubernetes.Interface) error {
	idx := dns.NewIndex()
	if err := idx.Watch(ctx, client); err != nil {
		return err
	}
	// Forwarded queries leave from the host's namespace, so the host's
	// resolvers are the upstreams.
	upstreams, err := dns.Nameservers("/etc/resolv.conf")
	if err != nil {
		c.Config.Logger.Warn("cluster DNS will not resolve names outside the cluster", "err", err)
	}
	srv := dns.NewServer(dns.Config{Upstreams: upstreams, Logger: c.Config.Logger}, idx)
	srv.MarkReady()
	for _, n := range c.nodes {
		addr := netip.AddrPortFrom(n.IP, 53).String()
		var pc net.PacketConn
		var l net.Listener
		err := netnamespace.Do(n.NetNS, func() error {
			var err error
			if pc, err = net.ListenPacket("udp", addr); err != nil {
				return err
			}
			l, err = net.Listen("tcp", addr)
			return err
		})
		if err != nil {
			return fmt.Errorf("cluster DNS on node %s (%s): %w", n.Name, addr, err)
		}
		c.wg.Add(2)
		go func() { defer c.wg.Done(); srv.ServePacket(ctx, pc) }()
		go func() { defer c.wg.Done(); srv.ServeListener(ctx, l) }()
	}
	return c.ensureKubeDNSService(ctx, client)
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
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns-nodes", Namespace: metav1.NamespaceSystem, Labels: map[string]string{
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
		return fmt.Errorf("endpointslice kube-system/kube-dns-nodes: %w", err)
	}
	return nil
}
