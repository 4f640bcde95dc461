package endpointslice

import (
	"slices"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/cache"
)

// The informer transforms below keep only what the reconciler reads, so the
// caches of a large cluster stay small (pods dominate: a full Pod is several
// KB, the cached one a few hundred bytes). They run before objects enter the
// cache and must be pure.

func trimMeta(m *metav1.ObjectMeta) {
	m.ManagedFields = nil
	m.Annotations = nil
	m.Finalizers = nil
}

// cachedPod is what the pod cache holds instead of a v1.Pod: the fields the
// reconciler and the pod-to-Service mapping read, and nothing else. A
// v1.Pod is 1,192 bytes before any of its strings (PodSpec and PodStatus are
// embedded values), so even a trimmed one costs about 1.7 KB per pod with
// its container; this is about a third of that, which at 10,000 pods is
// most of the controller's heap. Consumers get real pods back from toPod.
type cachedPod struct {
	metav1.ObjectMeta
	nodeName, hostname, subdomain string
	phase                         v1.PodPhase
	podIP                         string
	podIPs                        []v1.PodIP
	// ready is the Ready condition's status and transition time (the
	// trigger-time annotation reads it); readyStatus "" means no condition.
	readyStatus v1.ConditionStatus
	readySince  metav1.Time
	// containers with ports only: named targetPorts resolve against them.
	containers []cachedContainer
}

type cachedContainer struct {
	name  string
	ports []v1.ContainerPort
	// init marks a sidecar (an init container with a restart policy):
	// upstream resolves named ports against those too.
	init          bool
	restartPolicy *v1.ContainerRestartPolicy
}

// GetObjectKind and DeepCopyObject make cachedPod a runtime.Object, which
// the informer machinery expects of what it stores.
func (p *cachedPod) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

func (p *cachedPod) DeepCopyObject() runtime.Object {
	c := *p
	p.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	c.podIPs = slices.Clone(p.podIPs)
	p.readySince.DeepCopyInto(&c.readySince)
	c.containers = make([]cachedContainer, len(p.containers))
	for i, ctr := range p.containers {
		c.containers[i] = cachedContainer{name: ctr.name, ports: slices.Clone(ctr.ports), init: ctr.init, restartPolicy: ctr.restartPolicy}
	}
	return &c
}

// trimPod turns a Pod into a cachedPod. Objects already trimmed pass
// through unchanged (the informer may hand them back on a relist).
func trimPod(obj any) (any, error) {
	p, ok := obj.(*v1.Pod)
	if !ok {
		return obj, nil
	}
	c := &cachedPod{ObjectMeta: p.ObjectMeta, nodeName: p.Spec.NodeName, hostname: p.Spec.Hostname, subdomain: p.Spec.Subdomain,
		phase: p.Status.Phase, podIP: p.Status.PodIP, podIPs: p.Status.PodIPs}
	trimMeta(&c.ObjectMeta)
	c.OwnerReferences = nil
	c.GenerateName = ""
	for _, ctr := range p.Spec.Containers {
		if len(ctr.Ports) > 0 {
			c.containers = append(c.containers, cachedContainer{name: ctr.Name, ports: ctr.Ports})
		}
	}
	for _, ctr := range p.Spec.InitContainers {
		if len(ctr.Ports) > 0 && ctr.RestartPolicy != nil {
			c.containers = append(c.containers, cachedContainer{name: ctr.Name, ports: ctr.Ports, init: true, restartPolicy: ctr.RestartPolicy})
		}
	}
	for _, cond := range p.Status.Conditions {
		if cond.Type == v1.PodReady {
			c.readyStatus, c.readySince = cond.Status, cond.LastTransitionTime
		}
	}
	return c, nil
}

// toPod rebuilds the Pod the reconciler sees: every field it reads, as the
// API server sent it. Like a lister's result, its labels, IPs and ports are
// shared with the cache and must not be modified.
func (p *cachedPod) toPod() *v1.Pod {
	pod := &v1.Pod{ObjectMeta: p.ObjectMeta,
		Spec:   v1.PodSpec{NodeName: p.nodeName, Hostname: p.hostname, Subdomain: p.subdomain},
		Status: v1.PodStatus{Phase: p.phase, PodIP: p.podIP, PodIPs: p.podIPs}}
	for _, ctr := range p.containers {
		c := v1.Container{Name: ctr.name, Ports: ctr.ports, RestartPolicy: ctr.restartPolicy}
		if ctr.init {
			pod.Spec.InitContainers = append(pod.Spec.InitContainers, c)
		} else {
			pod.Spec.Containers = append(pod.Spec.Containers, c)
		}
	}
	if p.readyStatus != "" {
		pod.Status.Conditions = []v1.PodCondition{{Type: v1.PodReady, Status: p.readyStatus, LastTransitionTime: p.readySince}}
	}
	return pod
}

// asPod converts what the pod informer hands to event handlers (a
// cachedPod, or a tombstone holding one) to what upstream's helpers take.
func asPod(obj any) any {
	switch o := obj.(type) {
	case *cachedPod:
		return o.toPod()
	case cache.DeletedFinalStateUnknown:
		if p, ok := o.Obj.(*cachedPod); ok {
			o.Obj = p.toPod()
		}
		return o
	}
	return obj
}

// trimService keeps the Service whole except managed fields: labels,
// annotations (topology mode) and the spec all shape the slices.
func trimService(obj any) (any, error) {
	if s, ok := obj.(*v1.Service); ok {
		s.ManagedFields = nil
		s.Status = v1.ServiceStatus{}
	}
	return obj, nil
}

// trimSlice drops managed fields only: the reconciler compares and rewrites
// everything else.
func trimSlice(obj any) (any, error) {
	if s, ok := obj.(*discovery.EndpointSlice); ok {
		s.ManagedFields = nil
	}
	return obj, nil
}

// trimNode keeps labels (zone), allocatable CPU and the Ready condition,
// which are what the topology cache weighs.
func trimNode(obj any) (any, error) {
	n, ok := obj.(*v1.Node)
	if !ok {
		return obj, nil
	}
	trimMeta(&n.ObjectMeta)
	status := v1.NodeStatus{}
	if cpu, ok := n.Status.Allocatable[v1.ResourceCPU]; ok {
		status.Allocatable = v1.ResourceList{v1.ResourceCPU: cpu}
	}
	for _, cond := range n.Status.Conditions {
		if cond.Type == v1.NodeReady {
			status.Conditions = []v1.NodeCondition{{Type: cond.Type, Status: cond.Status}}
		}
	}
	n.Status = status
	n.Spec = v1.NodeSpec{}
	return n, nil
}
