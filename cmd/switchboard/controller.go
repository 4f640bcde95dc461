package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/switchboard/switchboard/endpointslice"
)

// controllerCmd is `switchboard controller`, a drop-in for
// kube-controller-manager's endpointslice-controller (run upstream's with
// --controllers=*,-endpointslice-controller).
//
// Pacing: the default client allows 500 requests/s with bursts of 1000. A
// cold start of 1,000 Services needs one create each, so a 20/s limit would
// take 50 s; 500/s finishes in about 2 s while a single controller still
// cannot monopolise the API server. Beyond the client's token bucket, API
// priority and fairness applies server-side: a 429 is retried by client-go
// after the server's Retry-After, then the Service goes back on the work
// queue with per-Service exponential backoff (5 ms doubling to 1000 s) and an
// overall retry bucket of 10/s, burst 100.
func controllerCmd() *cobra.Command {
	var (
		cf        clientFlags
		workers   int
		maxPerSlc int32
		verbose   bool
	)
	cmd := &cobra.Command{
		Use:   "controller",
		Short: "Run the EndpointSlice controller: keep every selector Service's EndpointSlices",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rc, err := cf.restConfig("controller")
			if err != nil {
				return err
			}
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			if os.Getenv("GOGC") == "" {
				// The caches are the heap; collecting at 25% growth instead of
				// 100% trades a little CPU for a much lower peak RSS.
				debug.SetGCPercent(25)
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return endpointslice.Run(ctx, rc, endpointslice.Options{
				MaxEndpointsPerSlice: maxPerSlc,
				Logger:               slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
			}, workers)
		},
	}
	cf.addTo(cmd.Flags(), 500, 1000)
	cmd.Flags().IntVar(&workers, "concurrent-service-endpoint-syncs", 8, "Services synced in parallel")
	cmd.Flags().Int32Var(&maxPerSlc, "max-endpoints-per-slice", endpointslice.DefaultMaxEndpointsPerSlice, "endpoints per EndpointSlice, 1 to 1000")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "debug logging")
	return cmd
}
