package localcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"k8s.io/kubernetes/pkg/apis/core/v1/helper/qos"

	"github.com/switchboard/switchboard/localcluster/image"
	"github.com/switchboard/switchboard/netnamespace"
	"github.com/switchboard/switchboard/podvolume"
)

// podRuntime is one node's pod runtime, the local cluster's kubelet: it runs
// every pod bound to its node as processes in the pod's network namespace
// and reports their status. There are no images: a container with a
// command runs that command from the host's file system, contained as a
// kubelet's container is (its own PID, mount, UTS and IPC namespaces, the
// pod's network namespace, hostname, /etc/hosts and resolv.conf, its
// securityContext's user, the pod's cgroup); one without runs the built-in
// echo server on its ports.
//
// Pods outlive the runtime: stopping `up` leaves their processes, cgroups
// and network namespaces running, and the next runtime adopts them from the
// pod records in its state directory (see adopt).
type podRuntime struct {
	node    NodeInfo
	net     *Network
	client  kubernetes.Interface
	log     *slog.Logger
	logDir  string
	echoCmd []string
	// resolv is the pod's resolv.conf (poddns.ResolvConf).
	resolv func(pod *corev1.Pod) (string, error)
	// tokens are the projected service account tokens, renewed when due.
	tokens podvolume.Tokens
	// exe is this executable, started as the container init.
	exe string
	cg  *cgroups
	// records is the directory of the pod records (podRecord).
	records string
	zone    string
	mu      sync.Mutex
	workers map[types.UID]*podWorker
	// rejected are the pods admission refused (admitPod), until they
	// are deleted.
	rejected map[types.UID]struct{}
	ips      map[netip.Addr]types.UID
	// lastIP is the pod IP handed out last (allocateIP goes on after it).
	lastIP   netip.Addr
	stopping bool
	wg       sync.WaitGroup
}

// start registers the runtime's pod handler; the registration tells when
// every pod that existed at start has been handed to a worker.
func (r *podRuntime) start(ctx context.Context, factory informers.SharedInformerFactory) (cache.ResourceEventHandlerRegistration, error) {
	inf := factory.Core().V1().Pods().Informer()
	handle := func(obj any) {
		if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName == r.node.Name {
			r.sync(ctx, p)
		}
	}
	return inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    handle,
		UpdateFunc: func(_, o any) { handle(o) },
		DeleteFunc: func(o any) {
			if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = d.Obj
			}
			if p, ok := o.(*corev1.Pod); ok && p.Spec.NodeName == r.node.Name {
				r.mu.Lock()
				w := r.workers[p.UID]
				delete(r.rejected, p.UID)
				r.mu.Unlock()
				if w != nil {
					w.gone()
				}
			}
		},
	})
}

// sync hands the pod's newest state to its worker, starting one if needed.
func (r *podRuntime) sync(ctx context.Context, p *corev1.Pod) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopping {
		return
	}
	w := r.workers[p.UID]
	if w == nil {
		_, rejected := r.rejected[p.UID]
		if rejected || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			if p.DeletionTimestamp != nil {
				// Nothing runs; finish the deletion the API is waiting for.
				go r.finalizeDelete(ctx, p)
			}
			return
		}
		// Admission, as the kubelet's HandlePodAdditions: once, before
		// anything of the pod is set up. A refused pod is never handed
		// to a worker, and rejected keeps the updates that still show it
		// Pending from admitting it again.
		if res := admitPod(p); !res.Admit {
			r.rejected[p.UID] = struct{}{}
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				r.reject(ctx, p, res.Reason, res.Message)
			}()
			return
		}
		w = &podWorker{rt: r, updates: make(chan *corev1.Pod, 1), done: make(chan struct{}), uid: p.UID,
			key: p.Namespace + "/" + p.Name, serving: make(chan struct{})}
		if !podReady(p) {
			// Only pods that served before are waited for.
			w.servingNow()
		}
		r.workers[p.UID] = w
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer w.servingNow()
			w.run(ctx, p)
			r.mu.Lock()
			delete(r.workers, p.UID)
			r.mu.Unlock()
		}()
		return
	}
	w.update(p)
}

// workersNow lists the pods' workers.
func (r *podRuntime) workersNow() []*podWorker {
	r.mu.Lock()
	defer r.mu.Unlock()
	ws := make([]*podWorker, 0, len(r.workers))
	for _, w := range r.workers {
		ws = append(ws, w)
	}
	return ws
}

// stop ends every pod worker and leaves the pods' processes, cgroups and
// networks running, as a kubelet's restart leaves its containers: the next
// `up` adopts them.
func (r *podRuntime) stop() {
	r.mu.Lock()
	r.stopping = true
	for _, w := range r.workers {
		w.mu.Lock()
		w.detach = true
		w.mu.Unlock()
		w.shutdown()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

func (r *podRuntime) finalizeDelete(ctx context.Context, p *corev1.Pod) {
	zero := int64(0)
	err := r.client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &p.UID}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		r.log.Warn("delete pod", "pod", p.Namespace+"/"+p.Name, "err", err)
	}
}

