// Command endpointslice benchmarks switchboard's EndpointSlice controller
// against upstream kube-controller-manager's, in one run on one in-process
// control plane: cold start of 1,000 Services x 10 pods, slice writes per pod
// Ready flip, flip-to-slice latency, a burst of 100 flips, and RSS.
//
// Before any controller runs it measures the API server's own floor for the
// same work, from this process: a pod informer's initial sync, creating the
// 1,000 slices a cold start writes (same shape: ten endpoints with target
// references, node, zone and conditions), and an ideal controller's flip,
// which updates the slice the instant it sees the pod's event. No
// controller can beat those on this machine; the gap to them is its own.
//
//	go build -o /tmp/sb ./cmd/switchboard
//	go run ./bench/endpointslice [-switchboard /tmp/sb] [-kcm /work/ref/kube-controller-manager]
//
// Both controllers run as separate processes so their RSS compares like for
// like. Writes are counted as watch events (create/update/delete) on slices
// carrying the controller's managed-by label: every successful write produces
// exactly one.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/switchboard/switchboard/bench/measure"
	"github.com/switchboard/switchboard/controlplane"
	"github.com/switchboard/switchboard/endpointslice"
)

const ns = "bench"

var (
	nServices = flag.Int("services", 1000, "Services")
	nPods     = flag.Int("pods", 10, "pods per Service")
	nFlips    = flag.Int("flips", 200, "single flips measured")
	sbBin     = flag.String("switchboard", "/tmp/sb", "switchboard binary (go build -o /tmp/sb ./cmd/switchboard)")
	kcmBin    = flag.String("kcm", "/work/ref/kube-controller-manager", "upstream kube-controller-manager binary; skipped if missing")
	kcmSame   = flag.Bool("kcm-same-pacing", true, "also run upstream with switchboard controller's pacing (32 workers, 500 requests/s, bursts of 1000), so the rows compare code, not configuration")
	traceOut  = flag.Bool("trace", false, "print one FLIP line per single flip (unix ns: patch sent, patch returned, pod watch event, slice watch event)")
	only      = flag.String("only", "", "run only the controllers whose name starts with this")
	sbArgs    = flag.String("switchboard-args", "", "extra arguments for switchboard controller, space-separated")
	stateDir  = flag.String("state", "", "keep the control plane's state (and the controllers' logs) here and reuse its objects on the next run; default a temporary directory")
)

type result struct {
	name         string
	cold         time.Duration
	firstSlice   time.Duration // from start to the first slice written: start-up and the initial lists
	coldCPU      time.Duration // the controller's user+system CPU until cold start completed
	writesPerFlp float64
	p50, p99     time.Duration // from sending the status patch
	ackP50       time.Duration // from the patch's response
	ackP99       time.Duration
	burst        time.Duration
	burstIssued  time.Duration // until the last of the 100 patches returned: the API server's floor for the burst
	podP50       time.Duration // from sending the patch to the pod's own watch event here: the API server's floor
	podP99       time.Duration
	afterPodP50  time.Duration // from the pod's watch event here to its slice's: the controller's part (and its write)
	afterPodP99  time.Duration
	rss, hwm     string
	anon, file   string // RssAnon, RssFile at end
}

// podWatch reports when a pod's Ready condition reaches a value in this
// process's own pod watch: the latency any watcher, the controllers
// included, cannot beat.
type podWatch struct {
	mu      sync.Mutex
	waiters map[string]chan time.Time
}

func (p *podWatch) wait(pod string, ready bool) chan time.Time {
	ch := make(chan time.Time, 1)
	p.mu.Lock()
	p.waiters[fmt.Sprintf("%s=%v", pod, ready)] = ch
	p.mu.Unlock()
	return ch
}

func (p *podWatch) update(_, obj any) {
	now := time.Now()
	pod := obj.(*v1.Pod)
	ready := false
	for _, c := range pod.Status.Conditions {
		if c.Type == v1.PodReady {
			ready = c.Status == v1.ConditionTrue
		}
	}
	key := fmt.Sprintf("%s=%v", pod.Name, ready)
	p.mu.Lock()
	if ch, ok := p.waiters[key]; ok {
		ch <- now
		delete(p.waiters, key)
	}
	p.mu.Unlock()
}

var pods = &podWatch{waiters: map[string]chan time.Time{}}

