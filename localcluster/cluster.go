package localcluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/switchboard/switchboard/controlplane"
	"github.com/switchboard/switchboard/endpointslice"
	"github.com/switchboard/switchboard/kubeletapi"
	"github.com/switchboard/switchboard/poddns"
	"github.com/switchboard/switchboard/proxy"
)

// Config describes the local cluster to run.
type Config struct {
	StateDir      string
	Nodes         int
	ServiceCIDR   string
	NodePortRange string
	APIServerPort int
	// NodeCIDR holds the nodes' addresses on the cluster bridge.
	NodeCIDR string
	// PodCIDR is split into one /24 per node.
	PodCIDR string
	// DNSIP is the cluster DNS address written into pods' resolv.conf.
	DNSIP string
	// EchoCommand runs the built-in echo server; the runtime appends
	// --pod, --namespace, --pod-ip and one --port per containerPort.
	// Default: this executable's "echo" subcommand.
	EchoCommand []string
	Logger      *slog.Logger
	// Terminal, if set, is the terminal `up` talks to (a duplicate of
	// standard error, see DupStderr): it gets one progress line per
	// start-up phase, and while the cluster runs Start points the
	// process's standard error at the state directory's log file, so the
	// chatter libraries write straight to standard error (the etcd
	// client's and grpc's loggers) lands in the log, not on the terminal.
	// Crash reports go to both. Only for a process running one cluster.
	Terminal *os.File
	// ProxyMode is the node proxies' mode (proxy.ModeNFTables when empty).
	ProxyMode string
	// Profiling serves the process's /debug/pprof/ on the API server
	// (controlplane.Config.Profiling).
	Profiling bool
	// Disable lists the Service networking components `up` does not run
	// itself (ComponentController, ComponentProxy, ComponentDNS), so that
	// the ones deploy/ installs as pods take their place. The control
	// plane, upstream's controllers and the data plane (bridge, nodes,
	// pods and their runtimes) run regardless.
	Disable []string
}

// The components of `up` that Config.Disable names, by the subcommand that
// runs each on a real cluster (and its app.kubernetes.io/component label in
// deploy/).
const (
	// ComponentController is the EndpointSlice controller.
	ComponentController = "controller"
	// ComponentProxy is the node proxies: each node's Service rules.
	ComponentProxy = "proxy"
	// ComponentDNS is cluster DNS: its process and the kube-dns Service.
	ComponentDNS = "dns"
)

// Components are the names Config.Disable takes.
var Components = []string{ComponentController, ComponentProxy, ComponentDNS}

// runs reports whether `up` runs component itself.
func (c *Config) runs(component string) bool { return !slices.Contains(c.Disable, component) }

