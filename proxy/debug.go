package proxy

import (
	"cmp"
	"encoding/json"
	"iter"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"github.com/switchboard/switchboard/proxy/nftables"
	"github.com/switchboard/switchboard/proxy/snapshot"
)

// DebugPath is where the metrics server answers with the proxy's view of
// Services (query parameters namespace and name narrow it down). kube-proxy
// has no such endpoint; `switchboard doctor` reads it to tell "the API says
// X" apart from "this node programmed X".
const DebugPath = "/debug/switchboard/services"

// DebugState is the answer at DebugPath.
type DebugState struct {
	Node string `json:"node"`
	// Mode is the proxy mode (ModeNFTables, ModeIPTables): what the
	// Services' Kernel state is made of.
	Mode string `json:"mode,omitempty"`
	// LastSync is when the last sync succeeded (zero before the first).
	LastSync time.Time `json:"lastSync"`
	// LastError is the last failed sync's error, if it failed after the
	// last success.
	LastError     string    `json:"lastError,omitempty"`
	LastErrorTime time.Time `json:"lastErrorTime"`
	// PendingSince is when the oldest change not yet programmed arrived
	// (zero when everything known is programmed).
	PendingSince time.Time `json:"pendingSince"`
	// Generation is the programmed snapshot's generation.
	Generation uint64         `json:"generation"`
	Services   []DebugService `json:"services"`
}

// DebugService is one programmed Service.
type DebugService struct {
	Namespace string      `json:"namespace"`
	Name      string      `json:"name"`
	Ports     []DebugPort `json:"ports"`
	// Kernel is what the data plane holds for the Service: nftables
	// elements, or in the iptables mode "table -A chain spec" rules.
	Kernel      nftables.ServiceState `json:"kernel"`
	KernelError string                `json:"kernelError,omitempty"`
}

// DebugPort is one programmed Service port and the endpoints its traffic
// goes to.
type DebugPort struct {
	Name            string       `json:"name,omitempty"`
	Protocol        string       `json:"protocol"`
	Port            int32        `json:"port"`
	NodePort        int32        `json:"nodePort,omitempty"`
	ClusterIPs      []netip.Addr `json:"clusterIPs,omitempty"`
	ExternalIPs     []netip.Addr `json:"externalIPs,omitempty"`
	LoadBalancerIPs []netip.Addr `json:"loadBalancerIPs,omitempty"`
	InternalLocal   bool         `json:"internalTrafficPolicyLocal,omitempty"`
	ExternalLocal   bool         `json:"externalTrafficPolicyLocal,omitempty"`
	AffinitySeconds int          `json:"sessionAffinitySeconds,omitempty"`
	// Endpoints are all endpoints the proxy knows for the port.
	Endpoints []snapshot.Endpoint `json:"endpoints"`
	// ClusterEndpoints and ExternalEndpoints are the ones traffic to the
	// ClusterIP and to external front-ends is balanced over, after
	// traffic policy and the ready/terminating preference.
	ClusterEndpoints  []netip.AddrPort `json:"clusterEndpoints"`
	ExternalEndpoints []netip.AddrPort `json:"externalEndpoints,omitempty"`
}

// inspector reads back what the data plane holds for a Service.
type inspector interface {
	Inspect(keys ...snapshot.ServiceKey) (map[snapshot.ServiceKey]nftables.ServiceState, error)
}

// debugState builds the answer from the last programmed snapshot.
func (h *health) debugState(namespace, name string) DebugState {
	h.mu.Lock()
	st := DebugState{Node: h.node, Mode: h.mode, LastSync: h.lastUpdated, LastError: h.lastError, LastErrorTime: h.lastErrorTime}
	snap, insp := h.programmed, h.inspect
	h.mu.Unlock()
	st.PendingSince = h.tracker.OldestPending()
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
		ds := DebugService{Namespace: key.Namespace, Name: key.Name}
		for _, sp := range ports {
			ds.Ports = append(ds.Ports, DebugPort{
				Name: sp.Key.Port, Protocol: string(sp.Protocol), Port: sp.Port, NodePort: sp.NodePort,
				ClusterIPs: sp.ClusterIPs, ExternalIPs: sp.ExternalIPs, LoadBalancerIPs: sp.LoadBalancerIPs,
				InternalLocal: sp.InternalLocal, ExternalLocal: sp.ExternalLocal,
				AffinitySeconds: int(sp.AffinityTimeout.Seconds()), Endpoints: sp.Endpoints,
				ClusterEndpoints: addrPorts(sp.ClusterEndpoints()), ExternalEndpoints: externalOnly(sp),
			})
		}
		st.Services = append(st.Services, ds)
	}
	slices.SortFunc(st.Services, func(a, b DebugService) int {
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
			st.Services[i].Kernel = kernel[keys[i]]
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

// serveDebug answers DebugPath.
func (h *health) serveDebug(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(h.debugState(q.Get("namespace"), q.Get("name")))
}
