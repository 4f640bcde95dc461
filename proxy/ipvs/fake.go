package ipvs

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"

	libipvs "github.com/moby/ipvs"
)

// Fake is an in-memory IPVS (the API's virtual and real servers, with the
// kernel's errors for duplicates and unknown ones), dummy interface and
// filter, for tests of the Kernel without root or IPVS. Calls counts the
// IPVS calls that wrote.
type Fake struct {
	mu      sync.Mutex
	servers map[ServerKey]*fakeServer
	addrs   []netip.Addr
	// Script is the last filter script applied, Scripts how many were.
	Script  []byte
	Scripts int
	Calls   int
}

type fakeServer struct {
	svc   libipvs.Service
	dests map[netip.AddrPort]libipvs.Destination
}

// NewFake returns an empty Fake.
func NewFake() *Fake { return &Fake{servers: map[ServerKey]*fakeServer{}} }

func (f *Fake) key(s *libipvs.Service) (ServerKey, error) {
	k, ok := serverKey(s)
	if !ok {
		return k, fmt.Errorf("invalid virtual server %+v", s)
	}
	return k, nil
}

// existing is the virtual server s names, or the kernel's error for an
// invalid or missing one.
func (f *Fake) existing(s *libipvs.Service) (ServerKey, *fakeServer, error) {
	k, err := f.key(s)
	if err != nil {
		return k, nil, err
	}
	cur := f.servers[k]
	if cur == nil {
		return k, nil, fmt.Errorf("no such process: virtual server %s", k)
	}
	return k, cur, nil
}

// GetServices implements API.
func (f *Fake) GetServices() ([]*libipvs.Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*libipvs.Service
	for _, s := range f.servers {
		c := s.svc
		out = append(out, &c)
	}
	return out, nil
}

// NewService implements API.
func (f *Fake) NewService(s *libipvs.Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := f.key(s)
	if err != nil {
		return err
	}
	if f.servers[k] != nil {
		return fmt.Errorf("file exists: virtual server %s", k)
	}
	if s.SchedName == "" {
		return fmt.Errorf("no scheduler for %s", k)
	}
	f.Calls++
	f.servers[k] = &fakeServer{svc: *s, dests: map[netip.AddrPort]libipvs.Destination{}}
	return nil
}

// UpdateService implements API.
func (f *Fake) UpdateService(s *libipvs.Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, cur, err := f.existing(s)
	if err != nil {
		return err
	}
	f.Calls++
	cur.svc = *s
	return nil
}

// DelService implements API.
func (f *Fake) DelService(s *libipvs.Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, _, err := f.existing(s)
	if err != nil {
		return err
	}
	f.Calls++
	delete(f.servers, k)
	return nil
}

func destKey(d *libipvs.Destination) netip.AddrPort {
	a, _ := netip.AddrFromSlice(d.Address)
	return netip.AddrPortFrom(a.Unmap(), d.Port)
}

// GetDestinations implements API.
func (f *Fake) GetDestinations(s *libipvs.Service) ([]*libipvs.Destination, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, cur, err := f.existing(s)
	if err != nil {
		return nil, err
	}
	var out []*libipvs.Destination
	for _, d := range cur.dests {
		c := d
		out = append(out, &c)
	}
	return out, nil
}

// NewDestination implements API.
func (f *Fake) NewDestination(s *libipvs.Service, d *libipvs.Destination) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, cur, err := f.existing(s)
	if err != nil {
		return err
	}
	if _, ok := cur.dests[destKey(d)]; ok {
		return fmt.Errorf("file exists: real server %s of %s", destKey(d), k)
	}
	f.Calls++
	cur.dests[destKey(d)] = *d
	return nil
}

// UpdateDestination implements API (the weight; the kernel keeps the
// connection counters).
func (f *Fake) UpdateDestination(s *libipvs.Service, d *libipvs.Destination) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, cur, err := f.existing(s)
	if err != nil {
		return err
	}
	old, ok := cur.dests[destKey(d)]
	if !ok {
		return fmt.Errorf("no such process: real server %s of %s", destKey(d), k)
	}
	f.Calls++
	old.Weight = d.Weight
	cur.dests[destKey(d)] = old
	return nil
}

// SetConnections sets the active and inactive connection counts the
// kernel reports for real server dest of virtual server vs.
func (f *Fake) SetConnections(vs ServerKey, dest netip.AddrPort, active, inactive int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	cur := f.servers[vs]
	if cur == nil {
		return fmt.Errorf("no such process: virtual server %s", vs)
	}
	d, ok := cur.dests[dest]
	if !ok {
		return fmt.Errorf("no such process: real server %s of %s", dest, vs)
	}
	d.ActiveConnections, d.InactiveConnections = active, inactive
	cur.dests[dest] = d
	return nil
}

// DelDestination implements API.
func (f *Fake) DelDestination(s *libipvs.Service, d *libipvs.Destination) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, cur, err := f.existing(s)
	if err != nil {
		return err
	}
	if _, ok := cur.dests[destKey(d)]; !ok {
		return fmt.Errorf("no such process: real server %s of %s", destKey(d), k)
	}
	f.Calls++
	delete(cur.dests, destKey(d))
	return nil
}

// List implements Addresses.
func (f *Fake) List() ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.addrs), nil
}

// Add implements Addresses.
func (f *Fake) Add(a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if slices.Contains(f.addrs, a) {
		return fmt.Errorf("file exists: address %s", a)
	}
	f.addrs = append(f.addrs, a)
	return nil
}

// Del implements Addresses.
func (f *Fake) Del(a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := slices.Index(f.addrs, a)
	if i < 0 {
		return fmt.Errorf("cannot assign requested address: %s", a)
	}
	f.addrs = slices.Delete(f.addrs, i, i+1)
	return nil
}

// Apply implements Filter.
func (f *Fake) Apply(script []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Script = slices.Clone(script)
	f.Scripts++
	return nil
}

// Dump lists the virtual servers as "proto addr:port sched [persistent
// N]" followed by their real servers as " -> addr:port wW", sorted.
func (f *Fake) Dump() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for k, s := range f.servers {
		line := k.String() + " " + s.svc.SchedName
		if s.svc.Flags&persistent != 0 {
			line += fmt.Sprintf(" persistent %d", s.svc.Timeout)
		}
		out = append(out, line)
		for a, d := range s.dests {
			out = append(out, fmt.Sprintf("%s -> %s w%d", line, a, d.Weight))
		}
	}
	slices.Sort(out)
	return out
}
