// Package tutorial holds the Service tutorial's manifests and the test that
// replays the README's tutorial section, command by command, on a real
// `switchboard up`, so the documentation cannot rot.
package tutorial

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/switchboard/switchboard/clustertest"
)

// expectations maps each command of the README's tutorial section to what
// its output must show. A command missing here fails the test: whoever
// edits the tutorial says what the reader should see.
var expectations = map[string]*regexp.Regexp{
	"kubectl get nodes": regexp.MustCompile(`(?s)node-1\s+Ready.*node-2\s+Ready`),
	"kubectl apply -f examples/tutorial/nginx-pods.yaml -f examples/tutorial/my-awesome-service.yaml -f examples/tutorial/client.yaml": regexp.MustCompile(`service/my-awesome-service created`),
	"kubectl wait --for=condition=Ready pod/nginx-1 pod/nginx-2 pod/nginx-3 pod/client --timeout=120s":                                 regexp.MustCompile(`(?s)pod/nginx-3 condition met`),
	"kubectl get svc my-awesome-service":                                                                                              regexp.MustCompile(`my-awesome-service\s+ClusterIP\s+10\.96\.\d+\.\d+\s+<none>\s+80/TCP`),
	"kubectl get endpointslices -l kubernetes.io/service-name=my-awesome-service":                                                     regexp.MustCompile(`my-awesome-service-\w+\s+IPv4\s+80\s+10\.244\.\d+\.\d+,10\.244\.\d+\.\d+,10\.244\.\d+\.\d+`),
	"kubectl describe endpointslice -l kubernetes.io/service-name=my-awesome-service":                                                 regexp.MustCompile(`(?s)Labels:.*kubernetes.io/service-name=my-awesome-service.*Ready:\s+true.*Ready:\s+true.*Ready:\s+true`),
	"switchboard exec client -- curl -s http://my-awesome-service":                                                                    regexp.MustCompile(`"pod":"nginx-\d"`),
	"switchboard exec client -- curl -s http://my-awesome-service.default.svc.cluster.local:80":                                       regexp.MustCompile(`"pod":"nginx-\d"`),
	"kubectl apply -f examples/tutorial/port-targetport.yaml":                                                                         regexp.MustCompile(`service/web-8080 created`),
	"kubectl wait --for=condition=Ready pod/web-8080-1 pod/web-8080-2 --timeout=120s":                                                 regexp.MustCompile(`pod/web-8080-2 condition met`),
	"switchboard exec client -- curl -s http://web-8080":                                                                              regexp.MustCompile(`"pod":"web-8080-\d".*"port":8080`),
	"kubectl apply -f examples/tutorial/stateful-app-pods.yaml -f examples/tutorial/my-headless-service.yaml":                         regexp.MustCompile(`service/my-headless-service created`),
	"kubectl wait --for=condition=Ready pod/stateful-app-0 pod/stateful-app-1 pod/stateful-app-2 --timeout=120s":                      regexp.MustCompile(`pod/stateful-app-2 condition met`),
	"switchboard exec client -- getent ahostsv4 my-headless-service.default.svc.cluster.local":                                        regexp.MustCompile(`(?s)(10\.244\.\d+\.\d+\s+STREAM.*){3}`),
	"kubectl apply -f examples/tutorial/nodeport.yaml":                                                                                regexp.MustCompile(`service/my-nodeport-service created`),
	"switchboard exec --node node-2 -- curl -s http://$(kubectl get node node-1 -o jsonpath='{.status.addresses[0].address}'):30080":  regexp.MustCompile(`"pod":"nginx-\d"`),
	"kubectl create service clusterip typo --tcp=80:80 --dry-run=client -o yaml | sed 's/app: typo/app: ngnix/' | kubectl apply -f -": regexp.MustCompile(`service/typo created`),
	"switchboard doctor svc/my-awesome-service":                                                                                       regexp.MustCompile(`(?s)\): OK.*on node node-1, packets to the service go:\s+10\.96\.\d+\.\d+:80/TCP -> DNAT one of (10\.244\.\d+\.\d+:80 \(nginx-\d on node-\d\)(, )?){3}.*on node node-2.*my-awesome-service\.default\.svc\.cluster\.local\. resolves from pod default/client to 10\.96\.`),
	"switchboard doctor svc/typo": regexp.MustCompile(`pod nginx-\d: label app=nginx is a typo away from selector app=ngnix`),
}

// allowedExit lists commands whose non-zero exit is the point.
var allowedExit = map[string]int{"switchboard doctor svc/typo": 3}

// spread lists commands repeated until every named pod has answered: the
// tutorial promises load balancing over all of them.
var spread = map[string][]string{
	"switchboard exec client -- curl -s http://my-awesome-service": {`"pod":"nginx-1"`, `"pod":"nginx-2"`, `"pod":"nginx-3"`},
}

