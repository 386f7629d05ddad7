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
	return StartBusAt(t, filepath.Join(t.TempDir(), "bus"))
}

// StartBusAt is StartBus listening on the socket path, which the kill
// function removes: a later StartBusAt on the same path is the bus coming
// back, as after a restart of the host's dbus-daemon.
func StartBusAt(t testing.TB, path string) (string, func()) {
	t.Helper()
	conf := filepath.Join(t.TempDir(), "bus.conf")
	if err := os.WriteFile(conf, []byte(BusConfig(path)), 0o644); err != nil {
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
	kill := sync.OnceFunc(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); os.Remove(path) })
	t.Cleanup(kill)
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("read the bus address: %v", err)
	}
	return strings.TrimSpace(addr), kill
}

// BusConfig is a dbus-daemon configuration for a private bus listening on
// the socket path, open to every user.
func BusConfig(socket string) string {
	return `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path=` + socket + `</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
`
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
	// props are the units' properties that Get answers, beyond the
	// restartable units' ActiveState and SubState "failed".
	props map[string]map[string]any
	// systemState is the manager's SystemState.
	systemState string
	// restartStarts: a done restart makes the unit active (RestartStartsUnits).
	restartStarts bool
}

// Job is the (uo) value of a unit's Job property; ID 0 is no job.
type Job struct {
	ID   uint32
	Path dbus.ObjectPath
}

// NoJob is the Job property of a unit with no job queued.
var NoJob = Job{0, "/"}

// SetUnit sets properties of unit (LoadState, ActiveState, Job, …) for
// Properties.Get; a unit without any is not found.
func (m *Manager) SetUnit(unit string, props map[string]any) {
	m.mu.Lock()
	_, known := m.props[unit]
	m.props[unit] = props
	m.mu.Unlock()
	if !known {
		path := dbus.ObjectPath("/org/freedesktop/systemd1/unit/" + escape(unit))
		_ = m.conn.Export(unitProps{m, unit}, path, "org.freedesktop.DBus.Properties")
	}
}

// SetSystemState sets the manager's SystemState ("running" by default).
func (m *Manager) SetSystemState(s string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.systemState = s
}

// Start puts a Manager on the bus at addr until the test ends.
func Start(t testing.TB, addr string, results map[string]string) *Manager {
	t.Helper()
	m, err := Serve(addr, results)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// Serve puts a Manager on the bus at addr until Close: results maps each
// restartable unit to its jobs' result ("done", "failed", "hang", …).
func Serve(addr string, results map[string]string) (*Manager, error) {
	conn, err := dbus.Connect(addr)
	if err != nil {
		return nil, fmt.Errorf("connect to the bus %s: %w", addr, err)
	}
	m := &Manager{conn: conn, results: results, props: map[string]map[string]any{}, systemState: "running"}
	if err := m.export(); err != nil {
		conn.Close()
		return nil, err
	}
	return m, nil
}

func (m *Manager) export() error {
	if err := m.conn.Export(m, "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager"); err != nil {
		return fmt.Errorf("export the manager: %w", err)
	}
	if err := m.conn.Export(managerProps{m}, "/org/freedesktop/systemd1", "org.freedesktop.DBus.Properties"); err != nil {
		return fmt.Errorf("export the manager's properties: %w", err)
	}
	for unit := range m.results {
		m.props[unit] = map[string]any{"ActiveState": "failed", "SubState": "failed"}
	}
	for _, unit := range []string{"boot-complete.target"} {
		if _, ok := m.props[unit]; !ok {
			m.props[unit] = nil // not found until SetUnit
		}
	}
	for unit := range m.props {
		path := dbus.ObjectPath("/org/freedesktop/systemd1/unit/" + escape(unit))
		if err := m.conn.Export(unitProps{m, unit}, path, "org.freedesktop.DBus.Properties"); err != nil {
			return fmt.Errorf("export %s: %w", unit, err)
		}
	}
	reply, err := m.conn.RequestName("org.freedesktop.systemd1", dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		return fmt.Errorf("own org.freedesktop.systemd1: %v %v", reply, err)
	}
	return nil
}

// Close leaves the bus.
func (m *Manager) Close() { m.conn.Close() }

// RestartStartsUnits makes a restart whose job is "done" leave the unit
// active (running), entered now, as systemd's does; without it a unit keeps
// the properties it was given.
func (m *Manager) RestartStartsUnits() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.restartStarts = true
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
	if m.restartStarts && result == "done" {
		props := map[string]any{}
		for k, v := range m.props[name] {
			props[k] = v
		}
		props["ActiveState"], props["SubState"] = "active", "running"
		props["ActiveEnterTimestamp"] = uint64(time.Now().UnixMicro())
		m.props[name] = props
	}
	job := dbus.ObjectPath(fmt.Sprintf("/org/freedesktop/systemd1/job/%d", id))
	if result != "hang" {
		go func() {
			time.Sleep(5 * time.Millisecond) // after the reply, as systemd does
			_ = m.conn.Emit("/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager.JobRemoved", id, job, name, result)
		}()
	}
	return job, nil
}

type unitProps struct {
	m    *Manager
	unit string
}

// Get is org.freedesktop.DBus.Properties.Get on a unit.
func (u unitProps) Get(iface, prop string) (dbus.Variant, *dbus.Error) {
	u.m.mu.Lock()
	defer u.m.mu.Unlock()
	props := u.m.props[u.unit]
	if props == nil {
		if prop == "LoadState" {
			return dbus.MakeVariant("not-found"), nil
		}
		return dbus.Variant{}, &dbus.Error{Name: "org.freedesktop.systemd1.NoSuchUnit", Body: []any{"Unit " + u.unit + " not found."}}
	}
	if v, ok := props[prop]; ok {
		return dbus.MakeVariant(v), nil
	}
	if prop == "LoadState" {
		return dbus.MakeVariant("loaded"), nil
	}
	return dbus.Variant{}, &dbus.Error{Name: "org.freedesktop.DBus.Error.UnknownProperty"}
}

type managerProps struct{ m *Manager }

// Get is org.freedesktop.DBus.Properties.Get on the manager.
func (p managerProps) Get(iface, prop string) (dbus.Variant, *dbus.Error) {
	p.m.mu.Lock()
	defer p.m.mu.Unlock()
	if prop == "SystemState" {
		return dbus.MakeVariant(p.m.systemState), nil
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
