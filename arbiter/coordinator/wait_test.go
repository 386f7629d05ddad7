package coordinator

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/rebootmanager/reboot-manager/arbiter/drain"
	"github.com/rebootmanager/reboot-manager/arbiter/groups"
	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
)

// memLock is an in-memory semaphore that, like the lock object's informer,
// calls Wake after every change.
type memLock struct {
	mu       sync.Mutex
	holders  []lock.Holder
	onChange func()
	calls    []string // the writes and fresh reads, in order
	err      error    // returned by every fresh call when set
	halt     *lock.Halt
	// coolOffs are in the lock object; cached, also in the cache.
	coolOffs []lock.CoolOff
	cached   bool
	// stale, when set, is what the cache shows as holders (All), though
	// the lock object holds holders.
	stale []lock.Holder
	// refused lists the ids that found the slots full, in order.
	refused []string
}

func (m *memLock) changed() {
	if m.onChange != nil {
		go m.onChange()
	}
}

// AcquireFrom decides on the memory, fresh by definition; from is the
// List the caller made for it.
func (m *memLock) AcquireFrom(_ context.Context, _ *lock.Listing, _ string, h lock.Holder, lim lock.Limits, admit func() error) (lock.Result, error) {
	m.mu.Lock()
	m.calls = append(m.calls, "Acquire")
	if m.err != nil {
		defer m.mu.Unlock()
		return lock.Result{}, m.err
	}
	if i := slices.IndexFunc(m.holders, func(x lock.Holder) bool { return x.ID == h.ID }); i >= 0 {
		defer m.mu.Unlock()
		return lock.Result{Granted: true, Holder: m.holders[i], Holders: slices.Clone(m.holders)}, nil
	}
	if m.halt != nil {
		defer m.mu.Unlock()
		return lock.Result{}, &lock.HaltedError{Group: "g", Halts: []lock.Halt{*m.halt}}
	}
	m.mu.Unlock()
	if admit != nil {
		if err := admit(); err != nil {
			return lock.Result{}, err
		}
	}
	m.mu.Lock()
	if len(m.holders) >= lim.Slots {
		defer m.mu.Unlock()
		m.refused = append(m.refused, h.ID)
		return lock.Result{Holders: slices.Clone(m.holders)}, nil
	}
	h.Phase, h.Since = lock.PhaseTaken, time.Unix(1, 0)
	m.holders = append(m.holders, h)
	res := lock.Result{Granted: true, Changed: true, Holder: h, Holders: slices.Clone(m.holders)}
	m.mu.Unlock()
	m.changed()
	return res, nil
}

func (m *memLock) Get(context.Context, string) (lock.Object, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, "Get")
	return lock.Object{Holders: slices.Clone(m.holders), CoolOffs: m.coolOffs}, m.err
}

func (m *memLock) Advance(_ context.Context, _, id string, since time.Time, change func(*lock.Holder)) (lock.Holder, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return lock.Holder{}, m.err
	}
	i := slices.IndexFunc(m.holders, func(x lock.Holder) bool { return x.ID == id && x.Since.Equal(since) })
	if i < 0 {
		return lock.Holder{}, lock.ErrNotHolder
	}
	h := m.holders[i]
	change(&h)
	if h.Phase != m.holders[i].Phase {
		m.calls = append(m.calls, "Advance("+string(h.Phase)+")")
	}
	if h.SteadyStateAt != m.holders[i].SteadyStateAt {
		m.calls = append(m.calls, "Advance(SteadyState)")
	}
	m.holders[i] = h
	return h, nil
}

func (m *memLock) Approve(ctx context.Context, group, id string, since time.Time, uid types.UID, a lock.Approval) (lock.Holder, bool, error) {
	m.mu.Lock()
	halt := m.halt
	m.mu.Unlock()
	mine := false
	h, err := m.Advance(ctx, group, id, since, func(h *lock.Holder) {
		if h.Stage() == lock.PhaseApproved || halt != nil {
			return
		}
		mine = true
		h.Phase, h.NodeUID, h.Approval = lock.PhaseApproved, uid, &a
	})
	if err == nil && !mine && halt != nil && h.Stage() != lock.PhaseApproved {
		return lock.Holder{}, false, &lock.HaltedError{Group: group, Halts: []lock.Halt{*halt}}
	}
	return h, mine, err
}

