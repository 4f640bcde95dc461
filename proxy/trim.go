package proxy

import (
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The informer transforms below keep only what snapshot.BuildService and
// the tracker read, before objects enter the caches: at 5,000 Services x 10
// endpoints the full objects (managed fields, targetRefs) are most
// of the proxy's memory. They must be pure.

// trimMeta keeps identity and the resource version.
func trimMeta(m metav1.ObjectMeta, labels, annotations map[string]string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
		Labels: labels, Annotations: annotations}
}

// trimService keeps the spec and the load balancer status.
func trimService(obj any) (any, error) {
	s, ok := obj.(*v1.Service)
	if !ok {
		return obj, nil
	}
	return &v1.Service{ObjectMeta: trimMeta(s.ObjectMeta, nil, nil), Spec: s.Spec,
		Status: v1.ServiceStatus{LoadBalancer: s.Status.LoadBalancer}}, nil
}

// trimSlice keeps the Service name label, the trigger-time annotation (for
// the programming latency metric), the address type, the ports and, per
// endpoint, its addresses, conditions, node and topology hints.
func trimSlice(obj any) (any, error) {
	sl, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj, nil
	}
	var labels, annotations map[string]string
	if name, ok := sl.Labels[discoveryv1.LabelServiceName]; ok {
		labels = map[string]string{discoveryv1.LabelServiceName: name}
	}
	if tt, ok := sl.Annotations[v1.EndpointsLastChangeTriggerTime]; ok {
		annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: tt}
	}
	out := &discoveryv1.EndpointSlice{ObjectMeta: trimMeta(sl.ObjectMeta, labels, annotations),
		AddressType: sl.AddressType, Ports: sl.Ports, Endpoints: make([]discoveryv1.Endpoint, len(sl.Endpoints))}
	for i, ep := range sl.Endpoints {
		out.Endpoints[i] = discoveryv1.Endpoint{Addresses: ep.Addresses, Conditions: ep.Conditions, NodeName: ep.NodeName, Hints: ep.Hints}
	}
	return out, nil
}
