package localcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/switchboard/switchboard/podenv"
	"github.com/switchboard/switchboard/podvolume"
)

// podDir is where the pod's volumes and termination message files live on
// the node, as the kubelet's /var/lib/kubelet/pods/UID.
func (r *podRuntime) podDir(uid types.UID) string {
	return filepath.Join(filepath.Dir(r.records), "volumes", string(uid))
}

// etcDir holds the pod's resolv.conf and hosts, bound over /etc's in its
// containers: `ip netns exec`'s /etc/netns/NS for a pod's own namespace;
// a hostNetwork pod's are its own, in the pod's directory, as the node's
// namespace is shared.
func (r *podRuntime) etcDir(uid types.UID, pn PodNet) string {
	if pn.HostNetwork {
		return filepath.Join(r.podDir(uid), "etc")
	}
	return filepath.Join("/etc/netns", pn.NS)
}

// setUpHostNetwork gives a hostNetwork pod its node's namespace and IP
// (the kubelet's pods with hostNetwork get no sandbox network) and its
// resolv.conf.
func (r *podRuntime) setUpHostNetwork(pod *corev1.Pod, resolvConf string) (PodNet, error) {
	pn := PodNet{NS: r.net.NodeNS(r.node.Name), IP: r.node.IP, Node: r.node.Name, HostNetwork: true}
	dir := r.etcDir(pod.UID, pn)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return PodNet{}, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(resolvConf), 0o644); err != nil {
		return PodNet{}, fmt.Errorf("pod %s/%s: write resolv.conf: %w", pod.Namespace, pod.Name, err)
	}
	return pn, nil
}

// nodeAllocatable is what an unset resource limit reads as through the
// downward API: the machine's CPUs and memory.
func nodeAllocatable() corev1.ResourceList {
	l := corev1.ResourceList{corev1.ResourceCPU: *resource.NewQuantity(int64(runtime.NumCPU()), resource.DecimalSI)}
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) == nil {
		l[corev1.ResourceMemory] = *resource.NewQuantity(int64(si.Totalram)*int64(si.Unit), resource.BinarySI)
	}
	return l
}

// setUpVolumes writes the pod's volumes under its directory.
func (r *podRuntime) setUpVolumes(ctx context.Context, pod *corev1.Pod, pn PodNet) (map[string]string, error) {
	return podvolume.SetUp(ctx, r.client, podvolume.Pod{Pod: pod, PodIPs: []string{pn.IP.String()},
		HostIPs: []string{r.node.IP.String()}, NodeAllocatable: nodeAllocatable(), Tokens: &r.tokens},
		filepath.Join(r.podDir(pod.UID), "volumes"))
}

// volumeResync is how often a running pod's configMap, secret,
// downwardAPI and projected volumes follow their sources (the kubelet's
// sync period is a minute).
const volumeResync = time.Minute

// resyncVolumes refreshes the volumes of a pod with a running container
// when due: an updated ConfigMap, Secret or label shows in its files, and a
// service account token is renewed before it expires.
func (r *podRuntime) resyncVolumes(pod *corev1.Pod, pn PodNet, ctrs []*container, last *time.Time) {
	if time.Since(*last) < volumeResync {
		return
	}
	running := false
	for _, c := range ctrs {
		running = running || c.proc != nil
	}
	if !running {
		return
	}
	*last = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := r.setUpVolumes(ctx, pod, pn); err != nil {
		r.log.Warn("refresh pod volumes", "pod", pod.Namespace+"/"+pod.Name, "err", err)
	}
}

// containerStart is what a container starts with besides its user and
// namespaces, computed as the kubelet does before it creates a container.
type containerStart struct {
	// command and args have their $(VAR) references expanded.
	command, args []string
	env           []string
	mounts        []bindMount
	// termFile is the host file bound at terminationMessagePath.
	termFile string
}

// setupError is why a container cannot start yet, with the kubelet's
// waiting reason.
type setupError struct {
	reason string
	err    error
}

func (e *setupError) Error() string { return e.err.Error() }

func (e *setupError) Unwrap() error { return e.err }

