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

// TestSettleReadsBackInPages checks Settle's release leaves every
// read-only mapping of the executable marked for random access ("rr" in
// smaps' VmFlags), so what faults back in comes a page at a time, and that
// the process keeps running.
func TestSettleReadsBackInPages(t *testing.T) {
	if _, err := release(true); err != nil {
		t.Fatal(err)
	}
	if got := strconv.Quote(strings.Repeat("ok", 3)); got != `"okokok"` {
		t.Errorf("after release: %s", got)
	}
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Skipf("no /proc/self/smaps: %v", err)
	}
	var mapping string
	checked := 0
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 6 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			mapping = ""
			if fields[5] == exe && fields[1][1] != 'w' {
				mapping = line
			}
			continue
		}
		if mapping != "" && len(fields) > 0 && fields[0] == "VmFlags:" {
			checked++
			if !strings.Contains(line, " rr") {
				t.Errorf("mapping %q not marked random: %s", mapping, line)
			}
		}
	}
	if checked == 0 {
		t.Fatal("found no read-only mapping of the executable in smaps")
	}
}
