package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// BenchmarkMemory (P4) reports the arbiter's resident memory in a cluster
// of BENCH_NODES Nodes (default 5,000) and BENCH_PODS pods (default 50,000)
// bound to them, after its caches synced, after check-ins from every node,
// and after it drained one node: it caches Nodes and its own Leases, never
// the cluster's pods. The Nodes are plain objects and the pods are bound but
// never run (nothing simulates them), so they cost etcd, not kwok.
func BenchmarkMemory(b *testing.B) {
	nodes, pods := 5000, 50000
	if v, err := strconv.Atoi(os.Getenv("BENCH_NODES")); err == nil && v > 0 {
		nodes = v
	}
	if v, err := strconv.Atoi(os.Getenv("BENCH_PODS")); err == nil && v >= 0 {
		pods = v
	}
	for b.Loop() {
		ctx := context.Background()
		ns := cluster.Namespace(b)
		ids := createPlainNodes(b, ns, nodes)
		createBoundPods(b, ns, pods, nodes)

		a := startArbiter(b, ns, "--log-level", "warn")
		rss := func() float64 {
			v, ok := metric(b, a, "process_resident_memory_bytes", nil)
			if !ok {
				b.Fatal("no process_resident_memory_bytes")
			}
			return v / (1 << 20)
		}
		b.ReportMetric(rss(), "rss-synced-MiB")
		for _, id := range ids {
			if err := a.client.SteadyState(ctx, fleetlock.ClientParams{ID: id, Group: "default"}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(rss(), "rss-checkins-MiB")
		// Drain the first node: its pods are bound but unmanaged, so the
		// drain evicts them all (--drain-force is on by default).
		group := harness.Prefix(b)
		deadline := time.Now().Add(2 * time.Minute)
		for {
			err := a.client.PreReboot(ctx, fleetlock.ClientParams{ID: ids[0], Group: group})
			if err == nil {
				break
			}
			if !fleetlock.IsKind(err, fleetlock.KindDrainInProgress) || time.Now().After(deadline) {
				b.Fatalf("pre-reboot: %v", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		b.ReportMetric(rss(), "rss-drained-MiB")
		if v, ok := metric(b, a, "go_memstats_heap_inuse_bytes", nil); ok {
			b.ReportMetric(v/(1<<20), "heap-inuse-MiB")
		}
	}
}

// createBoundPods creates n pods in ns spread over the plain nodes
// <ns>-00000…, bound by spec.nodeName so no scheduler touches them.
func createBoundPods(b testing.TB, ns string, n, nodes int) {
	b.Helper()
	ctx := context.Background()
	var (
		wg   sync.WaitGroup
		next atomic.Int64
		fail atomic.Value
	)
	for range 32 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				p := fixtures.BarePod(ns, fmt.Sprintf("p-%06d", i), fmt.Sprintf("%s-%05d", ns, i%nodes))
				if _, err := cluster.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
					fail.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, ok := fail.Load().(error); ok {
		b.Fatalf("create pods: %v", err)
	}
}
