package localcluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/switchboard/switchboard/containerlog"
	"github.com/switchboard/switchboard/kubeletapi"
	"github.com/switchboard/switchboard/localcluster/image"
	"github.com/switchboard/switchboard/netnamespace"
	"github.com/switchboard/switchboard/terminal"
)

// KubeletPort is where every node serves the kubelet API (the kubelet's
// default), published in the Node's status.daemonEndpoints.
const KubeletPort = 10250

// podLogDir is a pod's log directory under the runtime's, named as the
// kubelet names /var/log/pods/NAMESPACE_NAME_UID.
func podLogDir(root string, pod *corev1.Pod) string {
	return filepath.Join(root, pod.Namespace+"_"+pod.Name+"_"+string(pod.UID))
}

// containerLogPath is the log of one instance of a container: one file per
// restart, CONTAINER/RESTARTCOUNT.log, as the kubelet keeps them, so that
// `kubectl logs --previous` finds the instance before the current one.
func containerLogPath(podDir, container string, restarts int32) string {
	return filepath.Join(podDir, container, strconv.Itoa(int(restarts))+".log")
}

// openContainerLog opens the log of a new instance of a container and
// removes those of instances before the previous one: like the kubelet,
// which keeps one dead container per container, a crash-looping container
// leaves two logs, not one per restart.
func openContainerLog(podDir, container string, restarts int32) (*containerlog.File, error) {
	entries, _ := os.ReadDir(filepath.Join(podDir, container))
	for _, e := range entries {
		// N.log, its rotated N.log.TIME and its pipes N.stdout, N.stderr.
		first, _, _ := strings.Cut(e.Name(), ".")
		if n, err := strconv.Atoi(first); err == nil && n < int(restarts)-1 {
			os.Remove(filepath.Join(podDir, container, e.Name()))
		}
	}
	return containerlog.Open(containerLogPath(podDir, container, restarts), containerlog.DefaultMaxSize, containerlog.DefaultMaxFiles)
}

// kubeletRuntime is the kubelet API's view of one node's runtime.
type kubeletRuntime struct {
	rt   *podRuntime
	pods corelisters.PodLister
}

func (k kubeletRuntime) Pod(namespace, name string) (*corev1.Pod, bool) {
	p, err := k.pods.Pods(namespace).Get(name)
	if err != nil || p.Spec.NodeName != k.rt.node.Name {
		return nil, false
	}
	return p, true
}

func (k kubeletRuntime) Pods() []*corev1.Pod {
	all, _ := k.pods.List(labels.Everything())
	var mine []*corev1.Pod
	for _, p := range all {
		if p.Spec.NodeName == k.rt.node.Name {
			mine = append(mine, p)
		}
	}
	return mine
}

func (k kubeletRuntime) worker(pod *corev1.Pod) (*podWorker, error) {
	k.rt.mu.Lock()
	w := k.rt.workers[pod.UID]
	k.rt.mu.Unlock()
	if w == nil {
		return nil, fmt.Errorf("pod %s/%s is not running on node %s", pod.Namespace, pod.Name, k.rt.node.Name)
	}
	return w, nil
}