// allocateIP keeps the pod's previous IP when it is still free (a restarted
// cluster keeps its addresses), else takes the next free one after the
// last it handed out, wrapping around, as the CNI host-local IPAM plugin
// (kind's, kubenet's) does: a deleted pod's address is reused last, so what
// still names it (conntrack entries, DNS answers in clients' caches) does
// not reach the pod that comes next, and a StatefulSet's recreated pod
// gets a new address its DNS record follows.
func (r *podRuntime) allocateIP(p *corev1.Pod) (netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cidr := r.node.PodCIDR
	if prev, err := netip.ParseAddr(p.Status.PodIP); err == nil && cidr.Contains(prev) && prev != gateway(cidr) {
		if owner, taken := r.ips[prev]; !taken || owner == p.UID {
			r.ips[prev] = p.UID
			return prev, nil
		}
	}
	first := gateway(cidr).Next()
	usable := func(a netip.Addr) bool { return cidr.Contains(a) && a.As4()[3] != 255 }
	start := r.lastIP.Next()
	if !r.lastIP.IsValid() || !usable(start) {
		start = first
	}
	for a := start; ; {
		if _, taken := r.ips[a]; !taken {
			r.ips[a], r.lastIP = p.UID, a
			return a, nil
		}
		if a = a.Next(); !usable(a) {
			a = first
		}
		if a == start {
			break
		}
	}
	return netip.Addr{}, fmt.Errorf("node %s: no free pod IP in %s", r.node.Name, cidr)
}

func (r *podRuntime) releaseIP(ip netip.Addr, uid types.UID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ips[ip] == uid {
		delete(r.ips, ip)
	}
}

// podWorker owns one pod from start to removal.
type podWorker struct {
	rt      *podRuntime
	uid     types.UID
	updates chan *corev1.Pod
	done    chan struct{}
	once    sync.Once
	quit    sync.Once
	deleted bool
	// detach: the runtime is stopping; leave the pod running.
	detach bool
	key    string
	// serving is closed once the pod serves as it did before this run:
	// adopted, Ready again, or not Ready before either.
	serving     chan struct{}
	servingOnce sync.Once
	mu          sync.Mutex
	// restartPolicy is immutable in a pod's spec.
	restartPolicy corev1.RestartPolicy
	// What the kubelet API reads, under mu: the pod's network namespace
	// and each container's running PID (0: not running).
	netNS string
	pids  map[string]int
	stdio map[string]*stdio
}

// publish records the containers' PIDs for the kubelet API.
func (w *podWorker) publish(ctrs []*container, pn PodNet) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.netNS = pn.NS
	if w.pids == nil {
		w.pids, w.stdio = map[string]int{}, map[string]*stdio{}
	}
	for _, c := range ctrs {
		w.pids[c.spec.Name], w.stdio[c.spec.Name] = 0, nil
		if c.proc != nil {
			select {
			case <-c.proc.exited:
			default:
				w.pids[c.spec.Name], w.stdio[c.spec.Name] = c.proc.pid, c.stdio
			}
		}
	}
}

func (w *podWorker) update(p *corev1.Pod) {
	select {
	case <-w.updates: // keep only the newest
	default:
	}
	w.updates <- p
}

// gone is called when the object disappeared from the API without passing
// through graceful deletion (force delete): stop at once.
func (w *podWorker) gone() {
	w.mu.Lock()
	w.deleted = true
	w.mu.Unlock()
	w.shutdown()
}

func (w *podWorker) shutdown() { w.quit.Do(func() { close(w.done) }) }

func (w *podWorker) servingNow() { w.servingOnce.Do(func() { close(w.serving) }) }

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// container is one running (or waiting) container of the pod.
type container struct {
	spec corev1.Container
	// proc is the running process; nil when none runs.
	proc *proc
	// stdio is how the running process's streams are held.
	stdio        *stdio
	started      time.Time
	restarts     int32
	waitReason   string
	waitMessage  string
	lastTerm     *corev1.ContainerStateTerminated
	terminated   *corev1.ContainerStateTerminated
	ready        bool
	nextStart    time.Time
	backoff      time.Duration
	lastProbe    time.Time
	probeSuccess int32
	// echoNote is set when the built-in echo server stands in for the
	// container's image, and says so in the pod's status.
	echoNote string
	// init: an init container, run to completion before the app ones.
	init bool
	// termFile and logFile are where the termination message is read from.
	termFile, logFile string
}

