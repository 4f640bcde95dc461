package localcluster

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestTerminationMessageSources(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cri := func(lines ...string) string {
		var b strings.Builder
		for _, l := range lines {
			tag := "F"
			l, partial := strings.CutSuffix(l, "\\")
			if partial {
				tag = "P"
			}
			fmt.Fprintf(&b, "2026-12-02T05:00:00.000000000Z stdout %s %s\n", tag, l)
		}
		return b.String()
	}
	var long []string
	for i := range 100 {
		long = append(long, fmt.Sprintf("line %d", i))
	}
	var wantTail strings.Builder
	for i := 20; i < 100; i++ {
		fmt.Fprintf(&wantTail, "line %d\n", i)
	}
	fallback := corev1.Container{TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError}
	for _, tc := range []struct {
		name      string
		spec      corev1.Container
		term, log string
		code      int
		want      string
	}{
		{name: "file", term: file("t1", "bye"), log: file("l1", cri("logged")), code: 1, want: "bye"},
		{name: "file wins over logs", spec: fallback, term: file("t2", "bye"), log: file("l2", cri("logged")), code: 1, want: "bye"},
		{name: "no fallback", term: file("t3", ""), log: file("l3", cri("logged")), code: 1, want: ""},
		{name: "fallback on failure", spec: fallback, term: file("t4", ""), log: file("l4", cri("a", "b")), code: 2, want: "a\nb\n"},
		{name: "no fallback on success", spec: fallback, term: file("t5", ""), log: file("l5", cri("a")), code: 0, want: ""},
		{name: "last 80 lines", spec: fallback, term: file("t6", ""), log: file("l6", cri(long...)), code: 1, want: wantTail.String()},
		{name: "partial records join", spec: fallback, term: file("t8", ""), log: file("l8", cri("par\\", "tial", "end\\")), code: 1, want: "partial\nend"},
		{name: "file cut to 4096", term: file("t7", strings.Repeat("x", 5000)), code: 1, want: strings.Repeat("x", 4096)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := terminationMessage(tc.spec, tc.term, tc.log, tc.code)
			if len(got) > maxMessageLogBytes && tc.term == "" {
				t.Errorf("message of %d bytes from logs, want at most %d", len(got), maxMessageLogBytes)
			}
			if got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestHostPorts(t *testing.T) {
	pod := &corev1.Pod{Spec: corev1.PodSpec{
		InitContainers: []corev1.Container{{Ports: []corev1.ContainerPort{{ContainerPort: 1, HostPort: 11}}}},
		Containers: []corev1.Container{
			{Ports: []corev1.ContainerPort{{ContainerPort: 80}, {ContainerPort: 81, HostPort: 8081, Protocol: corev1.ProtocolUDP}}},
		}}}
	got := hostPorts(pod)
	if len(got) != 2 || got[0].HostPort != 11 || got[1].HostPort != 8081 {
		t.Errorf("hostPorts = %+v, want the two ports with a hostPort", got)
	}
	if n := hostPortTable("0123456789abcdef-xyz"); n != "sb-hostport-0123456789abc" {
		t.Errorf("table name %q", n)
	}
}

// TestPodSysctlsAdmission: the kubelet's allowlist admits the pod or
// rejects it with its reason and message, and each admitted sysctl is
// written under /proc/sys by its dotted name (a slash-separated name is
// normalised first, as the kubelet does).
func TestPodSysctlsAdmission(t *testing.T) {
	pod := func(hostNetwork bool, sysctls ...corev1.Sysctl) *corev1.Pod {
		return &corev1.Pod{Spec: corev1.PodSpec{HostNetwork: hostNetwork, SecurityContext: &corev1.PodSecurityContext{Sysctls: sysctls}}}
	}
	safe := pod(false, corev1.Sysctl{Name: "net.ipv4.ip_unprivileged_port_start", Value: "0"},
		corev1.Sysctl{Name: "net/ipv4/ping_group_range", Value: "0 2147483647"})
	if res := admitPod(safe); !res.Admit {
		t.Fatalf("safe sysctls refused: %+v", res)
	}
	want := []sysctlSetting{
		{Name: "net.ipv4.ip_unprivileged_port_start", Path: "/proc/sys/net/ipv4/ip_unprivileged_port_start", Value: "0"},
		{Name: "net.ipv4.ping_group_range", Path: "/proc/sys/net/ipv4/ping_group_range", Value: "0 2147483647"},
	}
	if got := podSysctls(safe); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if res := admitPod(&corev1.Pod{}); !res.Admit {
		t.Errorf("no sysctls refused: %+v", res)
	}
	if got := podSysctls(&corev1.Pod{}); got != nil {
		t.Errorf("no sysctls: %v", got)
	}
	for name, tc := range map[string]struct {
		pod  *corev1.Pod
		want string
	}{
		"unsafe":      {pod(false, corev1.Sysctl{Name: "kernel.msgmax", Value: "65536"}), `forbidden sysctl: "kernel.msgmax" not allowlisted`},
		"hostNetwork": {pod(true, corev1.Sysctl{Name: "net.ipv4.ip_unprivileged_port_start", Value: "0"}), `forbidden sysctl: "net.ipv4.ip_unprivileged_port_start" not allowed with host Net enabled`},
	} {
		if res := admitPod(tc.pod); res.Admit || res.Reason != "SysctlForbidden" || res.Message != tc.want {
			t.Errorf("%s: %+v, want the kubelet's SysctlForbidden, %q", name, res, tc.want)
		}
	}
}

// TestRejectedStatus: the status of a pod admission refused is the one the
// kubelet's rejectPod and status manager write: Failed with the reason,
// the message after "Pod was rejected: ", the QoS class, generation and a
// start time, and none of the conditions the kubelet owns.
func TestRejectedStatus(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Generation: 3},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c"}}},
		Status: corev1.PodStatus{Phase: corev1.PodPending, HostIP: "10.0.0.1", Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
			{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue, Reason: "Kept"},
		}}}
	st := rejectedStatus(pod, "SysctlForbidden", `forbidden sysctl: "kernel.msgmax" not allowlisted`, now)
	if st.Phase != corev1.PodFailed || st.Reason != "SysctlForbidden" ||
		st.Message != `Pod was rejected: forbidden sysctl: "kernel.msgmax" not allowlisted` {
		t.Errorf("phase %s, reason %q, message %q", st.Phase, st.Reason, st.Message)
	}
	if st.QOSClass != corev1.PodQOSBestEffort || st.ObservedGeneration != 3 || st.HostIP != "" || st.ContainerStatuses != nil {
		t.Errorf("QoS %s, observedGeneration %d, hostIP %q, containers %v", st.QOSClass, st.ObservedGeneration, st.HostIP, st.ContainerStatuses)
	}
	if st.StartTime == nil || !st.StartTime.Time.Equal(now.Truncate(time.Second)) {
		t.Errorf("start time %v, want %v", st.StartTime, now.Truncate(time.Second))
	}
	if len(st.Conditions) != 1 || st.Conditions[0].Reason != "Kept" {
		t.Errorf("conditions %+v, want only DisruptionTarget", st.Conditions)
	}
	started := metav1.NewTime(now.Add(-time.Hour).Truncate(time.Second))
	pod.Status.StartTime = &started
	if st := rejectedStatus(pod, "SysctlForbidden", "x", now); !st.StartTime.Equal(&started) {
		t.Errorf("start time %v, want the pod's %v", st.StartTime, started)
	}
}

