package nftables

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	mdnetlink "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/switchboard/switchboard/proxy/conntrack"
	"github.com/switchboard/switchboard/proxy/snapshot"
)

// I/O: Tables, their netlink connections, and Sync, which diffs what
// changed against what was applied and sends one transaction.

// TableName is the one table (per family) this package creates and the
// only one it ever modifies.
const TableName = "switchboard"

// Config says where and how to program.
type Config struct {
	// NetNS is the path of the network namespace to program (like
	// /run/netns/NAME); empty means the current one. The caller's
	// goroutine and process never change namespace: the netlink sockets
	// are opened inside it.
	NetNS string
	// NodeIPs are the addresses NodePorts answer on.
	NodeIPs []netip.Addr
	Options Options
	Logger  *slog.Logger
	// Conn and Conntrack, if Conn is set, are used instead of netlink
	// sockets in NetNS: tests pass a Fake for both (a nil Conntrack then
	// clears no UDP flows).
	Conn      Conn
	Conntrack conntrack.Conntrack
}

// Tables are the proxy's nftables tables (one per IP family) in a network
// namespace, with what was applied to them: it writes Service ports into
// them, and remembering what it applied, a sync touches only the elements
// of the Services that changed, all in one netlink transaction (one RCU
// grace period at most).
type Tables struct {
	mu   sync.Mutex
	cfg  Config
	nsFd int
	// conn counts what each transaction writes on top of the netlink
	// connection (or the Fake); nl and nlct are the sockets New opened,
	// if it opened any.
	conn   *tally
	ct     conntrack.Conntrack
	nl     *nftables.Conn
	nlct   *netlink.Handle
	fams   [2]*family // [0] IPv4, [1] IPv6
	synced bool
	// applied holds each Service's elements per family as last applied.
	applied map[snapshot.ServiceKey][2][]Elem
	// refs counts, per family, how many Services want an element, so
	// shared elements (hairpin entries of a pod behind two Services) stay
	// until the last one goes.
	refs [2]map[Elem]int
	// elements counts, per family, the distinct elements programmed.
	elements [2]int
	// serviceCIDRs are the Service CIDRs the tables' rules drop
	// unallocated addresses of; a change rebuilds the tables.
	serviceCIDRs []netip.Prefix
	log          *slog.Logger
}

// family is one IP family's table and its objects.
type family struct {
	is4     bool
	table   *nftables.Table
	chains  map[string]*nftables.Chain
	sets    map[string]*nftables.Set
	buckets map[string]bool // bucket maps that exist with their rule
	// endpoints are the affinity endpoints (by endpointID) whose set and
	// chains exist.
	endpoints map[string]*nftables.Set
}

// New opens netlink sockets in cfg.NetNS. Nothing is programmed before the
// first Sync.
func New(cfg Config) (*Tables, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Options.NodeIPs == nil {
		cfg.Options.NodeIPs = cfg.NodeIPs
	}
	k := &Tables{cfg: cfg, nsFd: -1, applied: map[snapshot.ServiceKey][2][]Elem{}, log: cfg.Logger}
	if cfg.Conn != nil {
		k.conn, k.ct = newTally(cfg.Conn), cfg.Conntrack
		k.initFamilies()
		return k, nil
	}
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(bigBuffers)}
	// Without a namespace path the sockets are opened where the process
	// is, without setns, which would need CAP_SYS_ADMIN: a hostNetwork
	// proxy has CAP_NET_ADMIN alone.
	ns := netns.None()
	if cfg.NetNS != "" {
		var err error
		ns, err = netns.GetFromPath(cfg.NetNS)
		if err != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", cfg.NetNS, err)
		}
		k.nsFd = int(ns)
		opts = append(opts, nftables.WithNetNSFd(int(ns)))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		k.Close()
		return nil, fmt.Errorf("open nftables netlink socket in %q: %w", cfg.NetNS, err)
	}
	k.nl, k.conn = conn, newTally(conn)
	if k.nlct, err = netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER); err != nil {
		k.Close()
		return nil, fmt.Errorf("open conntrack netlink socket in %q: %w", cfg.NetNS, err)
	}
	k.ct = k.nlct
	k.initFamilies()
	return k, nil
}

func (k *Tables) initFamilies() {
	for i, is4 := range []bool{true, false} {
		f := nftables.TableFamilyIPv4
		if !is4 {
			f = nftables.TableFamilyIPv6
		}
		k.fams[i] = &family{is4: is4, table: &nftables.Table{Name: TableName, Family: f}}
		k.refs[i] = map[Elem]int{}
	}
}

// bigBuffers lets one transaction carry a whole full sync (megabytes of
// elements): it is sent in one sendmsg, which the default socket buffer
// refuses.
func bigBuffers(c *mdnetlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		for _, opt := range []int{unix.SO_SNDBUFFORCE, unix.SO_RCVBUFFORCE} {
			if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, 64<<20); e != nil {
				serr = e
			}
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("enlarge netlink socket buffers: %w", err)
	}
	return nil
}

