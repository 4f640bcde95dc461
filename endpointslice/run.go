package endpointslice

import (
	"context"
	"fmt"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Run is the whole controller process: it builds a protobuf client and its
// own informer factory from cfg (whose QPS and Burst pace the writes), starts
// the informers and runs workers until ctx ends. `switchboard controller` and
// `switchboard up` call it.
func Run(ctx context.Context, cfg *rest.Config, opts Options, workers int) error {
	cfg = rest.CopyConfig(cfg)
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("endpointslice controller client for %s: %w", cfg.Host, err)
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	c, err := NewController(client, factory, opts)
	if err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	return c.Run(ctx, workers)
}
