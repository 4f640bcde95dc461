package proxy

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"

	"github.com/switchboard/switchboard/proxy/iptables"
	"github.com/switchboard/switchboard/proxy/nftables"
	"github.com/switchboard/switchboard/proxydebug"
)

// Proxy modes: kube-proxy's --proxy-mode values this proxy implements.
const (
	ModeNFTables = proxydebug.ModeNFTables
	ModeIPTables = proxydebug.ModeIPTables
)

// Modes lists the proxy modes, the default first.
var Modes = []string{ModeNFTables, ModeIPTables}

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
	switch cfg.Mode {
	case "", ModeNFTables:
		if err := CleanupMode(ModeIPTables, cfg.NetNS); err != nil {
			return nil, err
		}
		return nftables.New(nftables.Config{NetNS: cfg.NetNS, NodeIPs: nodePortIPs,
			Options: nftables.Options{ClusterCIDRs: cfg.ClusterCIDRs, NodeIPs: primary}, Logger: log})
	case ModeIPTables:
		if err := CleanupMode(ModeNFTables, cfg.NetNS); err != nil {
			return nil, err
		}
		return iptables.New(iptables.Config{NetNS: cfg.NetNS, NodeIPs: nodePortIPs,
			Options: iptables.Options{ClusterCIDRs: cfg.ClusterCIDRs, NodeIPs: primary}, Logger: log})
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
	default:
		return fmt.Errorf("proxy: unknown proxy mode %q (want one of %v)", mode, Modes)
	}
	return nil
}