func (w *podWorker) run(ctx context.Context, pod *corev1.Pod) {
	r := w.rt
	w.restartPolicy = pod.Spec.RestartPolicy
	key := pod.Namespace + "/" + pod.Name
	log := r.log.With("pod", key, "node", r.node.Name)
	started := metav1.Now()
	if pod.Status.StartTime != nil {
		started = *pod.Status.StartTime
	}
	ctrs := make([]*container, len(pod.Spec.Containers))
	for i, c := range pod.Spec.Containers {
		ctrs[i] = &container{spec: c, waitReason: "ContainerCreating"}
		if p := image.Resolve(c.Image, c.Command, c.Args, c.WorkingDir, exec.LookPath); p.Kind == image.Echo {
			ctrs[i].echoNote = "container " + c.Name + ": " + p.Note
		}
		for _, cs := range pod.Status.ContainerStatuses {
			if cs.Name == c.Name {
				ctrs[i].restarts, ctrs[i].lastTerm = cs.RestartCount, cs.LastTerminationState.Terminated
				if cs.State.Running != nil {
					// It ran under an earlier `up` and is gone: a restart,
					// reported as the kubelet does after a node reboot.
					ctrs[i].restarts++
					ctrs[i].lastTerm = &corev1.ContainerStateTerminated{ExitCode: 255, Reason: "Unknown",
						StartedAt: cs.State.Running.StartedAt, FinishedAt: metav1.Now(), ContainerID: cs.ContainerID}
				}
			}
		}
	}
	inits := make([]*container, len(pod.Spec.InitContainers))
	for i, c := range pod.Spec.InitContainers {
		inits[i] = &container{spec: c, init: true, waitReason: "ContainerCreating"}
		for _, cs := range pod.Status.InitContainerStatuses {
			if cs.Name == c.Name {
				inits[i].restarts, inits[i].lastTerm = cs.RestartCount, cs.LastTerminationState.Terminated
				if t := cs.State.Terminated; t != nil && t.ExitCode == 0 {
					// Done before: init containers do not run again.
					inits[i].terminated = t
				}
			}
		}
	}
	if len(inits) > 0 {
		for _, c := range ctrs {
			c.waitReason = "PodInitializing"
		}
	}
	rec, pn, ok := r.adopt(pod, ctrs, log)
	if ok {
		for _, c := range ctrs {
			if c.proc != nil {
				// Output an earlier run's container writes while this
				// run is up reaches its log again.
				c.stdio = resumeStdio(podLogDir(r.logDir, pod), c.spec.Name, c.restarts)
			}
		}
		w.servingNow()
	} else {
		var err error
		if rec, pn, err = r.setUpPod(pod); err != nil {
			log.Error("set up pod", "err", err)
			return
		}
	}
	// The pod's processes, network and record stay when the runtime stops
	// (detach); every other way out of here ends them.
	detached := false
	defer func() {
		if !detached {
			r.tearDownPod(pod.UID, pn)
		}
	}()
	logDir := podLogDir(r.logDir, pod)

	var lastStatus *corev1.PodStatus
	lastVolumes := time.Now()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		now := time.Now()
		terminating := pod.DeletionTimestamp != nil
		initialized, initFailed := w.runInits(inits, pod, pn, rec, logDir, log, terminating)
		for _, c := range ctrs {
			w.reap(c)
			if !terminating && initialized {
				if w.maybeStart(c, pod, pn, rec, logDir, log) {
					r.saveRecord(rec, ctrs)
				}
				w.probe(c, pod, pn)
			}
		}
		w.publish(ctrs, pn)
		if !terminating {
			r.resyncVolumes(pod, pn, ctrs, &lastVolumes)
		}
		if terminating {
			w.terminate(append(append([]*container{}, inits...), ctrs...), pod, log)
			// The tree and the namespace go before the object, so a pod gone
			// from the API never leaves a process or a network behind (the
			// deferred teardown is then a no-op).
			r.tearDownPod(pod.UID, pn)
			r.finalizeDelete(ctx, pod)
			os.RemoveAll(logDir) // as the kubelet removes a deleted pod's logs
			return
		}
		st := w.status(pod, inits, ctrs, initialized, initFailed, pn, started, now)
		if lastStatus == nil || !apiequality.Semantic.DeepEqual(st, lastStatus) {
			if err := w.writeStatus(ctx, pod, st); err != nil {
				if apierrors.IsNotFound(err) {
					return
				}
				if ctx.Err() == nil {
					log.Warn("update pod status", "err", err)
				}
			} else {
				lastStatus = st
				if podReadyStatus(st) {
					w.servingNow()
				}
			}
		}
		if allTerminated(ctrs, pod) || initFailed {
			// A pod whose containers all finished for good keeps its status
			// and frees its network, as the kubelet does.
			return
		}
		select {
		case <-ctx.Done():
			detached = true
			return
		case <-w.done:
			w.mu.Lock()
			deleted, detach := w.deleted, w.detach
			w.mu.Unlock()
			switch {
			case detach && !deleted:
				detached = true
			case deleted:
				w.kill(append(append([]*container{}, inits...), ctrs...), 0)
				os.RemoveAll(logDir)
			default:
				w.kill(append(append([]*container{}, inits...), ctrs...), 2*time.Second)
			}
			return
		case p := <-w.updates:
			pod = p
		case <-tick.C:
		}
	}
}

