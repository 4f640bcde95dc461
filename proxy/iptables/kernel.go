package iptables

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/switchboard/switchboard/netnamespace"
	"github.com/switchboard/switchboard/proxy/conntrack"
	"github.com/switchboard/switchboard/proxy/nftables"
	"github.com/switchboard/switchboard/proxy/snapshot"
)

// Runner runs the iptables tools of one family (is4: iptables, else
// ip6tables) inside the proxy's network namespace.
type Runner interface {
	// Restore feeds data to "<family>-restore --noflush": one transaction.
	Restore(is4 bool, data []byte) error
	// Save returns "<family>-save -t table".
	Save(is4 bool, table string) ([]byte, error)
	// Run runs "<family> -w args...".
	Run(is4 bool, args ...string) error
	// List returns "<family> -w -t table -S chain": the chain's rules,
	// spelled as iptables-save spells them.
	List(is4 bool, table, chain string) ([]byte, error)
}

// ExecRunner runs the iptables binaries in NetNS (a path like
// /run/netns/NAME; "" is the current namespace).
type ExecRunner struct {
	NetNS string
	// Variant picks the backend of the binaries: "" runs iptables (the
	// one the distribution's alternatives chose), "legacy" or "nft" run
	// iptables-legacy or iptables-nft.
	Variant string
}

func (r ExecRunner) command(is4 bool, suffix string, args ...string) *exec.Cmd {
	name := "ip6tables"
	if is4 {
		name = "iptables"
	}
	if r.Variant != "" {
		name += "-" + r.Variant
	}
	return exec.Command(name+suffix, args...)
}

// run runs c to its end, started from a thread inside r.NetNS (the child
// inherits it): no nsenter process per call.
func (r ExecRunner) run(c *exec.Cmd) error {
	start := c.Start
	if r.NetNS != "" {
		start = func() error { return netnamespace.Do(r.NetNS, c.Start) }
	}
	if err := start(); err != nil {
		return err
	}
	return c.Wait()
}

// Restore implements Runner.
func (r ExecRunner) Restore(is4 bool, data []byte) error {
	c := r.command(is4, "-restore", "-w", "--noflush", "--counters")
	c.Stdin = bytes.NewReader(data)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	if err := r.run(c); err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(c.Args, " "), err, lines(data, out.Bytes()))
	}
	return nil
}

