package lock

import (
	"slices"
	"time"
)

// Waiter is one host in a group's line: a pre-reboot that found the group
// full and waits server-side, on any replica, for a slot. The line is kept
// in the lock object, so every replica grants in the same order: by first
// arrival, among the hosts waiting now.
type Waiter struct {
	// ID is the Zincati id that waits.
	ID string `json:"id"`
	// Node is its Node, for people ("" for a host outside the cluster).
	Node string `json:"node,omitempty"`
	// At is when it first asked in this cycle: its place in line.
	At time.Time `json:"at"`
	// Seen is when it last asked (refreshed at most every SeenRefresh):
	// an entry not seen for the line's expiry is gone.
	Seen time.Time `json:"seen"`
	// Until, while a request of the host waits on some replica, is when
	// that replica's word for it runs out; the replica extends it while
	// the request waits. A host with no request waiting now is passed
	// over, and keeps its place.
	Until *time.Time `json:"until,omitempty"`
}

// SeenRefresh is how old a waiter's Seen may get before its request
// rewrites it: a host that keeps asking costs one write per SeenRefresh,
// not one per request.
const SeenRefresh = time.Minute

// Presence is how long a replica vouches, at a time, for a request that
// waits: the request asks again about every Presence/3, and the word is
// extended once less than two thirds of it are left, so a replica that crashes
// holds up the line for at most this long (with replica clocks in step).
const Presence = time.Minute

// Present reports whether a request of w waits now.
func (w Waiter) Present(now time.Time) bool { return w.Until != nil && now.Before(*w.Until) }

// Line is what Acquire does with the group's line.
type Line struct {
	// Length is how many hosts the line holds; a host that finds it full
	// is answered at once, and not recorded. 0: no line (plain polling:
	// whoever asks when a slot is free takes it).
	Length int
	// Expiry is how long an entry lasts without a request (default 11
	// minutes: two Zincati ticks).
	Expiry time.Duration
	// Until is how long this replica vouches for the caller's request
	// waiting: the sooner of its deadline and now plus Presence (zero: it
	// does not wait).
	Until time.Time
}

// DefaultLineExpiry is two of Zincati's ticks (300–330 s): a host that
// has not asked for that long is gone, and loses its place.
const DefaultLineExpiry = 11 * time.Minute

// place is the caller's standing in the line at now.
type place struct {
	index        int // in the line, -1 when not in it
	presentAhead int // entries ahead of it with a request waiting now
}

// Live returns the entries of line that have not expired at now and do
// not name a holder: for the cache's refusals.
func Live(line []Waiter, holders []Holder, now time.Time) []Waiter {
	o := Object{Holders: holders, Line: slices.Clone(line)}
	o.pruneLine(now, DefaultLineExpiry)
	return o.Line
}

// pruneLine drops the entries that expired and those of holders, and
// returns whether any went.
func (o *Object) pruneLine(now time.Time, expiry time.Duration) bool {
	if expiry <= 0 {
		expiry = DefaultLineExpiry
	}
	n := len(o.Line)
	o.Line = slices.DeleteFunc(o.Line, func(w Waiter) bool {
		_, holds := o.Holder(w.ID)
		return holds || now.Sub(w.Seen) > expiry
	})
	return len(o.Line) != n
}

// standing returns id's place in the line at now.
func (o *Object) standing(id string, now time.Time) place {
	p := place{index: -1}
	for i, w := range o.Line {
		if w.ID == id {
			p.index = i
			return p
		}
		if w.Present(now) {
			p.presentAhead++
		}
	}
	return p
}

// leaveLine removes id's entry, reporting whether it had one.
func (o *Object) leaveLine(id string) bool {
	n := len(o.Line)
	o.Line = slices.DeleteFunc(o.Line, func(w Waiter) bool { return w.ID == id })
	return len(o.Line) != n
}

// noteWaiting records that h asks now, and waits until l.Until when that
// is not zero: it joins the line if there is room, or refreshes its entry
// when its Seen is old or its Until would run out before the next
// refresh. It reports whether the object changed, and the caller's index
// (-1 when the line is full and it is not in it).
func (o *Object) noteWaiting(h Holder, l Line, now time.Time) (bool, int) {
	var until *time.Time
	if !l.Until.IsZero() {
		u := l.Until.UTC()
		until = &u
	}
	i := slices.IndexFunc(o.Line, func(w Waiter) bool { return w.ID == h.ID })
	if i < 0 {
		if len(o.Line) >= l.Length {
			return false, -1
		}
		at := now.UTC()
		o.Line = append(o.Line, Waiter{ID: h.ID, Node: h.Node, At: at, Seen: at, Until: until})
		return true, len(o.Line) - 1
	}
	w := &o.Line[i]
	changed := false
	if now.Sub(w.Seen) >= SeenRefresh {
		w.Seen, changed = now.UTC(), true
	}
	// Extend the word for a waiting request before it runs out (its
	// replica asks again at least every Presence/3).
	if until != nil && (w.Until == nil || w.Until.Sub(now) < Presence*2/3) && until.After(derefTime(w.Until)) {
		w.Until, changed = until, true
	}
	return changed, i
}

func derefTime(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}
