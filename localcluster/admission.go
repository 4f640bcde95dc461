package localcluster

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/kubernetes/pkg/apis/core/v1/helper/qos"
	"k8s.io/kubernetes/pkg/kubelet/lifecycle"
	"k8s.io/kubernetes/pkg/kubelet/sysctl"
	kubetypes "k8s.io/kubernetes/pkg/kubelet/types"
)

// Admission is the kubelet's first look at a pod bound to its node
// (HandlePodAdditions): before anything of the pod is set up, its admit
// handlers decide whether the node runs it at all. A pod they refuse is
// never started and never tried again; its status says why (rejectPod).

// sysctlAllowlist is the kubelet's default sysctl admit handler: the safe,
// namespaced sysctls for this kernel (SafeSysctlAllowlist reads its
// version), as a kubelet without --allowed-unsafe-sysctls has it.
var sysctlAllowlist = sync.OnceValues(func() (lifecycle.PodAdmitHandler, error) {
	allow, err := sysctl.NewAllowlist(sysctl.SafeSysctlAllowlist(context.Background()))
	if err != nil {
		return nil, fmt.Errorf("sysctl allowlist: %w", err)
	}
	return allow, nil
})

// admitPod runs the kubelet's admit handlers this runtime has on the pod:
// the sysctl allowlist (none of the network namespace's sysctls for a
// hostNetwork pod, none of the IPC one's for a hostIPC pod).
func admitPod(pod *corev1.Pod) lifecycle.PodAdmitResult {
	allow, err := sysctlAllowlist()
	if err != nil {
		// The kubelet would not start without its allowlist: no pod
		// runs here unchecked.
		return lifecycle.PodAdmitResult{Reason: "UnexpectedAdmissionError", Message: err.Error()}
	}
	return allow.Admit(&lifecycle.PodAdmitAttributes{Pod: pod})
}

// rejectedStatus is the status the kubelet's rejectPod gives a pod its
// admission refused, as its status manager sends it: phase Failed, the
// handler's reason, its message after "Pod was rejected: ", the pod's QoS
// class and generation and a start time; no IPs, no container statuses
// and none of the conditions the kubelet owns (mergePodStatus keeps only
// the others, and the pod's resource claim statuses).
func rejectedStatus(cur *corev1.Pod, reason, message string, now time.Time) corev1.PodStatus {
	st := corev1.PodStatus{
		Phase:              corev1.PodFailed,
		Reason:             reason,
		Message:            "Pod was rejected: " + message,
		QOSClass:           qos.GetPodQOS(cur),
		ObservedGeneration: cur.Generation,
		StartTime:          cur.Status.StartTime,
		// Not the kubelet's to change.
		ResourceClaimStatuses:                cur.Status.ResourceClaimStatuses,
		ExtendedResourceClaimStatus:          cur.Status.ExtendedResourceClaimStatus,
		NodeAllocatableResourceClaimStatuses: cur.Status.NodeAllocatableResourceClaimStatuses,
	}
	if st.StartTime == nil || st.StartTime.IsZero() {
		st.StartTime = &metav1.Time{Time: now.Truncate(time.Second)}
	}
	for _, c := range cur.Status.Conditions {
		if !kubetypes.PodConditionByKubelet(c.Type) {
			st.Conditions = append(st.Conditions, c)
		}
	}
	return st
}

// reject does what the kubelet's rejectPod does with a pod its admission
// refused: a Warning event with the handler's reason and message, and the
// pod's status written once (rejectedStatus). Nothing of the pod was set
// up by this runtime; what an earlier `up` may have (its record, cgroup
// and network, from before the pod was admitted here) goes, as the
// kubelet's cleanup ends the containers of a pod it did not admit.
func (r *podRuntime) reject(ctx context.Context, pod *corev1.Pod, reason, message string) {
	r.log.Info("pod rejected", "pod", pod.Namespace+"/"+pod.Name, "node", r.node.Name, "reason", reason, "message", message)
	r.event(pod, corev1.EventTypeWarning, reason, message)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := r.client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur.UID != pod.UID || cur.Status.Phase == corev1.PodSucceeded || cur.Status.Phase == corev1.PodFailed {
			return nil
		}
		cur.Status = rejectedStatus(cur, reason, message, time.Now())
		_, err = r.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil && !apierrors.IsNotFound(err) && ctx.Err() == nil {
		r.log.Warn("update rejected pod's status", "pod", pod.Namespace+"/"+pod.Name, "err", err)
	}
	if rec, err := readRecord(r.recordPath(pod.UID)); err == nil && rec.UID == pod.UID && rec.Node == r.node.Name {
		ip, _ := netip.ParseAddr(rec.IP)
		r.tearDownPod(pod.UID, PodNet{NS: rec.NetNS, IP: ip, Node: r.node.Name, HostNetwork: pod.Spec.HostNetwork})
	}
}