// TestContainerCaps: containerd's order (add ALL, drop ALL, then each add,
// then each drop), the runtime's default set for a container that names
// none, and nil (every capability of up) for a privileged container.
func TestContainerCaps(t *testing.T) {
	ctr := func(privileged bool, add, drop []corev1.Capability) corev1.Container {
		return corev1.Container{Name: "c", SecurityContext: &corev1.SecurityContext{Privileged: &privileged,
			Capabilities: &corev1.Capabilities{Add: add, Drop: drop}}}
	}
	all := len(capNames)
	for _, tc := range []struct {
		name string
		c    corev1.Container
		want int // how many capabilities; -1: nil
		has  []int
	}{
		{"none named", corev1.Container{}, len(runtimeDefaultCaps), []int{unix.CAP_NET_RAW, unix.CAP_KILL}},
		{"no capabilities field", corev1.Container{SecurityContext: &corev1.SecurityContext{}}, len(runtimeDefaultCaps), nil},
		{"privileged", ctr(true, nil, []corev1.Capability{"ALL"}), -1, nil},
		{"defaults", ctr(false, nil, nil), len(runtimeDefaultCaps), []int{unix.CAP_NET_RAW, unix.CAP_CHOWN}},
		{"drop ALL add one", ctr(false, []corev1.Capability{"NET_ADMIN"}, []corev1.Capability{"ALL"}), 1, []int{unix.CAP_NET_ADMIN}},
		{"add ALL drop one", ctr(false, []corev1.Capability{"ALL"}, []corev1.Capability{"CAP_CHOWN"}), all - 1, []int{unix.CAP_SYS_ADMIN}},
		{"drop wins over add", ctr(false, []corev1.Capability{"SYS_TIME"}, []corev1.Capability{"sys_time"}), len(runtimeDefaultCaps), nil},
	} {
		got, err := containerCaps(tc.c)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if (tc.want == -1) != (got == nil) || (got != nil && len(got) != tc.want) {
			t.Errorf("%s: %v (%d), want %d", tc.name, got, len(got), tc.want)
		}
		for _, h := range tc.has {
			if !slices.Contains(got, h) {
				t.Errorf("%s: %v lacks %d", tc.name, got, h)
			}
		}
	}
	if _, err := containerCaps(ctr(false, []corev1.Capability{"NET_WIZARD"}, nil)); err == nil || !strings.Contains(err.Error(), `"NET_WIZARD"`) {
		t.Errorf("unknown capability: %v", err)
	}
}
