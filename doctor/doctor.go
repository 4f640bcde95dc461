// Package doctor explains why a Service routes or does not. It reads the
// Service, the pods of its namespace and its EndpointSlices, and names the
// most likely cause first, in plain words: a selector typo and the pod and
// label it nearly matched, pods that are not Ready and why, a targetPort no
// container serves, slices that lag behind the pods. The analysis is a pure
// function of a Snapshot so every finding is tested on exact inputs.
package doctor

import (
	"fmt"
	"maps"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Severity ranks a finding.
type Severity string

const (
	// Problem means traffic to the Service fails, or fails for some pods.
	Problem Severity = "problem"
	// Warning means something is likely wrong but traffic may still flow.
	Warning Severity = "warning"
	// Info is a healthy fact worth showing.
	Info Severity = "info"
)

// Finding codes, stable for machines reading `-o json`.
const (
	CodeExternalName          = "ExternalName"
	CodeNoSelectorNoSlices    = "NoSelectorNoEndpointSlices"
	CodeSelectorMatchesNone   = "SelectorMatchesNoPods"
	CodeNearMissLabels        = "NearMissLabels"
	CodePodsNotReady          = "PodsNotReady"
	CodeTargetPortNotDeclared = "TargetPortNotDeclared"
	CodeNamedPortMissing      = "NamedTargetPortMissing"
	CodeNoEndpointSlices      = "NoEndpointSlices"
	CodeSlicesDisagree        = "EndpointSlicesDisagreeWithPods"
	CodeNoReadyEndpoints      = "NoReadyEndpoints"
	CodeReady                 = "Ready"
)

// Finding is one thing the doctor noticed.
type Finding struct {
	Code     string   `json:"code"`
	Severity Severity `json:"severity"`
	// Message is one plain sentence naming the objects involved.
	Message string `json:"message"`
	// Details are further lines: per pod, per label, per port.
	Details []string `json:"details,omitempty"`
	// Pods are the pods the finding is about.
	Pods []string `json:"pods,omitempty"`
}

// Report is the diagnosis of one Service.
type Report struct {
	Namespace string    `json:"namespace"`
	Service   string    `json:"service"`
	Type      string    `json:"type"`
	ClusterIP string    `json:"clusterIP,omitempty"`
	Selector  string    `json:"selector,omitempty"`
	Healthy   bool      `json:"healthy"`
	Findings  []Finding `json:"findings"`
}

// Snapshot is what the doctor reads for one Service.
type Snapshot struct {
	Service *corev1.Service
	// Pods are all pods of the Service's namespace: the near-miss search
	// needs the ones that do not match, too.
	Pods []corev1.Pod
	// Slices are the EndpointSlices labelled with the Service's name.
	Slices []discoveryv1.EndpointSlice
}

// Analyze diagnoses one Service. Findings come most likely cause first.
func Analyze(s Snapshot) Report {
	svc := s.Service
	r := Report{
		Namespace: svc.Namespace, Service: svc.Name, Type: string(svc.Spec.Type),
		ClusterIP: svc.Spec.ClusterIP, Selector: formatSelector(svc.Spec.Selector),
	}
	if r.Type == "" {
		r.Type = string(corev1.ServiceTypeClusterIP)
	}
	add := func(f Finding) { r.Findings = append(r.Findings, f) }
	name := svc.Namespace + "/" + svc.Name

	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		add(Finding{Code: CodeExternalName, Severity: Info,
			Message: fmt.Sprintf("service %s is an alias (CNAME) for %s: no endpoints, no proxying", name, svc.Spec.ExternalName)})
		r.Healthy = true
		return r
	}

	if len(svc.Spec.Selector) == 0 {
		if readyEndpointCount(s.Slices) == 0 {
			add(Finding{Code: CodeNoSelectorNoSlices, Severity: Problem,
				Message: fmt.Sprintf("service %s has no selector and no ready endpoints in EndpointSlices: nothing routes; add a selector or create EndpointSlices labelled kubernetes.io/service-name=%s", name, svc.Name)})
		}
		finish(&r, s.Slices)
		return r
	}

	sel := labels.SelectorFromSet(svc.Spec.Selector)
	var matching []corev1.Pod
	for _, p := range s.Pods {
		if sel.Matches(labels.Set(p.Labels)) {
			matching = append(matching, p)
		}
	}

	if len(matching) == 0 {
		f := Finding{Code: CodeSelectorMatchesNone, Severity: Problem,
			Message: fmt.Sprintf("selector %s of service %s matches no pods in namespace %s", r.Selector, name, svc.Namespace)}
		var near []labelMismatch
		for _, p := range s.Pods {
			if m, ok := nearMiss(p.Name, svc.Spec.Selector, p.Labels); ok {
				near = append(near, m)
			}
		}
		sort.SliceStable(near, func(i, j int) bool {
			if near[i].score != near[j].score {
				return near[i].score < near[j].score
			}
			return near[i].Pod < near[j].Pod
		})
		if len(near) == 0 {
			f.Details = describeLabelSets(s.Pods)
		}
		add(f)
		if len(near) > 0 {
			nf := Finding{Code: CodeNearMissLabels, Severity: Problem,
				Message: fmt.Sprintf("likely a label typo: %d pod(s) nearly match selector %s", len(near), r.Selector)}
			for _, m := range near {
				nf.Pods = append(nf.Pods, m.Pod)
				for _, d := range m.Near {
					nf.Details = append(nf.Details, fmt.Sprintf("pod %s: %s", m.Pod, d))
				}
			}
			add(nf)
		}
		finish(&r, s.Slices)
		return r
	}

	if f, ok := notReady(matching); ok {
		add(f)
	}
	for _, f := range targetPortFindings(svc, matching) {
		add(f)
	}
	for _, f := range sliceFindings(svc, matching, s.Slices) {
		add(f)
	}
	finish(&r, s.Slices)
	return r
}

