package e2e

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// TestFairAcrossReplicas: hosts that wait for the one slot of a group,
// their requests spread over two replicas, are granted in the order they
// first asked, whichever replica each asks; the line is kept in the lock
// object, and a host that asks again keeps its place.
func TestFairAcrossReplicas(t *testing.T) {
	ns := cluster.Namespace(t)
	hosts := newNodes(t, ns, 7, nil)
	replicas := []*arbiter{startArbiter(t, ns, "--max-wait", "90s"), startArbiter(t, ns, "--max-wait", "90s")}
	first, waiting := hosts[0], hosts[1:]
	approveUntil(t, replicas[0], first, fleetlock.DefaultGroup, 30*time.Second)

	// Each host asks through the replica its place gives it, in turn, once
	// the one before it is in line; it asks again at once after a 423, as
	// Zincati does on its next tick.
	granted := make(chan int, len(waiting))
	stop := make(chan struct{})
	defer close(stop)
	for i, h := range waiting {
		a := replicas[i%2]
		go func() {
			for {
				got := <-a.askAsync(h.id, fleetlock.DefaultGroup)
				if got.err == nil {
					granted <- i
					return
				}
				select {
				case <-stop:
					return
				default:
				}
			}
		}()
		harness.Eventually(t, 10*time.Second, h.name+" in line", func() error {
			line := lockObject(t, ns, fleetlock.DefaultGroup).Line
			if !slices.ContainsFunc(line, func(w lock.Waiter) bool { return w.ID == h.id }) {
				return fmt.Errorf("not in the line %+v", line)
			}
			return nil
		})
	}

	holder, order := first, []int{}
	for range waiting {
		reboot(t, holder.name)
		must(t, replicas[len(order)%2].steadyState(holder.id, fleetlock.DefaultGroup))
		select {
		case i := <-granted:
			order = append(order, i)
			holder = waiting[i]
		case <-time.After(30 * time.Second):
			t.Fatalf("no grant after %v", order)
		}
	}
	inversions := 0
	for i := range order {
		for j := i + 1; j < len(order); j++ {
			if order[i] > order[j] {
				inversions++
			}
		}
	}
	t.Logf("grants in order %v: %d inversions", order, inversions)
	if inversions != 0 {
		t.Errorf("grants in order %v, want the order of first arrival (0..%d): %d inversions", order, len(waiting)-1, inversions)
	}
}
