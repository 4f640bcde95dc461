package nftables

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/switchboard/switchboard/clustertest"
	"github.com/switchboard/switchboard/netnamespace"
	"github.com/switchboard/switchboard/proxy/snapshot"
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestKernelIPv6AdoptionAndForeignTables programs an IPv6 ClusterIP into a
// node namespace and sends real packets through it from a client namespace;
// then a second Tables (a restarted proxy) adopts the table, drops what is
// no longer wanted, and leaves a table it did not create alone.
func TestKernelIPv6AdoptionAndForeignTables(t *testing.T) {
	clustertest.RequireRoot(t)
	node, nodePath := clustertest.NetNS(t, "sbn6")
	client, clientPath := clustertest.NetNS(t, "sbc6")
	backend, backendPath := clustertest.NetNS(t, "sbb6")
	_, err := netnamespace.Exec(node, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	must(t, err)
	link := func(peer, nodeSide, peerSide string) {
		dev := "v-" + peer[len(peer)-6:]
		must(t, netnamespace.IP(node, "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", peer))
		must(t, netnamespace.IP(node, "addr", "add", nodeSide+"/64", "dev", dev, "nodad"))
		must(t, netnamespace.IP(node, "link", "set", dev, "up"))
		must(t, netnamespace.IP(peer, "addr", "add", peerSide+"/64", "dev", "eth0", "nodad"))
		must(t, netnamespace.IP(peer, "link", "set", "eth0", "up"))
		must(t, netnamespace.IP(peer, "-6", "route", "add", "default", "via", nodeSide))
	}
	link(client, "fd00:1::1", "fd00:1::2")
	link(backend, "fd00:244::1", "fd00:244::2")

	// A table someone else owns, with a name like ours in another family.
	_, err = netnamespace.Exec(node, "nft", "add table inet switchboard; add table ip6 other; add chain ip6 other c; add rule ip6 other c counter")
	must(t, err)

	var l net.Listener
	must(t, netnamespace.Do(backendPath, func() error {
		var err error
		l, err = net.Listen("tcp", "[fd00:244::2]:8080")
		return err
	}))
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "backend %s\n", c.RemoteAddr())
			c.Close()
		}
	}()

	vip := netip.MustParseAddr("fd00:96::10")
	key := snapshot.ServiceKey{Namespace: "ns", Name: "web"}
	sp := &snapshot.ServicePort{Key: snapshot.PortKey{ServiceKey: key, Protocol: v1.ProtocolTCP}, Protocol: v1.ProtocolTCP, Port: 80,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10"), vip},
		Endpoints:  []snapshot.Endpoint{{Addr: netip.MustParseAddr("fd00:244::2"), Port: 8080, Ready: true, Serving: true}}}
	stale := snapshot.ServiceKey{Namespace: "ns", Name: "gone"}
	staleSP := &snapshot.ServicePort{Key: snapshot.PortKey{ServiceKey: stale, Protocol: v1.ProtocolTCP}, Protocol: v1.ProtocolTCP, Port: 81,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("fd00:96::99")},
		Endpoints:  []snapshot.Endpoint{{Addr: netip.MustParseAddr("fd00:244::3"), Port: 1, Ready: true}, {Addr: netip.MustParseAddr("fd00:244::4"), Port: 1, Ready: true}}}

	k1, err := New(Config{NetNS: nodePath})
	must(t, err)
	must(t, k1.Sync(snapshot.New(map[snapshot.ServiceKey][]*snapshot.ServicePort{key: {sp}, stale: {staleSP}}), snapshot.Changes{Full: true}))
	k1.Close()

	request := func() (string, error) {
		var c net.Conn
		err := netnamespace.Do(clientPath, func() error {
			var err error
			c, err = net.DialTimeout("tcp", net.JoinHostPort(vip.String(), "80"), 3*time.Second)
			return err
		})
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		return bufio.NewReader(c).ReadString('\n')
	}
	line, err := request()
	if err != nil || !strings.HasPrefix(line, "backend [fd00:1::2]") {
		t.Fatalf("IPv6 VIP: got %q, %v; want the backend seeing the client's address", line, err)
	}

	// Restart: a new Tables adopts the table; the stale Service is gone
	// from the new snapshot and must disappear from the kernel.
	k2, err := New(Config{NetNS: nodePath})
	must(t, err)
	defer k2.Close()
	must(t, k2.Sync(snapshot.New(map[snapshot.ServiceKey][]*snapshot.ServicePort{key: {sp}}), snapshot.Changes{Full: true}))
	out, err := netnamespace.Exec(node, "nft", "list", "ruleset")
	must(t, err)
	// Stats counts the rules the kernel holds, as nft lists them.
	if got, want := k2.Stats().Rules, kernelRules(t, node); got != want {
		t.Errorf("Stats().Rules = %d, the kernel's tables hold %d", got, want)
	}
	if strings.Contains(out, "fd00:96::99") {
		t.Errorf("adopted table still holds the removed Service:\n%s", out)
	}
	if !strings.Contains(out, "table inet switchboard") || !strings.Contains(out, "table ip6 other") || !strings.Contains(out, "counter packets") {
		t.Errorf("tables the proxy did not create were changed:\n%s", out)
	}
	if line, err := request(); err != nil || !strings.HasPrefix(line, "backend") {
		t.Fatalf("IPv6 VIP after adoption: got %q, %v", line, err)
	}
}

// kernelRules counts the rules of both of our tables as nft lists them.
func kernelRules(t *testing.T, ns string) int {
	t.Helper()
	n := 0
	for _, fam := range []string{"ip", "ip6"} {
		out, err := netnamespace.Exec(ns, "nft", "-j", "list", "table", fam, TableName)
		must(t, err)
		var doc struct {
			Nftables []map[string]json.RawMessage `json:"nftables"`
		}
		must(t, json.Unmarshal([]byte(out), &doc))
		for _, o := range doc.Nftables {
			if _, ok := o["rule"]; ok {
				n++
			}
		}
	}
	return n
}
