package localcluster

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	utilsysctl "k8s.io/component-helpers/node/util/sysctl"

	"golang.org/x/sys/unix"
)

// containerInitName is argv[0] of the short-lived process that sets up a
// container from the inside and then execs its command (as `runc init`
// does). The runtime starts this executable under that name in fresh PID,
// mount, UTS and IPC namespaces, inside the pod's network namespace; the
// package's init function recognises the name, so every binary linking
// this package (switchboard itself, and test binaries) can be that process
// without a subcommand of its own.
const containerInitName = "switchboard-container-init"

// selfExe starts this very executable, also once its file was replaced
// (a rebuilt binary) while `up` or the pods it started run.
const selfExe = "/proc/self/exe"

// containerExecMarker is argv[1] of this executable when nsenter starts
// it inside a running container to exec a program linked into it (`kubectl
// exec POD -- /agnhost dns-suffix`): it re-executes itself with the
// arguments after the marker, so argv[0] is the program's path in its image,
// which the program's package recognises (nsenter cannot set argv[0]).
const containerExecMarker = "--switchboard-container-exec"

func init() {
	if len(os.Args) > 2 && os.Args[1] == containerExecMarker {
		// /proc is the container's, and self is this process.
		err := syscall.Exec("/proc/self/exe", os.Args[2:], os.Environ())
		fmt.Fprintf(os.Stderr, "switchboard: exec %s in container: %v\n", os.Args[2], err)
		os.Exit(127)
	}
	if filepath.Base(os.Args[0]) == containerInitName && len(os.Args) == 2 {
		err := containerInit(os.Args[1])
		// Only reached when the command could not be exec'd.
		fmt.Fprintf(os.Stderr, "switchboard: start container: %v\n", err)
		os.Exit(128)
	}
}

// initSpec is what the container init is told, as JSON in its argv[1].
type initSpec struct {
	// Cgroup is the pod's cgroup directory to join first, before the
	// command can fork, on v1; on v2 the process is born in it (see
	// cgroups.place).
	Cgroup string `json:"cgroup"`
	// EtcDir holds files (resolv.conf, hosts) bound over /etc's.
	EtcDir   string `json:"etcDir"`
	Hostname string `json:"hostname"`
	// Mounts are the container's volumes and termination message file,
	// bound in order after /etc's files.
	Mounts []bindMount `json:"mounts,omitempty"`
	UID    *int64      `json:"uid,omitempty"`
	GID    *int64      `json:"gid,omitempty"`
	Groups []int       `json:"groups,omitempty"`
	// Sysctls are the pod's securityContext.sysctls, written in the
	// container's namespaces (the pod's network namespace for net.*)
	// before it drops to its user.
	Sysctls []sysctlSetting `json:"sysctls,omitempty"`
	// Caps, when set, are the container's only capabilities (see
	// containerCaps); NoNewPrivs is allowPrivilegeEscalation: false.
	Caps       *[]int `json:"caps,omitempty"`
	NoNewPrivs bool   `json:"noNewPrivs,omitempty"`
	Dir        string `json:"dir,omitempty"`
	// Path is the program to exec when it is not Argv[0] looked up on
	// PATH: this executable, for a program linked into it that it
	// recognises by argv[0] (package agnhost).
	Path string   `json:"path,omitempty"`
	Argv []string `json:"argv"`
	// StartedFD, when set, is a pipe's write end the runtime waits on: it
	// closes when the command is exec'd (or the init fails), so the runtime
	// reports the container running only once its mounts, /etc files and
	// hostname are in place, and `kubectl exec` right after sees them.
	StartedFD int `json:"startedFD,omitempty"`
}

