package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// The tests of "A reboot cycle ends on ground truth". kwok's nodes are
// taken down by taking over their kubelet Lease (fixtures.TakeDown): kwok
// then leaves their status alone, and the test reports the new boot as
// kubelet would (fixtures.BootAgain).

// lockObject reads a group's whole lock object from the API server.
func lockObject(t *testing.T, ns, group string) lock.Object {
	t.Helper()
	l, err := cluster.Client.CoordinationV1().Leases(ns).Get(context.Background(), lock.ObjectName(group), metav1.GetOptions{})
	must(t, err)
	o, err := lock.DecodeObject(l)
	must(t, err)
	return o
}

// holds reports whether node holds a slot in group.
func holds(t *testing.T, ns, group, node string) bool {
	for _, h := range holders(t, ns, group) {
		if h.Node == node {
			return true
		}
	}
	return false
}

// setWitness sets the agent's witness annotations on a node, as the agent
// would publish them.
func setWitness(ctx context.Context, t *testing.T, node, bootID, complete, version string) {
	t.Helper()
	must(t, fixtures.Annotate(ctx, cluster.Client, node, map[string]string{
		annotations.BootID: bootID, annotations.BootComplete: complete, annotations.OSVersion: version}))
}

// eventually waits for one Event of reason on node and returns it.
func eventOn(ctx context.Context, t *testing.T, node, reason string) corev1.Event {
	t.Helper()
	var ev corev1.Event
	harness.Eventually(t, 15*time.Second, reason+" Event on "+node, func() error {
		evs := nodeEvents(ctx, t, node, reason)
		if len(evs) == 0 {
			return fmt.Errorf("none yet")
		}
		ev = evs[0]
		return nil
	})
	return ev
}

