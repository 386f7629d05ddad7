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
	return rolloutWith(tb, n, fleet{}, scale, args...)
}

// fleet varies a rollout.
type fleet struct {
	// stuck hosts are added whose drain can never finish (two pods whose
	// PodDisruptionBudget allows no disruption).
	stuck int
	// replicas of the arbiter serve the hosts, host i the replica i%replicas
	// (default 1).
	replicas int
	// groups is the groups settings ("" for the default).
	groups string
}

// rolloutWith is rollout with the fleet f.
func rolloutWith(tb testing.TB, n int, f fleet, scale float64, args ...string) ([]fleetsim.Timeline, fleetsim.Summary) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	ns := cluster.Namespace(tb)
	if f.groups != "" {
		setGroups(tb, ns, f.groups)
	}
	stuck := f.stuck
	nodes := newNodes(tb, ns, n, nil)
	replicas := int32(2 * n)
	if err := fixtures.CreateGuarded(ctx, cluster.Client, ns, "web", ns, replicas, replicas-1); err != nil {
		tb.Fatal(err)
	}
	if err := fixtures.WaitRunning(ctx, cluster.Client, ns, "app=web", int(replicas)); err != nil {
		tb.Fatal(err)
	}
	hosts := make([]fleetsim.Host, 0, n+stuck)
	for _, nd := range nodes {
		hosts = append(hosts, fleetsim.Host{Node: nd.name, ID: nd.id})
	}
	if stuck > 0 {
		pool := ns + "-stuck"
		bad := newNodes(tb, ns, stuck, func(_ int, s *fixtures.NodeSpec) { s.Name += "-stuck"; s.Labels["pool"] = pool })
		if err := fixtures.CreateGuarded(ctx, cluster.Client, ns, "stuck", pool, int32(2*stuck), int32(2*stuck)); err != nil {
			tb.Fatal(err)
		}
		for _, nd := range bad {
			hosts = append(hosts, fleetsim.Host{Node: nd.name, ID: nd.id, Stuck: true})
		}
	}
	var urls []string
	for range max(f.replicas, 1) {
		urls = append(urls, startArbiter(tb, ns, append([]string{"--log-level", "warn"}, args...)...).url)
	}
	timelines, sum, err := fleetsim.Run(ctx, fleetsim.Config{
		Client: cluster.Client, BaseURLs: urls, Namespace: ns, Group: fleetlock.DefaultGroup, Slots: 1,
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

// BenchmarkRolloutBadNode: the P2 rollout with long-poll, plus one host
// whose PodDisruptionBudget can never be satisfied, with the drain timeout
// scaled down to 10 s and the cool-off to 60 s. Each time the bad host
// takes the slot its drain yields after the timeout; the others all
// complete. Makespan over the ideal Σ(drain+reboot) of the hosts that
// finished shows what the bad host costs.
func BenchmarkRolloutBadNode(b *testing.B) {
	n := 19
	if v, err := strconv.Atoi(os.Getenv("BENCH_ROLLOUT_HOSTS")); err == nil && v > 1 {
		n = v - 1
	}
	for b.Loop() {
		timelines, sum := rolloutWith(b, n, fleet{stuck: 1, groups: "defaults: {slots: 1, drainTimeout: 10s, drainCoolOff: 60s}\n"}, 100, "--max-wait", "5m")
		yields := 0
		for _, tl := range timelines {
			if tl.Host.Stuck {
				yields = tl.DrainFailed
				if tl.Err != nil {
					b.Fatalf("stuck host: %v", tl.Err)
				}
			}
		}
		if sum.Finished != n {
			b.Fatalf("%d of %d good hosts finished", sum.Finished, n)
		}
		b.ReportMetric(sum.Makespan.Seconds(), "makespan-s")
		b.ReportMetric(sum.Ratio, "makespan/ideal")
		b.ReportMetric((sum.Drain + sum.Reboot).Seconds(), "ideal-s")
		b.ReportMetric(float64(yields), "drain_failed-answers")
		b.ReportMetric(float64(sum.Violations), "violations")
	}
}

// BenchmarkRolloutReplicas: the P2 rollout with long-poll through two
// replicas, host i asking replica i%2: the grants follow the hosts' first
// requests, whichever replica each reached (inversions: pairs granted out
// of that order).
func BenchmarkRolloutReplicas(b *testing.B) {
	n := 20
	if v, err := strconv.Atoi(os.Getenv("BENCH_ROLLOUT_HOSTS")); err == nil && v > 0 {
		n = v
	}
	for b.Loop() {
		_, sum := rolloutWith(b, n, fleet{replicas: 2}, 100, "--max-wait", "5m")
		if sum.Finished != n {
			b.Fatalf("%d of %d hosts finished", sum.Finished, n)
		}
		b.ReportMetric(float64(sum.Inversions), "inversions")
		b.ReportMetric(sum.Ratio, "makespan/ideal")
		b.ReportMetric(float64(sum.Violations), "violations")
	}
}
