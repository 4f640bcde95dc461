package localcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"golang.org/x/sys/unix"
)

// A restarted `up` keeps serving because it adopts what the last one left
// running, as a restarted kubelet finds its containers through the
// container runtime and a restarted kube-proxy keeps its rules: the node and
// pod network namespaces (with the proxies' nftables tables in them), the
// pods' process trees (each in the pod's cgroup) and the cluster DNS
// process. What it finds is described by small records in the state
// directory; a process is recognised by its PID, its start time and its
// cgroup, so a reused PID is never taken for a container.

// podRecord is what the runtime keeps on disk about a pod it runs.
type podRecord struct {
	Namespace  string                     `json:"namespace"`
	Name       string                     `json:"name"`
	UID        types.UID                  `json:"uid"`
	Node       string                     `json:"node"`
	IP         string                     `json:"ip"`
	NetNS      string                     `json:"netns"`
	Containers map[string]containerRecord `json:"containers"`
}

// containerRecord identifies a container's PID 1.
type containerRecord struct {
	PID        int       `json:"pid"`
	StartTicks uint64    `json:"startTicks"`
	Started    time.Time `json:"started"`
}

// proc is a container's PID 1: a child of this process, or one adopted
// from an earlier `up`.
type proc struct {
	pid        int
	startTicks uint64
	exited     chan struct{}
	// exitCode is valid once exited is closed; -1 when unknown (an
	// adopted process's status goes to its new parent, init).
	exitCode int
	signalFn func(syscall.Signal)
}

func (p *proc) signal(sig syscall.Signal) {
	select {
	case <-p.exited:
	default:
		p.signalFn(sig)
	}
}

// childProc watches a process this one started.
func childProc(cmd *exec.Cmd) *proc {
	p := &proc{pid: cmd.Process.Pid, startTicks: startTicks(cmd.Process.Pid), exited: make(chan struct{}),
		signalFn: func(s syscall.Signal) { cmd.Process.Signal(s) }}
	go func() {
		cmd.Wait()
		p.exitCode = -1
		if st, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
			if st.Signaled() {
				p.exitCode = 128 + int(st.Signal())
			} else {
				p.exitCode = st.ExitStatus()
			}
		}
		close(p.exited)
	}()
	return p
}

// adoptProc watches a process an earlier `up` started, through a pidfd
// (which neither a reused PID nor a missed exit can fool); nil when the
// process is gone or the PID now names another process.
func adoptProc(rec containerRecord) *proc {
	fd, err := unix.PidfdOpen(rec.PID, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil
	}
	// Checked after opening: the pidfd now pins this very process.
	if rec.StartTicks == 0 || startTicks(rec.PID) != rec.StartTicks {
		unix.Close(fd)
		return nil
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", rec.PID))
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil
	}
	p := &proc{pid: rec.PID, startTicks: rec.StartTicks, exited: make(chan struct{}), exitCode: -1,
		signalFn: func(s syscall.Signal) {
			rc.Control(func(fd uintptr) { unix.PidfdSendSignal(int(fd), s, nil, 0) })
		}}
	go func() {
		// A pidfd turns readable when its process exits; Go's poller waits
		// for that without holding a thread.
		first := true
		rc.Read(func(uintptr) bool {
			if first {
				first = false
				return false
			}
			return true
		})
		// Should the pidfd not be pollable here, Read returns at once:
		// then watch the process the slow way.
		for startTicks(rec.PID) == rec.StartTicks {
			time.Sleep(250 * time.Millisecond)
		}
		close(p.exited)
		f.Close()
	}()
	return p
}

// startTicks is the process's start time (field 22 of /proc/PID/stat), in
// clock ticks since boot; 0 if there is no such process.
func startTicks(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); a zombie has ended.
	if len(f) < 20 || f[0] == "Z" {
		return 0
	}
	n, _ := strconv.ParseUint(f[19], 10, 64)
	return n
}

func (r *podRuntime) recordPath(uid types.UID) string {
	return filepath.Join(r.records, string(uid)+".json")
}

// saveRecord writes the pod's record with its running containers.
func (r *podRuntime) saveRecord(rec *podRecord, ctrs []*container) {
	for _, c := range ctrs {
		if c.proc != nil && c.proc.pid != 0 {
			rec.Containers[c.spec.Name] = containerRecord{PID: c.proc.pid, StartTicks: c.proc.startTicks, Started: c.started}
		}
	}
	b, _ := json.Marshal(rec)
	tmp := r.recordPath(rec.UID) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err == nil {
		err = os.Rename(tmp, r.recordPath(rec.UID))
	}
}

func readRecord(path string) (*podRecord, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rec podRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("pod record %s: %w", path, err)
	}
	return &rec, nil
}

