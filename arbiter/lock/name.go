package lock

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"
)

// NamePrefix starts the name of every lock object.
const NamePrefix = "fleetlock-"

var plainGroup = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$`)

// ObjectName returns the name of the Lease that holds a group's semaphore.
//
// FleetLock groups match ^[a-zA-Z0-9.-]+$, so "Group-A", "a.b" and "-" are
// legal groups but not DNS labels. A group that is already a short lowercase
// DNS label maps to "fleetlock-<group>". Any other group maps to
// "fleetlock-<sanitized>.<hash>": the dot never occurs in the first form, so
// the two forms cannot collide, and the hash of the raw group keeps the
// second form unique. The raw group is also kept in an annotation, which
// Acquire checks.
func ObjectName(group string) string {
	if plainGroup.MatchString(group) {
		return NamePrefix + group
	}
	sum := sha256.Sum256([]byte(group))
	var b strings.Builder
	for _, r := range strings.ToLower(group) {
		if b.Len() >= 40 {
			break
		}
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '-' {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	s := strings.Trim(b.String(), "-")
	if s == "" {
		s = "x"
	}
	return NamePrefix + s + "." + hex.EncodeToString(sum[:8])
}
