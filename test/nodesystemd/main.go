// Command nodesystemd is a real-node plane's stand-in for a host's systemd
// (test/cluster): it runs a private system bus at -socket and, on it,
// fakesystemd's Manager, with Zincati running and boot-complete.target
// reached. A restart of Zincati (the agent's, after it writes the drop-in)
// succeeds, leaves the unit running and is printed, one line each, for the
// tests to read from the node's log.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rebootmanager/reboot-manager/test/fakesystemd"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "nodesystemd:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("nodesystemd", flag.ContinueOnError)
	socket := fs.String("socket", "/run/dbus/system_bus_socket", "the system bus's socket")
	unit := fs.String("unit", "zincati.service", "the unit that restarts succeed for")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if err := os.MkdirAll(filepath.Dir(*socket), 0o755); err != nil {
		return fmt.Errorf("create the bus's directory: %w", err)
	}
	_ = os.Remove(*socket) // left by a node that was powered off
	conf := *socket + ".conf"
	if err := os.WriteFile(conf, []byte(fakesystemd.BusConfig(*socket)), 0o644); err != nil {
		return fmt.Errorf("write the bus's configuration: %w", err)
	}
	bus := exec.CommandContext(ctx, "dbus-daemon", "--config-file="+conf, "--nofork", "--print-address=1")
	bus.Stderr = os.Stderr
	out, err := bus.StdoutPipe()
	if err != nil {
		return err
	}
	if err := bus.Start(); err != nil {
		return fmt.Errorf("start dbus-daemon: %w", err)
	}
	defer func() { _ = bus.Process.Kill(); _ = bus.Wait() }()
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read the bus's address: %w", err)
	}

	m, err := fakesystemd.Serve(strings.TrimSpace(addr), map[string]string{*unit: "done"})
	if err != nil {
		return err
	}
	defer m.Close()
	m.RestartStartsUnits()
	m.SetUnit(*unit, map[string]any{"ActiveState": "active", "SubState": "running", "ActiveEnterTimestamp": uint64(time.Now().UnixMicro())})
	m.SetUnit("boot-complete.target", map[string]any{"ActiveState": "active", "SubState": "active"})
	fmt.Printf("nodesystemd: serving %s on %s\n", *unit, *socket)

	seen := 0
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			for _, r := range m.Restarts()[seen:] {
				fmt.Printf("nodesystemd: restart %s\n", r)
				seen++
			}
		}
	}
}
