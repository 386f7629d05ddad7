package groups

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

func TestStore(t *testing.T) {
	cm := func(doc string) *corev1.ConfigMap {
		return &corev1.ConfigMap{Data: map[string]string{ConfigKey: doc}}
	}
	tests := []struct {
		name    string
		cm      *corev1.ConfigMap
		group   string
		want    int
		wantErr bool
	}{
		{"deleted keeps last", nil, "any", 5, true},
		{"no key", &corev1.ConfigMap{}, "any", 1, false},
		{"default slots", cm("defaults: {slots: 3}"), "any", 3, false},
		{"group slots", cm("groups: {workers: {slots: 2}}"), "workers", 2, false},
		{"other group keeps default", cm("groups: {workers: {slots: 2}}"), "Group-A", 1, false},
		{"raw group names", cm("groups: {Group-A.1: {slots: 4}}"), "Group-A.1", 4, false},
		{"zero slots pauses", cm("groups: {db: {slots: 0}}"), "db", 0, false},
		{"negative rejected keeps last", cm("defaults: {slots: -1}"), "any", 5, true},
		{"unknown key rejected keeps last", cm("defaults: {slot: 2}"), "any", 5, true},
		{"not yaml rejected keeps last", cm("defaults: ["), "any", 5, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewStore("ns", "groups", nil)
			if err := s.Set(cm("defaults: {slots: 5}")); err != nil {
				t.Fatal(err)
			}
			err := s.Set(tt.cm)
			if (err != nil) != tt.wantErr || (s.Err() != nil) != tt.wantErr {
				t.Fatalf("Set() error = %v, Err() = %v, want error %v", err, s.Err(), tt.wantErr)
			}
			if got := s.For(tt.group).Slots; got != tt.want {
				t.Errorf("For(%q).Slots = %d, want %d", tt.group, got, tt.want)
			}
		})
	}
}

// TestStoreFailsClosed: until a valid ConfigMap was read, the store is not
// ready, whatever it was fed.
func TestStoreFailsClosed(t *testing.T) {
	tests := []struct {
		name  string
		feed  []*corev1.ConfigMap
		ready bool
	}{
		{"nothing read", nil, false},
		{"absent", []*corev1.ConfigMap{nil}, false},
		{"invalid", []*corev1.ConfigMap{{Data: map[string]string{ConfigKey: "defaults: ["}}}, false},
		{"valid", []*corev1.ConfigMap{{Data: map[string]string{ConfigKey: "groups: {db: {paused: true}}"}}}, true},
		{"valid then deleted", []*corev1.ConfigMap{{Data: map[string]string{ConfigKey: "groups: {db: {paused: true}}"}}, nil}, true},
		{"invalid then valid", []*corev1.ConfigMap{{Data: map[string]string{ConfigKey: "x: 1"}}, {}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewStore("ns", "groups", nil)
			for _, cm := range tt.feed {
				_ = s.Set(cm)
			}
			if err := s.Ready(); (err == nil) != tt.ready {
				t.Fatalf("Ready() = %v, want ready %v", err, tt.ready)
			}
			if tt.ready && tt.name != "invalid then valid" && !s.For("db").Paused {
				t.Error("db is not paused: the last good settings were lost")
			}
		})
	}
}

