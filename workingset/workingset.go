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
func Release() (int64, error) { return release(false) }

// release is Release; with small it also marks the mappings MADV_RANDOM and
// evicts the executable's page cache that no process maps any more (see
// Settle).
func release(small bool) (int64, error) {
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
		if err := madvise(uintptr(start), uintptr(end-start), unix.MADV_DONTNEED); err != nil {
			return released, fmt.Errorf("workingset: release %s %s: %w", fields[0], perms, err)
		}
		if small {
			// No readahead: a page read back is read alone, into a
			// page-sized folio.
			if err := madvise(uintptr(start), uintptr(end-start), unix.MADV_RANDOM); err != nil {
				return released, fmt.Errorf("workingset: random access %s %s: %w", fields[0], perms, err)
			}
		}
		released += int64(end - start)
	}
	if err := sc.Err(); err != nil {
		return released, fmt.Errorf("workingset: %w", err)
	}
	if small {
		// /proc/self/exe opens the running inode even if the path was
		// replaced since. Pages another process still maps stay cached:
		// the kernel only evicts unmapped clean pages.
		f, err := os.Open("/proc/self/exe")
		if err != nil {
			return released, fmt.Errorf("workingset: %w", err)
		}
		defer f.Close()
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			return released, fmt.Errorf("workingset: evict %s: %w", exe, err)
		}
	}
	return released, nil
}

// madvise applies advice to a range of this process's executable mappings.
// MADV_DONTNEED on a private file mapping only zaps page-table entries; the
// next access maps the same page-cache page again.
func madvise(addr, length uintptr, advice int) error {
	if _, _, errno := unix.Syscall(unix.SYS_MADVISE, addr, length, uintptr(advice)); errno != 0 {
		return errno
	}
	return nil
}

// CollectSooner makes the garbage collector run at 25% heap growth instead
// of 100%, unless the operator set GOGC. The heap of a switchboard component
// is its informer caches, and its steady state (answering, syncing one
// change) allocates little, so collecting sooner costs little CPU and keeps
// RSS near the live data instead of at twice it.
func CollectSooner() { CollectAt(25) }

// CollectAt makes the garbage collector run at percent heap growth instead
// of 100%, unless the operator set GOGC.
func CollectAt(percent int) {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(percent)
	}
}

// ReleaseStartup marks the end of start-up in a process whose hot code
// other parts of the same process share (`up`, the API server's): the
// garbage of start-up goes back to the OS at once, and the executable pages
// start-up ran are released as Release does, without Settle's page-by-page
// re-reads.
func ReleaseStartup() (int64, error) {
	debug.FreeOSMemory()
	return Release()
}

// Settle marks the end of a standalone component's start-up (its informers
// have synced and its first full sync is done): the garbage of decoding the
// initial lists goes back to the OS at once instead of waiting for the
// scavenger, and executable pages only start-up ran (list decoding, TLS
// set-up, the first full sync) are released like init's.
//
// What the steady state runs then comes back in page-sized pieces. The page
// cache holds the executable in large folios (exec's readahead builds them,
// and the kernel maps a whole folio on one fault), so a process touching one
// byte per MB of a cached switchboard binary maps 427 kB per touch; re-read
// with MADV_RANDOM into page-sized folios it maps 4 kB. Settle therefore
// evicts the executable's unmapped page cache and marks its mappings for
// random access: the steady state reads its code back from disk once, a page
// at a time (switchboard controller at 1,000 Services: RssFile 40.6 MB ->
// 12.1 MB). Pages not yet written back (a binary just built) stay cached
// as they are. Only processes that run one component call it: inside
// `switchboard up` the API server shares the mappings and would pay for
// reading its hot code back page by page.
func Settle() {
	debug.FreeOSMemory()
	release(true)
}
