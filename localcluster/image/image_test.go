package image

import (
	"errors"
	"os/exec"
	"reflect"
	"strings"
	"testing"
)

// hostWith is a host whose PATH holds exactly these programs.
func hostWith(progs ...string) func(string) (string, error) {
	return func(name string) (string, error) {
		for _, p := range progs {
			if name == p || (!strings.Contains(name, "/") && strings.HasSuffix(p, "/"+name)) {
				return p, nil
			}
		}
		return "", &exec.Error{Name: name, Err: exec.ErrNotFound}
	}
}

func TestResolve(t *testing.T) {
	host := hostWith("/usr/bin/sh", "/usr/bin/bash", "/usr/bin/nslookup", "/usr/bin/dig", "/usr/bin/wget", "/usr/bin/nc", "/usr/bin/sleep")
	const agn = "registry.k8s.io/e2e-test-images/agnhost:2.56"
	for _, tc := range []struct {
		name          string
		image         string
		command, args []string
		dir           string
		want          Process
	}{
		// agnhost: ENTRYPOINT ["/agnhost"], CMD ["pause"].
		{name: "agnhost defaults", image: agn,
			want: Process{Kind: Linked, Argv: []string{"/agnhost", "pause"}, Dir: "/"}},
		{name: "agnhost args replace CMD", image: agn, args: []string{"netexec", "--http-port=8080"},
			want: Process{Kind: Linked, Argv: []string{"/agnhost", "netexec", "--http-port=8080"}, Dir: "/"}},
		{name: "agnhost command names the binary", image: agn, command: []string{"/agnhost", "serve-hostname"}, args: []string{"--port", "9376"},
			want: Process{Kind: Linked, Argv: []string{"/agnhost", "serve-hostname", "--port", "9376"}, Dir: "/"}},
		{name: "agnhost-2 link", image: agn, command: []string{"/agnhost-2", "porter"},
			want: Process{Kind: Linked, Argv: []string{"/agnhost-2", "porter"}, Dir: "/"}},
		{name: "agnhost relative to workdir", image: agn, command: []string{"./agnhost", "pause"},
			want: Process{Kind: Linked, Argv: []string{"/agnhost", "pause"}, Dir: "/"}},
		{name: "agnhost command drops CMD", image: agn, command: []string{"/agnhost"},
			want: Process{Kind: Linked, Argv: []string{"/agnhost"}, Dir: "/"}},
		{name: "agnhost shell command is the host's", image: agn, command: []string{"/bin/sh", "-c", "echo $(HOSTNAME)"}, dir: "/tmp",
			want: Process{Kind: Host, Argv: []string{"/usr/bin/sh", "-c", "echo $(HOSTNAME)"}, Dir: "/tmp"}},
		{name: "agnhost mirror", image: "my.mirror:5000/e2e-test-images/agnhost@sha256:" + strings.Repeat("a", 64), args: []string{"pause"},
			want: Process{Kind: Linked, Argv: []string{"/agnhost", "pause"}, Dir: "/"}},
		// pause: ENTRYPOINT ["/pause"], nothing else in the image.
		{name: "pause", image: "registry.k8s.io/pause:3.10",
			want: Process{Kind: Linked, Argv: []string{"/pause"}, Dir: "/"}},
		{name: "pause has no shell", image: "registry.k8s.io/pause:3.10", command: []string{"sh"},
			want: Process{Reason: ReasonCannotRun, Message: `exec: "sh": executable file not found in image "registry.k8s.io/pause:3.10"`}},
		// switchboard (deploy/image): ENTRYPOINT ["/switchboard"], no CMD.
		{name: "switchboard args are its subcommand", image: "switchboard:latest", args: []string{"proxy", "--config=/etc/proxy.conf"},
			want: Process{Kind: Linked, Argv: []string{"/switchboard", "proxy", "--config=/etc/proxy.conf"}, Dir: "/"}},
		{name: "switchboard from a registry", image: "registry.example.com/team/switchboard:v1", command: []string{"/switchboard", "dns"},
			want: Process{Kind: Linked, Argv: []string{"/switchboard", "dns"}, Dir: "/"}},
		{name: "switchboard has no shell", image: "switchboard", command: []string{"sh"},
			want: Process{Reason: ReasonCannotRun, Message: `exec: "sh": executable file not found in image "switchboard"`}},
		{name: "switchboard without args", image: "switchboard",
			want: Process{Kind: Linked, Argv: []string{"/switchboard"}, Dir: "/"}},
		// busybox: CMD ["sh"], no ENTRYPOINT.
		{name: "busybox command", image: "busybox", command: []string{"sh", "-c", "echo hi; sleep 3600"},
			want: Process{Kind: Host, Argv: []string{"/usr/bin/sh", "-c", "echo hi; sleep 3600"}, Dir: "/"}},
		{name: "busybox args are the command line", image: "docker.io/library/busybox:1.36", args: []string{"sleep", "10"},
			want: Process{Kind: Host, Argv: []string{"/usr/bin/sleep", "10"}, Dir: "/"}},
		{name: "busybox defaults to sh", image: "registry.k8s.io/e2e-test-images/busybox:1.36.1-1",
			want: Process{Kind: Host, Argv: []string{"/usr/bin/sh"}, Dir: "/"}},
		{name: "busybox path missing on host uses PATH", image: "busybox", command: []string{"/bin/nslookup", "kubernetes.default"},
			want: Process{Kind: Host, Argv: []string{"/usr/bin/nslookup", "kubernetes.default"}, Dir: "/"}},
		{name: "alpine defaults to /bin/sh", image: "alpine:3.20",
			want: Process{Kind: Host, Argv: []string{"/usr/bin/sh"}, Dir: "/"}},
		{name: "jessie-dnsutils dig", image: "registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7", command: []string{"sh", "-c", "dig +short kubernetes.default"},
			want: Process{Kind: Host, Argv: []string{"/usr/bin/sh", "-c", "dig +short kubernetes.default"}, Dir: "/"}},
		// The DNS conformance tests' glibc querier (v1.36's jessie-dnsutils).
		{name: "glibc-dns-testing dig", image: "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.0.0", command: []string{"sh", "-c", "dig +short kubernetes.default"},
			want: Process{Kind: Host, Argv: []string{"/usr/bin/sh", "-c", "dig +short kubernetes.default"}, Dir: "/"}},
		{name: "glibc-dns-testing defaults to bash", image: "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.0.0",
			want: Process{Kind: Host, Argv: []string{"/usr/bin/bash"}, Dir: "/"}},
		{name: "host lacks the program", image: "debian", command: []string{"iperf3"},
			want: Process{Reason: ReasonCannotRun, Message: `image "debian" runs the host's tools: exec: "iperf3": executable file not found in $PATH`}},
		// Echo server: servers' own programs, and unknown images without a command.
		{name: "nginx", image: "nginx",
			want: Process{Kind: Echo, Dir: "/", Note: `image "nginx" runs switchboard's built-in echo server on the container's ports (when it declares none, the image's 80/TCP)`, Exposed: []string{"80/TCP"}}},
		{name: "nginx-slim", image: "registry.k8s.io/nginx-slim:0.21",
			want: Process{Kind: Echo, Dir: "/", Note: `image "registry.k8s.io/nginx-slim:0.21" runs switchboard's built-in echo server on the container's ports (when it declares none, the image's 80/TCP)`, Exposed: []string{"80/TCP"}}},
		{name: "nginx with a shell command", image: "nginx:1.27", command: []string{"/bin/sh", "-c", "true"},
			want: Process{Kind: Host, Argv: []string{"/usr/bin/sh", "-c", "true"}, Dir: "/"}},
		{name: "unknown without command", image: "example.com/shop/web:v2", args: []string{"--listen", ":80"},
			want: Process{Kind: Echo, Dir: "/", Note: `image "example.com/shop/web:v2" runs switchboard's built-in echo server on the container's ports; its args are not used`}},
		// Nothing can run these.
		{name: "unknown with command", image: "example.com/shop/web:v2", command: []string{"/app/web"},
			want: Process{Reason: ReasonImagePull, Message: `Failed to pull image "example.com/shop/web:v2": switchboard up runs no registry images; it runs agnhost, pause, switchboard, busybox-, alpine- and debian-like images (through the host's tools), and the built-in echo server for an image without a command`}},
		{name: "invalid reference", image: "Bad Image",
			want: Process{Reason: "InvalidImageName", Message: `Failed to apply default image tag "Bad Image": couldn't parse image name "Bad Image": invalid reference format: repository name (library/Bad Image) must be lowercase`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Resolve(tc.image, tc.command, tc.args, tc.dir, host)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Resolve(%q, %q, %q, %q)\n got %+v\nwant %+v", tc.image, tc.command, tc.args, tc.dir, got, tc.want)
			}
		})
	}
}

// TestResolveDoesNotAlias checks that the result never shares the caller's
// slices (the runtime appends to it).
func TestResolveDoesNotAlias(t *testing.T) {
	cmd := make([]string, 2, 8)
	copy(cmd, []string{"/agnhost", "pause"})
	p := Resolve("registry.k8s.io/e2e-test-images/agnhost:2.56", cmd, nil, "", func(string) (string, error) { return "", errors.New("none") })
	p.Argv[1] = "changed"
	if cmd[1] != "pause" {
		t.Fatalf("Resolve's argv aliases the container's command")
	}
}
