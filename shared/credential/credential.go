// Package credential is a host's FleetLock credential: a random secret that
// the agent writes into Zincati's base_url as the password of its user info
// (Zincati sends it as HTTP Basic auth), and whose SHA-256 it publishes on
// the Node, so that the arbiter can tell the host's own requests from
// anybody else's without ever holding the secret.
package credential

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/url"
)

// Size is the secret's length in random bytes; it is written as twice as
// many lowercase hex digits, which need no escaping in a URL.
const Size = 32

// New returns a new secret from the system's random source.
func New() (string, error) {
	b := make([]byte, Size)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("make a credential: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// Valid reports whether s has the form New gives.
func Valid(s string) bool {
	if len(s) != 2*Size {
		return false
	}
	for _, c := range []byte(s) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// Hash is what the Node publishes for a secret: its SHA-256 in lowercase
// hex.
func Hash(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// ValidHash reports whether h has the form Hash gives.
func ValidHash(h string) bool { return Valid(h) } // also 64 lowercase hex digits

// Matches reports whether presented hashes to one of hashes (empty ones are
// skipped). Every comparison runs, in constant time, so neither the timing
// nor the order tells which hash matched or how much of one.
func Matches(presented string, hashes ...string) bool {
	got := []byte(Hash(presented))
	ok := 0
	for _, h := range hashes {
		if h == "" {
			continue
		}
		ok |= subtle.ConstantTimeCompare(got, []byte(h))
	}
	return ok == 1
}

// InURL returns baseURL with user and secret as its user info.
func InURL(baseURL, user, secret string) (string, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return "", fmt.Errorf("parse the base URL: %w", err)
	}
	u.User = url.UserPassword(user, secret)
	return u.String(), nil
}

// FromURL returns the secret in rawURL's user info, or "" if it has none
// of the form New gives.
func FromURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.User == nil {
		return ""
	}
	if s, ok := u.User.Password(); ok && Valid(s) {
		return s
	}
	return ""
}

// Redact returns rawURL without its user info, for logs.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparsable URL)"
	}
	if u.User == nil {
		return rawURL
	}
	u.User = nil
	return u.String()
}