// adopt takes over a pod an earlier `up` left running: its network
// namespace, IP and cgroup must be there, and each container whose PID 1
// still lives in the cgroup is running again with the readiness the API
// last showed (so no endpoint flaps). A container that ended in between
// starts again, counted as a restart (see run).
func (r *podRuntime) adopt(pod *corev1.Pod, ctrs []*container, log *slog.Logger) (*podRecord, PodNet, bool) {
	rec, err := readRecord(r.recordPath(pod.UID))
	if err != nil {
		return nil, PodNet{}, false
	}
	cg := podCgroup(string(pod.UID))
	ip, err := netip.ParseAddr(rec.IP)
	wantNS := r.net.PodNS(pod.Namespace, pod.Name)
	if pod.Spec.HostNetwork {
		wantNS = r.net.NodeNS(r.node.Name)
	}
	if err != nil || rec.UID != pod.UID || rec.Node != r.node.Name || rec.NetNS != wantNS || !r.cg.exists(cg) {
		return nil, PodNet{}, false
	}
	if _, err := os.Stat(filepath.Join("/run/netns", rec.NetNS)); err != nil {
		return nil, PodNet{}, false
	}
	if !pod.Spec.HostNetwork {
		r.mu.Lock()
		if owner, taken := r.ips[ip]; taken && owner != pod.UID {
			r.mu.Unlock()
			return nil, PodNet{}, false
		}
		r.ips[ip] = pod.UID
		r.mu.Unlock()
	}
	if rec.Containers == nil {
		rec.Containers = map[string]containerRecord{}
	}
	adopted := 0
	for _, c := range ctrs {
		var cs *corev1.ContainerStatus
		for i := range pod.Status.ContainerStatuses {
			if pod.Status.ContainerStatuses[i].Name == c.spec.Name {
				cs = &pod.Status.ContainerStatuses[i]
			}
		}
		cr, had := rec.Containers[c.spec.Name]
		if had && cs != nil && r.cg.contains(cg, cr.PID) {
			if p := adoptProc(cr); p != nil {
				// Still the same run of the container: not a restart.
				c.proc, c.started, c.waitReason = p, cr.Started, ""
				c.restarts, c.lastTerm = cs.RestartCount, cs.LastTerminationState.Terminated
				c.ready = cs.Ready
				adopted++
				continue
			}
		}
		// Ended while no `up` ran: run counted it as a restart already.
		delete(rec.Containers, c.spec.Name)
		if cs != nil && cs.State.Terminated != nil {
			c.terminated = cs.State.Terminated
		}
	}
	log.Info("adopted pod", "containers", adopted, "ip", ip)
	return rec, PodNet{NS: rec.NetNS, IP: ip, Node: r.node.Name, HostNetwork: pod.Spec.HostNetwork}, true
}

// sweepOrphans ends what earlier runs left of pods that are gone: process
// trees by their cgroups (also those of pods deleted while no `up` ran,
// or left by a kill -9), records and network namespaces. A pod still bound
// to one of this cluster's nodes and not finished is left for its node's
// runtime to adopt. The cgroups are listed before the pods, so a pod
// started after the listing is never taken for an orphan.
func sweepOrphans(ctx context.Context, client kubernetes.Interface, g *cgroups, n *Network, records string, nodes []NodeInfo, log *slog.Logger) error {
	cgs := g.list()
	recs, _ := os.ReadDir(records)
	pods, err := client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list pods to adopt: %w", err)
	}
	ours := map[string]bool{}
	for _, nd := range nodes {
		ours[nd.Name] = true
	}
	live, liveNS := map[string]bool{}, map[string]bool{}
	for _, p := range pods.Items {
		if ours[p.Spec.NodeName] && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			live[string(p.UID)] = true
			liveNS[n.PodNS(p.Namespace, p.Name)] = true
		}
	}
	var errs []error
	for _, name := range cgs {
		if uid, ok := strings.CutPrefix(name, "pod-"); ok && !live[uid] {
			log.Info("ending the processes of a pod that is gone", "uid", uid)
			errs = append(errs, g.kill(name))
		}
	}
	for _, e := range recs {
		uid, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !live[uid] {
			os.Remove(filepath.Join(records, e.Name()))
		}
	}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), n.Prefix+"-pod-") && !liveNS[e.Name()] {
			n.TearDownPod("", e.Name())
		}
	}
	vols := filepath.Join(filepath.Dir(records), "volumes")
	dirs, _ := os.ReadDir(vols)
	for _, e := range dirs {
		if !live[e.Name()] {
			os.RemoveAll(filepath.Join(vols, e.Name()))
		}
	}
	liveTables := map[string]bool{}
	for uid := range live {
		liveTables[hostPortTable(types.UID(uid))] = true
	}
	for _, nd := range nodes {
		n.sweepHostPorts(nd.Name, liveTables)
	}
	return errors.Join(errs...)
}