// Close releases the sockets; the rules stay, so a restarted proxy adopts
// them and established connections never notice.
func (k *Tables) Close() error {
	if k.nl != nil {
		k.nl.CloseLasting()
	}
	if k.nlct != nil {
		k.nlct.Close()
	}
	if k.nsFd >= 0 {
		unix.Close(k.nsFd)
		k.nsFd = -1
	}
	return nil
}

// Stats are counts for metrics and benchmarks.
type Stats struct {
	Elements int // set and map elements programmed by Sync
	Rules    int // rules in the tables, as the transactions left them
	// LastWrite is what the last successful transaction wrote.
	LastWrite Written
}

// Stats reports what is programmed.
func (k *Tables) Stats() Stats {
	k.mu.Lock()
	defer k.mu.Unlock()
	return Stats{Elements: k.elements[0] + k.elements[1], Rules: k.conn.ruleCount(), LastWrite: k.conn.last}
}

// Sync programs snap. changes.Keys lists the Services that differ from
// the previous call; changes.Full (or a previous failure) programs all of
// them and also (re)builds the tables, which is what the first call after
// start does: it adopts a table left by an earlier run, replacing its rules
// and elements in one atomic transaction, so established connections
// (conntrack) are untouched. After a successful sync the stale UDP
// conntrack entries of the Services it programmed are cleared (package
// conntrack): of all of them after a full one.
func (k *Tables) Sync(snap *snapshot.Snapshot, changes snapshot.Changes) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	// A change of the Service CIDRs rewrites the node-wide rules that
	// drop traffic to unallocated addresses: a rare event, done by a full
	// sync.
	if changes.Full || !k.synced || !slices.Equal(snap.ServiceCIDRs, k.serviceCIDRs) {
		err := k.fullSync(snap)
		k.synced = err == nil
		if err == nil {
			conntrack.Clean(k.ct, k.log, conntrack.AllPorts(snap))
		}
		return err
	}
	type delta struct{ add, del, now []Elem }
	var d [2]delta
	for _, key := range changes.Keys {
		old := k.applied[key]
		v4, v6 := TranslateService(snap.Get(key), k.cfg.Options)
		now := [2][]Elem{StableSlots(old[0], v4), StableSlots(old[1], v6)}
		for i := range 2 {
			add, del := k.diff(i, old[i], now[i])
			d[i].add = append(d[i].add, add...)
			d[i].del = append(d[i].del, del...)
			d[i].now = append(d[i].now, now[i]...)
		}
		if len(v4)+len(v6) == 0 {
			delete(k.applied, key)
		} else {
			k.applied[key] = now
		}
	}
	for i, f := range k.fams {
		for _, e := range d[i].add {
			k.ensureBucket(f, e.Set)
		}
		// An affinity endpoint's set and chains exist before the
		// elements that jump to them, and go after them: a client's
		// entries go with the endpoint's set, in the same transaction
		// as the DNAT that wrote them.
		born, gone := affinityEndpointChanges(d[i].add, d[i].del, d[i].now)
		for _, e := range born {
			if f.endpoints[endpointID(e)] == nil {
				k.addAffinityEndpoint(f, e)
			}
		}
		if err := k.queue(f, d[i].del, true); err != nil {
			return k.fail(err)
		}
		if err := k.queue(f, d[i].add, false); err != nil {
			return k.fail(err)
		}
		for _, id := range gone {
			k.deleteAffinityEndpoint(f, id)
		}
	}
	if err := k.conn.Flush(); err != nil {
		return k.fail(fmt.Errorf("apply nftables transaction in %q: %w", k.cfg.NetNS, err))
	}
	conntrack.Clean(k.ct, k.log, conntrack.PortsOf(snap, changes.Keys))
	return nil
}

// fail forgets what was applied, so the next Sync rebuilds everything
// instead of diffing against a state the kernel may not have.
func (k *Tables) fail(err error) error {
	k.synced = false
	return err
}

// diff updates reference counts for one Service's change and returns the
// elements that became wanted and those no longer wanted by anyone.
func (k *Tables) diff(fam int, old, now []Elem) (add, del []Elem) {
	refs := k.refs[fam]
	// A Service's own elements (keyed by its front-ends) are compared as
	// sets; only shared ones go through the reference counts.
	var oldOwn, nowOwn map[Elem]bool
	if len(old) > 0 && len(now) > 0 {
		oldOwn, nowOwn = make(map[Elem]bool, len(old)), make(map[Elem]bool, len(now))
		for _, e := range old {
			oldOwn[e] = !shared(e)
		}
		for _, e := range now {
			nowOwn[e] = !shared(e)
		}
	}
	for _, e := range old {
		if shared(e) {
			refs[e]--
			if refs[e] <= 0 {
				delete(refs, e)
				del = append(del, e)
			}
		} else if !nowOwn[e] {
			del = append(del, e)
		}
	}
	for _, e := range now {
		if shared(e) {
			refs[e]++
			if refs[e] == 1 {
				add = append(add, e)
			}
		} else if !oldOwn[e] {
			add = append(add, e)
		}
	}
	// A shared element removed and re-added in the same change needs
	// neither.
	if len(add) > 0 && len(del) > 0 {
		dels := map[Elem]bool{}
		for _, e := range del {
			dels[e] = true
		}
		adds := map[Elem]bool{}
		for _, e := range add {
			adds[e] = true
		}
		add = slices.DeleteFunc(add, func(e Elem) bool { return dels[e] })
		del = slices.DeleteFunc(del, func(e Elem) bool { return adds[e] })
	}
	k.elements[fam] += len(add) - len(del)
	return add, del
}

