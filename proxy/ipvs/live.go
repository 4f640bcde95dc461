package ipvs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"

	libipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/switchboard/switchboard/netnamespace"
)

// Interface is the dummy interface holding the Service addresses
// (kube-proxy's kube-ipvs0).
const Interface = "swb-ipvs0"

// Available tells whether the kernel has IPVS (/proc/net/ip_vs exists
// once the ip_vs module is loaded or built in).
func Available() error {
	if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
		return fmt.Errorf("the kernel has no IPVS (no /proc/net/ip_vs: CONFIG_IP_VS is not set or ip_vs is not loaded)")
	}
	return nil
}

// live are the real kernel edges in one network namespace.
type live struct {
	ipvs  *libipvs.Handle
	addrs *linkAddrs
	nft   nftExec
	// ct is a conntrack socket, for the UDP clean-up.
	ct    *netlink.Handle
	close func()
}

// sysctls are the IPVS settings kube-proxy's ipvs mode makes: conntrack
// for IPVS connections (the nat rules see them), and connections to a
// removed or weight-0 real server expired instead of kept.
var sysctls = map[string]string{
	"net/ipv4/vs/conntrack":                 "1",
	"net/ipv4/vs/expire_nodest_conn":        "1",
	"net/ipv4/vs/expire_quiescent_template": "1",
}

func openLive(path string) (*live, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	h, err := libipvs.New(path)
	if err != nil {
		return nil, fmt.Errorf("open IPVS in %q: %w", path, err)
	}
	// Without a path, where the process is: no setns, which needs
	// CAP_SYS_ADMIN (a hostNetwork proxy has CAP_NET_ADMIN alone).
	ns := netns.None()
	if path != "" {
		if ns, err = netns.GetFromPath(path); err != nil {
			h.Close()
			return nil, fmt.Errorf("open network namespace %q: %w", path, err)
		}
		defer ns.Close()
	}
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("open netlink in %q: %w", path, err)
	}
	set := func() error {
		for k, v := range sysctls {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				return fmt.Errorf("set %s: %w", k, err)
			}
		}
		return nil
	}
	if path != "" {
		err = netnamespace.Do(path, set)
	} else {
		err = set()
	}
	if err != nil {
		h.Close()
		nl.Close()
		return nil, err
	}
	ct, err := netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	if err != nil {
		h.Close()
		nl.Close()
		return nil, fmt.Errorf("open conntrack netlink socket in %q: %w", path, err)
	}
	return &live{ipvs: h, addrs: &linkAddrs{nl: nl}, nft: nftExec{netns: path}, ct: ct,
		close: func() { h.Close(); nl.Close(); ct.Close() }}, nil
}

// linkAddrs keeps the addresses of the dummy interface, creating it on
// first use.
type linkAddrs struct {
	nl   *netlink.Handle
	link netlink.Link
}

func (l *linkAddrs) get() (netlink.Link, error) {
	if l.link != nil {
		return l.link, nil
	}
	link, err := l.nl.LinkByName(Interface)
	if err != nil {
		d := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: Interface}}
		if err := l.nl.LinkAdd(d); err != nil {
			return nil, fmt.Errorf("create %s: %w", Interface, err)
		}
		if link, err = l.nl.LinkByName(Interface); err != nil {
			return nil, err
		}
	}
	l.link = link
	return link, nil
}

