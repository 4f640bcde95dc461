package workingset

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

// rssFileKB reads this process's file-backed resident memory.
func rssFileKB(t *testing.T) int {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc/self/status: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "RssFile:"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Skip("kernel reports no RssFile")
	return 0
}

func TestReleaseDropsExecutablePagesAndKeepsRunning(t *testing.T) {
	before := rssFileKB(t)
	released, err := Release()
	if err != nil {
		t.Fatal(err)
	}
	if released == 0 {
		t.Fatal("released no mapping of the executable")
	}
	after := rssFileKB(t)
	if after >= before {
		t.Errorf("RssFile %d kB after releasing %d bytes of mappings, was %d kB", after, released, before)
	}
	// Code and read-only data fault back in: the process keeps working,
	// including paths it has not run since (formatting, maps, reflection).
	if got := strconv.Quote(strings.Repeat("ok", 3)); got != `"okokok"` {
		t.Errorf("after Release: %s", got)
	}
	t.Logf("RssFile %d kB -> %d kB (%d MB of mappings released)", before, after, released>>20)
}
