// Package podvolume materialises a pod's volumes on the node as the
// kubelet's volume plugins do: emptyDir and hostPath directories, and
// configMap, secret, downwardAPI and projected (with the service account
// token from the TokenRequest API) volumes written with the kubelet's
// AtomicWriter (visible names are symlinks through ..data to a timestamped
// directory, so a consumer never sees a half-written update).
package podvolume

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/kubernetes/pkg/volume/configmap"
	"k8s.io/kubernetes/pkg/volume/secret"
	volumeutil "k8s.io/kubernetes/pkg/volume/util"

	"github.com/switchboard/switchboard/podenv"
)

// Pod is a pod to materialise volumes for and what its downward API reads.
type Pod struct {
	Pod             *corev1.Pod
	PodIPs, HostIPs []string
	NodeAllocatable corev1.ResourceList
	// Tokens keeps service account tokens between set-ups; nil asks for
	// a new token every time.
	Tokens *Tokens
}

// Tokens caches the tokens of projected volumes as the kubelet's token
// manager does: a token is asked for again once 80% of its life is over
// (or after 24 hours), not at every set-up.
type Tokens struct {
	mu sync.Mutex
	m  map[string]cachedToken
}

type cachedToken struct {
	token   string
	refresh time.Time
}

// Forget drops the pod's tokens (the pod is gone).
func (t *Tokens) Forget(uid types.UID) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for k := range t.m {
		if strings.HasPrefix(k, string(uid)+"/") {
			delete(t.m, k)
		}
	}
}

// MountError is a volume that cannot be set up yet (a missing ConfigMap or
// Secret): the containers wait, as a kubelet's do with a FailedMount event.
type MountError struct {
	Volume string
	Err    error
}

func (e *MountError) Error() string {
	return fmt.Sprintf("MountVolume.SetUp failed for volume %q : %v", e.Volume, e.Err)
}

func (e *MountError) Unwrap() error { return e.Err }

// Set up writes every volume of the pod under dir (one directory per
// volume) and returns each volume's host path by name. It is called again
// before each container start, which refreshes configMap, secret,
// downwardAPI and projected contents as the kubelet's periodic resync does.
func SetUp(ctx context.Context, client kubernetes.Interface, p Pod, dir string) (map[string]string, error) {
	pod := p.Pod
	paths := map[string]string{}
	for _, v := range pod.Spec.Volumes {
		target := filepath.Join(dir, v.Name)
		var err error
		switch {
		case v.EmptyDir != nil:
			// World-writable as the kubelet's emptyDir, so containers of
			// different users share it.
			if err = os.MkdirAll(target, 0o777); err == nil {
				err = os.Chmod(target, 0o777)
			}
		case v.HostPath != nil:
			target = v.HostPath.Path
			err = hostPath(v.HostPath)
		case v.ConfigMap != nil, v.Secret != nil, v.DownwardAPI != nil, v.Projected != nil:
			var payload map[string]volumeutil.FileProjection
			payload, err = projection(ctx, client, p, v)
			if err == nil {
				err = write(target, pod, payload)
			}
		default:
			// Other volume types have no node-local meaning here; an empty
			// directory keeps the mount point usable.
			err = os.MkdirAll(target, 0o755)
		}
		if err != nil {
			return nil, &MountError{Volume: v.Name, Err: err}
		}
		paths[v.Name] = target
	}
	return paths, nil
}

func hostPath(h *corev1.HostPathVolumeSource) error {
	t := corev1.HostPathUnset
	if h.Type != nil {
		t = *h.Type
	}
	switch t {
	case corev1.HostPathDirectoryOrCreate:
		return os.MkdirAll(h.Path, 0o755)
	case corev1.HostPathFileOrCreate:
		f, err := os.OpenFile(h.Path, os.O_CREATE|os.O_RDONLY, 0o644)
		if err == nil {
			f.Close()
		}
		return err
	case corev1.HostPathUnset:
		return nil
	}
	_, err := os.Stat(h.Path)
	return err
}

func write(target string, pod *corev1.Pod, payload map[string]volumeutil.FileProjection) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	w, err := volumeutil.NewAtomicWriter(target, fmt.Sprintf("pod %s/%s volume %s", pod.Namespace, pod.Name, filepath.Base(target)))
	if err != nil {
		return err
	}
	return w.Write(payload, nil)
}

