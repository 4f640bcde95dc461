package containerlog

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	crilogs "k8s.io/cri-client/pkg/logs"
)

// read returns what the kubelet's own reader makes of the log.
func read(t *testing.T, path string, opts *crilogs.LogOptions) (stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	if err := crilogs.ReadLogs(context.Background(), path, "c", opts, nil, &o, &e); err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String()
}

func TestStreamsAndPartialLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	f, err := Open(path, DefaultMaxSize, DefaultMaxFiles)
	if err != nil {
		t.Fatal(err)
	}
	out, errs := f.Stream("stdout"), f.Stream("stderr")
	fmt.Fprint(out, "one\ntw")
	fmt.Fprint(errs, "oops\n")
	fmt.Fprint(out, "o\nthree")
	f.Close()
	o, e := read(t, path, &crilogs.LogOptions{})
	if o != "one\ntwo\nthree" || e != "oops\n" {
		t.Fatalf("stdout %q stderr %q", o, e)
	}
	tail := int64(1)
	o, _ = read(t, path, &crilogs.LogOptions{TailLines: &tail})
	if o != "three" {
		t.Fatalf("tail 1: %q", o)
	}
	o, _ = read(t, path, &crilogs.LogOptions{Timestamp: true})
	first := strings.SplitN(o, " ", 2)[0]
	if _, err := time.Parse(time.RFC3339Nano, first); err != nil {
		t.Fatalf("timestamped line %q: %v", o, err)
	}
}

func TestRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "0.log")
	f, err := Open(path, 4096, 3)
	if err != nil {
		t.Fatal(err)
	}
	out := f.Stream("stdout")
	for i := range 1000 {
		fmt.Fprintf(out, "line %d\n", i)
	}
	f.Close()
	files, _ := filepath.Glob(path + "*")
	if len(files) != 3 {
		t.Fatalf("want the log and 2 rotated files, have %v", files)
	}
	st, _ := os.Stat(path)
	if st.Size() > 4096 {
		t.Fatalf("current log is %d bytes, over the 4096 limit", st.Size())
	}
	o, _ := read(t, path, &crilogs.LogOptions{})
	if !strings.HasSuffix(o, "line 999\n") || strings.Contains(o, "line 0\n") {
		t.Fatalf("current log after rotation: %q", o)
	}
}
