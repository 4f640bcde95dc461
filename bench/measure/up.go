package measure

import (
	"bufio"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Up is a `switchboard up` that StartUp ran until its ready line.
type Up struct {
	// Cmd is the running process.
	Cmd *exec.Cmd
	// StateDir is its --state-dir; Kubeconfig the admin kubeconfig in it.
	StateDir, Kubeconfig string
	// Ready is the time from start to the ready line.
	Ready  time.Duration
	exited chan error
}

// StartUp runs `bin up ARGS... --apiserver-port 0 --state-dir dir` and
// returns once it printed "switchboard is up" (or failed, or timeout
// passed: then it is killed). With verbose, every line it prints is echoed
// with its time since start.
func StartUp(bin, dir string, args []string, timeout time.Duration, verbose bool) (*Up, error) {
	argv := append([]string{"up"}, args...)
	argv = append(argv, "--apiserver-port", "0", "--state-dir", dir)
	cmd := exec.Command(bin, argv...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	begin := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ready := make(chan struct{}, 1)
	echo := func(name string, r io.Reader, readyLine bool) {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if verbose {
				fmt.Printf("  %8s %s: %s\n", time.Since(begin).Round(time.Millisecond), name, line)
			}
			if readyLine && strings.HasPrefix(line, "switchboard is up") {
				ready <- struct{}{}
			}
		}
	}
	go echo("stdout", stdout, true)
	go echo("stderr", stderr, false)
	u := &Up{Cmd: cmd, StateDir: dir, Kubeconfig: filepath.Join(dir, "kubeconfig"), exited: make(chan error, 1)}
	go func() { u.exited <- cmd.Wait() }()
	select {
	case <-ready:
		u.Ready = time.Since(begin)
		return u, nil
	case err := <-u.exited:
		return nil, fmt.Errorf("up exited before it was ready: %v", err)
	case <-time.After(timeout):
		cmd.Process.Kill()
		<-u.exited
		return nil, fmt.Errorf("not ready after %s", timeout)
	}
}

// Stop interrupts up (Ctrl-C: the control plane stops, the data plane
// stays) and returns how long it took to exit; it kills it after 5
// minutes.
func (u *Up) Stop() (time.Duration, error) {
	start := time.Now()
	u.Cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-u.exited:
		return time.Since(start), nil
	case <-time.After(5 * time.Minute):
		u.Cmd.Process.Kill()
		<-u.exited
		return 0, fmt.Errorf("did not stop within 5 minutes of SIGINT")
	}
}

// Down stops up and removes what it left running (`switchboard down`):
// the pods' processes, namespaces and rules. The state directory stays.
func (u *Up) Down(bin string) error {
	if _, err := u.Stop(); err != nil {
		return err
	}
	if out, err := exec.Command(bin, "down", "--state-dir", u.StateDir).CombinedOutput(); err != nil {
		return fmt.Errorf("switchboard down: %v: %s", err, out)
	}
	return nil
}