// setUpPod gives a pod that could not be adopted a fresh start: whatever an
// earlier run left of it (processes by its cgroup, its namespace) goes, then
// it gets an IP, its network namespace, hosts file and cgroup.
func (r *podRuntime) setUpPod(pod *corev1.Pod) (*podRecord, PodNet, error) {
	if err := r.cg.kill(podCgroup(string(pod.UID))); err != nil {
		return nil, PodNet{}, err
	}
	resolvConf, err := r.resolv(pod)
	if err != nil {
		return nil, PodNet{}, err
	}
	var pn PodNet
	if pod.Spec.HostNetwork {
		pn, err = r.setUpHostNetwork(pod, resolvConf)
		if err != nil {
			return nil, PodNet{}, err
		}
	} else {
		ip, err := r.allocateIP(pod)
		if err != nil {
			return nil, PodNet{}, err
		}
		pn, err = r.net.SetUpPod(r.node.Name, r.node.PodCIDR, pod.Namespace, pod.Name, ip, resolvConf)
		if err != nil {
			r.releaseIP(ip, pod.UID)
			return nil, PodNet{}, fmt.Errorf("pod network: %w", err)
		}
	}
	ip := pn.IP
	pn.Node = r.node.Name
	fail := func(err error) (*podRecord, PodNet, error) {
		r.tearDownPod(pod.UID, pn)
		return nil, PodNet{}, err
	}
	if !pod.Spec.HostNetwork {
		if err := r.net.SetUpHostPorts(r.node.Name, pod.UID, r.node.IP, ip, hostPorts(pod)); err != nil {
			return fail(err)
		}
	}
	hostname, domain, _, err := podHostname(pod, r.zone)
	if err != nil {
		return fail(err)
	}
	if pod.Spec.HostNetwork {
		// The node's names, as the kubelet copies the node's hosts file.
		hostname, domain = r.node.Name, ""
	}
	hosts := hostsFile([]string{ip.String()}, hostname, domain, pod.Spec.HostAliases)
	if err := os.WriteFile(filepath.Join(r.etcDir(pod.UID, pn), "hosts"), hosts, 0o644); err != nil {
		return fail(fmt.Errorf("write hosts file: %w", err))
	}
	if _, err := r.cg.create(podCgroup(string(pod.UID))); err != nil {
		return fail(err)
	}
	rec := &podRecord{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID, Node: r.node.Name, IP: ip.String(), NetNS: pn.NS,
		Containers: map[string]containerRecord{}}
	r.saveRecord(rec, nil)
	return rec, pn, nil
}

// tearDownPod ends the pod's whole process tree by its cgroup, removes its
// network namespace and record and frees its IP.
func (r *podRuntime) tearDownPod(uid types.UID, pn PodNet) {
	if err := r.cg.kill(podCgroup(string(uid))); err != nil {
		r.log.Error("end pod processes", "uid", uid, "err", err)
	}
	if pn.NS != "" && !pn.HostNetwork {
		r.net.TearDownHostPorts(r.node.Name, uid)
		r.net.TearDownPod(r.net.NodeNS(r.node.Name), pn.NS)
	}
	os.Remove(filepath.Join(r.records, string(uid)+".json"))
	os.RemoveAll(r.podDir(uid))
	r.tokens.Forget(uid)
	if pn.IP.IsValid() {
		r.releaseIP(pn.IP, uid)
	}
}

