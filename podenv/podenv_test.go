package podenv

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func svc(ns, name, ip string, ports ...int32) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{ClusterIP: ip}}
	for _, p := range ports {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Port: p, Protocol: corev1.ProtocolTCP})
	}
	return s
}

func TestServiceEnv(t *testing.T) {
	services := []*corev1.Service{
		svc("default", "kubernetes", "10.96.0.1", 443),
		svc("ns1", "my-db", "10.96.0.5", 5432),
		svc("ns1", "headless", "None", 80),
		svc("ns2", "other", "10.96.0.6", 80),
	}
	for _, tc := range []struct {
		name  string
		ns    string
		links bool
		want  []string
		not   []string
	}{
		{name: "links", ns: "ns1", links: true,
			want: []string{"KUBERNETES_SERVICE_HOST", "MY_DB_SERVICE_HOST", "MY_DB_PORT_5432_TCP"},
			not:  []string{"HEADLESS_SERVICE_HOST", "OTHER_SERVICE_HOST"}},
		{name: "no links", ns: "ns1", links: false,
			want: []string{"KUBERNETES_SERVICE_HOST", "KUBERNETES_PORT_443_TCP_ADDR"},
			not:  []string{"MY_DB_SERVICE_HOST"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ServiceEnv(tc.ns, tc.links, services)
			for _, k := range tc.want {
				if _, ok := got[k]; !ok {
					t.Errorf("missing %s in %v", k, got)
				}
			}
			for _, k := range tc.not {
				if _, ok := got[k]; ok {
					t.Errorf("unexpected %s in %v", k, got)
				}
			}
		})
	}
	if got := ServiceEnv("ns1", true, services)["MY_DB_PORT"]; got != "tcp://10.96.0.5:5432" {
		t.Errorf("MY_DB_PORT = %q", got)
	}
}

func TestEnv(t *testing.T) {
	cms := map[string]*corev1.ConfigMap{"cm": {Data: map[string]string{"a": "1", "b": "2"}}}
	secrets := map[string]*corev1.Secret{"s": {Data: map[string][]byte{"pw": []byte("x")}}}
	src := Sources{
		ConfigMap: func(n string) (*corev1.ConfigMap, error) {
			if cm, ok := cms[n]; ok {
				return cm, nil
			}
			return nil, apierrors.NewNotFound(corev1.Resource("configmaps"), n)
		},
		Secret: func(n string) (*corev1.Secret, error) {
			if s, ok := secrets[n]; ok {
				return s, nil
			}
			return nil, apierrors.NewNotFound(corev1.Resource("secrets"), n)
		},
		Services:        []*corev1.Service{svc("ns", "web", "10.96.0.9", 80)},
		PodIPs:          []string{"10.244.1.5"},
		HostIPs:         []string{"10.0.0.2"},
		NodeAllocatable: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2")},
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", Labels: map[string]string{"k": "v"}},
		Spec: corev1.PodSpec{NodeName: "node-1", ServiceAccountName: "sa", EnableServiceLinks: ptr.To(false)}}
	cmRef := func(name, key string, optional bool) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: name}, Key: key, Optional: &optional}}
	}
	field := func(path string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}
	}
	for _, tc := range []struct {
		name    string
		c       corev1.Container
		links   bool
		want    map[string]string
		wantErr string
	}{
		{name: "envFrom prefix, env wins", c: corev1.Container{
			EnvFrom: []corev1.EnvFromSource{{Prefix: "P_", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}}},
				{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "s"}}}},
			Env: []corev1.EnvVar{{Name: "P_a", Value: "over"}}},
			want: map[string]string{"P_a": "over", "P_b": "2", "pw": "x"}},
		{name: "expansion", c: corev1.Container{Env: []corev1.EnvVar{
			{Name: "A", Value: "x"}, {Name: "B", Value: "$(A)-$(C)-$$(A)-$(NOPE)"}, {Name: "C", Value: "late"}}},
			want: map[string]string{"A": "x", "B": "x-$(C)-$(A)-$(NOPE)", "C": "late"}},
		{name: "fields", c: corev1.Container{Env: []corev1.EnvVar{
			{Name: "IP", ValueFrom: field("status.podIP")}, {Name: "HOST", ValueFrom: field("status.hostIP")},
			{Name: "NODE", ValueFrom: field("spec.nodeName")}, {Name: "SA", ValueFrom: field("spec.serviceAccountName")},
			{Name: "L", ValueFrom: field("metadata.labels['k']")}, {Name: "NS", ValueFrom: field("metadata.namespace")}}},
			want: map[string]string{"IP": "10.244.1.5", "HOST": "10.0.0.2", "NODE": "node-1", "SA": "sa", "L": "v", "NS": "ns"}},
		{name: "resources default to allocatable", c: corev1.Container{Name: "c", Env: []corev1.EnvVar{
			{Name: "CPU", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu"}}},
			{Name: "REQ", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "requests.memory"}}}}},
			want: map[string]string{"CPU": "2", "REQ": "0"}},
		{name: "optional missing skipped", c: corev1.Container{Env: []corev1.EnvVar{
			{Name: "X", ValueFrom: cmRef("nope", "a", true)}, {Name: "Y", ValueFrom: cmRef("cm", "zz", true)}}},
			want: map[string]string{}},
		{name: "missing key", c: corev1.Container{Env: []corev1.EnvVar{{Name: "X", ValueFrom: cmRef("cm", "zz", false)}}},
			wantErr: "couldn't find key zz in ConfigMap ns/cm"},
		{name: "missing configmap", c: corev1.Container{Env: []corev1.EnvVar{{Name: "X", ValueFrom: cmRef("nope", "a", false)}}},
			wantErr: `configmaps "nope" not found`},
		{name: "service links", links: true, c: corev1.Container{Env: []corev1.EnvVar{{Name: "U", Value: "http://$(WEB_SERVICE_HOST)"}}},
			want: map[string]string{"U": "http://10.96.0.9", "WEB_SERVICE_HOST": "10.96.0.9", "WEB_SERVICE_PORT": "80",
				"WEB_PORT": "tcp://10.96.0.9:80", "WEB_PORT_80_TCP": "tcp://10.96.0.9:80", "WEB_PORT_80_TCP_PROTO": "tcp",
				"WEB_PORT_80_TCP_PORT": "80", "WEB_PORT_80_TCP_ADDR": "10.96.0.9"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := pod.DeepCopy()
			p.Spec.EnableServiceLinks = &tc.links
			p.Spec.Containers = []corev1.Container{tc.c}
			env, err := Env(p, &p.Spec.Containers[0], src)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, e := range env {
				got[e.Name] = e.Value
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("env (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCommandLine(t *testing.T) {
	c := &corev1.Container{Command: []string{"sh", "-c", "$(CMD)"}, Args: []string{"$(A)", "$$(A)", "$(UNSET)", "$(A"}}
	cmd, args := CommandLine(c, []corev1.EnvVar{{Name: "CMD", Value: "echo hi"}, {Name: "A", Value: "a"}})
	if diff := cmp.Diff([]string{"sh", "-c", "echo hi"}, cmd); diff != "" {
		t.Errorf("command (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"a", "$(A)", "$(UNSET)", "$(A"}, args); diff != "" {
		t.Errorf("args (-want +got):\n%s", diff)
	}
}
