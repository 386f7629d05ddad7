// Package finish ends reboot cycles on ground truth: the leader releases
// an approved holder's slot only once its node is back, and halts the
// group when the update failed.
//
// Zincati's steady-state only records that it arrived (package
// coordinator). A holder approved for a reboot on a Node is released, and
// its node put back in service, when one consistent GET of the Node shows
// all of:
//   - a boot id other than the one recorded at the approval;
//   - Ready=True in that same object;
//   - its steady-state arrived since the approval, or the agent reports
//     boot-complete=reached for that boot id;
//   - and the group's settle time has passed with the node still Ready
//     (the time it was first seen back is kept in the lock object).
//
// A steady-state from a node that never went down (Zincati restarted, or
// an operator by curl) is told apart from "rebooted, kubelet has not
// reported yet" by the kubelet's Lease: the slot is released when, after
// the steady-state, this leader saw the Lease's renewTime change three
// times (at least two renewal periods, 20 s, after the first) and a GET of
// the Node made after that still shows the approved boot id, Ready.
// kubelet may renew its Lease a moment before it patches a new boot id,
// but not for two renewal periods: its first status sync comes within one.
// The renewals are timed by this leader's reads, never by the node's
// clock. A pre-reboot confirmed again after the steady-state voids it.
//
// Failures halt the group (see lock.Halt), unless its haltOnFailure
// setting is false:
//   - boot_failed: the agent reports boot-complete=failed for the new boot.
//     The slot stays held and the node cordoned.
//   - update_not_applied: back, but on the OS version it had. The slot is
//     released and the node put back in service.
//   - not_back: not back within the maximum downtime. The slot stays held.
package finish

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rebootmanager/reboot-manager/arbiter/groups"
	"github.com/rebootmanager/reboot-manager/arbiter/lock"
)

// Nodes is what the finisher needs of the node directory.
type Nodes interface {
	// Fresh reads a Node from the API server.
	Fresh(ctx context.Context, name string) (*corev1.Node, error)
	// Finish ends the holding's cycle on the node: uncordon if ours, Ready.
	Finish(ctx context.Context, name, holding string) error
	// SetPhase shows the phase of the holding's cycle on the node.
	SetPhase(ctx context.Context, name, holding, phase string) error
	// SetLastReboot records how the last completed reboot moved the node.
	SetLastReboot(ctx context.Context, name, text string) error
	// Event records an Event on the node.
	Event(n *corev1.Node, eventType, reason, format string, args ...any)
}

// Lock is what the finisher needs of the semaphore.
type Lock interface {
	All() (map[string][]lock.Holder, error)
	Get(ctx context.Context, group string) (lock.Object, error)
	Advance(ctx context.Context, group, id string, since time.Time, change func(*lock.Holder)) (lock.Holder, error)
	ReleaseMatching(ctx context.Context, group string, match func(lock.Holder) bool) ([]lock.Holder, error)
	Fail(ctx context.Context, group, id string, since time.Time, h lock.Halt, halt bool) (recorded, halted bool, err error)
}

// Leases reads kubelets' node Leases: client-go's Leases of namespace
// kube-node-lease.
type Leases interface {
	Get(ctx context.Context, node string, opts metav1.GetOptions) (*coordinationv1.Lease, error)
}

// Settings gives each group's settings.
type Settings interface {
	For(group string) groups.Settings
}

// Config tunes the finisher.
type Config struct {
	// Interval is the time between passes when nothing kicks one.
	Interval time.Duration
	// MaxDowntime, when positive, is how long an approved node may take to
	// come back before its group halts with not_back.
	MaxDowntime time.Duration
	// Metrics receives the cycle outcomes; nil means unregistered ones.
	Metrics *Metrics
}

// Finisher ends the cycles of approved holders. Only the leader runs it.
type Finisher struct {
	nodes    Nodes
	lock     Lock
	leases   Leases
	settings Settings
	cfg      Config
	log      *slog.Logger
	now      func() time.Time
	kick     chan struct{}
	leading  atomic.Bool
	// Per holding, the leader's own memory: the Lease renewals seen since
	// its steady-state.
	renewals map[holding]*renewals
}

// holding identifies one holding of a slot.
type holding struct {
	group, id string
	since     time.Time
}

// renewals counts the changes of a kubelet Lease's renewTime seen after a
// steady-state.
type renewals struct {
	steady  time.Time
	holder  string
	last    time.Time
	changes int
}

