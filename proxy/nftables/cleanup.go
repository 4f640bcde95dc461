package nftables

import (
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// KubeProxyTable is the table kube-proxy's nftables mode creates, in the
// ip and ip6 families.
const KubeProxyTable = "kube-proxy"

// Cleanup deletes switchboard's tables (ip and ip6 "switchboard") in the
// network namespace netnsPath ("" is the current one), as `switchboard
// proxy --cleanup` does, and returns what it removed. Nothing else is
// touched.
func Cleanup(netnsPath string) ([]string, error) {
	return withConn(netnsPath, func(c *nftables.Conn) ([]string, error) {
		return deleteTables(c, TableName)
	})
}

// CleanupKubeProxy deletes what kube-proxy leaves behind in netnsPath, as
// kube-proxy's own cleanup does, over netlink (no iptables binary): the
// nftables mode's tables (ip and ip6 "kube-proxy"), and the iptables mode's
// chains in iptables-nft's nat, filter and mangle tables with the rules
// that jump to them. Chains that are the kubelet's (KUBE-FIREWALL,
// KUBE-KUBELET-CANARY) stay, as kube-proxy leaves them. Rules of
// iptables-legacy live outside nftables and are out of reach: remove them
// with `kube-proxy --cleanup`.
func CleanupKubeProxy(netnsPath string) ([]string, error) {
	return withConn(netnsPath, func(c *nftables.Conn) ([]string, error) {
		removed, err := deleteTables(c, KubeProxyTable)
		if err != nil {
			return removed, err
		}
		chains, err := kubeProxyIPTablesChains(c)
		return append(removed, chains...), err
	})
}

// kubeProxyChains are the iptables mode's fixed chains per table, as
// kube-proxy's cleanupLeftoversForFamily lists them.
var kubeProxyChains = map[string][]string{
	"nat":    {"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-PROXY-CANARY"},
	"filter": {"KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL", "KUBE-PROXY-CANARY"},
	"mangle": {"KUBE-PROXY-CANARY"},
}

// kubeProxyChainPrefixes are the per-Service and per-endpoint chains of the
// nat table (kube-proxy's isServiceChainName).
var kubeProxyChainPrefixes = []string{"KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-FW-", "KUBE-EXT-"}

func isKubeProxyChain(table, chain string) bool {
	if slices.Contains(kubeProxyChains[table], chain) {
		return true
	}
	if table != "nat" {
		return false
	}
	for _, p := range kubeProxyChainPrefixes {
		if strings.HasPrefix(chain, p) {
			return true
		}
	}
	return false
}

// kubeProxyIPTablesChains removes, in one transaction per family, every
// rule that jumps to one of kube-proxy's chains from another chain, then
// flushes and deletes those chains.
func kubeProxyIPTablesChains(c *nftables.Conn) ([]string, error) {
	var removed []string
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		chains, err := c.ListChainsOfTableFamily(fam)
		if err != nil {
			return removed, fmt.Errorf("list %s chains: %w", familyName(fam), err)
		}
		doomed := map[string]map[string]bool{} // table -> chain
		for _, ch := range chains {
			if _, ok := kubeProxyChains[ch.Table.Name]; ok && isKubeProxyChain(ch.Table.Name, ch.Name) {
				if doomed[ch.Table.Name] == nil {
					doomed[ch.Table.Name] = map[string]bool{}
				}
				doomed[ch.Table.Name][ch.Name] = true
			}
		}
		if len(doomed) == 0 {
			continue
		}
		var names []string
		for _, ch := range chains {
			gone := doomed[ch.Table.Name]
			if gone == nil || gone[ch.Name] {
				continue
			}
			rules, err := c.GetRules(ch.Table, ch)
			if err != nil {
				return removed, fmt.Errorf("list rules of %s %s %s: %w", familyName(fam), ch.Table.Name, ch.Name, err)
			}
			for _, r := range rules {
				if target := jumpTarget(r); gone[target] {
					if err := c.DelRule(r); err != nil {
						return removed, fmt.Errorf("delete rule %s %s %s -> %s: %w", familyName(fam), ch.Table.Name, ch.Name, target, err)
					}
					names = append(names, fmt.Sprintf("%s %s %s rule jumping to %s", familyName(fam), ch.Table.Name, ch.Name, target))
				}
			}
		}
		// Flush all first: kube-proxy's chains jump to each other, and a
		// chain can only go once nothing refers to it.
		for _, ch := range chains {
			if doomed[ch.Table.Name][ch.Name] {
				c.FlushChain(ch)
			}
		}
		for _, ch := range chains {
			if doomed[ch.Table.Name][ch.Name] {
				c.DelChain(ch)
				names = append(names, fmt.Sprintf("%s %s chain %s", familyName(fam), ch.Table.Name, ch.Name))
			}
		}
		if err := c.Flush(); err != nil {
			return removed, fmt.Errorf("remove kube-proxy's %s iptables chains: %w", familyName(fam), err)
		}
		removed = append(removed, names...)
	}
	return removed, nil
}

// jumpTarget is the chain a rule jumps or goes to, or "".
func jumpTarget(r *nftables.Rule) string {
	for _, e := range r.Exprs {
		if v, ok := e.(*expr.Verdict); ok && (v.Kind == expr.VerdictJump || v.Kind == expr.VerdictGoto) {
			return v.Chain
		}
	}
	return ""
}

// deleteTables deletes table name in the ip and ip6 families where it
// exists, in one transaction.
func deleteTables(c *nftables.Conn, name string) ([]string, error) {
	var removed []string
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		tables, err := c.ListTablesOfFamily(fam)
		if err != nil {
			return nil, fmt.Errorf("list %s tables: %w", familyName(fam), err)
		}
		for _, t := range tables {
			if t.Name == name {
				c.DelTable(t)
				removed = append(removed, fmt.Sprintf("%s table %s", familyName(fam), name))
			}
		}
	}
	if len(removed) == 0 {
		return nil, nil
	}
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("delete tables %s: %w", name, err)
	}
	return removed, nil
}

func familyName(f nftables.TableFamily) string {
	if f == nftables.TableFamilyIPv6 {
		return "ip6"
	}
	return "ip"
}

// withConn runs f on an nftables connection inside netnsPath.
func withConn(netnsPath string, f func(*nftables.Conn) ([]string, error)) ([]string, error) {
	var opts []nftables.ConnOption
	if netnsPath != "" {
		ns, err := netns.GetFromPath(netnsPath)
		if err != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", netnsPath, err)
		}
		defer unix.Close(int(ns))
		opts = append(opts, nftables.WithNetNSFd(int(ns)))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink socket in %q: %w", netnsPath, err)
	}
	return f(c)
}
