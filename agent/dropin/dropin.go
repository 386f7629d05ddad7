// Package dropin renders Zincati's FleetLock drop-in, reads back the
// credential in it, and writes it atomically, only when its bytes change,
// readable by Zincati's user and no one else.
package dropin

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/BurntSushi/toml"

	"github.com/rebootmanager/reboot-manager/shared/credential"
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
	// User and Secret, when Secret is set, go into the base URL's user
	// info, which Zincati sends as HTTP Basic auth: the host's credential.
	User, Secret string
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
	base := strings.TrimSuffix(s.BaseURL, "/") + "/"
	if s.Secret != "" {
		var err error
		if base, err = credential.InURL(base, s.User, s.Secret); err != nil {
			return nil, fmt.Errorf("render the Zincati drop-in: %w", err)
		}
	}
	doc := document{Updates: updates{Strategy: "fleet_lock", FleetLock: fleetLock{BaseURL: base}}}
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

// Secret returns the credential in dir/name's base URL: "" when the file
// is missing, does not parse, or carries none.
func Secret(dir, name string) (string, error) {
	path := filepath.Join(dir, name)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	var doc document
	if _, err := toml.Decode(string(b), &doc); err != nil {
		return "", nil // rewritten anyway
	}
	return credential.FromURL(doc.Updates.FleetLock.BaseURL), nil
}

// Access is who may read the drop-in: root owns it, with Mode, and group
// GID unless GID is negative (then the group is left as created).
type Access struct {
	Mode fs.FileMode
	GID  int
}

// Public is world-readable: for a drop-in that holds no secret, or a host
// whose Zincati group is unknown.
var Public = Access{Mode: 0o644, GID: -1}

// Write puts content at dir/name unless the file already holds exactly
// those bytes. It writes a temporary file in dir, with acc's owner and mode
// from the start, syncs it and renames it over the target, so Zincati never
// reads half a file and no one else ever reads it at all. A file whose
// bytes are right but whose owner or mode is not gets them fixed in place.
// It reports whether the bytes changed.
func Write(dir, name string, content []byte, acc Access) (bool, error) {
	path := filepath.Join(dir, name)
	old, err := os.ReadFile(path)
	if err == nil && bytes.Equal(old, content) {
		return false, fixAccess(path, acc)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // a no-op after the rename
	// CreateTemp made it 0600: set the owner and mode before the secret is in.
	if acc.GID >= 0 {
		if err := tmp.Chown(-1, acc.GID); err != nil {
			tmp.Close()
			return false, fmt.Errorf("chown %s: %w", tmp.Name(), err)
		}
	}
	if err := tmp.Chmod(acc.Mode); err != nil {
		tmp.Close()
		return false, fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if _, err := tmp.Write(content); err != nil {
		tmp.Close()
		return false, fmt.Errorf("write %s: %w", tmp.Name(), err)
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

// fixAccess gives path acc's group and mode where it lacks them.
func fixAccess(path string, acc Access) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && acc.GID >= 0 && int(st.Gid) != acc.GID {
		if err := os.Chown(path, -1, acc.GID); err != nil {
			return fmt.Errorf("chown %s: %w", path, err)
		}
	}
	if fi.Mode().Perm() != acc.Mode {
		if err := os.Chmod(path, acc.Mode); err != nil {
			return fmt.Errorf("chmod %s: %w", path, err)
		}
	}
	return nil
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
