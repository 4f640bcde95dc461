package localcluster

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/switchboard/switchboard/netnamespace"
)

// Network names and wires the namespaces of one local cluster. Every name
// starts with the cluster's prefix ("sb" + a hash of the state directory),
// so two clusters never collide and a crashed cluster's leftovers are found
// and removed by the next `up` of the same state directory.
//
// Topology: a bridge in a namespace of its own joins the nodes; each node is
// a namespace with eth0 on that bridge and forwarding on; each pod is a
// namespace whose eth0 is a veth into its node, with a /32 address, a
// link-scoped gateway (the first address of the node's pod CIDR, held by
// the node side of every pod veth) and a default route through it. Nodes
// route the other nodes' pod CIDRs via their eth0 addresses. Nothing is
// created in the host's root namespace.
type Network struct {
	Prefix string
	// NodeCIDR holds the nodes' eth0 addresses.
	NodeCIDR netip.Prefix
	// PodCIDR is split into one /24 per node.
	PodCIDR netip.Prefix
}

// NewNetwork derives the cluster's names from its state directory.
func NewNetwork(stateDir string, nodeCIDR, podCIDR netip.Prefix) *Network {
	sum := sha256.Sum256([]byte(stateDir))
	return &Network{Prefix: "sb" + hex.EncodeToString(sum[:])[:6], NodeCIDR: nodeCIDR.Masked(), PodCIDR: podCIDR.Masked()}
}

// BridgeNS is the namespace holding the cluster bridge.
func (n *Network) BridgeNS() string { return n.Prefix + "-net" }

// NodeNS is the namespace of node name.
func (n *Network) NodeNS(node string) string { return n.Prefix + "-" + node }

// PodNS is the namespace of a pod, stable across restarts of `up` so that
// `switchboard exec` finds it from the pod's name alone.
func (n *Network) PodNS(namespace, pod string) string {
	return n.Prefix + "-pod-" + podHash(namespace, pod)
}

func podHash(namespace, pod string) string {
	sum := sha256.Sum256([]byte(namespace + "/" + pod))
	return hex.EncodeToString(sum[:])[:10]
}

// ControlPlaneIP is where the cluster network reaches the API server: the
// first address of the node CIDR, held by the bridge (as a control-plane
// host on the nodes' network would). It is the address the `kubernetes`
// Service's endpoints advertise.
func (n *Network) ControlPlaneIP() netip.Addr { return n.NodeCIDR.Addr().Next() }

// NodeIP is the eth0 address of the node with 1-based index i.
func (n *Network) NodeIP(i int) netip.Addr {
	a := n.NodeCIDR.Addr().As4()
	a[3] = byte(10 + i)
	return netip.AddrFrom4(a)
}

// NodePodCIDR is the pod /24 of the node with 1-based index i.
func (n *Network) NodePodCIDR(i int) netip.Prefix {
	a := n.PodCIDR.Addr().As4()
	a[2] = byte(i)
	return netip.PrefixFrom(netip.AddrFrom4(a), 24)
}

// gateway is the pods' next hop on a node: the first address of its CIDR.
func gateway(podCIDR netip.Prefix) netip.Addr { return podCIDR.Addr().Next() }

// Validate refuses CIDRs that would make addresses ambiguous.
func (n *Network) Validate(serviceCIDR netip.Prefix, nodes int) error {
	if !n.NodeCIDR.Addr().Is4() || n.NodeCIDR.Bits() > 24 {
		return fmt.Errorf("--node-cidr %s: want an IPv4 /24 or larger", n.NodeCIDR)
	}
	if !n.PodCIDR.Addr().Is4() || n.PodCIDR.Bits() > 16 {
		return fmt.Errorf("--pod-cidr %s: want an IPv4 /16 or larger (one /24 per node)", n.PodCIDR)
	}
	if nodes > 200 {
		return fmt.Errorf("--nodes %d: at most 200", nodes)
	}
	for _, pair := range [][2]netip.Prefix{{n.NodeCIDR, n.PodCIDR}, {n.NodeCIDR, serviceCIDR}, {n.PodCIDR, serviceCIDR}} {
		if pair[0].Overlaps(pair[1]) {
			return fmt.Errorf("CIDRs %s and %s overlap: node, pod and service CIDRs must be disjoint", pair[0], pair[1])
		}
	}
	return nil
}

