package localcluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// cgroups holds the local cluster's control groups: one per pod (named
// "pod-" + the pod's UID, as the kubelet names its pod cgroups) and one for
// the cluster DNS process, all under one directory per cluster. A pod's
// whole process tree lives in its cgroup, so the tree is found and ended by
// the cgroup even when `up` died without a word (kill -9) and the
// processes were re-parented to init.
//
// It uses the unified (v2) hierarchy where one is mounted, at /sys/fs/cgroup
// or, on a hybrid machine, /sys/fs/cgroup/unified: its cgroup.kill ends a
// tree in one write. On a machine with only v1 hierarchies it uses the
// freezer's, freezing the tree so nothing forks while it is killed.
type cgroups struct {
	// root is this cluster's directory in the hierarchy.
	root string
	v2   bool
}

// cgroupRoots are where the hierarchies are looked for, best first.
var cgroupRoots = []struct {
	path string
	v2   bool
}{
	{"/sys/fs/cgroup", true},
	{"/sys/fs/cgroup/unified", true},
	{"/sys/fs/cgroup/freezer", false},
}

// newCgroups finds the hierarchy to use and names the cluster's directory
// in it (created by create, not here, so a `down` of a cluster that never
// ran creates nothing).
func newCgroups(prefix string) (*cgroups, error) {
	for _, r := range cgroupRoots {
		var st unix.Statfs_t
		if err := unix.Statfs(r.path, &st); err != nil {
			continue
		}
		if r.v2 && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return &cgroups{root: filepath.Join(r.path, "switchboard", prefix), v2: true}, nil
		}
		if !r.v2 && st.Type == unix.CGROUP_SUPER_MAGIC {
			return &cgroups{root: filepath.Join(r.path, "switchboard", prefix)}, nil
		}
	}
	return nil, errors.New("no cgroup hierarchy to hold pods' processes: mount cgroup v2 (/sys/fs/cgroup or /sys/fs/cgroup/unified) or the v1 freezer controller (/sys/fs/cgroup/freezer)")
}

func podCgroup(uid string) string { return "pod-" + uid }

// dir is the path of the named cgroup.
func (g *cgroups) dir(name string) string { return filepath.Join(g.root, name) }

// create makes the named cgroup (and the cluster's directory) if missing.
func (g *cgroups) create(name string) (string, error) {
	d := g.dir(name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", fmt.Errorf("cgroup %s: %w", d, err)
	}
	return d, nil
}

// exists reports whether the named cgroup is there.
func (g *cgroups) exists(name string) bool {
	_, err := os.Stat(g.dir(name))
	return err == nil
}

// pids lists the processes in the named cgroup.
func (g *cgroups) pids(name string) []int {
	b, err := os.ReadFile(filepath.Join(g.dir(name), "cgroup.procs"))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// contains reports whether pid is in the named cgroup.
func (g *cgroups) contains(name string, pid int) bool {
	for _, p := range g.pids(name) {
		if p == pid {
			return true
		}
	}
	return false
}

// list names the cluster's cgroups.
func (g *cgroups) list() []string {
	entries, _ := os.ReadDir(g.root)
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	return names
}

// kill ends every process in the named cgroup, waits until it is empty
// and removes it. A cgroup that is not there is not an error.
func (g *cgroups) kill(name string) error {
	d := g.dir(name)
	if _, err := os.Stat(d); err != nil {
		return nil
	}
	killed := false
	if g.v2 {
		// cgroup.kill (Linux 5.14) kills the whole tree at once, forks in
		// flight included.
		killed = os.WriteFile(filepath.Join(d, "cgroup.kill"), []byte("1"), 0) == nil
	}
	if !killed {
		g.freeze(d, true)
		for _, pid := range g.pids(name) {
			unix.Kill(pid, syscall.SIGKILL)
		}
		g.freeze(d, false)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := g.pids(name)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s: processes %v still running after SIGKILL", d, left)
		}
		if !killed {
			// Without cgroup.kill a fork can slip between the listing and
			// the kill: kill what is there again.
			for _, pid := range left {
				unix.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The processes are gone; the kernel may still hold the cgroup busy a
	// moment while it finishes their exit.
	for {
		err := unix.Rmdir(d)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: %w", d, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// freeze freezes (or thaws) a v1 freezer cgroup or, where cgroup.kill is
// missing, a v2 one.
func (g *cgroups) freeze(d string, on bool) {
	if g.v2 {
		v := "0"
		if on {
			v = "1"
		}
		os.WriteFile(filepath.Join(d, "cgroup.freeze"), []byte(v), 0)
		return
	}
	v := "THAWED"
	if on {
		v = "FROZEN"
	}
	f := filepath.Join(d, "freezer.state")
	if os.WriteFile(f, []byte(v), 0) != nil || !on {
		return
	}
	for range 200 {
		if b, _ := os.ReadFile(f); strings.TrimSpace(string(b)) == "FROZEN" {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// killAll ends every cgroup of the cluster and removes its directory.
func (g *cgroups) killAll() error {
	var errs []error
	for _, name := range g.list() {
		errs = append(errs, g.kill(name))
	}
	unix.Rmdir(g.root)
	unix.Rmdir(filepath.Dir(g.root)) // only when no other cluster uses it
	return errors.Join(errs...)
}

// place arranges for a process about to be started with attr to be born in
// the named cgroup. On v2 the kernel puts it there at clone
// (CLONE_INTO_CGROUP), so no process of the tree ever runs outside; on v1
// it returns the directory the process must join itself first thing,
// before it forks (the container init and the DNS process do). done
// releases what place opened; call it once the process has started.
func (g *cgroups) place(attr *syscall.SysProcAttr, name string) (join string, done func(), err error) {
	d := g.dir(name)
	if !g.v2 {
		return d, func() {}, nil
	}
	fd, err := unix.Open(d, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("open cgroup %s: %w", d, err)
	}
	attr.UseCgroupFD, attr.CgroupFD = true, fd
	return "", func() { unix.Close(fd) }, nil
}
