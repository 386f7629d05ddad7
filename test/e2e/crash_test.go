package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// TestCrashes (R2) kills the arbiter with SIGKILL at random instants of a
// reboot cycle, SOAK_CRASHES times (default 4; make soak runs 60): during a
// pre-reboot (the lock compare-and-swap, the cordon, the drain) and during a
// steady-state (between recording it and the release, or the release and
// the uncordon). After each restart the node, like Zincati, asks again
// until answered: the drain resumes and completes, and once its
// steady-state is answered the node soon holds no slot, carries no cordon
// of ours and is Ready in status.
func TestCrashes(t *testing.T) {
	trials := 4
	if v, err := strconv.Atoi(os.Getenv("SOAK_CRASHES")); err == nil && v > 0 {
		trials = v
	}
	ctx := context.Background()
	ns := cluster.Namespace(t)
	nodes := newNodes(t, ns, 3, nil) // kwok runs their pods and completes evictions
	group := fleetlock.DefaultGroup  // the group of nodes without a label
	args := []string{"--leader-election=false", "--max-wait", "10s"}
	a := startArbiter(t, ns, args...)
	// crashAfter runs f at a random instant within max; the channel closes
	// once it has.
	crashAfter := func(max time.Duration, f func()) <-chan struct{} {
		d := time.Duration(rand.Int64N(int64(max)))
		done := make(chan struct{})
		time.AfterFunc(d, func() { f(); close(done) })
		return done
	}
	// ask repeats a request every 100 ms, restarting the arbiter whenever
	// it is gone, until it is answered 200. It counts the requests that
	// got no HTTP answer: the process died under them or before them.
	cut := 0
	ask := func(op func(context.Context, fleetlock.ClientParams) error, p fleetlock.ClientParams) {
		deadline := time.Now().Add(60 * time.Second)
		for {
			err := op(ctx, p)
			if err == nil {
				return
			}
			var se *fleetlock.StatusError
			if !errors.As(err, &se) {
				cut++
			}
			if time.Now().After(deadline) {
				t.Fatalf("no 200 within 60s after crashes: %v", err)
			}
			if getOK(a.probe+"healthz") != nil {
				a = startArbiter(t, ns, args...)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	crashes := 0
	for trial := range trials {
		node := nodes[trial%len(nodes)]
		name := node.name
		for k := range 5 {
			must(t, create(ctx, cluster.Client.CoreV1().Pods(ns).Create, fixtures.BarePod(ns, fmt.Sprintf("t%d-p%d", trial, k), name)))
		}
		p := fleetlock.ClientParams{ID: node.id, Group: group}

		victim := a
		crashAfter(300*time.Millisecond, victim.kill)
		ask(func(ctx context.Context, p fleetlock.ClientParams) error { return a.client.PreReboot(ctx, p) }, p)
		crashes++
		if left, _ := fixtures.PodsOn(ctx, cluster.Client, ns, name); len(left) != 0 {
			t.Fatalf("trial %d: approved with %d pods on the node", trial, len(left))
		}
		if n := getNode(t, name); n.Annotations[annotations.Status] != annotations.StatusRebooting {
			t.Fatalf("trial %d: approved but status %q", trial, n.Annotations[annotations.Status])
		}
		if getOK(a.probe+"healthz") != nil {
			a = startArbiter(t, ns, args...)
		}

		reboot(t, name)
		victim = a
		crashed := crashAfter(30*time.Millisecond, victim.kill)
		ask(func(ctx context.Context, p fleetlock.ClientParams) error { return a.client.SteadyState(ctx, p) }, p)
		crashes++
		// The leader ends the cycle once the node is back: keep one running.
		<-crashed
		if getOK(a.probe+"healthz") != nil {
			a = startArbiter(t, ns, args...)
		}
		harness.Eventually(t, 20*time.Second, fmt.Sprintf("trial %d: the node back in service", trial), func() error {
			for _, h := range holders(t, ns, group) {
				if h.ID == p.ID {
					return fmt.Errorf("still holds a slot after its steady-state")
				}
			}
			n := getNode(t, name)
			if n.Spec.Unschedulable || n.Annotations[annotations.CordonedBy] != "" || n.Annotations[annotations.Status] != annotations.StatusReady {
				return fmt.Errorf("unschedulable=%v annotations=%v", n.Spec.Unschedulable, n.Annotations)
			}
			return nil
		})
	}
	t.Logf("R2: %d trials, %d SIGKILLs at random instants, %d requests got no answer; every drain completed and every node was back in service",
		trials, crashes, cut)
}