// maybeStart starts a container that is not running and is due, honouring
// restartPolicy and the crash back-off; it reports whether it started one.
func (w *podWorker) maybeStart(c *container, pod *corev1.Pod, pn PodNet, rec *podRecord, logDir string, log *slog.Logger) bool {
	if c.proc != nil || c.terminated != nil || time.Now().Before(c.nextStart) {
		return false
	}
	r := w.rt
	prep, err := r.prepare(pod, c, pn)
	if err != nil {
		prev := c.waitMessage
		c.waitReason, c.waitMessage = setupFailure(err)
		if c.waitMessage != prev {
			r.setupEvent(pod, err)
		}
		c.nextStart = time.Now().Add(time.Second)
		return false
	}
	uid, gid, groups, err := containerUser(pod, c.spec)
	if err != nil {
		c.waitReason, c.waitMessage = "CreateContainerConfigError", err.Error()
		c.nextStart = time.Now().Add(time.Second)
		return false
	}
	sysctls := podSysctls(pod)
	var caps *[]int
	if set, err := containerCaps(c.spec); err != nil {
		c.waitReason, c.waitMessage = "CreateContainerError", err.Error()
		c.backoffStep()
		return false
	} else if set != nil {
		caps = &set
	}
	noNewPrivs := c.spec.SecurityContext != nil && c.spec.SecurityContext.AllowPrivilegeEscalation != nil && !*c.spec.SecurityContext.AllowPrivilegeEscalation
	_, _, kernelHostname, err := podHostname(pod, r.zone)
	if err != nil {
		c.waitReason, c.waitMessage = "CreateContainerConfigError", err.Error()
		c.nextStart = time.Now().Add(time.Second)
		return false
	}
	env := append([]string{"PATH=" + os.Getenv("PATH"), "HOSTNAME=" + kernelHostname}, prep.env...)
	// The image selects the program from the command line prepare
	// expanded ($(VAR) references), as the kubelet does before it hands
	// it to the container runtime.
	proc := image.Resolve(c.spec.Image, prep.command, prep.args, c.spec.WorkingDir, exec.LookPath)
	argv, path := proc.Argv, ""
	switch proc.Kind {
	case image.Unrunnable:
		c.waitReason, c.waitMessage = proc.Reason, fmt.Sprintf("container %s: %s", c.spec.Name, proc.Message)
		c.backoffStep()
		return false
	case image.Linked:
		path = r.exe // package agnhost recognises argv[0]
	case image.Echo:
		argv = append(append([]string{}, r.echoCmd...),
			"--pod", pod.Name, "--namespace", pod.Namespace, "--pod-ip", pn.IP.String())
		for _, p := range c.spec.Ports {
			proto := p.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			argv = append(argv, "--port", fmt.Sprintf("%d/%s", p.ContainerPort, proto))
		}
		if len(c.spec.Ports) == 0 {
			// Declaring ports is informational: nginx listens on 80
			// without, and so does its stand-in.
			for _, p := range proc.Exposed {
				argv = append(argv, "--port", p)
			}
		}
	}
	c.termFile, c.logFile = prep.termFile, containerLogPath(logDir, c.spec.Name, c.restarts)
	attr := &syscall.SysProcAttr{Setsid: true,
		Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC}
	join, placed, err := r.cg.place(attr, podCgroup(string(pod.UID)))
	if err != nil {
		c.waitReason, c.waitMessage = "CreateContainerError", err.Error()
		c.backoffStep()
		return false
	}
	defer placed()
	if pod.Spec.HostNetwork {
		// The node's UTS namespace's name, as a hostNetwork pod has.
		kernelHostname = r.node.Name
	}
	startedR, startedW, err := os.Pipe()
	if err != nil {
		c.waitReason, c.waitMessage = "CreateContainerError", err.Error()
		c.backoffStep()
		return false
	}
	defer startedR.Close()
	spec, _ := json.Marshal(initSpec{Cgroup: join, EtcDir: r.etcDir(pod.UID, pn),
		Hostname: kernelHostname, Mounts: prep.mounts, UID: uid, GID: gid, Groups: groups, Sysctls: sysctls, Caps: caps, NoNewPrivs: noNewPrivs, Dir: proc.Dir, Path: path, Argv: argv,
		StartedFD: 3}) // cmd.ExtraFiles[0]
	// The container init (this executable under containerInitName) starts
	// in new PID, mount, UTS and IPC namespaces and, started from a thread
	// inside the pod's network namespace, in that one; it sets the
	// container up from the inside and execs the command, so the PID we
	// hold is the container's PID 1. Its own session keeps it out of the
	// terminal's Ctrl-C, and nothing ties its life to this process.
	cmd := &exec.Cmd{Path: r.exe, Args: []string{containerInitName, string(spec)}}
	cmd.Env = env
	cmd.SysProcAttr = attr
	cmd.ExtraFiles = []*os.File{startedW}
	streams, err := openStdio(c.spec, cmd, logDir, c.restarts)
	if err != nil {
		c.waitReason, c.waitMessage = "CreateContainerError", err.Error()
		c.backoffStep()
		return false
	}
	err = netnamespace.Do("/run/netns/"+pn.NS, cmd.Start)
	startedW.Close()
	if err != nil {
		streams.started()
		streams.stop()
		c.waitReason, c.waitMessage = "ContainerCannotRun", err.Error()
		c.backoffStep()
		return false
	}
	// Running once the init has set the container up and exec'd the
	// command (or failed, which the reaper then sees).
	startedR.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.Copy(io.Discard, startedR); err != nil {
		log.Warn("container init did not report its start", "container", c.spec.Name, "err", err)
	}
	streams.started()
	c.proc, c.stdio = childProc(cmd), streams
	c.started = time.Now()
	c.waitReason, c.waitMessage, c.ready, c.probeSuccess = "", "", false, 0
	log.Info("container started", "container", c.spec.Name, "pid", c.proc.pid)
	return true
}

