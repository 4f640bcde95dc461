package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/switchboard/switchboard/echoserver"
)

func echoCmd() *cobra.Command {
	var s echoserver.Server
	var ports []string
	cmd := &cobra.Command{
		Use:    "echo",
		Short:  "Run the built-in echo server (what a local-cluster container without a command runs)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ps []echoserver.Port
			for _, p := range ports {
				port, err := echoserver.ParsePort(p)
				if err != nil {
					return err
				}
				ps = append(ps, port)
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return s.Serve(ctx, ps)
		},
	}
	f := cmd.Flags()
	f.StringVar(&s.Pod, "pod", "", "pod name to report")
	f.StringVar(&s.Namespace, "namespace", "", "pod namespace to report")
	f.StringVar(&s.PodIP, "pod-ip", "", "pod IP to report")
	f.StringArrayVar(&ports, "port", nil, "port to serve, NUMBER[/TCP|/UDP] (repeatable)")
	return cmd
}