// Save implements Runner.
func (r ExecRunner) Save(is4 bool, table string) ([]byte, error) {
	c := r.command(is4, "-save", "-t", table)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := r.run(c); err != nil {
		return nil, fmt.Errorf("%s: %v: %s", strings.Join(c.Args, " "), err, stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

// Run implements Runner.
func (r ExecRunner) Run(is4 bool, args ...string) error {
	c := r.command(is4, "", append([]string{"-w"}, args...)...)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	if err := r.run(c); err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(c.Args, " "), err, out.Bytes())
	}
	return nil
}

// List implements Runner.
func (r ExecRunner) List(is4 bool, table, chain string) ([]byte, error) {
	c := r.command(is4, "", "-w", "-t", table, "-S", chain)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := r.run(c); err != nil {
		return nil, fmt.Errorf("%s: %v: %s", strings.Join(c.Args, " "), err, stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

// listsChainsCheaply tells whether the tools r runs read one chain without
// the whole table: the nf_tables backend does, legacy loads the table
// for any read.
func (r ExecRunner) listsChainsCheaply() bool {
	if r.Variant != "" {
		return r.Variant == "nft"
	}
	out, err := r.command(true, "", "-V").Output()
	return err == nil && strings.Contains(string(out), "nf_tables")
}

// lines quotes the restore input around the line iptables-restore blamed
// ("Error occurred at line: N"), so an error names the rule.
func lines(data, out []byte) string {
	msg := strings.TrimSpace(string(out))
	var n int
	if i := strings.Index(msg, "line: "); i >= 0 {
		fmt.Sscanf(msg[i+len("line: "):], "%d", &n)
	}
	all := strings.Split(string(data), "\n")
	if n < 1 || n > len(all) {
		return msg
	}
	return msg + " (" + all[n-1] + ")"
}

// Config configures a Kernel.
type Config struct {
	NetNS string
	// NodeIPs are the addresses NodePorts answer on (Options.NodeIPs, the
	// node's own addresses, default to them).
	NodeIPs []netip.Addr
	Options Options
	Logger  *slog.Logger
	// Runner and Conntrack replace the real tools (tests); Variant picks
	// the iptables backend when Runner is nil.
	Runner    Runner
	Conntrack conntrack.Conntrack
	Variant   string
}

// Kernel programs snapshots with iptables-restore, one transaction per
// family per sync. It implements the proxy's Backend.
type Kernel struct {
	cfg Config
	log *slog.Logger
	run Runner
	ct  conntrack.Conntrack
	nl  *netlink.Handle

	mu sync.Mutex
	// applied is what the last successful syncs wrote per Service and
	// family; partial syncs diff against it.
	applied      map[snapshot.ServiceKey][2]Service
	synced       bool
	serviceCIDRs []netip.Prefix
	rules        [2]int
	last         nftables.Written
	// listChains makes Inspect read only the chains it checks, not the
	// whole tables (iptables-save of a large nat table takes seconds).
	listChains bool
}

// New prepares a Kernel for cfg.NetNS; nothing is programmed before the
// first Sync.
func New(cfg Config) (*Kernel, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Options.NodeIPs == nil {
		cfg.Options.NodeIPs = cfg.NodeIPs
	}
	k := &Kernel{cfg: cfg, log: cfg.Logger, run: cfg.Runner, ct: cfg.Conntrack, applied: map[snapshot.ServiceKey][2]Service{}}
	if k.run == nil {
		r := ExecRunner{NetNS: cfg.NetNS, Variant: cfg.Variant}
		k.run, k.listChains = r, r.listsChainsCheaply()
	}
	if k.ct == nil {
		// Without a namespace path, where the process is: no setns,
		// which would need CAP_SYS_ADMIN.
		ns := netns.None()
		if cfg.NetNS != "" {
			var err error
			if ns, err = netns.GetFromPath(cfg.NetNS); err != nil {
				return nil, fmt.Errorf("open network namespace %q: %w", cfg.NetNS, err)
			}
			defer ns.Close()
		}
		var err error
		if k.nl, err = netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER); err != nil {
			return nil, fmt.Errorf("open conntrack netlink socket in %q: %w", cfg.NetNS, err)
		}
		k.ct = k.nl
	}
	return k, nil
}

// Close releases the conntrack socket; the rules stay.
func (k *Kernel) Close() error {
	if k.nl != nil {
		k.nl.Close()
	}
	return nil
}

// Stats reports the rules the transactions left (Rules) and, as Elements,
// the rules of Service chains (iptables has no set elements).
func (k *Kernel) Stats() nftables.Stats {
	k.mu.Lock()
	defer k.mu.Unlock()
	return nftables.Stats{Rules: k.rules[0] + k.rules[1], LastWrite: k.last}
}

// Sync programs snap: everything on changes.Full (or after a failure, or
// when the Service CIDRs changed), else only the chains and rules of the
// Services in changes.Keys, as kube-proxy's partial syncs do.
func (k *Kernel) Sync(snap *snapshot.Snapshot, changes snapshot.Changes) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, _, endpoints := snap.Counts()
	large := endpoints > LargeClusterEndpoints
	if changes.Full || !k.synced || !slices.Equal(snap.ServiceCIDRs, k.serviceCIDRs) || large != k.cfg.Options.LargeCluster {
		// Crossing the large-cluster threshold changes every
		// endpoint chain's rules.
		k.cfg.Options.LargeCluster = large
		err := k.fullSync(snap)
		k.synced = err == nil
		if err == nil {
			conntrack.Clean(k.ct, k.log, conntrack.AllPorts(snap))
		}
		return err
	}
	next := make(map[snapshot.ServiceKey][2]Service, len(changes.Keys))
	var written nftables.Written
	for i, is4 := range []bool{true, false} {
		var p partial
		for _, key := range changes.Keys {
			now := Translate(snap.Get(key), is4, k.cfg.Options)
			p.add(k.applied[key][i], now)
			n := next[key]
			n[i] = now
			next[key] = n
		}
		if p.empty() {
			continue
		}
		if err := k.run.Restore(is4, p.text()); err != nil {
			k.synced = false
			return fmt.Errorf("partial sync in %q: %w", k.cfg.NetNS, err)
		}
		k.rules[i] += p.ruleDelta
		written.Added += p.added
		written.Deleted += p.deleted
	}
	for key, now := range next {
		if len(now[0].Rules)+len(now[1].Rules) == 0 {
			delete(k.applied, key)
		} else {
			k.applied[key] = now
		}
	}
	k.last = written
	conntrack.Clean(k.ct, k.log, conntrack.PortsOf(snap, changes.Keys))
	return nil
}

// gone returns the members of old that are not in now.
func gone[T comparable](old, now []T) []T {
	var out []T
	for _, x := range old {
		if !slices.Contains(now, x) {
			out = append(out, x)
		}
	}
	return out
}

// partial is the restore input of a partial sync in one family: the
// changed Services' chains rewritten, their shared rules deleted and
// inserted one by one, their stale chains deleted.
type partial struct {
	decl, chains, del, ins, drop []string
	filterDel, filterIns         []string
	ruleDelta                    int
	// added and deleted count the rules written and removed.
	added, deleted int
}

func (p *partial) add(old, now Service) {
	oldChains := map[string][]string{}
	for _, c := range old.Chains {
		oldChains[c.Name] = c.Rules
	}
	for _, c := range now.Chains {
		prev, had := oldChains[c.Name]
		delete(oldChains, c.Name)
		if had && slices.Equal(prev, c.Rules) {
			continue
		}
		p.decl = append(p.decl, ":"+c.Name+" - [0:0]")
		for _, r := range c.Rules {
			p.chains = append(p.chains, "-A "+c.Name+" "+r)
		}
		p.ruleDelta += len(c.Rules) - len(prev)
		p.added += len(c.Rules)
		p.deleted += len(prev)
	}
	for name, prev := range oldChains {
		// Flushed now, deleted once nothing jumps to it any more.
		p.decl = append(p.decl, ":"+name+" - [0:0]")
		p.drop = append(p.drop, "-X "+name)
		p.ruleDelta -= len(prev)
		p.deleted += len(prev)
	}
	for _, r := range gone(old.Rules, now.Rules) {
		line := "-D " + r.Chain + " " + r.Spec
		if r.Table == TableNAT {
			p.del = append(p.del, line)
		} else {
			p.filterDel = append(p.filterDel, line)
		}
		p.ruleDelta--
		p.deleted++
	}
	for _, r := range gone(now.Rules, old.Rules) {
		// Inserted at the top: the node-wide rules that must stay last
		// (the NodePort jump, the Service CIDR drop) stay last.
		line := "-I " + r.Chain + " 1 " + r.Spec
		if r.Table == TableNAT {
			p.ins = append(p.ins, line)
		} else {
			p.filterIns = append(p.filterIns, line)
		}
		p.ruleDelta++
		p.added++
	}
}

func (p *partial) empty() bool {
	return len(p.decl)+len(p.del)+len(p.ins)+len(p.drop)+len(p.filterDel)+len(p.filterIns) == 0
}

func (p *partial) text() []byte {
	var b bytes.Buffer
	if len(p.filterDel)+len(p.filterIns) > 0 {
		b.WriteString("*filter\n")
		writeLines(&b, p.filterDel, p.filterIns)
		b.WriteString("COMMIT\n")
	}
	if len(p.decl)+len(p.del)+len(p.ins)+len(p.drop) > 0 {
		b.WriteString("*nat\n")
		// Every chain is declared before any rule jumps to it.
		writeLines(&b, p.decl, p.chains, p.del, p.ins, p.drop)
		b.WriteString("COMMIT\n")
	}
	return b.Bytes()
}

func writeLines(b *bytes.Buffer, groups ...[]string) {
	for _, g := range groups {
		for _, l := range g {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
}

// fullSync rewrites every chain of ours in each family in one transaction
// (the shared chains are flushed and refilled in it, so nothing is ever
// half-programmed), deletes Service chains nothing wants any more, and
// makes sure the built-in chains jump to ours.
//
// The chains there are known from the previous syncs; only the first sync
// and one after a failure list the table (iptables-save of a large nat
// table takes seconds, as kube-proxy notes).
func (k *Kernel) fullSync(snap *snapshot.Snapshot) error {
	applied := translateAll(snap, k.cfg.Options)
	var written nftables.Written
	for i, is4 := range []bool{true, false} {
		var existing []string
		var natSave []byte
		if k.synced {
			for _, s := range k.applied {
				for _, c := range s[i].Chains {
					existing = append(existing, c.Name)
				}
			}
		} else {
			save, err := k.run.Save(is4, TableNAT)
			if err != nil {
				return fmt.Errorf("full sync in %q: %w", k.cfg.NetNS, err)
			}
			existing = chainsOf(save)
			natSave = save
		}
		services := make([]Service, 0, len(applied))
		for _, s := range applied {
			services = append(services, s[i])
		}
		// On a node without our chains the jumps go in first, while the
		// tables are small, as kube-proxy creates its chains and jumps
		// before its restore: the legacy tools read and write a whole
		// table per call, so a -C and an -I after a 200k-rule restore
		// cost about a second each. One save of the filter table and one
		// restore do it, not a process per jump checked and inserted
		// (28 per family, a second or more on a busy node).
		fresh := !k.synced && !slices.Contains(existing, chainServices)
		if fresh {
			filterSave, err := k.run.Save(is4, TableFilter)
			if err != nil {
				return fmt.Errorf("full sync in %q: %w", k.cfg.NetNS, err)
			}
			if err := k.run.Restore(is4, freshJumps(filterSave, natSave)); err != nil {
				return fmt.Errorf("full sync in %q: %w", k.cfg.NetNS, err)
			}
		}
		data, rules := FullText(is4, k.cfg.NodeIPs, snap.ServiceCIDRs, services, existing)
		if err := k.run.Restore(is4, data); err != nil {
			return fmt.Errorf("full sync in %q: %w", k.cfg.NetNS, err)
		}
		if !fresh {
			if err := ensureJumps(k.run, is4); err != nil {
				return fmt.Errorf("full sync in %q: %w", k.cfg.NetNS, err)
			}
		}
		k.rules[i] = rules
		written.Added += rules
	}
	k.applied, k.serviceCIDRs, k.last = applied, snap.ServiceCIDRs, written
	for key, s := range k.applied {
		if len(s[0].Rules)+len(s[1].Rules) == 0 {
			delete(k.applied, key)
		}
	}
	return nil
}

// chainsOf lists the chains an iptables-save dump declares.
func chainsOf(save []byte) []string {
	var out []string
	for _, l := range strings.Split(string(save), "\n") {
		if strings.HasPrefix(l, ":") {
			if f := strings.Fields(l[1:]); len(f) > 0 {
				out = append(out, f[0])
			}
		}
	}
	return out
}

// baseChains are the node-wide chains of each table, with the rules that
// follow the Services' rules in them.
func baseChains(is4 bool, nodePortIPs []netip.Addr, serviceCIDRs []netip.Prefix) (filter, nat []Chain) {
	var nodePorts []string
	for _, ip := range nodePortIPs {
		if ip.Is4() == is4 {
			nodePorts = append(nodePorts, "-d "+host(ip)+" -m comment --comment \"nodeports\" -j "+chainNodePorts)
		}
	}
	var drops []string
	for _, p := range serviceCIDRs {
		if p.Addr().Is4() == is4 {
			drops = append(drops, "-d "+p.Masked().String()+" -m comment --comment \"unallocated Service address\" -j DROP")
		}
	}
	filter = []Chain{
		{Name: chainServices}, {Name: chainExternal}, {Name: chainNodePorts}, {Name: chainProxyFirewall},
		{Name: chainClusterIPs, Rules: drops},
		{Name: chainForward, Rules: []string{
			"-m conntrack --ctstate INVALID -j DROP",
			"-m comment --comment \"forwarding rules\" -m mark --mark " + masqMark + "/" + masqMark + " -j ACCEPT",
			"-m comment --comment \"forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
		}},
	}
	nat = []Chain{
		{Name: chainServices, Rules: nodePorts},
		{Name: chainNodePorts},
		{Name: chainPostrouting, Rules: []string{
			"-m mark ! --mark " + masqMark + "/" + masqMark + " -j RETURN",
			"-j MARK --set-xmark " + masqMark + "/0x0",
			"-m comment --comment \"Service traffic requiring SNAT\" -j MASQUERADE --random-fully",
		}},
		{Name: chainMarkMasq, Rules: []string{"-j MARK --set-xmark " + masqMark + "/" + masqMark}},
	}
	return filter, nat
}

// translateAll translates every Service of snap, in both families, on
// every CPU: Translate is pure, and a full sync waits for all of it.
func translateAll(snap *snapshot.Snapshot, opts Options) map[snapshot.ServiceKey][2]Service {
	type item struct {
		key   snapshot.ServiceKey
		ports []*snapshot.ServicePort
		out   [2]Service
	}
	items := make([]item, 0, snap.Len())
	for key, ports := range snap.All() {
		items = append(items, item{key: key, ports: ports})
	}
	workers := min(runtime.GOMAXPROCS(0), 1+len(items)/256)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(items); i += workers {
				items[i].out = [2]Service{Translate(items[i].ports, true, opts), Translate(items[i].ports, false, opts)}
			}
		})
	}
	wg.Wait()
	applied := make(map[snapshot.ServiceKey][2]Service, len(items))
	for _, it := range items {
		applied[it.key] = it.out
	}
	return applied
}

// FullText renders a full sync of one family: every chain of ours
// declared (and so flushed) and refilled, and the Service chains in
// existing that no Service wants flushed and deleted. NodePorts answer on
// nodePortIPs. It also returns the number of rules written.
//
// The order is what keeps a full sync linear with iptables-nft (1.8.x):
// with --noflush, iptables-nft-restore keeps every chain a line names in a
// list sorted by name, inserting each new name after a walk from the
// smallest one and looking each known one up the same way (nft-cache.c,
// cache_chain_list_insert). Declaring all chains first, in any order, as
// kube-proxy does, makes that n²/2 string comparisons: 12 s of its CPU at
// 1,000 Services × 10 endpoints, minutes at 5,000. Here the node-wide
// chains sort first and are declared first; then the Services come in
// descending order of their chains' common prefix, each declaring its
// chains and writing its rules before the next: every name a line
// carries is then within the few smallest the list holds, so each walk is
// short. iptables-legacy does not care about the order.
func FullText(is4 bool, nodePortIPs []netip.Addr, serviceCIDRs []netip.Prefix, services []Service, existing []string) ([]byte, int) {
	filter, nat := baseChains(is4, nodePortIPs, serviceCIDRs)
	var b bytes.Buffer
	// The text is tens of megabytes at 5,000 Services: sized once, not
	// grown (and copied and cleared) by doubling.
	size := 4096
	for _, s := range services {
		for _, r := range s.Rules {
			size += len(r.Chain) + len(r.Spec) + 5
		}
		for _, c := range s.Chains {
			size += 2*len(c.Name) + 16
			for _, r := range c.Rules {
				size += len(c.Name) + len(r) + 5
			}
		}
	}
	b.Grow(size + 64*len(existing))
	n := 0
	rule := func(chain, spec string) {
		b.WriteString("-A ")
		b.WriteString(chain)
		b.WriteByte(' ')
		b.WriteString(spec)
		b.WriteByte('\n')
		n++
	}
	declare := func(chain string) {
		b.WriteString(":")
		b.WriteString(chain)
		b.WriteString(" - [0:0]\n")
	}
	wanted := map[string]bool{}
	for _, s := range services {
		for _, c := range s.Chains {
			wanted[c.Name] = true
		}
	}
	// Stale chains of this version's naming go with their Service's
	// group (the chains that jump to them are flushed in it, before the
	// delete); older names are declared first and deleted last.
	staleByGroup := map[string][]string{}
	var staleOther []string
	for _, c := range existing {
		if !isServiceChain(c) || wanted[c] {
			continue
		}
		if g := groupOf(c); g != "" {
			staleByGroup[g] = append(staleByGroup[g], c)
		} else {
			staleOther = append(staleOther, c)
		}
	}
	slices.Sort(staleOther)
	staleOther = slices.Compact(staleOther)
	type group struct {
		key      string
		services []*Service
		stale    []string
	}
	groups := make(map[string]*group, len(services)+len(staleByGroup))
	get := func(key string) *group {
		g := groups[key]
		if g == nil {
			g = &group{key: key}
			groups[key] = g
		}
		return g
	}
	for i := range services {
		g := get(services[i].Group)
		g.services = append(g.services, &services[i])
	}
	for key, stale := range staleByGroup {
		slices.Sort(stale)
		get(key).stale = slices.Compact(stale)
	}
	order := make([]*group, 0, len(groups))
	for _, g := range groups {
		order = append(order, g)
	}
	slices.SortFunc(order, func(a, b *group) int { return strings.Compare(b.key, a.key) })

	// filter: node-wide chains only, Services' rules in them.
	b.WriteString("*filter\n")
	for _, c := range filter {
		declare(c.Name)
	}
	// A connection a Service port translated has nothing to do with the
	// per-ClusterIP rejects: one rule saves every such connection a walk
	// over one rule per ClusterIP (partial syncs insert above it, which
	// costs only that shortcut for their few rules).
	rule(chainClusterIPs, "-m conntrack --ctstate DNAT -m comment --comment \"translated\" -j RETURN")
	for _, g := range order {
		for _, s := range g.services {
			for _, r := range s.Rules {
				if r.Table == TableFilter {
					rule(r.Chain, r.Spec)
				}
			}
		}
	}
	for _, c := range filter {
		for _, r := range c.Rules {
			rule(c.Name, r)
		}
	}
	b.WriteString("COMMIT\n")

	b.WriteString("*nat\n")
	for _, c := range nat {
		declare(c.Name)
	}
	for _, c := range staleOther {
		declare(c)
	}
	for _, g := range order {
		for _, s := range g.services {
			for _, c := range s.Chains {
				declare(c.Name)
			}
		}
		for _, c := range g.stale {
			declare(c)
		}
		for _, c := range g.stale {
			b.WriteString("-X " + c + "\n")
		}
		for _, s := range g.services {
			for _, c := range s.Chains {
				for _, r := range c.Rules {
					rule(c.Name, r)
				}
			}
			for _, r := range s.Rules {
				if r.Table == TableNAT {
					rule(r.Chain, r.Spec)
				}
			}
		}
	}
	// The node-wide rules that must come last.
	for _, c := range nat {
		for _, r := range c.Rules {
			rule(c.Name, r)
		}
	}
	for _, c := range staleOther {
		b.WriteString("-X " + c + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.Bytes(), n
}

// jump is a rule in a built-in chain that sends traffic to ours.
type jump struct {
	table, chain string
	args         []string
}

// jumps are kube-proxy's iptablesJumpChains with our chains, in the order
// they end up in the built-in chains.
var jumps = []jump{
	{TableFilter, "INPUT", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "switchboard load balancer firewall", "-j", chainProxyFirewall}},
	{TableFilter, "INPUT", []string{"-m", "comment", "--comment", "switchboard health check service ports", "-j", chainNodePorts}},
	{TableFilter, "INPUT", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "switchboard externally-visible service portals", "-j", chainExternal}},
	{TableFilter, "FORWARD", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "switchboard load balancer firewall", "-j", chainProxyFirewall}},
	{TableFilter, "FORWARD", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "switchboard service portals", "-j", chainServices}},
	{TableFilter, "FORWARD", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "switchboard cluster IPs", "-j", chainClusterIPs}},
	{TableFilter, "FORWARD", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "switchboard externally-visible service portals", "-j", chainExternal}},
	{TableFilter, "FORWARD", []string{"-m", "comment", "--comment", "switchboard forwarding rules", "-j", chainForward}},
	{TableFilter, "OUTPUT", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "switchboard load balancer firewall", "-j", chainProxyFirewall}},
	{TableFilter, "OUTPUT", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "switchboard service portals", "-j", chainServices}},
	{TableFilter, "OUTPUT", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "switchboard cluster IPs", "-j", chainClusterIPs}},
	{TableNAT, "PREROUTING", []string{"-m", "comment", "--comment", "switchboard service portals", "-j", chainServices}},
	{TableNAT, "OUTPUT", []string{"-m", "comment", "--comment", "switchboard service portals", "-j", chainServices}},
	{TableNAT, "POSTROUTING", []string{"-m", "comment", "--comment", "switchboard postrouting rules", "-j", chainPostrouting}},
}

