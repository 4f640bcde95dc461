// Package localcluster is `switchboard up`: a whole Kubernetes cluster on one
// machine in one process. The control plane runs in process; nodes and pods
// are network namespaces wired together by a bridge that lives in a namespace
// of its own, so the host's root namespace is never changed.
package localcluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// StateLock is an exclusive flock on STATE/lock. The kernel releases it when
// the holder dies, so a crashed `up` never blocks the next one, while a live
// one makes a second `up` on the same directory refuse.
type StateLock struct {
	f *os.File
}

// LockStateDir creates dir if needed and takes its lock.
func LockStateDir(dir string) (*StateLock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory %s: %w", dir, err)
	}
	probe := filepath.Join(dir, ".write-test")
	if err := os.WriteFile(probe, nil, 0o600); err != nil {
		return nil, fmt.Errorf("state directory %s is not writable: %w", dir, err)
	}
	os.Remove(probe)
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			pid, _ := os.ReadFile(path)
			return nil, fmt.Errorf("another `switchboard up` (pid %s) is already using state directory %s; stop it first or pass a different --state-dir",
				strings.TrimSpace(string(pid)), dir)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return &StateLock{f: f}, nil
}

// Release drops the lock.
func (l *StateLock) Release() {
	l.f.Truncate(0)
	unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	l.f.Close()
}