// New returns a Finisher.
func New(n Nodes, l Lock, leases Leases, s Settings, cfg Config, log *slog.Logger) *Finisher {
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Second
	}
	return &Finisher{nodes: n, lock: l, leases: leases, settings: s, cfg: cfg, log: log, now: time.Now,
		kick: make(chan struct{}, 1), renewals: map[holding]*renewals{}}
}

// Kick asks for a pass soon: a Node in a cycle or a lock object changed.
func (f *Finisher) Kick() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// Run makes passes until ctx ends.
func (f *Finisher) Run(ctx context.Context) {
	f.leading.Store(true)
	defer f.leading.Store(false)
	// A new term starts from what the lock objects say.
	f.renewals = map[holding]*renewals{}
	t := time.NewTicker(f.cfg.Interval)
	defer t.Stop()
	for {
		f.Pass(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-f.kick:
		}
	}
}

// Pass judges every approved holder of a Node that the cache shows. Each
// is then read again fresh before anything is decided.
func (f *Finisher) Pass(ctx context.Context) {
	all, err := f.lock.All()
	if err != nil {
		f.log.Warn("reading the locks failed", "err", err)
		return
	}
	seen := map[holding]bool{}
	for group, holders := range all {
		for _, h := range holders {
			if h.Node == "" || h.Stage() != lock.PhaseApproved {
				continue
			}
			k := holding{group, h.ID, h.Since}
			seen[k] = true
			if err := f.check(ctx, k, h.Node); err != nil && ctx.Err() == nil {
				f.log.Warn("judging the end of a reboot cycle failed", "node", h.Node, "group", group, "id", h.ID, "err", err)
			}
		}
	}
	for k := range f.renewals {
		if !seen[k] {
			delete(f.renewals, k)
		}
	}
}

// check judges one holding on fresh reads, in this order: its lock object,
// then the kubelet's Lease, then the Node, and acts on the verdict.
func (f *Finisher) check(ctx context.Context, k holding, name string) error {
	o, err := f.lock.Get(ctx, k.group)
	if err != nil {
		return err
	}
	h, ok := o.Holder(k.id)
	if !ok || !h.Since.Equal(k.since) || h.Stage() != lock.PhaseApproved {
		return nil // released or changed meanwhile
	}
	alive := false
	if h.SteadyStateAt != nil {
		if alive, err = f.alive(ctx, k, name, *h.SteadyStateAt); err != nil {
			return err
		}
	}
	n, err := f.nodes.Fresh(ctx, name)
	if apierrors.IsNotFound(err) {
		return nil // the reconciler releases the slots of deleted Nodes
	}
	if err != nil {
		return err
	}
	if h.NodeUID != "" && n.UID != h.NodeUID {
		return nil // re-created: another Node; the reconciler releases it
	}
	s := f.settings.For(k.group)
	v := Judge(Input{Holder: h, Node: n, Alive: alive, Settle: s.Settle.Duration, MaxDowntime: f.cfg.MaxDowntime, Now: f.now()})
	return f.apply(ctx, k, h, n, s, v)
}

// alive reports whether the kubelet's Lease of node was seen renewed twice
// since the steady-state at steady. The first read after the steady-state
// is the baseline; each later read with another renewTime (by the same
// holder) is a renewal.
func (f *Finisher) alive(ctx context.Context, k holding, node string, steady time.Time) (bool, error) {
	l, err := f.leases.Get(ctx, node, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read the kubelet's Lease: %w", err)
	}
	if f.now().Before(steady) || l.Spec.RenewTime == nil {
		return false, nil
	}
	holder := ""
	if l.Spec.HolderIdentity != nil {
		holder = *l.Spec.HolderIdentity
	}
	renew := l.Spec.RenewTime.Time
	r := f.renewals[k]
	if r == nil || !r.steady.Equal(steady) || r.holder != holder {
		f.renewals[k] = &renewals{steady: steady, holder: holder, last: renew}
		return false, nil
	}
	if !renew.Equal(r.last) {
		r.last = renew
		r.changes++
	}
	return r.changes >= Renewals, nil
}

// Renewals is how many changes of the kubelet Lease's renewTime, seen
// after a steady-state on the approved boot, prove the node never went
// down: with kubelet's 10 s renewals, at least 20 s of a kubelet that still
// reports the old boot, when its first status sync after a start comes
// within one.
const Renewals = 3