// Command enters every namespace of the container's process (network and
// mount now; PID, UTS and IPC where the runtime gives containers their
// own) with nsenter, and runs argv there with the container's environment.
func (k kubeletRuntime) Command(pod *corev1.Pod, container string, argv []string, tty bool) (*exec.Cmd, error) {
	w, err := k.worker(pod)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	pid := w.pids[container]
	w.mu.Unlock()
	var spec *corev1.Container
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == container {
			spec = &pod.Spec.Containers[i]
		}
	}
	if spec == nil {
		return nil, fmt.Errorf("container %q not found in pod %s/%s", container, pod.Namespace, pod.Name)
	}
	if pid == 0 {
		return nil, fmt.Errorf("container %q in pod %s/%s is not running", container, pod.Namespace, pod.Name)
	}
	args := []string{"--target", strconv.Itoa(pid), "--all", "--wd", "--"}
	if tty {
		// The session and its controlling terminal are made inside the
		// container's PID namespace, where the shell's job control can
		// see its process group (nsenter forks into the namespace).
		args = append(args, "setsid", "--ctty", "--wait")
	}
	// The container's image selects the program as for its own command:
	// agnhost's /agnhost is the program linked into this executable,
	// started through containerExecMarker; a shell image's programs are
	// the host's. What no image here has is left to fail in the
	// container, as a runtime's exec of a missing file does.
	switch proc := image.Resolve(spec.Image, argv, nil, spec.WorkingDir, exec.LookPath); proc.Kind {
	case image.Linked:
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("exec %s in container %q: %w", argv[0], container, err)
		}
		argv = append([]string{exe, containerExecMarker}, proc.Argv...)
	case image.Host:
		argv = proc.Argv
	}
	cmd := exec.Command("nsenter", append(args, argv...)...)
	// The container's environment, as a runtime's exec inherits it: what
	// its PID 1 was started with (every env source, Service variables).
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid)); err == nil {
		cmd.Env = strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	} else {
		cmd.Env = append(os.Environ()[:0:0], "PATH="+os.Getenv("PATH"), "HOSTNAME="+pod.Name)
		for _, e := range spec.Env {
			cmd.Env = append(cmd.Env, e.Name+"="+e.Value)
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd, nil
}

func (k kubeletRuntime) PodNetNS(pod *corev1.Pod) (string, error) {
	w, err := k.worker(pod)
	if err != nil {
		return "", err
	}
	w.mu.Lock()
	ns := w.netNS
	w.mu.Unlock()
	if ns == "" {
		return "", fmt.Errorf("pod %s/%s has no network yet", pod.Namespace, pod.Name)
	}
	return "/run/netns/" + ns, nil
}

// ContainerLog finds the newest instance's log (or the one before it) by
// restart count. The log outlives the process: a finished pod's output
// stays readable, as on a kubelet until the pod is removed.
func (k kubeletRuntime) ContainerLog(pod *corev1.Pod, container string, previous bool) (string, func() bool, error) {
	dir := filepath.Join(podLogDir(k.rt.logDir, pod), container)
	entries, err := os.ReadDir(dir)
	var instances []int
	for _, e := range entries {
		var n int
		if _, err := fmt.Sscanf(e.Name(), "%d.log", &n); err == nil && e.Name() == strconv.Itoa(n)+".log" {
			instances = append(instances, n)
		}
	}
	if err != nil || len(instances) == 0 {
		return "", nil, notStartedError(pod, container)
	}
	newest := instances[0]
	for _, n := range instances {
		newest = max(newest, n)
	}
	running := func() bool {
		w, err := k.worker(pod)
		if err != nil {
			return false
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.pids[container] != 0
	}
	if previous {
		prev := -1
		for _, n := range instances {
			if n < newest {
				prev = max(prev, n)
			}
		}
		if prev < 0 {
			return "", nil, fmt.Errorf("previous terminated container %q in pod %q not found", container, pod.Name)
		}
		return filepath.Join(dir, strconv.Itoa(prev)+".log"), func() bool { return false }, nil
	}
	return filepath.Join(dir, strconv.Itoa(newest)+".log"), running, nil
}

// notStartedError says why a container without a log has none, in the
// kubelet's words (validateContainerLogStatus), from its status.
func notStartedError(pod *corev1.Pod, container string) error {
	for _, cs := range append(append([]corev1.ContainerStatus{}, pod.Status.InitContainerStatuses...), pod.Status.ContainerStatuses...) {
		if cs.Name != container || cs.State.Waiting == nil {
			continue
		}
		switch reason := cs.State.Waiting.Reason; reason {
		case image.ReasonImagePull:
			return fmt.Errorf("container %q in pod %q is waiting to start: image can't be pulled", container, pod.Name)
		case "ImagePullBackOff":
			return fmt.Errorf("container %q in pod %q is waiting to start: trying and failing to pull image", container, pod.Name)
		default:
			return fmt.Errorf("container %q in pod %q is waiting to start: %v", container, pod.Name, reason)
		}
	}
	return fmt.Errorf("container %q in pod %q is waiting to start - no logs yet", container, pod.Name)
}

// startKubelet serves node's kubelet API on its address in its network
// namespace, with a serving certificate of the cluster CA.
func (c *Cluster) startKubelet(ctx context.Context, rt *podRuntime, pods corelisters.PodLister, auth *kubeletapi.Auth) error {
	node := rt.node
	certFile, keyFile, err := c.ControlPlane.PKI.KubeletServing(node.Name, net.IP(node.IP.AsSlice()))
	if err != nil {
		return err
	}
	var l net.Listener
	addr := netip.AddrPortFrom(node.IP, KubeletPort)
	if err := netnamespace.Do(node.NetNS, func() error {
		var err error
		l, err = net.Listen("tcp", addr.String())
		return err
	}); err != nil {
		return fmt.Errorf("node %s: kubelet API on %s: %w", node.Name, addr, err)
	}
	srv := kubeletapi.New(kubeletapi.Config{NodeName: node.Name, CertFile: certFile, KeyFile: keyFile,
		Auth: auth, Runtime: kubeletRuntime{rt: rt, pods: pods}, Logger: c.Config.Logger})
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if err := srv.Serve(ctx, l); err != nil && ctx.Err() == nil {
			c.Config.Logger.Error("kubelet API stopped", "node", node.Name, "err", err)
		}
	}()
	return nil
}

// stdio holds a container's standard streams. Its output reaches its log
// through two named pipes (CONTAINER/RESTARTS.stdout, .stderr, beside the
// log) that this process reads and writes as CRI records: the container
// holds its ends open for reading and writing, so it never sees a broken
// pipe while no `up` runs (its writes wait once a pipe's buffer is full),
// and the next run finds the pipes by name and reads on (resumeStdio).
// With spec.stdin the runtime keeps the write end of its stdin for attach;
// with spec.tty the container runs on a terminal whose master side this
// process reads into the log and attach writes to, as a CRI runtime does.
// Stdin and terminal live as long as the `up` that started the container.
type stdio struct {
	stdinOnce bool
	// Parent's ends, kept while the container runs.
	stdin  io.WriteCloser
	master *os.File
	// Child's ends, closed here once it has started.
	child     []*os.File
	closeOnce sync.Once
	// pumps are the readers copying output into the log.
	pumps []*os.File
}

// openStdio sets cmd's standard streams for spec and starts copying its
// output into the log of instance restarts in podDir.
func openStdio(spec corev1.Container, cmd *exec.Cmd, podDir string, restarts int32) (*stdio, error) {
	log, err := openContainerLog(podDir, spec.Name, restarts)
	if err != nil {
		return nil, err
	}
	s := &stdio{stdinOnce: spec.StdinOnce}
	fail := func(err error) (*stdio, error) {
		s.started()
		s.stop()
		log.Close()
		return nil, fmt.Errorf("container %s: %w", spec.Name, err)
	}
	if spec.TTY {
		master, slave, err := terminal.Open()
		if err != nil {
			return fail(err)
		}
		s.master, s.child = master, []*os.File{slave}
		if spec.Stdin {
			s.stdin = master
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		// The terminal is the container's controlling one.
		cmd.SysProcAttr.Setsid, cmd.SysProcAttr.Setctty, cmd.SysProcAttr.Ctty = true, true, 0
		go s.pump(log, []*os.File{master}, []string{"stdout"}, "")
		return s, nil
	}
	if spec.Stdin {
		r, w, err := os.Pipe()
		if err != nil {
			return fail(err)
		}
		s.stdin, s.child = w, append(s.child, r)
		cmd.Stdin = r
	}
	base := containerLogPath(podDir, spec.Name, restarts)
	base = strings.TrimSuffix(base, ".log")
	var readers []*os.File
	for _, stream := range []string{"stdout", "stderr"} {
		path := base + "." + stream
		os.Remove(path)
		if err := unix.Mkfifo(path, 0o600); err != nil {
			return fail(fmt.Errorf("output pipe %s: %w", path, err))
		}
		// The reader first, without blocking: then the container's end,
		// read-write, which it keeps.
		r, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
		if err != nil {
			return fail(err)
		}
		readers = append(readers, r)
		w, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			for _, r := range readers {
				r.Close()
			}
			return fail(err)
		}
		s.child = append(s.child, w)
		if stream == "stdout" {
			cmd.Stdout = w
		} else {
			cmd.Stderr = w
		}
	}
	go s.pump(log, readers, []string{"stdout", "stderr"}, base)
	return s, nil
}

// resumeStdio reads on the output pipes of a container an earlier run
// started; its stdin and terminal, if any, went with that run.
func resumeStdio(podDir, container string, restarts int32) *stdio {
	base := strings.TrimSuffix(containerLogPath(podDir, container, restarts), ".log")
	var readers []*os.File
	for _, stream := range []string{"stdout", "stderr"} {
		r, err := os.OpenFile(base+"."+stream, os.O_RDONLY|unix.O_NONBLOCK, 0)
		if err != nil {
			for _, r := range readers {
				r.Close()
			}
			return &stdio{}
		}
		readers = append(readers, r)
	}
	log, err := containerlog.Open(base+".log", containerlog.DefaultMaxSize, containerlog.DefaultMaxFiles)
	if err != nil {
		for _, r := range readers {
			r.Close()
		}
		return &stdio{}
	}
	s := &stdio{}
	go s.pump(log, readers, []string{"stdout", "stderr"}, base)
	return s
}

// pump copies each reader into its stream of the log until the container
// and everything it started are gone, then releases the container's input
// and the pipes.
func (s *stdio) pump(log *containerlog.File, readers []*os.File, streams []string, pipeBase string) {
	var wg sync.WaitGroup
	for i, r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			io.Copy(log.Stream(streams[i]), r) // EOF (pipe) or EIO (terminal) at the end
			r.Close()
		}()
	}
	wg.Wait()
	log.Close()
	s.closeStdin()
	if pipeBase != "" {
		for _, stream := range streams {
			os.Remove(pipeBase + "." + stream)
		}
	}
}

