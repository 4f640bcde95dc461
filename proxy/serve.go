package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/switchboard/switchboard/netnamespace"
	"github.com/switchboard/switchboard/proxydebug"
)

// listenIn opens a TCP listener inside the network namespace at netns
// ("" is the current one, entered by no setns: a hostNetwork proxy has
// CAP_NET_ADMIN alone, and setns needs CAP_SYS_ADMIN).
func listenIn(netns, network, addr string) (net.Listener, error) {
	var l net.Listener
	err := netnamespace.Do(netns, func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in %q: %w", addr, netns, err)
	}
	return l, nil
}

// serveHTTP serves handler on l until the returned server is closed.
func serveHTTP(l net.Listener, handler http.Handler, log *slog.Logger) *http.Server {
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("proxy HTTP server stopped", "addr", l.Addr(), "err", err)
		}
	}()
	return srv
}

// serveEndpoints opens the proxy's own HTTP endpoints in its namespace:
// /healthz and /livez on cfg.HealthzBindAddress; /metrics, the debug state
// (proxydebug.Path) and, with cfg.EnableProfiling, pprof on
// cfg.MetricsBindAddress. An empty address disables its endpoints. stop
// closes them.
func serveEndpoints(cfg Config, health http.Handler, debug http.Handler, m *metrics, log *slog.Logger) (stop func(), err error) {
	var servers []*http.Server
	stop = func() {
		for _, s := range servers {
			s.Close()
		}
	}
	if cfg.HealthzBindAddress != "" {
		l, err := listenIn(cfg.NetNS, "tcp", cfg.HealthzBindAddress)
		if err != nil {
			return nil, fmt.Errorf("proxy: healthz: %w", err)
		}
		servers = append(servers, serveHTTP(l, health, log))
	}
	if cfg.MetricsBindAddress != "" {
		l, err := listenIn(cfg.NetNS, "tcp", cfg.MetricsBindAddress)
		if err != nil {
			stop()
			return nil, fmt.Errorf("proxy: metrics: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{}))
		mux.Handle(proxydebug.Path, debug)
		if cfg.EnableProfiling {
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		}
		servers = append(servers, serveHTTP(l, mux, log))
	}
	return stop, nil
}
