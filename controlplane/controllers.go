package controlplane

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/component-base/configz"
	"k8s.io/klog/v2"
	kcm "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kcmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
	"k8s.io/kubernetes/cmd/kube-controller-manager/names"
	"k8s.io/kubernetes/pkg/controller/namespace"
	"k8s.io/kubernetes/pkg/controller/serviceaccount"
)

// StartHousekeeping runs the kube-controller-manager controllers that every
// cluster depends on but that are not switchboard's subject: the
// service-account controller (a "default" ServiceAccount in every namespace,
// which pod admission requires), the namespace controller (a deleted
// namespace is emptied and then goes away instead of hanging in
// Terminating). They are upstream's own code, so their behaviour is the
// real cluster's. Tests and benchmarks that need little more than the API
// run these two; `switchboard up` runs the whole controller manager
// (StartControllerManager), which includes them.
func StartHousekeeping(ctx context.Context, cfg *rest.Config) error {
	client, meta, factory, err := controllerClients(cfg, "switchboard-housekeeping")
	if err != nil {
		return err
	}
	logger := klog.FromContext(ctx)

	sa, err := serviceaccount.NewServiceAccountsController(logger,
		factory.Core().V1().ServiceAccounts(), factory.Core().V1().Namespaces(),
		client, serviceaccount.DefaultServiceAccountsControllerOptions())
	if err != nil {
		return fmt.Errorf("service account controller: %w", err)
	}
	ns := namespace.NewNamespaceController(ctx, client, meta,
		client.Discovery().ServerPreferredNamespacedResources,
		factory.Core().V1().Namespaces(), 5*time.Minute, corev1.FinalizerKubernetes)
	factory.Start(ctx.Done())
	go sa.Run(ctx, 1)
	go ns.Run(ctx, 2)
	return nil
}

// KubeControllers is the --controllers list `switchboard up` runs:
// everything kube-controller-manager runs by default (what kind runs),
// except the EndpointSlice controller, which is switchboard's own.
var KubeControllers = []string{"*", "-" + names.EndpointSliceController}

// StartControllerManager runs upstream's kube-controller-manager inside the
// process, against cp, with the named controllers (its --controllers
// syntax: "*" is every controller on by default, "-name" turns one off).
// It is kube-controller-manager's own Run, configured as kubeadm and kind
// configure it: service-account tokens signed with the cluster's key, the
// cluster CA published as kube-root-ca.crt in every namespace and signing
// CSRs, no leader election (one per cluster) and no serving port. The node
// lifecycle controller among them lifts the node.kubernetes.io/not-ready
// taint the API server puts on a new Node once the Node reports Ready, and
// taints and evicts as upstream when a node stops reporting.
//
// Its controllers log through klog, where the API server's logs go. Run
// one per cluster (without leader election two would both act); it stops
// when ctx ends.
func StartControllerManager(ctx context.Context, cp *ControlPlane, controllers []string) error {
	opts, err := kcmoptions.NewKubeControllerManagerOptions()
	if err != nil {
		return fmt.Errorf("kube-controller-manager options: %w", err)
	}
	all, disabled, aliases := kcm.KnownControllers(), kcm.ControllersDisabledByDefault(), kcm.ControllerAliases()
	fs := pflag.NewFlagSet("kube-controller-manager", pflag.ContinueOnError)
	for _, f := range opts.Flags(all, disabled, aliases).FlagSets {
		fs.AddFlagSet(f)
	}
	args := []string{
		"--kubeconfig=" + cp.KubeconfigPath,
		"--controllers=" + strings.Join(controllers, ","),
		"--leader-elect=false",
		"--secure-port=0",
		"--service-account-private-key-file=" + cp.PKI.ServiceAccountKey(),
		"--root-ca-file=" + cp.PKI.CACert(),
		"--cluster-signing-cert-file=" + cp.PKI.CACert(),
		"--cluster-signing-key-file=" + cp.PKI.CAKey(),
	}
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("kube-controller-manager flags: %w", err)
	}
	cfg, err := opts.Config(ctx, all, disabled, aliases)
	if err != nil {
		return fmt.Errorf("kube-controller-manager config: %w", err)
	}
	// Run registers its configuration for /configz by name; a second run in
	// the process (a restarted local cluster) takes the name over.
	configz.Delete(kcm.ConfigzName)
	go func() {
		if err := kcm.Run(ctx, cfg.Complete()); err != nil && ctx.Err() == nil {
			klog.FromContext(ctx).Error(err, "kube-controller-manager stopped")
		}
	}()
	return nil
}

func controllerClients(cfg *rest.Config, agent string) (kubernetes.Interface, metadata.Interface, informers.SharedInformerFactory, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = agent
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s client: %w", agent, err)
	}
	meta, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s metadata client: %w", agent, err)
	}
	return client, meta, informers.NewSharedInformerFactory(client, 0), nil
}
