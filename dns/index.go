package dns

import (
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/switchboard/switchboard/servicestore"
)

// port is one named or unnamed port of a Service or endpoint.
type port struct {
	name  string
	proto string // lower case: tcp, udp, sctp
	num   uint16
}

// endpoint is one ready address behind a Service, with the label it is
// known by in DNS: its hostname, or its address with dashes (10-244-1-2), as
// CoreDNS names them.
type endpoint struct {
	addr  netip.Addr
	label string
	ports []port
}

// service is everything DNS answers about one Service, computed once per
// change of the Service or its slices so that queries only read.
type service struct {
	namespace, name string
	clusterIPs      []netip.Addr // empty for headless
	headless        bool
	externalName    string // ExternalName Services: the CNAME target
	ports           []port
	// endpoints are the ready endpoints, one per address. CoreDNS answers
	// endpoint names and their PTRs for every Service, not only headless.
	endpoints []endpoint
	// cache holds wire-format replies computed from this snapshot; a change
	// builds a new service, so they never go stale.
	cache replyCache
}

// Index is the in-memory view DNS answers from, kept current by informers.
// Reads (queries) take a read lock; each write recomputes one Service.
type Index struct {
	mu       sync.RWMutex
	services map[string]*service // ns/name
	// objects are the Services and their slices; each change rebuilds
	// its Service's answers.
	objects    *servicestore.Store
	namespaces map[string]int
	podIPs     map[string]map[netip.Addr]int // namespace -> pod IP -> pods with it
	pods       map[string]netip.Addr         // ns/name -> the address counted in podIPs
	ptr        map[netip.Addr][]string       // address -> names (without zone)
	// modified is the Unix time of the last change, read without the lock
	// by every negative answer's SOA.
	modified atomic.Int64
}

// NewIndex returns an empty index.
func NewIndex() *Index {
	x := &Index{services: map[string]*service{}, objects: servicestore.New(), namespaces: map[string]int{},
		podIPs: map[string]map[netip.Addr]int{}, pods: map[string]netip.Addr{}, ptr: map[netip.Addr][]string{}}
	x.touch()
	return x
}

// Serial is the SOA serial: the time of the last change, as CoreDNS does.
func (x *Index) Serial() uint32 {
	return uint32(x.modified.Load())
}

func (x *Index) touch() { x.modified.Store(time.Now().Unix()) }

// SetService records a Service (nil deletes it).
func (x *Index) SetService(ns, name string, svc *corev1.Service) {
	key := servicestore.Key{Namespace: ns, Name: name}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.objects.SetService(key, svc)
	x.rebuild(key)
}

// SetSlice records an EndpointSlice (nil deletes it) under its Service.
func (x *Index) SetSlice(ns, service, slice string, s *discoveryv1.EndpointSlice) {
	key := servicestore.Key{Namespace: ns, Name: service}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.objects.SetSlice(key, slice, s)
	x.rebuild(key)
}

// SetNamespace records whether a namespace exists.
func (x *Index) SetNamespace(name string, exists bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if exists {
		x.namespaces[name] = 1
	} else {
		delete(x.namespaces, name)
	}
	x.touch()
}

// SetPod records the address pod records answer for a pod (the zero
// Addr forgets the pod), replacing the one recorded before.
func (x *Index) SetPod(ns, name string, addr netip.Addr) {
	key := ns + "/" + name
	x.mu.Lock()
	defer x.mu.Unlock()
	if old, ok := x.pods[key]; ok {
		m := x.podIPs[ns]
		if m[old]--; m[old] <= 0 {
			delete(m, old)
		}
		if len(m) == 0 {
			delete(x.podIPs, ns)
		}
		delete(x.pods, key)
	}
	if !addr.IsValid() {
		return
	}
	x.pods[key] = addr
	if x.podIPs[ns] == nil {
		x.podIPs[ns] = map[netip.Addr]int{}
	}
	x.podIPs[ns][addr]++
}

