package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// answer is one pre-reboot's reply and when it came.
type answer struct {
	err error
	at  time.Time
}

// askAsync sends a pre-reboot in the background.
func (a *arbiter) askAsync(id, group string) <-chan answer {
	out := make(chan answer, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		err := a.client.PreReboot(ctx, fleetlock.ClientParams{ID: id, Group: group})
		out <- answer{err, time.Now()}
	}()
	return out
}

func waitAnswer(t *testing.T, ch <-chan answer, within time.Duration) answer {
	t.Helper()
	select {
	case a := <-ch:
		return a
	case <-time.After(within):
		t.Fatalf("no answer within %s", within)
		return answer{}
	}
}

func stillWaiting(t *testing.T, ch <-chan answer, what string) {
	t.Helper()
	select {
	case a := <-ch:
		t.Fatalf("%s answered %v, want it still waiting", what, a.err)
	case <-time.After(500 * time.Millisecond):
	}
}

// TestLongPoll: with --max-wait, pre-reboots that find the group full wait
// server-side and are served in arrival order the moment the slot frees; a
// draining node is approved the moment its pods are gone; a shutdown answers
// waiters 503 at once and leaks no slot.
func TestLongPoll(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := cluster.Client
	ns := cluster.Namespace(t)
	nodes := newNodes(t, ns, 3, nil)
	group := fleetlock.DefaultGroup // the group of nodes without a label
	a := startArbiter(t, ns, "--max-wait", "60s")

	if err := a.preReboot(nodes[0].id, group); err != nil {
		t.Fatalf("first pre-reboot of an empty node = %v, want 200", err)
	}
	first := a.askAsync(nodes[1].id, group)
	time.Sleep(300 * time.Millisecond) // nodes[1] queues first
	second := a.askAsync(nodes[2].id, group)
	stillWaiting(t, first, "the first waiter")

	// nodes[0] reboots and reports back: nodes[1] gets the slot at once.
	must(t, fixtures.Reboot(ctx, c, nodes[0].name, 0))
	released := time.Now()
	must(t, a.steadyState(nodes[0].id, group))
	got := waitAnswer(t, first, 10*time.Second)
	if got.err != nil {
		t.Fatalf("first waiter = %v, want 200", got.err)
	}
	t.Logf("hand-off: %s from steady-state to the next approval", got.at.Sub(released).Round(time.Millisecond))
	if h := holders(t, ns, group); len(h) != 1 || h[0].Node != nodes[1].name {
		t.Fatalf("holders = %+v, want only %s", h, nodes[1].name)
	}
	stillWaiting(t, second, "the second waiter")
	must(t, fixtures.Reboot(ctx, c, nodes[1].name, 0))
	must(t, a.steadyState(nodes[1].id, group))
	if got := waitAnswer(t, second, 10*time.Second); got.err != nil {
		t.Fatalf("second waiter = %v, want 200", got.err)
	}

	// The drain: a PDB holds the pods; the waiting request is approved as
	// soon as the budget lets them go.
	must(t, fixtures.Reboot(ctx, c, nodes[2].name, 0))
	must(t, a.steadyState(nodes[2].id, group))
	pool := ns + "-pods"
	target := newNodes(t, ns, 1, func(_ int, s *fixtures.NodeSpec) { s.Name += "-pods"; s.Labels["pool"] = pool })[0]
	must(t, fixtures.CreateGuarded(ctx, c, ns, "web", pool, 2, 2))
	must(t, fixtures.WaitRunning(ctx, c, ns, "app=web", 2))
	drained := a.askAsync(target.id, group)
	harness.Eventually(t, 20*time.Second, "the node draining", func() error {
		if !getNode(t, target.name).Spec.Unschedulable {
			return fmt.Errorf("not cordoned yet")
		}
		return nil
	})
	stillWaiting(t, drained, "the pre-reboot of the guarded node")
	must(t, fixtures.SetMinAvailable(ctx, c, ns, "web", 0))
	if got := waitAnswer(t, drained, 30*time.Second); got.err != nil {
		t.Fatalf("pre-reboot waiting for the drain = %v, want 200", got.err)
	}
	if pods, _ := fixtures.PodsOn(ctx, c, ns, target.name); len(pods) != 0 {
		t.Fatalf("approved with %d pods on the node", len(pods))
	}

	// Shutdown while a request waits: 503 at once, no slot taken.
	waiting := a.askAsync(nodes[0].id, group)
	stillWaiting(t, waiting, "the waiter before shutdown")
	stopped := time.Now()
	a.stop()
	got = waitAnswer(t, waiting, 10*time.Second)
	if !fleetlock.IsKind(got.err, fleetlock.KindUnavailable) {
		t.Fatalf("waiter at shutdown = %v, want 503 unavailable", got.err)
	}
	t.Logf("shutdown answered the waiter in %s", got.at.Sub(stopped).Round(time.Millisecond))
	if h := holders(t, ns, group); len(h) != 1 || h[0].Node != target.name {
		t.Fatalf("holders after shutdown = %+v, want only %s", h, target.name)
	}
}

// TestReleaseNotStarved: more waiting pre-reboots than the arbiter serves
// connections. Only --max-waiters of them wait server-side; the others are
// answered 423 at once with their place in line, so the holder's
// steady-state is served within 1 s and the next waiter gets the slot.
func TestReleaseNotStarved(t *testing.T) {
	ns := cluster.Namespace(t)
	holder := newNodes(t, ns, 1, nil)[0]
	ids := createPlainNodes(t, ns, 30, nil)
	a := startArbiter(t, ns, "--max-wait", "20s", "--max-connections", "20", "--max-waiters", "4")
	approveUntil(t, a, holder, fleetlock.DefaultGroup, 30*time.Second)

	answers := make([]<-chan answer, len(ids))
	for i, id := range ids {
		answers[i] = a.askAsync(id, fleetlock.DefaultGroup)
	}
	// The 26 beyond the line are answered at once, with their place.
	harness.Eventually(t, 10*time.Second, "the waiters beyond the line answered", func() error {
		turned := 0
		for i, ch := range answers {
			select {
			case got := <-ch:
				if !fleetlock.IsKind(got.err, fleetlock.KindLockHeld) || !strings.Contains(got.err.Error(), "wait ahead of this one") {
					t.Fatalf("waiter %d beyond the line = %v, want lock_held with its place", i, got.err)
				}
				answers[i] = nil
			default:
			}
			if answers[i] == nil {
				turned++
			}
		}
		if turned != len(ids)-4 {
			return fmt.Errorf("%d answered, want %d", turned, len(ids)-4)
		}
		return nil
	})

	reboot(t, holder.name)
	start := time.Now()
	must(t, a.steadyState(holder.id, fleetlock.DefaultGroup))
	took := time.Since(start)
	t.Logf("the holder's steady-state with 4 waiters held and 26 turned away: %s", took.Round(time.Millisecond))
	if took > time.Second {
		t.Errorf("the holder's steady-state took %s, want within 1s", took)
	}
	granted := 0
	deadline := time.After(15 * time.Second)
	for granted == 0 {
		for i, ch := range answers {
			if ch == nil {
				continue
			}
			select {
			case got := <-ch:
				if got.err == nil {
					granted++
				}
				answers[i] = nil
			default:
			}
		}
		select {
		case <-deadline:
			t.Fatal("no waiter got the slot after the release")
		case <-time.After(50 * time.Millisecond):
		}
	}
}
