// Package reconcile is the leader's background repair loop: it releases
// slots held by Nodes that no longer exist and puts back in service nodes
// that carry our cordon but hold no slot (a steady-state whose uncordon
// failed, a slot released by hand, a rebooted node whose id no longer maps).
package reconcile

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"

	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/arbiter/nodes"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
)

// Nodes is what the reconciler needs of the node directory.
type Nodes interface {
	Get(name string) (*corev1.Node, error)
	List() ([]*corev1.Node, error)
	Fresh(ctx context.Context, name string) (*corev1.Node, error)
	Finish(ctx context.Context, name, holding string) error
}

// Lock is what the reconciler needs of the semaphore.
type Lock interface {
	All() (map[string][]lock.Holder, error)
	Fresh(ctx context.Context) (map[string][]lock.Holder, error)
	ReleaseMatching(ctx context.Context, group string, match func(lock.Holder) bool) ([]lock.Holder, error)
}

// Config tunes the reconciler.
type Config struct {
	// Namespace holds the lock objects; Events about locks go on them.
	Namespace string
	// Interval is the time between passes.
	Interval time.Duration
	// MaxHold, when positive, is how long a slot may be held before the
	// holder gets a LockHeldTooLong Warning Event. The slot is never taken
	// away: a timed release could reboot a second node while the first is
	// still down.
	MaxHold time.Duration
	// Metrics receives the stale-lock releases; nil means unregistered ones.
	Metrics *Metrics
}

// Reconciler repairs what requests alone cannot.
type Reconciler struct {
	nodes  Nodes
	lock   Lock
	events record.EventRecorder
	cfg    Config
	log    *slog.Logger
	kick   chan struct{}
	now    func() time.Time
	warned map[warning]bool // holders already told they hold too long
	// leading is set while Run runs: only the leader reports.
	leading atomic.Bool
}

// warning identifies one holding of a slot.
type warning struct {
	group, id string
	since     time.Time
}

// New returns a Reconciler that runs a pass every cfg.Interval and on Kick.
func New(n Nodes, l Lock, events record.EventRecorder, cfg Config, log *slog.Logger) *Reconciler {
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	return &Reconciler{nodes: n, lock: l, events: events, cfg: cfg, log: log, kick: make(chan struct{}, 1),
		now: time.Now, warned: map[warning]bool{}}
}

// Kick asks for a pass soon, for example after a Node was deleted.
func (r *Reconciler) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run makes passes until ctx ends.
func (r *Reconciler) Run(ctx context.Context) {
	r.leading.Store(true)
	defer r.leading.Store(false)
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		r.Pass(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.kick:
		}
	}
}

// nodeRef is an Event's reference to a Node, with the node name as the
// UID, as kubelet does.
func nodeRef(name string) *corev1.ObjectReference {
	return &corev1.ObjectReference{Kind: "Node", Name: name, UID: types.UID(name)}
}

// BootChanged reports a reboot that no slot covered: a Node (the same uid)
// whose boot id changed while, in the caches, it held no slot and carried
// no cycle's mark (zincati-update-now, a crash, a hand-made reboot). It
// records a RebootWithoutLock Warning Event and counts it, and halts
// nothing. It reads only caches: it is a display, never a decision. Only
// the leader reports, so each reboot is told once.
func (r *Reconciler) BootChanged(old, n *corev1.Node) {
	before, after := old.Status.NodeInfo.BootID, n.Status.NodeInfo.BootID
	if !r.leading.Load() || before == "" || after == before || old.UID != n.UID || n.Annotations[annotations.Holding] != "" {
		return
	}
	all, err := r.lock.All()
	if err != nil {
		return
	}
	for _, holders := range all {
		for _, h := range holders {
			if h.Node == n.Name {
				return
			}
		}
	}
	r.cfg.Metrics.rebootsWithoutLock.Inc()
	r.log.Warn("node rebooted without a reboot slot", "node", n.Name, "boot_id", after)
	r.events.Eventf(nodeRef(n.Name), corev1.EventTypeWarning, "RebootWithoutLock",
		"node rebooted (boot id %s, was %s) without holding a reboot slot: zincati-update-now, a crash, or a reboot by hand; nothing was drained first", after, before)
}

