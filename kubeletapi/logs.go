package kubeletapi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apiserver/pkg/util/flushwriter"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	crilogs "k8s.io/cri-client/pkg/logs"
	"k8s.io/kubernetes/pkg/api/legacyscheme"
	// The query-parameter conversions of PodLogOptions.
	_ "k8s.io/kubernetes/pkg/apis/core/install"
)

// containerLogs is the kubelet's /containerLogs/NS/POD/CONTAINER: the query
// is a v1.PodLogOptions (follow, previous, timestamps, tailLines,
// sinceSeconds, sinceTime, limitBytes), as the API server forwards it.
func (s *Server) containerLogs(w http.ResponseWriter, r *http.Request) {
	query := r.URL.Query()
	// The kubelet's older spelling of tailLines.
	if tail := query.Get("tail"); tail != "" {
		query["tailLines"] = []string{tail}
		if tail == "all" {
			delete(query, "tailLines")
		}
	}
	opts := &corev1.PodLogOptions{}
	if err := legacyscheme.ParameterCodec.DecodeParameters(query, corev1.SchemeGroupVersion, opts); err != nil {
		writeError(w, fmt.Sprintf("decode log options: %v", err), http.StatusBadRequest)
		return
	}
	pod, ok := s.lookup(w, r)
	if !ok {
		return
	}
	container := r.PathValue("container")
	if !containerSpec(pod, container) {
		writeError(w, fmt.Sprintf("container %q not found in pod %q", container, pod.Name), http.StatusNotFound)
		return
	}
	var stdout, stderr io.Writer = flushwriter.Wrap(w), nil
	stderr = stdout
	if opts.Stream != nil {
		switch *opts.Stream {
		case corev1.LogStreamStdout:
			stderr = nil
		case corev1.LogStreamStderr:
			stdout = nil
		case corev1.LogStreamAll:
		default:
			writeError(w, fmt.Sprintf("invalid stream type %q", *opts.Stream), http.StatusBadRequest)
			return
		}
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Transfer-Encoding", "chunked")
	ro := &crilogs.LogOptions{TailLines: opts.TailLines, LimitBytes: opts.LimitBytes, Follow: opts.Follow, Timestamp: opts.Timestamps}
	switch {
	case opts.SinceSeconds != nil:
		ro.Since = time.Now().Add(-time.Duration(*opts.SinceSeconds) * time.Second)
	case opts.SinceTime != nil:
		ro.Since = opts.SinceTime.Time
	}
	if err := s.streamLog(r.Context(), pod, container, opts.Previous, ro, stdout, stderr); err != nil {
		writeError(w, err.Error(), http.StatusBadRequest)
	}
}

// streamLog writes the container's log as opts select, with the kubelet's
// own reader of the CRI log format.
func (s *Server) streamLog(ctx context.Context, pod *corev1.Pod, container string, previous bool, ro *crilogs.LogOptions, stdout, stderr io.Writer) error {
	path, running, err := s.cfg.Runtime.ContainerLog(pod, container, previous)
	if err != nil {
		return err
	}
	return crilogs.ReadLogs(ctx, path, path, ro, runningState{running: running}, stdout, stderr)
}

// runningState answers the one question the CRI log reader asks a runtime
// while following a log: whether the container still runs. It implements
// nothing else of the CRI; the reader calls nothing else.
type runningState struct {
	internalapi.RuntimeService
	running func() bool
}

func (r runningState) ContainerStatus(_ context.Context, id string, _ bool) (*runtimeapi.ContainerStatusResponse, error) {
	state := runtimeapi.ContainerState_CONTAINER_EXITED
	if r.running() {
		state = runtimeapi.ContainerState_CONTAINER_RUNNING
	}
	return &runtimeapi.ContainerStatusResponse{Status: &runtimeapi.ContainerStatus{Id: id, State: state}}, nil
}