// started closes the child's ends in this process.
func (s *stdio) started() {
	for _, f := range s.child {
		f.Close()
	}
	s.child = nil
}

// stop releases what a container that never started held.
func (s *stdio) stop() {
	if s.master != nil {
		s.master.Close()
	}
	s.closeStdin()
}

func (s *stdio) closeStdin() {
	s.closeOnce.Do(func() {
		if s.stdin != nil && s.master == nil {
			s.stdin.Close()
		}
	})
}

// Attach gives attach the container's stdin and terminal.
func (k kubeletRuntime) Attach(pod *corev1.Pod, container string) (kubeletapi.Attachment, error) {
	w, err := k.worker(pod)
	if err != nil {
		return kubeletapi.Attachment{}, err
	}
	w.mu.Lock()
	s, pid := w.stdio[container], w.pids[container]
	w.mu.Unlock()
	if pid == 0 {
		return kubeletapi.Attachment{}, fmt.Errorf("container %q in pod %s/%s is not running", container, pod.Namespace, pod.Name)
	}
	att := kubeletapi.Attachment{Detach: func() {}}
	if s == nil {
		return att, nil
	}
	if s.stdin != nil {
		att.Stdin = s.stdin
		if s.stdinOnce {
			// On a terminal end-of-file is ^D; on a pipe, closing it.
			att.Detach = func() {
				if s.master != nil {
					s.master.Write([]byte{4})
				}
				s.closeStdin()
			}
		}
	}
	if s.master != nil {
		att.Resize = func(width, height uint16) { terminal.Resize(s.master, width, height) }
	}
	return att, nil
}