// TestCycleZincatiOrder: Zincati's steady-state arrives while the node is
// still down (its old boot id, its Lease held by no kubelet): the slot
// stays held and a waiting pre-reboot is not granted; a new boot id that
// is not Ready holds it too; once the node is Ready on its new boot, the
// slot passes on within 2 s. Two replicas, the requests crossing.
func TestCycleZincatiOrder(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	nodes := newNodes(t, ns, 2, nil)
	first, next := nodes[0], nodes[1]
	a := startArbiter(t, ns, "--max-wait", "60s")
	b := startArbiter(t, ns, "--max-wait", "60s")
	approveUntil(t, a, first, fleetlock.DefaultGroup, 30*time.Second)

	kubelet, err := fixtures.TakeDown(ctx, cluster.Client, first.name, 10*time.Minute)
	must(t, err)
	must(t, b.steadyState(first.id, fleetlock.DefaultGroup))
	if h := holders(t, ns, fleetlock.DefaultGroup); len(h) != 1 || h[0].SteadyStateAt == nil {
		t.Fatalf("holders after the steady-state = %+v, want %s's, with its steady-state recorded", h, first.name)
	}
	granted := make(chan error, 1)
	go func() { granted <- a.preReboot(next.id, fleetlock.DefaultGroup) }()
	select {
	case err := <-granted:
		t.Fatalf("pre-reboot of %s answered %v while %s is down", next.name, err, first.name)
	case <-time.After(3 * time.Second):
	}
	if !holds(t, ns, fleetlock.DefaultGroup, first.name) {
		t.Fatal("the slot passed on while the node is down")
	}

	// The new boot, not Ready yet.
	_, err = fixtures.BootAgain(ctx, cluster.Client, first.name, fixtures.OSImage(), false)
	must(t, err)
	harness.Eventually(t, 10*time.Second, "status Returning", func() error {
		if s := getNode(t, first.name).Annotations[annotations.Status]; s != annotations.StatusReturning {
			return fmt.Errorf("status %q", s)
		}
		return nil
	})
	if err := b.preReboot(first.id, fleetlock.DefaultGroup); !fleetlock.IsKind(err, fleetlock.KindLockHeld) || !strings.Contains(err.Error(), "rebooted since") {
		t.Errorf("pre-reboot of the rebooted node before its cycle ended = %v, want lock_held: no second 200", err)
	}
	if !holds(t, ns, fleetlock.DefaultGroup, first.name) {
		t.Fatal("the slot passed on while the node is not Ready")
	}

	// Ready on the new boot: the slot passes on.
	must(t, fixtures.SetReady(ctx, cluster.Client, first.name, true))
	back := time.Now()
	select {
	case err := <-granted:
		if err != nil {
			t.Fatalf("the waiting pre-reboot answered %v, want approval", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the waiting pre-reboot was never answered")
	}
	if h := holders(t, ns, fleetlock.DefaultGroup); len(h) != 1 || h[0].Node != next.name {
		t.Errorf("holders = %+v, want %s alone", h, next.name)
	}
	passed := time.Since(back)
	t.Logf("the slot passed on, and the next node was approved, %s after the node was back", passed.Round(time.Millisecond))
	if passed > 2*time.Second {
		t.Errorf("the slot passed on %s after the node was back, want within 2s", passed)
	}
	released(t, ns, fleetlock.DefaultGroup, first.name) // the uncordon follows the release
	if n := getNode(t, first.name); n.Spec.Unschedulable {
		t.Errorf("node still cordoned after its cycle")
	}
	if ev := eventOn(ctx, t, first.name, "RebootCompleted"); !strings.Contains(ev.Message, "Fedora CoreOS 41.") {
		t.Errorf("RebootCompleted says %q, want the versions", ev.Message)
	}
	if v := nodeIn(cliStatus(t, ns), first.name).Versions; !strings.Contains(v, " → Fedora CoreOS 41.") {
		t.Errorf("status VERSIONS after the cycle = %q, want the last reboot's from → to", v)
	}
	must(t, fixtures.BringBack(ctx, cluster.Client, first.name, kubelet))
}

// TestCycleBackBeforeSteadyState: the node is back long before Zincati's
// steady-state, and the agent reports boot-complete. reached releases the
// slot without a steady-state; failed holds it, keeps the node cordoned,
// and halts the group on both replicas, until resume.
func TestCycleBackBeforeSteadyState(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	setGroups(t, ns, "defaults: {slots: 2}\n")
	nodes := newNodes(t, ns, 3, nil)
	good, bad, other := nodes[0], nodes[1], nodes[2]
	a := startArbiter(t, ns)
	b := startArbiter(t, ns)
	for _, n := range []simNode{good, bad} {
		setWitness(ctx, t, n.name, getNode(t, n.name).Status.NodeInfo.BootID, annotations.BootReached, "41.1")
	}
	approveUntil(t, a, good, fleetlock.DefaultGroup, 30*time.Second)
	approveUntil(t, b, bad, fleetlock.DefaultGroup, 30*time.Second)
	for _, h := range holders(t, ns, fleetlock.DefaultGroup) {
		if h.Approval == nil || h.Approval.OSVersion != "41.1" {
			t.Errorf("approval of %s = %+v, want the agent's os-version 41.1 recorded", h.Node, h.Approval)
		}
	}

	for _, n := range []simNode{good, bad} {
		kubelet, err := fixtures.TakeDown(ctx, cluster.Client, n.name, 10*time.Minute)
		must(t, err)
		t.Cleanup(func() { _ = fixtures.BringBack(context.Background(), cluster.Client, n.name, kubelet) })
	}
	goodBoot, err := fixtures.BootAgain(ctx, cluster.Client, good.name, fixtures.OSImage(), true)
	must(t, err)
	badBoot, err := fixtures.BootAgain(ctx, cluster.Client, bad.name, fixtures.OSImage(), true)
	must(t, err)
	time.Sleep(2 * time.Second)
	if !holds(t, ns, fleetlock.DefaultGroup, good.name) {
		t.Fatal("released with neither a steady-state nor the agent's witness")
	}
	setWitness(ctx, t, good.name, goodBoot, annotations.BootReached, "41.2")
	setWitness(ctx, t, bad.name, badBoot, annotations.BootFailed, "41.2")

	released(t, ns, fleetlock.DefaultGroup, good.name)
	if ev := eventOn(ctx, t, good.name, "RebootCompleted"); !strings.Contains(ev.Message, "from 41.1 to 41.2") {
		t.Errorf("RebootCompleted says %q, want from 41.1 to 41.2", ev.Message)
	}
	ev := eventOn(ctx, t, bad.name, "BootFailed")
	if ev.Type != corev1.EventTypeWarning || !strings.Contains(ev.Message, "boot-complete.target failed") {
		t.Errorf("BootFailed Event = %s %q", ev.Type, ev.Message)
	}
	time.Sleep(time.Second)
	o := lockObject(t, ns, fleetlock.DefaultGroup)
	if len(o.Halts) != 1 || o.Halts[0].Reason != lock.HaltBootFailed || o.Halts[0].Node != bad.name {
		t.Fatalf("halts = %+v, want boot_failed on %s", o.Halts, bad.name)
	}
	if len(o.Holders) != 1 || o.Holders[0].Node != bad.name {
		t.Errorf("holders = %+v, want the failed node's slot kept", o.Holders)
	}
	if n := getNode(t, bad.name); !n.Spec.Unschedulable || n.Annotations[annotations.Status] != annotations.StatusHalted {
		t.Errorf("failed node: unschedulable=%v status=%q, want cordoned and Halted", n.Spec.Unschedulable, n.Annotations[annotations.Status])
	}
	// Both replicas enforce it, and show it.
	for _, r := range []*arbiter{a, b} {
		err := r.preReboot(other.id, fleetlock.DefaultGroup)
		if !fleetlock.IsKind(err, fleetlock.KindHalted) || !strings.Contains(err.Error(), "boot_failed") {
			t.Errorf("pre-reboot in the halted group = %v, want halted naming boot_failed", err)
		}
		harness.Eventually(t, 5*time.Second, "the halt metric", func() error {
			if v, _ := metric(t, r, "rebootmanager_group_halted", map[string]string{"group": fleetlock.DefaultGroup, "reason": "boot_failed"}); v != 1 {
				return fmt.Errorf("rebootmanager_group_halted = %v", v)
			}
			return nil
		})
	}
	if g := cliStatus(t, ns).Groups; len(g) == 0 || len(g[0].Halts) != 1 || g[0].Halts[0].Reason != lock.HaltBootFailed {
		t.Errorf("status groups = %+v, want default halted", g)
	}
	if out, _, _ := cli(t, ns, "status"); !strings.Contains(out, "boot_failed (node "+bad.name+")") {
		t.Errorf("status table does not show the halt:\n%s", out)
	}

	out, errOut, code := cli(t, ns, "resume", fleetlock.DefaultGroup)
	if code != 0 || !strings.Contains(out, "resumed") {
		t.Fatalf("resume: exit %d: %s%s", code, out, errOut)
	}
	eventOnLock(ctx, t, ns, fleetlock.DefaultGroup, "GroupResumed")
	approveUntil(t, b, other, fleetlock.DefaultGroup, 30*time.Second)
	if !holds(t, ns, fleetlock.DefaultGroup, bad.name) {
		t.Error("resume released the failed node's slot; only a person or its recovery may")
	}
}

// eventOnLock waits for an Event of reason on group's lock object.
func eventOnLock(ctx context.Context, t *testing.T, ns, group, reason string) {
	t.Helper()
	harness.Eventually(t, 10*time.Second, reason+" Event on the lock object", func() error {
		evs, err := cluster.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + lock.ObjectName(group) + ",reason=" + reason})
		if err != nil {
			return err
		}
		if len(evs.Items) == 0 {
			return fmt.Errorf("none yet")
		}
		return nil
	})
}

