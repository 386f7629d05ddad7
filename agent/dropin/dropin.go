// Package dropin renders Zincati's FleetLock drop-in and writes it
// atomically, only when its bytes change.
package dropin

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
)

// DefaultName sorts after the distro's 30-updates-strategy.toml, which sets
// strategy = "immediate".
const DefaultName = "55-reboot-manager.toml"

// Settings are what the drop-in says.
type Settings struct {
	// BaseURL is the arbiter's FleetLock base URL; Render adds the trailing
	// slash Zincati's URL join needs.
	BaseURL string
	// Group is Zincati's update group; empty leaves Zincati's default.
	Group string
}

type document struct {
	Updates  updates   `toml:"updates"`
	Identity *identity `toml:"identity,omitempty"`
}

type updates struct {
	Strategy  string    `toml:"strategy"`
	FleetLock fleetLock `toml:"fleet_lock"`
}

type fleetLock struct {
	BaseURL string `toml:"base_url"`
}

type identity struct {
	Group string `toml:"group"`
}

const header = "# Written by the reboot-manager agent; changes are overwritten.\n"

// Render returns the drop-in's bytes.
func Render(s Settings) ([]byte, error) {
	if s.BaseURL == "" {
		return nil, errors.New("render the Zincati drop-in: no base URL")
	}
	if s.Group != "" && !fleetlock.ValidGroup(s.Group) {
		return nil, fmt.Errorf("render the Zincati drop-in: group %q does not match ^[a-zA-Z0-9.-]+$", s.Group)
	}
	doc := document{Updates: updates{Strategy: "fleet_lock", FleetLock: fleetLock{BaseURL: strings.TrimSuffix(s.BaseURL, "/") + "/"}}}
	if s.Group != "" {
		doc.Identity = &identity{Group: s.Group}
	}
	var buf bytes.Buffer
	buf.WriteString(header)
	enc := toml.NewEncoder(&buf)
	enc.Indent = ""
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("render the Zincati drop-in: %w", err)
	}
	return buf.Bytes(), nil
}

// Write puts content at dir/name unless the file already holds exactly
// those bytes. It writes a temporary file in dir, syncs it and renames it
// over the target, so Zincati never reads half a file. It reports whether
// the file changed.
func Write(dir, name string, content []byte) (bool, error) {
	path := filepath.Join(dir, name)
	old, err := os.ReadFile(path)
	if err == nil && bytes.Equal(old, content) {
		return false, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // a no-op after the rename
	if _, err := tmp.Write(content); err != nil {
		tmp.Close()
		return false, fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return false, fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return false, fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return false, fmt.Errorf("rename %s to %s: %w", tmp.Name(), path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return true, nil
}

// Remove deletes dir/name, reporting whether it existed.
func Remove(dir, name string) (bool, error) {
	err := os.Remove(filepath.Join(dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("remove the Zincati drop-in: %w", err)
	}
	return true, nil
}
