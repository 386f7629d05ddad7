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
	Acquire(ctx context.Context, group string, h lock.Holder, slots int) (lock.Result, error)
	Release(ctx context.Context, group, id string) (bool, error)
	Holds(group, id string) bool
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

// Config tunes the decisions.
type Config struct {
	// AllowUnknownNodes grants slots to ids that match no Node, as a plain
	// semaphore with no drain, for hosts outside the cluster.
	AllowUnknownNodes bool
}

// Coordinator decides FleetLock requests.
type Coordinator struct {
	nodes    Nodes
	lock     Lock
	drainer  Drainer
	settings Settings
	cfg      Config
	log      *slog.Logger
	now      func() time.Time
	metrics  *Metrics
}

// New returns a Coordinator that reports to m; nil m means unregistered
// metrics.
func New(n Nodes, l Lock, d Drainer, s Settings, cfg Config, m *Metrics, log *slog.Logger) *Coordinator {
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Coordinator{nodes: n, lock: l, drainer: d, settings: s, cfg: cfg, log: log, now: time.Now, metrics: m}
}

// PreReboot answers a pre-reboot: nil means the node may reboot now. It
// takes or confirms a slot, cordons the node and has it drained, and
// approves only once every evictable pod is gone. Any other outcome is a
// *fleetlock.Error.
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
	}

	slots := c.settings.For(p.Group).Slots
	res, err := c.lock.Acquire(ctx, p.Group, h, slots)
	if err != nil {
		return failure(log, "take a reboot slot", err)
	}
	if !res.Granted {
		log.Info("group full", "slots", slots, "holders", len(res.Holders))
		if node != nil {
			reason := fmt.Sprintf("group %q is full: %d of %d slots held by %s", p.Group, len(res.Holders), slots, names(res.Holders))
			if err := c.nodes.SetWaiting(ctx, node.Name, reason); err != nil {
				log.Warn("recording why the node waits failed", "err", err)
			}
		}
		return fleetlock.Errorf(fleetlock.KindLockHeld, "group %q has %d of %d slots taken, by %s",
			p.Group, len(res.Holders), slots, c.describe(res.Holders))
	}
	if res.Changed {
		log.Info("slot taken", "slots", slots)
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
	pending, err := c.drainer.Pending(ctx, node.Name)
	if err != nil {
		return failure(log, "list the node's pods", err)
	}
	if !pending.Done() {
		c.drainer.Enqueue(node.Name)
		msg := pending.String()
		if m := node.Annotations[annotations.DrainMessage]; m != "" {
			msg += "; " + m
		}
		log.Info("draining", "remaining", len(pending.Pods))
		return fleetlock.Errorf(fleetlock.KindDrainInProgress, "node %s is draining: %s", node.Name, msg)
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

// SteadyState answers a steady-state: it always answers nil (200) unless the
// caller's slot could not be released. The release comes first; putting the
// node back in service (uncordon, status Ready) is best effort after it, and
// the reconciler finishes what fails here. A node that holds nothing and
// carries no mark of a reboot cycle costs no API request.
func (c *Coordinator) SteadyState(ctx context.Context, p fleetlock.ClientParams) error {
	log := c.log.With("id", p.ID, "group", p.Group)
	node, err := c.nodes.Lookup(p.ID)
	if err != nil {
		log.Warn("looking up the node failed", "err", err)
		node = nil
	}
	if node != nil {
		log = log.With("node", node.Name)
	}
	inCycle := node != nil && nodes.InCycle(node)
	if c.lock.Holds(p.Group, p.ID) || inCycle {
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
	if len(holders) == 0 {
		return "nobody (the group has no slots)"
	}
	parts := make([]string, len(holders))
	for i, h := range holders {
		parts[i] = h.Node
		if parts[i] == "" {
			parts[i] = "id " + h.ID
		}
	}
	return strings.Join(parts, ", ")
}

func (c *Coordinator) describe(holders []lock.Holder) string {
	parts := make([]string, len(holders))
	for i, h := range holders {
		who := h.Node
		if who == "" {
			who = "id " + h.ID
		}
		parts[i] = fmt.Sprintf("%s (for %s)", who, c.now().Sub(h.Since).Round(time.Second))
	}
	if len(parts) == 0 {
		return "nobody (the group has no slots)"
	}
	return strings.Join(parts, ", ")
}

func unknownNode(id string) error {
	return fleetlock.Errorf(fleetlock.KindUnknownNode,
		"no Node has Zincati id %s: deploy the reboot-manager agent on the host (it publishes the id as the "+
			"annotation %s), or mount /etc/machine-id into kubelet so status.nodeInfo.machineID matches, "+
			"or run the arbiter with --allow-unknown-nodes to lock without draining", id, annotations.ZincatiID)
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
