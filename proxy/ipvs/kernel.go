package ipvs

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	libipvs "github.com/moby/ipvs"
	"golang.org/x/sys/unix"

	"github.com/switchboard/switchboard/proxy/conntrack"
	"github.com/switchboard/switchboard/proxy/nftables"
	"github.com/switchboard/switchboard/proxy/snapshot"
)

// API is the part of the IPVS generic netlink interface the Kernel uses:
// github.com/moby/ipvs's Handle (kube-proxy's, through
// k8s.io/kubernetes/pkg/proxy/ipvs/util) implements it, and Fake keeps
// the same state in memory.
type API interface {
	GetServices() ([]*libipvs.Service, error)
	NewService(*libipvs.Service) error
	UpdateService(*libipvs.Service) error
	DelService(*libipvs.Service) error
	GetDestinations(*libipvs.Service) ([]*libipvs.Destination, error)
	NewDestination(*libipvs.Service, *libipvs.Destination) error
	UpdateDestination(*libipvs.Service, *libipvs.Destination) error
	DelDestination(*libipvs.Service, *libipvs.Destination) error
}

// Addresses are the addresses of the dummy interface that holds the
// Service addresses.
type Addresses interface {
	List() ([]netip.Addr, error)
	Add(netip.Addr) error
	Del(netip.Addr) error
}

// Filter applies the packet-filter table (an nft script, FilterText).
type Filter interface {
	Apply(script []byte) error
}

// nodePortRecord is what a Filter that can read the table back offers:
// the NodePort virtual servers it records (sets nodeports4/6).
type nodePortRecord interface {
	NodePorts() ([]ServerKey, error)
}

// Config configures a Kernel.
type Config struct {
	NetNS   string
	Options Options
	Logger  *slog.Logger
	// IPVS, Addresses and Filter replace the kernel (tests: Fake); nil
	// opens the real ones in NetNS.
	IPVS      API
	Addresses Addresses
	Filter    Filter
	// Conntrack clears stale UDP flows; nil uses the conntrack socket
	// opened with the real kernel edges, or clears none when all three
	// above are given (tests with fakes must not touch the conntrack
	// table of the namespace they run in).
	Conntrack conntrack.Conntrack
	// DrainCheck is how often removed real servers still holding
	// connections are looked at (0: DrainCheckInterval).
	DrainCheck time.Duration
}

// Kernel programs snapshots into IPVS, the dummy interface and the filter
// table. It implements the proxy's Backend.
type Kernel struct {
	cfg   Config
	log   *slog.Logger
	ipvs  API
	addrs Addresses
	nft   Filter
	ct    conntrack.Conntrack
	close func()

	mu sync.Mutex
	// applied is what the syncs programmed per Service; vipUsers counts
	// the Services holding each dummy address (externalIPs may be shared).
	applied  map[snapshot.ServiceKey]Service
	vipUsers map[netip.Addr]int
	// filterUsers counts the Services holding each element of the filter
	// table, so a partial sync adds an element with its first user and
	// deletes it with its last.
	filterUsers map[filterElem]int
	// draining are the real servers removed while they held connections:
	// at weight 0 until DrainTerminated deletes them.
	draining map[realKey]struct{}
	synced   bool
	servers  int
	reals    int
	last     nftables.Written
}

// New prepares a Kernel; nothing is programmed before the first Sync.
func New(cfg Config) (*Kernel, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	k := &Kernel{cfg: cfg, log: cfg.Logger, ipvs: cfg.IPVS, addrs: cfg.Addresses, nft: cfg.Filter, ct: cfg.Conntrack,
		applied: map[snapshot.ServiceKey]Service{}, vipUsers: map[netip.Addr]int{},
		filterUsers: map[filterElem]int{}, draining: map[realKey]struct{}{}, close: func() {}}
	if k.ipvs == nil || k.addrs == nil || k.nft == nil {
		live, err := openLive(cfg.NetNS)
		if err != nil {
			return nil, err
		}
		k.close = live.close
		if k.ipvs == nil {
			k.ipvs = live.ipvs
		}
		if k.addrs == nil {
			k.addrs = live.addrs
		}
		if k.nft == nil {
			k.nft = live.nft
		}
		if k.ct == nil {
			k.ct = live.ct
		}
	}
	interval := cfg.DrainCheck
	if interval <= 0 {
		interval = DrainCheckInterval
	}
	stop := make(chan struct{})
	go k.drainLoop(interval, stop)
	closeLive := k.close
	k.close = func() { close(stop); closeLive() }
	return k, nil
}

