// Package groups holds the per-group reboot settings (slots, pause,
// maintenance windows, a minimum gap, blockers) read from a watched
// ConfigMap, so a change takes effect on the next request without a
// restart.
package groups

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// ConfigKey is the ConfigMap key that holds the settings.
const ConfigKey = "config.yaml"

// Settings are one group's settings.
type Settings struct {
	// Slots is how many nodes of the group may reboot at once.
	Slots int `json:"slots"`
	// Paused stops new slots from being granted; holders finish.
	Paused bool `json:"paused,omitempty"`
	// Windows, when any, are the only times a slot may be granted.
	Windows []Window `json:"windows,omitempty"`
	// MinGap is the least time between two slot grants in the group.
	MinGap metav1.Duration `json:"minGap,omitempty"`
	// Blockers are pod conditions that hold back any new slot.
	Blockers []Blocker `json:"blockers,omitempty"`
	// Settle is how long a rebooted node must stay Ready, once back, before
	// its slot passes on.
	Settle metav1.Duration `json:"settle,omitempty"`
	// HaltOnFailure, true unless set false, halts the group when a node's
	// boot fails, its update is not applied, or it does not come back.
	HaltOnFailure *bool `json:"haltOnFailure,omitempty"`
	// DrainTimeout is how long a drain may take before DrainTimeoutAction
	// applies; unset, the arbiter's --drain-timeout.
	DrainTimeout metav1.Duration `json:"drainTimeout,omitempty"`
	// DrainTimeoutAction is what a drain past its timeout does: "yield"
	// (the default) gives its slot back, uncordons the node and turns it
	// away for DrainCoolOff; "wait" goes on draining, with a Warning Event.
	DrainTimeoutAction string `json:"drainTimeoutAction,omitempty"`
	// DrainCoolOff is how long a node whose drain yielded is turned away
	// (default 1h).
	DrainCoolOff metav1.Duration `json:"drainCoolOff,omitempty"`

	windows []window // Windows, parsed by Parse
}

// What a drain past its timeout does.
const (
	DrainYield = "yield"
	DrainWait  = "wait"
)

// DefaultDrainCoolOff is how long a node whose drain yielded is turned
// away when its group sets no drainCoolOff.
const DefaultDrainCoolOff = time.Hour

// Yields reports whether a drain past its timeout gives its slot back.
func (s Settings) Yields() bool { return s.DrainTimeoutAction != DrainWait }

// CoolOff is how long a node whose drain yielded is turned away.
func (s Settings) CoolOff() time.Duration {
	if s.DrainCoolOff.Duration > 0 {
		return s.DrainCoolOff.Duration
	}
	return DefaultDrainCoolOff
}

// Window is a weekly maintenance window. An End at or before Start crosses
// midnight into the next day; Days name the day the window opens.
type Window struct {
	// Days are the days the window opens: Mon, Tue, Wed, Thu, Fri, Sat, Sun.
	// Empty means every day.
	Days []string `json:"days,omitempty"`
	// Start and End are times of day, "HH:MM".
	Start string `json:"start"`
	End   string `json:"end"`
	// TimeZone is an IANA zone such as Europe/Berlin; empty means UTC.
	TimeZone string `json:"timeZone,omitempty"`
}

// Blocker holds back new slots while pods matching Selector are in the way.
type Blocker struct {
	// Namespace limits the pods; empty means every namespace.
	Namespace string `json:"namespace,omitempty"`
	// Selector is a label selector, such as "app=ceph-osd".
	Selector string `json:"selector"`
	// Scope is "cluster" (the default): blocked while any matching pod is
	// not Ready; or "node": blocked while a matching pod is on the node that
	// asks.
	Scope string `json:"scope,omitempty"`
}

// Blocker scopes.
const (
	ScopeCluster = "cluster"
	ScopeNode    = "node"
)