// SetUpBridge creates the bridge namespace and its bridge.
func (n *Network) SetUpBridge() error {
	if _, _, err := netnamespace.Create(n.BridgeNS()); err != nil {
		return err
	}
	return withNetlink(n.BridgeNS(), func(h *netlink.Handle) error {
		la := netlink.NewLinkAttrs()
		la.Name, la.Flags = "br0", net.FlagUp
		if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			return fmt.Errorf("bridge namespace %s: add br0: %w", n.BridgeNS(), err)
		}
		return nil
	})
}

// SetUpControlPlaneAddress puts the control-plane address on the bridge
// and routes each of the nodes' pod CIDRs via its node there, so that pods
// reaching the API server at that address get answers. Idempotent: it runs
// on a fresh network and on one adopted from an earlier run.
func (n *Network) SetUpControlPlaneAddress(nodes int) error {
	cmds := [][]string{{"addr", "replace", netip.PrefixFrom(n.ControlPlaneIP(), n.NodeCIDR.Bits()).String(), "dev", "br0"}}
	for i := 1; i <= nodes; i++ {
		cmds = append(cmds, []string{"route", "replace", n.NodePodCIDR(i).String(), "via", n.NodeIP(i).String()})
	}
	return runAll(n.BridgeNS(), cmds)
}

// SetUpNode creates node i's namespace on the bridge, with forwarding on,
// routes to the other nodes' pod CIDRs and a route for the Service CIDR.
// Everything but creating the namespace goes through netlink from this
// process: a cluster of N nodes has N*(N-1) pod routes, and one `ip`
// process per route made 100 nodes take minutes.
//
// The Service route stands in for a real node's default route: a packet to
// a ClusterIP the proxy does not DNAT (a Service without endpoints) must be
// routed to reach the forward hook, where the proxy rejects it at once.
// Without a route, routing drops it first and the client sees "network is
// unreachable" only after its SYN retries, seconds later.
func (n *Network) SetUpNode(i, nodes int, name string, serviceCIDR netip.Prefix) error {
	ns := n.NodeNS(name)
	nsPath, _, err := netnamespace.Create(ns)
	if err != nil {
		return err
	}
	nodeNS, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("node %s: open namespace: %w", name, err)
	}
	defer nodeNS.Close()
	port := fmt.Sprintf("%s-n%d", n.Prefix, i)
	err = withNetlink(n.BridgeNS(), func(h *netlink.Handle) error {
		br, err := h.LinkByName("br0")
		if err != nil {
			return fmt.Errorf("find br0: %w", err)
		}
		la := netlink.NewLinkAttrs()
		la.Name, la.MasterIndex, la.Flags = port, br.Attrs().Index, net.FlagUp
		return h.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerTxQLen: -1, PeerNamespace: netlink.NsFd(nodeNS)})
	})
	if err != nil {
		return fmt.Errorf("wire node %s to the bridge: %w", name, err)
	}
	h, err := netlink.NewHandleAt(nodeNS)
	if err != nil {
		return fmt.Errorf("node %s: netlink: %w", name, err)
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("node %s: find eth0: %w", name, err)
	}
	if err := h.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(n.NodeIP(i), n.NodeCIDR.Bits()))}); err != nil {
		return fmt.Errorf("node %s: address eth0: %w", name, err)
	}
	if err := h.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("node %s: set eth0 up: %w", name, err)
	}
	link := eth0.Attrs().Index
	if err := h.RouteAdd(&netlink.Route{LinkIndex: link, Dst: ipNet(serviceCIDR.Masked())}); err != nil {
		return fmt.Errorf("node %s: route %s: %w", name, serviceCIDR.Masked(), err)
	}
	for j := 1; j <= nodes; j++ {
		if j == i {
			continue
		}
		r := &netlink.Route{LinkIndex: link, Dst: ipNet(n.NodePodCIDR(j)), Gw: n.NodeIP(j).AsSlice()}
		if err := h.RouteAdd(r); err != nil {
			return fmt.Errorf("node %s: route %s via %s: %w", name, n.NodePodCIDR(j), n.NodeIP(j), err)
		}
	}
	return netnamespace.Do(nsPath, func() error {
		// /proc/sys/net follows the calling thread's namespace.
		for _, f := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv4/conf/all/route_localnet"} {
			if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
				return fmt.Errorf("node %s: %s: %w", name, f, err)
			}
		}
		return nil
	})
}

