// Package coordinator makes the two FleetLock decisions, pre-reboot and
// steady-state, by orchestrating the node directory, the group semaphore and
// the drainer. It knows nothing of HTTP.
package coordinator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	"github.com/rebootmanager/reboot-manager/arbiter/drain"
	"github.com/rebootmanager/reboot-manager/arbiter/groups"
	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/arbiter/nodes"
	"github.com/rebootmanager/reboot-manager/arbiter/volumes"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
)

// Nodes finds and changes Nodes.
type Nodes interface {
	// Lookup names the Nodes of an id from the cache.
	Lookup(id string) ([]*corev1.Node, error)
	// LookupFresh names them from a consistent list of every Node.
	LookupFresh(ctx context.Context, id string) ([]*corev1.Node, error)
	// Fresh reads a Node from the API server.
	Fresh(ctx context.Context, name string) (*corev1.Node, error)
	// StartDrain cordons the node for a holding and mirrors Draining. It
	// returns the node as its write left it (nil when nothing changed).
	StartDrain(ctx context.Context, from *corev1.Node, group, holding string) (*corev1.Node, error)
	// MarkRebooting mirrors an approval.
	MarkRebooting(ctx context.Context, name, bootID string) error
	// SetPhase shows the phase of the holding's cycle on the node.
	SetPhase(ctx context.Context, name, holding, phase string) error
	// SetWaiting shows why a pre-reboot was turned away ("" clears it).
	SetWaiting(ctx context.Context, name, reason string) error
	// Finish ends the holding's cycle on the node: uncordon if ours, Ready.
	Finish(ctx context.Context, name, holding string) error
	// Event records an Event on the node.
	Event(n *corev1.Node, eventType, reason, format string, args ...any)
}

// Lock is the group semaphore.
type Lock interface {
	// AcquireFrom, Get, Advance and ReleaseMatching read the lock object
	// fresh (AcquireFrom's first attempt from a fresh Listing, when given)
	// and write it by compare-and-swap.
	AcquireFrom(ctx context.Context, from *lock.Listing, group string, h lock.Holder, lim lock.Limits, admit func() error) (lock.Result, error)
	Get(ctx context.Context, group string) (lock.Object, error)
	Advance(ctx context.Context, group, id string, since time.Time, change func(*lock.Holder)) (lock.Holder, error)
	SteadyState(ctx context.Context, from *lock.Listing, group string, match func(lock.Holder) bool, now time.Time) (released, kept []lock.Holder, err error)
	Approve(ctx context.Context, group, id string, since time.Time, nodeUID types.UID, a lock.Approval) (lock.Holder, bool, error)
	ReleaseMatching(ctx context.Context, group string, match func(lock.Holder) bool) ([]lock.Holder, error)
	// Fresh, FreshNow and FreshListing list every group's lock object from
	// the API server (FreshNow never waits for the spacing between lists);
	// FreshGroups reads only those of groups.
	Fresh(ctx context.Context) (map[string][]lock.Holder, error)
	FreshNow(ctx context.Context) (*lock.Listing, error)
	FreshListing(ctx context.Context) (*lock.Listing, error)
	FreshGroups(ctx context.Context, groups []string) (*lock.Listing, error)
	// Leave withdraws the word for a waiting request in the line.
	Leave(ctx context.Context, group, id string) error
	// Cached, Line, CoolingOff and All read the cache: hints, displays and
	// refusals only.
	Cached(group string) []lock.Holder
	Line(group string) []lock.Waiter
	CoolingOff(group, node string) (lock.CoolOff, bool)
	All() (map[string][]lock.Holder, error)
}

// Drainer empties nodes.
type Drainer interface {
	// Pending lists, fresh, the pods that must still leave the node.
	Pending(ctx context.Context, node string) (drain.Pending, error)
	// Attached returns, fresh, the volumes still attached to the node.
	Attached(ctx context.Context, node string, vols []lock.Volume) ([]lock.Volume, error)
	Enqueue(node string)
}

// Settings gives each group's settings.
type Settings interface {
	For(group string) groups.Settings
	// Ready is nil once a valid configuration was read.
	Ready() error
}

// Gate admits or turns away a new slot holder: pauses, windows, blockers.
type Gate interface {
	Check(ctx context.Context, group string, s groups.Settings, node string) error
}

// Deps are what the coordinator orchestrates.
type Deps struct {
	Nodes    Nodes
	Lock     Lock
	Drainer  Drainer
	Settings Settings
	Gate     Gate
}

// Config tunes the decisions.
type Config struct {
	// AllowUnknownNodes grants slots to ids that match no Node, as a plain
	// semaphore with no drain, for hosts outside the cluster.
	AllowUnknownNodes bool
	// MaxWait, when positive, is how long a pre-reboot may wait server-side
	// for a slot or for its node's drain before it is answered 423. Zero
	// answers at once (plain polling).
	MaxWait time.Duration
	// DrainPoll is how often a waiting pre-reboot looks at its node's pods
	// (default 1s).
	DrainPoll time.Duration
	// Recheck is how often a waiter asks for a slot even unwoken, in case a
	// wake-up was missed (default 30s).
	Recheck time.Duration
	// SourceBinding accepts a request for a known node without a credential
	// only from one of that node's own addresses (see WithSource).
	SourceBinding bool
	// SourcePodBridge counts the first address of the node's pod CIDR as
	// the node's under source binding (an IPAM that hands it to a pod lets
	// that pod act for the node).
	SourcePodBridge bool
	// RequireNodeCredential refuses requests for a Node that has no
	// credential hash, instead of serving it unprotected.
	RequireNodeCredential bool
	// Token returns the token a group's requests must carry, "" for none:
	// for Nodes without a credential (their own group's) and for hosts
	// outside the cluster (the group they name).
	Token func(group string) string
	// MaxGroups caps the lock objects that hosts outside the cluster may
	// bring into being by naming new groups (default 64).
	MaxGroups int
	// MaxWaiters bounds, per group, the pre-reboots that wait server-side
	// on this replica (default 10): later ones are answered 423 at once,
	// with their place in line, so waiting requests never hold the
	// connections that releases and new requests need.
	MaxWaiters int
	// VolumeDetachTimeout, when positive, bounds the wait for the evicted
	// pods' volumes to be detached once they are unmounted; after it the
	// reboot is approved with a VolumeDetachTimeout Warning Event.
	VolumeDetachTimeout time.Duration
}

// Coordinator decides FleetLock requests.
type Coordinator struct {
	nodes    Nodes
	lock     Lock
	drainer  Drainer
	settings Settings
	gate     Gate
	cfg      Config
	log      *slog.Logger
	now      func() time.Time
	metrics  *Metrics
	queue    *waitQueue
	// unprotected is which Nodes were warned that they have no credential.
	unprotected unprotected
}

