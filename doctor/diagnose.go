package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Diagnose reads one Service, its namespace's pods and its EndpointSlices
// from the API and analyzes them; with opts.DataPlane it also checks each
// node's proxy, the packet path and DNS.
func Diagnose(ctx context.Context, client kubernetes.Interface, namespace, name string, opts Options) (Report, error) {
	svc, err := client.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return Report{}, fmt.Errorf("get service %s/%s: %w", namespace, name, err)
	}
	pods, err := client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return Report{}, fmt.Errorf("list pods in %s: %w", namespace, err)
	}
	slices, err := client.DiscoveryV1().EndpointSlices(namespace).List(ctx, metav1.ListOptions{
		LabelSelector: discoveryv1.LabelServiceName + "=" + name,
	})
	if err != nil {
		return Report{}, fmt.Errorf("list endpointslices of service %s/%s: %w", namespace, name, err)
	}
	snap := Snapshot{Service: svc, Pods: pods.Items, Slices: slices.Items}
	r := Analyze(snap)
	checkDataPlane(ctx, observe(ctx, client, opts, namespace, name), snap, &r)
	return r, nil
}

// DiagnoseNamespace diagnoses every Service of a namespace, in name order.
// It reads the pods and slices once for all of them.
func DiagnoseNamespace(ctx context.Context, client kubernetes.Interface, namespace string, opts Options) ([]Report, error) {
	svcs, err := client.CoreV1().Services(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list services in %s: %w", namespace, err)
	}
	pods, err := client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods in %s: %w", namespace, err)
	}
	slices, err := client.DiscoveryV1().EndpointSlices(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list endpointslices in %s: %w", namespace, err)
	}
	byService := map[string][]discoveryv1.EndpointSlice{}
	for _, sl := range slices.Items {
		byService[sl.Labels[discoveryv1.LabelServiceName]] = append(byService[sl.Labels[discoveryv1.LabelServiceName]], sl)
	}
	sort.Slice(svcs.Items, func(i, j int) bool { return svcs.Items[i].Name < svcs.Items[j].Name })
	obs := observe(ctx, client, opts, namespace, "")
	reports := make([]Report, 0, len(svcs.Items))
	for i := range svcs.Items {
		svc := &svcs.Items[i]
		snap := Snapshot{Service: svc, Pods: pods.Items, Slices: byService[svc.Name]}
		r := Analyze(snap)
		checkDataPlane(ctx, obs, snap, &r)
		reports = append(reports, r)
	}
	return reports, nil
}

// WriteText prints reports for a person: a headline per Service, then its
// findings, most likely cause first.
func WriteText(w io.Writer, reports []Report) error {
	var b strings.Builder
	for i, r := range reports {
		if i > 0 {
			b.WriteString("\n")
		}
		verdict := "OK"
		if !r.Healthy {
			verdict = "PROBLEM"
		}
		fmt.Fprintf(&b, "service %s/%s (%s", r.Namespace, r.Service, r.Type)
		if r.ClusterIP != "" {
			fmt.Fprintf(&b, " %s", r.ClusterIP)
		}
		if r.Selector != "" {
			fmt.Fprintf(&b, ", selector %s", r.Selector)
		}
		fmt.Fprintf(&b, "): %s\n", verdict)
		for _, f := range r.Findings {
			fmt.Fprintf(&b, "  [%s] %s\n", f.Severity, f.Message)
			for _, d := range f.Details {
				fmt.Fprintf(&b, "      %s\n", d)
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON prints reports for machines.
func WriteJSON(w io.Writer, reports []Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(reports)
}