// TestCycleNoReboot: a steady-state after the approval from a node that
// never went down (Zincati restarted; an operator by curl): the kubelet
// keeps renewing its Lease on the same boot, and the slot is released
// within 60 s. A pre-reboot confirmed again in between voids the first
// steady-state.
func TestCycleNoReboot(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	node := newNodes(t, ns, 1, nil)[0]
	a := startArbiter(t, ns)
	b := startArbiter(t, ns)
	approveUntil(t, a, node, fleetlock.DefaultGroup, 30*time.Second)
	// Zincati restarts, reports steady-state, finds its update staged and
	// asks again: the repeat 200 voids the steady-state, for the node is
	// about to reboot now.
	must(t, b.steadyState(node.id, fleetlock.DefaultGroup))
	must(t, a.preReboot(node.id, fleetlock.DefaultGroup))
	if h := holders(t, ns, fleetlock.DefaultGroup); len(h) != 1 || h[0].SteadyStateAt != nil {
		t.Fatalf("holders after a repeat approval = %+v, want the steady-state voided", h)
	}
	must(t, b.steadyState(node.id, fleetlock.DefaultGroup))
	sent := time.Now()
	time.Sleep(2 * time.Second)
	if !holds(t, ns, fleetlock.DefaultGroup, node.name) {
		t.Fatal("released at once: a steady-state before kubelet reports the new boot looks the same")
	}
	releasedWithin(t, 60*time.Second, ns, fleetlock.DefaultGroup, node.name)
	t.Logf("released %s after the steady-state", time.Since(sent).Round(time.Second))
	eventOn(ctx, t, node.name, "NotRebooted")
	if getNode(t, node.name).Spec.Unschedulable {
		t.Error("still cordoned after its release")
	}
	if o := lockObject(t, ns, fleetlock.DefaultGroup); len(o.Halts) != 0 {
		t.Errorf("halted for a reboot that did not happen: %+v", o.Halts)
	}
}

