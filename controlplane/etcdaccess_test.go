package controlplane_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchboard/switchboard/clustertest"
)

// probeEnv makes the test binary, re-executed as an unprivileged user, run
// probeControlPlane instead of the tests. It holds the probe's JSON input.
const probeEnv = "SWITCHBOARD_TEST_PROBE_CONTROL_PLANE"

func init() {
	if in := os.Getenv(probeEnv); in != "" {
		os.Exit(probeControlPlane(in))
	}
}

// probeInput is what the unprivileged probe is told about the control plane.
type probeInput struct {
	EtcdSocket string
	// TCPPorts are every loopback TCP port the test process listens on:
	// whatever etcd might serve on, it is among them.
	TCPPorts  []int
	APIServer string
	// Secrets are files holding credentials (admin key, kubeconfig).
	Secrets []string
}

// probeResult is what the unprivileged probe found.
type probeResult struct {
	// EtcdSocketErr is the error dialling etcd's socket ("" = connected).
	EtcdSocketErr string
	// EtcdAnswered lists the ports where an etcd v3 request got an etcd
	// answer, and what the request was.
	EtcdAnswered []string
	// APIStatus maps "METHOD path" to the HTTP status the API server gave
	// a request without credentials (0: no answer, see APIErr).
	APIStatus map[string]int
	APIErr    map[string]string
	// SecretsRead lists the credential files the probe could read.
	SecretsRead []string
}

// apiProbes are requests an anonymous client must not get through.
var apiProbes = []struct{ method, path, body string }{
	{"GET", "/api/v1/pods", ""},
	{"GET", "/api/v1/namespaces/kube-system/secrets", ""},
	{"POST", "/api/v1/namespaces/default/pods", `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"evil"},"spec":{"nodeName":"node-1","containers":[{"name":"c","image":"x","command":["sh","-c","id > /tmp/owned"]}]}}`},
}

