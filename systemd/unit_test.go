package systemd

import (
	"context"
	"errors"
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

func TestUnit(t *testing.T) {
	addr, _ := startBus(t)
	fake := fakesystemd.Start(t, addr, map[string]string{"zincati.service": "done"})
	started := time.Date(2026, 11, 3, 10, 0, 0, 123456000, time.UTC)
	fake.SetUnit("running.service", map[string]any{"ActiveState": "active", "SubState": "running", "ActiveEnterTimestamp": uint64(started.UnixMicro())})
	fake.SetUnit("stopped.service", map[string]any{"ActiveState": "inactive", "SubState": "dead", "ActiveEnterTimestamp": uint64(0)})
	fake.SetUnit("stopping.service", map[string]any{"ActiveState": "deactivating", "SubState": "stop-sigterm", "ActiveEnterTimestamp": uint64(started.UnixMicro())})
	fake.SetUnit("masked.service", map[string]any{"LoadState": "masked", "ActiveState": "inactive", "SubState": "dead", "ActiveEnterTimestamp": uint64(0)})
	fake.SetUnit("bad.service", map[string]any{"ActiveState": int32(3), "SubState": "dead"})
	m, err := Connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	tests := []struct {
		unit            string
		want            UnitState
		exists, stopped bool
		wantErr         string
	}{
		{unit: "running.service", want: UnitState{Load: "loaded", Active: "active", Sub: "running", ActiveEnter: started, ActiveEnterKnown: true}, exists: true},
		{unit: "stopped.service", want: UnitState{Load: "loaded", Active: "inactive", Sub: "dead", ActiveEnterKnown: true}, exists: true, stopped: true},
		{unit: "stopping.service", want: UnitState{Load: "loaded", Active: "deactivating", Sub: "stop-sigterm", ActiveEnter: started, ActiveEnterKnown: true}, exists: true, stopped: true},
		{unit: "masked.service", want: UnitState{Load: "masked", Active: "inactive", Sub: "dead", ActiveEnterKnown: true}, exists: true, stopped: true},
		// The stand-in has no ActiveEnterTimestamp for it: not known.
		{unit: "zincati.service", want: UnitState{Load: "loaded", Active: "failed", Sub: "failed"}, exists: true},
		{unit: "bad.service", wantErr: "read ActiveState of bad.service: not a string"},
		{unit: "missing.service", wantErr: "read LoadState of missing.service"},
	}
	for _, tt := range tests {
		t.Run(tt.unit, func(t *testing.T) {
			got, err := m.Unit(context.Background(), tt.unit)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Unit = %+v, %v; want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !got.ActiveEnter.Equal(tt.want.ActiveEnter) {
				t.Errorf("ActiveEnter = %v, want %v", got.ActiveEnter, tt.want.ActiveEnter)
			}
			got.ActiveEnter, tt.want.ActiveEnter = time.Time{}, time.Time{}
			if got != tt.want || got.Exists() != tt.exists || got.Stopped() != tt.stopped {
				t.Errorf("Unit = %+v (exists %v, stopped %v), want %+v (exists %v, stopped %v)", got, got.Exists(), got.Stopped(), tt.want, tt.exists, tt.stopped)
			}
		})
	}
	if (UnitState{Load: "not-found"}).Exists() {
		t.Error("a not-found unit exists")
	}
}

// TestBusComesAndGoes: a Bus made before its bus exists says ErrNoBus,
// works once the bus is there, says ErrNoBus again when it goes, and
// reconnects when a new daemon listens at the same address.
func TestBusComesAndGoes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "system_bus_socket")
	addr := "unix:path=" + path
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b := NewBus(ctx, addr)
	defer b.Close()
	expectNoBus := func(when string) {
		t.Helper()
		if _, err := b.Unit(ctx, "zincati.service"); !errors.Is(err, ErrNoBus) {
			t.Fatalf("Unit %s = %v, want ErrNoBus", when, err)
		}
		if err := b.Restart(ctx, "zincati.service"); !errors.Is(err, ErrNoBus) {
			t.Fatalf("Restart %s = %v, want ErrNoBus", when, err)
		}
		if _, err := b.BootComplete(ctx); !errors.Is(err, ErrNoBus) {
			t.Fatalf("BootComplete %s = %v, want ErrNoBus", when, err)
		}
	}
	expectWorks := func(when string, fake *fakesystemd.Manager, restarts int) {
		t.Helper()
		if s, err := b.Unit(ctx, "zincati.service"); err != nil || s.Active != "failed" {
			t.Fatalf("Unit %s = %+v, %v", when, s, err)
		}
		if err := b.Restart(ctx, "zincati.service"); err != nil {
			t.Fatalf("Restart %s: %v", when, err)
		}
		if got := len(fake.Restarts()); got != restarts {
			t.Fatalf("restarts %s = %d, want %d", when, got, restarts)
		}
		// A unit that is not there is an error, but not ErrNoBus.
		if err := b.Restart(ctx, "missing.service"); err == nil || errors.Is(err, ErrNoBus) {
			t.Fatalf("Restart of a missing unit %s = %v, want a plain error", when, err)
		}
	}
	expectNoBus("before the bus exists")
	_, kill := fakesystemd.StartBusAt(t, path)
	expectWorks("once the bus is there", fakesystemd.Start(t, addr, map[string]string{"zincati.service": "done"}), 1)
	kill()
	expectNoBus("after the bus went")
	fakesystemd.StartBusAt(t, path)
	expectWorks("with a new bus at the same address", fakesystemd.Start(t, addr, map[string]string{"zincati.service": "done"}), 1)
}
