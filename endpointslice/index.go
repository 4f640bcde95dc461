package endpointslice

import (
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/tools/cache"
	esutil "k8s.io/endpointslice/util"
)

// Upstream answers "which pods does this Service select" by scanning every
// pod of the namespace, and "which Services select this pod" by scanning
// every Service of the namespace, on every sync and every pod event. With
// 10,000 pods and 1,000 Services in a namespace that is the bulk of a sync's
// CPU (about 10 ms of the flip path on a busy 2-core machine) and of a cold
// start. The indexes below make both lookups proportional to the answer:
// pods are indexed by each of their labels, Services by each pair of their
// selector, slices by their Service. The results are the same sets upstream
// computes: candidates from an index are always checked against the full
// selector.
const (
	podLabelIndex       = "switchboard/label"
	serviceSelectorIdx  = "switchboard/selector"
	sliceServiceIndex   = "switchboard/service"
	emptySelectorSuffix = "" // a non-nil empty selector selects every pod of the namespace
)

// labelKey is the index key of one label pair in a namespace. Namespaces
// cannot contain '/' and label keys cannot contain '=', so keys of different
// (namespace, key, value) never collide.
func labelKey(namespace, k, v string) string { return namespace + "/" + k + "=" + v }

func podLabelIndexFunc(obj any) ([]string, error) {
	p, ok := obj.(*cachedPod)
	if !ok {
		return nil, nil
	}
	set := p.labelSet()
	if len(set) == 0 {
		return nil, nil
	}
	keys := make([]string, 0, len(set))
	for k, v := range set {
		keys = append(keys, labelKey(p.namespace, k, v))
	}
	return keys, nil
}

// serviceSelectorIndexFunc indexes a Service under every pair of its
// selector; one with a nil selector (selects nothing) is not indexed, one
// with an empty selector goes under the namespace's catch-all key.
func serviceSelectorIndexFunc(obj any) ([]string, error) {
	s, ok := obj.(*v1.Service)
	if !ok || s.Spec.Selector == nil {
		return nil, nil
	}
	if len(s.Spec.Selector) == 0 {
		return []string{s.Namespace + "/" + emptySelectorSuffix}, nil
	}
	keys := make([]string, 0, len(s.Spec.Selector))
	for k, v := range s.Spec.Selector {
		keys = append(keys, labelKey(s.Namespace, k, v))
	}
	return keys, nil
}

func sliceServiceIndexFunc(obj any) ([]string, error) {
	s, ok := obj.(*discovery.EndpointSlice)
	if !ok {
		return nil, nil
	}
	name, ok := s.Labels[discovery.LabelServiceName]
	if !ok {
		return nil, nil
	}
	return []string{s.Namespace + "/" + name}, nil
}

// podsSelectedBy returns the pods of namespace matching selector, like
// PodLister.Pods(namespace).List(selector), from the smallest label bucket
// the selector names, rebuilt as v1.Pods.
func podsSelectedBy(pods cache.Indexer, namespace string, selector map[string]string) ([]*v1.Pod, error) {
	sel := labels.ValidatedSetSelector(selector)
	var candidates []any
	var err error
	if len(selector) == 0 {
		candidates, err = pods.ByIndex(cache.NamespaceIndex, namespace)
	} else {
		best, bestLen := "", -1
		for k, v := range selector {
			key := labelKey(namespace, k, v)
			keys, err := pods.IndexKeys(podLabelIndex, key)
			if err != nil {
				return nil, err
			}
			if bestLen < 0 || len(keys) < bestLen {
				best, bestLen = key, len(keys)
			}
			if bestLen == 0 {
				return nil, nil
			}
		}
		candidates, err = pods.ByIndex(podLabelIndex, best)
	}
	if err != nil {
		return nil, err
	}
	out := make([]*v1.Pod, 0, len(candidates))
	for _, obj := range candidates {
		if p, ok := obj.(*cachedPod); ok && sel.Matches(labels.Set(p.labelSet())) {
			out = append(out, p.toPod())
		}
	}
	return out, nil
}

// servicesSelecting returns the keys of the Services in namespace whose
// selector matches podLabels: upstream's getServicesForPod, from the
// selector index.
func servicesSelecting(services cache.Indexer, namespace string, podLabels map[string]string) (sets.String, error) {
	set := sets.String{}
	check := func(indexKey string) error {
		objs, err := services.ByIndex(serviceSelectorIdx, indexKey)
		if err != nil {
			return err
		}
		for _, obj := range objs {
			s, ok := obj.(*v1.Service)
			if !ok || s.Spec.Selector == nil {
				continue
			}
			if labels.ValidatedSetSelector(s.Spec.Selector).Matches(labels.Set(podLabels)) {
				set.Insert(s.Namespace + "/" + s.Name)
			}
		}
		return nil
	}
	if err := check(namespace + "/" + emptySelectorSuffix); err != nil {
		return nil, err
	}
	for k, v := range podLabels {
		if err := check(labelKey(namespace, k, v)); err != nil {
			return nil, err
		}
	}
	return set, nil
}

// servicesToUpdate is upstream's GetServicesToUpdate on the selector index:
// the Services selecting the pod now, and on a label change those it left or
// joined (all of both sets if its endpoint also changed).
func servicesToUpdate(services cache.Indexer, key *esutil.PodProjectionKey) (sets.String, error) {
	cur, err := servicesSelecting(services, key.Namespace, key.Labels)
	if err != nil || key.OldLabels == nil {
		return cur, err
	}
	old, err := servicesSelecting(services, key.Namespace, key.OldLabels)
	if err != nil {
		return nil, err
	}
	if key.PodChanged {
		return cur.Union(old), nil
	}
	return cur.Difference(old).Union(old.Difference(cur)), nil
}