func TestParsePacing(t *testing.T) {
	doc := `
paused: false
defaults:
  slots: 1
  minGap: 10m
  windows: [{days: [Sat, Sun], start: "22:00", end: "04:00", timeZone: Europe/Berlin}]
groups:
  workers: {slots: 3}
  db: {paused: true, windows: [], settle: 2m, haltOnFailure: false, drainTimeout: 2h, drainTimeoutAction: wait, drainCoolOff: 30m}
  ceph: {blockers: [{namespace: rook-ceph, selector: "app=osd"}, {selector: "app=etcd", scope: node}]}
`
	cfg, err := Parse(&corev1.ConfigMap{Data: map[string]string{ConfigKey: doc}})
	if err != nil {
		t.Fatal(err)
	}
	w := cfg.For("workers")
	if w.Slots != 3 || w.MinGap.Duration != 10*time.Minute || len(w.Windows) != 1 {
		t.Errorf("workers = %+v, want 3 slots over the defaults' gap and window", w)
	}
	if db := cfg.For("db"); !db.Paused || len(db.Windows) != 0 || db.Slots != 1 || db.Settle.Duration != 2*time.Minute || db.HaltsOnFailure() {
		t.Errorf("db = %+v, want paused, no windows, the default slot, a 2m settle, no halts", db)
	}
	if w.Settle.Duration != 0 || !w.HaltsOnFailure() {
		t.Errorf("workers = %+v, want no settle time and halts on failure by default", w)
	}
	if db := cfg.For("db"); db.DrainTimeout.Duration != 2*time.Hour || db.Yields() || db.CoolOff() != 30*time.Minute {
		t.Errorf("db = %+v, want a 2h drain timeout that waits, and a 30m cool-off", db)
	}
	if w.DrainTimeout.Duration != 0 || !w.Yields() || w.CoolOff() != time.Hour {
		t.Errorf("workers = %+v, want the arbiter's drain timeout, a yield, and a 1h cool-off by default", w)
	}
	if c := cfg.For("ceph"); len(c.Blockers) != 2 || len(cfg.Defaults.Blockers) != 0 {
		t.Errorf("ceph blockers = %+v, defaults = %+v", c.Blockers, cfg.Defaults.Blockers)
	}
	cfg.Paused = true
	if !cfg.For("anything").Paused {
		t.Error("fleet-wide pause does not pause a group")
	}

	berlin, _ := time.LoadLocation("Europe/Berlin")
	at := func(day, clock string) time.Time {
		tm, err := time.ParseInLocation("2006-01-02 15:04", day+" "+clock, berlin)
		if err != nil {
			t.Fatal(err)
		}
		return tm.UTC()
	}
	// 2026-11-28 is a Saturday.
	for _, tt := range []struct {
		when time.Time
		open bool
	}{
		{at("2026-11-28", "21:59"), false},
		{at("2026-11-28", "22:00"), true},
		{at("2026-11-29", "03:59"), true}, // Saturday's window, after midnight
		{at("2026-11-29", "04:00"), false},
		{at("2026-11-29", "23:00"), true}, // Sunday's own window
		{at("2026-11-30", "01:00"), true}, // Sunday's window into Monday
		{at("2026-11-30", "23:00"), false},
		{at("2026-11-28", "23:30").Add(-time.Hour), true},
	} {
		if got := w.Open(tt.when); got != tt.open {
			t.Errorf("Open(%s Berlin) = %v, want %v", tt.when.In(berlin).Format("Mon 15:04"), got, tt.open)
		}
	}
	if !cfg.For("db").Open(at("2026-11-30", "12:00")) {
		t.Error("no windows must mean always open")
	}
}

func TestParseRejects(t *testing.T) {
	for _, doc := range []string{
		`defaults: {windows: [{start: "25:00", end: "04:00"}]}`,
		`defaults: {windows: [{start: "01:00", end: "04:00", days: [Monday]}]}`,
		`defaults: {windows: [{start: "01:00", end: "04:00", timeZone: Mars/Olympus}]}`,
		`groups: {g: {minGap: -1m}}`,
		`groups: {g: {minGap: soon}}`,
		`groups: {g: {blockers: [{selector: "a in ("}]}}`,
		`groups: {g: {blockers: [{selector: "a=b", scope: rack}]}}`,
		`groups: {g: {slots: -2}}`,
		`groups: {g: {settle: -1s}}`,
		`groups: {g: {haltOnFailure: maybe}}`,
		`groups: {g: {drainTimeoutAction: skip}}`,
		`groups: {g: {drainTimeout: -1m}}`,
		`groups: {g: {drainCoolOff: -1m}}`,
		`pause: true`,
	} {
		if _, err := Parse(&corev1.ConfigMap{Data: map[string]string{ConfigKey: doc}}); err == nil {
			t.Errorf("Parse(%s) accepted it", doc)
		}
	}
}

func TestOpensWithin(t *testing.T) {
	s := Settings{Windows: []Window{{Start: "02:00", End: "04:00"}}}
	if err := s.prepare(); err != nil {
		t.Fatal(err)
	}
	at := func(hhmm string) time.Time {
		t, _ := time.Parse("2006-01-02 15:04:05", "2026-12-02 "+hhmm)
		return t
	}
	tests := []struct {
		now    string
		within time.Duration
		want   string // "" for not within
	}{
		{"01:55:30", 5 * time.Minute, "02:00:00"},
		{"01:55:30", 4 * time.Minute, ""},
		{"01:00:00", 5 * time.Minute, ""},
		{"04:00:00", 22 * time.Hour, "02:00:00"}, // the next day's
	}
	for _, tt := range tests {
		got, ok := s.OpensWithin(at(tt.now), tt.within)
		if tt.want == "" {
			if ok {
				t.Errorf("OpensWithin(%s, %s) = %s, want not within", tt.now, tt.within, got)
			}
			continue
		}
		if !ok || got.Format("15:04:05") != tt.want {
			t.Errorf("OpensWithin(%s, %s) = %s, %v, want %s", tt.now, tt.within, got, ok, tt.want)
		}
	}
}