// containerInit runs in the new namespaces, as root, as the container's
// PID 1: it joins the pod's cgroup, makes the mounts private, mounts a /proc
// of the new PID namespace and a /sys of the pod's network namespace, binds
// the pod's resolv.conf and hosts over /etc's, sets the hostname, drops to
// the container's user and execs the command, which so stays PID 1 as in a
// kubelet's container.
func containerInit(arg string) error {
	var s initSpec
	if err := json.Unmarshal([]byte(arg), &s); err != nil {
		return fmt.Errorf("container spec: %w", err)
	}
	if s.StartedFD != 0 {
		// Closed by the exec below, or by this process's exit.
		unix.CloseOnExec(s.StartedFD)
	}
	if len(s.Argv) == 0 {
		return fmt.Errorf("container spec: no command")
	}
	// Capabilities are per thread: the one that sets them execs.
	runtime.LockOSThread()
	if s.Cgroup != "" {
		// "0" is the writing process, whatever its PID is in this namespace.
		if err := os.WriteFile(filepath.Join(s.Cgroup, "cgroup.procs"), []byte("0"), 0); err != nil {
			return fmt.Errorf("join cgroup %s: %w", s.Cgroup, err)
		}
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	// As `ip netns exec` does: a /sys showing the pod's network devices.
	if err := unix.Unmount("/sys", unix.MNT_DETACH); err == nil {
		if err := unix.Mount("sysfs", "/sys", "sysfs", 0, ""); err != nil {
			return fmt.Errorf("mount /sys: %w", err)
		}
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	for _, sc := range s.Sysctls {
		// /proc/sys/net is the writing thread's network namespace: the pod's.
		if err := os.WriteFile(sc.Path, []byte(sc.Value), 0); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", sc.Name, sc.Value, err)
		}
	}
	if s.EtcDir != "" {
		entries, _ := os.ReadDir(s.EtcDir)
		for _, e := range entries {
			target := filepath.Join("/etc", e.Name())
			if _, err := os.Stat(target); err != nil {
				continue
			}
			if err := unix.Mount(filepath.Join(s.EtcDir, e.Name()), target, "", unix.MS_BIND, ""); err != nil {
				return fmt.Errorf("bind %s: %w", target, err)
			}
		}
	}
	for _, m := range s.Mounts {
		if err := m.bind(); err != nil {
			return err
		}
	}
	if s.Hostname != "" {
		if err := unix.Sethostname([]byte(s.Hostname)); err != nil {
			return fmt.Errorf("set hostname %q: %w", s.Hostname, err)
		}
	}
	if s.Caps != nil {
		if err := dropBoundingCaps(*s.Caps); err != nil {
			return err
		}
	}
	if s.GID != nil {
		if err := syscall.Setgroups(s.Groups); err != nil {
			return fmt.Errorf("set supplementary groups %v: %w", s.Groups, err)
		}
		if err := syscall.Setgid(int(*s.GID)); err != nil {
			return fmt.Errorf("set gid %d: %w", *s.GID, err)
		}
	}
	if s.UID != nil {
		if err := syscall.Setuid(int(*s.UID)); err != nil {
			return fmt.Errorf("set uid %d: %w", *s.UID, err)
		}
	}
	if s.Caps != nil && (s.UID == nil || *s.UID == 0) {
		// A non-root user lost them all at Setuid.
		if err := setCaps(*s.Caps); err != nil {
			return err
		}
	}
	if s.NoNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("no_new_privs: %w", err)
		}
	}
	if s.Dir != "" {
		if err := os.Chdir(s.Dir); err != nil {
			return fmt.Errorf("working directory: %w", err)
		}
	}
	path := s.Path
	if path == "" {
		p, err := exec.LookPath(s.Argv[0])
		if err != nil {
			return err
		}
		path = p
	}
	return syscall.Exec(path, s.Argv, os.Environ())
}

// sysctlSetting is one of the pod's sysctls: Name as the pod spec gives it
// (dot-separated), Path its file under /proc/sys.
type sysctlSetting struct {
	Name  string `json:"name"`
	Path  string `json:"path"`
	Value string `json:"value"`
}

