package proxy

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/switchboard/switchboard/proxy/snapshot"
)

// healthCheckServers are the per-port servers of Services with a
// healthCheckNodePort (externalTrafficPolicy Local), as kube-proxy's
// service health server runs them: one per port, answering on the node's
// addresses of the Service's families inside the proxy's namespace.
type healthCheckServers struct {
	netns   string
	nodeIPs []netip.Addr
	status  *syncStatus
	log     *slog.Logger

	mu sync.Mutex
	// open are the servers listening, by port; wants is what each Service
	// asks for, byPort which Service a port serves.
	open   map[int32]*hcServer
	wants  map[snapshot.ServiceKey]hcWant
	byPort map[int32]snapshot.ServiceKey
}

func newHealthCheckServers(netns string, nodeIPs []netip.Addr, status *syncStatus, log *slog.Logger) *healthCheckServers {
	return &healthCheckServers{netns: netns, nodeIPs: nodeIPs, status: status, log: log,
		open: map[int32]*hcServer{}, wants: map[snapshot.ServiceKey]hcWant{}, byPort: map[int32]snapshot.ServiceKey{}}
}

// hcServer answers one Service's healthCheckNodePort on each node address
// of the Service's families, as kube-proxy's service health server does
// (one per family, on the node's addresses, never on loopback).
type hcServer struct {
	servers []*http.Server
	status  *syncStatus
	mu      sync.Mutex
	svc     snapshot.ServiceKey
	// fams says which families the Service has ([0] IPv4, [1] IPv6); n
	// counts its ready local endpoints per family.
	fams [2]bool
	n    [2]int
}

func (s *hcServer) close() {
	for _, srv := range s.servers {
		srv.Close()
	}
}

// famIndex indexes per-family arrays: [0] IPv4, [1] IPv6.
func famIndex(is4 bool) int {
	if is4 {
		return 0
	}
	return 1
}

// handler serves the family is4's count.
func (s *hcServer) handler(is4 bool) http.Handler {
	fam := famIndex(is4)
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		svc, n := s.svc, s.n[fam]
		s.mu.Unlock()
		healthy := s.status.health(time.Now()).Healthy
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(n))
		if n != 0 && healthy {
			w.WriteHeader(http.StatusOK)
		} else {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		// kube-proxy's body, byte for byte (it dedents a template).
		fmt.Fprintf(w, "{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": %v\n}",
			svc.Namespace, svc.Name, n, healthy)
	})
}

// hcWant is what one Service asks of the healthCheckNodePort servers:
// the port, the Service's families and its ready local endpoints in each.
type hcWant struct {
	port int32
	fams [2]bool
	n    [2]int
}

// healthCheckOf is what a Service's ports ask of the healthCheckNodePort
// servers (per Service, not per port: the ports share their pods).
func healthCheckOf(ports []*snapshot.ServicePort) hcWant {
	var w hcWant
	for _, sp := range ports {
		if sp.HealthCheckNodePort == 0 {
			continue
		}
		w.port = sp.HealthCheckNodePort
		for _, ip := range sp.ClusterIPs {
			w.fams[famIndex(ip.Is4())] = true
			w.n[famIndex(ip.Is4())] = snapshot.LocalReadyEndpoints(ports, ip.Is4())
		}
		break
	}
	return w
}

// update brings the servers of the changed Services in step with the
// programmed snapshot; a full sync reconciles all of them.
func (h *healthCheckServers) update(snap *snapshot.Snapshot, changes snapshot.Changes) {
	h.mu.Lock()
	defer h.mu.Unlock()
	touched := map[int32]bool{}
	set := func(key snapshot.ServiceKey, w hcWant) {
		old := h.wants[key]
		if old.port != 0 {
			touched[old.port] = true
			if h.byPort[old.port] == key {
				delete(h.byPort, old.port)
			}
		}
		if w.port == 0 {
			delete(h.wants, key)
			return
		}
		h.wants[key] = w
		h.byPort[w.port] = key
		touched[w.port] = true
	}
	if changes.Full {
		for port := range h.open {
			touched[port] = true
		}
		h.wants, h.byPort = map[snapshot.ServiceKey]hcWant{}, map[int32]snapshot.ServiceKey{}
		for key, ports := range snap.All() {
			if w := healthCheckOf(ports); w.port != 0 {
				set(key, w)
			}
		}
	} else {
		for _, key := range changes.Keys {
			set(key, healthCheckOf(snap.Get(key)))
		}
	}
	for port := range touched {
		key, wanted := h.byPort[port]
		w := h.wants[key]
		if s, open := h.open[port]; open {
			if wanted && s.fams == w.fams {
				s.mu.Lock()
				s.svc, s.n = key, w.n
				s.mu.Unlock()
				continue
			}
			s.close()
			delete(h.open, port)
		}
		if !wanted {
			continue
		}
		s := &hcServer{status: h.status, svc: key, fams: w.fams, n: w.n}
		for _, ip := range h.nodeIPs {
			if !w.fams[famIndex(ip.Is4())] {
				continue
			}
			network := "tcp6"
			if ip.Is4() {
				network = "tcp4"
			}
			l, err := listenIn(h.netns, network, netip.AddrPortFrom(ip, uint16(port)).String())
			if err != nil {
				h.log.Error("open healthCheckNodePort", "service", key, "port", port, "err", err)
				continue
			}
			s.servers = append(s.servers, serveHTTP(l, s.handler(ip.Is4()), h.log))
		}
		h.open[port] = s
	}
}

// close closes every server.
func (h *healthCheckServers) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.open {
		s.close()
	}
}
