package nftables

import (
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

// Inspect reports what was applied for each of the Services and reads the
// kernel's sets back to find applied elements it no longer holds. Each set
// the Services use is dumped once, however many of them share it (a bucket
// map holds every Service with as many endpoints).
func (k *Tables) Inspect(keys ...snapshot.ServiceKey) (map[snapshot.ServiceKey]ServiceState, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make(map[snapshot.ServiceKey]ServiceState, len(keys))
	for i, f := range k.fams {
		bySet := map[string]bool{}
		for _, key := range keys {
			for _, e := range k.applied[key][i] {
				bySet[elemSet(e)] = true
			}
		}
		held := map[string]map[string]bool{}
		for name := range bySet {
			h, err := k.held(f, name)
			if err != nil {
				return nil, err
			}
			held[name] = h
		}
		for _, key := range keys {
			st := out[key]
			for _, e := range k.applied[key][i] {
				st.Applied = append(st.Applied, e.String())
				want, err := encode(f.is4, e)
				if err != nil {
					return nil, err
				}
				if !held[elemSet(e)][elementID(want)] {
					st.Missing = append(st.Missing, e.String())
				}
			}
			out[key] = st
		}
	}
	for key, st := range out {
		sort.Strings(st.Missing)
		out[key] = st
	}
	return out, nil
}

// held dumps the kernel's set name and returns the identities of its
// elements. Interval sets come back as separate start and end elements;
// only the starts are kept, as encode's element carries its start key.
func (k *Tables) held(f *family, name string) (map[string]bool, error) {
	set := f.sets[name]
	if set == nil {
		return nil, nil
	}
	elems, err := k.conn.GetSetElements(set)
	if err != nil {
		return nil, fmt.Errorf("read set %s of table %s in %q: %w", name, TableName, k.cfg.NetNS, err)
	}
	ids := make(map[string]bool, len(elems))
	for _, e := range elems {
		if !e.IntervalEnd {
			ids[elementID(e)] = true
		}
	}
	return ids, nil
}

// elementID is an element's key and value as one comparable string.
func elementID(e nftables.SetElement) string {
	return string(e.Key) + "\x00" + string(e.Val)
}
