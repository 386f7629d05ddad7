// Package lock is the per-group reboot semaphore, kept in coordination.k8s.io
// Lease objects: a recursive, counting lock whose every change is a
// compare-and-swap on the object's resourceVersion, so any number of arbiter
// replicas can share it.
package lock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	coordinationclient "k8s.io/client-go/kubernetes/typed/coordination/v1"
	coordinationlisters "k8s.io/client-go/listers/coordination/v1"

	"github.com/rebootmanager/reboot-manager/shared/annotations"
)

// Label marks the Leases that are lock objects, so informers and the
// status command can select them.
const Label = "rebootmanager/lock"

// FreshSpacing is the least time between two shared fresh lists (see
// Fresh): at most 20 a second, whatever the request rate.
const FreshSpacing = 50 * time.Millisecond

// MaxAttempts bounds the compare-and-swap retries of one operation.
const MaxAttempts = 8

// ErrContention is returned when MaxAttempts compare-and-swaps in a row lost
// their race. Nothing was changed; the caller may try again.
var ErrContention = errors.New("lock object changed under every attempt")

// Result is the outcome of Acquire.
type Result struct {
	// Granted is true when the caller holds a slot.
	Granted bool
	// Changed is true when this call took the slot (false when the caller
	// already held it, or when it was denied).
	Changed bool
	// Holder is the caller's record after the call, when Granted.
	Holder Holder
	// Holders are the group's holders after the call.
	Holders []Holder
	// GapLeft, on a denial with a slot free, is how long the group's
	// minimum gap still forbids a grant.
	GapLeft time.Duration
	// Place, on a denial in a group with a line, is the caller's index in
	// it (0: first); -1 when the line is full and the caller not in it.
	Place int
	// Line is the group's line after the call.
	Line []Waiter
}

// Limits bound the grants in a group.
type Limits struct {
	// Slots is how many holders the group may have.
	Slots int
	// MinGap is the least time between two grants.
	MinGap time.Duration
	// Line orders the hosts that wait for a slot (zero: no line).
	Line Line
}

// Semaphore is the set of group semaphores in one namespace.
type Semaphore struct {
	client    coordinationclient.LeasesGetter
	namespace string
	lister    coordinationlisters.LeaseLister
	now       func() time.Time
	fresh     *sharedRead[*Listing]
	unspaced  *sharedRead[*Listing] // FreshNow's: never spaced
	metrics   *Metrics

	// decoded memoizes the decoding of the cache's lock objects, one per
	// name at its resourceVersion: every request reads them several
	// times, and they change far less often.
	mu      sync.Mutex
	decoded map[string]decodedLease
}

type decodedLease struct {
	version string
	o       Object
	err     error
}

// decodeCached decodes a lock object of the cache, once per version. The
// result is shared: do not modify it.
func (s *Semaphore) decodeCached(l *coordinationv1.Lease) (Object, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.decoded[l.Name]; ok && d.version == l.ResourceVersion {
		return d.o, d.err
	}
	o, err := decode(l)
	if s.decoded == nil {
		s.decoded = map[string]decodedLease{}
	}
	s.decoded[l.Name] = decodedLease{version: l.ResourceVersion, o: o, err: err}
	return o, err
}

// cachedObject is group's lock object from the cache, decoded.
func (s *Semaphore) cachedObject(group string) (Object, bool) {
	l, err := s.lister.Leases(s.namespace).Get(ObjectName(group))
	if err != nil {
		return Object{}, false
	}
	o, err := s.decodeCached(l)
	return o, err == nil
}

// New returns a Semaphore that writes through client and reads the cheap,
// possibly stale views (Cached, All) from lister, which must watch
// the Leases labelled Label in namespace. A one-shot command that uses only
// Acquire, Release and Fresh may pass a nil lister.
func New(client coordinationclient.LeasesGetter, lister coordinationlisters.LeaseLister, namespace string) *Semaphore {
	s := &Semaphore{client: client, lister: lister, namespace: namespace, now: time.Now, metrics: NewMetrics(nil)}
	s.fresh = &sharedRead[*Listing]{read: s.list, timeout: 30 * time.Second, spacing: FreshSpacing}
	s.unspaced = &sharedRead[*Listing]{read: s.list, timeout: 30 * time.Second}
	return s
}

