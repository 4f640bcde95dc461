// Package kubeletapi is the kubelet's HTTPS API for the local cluster's
// nodes: what the API server calls for a pod's exec, attach, port-forward
// and log subresources. It serves the kubelet's paths (/exec, /attach,
// /portForward, /containerLogs, /run, /pods, /healthz, /logs/) with a certificate of the
// cluster CA and authorizes every request through the API server
// (TokenReview for bearer tokens, client certificates of the cluster CA,
// SubjectAccessReview on nodes/proxy, nodes/log, ...), as a kubelet with
// webhook authentication and authorization does. The streaming protocols
// (SPDY and the websocket channel protocols) are upstream's own code
// (k8s.io/cri-streaming); what runs is the Runtime's business.
package kubeletapi

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/authenticatorfactory"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/apiserver/pkg/server/options"
	"k8s.io/client-go/kubernetes"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	remotecommandserver "k8s.io/cri-streaming/pkg/streaming/remotecommand"
)

// Runtime is what the API needs from the node's pod runtime.
type Runtime interface {
	// Pod returns the pod of that namespace and name if it is bound to
	// this node.
	Pod(namespace, name string) (*corev1.Pod, bool)
	// Pods returns every pod bound to this node.
	Pods() []*corev1.Pod
	// Command returns a command that, once started, runs argv inside the
	// container: in its namespaces, with its environment. The caller sets
	// the standard streams; with tty they are a terminal, which argv gets
	// as its controlling one in a session of its own.
	Command(pod *corev1.Pod, container string, argv []string, tty bool) (*exec.Cmd, error)
	// PodNetNS is the path of the pod's network namespace.
	PodNetNS(pod *corev1.Pod) (string, error)
	// ContainerLog locates the CRI-format log file of the container's
	// current instance or, with previous, of the instance before it; running
	// reports whether that instance still runs (a follow ends when it stops).
	ContainerLog(pod *corev1.Pod, container string, previous bool) (path string, running func() bool, err error)
	// Attach returns the running container's input side.
	Attach(pod *corev1.Pod, container string) (Attachment, error)
}

// Attachment is a running container's input side, as the runtime keeps it
// for attach.
type Attachment struct {
	// Stdin is the container's stdin, nil when it keeps none open.
	Stdin io.Writer
	// Resize sets the size of the container's terminal; nil without one.
	Resize func(width, height uint16)
	// Detach is called when a client's input ends: a container with
	// stdinOnce then gets end-of-file.
	Detach func()
}

// Auth authenticates and authorizes requests through the API server. One
// serves every node of a process: its caches are shared.
type Auth struct {
	authn authenticator.Request
	authz authorizer.Authorizer
}

// NewAuth builds the delegating authenticator (client certificates signed
// by clientCAFile, bearer tokens by TokenReview) and authorizer
// (SubjectAccessReview) the kubelet uses in webhook mode.
func NewAuth(client kubernetes.Interface, clientCAFile string) (*Auth, error) {
	ca, err := dynamiccertificates.NewDynamicCAContentFromFile("client-ca", clientCAFile)
	if err != nil {
		return nil, fmt.Errorf("kubelet API client CA: %w", err)
	}
	authn, _, err := authenticatorfactory.DelegatingAuthenticatorConfig{
		TokenAccessReviewClient:            client.AuthenticationV1(),
		TokenAccessReviewTimeout:           10 * time.Second,
		WebhookRetryBackoff:                options.DefaultAuthWebhookRetryBackoff(),
		CacheTTL:                           2 * time.Minute,
		ClientCertificateCAContentProvider: ca,
	}.New()
	if err != nil {
		return nil, fmt.Errorf("kubelet API authenticator: %w", err)
	}
	authz, err := authorizerfactory.DelegatingAuthorizerConfig{
		SubjectAccessReviewClient: client.AuthorizationV1(),
		AllowCacheTTL:             5 * time.Minute,
		DenyCacheTTL:              30 * time.Second,
		WebhookRetryBackoff:       options.DefaultAuthWebhookRetryBackoff(),
	}.New()
	if err != nil {
		return nil, fmt.Errorf("kubelet API authorizer: %w", err)
	}
	return &Auth{authn: authn, authz: authz}, nil
}