// podSysctls says where each of the pod's sysctls is written. Admission
// (admitPod) has checked them against the kubelet's allowlist before
// anything of the pod was set up.
func podSysctls(pod *corev1.Pod) []sysctlSetting {
	if pod.Spec.SecurityContext == nil || len(pod.Spec.SecurityContext.Sysctls) == 0 {
		return nil
	}
	var out []sysctlSetting
	for _, sc := range pod.Spec.SecurityContext.Sysctls {
		name := utilsysctl.NormalizeName(sc.Name)
		out = append(out, sysctlSetting{Name: name, Path: "/proc/sys/" + strings.ReplaceAll(name, ".", "/"), Value: sc.Value})
	}
	return out
}

// bindMount is one volume (or file) bound into the container.
type bindMount struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// bind binds the source over the target in the container's mount
// namespace. Every container sees the host's file system, so a mount
// point that does not exist is created there (an empty directory or
// file), as a runtime creates one in an image's root.
func (m bindMount) bind() error {
	st, err := os.Stat(m.Source)
	if err != nil {
		return fmt.Errorf("volume source for %s: %w", m.Target, err)
	}
	if _, err := os.Stat(m.Target); os.IsNotExist(err) {
		if st.IsDir() {
			err = os.MkdirAll(m.Target, 0o755)
		} else if err = os.MkdirAll(filepath.Dir(m.Target), 0o755); err == nil {
			var f *os.File
			if f, err = os.OpenFile(m.Target, os.O_CREATE|os.O_RDONLY, 0o644); err == nil {
				f.Close()
			}
		}
		if err != nil {
			return fmt.Errorf("mount point %s: %w", m.Target, err)
		}
	}
	if err := unix.Mount(m.Source, m.Target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", m.Source, m.Target, err)
	}
	if m.ReadOnly {
		if err := unix.Mount("", m.Target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("make %s read-only: %w", m.Target, err)
		}
	}
	return nil
}

// podHostname is the pod's hostname and domain as the kubelet computes
// them (GeneratePodHostNameAndDomain): spec.hostnameOverride, else
// spec.hostname, else the pod's name, cut to 63 characters; with a
// subdomain, the domain is SUBDOMAIN.NAMESPACE.svc.ZONE, and
// setHostnameAsFQDN makes the kernel hostname the whole FQDN.
func podHostname(pod *corev1.Pod, zone string) (hostname, domain, kernel string, err error) {
	if o := pod.Spec.HostnameOverride; o != nil && *o != "" {
		if msgs := validation.IsDNS1123Subdomain(*o); len(msgs) != 0 {
			return "", "", "", fmt.Errorf("spec.hostnameOverride %q is not a valid DNS subdomain: %s", *o, strings.Join(msgs, "; "))
		}
		h := truncateHostname(*o)
		return h, "", h, nil
	}
	hostname = pod.Name
	if pod.Spec.Hostname != "" {
		if msgs := validation.IsDNS1123Label(pod.Spec.Hostname); len(msgs) != 0 {
			return "", "", "", fmt.Errorf("spec.hostname %q is not a valid DNS label: %s", pod.Spec.Hostname, strings.Join(msgs, "; "))
		}
		hostname = pod.Spec.Hostname
	}
	hostname = truncateHostname(hostname)
	if pod.Spec.Subdomain != "" {
		if msgs := validation.IsDNS1123Label(pod.Spec.Subdomain); len(msgs) != 0 {
			return "", "", "", fmt.Errorf("spec.subdomain %q is not a valid DNS label: %s", pod.Spec.Subdomain, strings.Join(msgs, "; "))
		}
		domain = fmt.Sprintf("%s.%s.svc.%s", pod.Spec.Subdomain, pod.Namespace, zone)
	}
	kernel = hostname
	if pod.Spec.SetHostnameAsFQDN != nil && *pod.Spec.SetHostnameAsFQDN && domain != "" {
		kernel = hostname + "." + domain
		// The kernel holds 64 bytes, the last one the terminating NUL.
		if len(kernel) > 64 {
			return "", "", "", fmt.Errorf("failed to construct FQDN from pod hostname and cluster domain, FQDN %s is too long (64 characters is the max, %d characters requested)", kernel, len(kernel))
		}
	}
	return hostname, domain, kernel, nil
}

