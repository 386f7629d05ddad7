// Package systemd is the agent's host integration: it restarts a unit over
// the system D-Bus and waits for the job's result.
package systemd

import (
	"context"
	"fmt"

	sdbus "github.com/coreos/go-systemd/v22/dbus"
)

// Manager talks to systemd's manager on the system bus
// ($DBUS_SYSTEM_BUS_ADDRESS, by default /run/dbus/system_bus_socket).
type Manager struct {
	conn *sdbus.Conn
}

// Connect opens a connection to systemd on the system bus.
func Connect(ctx context.Context) (*Manager, error) {
	conn, err := sdbus.NewSystemConnectionContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to systemd on the system bus: %w", err)
	}
	return &Manager{conn: conn}, nil
}

// Close closes the connection.
func (m *Manager) Close() { m.conn.Close() }

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
