// Package echoserver is what a pod runs in switchboard's local cluster when
// its container has no command: there is no container runtime and no image,
// so `image: nginx` gets a server on each declared containerPort that says
// who answered (pod name and IP, the port) and who asked (the peer address
// it saw). That makes load balancing and source-IP preservation observable
// from a plain `curl`.
package echoserver

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Reply is what every request gets back, as one line of JSON.
type Reply struct {
	Pod       string `json:"pod"`
	Namespace string `json:"namespace,omitempty"`
	PodIP     string `json:"podIP,omitempty"`
	Port      int    `json:"port"`
	Protocol  string `json:"protocol"`
	// Peer is the client address as this pod saw it: the client pod's IP
	// when the source was preserved, a node's address when masqueraded.
	Peer string `json:"peer"`
	// Path is the HTTP request path (TCP only).
	Path string `json:"path,omitempty"`
}

// Port is one port to serve.
type Port struct {
	Number   int
	Protocol string // TCP or UDP
}

// ParsePort parses "80", "80/TCP" or "53/udp".
func ParsePort(s string) (Port, error) {
	num, proto, _ := strings.Cut(s, "/")
	n, err := strconv.Atoi(num)
	if err != nil || n < 1 || n > 65535 {
		return Port{}, fmt.Errorf("port %q: want NUMBER[/TCP|/UDP] with 1 <= NUMBER <= 65535", s)
	}
	proto = strings.ToUpper(proto)
	switch proto {
	case "":
		proto = "TCP"
	case "TCP", "UDP":
	default:
		return Port{}, fmt.Errorf("port %q: protocol %q not served by the echo server (TCP or UDP)", s, proto)
	}
	return Port{Number: n, Protocol: proto}, nil
}

// ParseArgs parses the arguments the local cluster's runtime gives the echo
// command (--pod, --namespace, --pod-ip and one --port per containerPort),
// for programs that serve it without switchboard's CLI: test binaries that
// run themselves as the pods' echo server.
func ParseArgs(args []string) (Server, []Port, error) {
	fs := flag.NewFlagSet("echo", flag.ContinueOnError)
	var s Server
	fs.StringVar(&s.Pod, "pod", "", "pod name to report")
	fs.StringVar(&s.Namespace, "namespace", "", "pod namespace to report")
	fs.StringVar(&s.PodIP, "pod-ip", "", "pod IP to report")
	var ports []Port
	fs.Func("port", "port to serve, NUMBER[/TCP|/UDP] (repeatable)", func(v string) error {
		p, err := ParsePort(v)
		ports = append(ports, p)
		return err
	})
	err := fs.Parse(args)
	return s, ports, err
}

// Server answers on a set of ports.
type Server struct {
	Pod, Namespace, PodIP string
}

// Serve listens on every port and answers until ctx ends. It returns an
// error at once if a port cannot be bound.
func (s *Server) Serve(ctx context.Context, ports []Port) error {
	if len(ports) == 0 {
		// A pod that declares no port still "runs"; it just serves nothing.
		<-ctx.Done()
		return nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(ports))
	var closers []func()
	for _, p := range ports {
		addr := net.JoinHostPort("", strconv.Itoa(p.Number))
		switch p.Protocol {
		case "UDP":
			conn, err := net.ListenPacket("udp", addr)
			if err != nil {
				return fmt.Errorf("listen %d/UDP: %w", p.Number, err)
			}
			closers = append(closers, func() { conn.Close() })
			wg.Add(1)
			go func() { defer wg.Done(); errs <- s.serveUDP(conn, p.Number) }()
		default:
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("listen %d/TCP: %w", p.Number, err)
			}
			srv := &http.Server{Handler: s.handler(p.Number), ReadHeaderTimeout: 10 * time.Second}
			closers = append(closers, func() {
				sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				srv.Shutdown(sctx)
			})
			wg.Add(1)
			go func() { defer wg.Done(); errs <- srv.Serve(l) }()
		}
	}
	select {
	case <-ctx.Done():
	case err := <-errs:
		if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			for _, c := range closers {
				c()
			}
			return err
		}
	}
	for _, c := range closers {
		c()
	}
	wg.Wait()
	return nil
}

func (s *Server) reply(port int, proto, peer, path string) []byte {
	b, _ := json.Marshal(Reply{Pod: s.Pod, Namespace: s.Namespace, PodIP: s.PodIP, Port: port, Protocol: proto, Peer: peer, Path: path})
	return append(b, '\n')
}

func (s *Server) handler(port int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(s.reply(port, "TCP", r.RemoteAddr, r.URL.Path))
	})
}

func (s *Server) serveUDP(conn net.PacketConn, port int) error {
	buf := make([]byte, 64*1024)
	for {
		_, addr, err := conn.ReadFrom(buf)
		if err != nil {
			return err
		}
		conn.WriteTo(s.reply(port, "UDP", addr.String(), ""), addr)
	}
}
