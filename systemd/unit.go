// Package systemd is the agent's host integration: it restarts a unit over
// the system D-Bus and waits for the job's result, reads a unit's state,
// and logs to the journal.
package systemd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	sdbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
)

// Manager talks to systemd's manager on the system bus
// ($DBUS_SYSTEM_BUS_ADDRESS, by default /run/dbus/system_bus_socket).
type Manager struct {
	conn *sdbus.Conn
}

// Connect opens a connection to systemd on the system bus.
func Connect(ctx context.Context) (*Manager, error) {
	return ConnectAddress(ctx, "")
}

// ConnectAddress opens a connection to systemd on the bus at addr, a D-Bus
// address such as unix:path=/host/run/dbus/system_bus_socket; "" is the
// system bus. The connection lives until Close or until ctx ends.
func ConnectAddress(ctx context.Context, addr string) (*Manager, error) {
	dial := func() (*dbus.Conn, error) {
		var conn *dbus.Conn
		var err error
		if addr == "" {
			conn, err = dbus.SystemBusPrivate(dbus.WithContext(ctx))
		} else {
			conn, err = dbus.Dial(addr, dbus.WithContext(ctx))
		}
		if err != nil {
			return nil, err
		}
		// EXTERNAL with the numeric uid: no user lookup, which a static
		// binary could not do.
		if err := conn.Auth([]dbus.Auth{dbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
			conn.Close()
			return nil, err
		}
		if err := conn.Hello(); err != nil {
			conn.Close()
			return nil, err
		}
		return conn, nil
	}
	conn, err := sdbus.NewConnection(dial)
	if err != nil {
		where := "the system bus"
		if addr != "" {
			where = addr
		}
		return nil, fmt.Errorf("connect to systemd on %s: %w", where, err)
	}
	return &Manager{conn: conn}, nil
}

// Close closes the connection.
func (m *Manager) Close() { m.conn.Close() }

// Connected reports whether the connection is still open.
func (m *Manager) Connected() bool { return m.conn.Connected() }

// UnitState is what systemd says of a unit.
type UnitState struct {
	// Load is its LoadState: "loaded", "not-found", "masked", …
	Load string
	// Active and Sub are its ActiveState ("active", "inactive", "failed",
	// "activating", "deactivating", "reloading") and SubState.
	Active, Sub string
	// ActiveEnter is when it last entered the active state (its
	// ActiveEnterTimestamp); zero when it never did in this boot.
	ActiveEnter time.Time
	// ActiveEnterKnown is false when systemd did not say.
	ActiveEnterKnown bool
}

// Exists reports whether systemd knows the unit at all.
func (s UnitState) Exists() bool { return s.Load != "" && s.Load != "not-found" }

// Stopped reports whether the unit is stopped, or being stopped, without
// having failed: an administrator's `systemctl stop`, or a unit nothing
// started.
func (s UnitState) Stopped() bool { return s.Active == "inactive" || s.Active == "deactivating" }

// Unit reads unit's LoadState, ActiveState, SubState and
// ActiveEnterTimestamp.
func (m *Manager) Unit(ctx context.Context, unit string) (UnitState, error) {
	var s UnitState
	for _, p := range []struct {
		name string
		dst  *string
	}{{"LoadState", &s.Load}, {"ActiveState", &s.Active}, {"SubState", &s.Sub}} {
		v, err := m.conn.GetUnitPropertyContext(ctx, unit, p.name)
		if err != nil {
			return UnitState{}, fmt.Errorf("read %s of %s: %w", p.name, unit, err)
		}
		str, ok := v.Value.Value().(string)
		if !ok {
			return UnitState{}, fmt.Errorf("read %s of %s: not a string but %s", p.name, unit, v.Value.Signature())
		}
		*p.dst = str
	}
	v, err := m.conn.GetUnitPropertyContext(ctx, unit, "ActiveEnterTimestamp")
	var dbusErr dbus.Error
	switch {
	case errors.As(err, &dbusErr) && dbusErr.Name == "org.freedesktop.DBus.Error.UnknownProperty":
		return s, nil
	case err != nil:
		return UnitState{}, fmt.Errorf("read ActiveEnterTimestamp of %s: %w", unit, err)
	}
	usec, ok := v.Value.Value().(uint64)
	if !ok {
		return UnitState{}, fmt.Errorf("read ActiveEnterTimestamp of %s: not a uint64 but %s", unit, v.Value.Signature())
	}
	s.ActiveEnterKnown = true
	if usec != 0 {
		s.ActiveEnter = time.UnixMicro(int64(usec))
	}
	return s, nil
}

// Restart restarts unit (mode "replace") and waits for the job to finish.
// A job result other than "done" is an error that carries the unit's
// ActiveState and SubState.
func (m *Manager) Restart(ctx context.Context, unit string) error {
	results := make(chan string, 1)
	if _, err := m.conn.RestartUnitContext(ctx, unit, "replace", results); err != nil {
		return fmt.Errorf("restart %s: %w", unit, err)
	}
	select {
	case result := <-results:
		if result == "done" {
			return nil
		}
		return fmt.Errorf("restart %s: job %s (%s)", unit, result, m.state(ctx, unit))
	case <-ctx.Done():
		return fmt.Errorf("restart %s: waiting for the job: %w", unit, ctx.Err())
	}
}

// state describes the unit's state for an error message.
func (m *Manager) state(ctx context.Context, unit string) string {
	active, err := m.conn.GetUnitPropertyContext(ctx, unit, "ActiveState")
	if err != nil {
		return "state unknown: " + err.Error()
	}
	sub, err := m.conn.GetUnitPropertyContext(ctx, unit, "SubState")
	if err != nil {
		return "ActiveState " + active.Value.String()
	}
	return fmt.Sprintf("ActiveState %s, SubState %s", active.Value.Value(), sub.Value.Value())
}

// BootCompleteTarget is the target that units checking a boot's health
// are RequiredBy; Zincati starts only once it is reached.
const BootCompleteTarget = "boot-complete.target"

// Values of BootComplete.
const (
	BootReached = "reached"
	BootPending = "pending"
	BootFailed  = "failed"
)

// BootComplete reports how boot-complete.target stands in this boot:
// BootReached once it is active; BootPending while a job for it is queued
// or the system is still starting; BootFailed when it is neither and a unit
// it requires has failed (so it never became active, and Zincati never
// started). It returns "" when the host has no such target, or when this
// boot never asked for it (inactive, no job, nothing it requires failed).
func (m *Manager) BootComplete(ctx context.Context) (string, error) {
	get := func(prop string) (any, error) {
		p, err := m.conn.GetUnitPropertyContext(ctx, BootCompleteTarget, prop)
		if err != nil {
			return nil, fmt.Errorf("read %s of %s: %w", prop, BootCompleteTarget, err)
		}
		return p.Value.Value(), nil
	}
	load, err := get("LoadState")
	if err != nil {
		return "", err
	}
	if load != "loaded" {
		return "", nil
	}
	active, err := get("ActiveState")
	if err != nil {
		return "", err
	}
	if active == "active" {
		return BootReached, nil
	}
	job, err := get("Job")
	if err != nil {
		return "", err
	}
	if j, ok := job.([]any); ok && len(j) > 0 {
		if id, ok := j[0].(uint32); ok && id != 0 {
			return BootPending, nil
		}
	}
	state, err := m.conn.SystemStateContext(ctx)
	if err != nil {
		return "", fmt.Errorf("read the system state: %w", err)
	}
	if s := state.Value.Value(); s == "initializing" || s == "starting" {
		return BootPending, nil
	}
	// Inactive with no job: failed if a unit it requires failed; else this
	// boot never asked for it (nothing pulls it in), which says nothing.
	reqs, err := get("Requires")
	if err != nil {
		return "", err
	}
	names, _ := reqs.([]string)
	for _, u := range names {
		p, err := m.conn.GetUnitPropertyContext(ctx, u, "ActiveState")
		if err != nil {
			return "", fmt.Errorf("read ActiveState of %s: %w", u, err)
		}
		if p.Value.Value() == "failed" {
			return BootFailed, nil
		}
	}
	return "", nil
}

// ErrNoBus is wrapped by every error of a Bus that could not reach systemd
// at all: no socket, no bus daemon, or a connection that was lost.
var ErrNoBus = errors.New("systemd is not reachable on the system bus")

// Bus is systemd on a bus that may come and go: it connects on first use,
// and again on the next call after the connection is lost, so that a
// caller started before D-Bus, or across a restart of dbus-daemon, needs
// no connection of its own. It is safe for concurrent use.
type Bus struct {
	ctx  context.Context
	addr string
	mu   sync.Mutex
	m    *Manager
}

// NewBus returns a Bus for the bus at addr ("" for the system bus). Its
// connections live until ctx ends or Close.
func NewBus(ctx context.Context, addr string) *Bus {
	return &Bus{ctx: ctx, addr: addr}
}

// manager returns a connected Manager, connecting when there is none.
func (b *Bus) manager() (*Manager, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m != nil && b.m.Connected() {
		return b.m, nil
	}
	if b.m != nil {
		b.m.Close()
		b.m = nil
	}
	m, err := ConnectAddress(b.ctx, b.addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoBus, err)
	}
	b.m = m
	return m, nil
}

