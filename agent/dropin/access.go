package dropin

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ZincatiUser is the user Zincati runs as on Fedora CoreOS.
const ZincatiUser = "zincati"

// userDatabases are where a host keeps its users and groups: /etc, and
// /usr/lib for the nss-altfiles that Fedora CoreOS also reads.
var userDatabases = []string{"etc", "usr/lib"}

// ErrNoZincatiGroup says the host's user database names no Zincati user or
// group.
var ErrNoZincatiGroup = errors.New("the host has no zincati user or group")

// ZincatiAccess returns the Access for a drop-in that holds a secret on the
// host whose / is root: mode 0640, group the Zincati user's primary group
// (from passwd) or else the group named zincati (from group). It returns
// ErrNoZincatiGroup when the host's database has neither.
func ZincatiAccess(root string) (Access, error) {
	for _, db := range []struct {
		file  string
		field int // the GID's field: passwd name:x:uid:gid…, group name:x:gid:…
	}{{"passwd", 3}, {"group", 2}} {
		for _, dir := range userDatabases {
			gid, err := lookup(filepath.Join(root, dir, db.file), ZincatiUser, db.field)
			if err != nil {
				return Access{}, err
			}
			if gid >= 0 {
				return Access{Mode: 0o640, GID: gid}, nil
			}
		}
	}
	return Access{}, ErrNoZincatiGroup
}

// lookup returns the numeric field of name's line in a colon-separated
// database, or -1 if the file or the name is missing.
func lookup(path, name string, field int) (int, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return -1, nil
	}
	if err != nil {
		return -1, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.Split(sc.Text(), ":")
		if len(parts) <= field || parts[0] != name {
			continue
		}
		id, err := strconv.Atoi(parts[field])
		if err != nil || id < 0 {
			return -1, fmt.Errorf("read %s: %s has a bad id %q", path, name, parts[field])
		}
		return id, nil
	}
	if err := sc.Err(); err != nil {
		return -1, fmt.Errorf("read %s: %w", path, err)
	}
	return -1, nil
}
