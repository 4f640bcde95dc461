package controlplane

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/controller/namespace"
	"k8s.io/kubernetes/pkg/controller/serviceaccount"
)

// StartHousekeeping runs the few kube-controller-manager controllers that
// every cluster depends on but that are not switchboard's subject: the
// service-account controller (a "default" ServiceAccount in every namespace,
// which pod admission requires) and the namespace controller (a deleted
// namespace is emptied and then goes away instead of hanging in Terminating).
// They are upstream's own code, so their behaviour is the real cluster's.
func StartHousekeeping(ctx context.Context, cfg *rest.Config) error {
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "switchboard-housekeeping"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("housekeeping client: %w", err)
	}
	meta, err := metadata.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("housekeeping metadata client: %w", err)
	}
	factory := informers.NewSharedInformerFactory(client, 0)
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