func (m *memLock) SteadyState(_ context.Context, _ *lock.Listing, _ string, match func(lock.Holder) bool, now time.Time) ([]lock.Holder, []lock.Holder, error) {
	m.mu.Lock()
	m.calls = append(m.calls, "SteadyState")
	if m.err != nil {
		defer m.mu.Unlock()
		return nil, nil, m.err
	}
	var gone, kept []lock.Holder
	m.holders = slices.DeleteFunc(m.holders, func(x lock.Holder) bool {
		if match(x) && (x.Node == "" || x.Stage() != lock.PhaseApproved) {
			gone = append(gone, x)
			return true
		}
		return false
	})
	for i, x := range m.holders {
		if match(x) {
			x.SteadyStateAt = &now
			m.holders[i] = x
			kept = append(kept, x)
		}
	}
	m.mu.Unlock()
	m.changed()
	return gone, kept, nil
}

func (m *memLock) ReleaseMatching(_ context.Context, _ string, match func(lock.Holder) bool) ([]lock.Holder, error) {
	m.mu.Lock()
	m.calls = append(m.calls, "ReleaseMatching")
	if m.err != nil {
		defer m.mu.Unlock()
		return nil, m.err
	}
	var gone []lock.Holder
	m.holders = slices.DeleteFunc(m.holders, func(x lock.Holder) bool {
		if match(x) {
			gone = append(gone, x)
			return true
		}
		return false
	})
	m.mu.Unlock()
	m.changed()
	return gone, nil
}

func (m *memLock) Cached(string) []lock.Holder {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.holders)
}

func (m *memLock) Leave(context.Context, string, string) error { return nil }
func (m *memLock) Line(string) []lock.Waiter                   { return nil }

func (m *memLock) CoolingOff(_, node string) (lock.CoolOff, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.cached {
		return lock.CoolOff{}, false
	}
	o := lock.Object{CoolOffs: m.coolOffs}
	return o.CoolingOff(node, time.Now())
}

func (m *memLock) All() (map[string][]lock.Holder, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stale != nil {
		return map[string][]lock.Holder{"g": slices.Clone(m.stale)}, nil
	}
	return map[string][]lock.Holder{"g": slices.Clone(m.holders)}, nil
}

func (m *memLock) Fresh(context.Context) (map[string][]lock.Holder, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, "List")
	return map[string][]lock.Holder{"g": slices.Clone(m.holders)}, m.err
}

// FreshNow lists the memory; unlike Fresh it never fails, so that err
// reaches AcquireFrom, which the rows setting it are about.
func (m *memLock) FreshNow(context.Context) (*lock.Listing, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, "List")
	return &lock.Listing{Holders: map[string][]lock.Holder{"g": slices.Clone(m.holders)}}, nil
}

// FreshGroups reads the one group there is, "g".
func (m *memLock) FreshGroups(context.Context, []string) (*lock.Listing, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, "Get")
	return &lock.Listing{Holders: map[string][]lock.Holder{"g": slices.Clone(m.holders)}}, m.err
}

func (m *memLock) FreshListing(ctx context.Context) (*lock.Listing, error) {
	all, err := m.Fresh(ctx)
	return &lock.Listing{Holders: all}, err
}

// noNodes has no Nodes: with AllowUnknownNodes the coordinator is a plain
// semaphore, which is what the queue is about.
type noNodes struct{}

func (noNodes) Lookup(string) ([]*corev1.Node, error)                       { return nil, nil }
func (noNodes) LookupFresh(context.Context, string) ([]*corev1.Node, error) { return nil, nil }
func (noNodes) Fresh(context.Context, string) (*corev1.Node, error) {
	return nil, errors.New("no nodes")
}
func (noNodes) StartDrain(context.Context, *corev1.Node, string, string) (*corev1.Node, error) {
	return nil, nil
}
func (noNodes) MarkRebooting(context.Context, string, string) error    { return nil }
func (noNodes) SetWaiting(context.Context, string, string) error       { return nil }
func (noNodes) SetPhase(context.Context, string, string, string) error { return nil }
func (noNodes) Attached(context.Context, string, []lock.Volume) ([]lock.Volume, error) {
	return nil, nil
}
func (noNodes) Finish(context.Context, string, string) error           { return nil }
func (noNodes) Event(*corev1.Node, string, string, string, ...any)     {}
func (noNodes) Pending(context.Context, string) (drain.Pending, error) { return drain.Pending{}, nil }
func (noNodes) Enqueue(string)                                         {}

type oneSlot struct{}

func (oneSlot) For(string) groups.Settings { return groups.Settings{Slots: 1} }
func (oneSlot) Ready() error               { return nil }
func (oneSlot) Check(context.Context, string, groups.Settings, string) error {
	return nil
}