// Config is one node's kubelet API.
type Config struct {
	NodeName string
	// CertFile and KeyFile are the serving certificate and key.
	CertFile, KeyFile string
	Auth              *Auth
	Runtime           Runtime
	Logger            *slog.Logger
}

// Server is one node's kubelet API.
type Server struct {
	cfg Config
	mux *http.ServeMux
}

// Streams stay open this long without traffic, as the kubelet's default
// streamingConnectionIdleTimeout.
const streamIdleTimeout = 4 * time.Hour

// New builds the server's routes.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux()}
	for _, m := range []string{"GET", "POST"} {
		s.mux.HandleFunc(m+" /exec/{namespace}/{pod}/{container}", s.exec)
		s.mux.HandleFunc(m+" /exec/{namespace}/{pod}/{uid}/{container}", s.exec)
		s.mux.HandleFunc(m+" /attach/{namespace}/{pod}/{container}", s.attach)
		s.mux.HandleFunc(m+" /attach/{namespace}/{pod}/{uid}/{container}", s.attach)
		s.mux.HandleFunc(m+" /portForward/{namespace}/{pod}", s.portForward)
		s.mux.HandleFunc(m+" /portForward/{namespace}/{pod}/{uid}", s.portForward)
	}
	s.mux.HandleFunc("POST /run/{namespace}/{pod}/{container}", s.run)
	s.mux.HandleFunc("POST /run/{namespace}/{pod}/{uid}/{container}", s.run)
	s.mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", s.containerLogs)
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	s.mux.HandleFunc("GET /pods", s.pods)
	// The node's own logs, as a kubelet with its debugging handlers (the
	// default) serves them; nodes/log authorizes it.
	s.mux.Handle("GET /logs/", http.StripPrefix("/logs/", http.FileServer(http.Dir("/var/log"))))
	return s
}

// writeError answers with code and msg as the kubelet (go-restful's
// WriteError) does: the message alone, no trailing newline, which the API
// server passes on as its Status message (a failed `kubectl logs` prints
// it).
func writeError(w http.ResponseWriter, msg string, code int) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	io.WriteString(w, msg)
}

// pods is the kubelet's /pods: the node's pods as a v1 PodList (what the
// e2e framework's failure dump prints as "pods the kubelet thinks are on
// node").
func (s *Server) pods(w http.ResponseWriter, _ *http.Request) {
	list := corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"}}
	for _, p := range s.cfg.Runtime.Pods() {
		list.Items = append(list.Items, *p)
	}
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(&list); err != nil {
		s.cfg.Logger.Debug("kubelet API: write /pods", "node", s.cfg.NodeName, "err", err)
	}
}

// Serve serves TLS on l until ctx ends. The listener decides where the
// API is reachable: the runtime opens it in the node's network namespace.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	cert, err := tls.LoadX509KeyPair(s.cfg.CertFile, s.cfg.KeyFile)
	if err != nil {
		return fmt.Errorf("kubelet API of node %s: serving certificate: %w", s.cfg.NodeName, err)
	}
	srv := &http.Server{
		Handler: s,
		// Client certificates are verified by the authenticator against
		// the CA, so a token-bearing client without one is still served.
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelDebug),
	}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.ServeTLS(l, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("kubelet API of node %s: %w", s.cfg.NodeName, err)
	}
	return nil
}