// etcdRequests are etcd v3 HTTP-gateway calls: a read of every key and a
// write of a pod, as in the issue that prompted this test.
var etcdRequests = []struct{ path, body string }{
	{"/v3/kv/range", fmt.Sprintf(`{"key":%q,"range_end":%q}`, b64("/registry/"), b64("/registry0"))},
	{"/v3/kv/put", fmt.Sprintf(`{"key":%q,"value":%q}`, b64("/registry/pods/default/evil"), b64(`{"kind":"Pod"}`))},
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// TestEtcdUnreachableByOtherUsers starts the control plane as `up` does
// and proves that a process running as `nobody` can neither read nor write
// etcd (its socket refuses, and no TCP port of this process answers etcd's
// API over HTTP or TLS) nor get anything from the API server without a
// credential, nor read the credentials in the state directory.
func TestEtcdUnreachableByOtherUsers(t *testing.T) {
	clustertest.RequireRoot(t)
	cp := clustertest.APIServer(t)
	nobody, err := user.Lookup("nobody")
	if err != nil {
		clustertest.Skip(t, "no user nobody: "+err.Error())
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)

	// The socket must be etcd's and answer its owner, or its refusing
	// `nobody` below would prove nothing.
	if status := etcdRequest(t, unixClient(cp.EtcdSocket), "http://etcd"+etcdRequests[0].path, etcdRequests[0].body); status != http.StatusOK {
		t.Fatalf("etcd at %s answered its owner with status %d, want 200", cp.EtcdSocket, status)
	}

	ports, err := listeningPorts()
	if err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Dir(filepath.Dir(cp.RESTConfig.CertFile))
	in := probeInput{EtcdSocket: cp.EtcdSocket, TCPPorts: ports, APIServer: cp.RESTConfig.Host,
		Secrets: []string{cp.RESTConfig.KeyFile, cp.KubeconfigPath, filepath.Join(stateDir, "pki", "ca.key")}}
	res := runProbe(t, in, uint32(uid), uint32(gid))

	if res.EtcdSocketErr == "" {
		t.Errorf("nobody connected to etcd's socket %s", cp.EtcdSocket)
	} else if !strings.Contains(res.EtcdSocketErr, "permission denied") {
		t.Errorf("nobody dialling etcd's socket: %s, want permission denied", res.EtcdSocketErr)
	}
	for _, a := range res.EtcdAnswered {
		t.Errorf("etcd answered nobody: %s", a)
	}
	for _, p := range apiProbes {
		key := p.method + " " + p.path
		switch st := res.APIStatus[key]; st {
		case http.StatusUnauthorized, http.StatusForbidden:
		case 0:
			// No answer at all would mean the probe proved nothing.
			t.Errorf("%s without credentials: no answer from the API server: %s", key, res.APIErr[key])
		default:
			t.Errorf("%s without credentials: status %d, want 401 or 403", key, st)
		}
	}
	for _, f := range res.SecretsRead {
		t.Errorf("nobody can read %s", f)
	}
}

// runProbe re-executes this test binary as uid:gid with in, from a copy
// in a directory that user can enter (the go tool's build directory is
// private to root).
func runProbe(t *testing.T, in probeInput, uid, gid uint32) probeResult {
	t.Helper()
	dir, err := os.MkdirTemp("", "switchboard-probe-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "probe")
	if err := copyFile(os.Args[0], exe); err != nil {
		t.Fatal(err)
	}
	input, _ := json.Marshal(in)
	cmd := exec.Command(exe)
	cmd.Dir = dir
	cmd.Env = []string{probeEnv + "=" + string(input), "PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("probe as uid %d: %v\n%s", uid, err, stderr.String())
	}
	var res probeResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("probe output %q: %v", out, err)
	}
	return res
}

func copyFile(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}

// probeControlPlane runs as the unprivileged user: it tries everything an
// attacker on the machine would and prints what got through, as JSON.
func probeControlPlane(input string) int {
	var in probeInput
	if err := json.Unmarshal([]byte(input), &in); err != nil {
		fmt.Fprintln(os.Stderr, "probe input:", err)
		return 2
	}
	if os.Geteuid() == 0 {
		fmt.Fprintln(os.Stderr, "probe runs as root: it must run as an unprivileged user")
		return 2
	}
	res := probeResult{APIStatus: map[string]int{}, APIErr: map[string]string{}}
	if c, err := net.DialTimeout("unix", in.EtcdSocket, 5*time.Second); err != nil {
		res.EtcdSocketErr = err.Error()
	} else {
		c.Close()
		for _, r := range etcdRequests {
			if etcdRequest(nil, unixClient(in.EtcdSocket), "http://etcd"+r.path, r.body) == http.StatusOK {
				res.EtcdAnswered = append(res.EtcdAnswered, "socket "+r.path)
			}
		}
	}
	plain := &http.Client{Timeout: 5 * time.Second}
	insecure := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for _, port := range in.TCPPorts {
		for _, r := range etcdRequests {
			for scheme, c := range map[string]*http.Client{"http": plain, "https": insecure} {
				url := fmt.Sprintf("%s://127.0.0.1:%d%s", scheme, port, r.path)
				if etcdRequest(nil, c, url, r.body) == http.StatusOK {
					res.EtcdAnswered = append(res.EtcdAnswered, url)
				}
			}
		}
	}
	for _, p := range apiProbes {
		key := p.method + " " + p.path
		req, _ := http.NewRequest(p.method, in.APIServer+p.path, strings.NewReader(p.body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := insecure.Do(req)
		if err != nil {
			res.APIErr[key] = err.Error()
			continue
		}
		resp.Body.Close()
		res.APIStatus[key] = resp.StatusCode
	}
	for _, f := range in.Secrets {
		if _, err := os.ReadFile(f); err == nil {
			res.SecretsRead = append(res.SecretsRead, f)
		}
	}
	json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

func unixClient(socket string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		}}}
}

// etcdRequest POSTs an etcd v3 gateway request and returns the status when
// the answer is etcd's (a response header with a cluster id), else 0.
func etcdRequest(t *testing.T, c *http.Client, url, body string) int {
	resp, err := c.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		if t != nil {
			t.Logf("etcd request %s: %v", url, err)
		}
		return 0
	}
	defer resp.Body.Close()
	var answer struct {
		Header struct {
			ClusterID string `json:"cluster_id"`
		} `json:"header"`
	}
	if json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&answer) != nil || answer.Header.ClusterID == "" {
		return 0
	}
	return resp.StatusCode
}

// listeningPorts returns the TCP ports this process listens on, found by
// matching its socket file descriptors against /proc/net/tcp{,6}.
func listeningPorts() ([]int, error) {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err == nil && strings.HasPrefix(target, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]")] = true
		}
	}
	var ports []int
	for _, table := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		f, err := os.Open(table)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "0A" || !inodes[fields[9]] {
				continue
			}
			_, portHex, _ := strings.Cut(fields[1], ":")
			port, err := strconv.ParseInt(portHex, 16, 32)
			if err == nil {
				ports = append(ports, int(port))
			}
		}
		f.Close()
	}
	if len(ports) == 0 {
		return nil, errors.New("found no listening TCP port of this process, not even the API server's")
	}
	return ports, nil
}
