// Package servicestore is what the node proxy and cluster DNS both keep of
// the API (as CoreDNS's object package): slim copies of Services and
// EndpointSlices, trimmed before they enter an informer's cache, and a
// Store joining each Service with its slices, fed by informer events. A
// slice belongs to the Service its kubernetes.io/service-name label names;
// relabelled, it leaves the Service it belonged to.
package servicestore

import (
	"iter"
	"maps"
	"slices"
	"sync"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// Key names a Service.
type Key struct {
	Namespace, Name string
}

func (k Key) String() string { return k.Namespace + "/" + k.Name }

// SliceKey is the Service a slice belongs to: its kubernetes.io/service-name
// label in its namespace; false when it has none.
func SliceKey(sl *discoveryv1.EndpointSlice) (Key, bool) {
	name := sl.Labels[discoveryv1.LabelServiceName]
	return Key{Namespace: sl.Namespace, Name: name}, name != ""
}

// Store joins each Service with its EndpointSlices. A slice may arrive
// before its Service and outlive it: the Store keeps it under the Service's
// key either way. It is not safe for concurrent use: its owner holds a lock
// around every call (Handlers takes it for the informer events).
type Store struct {
	services map[Key]*v1.Service
	slices   map[Key]map[string]*discoveryv1.EndpointSlice
}

// New returns an empty Store.
func New() *Store {
	return &Store{services: map[Key]*v1.Service{}, slices: map[Key]map[string]*discoveryv1.EndpointSlice{}}
}

// SetService records the Service of key; nil forgets it.
func (s *Store) SetService(key Key, svc *v1.Service) {
	if svc == nil {
		delete(s.services, key)
		return
	}
	s.services[key] = svc
}

// SetSlice records the slice called name under the Service of key; nil
// forgets it. It reports whether the Store changed (forgetting a slice it
// does not hold does not change it).
func (s *Store) SetSlice(key Key, name string, sl *discoveryv1.EndpointSlice) bool {
	m := s.slices[key]
	if sl == nil {
		if _, ok := m[name]; !ok {
			return false
		}
		delete(m, name)
		if len(m) == 0 {
			delete(s.slices, key)
		}
		return true
	}
	if m == nil {
		m = map[string]*discoveryv1.EndpointSlice{}
		s.slices[key] = m
	}
	m[name] = sl
	return true
}

// Service returns the Service of key, nil if none.
func (s *Store) Service(key Key) *v1.Service { return s.services[key] }

// Slices returns the slices of the Service of key, by name.
func (s *Store) Slices(key Key) []*discoveryv1.EndpointSlice {
	m := s.slices[key]
	out := make([]*discoveryv1.EndpointSlice, 0, len(m))
	for _, name := range slices.Sorted(maps.Keys(m)) {
		out = append(out, m[name])
	}
	return out
}

// Keys yields every key with a Service or slices, each once.
func (s *Store) Keys() iter.Seq[Key] {
	return func(yield func(Key) bool) {
		for k := range s.services {
			if !yield(k) {
				return
			}
		}
		for k := range s.slices {
			if _, dup := s.services[k]; dup {
				continue
			}
			if !yield(k) {
				return
			}
		}
	}
}

// Handlers returns informer event handlers for Services and for
// EndpointSlices (of any manager) that apply each event to s while holding
// mu and then, still holding it, call changed with each Service the event
// touched: a slice relabelled to another Service (or unlabelled) touches
// the one it left too.
func (s *Store) Handlers(mu sync.Locker, changed func(Key)) (services, endpointSlices cache.ResourceEventHandler) {
	setService := func(o any, deleted bool) {
		if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
			o, deleted = d.Obj, true
		}
		svc, ok := o.(*v1.Service)
		if !ok {
			return
		}
		key := Key{Namespace: svc.Namespace, Name: svc.Name}
		mu.Lock()
		defer mu.Unlock()
		if deleted {
			svc = nil
		}
		s.SetService(key, svc)
		changed(key)
	}
	// setSlice records cur (nil: deleted) and forgets old when it
	// belonged to another Service.
	setSlice := func(old, cur *discoveryv1.EndpointSlice) {
		mu.Lock()
		defer mu.Unlock()
		if old != nil {
			if key, ok := SliceKey(old); ok {
				if curKey, curOK := sliceKeyOf(cur); !curOK || curKey != key {
					if s.SetSlice(key, old.Name, nil) {
						changed(key)
					}
				}
			}
		}
		if cur != nil {
			if key, ok := SliceKey(cur); ok && s.SetSlice(key, cur.Name, cur) {
				changed(key)
			}
		}
	}
	services = cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { setService(o, false) },
		UpdateFunc: func(_, o any) { setService(o, false) },
		DeleteFunc: func(o any) { setService(o, true) },
	}
	endpointSlices = cache.ResourceEventHandlerFuncs{
		AddFunc: func(o any) {
			if sl, ok := o.(*discoveryv1.EndpointSlice); ok {
				setSlice(nil, sl)
			}
		},
		UpdateFunc: func(old, o any) {
			was, _ := old.(*discoveryv1.EndpointSlice)
			if sl, ok := o.(*discoveryv1.EndpointSlice); ok {
				setSlice(was, sl)
			}
		},
		DeleteFunc: func(o any) {
			if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = d.Obj
			}
			if sl, ok := o.(*discoveryv1.EndpointSlice); ok {
				setSlice(sl, nil)
			}
		},
	}
	return services, endpointSlices
}

func sliceKeyOf(sl *discoveryv1.EndpointSlice) (Key, bool) {
	if sl == nil {
		return Key{}, false
	}
	return SliceKey(sl)
}

// The informer transforms below keep only what the proxy and DNS read,
// before objects enter the caches: at 5,000 Services x 10 endpoints the
// full objects (managed fields, targetRefs) are most of their memory. They
// must be pure.

// trimMeta keeps identity and the resource version.
func trimMeta(m metav1.ObjectMeta, labels, annotations map[string]string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
		Labels: labels, Annotations: annotations}
}

// TrimService is an informer transform keeping a Service's spec and load
// balancer status.
func TrimService(obj any) (any, error) {
	s, ok := obj.(*v1.Service)
	if !ok {
		return obj, nil
	}
	return &v1.Service{ObjectMeta: trimMeta(s.ObjectMeta, nil, nil), Spec: s.Spec,
		Status: v1.ServiceStatus{LoadBalancer: s.Status.LoadBalancer}}, nil
}

// TrimSlice is an informer transform keeping a slice's Service name label,
// its trigger-time annotation (for the proxy's programming latency), the
// address type, the ports and, per endpoint, its addresses, hostname,
// conditions, node and topology hints.
func TrimSlice(obj any) (any, error) {
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
		out.Endpoints[i] = discoveryv1.Endpoint{Addresses: ep.Addresses, Hostname: ep.Hostname, Conditions: ep.Conditions,
			NodeName: ep.NodeName, Hints: ep.Hints}
	}
	return out, nil
}