// runInits runs the init containers one at a time, in order, each to
// success before the next (the kubelet's computeInitContainerActions);
// initialized: all succeeded; failed: one failed for good (restartPolicy
// Never), so the app containers never start.
func (w *podWorker) runInits(inits []*container, pod *corev1.Pod, pn PodNet, rec *podRecord, logDir string, log *slog.Logger, terminating bool) (initialized, failed bool) {
	for _, c := range inits {
		w.reap(c)
		if c.sidecar() {
			// A sidecar (restartPolicy Always) keeps running beside the
			// app containers: the next init container waits only for it
			// to have started.
			if !terminating {
				w.maybeStart(c, pod, pn, rec, logDir, log)
			}
			if c.proc == nil && c.restarts == 0 {
				return false, false
			}
			continue
		}
		if c.terminated != nil {
			if c.terminated.ExitCode == 0 {
				continue
			}
			return false, true
		}
		if !terminating {
			w.maybeStart(c, pod, pn, rec, logDir, log)
		}
		return false, false
	}
	return true, false
}

// sidecar: an init container with restartPolicy Always.
func (c *container) sidecar() bool {
	return c.init && c.spec.RestartPolicy != nil && *c.spec.RestartPolicy == corev1.ContainerRestartPolicyAlways
}

func (c *container) backoffStep() {
	switch {
	case c.backoff == 0:
		c.backoff = 10 * time.Second
	case c.backoff < 5*time.Minute:
		c.backoff *= 2
	}
	if c.backoff > 5*time.Minute {
		c.backoff = 5 * time.Minute
	}
	c.nextStart = time.Now().Add(c.backoff)
}

// reap notices an exited container and decides, per restartPolicy, between
// a back-off restart and terminated-for-good.
func (w *podWorker) reap(c *container) {
	if c.proc == nil {
		return
	}
	select {
	case <-c.proc.exited:
	default:
		return
	}
	code := c.proc.exitCode
	reason, message := "Completed", ""
	switch {
	case code < 0:
		// An adopted process is not our child: its exit status went to
		// init. The kubelet reports a container it lost track of so.
		code, reason, message = 137, "ContainerStatusUnknown", "The container exited while switchboard up was restarting or was not its parent; its exit code is unknown"
	case code != 0:
		reason = "Error"
	}
	if m := terminationMessage(c.spec, c.termFile, c.logFile, code); m != "" {
		message = m
	}
	term := &corev1.ContainerStateTerminated{ExitCode: int32(code), Reason: reason, Message: message,
		StartedAt: metav1.NewTime(c.started), FinishedAt: metav1.Now()}
	c.proc, c.ready = nil, false
	ran := time.Since(c.started)
	policy := w.policy()
	if c.sidecar() {
		policy = corev1.RestartPolicyAlways
	} else if c.init && policy == corev1.RestartPolicyAlways {
		// An init container runs to completion: Always restarts it only
		// on failure.
		policy = corev1.RestartPolicyOnFailure
	}
	if policy == corev1.RestartPolicyAlways || (policy == corev1.RestartPolicyOnFailure && code != 0) {
		c.lastTerm = term
		c.restarts++
		if ran > 10*time.Minute {
			c.backoff = 0 // ran long enough: start the back-off over
		}
		c.backoffStep()
		c.waitReason, c.waitMessage = "CrashLoopBackOff",
			fmt.Sprintf("back-off %s restarting failed container=%s", c.backoff, c.spec.Name)
		return
	}
	c.terminated = term
}

func (w *podWorker) policy() corev1.RestartPolicy {
	if w.restartPolicy == "" {
		return corev1.RestartPolicyAlways
	}
	return w.restartPolicy
}

// terminate runs the graceful part of a deletion: SIGTERM, then SIGKILL
// once the pod's grace period is over.
func (w *podWorker) terminate(ctrs []*container, pod *corev1.Pod, log *slog.Logger) {
	// Like the kubelet, count the grace period from when the deletion is
	// seen: deletionTimestamp has whole-second precision, so a deadline
	// taken from it alone could cut the period by up to a second.
	grace := time.Until(pod.DeletionTimestamp.Time)
	if g := pod.DeletionGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	if grace < 0 {
		grace = 0
	}
	log.Info("terminating pod", "grace", grace.Round(time.Millisecond))
	w.kill(ctrs, grace)
}

// kill sends SIGTERM to every running container's PID 1, waits up to
// grace, then SIGKILLs what is left; the end of a PID 1 ends its whole PID
// namespace.
func (w *podWorker) kill(ctrs []*container, grace time.Duration) {
	var running []*container
	for _, c := range ctrs {
		if c.proc != nil {
			running = append(running, c)
			if grace > 0 {
				c.proc.signal(syscall.SIGTERM)
			}
		}
	}
	deadline := time.After(grace)
wait:
	for _, c := range running {
		select {
		case <-c.proc.exited:
		case <-deadline:
			break wait
		}
	}
	for _, c := range running {
		select {
		case <-c.proc.exited:
		default:
			c.proc.signal(syscall.SIGKILL)
			<-c.proc.exited
		}
		c.proc = nil
	}
}

