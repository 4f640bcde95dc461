package endpointslice

import (
	"fmt"
	"slices"
	"strings"
	"unique"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
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
// embedded values) and a trimmed one still about 1.7 KB with its container
// and labels; a cachedPod is a 224-byte record plus its name, UID and IPs,
// because labels and container ports, the same for every pod of a
// Deployment, are interned, and so are the namespace, node and phase
// strings. At 10,000 pods that is most of the controller's heap. Consumers
// get real pods back from toPod.
type cachedPod struct {
	name, namespace   string
	uid               types.UID
	resourceVersion   string
	deletionTimestamp *metav1.Time
	labels            *shared[map[string]string] // nil: no labels
	containers        *shared[[]cachedContainer] // containers with ports only; nil: none
	nodeName          string
	hostname          string
	subdomain         string
	phase             v1.PodPhase
	// podIPs is status.podIPs; status.podIP is always its first element
	// (the API server fills one from the other).
	podIPs []v1.PodIP
	// readyStatus and readySince are the Ready condition's status and
	// transition time (the trigger-time annotation reads it); readyStatus
	// "" means no condition.
	readyStatus v1.ConditionStatus
	readySince  metav1.Time
}

type cachedContainer struct {
	name  string
	ports []v1.ContainerPort
	// init marks a sidecar (an init container with a restart policy):
	// upstream resolves named ports against those too.
	init          bool
	restartPolicy *v1.ContainerRestartPolicy
}

var (
	podLabels     internTable[map[string]string]
	podContainers internTable[[]cachedContainer]
)

// GetObjectKind and DeepCopyObject make cachedPod a runtime.Object, which
// the informer machinery expects of what it stores.
func (p *cachedPod) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// DeepCopyObject copies the record; interned parts are immutable and shared.
func (p *cachedPod) DeepCopyObject() runtime.Object {
	c := *p
	c.deletionTimestamp = p.deletionTimestamp.DeepCopy()
	c.podIPs = slices.Clone(p.podIPs)
	p.readySince.DeepCopyInto(&c.readySince)
	return &c
}

// GetObjectMeta gives the informer machinery (keys, the namespace index)
// the metadata it reads. It builds a fresh ObjectMeta on each call: cheaper
// than carrying a 232-byte ObjectMeta in each of 10,000 records, since keys
// are computed once per event.
func (p *cachedPod) GetObjectMeta() metav1.Object { return p.objectMeta() }

func (p *cachedPod) objectMeta() *metav1.ObjectMeta {
	return &metav1.ObjectMeta{Name: p.name, Namespace: p.namespace, UID: p.uid, ResourceVersion: p.resourceVersion,
		DeletionTimestamp: p.deletionTimestamp, Labels: p.labelSet()}
}

// labelSet is the pod's labels, shared with every pod that has the same:
// read only.
func (p *cachedPod) labelSet() map[string]string {
	if p.labels == nil {
		return nil
	}
	return p.labels.v
}

// trimPod turns a Pod into a cachedPod. Objects already trimmed pass
// through unchanged (the informer may hand them back on a relist).
func trimPod(obj any) (any, error) {
	p, ok := obj.(*v1.Pod)
	if !ok {
		return obj, nil
	}
	c := &cachedPod{name: p.Name, namespace: unique.Make(p.Namespace).Value(), uid: p.UID, resourceVersion: p.ResourceVersion,
		deletionTimestamp: p.DeletionTimestamp,
		nodeName:          unique.Make(p.Spec.NodeName).Value(), hostname: p.Spec.Hostname, subdomain: p.Spec.Subdomain,
		phase: unique.Make(p.Status.Phase).Value(), podIPs: p.Status.PodIPs}
	if len(c.podIPs) == 0 && p.Status.PodIP != "" {
		c.podIPs = []v1.PodIP{{IP: p.Status.PodIP}}
	}
	if len(p.Labels) > 0 {
		c.labels = podLabels.get(labels.Set(p.Labels).String(), func() map[string]string { return p.Labels })
	}
	var ctrs []cachedContainer
	for _, ctr := range p.Spec.Containers {
		if len(ctr.Ports) > 0 {
			ctrs = append(ctrs, cachedContainer{name: ctr.Name, ports: ctr.Ports})
		}
	}
	for _, ctr := range p.Spec.InitContainers {
		if len(ctr.Ports) > 0 && ctr.RestartPolicy != nil {
			ctrs = append(ctrs, cachedContainer{name: ctr.Name, ports: ctr.Ports, init: true, restartPolicy: ctr.RestartPolicy})
		}
	}
	if len(ctrs) > 0 {
		c.containers = podContainers.get(containersKey(ctrs), func() []cachedContainer { return ctrs })
	}
	for _, cond := range p.Status.Conditions {
		if cond.Type == v1.PodReady {
			c.readyStatus, c.readySince = unique.Make(cond.Status).Value(), cond.LastTransitionTime
		}
	}
	return c, nil
}

// containersKey spells out every field of ctrs that toPod gives back, so
// that equal keys mean interchangeable containers.
func containersKey(ctrs []cachedContainer) string {
	var b strings.Builder
	for _, c := range ctrs {
		policy := ""
		if c.restartPolicy != nil {
			policy = string(*c.restartPolicy)
		}
		fmt.Fprintf(&b, "%q %t %q[", c.name, c.init, policy)
		for _, p := range c.ports {
			fmt.Fprintf(&b, "%q %d %q %q %d,", p.Name, p.ContainerPort, p.Protocol, p.HostIP, p.HostPort)
		}
		b.WriteString("]")
	}
	return b.String()
}

// toPod rebuilds the Pod the reconciler sees: every field it reads, as the
// API server sent it. Like a lister's result, its labels, IPs and ports are
// shared with the cache and must not be modified.
func (p *cachedPod) toPod() *v1.Pod {
	pod := &v1.Pod{ObjectMeta: *p.objectMeta(),
		Spec:   v1.PodSpec{NodeName: p.nodeName, Hostname: p.hostname, Subdomain: p.subdomain},
		Status: v1.PodStatus{Phase: p.phase, PodIPs: p.podIPs}}
	if len(p.podIPs) > 0 {
		pod.Status.PodIP = p.podIPs[0].IP
	}
	if p.containers != nil {
		for _, ctr := range p.containers.v {
			c := v1.Container{Name: ctr.name, Ports: ctr.ports, RestartPolicy: ctr.restartPolicy}
			if ctr.init {
				pod.Spec.InitContainers = append(pod.Spec.InitContainers, c)
			} else {
				pod.Spec.Containers = append(pod.Spec.Containers, c)
			}
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
