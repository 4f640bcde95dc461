package localcluster

import (
	"context"
	"log/slog"
	"sort"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
)

// scheduler binds unscheduled pods to the node with the fewest pods that
// satisfies the pod's nodeSelector and required node affinity: spreading by
// count is what makes a three-replica app land on different nodes, as a
// newcomer expects.
type scheduler struct {
	client kubernetes.Interface
	nodes  []NodeInfo
	pods   cache.Indexer
	queue  workqueue.TypedRateLimitingInterface[string]
	log    *slog.Logger
	labels map[string]labels.Set
	// assumed remembers bindings the informer has not shown yet, so pods
	// created together still spread (the scheduler cache's "assume").
	assumed map[string]string
}

func startScheduler(ctx context.Context, c kubernetes.Interface, factory informers.SharedInformerFactory, nodes []NodeInfo, nodeLabels map[string]labels.Set, log *slog.Logger) {
	inf := factory.Core().V1().Pods().Informer()
	s := &scheduler{client: c, nodes: nodes, pods: inf.GetIndexer(), log: log, labels: nodeLabels, assumed: map[string]string{},
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())}
	enqueue := func(obj any) {
		p, ok := obj.(*corev1.Pod)
		if ok && s.wants(p) {
			key, _ := cache.MetaNamespaceKeyFunc(p)
			s.queue.Add(key)
		}
	}
	inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }})
	go func() { <-ctx.Done(); s.queue.ShutDown() }()
	go func() {
		if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			return
		}
		for s.next(ctx) {
		}
	}()
}

func (s *scheduler) wants(p *corev1.Pod) bool {
	return p.Spec.NodeName == "" && p.DeletionTimestamp == nil &&
		(p.Spec.SchedulerName == "" || p.Spec.SchedulerName == corev1.DefaultSchedulerName)
}

func (s *scheduler) next(ctx context.Context) bool {
	key, quit := s.queue.Get()
	if quit {
		return false
	}
	defer s.queue.Done(key)
	obj, exists, _ := s.pods.GetByKey(key)
	if !exists || !s.wants(obj.(*corev1.Pod)) {
		s.queue.Forget(key)
		return true
	}
	pod := obj.(*corev1.Pod)
	node := s.pick(pod)
	if node == "" {
		s.log.Warn("no node fits pod", "pod", key, "nodeSelector", pod.Spec.NodeSelector)
		s.queue.AddRateLimited(key)
		return true
	}
	err := s.client.CoreV1().Pods(pod.Namespace).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: node},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
		s.log.Warn("bind pod", "pod", key, "node", node, "err", err)
		s.queue.AddRateLimited(key)
		return true
	}
	s.assumed[key] = node
	s.queue.Forget(key)
	return true
}

// pick returns the fitting node (nodeSelector and required node affinity)
// with the fewest live pods, ties by name.
func (s *scheduler) pick(pod *corev1.Pod) string {
	count := map[string]int{}
	for _, o := range s.pods.List() {
		p := o.(*corev1.Pod)
		key, _ := cache.MetaNamespaceKeyFunc(p)
		node := p.Spec.NodeName
		if node != "" {
			delete(s.assumed, key)
		} else {
			node = s.assumed[key]
		}
		if node != "" && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			count[node]++
		}
	}
	// The pod's nodeSelector and required node affinity, as upstream's
	// scheduler reads them: DaemonSet pods, and the conformance suite's
	// pods pinned to a node, name it in a matchFields term.
	affinity := nodeaffinity.GetRequiredNodeAffinity(pod)
	var fit []string
	for _, n := range s.nodes {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: s.labels[n.Name]}}
		if ok, _ := affinity.Match(node); ok {
			fit = append(fit, n.Name)
		}
	}
	sort.SliceStable(fit, func(i, j int) bool {
		if count[fit[i]] != count[fit[j]] {
			return count[fit[i]] < count[fit[j]]
		}
		return fit[i] < fit[j]
	})
	if len(fit) == 0 {
		return ""
	}
	return fit[0]
}