// List implements Addresses.
func (l *linkAddrs) List() ([]netip.Addr, error) {
	link, err := l.get()
	if err != nil {
		return nil, err
	}
	list, err := l.nl.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && !ip.IsLinkLocalUnicast() {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

func (l *linkAddrs) addr(a netip.Addr) *netlink.Addr {
	return &netlink.Addr{IPNet: netlink.NewIPNet(a.AsSlice())}
}

// Add implements Addresses.
func (l *linkAddrs) Add(a netip.Addr) error {
	link, err := l.get()
	if err != nil {
		return err
	}
	return l.nl.AddrAdd(link, l.addr(a))
}

// Del implements Addresses.
func (l *linkAddrs) Del(a netip.Addr) error {
	link, err := l.get()
	if err != nil {
		return err
	}
	return l.nl.AddrDel(link, l.addr(a))
}

// cleanupServers deletes the virtual servers on addresses ours and those
// nodePorts names, and no other.
func cleanupServers(api API, ours []netip.Addr, nodePorts []ServerKey) error {
	svcs, err := api.GetServices()
	if err != nil {
		return fmt.Errorf("list virtual servers: %w", err)
	}
	var errs []error
	for _, s := range svcs {
		k, ok := serverKey(s)
		if !ok || !slices.Contains(ours, k.Addr) && !slices.Contains(nodePorts, k) {
			continue
		}
		if err := api.DelService(s); err != nil {
			errs = append(errs, fmt.Errorf("delete virtual server %s: %w", k, err))
		}
	}
	return errors.Join(errs...)
}

// nftOutput runs nft with args in the namespace at path and returns what
// it printed.
func nftOutput(path string, args ...string) ([]byte, error) {
	c := exec.Command("nft", args...)
	var out, stderr bytes.Buffer
	c.Stdout, c.Stderr = &out, &stderr
	start := c.Start
	if path != "" {
		start = func() error { return netnamespace.Do(path, c.Start) }
	}
	if err := start(); err != nil {
		return nil, fmt.Errorf("nft %s: %w", strings.Join(args, " "), err)
	}
	if err := c.Wait(); err != nil {
		return nil, fmt.Errorf("nft %s: %v: %s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return out.Bytes(), nil
}

// hasTable tells whether the namespace at path holds the filter table.
func hasTable(path string) bool {
	out, err := nftOutput(path, "list", "tables", "inet")
	return err == nil && slices.Contains(strings.Split(string(out), "\n"), "table inet "+Table)
}

// readNodePorts reads the NodePort virtual servers the filter table
// records (sets nodeports4 and nodeports6) in the namespace at path: only
// those two sets are listed, not the table, which a full sync reads
// before it writes. A missing table or set records none.
func readNodePorts(path string) ([]ServerKey, error) {
	var keys []ServerKey
	for _, name := range []string{"nodeports4", "nodeports6"} {
		out, err := nftOutput(path, "-j", "list", "set", "inet", Table, name)
		if err != nil {
			continue
		}
		var doc struct {
			Nftables []struct {
				Set *struct {
					Elem []json.RawMessage `json:"elem"`
				} `json:"set"`
			} `json:"nftables"`
		}
		if err := json.Unmarshal(out, &doc); err != nil {
			return nil, fmt.Errorf("read set %s of table inet %s: %w", name, Table, err)
		}
		for _, o := range doc.Nftables {
			if o.Set == nil {
				continue
			}
			for _, raw := range o.Set.Elem {
				k, err := nodePortElem(raw)
				if err != nil {
					return nil, fmt.Errorf("set %s of table inet %s: %w", name, Table, err)
				}
				keys = append(keys, k)
			}
		}
	}
	return keys, nil
}

// nodePortElem parses one element of a nodeports set as nft -j prints it:
// {"concat": [address, protocol, port]}.
func nodePortElem(raw json.RawMessage) (ServerKey, error) {
	var e struct {
		Concat []any `json:"concat"`
	}
	bad := fmt.Errorf("element %s is not address . protocol . port", raw)
	if err := json.Unmarshal(raw, &e); err != nil || len(e.Concat) != 3 {
		return ServerKey{}, bad
	}
	a, aok := e.Concat[0].(string)
	proto, pok := e.Concat[1].(string)
	port, nok := e.Concat[2].(float64)
	addr, err := netip.ParseAddr(a)
	if !aok || !pok || !nok || err != nil {
		return ServerKey{}, bad
	}
	return ServerKey{Addr: addr, Protocol: strings.ToUpper(proto), Port: uint16(port)}, nil
}

// NodePorts implements nodePortRecord: the NodePort virtual servers the
// table in the namespace records (none without a table).
func (n nftExec) NodePorts() ([]ServerKey, error) {
	return readNodePorts(n.netns)
}

// nftExec applies scripts with nft -f in a namespace.
type nftExec struct{ netns string }

// Apply implements Filter.
func (n nftExec) Apply(script []byte) error {
	c := exec.Command("nft", "-f", "-")
	c.Stdin = bytes.NewReader(script)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	start := c.Start
	if n.netns != "" {
		start = func() error { return netnamespace.Do(n.netns, c.Start) }
	}
	if err := start(); err != nil {
		return fmt.Errorf("nft -f: %w", err)
	}
	if err := c.Wait(); err != nil {
		return fmt.Errorf("nft -f: %v: %s", err, out.Bytes())
	}
	return nil
}

// Cleanup removes what this mode programs in the namespace at path ("" is
// the current one): the virtual servers on the dummy interface's
// addresses and the NodePort virtual servers the filter table records
// (set nodeports4/6: on node addresses, which other IPVS users share, so
// only the address:port pairs switchboard created go), the filter table,
// the interface. A namespace without them is left untouched.
func Cleanup(path string) error {
	var errs []error
	var nodePorts []ServerKey
	hadTable := false
	if _, err := exec.LookPath("nft"); err == nil {
		if hadTable = hasTable(path); hadTable {
			var err error
			if nodePorts, err = readNodePorts(path); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// Without a path, where the process is: no setns (CAP_SYS_ADMIN).
	ns := netns.None()
	if path != "" {
		var err error
		if ns, err = netns.GetFromPath(path); err != nil {
			return fmt.Errorf("open network namespace %q: %w", path, err)
		}
		defer ns.Close()
	}
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("open netlink in %q: %w", path, err)
	}
	defer nl.Close()
	l := &linkAddrs{nl: nl}
	_, linkErr := nl.LinkByName(Interface)
	if (linkErr == nil || len(nodePorts) > 0) && Available() == nil {
		var ours []netip.Addr
		if linkErr == nil {
			ours, _ = l.List()
		}
		if h, err := libipvs.New(path); err == nil {
			errs = append(errs, cleanupServers(h, ours, nodePorts))
			h.Close()
		}
	}
	if hadTable {
		// Only when the table is there: creating it to delete it would
		// still be a write.
		if err := (nftExec{netns: path}).Apply([]byte("delete table inet " + Table + "\n")); err != nil {
			errs = append(errs, err)
		}
	}
	if linkErr != nil {
		return errors.Join(errs...)
	}
	if link, err := nl.LinkByName(Interface); err == nil {
		if err := nl.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", Interface, err))
		}
	}
	return errors.Join(errs...)
}
