package localcluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/switchboard/switchboard/controlplane"
)

// Config describes the local cluster to run.
type Config struct {
	StateDir      string
	Nodes         int
	ServiceCIDR   string
	NodePortRange string
	APIServerPort int
	Logger        *slog.Logger
}

// Cluster is a running local cluster.
type Cluster struct {
	Config       Config
	ControlPlane *controlplane.ControlPlane

	lock    *StateLock
	logFile *os.File
}

// Start brings the cluster up: it locks the state directory, starts the
// control plane and the housekeeping controllers, and returns when the API
// is ready. Stop tears down everything Start made.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.Nodes < 1 {
		return nil, fmt.Errorf("--nodes must be at least 1, got %d", cfg.Nodes)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	dir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	cfg.StateDir = dir
	lock, err := LockStateDir(dir)
	if err != nil {
		return nil, err
	}
	c := &Cluster{Config: cfg, lock: lock}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o700); err != nil {
		lock.Release()
		return nil, err
	}
	c.logFile, err = os.OpenFile(filepath.Join(dir, "logs", "control-plane.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		lock.Release()
		return nil, err
	}
	c.ControlPlane, err = controlplane.Start(ctx, controlplane.Config{
		StateDir:      dir,
		ServiceCIDR:   cfg.ServiceCIDR,
		NodePortRange: cfg.NodePortRange,
		APIServerPort: cfg.APIServerPort,
		LogOutput:     c.logFile,
	})
	if err != nil {
		c.Stop()
		return nil, err
	}
	if err := controlplane.StartHousekeeping(ctx, c.ControlPlane.RESTConfig); err != nil {
		c.Stop()
		return nil, err
	}
	if err := controlplane.StartWorkloadControllers(ctx, c.ControlPlane.RESTConfig); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// Stop tears the cluster down and releases the state directory.
func (c *Cluster) Stop() {
	if c.ControlPlane != nil {
		c.ControlPlane.Stop()
	}
	if c.logFile != nil {
		c.logFile.Close()
	}
	c.lock.Release()
}

var _ io.Writer = (*os.File)(nil)
