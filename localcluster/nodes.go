package localcluster

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

// NodeInfo is what other parts of the local cluster (the node proxies,
// DNS) need to know of a node.
type NodeInfo struct {
	Name string
	// NetNS is the path of the node's network namespace.
	NetNS   string
	IP      netip.Addr
	PodCIDR netip.Prefix
	Zone    string
	// StateDir is the local cluster's state directory; it is published on
	// the Node (StateDirAnnotation) so tools on this host find the node's
	// and its pods' network namespaces.
	StateDir string
}

// StateDirAnnotation on a Node names the state directory of the local
// cluster the node belongs to. `switchboard doctor` reads it to reach the
// node's proxy and the pods' network namespaces directly.
const StateDirAnnotation = "switchboard.dev/local-cluster-state-dir"

// zones spreads nodes over zones, so topology-aware behaviour is visible.
var zones = []string{"zone-a", "zone-b", "zone-c"}

// registerNode creates or updates the Node object of n and marks it Ready.
func registerNode(ctx context.Context, c kubernetes.Interface, n NodeInfo) error {
	want := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Annotations: map[string]string{StateDirAnnotation: n.StateDir}, Labels: map[string]string{
			corev1.LabelHostname:     n.Name,
			corev1.LabelTopologyZone: n.Zone,
			corev1.LabelOSStable:     "linux",
			corev1.LabelArchStable:   "amd64",
		}},
		Spec: corev1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: []string{n.PodCIDR.String()}},
	}
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := c.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = c.CoreV1().Nodes().Create(ctx, want, metav1.CreateOptions{})
			return err
		}
		if err != nil {
			return err
		}
		if cur.Spec.PodCIDR != "" && cur.Spec.PodCIDR != want.Spec.PodCIDR {
			return fmt.Errorf("node %s already has spec.podCIDR %s, this cluster assigns %s: pass the same --pod-cidr as before or use a new --state-dir",
				n.Name, cur.Spec.PodCIDR, want.Spec.PodCIDR)
		}
		if cur.Labels == nil {
			cur.Labels = map[string]string{}
		}
		for k, v := range want.Labels {
			cur.Labels[k] = v
		}
		if cur.Annotations == nil {
			cur.Annotations = map[string]string{}
		}
		cur.Annotations[StateDirAnnotation] = n.StateDir
		cur.Spec.PodCIDR, cur.Spec.PodCIDRs = want.Spec.PodCIDR, want.Spec.PodCIDRs
		_, err = c.CoreV1().Nodes().Update(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("register node %s: %w", n.Name, err)
	}
	return heartbeat(ctx, c, n)
}

// heartbeat reports the node Ready with its addresses, now.
func heartbeat(ctx context.Context, c kubernetes.Interface, n NodeInfo) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := c.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		ready := corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
			Reason: "SwitchboardReady", Message: "switchboard node agent is posting ready status",
			LastHeartbeatTime: now, LastTransitionTime: now}
		for _, c := range cur.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				ready.LastTransitionTime = c.LastTransitionTime
			}
		}
		cur.Status.Conditions = []corev1.NodeCondition{ready}
		cur.Status.Addresses = []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: n.IP.String()},
			{Type: corev1.NodeHostName, Address: n.Name},
		}
		// Where the API server finds this node's kubelet API.
		cur.Status.DaemonEndpoints.KubeletEndpoint.Port = KubeletPort
		cur.Status.NodeInfo.KubeletVersion = "switchboard"
		cur.Status.NodeInfo.OperatingSystem = "linux"
		cur.Status.NodeInfo.Architecture = "amd64"
		cur.Status.NodeInfo.ContainerRuntimeVersion = "switchboard://processes"
		_, err = c.CoreV1().Nodes().UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
}

// keepNodeReady refreshes the Ready condition until ctx ends, so the node
// does not look dead to anyone reading lastHeartbeatTime.
func keepNodeReady(ctx context.Context, c kubernetes.Interface, n NodeInfo, log *slog.Logger) {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := heartbeat(ctx, c, n); err != nil && ctx.Err() == nil {
				log.Warn("node heartbeat failed", "node", n.Name, "err", err)
			}
		}
	}
}
