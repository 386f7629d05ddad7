package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
)

// holderWatch checks, from a watch on the lock objects and not from any
// arbiter's word, that no group ever has more holders than its slots.
type holderWatch struct {
	mu         sync.Mutex
	slots      map[string]int
	max        map[string]int
	violations []string
}

func watchHolders(t *testing.T, ns string, slots map[string]int) *holderWatch {
	t.Helper()
	w := &holderWatch{slots: slots, max: map[string]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	factory := informers.NewSharedInformerFactoryWithOptions(cluster.Client, 0, informers.WithNamespace(ns),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = lock.Label + "=true" }))
	inf := factory.Coordination().V1().Leases().Informer()
	record := func(obj any) {
		l, ok := obj.(*coordinationv1.Lease)
		if !ok {
			return
		}
		holders, err := lock.Decode(l)
		if err != nil {
			t.Errorf("lock object %s: %v", l.Name, err)
			return
		}
		g := l.Annotations[annotations.LockGroup]
		w.mu.Lock()
		defer w.mu.Unlock()
		w.max[g] = max(w.max[g], len(holders))
		if len(holders) > w.slots[g] {
			w.violations = append(w.violations, fmt.Sprintf("group %s: %d holders at resourceVersion %s", g, len(holders), l.ResourceVersion))
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: record, UpdateFunc: func(_, obj any) { record(obj) },
	}); err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	cache.WaitForCacheSync(ctx.Done(), inf.HasSynced)
	return w
}

// TestReplicasStorm (R1): three arbiter processes share one API server.
// Each round, every node of three groups (1, 2 and 3 slots) sends a
// pre-reboot to a random replica at once, then the granted ones report
// steady-state. A watch on the lock objects checks holders ≤ slots at every
// change. SOAK_ROUNDS sets the rounds (default 15; make soak runs 250).
func TestReplicasStorm(t *testing.T) {
	rounds := 15
	if v, err := strconv.Atoi(os.Getenv("SOAK_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	ns := cluster.Namespace(t)
	slots := map[string]int{"one": 1, "two": 2, "three": 3}
	setGroups(t, ns, "groups: {one: {slots: 1}, two: {slots: 2}, three: {slots: 3}}")
	group := func(i int) string { return []string{"one", "two", "three"}[i%3] }
	ids := createPlainNodes(t, ns, 15, group)
	w := watchHolders(t, ns, slots)
	replicas := []*arbiter{startArbiter(t, ns), startArbiter(t, ns), startArbiter(t, ns)}
	pick := func() *arbiter { return replicas[rand.IntN(len(replicas))] }
	ctx := context.Background()

	var grants, unavailable, rejected int
	for r := range rounds {
		var (
			mu      sync.Mutex
			granted []int
			wg      sync.WaitGroup
		)
		for i := range ids {
			wg.Go(func() {
				err := pick().client.PreReboot(ctx, fleetlock.ClientParams{ID: ids[i], Group: group(i)})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					granted = append(granted, i)
				case fleetlock.IsKind(err, fleetlock.KindUnavailable):
					unavailable++
				case fleetlock.IsKind(err, fleetlock.KindLockHeld):
					rejected++
				default:
					t.Errorf("round %d: pre-reboot of node %d = %v", r, i, err)
				}
			})
		}
		wg.Wait()
		perGroup := map[string]int{}
		for _, i := range granted {
			perGroup[group(i)]++
		}
		for g, n := range perGroup {
			if n > slots[g] {
				t.Errorf("round %d: %d grants in group %s of %d slots", r, n, g, slots[g])
			}
		}
		grants += len(granted)
		for _, i := range granted {
			wg.Go(func() {
				if err := pick().client.SteadyState(ctx, fleetlock.ClientParams{ID: ids[i], Group: group(i)}); err != nil {
					t.Errorf("round %d: steady-state of node %d = %v", r, i, err)
				}
			})
		}
		wg.Wait()
	}
	time.Sleep(500 * time.Millisecond) // let the watch catch up
	w.mu.Lock()
	defer w.mu.Unlock()
	t.Logf("R1: %d rounds, 3 replicas, %d pre-reboots: %d grants, %d lock_held, %d unavailable; max holders %v; %d violations",
		rounds, rounds*len(ids), grants, rejected, unavailable, w.max, len(w.violations))
	if len(w.violations) > 0 {
		t.Errorf("holders over slots, seen by the watch: %v", w.violations)
	}
	if grants < rounds*3 {
		t.Errorf("%d grants in %d rounds: fewer than one per group per round", grants, rounds)
	}
	for g, s := range slots {
		if w.max[g] != s {
			t.Errorf("group %s: at most %d holders seen, want its %d slots used", g, w.max[g], s)
		}
	}
}