// shared reports whether several Services, or several ports of one, may
// want the same element: hairpin entries (a pod behind two Services) and
// ClusterIPs (one per port). Every other element's key holds the Service
// port's own front-end. Counting references for those alone keeps a
// 50,000-element map out of the heap.
func shared(e Elem) bool { return e.Set == setHairpin || e.Set == setClusterIPs }

// fullSync rebuilds both tables from snap in one transaction: base chains
// and rules are re-added (chains flushed first), sets flushed and refilled.
// The table itself is never deleted, so nothing is briefly unprogrammed.
func (k *Tables) fullSync(snap *snapshot.Snapshot) error {
	k.applied = make(map[snapshot.ServiceKey][2][]Elem, snap.Len())
	k.serviceCIDRs = snap.ServiceCIDRs
	// Translate first and size everything once: growing multi-megabyte
	// slices and maps element by element dominated the full sync.
	var total [2]int
	for key, ports := range snap.All() {
		v4, v6 := TranslateService(ports, k.cfg.Options)
		if len(v4)+len(v6) == 0 {
			continue
		}
		k.applied[key] = [2][]Elem{v4, v6}
		total[0] += len(v4)
		total[1] += len(v6)
	}
	var all [2][]Elem
	for i := range k.refs {
		k.refs[i], k.elements[i] = map[Elem]int{}, 0
		all[i] = make([]Elem, 0, total[i]+len(k.cfg.NodeIPs))
	}
	for _, es := range k.applied {
		for i := range 2 {
			add, _ := k.diff(i, nil, es[i])
			all[i] = append(all[i], add...)
		}
	}
	for i, f := range k.fams {
		existing, endpointSets, legacy, err := k.existingBuckets(f)
		if err != nil {
			return err
		}
		k.skeleton(f, existing)
		if legacy {
			k.deleteLegacyAffinity(f)
		}
		for _, e := range all[i] {
			k.ensureBucket(f, e.Set)
		}
		// Affinity endpoints that stay keep their sets (their clients);
		// the skeleton emptied the maps that jumped to the others.
		want := map[string]Elem{}
		for _, e := range all[i] {
			if isAffinityBalance(e.Set) {
				want[endpointID(e)] = e
			}
		}
		f.endpoints = map[string]*nftables.Set{}
		for _, name := range endpointSets {
			if id := strings.TrimPrefix(name, setAffinityEndpointPrefix); want[id].Set == "" {
				f.endpoints[id] = &nftables.Set{Table: f.table, Name: name}
				k.deleteAffinityEndpoint(f, id)
			}
		}
		for _, e := range want {
			k.addAffinityEndpoint(f, e)
		}
		for _, ip := range k.cfg.NodeIPs {
			if ip.Is4() == f.is4 {
				all[i] = append(all[i], Elem{Set: setNodeIPs, Addr: ip, Slot: -1})
			}
		}
		if err := k.queue(f, all[i], false); err != nil {
			return err
		}
	}
	if err := k.conn.Flush(); err != nil {
		return fmt.Errorf("apply full nftables transaction in %q: %w", k.cfg.NetNS, err)
	}
	return nil
}

// existingBuckets lists bucket maps a previous run left, so they are
// flushed (not leaked with stale elements) on adoption, and the affinity
// endpoint sets, so those no longer wanted are deleted.
func (k *Tables) existingBuckets(f *family) (buckets, endpoints []string, legacyAffinity bool, err error) {
	sets, err := k.conn.GetSets(f.table)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOENT) || strings.Contains(err.Error(), "no such file") {
			// No table yet: a first start.
			return nil, nil, false, nil
		}
		return nil, nil, false, fmt.Errorf("list sets of table %s in %q: %w", TableName, k.cfg.NetNS, err)
	}
	for _, s := range sets {
		switch {
		case s.Name == legacyAffinitySet:
			legacyAffinity = true
		case isBucket(s.Name):
			buckets = append(buckets, s.Name)
		case strings.HasPrefix(s.Name, setAffinityEndpointPrefix):
			endpoints = append(endpoints, s.Name)
		}
	}
	return buckets, endpoints, legacyAffinity, nil
}
