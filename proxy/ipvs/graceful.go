package ipvs

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	libipvs "github.com/moby/ipvs"

	"github.com/switchboard/switchboard/proxy/nftables"
)

// DrainCheckInterval is how often a Kernel looks at the real servers it is
// draining, as kube-proxy's ipvs mode (rsCheckDeleteInterval).
const DrainCheckInterval = time.Minute

// realKey names one real server of one virtual server.
type realKey struct {
	Server ServerKey
	Real   netip.AddrPort
}

// needsDrain says whether a removed real server of proto waits for its
// connections: not for UDP and SCTP, whose connections the kernel expires
// on their next packet (expire_nodest_conn), as kube-proxy's
// IsRsGracefulTerminationNeeded.
func needsDrain(proto string) bool { return proto != "UDP" && proto != "SCTP" }

// removeReal takes real server r out of virtual server key as kube-proxy's
// GracefulDeleteRS: deleted at once when it has no active or inactive
// connections (or is UDP or SCTP), else set to weight 0, so no new
// connection picks it, and left for DrainTerminated to delete once its
// connections are gone. *dests caches the kernel's real servers of key
// (read here when nil) for the other removals of the same sync.
func (k *Kernel) removeReal(svc *libipvs.Service, key ServerKey, r RealServer, dests *[]*libipvs.Destination, w *nftables.Written) error {
	rk := realKey{key, r.Addr}
	if _, draining := k.draining[rk]; draining {
		return nil
	}
	if needsDrain(key.Protocol) {
		if *dests == nil {
			got, err := k.ipvs.GetDestinations(svc)
			if err != nil {
				return fmt.Errorf("list real servers of %s: %w", key, err)
			}
			*dests = got
		}
		for _, d := range *dests {
			if destKey(d) == r.Addr && d.ActiveConnections+d.InactiveConnections > 0 {
				zero := toDestination(r)
				zero.Weight = 0
				if err := k.ipvs.UpdateDestination(svc, zero); err != nil {
					return fmt.Errorf("set real server %s of %s to weight 0: %w", r.Addr, key, err)
				}
				k.draining[rk] = struct{}{}
				w.Deleted++
				return nil
			}
		}
	}
	if err := k.ipvs.DelDestination(svc, toDestination(r)); err != nil {
		return fmt.Errorf("remove real server %s of %s: %w", r.Addr, key, err)
	}
	w.Deleted++
	return nil
}

// undrain deletes a draining real server that is wanted again, so it can
// be added afresh with its weight (kube-proxy's
// MoveRSOutofGracefulDeleteList).
func (k *Kernel) undrain(svc *libipvs.Service, key ServerKey, r RealServer) error {
	rk := realKey{key, r.Addr}
	if _, draining := k.draining[rk]; !draining {
		return nil
	}
	if err := k.ipvs.DelDestination(svc, toDestination(r)); err != nil {
		return fmt.Errorf("remove draining real server %s of %s: %w", r.Addr, key, err)
	}
	delete(k.draining, rk)
	return nil
}

// forgetDrains drops the draining real servers of a virtual server that
// was deleted with them.
func (k *Kernel) forgetDrains(key ServerKey) {
	for rk := range k.draining {
		if rk.Server == key {
			delete(k.draining, rk)
		}
	}
}

// DrainTerminated deletes the draining real servers whose connections are
// gone (kube-proxy's tryDeleteRs, run every DrainCheckInterval); one that
// is no longer in the kernel is forgotten. It returns how many remain.
func (k *Kernel) DrainTerminated() (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var errs []error
	byServer := map[ServerKey][]netip.AddrPort{}
	for rk := range k.draining {
		byServer[rk.Server] = append(byServer[rk.Server], rk.Real)
	}
	for key, reals := range byServer {
		svc := toService(VirtualServer{ServerKey: key})
		dests, err := k.ipvs.GetDestinations(svc)
		if err != nil {
			// The virtual server is gone: so are its real servers.
			for _, r := range reals {
				delete(k.draining, realKey{key, r})
			}
			continue
		}
		for _, r := range reals {
			i := slices.IndexFunc(dests, func(d *libipvs.Destination) bool { return destKey(d) == r })
			if i >= 0 && dests[i].ActiveConnections+dests[i].InactiveConnections > 0 {
				continue
			}
			if i >= 0 {
				if err := k.ipvs.DelDestination(svc, dests[i]); err != nil {
					errs = append(errs, fmt.Errorf("remove drained real server %s of %s: %w", r, key, err))
					continue
				}
			}
			delete(k.draining, realKey{key, r})
		}
	}
	if len(errs) > 0 {
		return len(k.draining), fmt.Errorf("ipvs drain in %q: %v", k.cfg.NetNS, errs)
	}
	return len(k.draining), nil
}

// drainLoop runs DrainTerminated every interval until stop closes.
func (k *Kernel) drainLoop(interval time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if _, err := k.DrainTerminated(); err != nil {
				k.log.Warn("draining real servers", "err", err)
			}
		}
	}
}