func allTerminated(ctrs []*container, pod *corev1.Pod) bool {
	for _, c := range ctrs {
		if c.terminated == nil {
			return false
		}
	}
	return len(ctrs) > 0
}

// probe runs the container's readiness probe when due. Without a probe a
// running container is ready, except that an echo server is ready only
// once its TCP ports accept connections, so that a client racing the pod's
// start never sees a refusal the user would not see from nginx.
func (w *podWorker) probe(c *container, pod *corev1.Pod, pn PodNet) {
	if c.proc == nil {
		return
	}
	p := c.spec.ReadinessProbe
	if p == nil {
		if c.ready {
			return
		}
		if c.echoNote == "" {
			c.ready = true
			return
		}
		for _, port := range c.spec.Ports {
			if port.Protocol == "" || port.Protocol == corev1.ProtocolTCP {
				if dialFromNode(w.rt.node.NetNS, pn.IP, int(port.ContainerPort), time.Second) != nil {
					return
				}
			}
		}
		c.ready = true
		return
	}
	period := time.Duration(max(p.PeriodSeconds, 1)) * time.Second
	if time.Since(c.started) < time.Duration(p.InitialDelaySeconds)*time.Second || time.Since(c.lastProbe) < period {
		return
	}
	c.lastProbe = time.Now()
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	ok := runProbe(p, c.spec, pn, c.proc.pid, w.rt.node.NetNS, timeout) == nil
	if ok {
		c.probeSuccess++
		if c.probeSuccess >= max(p.SuccessThreshold, 1) {
			c.ready = true
		}
	} else {
		c.probeSuccess = 0
		c.ready = false
	}
}

// runProbe performs one readiness check from the node, as the kubelet does;
// an exec probe runs inside the container's namespaces (pid is its PID 1).
func runProbe(p *corev1.Probe, c corev1.Container, pn PodNet, pid int, nodeNS string, timeout time.Duration) error {
	switch {
	case p.TCPSocket != nil:
		port, err := resolvePort(p.TCPSocket.Port, c)
		if err != nil {
			return err
		}
		return dialFromNode(nodeNS, pn.IP, port, timeout)
	case p.HTTPGet != nil:
		port, err := resolvePort(p.HTTPGet.Port, c)
		if err != nil {
			return err
		}
		client := &http.Client{Timeout: timeout, Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var conn net.Conn
				err := netnamespace.Do(nodeNS, func() error {
					var err error
					conn, err = net.DialTimeout(network, addr, timeout)
					return err
				})
				return conn, err
			}}}
		resp, err := client.Get(fmt.Sprintf("http://%s%s", net.JoinHostPort(pn.IP.String(), strconv.Itoa(port)), p.HTTPGet.Path))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe status %d", resp.StatusCode)
		}
		return nil
	case p.Exec != nil:
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		args := []string{"--target", strconv.Itoa(pid), "--mount", "--uts", "--ipc", "--net", "--pid"}
		if st, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok && (sys.Uid != 0 || sys.Gid != 0) {
				args = append(args, "--setuid", strconv.Itoa(int(sys.Uid)), "--setgid", strconv.Itoa(int(sys.Gid)))
			}
		}
		return exec.CommandContext(ctx, "nsenter", append(append(args, "--"), p.Exec.Command...)...).Run()
	}
	return errors.New("probe has no handler")
}

func resolvePort(p intstr.IntOrString, c corev1.Container) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("container %s has no port named %q", c.Name, p.StrVal)
}

func dialFromNode(nodeNS string, ip netip.Addr, port int, timeout time.Duration) error {
	return netnamespace.Do(nodeNS, func() error {
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(ip.String(), strconv.Itoa(port)), timeout)
		if err == nil {
			conn.Close()
		}
		return err
	})
}