func main() {
	flag.Parse()
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	ctx := context.Background()
	dir := *stateDir
	if dir == "" {
		d, err := os.MkdirTemp("", "sb-bench-eps-")
		must(err)
		defer os.RemoveAll(d)
		dir = d
	}
	cp, err := controlplane.Start(ctx, controlplane.Config{StateDir: dir})
	must(err)
	defer cp.Stop()
	must(controlplane.StartHousekeeping(ctx, cp.RESTConfig))
	cfg := rest.CopyConfig(cp.RESTConfig)
	cfg.QPS, cfg.Burst = 5000, 10000
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	client := kubernetes.NewForConfigOrDie(cfg)

	t0 := time.Now()
	if _, err := client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err == nil {
		log.Printf("reusing the objects in %s", dir)
	} else {
		populate(ctx, client)
	}
	log.Printf("created %d Services x %d pods (Ready) in %v", *nServices, *nPods, time.Since(t0).Round(time.Millisecond))
	podFactory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(ns))
	podInf := podFactory.Core().V1().Pods().Informer()
	_, _ = podInf.AddEventHandler(cache.ResourceEventHandlerFuncs{UpdateFunc: pods.update})
	listStart := time.Now()
	podFactory.Start(ctx.Done())
	cache.WaitForCacheSync(ctx.Done(), podInf.HasSynced)
	listFloor := time.Since(listStart)
	log.Printf("API server floor: this process's pod informer synced %d pods in %v", *nServices**nPods, listFloor.Round(time.Millisecond))

	floor := measureFloor(ctx, client)
	floor.list = listFloor

	var results []result
	runs := []struct {
		name, managedBy string
		cmd             []string
	}{{"switchboard", endpointslice.ManagedBy, append([]string{*sbBin, "controller", "--kubeconfig", cp.KubeconfigPath}, strings.Fields(*sbArgs)...)}}
	if _, err := os.Stat(*kcmBin); err == nil {
		base := []string{*kcmBin, "--kubeconfig", cp.KubeconfigPath, "--controllers=endpointslice-controller", "--leader-elect=false", "--secure-port=0"}
		if *kcmSame {
			// switchboard controller's defaults (cmd/switchboard):
			// --concurrent-service-endpoint-syncs 32, --kube-api-qps 500,
			// --kube-api-burst 1000; kcm's are 5, 20 and 30.
			runs = append(runs, struct {
				name, managedBy string
				cmd             []string
			}{"kcm (our pacing)", "endpointslice-controller.k8s.io", append(append([]string{}, base...),
				"--concurrent-service-endpoint-syncs=32", "--kube-api-qps=500", "--kube-api-burst=1000")})
		}
		runs = append(runs, struct {
			name, managedBy string
			cmd             []string
		}{"kcm (defaults)", "endpointslice-controller.k8s.io", base})
	} else {
		log.Printf("upstream %s not found, measuring switchboard only", *kcmBin)
	}
	for _, r := range runs {
		if !strings.HasPrefix(r.name, *only) {
			continue
		}
		results = append(results, measureController(ctx, client, r.name, r.managedBy, r.cmd, filepath.Join(dir, strings.NewReplacer(" ", "-", "(", "", ")", "").Replace(r.name)+".log")))
	}

	fmt.Printf("\n%d Services x %d pods, %d single flips, burst of 100\n", *nServices, *nPods, *nFlips)
	row := measure.Table(26, results, func(r result) string { return r.name })
	row("cold start", func(r result) string { return r.cold.Round(time.Millisecond).String() })
	row("  of which until first slice", func(r result) string { return r.firstSlice.Round(time.Millisecond).String() })
	row("CPU used by cold start", func(r result) string { return r.coldCPU.String() })
	row("slice writes per flip", func(r result) string { return fmt.Sprintf("%.2f", r.writesPerFlp) })
	row("flip->slice p50", func(r result) string { return r.p50.Round(10 * time.Microsecond).String() })
	row("flip->slice p99", func(r result) string { return r.p99.Round(10 * time.Microsecond).String() })
	row("patch-ack->slice p50", func(r result) string { return r.ackP50.Round(10 * time.Microsecond).String() })
	row("patch-ack->slice p99", func(r result) string { return r.ackP99.Round(10 * time.Microsecond).String() })
	row("patch->own pod event p50", func(r result) string { return r.podP50.Round(10 * time.Microsecond).String() })
	row("patch->own pod event p99", func(r result) string { return r.podP99.Round(10 * time.Microsecond).String() })
	row("own pod event->slice p50", func(r result) string { return r.afterPodP50.Round(10 * time.Microsecond).String() })
	row("own pod event->slice p99", func(r result) string { return r.afterPodP99.Round(10 * time.Microsecond).String() })
	row("burst of 100 reflected", func(r result) string { return r.burst.Round(time.Millisecond).String() })
	row("burst patches returned", func(r result) string { return r.burstIssued.Round(time.Millisecond).String() })
	row("RSS (VmRSS at end)", func(r result) string { return r.rss })
	row("peak RSS (VmHWM)", func(r result) string { return r.hwm })
	row("RssAnon at end", func(r result) string { return r.anon })
	row("RssFile at end", func(r result) string { return r.file })
	fmt.Printf("\nAPI server floor, measured by this process with no controller running:\n")
	fmt.Printf("  pod informer sync (%d pods, as a controller's first list)  %v\n", *nServices**nPods, floor.list.Round(time.Millisecond))
	fmt.Printf("  create the %d slices a controller writes, 32 in parallel  %v\n", *nServices, floor.create.Round(time.Millisecond))
	fmt.Printf("  ideal controller flip->slice p50 / p99                   %v / %v\n",
		floor.p50.Round(10*time.Microsecond), floor.p99.Round(10*time.Microsecond))
	fmt.Printf("    of which pod event->slice p50 / p99                    %v / %v\n",
		floor.afterPodP50.Round(10*time.Microsecond), floor.afterPodP99.Round(10*time.Microsecond))
	fmt.Printf("    (patch a pod, wait for its event, update its slice at once, wait for that event: no work in between)\n")
}