// freshJumps is restore input for a node without chains of ours: it
// declares, empty, the chains the jumps lead to and inserts every jump the
// tables' iptables-save output (filterSave, natSave) does not hold, at the
// top of its built-in chain, leaving them in jumps' order.
func freshJumps(filterSave, natSave []byte) []byte {
	var b bytes.Buffer
	for _, table := range []string{TableFilter, TableNAT} {
		saved := filterSave
		if table == TableNAT {
			saved = natSave
		}
		held := map[string]bool{}
		for _, l := range strings.Split(string(saved), "\n") {
			held[l] = true
		}
		b.WriteString("*" + table + "\n")
		var seen []string
		for _, j := range jumps {
			target := j.args[len(j.args)-1]
			if j.table != table || slices.Contains(seen, target) {
				continue
			}
			seen = append(seen, target)
			b.WriteString(":" + target + " - [0:0]\n")
		}
		for i := len(jumps) - 1; i >= 0; i-- {
			j := jumps[i]
			if j.table != table || held["-A "+j.chain+" "+j.spec()] {
				continue
			}
			b.WriteString("-I " + j.chain + " " + j.spec() + "\n")
		}
		b.WriteString("COMMIT\n")
	}
	return b.Bytes()
}

// spec is the jump's rule as iptables-save prints it: an argument with a
// space (a comment) in double quotes.
func (j jump) spec() string {
	args := make([]string, len(j.args))
	for i, a := range j.args {
		if strings.Contains(a, " ") {
			a = `"` + a + `"`
		}
		args[i] = a
	}
	return strings.Join(args, " ")
}

