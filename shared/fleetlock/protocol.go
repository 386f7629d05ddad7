// Package fleetlock is the FleetLock v1 protocol as Zincati speaks it: the
// request and error bodies, the fixed set of error kinds and their HTTP
// statuses, request decoding and validation, and a small client that sends
// exactly what Zincati sends.
package fleetlock

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
)

// Header is the header every FleetLock request must carry with the value "true".
const Header = "fleet-lock-protocol"

// DefaultGroup is the group Zincati names when its configuration sets
// none.
const DefaultGroup = "default"

// Paths of the two operations, relative to the server's base URL.
const (
	PreRebootPath   = "v1/pre-reboot"
	SteadyStatePath = "v1/steady-state"
)

// Limits on what a request may carry.
const (
	// MaxBodyBytes bounds the request body.
	MaxBodyBytes = 64 << 10
	// MaxIDLength bounds the client id.
	MaxIDLength = 256
)

// ClientParams identifies the client: its Zincati id and its reboot group.
type ClientParams struct {
	ID    string `json:"id"`
	Group string `json:"group"`
}

// Request is the body of both operations.
type Request struct {
	ClientParams ClientParams `json:"client_params"`
}

// Kind classifies an error reply. Zincati uses it as a Prometheus label, so
// the set is small and fixed.
type Kind string

// The error kinds this server answers with.
const (
	KindMissingHeader    Kind = "missing_header"
	KindBadRequest       Kind = "bad_request"
	KindMethodNotAllowed Kind = "method_not_allowed"
	KindNotFound         Kind = "not_found"
	KindLockHeld         Kind = "lock_held"
	KindDrainInProgress  Kind = "drain_in_progress"
	KindDrainFailed      Kind = "drain_failed"
	KindUnknownNode      Kind = "unknown_node"
	KindAmbiguousID      Kind = "ambiguous_id"
	KindWrongGroup       Kind = "wrong_group"
	KindTooManyGroups    Kind = "too_many_groups"
	KindPaused           Kind = "paused"
	KindHalted           Kind = "halted"
	KindOutsideWindow    Kind = "outside_window"
	KindBlocked          Kind = "blocked"
	KindMinGap           Kind = "min_gap"
	KindForbiddenSource  Kind = "forbidden_source"
	KindUnauthorized     Kind = "unauthorized"
	KindInternal         Kind = "internal"
	KindUnavailable      Kind = "unavailable"
)

// Kinds lists every kind, in the order the README documents them.
var Kinds = []Kind{
	KindMissingHeader, KindBadRequest, KindMethodNotAllowed, KindNotFound,
	KindLockHeld, KindDrainInProgress, KindDrainFailed, KindPaused, KindHalted, KindOutsideWindow, KindBlocked, KindMinGap,
	KindUnknownNode, KindAmbiguousID, KindWrongGroup, KindTooManyGroups, KindUnauthorized, KindForbiddenSource, KindInternal, KindUnavailable,
}

// Status returns the HTTP status a reply of this kind carries. None is 2xx:
// Zincati reboots on any 2xx. Unknown kinds map to 500.
func (k Kind) Status() int {
	switch k {
	case KindMissingHeader, KindBadRequest:
		return http.StatusBadRequest
	case KindMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case KindNotFound, KindUnknownNode:
		return http.StatusNotFound
	case KindUnauthorized:
		return http.StatusUnauthorized
	case KindForbiddenSource:
		return http.StatusForbidden
	case KindAmbiguousID, KindWrongGroup, KindTooManyGroups:
		return http.StatusConflict
	case KindLockHeld, KindDrainInProgress, KindDrainFailed, KindPaused, KindHalted, KindOutsideWindow, KindBlocked, KindMinGap:
		return http.StatusLocked
	case KindUnavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// Error is the body of every non-2xx reply: {"kind": "...", "value": "..."}.
// Zincati logs Value.
type Error struct {
	Kind  Kind   `json:"kind"`
	Value string `json:"value"`
}

// Errorf returns an *Error of the given kind with a formatted value.
func Errorf(kind Kind, format string, args ...any) *Error {
	return &Error{Kind: kind, Value: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string { return string(e.Kind) + ": " + e.Value }

// KindOf returns the kind of the first *Error in err's chain, or KindInternal.
func KindOf(err error) Kind {
	var fe *Error
	if errors.As(err, &fe) {
		return fe.Kind
	}
	return KindInternal
}

var groupPattern = regexp.MustCompile(`^[a-zA-Z0-9.-]+$`)

// ValidGroup reports whether g is a legal FleetLock group name.
func ValidGroup(g string) bool { return groupPattern.MatchString(g) }

// Decode reads a request body, whatever its Content-Type, and validates it.
// Unknown fields are ignored. Every failure is a bad_request *Error.
func Decode(r io.Reader) (ClientParams, error) {
	body, err := io.ReadAll(io.LimitReader(r, MaxBodyBytes+1))
	if err != nil {
		return ClientParams{}, Errorf(KindBadRequest, "reading the body: %v", err)
	}
	if len(body) > MaxBodyBytes {
		return ClientParams{}, Errorf(KindBadRequest, "body is larger than %d bytes", MaxBodyBytes)
	}
	var req struct {
		ClientParams *ClientParams `json:"client_params"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return ClientParams{}, Errorf(KindBadRequest, `body is not FleetLock JSON {"client_params":{"id":"…","group":"…"}}: %v`, err)
	}
	if req.ClientParams == nil {
		return ClientParams{}, Errorf(KindBadRequest, `body has no "client_params" object`)
	}
	p := *req.ClientParams
	return p, p.Validate()
}

// Validate checks the id and group, returning a bad_request *Error.
func (p ClientParams) Validate() error {
	switch {
	case p.ID == "":
		return Errorf(KindBadRequest, "client_params.id is missing or empty")
	case len(p.ID) > MaxIDLength:
		return Errorf(KindBadRequest, "client_params.id is longer than %d characters", MaxIDLength)
	case p.Group == "":
		return Errorf(KindBadRequest, "client_params.group is missing or empty")
	case !ValidGroup(p.Group):
		return Errorf(KindBadRequest, "client_params.group %q does not match ^[a-zA-Z0-9.-]+$", truncate(p.Group, 64))
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