func truncateHostname(h string) string {
	if len(h) <= 63 {
		return h
	}
	return strings.TrimRight(h[:63], "-.")
}

// hostsFile is the pod's /etc/hosts as the kubelet writes it
// (managedHostsFileContent): localhost, the pod's own names, hostAliases.
func hostsFile(podIPs []string, hostname, domain string, aliases []corev1.HostAlias) []byte {
	var b strings.Builder
	b.WriteString("# Kubernetes-managed hosts file.\n")
	b.WriteString("127.0.0.1\tlocalhost\n")
	b.WriteString("::1\tlocalhost ip6-localhost ip6-loopback\n")
	b.WriteString("fe00::0\tip6-localnet\n")
	b.WriteString("fe00::0\tip6-mcastprefix\n")
	b.WriteString("fe00::1\tip6-allnodes\n")
	b.WriteString("fe00::2\tip6-allrouters\n")
	for _, ip := range podIPs {
		if domain != "" {
			fmt.Fprintf(&b, "%s\t%s.%s\t%s\n", ip, hostname, domain, hostname)
		} else {
			fmt.Fprintf(&b, "%s\t%s\n", ip, hostname)
		}
	}
	if len(aliases) > 0 {
		b.WriteString("\n# Entries added by HostAliases.\n")
		for _, a := range aliases {
			fmt.Fprintf(&b, "%s\t%s\n", a.IP, strings.Join(a.Hostnames, "\t"))
		}
	}
	return []byte(b.String())
}

// containerUser resolves the user and groups a container runs as: the
// container's securityContext over the pod's, as the kubelet merges them;
// without runAsGroup the group is the user's primary group in /etc/passwd
// (this host is every container's image), else 0, as container runtimes
// do. nil, nil: run as root, as an image without USER does.
func containerUser(pod *corev1.Pod, c corev1.Container) (uid, gid *int64, groups []int, err error) {
	var nonRoot *bool
	if psc := pod.Spec.SecurityContext; psc != nil {
		uid, gid, nonRoot = psc.RunAsUser, psc.RunAsGroup, psc.RunAsNonRoot
		for _, g := range psc.SupplementalGroups {
			groups = append(groups, int(g))
		}
		if psc.FSGroup != nil {
			groups = append(groups, int(*psc.FSGroup))
		}
	}
	if sc := c.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			uid = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			gid = sc.RunAsGroup
		}
		if sc.RunAsNonRoot != nil {
			nonRoot = sc.RunAsNonRoot
		}
	}
	if nonRoot != nil && *nonRoot && (uid == nil || *uid == 0) {
		// The kubelet's verifyRunAsNonRoot messages.
		if uid == nil {
			return nil, nil, nil, fmt.Errorf("container has runAsNonRoot and image will run as root (pod: %q, container: %s)", pod.Namespace+"/"+pod.Name, c.Name)
		}
		return nil, nil, nil, fmt.Errorf("container's runAsUser breaks non-root policy (pod: %q, container: %s)", pod.Namespace+"/"+pod.Name, c.Name)
	}
	if uid != nil && gid == nil {
		g := primaryGroup(*uid)
		gid = &g
	}
	if gid != nil && groups == nil {
		groups = []int{}
	}
	return uid, gid, groups, nil
}

// primaryGroup is uid's group in the host's /etc/passwd, or 0.
func primaryGroup(uid int64) int64 {
	b, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) > 3 && f[2] == fmt.Sprint(uid) {
			var g int64
			if _, err := fmt.Sscan(f[3], &g); err == nil {
				return g
			}
		}
	}
	return 0
}