// finish adds the closing verdict: either no ready endpoints (a problem of
// its own when nothing above explained it) or the healthy summary.
func finish(r *Report, slices []discoveryv1.EndpointSlice) {
	ready := readyEndpointCount(slices)
	problems := 0
	for _, f := range r.Findings {
		if f.Severity == Problem {
			problems++
		}
	}
	name := r.Namespace + "/" + r.Service
	switch {
	case ready == 0 && problems == 0:
		r.Findings = append(r.Findings, Finding{Code: CodeNoReadyEndpoints, Severity: Problem,
			Message: fmt.Sprintf("service %s has no ready endpoints: connections to it are refused", name)})
	case ready > 0 && problems == 0:
		r.Findings = append(r.Findings, Finding{Code: CodeReady, Severity: Info,
			Message: fmt.Sprintf("service %s has %d ready endpoint(s)", name, ready)})
	}
	r.Healthy = true
	for _, f := range r.Findings {
		if f.Severity == Problem {
			r.Healthy = false
		}
	}
}

func readyEndpointCount(slices []discoveryv1.EndpointSlice) int {
	n := 0
	for _, sl := range slices {
		for _, ep := range sl.Endpoints {
			if ep.Conditions.Ready == nil || *ep.Conditions.Ready {
				n++
			}
		}
	}
	return n
}

// describeLabelSets lists the distinct label sets in the namespace, so that
// with no near miss the reader still sees what is there to match.
func describeLabelSets(pods []corev1.Pod) []string {
	if len(pods) == 0 {
		return []string{"the namespace has no pods at all"}
	}
	seen := map[string][]string{}
	for _, p := range pods {
		k := formatSelector(p.Labels)
		if k == "" {
			k = "(no labels)"
		}
		seen[k] = append(seen[k], p.Name)
	}
	var out []string
	for _, k := range slices.Sorted(maps.Keys(seen)) {
		out = append(out, fmt.Sprintf("pods with labels %s: %s", k, strings.Join(seen[k], ", ")))
		if len(out) == 10 {
			out = append(out, "...")
			break
		}
	}
	return out
}

// notReady names every matching pod that cannot serve and why.
func notReady(pods []corev1.Pod) (Finding, bool) {
	f := Finding{Code: CodePodsNotReady, Severity: Warning}
	for _, p := range pods {
		why := podNotReadyReason(p)
		if why == "" {
			continue
		}
		f.Pods = append(f.Pods, p.Name)
		f.Details = append(f.Details, fmt.Sprintf("pod %s: %s", p.Name, why))
	}
	if len(f.Pods) == 0 {
		return f, false
	}
	if len(f.Pods) == len(pods) {
		f.Severity = Problem
		f.Message = fmt.Sprintf("all %d pod(s) matching the selector are not ready", len(pods))
	} else {
		f.Message = fmt.Sprintf("%d of %d pod(s) matching the selector are not ready and get no traffic", len(f.Pods), len(pods))
	}
	return f, true
}

