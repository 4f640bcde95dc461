// Package workingset trims the resident set of a long-running switchboard
// process to what it actually uses.
//
// switchboard is one binary that links kube-apiserver and etcd, so its text
// and read-only data span ~90 MB. Go runs every linked package's init code at
// start, and each of those first touches faults in a whole fault-around window
// (or a whole large folio) of the executable, so a process that later serves
// only DNS keeps ~90 MB of file-backed pages mapped that it never touches
// again. They are clean page cache the kernel would reclaim under pressure
// anyway, but they count in RSS, which is what operators watch and what
// memory limits are compared against. Release unmaps them from this process
// once start-up is over; pages the process still uses fault straight back in
// from the page cache (no I/O), so what remains mapped is the true working
// set.
package workingset

import (
	"bufio"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Release drops this process's page-table entries for the read-only,
// file-backed mappings of its own executable (text, rodata, pclntab). It never
// touches writable or anonymous memory: a read-only private mapping of the
// executable holds only unmodified page-cache pages, so dropping them loses
// nothing. It returns the bytes of mappings released.
func Release() (int64, error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0, fmt.Errorf("workingset: %w", err)
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, fmt.Errorf("workingset: %w", err)
	}
	defer f.Close()
	var released int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 00400000-0381c000 r-xp 00000000 fe:00 10649801   /path/to/exe
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[5] != exe {
			continue
		}
		perms := fields[1]
		if perms[1] == 'w' || perms[3] != 'p' {
			continue // writable (data, bss) or shared: not ours to drop
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		if err := madvise(uintptr(start), uintptr(end-start)); err != nil {
			return released, fmt.Errorf("workingset: release %s %s: %w", fields[0], perms, err)
		}
		released += int64(end - start)
	}
	return released, sc.Err()
}

func madvise(addr, length uintptr) error {
	// MADV_DONTNEED on a private file mapping only zaps page-table entries;
	// the next access maps the same page-cache page again.
	if _, _, errno := unix.Syscall(unix.SYS_MADVISE, addr, length, unix.MADV_DONTNEED); errno != 0 {
		return errno
	}
	return nil
}

// CollectSooner makes the garbage collector run at 25% heap growth instead
// of 100%, unless the operator set GOGC. The heap of a switchboard component
// is its informer caches, and its steady state (answering, syncing one
// change) allocates little, so collecting sooner costs little CPU and keeps
// RSS near the live data instead of at twice it.
func CollectSooner() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(25)
	}
}

// Settle marks the end of a component's start-up (its informers have
// synced and its first full sync is done): the garbage of decoding the
// initial lists goes back to the OS at once instead of waiting for the
// scavenger, and executable pages only start-up ran (list decoding, TLS
// set-up, the first full sync) are released like init's. What the steady
// state runs faults back in from the page cache.
func Settle() {
	debug.FreeOSMemory()
	Release()
}
