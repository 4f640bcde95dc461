package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/switchboard/switchboard/dns"
	"github.com/switchboard/switchboard/workingset"
)

func dnsCmd() *cobra.Command {
	var cf clientFlags
	var lf logFlags
	var cfg dns.Config
	var listen, health, resolvConf string
	var upstreams []string
	var maxConcurrent int
	cmd := &cobra.Command{
		Use:   "dns",
		Short: "Serve cluster DNS (a drop-in for CoreDNS's kubernetes plugin) on UDP and TCP",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if maxConcurrent < 0 {
				return fmt.Errorf("--max-concurrent %d: must not be negative", maxConcurrent)
			}
			cfg.MaxConcurrent = maxConcurrent
			if maxConcurrent == 0 {
				cfg.MaxConcurrent = -1 // no cap, as max_concurrent 0
			}
			log, err := lf.logger(os.Stderr)
			if err != nil {
				return err
			}
			rc, err := cf.restConfig("dns")
			if err != nil {
				return err
			}
			workingset.CollectSooner()
			client, err := kubernetes.NewForConfig(rc)
			if err != nil {
				return err
			}
			if len(upstreams) == 0 {
				if upstreams, err = dns.Nameservers(resolvConf); err != nil {
					return err
				}
			}
			cfg.Upstreams = upstreams
			cfg.Logger = log
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			// One UDP socket per CPU, each with its own reader.
			pcs, err := dns.ListenUDP(listen, runtime.GOMAXPROCS(0))
			if err != nil {
				return fmt.Errorf("--listen %s (udp): %w", listen, err)
			}
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("--listen %s (tcp): %w", listen, err)
			}
			idx := dns.NewIndex()
			srv := dns.NewServer(cfg, idx)
			if health != "" {
				hl, err := net.Listen("tcp", health)
				if err != nil {
					return fmt.Errorf("--health-listen %s: %w", health, err)
				}
				go http.Serve(hl, srv.HealthHandler())
			}
			if err := idx.Watch(ctx, client); err != nil {
				return err
			}
			// The first lists were decoded whole and are garbage now.
			workingset.Settle()
			srv.MarkReady()
			cfg.Logger.Info("serving cluster DNS", "listen", listen, "zone", cfg.Zone, "upstreams", upstreams)
			errc := make(chan error, len(pcs)+1)
			for _, pc := range pcs {
				go func() { errc <- srv.ServePacket(ctx, pc) }()
			}
			go func() { errc <- srv.ServeListener(ctx, l) }()
			var errs []error
			for range len(pcs) + 1 {
				errs = append(errs, <-errc)
			}
			return errors.Join(errs...)
		},
	}
	f := cmd.Flags()
	cf.addTo(f, 50, 100)
	lf.addTo(f)
	f.StringVar(&listen, "listen", ":53", "address to serve DNS on, UDP and TCP")
	f.StringVar(&cfg.Zone, "zone", "cluster.local", "cluster domain")
	f.Uint32Var(&cfg.TTL, "ttl", 30, "TTL of answers from the cluster zone, seconds")
	f.StringArrayVar(&upstreams, "upstream", nil, "resolver (host:port) for names outside the zone; default: the nameservers of --resolv-conf")
	f.StringVar(&resolvConf, "resolv-conf", "/etc/resolv.conf", "file whose nameservers are the default upstreams")
	f.IntVar(&maxConcurrent, "max-concurrent", 1000, "queries waiting on upstreams at once (the forward plugin's max_concurrent); beyond it REFUSED at once; 0: no cap")
	f.StringVar(&health, "health-listen", ":8080", "address for /health, /ready and /metrics; empty disables")
	return cmd
}
