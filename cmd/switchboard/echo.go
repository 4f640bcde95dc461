package main

import (
	"context"
	"errors"
	"flag"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/switchboard/switchboard/echoserver"
)

func echoCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "echo [--pod NAME] [--namespace NS] [--pod-ip IP] [--port NUMBER[/TCP|/UDP]]...",
		Short: "Run the built-in echo server (what a local-cluster container without a command runs)",
		// The runtime's argument contract is echoserver.ParseArgs's, so test
		// binaries standing in for this command parse it the same way.
		DisableFlagParsing: true,
		Hidden:             true,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, ports, err := echoserver.ParseArgs(args)
			if errors.Is(err, flag.ErrHelp) {
				return nil
			}
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return s.Serve(ctx, ports)
		},
	}
}
