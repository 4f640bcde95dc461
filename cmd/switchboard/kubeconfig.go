package main

import (
	"fmt"

	"github.com/spf13/pflag"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// clientFlags are the connection flags every component that runs against a
// cluster (controller, proxy, dns) shares, with kubectl's precedence: an
// explicit --kubeconfig, else in-cluster config, else $KUBECONFIG or
// ~/.kube/config.
type clientFlags struct {
	kubeconfig string
	master     string
	qps        float32
	burst      int
}

// featureGates sets Kubernetes feature gates (client-go's included) from a
// comma-separated list of Name=bool pairs, as upstream's --feature-gates.
func featureGates(spec string) error {
	if spec == "" {
		return nil
	}
	if err := utilfeature.DefaultMutableFeatureGate.Set(spec); err != nil {
		return fmt.Errorf("--feature-gates %q: %w", spec, err)
	}
	return nil
}

func (c *clientFlags) addTo(fs *pflag.FlagSet, defaultQPS float32, defaultBurst int) {
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "path to a kubeconfig; empty uses in-cluster config, then $KUBECONFIG or ~/.kube/config")
	fs.StringVar(&c.master, "master", "", "API server address, overriding the kubeconfig's")
	fs.Float32Var(&c.qps, "kube-api-qps", defaultQPS, "steady-state requests per second to the API server")
	fs.IntVar(&c.burst, "kube-api-burst", defaultBurst, "requests allowed in a burst to the API server")
}

// restConfig resolves the flags into a client configuration named agent.
func (c *clientFlags) restConfig(agent string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if c.kubeconfig == "" && c.master == "" {
		cfg, err = rest.InClusterConfig()
	}
	if cfg == nil {
		rules := clientcmd.NewDefaultClientConfigLoadingRules()
		if c.kubeconfig != "" {
			rules.ExplicitPath = c.kubeconfig
		}
		cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
			&clientcmd.ConfigOverrides{ClusterInfo: clientcmdapi.Cluster{Server: c.master}}).ClientConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("load client configuration (set --kubeconfig): %w", err)
	}
	cfg.QPS, cfg.Burst = c.qps, c.burst
	cfg.UserAgent = "switchboard-" + agent + "/" + versionString()
	// Protobuf, as kube-proxy, kube-controller-manager and CoreDNS: cheaper
	// to decode than JSON, and the first lists are every component's peak.
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	return cfg, nil
}