// percentiles sorts d and returns its median and 99th percentile.
func percentiles(d []time.Duration) (p50, p99 time.Duration) {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2], d[len(d)*99/100]
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

func podName(s, p int) string { return fmt.Sprintf("s%04d-p%02d", s, p) }

func populate(ctx context.Context, client kubernetes.Interface) {
	_, err := client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	must(err)
	_, err = client.CoreV1().Nodes().Create(ctx, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "bench-node",
		Labels: map[string]string{v1.LabelTopologyZone: "zone-a"}}}, metav1.CreateOptions{})
	must(err)
	// The API server admits pods only once the namespace's default service
	// account exists (created by the housekeeping controllers).
	for {
		if _, err := client.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	measure.Parallel(*nServices, 32, func(s int) {
		name := fmt.Sprintf("s%04d", s)
		_, err := client.CoreV1().Services(ns).Create(ctx, &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: v1.ServiceSpec{Selector: map[string]string{"app": name},
				Ports: []v1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: v1.ProtocolTCP}}},
		}, metav1.CreateOptions{})
		must(err)
	})
	measure.Parallel(*nServices**nPods, 32, func(i int) {
		s, p := i / *nPods, i%*nPods
		pod := &v1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: podName(s, p), Labels: map[string]string{"app": fmt.Sprintf("s%04d", s)}},
			Spec: v1.PodSpec{NodeName: "bench-node", Containers: []v1.Container{{Name: "app", Image: "registry.invalid/app",
				Ports: []v1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: v1.ProtocolTCP}}}}},
		}
		created, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		must(err)
		ip := fmt.Sprintf("10.%d.%d.%d", 100+i/65536, (i/256)%256, i%256)
		created.Status = v1.PodStatus{Phase: v1.PodRunning, PodIP: ip, PodIPs: []v1.PodIP{{IP: ip}},
			Conditions: []v1.PodCondition{{Type: v1.PodReady, Status: v1.ConditionTrue, LastTransitionTime: metav1.Now()}}}
		_, err = client.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{})
		must(err)
	})
}

// observer follows one manager's slices and answers "is pod X's endpoint
// ready=Y yet" and "how many writes so far".
type observer struct {
	mu      sync.Mutex
	ready   map[string]bool           // pod -> ready
	perSvc  map[string]map[string]int // Service -> slice -> endpoints
	writes  atomic.Int64
	waiters map[string]chan time.Time // "pod=ready" -> notify
	full    int                       // Services with all nPods endpoints
	fullCh  chan time.Time
	first   time.Time // the first event
}

func newObserver() *observer {
	return &observer{ready: map[string]bool{}, perSvc: map[string]map[string]int{},
		waiters: map[string]chan time.Time{}, fullCh: make(chan time.Time, 1)}
}