// withNetlink runs fn with a netlink handle bound to the named namespace;
// the calling thread stays where it is.
func withNetlink(ns string, fn func(*netlink.Handle) error) error {
	target, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", ns, err)
	}
	defer target.Close()
	h, err := netlink.NewHandleAt(target)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", ns, err)
	}
	defer h.Close()
	return fn(h)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// PodNet is the wiring of one pod.
type PodNet struct {
	NS   string
	IP   netip.Addr
	Node string
	// HostNetwork: the pod runs in its node's namespace (NS) with the
	// node's IP, and owns neither.
	HostNetwork bool
}

// SetUpPod creates the pod's namespace and veth into its node, and writes
// the resolv.conf that `ip netns exec` bind-mounts for its processes.
func (n *Network) SetUpPod(node string, nodeCIDR netip.Prefix, namespaceName, pod string, ip netip.Addr, resolvConf string) (PodNet, error) {
	ns := n.PodNS(namespaceName, pod)
	nodeNS := n.NodeNS(node)
	// A leftover from a crash or an earlier run of the same pod goes first.
	n.TearDownPod(nodeNS, ns)
	if _, _, err := netnamespace.Create(ns); err != nil {
		return PodNet{}, err
	}
	hostVeth := "sbh" + podHash(namespaceName, pod)
	gw := gateway(nodeCIDR).String()
	if err := netnamespace.IP(nodeNS, "link", "add", hostVeth, "type", "veth", "peer", "name", "eth0", "netns", ns); err != nil {
		return PodNet{}, fmt.Errorf("pod %s/%s: create veth: %w", namespaceName, pod, err)
	}
	if err := runAll(nodeNS, [][]string{
		{"addr", "add", gw + "/32", "dev", hostVeth},
		{"link", "set", hostVeth, "up"},
		{"route", "add", ip.String() + "/32", "dev", hostVeth},
	}); err != nil {
		return PodNet{}, fmt.Errorf("pod %s/%s: %w", namespaceName, pod, err)
	}
	if err := runAll(ns, [][]string{
		{"addr", "add", ip.String() + "/32", "dev", "eth0"},
		{"link", "set", "eth0", "up"},
		{"route", "add", gw, "dev", "eth0", "scope", "link"},
		{"route", "add", "default", "via", gw, "dev", "eth0"},
	}); err != nil {
		return PodNet{}, fmt.Errorf("pod %s/%s: %w", namespaceName, pod, err)
	}
	dir := filepath.Join("/etc/netns", ns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return PodNet{}, err
	}
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(resolvConf), 0o644); err != nil {
		return PodNet{}, fmt.Errorf("pod %s/%s: write resolv.conf: %w", namespaceName, pod, err)
	}
	return PodNet{NS: ns, IP: ip, Node: node}, nil
}

// TearDownPod removes a pod's namespace, veth and resolv.conf. Deleting the
// namespace destroys its end of the veth, which takes the node's end along.
func (n *Network) TearDownPod(nodeNS, podNS string) {
	killNamespaceProcesses(podNS)
	exec.Command("ip", "netns", "delete", podNS).Run()
	os.RemoveAll(filepath.Join("/etc/netns", podNS))
}

// TearDownAll removes every namespace of this cluster, live or left over
// from a crash, and the processes still running in them.
func (n *Network) TearDownAll() {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), n.Prefix+"-") {
			n.TearDownPod("", e.Name())
		}
	}
	entries, _ = os.ReadDir("/etc/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), n.Prefix+"-") {
			os.RemoveAll(filepath.Join("/etc/netns", e.Name()))
		}
	}
}

// killNamespaceProcesses kills what still runs in a namespace, so that a
// crashed run's pods do not outlive their network.
func killNamespaceProcesses(ns string) {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return
	}
	for _, pid := range strings.Fields(string(out)) {
		exec.Command("kill", "-9", pid).Run()
	}
}

func runAll(ns string, cmds [][]string) error {
	for _, c := range cmds {
		if err := netnamespace.IP(ns, c...); err != nil {
			return err
		}
	}
	return nil
}