// Close releases the netlink sockets; what is programmed stays.
func (k *Kernel) Close() error {
	k.close()
	return nil
}

// Stats reports the virtual servers (Rules) and real servers (Elements)
// programmed.
func (k *Kernel) Stats() nftables.Stats {
	k.mu.Lock()
	defer k.mu.Unlock()
	return nftables.Stats{Rules: k.servers, Elements: k.reals, LastWrite: k.last}
}

// Sync programs snap: on changes.Full (or after a failure) every Service,
// removing the virtual servers on our addresses nothing wants; else only
// the Services in changes.Keys, diffed against what was applied. The
// filter table is rewritten whole in one transaction on a full sync; a
// partial sync writes, in one transaction, only the set elements the
// changed Services added or dropped (as the nftables mode diffs desired
// against applied elements). After a successful sync the stale UDP
// conntrack entries of the Services it programmed are cleared (package
// conntrack; IPVS connections have conntrack entries, net/ipv4/vs/conntrack
// being set): of all of them after a full one, as kube-proxy's ipvs
// proxier does.
func (k *Kernel) Sync(snap *snapshot.Snapshot, changes snapshot.Changes) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	var w nftables.Written
	var err error
	full := changes.Full || !k.synced
	if full {
		err = k.fullSync(snap, &w)
		if err == nil {
			err = k.nft.Apply(FilterText(k.all(), k.cfg.Options.ClusterCIDRs))
		}
	} else {
		// before holds the user count, ahead of this sync, of every
		// filter element a changed Service held or now holds.
		before := map[filterElem]int{}
		for _, key := range changes.Keys {
			old := k.applied[key]
			now := Translate(snap.Get(key), k.cfg.Options)
			if err = k.apply(old, now, &w); err != nil {
				break
			}
			k.remember(key, now)
			k.useFilter(old, now, before)
		}
		if err == nil {
			var add, del []filterElem
			for e, n := range before {
				switch after := k.filterUsers[e]; {
				case n == 0 && after > 0:
					add = append(add, e)
				case n > 0 && after == 0:
					del = append(del, e)
				}
			}
			if script := FilterDelta(add, del); script != nil {
				err = k.nft.Apply(script)
			}
		}
	}
	k.synced = err == nil
	if err != nil {
		return fmt.Errorf("ipvs sync in %q: %w", k.cfg.NetNS, err)
	}
	k.last = w
	if full {
		conntrack.Clean(k.ct, k.log, conntrack.AllPorts(snap))
	} else {
		conntrack.Clean(k.ct, k.log, conntrack.PortsOf(snap, changes.Keys))
	}
	return nil
}

// useFilter moves the filter element counts from old's elements to
// now's, noting in before each touched element's count ahead of the sync.
func (k *Kernel) useFilter(old, now Service, before map[filterElem]int) {
	for _, e := range filterElems(old) {
		if _, ok := before[e]; !ok {
			before[e] = k.filterUsers[e]
		}
		if k.filterUsers[e]--; k.filterUsers[e] <= 0 {
			delete(k.filterUsers, e)
		}
	}
	for _, e := range filterElems(now) {
		if _, ok := before[e]; !ok {
			before[e] = k.filterUsers[e]
		}
		k.filterUsers[e]++
	}
}

func (k *Kernel) all() []Service {
	out := make([]Service, 0, len(k.applied))
	for _, s := range k.applied {
		out = append(out, s)
	}
	return out
}

func (k *Kernel) remember(key snapshot.ServiceKey, s Service) {
	if len(s.Servers)+len(s.VIPs) == 0 {
		delete(k.applied, key)
		return
	}
	k.applied[key] = s
}

