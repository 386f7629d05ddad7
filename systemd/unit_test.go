package systemd

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rebootmanager/reboot-manager/test/fakesystemd"
)

// startBus runs a private dbus-daemon and points the system bus at it.
func startBus(t *testing.T) (string, func()) {
	addr, kill := fakesystemd.StartBus(t)
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", addr)
	return addr, kill
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
	fake := fakesystemd.Start(t, addr, map[string]string{
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
	if r := fake.Restarts(); len(r) == 0 || r[0] != "zincati.service replace" {
		t.Errorf("restarts = %q, want zincati.service in mode replace first", r)
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
	fakesystemd.Start(t, addr, map[string]string{"zincati.service": "done"})
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

func TestBootComplete(t *testing.T) {
	addr, _ := startBus(t)
	fake := fakesystemd.Start(t, addr, map[string]string{"zincati.service": "done"})
	fake.SetUnit("check.service", map[string]any{"ActiveState": "failed"})
	fake.SetUnit("ok.service", map[string]any{"ActiveState": "active"})
	m, err := Connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	none := fakesystemd.NoJob
	tests := []struct {
		name   string
		props  map[string]any // nil: no such target
		system string
		want   string
	}{
		{"no target on this host", nil, "running", ""},
		{"reached", map[string]any{"ActiveState": "active", "Job": none}, "running", BootReached},
		{"a job is queued", map[string]any{"ActiveState": "inactive", "Job": fakesystemd.Job{ID: 42, Path: "/org/freedesktop/systemd1/job/42"}}, "starting", BootPending},
		{"still starting, no job yet", map[string]any{"ActiveState": "inactive", "Job": none}, "starting", BootPending},
		{"a required unit failed", map[string]any{"ActiveState": "inactive", "Job": none, "Requires": []string{"ok.service", "check.service"}}, "degraded", BootFailed},
		{"never asked for in this boot", map[string]any{"ActiveState": "inactive", "Job": none, "Requires": []string{"ok.service"}}, "running", ""},
		{"not loaded", map[string]any{"LoadState": "not-found"}, "running", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake.SetUnit(BootCompleteTarget, tt.props)
			fake.SetSystemState(tt.system)
			got, err := m.BootComplete(context.Background())
			if err != nil || got != tt.want {
				t.Fatalf("BootComplete = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}