// Get reads a group's lock object from the API server: a consistent read,
// fresh enough for any decision. A group with no lock object has no
// holders.
func (s *Semaphore) Get(ctx context.Context, group string) (Object, error) {
	l, err := s.client.Leases(s.namespace).Get(ctx, ObjectName(group), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return Object{Group: group}, nil
	}
	if err != nil {
		return Object{}, fmt.Errorf("read the lock object of group %q: %w", group, err)
	}
	if g := l.Annotations[annotations.LockGroup]; g != group {
		return Object{}, fmt.Errorf("lock object %s belongs to group %q, not %q", l.Name, g, group)
	}
	return decode(l)
}

// Acquire takes a slot in group for h, or confirms that h.ID already holds
// one (the lock is recursive: asking again changes nothing). A new holder
// is refused with a *HaltedError while the group is halted, and with a
// *CoolingOffError while its node cools off after a failed drain; it must
// then be admitted: admit, when not nil, runs at most once, and only when
// h.ID holds nothing; its error is returned wrapped, and the caller keeps
// its place in line unless the error is wrapped by LosePlace. It is then denied, without error, when the group
// already has lim.Slots holders, or when the last grant is more recent
// than lim.MinGap; holders beyond a lowered slot count keep their slots
// until they release them.
//
// With a line (lim.Line.Length > 0), a free slot goes to the first hosts
// in line whose request waits now, in order of first arrival: the caller
// is granted only when fewer entries with a waiting request stand ahead of
// it than there are free slots, and a denied caller joins the line (or
// refreshes its entry). Entries not seen for the line's expiry are gone.
//
// The decision is made on a fresh read from the API server, and the grant
// time, the line and the grant itself are written in the same
// compare-and-swap, so replicas agree on the gap and the order.
// Result.Holder is the caller's record as the API server holds it.
func (s *Semaphore) Acquire(ctx context.Context, group string, h Holder, lim Limits, admit func() error) (Result, error) {
	return s.AcquireFrom(ctx, nil, group, h, lim, admit)
}

// AcquireFrom is Acquire whose first attempt decides on group's object as
// from lists it, when from is not nil, instead of reading it again: from
// must be a consistent list made after the caller's decision began (see
// FreshNow), and a conflict reads the object again.
func (s *Semaphore) AcquireFrom(ctx context.Context, from *Listing, group string, h Holder, lim Limits, admit func() error) (Result, error) {
	var res Result
	var refused error
	admitted := admit == nil
	_, err := s.update(ctx, group, from, func(o *Object) (bool, error) {
		if mine, ok := o.Holder(h.ID); ok {
			refused = nil
			res = Result{Granted: true, Holder: mine, Holders: o.Holders}
			return false, nil
		}
		if len(o.Halts) > 0 {
			return false, &HaltedError{Group: group, Halts: o.Halts}
		}
		now := s.now()
		if c, ok := o.CoolingOff(h.Node, now); ok {
			return false, &CoolingOffError{Group: group, CoolOff: c}
		}
		if !admitted {
			refused, admitted = admit(), true
		}
		if refused != nil {
			o.Line = slices.Clone(o.Line)
			var lose *losePlace
			if errors.As(refused, &lose) {
				return o.leaveLine(h.ID), nil
			}
			// Turned away for now (a closed window, a pause, an API
			// error): the host keeps its place, and its word is kept up.
			if lim.Line.Length > 0 {
				if i := slices.IndexFunc(o.Line, func(w Waiter) bool { return w.ID == h.ID }); i >= 0 {
					changed, _ := o.noteWaiting(h, lim.Line, now)
					return changed, nil
				}
			}
			return false, nil
		}
		var write bool
		res, write = o.grant(h, lim, now)
		return write, nil
	})
	if err == nil {
		err = refused
	}
	if err != nil {
		return Result{}, fmt.Errorf("acquire a slot in group %q for %s: %w", group, h.ID, err)
	}
	return res, nil
}

