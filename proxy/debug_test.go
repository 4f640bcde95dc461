package proxy_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/switchboard/switchboard/clustertest"
	"github.com/switchboard/switchboard/proxy"
	"github.com/switchboard/switchboard/proxydebug"
)

// TestDebugStateShowsProgrammedPathAndKernelDrift reads the debug endpoint
// doctor uses: the endpoints each port balances over, the elements
// applied, and elements the kernel lost behind the proxy's back.
func TestDebugStateShowsProgrammedPathAndKernelDrift(t *testing.T) {
	w := newWorld(t, 2)
	client, _ := clustertest.Client(t)
	ns := clustertest.Namespace(t, client)
	startProxy(t, w, proxy.Config{Client: client, MetricsBindAddress: "127.0.0.1:10249"})
	svc := service(t, client, ns, "web", nil)
	b := w.backends
	setSlice(t, client, ns, "web", []epSpec{ready(b[0], "node-a"), ready(b[1], "node-b")})
	cip := svc.Spec.ClusterIP
	url := fmt.Sprintf("http://127.0.0.1:10249%s?namespace=%s&name=web", proxydebug.Path, ns)
	read := func() (proxydebug.State, error) {
		var st proxydebug.State
		_, body, err := httpGet(w.nodePath, url)
		if err != nil {
			return st, err
		}
		return st, json.Unmarshal([]byte(body), &st)
	}
	var st proxydebug.State
	eventually(t, "debug state lists both endpoints of port tcp", func() error {
		var err error
		if st, err = read(); err != nil {
			return err
		}
		if len(st.Services) != 1 || len(st.Services[0].Ports) != 2 {
			return fmt.Errorf("services %+v", st.Services)
		}
		for _, p := range st.Services[0].Ports {
			if p.Name == "tcp" && len(p.ClusterEndpoints) == 2 {
				return nil
			}
		}
		return fmt.Errorf("ports %+v", st.Services[0].Ports)
	})
	if st.Node != "node-a" || st.LastSync.IsZero() || st.LastError != "" {
		t.Errorf("node %q lastSync %v lastError %q", st.Node, st.LastSync, st.LastError)
	}
	ds := st.Services[0]
	if ds.KernelError != "" || len(ds.Kernel.Missing) != 0 {
		t.Fatalf("kernel error %q, missing %v", ds.KernelError, ds.Kernel.Missing)
	}
	var tcp proxydebug.Port
	for _, p := range ds.Ports {
		if p.Name == "tcp" {
			tcp = p
		}
	}
	wantEPs := []netip.AddrPort{netip.MustParseAddrPort(b[0] + ":8080"), netip.MustParseAddrPort(b[1] + ":8080")}
	if !slices.Equal(tcp.ClusterEndpoints, wantEPs) || tcp.Port != 80 || tcp.Protocol != "TCP" {
		t.Errorf("port tcp: %+v; want endpoints %v", tcp, wantEPs)
	}
	wantElem := fmt.Sprintf("svc-2 %s . tcp . 80 . 0 : %s . 8080", cip, b[0])
	if !slices.Contains(ds.Kernel.Applied, wantElem) {
		t.Errorf("applied %q lacks %q", ds.Kernel.Applied, wantElem)
	}

	// Someone else empties the map: the proxy's bookkeeping still says
	// applied, the kernel read-back says missing.
	nsName := w.nodePath[strings.LastIndex(w.nodePath, "/")+1:]
	if out, err := exec.Command("ip", "netns", "exec", nsName, "nft", "flush", "map", "ip", "switchboard", "svc-2").CombinedOutput(); err != nil {
		t.Fatalf("nft flush: %v: %s", err, out)
	}
	st, err := read()
	if err != nil {
		t.Fatal(err)
	}
	missing := st.Services[0].Kernel.Missing
	if !slices.Contains(missing, wantElem) || slices.ContainsFunc(missing, func(s string) bool { return !strings.HasPrefix(s, "svc-2 ") }) {
		t.Errorf("missing %q; want exactly the svc-2 elements, including %q", missing, wantElem)
	}
}
