// Package tokens holds the per-group request tokens, read from a watched
// Secret: each key is a group, and the key DefaultKey covers every group
// without a key of its own. No Secret, or no key for a group, means the
// group needs no token.
package tokens

import (
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
)

// DefaultKey is the Secret key whose token every group without its own key
// requires. The underscore cannot occur in a FleetLock group.
const DefaultKey = "_default"

// Store is the current tokens, safe for concurrent use.
type Store struct {
	mu     sync.RWMutex
	tokens map[string]string
}

// NewStore returns a Store that requires no token.
func NewStore() *Store { return &Store{} }

// Set replaces the tokens from the Secret, or clears them when s is nil
// (deleted). Surrounding white space in a value is ignored, so a token
// written with a trailing newline still matches.
func (s *Store) Set(secret *corev1.Secret) {
	tokens := map[string]string{}
	if secret != nil {
		for k, v := range secret.Data {
			if t := strings.TrimSpace(string(v)); t != "" {
				tokens[k] = t
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens = tokens
}

// For returns the token group's requests must carry, or "" for none.
func (s *Store) For(group string) string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if t, ok := s.tokens[group]; ok {
		return t
	}
	return s.tokens[DefaultKey]
}
