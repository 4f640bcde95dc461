package nftables

import (
	"bytes"
	"fmt"
	"sort"

	"github.com/google/nftables"

	"github.com/switchboard/switchboard/proxy/snapshot"
)

// ServiceState is what the proxy programmed for one Service and whether the
// kernel still holds it: the evidence `switchboard doctor` shows for "is
// this node's data plane in step with the API?".
type ServiceState struct {
	// Applied are the Service's elements as the last successful sync
	// applied them, rendered like `nft list` (e.g.
	// "svc-3 10.96.0.10 . udp . 53 . 0 : 10.244.1.5 . 53").
	Applied []string `json:"applied"`
	// Missing are applied elements the kernel's table no longer holds
	// (somebody flushed or edited the table behind the proxy's back).
	Missing []string `json:"missing,omitempty"`
}

// Inspect reports what was applied for a Service and reads the kernel's
// sets back to find applied elements it no longer holds. It reads only the
// sets the Service uses, so it costs one netlink dump per set.
func (k *Kernel) Inspect(key snapshot.ServiceKey) (ServiceState, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var st ServiceState
	applied := k.applied[key]
	for i, f := range k.fams {
		bySet := map[string][]Elem{}
		for _, e := range applied[i] {
			st.Applied = append(st.Applied, e.String())
			bySet[e.Set] = append(bySet[e.Set], e)
		}
		for name, elems := range bySet {
			missing, err := k.missingFrom(f, name, elems)
			if err != nil {
				return st, err
			}
			st.Missing = append(st.Missing, missing...)
		}
	}
	sort.Strings(st.Missing)
	return st, nil
}

// missingFrom lists the elems the kernel's set name does not hold with the
// same key and value.
func (k *Kernel) missingFrom(f *family, name string, elems []Elem) ([]string, error) {
	set := f.sets[name]
	var have []nftables.SetElement
	if set != nil {
		var err error
		if have, err = k.conn.GetSetElements(set); err != nil {
			return nil, fmt.Errorf("read set %s of table %s in %q: %w", name, TableName, k.cfg.NetNS, err)
		}
	}
	var missing []string
	for _, e := range elems {
		want, err := encode(f.is4, e)
		if err != nil {
			return nil, err
		}
		if !holds(have, want) {
			missing = append(missing, e.String())
		}
	}
	return missing, nil
}

// holds reports whether the dump has want. Interval sets come back as
// separate start and end elements, so only the start key is compared.
func holds(have []nftables.SetElement, want nftables.SetElement) bool {
	for _, h := range have {
		if h.IntervalEnd || !bytes.Equal(h.Key, want.Key) {
			continue
		}
		if want.Val == nil || bytes.Equal(h.Val, want.Val) {
			return true
		}
	}
	return false
}
