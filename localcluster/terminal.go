package localcluster

import (
	"fmt"
	"os"
	"runtime/debug"

	"golang.org/x/sys/unix"
)

// DupStderr returns a new descriptor for the process's standard error, for
// Config.Terminal: it keeps pointing at the terminal while Start points
// descriptor 2 at the log file.
func DupStderr() (*os.File, error) {
	fd, err := unix.FcntlInt(uintptr(unix.Stderr), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return nil, fmt.Errorf("duplicate standard error: %w", err)
	}
	return os.NewFile(uintptr(fd), "/dev/stderr"), nil
}

// divertStderr points descriptor 2 at log, so whatever a library writes to
// standard error goes there (libraries hold os.Stderr, or loggers built on
// it, from their init functions: replacing the variable would miss them).
// A crash is still reported on the terminal.
func divertStderr(log, terminal *os.File) error {
	if err := debug.SetCrashOutput(terminal, debug.CrashOptions{}); err != nil {
		return fmt.Errorf("report crashes on the terminal: %w", err)
	}
	if err := unix.Dup3(int(log.Fd()), unix.Stderr, 0); err != nil {
		return fmt.Errorf("send standard error to %s: %w", log.Name(), err)
	}
	return nil
}

// restoreStderr points descriptor 2 back at the terminal.
func restoreStderr(terminal *os.File) {
	unix.Dup3(int(terminal.Fd()), unix.Stderr, 0)
	debug.SetCrashOutput(nil, debug.CrashOptions{})
}
