// Package poddns computes a pod's /etc/resolv.conf as the kubelet's DNS
// configurer does (pkg/kubelet/network/dns): by dnsPolicy (ClusterFirst,
// ClusterFirstWithHostNet, Default, None) and merged with spec.dnsConfig,
// within the resolver's limits.
package poddns

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// The kubelet's limits (validation.MaxDNSNameservers, MaxDNSSearchPaths,
// MaxDNSSearchListChars).
const (
	maxNameservers = 3
	maxSearchPaths = 32
	maxSearchChars = 2048
	defaultNdots   = "ndots:5"
)

// Host is the node's own resolver configuration (the kubelet's
// --resolv-conf), used by dnsPolicy Default and for ClusterFirst's search
// paths.
type Host struct {
	Nameservers []string
	Searches    []string
	Options     []string
}

// ParseHost reads a resolv.conf.
func ParseHost(content string) Host {
	var h Host
	sc := bufio.NewScanner(strings.NewReader(content))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "nameserver":
			if len(f) > 1 {
				h.Nameservers = append(h.Nameservers, f[1])
			}
		case "search":
			// The last search line wins, as in the resolver.
			h.Searches = nil
			for _, s := range f[1:] {
				if s != "." {
					h.Searches = append(h.Searches, strings.TrimSuffix(s, "."))
				}
			}
		case "domain":
			if len(f) > 1 {
				h.Searches = []string{strings.TrimSuffix(f[1], ".")}
			}
		case "options":
			h.Options = append(h.Options, f[1:]...)
		}
	}
	return h
}

// ResolvConf is the pod's resolv.conf. clusterDNS are the cluster DNS
// server addresses, zone the cluster domain (cluster.local).
func ResolvConf(pod *corev1.Pod, clusterDNS []string, zone string, host Host) (string, error) {
	policy := pod.Spec.DNSPolicy
	if policy == "" {
		policy = corev1.DNSClusterFirst
	}
	// A hostNetwork pod with plain ClusterFirst gets the node's resolver
	// (getPodDNSType); ClusterFirstWithHostNet is ClusterFirst for it.
	if pod.Spec.HostNetwork && policy == corev1.DNSClusterFirst {
		policy = corev1.DNSDefault
	}
	if policy == corev1.DNSClusterFirstWithHostNet {
		policy = corev1.DNSClusterFirst
	}
	var ns, search, opts []string
	switch policy {
	case corev1.DNSNone:
		if pod.Spec.DNSConfig == nil {
			return "", fmt.Errorf("pod %s/%s: dnsPolicy None requires spec.dnsConfig", pod.Namespace, pod.Name)
		}
	case corev1.DNSDefault:
		ns, search, opts = host.Nameservers, host.Searches, host.Options
	case corev1.DNSClusterFirst:
		if len(clusterDNS) == 0 {
			// The kubelet falls back to Default without a cluster DNS.
			ns, search, opts = host.Nameservers, host.Searches, host.Options
			break
		}
		ns = clusterDNS
		search = append([]string{pod.Namespace + ".svc." + zone, "svc." + zone, zone}, host.Searches...)
		opts = []string{defaultNdots}
	default:
		return "", fmt.Errorf("pod %s/%s: spec.dnsPolicy %q is not supported", pod.Namespace, pod.Name, policy)
	}
	if c := pod.Spec.DNSConfig; c != nil {
		ns = dedup(append(append([]string{}, ns...), c.Nameservers...))
		search = dedup(append(append([]string{}, search...), c.Searches...))
		opts = mergeOptions(opts, c.Options)
	}
	if len(ns) > maxNameservers {
		ns = ns[:maxNameservers]
	}
	search = trimSearch(search)
	var b strings.Builder
	if len(search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(search, " "))
	}
	for _, s := range ns {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if len(opts) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(opts, " "))
	}
	return b.String(), nil
}

func dedup(list []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range list {
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// mergeOptions lays dnsConfig's options over the base ones by name, as
// mergeDNSOptions does (a later value of the same option wins).
func mergeOptions(base []string, extra []corev1.PodDNSConfigOption) []string {
	var order []string
	vals := map[string]string{}
	put := func(name, val string) {
		if _, ok := vals[name]; !ok {
			order = append(order, name)
		}
		vals[name] = val
	}
	for _, o := range base {
		name, val, _ := strings.Cut(o, ":")
		put(name, val)
	}
	for _, o := range extra {
		v := ""
		if o.Value != nil {
			v = *o.Value
		}
		put(o.Name, v)
	}
	out := make([]string, 0, len(order))
	for _, name := range order {
		if vals[name] == "" {
			out = append(out, name)
		} else {
			out = append(out, name+":"+vals[name])
		}
	}
	return out
}

// trimSearch keeps the search list within the resolver's limits, dropping
// from the end (formDNSSearchFitsLimits).
func trimSearch(search []string) []string {
	if len(search) > maxSearchPaths {
		search = search[:maxSearchPaths]
	}
	for len(search) > 0 && len(strings.Join(search, " ")) > maxSearchChars {
		search = search[:len(search)-1]
	}
	return search
}

// HostConfig is the node's resolver configuration as a pod can use it:
// /etc/resolv.conf, or, when that names only a loopback stub (systemd-
// resolved's 127.0.0.53, unreachable from a pod's network namespace), the
// upstream servers behind it, as kubeadm points the kubelet's --resolv-conf
// at /run/systemd/resolve/resolv.conf.
func HostConfig() Host {
	b, _ := os.ReadFile("/etc/resolv.conf")
	h := ParseHost(string(b))
	loopback := len(h.Nameservers) > 0
	for _, s := range h.Nameservers {
		if ip, err := netip.ParseAddr(s); err != nil || !ip.IsLoopback() {
			loopback = false
		}
	}
	if loopback {
		if b, err := os.ReadFile("/run/systemd/resolve/resolv.conf"); err == nil {
			return ParseHost(string(b))
		}
	}
	return h
}
