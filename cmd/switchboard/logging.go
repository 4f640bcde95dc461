package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"
)

// logFlags are the logging flags of the components that replace upstream
// ones (proxy, dns, controller), named and valued as component-base's:
// -v/--v N and --logging-format text|json.
type logFlags struct {
	verbosity int
	format    string
}

func (l *logFlags) addTo(fs *pflag.FlagSet) {
	fs.IntVarP(&l.verbosity, "v", "v", 0, "log verbosity: 0 logs what an operator needs, 2 adds state changes, 4 every sync (as upstream's -v)")
	fs.StringVar(&l.format, "logging-format", "text", "log format: text or json (as upstream's --logging-format)")
}

// logger builds the process's logger on w and routes klog (client-go's
// reflectors, leader election, the upstream EndpointSlice reconciler)
// through it, so an informer's "forbidden" or a lost lease lands in the same
// stream, format and verbosity as the component's own lines. Verbosity maps
// as logr maps onto slog: V(n) is slog.Level(-n), so -v=4 shows Debug.
func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	if l.verbosity < 0 {
		return nil, fmt.Errorf("-v %d: must be 0 or more", l.verbosity)
	}
	opts := &slog.HandlerOptions{Level: slog.Level(-l.verbosity)}
	var h slog.Handler
	switch l.format {
	case "text":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		return nil, fmt.Errorf("--logging-format %q: must be text or json", l.format)
	}
	log := slog.New(h)
	// klog decides V(n) by its own -v before the line reaches the logger.
	var kfs flag.FlagSet
	klog.InitFlags(&kfs)
	if err := kfs.Set("v", strconv.Itoa(l.verbosity)); err != nil {
		return nil, fmt.Errorf("-v %d: %w", l.verbosity, err)
	}
	klog.SetSlogLogger(log)
	slog.SetDefault(log)
	return log, nil
}
