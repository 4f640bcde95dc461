// Package image decides what process runs a container of the local
// cluster, which has no registry and no container runtime: the container's
// image reference selects a program linked into switchboard (agnhost,
// pause, and switchboard itself, the image deploy/ runs), the host's own
// tools (busybox-, alpine- and debian-like images), the built-in echo server (any other image without a command), or nothing,
// with the reason. The command line follows Docker's and Kubernetes' rules
// exactly: a container's command replaces the image's ENTRYPOINT and drops
// its CMD, its args replace the CMD.
//
// Resolve is pure apart from the host-path lookup it is given; the runtime
// expands $(VAR) references in command and args before calling it, as the
// kubelet does before handing them to the container runtime.
package image

import (
	"fmt"
	"path"
	"strings"

	"k8s.io/kubernetes/pkg/util/parsers"

	"github.com/switchboard/switchboard/localcluster/agnhost"
)

// Kind is how a container's process is run.
type Kind int

const (
	// Unrunnable: nothing here can run the image; Reason and Message say why.
	Unrunnable Kind = iota
	// Linked: a program linked into this binary; Argv[0] is its path in its
	// image, which the binary recognises when started under that name
	// (package agnhost).
	Linked
	// Host: a program of the host; Argv[0] is its path on the host.
	Host
	// Echo: the built-in echo server; Argv is empty, the runtime builds the
	// server's own command line from the container's ports.
	Echo
)

func (k Kind) String() string {
	switch k {
	case Linked:
		return "linked"
	case Host:
		return "host"
	case Echo:
		return "echo"
	}
	return "unrunnable"
}

// Process is what to exec for one container.
type Process struct {
	Kind Kind
	// Argv is the command line; see Kind for argv[0].
	Argv []string
	// Dir is the working directory: the container's workingDir, else the
	// image's WORKDIR.
	Dir string
	// Reason and Message explain an Unrunnable image, as the container's
	// waiting state shows them.
	Reason, Message string
	// Note says, for Echo, what stands in for the image.
	Note string
	// Exposed are, for Echo, the ports the image's own program listens on
	// (its Dockerfile's EXPOSE, "80/TCP"): the echo server serves them when
	// the container declares no ports, as `kubectl create deployment
	// --image=nginx` makes it, so a Service in front of it reaches it.
	Exposed []string
}

// SwitchboardPath is the switchboard image's one file and ENTRYPOINT (as
// deploy/image builds it). Started under this argv[0], the binary is the
// plain switchboard command line.
const SwitchboardPath = "/switchboard"

// ReasonImagePull is the waiting reason of a container whose image nothing
// here can run: the kubelet's reason for an image it could not obtain.
const ReasonImagePull = "ErrImagePull"

// ReasonCannotRun is the waiting reason of a container whose program is
// not in its image (or, for host tools, not on the host).
const ReasonCannotRun = "ContainerCannotRun"

// config is a known image's runtime configuration, as its Dockerfile (or
// its base image's) sets it.
type config struct {
	entrypoint, cmd []string
	// linked maps a program path inside the image to the linked program's
	// argv[0]; any other executable of a shell image is the host's.
	linked map[string]string
	// shell: the image carries a shell and the usual tools, which the host
	// stands in for.
	shell bool
	// echoWithoutCommand: an image whose own program is a server the echo
	// server stands in for (nginx, httpd) when the container has no command.
	echoWithoutCommand bool
	// expose is the image's EXPOSE.
	expose []string
}

var agnhostLinked = map[string]string{agnhost.Path: agnhost.Path, agnhost.Path2: agnhost.Path2}

// known is keyed by the last component of the image's repository path, so
// that every registry and mirror of the same image (registry.k8s.io,
// docker.io/library, a KUBE_TEST_REPO_LIST override) resolves alike.
var known = map[string]config{
	// test/images/agnhost/Dockerfile: alpine with bind-tools, curl, netcat.
	"agnhost": {entrypoint: []string{agnhost.Path}, cmd: []string{"pause"}, linked: agnhostLinked, shell: true},
	// build/pause/Dockerfile: the image holds only /pause.
	"pause":   {entrypoint: []string{agnhost.PausePath}, linked: map[string]string{agnhost.PausePath: agnhost.PausePath}},
	"busybox": {cmd: []string{"sh"}, shell: true},
	"alpine":  {cmd: []string{"/bin/sh"}, shell: true},
	"debian":  {cmd: []string{"bash"}, shell: true},
	"ubuntu":  {cmd: []string{"/bin/bash"}, shell: true},
	// test/images/jessie-dnsutils: debian:jessie plus dnsutils, no CMD of
	// its own.
	"jessie-dnsutils": {cmd: []string{"bash"}, shell: true},
	// test/images/glibc-dns-testing, jessie-dnsutils' successor (the DNS
	// conformance tests' glibc querier since v1.36): debian:bookworm-slim
	// plus dnsutils, no CMD of its own.
	"glibc-dns-testing": {cmd: []string{"bash"}, shell: true},
	// Debian-based servers: their own program is the echo server's job,
	// a command of theirs runs through the host's tools.
	// Both EXPOSE 80 (nginx-slim, the StatefulSet tutorial's, too).
	"nginx":      {entrypoint: []string{"/docker-entrypoint.sh"}, cmd: []string{"nginx", "-g", "daemon off;"}, shell: true, echoWithoutCommand: true, expose: []string{"80/TCP"}},
	"nginx-slim": {cmd: []string{"nginx", "-g", "daemon off;"}, shell: true, echoWithoutCommand: true, expose: []string{"80/TCP"}},
	"httpd":      {cmd: []string{"httpd-foreground"}, shell: true, echoWithoutCommand: true, expose: []string{"80/TCP"}},
	// deploy/image: the image holds only the static binary, its
	// ENTRYPOINT, so the manifests of deploy/ run their subcommand (args:
	// [proxy, ...]) as this very binary.
	"switchboard": {entrypoint: []string{SwitchboardPath}, linked: map[string]string{SwitchboardPath: SwitchboardPath}},
}

