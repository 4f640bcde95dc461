package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/switchboard/switchboard/proxy"
	"github.com/switchboard/switchboard/workingset"
)

// proxyCmd is `switchboard proxy`, a drop-in for kube-proxy in nftables mode.
func proxyCmd() *cobra.Command {
	var (
		cf          clientFlags
		hostname    string
		mode        string
		healthz     string
		metricsAddr string
		clusterCIDR string
		detectLocal string
		nodeIPs     []string
		npAddrs     []string
		netns       string
		verbose     bool
		profiling   bool
	)
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run the node proxy: program Service VIPs, NodePorts and traffic policies into nftables",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if mode != "nftables" {
				return fmt.Errorf("--mode %q: only nftables is supported", mode)
			}
			if hostname == "" {
				h, err := os.Hostname()
				if err != nil {
					return fmt.Errorf("--hostname-override not set and hostname unknown: %w", err)
				}
				hostname = strings.ToLower(h)
			}
			cfg := proxy.Config{NodeName: hostname, NetNS: netns, HealthzBindAddress: healthz, MetricsBindAddress: metricsAddr, EnableProfiling: profiling}
			switch detectLocal {
			case "ClusterCIDR":
				for _, s := range strings.Split(clusterCIDR, ",") {
					if s = strings.TrimSpace(s); s == "" {
						continue
					}
					p, err := netip.ParsePrefix(s)
					if err != nil {
						return fmt.Errorf("--cluster-cidr %q: %w", s, err)
					}
					cfg.ClusterCIDRs = append(cfg.ClusterCIDRs, p.Masked())
				}
			case "":
			default:
				return fmt.Errorf("--detect-local-mode %q: only ClusterCIDR is supported", detectLocal)
			}
			for _, s := range nodeIPs {
				a, err := netip.ParseAddr(s)
				if err != nil {
					return fmt.Errorf("--node-ip %q: %w", s, err)
				}
				cfg.NodeIPs = append(cfg.NodeIPs, a)
			}
			if !(len(npAddrs) == 1 && npAddrs[0] == "primary") {
				for _, s := range npAddrs {
					p, err := netip.ParsePrefix(strings.TrimSpace(s))
					if err != nil {
						return fmt.Errorf("--nodeport-addresses %q: want CIDRs or \"primary\": %w", s, err)
					}
					cfg.NodePortAddresses = append(cfg.NodePortAddresses, p.Masked())
				}
			}
			rc, err := cf.restConfig("proxy")
			if err != nil {
				return err
			}
			cfg.RESTConfig = rc
			// Start-up is over once the whole world is programmed: its
			// garbage and code need not stay resident. Until then the
			// default GOGC keeps the collector off the first sync's path
			// (it is CPU-bound: decoding the lists, building the ruleset);
			// after it, collect sooner, as the controller does.
			cfg.OnInitialSync = func() {
				workingset.CollectSooner()
				workingset.Settle()
			}
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return proxy.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	cf.addTo(f, 50, 100)
	f.StringVar(&hostname, "hostname-override", "", "this node's name (default: the hostname)")
	f.StringVar(&mode, "mode", "nftables", "proxy mode; only nftables")
	f.StringVar(&healthz, "healthz-bind-address", "0.0.0.0:10256", "address for /healthz and /livez; empty disables")
	f.StringVar(&metricsAddr, "metrics-bind-address", "127.0.0.1:10249", "address for /metrics and /debug/switchboard/services (what switchboard doctor reads); empty disables")
	f.StringVar(&clusterCIDR, "cluster-cidr", "", "comma-separated pod CIDRs; traffic to ClusterIPs from outside them is masqueraded")
	f.StringVar(&detectLocal, "detect-local-mode", "ClusterCIDR", "how to tell cluster-local traffic: ClusterCIDR (uses --cluster-cidr)")
	f.StringSliceVar(&nodeIPs, "node-ip", nil, "the node's addresses (default: the Node's InternalIPs); NodePorts answer on them unless --nodeport-addresses says otherwise")
	f.StringSliceVar(&npAddrs, "nodeport-addresses", []string{"primary"}, "as kube-proxy's: CIDRs whose local addresses NodePorts and healthCheckNodePorts answer on, or \"primary\" for the node's addresses")
	f.StringVar(&netns, "netns", "", "network namespace path to program (default: the current one)")
	f.BoolVarP(&verbose, "verbose", "v", false, "log every sync")
	f.BoolVar(&profiling, "profiling", false, "serve /debug/pprof/ on the metrics address")
	return cmd
}
