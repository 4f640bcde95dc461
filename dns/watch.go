package dns

import (
	"context"
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/switchboard/switchboard/servicestore"
)

// Watch keeps x current from the API through informers and returns once
// their first lists are in. Pods are kept only as their addresses, so the
// index costs memory per Service and endpoint, not per pod object.
func (x *Index) Watch(ctx context.Context, client kubernetes.Interface) error {
	factory := informers.NewSharedInformerFactory(client, 0)
	svc := factory.Core().V1().Services().Informer()
	slices := factory.Discovery().V1().EndpointSlices().Informer()
	nss := factory.Core().V1().Namespaces().Informer()
	pods := factory.Core().V1().Pods().Informer()
	for _, t := range []struct {
		inf cache.SharedIndexInformer
		fn  cache.TransformFunc
	}{{svc, servicestore.TrimService}, {slices, servicestore.TrimSlice}, {nss, trim}, {pods, trim}} {
		if err := t.inf.SetTransform(t.fn); err != nil {
			return fmt.Errorf("dns: informer transform: %w", err)
		}
	}
	svcHandler, sliceHandler := x.objects.Handlers(&x.mu, x.rebuild)
	svc.AddEventHandler(svcHandler)
	slices.AddEventHandler(sliceHandler)
	nss.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { x.SetNamespace(o.(*corev1.Namespace).Name, true) },
		DeleteFunc: func(o any) { x.SetNamespace(unwrap(o).(metav1.Object).GetName(), false) },
	})
	// As CoreDNS v1.15.0: pod records answer a pod's primary address only,
	// and an add or update of a terminating pod is dropped, so a pod first
	// seen terminating has no record while one that was running keeps its
	// record until it is deleted.
	setPod := func(o any) {
		if p := o.(*corev1.Pod); p.DeletionTimestamp.IsZero() {
			a, _ := netip.ParseAddr(p.Status.PodIP)
			x.SetPod(p.Namespace, p.Name, a)
		}
	}
	pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    setPod,
		UpdateFunc: func(_, o any) { setPod(o) },
		DeleteFunc: func(o any) {
			if p, ok := unwrap(o).(*corev1.Pod); ok {
				x.SetPod(p.Namespace, p.Name, netip.Addr{})
			}
		},
	})
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), svc.HasSynced, slices.HasSynced, nss.HasSynced, pods.HasSynced) {
		return fmt.Errorf("dns: informers did not sync: %w", ctx.Err())
	}
	return nil
}

func unwrap(o any) any {
	if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
		return d.Obj
	}
	return o
}

// trim keeps only what DNS reads of pods and namespaces before they enter
// the informers' caches, which hold every object for as long as it exists:
// a fresh, small object rather than the decoded one with its managed
// fields, annotations, pod specs and conditions. Services and slices are
// trimmed as the proxy trims them (package servicestore).
func trim(o any) (any, error) {
	meta := func(m metav1.ObjectMeta) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
			DeletionTimestamp: m.DeletionTimestamp}
	}
	switch o := o.(type) {
	case *corev1.Pod:
		return &corev1.Pod{ObjectMeta: meta(o.ObjectMeta), Status: corev1.PodStatus{PodIP: o.Status.PodIP}}, nil
	case *corev1.Namespace:
		return &corev1.Namespace{ObjectMeta: meta(o.ObjectMeta)}, nil
	}
	return o, nil
}
