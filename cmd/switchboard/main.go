// Command switchboard is Kubernetes Service networking in one binary: a
// one-machine cluster (`up`), and drop-in replacements for kube-proxy,
// CoreDNS and the EndpointSlice controller. This file only parses flags and
// wires packages together.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/switchboard/switchboard/localcluster"
	"github.com/switchboard/switchboard/proxy"
	"github.com/switchboard/switchboard/workingset"
)

// version is set at link time (-ldflags "-X main.version=..."); otherwise the
// module's build info is used.
var version = ""

func main() {
	// Every linked package's init has run by now and will not run again:
	// unmap the executable pages it touched (see package workingset), so the
	// resident set of `proxy`, `dns`, `controller` and each pod's echo server
	// is what they use, not what kube-apiserver's init code touched.
	if _, err := workingset.Release(); err != nil {
		slog.Debug("release start-up pages", "err", err)
	}
	root := &cobra.Command{
		Use:           "switchboard",
		Short:         "Kubernetes Service networking: EndpointSlices, node proxy, cluster DNS",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(versionCmd(), upCmd(), downCmd(), doctorCmd(), proxyCmd(), echoCmd(), execCmd(), controllerCmd(), dnsCmd())
	if err := root.Execute(); err != nil {
		if errors.Is(err, errFoundProblem) {
			os.Exit(3)
		}
		fmt.Fprintln(os.Stderr, "switchboard:", err)
		os.Exit(1)
	}
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		v := bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " " + s.Value[:12]
			}
		}
		return v
	}
	return "unknown"
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print switchboard's version and the Kubernetes version it links",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "switchboard %s (kube-apiserver %s)\n", versionString(), kubeVersion())
		},
	}
}

func kubeVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "k8s.io/kubernetes" {
				return d.Version
			}
		}
	}
	return "unknown"
}

func upCmd() *cobra.Command {
	var cfg localcluster.Config
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run a one-machine Kubernetes cluster in this process until interrupted (the data plane stays; see down)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Bad flags fail here, before anything is written or started.
			if err := cfg.Validate(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			terminal, err := localcluster.DupStderr()
			if err != nil {
				return err
			}
			cfg.Terminal = terminal
			cfg.Logger = slog.New(slog.NewTextHandler(terminal, nil))
			c, err := localcluster.Start(ctx, cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "switchboard is up; export KUBECONFIG=%s\n", c.ControlPlane.KubeconfigPath)
			// An idle cluster's heap is the API server's (OpenAPI, handlers,
			// caches), ~100 MB live with 2 nodes; at the default 100% growth
			// RSS swings up to twice that. Halve the headroom now that
			// start-up ran at full speed (under load the API server collects
			// at most twice as often; the components collect at 25%), hand
			// start-up's garbage back, and unmap the executable pages only
			// start-up ran (see package workingset).
			workingset.CollectAt(50)
			if _, err := workingset.ReleaseStartup(); err != nil {
				cfg.Logger.Debug("release start-up pages", "err", err)
			}
			select {
			case <-ctx.Done():
			case <-c.ControlPlane.Done():
				cfg.Logger.Error("control plane stopped", "err", c.ControlPlane.Err())
			}
			c.Stop()
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.StateDir, "state-dir", ".switchboard", "directory for the cluster's state (etcd data, PKI, kubeconfig)")
	f.IntVar(&cfg.Nodes, "nodes", 1, "number of nodes")
	f.StringVar(&cfg.ServiceCIDR, "service-cidr", "10.96.0.0/16", "range of Service ClusterIPs")
	f.StringVar(&cfg.NodePortRange, "service-node-port-range", "30000-32767", "range of NodePorts")
	f.IntVar(&cfg.APIServerPort, "apiserver-port", 6443, "loopback port for the API server (0 picks a free one)")
	f.StringVar(&cfg.NodeCIDR, "node-cidr", "172.30.0.0/24", "addresses of the nodes on the cluster bridge")
	f.StringVar(&cfg.PodCIDR, "pod-cidr", "10.244.0.0/16", "pod addresses, one /24 per node")
	f.StringVar(&cfg.DNSIP, "cluster-dns", "10.96.0.10", "cluster DNS address written into pods' resolv.conf")
	f.BoolVar(&cfg.Profiling, "profiling", false, "serve the process's /debug/pprof/ on the API server (kubectl get --raw /debug/pprof/heap), as kube-apiserver's --profiling")
	f.StringSliceVar(&cfg.Disable, "disable", nil, "Service networking components up does not run, comma-separated: "+
		strings.Join(localcluster.Components, ", ")+" (to run them as pods instead, e.g. kubectl apply -k deploy/; nodes, pods and the control plane still run)")
	f.StringVar(&cfg.ProxyMode, "proxy-mode", proxy.ModeNFTables, "the node proxies' mode, as kube-proxy's --proxy-mode: "+strings.Join(proxy.Modes, " or "))
	return cmd
}

func downCmd() *cobra.Command {
	var stateDir string
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Remove what `switchboard up` left running: pods' processes, cluster DNS, namespaces, links and rules",
		Long: `Stopping "switchboard up" (Ctrl-C) stops the control plane and leaves the data plane serving, so that
the next "up" on the same state directory adopts it. "down" removes that data plane: every pod's process
tree and the cluster DNS process (by their cgroups), and every node and pod network namespace with its
links and rules. The state (etcd data, PKI, kubeconfig) stays. It refuses while "up" runs there.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return localcluster.Down(stateDir)
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", ".switchboard", "state directory of the local cluster")
	return cmd
}
