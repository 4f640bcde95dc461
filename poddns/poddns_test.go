package poddns

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func TestResolvConf(t *testing.T) {
	host := ParseHost("# comment\nnameserver 192.0.2.1\nnameserver 192.0.2.2\nsearch corp.example.\noptions rotate\n")
	long := make([]string, 40)
	for i := range long {
		long[i] = fmt.Sprintf("d%d.example", i)
	}
	for _, tc := range []struct {
		name    string
		spec    corev1.PodSpec
		want    string
		wantErr string
	}{
		{name: "ClusterFirst by default",
			want: "search ns.svc.cluster.local svc.cluster.local cluster.local corp.example\nnameserver 10.96.0.10\noptions ndots:5\n"},
		{name: "ClusterFirst with dnsConfig", spec: corev1.PodSpec{DNSPolicy: corev1.DNSClusterFirst, DNSConfig: &corev1.PodDNSConfig{
			Nameservers: []string{"10.96.0.10", "1.1.1.1"}, Searches: []string{"cluster.local", "extra.test"},
			Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: ptr.To("2")}, {Name: "edns0"}}}},
			want: "search ns.svc.cluster.local svc.cluster.local cluster.local corp.example extra.test\nnameserver 10.96.0.10\nnameserver 1.1.1.1\noptions ndots:2 edns0\n"},
		{name: "Default is the host's", spec: corev1.PodSpec{DNSPolicy: corev1.DNSDefault},
			want: "search corp.example\nnameserver 192.0.2.1\nnameserver 192.0.2.2\noptions rotate\n"},
		{name: "hostNetwork ClusterFirst is Default", spec: corev1.PodSpec{HostNetwork: true},
			want: "search corp.example\nnameserver 192.0.2.1\nnameserver 192.0.2.2\noptions rotate\n"},
		{name: "ClusterFirstWithHostNet", spec: corev1.PodSpec{HostNetwork: true, DNSPolicy: corev1.DNSClusterFirstWithHostNet},
			want: "search ns.svc.cluster.local svc.cluster.local cluster.local corp.example\nnameserver 10.96.0.10\noptions ndots:5\n"},
		{name: "None", spec: corev1.PodSpec{DNSPolicy: corev1.DNSNone, DNSConfig: &corev1.PodDNSConfig{
			Nameservers: []string{"1.2.3.4", "1.2.3.5", "1.2.3.6", "1.2.3.7"}, Searches: []string{"a.test"}}},
			want: "search a.test\nnameserver 1.2.3.4\nnameserver 1.2.3.5\nnameserver 1.2.3.6\n"},
		{name: "None without dnsConfig", spec: corev1.PodSpec{DNSPolicy: corev1.DNSNone},
			wantErr: "pod ns/p: dnsPolicy None requires spec.dnsConfig"},
		{name: "search list cut to 32", spec: corev1.PodSpec{DNSPolicy: corev1.DNSNone, DNSConfig: &corev1.PodDNSConfig{Searches: long}},
			want: "search " + strings.Join(long[:32], " ") + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p"}, Spec: tc.spec}
			got, err := ResolvConf(pod, []string{"10.96.0.10"}, "cluster.local", host)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}
