package kubeletapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	crilogs "k8s.io/cri-client/pkg/logs"
	remotecommandserver "k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"

	"github.com/switchboard/switchboard/netnamespace"
	"github.com/switchboard/switchboard/terminal"
)

// executor runs exec requests for one pod.
type executor struct {
	s   *Server
	pod *corev1.Pod
}

// ExecInContainer runs cmd in the container with the request's streams: on
// a pseudo-terminal when tty is set (resized as the client's terminal is),
// else on pipes. A non-zero exit comes back as an ExitError, which the
// streaming code reports to the client as the command's exit code.
func (e executor) ExecInContainer(ctx context.Context, _, _, container string, argv []string, in io.Reader, out, errOut io.WriteCloser, tty bool, resize <-chan remotecommandserver.TerminalSize, _ time.Duration) error {
	if !containerSpec(e.pod, container) {
		return fmt.Errorf("container %q not found in pod %s/%s", container, e.pod.Namespace, e.pod.Name)
	}
	cmd, err := e.s.cfg.Runtime.Command(e.pod, container, argv, tty)
	if err != nil {
		return err
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	if tty {
		err = runTTY(ctx, cmd, in, out, resize)
	} else {
		err = runPipes(ctx, cmd, in, out, errOut)
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		code := exitErr.ExitCode()
		if st, ok := exitErr.Sys().(syscall.WaitStatus); ok && st.Signaled() {
			code = 128 + int(st.Signal())
		}
		return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with non-zero exit code: %w", err), Code: code}
	}
	return err
}

// killOnDone ends the command's process group when the client goes away.
func killOnDone(ctx context.Context, cmd *exec.Cmd) (stop func()) {
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		case <-done:
		}
	}()
	return func() { close(done) }
}

func runPipes(ctx context.Context, cmd *exec.Cmd, in io.Reader, out, errOut io.Writer) error {
	cmd.SysProcAttr.Setpgid = true
	var stdin io.WriteCloser
	if in != nil {
		var err error
		if stdin, err = cmd.StdinPipe(); err != nil {
			return err
		}
	}
	if out != nil {
		cmd.Stdout = out
	}
	if errOut != nil {
		cmd.Stderr = errOut
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %q: %w", cmd.Args, err)
	}
	defer killOnDone(ctx, cmd)()
	if stdin != nil {
		// Not waited for: a client that never closes its stdin must not
		// keep the exec open after the command has exited.
		go func() {
			io.Copy(stdin, in)
			stdin.Close()
		}()
	}
	return cmd.Wait()
}

func runTTY(ctx context.Context, cmd *exec.Cmd, in io.Reader, out io.Writer, resize <-chan remotecommandserver.TerminalSize) error {
	ptm, pts, err := terminal.Open()
	if err != nil {
		return err
	}
	defer ptm.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = pts, pts, pts
	// Out of this process's session; the runtime's command makes the
	// terminal the controlling one of the session argv runs in.
	cmd.SysProcAttr.Setsid = true
	err = cmd.Start()
	pts.Close()
	if err != nil {
		return fmt.Errorf("start %q: %w", cmd.Args, err)
	}
	defer killOnDone(ctx, cmd)()
	go func() {
		for size := range resize {
			terminal.Resize(ptm, size.Width, size.Height)
		}
	}()
	if in != nil {
		go io.Copy(ptm, in)
	}
	var copied sync.WaitGroup
	if out != nil {
		copied.Add(1)
		go func() {
			defer copied.Done()
			io.Copy(out, ptm) // ends with EIO once the last holder of the terminal exits
		}()
	}
	err = cmd.Wait()
	copied.Wait()
	return err
}

// attacher serves attach requests for one pod: the container's output
// from now on, read from its log as it is written, until it stops or the
// client leaves; and, when the container keeps its stdin open (spec.stdin),
// the client's input, on the container's terminal if it has one.
type attacher struct {
	s   *Server
	pod *corev1.Pod
}

func (a attacher) AttachContainer(ctx context.Context, _, _, container string, in io.Reader, out, errOut io.WriteCloser, tty bool, resize <-chan remotecommandserver.TerminalSize) error {
	if !containerSpec(a.pod, container) {
		return fmt.Errorf("container %q not found in pod %s/%s", container, a.pod.Namespace, a.pod.Name)
	}
	att, err := a.s.cfg.Runtime.Attach(a.pod, container)
	if err != nil {
		return err
	}
	// Output from this moment on: taken before any input is passed, so
	// the container's answer to it is never missed.
	since := time.Now()
	if in != nil {
		if att.Stdin == nil {
			return fmt.Errorf("container %s of pod %s/%s keeps no stdin open (spec.stdin is false)", container, a.pod.Namespace, a.pod.Name)
		}
		go func() {
			io.Copy(att.Stdin, in)
			att.Detach()
		}()
	}
	if att.Resize != nil {
		go func() {
			for size := range resize {
				att.Resize(size.Width, size.Height)
			}
		}()
	}
	var stdout, stderr io.Writer
	if out != nil {
		stdout = out
	}
	if errOut != nil {
		stderr = errOut
	} else if tty {
		stderr = stdout
	}
	return a.s.streamLog(ctx, a.pod, container, false, &crilogs.LogOptions{Follow: true, Since: since}, stdout, stderr)
}

// portForwarder connects port-forward streams to the pod's loopback, as
// container runtimes do: inside the pod's network namespace.
type portForwarder struct {
	s   *Server
	pod *corev1.Pod
}

func (p portForwarder) PortForward(ctx context.Context, _, _ string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	ns, err := p.s.cfg.Runtime.PodNetNS(p.pod)
	if err != nil {
		return err
	}
	conn, err := netnamespace.Dial(ctx, ns, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
	if err != nil {
		return fmt.Errorf("port-forward to pod %s/%s port %d: %w", p.pod.Namespace, p.pod.Name, port, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	go func() {
		// The client's end of its data: pass the half-close on, and keep
		// reading the pod's answer below.
		io.Copy(conn, stream)
		if c, ok := conn.(interface{ CloseWrite() error }); ok {
			c.CloseWrite()
		}
	}()
	io.Copy(stream, conn)
	return nil
}