// New returns a Coordinator that reports to m; nil m means unregistered
// metrics.
func New(deps Deps, cfg Config, m *Metrics, log *slog.Logger) *Coordinator {
	if m == nil {
		m = NewMetrics(nil)
	}
	if cfg.DrainPoll <= 0 {
		cfg.DrainPoll = time.Second
	}
	if cfg.Recheck <= 0 {
		cfg.Recheck = 30 * time.Second
	}
	if cfg.MaxGroups <= 0 {
		cfg.MaxGroups = 64
	}
	if cfg.MaxWaiters <= 0 {
		cfg.MaxWaiters = 10
	}
	return &Coordinator{nodes: deps.Nodes, lock: deps.Lock, drainer: deps.Drainer, settings: deps.Settings, gate: deps.Gate,
		cfg: cfg, log: log, now: time.Now, metrics: m, queue: newWaitQueue()}
}

// PreReboot answers a pre-reboot: nil means the node may reboot now. It
// takes or confirms a slot, cordons the node and has it drained, and
// approves only once every evictable pod is gone. Any other outcome is a
// *fleetlock.Error.
//
// Inputs and their freshness: the groups settings (watched, must have been
// read once); the Node named by the id (cache: it names who asks, and its
// group and credential hash can only refuse); the lock object (fresh: every
// step reads it or writes it by compare-and-swap); the node's credential
// hash, spec and pods (a consistent GET, checked again every round, and a
// LIST before any 200). See decide and authenticate.
//
// With Config.MaxWait set, a pre-reboot that finds its group full, or its
// node still draining, waits server-side up to MaxWait instead of turning
// the node away until its next tick: waiters for a slot are served in
// arrival order the moment one frees, and a drained node is approved at
// once. A waiter holds nothing while it waits; a waiter whose connection
// closes leaves the queue.
func (c *Coordinator) PreReboot(ctx context.Context, p fleetlock.ClientParams) error {
	log := c.requestLog(ctx, p)
	if err := c.settings.Ready(); err != nil {
		log.Warn("pre-reboot refused: no valid groups settings", "err", err)
		return fleetlock.Errorf(fleetlock.KindUnavailable, "no reboot is granted until the groups settings are read: %v", err)
	}
	node, err := c.resolve(ctx, log, p)
	if err != nil {
		return err
	}
	if node == nil && !c.cfg.AllowUnknownNodes {
		log.Warn("pre-reboot from an unknown node")
		return unknownNode(p.ID)
	}
	h := lock.Holder{ID: p.ID}
	if node != nil {
		h.Node, h.NodeUID = node.Name, node.UID
		log = log.With("node", node.Name)
	}
	// Who asks first: an unproven caller learns nothing of the node.
	if err := c.authenticate(ctx, log, node, p.Group); err != nil {
		return err
	}
	if node != nil {
		if err := c.checkGroup(ctx, log, p, node); err != nil {
			return err
		}
	}
	if node == nil {
		if err := c.checkGroupCount(p.Group); err != nil {
			return err
		}
	}
	if node != nil {
		// A node cooling off after a failed drain is turned away at once
		// (the cache can only refuse; Acquire checks the lock object).
		if co, ok := c.lock.CoolingOff(p.Group, node.Name); ok {
			return coolingOff(log, p.Group, co)
		}
	}
	var deadline <-chan time.Time
	until := c.now().Add(c.cfg.MaxWait)
	if c.cfg.MaxWait > 0 {
		t := time.NewTimer(c.cfg.MaxWait)
		defer t.Stop()
		deadline = t.C
	}

	mine, read, err := c.takeSlot(ctx, log, p, node, h, deadline, until)
	if err != nil {
		return err
	}
	if mine.Node != nodeName(node) {
		// The id moved (or a Node appeared for it) mid-cycle: act for
		// neither node; a person sorts it out.
		return c.ambiguous(log, p.ID, fmt.Sprintf("it holds a slot for %s but now names %s", who(mine.Node), who(nodeName(node))))
	}
	if node == nil {
		log.Info("reboot approved for a host outside the cluster")
		return nil
	}
	err = c.cycle(ctx, log, p, mine, read, deadline)
	if fleetlock.IsKind(err, fleetlock.KindLockHeld) {
		// The slot went while the request was under way: say so if its
		// drain failed and gave it back (a fresh read; it only refuses).
		if o, gerr := c.lock.Get(ctx, p.Group); gerr == nil {
			if co, ok := o.CoolingOff(node.Name, c.now()); ok {
				return coolingOff(log, p.Group, co)
			}
		}
	}
	return err
}

// coolingOff is the drain_failed answer to a node whose drain failed.
func coolingOff(log *slog.Logger, group string, co lock.CoolOff) error {
	log.Info("turned away: the node's drain failed; it cools off", "retry_after", co.Until)
	return fleetlock.Errorf(fleetlock.KindDrainFailed, "%s", (&lock.CoolingOffError{Group: group, CoolOff: co}).Error())
}

// resolve names the Node that the request is about. The cache names the
// candidates; an id that several Nodes share is refused, unless a fresh read
// of the lock object shows it holding a slot for one of them: a request
// about a held slot is about the node the lock object records, never
// another.
func (c *Coordinator) resolve(ctx context.Context, log *slog.Logger, p fleetlock.ClientParams) (*corev1.Node, error) {
	found, err := c.nodes.Lookup(p.ID)
	if err == nil && len(found) == 0 && c.cfg.AllowUnknownNodes {
		// "Outside the cluster" means no drain: confirm it on a fresh list,
		// so a Node or an id the cache has not seen yet is still drained.
		found, err = c.nodes.LookupFresh(ctx, p.ID)
	}
	if err != nil {
		return nil, failure(log, "look up the node", err)
	}
	switch len(found) {
	case 0:
		return nil, nil
	case 1:
		return found[0], nil
	}
	o, err := c.lock.Get(ctx, p.Group)
	if err != nil {
		return nil, failure(log, "read the lock object", err)
	}
	if h, ok := o.Holder(p.ID); ok {
		for _, n := range found {
			if n.Name == h.Node {
				return n, nil
			}
		}
	}
	names := nodeNames(found)
	for _, n := range found {
		c.nodes.Event(n, corev1.EventTypeWarning, "AmbiguousZincatiID",
			"Zincati id %s matches several Nodes: %s; their requests are refused until one changes", p.ID, strings.Join(names, ", "))
	}
	return nil, c.ambiguous(log, p.ID, "it matches the Nodes "+strings.Join(names, ", ")+
		" (a cloned /etc/machine-id? regenerate it on the clones)")
}

func (c *Coordinator) ambiguous(log *slog.Logger, id, why string) error {
	log.Warn("request for an ambiguous id", "why", why)
	return fleetlock.Errorf(fleetlock.KindAmbiguousID, "Zincati id %s is ambiguous: %s", id, why)
}