func (c *Config) defaults() {
	if c.ServiceCIDR == "" {
		c.ServiceCIDR = "10.96.0.0/16"
	}
	if c.NodeCIDR == "" {
		c.NodeCIDR = "172.30.0.0/24"
	}
	if c.PodCIDR == "" {
		c.PodCIDR = "10.244.0.0/16"
	}
	if c.DNSIP == "" {
		c.DNSIP = "10.96.0.10"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if len(c.EchoCommand) == 0 {
		exe, _ := os.Executable()
		c.EchoCommand = []string{exe, "echo"}
	}
}

// Cluster is a running local cluster.
type Cluster struct {
	Config       Config
	ControlPlane *controlplane.ControlPlane
	Network      *Network

	nodes    []NodeInfo
	runtimes []*podRuntime
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	lock     *StateLock
	logFile  *os.File
	// diverted is set while standard error points at logFile.
	diverted bool
	// cg holds the pods' and the cluster DNS's cgroups.
	cg *cgroups
	// podsSynced is closed once every pod existing at start has a worker.
	podsSynced chan struct{}

	// runCtx lives as long as the cluster; each node proxy runs under a
	// context of its own derived from it, so one can be restarted alone.
	runCtx  context.Context
	client  kubernetes.Interface
	proxyMu sync.Mutex
	proxies map[string]*nodeProxy
	// egress is the API server's way to nodes and pods; egressListener its
	// socket.
	egress         *egressProxy
	egressListener net.Listener
}

// nodeProxy is one run of a node's in-process proxy.
type nodeProxy struct {
	cancel context.CancelFunc
	done   chan struct{}
	// synced is closed once the run has programmed every Service.
	synced chan struct{}
}

// Validate checks the configuration (the flags of `up`) without touching
// anything: Start calls it before it writes a file or starts a part, and
// `up` calls it before anything else. Unset fields take their defaults.
func (c Config) Validate() error {
	c.defaults()
	_, err := c.parse()
	return err
}

// parsed is a validated Config's addresses.
type parsed struct {
	network *Network
	service netip.Prefix
}

func (c Config) parse() (parsed, error) {
	if c.Nodes < 1 {
		return parsed{}, fmt.Errorf("--nodes must be at least 1, got %d", c.Nodes)
	}
	if c.ProxyMode != "" && !slices.Contains(proxy.Modes, c.ProxyMode) {
		return parsed{}, fmt.Errorf("--proxy-mode %q: want one of %v", c.ProxyMode, proxy.Modes)
	}
	for _, d := range c.Disable {
		if !slices.Contains(Components, d) {
			return parsed{}, fmt.Errorf("--disable %q: want a list of %s", d, strings.Join(Components, ", "))
		}
	}
	if c.APIServerPort < 0 || c.APIServerPort > 65535 {
		return parsed{}, fmt.Errorf("--apiserver-port %d: want 0 (any free port) to 65535", c.APIServerPort)
	}
	if c.StateDir == "" {
		return parsed{}, errors.New("--state-dir: empty path")
	}
	if fi, err := os.Stat(c.StateDir); err == nil && !fi.IsDir() {
		return parsed{}, fmt.Errorf("--state-dir %s: not a directory", c.StateDir)
	}
	nodeCIDR, err := netip.ParsePrefix(c.NodeCIDR)
	if err != nil {
		return parsed{}, fmt.Errorf("--node-cidr %q: %w", c.NodeCIDR, err)
	}
	podCIDR, err := netip.ParsePrefix(c.PodCIDR)
	if err != nil {
		return parsed{}, fmt.Errorf("--pod-cidr %q: %w", c.PodCIDR, err)
	}
	svcCIDR, err := netip.ParsePrefix(c.ServiceCIDR)
	if err != nil {
		return parsed{}, fmt.Errorf("--service-cidr %q: %w", c.ServiceCIDR, err)
	}
	dnsIP, err := netip.ParseAddr(c.DNSIP)
	if err != nil {
		return parsed{}, fmt.Errorf("--cluster-dns %q: %w", c.DNSIP, err)
	}
	if !svcCIDR.Contains(dnsIP) {
		return parsed{}, fmt.Errorf("--cluster-dns %s: not in --service-cidr %s (it is the kube-dns Service's ClusterIP)", dnsIP, svcCIDR)
	}
	cp := controlplane.Config{StateDir: c.StateDir, ServiceCIDR: c.ServiceCIDR, NodePortRange: c.NodePortRange, APIServerPort: c.APIServerPort}
	if err := cp.Validate(); err != nil {
		return parsed{}, err
	}
	dir, err := filepath.Abs(c.StateDir)
	if err != nil {
		return parsed{}, fmt.Errorf("--state-dir %s: %w", c.StateDir, err)
	}
	network := NewNetwork(dir, nodeCIDR, podCIDR)
	if err := network.Validate(svcCIDR, c.Nodes); err != nil {
		return parsed{}, err
	}
	return parsed{network: network, service: svcCIDR}, nil
}

// Start brings the cluster up: it locks the state directory, starts the
// control plane and upstream's controllers (all but the EndpointSlice
// controller, which is ours), builds (or adopts) the node and pod network,
// registers the nodes and starts the scheduler, each node's pod runtime,
// cluster DNS and node proxies. It returns when the API is ready, the nodes
// are Ready, every node's proxy has programmed the objects that exist, DNS
// answers on every node, and the pods it had to restart are Ready again.
// What an earlier run left running on the same state directory (namespaces,
// rules, pods' processes, DNS) is adopted, not rebuilt, so a restart of `up`
// does not interrupt traffic. Stop ends the control plane and leaves that
// data plane running; Down removes it.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	cfg.defaults()
	p, err := cfg.parse()
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	cfg.StateDir = dir
	network, svcCIDR := p.network, p.service
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("switchboard up creates network namespaces and needs root (run it with sudo)")
	}
	lock, err := LockStateDir(dir)
	if err != nil {
		return nil, err
	}
	cg, err := newCgroups(network.Prefix)
	if err != nil {
		lock.Release()
		return nil, err
	}
	c := &Cluster{Config: cfg, Network: network, lock: lock, cg: cg}
	for _, d := range []string{filepath.Join(dir, "logs", "pods"), filepath.Join(dir, "run", "pods")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			lock.Release()
			return nil, err
		}
	}
	c.logFile, err = os.OpenFile(filepath.Join(dir, "logs", "control-plane.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		lock.Release()
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	// Cancelling ctx while the cluster starts (Ctrl-C during a long start)
	// gives up at once; once started, the cluster lives until Stop.
	starting := make(chan struct{})
	defer close(starting)
	go func() {
		select {
		case <-ctx.Done():
			cancel()
		case <-starting:
		}
	}()
	fail := func(err error) (*Cluster, error) {
		c.Stop()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("interrupted while starting: %w", context.Cause(ctx))
		}
		return nil, err
	}
	if cfg.Terminal != nil {
		if err := divertStderr(c.logFile, cfg.Terminal); err != nil {
			return fail(err)
		}
		c.diverted = true
	}
	phase := time.Now()
	progress := func(format string, args ...any) {
		if cfg.Terminal != nil {
			fmt.Fprintf(cfg.Terminal, "switchboard: "+format+" (%.1fs)\n", append(args, time.Since(phase).Seconds())...)
		}
		phase = time.Now()
	}
	c.egress = &egressProxy{log: cfg.Logger}
	egressSocket := filepath.Join(dir, "egress.sock")
	if c.egressListener, err = c.egress.listen(egressSocket); err != nil {
		return fail(err)
	}
	go c.egress.serve(c.egressListener)
	c.ControlPlane, err = controlplane.Start(runCtx, controlplane.Config{
		StateDir:            dir,
		ServiceCIDR:         cfg.ServiceCIDR,
		NodePortRange:       cfg.NodePortRange,
		APIServerPort:       apiServerPort(dir, cfg.APIServerPort),
		AdvertiseAddress:    network.ControlPlaneIP(),
		ClusterEgressSocket: egressSocket,
		Profiling:           cfg.Profiling,
		LogOutput:           c.logFile,
	})
	if err != nil {
		return fail(err)
	}
	restCfg := c.ControlPlane.RESTConfig
	if err := controlplane.StartControllerManager(runCtx, c.ControlPlane, controlplane.KubeControllers); err != nil {
		return fail(err)
	}
	if cfg.runs(ComponentController) {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			if err := endpointslice.Run(runCtx, restCfg, endpointslice.Options{Logger: cfg.Logger}, 4); err != nil && runCtx.Err() == nil {
				cfg.Logger.Error("endpointslice controller stopped", "err", err)
			}
		}()
		progress("control plane ready: etcd, kube-apiserver, controllers")
	} else {
		progress("control plane ready: etcd, kube-apiserver, controllers (no EndpointSlice controller: --disable %s)", ComponentController)
	}
	if err := c.startNodes(runCtx, restCfg, svcCIDR, progress); err != nil {
		return fail(err)
	}
	if err := c.waitServing(ctx); err != nil {
		return fail(err)
	}
	return c, nil
}

