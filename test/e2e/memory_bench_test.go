package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
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
		ids := createPlainNodes(b, ns, nodes, nil)
		createBoundPods(b, ns, pods, nodes)

		a := startArbiter(b, ns, "--log-level", "warn")
		rss := func() float64 { return residentMiB(b, a.pid) }
		b.ReportMetric(rss(), "rss-synced-MiB")
		for _, id := range ids {
			if err := a.client.SteadyState(ctx, fleetlock.ClientParams{ID: id, Group: "default"}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(rss(), "rss-checkins-MiB")
		// Drain the first node: its pods are bound but unmanaged, so the
		// drain evicts them all (--drain-force is on by default).
		group := fleetlock.DefaultGroup
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
		anon, file := residentSplit(b, a.pid)
		b.ReportMetric(anon, "rss-anon-MiB")
		b.ReportMetric(file, "rss-file-MiB")
		for name, unit := range map[string]string{
			"go_memstats_heap_inuse_bytes":    "heap-inuse-MiB",
			"go_memstats_sys_bytes":           "go-sys-MiB",
			"go_memstats_heap_released_bytes": "heap-released-MiB",
		} {
			if v, ok := metric(b, a, name, nil); ok {
				b.ReportMetric(v/(1<<20), unit)
			}
		}
	}
}

// createBoundPods creates n pods in ns spread over the plain nodes
// <ns>-00000…, bound by spec.nodeName so no scheduler touches them.
func createBoundPods(b testing.TB, ns string, n, nodes int) {
	b.Helper()
	ctx := context.Background()
	g := new(errgroup.Group)
	g.SetLimit(32)
	for i := range n {
		p := fixtures.BarePod(ns, fmt.Sprintf("p-%06d", i), fmt.Sprintf("%s-%05d", ns, i%nodes))
		g.Go(func() error {
			_, err := cluster.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatalf("create pods: %v", err)
	}
}

// residentMiB reads a process's resident set (VmRSS) from /proc.
func residentMiB(b testing.TB, pid int) float64 {
	anon, file := residentSplit(b, pid)
	return anon + file
}

// residentSplit reads a process's anonymous and file-backed resident memory
// from /proc: the heap and stacks, and the pages of the binary in use.
func residentSplit(b testing.TB, pid int) (anon, file float64) {
	b.Helper()
	st, err := procStatusMiB(pid)
	if err != nil {
		b.Fatal(err)
	}
	return st["RssAnon"] + st["RssShmem"], st["RssFile"]
}

// procStatusMiB reads the sizes of /proc/PID/status (VmRSS, VmHWM,
// RssAnon, ...), in MiB, keyed by name without the colon.
func procStatusMiB(pid int) (map[string]float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[2] != "kB" {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		out[strings.TrimSuffix(f[0], ":")] = kb / 1024
	}
	return out, nil
}
