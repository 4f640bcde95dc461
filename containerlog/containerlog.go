// Package containerlog writes a container's output as container runtimes
// do for the kubelet: the CRI log format, one record per line,
//
//	2016-10-06T00:17:09.669794202Z stdout F a whole line
//	2016-10-06T00:17:09.669794203Z stderr P part of a line
//
// in one file per container instance, rotated by size. The kubelet's own
// reader (k8s.io/cri-client/pkg/logs) serves `kubectl logs` from these
// files, so timestamps, streams, tailLines, sinceSeconds and limitBytes
// behave as on any node.
package containerlog

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Defaults of the kubelet's containerLogMaxSize and containerLogMaxFiles.
const (
	DefaultMaxSize  = 10 << 20
	DefaultMaxFiles = 5
)

// File is the log of one container instance. Both of its streams may be
// written concurrently.
type File struct {
	path     string
	maxSize  int64
	maxFiles int

	mu   sync.Mutex
	f    *os.File
	size int64
	now  func() time.Time
}

// Open opens (appending) or creates the log at path. Once the file grows
// past maxSize it is renamed to path.TIMESTAMP and a new one started, and
// only the newest maxFiles-1 rotated files are kept, as the kubelet's log
// manager does (maxSize <= 0 or maxFiles < 2: never rotate).
func Open(path string, maxSize int64, maxFiles int) (*File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("container log %s: %w", path, err)
	}
	l := &File{path: path, maxSize: maxSize, maxFiles: maxFiles, now: time.Now}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *File) open() error {
	f, err := os.OpenFile(l.path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("container log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("container log: %w", err)
	}
	l.f, l.size = f, st.Size()
	return nil
}

// Stream returns the writer of one stream ("stdout" or "stderr"). Each
// Write becomes records at once, a trailing part of a line as a partial
// (P) record, so nothing waits in a buffer for a newline that may never
// come and nothing needs flushing when the process exits.
func (l *File) Stream(name string) io.Writer { return stream{l: l, name: name} }

type stream struct {
	l    *File
	name string
}

func (s stream) Write(p []byte) (int, error) {
	var b strings.Builder
	ts := s.l.now().UTC().Format(time.RFC3339Nano)
	for rest := p; len(rest) > 0; {
		line, tag := rest, "P"
		if i := slices.Index(rest, '\n'); i >= 0 {
			line, tag = rest[:i], "F"
			rest = rest[i+1:]
		} else {
			rest = nil
		}
		b.WriteString(ts)
		b.WriteByte(' ')
		b.WriteString(s.name)
		b.WriteByte(' ')
		b.WriteString(tag)
		b.WriteByte(' ')
		b.Write(line)
		b.WriteByte('\n')
	}
	if err := s.l.write(b.String()); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (l *File) write(records string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return os.ErrClosed
	}
	if l.maxSize > 0 && l.maxFiles > 1 && l.size > 0 && l.size+int64(len(records)) > l.maxSize {
		if err := l.rotate(); err != nil {
			return err
		}
	}
	n, err := l.f.WriteString(records)
	l.size += int64(n)
	return err
}

// rotate moves the full file aside and starts a new one; a reader
// following the log sees the new file created under the same name and
// reopens it.
func (l *File) rotate() error {
	l.f.Close()
	l.f = nil
	rotated := l.path + "." + l.now().UTC().Format("20060102-150405.000000000")
	if err := os.Rename(l.path, rotated); err != nil {
		return fmt.Errorf("rotate container log %s: %w", l.path, err)
	}
	old, _ := filepath.Glob(l.path + ".*")
	slices.Sort(old) // timestamps sort by time
	for len(old) > l.maxFiles-1 {
		os.Remove(old[0])
		old = old[1:]
	}
	return l.open()
}

// Close closes the file; later writes fail.
func (l *File) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
