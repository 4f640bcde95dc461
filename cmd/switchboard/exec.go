package main

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/switchboard/switchboard/localcluster"
)

func execCmd() *cobra.Command {
	var stateDir, namespace, node string
	cmd := &cobra.Command{
		Use:   "exec [-n NAMESPACE] (POD | --node NODE) -- COMMAND [ARGS...]",
		Short: "Run a command inside a local-cluster pod's (or node's) network and mount namespaces",
		Long: `exec runs COMMAND on this host inside the network namespace of a pod of the local cluster that
"switchboard up" runs from --state-dir, with the pod's /etc/resolv.conf (cluster DNS, search path), so
"switchboard exec client -- curl -s http://my-awesome-service" works as from inside the pod.
With --node it runs in a node's network namespace instead.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := filepath.Abs(stateDir)
			if err != nil {
				return err
			}
			n := localcluster.NewNetwork(dir, netip.Prefix{}, netip.Prefix{})
			var ns, what string
			argv := args
			if node != "" {
				ns, what = n.NodeNS(node), "node "+node
			} else {
				if cmd.ArgsLenAtDash() != 1 || len(args) < 2 {
					return fmt.Errorf("usage: switchboard exec [-n NAMESPACE] POD -- COMMAND [ARGS...]")
				}
				ns, what, argv = n.PodNS(namespace, args[0]), "pod "+namespace+"/"+args[0], args[1:]
			}
			if _, err := os.Stat(filepath.Join("/run/netns", ns)); err != nil {
				return fmt.Errorf("%s is not running in the local cluster of %s (is `switchboard up` running there, and the pod scheduled?)", what, dir)
			}
			ip, err := exec.LookPath("ip")
			if err != nil {
				return fmt.Errorf("exec needs iproute2's ip: %w", err)
			}
			// Replace this process: stdin, stdout and the exit code are the
			// command's own.
			return syscall.Exec(ip, append([]string{"ip", "netns", "exec", ns}, argv...), os.Environ())
		},
	}
	f := cmd.Flags()
	f.StringVar(&stateDir, "state-dir", ".switchboard", "state directory of the local cluster")
	f.StringVarP(&namespace, "namespace", "n", "default", "namespace of the pod")
	f.StringVar(&node, "node", "", "run in this node's network namespace instead of a pod's")
	return cmd
}
