package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/fleetsim"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// rollout runs a simulated rollout of n kwok hosts in one group with one
// slot, whose pods (two per host, a PodDisruptionBudget allowing one
// disruption) must be drained, against an arbiter run with args.
func rollout(tb testing.TB, n int, scale float64, args ...string) ([]fleetsim.Timeline, fleetsim.Summary) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	ns := cluster.Namespace(tb)
	nodes := newNodes(tb, ns, n, nil)
	replicas := int32(2 * n)
	if err := fixtures.CreateGuarded(ctx, cluster.Client, ns, "web", ns, replicas, replicas-1); err != nil {
		tb.Fatal(err)
	}
	if err := fixtures.WaitRunning(ctx, cluster.Client, ns, "app=web", int(replicas)); err != nil {
		tb.Fatal(err)
	}
	a := startArbiter(tb, ns, append([]string{"--log-level", "warn"}, args...)...)
	hosts := make([]fleetsim.Host, n)
	for i, nd := range nodes {
		hosts[i] = fleetsim.Host{Node: nd.name, ID: nd.id}
	}
	timelines, sum, err := fleetsim.Run(ctx, fleetsim.Config{
		Client: cluster.Client, BaseURL: a.url, Namespace: ns, Group: fleetlock.DefaultGroup, Slots: 1,
		Hosts: hosts, Scale: scale, RebootTime: 60 * time.Second, KubeletDelay: 10 * time.Second, Seed: 1,
	})
	var table strings.Builder
	_ = fleetsim.WriteTimelines(&table, timelines)
	tb.Logf("%s\n%s", sum, table.String())
	if err != nil {
		tb.Fatal(err)
	}
	return timelines, sum
}

// TestFleetSim: a small Zincati-faithful rollout with long-poll finishes,
// never holds more than the one slot (seen by a watch on the lock object),
// never approves before the slot or reboots a node with pods on it, never
// frees a slot on the steady-state that comes before kubelet reports the
// new boot, and leaves every node uncordoned and Ready with a new boot id.
func TestFleetSim(t *testing.T) {
	timelines, sum := rollout(t, 4, 300, "--max-wait", "5m")
	if sum.Finished != 4 || sum.Violations != 0 || sum.MaxHolders != 1 {
		t.Fatalf("summary %s: want 4 finished, 1 holder at most, no violations", sum)
	}
	for _, tl := range timelines {
		if tl.Locked.IsZero() || tl.Approved.Before(tl.Locked) || tl.SteadyState.After(tl.Up) || tl.Released.Before(tl.Up) {
			t.Errorf("%s: out of order: %+v", tl.Host.Node, tl)
		}
		// The uncordon follows the release a moment later.
		harness.Eventually(t, 5*time.Second, tl.Host.Node+" back in service", func() error {
			if n := getNode(t, tl.Host.Node); n.Spec.Unschedulable || n.Annotations[annotations.Status] != annotations.StatusReady {
				return fmt.Errorf("unschedulable=%v status=%q", n.Spec.Unschedulable, n.Annotations[annotations.Status])
			}
			return nil
		})
	}
}

// BenchmarkRollout (P2) runs the same rollout with long-poll and with plain
// polling, with Zincati's ticks scaled 100×: makespan over the ideal
// Σ(drain+reboot) shows the ticks that polling wastes at each hand-off.
// BENCH_ROLLOUT_HOSTS sets the fleet size (default 20).
func BenchmarkRollout(b *testing.B) {
	n := 20
	if v, err := strconv.Atoi(os.Getenv("BENCH_ROLLOUT_HOSTS")); err == nil && v > 0 {
		n = v
	}
	for _, mode := range []struct{ name, maxWait string }{{"long-poll", "5m"}, {"polling", "0"}} {
		b.Run(mode.name, func(b *testing.B) {
			for b.Loop() {
				_, sum := rollout(b, n, 100, "--max-wait", mode.maxWait)
				b.ReportMetric(sum.Makespan.Seconds(), "makespan-s")
				b.ReportMetric(sum.Ratio, "makespan/ideal")
				b.ReportMetric(sum.Idle.Seconds(), "idle-s")
				b.ReportMetric(float64(sum.Violations), "violations")
			}
		})
	}
}