// takeSlot takes or confirms the caller's slot and returns its record as
// the lock object holds it. A new holder must first pass the gate (pause,
// windows, blockers), which Acquire consults only when the fresh lock object
// shows the id holding nothing; then the semaphore (slots, the minimum gap,
// the line). Without a deadline it asks once. With one it joins the
// group's line, kept in the lock object so that every replica grants in
// order of first arrival, and asks again whenever Wake says its turn may
// have come, the gap has passed, or the window opens, until the deadline
// (at until). A host that finds the line full is answered at once, and so
// is a gate refusal, unless the window opens before the deadline.
//
// When this call took the slot, it also returns the consistent GET of the
// node that admitted it (made in the attempt that took it, before its
// compare-and-swap), from which the cycle starts; otherwise nil.
func (c *Coordinator) takeSlot(ctx context.Context, log *slog.Logger, p fleetlock.ClientParams, node *corev1.Node, h lock.Holder,
	deadline <-chan time.Time, until time.Time) (lock.Holder, *corev1.Node, error) {
	var w *waiter
	if deadline != nil {
		holds := c.holdsCached(p.Group, p.ID)
		if n := c.lineFullCached(p.Group, p.ID); n > 0 && !holds {
			// The cache can only refuse: the line is full without it.
			c.metrics.lineFull.WithLabelValues(p.Group).Inc()
			return lock.Holder{}, nil, c.lineFull(p.Group, n)
		}
		if n := c.queue.size(p.Group); n >= c.cfg.MaxWaiters && !holds {
			// Enough wait on this replica to fill every slot that may
			// free soon: answer now, and keep the connection for others.
			c.metrics.lineFull.WithLabelValues(p.Group).Inc()
			return lock.Holder{}, nil, fleetlock.Errorf(fleetlock.KindLockHeld,
				"group %q is full, and %d requests wait ahead of this one on this server, the most it holds: ask again later", p.Group, n)
		}
		w, _ = c.queue.join(p.Group, p.ID)
		defer func() {
			c.queue.leave(p.Group, w)
			if ctx.Err() != nil {
				// The client went away: withdraw the word for it, so the
				// line does not wait on a request that is gone.
				c.leaveLine(log, p.Group, p.ID)
			}
			c.Wake(p.Group) // pass on a wake-up this waiter may have used
		}()
	}
	// A waiter asks again every Recheck even unwoken, and often enough to
	// keep up the word for its waiting request in the line.
	// Each waiter on its own rhythm (±25%): waiters that arrived together
	// must not all write the lock object in the same instant.
	every := min(c.cfg.Recheck, lock.Presence/3)
	jittered := func() time.Duration { return every*3/4 + rand.N(every/2+1) }
	recheck := time.NewTimer(jittered())
	defer recheck.Stop()
	var timer *time.Timer // the gap's end, or the window's opening
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	noted := ""
	var read *corev1.Node // the node as this attempt's admission read it
	for first := true; ; first = false {
		if !first {
			recheck.Reset(jittered())
		}
		s := c.settings.For(p.Group)
		lim := lock.Limits{Slots: s.Slots, MinGap: s.MinGap.Duration}
		if deadline != nil {
			lim.Line = lock.Line{Length: c.lineLength(s), Until: minTime(until, c.now().Add(lock.Presence))}
		}
		read = nil
		// A Node's attempt decides on a consistent list of every lock
		// object, made for it: it shows a slot held in another group, and
		// the compare-and-swap starts from the group's object in it.
		var listing *lock.Listing
		if node != nil {
			var err error
			if listing, err = c.lock.FreshNow(ctx); err != nil {
				if ctx.Err() != nil {
					return lock.Holder{}, nil, interrupted(ctx, log)
				}
				return lock.Holder{}, nil, failure(log, "list the reboot slots", err)
			}
		}
		admit := func() error {
			// A new holder: who asks, on a fresh read of the node (the
			// token of a host outside the cluster again, which a long
			// wait may have outlived) ...
			var n *corev1.Node
			if node != nil {
				var err error
				if n, err = c.nodes.Fresh(ctx, node.Name); err != nil {
					return err
				}
				read = n
			}
			if err := c.authenticate(ctx, log, n, p.Group); err != nil {
				return err
			}
			// ... and no slot of the node in another group, on the
			// attempt's consistent list of the lock objects.
			if node != nil {
				if err := c.holdsElsewhere(log, listing, p.Group, node.Name); err != nil {
					return err
				}
			}
			err := c.gate.Check(ctx, p.Group, s, h.Node)
			if fleetlock.IsKind(err, fleetlock.KindBlocked) {
				return lock.LosePlace(err) // blocked: it never holds up the line
			}
			return err
		}
		checkAuth := admit
		admit = func() error {
			err := checkAuth()
			if fleetlock.IsKind(err, fleetlock.KindUnauthorized) || fleetlock.IsKind(err, fleetlock.KindWrongGroup) {
				return lock.LosePlace(err)
			}
			return err
		}
		res, err := c.lock.AcquireFrom(ctx, listing, p.Group, h, lim, admit)
		err = haltedKind(err)
		var fe *fleetlock.Error
		var opens <-chan time.Time
		switch {
		case errors.As(err, &fe) && (fe.Kind == fleetlock.KindUnauthorized || fe.Kind == fleetlock.KindWrongGroup):
			return lock.Holder{}, nil, fe
		case errors.As(err, &fe) && fe.Kind == fleetlock.KindOutsideWindow && deadline != nil:
			// Wait for the window if it opens before the deadline.
			at, ok := s.OpensWithin(c.now(), until.Sub(c.now()))
			if !ok {
				c.noteWaiting(ctx, log, p.Group, node, fe.Value, &noted)
				return lock.Holder{}, nil, fe
			}
			c.noteWaiting(ctx, log, p.Group, node, fmt.Sprintf("group %q waits for its maintenance window, which opens at %s", p.Group, at.UTC().Format(time.RFC3339)), &noted)
			// A little jitter, so the waiters of every replica do not all
			// write the lock object in the same instant; the line keeps
			// their order.
			timer = resetTimer(timer, at.Sub(c.now())+rand.N(2*time.Second))
			opens = timer.C
			select {
			case <-opens:
			case <-recheck.C: // keep up the word for this request in the line
			case <-deadline:
				return lock.Holder{}, nil, fe
			case <-ctx.Done():
				return lock.Holder{}, nil, interrupted(ctx, log)
			}
			continue
		case errors.As(err, &fe):
			c.noteWaiting(ctx, log, p.Group, node, fe.Value, &noted)
			return lock.Holder{}, nil, fe
		case err != nil && ctx.Err() != nil:
			return lock.Holder{}, nil, interrupted(ctx, log)
		case errors.Is(err, lock.ErrContention) && deadline != nil:
			// Many wrote at once: a waiter has time to ask again.
			log.Debug("lock object contended; asking again", "err", err)
			select {
			case <-time.After(50*time.Millisecond + rand.N(200*time.Millisecond)):
				continue
			case <-deadline:
			case <-ctx.Done():
				return lock.Holder{}, nil, interrupted(ctx, log)
			}
			return lock.Holder{}, nil, failure(log, "take a reboot slot", err)
		case err != nil:
			return lock.Holder{}, nil, failure(log, "take a reboot slot", err)
		case res.Granted:
			if res.Changed {
				log.Info("slot taken", "slots", s.Slots, "line", len(res.Line))
			}
			if !res.Changed {
				read = nil // held before: the cycle reads the node itself
			}
			return res.Holder, read, nil
		}
		if lim.Line.Length > 0 && res.Place < 0 {
			c.metrics.lineFull.WithLabelValues(p.Group).Inc()
			return lock.Holder{}, nil, c.lineFull(p.Group, len(res.Line))
		}
		var denial error
		var gapOver <-chan time.Time
		inLine := ""
		if res.Place > 0 {
			inLine = fmt.Sprintf("; %d hosts are ahead of this one in line", res.Place)
		}
		if res.GapLeft > 0 {
			denial = fleetlock.Errorf(fleetlock.KindMinGap, "group %q grants a slot at most every %s; the next in %s%s",
				p.Group, s.MinGap.Duration, res.GapLeft.Round(time.Second), inLine)
			c.noteWaiting(ctx, log, p.Group, node, fmt.Sprintf("group %q waits out its minimum gap of %s", p.Group, s.MinGap.Duration), &noted)
			timer = resetTimer(timer, res.GapLeft)
			gapOver = timer.C
		} else {
			denial = fleetlock.Errorf(fleetlock.KindLockHeld, "group %q has %d of %d slots taken, by %s%s",
				p.Group, len(res.Holders), s.Slots, c.describe(res.Holders), inLine)
			// The same words through every hand-off: a mark that named the
			// holders would cost every waiting node a write at each one.
			c.noteWaiting(ctx, log, p.Group, node, fmt.Sprintf("group %q is full: all %d slots are held", p.Group, s.Slots), &noted)
		}
		if deadline == nil {
			return lock.Holder{}, nil, denial
		}
		select {
		case <-w.wake:
		case <-gapOver:
		case <-recheck.C:
		case <-deadline:
			return lock.Holder{}, nil, denial
		case <-ctx.Done():
			return lock.Holder{}, nil, interrupted(ctx, log)
		}
	}
}