// TestCycleUpdateNotApplied: the node comes back on the OS it had (a
// failed finalize). Its slot is released and it is uncordoned, but the
// group halts; pause and resume from the CLI.
func TestCycleUpdateNotApplied(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	nodes := newNodes(t, ns, 2, nil)
	node, next := nodes[0], nodes[1]
	a := startArbiter(t, ns)
	b := startArbiter(t, ns)
	approveUntil(t, a, node, fleetlock.DefaultGroup, 30*time.Second)
	kubelet, err := fixtures.TakeDown(ctx, cluster.Client, node.name, 10*time.Minute)
	must(t, err)
	t.Cleanup(func() { _ = fixtures.BringBack(context.Background(), cluster.Client, node.name, kubelet) })
	_, err = fixtures.BootAgain(ctx, cluster.Client, node.name, getNode(t, node.name).Status.NodeInfo.OSImage, true)
	must(t, err)
	must(t, b.steadyState(node.id, fleetlock.DefaultGroup))
	released(t, ns, fleetlock.DefaultGroup, node.name)
	if ev := eventOn(ctx, t, node.name, "UpdateNotApplied"); !strings.Contains(ev.Message, "not applied") {
		t.Errorf("UpdateNotApplied says %q", ev.Message)
	}
	if getNode(t, node.name).Spec.Unschedulable {
		t.Error("still cordoned after its release")
	}
	// Zincati stages the same release again and asks: the group is halted.
	for _, r := range []*arbiter{a, b} {
		for _, n := range []simNode{node, next} {
			if err := r.preReboot(n.id, fleetlock.DefaultGroup); !fleetlock.IsKind(err, fleetlock.KindHalted) || !strings.Contains(err.Error(), "update_not_applied") {
				t.Errorf("pre-reboot of %s = %v, want halted naming update_not_applied", n.name, err)
			}
		}
	}

	if out, errOut, code := cli(t, ns, "resume", "--all"); code != 0 || !strings.Contains(out, "resumed") {
		t.Fatalf("resume --all: exit %d: %s%s", code, out, errOut)
	}
	out, errOut, code := cli(t, ns, "pause", "--all")
	if code != 0 || !strings.Contains(out, `group "default" halted`) {
		t.Fatalf("pause --all: exit %d: %s%s", code, out, errOut)
	}
	if err := b.preReboot(next.id, fleetlock.DefaultGroup); !fleetlock.IsKind(err, fleetlock.KindHalted) || !strings.Contains(err.Error(), "operator") {
		t.Errorf("pre-reboot after pause = %v, want halted naming operator", err)
	}
	if out, _, code := cli(t, ns, "pause", fleetlock.DefaultGroup); code != 0 || !strings.Contains(out, "already paused") {
		t.Errorf("a second pause says %q, want already paused", out)
	}
	if out, errOut, code := cli(t, ns, "resume", fleetlock.DefaultGroup); code != 0 || !strings.Contains(out, "resumed") {
		t.Fatalf("resume: exit %d: %s%s", code, out, errOut)
	}
	approveUntil(t, a, next, fleetlock.DefaultGroup, 30*time.Second)
}

// TestCycleNotBack: a node that does not come back within --max-downtime
// halts its group with not_back and keeps its slot; one that comes back
// later is released, and the group stays halted.
func TestCycleNotBack(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	node := newNodes(t, ns, 1, nil)[0]
	a := startArbiter(t, ns, "--max-downtime", "4s")
	approveUntil(t, a, node, fleetlock.DefaultGroup, 30*time.Second)
	kubelet, err := fixtures.TakeDown(ctx, cluster.Client, node.name, 10*time.Minute)
	must(t, err)
	t.Cleanup(func() { _ = fixtures.BringBack(context.Background(), cluster.Client, node.name, kubelet) })
	eventOn(ctx, t, node.name, "NodeNotBack")
	o := lockObject(t, ns, fleetlock.DefaultGroup)
	if len(o.Halts) != 1 || o.Halts[0].Reason != lock.HaltNotBack || len(o.Holders) != 1 {
		t.Fatalf("lock object = %+v, want halted not_back, the slot held", o)
	}
	if n := getNode(t, node.name); !n.Spec.Unschedulable {
		t.Error("a node not back was uncordoned")
	}
	_, err = fixtures.BootAgain(ctx, cluster.Client, node.name, fixtures.OSImage(), true)
	must(t, err)
	must(t, a.steadyState(node.id, fleetlock.DefaultGroup))
	released(t, ns, fleetlock.DefaultGroup, node.name)
	if o := lockObject(t, ns, fleetlock.DefaultGroup); len(o.Halts) != 1 || o.Halts[0].Reason != lock.HaltNotBack {
		t.Errorf("halts after the late return = %+v, want not_back kept until resume", o.Halts)
	}
}

