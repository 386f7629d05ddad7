// Package groups holds the per-group reboot settings (slots for now) read
// from a watched ConfigMap, so a change takes effect on the next request
// without a restart.
package groups

import (
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// ConfigKey is the ConfigMap key that holds the settings.
const ConfigKey = "config.yaml"

// Settings are one group's settings.
type Settings struct {
	// Slots is how many nodes of the group may reboot at once.
	Slots int `json:"slots"`
}

// Config is the whole document under ConfigKey:
//
//	defaults:
//	  slots: 1
//	groups:
//	  workers:
//	    slots: 2
type Config struct {
	Defaults Settings            `json:"defaults"`
	Groups   map[string]Settings `json:"groups"`
}

// Default is the configuration when the ConfigMap is missing: one slot for
// every group, as the original FleetLock servers have.
func Default() Config { return Config{Defaults: Settings{Slots: 1}} }

// Parse reads a ConfigMap's settings. A missing key gives Default; a
// malformed document is an error and should not replace a good one.
func Parse(cm *corev1.ConfigMap) (Config, error) {
	raw, ok := cm.Data[ConfigKey]
	if !ok {
		return Default(), nil
	}
	cfg := Default()
	if err := yaml.UnmarshalStrict([]byte(raw), &cfg); err != nil {
		return Config{}, fmt.Errorf("parse %s/%s key %s: %w", cm.Namespace, cm.Name, ConfigKey, err)
	}
	if cfg.Defaults.Slots < 0 {
		return Config{}, fmt.Errorf("parse %s/%s: defaults.slots is %d, want 0 or more", cm.Namespace, cm.Name, cfg.Defaults.Slots)
	}
	for g, s := range cfg.Groups {
		if s.Slots < 0 {
			return Config{}, fmt.Errorf("parse %s/%s: groups.%s.slots is %d, want 0 or more", cm.Namespace, cm.Name, g, s.Slots)
		}
	}
	return cfg, nil
}

// For returns a group's settings.
func (c Config) For(group string) Settings {
	if s, ok := c.Groups[group]; ok {
		return s
	}
	return c.Defaults
}

// Store is the current configuration, safe for concurrent use. Feed it from
// a ConfigMap informer with Set.
type Store struct {
	mu  sync.RWMutex
	cfg Config
	err error
}

// NewStore returns a Store holding Default.
func NewStore() *Store { return &Store{cfg: Default()} }

// Set replaces the configuration from a ConfigMap, or with Default when cm
// is nil (deleted). A malformed ConfigMap keeps the last good configuration
// and is reported by Err.
func (s *Store) Set(cm *corev1.ConfigMap) error {
	cfg := Default()
	var err error
	if cm != nil {
		cfg, err = Parse(cm)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
	if err == nil {
		s.cfg = cfg
	}
	return err
}

// For returns a group's current settings.
func (s *Store) For(group string) Settings {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cfg.For(group)
}

// Err returns why the last ConfigMap was rejected, or nil.
func (s *Store) Err() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.err
}
