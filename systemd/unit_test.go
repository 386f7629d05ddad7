package systemd

import (
	"bufio"
	"context"
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

// startBus runs a private dbus-daemon and points the system bus at it. It
// returns the bus address and a function that kills the daemon.
func startBus(t *testing.T) (string, func()) {
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
	addr = strings.TrimSpace(addr)
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", addr)
	return addr, kill
}

// fakeSystemd owns org.freedesktop.systemd1 and answers RestartUnit with a
// job whose JobRemoved result is results[unit].
type fakeSystemd struct {
	conn    *dbus.Conn
	mu      sync.Mutex
	results map[string]string // unit → job result; absent: NoSuchUnit
	jobs    uint32
	restart []string
}

func startFake(t *testing.T, addr string, results map[string]string) *fakeSystemd {
	t.Helper()
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	f := &fakeSystemd{conn: conn, results: results}
	if err := conn.Export(f, "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager"); err != nil {
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
	return f
}

// RestartUnit is systemd's Manager.RestartUnit.
func (f *fakeSystemd) RestartUnit(name, mode string) (dbus.ObjectPath, *dbus.Error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	result, ok := f.results[name]
	if !ok {
		return "", &dbus.Error{Name: "org.freedesktop.systemd1.NoSuchUnit", Body: []any{"Unit " + name + " not found."}}
	}
	f.jobs++
	id := f.jobs
	f.restart = append(f.restart, name+" "+mode)
	job := dbus.ObjectPath(fmt.Sprintf("/org/freedesktop/systemd1/job/%d", id))
	if result != "hang" {
		go func() {
			time.Sleep(5 * time.Millisecond) // after the reply, as systemd does
			_ = f.conn.Emit("/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager.JobRemoved", id, job, name, result)
		}()
	}
	return job, nil
}

type unitProps struct{}

// Get is org.freedesktop.DBus.Properties.Get on a unit.
func (unitProps) Get(iface, prop string) (dbus.Variant, *dbus.Error) {
	switch prop {
	case "ActiveState":
		return dbus.MakeVariant("failed"), nil
	case "SubState":
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

func TestRestart(t *testing.T) {
	tests := []struct {
		name    string
		unit    string
		timeout time.Duration
		wantErr string
	}{
		{"done", "zincati.service", time.Second, ""},
		{"failed job names the state", "broken.service", time.Second, "job failed (ActiveState failed, SubState failed)"},
		{"canceled job", "canceled.service", time.Second, "job canceled"},
		{"timeout job", "slow.service", time.Second, "job timeout"},
		{"missing unit", "missing.service", time.Second, "Unit missing.service not found"},
		{"job never ends: context", "hang.service", 200 * time.Millisecond, "context deadline exceeded"},
	}
	addr, _ := startBus(t)
	fake := startFake(t, addr, map[string]string{
		"zincati.service": "done", "broken.service": "failed", "canceled.service": "canceled",
		"slow.service": "timeout", "hang.service": "hang",
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), tt.timeout)
			defer cancel()
			m, err := Connect(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			err = m.Restart(ctx, tt.unit)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Restart: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Restart = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if len(fake.restart) == 0 || fake.restart[0] != "zincati.service replace" {
		t.Errorf("restarts = %q, want zincati.service in mode replace first", fake.restart)
	}
}

func TestNoBus(t *testing.T) {
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+filepath.Join(t.TempDir(), "nothing"))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := Connect(ctx); err == nil || !strings.Contains(err.Error(), "connect to systemd") {
		t.Fatalf("Connect without a bus = %v, want a clear error", err)
	}
}

func TestBusVanishes(t *testing.T) {
	addr, kill := startBus(t)
	startFake(t, addr, map[string]string{"zincati.service": "done"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	kill()
	start := time.Now()
	if err := m.Restart(ctx, "zincati.service"); err == nil {
		t.Fatal("Restart succeeded after the bus went away")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Restart took %s to notice the bus was gone", d)
	}
}