// TestCycleSettle: with a settle time, a node back and Ready keeps its
// slot (status Settling) until the time has passed.
func TestCycleSettle(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	setGroups(t, ns, "defaults: {slots: 1, settle: 4s}\n")
	node := newNodes(t, ns, 1, nil)[0]
	a := startArbiter(t, ns)
	approveUntil(t, a, node, fleetlock.DefaultGroup, 30*time.Second)
	kubelet, err := fixtures.TakeDown(ctx, cluster.Client, node.name, 10*time.Minute)
	must(t, err)
	t.Cleanup(func() { _ = fixtures.BringBack(context.Background(), cluster.Client, node.name, kubelet) })
	_, err = fixtures.BootAgain(ctx, cluster.Client, node.name, fixtures.OSImage(), true)
	must(t, err)
	must(t, a.steadyState(node.id, fleetlock.DefaultGroup))
	back := time.Now()
	harness.Eventually(t, 5*time.Second, "status Settling", func() error {
		if s := getNode(t, node.name).Annotations[annotations.Status]; s != annotations.StatusSettling {
			return fmt.Errorf("status %q", s)
		}
		return nil
	})
	releasedWithin(t, 20*time.Second, ns, fleetlock.DefaultGroup, node.name)
	if held := time.Since(back); held < 4*time.Second {
		t.Errorf("released %s after the node was back, before the 4s settle time", held)
	}
}

// reboot simulates the reboot Zincati makes after its approval: the node
// gets a new boot id and OS version, and is Ready again.
func reboot(t testing.TB, node string) {
	t.Helper()
	must(t, fixtures.Reboot(context.Background(), cluster.Client, node, 0))
}

// rebootPlain is reboot for a Node that no kwok manages: kubelet's report
// of a new boot, Ready.
func rebootPlain(t testing.TB, node string) {
	t.Helper()
	_, err := fixtures.BootAgain(context.Background(), cluster.Client, node, fixtures.OSImage(), true)
	must(t, err)
}

// released waits until node holds no slot in group and shows Ready: the
// leader ends a cycle a moment after the node is back.
func released(t *testing.T, ns, group, node string) {
	t.Helper()
	releasedWithin(t, 10*time.Second, ns, group, node)
}

// releasedWithin is released with its own time limit.
func releasedWithin(t *testing.T, within time.Duration, ns, group, node string) {
	t.Helper()
	harness.Eventually(t, within, node+" released and back in service", func() error {
		if holds(t, ns, group, node) {
			return fmt.Errorf("still holds a slot")
		}
		if s := getNode(t, node).Annotations[annotations.Status]; s != "" && s != annotations.StatusReady {
			return fmt.Errorf("status %q", s)
		}
		return nil
	})
}

// TestCycleHaltOnFailureOff: with haltOnFailure: false a node back on its
// old version still gets its UpdateNotApplied Event and is released, but
// its group goes on.
func TestCycleHaltOnFailureOff(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	setGroups(t, ns, "defaults: {slots: 1, haltOnFailure: false}\n")
	nodes := newNodes(t, ns, 2, nil)
	node, next := nodes[0], nodes[1]
	a := startArbiter(t, ns)
	approveUntil(t, a, node, fleetlock.DefaultGroup, 30*time.Second)
	kubelet, err := fixtures.TakeDown(ctx, cluster.Client, node.name, 10*time.Minute)
	must(t, err)
	t.Cleanup(func() { _ = fixtures.BringBack(context.Background(), cluster.Client, node.name, kubelet) })
	_, err = fixtures.BootAgain(ctx, cluster.Client, node.name, getNode(t, node.name).Status.NodeInfo.OSImage, true)
	must(t, err)
	must(t, a.steadyState(node.id, fleetlock.DefaultGroup))
	released(t, ns, fleetlock.DefaultGroup, node.name)
	eventOn(ctx, t, node.name, "UpdateNotApplied")
	if o := lockObject(t, ns, fleetlock.DefaultGroup); len(o.Halts) != 0 {
		t.Fatalf("halts = %+v, want none with haltOnFailure: false", o.Halts)
	}
	approveUntil(t, a, next, fleetlock.DefaultGroup, 30*time.Second)
}