func newWaiting(t *testing.T, maxWait time.Duration) (*Coordinator, *memLock) {
	t.Helper()
	m := &memLock{}
	c := New(Deps{noNodes{}, m, noNodes{}, oneSlot{}, oneSlot{}}, Config{AllowUnknownNodes: true, Token: hostsToken, MaxWait: maxWait, Recheck: time.Hour}, nil,
		slog.New(slog.DiscardHandler))
	m.onChange = func() { c.Wake("g") }
	return c, m
}

// ask starts a pre-reboot and returns its answer channel once it is queued.
func ask(t *testing.T, ctx context.Context, c *Coordinator, id string) <-chan error {
	t.Helper()
	before := c.queue.size("g")
	out := make(chan error, 1)
	go func() { out <- c.PreReboot(withToken(ctx), fleetlock.ClientParams{ID: id, Group: "g"}) }()
	// Queued and refused once: it waits now, behind those asked before it
	// (queued alone, it may not have tried yet, and a release could find
	// it first).
	m, _ := c.lock.(*memLock)
	refused := func() bool {
		if m == nil {
			return true
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		return slices.Contains(m.refused, id)
	}
	deadline := time.Now().Add(5 * time.Second)
	for c.queue.size("g") == before || !refused() {
		if time.Now().After(deadline) {
			t.Fatalf("%s never queued", id)
		}
		time.Sleep(time.Millisecond)
	}
	return out
}

func answer(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("no answer within 5s")
		return nil
	}
}

func TestWaitersServedInOrder(t *testing.T) {
	ctx := context.Background()
	c, m := newWaiting(t, time.Minute)
	if err := c.PreReboot(withToken(ctx), fleetlock.ClientParams{ID: "x", Group: "g"}); err != nil {
		t.Fatal(err)
	}
	a, b, d := ask(t, ctx, c, "a"), ask(t, ctx, c, "b"), ask(t, ctx, c, "d")
	order := []string{"a", "b", "d"}
	chans := []<-chan error{a, b, d}
	prev := "x"
	for i, id := range order {
		if _, err := m.ReleaseMatching(ctx, "g", func(h lock.Holder) bool { return h.ID == prev }); err != nil {
			t.Fatal(err)
		}
		if err := answer(t, chans[i]); err != nil {
			t.Fatalf("%s: %v, want its turn", id, err)
		}
		if h := m.Cached(""); len(h) != 1 || h[0].ID != id {
			t.Fatalf("after releasing %s the holder is %v, want %s", prev, h, id)
		}
		prev = id
	}
	if n := c.queue.size("g"); n != 0 {
		t.Errorf("queue left with %d waiters", n)
	}
}

func TestWaitEnds(t *testing.T) {
	tests := []struct {
		name     string
		maxWait  time.Duration
		cancel   bool
		wantKind fleetlock.Kind
	}{
		{"deadline: lock_held", 50 * time.Millisecond, false, fleetlock.KindLockHeld},
		{"no waiting: lock_held at once", 0, false, fleetlock.KindLockHeld},
		{"connection closed: unavailable", time.Minute, true, fleetlock.KindUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, m := newWaiting(t, tt.maxWait)
			if err := c.PreReboot(withToken(context.Background()), fleetlock.ClientParams{ID: "x", Group: "g"}); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			out := make(chan error, 1)
			go func() { out <- c.PreReboot(withToken(ctx), fleetlock.ClientParams{ID: "a", Group: "g"}) }()
			if tt.cancel {
				for c.queue.size("g") == 0 {
					time.Sleep(time.Millisecond)
				}
				cancel()
			}
			if err := answer(t, out); !fleetlock.IsKind(err, tt.wantKind) {
				t.Fatalf("PreReboot = %v, want %s", err, tt.wantKind)
			}
			if h := m.Cached(""); len(h) != 1 || h[0].ID != "x" {
				t.Errorf("holders = %v, want only x", h)
			}
			if n := c.queue.size("g"); n != 0 {
				t.Errorf("queue left with %d waiters", n)
			}
		})
	}
}