// Config is the whole document under ConfigKey:
//
//	paused: false            # true pauses every group
//	defaults:
//	  slots: 1
//	groups:
//	  workers:
//	    slots: 2
//	    windows: [{days: [Sat, Sun], start: "02:00", end: "06:00", timeZone: Europe/Berlin}]
//	    minGap: 10m
//	    blockers: [{namespace: rook-ceph, selector: app=rook-ceph-osd}]
//
// A group's settings are the defaults with the group's own fields laid
// over them.
type Config struct {
	Paused   bool                `json:"paused,omitempty"`
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
	var doc struct {
		Paused   bool                       `json:"paused"`
		Defaults json.RawMessage            `json:"defaults"`
		Groups   map[string]json.RawMessage `json:"groups"`
	}
	where := fmt.Sprintf("%s/%s key %s", cm.Namespace, cm.Name, ConfigKey)
	if err := yaml.UnmarshalStrict([]byte(raw), &doc); err != nil {
		return Config{}, fmt.Errorf("parse %s: %w", where, err)
	}
	cfg := Default()
	cfg.Paused = doc.Paused
	if err := overlay(&cfg.Defaults, doc.Defaults); err != nil {
		return Config{}, fmt.Errorf("parse %s: defaults: %w", where, err)
	}
	cfg.Groups = make(map[string]Settings, len(doc.Groups))
	for name, rawGroup := range doc.Groups {
		s := cfg.Defaults.clone()
		if err := overlay(&s, rawGroup); err != nil {
			return Config{}, fmt.Errorf("parse %s: groups.%s: %w", where, name, err)
		}
		cfg.Groups[name] = s
	}
	return cfg, nil
}

// overlay decodes raw over s, strictly, and validates the result.
func overlay(s *Settings, raw json.RawMessage) error {
	if len(raw) > 0 && string(raw) != "null" {
		if err := yaml.UnmarshalStrict(raw, s); err != nil {
			return err
		}
	}
	return s.prepare()
}

func (s Settings) clone() Settings {
	s.Windows = slices.Clone(s.Windows)
	s.windows = slices.Clone(s.windows)
	s.Blockers = slices.Clone(s.Blockers)
	return s
}

// prepare validates s and parses its windows.
func (s *Settings) prepare() error {
	if s.Slots < 0 {
		return fmt.Errorf("slots is %d, want 0 or more", s.Slots)
	}
	if s.MinGap.Duration < 0 {
		return fmt.Errorf("minGap is %s, want 0 or more", s.MinGap.Duration)
	}
	if s.Settle.Duration < 0 {
		return fmt.Errorf("settle is %s, want 0 or more", s.Settle.Duration)
	}
	if s.DrainTimeout.Duration < 0 {
		return fmt.Errorf("drainTimeout is %s, want 0 (the arbiter's --drain-timeout) or more", s.DrainTimeout.Duration)
	}
	if s.DrainCoolOff.Duration < 0 {
		return fmt.Errorf("drainCoolOff is %s, want 0 (1h) or more", s.DrainCoolOff.Duration)
	}
	if a := s.DrainTimeoutAction; a != "" && a != DrainYield && a != DrainWait {
		return fmt.Errorf("drainTimeoutAction %q, want %s or %s", a, DrainYield, DrainWait)
	}
	s.windows = make([]window, len(s.Windows))
	for i, w := range s.Windows {
		p, err := w.parse()
		if err != nil {
			return fmt.Errorf("windows[%d]: %w", i, err)
		}
		s.windows[i] = p
	}
	for i, b := range s.Blockers {
		if _, err := labels.Parse(b.Selector); err != nil || b.Selector == "" {
			return fmt.Errorf("blockers[%d]: selector %q is not a label selector", i, b.Selector)
		}
		if b.Scope != "" && b.Scope != ScopeCluster && b.Scope != ScopeNode {
			return fmt.Errorf("blockers[%d]: scope %q, want %s or %s", i, b.Scope, ScopeCluster, ScopeNode)
		}
	}
	return nil
}

// HaltsOnFailure reports whether a failed cycle halts the group: true
// unless haltOnFailure is set false.
func (s Settings) HaltsOnFailure() bool { return s.HaltOnFailure == nil || *s.HaltOnFailure }

// For returns a group's settings.
func (c Config) For(group string) Settings {
	s, ok := c.Groups[group]
	if !ok {
		s = c.Defaults
	}
	if c.Paused {
		s.Paused = true
	}
	return s
}

var weekdays = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

// window is a Window, parsed.
type window struct {
	days       map[time.Weekday]bool // nil: every day
	start, end int                   // minutes after midnight
	loc        *time.Location
}