// nodeSetUpParallelism bounds how many nodes are wired and registered at
// once: each waits on a namespace being created and a few API round trips.
const nodeSetUpParallelism = 8

// startNodes builds the network, registers the nodes and starts the
// scheduler, the pod runtimes, cluster DNS and the node proxies, reporting
// each phase through progress.
func (c *Cluster) startNodes(ctx context.Context, restCfg *rest.Config, svcCIDR netip.Prefix, progress func(string, ...any)) error {
	cfg, n := c.Config, c.Network
	// The network an earlier run left is kept when it is the same one;
	// otherwise its leftovers (and everything running in them) go first.
	adopt := c.canAdoptDataplane(svcCIDR)
	if !adopt {
		if err := c.removeDataplane(); err != nil {
			return err
		}
		if err := n.SetUpBridge(); err != nil {
			return fmt.Errorf("cluster network: %w", err)
		}
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	c.nodes = make([]NodeInfo, cfg.Nodes)
	for i := range c.nodes {
		name := fmt.Sprintf("node-%d", i+1)
		c.nodes[i] = NodeInfo{Name: name, NetNS: "/run/netns/" + n.NodeNS(name), IP: n.NodeIP(i + 1),
			PodCIDR: n.NodePodCIDR(i + 1), Zone: zones[i%len(zones)], StateDir: cfg.StateDir}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(nodeSetUpParallelism)
	for i, info := range c.nodes {
		g.Go(func() error {
			if !adopt {
				if err := n.SetUpNode(i+1, cfg.Nodes, info.Name, svcCIDR); err != nil {
					return fmt.Errorf("node %s: %w", info.Name, err)
				}
			}
			return registerNode(gctx, client, info)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	nodeLabels := map[string]labels.Set{}
	for _, info := range c.nodes {
		nodeLabels[info.Name] = labels.Set{corev1.LabelHostname: info.Name, corev1.LabelTopologyZone: info.Zone, corev1.LabelOSStable: "linux"}
		c.wg.Add(1)
		go func() { defer c.wg.Done(); keepNodeReady(ctx, client, info, cfg.Logger) }()
	}
	progress("%s ready", plural(len(c.nodes), "node"))
	if err := c.saveDataplane(svcCIDR); err != nil {
		return err
	}
	if err := sweepOrphans(ctx, client, c.cg, n, c.recordsDir(), c.nodes, cfg.Logger); err != nil {
		return err
	}
	c.egress.setNodes(c.nodes)
	if err := c.exposeAPIServer(ctx); err != nil {
		return err
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	startScheduler(ctx, client, factory, c.nodes, nodeLabels, cfg.Logger)
	host := poddns.HostConfig()
	resolv := func(p *corev1.Pod) (string, error) {
		return poddns.ResolvConf(p, []string{cfg.DNSIP}, "cluster.local", host)
	}
	var regs []cache.InformerSynced
	for _, info := range c.nodes {
		rt := &podRuntime{node: info, net: n, client: client, log: cfg.Logger, logDir: filepath.Join(cfg.StateDir, "logs", "pods"),
			echoCmd: cfg.EchoCommand, resolv: resolv, exe: selfExe, cg: c.cg, records: c.recordsDir(), zone: "cluster.local",
			workers: map[types.UID]*podWorker{}, rejected: map[types.UID]struct{}{}, ips: map[netip.Addr]types.UID{}}
		reg, err := rt.start(ctx, factory)
		if err != nil {
			return fmt.Errorf("node %s: watch pods: %w", info.Name, err)
		}
		regs = append(regs, reg.HasSynced)
		c.runtimes = append(c.runtimes, rt)
	}
	auth, err := kubeletapi.NewAuth(client, c.ControlPlane.PKI.CACert())
	if err != nil {
		return err
	}
	pods := factory.Core().V1().Pods().Lister()
	for _, rt := range c.runtimes {
		if err := c.startKubelet(ctx, rt, pods, auth); err != nil {
			return err
		}
	}
	c.removeLogsOfGonePods(ctx, factory)
	factory.Start(ctx.Done())
	c.podsSynced = make(chan struct{})
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), regs...) {
			close(c.podsSynced)
		}
	}()
	if cfg.runs(ComponentDNS) {
		if err := c.startClusterDNS(ctx, client); err != nil {
			return err
		}
		progress("cluster DNS serving at %s on %s", cfg.DNSIP, plural(len(c.nodes), "node"))
	} else {
		if err := c.stopClusterDNS(ctx, client); err != nil {
			return err
		}
		progress("no cluster DNS (--disable %s): pods' resolv.conf names %s", ComponentDNS, cfg.DNSIP)
	}
	// The proxies get a client of their own: N of them list and watch at
	// once, and the shared client's rate limit would queue them.
	proxyCfg := rest.CopyConfig(restCfg)
	proxyCfg.QPS, proxyCfg.Burst = -1, 0
	proxyClient, err := kubernetes.NewForConfig(proxyCfg)
	if err != nil {
		return err
	}
	c.runCtx, c.client = ctx, proxyClient
	c.proxyMu.Lock()
	c.proxies = map[string]*nodeProxy{}
	if !cfg.runs(ComponentProxy) {
		c.proxyMu.Unlock()
		progress("no node proxies (--disable %s)", ComponentProxy)
		return nil
	}
	var started []*nodeProxy
	for _, info := range c.nodes {
		started = append(started, c.startProxy(info))
	}
	c.proxyMu.Unlock()
	for i, p := range started {
		select {
		case <-p.synced:
		case <-p.done:
			return fmt.Errorf("node proxy of %s stopped before programming its rules (see the log)", c.nodes[i].Name)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	progress("node proxies programmed on %s", plural(len(c.nodes), "node"))
	return nil
}

// removeLogsOfGonePods deletes, once the pods are listed, the log
// directories of pods deleted while the cluster was down; a pod deleted
// while it runs has its logs removed by its runtime, as the kubelet does.
func (c *Cluster) removeLogsOfGonePods(ctx context.Context, factory informers.SharedInformerFactory) {
	logDir := filepath.Join(c.Config.StateDir, "logs", "pods")
	inf := factory.Core().V1().Pods().Informer()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			return
		}
		entries, _ := os.ReadDir(logDir)
		for _, e := range entries {
			// NAMESPACE_NAME_UID: neither a namespace nor a pod name
			// contains "_".
			parts := strings.Split(e.Name(), "_")
			if !e.IsDir() || len(parts) != 3 {
				continue
			}
			obj, exists, _ := inf.GetStore().GetByKey(parts[0] + "/" + parts[1])
			if exists && string(obj.(*corev1.Pod).UID) == parts[2] {
				continue
			}
			os.RemoveAll(filepath.Join(logDir, e.Name()))
		}
	}()
}

// plural is "1 node", "3 nodes".
func plural(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// startProxy starts a run of the node's proxy; the caller holds proxyMu.
func (c *Cluster) startProxy(info NodeInfo) *nodeProxy {
	ctx, cancel := context.WithCancel(c.runCtx)
	p := &nodeProxy{cancel: cancel, done: make(chan struct{}), synced: make(chan struct{})}
	var once sync.Once
	c.proxies[info.Name] = p
	log := c.Config.Logger
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer close(p.done)
		// One node proxy per node, in process, programming that node's
		// namespace, exactly as `switchboard proxy` would on a real node.
		err := proxy.Run(ctx, proxy.Config{Mode: c.Config.ProxyMode, Client: c.client, NodeName: info.Name, NodeIPs: []netip.Addr{info.IP},
			NetNS: info.NetNS, ClusterCIDRs: []netip.Prefix{c.Network.PodCIDR},
			HealthzBindAddress: "0.0.0.0:10256", MetricsBindAddress: "127.0.0.1:10249", Logger: log,
			OnInitialSync: func() { once.Do(func() { close(p.synced) }) }})
		if err != nil && ctx.Err() == nil {
			log.Error("node proxy stopped", "node", info.Name, "err", err)
		}
	}()
	return p
}

// RestartProxy stops the node's in-process proxy and starts a new one, as
// restarting kube-proxy (or `switchboard proxy`) on a real node would. The
// rules stay in the node's namespace in between, and the new run adopts the
// table it finds and converges from there, so established connections
// keep flowing: that is what this is for (end-to-end tests of a proxy
// restart under traffic). It returns once the old run has ended and the new
// one has started, not when the new one has synced; ctx bounds the wait for
// the old run.
func (c *Cluster) RestartProxy(ctx context.Context, node string) error {
	c.proxyMu.Lock()
	defer c.proxyMu.Unlock()
	if !c.Config.runs(ComponentProxy) {
		return fmt.Errorf("restart proxy of node %s: this cluster runs no node proxies (--disable %s)", node, ComponentProxy)
	}
	p := c.proxies[node]
	if p == nil {
		return fmt.Errorf("restart proxy: no node %q in this cluster", node)
	}
	p.cancel()
	select {
	case <-p.done:
	case <-ctx.Done():
		return fmt.Errorf("restart proxy of node %s: the old run did not stop: %w", node, ctx.Err())
	}
	if err := c.runCtx.Err(); err != nil {
		return fmt.Errorf("restart proxy of node %s: cluster stopped", node)
	}
	for _, info := range c.nodes {
		if info.Name == node {
			c.startProxy(info)
		}
	}
	return nil
}

// exposeAPIServer serves the API server at the control-plane address on
// the cluster network, on its own port: that is the endpoint the API
// server's lease reconciler gives the `kubernetes` Service, so pods reach
// it through https://kubernetes.default.svc with the API server's own
// certificate (valid for that address and the Service's).
func (c *Cluster) exposeAPIServer(ctx context.Context) error {
	u, err := url.Parse(c.ControlPlane.RESTConfig.Host)
	if err != nil {
		return fmt.Errorf("API server address %q: %w", c.ControlPlane.RESTConfig.Host, err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		return fmt.Errorf("API server address %q: %w", c.ControlPlane.RESTConfig.Host, err)
	}
	// Also on an adopted network, which an older run may have left
	// without the address.
	if err := c.Network.SetUpControlPlaneAddress(len(c.nodes)); err != nil {
		return err
	}
	addr := netip.AddrPortFrom(c.Network.ControlPlaneIP(), uint16(port))
	return forwardAPIServer(ctx, "/run/netns/"+c.Network.BridgeNS(), addr, u.Host)
}

// Nodes describes the cluster's nodes.
func (c *Cluster) Nodes() []NodeInfo { return c.nodes }

// Stop stops the control plane and this process's part of the cluster
// (pod runtimes, node proxies, controllers) and releases the state
// directory. The data plane stays, as a kubelet's restart leaves its
// containers and kube-proxy's its rules: the namespaces, the proxies'
// rules, the pods' processes and cluster DNS keep serving, and the next
// Start on the same state directory adopts them. Down removes them. The API
// objects stay in etcd.
func (c *Cluster) Stop() {
	for _, rt := range c.runtimes {
		rt.stop()
	}
	if c.cancel != nil {
		c.cancel()
	}
	c.wg.Wait()
	if c.egressListener != nil {
		c.egressListener.Close() // removes the socket file too
	}
	if c.ControlPlane != nil {
		c.ControlPlane.Stop()
	}
	if c.diverted {
		restoreStderr(c.Config.Terminal)
	}
	if c.logFile != nil {
		c.logFile.Close()
	}
	c.lock.Release()
}
