// Package podenv computes a container's environment and command line as the
// kubelet does (makeEnvironmentVariables, ExpandContainerCommandAndArgs):
// envFrom, env with its value sources (ConfigMap and Secret keys, the pod's
// fields, the container's resources), the Service link variables, and
// $(VAR) expansion. It only computes: fetching objects is the caller's,
// through Sources.
package podenv

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kubernetes/pkg/api/v1/resource"
	podshelper "k8s.io/kubernetes/pkg/apis/core/pods"
	v1helper "k8s.io/kubernetes/pkg/apis/core/v1/helper"
	"k8s.io/kubernetes/pkg/fieldpath"
	"k8s.io/kubernetes/pkg/kubelet/envvars"
	"k8s.io/kubernetes/third_party/forked/golang/expansion"
)

// Sources are what a container's environment is made of besides its pod.
type Sources struct {
	// ConfigMap and Secret fetch an object of the pod's namespace; a
	// missing one is an API NotFound error (an optional reference to it is
	// then skipped, as the kubelet skips it).
	ConfigMap func(name string) (*corev1.ConfigMap, error)
	Secret    func(name string) (*corev1.Secret, error)
	// Services are the cluster's Services, any namespace: ServiceEnv picks
	// the ones the pod sees.
	Services []*corev1.Service
	PodIPs   []string
	HostIPs  []string
	// NodeAllocatable stands in for a resource limit the container does
	// not set (the kubelet's defaultPodLimitsForDownwardAPI).
	NodeAllocatable corev1.ResourceList
}

// masterServices are the default namespace's Services every pod gets
// variables for, enableServiceLinks or not.
var masterServices = map[string]bool{"kubernetes": true}

// ServiceEnv is the Service link variables (FOO_SERVICE_HOST,
// FOO_SERVICE_PORT, FOO_PORT_80_TCP_ADDR, ...) of a pod in namespace ns,
// as the kubelet's getServiceEnvVarMap: the default namespace's
// `kubernetes` always, the namespace's own Services with
// enableServiceLinks; headless Services have none.
func ServiceEnv(ns string, enableServiceLinks bool, services []*corev1.Service) map[string]string {
	picked := map[string]*corev1.Service{}
	for _, s := range services {
		if !v1helper.IsServiceIPSet(s) {
			continue
		}
		if s.Namespace == metav1.NamespaceDefault && masterServices[s.Name] {
			if _, ok := picked[s.Name]; !ok {
				picked[s.Name] = s
			}
		} else if s.Namespace == ns && enableServiceLinks {
			picked[s.Name] = s
		}
	}
	list := make([]*corev1.Service, 0, len(picked))
	for _, s := range picked {
		list = append(list, s)
	}
	m := map[string]string{}
	for _, e := range envvars.FromServices(list) {
		m[e.Name] = e.Value
	}
	return m
}

