// Package kubeproxyconfig reads kube-proxy's configuration file (a
// kubeproxy.config.k8s.io/v1alpha1 KubeProxyConfiguration, as kubeadm
// writes into the kube-proxy ConfigMap) into the settings switchboard proxy
// applies, and names the fields it does not apply, so a cluster's existing
// kube-proxy config can be handed to switchboard as it is.
package kubeproxyconfig

import (
	"fmt"
	"os"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"
	kpv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"
	"sigs.k8s.io/yaml"
)

// Settings are the fields of a KubeProxyConfiguration that switchboard
// proxy applies. A zero field was not set in the file.
type Settings struct {
	// Mode is the proxy mode: "" (the default, nftables), nftables,
	// iptables or ipvs.
	Mode               string
	Kubeconfig         string
	QPS                float32
	Burst              int32
	HostnameOverride   string
	HealthzBindAddress string
	MetricsBindAddress string
	EnableProfiling    bool
	ClusterCIDR        string
	DetectLocalMode    string
	// NodePortAddresses are CIDRs, or the one word "primary".
	NodePortAddresses []string
	// MinSyncPeriod is nftables.minSyncPeriod (iptables.minSyncPeriod or
	// ipvs.minSyncPeriod in those modes): how long changes coalesce.
	MinSyncPeriod time.Duration
	// IPVSScheduler is ipvs.scheduler (applied in the ipvs mode).
	IPVSScheduler string
	// LoggingFormat and Verbosity are logging.format and .verbosity.
	LoggingFormat string
	Verbosity     int
	// Ignored names each field the file sets that switchboard does not
	// apply (conntrack sysctls, other modes' sections, ...), and why.
	Ignored []string
	// Lenient is set when the file has fields v1alpha1 does not know and
	// was read leniently, as kube-proxy does (with a warning).
	Lenient error
}

// Load reads and decodes path. It rejects another kind or version, a
// proxy mode other than nftables, and values switchboard cannot honour
// (another masquerade bit, masqueradeAll).
func Load(path string) (*Settings, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read kube-proxy configuration: %w", err)
	}
	s, err := Decode(data)
	if err != nil {
		return nil, fmt.Errorf("kube-proxy configuration %s: %w", path, err)
	}
	return s, nil
}