// grant decides, on o, whether h takes a slot at now under lim, and
// changes o accordingly: the new holder, or the caller's entry in the
// line. It reports whether o changed.
func (o *Object) grant(h Holder, lim Limits, now time.Time) (Result, bool) {
	o.Line = slices.Clone(o.Line)
	lined := lim.Line.Length > 0
	pruned := lined && o.pruneLine(now, lim.Line.Expiry)
	free := lim.Slots - len(o.Holders)
	gapLeft := time.Duration(0)
	if left := o.LastGrant.Add(lim.MinGap).Sub(now); lim.MinGap > 0 && left > 0 {
		gapLeft = left
	}
	ahead := 0
	if lined {
		ahead = o.standing(h.ID, now).presentAhead
	}
	if free <= 0 || gapLeft > 0 || ahead >= free {
		res := Result{Holders: o.Holders, Place: -1}
		if free > 0 {
			res.GapLeft = gapLeft
		}
		write := pruned
		if lined {
			changed, i := o.noteWaiting(h, lim.Line, now)
			write = write || changed
			res.Place = i
		}
		res.Line = o.Line
		return res, write
	}
	if h.Since.IsZero() {
		h.Since = now.UTC() // full precision: a holding is told apart from the next by it
	}
	h.Phase = PhaseTaken
	o.put(h)
	o.leaveLine(h.ID)
	o.LastGrant = now
	o.pruneCoolOffs(now)
	return Result{Granted: true, Changed: true, Holder: h, Holders: o.Holders, Line: o.Line}, true
}

// LosePlace marks an admission refusal that costs the host its place in
// line (a blocker in its way, a failed authentication): Acquire then
// removes its entry. Any other refusal keeps the place.
func LosePlace(err error) error { return &losePlace{err} }

type losePlace struct{ err error }

func (e *losePlace) Error() string { return e.err.Error() }
func (e *losePlace) Unwrap() error { return e.err }

