package nftables

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/switchboard/switchboard/clustertest"
	"github.com/switchboard/switchboard/netnamespace"
)

// TestCleanupKubeProxyLeftovers lays out what kube-proxy leaves on a node
// (its nftables tables, and its iptables mode's chains in iptables-nft with
// the jumps to them) beside rules that are not its own, then removes
// kube-proxy's over netlink and checks the others stay; Cleanup then
// removes switchboard's own tables and nothing else.
func TestCleanupKubeProxyLeftovers(t *testing.T) {
	clustertest.RequireRoot(t)
	if _, err := exec.LookPath("iptables-nft"); err != nil {
		clustertest.Skip(t, "needs iptables-nft to lay out kube-proxy's iptables rules")
	}
	ns, path := clustertest.NetNS(t, "sbclean")
	run := func(args ...string) string {
		t.Helper()
		out, err := netnamespace.Exec(ns, args...)
		if err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
		return out
	}
	run("nft", "add table ip kube-proxy; add chain ip kube-proxy services; add table ip6 kube-proxy; "+
		"add table ip switchboard; add table ip6 switchboard; add table ip other; add chain ip other c")
	for _, rule := range [][]string{
		{"-t", "nat", "-N", "KUBE-SERVICES"},
		{"-t", "nat", "-N", "KUBE-SVC-ABCDEF"},
		{"-t", "nat", "-N", "KUBE-SEP-123456"},
		{"-t", "nat", "-N", "KUBE-MARK-MASQ"},
		{"-t", "nat", "-N", "KUBE-POSTROUTING"},
		{"-t", "nat", "-A", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"},
		{"-t", "nat", "-A", "OUTPUT", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"},
		{"-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "kubernetes postrouting rules", "-j", "KUBE-POSTROUTING"},
		{"-t", "nat", "-A", "KUBE-SERVICES", "-d", "10.96.0.10/32", "-p", "udp", "--dport", "53", "-j", "KUBE-SVC-ABCDEF"},
		{"-t", "nat", "-A", "KUBE-SVC-ABCDEF", "-j", "KUBE-SEP-123456"},
		{"-t", "nat", "-A", "KUBE-SEP-123456", "-j", "KUBE-MARK-MASQ"},
		{"-t", "nat", "-A", "KUBE-SEP-123456", "-p", "udp", "-j", "DNAT", "--to-destination", "10.244.0.5:53"},
		{"-t", "nat", "-A", "POSTROUTING", "-s", "10.244.0.0/16", "-j", "MASQUERADE"},
		{"-t", "filter", "-N", "KUBE-FORWARD"},
		{"-t", "filter", "-N", "KUBE-FIREWALL"},
		{"-t", "filter", "-A", "FORWARD", "-m", "comment", "--comment", "kubernetes forwarding rules", "-j", "KUBE-FORWARD"},
		{"-t", "filter", "-A", "INPUT", "-j", "KUBE-FIREWALL"},
		{"-t", "mangle", "-N", "KUBE-PROXY-CANARY"},
	} {
		run(append([]string{"iptables-nft"}, rule...)...)
	}
	run("ip6tables-nft", "-t", "nat", "-N", "KUBE-SERVICES")
	run("ip6tables-nft", "-t", "nat", "-A", "OUTPUT", "-j", "KUBE-SERVICES")

	removed, err := CleanupKubeProxy(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("removed: %q", removed)
	v4 := run("iptables-nft-save")
	v6 := run("ip6tables-nft-save")
	for _, gone := range []string{"KUBE-SERVICES", "KUBE-SVC-", "KUBE-SEP-", "KUBE-MARK-MASQ", "KUBE-POSTROUTING", "KUBE-FORWARD", "KUBE-PROXY-CANARY", "DNAT"} {
		if strings.Contains(v4, gone) {
			t.Errorf("kube-proxy's %s still in iptables-nft:\n%s", gone, v4)
		}
	}
	if strings.Contains(v6, "KUBE-SERVICES") {
		t.Errorf("kube-proxy's KUBE-SERVICES still in ip6tables-nft:\n%s", v6)
	}
	// The kubelet's chain and everyone else's rules stay.
	for _, kept := range []string{"-A INPUT -j KUBE-FIREWALL", "-A POSTROUTING -s 10.244.0.0/16 -j MASQUERADE"} {
		if !strings.Contains(v4, kept) {
			t.Errorf("%q was removed:\n%s", kept, v4)
		}
	}
	tables := run("nft", "list", "tables")
	if strings.Contains(tables, "kube-proxy") {
		t.Errorf("kube-proxy's nftables tables still there:\n%s", tables)
	}
	for _, kept := range []string{"table ip switchboard", "table ip6 switchboard", "table ip other"} {
		if !strings.Contains(tables, kept) {
			t.Errorf("%s was removed by the kube-proxy cleanup:\n%s", kept, tables)
		}
	}
	// Again: nothing left to do is no error.
	if again, err := CleanupKubeProxy(path); err != nil || len(again) != 0 {
		t.Errorf("second kube-proxy cleanup: removed %q, err %v", again, err)
	}

	if _, err := Cleanup(path); err != nil {
		t.Fatal(err)
	}
	tables = run("nft", "list", "tables")
	if strings.Contains(tables, "switchboard") || !strings.Contains(tables, "table ip other") {
		t.Errorf("after Cleanup want only others' tables, got:\n%s", tables)
	}
}