// projection is a configMap, secret, downwardAPI or projected volume's
// files.
func projection(ctx context.Context, client kubernetes.Interface, p Pod, v corev1.Volume) (map[string]volumeutil.FileProjection, error) {
	pod := p.Pod
	switch {
	case v.ConfigMap != nil:
		optional := v.ConfigMap.Optional != nil && *v.ConfigMap.Optional
		cm, err := client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
		if err != nil {
			if !(apierrors.IsNotFound(err) && optional) {
				return nil, fmt.Errorf("configmap %q not found", v.ConfigMap.Name)
			}
			cm = &corev1.ConfigMap{}
		}
		return configmap.MakePayload(v.ConfigMap.Items, cm, v.ConfigMap.DefaultMode, optional)
	case v.Secret != nil:
		optional := v.Secret.Optional != nil && *v.Secret.Optional
		s, err := client.CoreV1().Secrets(pod.Namespace).Get(ctx, v.Secret.SecretName, metav1.GetOptions{})
		if err != nil {
			if !(apierrors.IsNotFound(err) && optional) {
				return nil, fmt.Errorf("secret %q not found", v.Secret.SecretName)
			}
			s = &corev1.Secret{}
		}
		return secret.MakePayload(v.Secret.Items, s, v.Secret.DefaultMode, optional)
	case v.DownwardAPI != nil:
		return downward(p, v.DownwardAPI.Items, mode(v.DownwardAPI.DefaultMode))
	}
	// projected: each source's files in one directory.
	out := map[string]volumeutil.FileProjection{}
	defMode := v.Projected.DefaultMode
	for _, src := range v.Projected.Sources {
		var files map[string]volumeutil.FileProjection
		var err error
		switch {
		case src.ConfigMap != nil:
			optional := src.ConfigMap.Optional != nil && *src.ConfigMap.Optional
			cm, gerr := client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, src.ConfigMap.Name, metav1.GetOptions{})
			if gerr != nil {
				if !(apierrors.IsNotFound(gerr) && optional) {
					return nil, fmt.Errorf("configmap %q not found", src.ConfigMap.Name)
				}
				continue
			}
			files, err = configmap.MakePayload(src.ConfigMap.Items, cm, defMode, optional)
		case src.Secret != nil:
			optional := src.Secret.Optional != nil && *src.Secret.Optional
			s, gerr := client.CoreV1().Secrets(pod.Namespace).Get(ctx, src.Secret.Name, metav1.GetOptions{})
			if gerr != nil {
				if !(apierrors.IsNotFound(gerr) && optional) {
					return nil, fmt.Errorf("secret %q not found", src.Secret.Name)
				}
				continue
			}
			files, err = secret.MakePayload(src.Secret.Items, s, defMode, optional)
		case src.DownwardAPI != nil:
			files, err = downward(p, src.DownwardAPI.Items, mode(defMode))
		case src.ServiceAccountToken != nil:
			files, err = token(ctx, client, pod, p.Tokens, src.ServiceAccountToken, mode(defMode))
		}
		if err != nil {
			return nil, err
		}
		for k, f := range files {
			out[k] = f
		}
	}
	return out, nil
}

func mode(m *int32) int32 {
	if m == nil {
		return corev1.ProjectedVolumeSourceDefaultMode
	}
	return *m
}

// downward is a downwardAPI volume's files: each item's pod field or
// container resource.
func downward(p Pod, items []corev1.DownwardAPIVolumeFile, defMode int32) (map[string]volumeutil.FileProjection, error) {
	out := map[string]volumeutil.FileProjection{}
	for _, it := range items {
		m := defMode
		if it.Mode != nil {
			m = *it.Mode
		}
		var val string
		var err error
		switch {
		case it.FieldRef != nil:
			val, err = podenv.FieldValue(p.Pod, it.FieldRef, p.PodIPs, p.HostIPs)
		case it.ResourceFieldRef != nil:
			val, err = podenv.ResourceValue(p.Pod, nil, it.ResourceFieldRef, p.NodeAllocatable)
		}
		if err != nil {
			return nil, fmt.Errorf("downward API item %s: %w", it.Path, err)
		}
		out[it.Path] = volumeutil.FileProjection{Data: []byte(val), Mode: m}
	}
	return out, nil
}

// token asks the TokenRequest API for the pod's service account token,
// bound to the pod, with the source's audience (the API server's by
// default) and expiry (an hour by default), as the kubelet's token manager.
func token(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod, cache *Tokens, src *corev1.ServiceAccountTokenProjection, m int32) (map[string]volumeutil.FileProjection, error) {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	exp := int64(3600)
	if src.ExpirationSeconds != nil {
		exp = *src.ExpirationSeconds
	}
	key := fmt.Sprintf("%s/%s/%s/%d", pod.UID, sa, src.Audience, exp)
	if cache != nil {
		cache.mu.Lock()
		c, ok := cache.m[key]
		cache.mu.Unlock()
		if ok && time.Now().Before(c.refresh) {
			return map[string]volumeutil.FileProjection{src.Path: {Data: []byte(c.token), Mode: m}}, nil
		}
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: &exp,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	tr, err := client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("failed to fetch token: %w", err)
	}
	if cache != nil {
		now := time.Now()
		life := tr.Status.ExpirationTimestamp.Sub(now)
		refresh := now.Add(life * 8 / 10)
		if life > 24*time.Hour*10/8 {
			refresh = now.Add(24 * time.Hour)
		}
		cache.mu.Lock()
		if cache.m == nil {
			cache.m = map[string]cachedToken{}
		}
		cache.m[key] = cachedToken{token: tr.Status.Token, refresh: refresh}
		cache.mu.Unlock()
	}
	return map[string]volumeutil.FileProjection{src.Path: {Data: []byte(tr.Status.Token), Mode: m}}, nil
}
