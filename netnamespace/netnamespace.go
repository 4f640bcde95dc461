// Package netnamespace runs code inside a network namespace without moving the
// rest of the process (each node of a local cluster is one namespace, with
// its proxy running in the shared process), and creates throw-away
// namespaces for kernel tests and benchmarks.
package netnamespace

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netns"
)

// Unique returns prefix with a random suffix, so parallel and crashed runs
// never collide.
func Unique(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// Create makes a named network namespace (in /run/netns) with loopback up
// and returns its path and a function deleting it.
func Create(name string) (string, func(), error) {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return "", nil, fmt.Errorf("create network namespace %s: %v: %s", name, err, out)
	}
	del := func() { exec.Command("ip", "netns", "delete", name).Run() }
	if err := IP(name, "link", "set", "lo", "up"); err != nil {
		del()
		return "", nil, err
	}
	return "/run/netns/" + name, del, nil
}

// IP runs "ip -n ns args...".
func IP(ns string, args ...string) error {
	out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip -n %s %s: %v: %s", ns, strings.Join(args, " "), err, out)
	}
	return nil
}

// Exec runs a command inside namespace ns.
func Exec(ns string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s: %v: %s", ns, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Do runs fn with the calling OS thread inside the namespace at path, then
// returns the thread to where it was. Sockets fn opens stay in that
// namespace after Do returns. An empty path is the process's own namespace:
// fn runs as it is, since entering a namespace (setns) needs CAP_SYS_ADMIN,
// which a process that stays in its own (a hostNetwork pod with
// CAP_NET_ADMIN alone) does not have.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("get current network namespace: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return fmt.Errorf("enter network namespace %s: %w", path, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			// A thread stuck in the wrong namespace must not be reused.
			panic(fmt.Sprintf("return to original network namespace: %v", err))
		}
	}()
	return fn()
}

// Dial connects to address from inside the namespace at path, like
// net.Dialer.DialContext; the connection stays in that namespace.
func Dial(ctx context.Context, path, network, address string) (net.Conn, error) {
	var c net.Conn
	err := Do(path, func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// HTTPClient is an HTTP client whose connections are made inside the
// namespace at path (a node's metrics server on its loopback, say).
func HTTPClient(path string, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, address string) (net.Conn, error) {
			return Dial(ctx, path, network, address)
		},
	}}
}
