// Package coordinator makes the two FleetLock decisions, pre-reboot and
// steady-state, by orchestrating the node directory, the group semaphore and
// the drainer. It knows nothing of HTTP.
package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/rebootmanager/reboot-manager/arbiter/drain"
	"github.com/rebootmanager/reboot-manager/arbiter/groups"
	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/arbiter/nodes"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
)

// Nodes finds and changes Nodes.
type Nodes interface {
	Lookup(id string) (*corev1.Node, error)
	StartDrain(ctx context.Context, name, group string) error
	MarkRebooting(ctx context.Context, name string) error
	SetWaiting(ctx context.Context, name, reason string) error
	Finish(ctx context.Context, name string) error
}

// Lock is the group semaphore.
type Lock interface {
	Acquire(ctx context.Context, group string, h lock.Holder, lim lock.Limits) (lock.Result, error)
	Release(ctx context.Context, group, id string) (bool, error)
	Holds(group, id string) bool
	Cached(group string) []lock.Holder
}

// Drainer empties nodes.
type Drainer interface {
	Pending(ctx context.Context, node string) (drain.Pending, error)
	Enqueue(node string)
}

// Settings gives each group's settings.
type Settings interface {
	For(group string) groups.Settings
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
	// SourceBinding accepts a request for a known node only from one of
	// that node's own addresses (see WithSource).
	SourceBinding bool
	// CacheFresh, when set, says whether the caches can be trusted; while
	// they cannot, a steady-state that the cache says holds nothing still
	// releases through the API server, so a slot taken just before a watch
	// broke is not missed.
	CacheFresh func() bool
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
	return &Coordinator{nodes: deps.Nodes, lock: deps.Lock, drainer: deps.Drainer, settings: deps.Settings, gate: deps.Gate,
		cfg: cfg, log: log, now: time.Now, metrics: m, queue: newWaitQueue()}
}

// PreReboot answers a pre-reboot: nil means the node may reboot now. It
// takes or confirms a slot, cordons the node and has it drained, and
// approves only once every evictable pod is gone. Any other outcome is a
// *fleetlock.Error.
//
// With Config.MaxWait set, a pre-reboot that finds its group full, or its
// node still draining, waits server-side up to MaxWait instead of turning
// the node away until its next tick: waiters for a slot are served in
// arrival order the moment one frees, and a drained node is approved at
// once. A waiter holds nothing while it waits; a waiter whose connection
// closes leaves the queue.
func (c *Coordinator) PreReboot(ctx context.Context, p fleetlock.ClientParams) error {
	log := c.log.With("id", p.ID, "group", p.Group)
	node, err := c.nodes.Lookup(p.ID)
	if err != nil {
		return failure(log, "look up the node", err)
	}
	if node == nil && !c.cfg.AllowUnknownNodes {
		log.Warn("pre-reboot from an unknown node")
		return unknownNode(p.ID)
	}
	h := lock.Holder{ID: p.ID}
	if node != nil {
		h.Node = node.Name
		log = log.With("node", node.Name)
		if err := c.checkSource(ctx, log, node); err != nil {
			return err
		}
	}
	var deadline <-chan time.Time
	if c.cfg.MaxWait > 0 {
		t := time.NewTimer(c.cfg.MaxWait)
		defer t.Stop()
		deadline = t.C
	}

	if err := c.takeSlot(ctx, log, p, node, h, deadline); err != nil {
		return err
	}
	if node == nil {
		log.Info("reboot approved for a host outside the cluster")
		return nil
	}
	if node.Annotations[annotations.Status] == annotations.StatusRebooting {
		return nil // recursive: already approved
	}
	if err := c.nodes.StartDrain(ctx, node.Name, p.Group); err != nil {
		return failure(log, "cordon the node", err)
	}
	return c.awaitDrain(ctx, log, p, node, deadline)
}