// Decode is Load on the file's bytes.
func Decode(data []byte) (*Settings, error) {
	var tm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(data, &tm); err != nil {
		return nil, fmt.Errorf("not YAML or JSON: %w", err)
	}
	want := kpv1alpha1.SchemeGroupVersion.WithKind("KubeProxyConfiguration")
	if gv, err := schema.ParseGroupVersion(tm.APIVersion); err != nil || gv.WithKind(tm.Kind) != want {
		return nil, fmt.Errorf("apiVersion %q kind %q: want %s %s", tm.APIVersion, tm.Kind, want.GroupVersion(), want.Kind)
	}
	var c kpv1alpha1.KubeProxyConfiguration
	s := &Settings{}
	// Strictly first; a file with unknown or duplicate fields is read
	// leniently with a warning, as kube-proxy does for v1alpha1.
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		s.Lenient = err
		c = kpv1alpha1.KubeProxyConfiguration{}
		if err := yaml.Unmarshal(data, &c); err != nil {
			return nil, err
		}
	}
	switch c.Mode {
	case "", "nftables", "iptables":
	default:
		return nil, fmt.Errorf("mode %q: switchboard proxy programs nftables or iptables", c.Mode)
	}
	switch c.DetectLocalMode {
	case "", "ClusterCIDR":
	default:
		return nil, fmt.Errorf("detectLocalMode %q: switchboard proxy supports ClusterCIDR only", c.DetectLocalMode)
	}
	if b := c.NFTables.MasqueradeBit; b != nil && *b != 14 {
		return nil, fmt.Errorf("nftables.masqueradeBit %d: switchboard proxy uses bit 14 (kube-proxy's default)", *b)
	}
	if c.NFTables.MasqueradeAll {
		return nil, fmt.Errorf("nftables.masqueradeAll: not supported by switchboard proxy")
	}
	cc := c.ClientConnection
	s.Kubeconfig, s.QPS, s.Burst = cc.Kubeconfig, cc.QPS, cc.Burst
	s.HostnameOverride = c.HostnameOverride
	s.HealthzBindAddress, s.MetricsBindAddress = c.HealthzBindAddress, c.MetricsBindAddress
	s.EnableProfiling = c.EnableProfiling
	s.ClusterCIDR, s.DetectLocalMode = c.ClusterCIDR, string(c.DetectLocalMode)
	s.NodePortAddresses = c.NodePortAddresses
	s.Mode = string(c.Mode)
	s.MinSyncPeriod = c.NFTables.MinSyncPeriod.Duration
	switch c.Mode {
	case "iptables":
		s.MinSyncPeriod = c.IPTables.MinSyncPeriod.Duration
	case "ipvs":
		s.MinSyncPeriod = c.IPVS.MinSyncPeriod.Duration
	}
	s.LoggingFormat, s.Verbosity = c.Logging.Format, int(c.Logging.Verbosity)

	ignore := func(set bool, field, why string) {
		if set {
			s.Ignored = append(s.Ignored, field+": "+why)
		}
	}
	ignore(cc.ContentType != "" || cc.AcceptContentTypes != "", "clientConnection.contentType", "switchboard always speaks protobuf")
	ignore(len(c.FeatureGates) > 0, "featureGates", "no feature gate changes what switchboard proxy does")
	ignore(c.BindAddress != "" && c.BindAddress != "0.0.0.0" && c.BindAddress != "::", "bindAddress", "unused, as in kube-proxy's nftables mode")
	ignore(c.NFTables.SyncPeriod.Duration != 0, "nftables.syncPeriod", "switchboard resyncs on change and repairs from its own state")
	ct := c.Conntrack
	ignore(ct.MaxPerCore != nil && *ct.MaxPerCore != 0 || ct.Min != nil && *ct.Min != 0 ||
		ct.TCPEstablishedTimeout != nil && ct.TCPEstablishedTimeout.Duration != 0 ||
		ct.TCPCloseWaitTimeout != nil && ct.TCPCloseWaitTimeout.Duration != 0 ||
		ct.TCPBeLiberal || ct.UDPTimeout.Duration != 0 || ct.UDPStreamTimeout.Duration != 0,
		"conntrack", "switchboard proxy sets no sysctls; set the node's nf_conntrack_* sysctls instead")
	ignore(c.OOMScoreAdj != nil, "oomScoreAdj", "set the pod's priority and resources instead")
	ignore(c.ConfigSyncPeriod.Duration != 0, "configSyncPeriod", "informers never resync")
	ignore(c.PortRange != "", "portRange", "deprecated and unused upstream")
	if c.Mode == "iptables" {
		// minSyncPeriod is applied (above); the rest of the section is not.
		ignore(c.IPTables.MasqueradeBit != nil || c.IPTables.MasqueradeAll || c.IPTables.LocalhostNodePorts != nil ||
			c.IPTables.SyncPeriod.Duration != 0, "iptables", "only iptables.minSyncPeriod applies")
	} else {
		ignore(c.IPTables.MasqueradeBit != nil || c.IPTables.MasqueradeAll || c.IPTables.LocalhostNodePorts != nil ||
			c.IPTables.SyncPeriod.Duration != 0 || c.IPTables.MinSyncPeriod.Duration != 0, "iptables", "the iptables mode's section")
	}
	if c.Mode == "ipvs" {
		// scheduler and minSyncPeriod are applied; the rest is not.
		s.IPVSScheduler = c.IPVS.Scheduler
		ignore(len(c.IPVS.ExcludeCIDRs) > 0 || c.IPVS.StrictARP || c.IPVS.SyncPeriod.Duration != 0 ||
			c.IPVS.TCPTimeout.Duration != 0 || c.IPVS.TCPFinTimeout.Duration != 0 ||
			c.IPVS.UDPTimeout.Duration != 0, "ipvs", "only ipvs.scheduler and ipvs.minSyncPeriod apply")
	} else {
		ignore(c.IPVS.Scheduler != "" || len(c.IPVS.ExcludeCIDRs) > 0 || c.IPVS.StrictARP || c.IPVS.SyncPeriod.Duration != 0 ||
			c.IPVS.MinSyncPeriod.Duration != 0 || c.IPVS.TCPTimeout.Duration != 0 || c.IPVS.TCPFinTimeout.Duration != 0 ||
			c.IPVS.UDPTimeout.Duration != 0, "ipvs", "the ipvs mode's section")
	}
	ignore(c.DetectLocal.BridgeInterface != "" || c.DetectLocal.InterfaceNamePrefix != "", "detectLocal", "only detectLocalMode ClusterCIDR is supported")
	ignore(len(c.Logging.VModule) > 0, "logging.vmodule", "per-file verbosity is klog's")
	slices.Sort(s.Ignored)
	return s, nil
}