// ensureJumps inserts the jumps that are missing, at the top of their
// built-in chain (kube-proxy's EnsureRule Prepend); walking the list
// backwards leaves them in its order.
func ensureJumps(r Runner, is4 bool) error {
	for i := len(jumps) - 1; i >= 0; i-- {
		j := jumps[i]
		if r.Run(is4, append([]string{"-t", j.table, "-C", j.chain}, j.args...)...) == nil {
			continue
		}
		if err := r.Run(is4, append([]string{"-t", j.table, "-I", j.chain, "1"}, j.args...)...); err != nil {
			return err
		}
	}
	return nil
}

// Cleanup removes everything this package programs in the namespace of
// r, in both families: the jumps from the built-in chains, then every
// chain of ours. It is kube-proxy's --cleanup for this mode; a node
// switching to another proxy mode runs it.
func Cleanup(r Runner) error {
	var errs []error
	for _, is4 := range []bool{true, false} {
		ours := map[string][]string{}
		for _, table := range []string{TableFilter, TableNAT} {
			save, err := r.Save(is4, table)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, c := range chainsOf(save) {
				if strings.HasPrefix(c, ChainPrefix) {
					ours[table] = append(ours[table], c)
				}
			}
		}
		// A jump needs its target chain: without chains of ours there
		// is nothing to remove, and a node that never ran this mode pays
		// only the reads.
		if len(ours) == 0 {
			continue
		}
		for _, j := range jumps {
			for r.Run(is4, append([]string{"-t", j.table, "-C", j.chain}, j.args...)...) == nil {
				if err := r.Run(is4, append([]string{"-t", j.table, "-D", j.chain}, j.args...)...); err != nil {
					errs = append(errs, err)
					break
				}
			}
		}
		var b bytes.Buffer
		for _, table := range []string{TableFilter, TableNAT} {
			if len(ours[table]) == 0 {
				continue
			}
			b.WriteString("*" + table + "\n")
			for _, c := range ours[table] {
				b.WriteString(":" + c + " - [0:0]\n")
			}
			for _, c := range ours[table] {
				b.WriteString("-X " + c + "\n")
			}
			b.WriteString("COMMIT\n")
		}
		if err := r.Restore(is4, b.Bytes()); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove iptables rules: %v", errs)
	}
	return nil
}