// A waiter that leaves passes its turn on: the one behind it is not stuck.
func TestLeavingWaiterPassesTurnOn(t *testing.T) {
	c, m := newWaiting(t, time.Minute)
	bg := context.Background()
	if err := c.PreReboot(withToken(bg), fleetlock.ClientParams{ID: "x", Group: "g"}); err != nil {
		t.Fatal(err)
	}
	ctxA, cancelA := context.WithCancel(bg)
	a := ask(t, ctxA, c, "a")
	b := ask(t, bg, c, "b")
	// x's release wakes a, which leaves at the same instant.
	cancelA()
	if _, err := m.ReleaseMatching(bg, "g", func(h lock.Holder) bool { return h.ID == "x" }); err != nil {
		t.Fatal(err)
	}
	if errA := answer(t, a); errA == nil {
		// a won the race to the slot before seeing its cancellation; then b
		// waits for a's release.
		if _, err := m.ReleaseMatching(bg, "g", func(h lock.Holder) bool { return h.ID == "a" }); err != nil {
			t.Fatal(err)
		}
	}
	if errB := answer(t, b); errB != nil {
		t.Fatalf("b = %v, want its turn", errB)
	}
}

// The holder asking again is answered at once, even behind waiters.
func TestRecursiveAskSkipsQueue(t *testing.T) {
	c, _ := newWaiting(t, time.Minute)
	ctx := context.Background()
	if err := c.PreReboot(withToken(ctx), fleetlock.ClientParams{ID: "x", Group: "g"}); err != nil {
		t.Fatal(err)
	}
	ctxA, cancelA := context.WithCancel(ctx)
	defer cancelA()
	_ = ask(t, ctxA, c, "a")
	done := make(chan error, 1)
	go func() { done <- c.PreReboot(withToken(ctx), fleetlock.ClientParams{ID: "x", Group: "g"}) }()
	if err := answer(t, done); err != nil {
		t.Fatalf("holder's second ask = %v, want 200", err)
	}
}

// drainingNode is one known node whose pods leave after a few looks.
type drainingNode struct {
	noNodes
	mu        sync.Mutex
	looks     int
	emptyAt   int
	cordoned  bool
	holding   string
	rebooting bool
}

func (d *drainingNode) Lookup(string) ([]*corev1.Node, error) {
	return []*corev1.Node{{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{annotations.GroupLabel: "g"}}}}, nil
}

func (d *drainingNode) LookupFresh(context.Context, string) ([]*corev1.Node, error) {
	return d.Lookup("")
}

func (d *drainingNode) Fresh(context.Context, string) (*corev1.Node, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{annotations.GroupLabel: "g"}, Annotations: map[string]string{annotations.ZincatiID: "id", annotations.Holding: d.holding}},
		Spec: corev1.NodeSpec{Unschedulable: d.cordoned}}, nil
}

// StartDrain returns no node, as when nothing needed to change: the next
// pass reads the node again.
func (d *drainingNode) StartDrain(_ context.Context, _ *corev1.Node, _, holding string) (*corev1.Node, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cordoned, d.holding = true, holding
	return nil, nil
}

func (d *drainingNode) MarkRebooting(context.Context, string, string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rebooting = true
	return nil
}