// fullSync reads the kernel's virtual servers and addresses, programs
// every Service against them and removes ours that nothing wants.
func (k *Kernel) fullSync(snap *snapshot.Snapshot, w *nftables.Written) error {
	want := map[snapshot.ServiceKey]Service{}
	wantServers := map[ServerKey]VirtualServer{}
	wantVIPs := map[netip.Addr]int{}
	for key, ports := range snap.All() {
		s := Translate(ports, k.cfg.Options)
		want[key] = s
		for _, vs := range s.Servers {
			wantServers[vs.ServerKey] = vs
		}
		for _, a := range s.VIPs {
			wantVIPs[a]++
		}
	}
	have, err := k.ipvs.GetServices()
	if err != nil {
		return fmt.Errorf("list virtual servers: %w", err)
	}
	addrs, err := k.addrs.List()
	if err != nil {
		return fmt.Errorf("list Service addresses: %w", err)
	}
	// Ours are the virtual servers on the dummy interface's addresses
	// and the NodePort ones switchboard created: those applied before and
	// those the filter table records (a previous run's); other users'
	// virtual servers on node addresses are left alone.
	nodePorts := map[ServerKey]bool{}
	for _, s := range k.applied {
		for _, vs := range s.Servers {
			if !slices.Contains(s.VIPs, vs.Addr) {
				nodePorts[vs.ServerKey] = true
			}
		}
	}
	if r, ok := k.nft.(nodePortRecord); ok {
		recorded, err := r.NodePorts()
		if err != nil {
			return err
		}
		for _, key := range recorded {
			nodePorts[key] = true
		}
	}
	ours := func(key ServerKey) bool {
		_, wanted := wantServers[key]
		return slices.Contains(addrs, key.Addr) || wantVIPs[key.Addr] > 0 || nodePorts[key] || wanted
	}
	for _, h := range have {
		key, ok := serverKey(h)
		if !ok || !ours(key) {
			continue
		}
		vs, wanted := wantServers[key]
		if !wanted {
			if err := k.ipvs.DelService(h); err != nil {
				return fmt.Errorf("delete virtual server %s: %w", key, err)
			}
			k.forgetDrains(key)
			w.Deleted++
			continue
		}
		if err := k.syncServer(h, vs, w); err != nil {
			return err
		}
		delete(wantServers, key)
	}
	for _, vs := range wantServers {
		if err := k.newServer(vs, w); err != nil {
			return err
		}
	}
	for _, a := range addrs {
		if wantVIPs[a] == 0 {
			if err := k.addrs.Del(a); err != nil {
				return fmt.Errorf("remove address %s: %w", a, err)
			}
		}
	}
	for a := range wantVIPs {
		if !slices.Contains(addrs, a) {
			if err := k.addrs.Add(a); err != nil {
				return fmt.Errorf("add address %s: %w", a, err)
			}
		}
	}
	k.applied, k.vipUsers, k.filterUsers = map[snapshot.ServiceKey]Service{}, wantVIPs, map[filterElem]int{}
	k.servers, k.reals = 0, 0
	for key, s := range want {
		k.remember(key, s)
		k.count(s, 1)
		for _, e := range filterElems(s) {
			k.filterUsers[e]++
		}
	}
	return nil
}

// syncServer makes the kernel's virtual server h what vs says: its
// scheduler and persistence, and its real servers.
func (k *Kernel) syncServer(h *libipvs.Service, vs VirtualServer, w *nftables.Written) error {
	want := toService(vs)
	if h.SchedName != want.SchedName || h.Flags&persistent != want.Flags&persistent || h.Timeout != want.Timeout {
		if err := k.ipvs.UpdateService(want); err != nil {
			return fmt.Errorf("update virtual server %s: %w", vs.ServerKey, err)
		}
		w.Added++
	}
	dests, err := k.ipvs.GetDestinations(h)
	if err != nil {
		return fmt.Errorf("list real servers of %s: %w", vs.ServerKey, err)
	}
	var have []RealServer
	for _, d := range dests {
		a, _ := netip.AddrFromSlice(d.Address)
		have = append(have, RealServer{Addr: netip.AddrPortFrom(a.Unmap(), d.Port), Weight: d.Weight})
	}
	return k.syncReals(want, vs.ServerKey, have, vs.Reals, dests, w)
}