func (w Window) parse() (window, error) {
	var p window
	var err error
	if p.start, err = clock(w.Start); err != nil {
		return p, fmt.Errorf("start: %w", err)
	}
	if p.end, err = clock(w.End); err != nil {
		return p, fmt.Errorf("end: %w", err)
	}
	if p.loc, err = time.LoadLocation(w.TimeZone); err != nil {
		return p, fmt.Errorf("timeZone %q: %w", w.TimeZone, err)
	}
	if len(w.Days) > 0 {
		p.days = map[time.Weekday]bool{}
		for _, d := range w.Days {
			wd, ok := weekdays[strings.ToLower(d)]
			if !ok || len(d) != 3 {
				return p, fmt.Errorf("day %q, want Mon, Tue, Wed, Thu, Fri, Sat or Sun", d)
			}
			p.days[wd] = true
		}
	}
	return p, nil
}

func clock(s string) (int, error) {
	t, err := time.Parse("15:04", s)
	if err != nil {
		return 0, fmt.Errorf("%q is not HH:MM", s)
	}
	return t.Hour()*60 + t.Minute(), nil
}

// Open reports whether the windows allow a grant at t: true when there are
// no windows.
func (s Settings) Open(t time.Time) bool {
	if len(s.Windows) == 0 {
		return true
	}
	parsed := s.windows
	if len(parsed) != len(s.Windows) { // built by hand, not by Parse
		parsed = nil
		for _, w := range s.Windows {
			if p, err := w.parse(); err == nil {
				parsed = append(parsed, p)
			}
		}
	}
	for _, p := range parsed {
		if p.open(t) {
			return true
		}
	}
	return false
}

// OpensWithin returns the first minute within d after t at which the
// windows allow a grant, when there is one.
func (s Settings) OpensWithin(t time.Time, d time.Duration) (time.Time, bool) {
	start := t.Truncate(time.Minute)
	for at := start.Add(time.Minute); !at.After(t.Add(d)); at = at.Add(time.Minute) {
		if s.Open(at) {
			return at, true
		}
	}
	return time.Time{}, false
}

func (p window) open(t time.Time) bool {
	local := t.In(p.loc)
	now := local.Hour()*60 + local.Minute()
	day := func(d time.Weekday) bool { return p.days == nil || p.days[d] }
	if p.start < p.end {
		return day(local.Weekday()) && now >= p.start && now < p.end
	}
	// Crossing midnight (or a whole day when start == end).
	return (day(local.Weekday()) && now >= p.start) || (day(local.AddDate(0, 0, -1).Weekday()) && now < p.end)
}

// Store is the current configuration, safe for concurrent use. Feed it from
// a ConfigMap informer with Set. It fails closed: until a valid ConfigMap
// has been read, Ready returns an error (a paused group must never resume
// because its settings could not be read); after that, a deleted or
// malformed ConfigMap keeps the last good configuration.
type Store struct {
	name    string
	metrics *Metrics

	mu     sync.RWMutex
	cfg    Config
	loaded bool
	err    error
}

// NewStore returns a Store for the ConfigMap namespace/name that reports to
// m (nil: unregistered metrics).
func NewStore(namespace, name string, m *Metrics) *Store {
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Store{name: namespace + "/" + name, metrics: m}
}

// Set replaces the configuration from a ConfigMap; nil means it was
// deleted. A deleted or malformed ConfigMap keeps the last good
// configuration and is reported by Err and the metrics.
func (s *Store) Set(cm *corev1.ConfigMap) error {
	var cfg Config
	err := fmt.Errorf("ConfigMap %s was deleted", s.name)
	if cm != nil {
		cfg, err = Parse(cm)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
	if err != nil {
		s.metrics.rejected.Inc()
		return err
	}
	s.cfg, s.loaded = cfg, true
	s.metrics.valid.Set(1)
	return nil
}

// Ready returns nil once a valid configuration was read, or says why none
// has been.
func (s *Store) Ready() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	switch {
	case s.loaded:
		return nil
	case s.err != nil:
		return fmt.Errorf("the groups ConfigMap %s is not valid: %w", s.name, s.err)
	default:
		return fmt.Errorf("the groups ConfigMap %s does not exist; create it (deploy/ ships one)", s.name)
	}
}

// For returns a group's current settings; zero slots until Ready.
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
