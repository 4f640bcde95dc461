package kubeproxyconfig

import (
	"strings"
	"testing"
	"time"
)

// kubeadmConfig is the config.conf of the kube-proxy ConfigMap kubeadm
// writes, switched to nftables mode.
const kubeadmConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: 32768
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 2
metricsBindAddress: 0.0.0.0:10249
mode: nftables
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 1s
  syncPeriod: 0s
nodePortAddresses:
- primary
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
`

func TestDecodeKubeadmConfig(t *testing.T) {
	s, err := Decode([]byte(kubeadmConfig))
	if err != nil {
		t.Fatal(err)
	}
	if s.Lenient != nil {
		t.Errorf("kubeadm's file needed lenient decoding: %v", s.Lenient)
	}
	if s.Kubeconfig != "/var/lib/kube-proxy/kubeconfig.conf" || s.ClusterCIDR != "10.244.0.0/16" ||
		s.MetricsBindAddress != "0.0.0.0:10249" || s.HealthzBindAddress != "" || s.Verbosity != 2 || s.MinSyncPeriod != time.Second ||
		len(s.NodePortAddresses) != 1 || s.NodePortAddresses[0] != "primary" {
		t.Errorf("settings %+v", s)
	}
	if len(s.Ignored) != 1 || !strings.HasPrefix(s.Ignored[0], "conntrack:") {
		t.Errorf("ignored %q, want only conntrack (maxPerCore is set)", s.Ignored)
	}
}

func TestDecodeRejects(t *testing.T) {
	for name, tc := range map[string]struct{ doc, want string }{
		"ipvs":          {"apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ipvs\n", `mode "ipvs"`},
		"other kind":    {"apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n", "want kubeproxy.config.k8s.io/v1alpha1 KubeProxyConfiguration"},
		"masqueradeBit": {"apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nnftables:\n  masqueradeBit: 15\n", "masqueradeBit 15"},
		"detectLocal":   {"apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\ndetectLocalMode: NodeCIDR\n", `detectLocalMode "NodeCIDR"`},
	} {
		if _, err := Decode([]byte(tc.doc)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want one naming %s", name, err, tc.want)
		}
	}
}

func TestDecodeUnknownFieldIsLenient(t *testing.T) {
	s, err := Decode([]byte("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: 10.0.0.0/8\nnoSuchField: 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Lenient == nil || !strings.Contains(s.Lenient.Error(), "noSuchField") || s.ClusterCIDR != "10.0.0.0/8" {
		t.Errorf("lenient %v, settings %+v", s.Lenient, s)
	}
}
