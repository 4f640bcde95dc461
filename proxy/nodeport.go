package proxy

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// nodePortIPs resolves kube-proxy's --nodeport-addresses CIDRs against the
// addresses of the network namespace at path ("" is the current one): the
// addresses NodePorts and healthCheckNodePorts answer on. As upstream's
// NodePortAddresses does, a family without a CIDR (or with a zero-length
// one) takes every address of that family; loopback addresses never serve
// NodePorts, and link-local ones cannot be bound without a zone.
func nodePortIPs(path string, cidrs []netip.Prefix) ([]netip.Addr, error) {
	ns := netns.None()
	var err error
	// Without a path, where the process is: no setns (CAP_SYS_ADMIN).
	if path != "" {
		if ns, err = netns.GetFromPath(path); err != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", path, err)
		}
		defer ns.Close()
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in %q: %w", path, err)
	}
	defer h.Close()
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses in %q: %w", path, err)
	}
	matchAll := [2]bool{true, true} // per family: [0] IPv4, [1] IPv6
	for _, c := range cidrs {
		matchAll[famIndex(c.Addr().Is4())] = false
	}
	for _, c := range cidrs {
		if c.Bits() == 0 {
			matchAll[famIndex(c.Addr().Is4())] = true
		}
	}
	var out []netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() {
			continue
		}
		in := matchAll[famIndex(ip.Is4())]
		for _, c := range cidrs {
			in = in || c.Contains(ip)
		}
		if in {
			out = append(out, ip)
		}
	}
	return out, nil
}