// apply does what a verdict asks.
func (f *Finisher) apply(ctx context.Context, k holding, h lock.Holder, n *corev1.Node, s groups.Settings, v Verdict) error {
	log := f.log.With("node", n.Name, "group", k.group, "id", k.id)
	mark := h.Holding(k.group)
	switch v.Step {
	case Wait:
		return f.nodes.SetPhase(ctx, n.Name, mark, v.Phase)
	case MarkBack, ClearBack:
		now := f.now().UTC()
		_, err := f.lock.Advance(ctx, k.group, k.id, k.since, func(r *lock.Holder) {
			if !r.Equal(h) {
				return // changed since it was judged
			}
			if v.Step == MarkBack {
				r.BackAt, r.BackBootID = &now, n.Status.NodeInfo.BootID
			} else {
				r.BackAt, r.BackBootID = nil, ""
			}
		})
		if err != nil && !errors.Is(err, lock.ErrNotHolder) {
			return fmt.Errorf("record the node's return: %w", err)
		}
		return f.nodes.SetPhase(ctx, n.Name, mark, v.Phase)
	case Hold:
		if err := f.fail(ctx, log, k, n, s, v); err != nil {
			return err
		}
		return f.nodes.SetPhase(ctx, n.Name, mark, v.Phase)
	case Release:
		if v.Outcome.Halts() != "" {
			// Halt first: no slot may be granted in the gap.
			if err := f.fail(ctx, log, k, n, s, v); err != nil {
				return err
			}
		}
		// Only the record as judged: a steady-state voided, a return
		// forgotten, or a new approval since makes the release miss, and
		// the next pass judges again.
		gone, err := f.lock.ReleaseMatching(ctx, k.group, func(x lock.Holder) bool { return x.Equal(h) })
		if err != nil {
			return fmt.Errorf("release the slot: %w", err)
		}
		if len(gone) == 0 {
			return nil
		}
		f.cfg.Metrics.cycles.WithLabelValues(k.group, string(v.Outcome)).Inc()
		if h.Approval != nil {
			f.cfg.Metrics.downtime.WithLabelValues(k.group).Observe(f.now().Sub(h.Approval.At).Seconds())
		}
		log.Info("reboot cycle ended; slot released", "outcome", v.Outcome, "why", v.Why)
		switch v.Outcome {
		case Completed, NotApplied:
			from, to := Versions(h, n)
			if v.Outcome == Completed {
				f.nodes.Event(n, corev1.EventTypeNormal, "RebootCompleted", "rebooted from %s to %s; slot released", or(from, "?"), or(to, "?"))
			}
			text := fmt.Sprintf("%s → %s at %s", or(from, "?"), or(to, "?"), f.now().UTC().Format(time.RFC3339))
			if err := f.nodes.SetLastReboot(ctx, n.Name, text); err != nil {
				log.Warn("recording the last reboot on the node failed", "err", err)
			}
		case NotRebooted:
			f.nodes.Event(n, corev1.EventTypeNormal, "NotRebooted", "%s; slot released", v.Why)
		}
		if err := f.nodes.Finish(ctx, n.Name, mark); err != nil {
			// The reconciler puts a node that holds no slot back in service.
			return fmt.Errorf("put the node back in service: %w", err)
		}
		return nil
	}
	return nil
}

// fail records a failed cycle in the holder's record and, when the group
// halts on failures, halts it, in one compare-and-swap: once per holding
// and failure, so a group a person resumed stays resumed. The first time,
// it gives an Event on the node and a log line.
func (f *Finisher) fail(ctx context.Context, log *slog.Logger, k holding, n *corev1.Node, s groups.Settings, v Verdict) error {
	reason := v.Outcome.Halts()
	recorded, halted, err := f.lock.Fail(ctx, k.group, k.id, k.since,
		lock.Halt{Reason: reason, Node: n.Name, Message: v.Why, At: f.now()}, s.HaltsOnFailure())
	if errors.Is(err, lock.ErrNotHolder) {
		return nil // released meanwhile
	}
	if err != nil || !recorded {
		return err
	}
	suffix := ""
	if s.HaltsOnFailure() {
		suffix = fmt.Sprintf("; group %q is halted until `kubectl reboot-manager resume %s`", k.group, k.group)
	}
	if halted {
		f.cfg.Metrics.halts.WithLabelValues(k.group, string(reason)).Inc()
		log.Warn("group halted", "reason", reason, "why", v.Why)
	}
	event := map[Outcome]string{BootFailed: "BootFailed", NotApplied: "UpdateNotApplied", NotBack: "NodeNotBack"}[v.Outcome]
	log.Warn("reboot cycle failed", "outcome", v.Outcome, "why", v.Why)
	f.nodes.Event(n, corev1.EventTypeWarning, event, "%s%s", v.Why, suffix)
	return nil
}
