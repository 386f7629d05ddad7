package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// TestDrainYield: a drain that cannot finish (a PodDisruptionBudget that
// allows no disruption) gives its slot back after the group's drainTimeout:
// the node is uncordoned, shown DrainFailed with what blocked it, and turned
// away with drain_failed for the cool-off, while the next node takes the
// slot and reboots. It is never approved while its pods remain, and after
// the cool-off it may try again.
func TestDrainYield(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ns := cluster.Namespace(t)
	stuck := guardedNode(ctx, t, ns)
	next := newNodes(t, ns, 1, nil)[0]
	setGroups(t, ns, "defaults: {slots: 1, drainTimeout: 3s, drainCoolOff: 15s}\n")
	a := startArbiter(t, ns)

	approvedWhileFull := func(err error) {
		t.Helper()
		if err == nil {
			t.Fatalf("pre-reboot of %s approved while its guarded pods are on it", stuck.name)
		}
	}
	err := a.preReboot(stuck.id, fleetlock.DefaultGroup)
	if !fleetlock.IsKind(err, fleetlock.KindDrainInProgress) {
		t.Fatalf("first pre-reboot = %v, want drain_in_progress", err)
	}
	if err := a.preReboot(next.id, fleetlock.DefaultGroup); !fleetlock.IsKind(err, fleetlock.KindLockHeld) {
		t.Fatalf("pre-reboot of the next node while the slot is held = %v, want lock_held", err)
	}

	var failed error
	harness.Eventually(t, 30*time.Second, "the drain yields", func() error {
		failed = a.preReboot(stuck.id, fleetlock.DefaultGroup)
		approvedWhileFull(failed)
		if !fleetlock.IsKind(failed, fleetlock.KindDrainFailed) {
			return failed
		}
		return nil
	})
	yieldedAt := time.Now()
	if !strings.Contains(failed.Error(), "PodDisruptionBudget") || !strings.Contains(failed.Error(), "web") {
		t.Errorf("drain_failed reply %q does not name the blocking pods and budget", failed)
	}
	// The slot is given back first; the node is put back in service just after.
	harness.Eventually(t, 10*time.Second, "the node back in service, DrainFailed", func() error {
		n := getNode(t, stuck.name)
		if n.Spec.Unschedulable || n.Annotations[annotations.Status] != annotations.StatusDrainFailed ||
			!strings.HasPrefix(n.Annotations[annotations.DrainFailed], "retry after ") || n.Annotations[annotations.CordonedBy] != "" {
			return fmt.Errorf("unschedulable=%v annotations=%v", n.Spec.Unschedulable, n.Annotations)
		}
		return nil
	})
	eventOn(ctx, t, stuck.name, "DrainFailed")
	if v, _ := metric(t, a, "rebootmanager_drain_yields_total", map[string]string{"group": fleetlock.DefaultGroup}); v != 1 {
		t.Errorf("rebootmanager_drain_yields_total = %v, want 1", v)
	}
	pods, err := fixtures.PodsOn(ctx, cluster.Client, ns, stuck.name)
	must(t, err)
	if len(pods) != 2 {
		t.Errorf("pods on the node whose drain yielded = %d, want its 2 guarded pods", len(pods))
	}
	r := cliStatus(t, ns)
	if got := nodeIn(r, stuck.name); got.Status != annotations.StatusDrainFailed || !strings.Contains(got.Reason, "may retry in") {
		t.Errorf("status shows %+v, want DrainFailed and when it may retry", got)
	}

	// The next node takes the slot and reboots while the first cools off.
	approveUntil(t, a, next, fleetlock.DefaultGroup, 20*time.Second)
	if err := a.preReboot(stuck.id, fleetlock.DefaultGroup); !fleetlock.IsKind(err, fleetlock.KindDrainFailed) {
		t.Errorf("pre-reboot during the cool-off = %v, want drain_failed", err)
	}
	reboot(t, next.name)
	must(t, a.steadyState(next.id, fleetlock.DefaultGroup))
	released(t, ns, fleetlock.DefaultGroup, next.name)

	// After the cool-off the node tries again, and is drained again.
	for time.Since(yieldedAt) < 10*time.Second {
		err := a.preReboot(stuck.id, fleetlock.DefaultGroup)
		approvedWhileFull(err)
		if !fleetlock.IsKind(err, fleetlock.KindDrainFailed) {
			t.Fatalf("pre-reboot %s into the cool-off = %v, want drain_failed", time.Since(yieldedAt).Round(time.Second), err)
		}
		time.Sleep(time.Second)
	}
	harness.Eventually(t, 20*time.Second, "a new drain after the cool-off", func() error {
		err := a.preReboot(stuck.id, fleetlock.DefaultGroup)
		approvedWhileFull(err)
		if !fleetlock.IsKind(err, fleetlock.KindDrainInProgress) {
			return err
		}
		return nil
	})
	if n := getNode(t, stuck.name); !n.Spec.Unschedulable || n.Annotations[annotations.Status] != annotations.StatusDraining ||
		n.Annotations[annotations.DrainFailed] != "" {
		t.Errorf("node draining again: unschedulable=%v annotations=%v", n.Spec.Unschedulable, n.Annotations)
	}
	if o := lockObject(t, ns, fleetlock.DefaultGroup); len(o.CoolOffs) != 0 {
		t.Errorf("cool-offs after a new grant = %+v, want them pruned", o.CoolOffs)
	}
	// With the budget relaxed, this drain finishes before its timeout.
	must(t, fixtures.SetMinAvailable(ctx, cluster.Client, ns, "web", 0))
	approveUntil(t, a, stuck, fleetlock.DefaultGroup, 20*time.Second)
	if h := holders(t, ns, fleetlock.DefaultGroup); len(h) != 1 || h[0].Stage() != lock.PhaseApproved {
		t.Errorf("holders after the second drain = %+v, want the node approved", h)
	}
}
