package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/switchboard/switchboard/doctor"
	"github.com/switchboard/switchboard/localcluster"
)

// errFoundProblem makes the process exit non-zero without another message:
// the report already said what is wrong.
var errFoundProblem = errors.New("found a problem")

func doctorCmd() *cobra.Command {
	var cf clientFlags
	var namespace, output string
	var opts doctor.Options
	var dataPlane bool
	var proxyPort int
	cmd := &cobra.Command{
		Use:   "doctor [svc/NAME]",
		Short: "Explain why a Service routes or does not (all Services of the namespace without an argument)",
		Long: `doctor reads a Service, the pods of its namespace and its EndpointSlices, and explains in plain words,
most likely cause first, why the Service does or does not route: a selector typo and the pod and label it
nearly matched, pods that are not Ready and why, a targetPort no container serves, EndpointSlices that lag
behind the pods. Unless --data-plane=false it then asks every node's proxy what it programmed (its
/debug/switchboard/services on the metrics port) and whether the kernel still holds it, shows the path a
packet takes on each node, and resolves the Service's name through cluster DNS from a pod of the namespace.
On a local cluster (switchboard up, as root) it reaches nodes and pods through their network namespaces;
on a real cluster through the API server's node proxy (nodes/NAME:PORT/proxy), with DNS asked from this host.
Exit code 0 when healthy, 3 when it found a problem.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("-o %q: want text or json", output)
			}
			cfg, err := cf.restConfig("doctor")
			if err != nil {
				return err
			}
			client, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				return err
			}
			if dataPlane {
				opts.DataPlane = chooseDataPlane(cmd.Context(), client, proxyPort)
			}
			var reports []doctor.Report
			if len(args) == 1 {
				name, ok := strings.CutPrefix(args[0], "svc/")
				if !ok {
					name, ok = strings.CutPrefix(args[0], "service/")
				}
				if !ok || name == "" {
					return fmt.Errorf("argument %q: want svc/NAME", args[0])
				}
				r, err := doctor.Diagnose(cmd.Context(), client, namespace, name, opts)
				if err != nil {
					return err
				}
				reports = []doctor.Report{r}
			} else if reports, err = doctor.DiagnoseNamespace(cmd.Context(), client, namespace, opts); err != nil {
				return err
			}
			if output == "json" {
				err = doctor.WriteJSON(cmd.OutOrStdout(), reports)
			} else {
				err = doctor.WriteText(cmd.OutOrStdout(), reports)
			}
			if err != nil {
				return err
			}
			for _, r := range reports {
				if !r.Healthy {
					return errFoundProblem
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	cf.addTo(f, 50, 100)
	f.StringVarP(&namespace, "namespace", "n", "default", "namespace of the Service(s)")
	f.StringVarP(&output, "output", "o", "text", "output format: text or json")
	f.BoolVar(&dataPlane, "data-plane", true, "also check the node proxies, the packet path and cluster DNS")
	f.IntVar(&proxyPort, "proxy-metrics-port", 10249, "port of the node proxies' metrics server (reached through the API server on real clusters)")
	f.StringVar(&opts.ClusterDomain, "cluster-domain", "cluster.local", "cluster DNS zone")
	f.StringVar(&opts.DNSService, "dns-service", "kube-system/kube-dns", "the cluster DNS Service, NAMESPACE/NAME")
	return cmd
}

// chooseDataPlane reaches a local cluster's nodes through their network
// namespaces when the Nodes say they are local (and this process may enter
// them), and any other cluster through the API server.
func chooseDataPlane(ctx context.Context, client kubernetes.Interface, proxyPort int) doctor.DataPlane {
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err == nil && len(nodes.Items) > 0 && os.Geteuid() == 0 {
		if dir := nodes.Items[0].Annotations[localcluster.StateDirAnnotation]; dir != "" {
			n := localcluster.NewNetwork(dir, netip.Prefix{}, netip.Prefix{})
			return doctor.NamespaceDataPlane{
				NodeNetNS:    func(node string) string { return "/run/netns/" + n.NodeNS(node) },
				PodNetNS:     func(ns, pod string) string { return "/run/netns/" + n.PodNS(ns, pod) },
				ProxyAddress: fmt.Sprintf("127.0.0.1:%d", proxyPort),
				FallbackNode: nodes.Items[0].Name,
			}
		}
	}
	return doctor.APIServerDataPlane{Client: client, ProxyPort: proxyPort}
}
