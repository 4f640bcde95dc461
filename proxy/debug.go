package proxy

import (
	"cmp"
	"encoding/json"
	"iter"
	"net/http"
	"net/netip"
	"slices"

	"github.com/switchboard/switchboard/proxy/nftables"
	"github.com/switchboard/switchboard/proxy/snapshot"
	"github.com/switchboard/switchboard/proxydebug"
)

// inspector reads back what the data plane holds for a Service.
type inspector interface {
	Inspect(keys ...snapshot.ServiceKey) (map[snapshot.ServiceKey]nftables.ServiceState, error)
}

// debugState answers proxydebug.Path: the proxy's view of Services as it
// last programmed them, and the data plane read back.
type debugState struct {
	node, mode string
	status     *syncStatus
	// inspect reads the data plane back; nil if the mode cannot.
	inspect inspector
}

// state builds the answer from the last programmed snapshot: one Service
// when namespace and name are set, else every Service (of namespace).
func (d *debugState) state(namespace, name string) proxydebug.State {
	v := d.status.view()
	st := proxydebug.State{Node: d.node, Mode: d.mode, LastSync: v.lastUpdated, LastError: v.lastError, LastErrorTime: v.lastErrorTime}
	snap, insp := v.programmed, d.inspect
	st.PendingSince = d.status.tracker.OldestPending()
	if snap == nil {
		return st
	}
	st.Generation = snap.Generation
	var services iter.Seq2[snapshot.ServiceKey, []*snapshot.ServicePort] = snap.All()
	if namespace != "" && name != "" {
		// One Service: a lookup, not a walk of the cluster.
		key := snapshot.ServiceKey{Namespace: namespace, Name: name}
		services = func(yield func(snapshot.ServiceKey, []*snapshot.ServicePort) bool) {
			if ports := snap.Get(key); ports != nil {
				yield(key, ports)
			}
		}
	}
	for key, ports := range services {
		if (namespace != "" && key.Namespace != namespace) || (name != "" && key.Name != name) {
			continue
		}
		ds := proxydebug.Service{Namespace: key.Namespace, Name: key.Name}
		for _, sp := range ports {
			ds.Ports = append(ds.Ports, proxydebug.Port{
				Name: sp.Key.Port, Protocol: string(sp.Protocol), Port: sp.Port, NodePort: sp.NodePort,
				ClusterIPs: sp.ClusterIPs, ExternalIPs: sp.ExternalIPs, LoadBalancerIPs: sp.LoadBalancerIPs,
				InternalLocal: sp.InternalLocal, ExternalLocal: sp.ExternalLocal,
				AffinitySeconds: int(sp.AffinityTimeout.Seconds()), Endpoints: slices.Clone(sp.Endpoints),
				ClusterEndpoints: addrPorts(sp.ClusterEndpoints()), ExternalEndpoints: externalOnly(sp),
			})
		}
		st.Services = append(st.Services, ds)
	}
	slices.SortFunc(st.Services, func(a, b proxydebug.Service) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	if insp == nil || len(st.Services) == 0 {
		return st
	}
	// One read-back for all of them: they share the kernel's sets.
	keys := make([]snapshot.ServiceKey, len(st.Services))
	for i, ds := range st.Services {
		keys[i] = snapshot.ServiceKey{Namespace: ds.Namespace, Name: ds.Name}
	}
	kernel, err := insp.Inspect(keys...)
	for i := range st.Services {
		if err != nil {
			st.Services[i].KernelError = err.Error()
		} else {
			st.Services[i].Kernel = proxydebug.Kernel{Applied: kernel[keys[i]].Applied, Missing: kernel[keys[i]].Missing}
		}
	}
	return st
}

func externalOnly(sp *snapshot.ServicePort) []netip.AddrPort {
	if !sp.HasExternal() {
		return nil
	}
	return addrPorts(sp.ExternalEndpoints())
}

func addrPorts(eps []snapshot.Endpoint) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(eps))
	for _, e := range eps {
		out = append(out, e.AddrPort())
	}
	return out
}

// ServeHTTP answers proxydebug.Path.
func (d *debugState) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(d.state(q.Get("namespace"), q.Get("name")))
}
