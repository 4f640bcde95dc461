package localcluster

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/switchboard/switchboard/netnamespace"
)

// egressProxy is the API server's way into the cluster network: an HTTP
// CONNECT proxy on a unix socket, named as kube-apiserver's "cluster"
// egress (its connections to kubelets, pods/proxy and services/proxy),
// that dials each target from inside a node's network namespace. The API
// server so reaches node and pod addresses although the host's root
// namespace has no address or route into the cluster, exactly as a
// Konnectivity server lets a control plane reach nodes it has no route to.
type egressProxy struct {
	log *slog.Logger

	mu    sync.Mutex
	nodes []NodeInfo
}

// egressDialTimeout bounds one connection attempt to a node or pod.
const egressDialTimeout = 30 * time.Second

// setNodes tells the proxy which namespaces it may dial from.
func (p *egressProxy) setNodes(nodes []NodeInfo) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.nodes = append([]NodeInfo(nil), nodes...)
}

// listen opens the proxy's socket at path, replacing a stale one of a
// crashed run (the state directory's lock says no live run owns it).
func (p *egressProxy) listen(path string) (net.Listener, error) {
	// sun_path holds 107 bytes and a NUL.
	if len(path) > 107 {
		return nil, fmt.Errorf("egress socket %s: path longer than a unix socket allows (107 bytes); use a shorter --state-dir", path)
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("egress socket: %w", err)
	}
	return l, nil
}

// serve accepts CONNECT requests on l until it is closed.
func (p *egressProxy) serve(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go p.handle(c)
	}
}

func (p *egressProxy) handle(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	if req.Method != http.MethodConnect {
		fmt.Fprintf(c, "HTTP/1.1 405 Method Not Allowed\r\n\r\nonly CONNECT is served\n")
		return
	}
	// The API server gives up on a dial long before the kernel's connect
	// timeout; do not keep half-open attempts to a dead address around.
	ctx, cancel := context.WithTimeout(context.Background(), egressDialTimeout)
	target, err := p.dial(ctx, req.Host)
	cancel()
	if err != nil {
		p.log.Debug("egress: dial failed", "target", req.Host, "err", err)
		msg := err.Error() + "\n"
		fmt.Fprintf(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\n\r\n%s", len(msg), msg)
		return
	}
	defer target.Close()
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		// Bytes the client sent after its request, then the rest.
		io.Copy(target, br)
		if tc, ok := target.(interface{ CloseWrite() error }); ok {
			tc.CloseWrite()
		}
		close(done)
	}()
	io.Copy(c, target)
	if uc, ok := c.(interface{ CloseWrite() error }); ok {
		uc.CloseWrite()
	}
	<-done
}

// dial connects to hostport from the namespace that reaches it best: the
// node owning a pod address, the node of that name or address, else the
// first node, whose routes and Service rules reach every node, pod and
// ClusterIP. Loopback stays in this process's namespace.
func (p *egressProxy) dial(ctx context.Context, hostport string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, fmt.Errorf("CONNECT target %q: %w", hostport, err)
	}
	p.mu.Lock()
	nodes := p.nodes
	p.mu.Unlock()
	if len(nodes) == 0 {
		return nil, fmt.Errorf("CONNECT %s: the cluster has no nodes yet", hostport)
	}
	from := nodes[0]
	addr, err := netip.ParseAddr(host)
	switch {
	case err == nil && addr.IsLoopback():
		return (&net.Dialer{}).DialContext(ctx, "tcp", hostport)
	case err == nil:
		for _, n := range nodes {
			if n.IP == addr || n.PodCIDR.Contains(addr) {
				from = n
			}
		}
	default:
		found := false
		for _, n := range nodes {
			if n.Name == host {
				from, found = n, true
				hostport = net.JoinHostPort(n.IP.String(), port)
			}
		}
		if !found {
			return nil, fmt.Errorf("CONNECT %s: no node named %q", hostport, host)
		}
	}
	return netnamespace.Dial(ctx, from.NetNS, "tcp", hostport)
}

// forwardAPIServer makes the API server reachable from the cluster network
// at addr:port (the advertised address of the `kubernetes` Service's
// endpoints): a listener in the namespace at nsPath whose connections are
// relayed to the API server on this namespace's loopback. TLS passes
// through untouched, so clients see the API server's own certificate.
func forwardAPIServer(ctx context.Context, nsPath string, addr netip.AddrPort, apiServer string) error {
	var l net.Listener
	err := netnamespace.Do(nsPath, func() error {
		var err error
		l, err = net.Listen("tcp", addr.String())
		return err
	})
	if err != nil {
		return fmt.Errorf("listen for the API server on %s: %w", addr, err)
	}
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := (&net.Dialer{}).DialContext(ctx, "tcp", apiServer)
				if err != nil {
					return
				}
				defer up.Close()
				go func() {
					io.Copy(up, c)
					up.(*net.TCPConn).CloseWrite()
				}()
				io.Copy(c, up)
			}()
		}
	}()
	return nil
}