// Pass makes one repair pass. Decisions seen in the caches are confirmed
// against the API server before anything is changed.
func (r *Reconciler) Pass(ctx context.Context) {
	all, err := r.lock.All()
	if err != nil {
		r.log.Warn("reading the locks failed", "err", err)
		return
	}
	r.warnOverdue(all)
	holding := map[string]bool{}
	for group, holders := range all {
		for _, h := range holders {
			if h.Node == "" {
				continue
			}
			holding[h.Node] = true
			if n, err := r.nodes.Get(h.Node); apierrors.IsNotFound(err) || (err == nil && h.NodeUID != "" && n.UID != h.NodeUID) {
				r.releaseIfGone(ctx, group, h)
			}
		}
	}
	list, err := r.nodes.List()
	if err != nil {
		r.log.Warn("listing nodes failed", "err", err)
		return
	}
	var orphans []*corev1.Node
	for _, n := range list {
		// A node approved for a reboot waits for it; after it, or in any
		// other stage, a node that holds no slot goes back in service.
		rebooting := n.Annotations[annotations.Status] == annotations.StatusRebooting && !nodes.Rebooted(n)
		if nodes.InCycle(n) && !holding[n.Name] && !rebooting {
			orphans = append(orphans, n)
		}
	}
	if len(orphans) == 0 {
		return
	}
	// The lock cache may lag the node cache: confirm on a fresh read.
	fresh, err := r.lock.Fresh(ctx)
	if err != nil {
		r.log.Warn("reading the locks failed", "err", err)
		return
	}
	holding = map[string]bool{}
	for _, holders := range fresh {
		for _, h := range holders {
			holding[h.Node] = true
		}
	}
	for _, n := range orphans {
		if holding[n.Name] {
			continue
		}
		log := r.log.With("node", n.Name, "group", n.Annotations[annotations.Group])
		// Only the cycle the cache saw: one that started since the fresh
		// read of the locks carries another holding and is left alone.
		if err := r.nodes.Finish(ctx, n.Name, n.Annotations[annotations.Holding]); err != nil {
			log.Warn("putting a node that holds no slot back in service failed", "err", err)
			continue
		}
		log.Info("node held no slot; put back in service")
	}
}

// releaseIfGone releases h's holding when a fresh read shows its Node
// deleted, or re-created under the same name (another uid): the cycle was
// that Node's, and it will not come back.
func (r *Reconciler) releaseIfGone(ctx context.Context, group string, h lock.Holder) {
	log := r.log.With("node", h.Node, "group", group, "id", h.ID)
	n, err := r.nodes.Fresh(ctx, h.Node)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return
	case h.NodeUID == "" || n.UID == h.NodeUID:
		return
	}
	gone, err := r.lock.ReleaseMatching(ctx, group, func(x lock.Holder) bool {
		return x.ID == h.ID && x.Node == h.Node && x.Since.Equal(h.Since)
	})
	if err != nil {
		log.Warn("releasing the slot of a deleted node failed", "err", err)
		return
	}
	if len(gone) > 0 {
		log.Warn("released the slot of a deleted or re-created node", "held_since", h.Since)
		r.cfg.Metrics.staleReleases.WithLabelValues(group).Inc()
		r.events.Eventf(r.lockRef(group), corev1.EventTypeWarning, "StaleLockReleased",
			"released the slot of node %s (id %s), which was deleted or re-created", h.Node, h.ID)
	}
}

// warnOverdue gives every holder older than MaxHold one Warning Event, on
// its Node or, for a host outside the cluster, on the lock object.
func (r *Reconciler) warnOverdue(all map[string][]lock.Holder) {
	if r.cfg.MaxHold <= 0 {
		return
	}
	seen := map[warning]bool{}
	now := r.now()
	for group, holders := range all {
		for _, h := range holders {
			w := warning{group: group, id: h.ID, since: h.Since}
			held := now.Sub(h.Since)
			if held <= r.cfg.MaxHold {
				continue
			}
			seen[w] = true
			if r.warned[w] {
				continue
			}
			who := h.Who() // never a host outside the cluster's id
			ref := r.lockRef(group)
			if h.Node != "" {
				who = "node " + h.Node
				ref = nodeRef(h.Node)
			}
			r.log.Warn("slot held for longer than the maximum", "node", h.Node, "group", group, "holder", h.Who(),
				"held", held.Round(time.Second).String(), "max_hold", r.cfg.MaxHold.String())
			r.events.Eventf(ref, corev1.EventTypeWarning, "LockHeldTooLong",
				"%s has held a reboot slot in group %q for %s, over the maximum of %s; it is not released automatically: "+
					"check the node, then free the slot with `kubectl reboot-manager release` if it will not come back",
				who, group, held.Round(time.Second), r.cfg.MaxHold)
		}
	}
	r.warned = seen
}

func (r *Reconciler) lockRef(group string) *corev1.ObjectReference {
	return &corev1.ObjectReference{APIVersion: "coordination.k8s.io/v1", Kind: "Lease", Namespace: r.cfg.Namespace, Name: lock.ObjectName(group)}
}