// commands extracts the shell commands of the README's tutorial section.
func commands(t *testing.T, readme string) []string {
	data, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "<!-- tutorial:begin -->")
	section, _, ok2 := strings.Cut(section, "<!-- tutorial:end -->")
	if !ok || !ok2 {
		t.Fatal("README.md has no tutorial section between <!-- tutorial:begin --> and <!-- tutorial:end -->")
	}
	var cmds []string
	in := false
	for _, line := range strings.Split(section, "\n") {
		switch {
		case strings.HasPrefix(line, "```sh"):
			in = true
		case strings.HasPrefix(line, "```"):
			in = false
		case in && strings.TrimSpace(line) != "" && !strings.HasPrefix(line, "#"):
			cmds = append(cmds, strings.TrimSpace(line))
		}
	}
	return cmds
}

func TestTutorial(t *testing.T) {
	ws, cmds := workspace(t)
	startUp(t, ws)
	replay(t, ws, cmds)
}

// workspace lays out a directory like the repository after `scripts/up`:
// the examples, bin/switchboard, and .switchboard as the state directory.
// It returns it with the README tutorial's commands.
func workspace(t *testing.T) (ws string, cmds []string) {
	t.Helper()
	clustertest.RequireRoot(t)
	if _, err := exec.LookPath("kubectl"); err != nil {
		clustertest.Skip(t, "kubectl not installed")
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cmds = commands(t, filepath.Join(repo, "README.md"))
	ws = t.TempDir()
	for _, dir := range []string{"examples", "deploy"} {
		if err := os.Symlink(filepath.Join(repo, dir), filepath.Join(ws, dir)); err != nil {
			t.Fatal(err)
		}
	}
	build := exec.Command("go", "build", "-o", filepath.Join(ws, "bin", "switchboard"), "./cmd/switchboard")
	build.Dir = repo
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build switchboard: %v\n%s", err, out)
	}
	return ws, cmds
}

// startUp runs `switchboard up --nodes 2` (and flags) in ws until the test
// ends, then stops it and removes its data plane with `switchboard down`.
// It returns once up printed its ready line.
func startUp(t *testing.T, ws string, flags ...string) {
	t.Helper()
	up := exec.Command(filepath.Join(ws, "bin", "switchboard"), append([]string{"up", "--nodes", "2", "--apiserver-port", "0"}, flags...)...)
	up.Dir = ws
	stdout, _ := up.StdoutPipe()
	up.Stderr = io.Discard
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		up.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { up.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			up.Process.Kill()
			<-done
		}
		// Stopping `up` leaves the data plane serving; down removes it.
		down := exec.Command(filepath.Join(ws, "bin", "switchboard"), "down")
		down.Dir = ws
		if out, err := down.CombinedOutput(); err != nil {
			t.Errorf("switchboard down: %v\n%s", err, out)
		}
	})
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- line
		io.Copy(io.Discard, stdout)
	}()
	select {
	case line := <-ready:
		if !strings.HasPrefix(line, "switchboard is up; export KUBECONFIG=") {
			t.Fatalf("up printed %q", line)
		}
	case <-time.After(3 * time.Minute):
		t.Fatal("switchboard up did not become ready within 3 minutes")
	}
}

// replay runs the tutorial's commands in ws as a reader would, each until
// its output shows what expectations says (a minute at most).
func replay(t *testing.T, ws string, cmds []string) {
	t.Helper()
	var env []string // `export` lines, applied to every later command
	for _, cmd := range cmds {
		if strings.HasPrefix(cmd, "export ") {
			env = append(env, cmd)
			continue
		}
		want, ok := expectations[cmd]
		if !ok {
			t.Fatalf("README tutorial command %q has no expectation in this test: add one", cmd)
		}
		out := run(t, ws, env, cmd, want)
		t.Logf("$ %s\n%s", cmd, strings.TrimRight(out, "\n"))
		if pods := spread[cmd]; pods != nil {
			reachesAll(t, ws, env, cmd, pods)
		}
	}
}

// run runs cmd (a shell command line, after the export lines env) in ws
// until its output matches want; a reader who runs a command a moment too
// early runs it again, and so does the test, for a minute, before calling
// it broken.
func run(t *testing.T, ws string, env []string, cmd string, want *regexp.Regexp) string {
	t.Helper()
	var out string
	var err error
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err = shell(ws, env, cmd)
		if err == nil && want.MatchString(out) {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("$ %s\n%s\nerr=%v; want output matching %s", cmd, out, err, want)
		}
		time.Sleep(time.Second)
	}
}

func shell(ws string, env []string, cmd string) (string, error) {
	script := strings.Join(append(append([]string{"set -o pipefail"}, env...), cmd), "\n")
	c := exec.Command("bash", "-c", script)
	c.Dir = ws
	out, err := c.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok && allowedExit[cmd] == ee.ExitCode() {
		err = nil
	}
	return string(out), err
}

// reachesAll repeats cmd until every one of pods has answered (60 times at
// most): the tutorial promises load balancing over all of them.
func reachesAll(t *testing.T, ws string, env []string, cmd string, pods []string) {
	t.Helper()
	var seen string
	for i := 0; i < 60 && !containsAll(seen, pods); i++ {
		more, _ := shell(ws, env, cmd)
		seen += more
	}
	if !containsAll(seen, pods) {
		t.Errorf("$ %s: 60 requests never reached all of %v", cmd, pods)
	}
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
