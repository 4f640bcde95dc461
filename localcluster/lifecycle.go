package localcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
)

// dataplaneRecord describes the network an `up` built; the next `up` on the
// same state directory adopts it only when it would build the same one.
type dataplaneRecord struct {
	Prefix      string `json:"prefix"`
	Nodes       int    `json:"nodes"`
	NodeCIDR    string `json:"nodeCIDR"`
	PodCIDR     string `json:"podCIDR"`
	ServiceCIDR string `json:"serviceCIDR"`
}

func (c *Cluster) recordsDir() string { return filepath.Join(c.Config.StateDir, "run", "pods") }

func (c *Cluster) dataplane(svcCIDR netip.Prefix) dataplaneRecord {
	return dataplaneRecord{Prefix: c.Network.Prefix, Nodes: c.Config.Nodes, NodeCIDR: c.Network.NodeCIDR.String(),
		PodCIDR: c.Network.PodCIDR.String(), ServiceCIDR: svcCIDR.Masked().String()}
}

// canAdoptDataplane reports whether the network of an earlier run is there
// and is the one this run would build.
func (c *Cluster) canAdoptDataplane(svcCIDR netip.Prefix) bool {
	b, err := os.ReadFile(filepath.Join(c.Config.StateDir, "run", "dataplane.json"))
	if err != nil {
		return false
	}
	var rec dataplaneRecord
	if json.Unmarshal(b, &rec) != nil || rec != c.dataplane(svcCIDR) {
		return false
	}
	namespaces := []string{c.Network.BridgeNS()}
	for i := 1; i <= c.Config.Nodes; i++ {
		namespaces = append(namespaces, c.Network.NodeNS(fmt.Sprintf("node-%d", i)))
	}
	for _, ns := range namespaces {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err != nil {
			return false
		}
	}
	return true
}

func (c *Cluster) saveDataplane(svcCIDR netip.Prefix) error {
	b, _ := json.Marshal(c.dataplane(svcCIDR))
	return os.WriteFile(filepath.Join(c.Config.StateDir, "run", "dataplane.json"), b, 0o600)
}

// removeDataplane ends everything an earlier run of this state directory
// left: process trees by their cgroups, then namespaces (with their links
// and rules), then the records describing them.
func (c *Cluster) removeDataplane() error {
	return removeDataplane(c.Config.StateDir, c.Network, c.cg)
}

func removeDataplane(dir string, n *Network, g *cgroups) error {
	err := g.killAll()
	n.TearDownAll()
	for _, f := range []string{filepath.Join(dir, "run", "dataplane.json"), filepath.Join(dir, "run", "dns.json")} {
		os.Remove(f)
	}
	recs, _ := os.ReadDir(filepath.Join(dir, "run", "pods"))
	for _, e := range recs {
		os.Remove(filepath.Join(dir, "run", "pods", e.Name()))
	}
	if err != nil {
		return fmt.Errorf("end the processes of the previous run: %w", err)
	}
	return nil
}

// Down removes everything `up` left running on a state directory: the
// pods' process trees and cluster DNS (by their cgroups), every node and
// pod network namespace with its links and rules, and the records
// describing them. The state (etcd data, PKI, kubeconfig) stays, so the
// next `up` brings the same objects back. It refuses while an `up` runs on
// the directory.
func Down(stateDir string) error {
	dir, err := filepath.Abs(stateDir)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("switchboard down removes network namespaces and cgroups and needs root (run it with sudo)")
	}
	if _, err := os.Stat(dir); err == nil {
		lock, err := LockStateDir(dir)
		if err != nil {
			return err
		}
		defer lock.Release()
	}
	n := NewNetwork(dir, netip.Prefix{}, netip.Prefix{})
	g, err := newCgroups(n.Prefix)
	if err != nil {
		return err
	}
	return removeDataplane(dir, n, g)
}

// apiServerPort is the port to serve the API on. "Any free port" (0) keeps
// the previous run's port when it is free, so clients of the restarted
// cluster (the cluster DNS process, a user's kubectl) keep their address.
func apiServerPort(dir string, port int) int {
	if port != 0 {
		return port
	}
	kc, err := clientcmd.LoadFromFile(filepath.Join(dir, "kubeconfig"))
	if err != nil {
		return 0
	}
	for _, cl := range kc.Clusters {
		u, err := url.Parse(cl.Server)
		if err != nil || u.Port() == "" {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", u.Port()))
		if err != nil {
			return 0
		}
		l.Close()
		var p int
		fmt.Sscan(u.Port(), &p)
		return p
	}
	return 0
}

// waitServing waits, after the node proxies have programmed the objects
// that exist (startNodes waits for their first full sync, which adopts the
// rules an earlier run left), until every pod that was Ready before and
// had to be restarted is Ready again. A pod that does not become Ready within restartedReadyTimeout is
// logged and not waited for, so one broken pod does not hold the cluster.
func (c *Cluster) waitServing(ctx context.Context) error {
	wait := func(ch <-chan struct{}) error {
		select {
		case <-ch:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := wait(c.podsSynced); err != nil {
		return fmt.Errorf("waiting for the pod runtimes: %w", err)
	}
	deadline := time.NewTimer(restartedReadyTimeout)
	defer deadline.Stop()
	late := false
	for _, rt := range c.runtimes {
		for _, w := range rt.workersNow() {
			if late {
				select {
				case <-w.serving:
				default:
					c.Config.Logger.Warn("a pod restarted by this run is not Ready yet", "pod", w.key)
				}
				continue
			}
			select {
			case <-w.serving:
			case <-deadline.C:
				late = true
				c.Config.Logger.Warn("a pod restarted by this run is not Ready yet", "pod", w.key)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	return nil
}

// restartedReadyTimeout bounds how long Start waits for restarted pods.
const restartedReadyTimeout = 2 * time.Minute
