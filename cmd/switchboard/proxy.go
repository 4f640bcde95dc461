package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/switchboard/switchboard/proxy"
	"github.com/switchboard/switchboard/proxy/kubeproxyconfig"
	"github.com/switchboard/switchboard/proxy/nftables"
	"github.com/switchboard/switchboard/workingset"
)

// proxyCmd is `switchboard proxy`, a drop-in for kube-proxy in nftables or
// iptables mode.
func proxyCmd() *cobra.Command {
	var (
		cf               clientFlags
		lf               logFlags
		configFile       string
		hostname         string
		mode             string
		healthz          string
		metricsAddr      string
		clusterCIDR      string
		detectLocal      string
		nodeIPs          []string
		npAddrs          []string
		netns            string
		profiling        bool
		cleanup          bool
		cleanupKubeProxy bool
		minSync          time.Duration // only from --config's nftables.minSyncPeriod
		ipvsScheduler    string
	)
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run the node proxy: program Service VIPs, NodePorts and traffic policies into nftables, iptables or IPVS",
		Long: `proxy programs Services into nftables (its own tables "switchboard", ip and ip6), as kube-proxy's
nftables mode, or with --proxy-mode iptables into iptables chains of its own (prefix SWB-), as kube-proxy's
iptables mode, or with --proxy-mode ipvs into IPVS virtual servers (Service addresses on the dummy interface
swb-ipvs0, filter rules in the nftables table "switchboard-ipvs"), as kube-proxy's ipvs mode; starting in one mode
removes the others' rules. On SIGTERM it exits and leaves its rules, so traffic flows until the next proxy adopts them.
--cleanup removes its tables and chains of both modes (and kube-proxy's leftovers) and exits, as kube-proxy --cleanup.
--config reads kube-proxy's KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1): its fields win
over flags, except --hostname-override, -v and --logging-format, as in kube-proxy.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ignored []string
			if configFile != "" {
				s, err := kubeproxyconfig.Load(configFile)
				if err != nil {
					return err
				}
				fs := cmd.Flags()
				// The file wins over flags, except these (kube-proxy's
				// Complete and processHostnameOverrideFlag).
				set := func(dst *string, v, flag string) {
					if v != "" && !(flag != "" && fs.Changed(flag)) {
						*dst = v
					}
				}
				set(&cf.kubeconfig, s.Kubeconfig, "")
				set(&hostname, s.HostnameOverride, "hostname-override")
				set(&healthz, s.HealthzBindAddress, "")
				set(&metricsAddr, s.MetricsBindAddress, "")
				set(&clusterCIDR, s.ClusterCIDR, "")
				set(&detectLocal, s.DetectLocalMode, "")
				set(&mode, s.Mode, "")
				set(&ipvsScheduler, s.IPVSScheduler, "")
				set(&lf.format, s.LoggingFormat, "logging-format")
				if s.QPS != 0 {
					cf.qps = s.QPS
				}
				if s.Burst != 0 {
					cf.burst = int(s.Burst)
				}
				if s.Verbosity != 0 && !fs.Changed("v") {
					lf.verbosity = s.Verbosity
				}
				if len(s.NodePortAddresses) > 0 {
					npAddrs = s.NodePortAddresses
				}
				profiling = profiling || s.EnableProfiling
				minSync = s.MinSyncPeriod
				ignored = s.Ignored
				if s.Lenient != nil {
					ignored = append(ignored, "read leniently (strict decoding failed: "+s.Lenient.Error()+")")
				}
			}
			log, err := lf.logger(os.Stderr)
			if err != nil {
				return err
			}
			for _, f := range ignored {
				log.Warn("kube-proxy configuration field not applied", "file", configFile, "field", f)
			}
			removeKubeProxy := func() error {
				removed, err := nftables.CleanupKubeProxy(netns)
				for _, r := range removed {
					log.Info("removed kube-proxy's leftover", "what", r)
				}
				if err != nil {
					return fmt.Errorf("clean up kube-proxy's rules: %w", err)
				}
				return nil
			}
			if cleanup {
				if err := removeKubeProxy(); err != nil {
					return err
				}
				var errs []error
				for _, m := range proxy.Modes {
					errs = append(errs, proxy.CleanupMode(m, netns))
				}
				return errors.Join(errs...)
			}
			if !slices.Contains(proxy.Modes, mode) {
				return fmt.Errorf("--proxy-mode %q: want one of %s", mode, strings.Join(proxy.Modes, ", "))
			}
			if hostname == "" {
				h, err := os.Hostname()
				if err != nil {
					return fmt.Errorf("--hostname-override not set and hostname unknown: %w", err)
				}
				hostname = strings.ToLower(h)
			}
			cfg := proxy.Config{Mode: mode, IPVSScheduler: ipvsScheduler, NodeName: hostname, NetNS: netns, HealthzBindAddress: healthz, MetricsBindAddress: metricsAddr, EnableProfiling: profiling}
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
				// kube-proxy's rules go once ours are in: until then
				// they keep serving, so the node never goes without.
				if cleanupKubeProxy {
					if err := removeKubeProxy(); err != nil {
						log.Error("kube-proxy's leftovers stay", "err", err)
					}
				}
				workingset.CollectSooner()
				workingset.Settle()
			}
			cfg.Logger = log
			cfg.MinSyncInterval = minSync
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			err = proxy.Run(ctx, cfg)
			if err == nil && ctx.Err() != nil {
				log.Info("stopped; the rules stay in the kernel until the next proxy adopts them (--cleanup removes them)")
			}
			return err
		},
	}
	f := cmd.Flags()
	cf.addTo(f, 50, 100)
	lf.addTo(f)
	f.StringVar(&configFile, "config", "", "kube-proxy's configuration file (KubeProxyConfiguration, kubeproxy.config.k8s.io/v1alpha1); its fields win over flags but --hostname-override, -v and --logging-format")
	f.StringVar(&hostname, "hostname-override", "", "this node's name (default: the hostname)")
	f.StringVar(&mode, "proxy-mode", proxy.ModeNFTables, "proxy mode, as kube-proxy's: "+strings.Join(proxy.Modes, " or ")+"; starting in one mode removes the other's rules")
	f.StringVar(&mode, "mode", proxy.ModeNFTables, "proxy mode")
	f.MarkDeprecated("mode", "use --proxy-mode")
	f.StringVar(&ipvsScheduler, "ipvs-scheduler", "rr", "the ipvs mode's scheduler, as kube-proxy's --ipvs-scheduler (rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq, mh)")
	f.StringVar(&healthz, "healthz-bind-address", "0.0.0.0:10256", "address for /healthz and /livez; empty disables")
	f.StringVar(&metricsAddr, "metrics-bind-address", "127.0.0.1:10249", "address for /metrics and /debug/switchboard/services (what switchboard doctor reads); empty disables")
	f.StringVar(&clusterCIDR, "cluster-cidr", "", "comma-separated pod CIDRs; traffic to ClusterIPs from outside them is masqueraded")
	f.StringVar(&detectLocal, "detect-local-mode", "ClusterCIDR", "how to tell cluster-local traffic: ClusterCIDR (uses --cluster-cidr)")
	f.StringSliceVar(&nodeIPs, "node-ip", nil, "the node's addresses (default: the Node's InternalIPs); NodePorts answer on them unless --nodeport-addresses says otherwise")
	f.StringSliceVar(&npAddrs, "nodeport-addresses", []string{"primary"}, "as kube-proxy's: CIDRs whose local addresses NodePorts and healthCheckNodePorts answer on, or \"primary\" for the node's addresses")
	f.StringVar(&netns, "netns", "", "network namespace path to program (default: the current one)")
	f.BoolVar(&profiling, "profiling", false, "serve /debug/pprof/ on the metrics address")
	f.BoolVar(&cleanup, "cleanup", false, "remove switchboard's nftables tables and iptables chains and kube-proxy's leftovers, then exit (as kube-proxy --cleanup)")
	f.BoolVar(&cleanupKubeProxy, "cleanup-kube-proxy", false, "once the first sync is programmed, remove kube-proxy's leftovers (its nftables tables, its iptables-nft chains), as kube-proxy removes other modes' rules; for a node where kube-proxy no longer runs")
	return cmd
}