// podNotReadyReason says why a pod is not a ready endpoint, or "" if it is.
func podNotReadyReason(p corev1.Pod) string {
	if p.DeletionTimestamp != nil {
		return fmt.Sprintf("terminating (deletion requested at %s)", p.DeletionTimestamp.UTC().Format("15:04:05"))
	}
	switch p.Status.Phase {
	case corev1.PodSucceeded, corev1.PodFailed:
		return fmt.Sprintf("phase %s: its containers have exited", p.Status.Phase)
	}
	if p.Spec.NodeName == "" {
		return "not scheduled to any node yet"
	}
	if p.Status.PodIP == "" {
		return fmt.Sprintf("phase %s and no pod IP yet", orUnknown(string(p.Status.Phase)))
	}
	for _, c := range p.Status.Conditions {
		if c.Type != corev1.PodReady || c.Status == corev1.ConditionTrue {
			continue
		}
		for _, cs := range p.Status.ContainerStatuses {
			switch {
			case cs.State.Waiting != nil:
				return fmt.Sprintf("container %s is waiting: %s %s", cs.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message)
			case cs.State.Terminated != nil:
				return fmt.Sprintf("container %s terminated: %s (exit code %d)", cs.Name, cs.State.Terminated.Reason, cs.State.Terminated.ExitCode)
			case cs.State.Running != nil && !cs.Ready:
				if hasReadinessProbe(p, cs.Name) {
					return fmt.Sprintf("container %s is running but its readiness probe is failing", cs.Name)
				}
				return fmt.Sprintf("container %s is running but not ready", cs.Name)
			}
		}
		if c.Message != "" {
			return fmt.Sprintf("not ready: %s", c.Message)
		}
		return "not ready"
	}
	if !hasCondition(p, corev1.PodReady) {
		return fmt.Sprintf("phase %s, no Ready condition reported yet", orUnknown(string(p.Status.Phase)))
	}
	return ""
}

func hasCondition(p corev1.Pod, t corev1.PodConditionType) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == t {
			return true
		}
	}
	return false
}

func hasReadinessProbe(p corev1.Pod, container string) bool {
	for _, c := range p.Spec.Containers {
		if c.Name == container {
			return c.ReadinessProbe != nil
		}
	}
	return false
}

func orUnknown(s string) string {
	if s == "" {
		return "Unknown"
	}
	return s
}

// targetPortFindings checks each Service port's targetPort against the
// matching pods' declared container ports.
func targetPortFindings(svc *corev1.Service, pods []corev1.Pod) []Finding {
	var out []Finding
	for _, sp := range svc.Spec.Ports {
		tp := sp.TargetPort
		if tp.Type == intstr.Int && tp.IntValue() == 0 {
			tp = intstr.FromInt32(sp.Port)
		}
		label := portLabel(sp)
		if tp.Type == intstr.String {
			var lacking []string
			for _, p := range pods {
				if _, ok := findNamedPort(p, tp.StrVal, sp.Protocol); !ok {
					lacking = append(lacking, p.Name)
				}
			}
			if len(lacking) == 0 {
				continue
			}
			sev := Warning
			if len(lacking) == len(pods) {
				sev = Problem
			}
			out = append(out, Finding{Code: CodeNamedPortMissing, Severity: sev, Pods: lacking,
				Message: fmt.Sprintf("service port %s targets the named port %q, which %d of %d matching pod(s) do not declare: those pods get no endpoint for it",
					label, tp.StrVal, len(lacking), len(pods)),
				Details: declaredPorts(pods, lacking)})
			continue
		}
		want := int32(tp.IntValue())
		var lacking []string
		declaresAny := false
		for _, p := range pods {
			ports := containerPorts(p)
			if len(ports) == 0 {
				continue // declaring ports is optional; only judge pods that do
			}
			declaresAny = true
			found := false
			for _, cp := range ports {
				if cp.ContainerPort == want && protocolOf(cp.Protocol) == protocolOf(sp.Protocol) {
					found = true
				}
			}
			if !found {
				lacking = append(lacking, p.Name)
			}
		}
		if !declaresAny || len(lacking) == 0 {
			continue
		}
		out = append(out, Finding{Code: CodeTargetPortNotDeclared, Severity: Warning, Pods: lacking,
			Message: fmt.Sprintf("service port %s sends traffic to targetPort %d/%s, which no container of %d of %d matching pod(s) declares: is the app listening there?",
				label, want, protocolOf(sp.Protocol), len(lacking), len(pods)),
			Details: declaredPorts(pods, lacking)})
	}
	return out
}

func portLabel(sp corev1.ServicePort) string {
	if sp.Name != "" {
		return fmt.Sprintf("%q (%d/%s)", sp.Name, sp.Port, protocolOf(sp.Protocol))
	}
	return fmt.Sprintf("%d/%s", sp.Port, protocolOf(sp.Protocol))
}