// Env is the container's environment, sorted by name: envFrom first,
// env over it (its values with $(VAR) expanded against what came before
// and the Service variables), then the Service variables the container
// does not set itself.
func Env(pod *corev1.Pod, c *corev1.Container, src Sources) ([]corev1.EnvVar, error) {
	links := true
	if pod.Spec.EnableServiceLinks != nil {
		links = *pod.Spec.EnableServiceLinks
	}
	serviceEnv := ServiceEnv(pod.Namespace, links, src.Services)
	configMaps := map[string]*corev1.ConfigMap{}
	secrets := map[string]*corev1.Secret{}
	getCM := func(name string) (*corev1.ConfigMap, error) {
		if cm, ok := configMaps[name]; ok {
			return cm, nil
		}
		if src.ConfigMap == nil {
			return nil, fmt.Errorf("couldn't get configMap %s/%s: no API client", pod.Namespace, name)
		}
		cm, err := src.ConfigMap(name)
		if err == nil {
			configMaps[name] = cm
		}
		return cm, err
	}
	getSecret := func(name string) (*corev1.Secret, error) {
		if s, ok := secrets[name]; ok {
			return s, nil
		}
		if src.Secret == nil {
			return nil, fmt.Errorf("couldn't get secret %s/%s: no API client", pod.Namespace, name)
		}
		s, err := src.Secret(name)
		if err == nil {
			secrets[name] = s
		}
		return s, err
	}
	env := map[string]string{}
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			cm, err := getCM(ef.ConfigMapRef.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && ef.ConfigMapRef.Optional != nil && *ef.ConfigMapRef.Optional {
					continue
				}
				return nil, err
			}
			for k, v := range cm.Data {
				env[ef.Prefix+k] = v
			}
		case ef.SecretRef != nil:
			s, err := getSecret(ef.SecretRef.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && ef.SecretRef.Optional != nil && *ef.SecretRef.Optional {
					continue
				}
				return nil, err
			}
			for k, v := range s.Data {
				env[ef.Prefix+k] = string(v)
			}
		}
	}
	mapping := expansion.MappingFuncFor(env, serviceEnv)
	for _, e := range c.Env {
		val := e.Value
		switch {
		case val != "":
			val = expansion.Expand(val, mapping)
		case e.ValueFrom == nil:
		case e.ValueFrom.FieldRef != nil:
			v, err := FieldValue(pod, e.ValueFrom.FieldRef, src.PodIPs, src.HostIPs)
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
			val = v
		case e.ValueFrom.ResourceFieldRef != nil:
			v, err := ResourceValue(pod, c, e.ValueFrom.ResourceFieldRef, src.NodeAllocatable)
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
			val = v
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			optional := ref.Optional != nil && *ref.Optional
			cm, err := getCM(ref.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && optional {
					continue
				}
				return nil, err
			}
			v, ok := cm.Data[ref.Key]
			if !ok {
				if optional {
					continue
				}
				return nil, fmt.Errorf("couldn't find key %s in ConfigMap %s/%s", ref.Key, pod.Namespace, ref.Name)
			}
			val = v
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			optional := ref.Optional != nil && *ref.Optional
			s, err := getSecret(ref.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && optional {
					continue
				}
				return nil, err
			}
			v, ok := s.Data[ref.Key]
			if !ok {
				if optional {
					continue
				}
				return nil, fmt.Errorf("couldn't find key %s in Secret %s/%s", ref.Key, pod.Namespace, ref.Name)
			}
			val = string(v)
		}
		env[e.Name] = val
	}
	for k, v := range serviceEnv {
		if _, set := env[k]; !set {
			env[k] = v
		}
	}
	out := make([]corev1.EnvVar, 0, len(env))
	for k, v := range env {
		out = append(out, corev1.EnvVar{Name: k, Value: v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// FieldValue is a pod field for env's fieldRef and the downwardAPI
// volume, as the kubelet's podFieldSelectorRuntimeValue.
func FieldValue(pod *corev1.Pod, fs *corev1.ObjectFieldSelector, podIPs, hostIPs []string) (string, error) {
	version := fs.APIVersion
	if version == "" {
		version = "v1" // the API's default
	}
	path, _, err := podshelper.ConvertDownwardAPIFieldLabel(version, fs.FieldPath, "")
	if err != nil {
		return "", err
	}
	first := func(s []string) string {
		if len(s) == 0 {
			return ""
		}
		return s[0]
	}
	switch path {
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP":
		return first(hostIPs), nil
	case "status.hostIPs":
		return strings.Join(hostIPs, ","), nil
	case "status.podIP":
		return first(podIPs), nil
	case "status.podIPs":
		return strings.Join(podIPs, ","), nil
	}
	return fieldpath.ExtractFieldPathAsString(pod, path)
}

// ResourceValue is a container's request or limit for env's
// resourceFieldRef and the downwardAPI volume; an unset limit reads as the
// node's allocatable, as on a kubelet.
func ResourceValue(pod *corev1.Pod, c *corev1.Container, fs *corev1.ResourceFieldSelector, allocatable corev1.ResourceList) (string, error) {
	target := c
	if fs.ContainerName != "" || c == nil {
		target = nil
		for _, list := range [][]corev1.Container{pod.Spec.Containers, pod.Spec.InitContainers} {
			for i := range list {
				if list[i].Name == fs.ContainerName {
					target = &list[i]
				}
			}
		}
		if target == nil {
			return "", fmt.Errorf("container %s not found in pod %s/%s", fs.ContainerName, pod.Namespace, pod.Name)
		}
	}
	defaulted := target.DeepCopy()
	if defaulted.Resources.Limits == nil {
		defaulted.Resources.Limits = corev1.ResourceList{}
	}
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory, corev1.ResourceEphemeralStorage} {
		if _, ok := defaulted.Resources.Limits[name]; !ok {
			if q, ok := allocatable[name]; ok {
				defaulted.Resources.Limits[name] = q
			}
		}
	}
	return resource.ExtractContainerResourceValue(fs, defaulted)
}

// CommandLine is the container's command and args with $(VAR) expanded
// against its environment (ExpandContainerCommandAndArgs); $$ escapes a
// $, and a reference to an unknown variable stays as written.
func CommandLine(c *corev1.Container, env []corev1.EnvVar) (command, args []string) {
	m := make(map[string]string, len(env))
	for _, e := range env {
		m[e.Name] = e.Value
	}
	mapping := expansion.MappingFuncFor(m)
	for _, s := range c.Command {
		command = append(command, expansion.Expand(s, mapping))
	}
	for _, s := range c.Args {
		args = append(args, expansion.Expand(s, mapping))
	}
	return command, args
}

// ExpandString expands $(VAR) in one string against env, as a
// volumeMount's subPathExpr is.
func ExpandString(s string, env []corev1.EnvVar) string {
	m := make(map[string]string, len(env))
	for _, e := range env {
		m[e.Name] = e.Value
	}
	return expansion.Expand(s, expansion.MappingFuncFor(m))
}