// prepare sets up the pod's volumes (again: their contents follow their
// sources at every start) and computes the container's environment,
// expanded command line and mounts.
func (r *podRuntime) prepare(pod *corev1.Pod, c *container, pn PodNet) (*containerStart, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	podIPs, hostIPs := []string{pn.IP.String()}, []string{r.node.IP.String()}
	alloc := nodeAllocatable()
	dir := r.podDir(pod.UID)
	vols, err := r.setUpVolumes(ctx, pod, pn)
	if err != nil {
		// The kubelet's containers wait in ContainerCreating while a
		// volume cannot be mounted (event FailedMount).
		return nil, &setupError{reason: "ContainerCreating", err: err}
	}
	services, err := r.client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, &setupError{reason: "CreateContainerConfigError", err: fmt.Errorf("list services for env vars: %w", err)}
	}
	svcs := make([]*corev1.Service, len(services.Items))
	for i := range services.Items {
		svcs[i] = &services.Items[i]
	}
	env, err := podenv.Env(pod, &c.spec, podenv.Sources{
		ConfigMap: func(name string) (*corev1.ConfigMap, error) {
			return r.client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
		},
		Secret: func(name string) (*corev1.Secret, error) {
			return r.client.CoreV1().Secrets(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
		},
		Services: svcs, PodIPs: podIPs, HostIPs: hostIPs, NodeAllocatable: alloc,
	})
	if err != nil {
		return nil, &setupError{reason: "CreateContainerConfigError", err: err}
	}
	s := &containerStart{}
	for _, e := range env {
		s.env = append(s.env, e.Name+"="+e.Value)
	}
	s.command, s.args = podenv.CommandLine(&c.spec, env)
	// The kubelet mounts the API's data read-only whatever the mount says.
	apiData := map[string]bool{}
	for _, v := range pod.Spec.Volumes {
		apiData[v.Name] = v.ConfigMap != nil || v.Secret != nil || v.DownwardAPI != nil || v.Projected != nil
	}
	for _, m := range c.spec.VolumeMounts {
		src, ok := vols[m.Name]
		if !ok {
			return nil, &setupError{reason: "CreateContainerConfigError", err: fmt.Errorf("container %s: volumeMount %q names no volume of the pod", c.spec.Name, m.Name)}
		}
		sub := m.SubPath
		if m.SubPathExpr != "" {
			sub = podenv.ExpandString(m.SubPathExpr, env)
		}
		if sub != "" {
			if filepath.IsAbs(sub) || strings.HasPrefix(filepath.Clean(sub), "..") {
				return nil, &setupError{reason: "CreateContainerConfigError", err: fmt.Errorf("container %s: volumeMount %s: subPath %q must be a relative path inside the volume", c.spec.Name, m.Name, sub)}
			}
			src = filepath.Join(src, sub)
			if _, err := os.Stat(src); os.IsNotExist(err) {
				// The kubelet creates a missing subPath as a directory.
				if err := os.MkdirAll(src, 0o777); err != nil {
					return nil, &setupError{reason: "CreateContainerConfigError", err: err}
				}
			}
		}
		s.mounts = append(s.mounts, bindMount{Source: src, Target: m.MountPath, ReadOnly: m.ReadOnly || apiData[m.Name]})
	}
	path := c.spec.TerminationMessagePath
	if path == "" {
		path = corev1.TerminationMessagePathDefault
	}
	// A fresh file per start, as the kubelet's containers/NAME/ID file.
	s.termFile = filepath.Join(dir, "containers", c.spec.Name, fmt.Sprintf("termination-%d", c.restarts))
	if err := os.MkdirAll(filepath.Dir(s.termFile), 0o755); err != nil {
		return nil, &setupError{reason: "CreateContainerError", err: err}
	}
	if err := os.WriteFile(s.termFile, nil, 0o666); err != nil {
		return nil, &setupError{reason: "CreateContainerError", err: err}
	}
	os.Chmod(s.termFile, 0o666) // writable by a container's non-root user
	s.mounts = append(s.mounts, bindMount{Source: s.termFile, Target: path})
	return s, nil
}

// setupFailure splits a prepare error into the container's waiting
// reason and message.
func setupFailure(err error) (reason, message string) {
	var se *setupError
	if errors.As(err, &se) {
		return se.reason, se.err.Error()
	}
	return "CreateContainerError", err.Error()
}

// setupEvent records why a container cannot start as the kubelet's
// event: FailedMount for a volume, Failed for its configuration.
func (r *podRuntime) setupEvent(pod *corev1.Pod, err error) {
	reason := "Failed"
	var me *podvolume.MountError
	if errors.As(err, &me) {
		reason = "FailedMount"
	}
	r.event(pod, corev1.EventTypeWarning, reason, err.Error())
}

// event records an event about the pod from this node's kubelet.
func (r *podRuntime) event(pod *corev1.Pod, eventType, reason, message string) {
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: pod.Name + ".", Namespace: pod.Namespace},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: pod.Namespace, Name: pod.Name,
			UID: pod.UID, ResourceVersion: pod.ResourceVersion},
		Reason: reason, Message: message, Type: eventType,
		Source:         corev1.EventSource{Component: "kubelet", Host: r.node.Name},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		ReportingController: "kubelet", ReportingInstance: r.node.Name,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := r.client.CoreV1().Events(pod.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		r.log.Debug("record event", "pod", pod.Namespace+"/"+pod.Name, "reason", reason, "err", err)
	}
}

// The kubelet's limits on a termination message (kuberuntime
// maxMessageLength, kubecontainer.MaxContainerTerminationMessageLogLines
// and ...LogLength).
const (
	maxTerminationMessage = 4096
	maxMessageLogLines    = 80
	maxMessageLogBytes    = 2048
)

// terminationMessage is what the kubelet reports as a finished container's
// message: the file at terminationMessagePath, else, with
// FallbackToLogsOnError and a failure, the end of its log (logFile, in the
// CRI format).
func terminationMessage(spec corev1.Container, termFile, logFile string, exitCode int) string {
	if termFile != "" {
		if b, err := os.ReadFile(termFile); err == nil && len(b) > 0 {
			if len(b) > maxTerminationMessage {
				b = b[:maxTerminationMessage]
			}
			return string(b)
		}
	}
	if spec.TerminationMessagePolicy != corev1.TerminationMessageFallbackToLogsOnError || exitCode == 0 {
		return ""
	}
	b, err := os.ReadFile(logFile)
	if err != nil {
		return ""
	}
	// The log is in the CRI format (TIME STREAM P|F TEXT): a P record is
	// part of a line, an F one ends it.
	var lines []string
	var cur strings.Builder
	for _, rec := range strings.Split(string(b), "\n") {
		f := strings.SplitN(rec, " ", 4)
		if len(f) < 3 {
			continue
		}
		if len(f) == 4 {
			cur.WriteString(f[3])
		}
		if f[2] == "F" {
			cur.WriteString("\n")
			lines = append(lines, cur.String())
			cur.Reset()
		}
	}
	if cur.Len() > 0 {
		lines = append(lines, cur.String())
	}
	if len(lines) > maxMessageLogLines {
		lines = lines[len(lines)-maxMessageLogLines:]
	}
	msg := strings.Join(lines, "")
	if len(msg) > maxMessageLogBytes {
		msg = msg[len(msg)-maxMessageLogBytes:]
	}
	return msg
}