// takeSlot takes or confirms the caller's slot. A new holder must first
// pass the gate (pause, windows, blockers), then the semaphore (slots, the
// minimum gap). Without a deadline it asks once; with one it queues behind
// earlier waiters and asks again whenever Wake says a slot may be free or
// the gap has passed, until the deadline. A gate refusal is answered at once.
func (c *Coordinator) takeSlot(ctx context.Context, log *slog.Logger, p fleetlock.ClientParams, node *corev1.Node, h lock.Holder, deadline <-chan time.Time) error {
	// A holder asking again, or a node mid-cycle, is never turned away by
	// the gate: it would strand a drain.
	returning := c.lock.Holds(p.Group, p.ID) || (node != nil && nodes.InCycle(node))
	try := true
	var w *waiter
	if deadline != nil {
		var first bool
		w, first = c.queue.join(p.Group, p.ID)
		defer func() {
			c.queue.leave(p.Group, w)
			c.Wake(p.Group) // pass on a wake-up this waiter may have used
		}()
		// Behind others, ask only when woken, unless returning.
		try = first || returning
	}
	recheck := time.NewTicker(c.cfg.Recheck)
	defer recheck.Stop()
	var gap *time.Timer
	defer func() {
		if gap != nil {
			gap.Stop()
		}
	}()
	noted := ""
	for {
		s := c.settings.For(p.Group)
		var res lock.Result
		if try {
			if !returning {
				if err := c.gate.Check(ctx, p.Group, s, h.Node); err != nil {
					if fleetlock.KindOf(err) == fleetlock.KindInternal {
						return failure(log, "check the group's pacing controls", err)
					}
					c.noteWaiting(ctx, log, p.Group, node, reason(err), &noted)
					return err
				}
			}
			var err error
			res, err = c.lock.Acquire(ctx, p.Group, h, lock.Limits{Slots: s.Slots, MinGap: s.MinGap.Duration})
			if err != nil {
				if ctx.Err() != nil {
					return interrupted(ctx, log)
				}
				return failure(log, "take a reboot slot", err)
			}
			if res.Granted {
				if res.Changed {
					log.Info("slot taken", "slots", s.Slots)
				}
				return nil
			}
		} else {
			res.Holders = c.lock.Cached(p.Group)
		}
		var denial error
		var gapOver <-chan time.Time
		if res.GapLeft > 0 {
			denial = fleetlock.Errorf(fleetlock.KindMinGap, "group %q grants a slot at most every %s; the next in %s",
				p.Group, s.MinGap.Duration, res.GapLeft.Round(time.Second))
			c.noteWaiting(ctx, log, p.Group, node, fmt.Sprintf("group %q waits out its minimum gap of %s", p.Group, s.MinGap.Duration), &noted)
			if gap != nil {
				gap.Stop()
			}
			gap = time.NewTimer(res.GapLeft)
			gapOver = gap.C
		} else {
			denial = fleetlock.Errorf(fleetlock.KindLockHeld, "group %q has %d of %d slots taken, by %s",
				p.Group, len(res.Holders), s.Slots, c.describe(res.Holders))
			c.noteWaiting(ctx, log, p.Group, node, fmt.Sprintf("group %q is full: %d of %d slots held by %s",
				p.Group, len(res.Holders), s.Slots, names(res.Holders)), &noted)
		}
		if deadline == nil {
			return denial
		}
		select {
		case <-w.wake:
		case <-gapOver:
		case <-recheck.C:
		case <-deadline:
			return denial
		case <-ctx.Done():
			return interrupted(ctx, log)
		}
		try = true
	}
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

// reason is the value of a FleetLock error, for the node's waiting mark.
func reason(err error) string {
	var fe *fleetlock.Error
	if errors.As(err, &fe) {
		return fe.Value
	}
	return err.Error()
}

// awaitDrain approves the reboot once the node is empty. Without a deadline
// it looks once; with one it looks again every DrainPoll until the deadline.
func (c *Coordinator) awaitDrain(ctx context.Context, log *slog.Logger, p fleetlock.ClientParams, node *corev1.Node, deadline <-chan time.Time) error {
	for {
		pending, err := c.drainer.Pending(ctx, node.Name)
		if err != nil {
			if ctx.Err() != nil {
				return interrupted(ctx, log)
			}
			return failure(log, "list the node's pods", err)
		}
		if pending.Done() {
			break
		}
		c.drainer.Enqueue(node.Name)
		if deadline == nil {
			return c.draining(log, p, node.Name, pending)
		}
		t := time.NewTimer(c.cfg.DrainPoll)
		select {
		case <-t.C:
		case <-deadline:
			t.Stop()
			return c.draining(log, p, node.Name, pending)
		case <-ctx.Done():
			t.Stop()
			return interrupted(ctx, log)
		}
	}
	if err := c.nodes.MarkRebooting(ctx, node.Name); err != nil {
		return failure(log, "mark the node Rebooting", err)
	}
	if since, err := time.Parse(time.RFC3339, node.Annotations[annotations.Since]); err == nil {
		c.metrics.drainSeconds.WithLabelValues(p.Group).Observe(c.now().Sub(since).Seconds())
	}
	log.Info("reboot approved")
	return nil
}

// draining is the drain_in_progress answer: what remains, and what the
// drainer last found blocking it.
func (c *Coordinator) draining(log *slog.Logger, p fleetlock.ClientParams, name string, pending drain.Pending) error {
	msg := pending.String()
	if n, err := c.nodes.Lookup(p.ID); err == nil && n != nil && n.Annotations[annotations.DrainMessage] != "" {
		msg += "; " + n.Annotations[annotations.DrainMessage]
	}
	log.Info("draining", "remaining", len(pending.Pods))
	return fleetlock.Errorf(fleetlock.KindDrainInProgress, "node %s is draining: %s", name, msg)
}

// Wake tells the pre-reboots waiting in group that a slot may have freed:
// the first as many as the cache shows free slots, and any that already
// holds one. Call it whenever the group's lock object or slots change.
func (c *Coordinator) Wake(group string) {
	holders := c.lock.Cached(group)
	held := make(map[string]bool, len(holders))
	for _, h := range holders {
		held[h.ID] = true
	}
	c.queue.wake(group, c.settings.For(group).Slots-len(holders), held)
}

// WakeAll runs Wake for every group with waiters, for example after the
// slots configuration changed.
func (c *Coordinator) WakeAll() {
	for _, g := range c.queue.groups() {
		c.Wake(g)
	}
}

// SteadyState answers a steady-state: it always answers nil (200) unless the
// caller's slot could not be released. The release comes first; putting the
// node back in service (uncordon, status Ready) is best effort after it, and
// the reconciler finishes what fails here. A node that holds nothing and
// carries no mark of a reboot cycle costs no API request, unless the caches
// may be stale (Config.CacheFresh).
func (c *Coordinator) SteadyState(ctx context.Context, p fleetlock.ClientParams) error {
	log := c.log.With("id", p.ID, "group", p.Group)
	node, err := c.nodes.Lookup(p.ID)
	if err != nil {
		log.Warn("looking up the node failed", "err", err)
		node = nil
	}
	if node != nil {
		log = log.With("node", node.Name)
		if err := c.checkSource(ctx, log, node); err != nil {
			return err
		}
	}
	inCycle := node != nil && nodes.InCycle(node)
	stale := c.cfg.CacheFresh != nil && !c.cfg.CacheFresh()
	if c.lock.Holds(p.Group, p.ID) || inCycle || stale {
		released, err := c.lock.Release(ctx, p.Group, p.ID)
		if err != nil {
			return failure(log, "release the reboot slot", err)
		}
		if released {
			log.Info("slot released")
		}
	}
	if node != nil && !inCycle && nodes.Waiting(node) {
		// The node went back to steady state without its reboot: it waits
		// no longer.
		if err := c.nodes.SetWaiting(ctx, node.Name, ""); err != nil {
			log.Warn("clearing the waiting mark failed", "err", err)
		}
	}
	if inCycle {
		if err := c.nodes.Finish(ctx, node.Name); err != nil {
			log.Warn("putting the node back in service failed; the reconciler will retry", "err", err)
		} else {
			log.Info("node back in service")
		}
	}
	return nil
}

// names lists the holders by node name, or by id for hosts outside the
// cluster.
func names(holders []lock.Holder) string {
	return list(holders, lock.Holder.Who)
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
	if !ok || fromNode(node, src) {
		return nil
	}
	log.Warn("request from an address that is not the node's", "source", src.String())
	return fleetlock.Errorf(fleetlock.KindForbiddenSource,
		"requests for node %s must come from one of its addresses, not %s (keep client addresses intact: "+
			"externalTrafficPolicy: Local, or hostNetwork for the arbiter; or run with --source-binding=false)", node.Name, src)
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
	case errors.Is(err, lock.ErrContention), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled),
		errors.As(err, &netErr), apierrors.IsServerTimeout(err), apierrors.IsTimeout(err),
		apierrors.IsTooManyRequests(err), apierrors.IsServiceUnavailable(err), apierrors.IsInternalError(err):
		kind = fleetlock.KindUnavailable
	}
	return fleetlock.Errorf(kind, "could not %s: %v", doing, err)
}
