package nftables

import (
	"bytes"
	"fmt"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Fake is an in-memory Conn and Conntrack in the spirit of knftables'
// Fake: it queues what a transaction asks for and applies it on Flush,
// all or nothing, with the kernel's refusals that matter to a writer
// (deleting an element that is not there, adding one whose key holds
// another value, a rule or element naming a set or chain that does not
// exist). Tests read the result back; nothing needs root.
type Fake struct {
	mu           sync.Mutex
	tables       map[tableKey]*fakeTable
	queue        []func(map[tableKey]*fakeTable) error
	nextID       uint32
	transactions int
	// FailFlush, if set, makes the next Flush fail with it (and apply
	// nothing), as a kernel refusing a transaction would.
	FailFlush error
	// ConntrackDeletes counts conntrack filters asked to delete flows.
	ConntrackDeletes int
}

type tableKey struct {
	family nftables.TableFamily
	name   string
}

type fakeTable struct {
	chains map[string][]*nftables.Rule
	sets   map[string]*fakeSet
}

type fakeSet struct {
	def   nftables.Set
	elems map[string]nftables.SetElement // by key (and key end)
}

// NewFake returns an empty fake.
func NewFake() *Fake { return &Fake{tables: map[tableKey]*fakeTable{}} }

func tk(t *nftables.Table) tableKey { return tableKey{t.Family, t.Name} }

func (f *Fake) enqueue(op func(map[tableKey]*fakeTable) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queue = append(f.queue, op)
}

func table(ts map[tableKey]*fakeTable, t *nftables.Table) (*fakeTable, error) {
	ft := ts[tk(t)]
	if ft == nil {
		return nil, fmt.Errorf("table %s: %w", t.Name, unix.ENOENT)
	}
	return ft, nil
}

func set(ts map[tableKey]*fakeTable, s *nftables.Set) (*fakeSet, error) {
	ft, err := table(ts, s.Table)
	if err != nil {
		return nil, err
	}
	fs := ft.sets[s.Name]
	if fs == nil {
		return nil, fmt.Errorf("set %s: %w", s.Name, unix.ENOENT)
	}
	return fs, nil
}

// AddTable queues creating t if it does not exist.
func (f *Fake) AddTable(t *nftables.Table) *nftables.Table {
	f.enqueue(func(ts map[tableKey]*fakeTable) error {
		if ts[tk(t)] == nil {
			ts[tk(t)] = &fakeTable{chains: map[string][]*nftables.Rule{}, sets: map[string]*fakeSet{}}
		}
		return nil
	})
	return t
}

// AddChain queues creating c if it does not exist.
func (f *Fake) AddChain(c *nftables.Chain) *nftables.Chain {
	f.enqueue(func(ts map[tableKey]*fakeTable) error {
		ft, err := table(ts, c.Table)
		if err != nil {
			return err
		}
		if _, ok := ft.chains[c.Name]; !ok {
			ft.chains[c.Name] = nil
		}
		return nil
	})
	return c
}

// FlushChain queues removing c's rules.
func (f *Fake) FlushChain(c *nftables.Chain) {
	f.enqueue(func(ts map[tableKey]*fakeTable) error {
		ft, err := table(ts, c.Table)
		if err != nil {
			return err
		}
		if _, ok := ft.chains[c.Name]; !ok {
			return fmt.Errorf("flush chain %s: %w", c.Name, unix.ENOENT)
		}
		ft.chains[c.Name] = nil
		return nil
	})
}

// DelChain queues deleting c and its rules; the kernel refuses while a
// rule or a verdict map element still jumps to it.
func (f *Fake) DelChain(c *nftables.Chain) {
	f.enqueue(func(ts map[tableKey]*fakeTable) error {
		ft, err := table(ts, c.Table)
		if err != nil {
			return err
		}
		if _, ok := ft.chains[c.Name]; !ok {
			return fmt.Errorf("delete chain %s: %w", c.Name, unix.ENOENT)
		}
		for name, rules := range ft.chains {
			for _, r := range rules {
				for _, e := range r.Exprs {
					if v, ok := e.(*expr.Verdict); ok && v.Chain == c.Name {
						return fmt.Errorf("delete chain %s: rule in %s jumps to it: %w", c.Name, name, unix.EBUSY)
					}
				}
			}
		}
		for _, s := range ft.sets {
			for _, e := range s.elems {
				if e.VerdictData != nil && e.VerdictData.Chain == c.Name {
					return fmt.Errorf("delete chain %s: element of %s jumps to it: %w", c.Name, s.def.Name, unix.EBUSY)
				}
			}
		}
		delete(ft.chains, c.Name)
		return nil
	})
}

// AddRule queues appending r to its chain; every set it looks up or
// updates must exist by then.
func (f *Fake) AddRule(r *nftables.Rule) *nftables.Rule {
	f.enqueue(func(ts map[tableKey]*fakeTable) error {
		ft, err := table(ts, r.Table)
		if err != nil {
			return err
		}
		if _, ok := ft.chains[r.Chain.Name]; !ok {
			return fmt.Errorf("rule in chain %s: %w", r.Chain.Name, unix.ENOENT)
		}
		for _, e := range r.Exprs {
			var name string
			switch e := e.(type) {
			case *expr.Lookup:
				name = e.SetName
			case *expr.Dynset:
				name = e.SetName
			}
			if name != "" && ft.sets[name] == nil {
				return fmt.Errorf("rule in chain %s uses set %s: %w", r.Chain.Name, name, unix.ENOENT)
			}
		}
		ft.chains[r.Chain.Name] = append(ft.chains[r.Chain.Name], r)
		return nil
	})
	return r
}

// AddSet queues creating s (and adding vals) if it does not exist.
func (f *Fake) AddSet(s *nftables.Set, vals []nftables.SetElement) error {
	f.mu.Lock()
	if s.ID == 0 {
		f.nextID++
		s.ID = f.nextID
	}
	f.mu.Unlock()
	f.enqueue(func(ts map[tableKey]*fakeTable) error {
		ft, err := table(ts, s.Table)
		if err != nil {
			return err
		}
		if ft.sets[s.Name] == nil {
			ft.sets[s.Name] = &fakeSet{def: *s, elems: map[string]nftables.SetElement{}}
		}
		return addElems(ft.sets[s.Name], vals)
	})
	return nil
}

// FlushSet queues removing every element of s.
func (f *Fake) FlushSet(s *nftables.Set) {
	f.enqueue(func(ts map[tableKey]*fakeTable) error {
		fs, err := set(ts, s)
		if err != nil {
			return err
		}
		clear(fs.elems)
		return nil
	})
}

// DelSet queues deleting s; the kernel refuses while a rule uses it.
func (f *Fake) DelSet(s *nftables.Set) {
	f.enqueue(func(ts map[tableKey]*fakeTable) error {
		ft, err := table(ts, s.Table)
		if err != nil {
			return err
		}
		if ft.sets[s.Name] == nil {
			return fmt.Errorf("delete set %s: %w", s.Name, unix.ENOENT)
		}
		for name, rules := range ft.chains {
			for _, r := range rules {
				for _, e := range r.Exprs {
					if l, ok := e.(*expr.Lookup); ok && l.SetName == s.Name {
						return fmt.Errorf("delete set %s: rule in %s uses it: %w", s.Name, name, unix.EBUSY)
					}
					if d, ok := e.(*expr.Dynset); ok && d.SetName == s.Name {
						return fmt.Errorf("delete set %s: rule in %s uses it: %w", s.Name, name, unix.EBUSY)
					}
				}
			}
		}
		delete(ft.sets, s.Name)
		return nil
	})
}

func elemKey(e nftables.SetElement) string { return string(e.Key) + "\x00" + string(e.KeyEnd) }

func addElems(fs *fakeSet, vals []nftables.SetElement) error {
	for _, v := range vals {
		if old, ok := fs.elems[elemKey(v)]; ok && (!bytes.Equal(old.Val, v.Val) || verdictOf(old) != verdictOf(v)) {
			return fmt.Errorf("add element to %s: key holds another value: %w", fs.def.Name, unix.EEXIST)
		}
		fs.elems[elemKey(v)] = v
	}
	return nil
}

// verdictOf renders a verdict map element's value for comparison.
func verdictOf(e nftables.SetElement) string {
	if e.VerdictData == nil {
		return ""
	}
	return fmt.Sprint(e.VerdictData.Kind, " ", e.VerdictData.Chain)
}

// SetAddElements queues adding vals to s.
func (f *Fake) SetAddElements(s *nftables.Set, vals []nftables.SetElement) error {
	vals = slices.Clone(vals)
	f.enqueue(func(ts map[tableKey]*fakeTable) error {
		fs, err := set(ts, s)
		if err != nil {
			return err
		}
		return addElems(fs, vals)
	})
	return nil
}

// SetDeleteElements queues deleting vals from s; each must be there.
func (f *Fake) SetDeleteElements(s *nftables.Set, vals []nftables.SetElement) error {
	vals = slices.Clone(vals)
	f.enqueue(func(ts map[tableKey]*fakeTable) error {
		fs, err := set(ts, s)
		if err != nil {
			return err
		}
		for _, v := range vals {
			if _, ok := fs.elems[elemKey(v)]; !ok {
				return fmt.Errorf("delete element from %s: %w", s.Name, unix.ENOENT)
			}
			delete(fs.elems, elemKey(v))
		}
		return nil
	})
	return nil
}

// Flush applies the queued messages to a copy of the state and keeps the
// copy only if all of them succeed.
func (f *Fake) Flush() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	queue := f.queue
	f.queue = nil
	if len(queue) == 0 {
		return nil
	}
	if err := f.FailFlush; err != nil {
		f.FailFlush = nil
		return err
	}
	next := make(map[tableKey]*fakeTable, len(f.tables))
	for k, t := range f.tables {
		c := &fakeTable{chains: map[string][]*nftables.Rule{}, sets: map[string]*fakeSet{}}
		for n, r := range t.chains {
			c.chains[n] = slices.Clone(r)
		}
		for n, s := range t.sets {
			es := make(map[string]nftables.SetElement, len(s.elems))
			for ek, e := range s.elems {
				es[ek] = e
			}
			c.sets[n] = &fakeSet{def: s.def, elems: es}
		}
		next[k] = c
	}
	for _, op := range queue {
		if err := op(next); err != nil {
			return fmt.Errorf("fake netlink transaction: %w", err)
		}
	}
	f.tables = next
	f.transactions++
	return nil
}