// lineLength is how many hosts may wait in a group's line: enough to fill
// every slot that may free soon.
func (c *Coordinator) lineLength(s groups.Settings) int { return max(c.cfg.MaxWaiters, 2*s.Slots) }

// lineFullCached returns the length of group's line when the cache shows
// the group full and its line full of live entries without id, else 0: a
// refusal only. (Expired entries are not counted: only a grant prunes
// them, and it must be reached.)
func (c *Coordinator) lineFullCached(group, id string) int {
	s := c.settings.For(group)
	holders := c.lock.Cached(group)
	if len(holders) < s.Slots {
		return 0
	}
	line := lock.Live(c.lock.Line(group), holders, c.now())
	if len(line) < c.lineLength(s) || slices.ContainsFunc(line, func(w lock.Waiter) bool { return w.ID == id }) {
		return 0
	}
	return len(line)
}

// lineFull is the answer to a host that finds the line full.
func (c *Coordinator) lineFull(group string, n int) error {
	return fleetlock.Errorf(fleetlock.KindLockHeld,
		"group %q is full, and %d hosts wait ahead of this one in its line, the most it keeps: ask again later", group, n)
}

// leaveLine withdraws the word for id's waiting request; best effort,
// after the request's own context ended.
func (c *Coordinator) leaveLine(log *slog.Logger, group, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.lock.Leave(ctx, group, id); err != nil {
		log.Debug("leaving the line failed; the word for the request runs out by itself", "err", err)
	}
}