func (o *observer) apply(s *discovery.EndpointSlice, deleted bool) {
	now := time.Now()
	o.writes.Add(1)
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.first.IsZero() {
		o.first = now
	}
	svc := s.Labels[discovery.LabelServiceName]
	if o.perSvc[svc] == nil {
		o.perSvc[svc] = map[string]int{}
	}
	wasFull := o.count(svc) == *nPods
	n := 0
	if !deleted {
		for _, e := range s.Endpoints {
			if e.TargetRef == nil {
				continue
			}
			r := e.Conditions.Ready != nil && *e.Conditions.Ready
			o.ready[e.TargetRef.Name] = r
			n++
			key := fmt.Sprintf("%s=%v", e.TargetRef.Name, r)
			if ch, ok := o.waiters[key]; ok {
				ch <- now
				delete(o.waiters, key)
			}
		}
	}
	o.perSvc[svc][s.Name] = n
	isFull := o.count(svc) == *nPods
	if isFull && !wasFull {
		o.full++
		if o.full == *nServices {
			select {
			case o.fullCh <- now:
			default:
			}
		}
	} else if wasFull && !isFull {
		o.full--
	}
}

// watchSlices starts an observer of one manager's slices and returns once
// its cache has synced; stop ends the watch.
func watchSlices(ctx context.Context, client kubernetes.Interface, managedBy string) (obs *observer, stop func()) {
	obs = newObserver()
	wctx, stop := context.WithCancel(ctx)
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(ns),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = discovery.LabelManagedBy + "=" + managedBy }))
	inf := factory.Discovery().V1().EndpointSlices().Informer()
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { obs.apply(obj.(*discovery.EndpointSlice), false) },
		UpdateFunc: func(_, obj any) { obs.apply(obj.(*discovery.EndpointSlice), false) },
		DeleteFunc: func(obj any) {
			if s, ok := obj.(*discovery.EndpointSlice); ok {
				obs.apply(s, true)
			}
		},
	})
	factory.Start(wctx.Done())
	cache.WaitForCacheSync(wctx.Done(), inf.HasSynced)
	return obs, stop
}

func (o *observer) count(svc string) int {
	n := 0
	for _, c := range o.perSvc[svc] {
		n += c
	}
	return n
}

func (o *observer) wait(pod string, ready bool) chan time.Time {
	ch := make(chan time.Time, 1)
	o.mu.Lock()
	o.waiters[fmt.Sprintf("%s=%v", pod, ready)] = ch
	o.mu.Unlock()
	return ch
}

func flip(ctx context.Context, client kubernetes.Interface, pod string, ready bool) {
	st := "False"
	if ready {
		st = "True"
	}
	patch := fmt.Sprintf(`{"status":{"conditions":[{"type":"Ready","status":%q,"lastTransitionTime":%q}]}}`,
		st, time.Now().UTC().Format(time.RFC3339))
	_, err := client.CoreV1().Pods(ns).Patch(ctx, pod, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}, "status")
	must(err)
}