// Inspect reports the rules the last syncs applied for each Service and
// reads them back to find applied rules the kernel no longer holds: with
// the nf_tables backend only the chains they are in (iptables -S), with
// legacy the tables (one iptables-save per table and family).
func (k *Kernel) Inspect(keys ...snapshot.ServiceKey) (map[snapshot.ServiceKey]nftables.ServiceState, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make(map[snapshot.ServiceKey]nftables.ServiceState, len(keys))
	for i, is4 := range []bool{true, false} {
		held := map[string]bool{}
		keep := func(table string, text []byte) {
			for _, l := range strings.Split(string(text), "\n") {
				if strings.HasPrefix(l, "-A ") {
					held[table+" "+l] = true
				}
			}
		}
		if k.listChains {
			type tc struct{ table, chain string }
			chains := map[tc]bool{}
			for _, key := range keys {
				s := k.applied[key][i]
				for _, r := range s.Rules {
					chains[tc{r.Table, r.Chain}] = true
				}
				for _, c := range s.Chains {
					chains[tc{TableNAT, c.Name}] = true
				}
			}
			for c := range chains {
				// A chain that is gone holds none of its rules: they
				// are reported missing.
				if text, err := k.run.List(is4, c.table, c.chain); err == nil {
					keep(c.table, text)
				}
			}
		} else {
			for _, table := range []string{TableFilter, TableNAT} {
				save, err := k.run.Save(is4, table)
				if err != nil {
					return nil, err
				}
				keep(table, save)
			}
		}
		for _, key := range keys {
			st := out[key]
			s := k.applied[key][i]
			check := func(table, line string) {
				st.Applied = append(st.Applied, table+" "+line)
				if !held[table+" "+line] {
					st.Missing = append(st.Missing, table+" "+line)
				}
			}
			for _, r := range s.Rules {
				check(r.Table, "-A "+r.Chain+" "+r.Spec)
			}
			for _, c := range s.Chains {
				for _, r := range c.Rules {
					check(TableNAT, "-A "+c.Name+" "+r)
				}
			}
			out[key] = st
		}
	}
	return out, nil
}
