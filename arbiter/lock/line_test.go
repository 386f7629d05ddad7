package lock

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestGrantLine: with a line, a free slot goes to the first hosts in line
// whose request waits now; hosts ahead with no request waiting are passed
// over but keep their place; expired entries and full lines are handled.
func TestGrantLine(t *testing.T) {
	now := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	waiting := now.Add(30 * time.Second)
	w := func(id string, at time.Duration, present bool) Waiter {
		x := Waiter{ID: id, At: now.Add(at), Seen: now.Add(at)}
		if present {
			x.Until = &waiting
		}
		return x
	}
	ids := func(line []Waiter) string {
		out := make([]string, len(line))
		for i, x := range line {
			out[i] = x.ID
		}
		return fmt.Sprint(out)
	}
	held := []Holder{{ID: "h", Since: now.Add(-time.Hour)}}
	tests := []struct {
		name      string
		holders   []Holder
		line      []Waiter
		lim       Limits
		caller    string
		granted   bool
		place     int
		wantLine  string
		wantWrite bool
	}{
		{"free slot, empty line: granted", nil, nil, Limits{Slots: 1, Line: Line{Length: 4, Until: waiting}}, "a", true, 0, "[]", true},
		{"free slot, first in line: granted and out of it", nil, []Waiter{w("a", -time.Minute, true), w("b", -30*time.Second, true)},
			Limits{Slots: 1, Line: Line{Length: 4, Until: waiting}}, "a", true, 0, "[b]", true},
		{"free slot, another ahead and waiting: denied, place kept", nil, []Waiter{w("a", -time.Minute, true), w("b", -30*time.Second, true)},
			Limits{Slots: 1, Line: Line{Length: 4, Until: waiting}}, "b", false, 1, "[a b]", false},
		{"free slot, the one ahead not waiting now: passed over", nil, []Waiter{w("a", -time.Minute, false), w("b", -30*time.Second, true)},
			Limits{Slots: 1, Line: Line{Length: 4, Until: waiting}}, "b", true, 0, "[a]", true},
		{"two free slots, one waiting ahead: granted", nil, []Waiter{w("a", -time.Minute, true), w("b", -30*time.Second, true)},
			Limits{Slots: 2, Line: Line{Length: 4, Until: waiting}}, "b", true, 0, "[a]", true},
		{"a newcomer behind a waiting line: joins at the end", nil, []Waiter{w("a", -time.Minute, true)},
			Limits{Slots: 1, Line: Line{Length: 4, Until: waiting}}, "c", false, 1, "[a c]", true},
		{"full group: joins the line", held, nil, Limits{Slots: 1, Line: Line{Length: 4, Until: waiting}}, "a", false, 0, "[a]", true},
		{"full group, full line: not recorded", held, []Waiter{w("a", -time.Minute, true), w("b", -time.Minute, true)},
			Limits{Slots: 1, Line: Line{Length: 2, Until: waiting}}, "c", false, -1, "[a b]", false},
		{"an entry gone past the expiry: dropped", held, []Waiter{w("a", -20*time.Minute, false), w("b", -time.Minute, true)},
			Limits{Slots: 1, Line: Line{Length: 2, Until: waiting}}, "c", false, 1, "[b c]", true},
		{"an entry of a holder: dropped", held, []Waiter{w("h", -time.Minute, true)},
			Limits{Slots: 1, Line: Line{Length: 2, Until: waiting}}, "b", false, 0, "[b]", true},
		{"no line (polling): first to ask", nil, []Waiter{w("a", -time.Minute, true)}, Limits{Slots: 1}, "b", true, 0, "[a]", true},
		{"the gap: denied, in line", nil, nil, Limits{Slots: 1, MinGap: time.Hour, Line: Line{Length: 2, Until: waiting}}, "a", false, 0, "[a]", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := &Object{Holders: slices.Clone(tt.holders), Line: slices.Clone(tt.line), LastGrant: now.Add(-time.Minute)}
			res, write := o.grant(Holder{ID: tt.caller}, tt.lim, now)
			if res.Granted != tt.granted || (!tt.granted && res.Place != tt.place) || ids(o.Line) != tt.wantLine || write != tt.wantWrite {
				t.Errorf("grant = granted %v place %d line %s write %v, want %v %d %s %v",
					res.Granted, res.Place, ids(o.Line), write, tt.granted, tt.place, tt.wantLine, tt.wantWrite)
			}
		})
	}
}

// TestNoteWaiting: a waiter's entry costs one write per SeenRefresh, and
// the word for its waiting request is extended only once it runs low.
func TestNoteWaiting(t *testing.T) {
	now := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	until := func(d time.Duration) *time.Time { u := now.Add(d); return &u }
	tests := []struct {
		name    string
		entry   Waiter
		until   time.Time
		changed bool
	}{
		{"fresh, word still long", Waiter{ID: "a", Seen: now.Add(-10 * time.Second), Until: until(50 * time.Second)}, now.Add(Presence), false},
		{"fresh, word running low", Waiter{ID: "a", Seen: now.Add(-10 * time.Second), Until: until(20 * time.Second)}, now.Add(Presence), true},
		{"fresh, no word, now waiting", Waiter{ID: "a", Seen: now.Add(-10 * time.Second)}, now.Add(Presence), true},
		{"seen long ago", Waiter{ID: "a", Seen: now.Add(-2 * time.Minute), Until: until(50 * time.Second)}, now.Add(Presence), true},
		{"fresh, not waiting (polling)", Waiter{ID: "a", Seen: now.Add(-10 * time.Second)}, time.Time{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := &Object{Line: []Waiter{tt.entry}}
			changed, i := o.noteWaiting(Holder{ID: "a"}, Line{Length: 4, Until: tt.until}, now)
			if changed != tt.changed || i != 0 {
				t.Errorf("noteWaiting = %v, %d, want %v, 0", changed, i, tt.changed)
			}
		})
	}
}
