// Package fakesystemd runs a private dbus-daemon with a stand-in for
// systemd's manager on it, so that tests drive the agent's real D-Bus path
// (go-systemd, godbus, the daemon) without a real systemd.
package fakesystemd

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// StartBus runs a private dbus-daemon until the test ends and returns its
// address (for DBUS_SYSTEM_BUS_ADDRESS) and a function that kills it
// early.
func StartBus(t testing.TB) (string, func()) {
	t.Helper()
	dir := t.TempDir()
	conf := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(conf, []byte(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path=`+filepath.Join(dir, "bus")+`</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
`), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("dbus-daemon", "--config-file="+conf, "--nofork", "--print-address=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start dbus-daemon: %v", err)
	}
	kill := sync.OnceFunc(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	t.Cleanup(kill)
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("read the bus address: %v", err)
	}
	return strings.TrimSpace(addr), kill
}

// Manager owns org.freedesktop.systemd1 and answers RestartUnit with a job
// whose JobRemoved result is the unit's in its results ("hang" never ends
// it; a unit without one is NoSuchUnit).
type Manager struct {
	conn     *dbus.Conn
	mu       sync.Mutex
	results  map[string]string
	jobs     uint32
	restarts []string
}

// Start puts a Manager on the bus at addr until the test ends.
func Start(t testing.TB, addr string, results map[string]string) *Manager {
	t.Helper()
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	m := &Manager{conn: conn, results: results}
	if err := conn.Export(m, "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager"); err != nil {
		t.Fatal(err)
	}
	for unit := range results {
		path := dbus.ObjectPath("/org/freedesktop/systemd1/unit/" + escape(unit))
		if err := conn.Export(unitProps{}, path, "org.freedesktop.DBus.Properties"); err != nil {
			t.Fatal(err)
		}
	}
	reply, err := conn.RequestName("org.freedesktop.systemd1", dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("own org.freedesktop.systemd1: %v %v", reply, err)
	}
	return m
}

// Restarts lists the restarts asked for, as "unit mode".
func (m *Manager) Restarts() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.restarts...)
}

// RestartUnit is systemd's Manager.RestartUnit.
func (m *Manager) RestartUnit(name, mode string) (dbus.ObjectPath, *dbus.Error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	result, ok := m.results[name]
	if !ok {
		return "", &dbus.Error{Name: "org.freedesktop.systemd1.NoSuchUnit", Body: []any{"Unit " + name + " not found."}}
	}
	m.jobs++
	id := m.jobs
	m.restarts = append(m.restarts, name+" "+mode)
	job := dbus.ObjectPath(fmt.Sprintf("/org/freedesktop/systemd1/job/%d", id))
	if result != "hang" {
		go func() {
			time.Sleep(5 * time.Millisecond) // after the reply, as systemd does
			_ = m.conn.Emit("/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager.JobRemoved", id, job, name, result)
		}()
	}
	return job, nil
}

type unitProps struct{}

// Get is org.freedesktop.DBus.Properties.Get on a unit.
func (unitProps) Get(iface, prop string) (dbus.Variant, *dbus.Error) {
	switch prop {
	case "ActiveState", "SubState":
		return dbus.MakeVariant("failed"), nil
	}
	return dbus.Variant{}, &dbus.Error{Name: "org.freedesktop.DBus.Error.UnknownProperty"}
}

// escape is systemd's bus path escaping of a unit name.
func escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9' && i > 0) {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "_%02x", c)
		}
	}
	return b.String()
}
