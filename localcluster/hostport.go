package localcluster

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// hostPortTable is the nftables table (in the node's namespace) holding
// one pod's hostPort rules, so a pod's rules come and go as a whole.
func hostPortTable(uid types.UID) string {
	u := string(uid)
	if len(u) > 13 {
		u = u[:13]
	}
	return "sb-hostport-" + u
}

// hostPorts are the pod's ports that ask for a port on the node.
func hostPorts(pod *corev1.Pod) []corev1.ContainerPort {
	var out []corev1.ContainerPort
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range list {
			for _, p := range c.Ports {
				if p.HostPort != 0 {
					out = append(out, p)
				}
			}
		}
	}
	return out
}

// SetUpHostPorts forwards the node's hostPorts to the pod, as the CNI
// portmap plugin a kubelet's network uses: a packet for one of the node's
// local addresses (or the port's hostIP) and the hostPort, arriving at the
// node or sent from it, goes to podIP:containerPort.
func (n *Network) SetUpHostPorts(node string, uid types.UID, nodeIP, podIP netip.Addr, ports []corev1.ContainerPort) error {
	if len(ports) == 0 || !podIP.Is4() {
		return nil
	}
	return n.withNFT(node, func(c *nftables.Conn) error {
		name := hostPortTable(uid)
		t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: name}
		// A table left by an earlier run of the pod is replaced.
		c.AddTable(t)
		c.DelTable(t)
		c.AddTable(t)
		prio := *nftables.ChainPriorityNATDest - 1
		pre := c.AddChain(&nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(prio)})
		out := c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityRef(prio)})
		for _, p := range ports {
			proto := byte(unix.IPPROTO_TCP)
			switch p.Protocol {
			case corev1.ProtocolUDP:
				proto = unix.IPPROTO_UDP
			case corev1.ProtocolSCTP:
				proto = unix.IPPROTO_SCTP
			}
			var dst []expr.Any
			if hip, err := netip.ParseAddr(p.HostIP); err == nil && !hip.IsUnspecified() {
				dst = daddrIs(hip)
			} else {
				dst = []expr.Any{
					&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
				}
			}
			dnat := []expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(p.HostPort))},
				&expr.Immediate{Register: 1, Data: podIP.AsSlice()},
				&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(uint16(p.ContainerPort))},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
			}
			c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: append(append([]expr.Any{}, dst...), dnat...)})
			// From the node itself only to its own address: loopback
			// stays loopback, as with portmap.
			local := daddrIs(nodeIP)
			if len(p.HostIP) > 0 && p.HostIP != "0.0.0.0" {
				local = dst
			}
			c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: append(local, dnat...)})
		}
		return nil
	})
}

func daddrIs(ip netip.Addr) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip.AsSlice()},
	}
}

// TearDownHostPorts removes the pod's hostPort rules, if it had any.
func (n *Network) TearDownHostPorts(node string, uid types.UID) {
	n.withNFT(node, func(c *nftables.Conn) error {
		t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: hostPortTable(uid)}
		c.AddTable(t)
		c.DelTable(t)
		return nil
	})
}

// sweepHostPorts removes the node's hostPort tables of pods that are gone
// (deleted while no `up` ran).
func (n *Network) sweepHostPorts(node string, live map[string]bool) {
	n.withNFT(node, func(c *nftables.Conn) error {
		tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
		if err != nil {
			return err
		}
		for _, t := range tables {
			if strings.HasPrefix(t.Name, "sb-hostport-") && !live[t.Name] {
				c.DelTable(t)
			}
		}
		return nil
	})
}

// withNFT runs fn's batch in the node's namespace.
func (n *Network) withNFT(node string, fn func(*nftables.Conn) error) error {
	ns, err := netns.GetFromPath("/run/netns/" + n.NodeNS(node))
	if err != nil {
		return fmt.Errorf("node %s: open network namespace: %w", node, err)
	}
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("node %s: nftables: %w", node, err)
	}
	defer c.CloseLasting()
	if err := fn(c); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("node %s: hostPort rules: %w", node, err)
	}
	return nil
}
