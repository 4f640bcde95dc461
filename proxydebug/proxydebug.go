// Package proxydebug is the wire form of the node proxy's debug state: what
// the proxy serves at Path and what `switchboard doctor` reads. It holds
// types only, so a reader does not link the proxy's runtime.
package proxydebug

import (
	"net/netip"
	"time"
)

// Path is where the proxy's metrics server answers with its view of
// Services (query parameters namespace and name narrow it down).
// kube-proxy has no such endpoint; `switchboard doctor` reads it to tell
// "the API says X" apart from "this node programmed X".
const Path = "/debug/switchboard/services"

// The proxy modes State.Mode names, as kube-proxy's --proxy-mode spells them.
const (
	ModeNFTables = "nftables"
	ModeIPTables = "iptables"
	ModeIPVS     = "ipvs"
)

// State is the answer at Path.
type State struct {
	Node string `json:"node"`
	// Mode is the proxy mode (ModeNFTables, ModeIPTables, ModeIPVS; empty from a
	// proxy older than the iptables mode, which is nftables): what the
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
	Generation uint64    `json:"generation"`
	Services   []Service `json:"services"`
}

// Service is one programmed Service.
type Service struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Ports     []Port `json:"ports"`
	// Kernel is what the data plane holds for the Service.
	Kernel      Kernel `json:"kernel"`
	KernelError string `json:"kernelError,omitempty"`
}

// Kernel is what the proxy programmed for one Service and whether the
// kernel still holds it.
type Kernel struct {
	// Applied are the Service's elements as the last successful sync
	// applied them, rendered like `nft list` (e.g.
	// "svc-3 10.96.0.10 . udp . 53 . 0 : 10.244.1.5 . 53").
	Applied []string `json:"applied"`
	// Missing are applied elements the kernel's table no longer holds
	// (somebody flushed or edited the table behind the proxy's back).
	Missing []string `json:"missing,omitempty"`
}

// Port is one programmed Service port and the endpoints its traffic goes
// to.
type Port struct {
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
	Endpoints []Endpoint `json:"endpoints"`
	// ClusterEndpoints and ExternalEndpoints are the ones traffic to the
	// ClusterIP and to external front-ends is balanced over, after
	// traffic policy and the ready/terminating preference.
	ClusterEndpoints  []netip.AddrPort `json:"clusterEndpoints"`
	ExternalEndpoints []netip.AddrPort `json:"externalEndpoints,omitempty"`
}

// Endpoint is one endpoint of a port as the proxy knows it.
type Endpoint struct {
	Addr        netip.Addr `json:"addr"`
	Port        int32      `json:"port"`
	Ready       bool       `json:"ready"`
	Serving     bool       `json:"serving"`
	Terminating bool       `json:"terminating"`
	// Local is true when the endpoint runs on the proxy's node.
	Local bool `json:"local"`
	// OutOfTopology is true when the slice's topology hints send the
	// node's Cluster-policy traffic to other endpoints.
	OutOfTopology bool `json:"outOfTopology,omitempty"`
}

// AddrPort is the endpoint's destination.
func (e Endpoint) AddrPort() netip.AddrPort { return netip.AddrPortFrom(e.Addr, uint16(e.Port)) }
