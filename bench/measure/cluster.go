package measure

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/switchboard/switchboard/netnamespace"
)

// LoadServices creates n selectorless ClusterIP Services svc-0 ... in
// namespace ns, each with one EndpointSlice of eps ready endpoints
// (EndpointSlice(i, 0, eps)), from 32 goroutines: the cheap way to give a
// cluster a large Service world, with no pods behind it. It returns the
// ClusterIPs.
func LoadServices(ctx context.Context, client kubernetes.Interface, ns string, n, eps int) ([]string, error) {
	ips := make([]string, n)
	errs := make([]error, n)
	Parallel(n, 32, func(i int) {
		svc, err := client.CoreV1().Services(ns).Create(ctx, &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d", i)},
			Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
		}, metav1.CreateOptions{})
		if err != nil {
			errs[i] = fmt.Errorf("create Service %s/svc-%d: %w", ns, i, err)
			return
		}
		ips[i] = svc.Spec.ClusterIP
		if _, err = client.DiscoveryV1().EndpointSlices(ns).Create(ctx, EndpointSlice(i, 0, eps), metav1.CreateOptions{}); err != nil {
			errs[i] = fmt.Errorf("create EndpointSlice of %s/svc-%d: %w", ns, i, err)
		}
	})
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return ips, nil
}

// EndpointSlice is LoadServices' Service i's one EndpointSlice, of eps
// ready endpoints in 10.128.0.0/9 on a node "elsewhere"; generation g > 0
// replaces the middle endpoint by 10.250.0.g, whose address sorts after
// all the others (a rollout: the new pod's address sorts elsewhere, the
// rest unchanged).
func EndpointSlice(i, g, eps int) *discovery.EndpointSlice {
	sl := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d-bench", i), Labels: map[string]string{
			discovery.LabelServiceName: fmt.Sprintf("svc-%d", i), discovery.LabelManagedBy: "bench"}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for j := range eps {
		n := uint32(0x0a800000) + uint32(i)*16 + uint32(j) + 1 // 10.128.0.0/9
		if j == eps/2 && g > 0 {
			n = uint32(0x0afa0000) + uint32(g) // 10.250.0.0/16: replacements
		}
		ip := netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, n)))
		sl.Endpoints = append(sl.Endpoints, discovery.Endpoint{Addresses: []string{ip.String()},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
			NodeName:   ptr.To("elsewhere")})
	}
	return sl
}

// Metrics reads a Prometheus text endpoint (e.g. a node proxy's
// http://127.0.0.1:10249/metrics) from inside the network namespace at
// netnsPath: sample (name with its labels) -> value; nil if unreachable.
func Metrics(netnsPath, url string) map[string]float64 {
	resp, err := netnamespace.HTTPClient(netnsPath, 5*time.Second).Get(url)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	return ParseMetrics(resp.Body)
}

// ParseMetrics reads the Prometheus text format: sample (name with its
// labels) -> value.
func ParseMetrics(r io.Reader) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if v, err := strconv.ParseFloat(f[1], 64); err == nil {
			out[f[0]] = v
		}
	}
	return out
}
