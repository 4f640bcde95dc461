package nftables

import (
	"github.com/google/nftables"
)

// Conn is the part of an nftables netlink connection the Tables uses:
// calls that queue a message in the transaction being built, Flush that
// sends it as one atomic batch, and the reads. *nftables.Conn implements
// it; Fake records and applies it in memory, so the writer is tested
// without root.
type Conn interface {
	AddTable(t *nftables.Table) *nftables.Table
	AddChain(c *nftables.Chain) *nftables.Chain
	FlushChain(c *nftables.Chain)
	// DelChain deletes c and its rules; nothing may jump to it by then.
	DelChain(c *nftables.Chain)
	AddRule(r *nftables.Rule) *nftables.Rule
	AddSet(s *nftables.Set, vals []nftables.SetElement) error
	FlushSet(s *nftables.Set)
	// DelSet deletes s and its elements; no rule may use it by then.
	DelSet(s *nftables.Set)
	SetAddElements(s *nftables.Set, vals []nftables.SetElement) error
	SetDeleteElements(s *nftables.Set, vals []nftables.SetElement) error
	// Flush sends the queued messages as one transaction: all of them
	// apply or none does.
	Flush() error
	GetSets(t *nftables.Table) ([]*nftables.Set, error)
	GetSetElements(s *nftables.Set) ([]nftables.SetElement, error)
}

// chainID names a chain across families.
type chainID struct {
	family nftables.TableFamily
	name   string
}

// tally wraps the Tables' Conn and counts what each transaction writes:
// rules per chain and elements added and deleted. Counts of a transaction
// become the programmed state only when its Flush succeeds, so Stats
// reports what the kernel holds, whichever code path queued it.
type tally struct {
	Conn
	rules   map[chainID]int // committed
	pending map[chainID]int // chains this transaction flushed or extended
	added   int
	deleted int
	// last is what the last successful transaction wrote.
	last Written
}

// Written counts the elements one transaction added and deleted.
type Written struct {
	Added, Deleted int
}

func newTally(c Conn) *tally {
	return &tally{Conn: c, rules: map[chainID]int{}, pending: map[chainID]int{}}
}

func (t *tally) FlushChain(c *nftables.Chain) {
	t.Conn.FlushChain(c)
	t.pending[chainID{c.Table.Family, c.Name}] = 0
}

func (t *tally) DelChain(c *nftables.Chain) {
	t.Conn.DelChain(c)
	t.pending[chainID{c.Table.Family, c.Name}] = 0
}

func (t *tally) AddRule(r *nftables.Rule) *nftables.Rule {
	id := chainID{r.Table.Family, r.Chain.Name}
	n, ok := t.pending[id]
	if !ok {
		n = t.rules[id]
	}
	t.pending[id] = n + 1
	return t.Conn.AddRule(r)
}

func (t *tally) SetAddElements(s *nftables.Set, vals []nftables.SetElement) error {
	if err := t.Conn.SetAddElements(s, vals); err != nil {
		return err
	}
	t.added += len(vals)
	return nil
}

func (t *tally) SetDeleteElements(s *nftables.Set, vals []nftables.SetElement) error {
	if err := t.Conn.SetDeleteElements(s, vals); err != nil {
		return err
	}
	t.deleted += len(vals)
	return nil
}

func (t *tally) Flush() error {
	err := t.Conn.Flush()
	if err == nil {
		for id, n := range t.pending {
			if n == 0 {
				delete(t.rules, id)
			} else {
				t.rules[id] = n
			}
		}
		t.last = Written{Added: t.added, Deleted: t.deleted}
	}
	clear(t.pending)
	t.added, t.deleted = 0, 0
	return err
}

// ruleCount is the number of rules the committed transactions left.
func (t *tally) ruleCount() int {
	n := 0
	for _, c := range t.rules {
		n += c
	}
	return n
}