func protocolOf(p corev1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return p
}

func containerPorts(p corev1.Pod) []corev1.ContainerPort {
	var out []corev1.ContainerPort
	for _, c := range p.Spec.Containers {
		out = append(out, c.Ports...)
	}
	return out
}

func findNamedPort(p corev1.Pod, name string, proto corev1.Protocol) (int32, bool) {
	for _, cp := range containerPorts(p) {
		if cp.Name == name && protocolOf(cp.Protocol) == protocolOf(proto) {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

func declaredPorts(pods []corev1.Pod, names []string) []string {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	var out []string
	for _, p := range pods {
		if !want[p.Name] {
			continue
		}
		var ports []string
		for _, cp := range containerPorts(p) {
			s := strconv.Itoa(int(cp.ContainerPort)) + "/" + string(protocolOf(cp.Protocol))
			if cp.Name != "" {
				s = cp.Name + "=" + s
			}
			ports = append(ports, s)
		}
		if len(ports) == 0 {
			out = append(out, fmt.Sprintf("pod %s declares no container ports", p.Name))
		} else {
			out = append(out, fmt.Sprintf("pod %s declares %s", p.Name, strings.Join(ports, ", ")))
		}
	}
	return out
}

// sliceFindings compares what the EndpointSlices say with what the pods say:
// every ready, addressed, matching pod should be a ready endpoint, and no
// endpoint should point at a pod that is gone.
func sliceFindings(svc *corev1.Service, pods []corev1.Pod, slices []discoveryv1.EndpointSlice) []Finding {
	name := svc.Namespace + "/" + svc.Name
	want := map[string]string{} // ip -> pod
	for _, p := range pods {
		if podNotReadyReason(p) != "" && !svc.Spec.PublishNotReadyAddresses {
			continue
		}
		if lacksNamedTargetPort(svc, p) {
			continue // reported above; they serve none of the Service's ports
		}
		for _, ip := range podIPs(p) {
			want[ip] = p.Name
		}
	}
	if len(slices) == 0 {
		if len(want) == 0 {
			return nil
		}
		return []Finding{{Code: CodeNoEndpointSlices, Severity: Problem,
			Message: fmt.Sprintf("service %s has %d ready pod(s) but no EndpointSlices: the EndpointSlice controller is not running or cannot write (check `switchboard controller` or kube-controller-manager)", name, len(want))}}
	}
	have := map[string]bool{}
	for _, sl := range slices {
		if len(sl.Ports) == 0 && len(svc.Spec.Ports) > 0 {
			// Upstream keeps pods lacking a named targetPort in a slice
			// without ports; they carry no traffic and were reported above.
			continue
		}
		for _, ep := range sl.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, a := range ep.Addresses {
				have[a] = true
			}
		}
	}
	var missing, stale []string
	for ip, pod := range want {
		if !have[ip] {
			missing = append(missing, fmt.Sprintf("pod %s (%s) is ready but not a ready endpoint", pod, ip))
		}
	}
	for ip := range have {
		if _, ok := want[ip]; !ok {
			stale = append(stale, fmt.Sprintf("endpoint %s is ready but no ready matching pod has that IP", ip))
		}
	}
	if len(missing)+len(stale) == 0 {
		return nil
	}
	sort.Strings(missing)
	sort.Strings(stale)
	return []Finding{{Code: CodeSlicesDisagree, Severity: Warning,
		Message: fmt.Sprintf("EndpointSlices of service %s disagree with its pods (%d missing, %d stale): the EndpointSlice controller is lagging or not running", name, len(missing), len(stale)),
		Details: append(missing, stale...)}}
}

// lacksNamedTargetPort reports whether p lacks a named port that one of the
// Service's ports targets; the EndpointSlice controller leaves such pods out.
func lacksNamedTargetPort(svc *corev1.Service, p corev1.Pod) bool {
	for _, sp := range svc.Spec.Ports {
		if sp.TargetPort.Type == intstr.String {
			if _, ok := findNamedPort(p, sp.TargetPort.StrVal, sp.Protocol); !ok {
				return true
			}
		}
	}
	return false
}

func podIPs(p corev1.Pod) []string {
	var out []string
	for _, ip := range p.Status.PodIPs {
		if net.ParseIP(ip.IP) != nil {
			out = append(out, ip.IP)
		}
	}
	if len(out) == 0 && p.Status.PodIP != "" {
		out = append(out, p.Status.PodIP)
	}
	return out
}