func measureController(ctx context.Context, client kubernetes.Interface, name, managedBy string, argv []string, logPath string) result {
	res := result{name: name}
	// Clean slate: no slices of anyone.
	must(client.DiscoveryV1().EndpointSlices(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}))
	for {
		l, err := client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{Limit: 1})
		must(err)
		if len(l.Items) == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	obs, stopWatch := watchSlices(ctx, client, managedBy)
	defer stopWatch()

	logf, err := os.Create(logPath)
	must(err)
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	start := time.Now()
	must(cmd.Start())
	if *traceOut {
		fmt.Printf("START %s %d\n", name, start.UnixNano())
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	select {
	case done := <-obs.fullCh:
		res.cold = done.Sub(start)
		obs.mu.Lock()
		res.firstSlice = obs.first.Sub(start)
		obs.mu.Unlock()
		res.coldCPU, _ = measure.CPUTime(cmd.Process.Pid)
		if *traceOut {
			fmt.Printf("COMPLETE %s %d\n", name, done.UnixNano())
		}
	case <-time.After(5 * time.Minute):
		log.Fatalf("%s: cold start did not complete (log %s)", name, logPath)
	}
	log.Printf("%s: cold start %v", name, res.cold)
	time.Sleep(3 * time.Second) // let delayed resyncs settle before counting writes

	// Single flips, one at a time, each on a different Service.
	var lat, patchRTT, afterAck, podLat, afterPod []time.Duration
	w0 := obs.writes.Load()
	for i := range *nFlips {
		pod := podName((i*7)%*nServices, i%*nPods)
		obs.mu.Lock()
		want := !obs.ready[pod]
		obs.mu.Unlock()
		ch := obs.wait(pod, want)
		podCh := pods.wait(pod, want)
		t := time.Now()
		flip(ctx, client, pod, want)
		ack := time.Now()
		patchRTT = append(patchRTT, ack.Sub(t))
		var seen, podSeen time.Time
		select {
		case seen = <-ch:
			lat = append(lat, seen.Sub(t))
			afterAck = append(afterAck, seen.Sub(t)-patchRTT[len(patchRTT)-1])
		case <-time.After(time.Minute):
			log.Fatalf("%s: flip of %s never reflected", name, pod)
		}
		select {
		case podSeen = <-podCh:
			podLat = append(podLat, podSeen.Sub(t))
			afterPod = append(afterPod, seen.Sub(podSeen))
		case <-time.After(time.Minute):
			log.Fatalf("%s: flip of %s never seen in the pod watch", name, pod)
		}
		if *traceOut {
			fmt.Printf("FLIP %s %d %d %d %d\n", pod, t.UnixNano(), ack.UnixNano(), podSeen.UnixNano(), seen.UnixNano())
		}
	}
	res.podP50, res.podP99 = percentiles(podLat)
	res.afterPodP50, res.afterPodP99 = percentiles(afterPod)
	time.Sleep(2 * time.Second)
	res.writesPerFlp = float64(obs.writes.Load()-w0) / float64(*nFlips)
	res.p50, res.p99 = percentiles(lat)
	res.ackP50, res.ackP99 = percentiles(afterAck)
	rttP50, rttP99 := percentiles(patchRTT)
	log.Printf("%s: flips p50 %v p99 %v, %.2f writes/flip (the status patch alone: p50 %v p99 %v)", name, res.p50, res.p99, res.writesPerFlp,
		rttP50, rttP99)

	// Burst: 100 flips on 100 Services, issued concurrently (well within one
	// second), until every one is reflected.
	chans := make([]chan time.Time, 100)
	pods := make([]string, 100)
	wants := make([]bool, 100)
	for i := range 100 {
		pods[i] = podName(i%*nServices, (i / *nServices + 5)%*nPods)
		obs.mu.Lock()
		wants[i] = !obs.ready[pods[i]]
		obs.mu.Unlock()
		chans[i] = obs.wait(pods[i], wants[i])
	}
	bstart := time.Now()
	measure.Parallel(100, 16, func(i int) { flip(ctx, client, pods[i], wants[i]) })
	issued := time.Since(bstart)
	var last time.Time
	for _, ch := range chans {
		select {
		case seen := <-ch:
			if seen.After(last) {
				last = seen
			}
		case <-time.After(time.Minute):
			log.Fatalf("%s: burst flip never reflected", name)
		}
	}
	res.burst = last.Sub(bstart)
	res.burstIssued = issued
	log.Printf("%s: burst issued in %v, reflected in %v", name, issued, res.burst)

	res.rss, res.hwm = measure.MB(measure.Status(cmd.Process.Pid, "VmRSS")), measure.MB(measure.Status(cmd.Process.Pid, "VmHWM"))
	mem := measure.Memory(cmd.Process.Pid)
	res.anon, res.file = mem.Anon, mem.File
	return res
}

// floors are what the API server itself delivers here, measured by this
// process with no controller running, for the same work a controller does.
type floors struct {
	list                     time.Duration // a pod informer's initial sync
	create                   time.Duration // creating one full slice per Service, 32 at a time
	p50, p99                 time.Duration // an ideal controller's flip->slice: two writes back to back, no work between
	afterPodP50, afterPodP99 time.Duration // of which from the pod's event to the slice's: the slice write alone
}

// floorManager labels the slices measureFloor writes; no controller touches them.
const floorManager = "bench-floor"