// rebuild recomputes one Service's answers and its PTR names. Callers hold
// the write lock.
func (x *Index) rebuild(k servicestore.Key) {
	x.touch()
	key := k.String()
	if old := x.services[key]; old != nil {
		x.dropPTR(old)
		delete(x.services, key)
	}
	spec := x.objects.Service(k)
	if spec == nil {
		return
	}
	s := &service{namespace: spec.Namespace, name: spec.Name}
	for _, p := range spec.Spec.Ports {
		s.ports = append(s.ports, port{name: p.Name, proto: strings.ToLower(string(protocol(p.Protocol))), num: uint16(p.Port)})
	}
	switch {
	case spec.Spec.Type == corev1.ServiceTypeExternalName:
		s.externalName = strings.TrimSuffix(spec.Spec.ExternalName, ".")
	case spec.Spec.ClusterIP == corev1.ClusterIPNone:
		s.headless = true
		s.endpoints = readyEndpoints(x.objects.Slices(k))
	default:
		for _, ip := range spec.Spec.ClusterIPs {
			if a, err := netip.ParseAddr(ip); err == nil {
				s.clusterIPs = append(s.clusterIPs, a)
			}
		}
		s.endpoints = readyEndpoints(x.objects.Slices(k))
	}
	x.services[key] = s
	svcName := s.name + "." + s.namespace + ".svc"
	for _, a := range s.clusterIPs {
		x.ptr[a] = append(x.ptr[a], svcName)
	}
	for _, e := range s.endpoints {
		x.ptr[e.addr] = append(x.ptr[e.addr], e.label+"."+svcName)
	}
}

func (x *Index) dropPTR(s *service) {
	drop := func(a netip.Addr, name string) {
		names := x.ptr[a][:0]
		for _, n := range x.ptr[a] {
			if n != name {
				names = append(names, n)
			}
		}
		if len(names) == 0 {
			delete(x.ptr, a)
		} else {
			x.ptr[a] = names
		}
	}
	svcName := s.name + "." + s.namespace + ".svc"
	for _, a := range s.clusterIPs {
		drop(a, svcName)
	}
	for _, e := range s.endpoints {
		drop(e.addr, e.label+"."+svcName)
	}
}

// readyEndpoints lists the ready endpoints of a Service's slices (in the
// order of their names), one per address, in a stable order. The
// EndpointSlice controller already marks not-ready endpoints ready when the
// Service publishes not-ready addresses, so readiness alone decides, as in
// CoreDNS.
func readyEndpoints(slices []*discoveryv1.EndpointSlice) []endpoint {
	seen := map[netip.Addr]bool{}
	var out []endpoint
	for _, sl := range slices {
		var ports []port
		for _, p := range sl.Ports {
			if p.Port == nil {
				continue
			}
			pr := corev1.ProtocolTCP
			if p.Protocol != nil {
				pr = *p.Protocol
			}
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			ports = append(ports, port{name: name, proto: strings.ToLower(string(pr)), num: uint16(*p.Port)})
		}
		for _, ep := range sl.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, a := range ep.Addresses {
				addr, err := netip.ParseAddr(a)
				if err != nil || seen[addr] {
					continue
				}
				seen[addr] = true
				label := dashed(addr)
				if ep.Hostname != nil && *ep.Hostname != "" {
					label = *ep.Hostname
				}
				out = append(out, endpoint{addr: addr, label: label, ports: ports})
			}
		}
	}
	return out
}

// dashed writes an address as a DNS label the way CoreDNS does:
// 10.244.1.2 -> 10-244-1-2, fd00::1 -> fd00--1, fd00:: -> fd00--0.
func dashed(a netip.Addr) string {
	if a.Is4() {
		return strings.ReplaceAll(a.String(), ".", "-")
	}
	s := strings.ReplaceAll(a.String(), ":", "-")
	if strings.HasSuffix(s, "-") {
		s += "0"
	}
	return s
}

func protocol(p corev1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return p
}

// lookupService returns a Service's answers, or nil.
func (x *Index) lookupService(ns, name string) *service {
	return x.services[ns+"/"+name]
}

func (x *Index) namespaceExists(ns string) bool {
	_, ok := x.namespaces[ns]
	return ok
}

func (x *Index) podExists(ns string, a netip.Addr) bool {
	return x.podIPs[ns][a] > 0
}