// Transactions counts the successful Flushes that carried messages.
func (f *Fake) Transactions() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.transactions
}

// GetSets returns the sets of t.
func (f *Fake) GetSets(t *nftables.Table) ([]*nftables.Set, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ft, err := table(f.tables, t)
	if err != nil {
		return nil, err
	}
	var out []*nftables.Set
	for _, s := range ft.sets {
		d := s.def
		out = append(out, &d)
	}
	return out, nil
}

// GetSetElements returns the elements of s.
func (f *Fake) GetSetElements(s *nftables.Set) ([]nftables.SetElement, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fs, err := set(f.tables, s)
	if err != nil {
		return nil, err
	}
	out := make([]nftables.SetElement, 0, len(fs.elems))
	for _, e := range fs.elems {
		out = append(out, e)
	}
	return out, nil
}

// ConntrackDeleteFilters counts the filters; the fake holds no flows.
func (f *Fake) ConntrackDeleteFilters(_ netlink.ConntrackTableType, _ netlink.InetFamily, filters ...netlink.CustomConntrackFilter) (uint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ConntrackDeletes += len(filters)
	return 0, nil
}

// Elements returns the committed elements of one set of the table
// TableName in the family (nil if there is no such set).
func (f *Fake) Elements(family nftables.TableFamily, setName string) []nftables.SetElement {
	f.mu.Lock()
	defer f.mu.Unlock()
	ft := f.tables[tableKey{family, TableName}]
	if ft == nil || ft.sets[setName] == nil {
		return nil
	}
	var out []nftables.SetElement
	for _, e := range ft.sets[setName].elems {
		out = append(out, e)
	}
	return out
}

// SetNames returns the names of the sets of the table TableName in the
// family.
func (f *Fake) SetNames(family nftables.TableFamily) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	ft := f.tables[tableKey{family, TableName}]
	if ft == nil {
		return nil
	}
	var out []string
	for n := range ft.sets {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// Rules returns the committed rules of every chain of every table.
func (f *Fake) Rules() []*nftables.Rule {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*nftables.Rule
	for _, t := range f.tables {
		for _, rs := range t.chains {
			out = append(out, rs...)
		}
	}
	return out
}
