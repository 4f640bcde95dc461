// Package agnhost links upstream's agnhost test program
// (k8s.io/kubernetes/test/images/agnhost, the image
// registry.k8s.io/e2e-test-images/agnhost) and the pause program into
// whatever binary imports it, so the local cluster runs those images
// without a registry or a container runtime.
//
// The binary becomes agnhost when started with argv[0] set to the path the
// program has in its image ("/agnhost", or the image's "/agnhost-2" link),
// and pause with argv[0] "/pause"; the package's init function recognises
// the name before main runs, as the container init does. That way the
// switchboard binary and every test binary linking the local cluster can be
// those programs without a subcommand of their own.
package agnhost

import (
	_ "embed"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"k8s.io/component-base/cli"
	auditproxy "k8s.io/kubernetes/test/images/agnhost/audit-proxy"
	"k8s.io/kubernetes/test/images/agnhost/connect"
	crdconvwebhook "k8s.io/kubernetes/test/images/agnhost/crd-conversion-webhook"
	"k8s.io/kubernetes/test/images/agnhost/dns"
	entrypoint "k8s.io/kubernetes/test/images/agnhost/entrypoint-tester"
	externalmetrics "k8s.io/kubernetes/test/images/agnhost/external-metrics"
	"k8s.io/kubernetes/test/images/agnhost/fakegitserver"
	"k8s.io/kubernetes/test/images/agnhost/fakeregistryserver"
	grpchealthchecking "k8s.io/kubernetes/test/images/agnhost/grpc-health-checking"
	"k8s.io/kubernetes/test/images/agnhost/guestbook"
	"k8s.io/kubernetes/test/images/agnhost/inclusterclient"
	"k8s.io/kubernetes/test/images/agnhost/liveness"
	logsgen "k8s.io/kubernetes/test/images/agnhost/logs-generator"
	"k8s.io/kubernetes/test/images/agnhost/mounttest"
	"k8s.io/kubernetes/test/images/agnhost/mtlsclient"
	"k8s.io/kubernetes/test/images/agnhost/mtlsserver"
	"k8s.io/kubernetes/test/images/agnhost/net"
	"k8s.io/kubernetes/test/images/agnhost/netexec"
	"k8s.io/kubernetes/test/images/agnhost/nettest"
	nosnat "k8s.io/kubernetes/test/images/agnhost/no-snat-test"
	nosnatproxy "k8s.io/kubernetes/test/images/agnhost/no-snat-test-proxy"
	"k8s.io/kubernetes/test/images/agnhost/nonewprivs"
	"k8s.io/kubernetes/test/images/agnhost/openidmetadata"
	"k8s.io/kubernetes/test/images/agnhost/pause"
	"k8s.io/kubernetes/test/images/agnhost/podcertificatesigner"
	portforwardtester "k8s.io/kubernetes/test/images/agnhost/port-forward-tester"
	"k8s.io/kubernetes/test/images/agnhost/porter"
	resconsumerctrl "k8s.io/kubernetes/test/images/agnhost/resource-consumer-controller"
	servehostname "k8s.io/kubernetes/test/images/agnhost/serve-hostname"
	tcpreset "k8s.io/kubernetes/test/images/agnhost/tcp-reset"
	testwebserver "k8s.io/kubernetes/test/images/agnhost/test-webserver"
	"k8s.io/kubernetes/test/images/agnhost/webhook"
	"k8s.io/kubernetes/third_party/forked/vishhstress"

	"github.com/switchboard/switchboard/workingset"
)

// Program paths: argv[0] of a linked program is its path in its image.
const (
	// Path is agnhost's path in its image, the image's ENTRYPOINT.
	Path = "/agnhost"
	// Path2 is the image's second name for agnhost (`ln -s agnhost agnhost-2`).
	Path2 = "/agnhost-2"
	// PausePath is the pause image's ENTRYPOINT.
	PausePath = "/pause"
)

func init() {
	switch os.Args[0] {
	case Path, Path2, PausePath:
	default:
		return
	}
	// The init code of every package linked so far touched executable
	// pages this program never uses again: unmap them, as main does for
	// switchboard's own commands.
	workingset.Release()
	dropForeignVersionFlag()
	switch os.Args[0] {
	case Path, Path2:
		// Several subcommands (pause, liveness) write their termination
		// message to /dev/termination-log unless told otherwise; until the
		// runtime mounts that file as the kubelet does, /dev is the host's,
		// so the message must not land there.
		if _, err := os.Stat("/dev/termination-log"); err != nil && os.Getenv("TERMINATION_MESSAGE_PATH") == "" {
			os.Setenv("TERMINATION_MESSAGE_PATH", os.DevNull)
		}
		if len(os.Args) > 1 && os.Args[1] == "porter" {
			porterCertificate()
		}
		os.Exit(cli.Run(root()))
	case PausePath:
		os.Exit(runPause())
	}
}

// The agnhost image's /localhost.crt and /localhost.key (copied from
// test/images/agnhost/porter): porter serves its TLS ports with them,
// found relative to the image's WORKDIR /.
var (
	//go:embed localhost.crt
	imageCert []byte
	//go:embed localhost.key
	imageKey []byte
)

