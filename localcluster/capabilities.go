package localcluster

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"golang.org/x/sys/unix"
)

// capNames are the Linux capabilities by the names a container's
// securityContext.capabilities uses (without "CAP_"; a "CAP_" prefix is
// accepted too, as container runtimes accept it).
var capNames = map[string]int{
	"CHOWN": unix.CAP_CHOWN, "DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE, "DAC_READ_SEARCH": unix.CAP_DAC_READ_SEARCH,
	"FOWNER": unix.CAP_FOWNER, "FSETID": unix.CAP_FSETID, "KILL": unix.CAP_KILL, "SETGID": unix.CAP_SETGID,
	"SETUID": unix.CAP_SETUID, "SETPCAP": unix.CAP_SETPCAP, "LINUX_IMMUTABLE": unix.CAP_LINUX_IMMUTABLE,
	"NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE, "NET_BROADCAST": unix.CAP_NET_BROADCAST, "NET_ADMIN": unix.CAP_NET_ADMIN,
	"NET_RAW": unix.CAP_NET_RAW, "IPC_LOCK": unix.CAP_IPC_LOCK, "IPC_OWNER": unix.CAP_IPC_OWNER,
	"SYS_MODULE": unix.CAP_SYS_MODULE, "SYS_RAWIO": unix.CAP_SYS_RAWIO, "SYS_CHROOT": unix.CAP_SYS_CHROOT,
	"SYS_PTRACE": unix.CAP_SYS_PTRACE, "SYS_PACCT": unix.CAP_SYS_PACCT, "SYS_ADMIN": unix.CAP_SYS_ADMIN,
	"SYS_BOOT": unix.CAP_SYS_BOOT, "SYS_NICE": unix.CAP_SYS_NICE, "SYS_RESOURCE": unix.CAP_SYS_RESOURCE,
	"SYS_TIME": unix.CAP_SYS_TIME, "SYS_TTY_CONFIG": unix.CAP_SYS_TTY_CONFIG, "MKNOD": unix.CAP_MKNOD,
	"LEASE": unix.CAP_LEASE, "AUDIT_WRITE": unix.CAP_AUDIT_WRITE, "AUDIT_CONTROL": unix.CAP_AUDIT_CONTROL,
	"SETFCAP": unix.CAP_SETFCAP, "MAC_OVERRIDE": unix.CAP_MAC_OVERRIDE, "MAC_ADMIN": unix.CAP_MAC_ADMIN,
	"SYSLOG": unix.CAP_SYSLOG, "WAKE_ALARM": unix.CAP_WAKE_ALARM, "BLOCK_SUSPEND": unix.CAP_BLOCK_SUSPEND,
	"AUDIT_READ": unix.CAP_AUDIT_READ, "PERFMON": unix.CAP_PERFMON, "BPF": unix.CAP_BPF,
	"CHECKPOINT_RESTORE": unix.CAP_CHECKPOINT_RESTORE,
}

// runtimeDefaultCaps is what a container runtime gives a container that
// asks for no capabilities (containerd's and CRI-O's default set, Docker's
// too), which securityContext.capabilities adds to and drops from.
var runtimeDefaultCaps = []string{"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
	"SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"}

// containerCaps is the capability set of container c as containerd's CRI
// plugin computes it (setOCICapabilities): the runtime's default set, all
// of them with add ALL, none with drop ALL, then each one added, then each
// one dropped; a container whose securityContext names none gets the
// default set, as on any node. nil: a privileged container keeps every
// capability of `up` itself.
func containerCaps(c corev1.Container) ([]int, error) {
	sc := c.SecurityContext
	if sc != nil && sc.Privileged != nil && *sc.Privileged {
		return nil, nil
	}
	set := map[int]bool{}
	for _, n := range runtimeDefaultCaps {
		set[capNames[n]] = true
	}
	if sc == nil || sc.Capabilities == nil {
		return sortedCaps(set), nil
	}
	name := func(n corev1.Capability) string { return strings.TrimPrefix(strings.ToUpper(string(n)), "CAP_") }
	if slices.ContainsFunc(sc.Capabilities.Add, func(n corev1.Capability) bool { return name(n) == "ALL" }) {
		for _, v := range capNames {
			set[v] = true
		}
	}
	if slices.ContainsFunc(sc.Capabilities.Drop, func(n corev1.Capability) bool { return name(n) == "ALL" }) {
		clear(set)
	}
	for _, list := range []struct {
		caps []corev1.Capability
		add  bool
	}{{sc.Capabilities.Add, true}, {sc.Capabilities.Drop, false}} {
		for _, n := range list.caps {
			if name(n) == "ALL" {
				continue
			}
			v, ok := capNames[name(n)]
			if !ok {
				return nil, fmt.Errorf("container %s: securityContext.capabilities: unknown capability %q", c.Name, n)
			}
			if list.add {
				set[v] = true
			} else {
				delete(set, v)
			}
		}
	}
	return sortedCaps(set), nil
}

// sortedCaps lists a capability set in order.
func sortedCaps(set map[int]bool) []int {
	out := make([]int, 0, len(set))
	for v := range set {
		out = append(out, v)
	}
	slices.Sort(out)
	return out
}

// dropBoundingCaps removes every capability not in keep from the calling
// thread's bounding set (which needs CAP_SETPCAP, so it comes first), so
// nothing the container execs, setuid programs included, gets one back.
func dropBoundingCaps(keep []int) error {
	last := unix.CAP_LAST_CAP
	if b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			last = n
		}
	}
	for c := 0; c <= last; c++ {
		if slices.Contains(keep, c) {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	return unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
}

// setCaps makes set the calling thread's effective, permitted and
// inheritable capabilities: what a root container's process keeps across
// exec (a non-root one keeps none, as Kubernetes sets no ambient ones).
func setCaps(set []int) error {
	var data [2]unix.CapUserData
	for _, c := range set {
		data[c/32].Effective |= 1 << (c % 32)
	}
	for i := range data {
		data[i].Permitted, data[i].Inheritable = data[i].Effective, data[i].Effective
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("set capabilities: %w", err)
	}
	return nil
}
