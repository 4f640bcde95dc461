package nftables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	mdnetlink "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/switchboard/switchboard/proxy/snapshot"
)

// TableName is the one table (per family) this package creates and the
// only one it ever modifies.
const TableName = "switchboard"

// masqMark is the packet mark that asks postrouting to masquerade; the same
// bit kube-proxy uses, so the two never disagree on a shared node.
const masqMark = 0x4000

// chunk bounds the elements per netlink message: a message's element list
// is one attribute, whose length field has 16 bits.
const chunk = 400

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
	// sockets in NetNS: tests pass a Fake for both.
	Conn      Conn
	Conntrack Conntrack
}

// Kernel applies Service ports to nftables. It remembers what it applied,
// so a sync touches only the elements of the Services that changed, all in
// one netlink transaction (one RCU grace period at most).
type Kernel struct {
	mu   sync.Mutex
	cfg  Config
	nsFd int
	// conn counts what each transaction writes on top of the netlink
	// connection (or the Fake); nl and nlct are the sockets New opened,
	// if it opened any.
	conn   *tally
	ct     Conntrack
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
func New(cfg Config) (*Kernel, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Options.NodeIPs == nil {
		cfg.Options.NodeIPs = cfg.NodeIPs
	}
	k := &Kernel{cfg: cfg, nsFd: -1, applied: map[snapshot.ServiceKey][2][]Elem{}, log: cfg.Logger}
	if cfg.Conn != nil {
		k.conn, k.ct = newTally(cfg.Conn), cfg.Conntrack
		k.initFamilies()
		return k, nil
	}
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(bigBuffers)}
	var ns netns.NsHandle
	if cfg.NetNS != "" {
		var err error
		ns, err = netns.GetFromPath(cfg.NetNS)
		if err != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", cfg.NetNS, err)
		}
		k.nsFd = int(ns)
		opts = append(opts, nftables.WithNetNSFd(int(ns)))
	} else {
		var err error
		ns, err = netns.Get()
		if err != nil {
			return nil, fmt.Errorf("open current network namespace: %w", err)
		}
		k.nsFd = int(ns)
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

func (k *Kernel) initFamilies() {
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
func (k *Kernel) Close() error {
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
func (k *Kernel) Stats() Stats {
	k.mu.Lock()
	defer k.mu.Unlock()
	return Stats{Elements: k.elements[0] + k.elements[1], Rules: k.conn.ruleCount(), LastWrite: k.conn.last}
}

// Sync programs snap. changes.Keys lists the Services that differ from
// the previous call; changes.Full (or a previous failure) programs all of
// them and also (re)builds the tables, which is what the first call after
// start does: it adopts a table left by an earlier run, replacing its rules
// and elements in one atomic transaction, so established connections
// (conntrack) are untouched.
func (k *Kernel) Sync(snap *snapshot.Snapshot, changes snapshot.Changes) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	// A change of the Service CIDRs rewrites the node-wide rules that
	// drop traffic to unallocated addresses: a rare event, done by a full
	// sync.
	if changes.Full || !k.synced || !slices.Equal(snap.ServiceCIDRs, k.serviceCIDRs) {
		err := k.fullSync(snap)
		k.synced = err == nil
		return err
	}
	type delta struct{ add, del []Elem }
	var d [2]delta
	var udpGone [2][]netip.Addr
	var udpActive [2][]netip.AddrPort
	for _, key := range changes.Keys {
		old := k.applied[key]
		v4, v6 := TranslateService(snap.Get(key), k.cfg.Options)
		now := [2][]Elem{StableSlots(old[0], v4), StableSlots(old[1], v6)}
		for i := range 2 {
			add, del := k.diff(i, old[i], now[i])
			d[i].add = append(d[i].add, add...)
			d[i].del = append(d[i].del, del...)
			udpGone[i] = append(udpGone[i], goneUDPEndpoints(old[i], now[i])...)
			udpActive[i] = append(udpActive[i], k.newlyActiveUDP(i == 0, old[i], now[i])...)
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
		born, gone := affinityEndpointChanges(d[i].add, d[i].del)
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
	k.clearConntrack(udpGone)
	k.clearUntranslated(udpActive)
	return nil
}

// fail forgets what was applied, so the next Sync rebuilds everything
// instead of diffing against a state the kernel may not have.
func (k *Kernel) fail(err error) error {
	k.synced = false
	return err
}

// diff updates reference counts for one Service's change and returns the
// elements that became wanted and those no longer wanted by anyone.
func (k *Kernel) diff(fam int, old, now []Elem) (add, del []Elem) {
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

// goneUDPEndpoints lists UDP endpoint addresses a Service stopped using:
// their conntrack entries would keep steering a UDP "connection" to a dead
// pod, as UDP has no end to wait for.
func goneUDPEndpoints(old, now []Elem) []netip.Addr {
	still := map[netip.Addr]bool{}
	for _, e := range now {
		if e.IsMap() && e.Proto == v1.ProtocolUDP {
			still[e.To.Addr()] = true
		}
	}
	var gone []netip.Addr
	for _, e := range old {
		if e.IsMap() && e.Proto == v1.ProtocolUDP && !still[e.To.Addr()] && !slices.Contains(gone, e.To.Addr()) {
			gone = append(gone, e.To.Addr())
		}
	}
	return gone
}

// newlyActiveUDP lists the UDP front-ends (address and port; NodePorts on
// each node address of the family) that have endpoints now and had none
// before. A client may have sent to one while this proxy did not yet know
// the Service: that datagram was routed on untranslated and left a
// conntrack entry, which every later datagram of the flow keeps alive and
// follows, past the DNAT rules, for as long as the client keeps sending.
// kube-proxy clears these too.
func (k *Kernel) newlyActiveUDP(is4 bool, old, now []Elem) []netip.AddrPort {
	type front struct {
		addr     netip.Addr
		port     uint16
		nodePort bool
	}
	fronts := func(elems []Elem) map[front]bool {
		m := map[front]bool{}
		for _, e := range elems {
			if e.IsMap() && e.Proto == v1.ProtocolUDP {
				m[front{e.Addr, e.Port, !e.Addr.IsValid()}] = true
			}
		}
		return m
	}
	before := fronts(old)
	var out []netip.AddrPort
	for f := range fronts(now) {
		if before[f] {
			continue
		}
		if !f.nodePort {
			out = append(out, netip.AddrPortFrom(f.addr, f.port))
			continue
		}
		for _, ip := range k.cfg.NodeIPs {
			if ip.Is4() == is4 {
				out = append(out, netip.AddrPortFrom(ip, f.port))
			}
		}
	}
	return out
}

func (k *Kernel) clearConntrack(gone [2][]netip.Addr) {
	for i, addrs := range gone {
		fam := netlink.InetFamily(unix.AF_INET)
		if i == 1 {
			fam = unix.AF_INET6
		}
		for _, a := range addrs {
			f := &netlink.ConntrackFilter{}
			if err := f.AddIP(netlink.ConntrackReplySrcIP, a.AsSlice()); err != nil {
				continue
			}
			if err := f.AddProtocol(unix.IPPROTO_UDP); err != nil {
				continue
			}
			if n, err := k.ct.ConntrackDeleteFilters(netlink.ConntrackTable, fam, f); err != nil {
				k.log.Warn("clear UDP conntrack entries", "endpoint", a, "err", err)
			} else if n > 0 {
				k.log.Debug("cleared UDP conntrack entries", "endpoint", a, "entries", n)
			}
		}
	}
}

// clearUntranslated deletes the UDP conntrack entries to the front-ends
// that were never translated (their reply comes from the front-end address
// itself), so the flows' next datagrams pass the DNAT rules. Translated
// entries, to endpoints, are left alone.
func (k *Kernel) clearUntranslated(fronts [2][]netip.AddrPort) {
	for i, list := range fronts {
		if len(list) == 0 {
			continue
		}
		fam := netlink.InetFamily(unix.AF_INET)
		if i == 1 {
			fam = unix.AF_INET6
		}
		var filters []netlink.CustomConntrackFilter
		for _, ap := range list {
			f := &netlink.ConntrackFilter{}
			ip := ap.Addr().AsSlice()
			if f.AddProtocol(unix.IPPROTO_UDP) != nil || f.AddIP(netlink.ConntrackOrigDstIP, ip) != nil ||
				f.AddIP(netlink.ConntrackReplySrcIP, ip) != nil || f.AddPort(netlink.ConntrackOrigDstPort, ap.Port()) != nil {
				continue
			}
			filters = append(filters, f)
		}
		// One dump of the table for all filters.
		if n, err := k.ct.ConntrackDeleteFilters(netlink.ConntrackTable, fam, filters...); err != nil {
			k.log.Warn("clear untranslated UDP conntrack entries", "err", err)
		} else if n > 0 {
			k.log.Debug("cleared untranslated UDP conntrack entries", "entries", n)
		}
	}
}

// fullSync rebuilds both tables from snap in one transaction: base chains
// and rules are re-added (chains flushed first), sets flushed and refilled.
// The table itself is never deleted, so nothing is briefly unprogrammed.
func (k *Kernel) fullSync(snap *snapshot.Snapshot) error {
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
		existing, endpointSets, err := k.existingBuckets(f)
		if err != nil {
			return err
		}
		k.skeleton(f, existing)
		for _, e := range all[i] {
			k.ensureBucket(f, e.Set)
		}
		// Affinity endpoints that stay keep their sets (their clients);
		// the skeleton emptied the maps that jumped to the others.
		want := map[string]Elem{}
		for _, e := range all[i] {
			if strings.HasPrefix(e.Set, setAffinityServicePrefix) {
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
func (k *Kernel) existingBuckets(f *family) (buckets, endpoints []string, err error) {
	sets, err := k.conn.GetSets(f.table)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOENT) || strings.Contains(err.Error(), "no such file") {
			// No table yet: a first start.
			return nil, nil, nil
		}
		return nil, nil, fmt.Errorf("list sets of table %s in %q: %w", TableName, k.cfg.NetNS, err)
	}
	for _, s := range sets {
		switch {
		case isBucket(s.Name):
			buckets = append(buckets, s.Name)
		case strings.HasPrefix(s.Name, setAffinityEndpointPrefix):
			endpoints = append(endpoints, s.Name)
		}
	}
	return buckets, endpoints, nil
}

func isBucket(name string) bool {
	_, ok := bucketSlots(name)
	return ok
}

// queue encodes elements per set and queues add (or delete) messages.
func (k *Kernel) queue(f *family, elems []Elem, del bool) error {
	counts := map[string]int{}
	for _, e := range elems {
		counts[elemSet(e)]++
	}
	by := make(map[string][]nftables.SetElement, len(counts))
	for name, n := range counts {
		by[name] = make([]nftables.SetElement, 0, n)
	}
	var order []string
	for _, e := range elems {
		se, err := encode(f.is4, e)
		if err != nil {
			return err
		}
		name := elemSet(e)
		if len(by[name]) == 0 {
			order = append(order, name)
		}
		by[name] = append(by[name], se)
	}
	for _, name := range order {
		set := f.sets[name]
		if set == nil {
			return fmt.Errorf("element for unknown set %s in table %s", name, TableName)
		}
		list := by[name]
		for len(list) > 0 {
			n := min(chunk, len(list))
			var err error
			if del {
				err = k.conn.SetDeleteElements(set, list[:n])
			} else {
				err = k.conn.SetAddElements(set, list[:n])
			}
			if err != nil {
				return fmt.Errorf("queue elements of set %s: %w", name, err)
			}
			list = list[n:]
		}
	}
	return nil
}

// Key layouts. Concatenations pad every field to 4 bytes.
func addrType(is4 bool) nftables.SetDatatype {
	if is4 {
		return nftables.TypeIPAddr
	}
	return nftables.TypeIP6Addr
}

func setTypes(is4 bool, name string) (key, data nftables.SetDatatype, concat bool) {
	a := addrType(is4)
	switch {
	case strings.HasPrefix(name, setAffinityServicePrefix):
		return nftables.MustConcatSetType(a, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark), nftables.TypeVerdict, true
	case strings.HasPrefix(name, setAffinityCheckPrefix):
		return nftables.MustConcatSetType(a, nftables.TypeInetProto, nftables.TypeInetService), nftables.TypeVerdict, true
	case strings.HasPrefix(name, setServicePrefix) || strings.HasPrefix(name, setShortCircuitPrefix):
		return nftables.MustConcatSetType(a, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark),
			nftables.MustConcatSetType(a, nftables.TypeInetService), true
	case strings.HasPrefix(name, setNodePortPrefix) || strings.HasPrefix(name, setShortCircuitNodePortPrefix):
		return nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark),
			nftables.MustConcatSetType(a, nftables.TypeInetService), true
	case name == setLBAllowed:
		return nftables.MustConcatSetType(a, nftables.TypeInetProto, nftables.TypeInetService, a), nftables.TypeInvalid, true
	case name == setNoEndpoints || name == setNoLocalEndpoints || name == setLBRestricted || name == setMasqExternal || name == setMasqCluster || name == setShortCircuit || strings.HasPrefix(name, setAffinityPrefix):
		return nftables.MustConcatSetType(a, nftables.TypeInetProto, nftables.TypeInetService), nftables.TypeInvalid, true
	case name == setNoEndpointsNodePort || name == setNoLocalEndpointsNodePort || name == setMasqNodePort || name == setShortCircuitNodePort:
		return nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService), nftables.TypeInvalid, true
	case name == setHairpin:
		return nftables.MustConcatSetType(a, a), nftables.TypeInvalid, true
	default: // setNodeIPs, setClusterIPs
		return a, nftables.TypeInvalid, false
	}
}

func protoNum(p v1.Protocol) byte {
	switch p {
	case v1.ProtocolUDP:
		return unix.IPPROTO_UDP
	case v1.ProtocolSCTP:
		return unix.IPPROTO_SCTP
	default:
		return unix.IPPROTO_TCP
	}
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// encode renders an element in the kernel's byte layout.
func encode(is4 bool, e Elem) (nftables.SetElement, error) {
	var key []byte
	if e.Addr.IsValid() {
		if e.Addr.Is4() != is4 {
			return nftables.SetElement{}, fmt.Errorf("address %s in the wrong family's set %s", e.Addr, e.Set)
		}
		key = append(key, e.Addr.AsSlice()...)
	}
	if e.Proto != "" {
		key = append(key, pad4([]byte{protoNum(e.Proto)})...)
		key = append(key, pad4(binary.BigEndian.AppendUint16(nil, e.Port))...)
	}
	if e.Slot >= 0 && !strings.HasPrefix(e.Set, setAffinityCheckPrefix) {
		// numgen writes its result in host byte order.
		key = append(key, binaryutil.NativeEndian.PutUint32(uint32(e.Slot))...)
	}
	if e.Addr2.IsValid() {
		key = append(key, e.Addr2.AsSlice()...)
	}
	se := nftables.SetElement{Key: key}
	if e.Range.IsValid() {
		// Concatenated ranges: every field is a range; only the last
		// differs between start and end.
		last := lastAddr(e.Range)
		se.Key = append(key, e.Range.Masked().Addr().AsSlice()...)
		se.KeyEnd = append(slices.Clone(key), last.AsSlice()...)
	}
	switch {
	case !e.IsMap():
	case strings.HasPrefix(e.Set, setAffinityServicePrefix):
		se.VerdictData = &expr.Verdict{Kind: expr.VerdictGoto, Chain: affinityEndpointChain + endpointID(e)}
	case strings.HasPrefix(e.Set, setAffinityCheckPrefix):
		se.VerdictData = &expr.Verdict{Kind: expr.VerdictJump, Chain: affinityCheckChain + endpointID(e)}
	default:
		se.Val = append(e.To.Addr().AsSlice(), pad4(binary.BigEndian.AppendUint16(nil, e.To.Port()))...)
	}
	return se, nil
}

// lastAddr is the highest address in p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// bucketSlots parses the slot count (for affinity-T sets, the timeout in
// seconds) out of a bucket map's name.
func bucketSlots(name string) (uint32, bool) {
	for _, p := range []string{setServicePrefix, setNodePortPrefix, setAffinityPrefix, setShortCircuitPrefix, setShortCircuitNodePortPrefix,
		setAffinityServicePrefix, setAffinityCheckPrefix} {
		if s, ok := strings.CutPrefix(name, p); ok {
			if p == setAffinityCheckPrefix {
				// affchk-k-slot, the set an affchk-k element is in.
				s, _, _ = strings.Cut(s, "-")
			}
			n, err := strconv.ParseUint(s, 10, 32)
			return uint32(n), err == nil && n > 0
		}
	}
	return 0, false
}

func (k *Kernel) addSet(f *family, name string) *nftables.Set {
	key, data, concat := setTypes(f.is4, name)
	s := &nftables.Set{Table: f.table, Name: name, KeyType: key, Concatenation: concat}
	if data != nftables.TypeInvalid {
		s.IsMap, s.DataType = true, data
	}
	if name == setLBAllowed {
		s.Interval = true
	}
	if err := k.conn.AddSet(s, nil); err != nil {
		// AddSet only fails on invalid definitions, which are ours.
		panic(fmt.Sprintf("define set %s: %v", name, err))
	}
	f.sets[name] = s
	return s
}

// ensureBucket creates a bucket map and its DNAT rule the first time a
// bucket size is used. Buckets are kept once made: an empty map costs one
// failed lookup per new connection.
func (k *Kernel) ensureBucket(f *family, name string) {
	slots, ok := bucketSlots(name)
	if !ok || f.buckets[name] {
		return
	}
	if strings.HasPrefix(name, setAffinityServicePrefix) || strings.HasPrefix(name, setAffinityCheckPrefix) {
		k.ensureAffinityBucket(f, slots)
		return
	}
	set := k.addSet(f, name)
	f.buckets[name] = true
	rule := func(chain string, ex []expr.Any) {
		k.conn.AddRule(&nftables.Rule{Table: f.table, Chain: f.chains[chain], Exprs: ex})
	}
	switch {
	case strings.HasPrefix(name, setAffinityPrefix):
		// Listed for inspection; affinity-record has a rule per front-end.
	case strings.HasPrefix(name, setServicePrefix):
		rule("services", dnatExprs(f.is4, true, slots, set))
	case strings.HasPrefix(name, setShortCircuitPrefix):
		rule("short-circuit", dnatExprs(f.is4, true, slots, set))
	case strings.HasPrefix(name, setShortCircuitNodePortPrefix):
		rule("short-circuit-nodeport", dnatExprs(f.is4, false, slots, set))
	default:
		rule("nodeports", dnatExprs(f.is4, false, slots, set))
	}
}

// Registers: 8 is NFT_REG32_00; concatenations use consecutive 32-bit ones.
const reg0 = 8

func addrLen(is4 bool) uint32 {
	if is4 {
		return 4
	}
	return 16
}

func daddr(is4 bool, reg uint32) expr.Any {
	off := uint32(16)
	if !is4 {
		off = 24
	}
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: addrLen(is4)}
}

func saddr(is4 bool, reg uint32) expr.Any {
	off := uint32(12)
	if !is4 {
		off = 8
	}
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: addrLen(is4)}
}

// frontEnd loads "daddr . l4proto . dport" (withAddr) or "l4proto . dport"
// into consecutive registers from reg0 and returns the next free register.
func frontEnd(is4, withAddr bool) ([]expr.Any, uint32) {
	r := uint32(reg0)
	var out []expr.Any
	if withAddr {
		out = append(out, daddr(is4, r))
		r += addrLen(is4) / 4
	}
	out = append(out,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: r},
		&expr.Payload{DestRegister: r + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	)
	return out, r + 2
}

func dnatExprs(is4, withAddr bool, slots uint32, set *nftables.Set) []expr.Any {
	ex, r := frontEnd(is4, withAddr)
	nfproto := uint32(unix.NFPROTO_IPV4)
	if !is4 {
		nfproto = unix.NFPROTO_IPV6
	}
	return append(ex,
		&expr.Numgen{Register: r, Modulus: slots, Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: reg0, DestRegister: reg0, IsDestRegSet: true, SetName: set.Name, SetID: set.ID},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: nfproto, RegAddrMin: reg0, RegProtoMin: reg0 + addrLen(is4)/4, Specified: true},
	)
}

// natTo DNATs to the address . port in registers from reg.
func natTo(is4 bool, reg uint32) expr.Any {
	nfproto := uint32(unix.NFPROTO_IPV4)
	if !is4 {
		nfproto = unix.NFPROTO_IPV6
	}
	return &expr.NAT{Type: expr.NATTypeDestNAT, Family: nfproto, RegAddrMin: reg, RegProtoMin: reg + addrLen(is4)/4, Specified: true}
}

func lookup(set *nftables.Set) expr.Any {
	return &expr.Lookup{SourceRegister: reg0, SetName: set.Name, SetID: set.ID}
}

func setMasqMark() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^uint32(masqMark)), Xor: binaryutil.NativeEndian.PutUint32(masqMark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}
}

