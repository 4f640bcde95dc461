package localcluster

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/switchboard/switchboard/controlplane"
	"github.com/switchboard/switchboard/endpointslice"
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
}

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
	runtimes []*runtime
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	lock     *StateLock
	logFile  *os.File

	// runCtx lives as long as the cluster; each node proxy runs under a
	// context of its own derived from it, so one can be restarted alone.
	runCtx  context.Context
	client  kubernetes.Interface
	proxyMu sync.Mutex
	proxies map[string]*nodeProxy
}

// nodeProxy is one run of a node's in-process proxy.
type nodeProxy struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// Start brings the cluster up: it locks the state directory, starts the
// control plane and the housekeeping controllers, builds the node and pod
// network, registers the nodes and starts the scheduler and each node's pod
// runtime. It returns when the API is ready and the nodes are Ready. Stop
// tears down everything Start made.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	cfg.defaults()
	if cfg.Nodes < 1 {
		return nil, fmt.Errorf("--nodes must be at least 1, got %d", cfg.Nodes)
	}
	nodeCIDR, err := netip.ParsePrefix(cfg.NodeCIDR)
	if err != nil {
		return nil, fmt.Errorf("--node-cidr %q: %w", cfg.NodeCIDR, err)
	}
	podCIDR, err := netip.ParsePrefix(cfg.PodCIDR)
	if err != nil {
		return nil, fmt.Errorf("--pod-cidr %q: %w", cfg.PodCIDR, err)
	}
	svcCIDR, err := netip.ParsePrefix(cfg.ServiceCIDR)
	if err != nil {
		return nil, fmt.Errorf("--service-cidr %q: %w", cfg.ServiceCIDR, err)
	}
	dir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	cfg.StateDir = dir
	network := NewNetwork(dir, nodeCIDR, podCIDR)
	if err := network.Validate(svcCIDR, cfg.Nodes); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("switchboard up creates network namespaces and needs root (run it with sudo)")
	}
	lock, err := LockStateDir(dir)
	if err != nil {
		return nil, err
	}
	c := &Cluster{Config: cfg, Network: network, lock: lock}
	if err := os.MkdirAll(filepath.Join(dir, "logs", "pods"), 0o700); err != nil {
		lock.Release()
		return nil, err
	}
	c.logFile, err = os.OpenFile(filepath.Join(dir, "logs", "control-plane.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		lock.Release()
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	fail := func(err error) (*Cluster, error) {
		c.Stop()
		return nil, err
	}
	c.ControlPlane, err = controlplane.Start(runCtx, controlplane.Config{
		StateDir:      dir,
		ServiceCIDR:   cfg.ServiceCIDR,
		NodePortRange: cfg.NodePortRange,
		APIServerPort: cfg.APIServerPort,
		LogOutput:     c.logFile,
	})
	if err != nil {
		return fail(err)
	}
	restCfg := c.ControlPlane.RESTConfig
	if err := controlplane.StartHousekeeping(runCtx, restCfg); err != nil {
		return fail(err)
	}
	if err := controlplane.StartWorkloadControllers(runCtx, restCfg); err != nil {
		return fail(err)
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if err := endpointslice.Run(runCtx, restCfg, endpointslice.Options{Logger: cfg.Logger}, 4); err != nil && runCtx.Err() == nil {
			cfg.Logger.Error("endpointslice controller stopped", "err", err)
		}
	}()
	if err := c.startNodes(runCtx, restCfg, svcCIDR); err != nil {
		return fail(err)
	}
	return c, nil
}

// startNodes builds the network, registers the nodes and starts the
// scheduler and the pod runtimes.
func (c *Cluster) startNodes(ctx context.Context, restCfg *rest.Config, svcCIDR netip.Prefix) error {
	cfg, n := c.Config, c.Network
	// Leftovers of a crashed run of this state directory go first.
	n.TearDownAll()
	if err := n.SetUpBridge(); err != nil {
		return fmt.Errorf("cluster network: %w", err)
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	nodeLabels := map[string]labels.Set{}
	for i := 1; i <= cfg.Nodes; i++ {
		name := fmt.Sprintf("node-%d", i)
		if err := n.SetUpNode(i, cfg.Nodes, name, svcCIDR); err != nil {
			return fmt.Errorf("node %s: %w", name, err)
		}
		info := NodeInfo{Name: name, NetNS: "/run/netns/" + n.NodeNS(name), IP: n.NodeIP(i),
			PodCIDR: n.NodePodCIDR(i), Zone: zones[(i-1)%len(zones)], StateDir: cfg.StateDir}
		if err := registerNode(ctx, client, info); err != nil {
			return err
		}
		nodeLabels[name] = labels.Set{corev1.LabelHostname: name, corev1.LabelTopologyZone: info.Zone, corev1.LabelOSStable: "linux"}
		c.nodes = append(c.nodes, info)
		c.wg.Add(1)
		go func() { defer c.wg.Done(); keepNodeReady(ctx, client, info, cfg.Logger) }()
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	startScheduler(ctx, client, factory, c.nodes, nodeLabels, cfg.Logger)
	resolv := func(ns string) string {
		return fmt.Sprintf("search %s.svc.cluster.local svc.cluster.local cluster.local\nnameserver %s\noptions ndots:5\n", ns, cfg.DNSIP)
	}
	for _, info := range c.nodes {
		rt := &runtime{node: info, net: n, client: client, log: cfg.Logger, logDir: filepath.Join(cfg.StateDir, "logs", "pods"),
			echoCmd: cfg.EchoCommand, resolv: resolv, workers: map[types.UID]*podWorker{}, ips: map[netip.Addr]types.UID{}}
		rt.start(ctx, factory)
		c.runtimes = append(c.runtimes, rt)
	}
	factory.Start(ctx.Done())
	if err := c.startClusterDNS(ctx, client); err != nil {
		return err
	}
	c.runCtx, c.client = ctx, client
	c.proxyMu.Lock()
	defer c.proxyMu.Unlock()
	c.proxies = map[string]*nodeProxy{}
	for _, info := range c.nodes {
		c.startProxy(info)
	}
	return nil
}

// startProxy starts a run of the node's proxy; the caller holds proxyMu.
func (c *Cluster) startProxy(info NodeInfo) {
	ctx, cancel := context.WithCancel(c.runCtx)
	p := &nodeProxy{cancel: cancel, done: make(chan struct{})}
	c.proxies[info.Name] = p
	log := c.Config.Logger
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer close(p.done)
		// One node proxy per node, in process, programming that node's
		// namespace, exactly as `switchboard proxy` would on a real node.
		err := proxy.Run(ctx, proxy.Config{Client: c.client, NodeName: info.Name, NodeIPs: []netip.Addr{info.IP},
			NetNS: info.NetNS, ClusterCIDRs: []netip.Prefix{c.Network.PodCIDR},
			HealthzBindAddress: "0.0.0.0:10256", MetricsBindAddress: "127.0.0.1:10249", Logger: log})
		if err != nil && ctx.Err() == nil {
			log.Error("node proxy stopped", "node", info.Name, "err", err)
		}
	}()
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

// Nodes describes the cluster's nodes.
func (c *Cluster) Nodes() []NodeInfo { return c.nodes }

// Stop tears the cluster down: pods' processes and every namespace and link
// it made, then the control plane; and releases the state directory. The
// API objects stay in etcd, so the next Start brings them back.
func (c *Cluster) Stop() {
	for _, rt := range c.runtimes {
		rt.stop()
	}
	if c.cancel != nil {
		c.cancel()
	}
	c.wg.Wait()
	c.Network.TearDownAll()
	if c.ControlPlane != nil {
		c.ControlPlane.Stop()
	}
	if c.logFile != nil {
		c.logFile.Close()
	}
	c.lock.Release()
}
