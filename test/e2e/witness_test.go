package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// TestRebootWithoutLock: a node that reboots without holding a slot (its
// boot id changes: zincati-update-now, a crash) gets one RebootWithoutLock
// Warning Event, from the leader, and is counted; a node that reboots in
// its own approved cycle does not.
func TestRebootWithoutLock(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	nodes := newNodes(t, ns, 2, nil)
	rogue, approved := nodes[0], nodes[1]
	a := startArbiter(t, ns)
	b := startArbiter(t, ns) // a second replica: only the leader reports
	approveUntil(t, a, approved, fleetlock.DefaultGroup, 30*time.Second)

	must(t, fixtures.Reboot(ctx, cluster.Client, approved.name, 0))
	must(t, fixtures.Reboot(ctx, cluster.Client, rogue.name, 0))
	harness.Eventually(t, 15*time.Second, "RebootWithoutLock on the node without a slot", func() error {
		if n := len(nodeEvents(ctx, t, rogue.name, "RebootWithoutLock")); n != 1 {
			return fmt.Errorf("%d Events", n)
		}
		return nil
	})
	time.Sleep(2 * time.Second) // a second report, or one for the approved node, would be here by now
	if n := len(nodeEvents(ctx, t, rogue.name, "RebootWithoutLock")); n != 1 {
		t.Errorf("%d RebootWithoutLock Events on %s, want exactly 1 (the leader's)", n, rogue.name)
	}
	va, _ := metric(t, a, "rebootmanager_reboots_without_lock_total", nil)
	vb, _ := metric(t, b, "rebootmanager_reboots_without_lock_total", nil)
	if va+vb != 1 {
		t.Errorf("rebootmanager_reboots_without_lock_total = %v + %v across the replicas, want 1", va, vb)
	}
	if n := len(nodeEvents(ctx, t, approved.name, "RebootWithoutLock")); n != 0 {
		t.Errorf("RebootWithoutLock on %s, which rebooted in its approved cycle", approved.name)
	}
}