// status computes the pod's status from its containers.
func (w *podWorker) status(pod *corev1.Pod, inits, ctrs []*container, initialized, initFailed bool, pn PodNet, started metav1.Time, now time.Time) *corev1.PodStatus {
	st := &corev1.PodStatus{
		HostIP: w.rt.node.IP.String(), HostIPs: []corev1.HostIP{{IP: w.rt.node.IP.String()}},
		PodIP: pn.IP.String(), PodIPs: []corev1.PodIP{{IP: pn.IP.String()}},
		// The API server sets the QoS class at creation and refuses a
		// status that changes it: the kubelet's GetPodQOS keeps it.
		StartTime: &started, QOSClass: qos.GetPodQOS(pod),
	}
	for _, c := range inits {
		cs := corev1.ContainerStatus{Name: c.spec.Name, Image: c.spec.Image, ImageID: "switchboard://" + c.spec.Image,
			RestartCount: c.restarts, LastTerminationState: corev1.ContainerState{Terminated: c.lastTerm}, Started: ptrBool(c.proc != nil)}
		switch {
		case c.proc != nil:
			cs.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(c.started)}
			cs.ContainerID = fmt.Sprintf("switchboard://%d", c.proc.pid)
			cs.Ready = c.sidecar()
		case c.terminated != nil:
			cs.State.Terminated = c.terminated
			cs.Ready = c.terminated.ExitCode == 0
		default:
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: c.waitReason, Message: c.waitMessage}
		}
		st.InitContainerStatuses = append(st.InitContainerStatuses, cs)
	}
	allReady, allStartedOnce, failed := true, true, false
	var notes []string
	for _, c := range ctrs {
		if c.echoNote != "" {
			notes = append(notes, c.echoNote)
		}
		cs := corev1.ContainerStatus{Name: c.spec.Name, Image: c.spec.Image, ImageID: "switchboard://" + c.spec.Image,
			RestartCount: c.restarts, Ready: c.ready, LastTerminationState: corev1.ContainerState{Terminated: c.lastTerm}}
		switch {
		case c.proc != nil:
			cs.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(c.started)}
			cs.ContainerID = fmt.Sprintf("switchboard://%d", c.proc.pid)
			cs.Started = ptrBool(true)
		case c.terminated != nil:
			cs.State.Terminated = c.terminated
			cs.Started = ptrBool(false)
			if c.terminated.ExitCode != 0 {
				failed = true
			}
		default:
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: c.waitReason, Message: c.waitMessage}
			cs.Started = ptrBool(false)
			if c.restarts == 0 {
				allStartedOnce = false
			}
		}
		if !c.ready {
			allReady = false
		}
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
	}
	switch {
	case initFailed:
		st.Phase = corev1.PodFailed
	case !initialized:
		st.Phase = corev1.PodPending
	case allTerminated(ctrs, pod) && failed:
		st.Phase = corev1.PodFailed
	case allTerminated(ctrs, pod):
		st.Phase = corev1.PodSucceeded
	case allStartedOnce:
		// Running only once every container has started (the kubelet's
		// getPhase: one still waiting for its first start, say on an image
		// it cannot run, keeps the pod Pending however many others run).
		st.Phase = corev1.PodRunning
	default:
		st.Phase = corev1.PodPending
	}
	cond := func(t corev1.PodConditionType, ok bool, reason string) corev1.PodCondition {
		c := corev1.PodCondition{Type: t, Status: corev1.ConditionFalse, Reason: reason}
		if ok {
			c.Status, c.Reason = corev1.ConditionTrue, ""
		}
		for _, old := range pod.Status.Conditions {
			if old.Type == t && old.Status == c.Status {
				c.LastTransitionTime = old.LastTransitionTime
			}
		}
		if c.LastTransitionTime.IsZero() {
			c.LastTransitionTime = metav1.NewTime(now.Truncate(time.Second))
		}
		return c
	}
	ready := allReady && len(ctrs) > 0
	// The echo server standing in for an image is said in the pod's
	// message, where `kubectl describe pod` shows it.
	st.Message = strings.Join(notes, "; ")
	st.Conditions = []corev1.PodCondition{
		cond(corev1.PodReadyToStartContainers, true, ""),
		cond(corev1.PodInitialized, initialized, "ContainersNotInitialized"),
		cond(corev1.ContainersReady, ready, "ContainersNotReady"),
		cond(corev1.PodReady, ready, "ContainersNotReady"),
		cond(corev1.PodScheduled, true, ""),
	}
	return st
}

func ptrBool(b bool) *bool { return &b }

func podReadyStatus(st *corev1.PodStatus) bool {
	return podReady(&corev1.Pod{Status: *st})
}

func (w *podWorker) writeStatus(ctx context.Context, pod *corev1.Pod, st *corev1.PodStatus) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := w.rt.client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur.UID != pod.UID {
			return apierrors.NewNotFound(corev1.Resource("pods"), pod.Name)
		}
		cur.Status.HostIP, cur.Status.HostIPs = st.HostIP, st.HostIPs
		cur.Status.PodIP, cur.Status.PodIPs = st.PodIP, st.PodIPs
		cur.Status.StartTime, cur.Status.QOSClass = st.StartTime, st.QOSClass
		cur.Status.Phase, cur.Status.Conditions, cur.Status.ContainerStatuses = st.Phase, st.Conditions, st.ContainerStatuses
		cur.Status.Message = st.Message
		cur.Status.InitContainerStatuses = st.InitContainerStatuses
		_, err = w.rt.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
}