// Resolve decides what runs a container with image ref, command, args and
// workingDir. lookPath finds a program on the host (exec.LookPath).
func Resolve(ref string, command, args []string, workingDir string, lookPath func(string) (string, error)) Process {
	// As the kubelet parses it (applyDefaultImageTag): repo is the
	// normalised name, docker.io/library/busybox for busybox.
	repo, _, _, err := parsers.ParseImageName(ref)
	if err != nil {
		// The kubelet's InvalidImageName.
		return Process{Reason: "InvalidImageName", Message: fmt.Sprintf("Failed to apply default image tag %q: %v", ref, err)}
	}
	dir := workingDir
	if dir == "" {
		dir = "/" // every known image's WORKDIR
	}
	cfg, ok := known[path.Base(repo)]
	if !ok {
		if len(command) == 0 {
			return Process{Kind: Echo, Dir: dir, Note: echoNote(ref, args, nil)}
		}
		return Process{Reason: ReasonImagePull, Message: fmt.Sprintf(
			"Failed to pull image %q: switchboard up runs no registry images; it runs agnhost, pause, switchboard, busybox-, alpine- and debian-like images (through the host's tools), and the built-in echo server for an image without a command", ref)}
	}
	if len(command) == 0 && cfg.echoWithoutCommand {
		return Process{Kind: Echo, Dir: dir, Note: echoNote(ref, args, cfg.expose), Exposed: cfg.expose}
	}
	argv := entrypointCmd(cfg, command, args)
	if len(argv) == 0 {
		// Docker's "no command specified".
		return Process{Reason: "CreateContainerError", Message: fmt.Sprintf("image %q: no command specified", ref)}
	}
	prog := argv[0]
	if strings.Contains(prog, "/") && !path.IsAbs(prog) {
		prog = path.Join(dir, prog)
	}
	if linked, ok := cfg.linked[path.Clean(prog)]; ok && strings.Contains(prog, "/") {
		return Process{Kind: Linked, Argv: append([]string{linked}, argv[1:]...), Dir: dir}
	}
	if !cfg.shell {
		// The image holds its linked programs only; the kubelet reports a
		// missing executable this way.
		return Process{Reason: ReasonCannotRun, Message: fmt.Sprintf(
			"exec: %q: executable file not found in image %q", argv[0], ref)}
	}
	host, err := hostProgram(argv[0], prog, lookPath)
	if err != nil {
		return Process{Reason: ReasonCannotRun, Message: fmt.Sprintf("image %q runs the host's tools: %v", ref, err)}
	}
	return Process{Kind: Host, Argv: append([]string{host}, argv[1:]...), Dir: dir}
}

// entrypointCmd is the command line of a container from its image's
// configuration, as Kubernetes documents it ("Define a command and
// arguments for a container"): command replaces ENTRYPOINT and, with it,
// CMD; args alone replace CMD.
func entrypointCmd(cfg config, command, args []string) []string {
	switch {
	case len(command) > 0:
		return append(append([]string{}, command...), args...)
	case len(args) > 0:
		return append(append([]string{}, cfg.entrypoint...), args...)
	default:
		return append(append([]string{}, cfg.entrypoint...), cfg.cmd...)
	}
}

// hostProgram finds the host's program for one of an image's: the same
// path when the host has it, else its name on the host's PATH (busybox's
// /bin/nslookup is the host's /usr/bin/nslookup).
func hostProgram(name, abs string, lookPath func(string) (string, error)) (string, error) {
	if !strings.Contains(name, "/") {
		return lookPath(name)
	}
	if p, err := lookPath(abs); err == nil {
		return p, nil
	}
	p, err := lookPath(path.Base(abs))
	if err != nil {
		return "", fmt.Errorf("%s: not on this host: %w", name, err)
	}
	return p, nil
}

func echoNote(ref string, args, exposed []string) string {
	n := fmt.Sprintf("image %q runs switchboard's built-in echo server on the container's ports", ref)
	if len(exposed) > 0 {
		n += fmt.Sprintf(" (when it declares none, the image's %s)", strings.Join(exposed, ", "))
	}
	if len(args) > 0 {
		n += "; its args are not used"
	}
	return n
}