func (d *drainingNode) SetPhase(context.Context, string, string, string) error { return nil }
func (d *drainingNode) Attached(context.Context, string, []lock.Volume) ([]lock.Volume, error) {
	return nil, nil
}
func (d *drainingNode) Pending(context.Context, string) (drain.Pending, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.looks++
	if d.looks >= d.emptyAt {
		return drain.Pending{}, nil
	}
	return drain.Pending{Pods: []corev1.Pod{{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p"}}}}, nil
}

func TestDrainWait(t *testing.T) {
	tests := []struct {
		name     string
		maxWait  time.Duration
		emptyAt  int
		wantKind fleetlock.Kind // "" for approval
	}{
		{"approved the moment the pods are gone", time.Minute, 4, ""},
		{"deadline first: drain_in_progress", 30 * time.Millisecond, 1000, fleetlock.KindDrainInProgress},
		{"no waiting: drain_in_progress at once", 0, 2, fleetlock.KindDrainInProgress},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &drainingNode{emptyAt: tt.emptyAt}
			m := &memLock{onChange: func() {}}
			c := New(Deps{d, m, d, oneSlot{}, oneSlot{}}, Config{MaxWait: tt.maxWait, DrainPoll: 5 * time.Millisecond}, nil, slog.New(slog.DiscardHandler))
			err := c.PreReboot(withToken(context.Background()), fleetlock.ClientParams{ID: "id", Group: "g"})
			if tt.wantKind == "" && err != nil || tt.wantKind != "" && !fleetlock.IsKind(err, tt.wantKind) {
				t.Fatalf("PreReboot = %v, want %q", err, tt.wantKind)
			}
			if d.rebooting != (tt.wantKind == "") {
				t.Errorf("marked Rebooting = %v", d.rebooting)
			}
			if tt.wantKind == "" && d.looks != tt.emptyAt {
				t.Errorf("looked %d times, want %d (approved at the first empty look)", d.looks, tt.emptyAt)
			}
		})
	}
}

// hostsToken is the token of hosts outside the cluster, which they need.
func hostsToken(string) string { return "hosts-token" }

func withToken(ctx context.Context) context.Context { return WithCredential(ctx, "hosts-token") }

// TestWaitersBounded: past MaxWaiters in a group, a pre-reboot is answered
// at once, with its place in line, and holds no connection; those within
// keep their turns.
func TestWaitersBounded(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := &memLock{}
	c := New(Deps{noNodes{}, m, noNodes{}, oneSlot{}, oneSlot{}}, Config{AllowUnknownNodes: true, Token: hostsToken,
		MaxWait: time.Minute, Recheck: time.Hour, MaxWaiters: 2}, nil, slog.New(slog.DiscardHandler))
	m.onChange = func() { c.Wake("g") }
	if err := c.PreReboot(withToken(ctx), fleetlock.ClientParams{ID: "x", Group: "g"}); err != nil {
		t.Fatal(err)
	}
	a, b := ask(t, ctx, c, "a"), ask(t, ctx, c, "b")
	start := time.Now()
	err := c.PreReboot(withToken(ctx), fleetlock.ClientParams{ID: "late", Group: "g"})
	if !fleetlock.IsKind(err, fleetlock.KindLockHeld) || !strings.Contains(err.Error(), "2 requests wait ahead") {
		t.Fatalf("third waiter = %v, want lock_held naming 2 ahead", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the third waiter was answered after %s, want at once", d)
	}
	if _, err := m.ReleaseMatching(ctx, "g", func(h lock.Holder) bool { return h.ID == "x" }); err != nil {
		t.Fatal(err)
	}
	if err := answer(t, a); err != nil {
		t.Fatalf("first waiter = %v, want its turn", err)
	}
	select {
	case err := <-b:
		t.Fatalf("second waiter answered %v while the slot is held", err)
	case <-time.After(50 * time.Millisecond):
	}
}

// windowed is a group whose maintenance window opens at 02:00 UTC, and a
// gate that turns every request away until it is told the window opened.
type windowed struct {
	mu   sync.Mutex
	open bool
}

func (w *windowed) For(string) groups.Settings {
	return groups.Settings{Slots: 1, Windows: []groups.Window{{Start: "02:00", End: "04:00"}}}
}
func (w *windowed) Ready() error { return nil }
func (w *windowed) Check(_ context.Context, group string, _ groups.Settings, _ string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.open {
		return fleetlock.Errorf(fleetlock.KindOutsideWindow, "group %q is outside its maintenance windows", group)
	}
	return nil
}

// TestWaitForWindow: a pre-reboot that finds its group outside its
// window waits server-side for the window when it opens before the
// deadline, and is answered outside_window at once when it does not.
func TestWaitForWindow(t *testing.T) {
	tests := []struct {
		name    string
		now     string // UTC, on some day
		maxWait time.Duration
		granted bool
	}{
		{"opens in a second, within the wait", "01:59:59", time.Minute, true},
		{"opens after the wait", "01:00:00", time.Minute, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now, _ := time.Parse("2006-01-02 15:04:05", "2026-12-02 "+tt.now)
			w := &windowed{}
			c := New(Deps{noNodes{}, &memLock{}, noNodes{}, w, w}, Config{AllowUnknownNodes: true, Token: hostsToken,
				MaxWait: tt.maxWait, Recheck: time.Hour}, nil, slog.New(slog.DiscardHandler))
			c.now = func() time.Time { return now }
			time.AfterFunc(500*time.Millisecond, func() { w.mu.Lock(); w.open = true; w.mu.Unlock() })
			start := time.Now()
			err := c.PreReboot(withToken(context.Background()), fleetlock.ClientParams{ID: "a", Group: "g"})
			took := time.Since(start)
			if tt.granted && (err != nil || took < 500*time.Millisecond) {
				t.Fatalf("PreReboot = %v after %s, want the grant once the window opens", err, took)
			}
			if !tt.granted && (!fleetlock.IsKind(err, fleetlock.KindOutsideWindow) || took > 400*time.Millisecond) {
				t.Fatalf("PreReboot = %v after %s, want outside_window at once", err, took)
			}
		})
	}
}