func resetTimer(t *time.Timer, d time.Duration) *time.Timer {
	if t != nil {
		t.Stop()
	}
	return time.NewTimer(d)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func (c *Coordinator) holdsCached(group, id string) bool {
	return slices.ContainsFunc(c.lock.Cached(group), func(h lock.Holder) bool { return h.ID == id })
}

// noteWaiting logs why a node is turned away and records it on the node,
// once per distinct reason.
func (c *Coordinator) noteWaiting(ctx context.Context, log *slog.Logger, group string, node *corev1.Node, reason string, noted *string) {
	if *noted == reason {
		return
	}
	*noted = reason
	log.Info("turned away before a slot", "reason", reason, "waiters", c.queue.size(group))
	if node == nil {
		return
	}
	if err := c.nodes.SetWaiting(ctx, node.Name, reason); err != nil {
		log.Warn("recording why the node waits failed", "err", err)
	}
}

// cycle drives a holder's node through the cycle until its reboot is
// approved: each round reads the node (GET) and its pods (LIST) fresh, and
// decide says what to do with them and the holder's record, which every
// change rewrites by compare-and-swap. Without a deadline it answers after
// one look at the pods; with one it looks again every DrainPoll until the
// deadline.
func (c *Coordinator) cycle(ctx context.Context, log *slog.Logger, p fleetlock.ClientParams, h lock.Holder, read *corev1.Node, deadline <-chan time.Time) error {
	cordons := 0
	var check *idCheck
	if h.Stage() != lock.PhaseApproved {
		// An approval may follow: the id check starts now, alongside
		// the cordon and the pods' list, and is waited for only then.
		check = c.startIDCheck(ctx, p.ID)
		defer check.stop() // it never outlives the request
	}
	for {
		// Each pass decides on a read of the node made in this request and
		// as fresh as a consistent GET: for the first, the GET that
		// admitted the slot just taken; after a cordon, the node as the
		// cordon's write returned it; else a new GET.
		n := read
		read = nil
		if n == nil {
			var err error
			if n, err = c.nodes.Fresh(ctx, h.Node); err != nil {
				return c.failed(ctx, log, "read the node", err)
			}
		}
		if err := c.authenticate(ctx, log, n, p.Group); err != nil {
			return err
		}
		ids, _ := nodes.IndexByID(n)
		identified := slices.Contains(ids, p.ID)
		// Cordoned for this holding: unschedulable and marked as its cycle, so
		// that only this cycle's end uncordons it (an admin's or an earlier
		// cycle's cordon gets the mark first).
		cordoned := n.Spec.Unschedulable && n.Annotations[annotations.Holding] == h.Holding(p.Group)
		var pending drain.Pending
		var err error
		if identified && cordoned {
			if pending, err = c.drainer.Pending(ctx, h.Node); err != nil {
				return c.failed(ctx, log, "list the node's pods", err)
			}
		}
		rebooted := h.Approval != nil && n.Status.NodeInfo.BootID != h.Approval.BootID
		volumesLeft := ""
		if identified && cordoned && pending.Done() && h.Stage() != lock.PhaseApproved && len(h.Volumes) > 0 {
			if h, volumesLeft, err = c.volumesLeft(ctx, log, p, h); err != nil {
				return c.failed(ctx, log, "check the evicted pods' volumes", err)
			}
		}
		st := decide(h, identified, rebooted, cordoned, pending, volumesLeft == "")
		log.Debug("pre-reboot step", "step", st.String(), "phase", h.Stage(), "cordoned", cordoned, "pods", len(pending.Pods))
		switch st {
		case stepRefuse:
			return c.ambiguous(log, p.ID, fmt.Sprintf("node %s, whose slot it holds, no longer carries it (ids %v)", h.Node, ids))
		case stepReturned:
			return fleetlock.Errorf(fleetlock.KindLockHeld,
				"node %s rebooted since its reboot was approved; its slot passes on once it is back, and a new reboot needs a new slot", h.Node)
		case stepConfirm:
			// Recursive: approved before, and the node is still cordoned and
			// empty. Read the lock again after the node and its pods: a
			// release since the first read is never confirmed.
			// A steady-state recorded since (Zincati restarted on this boot
			// and asks again) is void now: the node is about to reboot, and
			// must not be taken for one that never went down.
			if h, err = c.advance(ctx, p, h, func(r *lock.Holder) {
				r.SteadyStateAt, r.BackAt, r.BackBootID = nil, nil, ""
			}); err != nil {
				return c.failed(ctx, log, "confirm the slot", err)
			}
			if h.Stage() != lock.PhaseApproved {
				continue // changed under us: decide again
			}
			c.mirrorApproval(ctx, log, h)
			return nil
		case stepApprove:
			return c.approve(ctx, log, p, h, n, check)
		case stepCordon:
			// Record the drain first: the compare-and-swap proves the slot is
			// still ours a moment before the cordon. (A release landing in
			// between leaves a cordon with this holding's mark, which the
			// reconciler removes.)
			decided := h.Stage()
			now := c.now().UTC()
			if h, err = c.advance(ctx, p, h, func(r *lock.Holder) {
				if r.Stage() == decided {
					r.Phase, r.Approval, r.DrainingSince = lock.PhaseDraining, nil, &now
					r.ApprovedBefore = r.ApprovedBefore || decided == lock.PhaseApproved
				}
			}); err != nil {
				return c.failed(ctx, log, "record the drain", err)
			}
			if h.Stage() != lock.PhaseDraining {
				continue // approved meanwhile through another replica: decide again
			}
			if read, err = c.nodes.StartDrain(ctx, n, p.Group, h.Holding(p.Group)); err != nil {
				return c.failed(ctx, log, "cordon the node", err)
			}
			c.drainer.Enqueue(h.Node)
			if cordons++; cordons <= 2 {
				continue // look again at once: the node is cordoned now
			}
		case stepWait:
			c.drainer.Enqueue(h.Node)
		case stepVolumes:
			if err := c.nodes.SetPhase(ctx, h.Node, h.Holding(p.Group), annotations.StatusWaitingForVolumes); err != nil {
				log.Debug("showing the wait for volumes failed", "err", err)
			}
		}
		answer := func() error {
			if st == stepVolumes {
				return fleetlock.Errorf(fleetlock.KindDrainInProgress, "no pods remain; %s", volumesLeft)
			}
			return c.draining(log, p, h.Node, pending)
		}
		if deadline == nil {
			return answer()
		}
		t := time.NewTimer(c.cfg.DrainPoll)
		select {
		case <-t.C:
		case <-deadline:
			t.Stop()
			return answer()
		case <-ctx.Done():
			t.Stop()
			return interrupted(ctx, log)
		}
	}
}

// volumesLeft says what the reboot of h's node still waits for among the
// volumes of the pods its drain evicted, or "" when nothing. Inputs and
// their freshness: the volumes from the holder's record (as the caller's
// CAS returned it); the Node's volumesInUse by a consistent GET made after
// the pods were listed gone; the VolumeAttachments by a consistent LIST.
// The first time no volume is in use is recorded by CAS, and bounds the
// wait for the detach by VolumeDetachTimeout.
func (c *Coordinator) volumesLeft(ctx context.Context, log *slog.Logger, p fleetlock.ClientParams, h lock.Holder) (lock.Holder, string, error) {
	n, err := c.nodes.Fresh(ctx, h.Node)
	if err != nil {
		return h, "", err
	}
	if inUse := volumes.InUse(n, h.Volumes); len(inUse) > 0 {
		return h, fmt.Sprintf("waiting for the volumes of evicted pods to be unmounted (still in the node's volumesInUse): %s",
			strings.Join(volumes.Names(inUse), ", ")), nil
	}
	if h.UnmountedAt == nil {
		now := c.now().UTC()
		if h, err = c.advance(ctx, p, h, func(r *lock.Holder) {
			if r.UnmountedAt == nil {
				r.UnmountedAt = &now
			}
		}); err != nil {
			return h, "", err
		}
	}
	attached, err := c.drainer.Attached(ctx, h.Node, h.Volumes)
	if err != nil || len(attached) == 0 {
		return h, "", err
	}
	names := strings.Join(volumes.Names(attached), ", ")
	if t := c.cfg.VolumeDetachTimeout; t > 0 && c.now().Sub(*h.UnmountedAt) > t {
		log.Warn("volumes still attached after the detach timeout; approving, they are unmounted", "volumes", names, "timeout", t)
		c.nodes.Event(n, corev1.EventTypeWarning, "VolumeDetachTimeout",
			"volumes %s still attached %s after they were unmounted; rebooting anyway: the attach/detach controller detaches them once the node is back, or force-detaches them after 6 minutes NotReady", names, t)
		return h, "", nil
	}
	return h, fmt.Sprintf("waiting for the VolumeAttachments of volumes of evicted pods to be deleted (detached): %s", names), nil
}

// approve records the approval in the lock object, with what the node is
// now (its boot id, OS image and version, from the fresh read n), by a
// compare-and-swap that fails if the holding is gone: a slot released while
// the request waited is never approved. Only then does it answer 200.
func (c *Coordinator) approve(ctx context.Context, log *slog.Logger, p fleetlock.ClientParams, h lock.Holder, n *corev1.Node, check *idCheck) error {
	// The cache said the id names this Node alone; a clone that joined a
	// moment ago would make the 200 go to the wrong host. Once per cycle,
	// confirm it on a consistent list of the Nodes: the one check started in
	// this request, if it started at most IDCheckAge ago, else a new one.
	found, err := c.confirmID(ctx, check, p.ID)
	if err != nil {
		return c.failed(ctx, log, "confirm the id names one Node", err)
	}
	if len(found) != 1 || found[0].Name != n.Name {
		return c.ambiguous(log, p.ID, "it matches the Nodes "+strings.Join(nodeNames(found), ", "))
	}
	now := c.now()
	rec, mine, err := c.lock.Approve(ctx, p.Group, h.ID, h.Since, n.UID, lock.Approval{At: now.UTC(),
		BootID: n.Status.NodeInfo.BootID, OSImage: n.Status.NodeInfo.OSImage, OSVersion: n.Annotations[annotations.OSVersion]})
	if err := haltedKind(err); fleetlock.IsKind(err, fleetlock.KindHalted) {
		log.Info("reboot not approved: the group is halted")
		return err
	}
	if err != nil {
		return c.failed(ctx, log, "record the approval", err)
	}
	if !mine && rec.Approval != nil && rec.Approval.BootID != n.Status.NodeInfo.BootID {
		// Approved meanwhile through another replica, and rebooted since.
		return fleetlock.Errorf(fleetlock.KindLockHeld,
			"node %s rebooted since its reboot was approved; its slot passes on once it is back, and a new reboot needs a new slot", h.Node)
	}
	if mine {
		// The approving replica is the one place that saw the node empty
		// on a consistent read, once per cycle: the drainer may never see
		// it, when a waiting pre-reboot is approved between its passes.
		c.nodes.Event(n, corev1.EventTypeNormal, "Drained", "all evictable pods are gone")
	}
	c.mirrorApproval(ctx, log, rec)
	if mine {
		c.metrics.drainSeconds.WithLabelValues(p.Group).Observe(now.Sub(h.Since).Seconds())
		log.Info("reboot approved")
	}
	return nil
}

// haltedKind turns a halted group's refusal, or a cooling-off node's, into
// its FleetLock reply.
func haltedKind(err error) error {
	var he *lock.HaltedError
	var ce *lock.CoolingOffError
	switch {
	case errors.As(err, &he):
		return fleetlock.Errorf(fleetlock.KindHalted, "%s", he.Error())
	case errors.As(err, &ce):
		return fleetlock.Errorf(fleetlock.KindDrainFailed, "%s", ce.Error())
	}
	return err
}

// mirrorApproval shows an approval on the node, for kubectl; best effort.
func (c *Coordinator) mirrorApproval(ctx context.Context, log *slog.Logger, h lock.Holder) {
	boot := ""
	if h.Approval != nil {
		boot = h.Approval.BootID
	}
	if err := c.nodes.MarkRebooting(ctx, h.Node, boot); err != nil {
		log.Warn("mirroring the approval on the node failed", "err", err)
	}
}

// advance changes the holder's record by compare-and-swap.
func (c *Coordinator) advance(ctx context.Context, p fleetlock.ClientParams, h lock.Holder, change func(*lock.Holder)) (lock.Holder, error) {
	return c.lock.Advance(ctx, p.Group, h.ID, h.Since, change)
}

// failed answers a step that could not be done: a holding released
// meanwhile is a 423, anything else fails closed.
func (c *Coordinator) failed(ctx context.Context, log *slog.Logger, doing string, err error) error {
	switch {
	case errors.Is(err, lock.ErrNotHolder):
		log.Info("slot released while the pre-reboot was under way")
		return fleetlock.Errorf(fleetlock.KindLockHeld, "the slot was released while this pre-reboot was under way; ask again")
	case ctx.Err() != nil:
		return interrupted(ctx, log)
	}
	return failure(log, doing, err)
}

// draining is the drain_in_progress answer: what remains, and what the
// drainer last found blocking it.
func (c *Coordinator) draining(log *slog.Logger, p fleetlock.ClientParams, name string, pending drain.Pending) error {
	msg := pending.String()
	if pending.Done() {
		msg = "cordoning"
	}
	if found, err := c.nodes.Lookup(p.ID); err == nil && len(found) == 1 && found[0].Annotations[annotations.DrainMessage] != "" {
		msg += "; " + found[0].Annotations[annotations.DrainMessage]
	}
	log.Info("draining", "remaining", len(pending.Pods))
	return fleetlock.Errorf(fleetlock.KindDrainInProgress, "node %s is draining: %s", name, msg)
}

// Wake tells the pre-reboots waiting in group that their turn may have
// come, as the cache shows the lock object: the first hosts in the line
// with a request waiting now, as many as there are free slots; a waiter
// the cached line does not show yet, by its place on this replica; and any
// that already holds a slot. Call it whenever the group's lock object or
// slots change. A wrong wake-up costs one read; the lock object decides.
func (c *Coordinator) Wake(group string) {
	holders := c.lock.Cached(group)
	held := make(map[string]bool, len(holders))
	for _, h := range holders {
		held[h.ID] = true
	}
	free := c.settings.For(group).Slots - len(holders)
	now := c.now()
	inLine, turn := map[string]bool{}, map[string]bool{}
	for _, w := range c.lock.Line(group) {
		inLine[w.ID] = true
		if w.Present(now) && len(turn) < free {
			turn[w.ID] = true
		}
	}
	c.queue.wake(group, func(i int, id string) bool {
		return held[id] || turn[id] || (!inLine[id] && i < free)
	})
}

// WakeAll runs Wake for every group with waiters, for example after the
// slots configuration changed.
func (c *Coordinator) WakeAll() {
	for _, g := range c.queue.groups() {
		c.Wake(g)
	}
}

// SteadyState answers a steady-state: it answers nil (200) once every slot
// the caller holds is released and its node put back in service (uncordoned
// if we cordoned it, status Ready), or, for a holder approved for a reboot
// on a Node, once the steady-state is recorded in its lock object: that
// slot is released by the leader when a fresh read shows the node back
// (package finish). If a write fails it answers 503, and Zincati's retry
// finishes the job. It acts on the node's own cycle, whatever group the
// request names.
//
// Inputs and their freshness: the Nodes of the id (cache) name who asks,
// and their credential can only refuse; every lock object is listed fresh
// (one consistent LIST), so a slot taken a moment ago through another
// replica, or under another group, is never missed. Before anything is
// released or put back in service, the credential is checked again on a
// consistent GET of each Node concerned: a holder's node is the one its
// record names, never another. A holder matches by id, or by its node (name
// and uid) when the id names exactly one Node, so a changed group, or an id
// change the cache has seen, cannot leak a slot (one it has not seen yet is
// released by the next steady-state, or by hand). A steady-state of a host
// that holds nothing costs that one LIST.
//
// A release costs two round trips, not four: when the cache shows the node
// mid-cycle, its consistent GET starts alongside the LIST (both start after
// the request arrived, so neither is less fresh than one made when
// needed), and each group's compare-and-swap starts from the object as the
// LIST returned it, conditional on its resourceVersion (a conflict reads
// again).
func (c *Coordinator) SteadyState(ctx context.Context, p fleetlock.ClientParams) error {
	log := c.requestLog(ctx, p)
	found, err := c.nodes.Lookup(p.ID)
	if err != nil {
		log.Warn("looking up the node failed", "err", err)
		found = nil
	}
	var node *corev1.Node // set when the id names exactly one Node
	switch len(found) {
	case 0:
		if err := c.authenticate(ctx, log, nil, p.Group); err != nil {
			return err
		}
	case 1:
		node = found[0]
		log = log.With("node", node.Name)
		if err := c.authenticate(ctx, log, node, nodes.Group(node)); err != nil {
			return err
		}
	}
	match := func(h lock.Holder) bool {
		return h.ID == p.ID || (node != nil && h.Node == node.Name && (h.NodeUID == "" || h.NodeUID == node.UID))
	}
	// When the cache shows the node mid-cycle, its fresh read (needed to
	// prove the request) starts alongside the list: a release costs the
	// longer of the two round trips, not their sum.
	freshNode := c.nodes.Fresh
	if node != nil && c.midCycle(node) {
		pre := c.prefetch(ctx, node.Name)
		defer pre.wait() // it never outlives the request
		freshNode = pre.fresh
	}
	listing, err := c.freshHoldings(ctx, node, match)
	if err != nil {
		return failure(log, "read the reboot slots", err)
	}
	all := listing.Holders
	// What would end: each matching holder's node, and a node in a
	// leftover cycle. Prove the request is theirs on fresh reads first.
	type cycle struct{ node, group string } // group "" for a leftover cycle
	owed := map[cycle]bool{}
	for group, holders := range all {
		for _, h := range holders {
			if match(h) {
				owed[cycle{h.Node, group}] = true
			}
		}
	}
	if node != nil && nodes.InCycle(node) {
		owed[cycle{node.Name, ""}] = true
	}
	for o := range owed {
		if err := c.authenticateFresh(ctx, log, freshNode, o.node, o.group, p.Group); err != nil {
			return err
		}
	}

	// A holder approved for a reboot on a Node ends its cycle only once a
	// fresh read shows that node back (see package finish): the
	// steady-state is recorded for that decision. Any other match is
	// released. Both are decided in one CAS per group, on its own read.
	named := map[string]bool{} // nodes some holder names, in any phase
	for _, holders := range all {
		for _, h := range holders {
			named[h.Node] = true
		}
	}
	finish := map[string]string{} // node → the holding whose cycle ends
	for group, holders := range all {
		if !slices.ContainsFunc(holders, match) {
			continue
		}
		gone, kept, err := c.lock.SteadyState(ctx, listing, group, match, c.now())
		if err != nil {
			return failure(log.With("lock_group", group), "apply the steady-state to the reboot slot", err)
		}
		for _, h := range kept {
			log.Info("steady-state recorded; the slot is released once the node is back", "lock_group", group, "holder_node", h.Node)
		}
		for _, h := range gone {
			log.Info("slot released", "lock_group", group, "holder_node", h.Node, "holder", h.Who(), "phase", h.Stage())
			if h.Node != "" {
				finish[h.Node] = h.Holding(group)
			}
		}
	}
	if node != nil && nodes.InCycle(node) && !named[node.Name] {
		if _, ok := finish[node.Name]; !ok {
			// No slot held, fresh: a leftover of a cycle, ended unless a new
			// one has started since the cache saw it.
			finish[node.Name] = node.Annotations[annotations.Holding]
		}
	}
	for name, holding := range finish {
		if err := c.nodes.Finish(ctx, name, holding); err != nil {
			return failure(log.With("finish_node", name), "put the node back in service", err)
		}
		log.Info("node back in service", "finish_node", name)
	}
	if _, ended := finish[nodeName(node)]; node != nil && !ended && nodes.Waiting(node) {
		// The node went back to steady state without its reboot: it waits
		// no longer.
		if err := c.nodes.SetWaiting(ctx, node.Name, ""); err != nil {
			log.Warn("clearing the waiting mark failed", "err", err)
		}
	}
	return nil
}

// freshHoldings reads, fresh, the lock objects a steady-state decides on.
// When the cache shows holders that match, it reads their groups on
// consistent GETs; it reads every group on a consistent LIST instead
// when the cache shows none, when a GET no longer shows the match the
// cache did, or when the node's mirror shows a cycle and no group read
// names the node: a leftover cycle ends only once every group was read.
//
// Freshness: every release and recorded steady-state is decided on these
// reads, made after the request arrived. The cache only chooses which
// groups to read; a holder it does not show yet (a cache a whole reboot
// behind) is missed by this answer, a 200 that claims nothing there, and
// is released on ground truth by package finish.
func (c *Coordinator) freshHoldings(ctx context.Context, node *corev1.Node, match func(lock.Holder) bool) (*lock.Listing, error) {
	var hinted []string
	if cached, err := c.lock.All(); err == nil {
		for g, holders := range cached {
			if slices.ContainsFunc(holders, match) {
				hinted = append(hinted, g)
			}
		}
	}
	if len(hinted) > 0 {
		l, err := c.lock.FreshGroups(ctx, hinted)
		if err != nil {
			return nil, err
		}
		agrees := true
		for _, g := range hinted {
			agrees = agrees && slices.ContainsFunc(l.Holders[g], match)
		}
		if agrees && (node == nil || !nodes.InCycle(node) || l.Names(node.Name)) {
			return l, nil
		}
	}
	return c.lock.FreshListing(ctx)
}

// midCycle says whether the cache shows node in a cycle: a hint, for
// reading ahead only.
func (c *Coordinator) midCycle(node *corev1.Node) bool {
	_, holds := c.cycleGroup(node.Name)
	return holds || nodes.InCycle(node)
}

// prefetch is a consistent GET of one Node, started before it is needed.
// It starts after the request arrived, so it is as fresh as a GET made
// when needed.
type prefetch struct {
	name  string
	other func(context.Context, string) (*corev1.Node, error) // reads any other Node
	done  chan struct{}
	node  *corev1.Node
	err   error
}

// prefetch starts a consistent GET of Node name, bound to ctx.
func (c *Coordinator) prefetch(ctx context.Context, name string) *prefetch {
	p := &prefetch{name: name, other: c.nodes.Fresh, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.node, p.err = c.nodes.Fresh(ctx, name)
	}()
	return p
}

// fresh reads Node name on a consistent GET: the prefetched one, for its
// Node.
func (p *prefetch) fresh(ctx context.Context, name string) (*corev1.Node, error) {
	if name != p.name {
		return p.other(ctx, name)
	}
	p.wait()
	return p.node, p.err
}

// wait waits for the read to end (it ends with its context).
func (p *prefetch) wait() { <-p.done }

// authenticateFresh checks the request's credential against a consistent
// read of node name, by fresh ("" for a host outside the cluster,
// authenticated by named's token); group is the group of its cycle, "" for
// the node's own. A Node that is gone is authenticated as a host outside
// the cluster of its cycle's group.
func (c *Coordinator) authenticateFresh(ctx context.Context, log *slog.Logger,
	fresh func(context.Context, string) (*corev1.Node, error), name, group, named string) error {
	if name == "" {
		// A host outside the cluster: only its token proves anything.
		group = cmp.Or(group, named)
		if c.token(group) == "" {
			return fleetlock.Errorf(fleetlock.KindUnauthorized,
				"slots of hosts outside the cluster are released only with a token: set the key _default (or %q) of the tokens Secret", group)
		}
		return checkToken(credentialFrom(ctx), c.token(group), group)
	}
	n, err := fresh(ctx, name)
	switch {
	case apierrors.IsNotFound(err):
		// Gone: its slot is released by the reconciler anyway; a request
		// hastens that only with the group's token, if it has one.
		group = cmp.Or(group, named)
		return checkToken(credentialFrom(ctx), c.token(group), group)
	case err != nil:
		return failure(log, "read the node", err)
	}
	if group == "" {
		group = nodes.Group(n)
	}
	return c.authenticate(ctx, log.With("holder_node", name), n, group)
}

// checkGroup refuses a pre-reboot that names another group than the
// node's: mid-cycle, the group whose lock object holds the node's slot;
// otherwise its rebootmanager/group label (the default group without one).
// The cache names the cycle's group; a cycle it shows under another group
// than the named one is confirmed on a fresh read of that lock object, and
// one it shows under the named group is confirmed by Acquire.
func (c *Coordinator) checkGroup(ctx context.Context, log *slog.Logger, p fleetlock.ClientParams, node *corev1.Node) error {
	own, why := nodes.Group(node), fmt.Sprintf("its %s label, or %q without one", annotations.GroupLabel, fleetlock.DefaultGroup)
	if g, ok := c.cycleGroup(node.Name); ok && g != p.Group {
		o, err := c.lock.Get(ctx, g)
		if err != nil {
			return failure(log, "read the lock object", err)
		}
		if slices.ContainsFunc(o.Holders, func(h lock.Holder) bool { return h.Node == node.Name }) {
			own, why = g, "it holds a reboot slot there"
		}
	} else if ok {
		return nil // its cycle is in the named group
	}
	if p.Group == own {
		return nil
	}
	log.Warn("pre-reboot names another group than the node's", "node_group", own)
	return fleetlock.Errorf(fleetlock.KindWrongGroup,
		"node %s is in group %q (%s), not %q: set Zincati's [identity] group to %q (the reboot-manager agent does)",
		node.Name, own, why, p.Group, own)
}

// cycleGroup is the group in which the cache shows node holding a slot.
func (c *Coordinator) cycleGroup(node string) (string, bool) {
	all, err := c.lock.All()
	if err != nil {
		return "", false
	}
	for g, holders := range all {
		if slices.ContainsFunc(holders, func(h lock.Holder) bool { return h.Node == node }) {
			return g, true
		}
	}
	return "", false
}

// holdsElsewhere refuses a new slot in group for a node that holds one in
// another group, on fresh, a consistent list of the lock objects made for
// this attempt: a node is in one cycle at a time. (Two requests of the same
// node naming two groups at the same instant can still both pass; only the
// node's own credential can send them.)
func (c *Coordinator) holdsElsewhere(log *slog.Logger, fresh *lock.Listing, group, node string) error {
	for g, holders := range fresh.Holders {
		if g != group && slices.ContainsFunc(holders, func(h lock.Holder) bool { return h.Node == node }) {
			log.Warn("pre-reboot for a node that holds a slot in another group", "node_group", g)
			return fleetlock.Errorf(fleetlock.KindWrongGroup,
				"node %s is in group %q (it holds a reboot slot there), not %q: its cycle ends there first", node, g, group)
		}
	}
	return nil
}

// checkGroupCount refuses a host outside the cluster that names a group
// with no lock object yet when MaxGroups lock objects exist. It reads the
// cache: it can only refuse.
func (c *Coordinator) checkGroupCount(group string) error {
	all, err := c.lock.All()
	if err != nil {
		return nil // the fresh Acquire decides; the cap is a limit, not a safety rule
	}
	if _, ok := all[group]; ok || len(all) < c.cfg.MaxGroups {
		return nil
	}
	return fleetlock.Errorf(fleetlock.KindTooManyGroups, "there are %d reboot groups already, the most this arbiter keeps (--max-groups)", len(all))
}

// describe lists the holders with how long each has held its slot.
func (c *Coordinator) describe(holders []lock.Holder) string {
	return list(holders, func(h lock.Holder) string {
		return fmt.Sprintf("%s (for %s)", h.Who(), c.now().Sub(h.Since).Round(time.Second))
	})
}

func list(holders []lock.Holder, show func(lock.Holder) string) string {
	if len(holders) == 0 {
		return "nobody (the group has no slots)"
	}
	parts := make([]string, len(holders))
	for i, h := range holders {
		parts[i] = show(h)
	}
	return strings.Join(parts, ", ")
}

func unknownNode(id string) error {
	return fleetlock.Errorf(fleetlock.KindUnknownNode,
		"no Node has Zincati id %s: deploy the reboot-manager agent on the host (it publishes the id as the "+
			"annotation %s), or mount /etc/machine-id into kubelet so status.nodeInfo.machineID matches, "+
			"or run the arbiter with --allow-unknown-nodes to lock without draining", id, annotations.ZincatiID)
}

// checkSource enforces source binding: a request about node must come from
// one of its addresses.
func (c *Coordinator) checkSource(ctx context.Context, log *slog.Logger, node *corev1.Node) error {
	if !c.cfg.SourceBinding {
		return nil
	}
	src, ok := sourceFrom(ctx)
	if !ok || fromNode(node, src, c.cfg.SourcePodBridge) {
		return nil
	}
	log.Warn("request from an address that is not the node's", "source", src.String())
	return fleetlock.Errorf(fleetlock.KindForbiddenSource,
		"requests for node %s, which has no credential, must come from one of its addresses, not %s (run the reboot-manager agent on it, "+
			"which gives it a credential; or keep client addresses intact: hostNetwork for the arbiter; or run with --source-binding=false)", node.Name, src)
}

// interrupted answers a request whose context ended before a decision:
// the client went away (the answer is lost anyway) or the arbiter is
// shutting down. It is never a 2xx.
func interrupted(ctx context.Context, log *slog.Logger) error {
	cause := context.Cause(ctx)
	log.Info("request ended before a decision", "cause", cause)
	return fleetlock.Errorf(fleetlock.KindUnavailable, "no decision: %v; ask again", cause)
}

// failure logs err and turns it into a FleetLock error that fails closed:
// unavailable when the API server is unreachable, overloaded or contended,
// internal otherwise.
func failure(log *slog.Logger, doing string, err error) error {
	log.Error("could not "+doing, "err", err)
	kind := fleetlock.KindInternal
	var netErr net.Error
	switch {
	case errors.Is(err, lock.ErrContention), errors.Is(err, lock.ErrNewerSchema), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled),
		errors.As(err, &netErr), apierrors.IsServerTimeout(err), apierrors.IsTimeout(err),
		apierrors.IsTooManyRequests(err), apierrors.IsServiceUnavailable(err), apierrors.IsInternalError(err):
		kind = fleetlock.KindUnavailable
	}
	return fleetlock.Errorf(kind, "could not %s: %v", doing, err)
}

// nodeNames lists the names of ns.
func nodeNames(ns []*corev1.Node) []string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = n.Name
	}
	return out
}

// nodeName is n's name, or "" for no Node.
func nodeName(n *corev1.Node) string {
	if n == nil {
		return ""
	}
	return n.Name
}

// who names a node, or a host outside the cluster for "".
func who(node string) string {
	if node == "" {
		return "a host outside the cluster"
	}
	return "node " + node
}
