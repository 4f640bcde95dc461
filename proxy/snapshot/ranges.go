package snapshot

import "net/netip"

// SourceRanges are the port's loadBalancerSourceRanges of family is4, as
// kube-proxy reads them: per family, and a zero-length prefix ("allow
// any") lifts that family's restriction altogether (so does a family
// without ranges).
func (sp *ServicePort) SourceRanges(is4 bool) []netip.Prefix {
	var out []netip.Prefix
	for _, r := range sp.LoadBalancerSourceRanges {
		if r.Addr().Is4() != is4 {
			continue
		}
		if r.Bits() == 0 {
			return nil
		}
		out = append(out, r)
	}
	return out
}
