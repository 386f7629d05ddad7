// Package zincatiid derives the identifier Zincati reports to a FleetLock
// server from a host's machine id.
//
// Zincati does not send /etc/machine-id. It sends systemd's application-specific
// machine id (sd_id128_get_machine_app_specific) for Zincati's application id,
// which is what `systemd-id128 machine-id -a de35106b6ec24688b63afddaa156679b`
// prints on the host.
package zincatiid

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// AppID is Zincati's systemd application id.
const AppID = "de35106b6ec24688b63afddaa156679b"

var appID = mustParse(AppID)

// FromMachineID returns the Zincati id for a machine id. The machine id may
// be written with or without dashes and in either case, as kubelet's
// status.nodeInfo.machineID sometimes is; surrounding white space, such as the
// newline at the end of /etc/machine-id, is ignored.
func FromMachineID(machineID string) (string, error) {
	key, err := parse(machineID)
	if err != nil {
		return "", fmt.Errorf("parse machine id %q: %w", machineID, err)
	}
	mac := hmac.New(sha256.New, key[:])
	mac.Write(appID[:])
	var id [16]byte
	copy(id[:], mac.Sum(nil))
	// Make it a version 4, variant 1 UUID, as systemd's id128 does.
	id[6] = (id[6] & 0x0F) | 0x40
	id[8] = (id[8] & 0x3F) | 0x80
	return hex.EncodeToString(id[:]), nil
}

// parse reads a 128-bit id written as 32 hex digits, optionally with the
// four dashes of the UUID form.
func parse(s string) ([16]byte, error) {
	var id [16]byte
	s = strings.TrimSpace(s)
	if len(s) == 36 && s[8] == '-' && s[13] == '-' && s[18] == '-' && s[23] == '-' {
		s = s[:8] + s[9:13] + s[14:18] + s[19:23] + s[24:]
	}
	if len(s) != 32 {
		return id, fmt.Errorf("want 32 hex digits, got %d characters", len(s))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, err
	}
	var zero [16]byte
	if id == zero {
		return id, fmt.Errorf("the all-zero id is not a machine id")
	}
	return id, nil
}

func mustParse(s string) [16]byte {
	id, err := parse(s)
	if err != nil {
		panic(err)
	}
	return id
}