// syncReals moves virtual server key's real servers from have to want:
// one no longer wanted is removed gracefully (removeReal), one wanted
// again while draining is replaced, a weight that differs is updated.
// dests are the kernel's real servers with their connection counts when
// the caller read them (nil: read once, if a removal needs them).
func (k *Kernel) syncReals(svc *libipvs.Service, key ServerKey, have, want []RealServer, dests []*libipvs.Destination, w *nftables.Written) error {
	wantW := make(map[netip.AddrPort]int, len(want))
	for _, r := range want {
		wantW[r.Addr] = r.Weight
	}
	held := make(map[netip.AddrPort]bool, len(have))
	for _, r := range have {
		held[r.Addr] = true
		weight, wanted := wantW[r.Addr]
		_, draining := k.draining[realKey{key, r.Addr}]
		switch {
		case !wanted:
			if err := k.removeReal(svc, key, r, &dests, w); err != nil {
				return err
			}
		case draining:
			held[r.Addr] = false
		case r.Weight != weight:
			if err := k.ipvs.UpdateDestination(svc, toDestination(RealServer{Addr: r.Addr, Weight: weight})); err != nil {
				return fmt.Errorf("update real server %s of %s: %w", r.Addr, key, err)
			}
			w.Added++
		}
	}
	for _, r := range want {
		if held[r.Addr] {
			continue
		}
		if err := k.undrain(svc, key, r); err != nil {
			return err
		}
		if err := k.ipvs.NewDestination(svc, toDestination(r)); err != nil {
			return fmt.Errorf("add real server %s to %s: %w", r.Addr, key, err)
		}
		w.Added++
	}
	return nil
}

func (k *Kernel) newServer(vs VirtualServer, w *nftables.Written) error {
	svc := toService(vs)
	if err := k.ipvs.NewService(svc); err != nil {
		return fmt.Errorf("add virtual server %s: %w", vs.ServerKey, err)
	}
	w.Added++
	return k.syncReals(svc, vs.ServerKey, nil, vs.Reals, nil, w)
}

// apply moves one Service from old to now: virtual servers and real
// servers diffed against what was applied (not read back), addresses
// added and removed as their last user comes and goes.
func (k *Kernel) apply(old, now Service, w *nftables.Written) error {
	oldBy := map[ServerKey]VirtualServer{}
	for _, vs := range old.Servers {
		oldBy[vs.ServerKey] = vs
	}
	for _, vs := range now.Servers {
		prev, had := oldBy[vs.ServerKey]
		delete(oldBy, vs.ServerKey)
		switch {
		case !had:
			if err := k.newServer(vs, w); err != nil {
				return err
			}
		default:
			svc := toService(vs)
			if prev.Scheduler != vs.Scheduler || prev.Timeout != vs.Timeout {
				if err := k.ipvs.UpdateService(svc); err != nil {
					return fmt.Errorf("update virtual server %s: %w", vs.ServerKey, err)
				}
				w.Added++
			}
			if err := k.syncReals(svc, vs.ServerKey, prev.Reals, vs.Reals, nil, w); err != nil {
				return err
			}
		}
	}
	for _, vs := range oldBy {
		if err := k.ipvs.DelService(toService(vs)); err != nil {
			return fmt.Errorf("delete virtual server %s: %w", vs.ServerKey, err)
		}
		k.forgetDrains(vs.ServerKey)
		w.Deleted++
	}
	for _, a := range now.VIPs {
		if !slices.Contains(old.VIPs, a) {
			if k.vipUsers[a] == 0 {
				if err := k.addrs.Add(a); err != nil {
					return fmt.Errorf("add address %s: %w", a, err)
				}
			}
			k.vipUsers[a]++
		}
	}
	for _, a := range old.VIPs {
		if !slices.Contains(now.VIPs, a) {
			k.vipUsers[a]--
			if k.vipUsers[a] <= 0 {
				delete(k.vipUsers, a)
				if err := k.addrs.Del(a); err != nil {
					return fmt.Errorf("remove address %s: %w", a, err)
				}
			}
		}
	}
	k.count(old, -1)
	k.count(now, 1)
	return nil
}

