// Command agent runs on every Fedora CoreOS host (a DaemonSet): it points
// Zincati at the reboot-manager arbiter through a drop-in, restarts Zincati
// over D-Bus when that changes, and publishes the host's Zincati id on its
// Node. Run with -h for its flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/rebootmanager/reboot-manager/agent"
	"github.com/rebootmanager/reboot-manager/agent/dropin"
	"github.com/rebootmanager/reboot-manager/shared/apiversion"
	"github.com/rebootmanager/reboot-manager/shared/envflag"
	"github.com/rebootmanager/reboot-manager/shared/kubeclient"
	"github.com/rebootmanager/reboot-manager/systemd"
)

type config struct {
	agent      agent.Config
	kubeconfig string
	cleanup    bool
	addrType   string
	logLevel   slog.Level
}

func parse(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file; empty means in-cluster, then $KUBECONFIG")
	fs.StringVar(&c.agent.NodeName, "node-name", "", "this host's Node (from the downward API: spec.nodeName); required")
	fs.StringVar(&c.agent.HostRoot, "host-root", "/host", "where the host's / is mounted; /etc/zincati and /etc/machine-id are read under it")
	fs.StringVar(&c.agent.ConfigDir, "config-dir", "etc/zincati/config.d", "Zincati's drop-in directory, relative to -host-root")
	fs.StringVar(&c.agent.FileName, "file-name", dropin.DefaultName, "the drop-in's file name; must sort after 30-updates-strategy.toml")
	fs.StringVar(&c.agent.Unit, "unit", "zincati.service", "Zincati's systemd unit")
	fs.StringVar(&c.agent.BaseURL, "base-url", "", "the arbiter's FleetLock base URL; empty derives it from the Service")
	fs.StringVar(&c.agent.ServiceNamespace, "service-namespace", "reboot-manager", "namespace of the arbiter's Service")
	fs.StringVar(&c.agent.ServiceName, "service-name", "arbiter", "name of the arbiter's Service")
	fs.StringVar(&c.addrType, "address-type", "cluster", "which Service address Zincati uses: cluster (ClusterIP) or external (LoadBalancer/external IP)")
	fs.BoolVar(&c.cleanup, "cleanup", false, "remove the drop-in, restart Zincati, and exit (for uninstalling)")
	fs.TextVar(&c.logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	fs.Usage = envflag.Usage(fs, "AGENT", "agent: configures Zincati for the reboot-manager arbiter on this host")
	if err := envflag.Parse(fs, "AGENT", args, os.LookupEnv); err != nil {
		return c, err
	}
	switch c.addrType {
	case "cluster":
	case "external":
		c.agent.External = true
	default:
		return c, fmt.Errorf("-address-type must be cluster or external, not %q", c.addrType)
	}
	if c.agent.NodeName == "" && !c.cleanup {
		return c, errors.New("-node-name (AGENT_NODE_NAME) is required")
	}
	return c, nil
}

func main() {
	cfg, err := parse(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(2)
	}
	var log *slog.Logger
	if systemd.JournalAvailable() {
		log = slog.New(systemd.NewJournalHandler("reboot-manager-agent", cfg.logLevel))
	} else {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.logLevel}))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("agent failed", "err", err)
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config, log *slog.Logger) error {
	sd, err := systemd.Connect(ctx)
	if err != nil {
		return err
	}
	defer sd.Close()
	if cfg.cleanup {
		removed, err := dropin.Remove(filepath.Join(cfg.agent.HostRoot, cfg.agent.ConfigDir), cfg.agent.FileName)
		if err != nil || !removed {
			return err
		}
		log.Info("removed the Zincati drop-in; restarting Zincati", "node", cfg.agent.NodeName, "changed", true)
		return sd.Restart(ctx, cfg.agent.Unit)
	}
	client, _, err := kubeclient.New(cfg.kubeconfig, "reboot-manager-agent")
	if err != nil {
		return err
	}
	// An API server too old for the policies that hold the agent to its
	// own Node is refused.
	if err := apiversion.Require(client.Discovery(), log.With("node", cfg.agent.NodeName)); err != nil {
		return err
	}
	return agent.New(cfg.agent, client, sd, log).Run(ctx)
}
