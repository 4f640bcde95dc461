package endpointslice

import (
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The informer transforms below keep only what the reconciler reads, so the
// caches of a large cluster stay small (pods dominate: a full Pod is several
// KB, the trimmed one a few hundred bytes). They run before objects enter the
// cache and must be pure.

func trimMeta(m *metav1.ObjectMeta) {
	m.ManagedFields = nil
	m.Annotations = nil
	m.Finalizers = nil
}

// trimPod keeps identity, labels, deletion, node, hostname/subdomain,
// container ports (for named targetPorts, sidecars included), IPs, phase and
// the Ready condition.
func trimPod(obj any) (any, error) {
	p, ok := obj.(*v1.Pod)
	if !ok {
		return obj, nil
	}
	trimMeta(&p.ObjectMeta)
	p.OwnerReferences = nil
	spec := v1.PodSpec{NodeName: p.Spec.NodeName, Hostname: p.Spec.Hostname, Subdomain: p.Spec.Subdomain}
	for _, ctr := range p.Spec.Containers {
		if len(ctr.Ports) > 0 {
			spec.Containers = append(spec.Containers, v1.Container{Name: ctr.Name, Ports: ctr.Ports})
		}
	}
	for _, ctr := range p.Spec.InitContainers {
		if len(ctr.Ports) > 0 && ctr.RestartPolicy != nil {
			spec.InitContainers = append(spec.InitContainers, v1.Container{Name: ctr.Name, Ports: ctr.Ports, RestartPolicy: ctr.RestartPolicy})
		}
	}
	p.Spec = spec
	status := v1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs}
	for _, cond := range p.Status.Conditions {
		if cond.Type == v1.PodReady {
			cond.Message, cond.Reason = "", ""
			status.Conditions = []v1.PodCondition{cond}
		}
	}
	p.Status = status
	return p, nil
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