// ServeHTTP authenticates and authorizes the request, then routes it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	resp, ok, err := s.cfg.Auth.authn.AuthenticateRequest(r)
	if err != nil || !ok {
		if err != nil {
			s.cfg.Logger.Debug("kubelet API: authentication failed", "node", s.cfg.NodeName, "err", err)
		}
		writeError(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	attrs := s.attributes(resp.User, r)
	decision, reason, err := s.cfg.Auth.authz.Authorize(r.Context(), attrs)
	if decision != authorizer.DecisionAllow {
		msg := fmt.Sprintf("Forbidden (user=%s, verb=%s, resource=%s, subresource=%s)",
			attrs.User.GetName(), attrs.Verb, attrs.Resource, attrs.Subresource)
		if err != nil {
			msg += ": " + err.Error()
		} else if reason != "" {
			msg += ": " + reason
		}
		writeError(w, msg, http.StatusForbidden)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// attributes maps a request to what the kubelet asks the API server about:
// a verb from the method on the node's subresource by path (pkg/kubelet/
// server/auth.go): /logs is nodes/log, the rest served here nodes/proxy.
func (s *Server) attributes(u user.Info, r *http.Request) authorizer.AttributesRecord {
	verb := map[string]string{"POST": "create", "GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[r.Method]
	sub := "proxy"
	if r.URL.Path == "/logs" || strings.HasPrefix(r.URL.Path, "/logs/") {
		sub = "log"
	}
	return authorizer.AttributesRecord{User: u, Verb: verb, APIVersion: "v1", Resource: "nodes",
		Subresource: sub, Name: s.cfg.NodeName, ResourceRequest: true, Path: r.URL.Path}
}

// lookup finds the request's pod, checking its UID when the path has one.
func (s *Server) lookup(w http.ResponseWriter, r *http.Request) (*corev1.Pod, bool) {
	pod, ok := s.cfg.Runtime.Pod(r.PathValue("namespace"), r.PathValue("pod"))
	if !ok || (r.PathValue("uid") != "" && string(pod.UID) != r.PathValue("uid")) {
		writeError(w, fmt.Sprintf("pod %s/%s does not exist on node %s", r.PathValue("namespace"), r.PathValue("pod"), s.cfg.NodeName), http.StatusNotFound)
		return nil, false
	}
	return pod, true
}

func (s *Server) exec(w http.ResponseWriter, r *http.Request) {
	opts, err := remotecommandserver.NewOptions(r)
	if err != nil {
		writeError(w, err.Error(), http.StatusBadRequest)
		return
	}
	pod, ok := s.lookup(w, r)
	if !ok {
		return
	}
	cmd := r.URL.Query()["command"]
	if len(cmd) == 0 {
		writeError(w, "exec: no command", http.StatusBadRequest)
		return
	}
	remotecommandserver.ServeExec(w, r, executor{s: s, pod: pod}, pod.Name, string(pod.UID), r.PathValue("container"), cmd,
		opts, streamIdleTimeout, remotecommandserver.DefaultStreamCreationTimeout, remotecommandserver.SupportedStreamingProtocols)
}

func (s *Server) attach(w http.ResponseWriter, r *http.Request) {
	opts, err := remotecommandserver.NewOptions(r)
	if err != nil {
		writeError(w, err.Error(), http.StatusBadRequest)
		return
	}
	pod, ok := s.lookup(w, r)
	if !ok {
		return
	}
	remotecommandserver.ServeAttach(w, r, attacher{s: s, pod: pod}, pod.Name, string(pod.UID), r.PathValue("container"),
		opts, streamIdleTimeout, remotecommandserver.DefaultStreamCreationTimeout, remotecommandserver.SupportedStreamingProtocols)
}

func (s *Server) portForward(w http.ResponseWriter, r *http.Request) {
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		writeError(w, err.Error(), http.StatusBadRequest)
		return
	}
	pod, ok := s.lookup(w, r)
	if !ok {
		return
	}
	portforward.ServePortForward(w, r, portForwarder{s: s, pod: pod}, pod.Name, string(pod.UID), opts,
		streamIdleTimeout, remotecommandserver.DefaultStreamCreationTimeout, portforward.SupportedProtocols)
}

// run is the kubelet's /run: the command's combined output as the body.
func (s *Server) run(w http.ResponseWriter, r *http.Request) {
	pod, ok := s.lookup(w, r)
	if !ok {
		return
	}
	argv := strings.Fields(r.URL.Query().Get("cmd"))
	if len(argv) == 0 {
		writeError(w, "run: no cmd", http.StatusBadRequest)
		return
	}
	cmd, err := s.cfg.Runtime.Command(pod, r.PathValue("container"), argv, false)
	if err != nil {
		writeError(w, err.Error(), http.StatusNotFound)
		return
	}
	out, err := cmd.CombinedOutput()
	if err != nil && len(out) == 0 {
		writeError(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Write(out)
}

// containerSpec finds a container, init container or ephemeral container
// of the pod by name.
func containerSpec(pod *corev1.Pod, name string) bool {
	for _, c := range pod.Spec.Containers {
		if c.Name == name {
			return true
		}
	}
	for _, c := range pod.Spec.InitContainers {
		if c.Name == name {
			return true
		}
	}
	for _, c := range pod.Spec.EphemeralContainers {
		if c.Name == name {
			return true
		}
	}
	return false
}
