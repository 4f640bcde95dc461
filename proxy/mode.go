package proxy

import (
	"cmp"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"slices"

	"github.com/switchboard/switchboard/proxy/iptables"
	"github.com/switchboard/switchboard/proxy/ipvs"
	"github.com/switchboard/switchboard/proxy/nftables"
	"github.com/switchboard/switchboard/proxydebug"
)

// Proxy modes: kube-proxy's --proxy-mode values this proxy implements.
const (
	ModeNFTables = proxydebug.ModeNFTables
	ModeIPTables = proxydebug.ModeIPTables
	ModeIPVS     = proxydebug.ModeIPVS
)

// Modes lists the proxy modes, the default first.
var Modes = []string{ModeNFTables, ModeIPTables, ModeIPVS}

// dataPlane is a Backend that can also read its state back and be closed.
type dataPlane interface {
	Backend
	inspector
	Close() error
}

// newDataPlane opens the backend of cfg.Mode in cfg.NetNS, after removing
// what the other modes left there (kube-proxy's --cleanup), so a node that
// switches modes does not keep translating with stale rules.
//
// NodePorts answer on nodePortIPs; primary are the node's own addresses (a
// load balancer source range holding one admits the load balancer's).
func newDataPlane(cfg Config, nodePortIPs, primary []netip.Addr, log *slog.Logger) (dataPlane, error) {
	mode := cmp.Or(cfg.Mode, ModeNFTables)
	if !slices.Contains(Modes, mode) {
		return nil, fmt.Errorf("proxy: unknown proxy mode %q (want one of %v)", cfg.Mode, Modes)
	}
	for _, other := range Modes {
		if other != mode {
			if err := CleanupMode(other, cfg.NetNS); err != nil {
				return nil, err
			}
		}
	}
	switch mode {
	case ModeNFTables:
		return nftables.New(nftables.Config{NetNS: cfg.NetNS, NodeIPs: nodePortIPs,
			Options: nftables.Options{ClusterCIDRs: cfg.ClusterCIDRs, NodeIPs: primary}, Logger: log})
	case ModeIPTables:
		return iptables.New(iptables.Config{NetNS: cfg.NetNS, NodeIPs: nodePortIPs,
			Options: iptables.Options{ClusterCIDRs: cfg.ClusterCIDRs, NodeIPs: primary}, Logger: log})
	case ModeIPVS:
		return ipvs.New(ipvs.Config{NetNS: cfg.NetNS, Logger: log,
			Options: ipvs.Options{Scheduler: cfg.IPVSScheduler, NodeIPs: nodePortIPs, ClusterCIDRs: cfg.ClusterCIDRs}})
	}
	return nil, fmt.Errorf("proxy: unknown proxy mode %q (want one of %v)", cfg.Mode, Modes)
}

// CleanupMode removes every rule proxy mode mode programs in the network
// namespace at netns ("" is the current one), as kube-proxy --cleanup
// does. A namespace without them is left untouched; a node without the
// iptables tools has no iptables rules to remove.
func CleanupMode(mode, netns string) error {
	switch mode {
	case ModeNFTables:
		if _, err := nftables.Cleanup(netns); err != nil {
			return fmt.Errorf("proxy: clean up nftables mode: %w", err)
		}
	case ModeIPTables:
		if _, err := exec.LookPath("iptables-save"); err != nil {
			return nil
		}
		if err := iptables.Cleanup(iptables.ExecRunner{NetNS: netns}); err != nil {
			return fmt.Errorf("proxy: clean up iptables mode: %w", err)
		}
	case ModeIPVS:
		if err := ipvs.Cleanup(netns); err != nil {
			return fmt.Errorf("proxy: clean up ipvs mode: %w", err)
		}
	default:
		return fmt.Errorf("proxy: unknown proxy mode %q (want one of %v)", mode, Modes)
	}
	return nil
}