// Leave withdraws the word for id's waiting request in group's line, when
// it gives up before its time (its client went away): the host keeps its
// place, but is passed over until it asks again.
func (s *Semaphore) Leave(ctx context.Context, group, id string) error {
	_, err := s.Update(ctx, group, func(o *Object) (bool, error) {
		i := slices.IndexFunc(o.Line, func(w Waiter) bool { return w.ID == id })
		if i < 0 || o.Line[i].Until == nil {
			return false, nil
		}
		o.Line = slices.Clone(o.Line)
		o.Line[i].Until = nil
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("leave the line of group %q for %s: %w", group, id, err)
	}
	return nil
}

// ErrNotHolder is returned by Advance when the id holds no slot any more:
// it was released meanwhile.
var ErrNotHolder = errors.New("holds no slot")

// Advance changes the record of the holding that started at since of id in
// group: change edits it in place. It fails with ErrNotHolder when that
// holding is gone (released, and maybe taken again since). It returns the
// record as written.
func (s *Semaphore) Advance(ctx context.Context, group, id string, since time.Time, change func(*Holder)) (Holder, error) {
	var out Holder
	_, err := s.Update(ctx, group, func(o *Object) (bool, error) {
		h, ok := o.Holder(id)
		if !ok || !h.Since.Equal(since) {
			return false, ErrNotHolder
		}
		before := h
		change(&h)
		out = h
		if equalHolders(before, h) {
			return false, nil
		}
		o.put(h)
		return true, nil
	})
	if err != nil {
		return Holder{}, fmt.Errorf("record %s's progress in group %q: %w", id, group, err)
	}
	return out, nil
}

// Approve records the approval of the holding that started at since of id
// in group, by compare-and-swap, unless it was approved already. It fails
// with ErrNotHolder when that holding is gone, and with a *HaltedError when
// the group is halted and the holding not yet approved. It returns the
// record as written and whether this call approved it.
func (s *Semaphore) Approve(ctx context.Context, group, id string, since time.Time, nodeUID types.UID, a Approval) (Holder, bool, error) {
	var out Holder
	var mine bool
	_, err := s.Update(ctx, group, func(o *Object) (bool, error) {
		h, ok := o.Holder(id)
		if !ok || !h.Since.Equal(since) {
			return false, ErrNotHolder
		}
		out, mine = h, false
		if h.Stage() == PhaseApproved {
			return false, nil // approved meanwhile through another replica
		}
		if len(o.Halts) > 0 {
			return false, &HaltedError{Group: group, Halts: o.Halts}
		}
		h.Phase, h.NodeUID, h.Approval = PhaseApproved, nodeUID, &a
		o.put(h)
		out, mine = h, true
		return true, nil
	})
	if err != nil {
		return Holder{}, false, fmt.Errorf("record the approval of %s in group %q: %w", id, group, err)
	}
	return out, mine, nil
}

// Yield gives back the slot of the holding of id that started at since,
// whose drain failed, and turns its node away until c.Until, in one
// compare-and-swap: only while the holding is not approved and never was,
// so a node approved a moment ago (empty, on a consistent read), or one
// answered 200 before its pods came back, keeps its slot. It reports
// whether this call yielded the slot.
func (s *Semaphore) Yield(ctx context.Context, group, id string, since time.Time, c CoolOff) (bool, error) {
	var yielded bool
	_, err := s.Update(ctx, group, func(o *Object) (bool, error) {
		yielded = false
		h, ok := o.Holder(id)
		if !ok || !h.Since.Equal(since) || h.Stage() == PhaseApproved || h.ApprovedBefore {
			return false, nil
		}
		o.Remove(func(x Holder) bool { return x.ID == id })
		o.pruneCoolOffs(s.now())
		o.CoolOffs = slices.DeleteFunc(o.CoolOffs, func(x CoolOff) bool { return x.Node == c.Node })
		c.Until = c.Until.UTC()
		o.CoolOffs = append(o.CoolOffs, c)
		yielded = true
		return true, nil
	})
	if err != nil {
		return false, fmt.Errorf("yield the slot of %s in group %q: %w", id, group, err)
	}
	return yielded, nil
}

// pruneCoolOffs drops the cool-offs that are over.
func (o *Object) pruneCoolOffs(now time.Time) {
	o.CoolOffs = slices.DeleteFunc(o.CoolOffs, func(c CoolOff) bool { return !now.Before(c.Until) })
}

// SetHalt halts group with h, by compare-and-swap, unless a halt of the
// same reason is there already. It returns the group's halts after the
// call and whether this call added h.
func (s *Semaphore) SetHalt(ctx context.Context, group string, h Halt) ([]Halt, bool, error) {
	var out []Halt
	var set bool
	_, err := s.Update(ctx, group, func(o *Object) (bool, error) {
		set = !slices.ContainsFunc(o.Halts, func(x Halt) bool { return x.Reason == h.Reason })
		if set {
			h.At = h.At.UTC()
			o.Halts = append(o.Halts, h)
		}
		out = o.Halts
		return set, nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("halt group %q: %w", group, err)
	}
	return out, set, nil
}

// Fail records, in one compare-and-swap, that the holding of id that
// started at since failed with h.Reason and, when halt is true, adds h to
// group's halts. A failure already recorded for the holding changes
// nothing, so a group resumed by a person is not halted again for it. It
// reports whether the failure was new, and whether this call halted the
// group.
func (s *Semaphore) Fail(ctx context.Context, group, id string, since time.Time, h Halt, halt bool) (recorded, halted bool, err error) {
	_, err = s.Update(ctx, group, func(o *Object) (bool, error) {
		recorded, halted = false, false
		x, ok := o.Holder(id)
		if !ok || !x.Since.Equal(since) {
			return false, ErrNotHolder
		}
		if x.failed(h.Reason) {
			return false, nil
		}
		x.Failed = append(slices.Clone(x.Failed), h.Reason)
		o.put(x)
		recorded = true
		if halt {
			h.At = h.At.UTC()
			o.Halts, halted = append(o.Halts, h), true
		}
		return true, nil
	})
	if err != nil {
		return false, false, fmt.Errorf("record the failure of %s in group %q: %w", id, group, err)
	}
	return recorded, halted, nil
}

// Resume lifts every halt of group, by compare-and-swap, and returns them
// (none when the group was not halted).
func (s *Semaphore) Resume(ctx context.Context, group string) ([]Halt, error) {
	var lifted []Halt
	_, err := s.Update(ctx, group, func(o *Object) (bool, error) {
		lifted = o.Halts
		o.Halts = nil
		return len(lifted) > 0, nil
	})
	if err != nil {
		return nil, fmt.Errorf("resume group %q: %w", group, err)
	}
	return lifted, nil
}

func equalHolders(a, b Holder) bool {
	ra, _ := json.Marshal(a)
	rb, _ := json.Marshal(b)
	return string(ra) == string(rb)
}

// Release frees id's slot in group. It reports whether id held one.
func (s *Semaphore) Release(ctx context.Context, group, id string) (bool, error) {
	gone, err := s.ReleaseMatching(ctx, group, func(h Holder) bool { return h.ID == id })
	return len(gone) > 0, err
}

// ReleaseMatching frees, in one compare-and-swap on a fresh read, every
// slot in group whose holder match selects, and returns those holders.
func (s *Semaphore) ReleaseMatching(ctx context.Context, group string, match func(Holder) bool) ([]Holder, error) {
	var gone []Holder
	_, err := s.Update(ctx, group, func(o *Object) (bool, error) {
		gone = o.Remove(match)
		return len(gone) > 0, nil
	})
	if err != nil {
		return nil, fmt.Errorf("release slots in group %q: %w", group, err)
	}
	return gone, nil
}

// SteadyState applies a steady-state to the holders of group that match
// selects, in one compare-and-swap on a fresh read (from's object for the
// group, when from is a Listing read after the request began and lists it,
// which saves a GET; else a GET): a holder of a Node
// approved for a reboot gets the steady-state recorded (at now, or at its
// approval if that is later by another replica's clock) and keeps its slot
// until its node is back; any other is released. Each holder is judged on
// the read the write is conditional on, so one approved a moment ago
// through another replica is kept, never released. It returns the holders
// released and those kept.
func (s *Semaphore) SteadyState(ctx context.Context, from *Listing, group string, match func(Holder) bool, now time.Time) (released, kept []Holder, err error) {
	_, err = s.update(ctx, group, from, func(o *Object) (bool, error) {
		released, kept = nil, nil
		write := false
		o.Holders = slices.DeleteFunc(o.Holders, func(h Holder) bool {
			switch {
			case !match(h):
				return false
			case h.Node == "" || h.Stage() != PhaseApproved:
				released = append(released, h)
				write = true
				return true
			}
			return false
		})
		for i, h := range o.Holders {
			if !match(h) {
				continue
			}
			if h.SteadyStateAt == nil || (h.Approval != nil && h.SteadyStateAt.Before(h.Approval.At)) {
				at := now.UTC()
				if h.Approval != nil && at.Before(h.Approval.At) {
					at = h.Approval.At
				}
				h.SteadyStateAt = &at
				o.Holders[i] = h
				write = true
			}
			kept = append(kept, h)
		}
		return write, nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("apply a steady-state in group %q: %w", group, err)
	}
	return released, kept, nil
}

// Cached returns group's holders as the cache last saw them, without an API
// request; nil when the group has no lock object or it cannot be read. It
// may lag: use it to turn a request away, as a hint or to show state, never
// to say yes.
func (s *Semaphore) Cached(group string) []Holder {
	o, _ := s.cachedObject(group)
	return o.Holders
}

// Line returns group's line from the cache: for wake-ups and refusals only.
func (s *Semaphore) Line(group string) []Waiter {
	o, _ := s.cachedObject(group)
	return o.Line
}

// CoolingOff returns, from the cache, the cool-off in effect for node in
// group, if any: for refusals only.
func (s *Semaphore) CoolingOff(group, node string) (CoolOff, bool) {
	o, _ := s.cachedObject(group)
	return o.CoolingOff(node, s.now())
}

// All returns every group's holders from the cache, keyed by group.
func (s *Semaphore) All() (map[string][]Holder, error) {
	leases, err := s.lister.Leases(s.namespace).List(labels.SelectorFromSet(labels.Set{Label: "true"}))
	if err != nil {
		return nil, fmt.Errorf("list lock objects: %w", err)
	}
	all := make(map[string][]Holder, len(leases))
	for _, l := range leases {
		o, err := s.decodeCached(l)
		if err != nil {
			return nil, err
		}
		all[l.Annotations[annotations.LockGroup]] = o.Holders
	}
	return all, nil
}

// Halts returns every halted group's halt from the cache: for displays
// and refusals only.
func (s *Semaphore) Halts() (map[string][]Halt, error) {
	leases, err := s.lister.Leases(s.namespace).List(labels.SelectorFromSet(labels.Set{Label: "true"}))
	if err != nil {
		return nil, fmt.Errorf("list lock objects: %w", err)
	}
	out := map[string][]Halt{}
	for _, l := range leases {
		if o, err := s.decodeCached(l); err == nil && len(o.Halts) > 0 {
			out[o.Group] = o.Halts
		}
	}
	return out, nil
}

// Fresh returns every group's holders from a consistent list of the lock
// objects that started after the call, for decisions that must not act on
// a stale cache. Concurrent calls share lists (see sharedRead), so a burst
// of steady-states costs far fewer than one API request each. The result is
// shared: do not modify it.
func (s *Semaphore) Fresh(ctx context.Context) (map[string][]Holder, error) {
	l, err := s.fresh.do(ctx)
	if err != nil {
		return nil, err
	}
	return l.Holders, nil
}

// FreshNow is FreshListing without the spacing: concurrent calls still
// share lists, but a call never waits for the spacing to pass. It is for
// the pre-reboots of Nodes, whose wait is the hand-off's: the list shows
// whether the node holds a slot elsewhere, and AcquireFrom starts from it.
// Those calls are few (one per waiter whose turn may have come), unlike
// the steady-states that Fresh's spacing protects the API server from.
func (s *Semaphore) FreshNow(ctx context.Context) (*Listing, error) {
	return s.unspaced.do(ctx)
}

// Listing is a consistent read of the lock objects: the holders of the
// groups read, and the objects themselves, from which a compare-and-swap
// may start without reading again (see SteadyState).
type Listing struct {
	// Holders are the holders of each group read. Do not modify them: a
	// Listing is shared.
	Holders map[string][]Holder
	leases  map[string]*coordinationv1.Lease // by group
}

// Names says whether a holder of a group read is on node.
func (l *Listing) Names(node string) bool {
	for _, holders := range l.Holders {
		if slices.ContainsFunc(holders, func(h Holder) bool { return h.Node == node }) {
			return true
		}
	}
	return false
}

// FreshGroups reads the lock objects of groups on consistent GETs, made
// at once, that started after the call: a Listing of those groups only
// (a group with no lock object has no holders), as fresh as FreshListing's
// and cheaper when the caller knows which groups its decision needs. A GET
// is served by etcd at once, where a consistent LIST may wait for the
// watch cache to catch up.
func (s *Semaphore) FreshGroups(ctx context.Context, groups []string) (*Listing, error) {
	type read struct {
		group string
		lease *coordinationv1.Lease
		err   error
	}
	reads := make(chan read, len(groups))
	for _, g := range groups {
		go func() {
			l, err := s.client.Leases(s.namespace).Get(ctx, ObjectName(g), metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				l, err = nil, nil
			}
			reads <- read{g, l, err}
		}()
	}
	out := &Listing{Holders: make(map[string][]Holder, len(groups)), leases: make(map[string]*coordinationv1.Lease, len(groups))}
	var errs []error
	for range groups {
		r := <-reads
		switch {
		case r.err != nil:
			errs = append(errs, fmt.Errorf("read the lock object of group %q: %w", r.group, r.err))
		case r.lease == nil:
			out.Holders[r.group] = nil
		case r.lease.Annotations[annotations.LockGroup] != r.group:
			errs = append(errs, fmt.Errorf("lock object %s belongs to group %q, not %q", r.lease.Name, r.lease.Annotations[annotations.LockGroup], r.group))
		default:
			holders, err := Decode(r.lease)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			out.Holders[r.group], out.leases[r.group] = holders, r.lease
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// FreshListing is Fresh with the objects listed: a Listing from a
// consistent list that started after the call.
func (s *Semaphore) FreshListing(ctx context.Context) (*Listing, error) {
	return s.fresh.do(ctx)
}

func (s *Semaphore) list(ctx context.Context) (*Listing, error) {
	list, err := s.client.Leases(s.namespace).List(ctx, metav1.ListOptions{LabelSelector: Label + "=true"})
	if err != nil {
		return nil, fmt.Errorf("list lock objects: %w", err)
	}
	leases := make([]*coordinationv1.Lease, len(list.Items))
	l := &Listing{leases: make(map[string]*coordinationv1.Lease, len(list.Items))}
	for i := range list.Items {
		leases[i] = &list.Items[i]
		l.leases[leases[i].Annotations[annotations.LockGroup]] = leases[i]
	}
	if l.Holders, err = byGroup(leases); err != nil {
		return nil, err
	}
	return l, nil
}

func byGroup(leases []*coordinationv1.Lease) (map[string][]Holder, error) {
	all := make(map[string][]Holder, len(leases))
	for _, l := range leases {
		holders, err := Decode(l)
		if err != nil {
			return nil, err
		}
		all[l.Annotations[annotations.LockGroup]] = holders
	}
	return all, nil
}

// Update runs change on a fresh read of group's lock object and, when it
// returns true, writes the result conditionally on the resourceVersion it
// read, retrying on conflicts with a new read. An error from change ends
// the update with nothing written. It returns the object as written (or as
// read, when nothing was written).
func (s *Semaphore) Update(ctx context.Context, group string, change func(*Object) (bool, error)) (Object, error) {
	return s.update(ctx, group, nil, change)
}

// update is Update whose first attempt starts from from's object for the
// group, when from lists one, instead of reading it again. from must have
// been read after the caller's decision began: a no-write change answers
// on it.
func (s *Semaphore) update(ctx context.Context, group string, from *Listing, change func(*Object) (bool, error)) (Object, error) {
	leases := s.client.Leases(s.namespace)
	name := ObjectName(group)
	var start *coordinationv1.Lease
	if from != nil {
		if l := from.leases[group]; l != nil && l.Name == name {
			start = l.DeepCopy() // the Listing is shared, and encode writes into it
		}
	}
	for range MaxAttempts {
		l, err := start, error(nil)
		if l == nil { // every attempt but a first from the Listing
			l, err = leases.Get(ctx, name, metav1.GetOptions{})
		}
		start = nil
		create := apierrors.IsNotFound(err)
		switch {
		case create:
			l = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{
				Name:        name,
				Namespace:   s.namespace,
				Labels:      map[string]string{Label: "true", "app.kubernetes.io/managed-by": "reboot-manager"},
				Annotations: map[string]string{annotations.LockGroup: group},
			}}
		case err != nil:
			return Object{}, fmt.Errorf("get lock object %s: %w", name, err)
		}
		if g := l.Annotations[annotations.LockGroup]; g != group {
			return Object{}, fmt.Errorf("lock object %s belongs to group %q, not %q", name, g, group)
		}
		o, err := decode(l)
		if err != nil {
			return Object{}, err
		}
		o.Holders = slices.Clone(o.Holders)
		write, err := change(&o)
		if err != nil || !write {
			return o, err
		}
		if err := encode(l, o); err != nil {
			return Object{}, err
		}
		var written *coordinationv1.Lease
		if create {
			written, err = leases.Create(ctx, l, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				s.metrics.conflicts.Inc()
				continue
			}
		} else {
			written, err = leases.Update(ctx, l, metav1.UpdateOptions{})
			if apierrors.IsConflict(err) {
				s.metrics.conflicts.Inc()
				continue
			}
		}
		if err != nil {
			return Object{}, fmt.Errorf("write lock object %s: %w", name, err)
		}
		s.metrics.writes.Inc()
		o.ResourceVersion = written.ResourceVersion
		return o, nil
	}
	s.metrics.contention.Inc()
	return Object{}, ErrContention
}

// Draining returns, from a fresh read of the lock objects, the holder whose
// node is node when it is in PhaseDraining, and its group.
func (s *Semaphore) Draining(ctx context.Context, node string) (string, Holder, bool, error) {
	all, err := s.Fresh(ctx)
	if err != nil {
		return "", Holder{}, false, err
	}
	for group, holders := range all {
		for _, h := range holders {
			if h.Node == node && h.Stage() == PhaseDraining {
				return group, h, true, nil
			}
		}
	}
	return "", Holder{}, false, nil
}

// DrainingNodes lists, from a fresh read, every node whose holder is in
// PhaseDraining.
func (s *Semaphore) DrainingNodes(ctx context.Context) ([]string, error) {
	all, err := s.Fresh(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, holders := range all {
		for _, h := range holders {
			if h.Node != "" && h.Stage() == PhaseDraining {
				out = append(out, h.Node)
			}
		}
	}
	return out, nil
}
