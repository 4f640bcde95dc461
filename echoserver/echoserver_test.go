package echoserver

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"
)

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestParsePort(t *testing.T) {
	for in, want := range map[string]Port{"80": {80, "TCP"}, "53/udp": {53, "UDP"}, "8080/TCP": {8080, "TCP"}} {
		got, err := ParsePort(in)
		if err != nil || got != want {
			t.Errorf("ParsePort(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0", "70000", "80/SCTP", "http"} {
		if _, err := ParsePort(bad); err == nil {
			t.Errorf("ParsePort(%q): want an error", bad)
		}
	}
}

// TestServeTCPAndUDP checks both protocols answer with who answered and who asked.
func TestServeTCPAndUDP(t *testing.T) {
	port := freePort(t)
	s := &Server{Pod: "nginx-1", Namespace: "default", PodIP: "127.0.0.1"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Serve(ctx, []Port{{port, "TCP"}, {port, "UDP"}}) }()
	t.Cleanup(func() { cancel(); <-done })

	var r Reply
	var err error
	for i := 0; i < 50; i++ { // the listener comes up asynchronously
		var resp *http.Response
		resp, err = http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/hello")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			err = json.Unmarshal(body, &r)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("HTTP: %v", err)
	}
	if r.Pod != "nginx-1" || r.Port != port || r.Protocol != "TCP" || r.Path != "/hello" {
		t.Errorf("TCP reply %+v", r)
	}
	if host, _, _ := net.SplitHostPort(r.Peer); host != "127.0.0.1" {
		t.Errorf("TCP peer %q, want 127.0.0.1:*", r.Peer)
	}

	conn, err := net.Dial("udp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	conn.Write([]byte("ping"))
	buf := make([]byte, 1024)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("UDP: %v", err)
	}
	var u Reply
	if err := json.Unmarshal(buf[:n], &u); err != nil {
		t.Fatal(err)
	}
	if u.Protocol != "UDP" || u.Port != port || u.Peer != conn.LocalAddr().String() {
		t.Errorf("UDP reply %+v, want peer %s", u, conn.LocalAddr())
	}
}

// TestPortInUse checks a port that cannot be bound is an error, not a hang.
func TestPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	s := &Server{Pod: "p"}
	if err := s.Serve(context.Background(), []Port{{port, "TCP"}}); err == nil {
		t.Fatal("want an error for a port in use")
	}
}
