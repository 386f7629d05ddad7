// Command agent runs on every Fedora CoreOS host (a DaemonSet): it points
// Zincati at the reboot-manager arbiter through a drop-in, restarts Zincati
// over D-Bus when that changes, and publishes the host's Zincati id on its
// Node. On any other host it does nothing but say so. Run with -h for its
// flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rebootmanager/reboot-manager/agent"
	"github.com/rebootmanager/reboot-manager/agent/dropin"
	"github.com/rebootmanager/reboot-manager/shared/apiversion"
	"github.com/rebootmanager/reboot-manager/shared/envflag"
	"github.com/rebootmanager/reboot-manager/shared/kubeclient"
	"github.com/rebootmanager/reboot-manager/systemd"
)

type config struct {
	agent         agent.Config
	kubeconfig    string
	cleanup       bool
	addrType      string
	logLevel      slog.Level
	dbusAddress   string
	journalSocket string
	cleanupWait   time.Duration
}

func parse(args []string, lookup func(string) (string, bool)) (config, error) {
	var c config
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file; empty means in-cluster, then $KUBECONFIG")
	fs.StringVar(&c.agent.NodeName, "node-name", "", "this host's Node (from the downward API: spec.nodeName); required")
	fs.StringVar(&c.agent.HostRoot, "host-root", "/host", "where the host's /etc, /usr and /run are mounted; os-release, /etc/zincati and /etc/machine-id are read under it")
	fs.StringVar(&c.agent.ConfigDir, "config-dir", "etc/zincati/config.d", "Zincati's drop-in directory, relative to -host-root")
	fs.StringVar(&c.agent.FileName, "file-name", dropin.DefaultName, "the drop-in's file name; must sort after 30-updates-strategy.toml")
	fs.StringVar(&c.agent.Unit, "unit", "zincati.service", "Zincati's systemd unit")
	fs.StringVar(&c.agent.BaseURL, "base-url", "", "the arbiter's FleetLock base URL; empty derives it from the Service")
	fs.StringVar(&c.agent.ServiceNamespace, "service-namespace", "reboot-manager", "namespace of the arbiter's Service")
	fs.StringVar(&c.agent.ServiceName, "service-name", "arbiter", "name of the arbiter's Service")
	fs.StringVar(&c.addrType, "address-type", "cluster", "which Service address Zincati uses: cluster (ClusterIP) or external (LoadBalancer/external IP)")
	fs.BoolVar(&c.agent.Force, "force", false, "manage a host that is not Fedora CoreOS, or whose Zincati is not /usr/libexec/zincati (it must still run a Zincati unit)")
	fs.StringVar(&c.dbusAddress, "dbus-address", "", "the host's system bus; empty means $DBUS_SYSTEM_BUS_ADDRESS, else unix:path=<host-root>/run/dbus/system_bus_socket")
	fs.StringVar(&c.agent.BootIDPath, "boot-id-path", "/proc/sys/kernel/random/boot_id", "where this boot's id is read; the kernel's is the same in the pod and on the host")
	fs.StringVar(&c.journalSocket, "journal-socket", "", "the host journal's socket; empty means <host-root>/run/systemd/journal/socket (stderr when it is absent)")
	fs.BoolVar(&c.cleanup, "cleanup", false, "remove the drop-in, restart Zincati if it runs, and exit (for uninstalling; see deploy/uninstall)")
	fs.DurationVar(&c.cleanupWait, "cleanup-wait", 2*time.Minute, "with -cleanup: how long to wait for the system bus before failing")
	fs.TextVar(&c.logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	fs.Usage = envflag.Usage(fs, "AGENT", "agent: configures Zincati for the reboot-manager arbiter on this host")
	if err := envflag.Parse(fs, "AGENT", args, lookup); err != nil {
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
	if c.dbusAddress == "" {
		if v, ok := lookup("DBUS_SYSTEM_BUS_ADDRESS"); ok && v != "" {
			c.dbusAddress = v
		} else {
			c.dbusAddress = "unix:path=" + filepath.Join(c.agent.HostRoot, "run/dbus/system_bus_socket")
		}
	}
	if c.journalSocket == "" {
		c.journalSocket = filepath.Join(c.agent.HostRoot, "run/systemd/journal/socket")
	}
	return c, nil
}

func main() {
	cfg, err := parse(os.Args[1:], os.LookupEnv)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(2)
	}
	handler, _ := systemd.NewLogHandler(cfg.journalSocket, "reboot-manager-agent", cfg.logLevel, os.Stderr)
	log := slog.New(handler)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("agent failed", "err", err)
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config, log *slog.Logger) error {
	bus := systemd.NewBus(ctx, cfg.dbusAddress)
	defer bus.Close()
	if cfg.cleanup {
		return cleanup(ctx, cfg, bus, log)
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
	return agent.New(cfg.agent, client, bus, log).Run(ctx)
}

// cleanup removes the drop-in and restarts Zincati so that it drops the
// arbiter: once, for uninstalling (a Job per node, deploy/uninstall). A
// host with neither the drop-in nor the drop-in directory has nothing of
// the agent's: it exits at once, with no bus needed. Otherwise it waits
// up to -cleanup-wait for the bus before it changes anything, so that a
// failed run leaves the drop-in for the next. It restarts Zincati only
// when it runs or has failed, never one that is stopped, and also when the
// drop-in is already gone but the directory changed since Zincati's last
// start (a run that removed it and failed to restart).
func cleanup(ctx context.Context, cfg config, bus *systemd.Bus, log *slog.Logger) error {
	dir := filepath.Join(cfg.agent.HostRoot, cfg.agent.ConfigDir)
	log = log.With("node", cfg.agent.NodeName, "path", filepath.Join(dir, cfg.agent.FileName))
	dirInfo, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		log.Info("nothing to clean up: the host has no Zincati drop-in directory")
		return nil
	}
	if err != nil {
		return fmt.Errorf("read Zincati's drop-in directory: %w", err)
	}
	wait, cancel := context.WithTimeout(ctx, cfg.cleanupWait)
	defer cancel()
	var state systemd.UnitState
	for delay := time.Second; ; delay = min(2*delay, 30*time.Second) {
		if state, err = bus.Unit(wait, cfg.agent.Unit); err == nil || !errors.Is(err, systemd.ErrNoBus) {
			break
		}
		log.Warn("waiting for the system bus", "err", err)
		select {
		case <-wait.Done():
			return fmt.Errorf("clean up: the system bus did not answer in %s: %w", cfg.cleanupWait, err)
		case <-time.After(delay):
		}
	}
	if err != nil {
		return fmt.Errorf("clean up: %w", err)
	}
	removed, err := dropin.Remove(dir, cfg.agent.FileName)
	if err != nil {
		return err
	}
	if removed {
		log.Info("removed the Zincati drop-in", "changed", true)
	}
	owed := removed || state.ActiveEnterKnown && dirInfo.ModTime().After(state.ActiveEnter)
	switch {
	case !state.Exists():
		log.Info("the host's systemd knows no Zincati unit: nothing to restart", "unit", cfg.agent.Unit)
		return nil
	case !owed:
		log.Info("nothing to clean up: the drop-in is gone and Zincati started since", "unit", cfg.agent.Unit)
		return nil
	case state.Stopped():
		log.Info("Zincati is stopped: not starting it; it reads its configuration, without the drop-in, when it next starts",
			"unit", cfg.agent.Unit, "active_state", state.Active)
		return nil
	}
	if err := bus.Restart(ctx, cfg.agent.Unit); err != nil {
		return fmt.Errorf("clean up: %w", err)
	}
	log.Info("restarted Zincati without the drop-in: it follows the distribution's update strategy again", "unit", cfg.agent.Unit)
	return nil
}