// measureFloor times, from this process, the API work a cold start and a
// flip need, on slices shaped exactly like the controllers' (ten endpoints
// with target references, node, zone, conditions and a port; labels, an
// owner reference and the trigger-time annotation): creating one per
// Service, 32 in parallel, then 200 flips done by an ideal controller that
// updates the slice the moment it sees the pod's event. It deletes its
// slices afterwards and leaves every pod Ready.
func measureFloor(ctx context.Context, client kubernetes.Interface) floors {
	var f floors
	svcs, err := client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	must(err)
	podList, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	must(err)
	podsByApp := map[string][]v1.Pod{}
	for _, p := range podList.Items {
		podsByApp[p.Labels["app"]] = append(podsByApp[p.Labels["app"]], p)
	}
	yes, no := true, false
	port, proto, node, zone := int32(8080), v1.ProtocolTCP, "bench-node", "zone-a"
	desired := make([]*discovery.EndpointSlice, len(svcs.Items))
	for i, svc := range svcs.Items {
		s := &discovery.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: svc.Name + "-floor", Namespace: ns,
				Labels:          map[string]string{discovery.LabelManagedBy: floorManager, discovery.LabelServiceName: svc.Name + "-floor"},
				Annotations:     map[string]string{v1.EndpointsLastChangeTriggerTime: time.Now().UTC().Format(time.RFC3339Nano)},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Service", Name: svc.Name, UID: svc.UID, Controller: &yes, BlockOwnerDeletion: &yes}}},
			AddressType: discovery.AddressTypeIPv4,
			Ports:       []discovery.EndpointPort{{Name: &svc.Spec.Ports[0].Name, Port: &port, Protocol: &proto}},
		}
		for _, p := range podsByApp[svc.Name] {
			s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{p.Status.PodIP},
				Conditions: discovery.EndpointConditions{Ready: &yes, Serving: &yes, Terminating: &no},
				TargetRef:  &v1.ObjectReference{Kind: "Pod", Namespace: ns, Name: p.Name, UID: p.UID},
				NodeName:   &node, Zone: &zone})
		}
		desired[i] = s
	}

	obs, stopWatch := watchSlices(ctx, client, floorManager)
	defer stopWatch()

	created := make([]*discovery.EndpointSlice, len(desired))
	t0 := time.Now()
	measure.Parallel(len(desired), 32, func(i int) {
		c, err := client.DiscoveryV1().EndpointSlices(ns).Create(ctx, desired[i], metav1.CreateOptions{})
		must(err)
		created[i] = c
	})
	f.create = time.Since(t0)
	log.Printf("API server floor: %d full slice creates, 32 in parallel: %v", len(desired), f.create.Round(time.Millisecond))

	var lat, afterPod []time.Duration
	for i := range *nFlips / 2 {
		si := (i * 7) % len(created)
		for _, want := range []bool{false, true} {
			slice := created[si]
			pod := slice.Endpoints[i%len(slice.Endpoints)].TargetRef.Name
			podCh, sliceCh := pods.wait(pod, want), obs.wait(pod, want)
			t := time.Now()
			flip(ctx, client, pod, want)
			var podSeen time.Time
			select {
			case podSeen = <-podCh:
			case <-time.After(time.Minute):
				log.Fatalf("floor: flip of %s never seen in the pod watch", pod)
			}
			next := slice.DeepCopy()
			for j := range next.Endpoints {
				if next.Endpoints[j].TargetRef.Name == pod {
					next.Endpoints[j].Conditions.Ready, next.Endpoints[j].Conditions.Serving = &want, &want
				}
			}
			next.Annotations[v1.EndpointsLastChangeTriggerTime] = time.Now().UTC().Format(time.RFC3339Nano)
			updated, err := client.DiscoveryV1().EndpointSlices(ns).Update(ctx, next, metav1.UpdateOptions{})
			must(err)
			created[si] = updated
			select {
			case seen := <-sliceCh:
				lat = append(lat, seen.Sub(t))
				afterPod = append(afterPod, seen.Sub(podSeen))
			case <-time.After(time.Minute):
				log.Fatalf("floor: slice update for %s never seen", pod)
			}
		}
	}
	f.p50, f.p99 = percentiles(lat)
	f.afterPodP50, f.afterPodP99 = percentiles(afterPod)
	log.Printf("API server floor: ideal controller flip->slice p50 %v p99 %v (pod event->slice p50 %v p99 %v)", f.p50, f.p99, f.afterPodP50, f.afterPodP99)
	must(client.DiscoveryV1().EndpointSlices(ns).DeleteCollection(ctx, metav1.DeleteOptions{},
		metav1.ListOptions{LabelSelector: discovery.LabelManagedBy + "=" + floorManager}))
	return f
}