// skeleton queues the table, its chains (flushed) and fixed rules, and all
// sets (flushed), in the transaction being built.
func (k *Kernel) skeleton(f *family, existing []string) {
	c := k.conn
	c.AddTable(f.table)
	add := func(r *nftables.Rule) { c.AddRule(r) }
	f.chains, f.sets, f.buckets = map[string]*nftables.Chain{}, map[string]*nftables.Set{}, map[string]bool{}
	chain := func(name string, hook *nftables.ChainHook, prio int32, typ nftables.ChainType) *nftables.Chain {
		ch := &nftables.Chain{Name: name, Table: f.table}
		if hook != nil {
			ch.Hooknum, ch.Priority, ch.Type = hook, nftables.ChainPriorityRef(nftables.ChainPriority(prio)), typ
			accept := nftables.ChainPolicyAccept
			ch.Policy = &accept
		}
		ch = c.AddChain(ch)
		c.FlushChain(ch)
		f.chains[name] = ch
		return ch
	}
	services := chain("services", nil, 0, "")
	nodeports := chain("nodeports", nil, 0, "")
	rejects := chain("reject-check", nil, 0, "")
	clusterIPs := chain("cluster-ips-check", nil, 0, "")
	shortCircuit := chain("short-circuit", nil, 0, "")
	shortCircuitNP := chain("short-circuit-nodeport", nil, 0, "")
	firewall := chain("firewall-check", nil, 0, "")
	for _, name := range []string{setLBRestricted, setLBAllowed, setNoEndpoints, setNoEndpointsNodePort, setNoLocalEndpoints, setNoLocalEndpointsNodePort,
		setMasqExternal, setMasqNodePort, setMasqCluster, setHairpin, setNodeIPs, setClusterIPs, setShortCircuit, setShortCircuitNodePort} {
		k.addSet(f, name)
	}
	for _, name := range existing {
		c.FlushSet(k.addSet(f, name))
	}
	for name := range f.sets {
		c.FlushSet(f.sets[name])
	}
	jump := func(to string) expr.Any { return &expr.Verdict{Kind: expr.VerdictJump, Chain: to} }
	ctNew := []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
	for _, h := range []struct {
		name string
		hook *nftables.ChainHook
		prio int32
		typ  nftables.ChainType
		to   []string
	}{
		{"nat-prerouting", nftables.ChainHookPrerouting, -100, nftables.ChainTypeNAT, []string{"services"}},
		{"nat-output", nftables.ChainHookOutput, -100, nftables.ChainTypeNAT, []string{"services"}},
		// Before DNAT (priority -100), while the destination is still the
		// load balancer's address; on the output path too, so the node's
		// own traffic is held to loadBalancerSourceRanges (kube-proxy's
		// filter-prerouting-pre-dnat and filter-output-pre-dnat).
		{"filter-prerouting", nftables.ChainHookPrerouting, -110, nftables.ChainTypeFilter, []string{"firewall-check"}},
		{"filter-output-pre-dnat", nftables.ChainHookOutput, -110, nftables.ChainTypeFilter, []string{"firewall-check"}},
		// After DNAT: what is still addressed to a front-end had no
		// endpoint; what is still addressed to a ClusterIP or the Service
		// CIDRs is to a port or address no Service has.
		{"filter-input", nftables.ChainHookInput, -10, nftables.ChainTypeFilter, []string{"reject-check"}},
		{"filter-forward", nftables.ChainHookForward, -10, nftables.ChainTypeFilter, []string{"reject-check", "cluster-ips-check"}},
		{"filter-output", nftables.ChainHookOutput, -10, nftables.ChainTypeFilter, []string{"reject-check", "cluster-ips-check"}},
	} {
		ch := chain(h.name, h.hook, h.prio, h.typ)
		for _, to := range h.to {
			ex := []expr.Any{jump(to)}
			if h.typ == nftables.ChainTypeFilter {
				// Only new connections are judged.
				ex = append(slices.Clone(ctNew), ex...)
			}
			add(&nftables.Rule{Table: f.table, Chain: ch, Exprs: ex})
		}
	}
	post := chain("nat-postrouting", nftables.ChainHookPostrouting, 100, nftables.ChainTypeNAT)
	add(&nftables.Rule{Table: f.table, Chain: post, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(masqMark), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
		&expr.Masq{},
	}})
	add(&nftables.Rule{Table: f.table, Chain: post, Exprs: []expr.Any{
		saddr(f.is4, reg0), daddr(f.is4, reg0+addrLen(f.is4)/4), lookup(f.sets[setHairpin]), &expr.Masq{},
	}})

	// inCIDR matches a source (or destination) address in cidr.
	inCIDR := func(cidr netip.Prefix, src bool) []expr.Any {
		mask := make([]byte, addrLen(f.is4))
		for i := 0; i < cidr.Bits(); i++ {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		load := daddr(f.is4, 1)
		if src {
			load = saddr(f.is4, 1)
		}
		return []expr.Any{load,
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: addrLen(f.is4), Mask: mask, Xor: make([]byte, addrLen(f.is4))},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: cidr.Masked().Addr().AsSlice()},
		}
	}
	var clusterCIDRs []netip.Prefix
	for _, cidr := range k.cfg.Options.ClusterCIDRs {
		if cidr.Addr().Is4() == f.is4 {
			clusterCIDRs = append(clusterCIDRs, cidr)
		}
	}

	// Marks come first: DNAT ends the chain.
	ex, _ := frontEnd(f.is4, true)
	add(&nftables.Rule{Table: f.table, Chain: services, Exprs: append(append(ex, lookup(f.sets[setMasqExternal])), setMasqMark()...)})
	for _, cidr := range clusterCIDRs {
		rule := inCIDR(cidr, true)
		rule[len(rule)-1].(*expr.Cmp).Op = expr.CmpOpNeq
		ex, _ := frontEnd(f.is4, true)
		add(&nftables.Rule{Table: f.table, Chain: services, Exprs: append(append(append(rule, ex...), lookup(f.sets[setMasqCluster])), setMasqMark()...)})
	}
	add(&nftables.Rule{Table: f.table, Chain: services, Exprs: []expr.Any{
		daddr(f.is4, reg0), lookup(f.sets[setNodeIPs]), jump("nodeports"),
	}})
	// externalTrafficPolicy Local short-circuit: traffic from the node
	// itself ("fib saddr type local") or from its pods (the cluster CIDRs,
	// as kube-proxy's detect-local-mode ClusterCIDR) to a Local front-end
	// goes to the Cluster-policy endpoints.
	local := []expr.Any{
		&expr.Fib{Register: 1, FlagSADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}
	sources := [][]expr.Any{local}
	for _, cidr := range clusterCIDRs {
		sources = append(sources, inCIDR(cidr, true))
	}
	// The set first: the source test costs a route lookup.
	for _, src := range sources {
		ex, _ := frontEnd(f.is4, true)
		add(&nftables.Rule{Table: f.table, Chain: services, Exprs: append(append(append(ex, lookup(f.sets[setShortCircuit])), src...), jump("short-circuit"))})
	}
	ex, _ = frontEnd(f.is4, false)
	add(&nftables.Rule{Table: f.table, Chain: nodeports, Exprs: append(append(ex, lookup(f.sets[setMasqNodePort])), setMasqMark()...)})
	for _, src := range sources {
		ex, _ := frontEnd(f.is4, false)
		add(&nftables.Rule{Table: f.table, Chain: nodeports, Exprs: append(append(append(ex, lookup(f.sets[setShortCircuitNodePort])), src...), jump("short-circuit-nodeport"))})
	}
	// The node's own traffic to a Local front-end is masqueraded: its
	// source may be the front-end itself (kube-proxy's "masquerade local
	// traffic").
	for _, ch := range []*nftables.Chain{shortCircuit, shortCircuitNP} {
		add(&nftables.Rule{Table: f.table, Chain: ch, Exprs: append(slices.Clone(local), setMasqMark()...)})
	}

	// loadBalancerSourceRanges: "ip daddr . l4proto . th dport
	// @lb-restricted ip daddr . l4proto . th dport . ip saddr != @lb-allowed drop".
	ex, r := frontEnd(f.is4, true)
	ex = append(ex, lookup(f.sets[setLBRestricted]), saddr(f.is4, r),
		&expr.Lookup{SourceRegister: reg0, SetName: setLBAllowed, SetID: f.sets[setLBAllowed].ID, Invert: true},
		&expr.Verdict{Kind: expr.VerdictDrop})
	add(&nftables.Rule{Table: f.table, Chain: firewall, Exprs: ex})

	reject := &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3} // port unreachable
	if !f.is4 {
		reject = &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 4}
	}
	// filter applies verdict to front-ends in set (address . protocol .
	// port) and to NodePorts in nodePortSet reached on the node's addresses.
	filter := func(set, nodePortSet string, verdict expr.Any) {
		ex, _ := frontEnd(f.is4, true)
		add(&nftables.Rule{Table: f.table, Chain: rejects, Exprs: append(ex, lookup(f.sets[set]), verdict)})
		ex, _ = frontEnd(f.is4, false)
		add(&nftables.Rule{Table: f.table, Chain: rejects, Exprs: append([]expr.Any{
			daddr(f.is4, 1), &expr.Lookup{SourceRegister: 1, SetName: setNodeIPs, SetID: f.sets[setNodeIPs].ID},
		}, append(ex, lookup(f.sets[nodePortSet]), verdict)...)})
	}
	filter(setNoEndpoints, setNoEndpointsNodePort, reject)
	// Endpoints only on other nodes under a Local policy: dropped, like
	// kube-proxy's "drop" verdict in its no-endpoint maps.
	filter(setNoLocalEndpoints, setNoLocalEndpointsNodePort, &expr.Verdict{Kind: expr.VerdictDrop})
	// kube-proxy's cluster-ips-check: a ClusterIP on a port its Service
	// does not have is rejected; any other address of the Service CIDRs
	// (unallocated, or a deleted Service's) is dropped, so it never leaves
	// the node by its default route.
	add(&nftables.Rule{Table: f.table, Chain: clusterIPs, Exprs: []expr.Any{
		daddr(f.is4, reg0), lookup(f.sets[setClusterIPs]), reject,
	}})
	for _, cidr := range k.serviceCIDRs {
		if cidr.Addr().Is4() == f.is4 {
			add(&nftables.Rule{Table: f.table, Chain: clusterIPs, Exprs: append(inCIDR(cidr, false), &expr.Verdict{Kind: expr.VerdictDrop})})
		}
	}
	for _, name := range existing {
		k.ensureBucket(f, name)
	}
}
