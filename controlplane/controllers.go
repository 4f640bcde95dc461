package controlplane

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/controller-manager/pkg/informerfactory"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/controller/deployment"
	"k8s.io/kubernetes/pkg/controller/garbagecollector"
	"k8s.io/kubernetes/pkg/controller/namespace"
	"k8s.io/kubernetes/pkg/controller/replicaset"
	"k8s.io/kubernetes/pkg/controller/serviceaccount"
)

// StartHousekeeping runs the kube-controller-manager controllers that every
// cluster depends on but that are not switchboard's subject: the
// service-account controller (a "default" ServiceAccount in every namespace,
// which pod admission requires), the namespace controller (a deleted
// namespace is emptied and then goes away instead of hanging in
// Terminating). They are upstream's own code, so their behaviour is the
// real cluster's.
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

// StartWorkloadControllers runs upstream's Deployment and ReplicaSet
// controllers and the garbage collector, so `kubectl create deployment`,
// scaling and cascading deletion work in a local cluster. Tests that only
// need the API leave them off: the garbage collector watches every resource.
func StartWorkloadControllers(ctx context.Context, cfg *rest.Config) error {
	client, meta, factory, err := controllerClients(cfg, "switchboard-workloads")
	if err != nil {
		return err
	}
	dc, err := deployment.NewDeploymentController(ctx, factory.Apps().V1().Deployments(),
		factory.Apps().V1().ReplicaSets(), factory.Core().V1().Pods(), client)
	if err != nil {
		return fmt.Errorf("deployment controller: %w", err)
	}
	rc := replicaset.NewReplicaSetController(ctx, factory.Apps().V1().ReplicaSets(), factory.Core().V1().Pods(), client, replicaset.BurstReplicas)
	gcRun, err := startGarbageCollector(ctx, client, meta, factory)
	if err != nil {
		return err
	}
	factory.Start(ctx.Done())
	go dc.Run(ctx, 2)
	go rc.Run(ctx, 2)
	go gcRun()
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

// startGarbageCollector wires upstream's garbage collector the way
// kube-controller-manager does: a discovery-backed REST mapper refreshed
// periodically, metadata informers for every deletable resource.
func startGarbageCollector(ctx context.Context, client kubernetes.Interface, meta metadata.Interface, typed informers.SharedInformerFactory) (func(), error) {
	disco := memory.NewMemCacheClient(client.Discovery())
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(disco)
	metaFactory := metadatainformer.NewSharedInformerFactory(meta, 0)
	started := make(chan struct{})
	gc, err := garbagecollector.NewGarbageCollector(ctx, client, meta, mapper,
		garbagecollector.DefaultIgnoredResources(), informerfactory.NewInformerFactory(typed, metaFactory), started)
	if err != nil {
		return nil, fmt.Errorf("garbage collector: %w", err)
	}
	return func() {
		metaFactory.Start(ctx.Done())
		close(started)
		const syncPeriod = 30 * time.Second
		go gc.Sync(ctx, client.Discovery(), syncPeriod)
		gc.Run(ctx, 5, syncPeriod)
	}, nil
}