// call runs f on a connected Manager; an error after which the connection
// is gone wraps ErrNoBus, and the next call connects again.
func (b *Bus) call(f func(m *Manager) error) error {
	m, err := b.manager()
	if err != nil {
		return err
	}
	err = f(m)
	if err == nil || errors.Is(err, ErrNoBus) {
		return err
	}
	// A write to a bus that just went fails before the connection's reader
	// has seen it go: Connected still says true for a moment.
	if !m.Connected() || lost(err) {
		b.drop(m)
		return fmt.Errorf("%w: %w", ErrNoBus, err)
	}
	return err
}

// lost reports whether err says the connection itself failed.
func lost(err error) bool {
	for _, e := range []error{syscall.EPIPE, syscall.ECONNRESET, io.EOF, io.ErrUnexpectedEOF, net.ErrClosed, dbus.ErrClosed} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// drop closes m if it is still the current connection.
func (b *Bus) drop(m *Manager) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == m {
		b.m.Close()
		b.m = nil
	}
}

// Restart is Manager.Restart.
func (b *Bus) Restart(ctx context.Context, unit string) error {
	return b.call(func(m *Manager) error { return m.Restart(ctx, unit) })
}

// BootComplete is Manager.BootComplete.
func (b *Bus) BootComplete(ctx context.Context) (string, error) {
	var state string
	err := b.call(func(m *Manager) (err error) { state, err = m.BootComplete(ctx); return err })
	return state, err
}

// Unit is Manager.Unit.
func (b *Bus) Unit(ctx context.Context, unit string) (UnitState, error) {
	var s UnitState
	err := b.call(func(m *Manager) (err error) { s, err = m.Unit(ctx, unit); return err })
	return s, err
}

// Close closes the current connection, if any.
func (b *Bus) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m != nil {
		b.m.Close()
		b.m = nil
	}
}
