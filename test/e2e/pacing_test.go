package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rebootmanager/reboot-manager/arbiter/operator"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// TestPacing drives the pacing controls end to end: a paused group, a
// closed maintenance window, a minimum gap and pod blockers each turn a
// node away with their own 423 kind, take no slot, and show as the node's
// reason in `kubectl reboot-manager status`; lifting each lets it through.
func TestPacing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := cluster.Client
	ns := cluster.Namespace(t)
	// One node per group it asks in: default, win, gap (two), block (two).
	groupOf := []string{"default", "win", "gap", "gap", "block", "block"}
	nodes := newNodes(t, ns, len(groupOf), func(i int, s *fixtures.NodeSpec) { s.Labels[annotations.GroupLabel] = groupOf[i] })
	// A window that is closed now, and one that is open now, in UTC.
	now := time.Now().UTC()
	closed := fmt.Sprintf(`{start: "%s", end: "%s"}`, now.Add(2*time.Hour).Format("15:04"), now.Add(3*time.Hour).Format("15:04"))
	open := fmt.Sprintf(`{start: "%s", end: "%s", timeZone: Asia/Kolkata}`,
		now.Add(-time.Hour).In(mustZone(t, "Asia/Kolkata")).Format("15:04"), now.Add(time.Hour).In(mustZone(t, "Asia/Kolkata")).Format("15:04"))
	config := func(paused, window, blockers string) string {
		return fmt.Sprintf(`
paused: %s
defaults: {slots: 1}
groups:
  win: {windows: [%s]}
  gap: {slots: 2, minGap: 4s}
  block: {blockers: [%s]}
`, paused, window, blockers)
	}
	setGroups(t, ns, config("true", closed, fmt.Sprintf(`{namespace: %s, selector: app=quorum}`, ns)))
	a := startArbiter(t, ns)
	expect := func(node simNode, group string, kind fleetlock.Kind) {
		t.Helper()
		err := a.preReboot(node.id, group)
		if kind == "" && err != nil || kind != "" && !fleetlock.IsKind(err, kind) {
			t.Fatalf("pre-reboot of %s in %s = %v, want %q", node.name, group, err, kind)
		}
		if kind != "" {
			for _, h := range holders(t, ns, group) {
				if h.ID == node.id {
					t.Fatalf("%s turned away (%s) but holds a slot", node.name, kind)
				}
			}
		}
	}
	release := func(node simNode, group string) {
		t.Helper()
		reboot(t, node.name)
		must(t, a.steadyState(node.id, group))
		released(t, ns, group, node.name)
	}
	statusReason := func(node simNode) string {
		t.Helper()
		n := nodeIn(cliStatus(t, ns), node.name)
		if n.Status != operator.StatusWaiting {
			t.Fatalf("status of %s = %+v, want Waiting", node.name, n)
		}
		return n.Reason
	}

	// The whole fleet is paused.
	harness.Eventually(t, 10*time.Second, "fleet pause", func() error {
		if err := a.preReboot(nodes[0].id, "default"); !fleetlock.IsKind(err, fleetlock.KindPaused) {
			return fmt.Errorf("pre-reboot = %v", err)
		}
		return nil
	})
	if r := statusReason(nodes[0]); !strings.Contains(r, "paused") {
		t.Errorf("status reason %q does not say paused", r)
	}
	release(nodes[0], "default") // clears the waiting mark

	// Unpaused, the window is still closed.
	setGroups(t, ns, config("false", closed, fmt.Sprintf(`{namespace: %s, selector: app=quorum}`, ns)))
	harness.Eventually(t, 10*time.Second, "unpaused", func() error { return a.preReboot(nodes[0].id, "default") })
	release(nodes[0], "default")
	expect(nodes[1], "win", fleetlock.KindOutsideWindow)
	if r := statusReason(nodes[1]); !strings.Contains(r, "outside its maintenance windows") {
		t.Errorf("status reason %q does not name the window", r)
	}
	setGroups(t, ns, config("false", open, fmt.Sprintf(`{namespace: %s, selector: app=quorum}`, ns)))
	harness.Eventually(t, 10*time.Second, "window open", func() error { return a.preReboot(nodes[1].id, "win") })
	release(nodes[1], "win")

	// Two slots, but at least 4 s between grants.
	expect(nodes[2], "gap", "")
	expect(nodes[3], "gap", fleetlock.KindMinGap)
	if h := holders(t, ns, "gap"); len(h) != 1 {
		t.Fatalf("holders during the gap = %+v, want the first only", h)
	}
	harness.Eventually(t, 10*time.Second, "gap over", func() error { return a.preReboot(nodes[3].id, "gap") })
	release(nodes[2], "gap")
	release(nodes[3], "gap")

	// A quorum pod that is not Ready anywhere blocks the group.
	quorum := fixtures.BarePod(ns, "quorum-0", "no-such-node") // bound, never runs
	quorum.Labels["app"] = "quorum"
	must(t, create(ctx, c.CoreV1().Pods(ns).Create, quorum))
	expect(nodes[4], "block", fleetlock.KindBlocked)
	if r := statusReason(nodes[4]); !strings.Contains(r, ns+"/quorum-0") {
		t.Errorf("status reason %q does not name the blocking pod", r)
	}
	must(t, c.CoreV1().Pods(ns).Delete(ctx, "quorum-0", deleteNow))
	harness.Eventually(t, 10*time.Second, "blocker gone", func() error { return a.preReboot(nodes[4].id, "block") })
	release(nodes[4], "block")

	// A node-scoped blocker: a matching pod on the node itself.
	setGroups(t, ns, config("false", open, `{selector: app=pinned, scope: node}`))
	pinned := fixtures.BarePod(ns, "pinned", nodes[4].name)
	pinned.Labels["app"] = "pinned"
	must(t, create(ctx, c.CoreV1().Pods(ns).Create, pinned))
	harness.Eventually(t, 10*time.Second, "node blocker", func() error {
		if err := a.preReboot(nodes[4].id, "block"); !fleetlock.IsKind(err, fleetlock.KindBlocked) {
			return fmt.Errorf("pre-reboot = %v", err)
		}
		return nil
	})
	expect(nodes[5], "block", "") // the pod is not on this node
}

var deleteNow = metav1.DeleteOptions{GracePeriodSeconds: new(int64)}

func mustZone(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}