// porterCertificate gives porter the image's certificate and key when the
// container's root, which is the host's, lacks them and the container
// names none of its own (CERT_FILE, KEY_FILE): as in-memory files, so
// nothing is written to the host. The variables are set in this process
// only; the environment `kubectl exec` sees (the process's initial one)
// stays the container's.
func porterCertificate() {
	for _, f := range []struct {
		env, image string
		data       []byte
	}{{"CERT_FILE", "localhost.crt", imageCert}, {"KEY_FILE", "localhost.key", imageKey}} {
		if os.Getenv(f.env) != "" {
			continue
		}
		if _, err := os.Stat(f.image); err == nil {
			continue
		}
		fd, err := unix.MemfdCreate(f.image, unix.MFD_CLOEXEC)
		if err != nil {
			fmt.Fprintf(os.Stderr, "agnhost: image file %s: %v\n", f.image, err)
			continue
		}
		if _, err := unix.Write(fd, f.data); err != nil {
			fmt.Fprintf(os.Stderr, "agnhost: image file %s: %v\n", f.image, err)
			unix.Close(fd)
			continue
		}
		// The descriptor stays open for the life of the process.
		os.Setenv(f.env, fmt.Sprintf("/proc/self/fd/%d", fd))
	}
}

// runPause is the pause image's program (build/pause/linux/pause.c): it
// sleeps until SIGINT or SIGTERM and exits 0, reaping any child that ends
// meanwhile (it is its PID namespace's init). agnhost's pause differs: it
// exits 1 or 2 on those signals.
func runPause() int {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig == syscall.SIGCHLD {
			for {
				if pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil); pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		fmt.Fprintf(os.Stderr, "Shutting down, got signal: %s\n", sig)
		return 0
	}
	return 0
}

// dropForeignVersionFlag removes the --version flag component-base's
// verflag registers on pflag.CommandLine when switchboard links it: the
// global flags cli.Run adds to agnhost's root would then clash with cobra's
// own boolean --version ("version flag declared as non-bool"), which
// agnhost answers.
func dropForeignVersionFlag() {
	if f := pflag.CommandLine.Lookup("version"); f == nil || f.Value.Type() == "bool" {
		return
	}
	fs := pflag.NewFlagSet(os.Args[0], pflag.ExitOnError)
	pflag.CommandLine.VisitAll(func(f *pflag.Flag) {
		if f.Name != "version" {
			fs.AddFlag(f)
		}
	})
	pflag.CommandLine = fs
}

// root is agnhost's command tree as test/images/agnhost/agnhost.go builds it.
func root() *cobra.Command {
	rootCmd := &cobra.Command{Use: "app", Version: "switchboard"}
	rootCmd.AddCommand(auditproxy.CmdAuditProxy)
	rootCmd.AddCommand(connect.CmdConnect)
	rootCmd.AddCommand(crdconvwebhook.CmdCrdConversionWebhook)
	rootCmd.AddCommand(dns.CmdDNSSuffix)
	rootCmd.AddCommand(dns.CmdDNSServerList)
	rootCmd.AddCommand(dns.CmdEtcHosts)
	rootCmd.AddCommand(entrypoint.CmdEntrypointTester)
	rootCmd.AddCommand(fakegitserver.CmdFakeGitServer)
	rootCmd.AddCommand(fakeregistryserver.CmdFakeRegistryServer)
	rootCmd.AddCommand(guestbook.CmdGuestbook)
	rootCmd.AddCommand(inclusterclient.CmdInClusterClient)
	rootCmd.AddCommand(liveness.CmdLiveness)
	rootCmd.AddCommand(logsgen.CmdLogsGenerator)
	rootCmd.AddCommand(mounttest.CmdMounttest)
	rootCmd.AddCommand(net.CmdNet)
	rootCmd.AddCommand(netexec.CmdNetexec)
	rootCmd.AddCommand(nettest.CmdNettest)
	rootCmd.AddCommand(nosnat.CmdNoSnatTest)
	rootCmd.AddCommand(nosnatproxy.CmdNoSnatTestProxy)
	rootCmd.AddCommand(pause.CmdPause)
	rootCmd.AddCommand(porter.CmdPorter)
	rootCmd.AddCommand(portforwardtester.CmdPortForwardTester)
	rootCmd.AddCommand(resconsumerctrl.CmdResourceConsumerController)
	rootCmd.AddCommand(servehostname.CmdServeHostname)
	rootCmd.AddCommand(testwebserver.CmdTestWebserver)
	rootCmd.AddCommand(tcpreset.CmdTCPReset)
	rootCmd.AddCommand(webhook.CmdWebhook)
	rootCmd.AddCommand(openidmetadata.CmdTestServiceAccountIssuerDiscovery)
	rootCmd.AddCommand(grpchealthchecking.CmdGrpcHealthChecking)
	rootCmd.AddCommand(vishhstress.CmdStress)
	rootCmd.AddCommand(podcertificatesigner.CmdPodCertificateSigner)
	rootCmd.AddCommand(mtlsclient.CmdMtlsClient)
	rootCmd.AddCommand(mtlsserver.CmdMtlsServer)
	rootCmd.AddCommand(nonewprivs.CmdNoNewPrivs)
	rootCmd.AddCommand(externalmetrics.CmdExternalMetricsServer)
	return rootCmd
}