func (k *Kernel) count(s Service, sign int) {
	k.servers += sign * len(s.Servers)
	for _, vs := range s.Servers {
		k.reals += sign * len(vs.Reals)
	}
}

// persistent is IP_VS_SVC_F_PERSISTENT.
const persistent = 0x1

func protoNumber(p string) uint16 {
	switch p {
	case "UDP":
		return unix.IPPROTO_UDP
	case "SCTP":
		return unix.IPPROTO_SCTP
	}
	return unix.IPPROTO_TCP
}

func protoName(n uint16) (string, bool) {
	switch n {
	case unix.IPPROTO_TCP:
		return "TCP", true
	case unix.IPPROTO_UDP:
		return "UDP", true
	case unix.IPPROTO_SCTP:
		return "SCTP", true
	}
	return "", false
}

func family(a netip.Addr) uint16 {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// toService is vs as the IPVS API takes it (as kube-proxy's
// toIPVSService: persistence with a full netmask).
func toService(vs VirtualServer) *libipvs.Service {
	s := &libipvs.Service{Address: net.IP(vs.Addr.AsSlice()), Protocol: protoNumber(vs.Protocol), Port: vs.Port,
		SchedName: vs.Scheduler, AddressFamily: family(vs.Addr), Netmask: 0xffffffff}
	if vs.Addr.Is6() {
		s.Netmask = 128
	}
	if vs.Timeout > 0 {
		s.Flags |= persistent
		s.Timeout = vs.Timeout
	}
	return s
}

func toDestination(r RealServer) *libipvs.Destination {
	return &libipvs.Destination{Address: net.IP(r.Addr.Addr().AsSlice()), Port: r.Addr.Port(), Weight: r.Weight,
		AddressFamily: family(r.Addr.Addr()), ConnectionFlags: libipvs.ConnectionFlagMasq}
}

// serverKey names a kernel virtual server (false for firewall-mark ones).
func serverKey(s *libipvs.Service) (ServerKey, bool) {
	a, ok := netip.AddrFromSlice(s.Address)
	p, known := protoName(s.Protocol)
	if !ok || !known || s.FWMark != 0 {
		return ServerKey{}, false
	}
	return ServerKey{Addr: a.Unmap(), Protocol: p, Port: s.Port}, true
}

// Inspect reports, per Service, the virtual and real servers the syncs
// applied and which of them the kernel no longer holds (read back through
// the IPVS API).
func (k *Kernel) Inspect(keys ...snapshot.ServiceKey) (map[snapshot.ServiceKey]nftables.ServiceState, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make(map[snapshot.ServiceKey]nftables.ServiceState, len(keys))
	for _, key := range keys {
		var st nftables.ServiceState
		for _, vs := range k.applied[key].Servers {
			line := "ipvs " + vs.ServerKey.String() + " " + vs.Scheduler
			if vs.Timeout > 0 {
				line += fmt.Sprintf(" persistent %d", vs.Timeout)
			}
			st.Applied = append(st.Applied, line)
			got, err := k.ipvs.GetDestinations(toService(vs))
			if err != nil {
				st.Missing = append(st.Missing, line)
				continue
			}
			var held []netip.AddrPort
			for _, d := range got {
				held = append(held, destKey(d))
			}
			for _, r := range vs.Reals {
				l := "  -> " + r.Addr.String()
				st.Applied = append(st.Applied, line+l)
				if !slices.Contains(held, r.Addr) {
					st.Missing = append(st.Missing, line+l)
				}
			}
			// A removed endpoint still holding connections stays, at
			// weight 0, until they end: shown so that "why does this
			// pod still get traffic" has its answer.
			for _, d := range got {
				if _, draining := k.draining[realKey{vs.ServerKey, destKey(d)}]; draining {
					st.Applied = append(st.Applied, fmt.Sprintf("%s  -> %s draining (weight 0, %d active, %d inactive connections)",
						line, destKey(d), d.ActiveConnections, d.InactiveConnections))
				}
			}
		}
		out[key] = st
	}
	return out, nil
}
