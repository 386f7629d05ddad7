package e2e

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
)

// BenchmarkCheckIn (P1) measures what a steady-state check-in from an
// already-Ready node costs at fleet scale: BENCH_NODES Node objects (default
// 5,000; plain objects, not run by kwok), steady-states to random nodes at
// a fixed 1,000 req/s and at maximum throughput, and, in the same run, a
// baseline check-in that lists every Node, as the original design did.
// API server requests per check-in come from apiserver_request_total, which
// also counts the plane's own background traffic (an upper bound).
func BenchmarkCheckIn(b *testing.B) {
	n := 5000
	if v, err := strconv.Atoi(os.Getenv("BENCH_NODES")); err == nil && v > 0 {
		n = v
	}
	ctx := context.Background()
	ns := cluster.Namespace(b)
	ids := createPlainNodes(b, ns, n, nil)

	// The load stands for a fleet of hosts, each its own source, all
	// sending from 127.0.0.1: no per-source limit.
	a := startArbiter(b, ns, "--log-level", "warn", "--max-connections-per-source", "1000")
	// Wait until the arbiter's cache holds every Node: the last one is known.
	probe := fleetlock.ClientParams{ID: ids[n-1], Group: fleetlock.DefaultGroup}
	for {
		err := a.client.PreReboot(ctx, probe)
		if err == nil {
			break
		}
		if !fleetlock.IsKind(err, fleetlock.KindUnknownNode) {
			b.Fatalf("probe: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	rebootPlain(b, fmt.Sprintf("%s-%05d", ns, n-1)) // the probe's slot ends with its reboot
	if err := a.client.SteadyState(ctx, probe); err != nil {
		b.Fatal(err)
	}
	client := &fleetlock.Client{BaseURL: a.url, HTTP: &http.Client{
		Transport:     &http.Transport{MaxIdleConnsPerHost: 64},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
	steady := func(i int) error {
		return client.SteadyState(ctx, fleetlock.ClientParams{ID: ids[i%n], Group: "default"})
	}
	baseline := func(i int) error {
		list, err := cluster.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, nd := range list.Items {
			if nd.Annotations[annotations.ZincatiID] == ids[i%n] {
				return nil
			}
		}
		return fmt.Errorf("id %s not found", ids[i%n])
	}

	b.Run("arbiter/1000rps", func(b *testing.B) {
		for b.Loop() {
			load(b, 5000, 1000, 0, steady)
		}
	})
	b.Run("arbiter/max", func(b *testing.B) {
		for b.Loop() {
			load(b, 20000, 0, 32, steady)
		}
	})
	b.Run("baseline-list-all/max", func(b *testing.B) {
		for b.Loop() {
			load(b, 100, 0, 8, baseline)
		}
	})
}

// createPlainNodes creates n Node objects carrying a Zincati id annotation
// and deletes them after the benchmark. It returns their ids.
func createPlainNodes(b testing.TB, ns string, n int, group func(i int) string) []string {
	b.Helper()
	ctx := context.Background()
	ids := make([]string, n)
	label := map[string]string{"bench": ns}
	b.Cleanup(func() {
		_ = cluster.Client.CoreV1().Nodes().DeleteCollection(context.Background(), metav1.DeleteOptions{},
			metav1.ListOptions{LabelSelector: "bench=" + ns})
	})
	g := new(errgroup.Group)
	g.SetLimit(32)
	for i := range n {
		ids[i] = fixtures.RandomID()
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name: fmt.Sprintf("%s-%05d", ns, i), Labels: maps.Clone(label),
			Annotations: map[string]string{annotations.ZincatiID: ids[i]},
		}}
		if group != nil {
			node.Labels[annotations.GroupLabel] = group(i)
		}
		g.Go(func() error {
			_, err := cluster.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatalf("create nodes: %v", err)
	}
	return ids
}

// load sends total requests with do, either at a fixed rate (requests per
// second) or, when rate is 0, as fast as workers allow, and reports the
// latency percentiles, the throughput and the API server requests per
// request.
func load(b *testing.B, total, rate, workers int, do func(i int) error) {
	b.Helper()
	lat := make([]time.Duration, total)
	var failed atomic.Int64
	one := func(i int) {
		t := time.Now()
		if err := do(i); err != nil {
			failed.Add(1)
		}
		lat[i] = time.Since(t)
	}
	before := apiserverRequests(b)
	start := time.Now()
	var wg sync.WaitGroup
	if rate > 0 {
		// Each request goes out at its own instant on the schedule, so a
		// slow moment is caught up instead of lowering the rate.
		interval := time.Second / time.Duration(rate)
		for i := range total {
			if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
				time.Sleep(d)
			}
			wg.Go(func() { one(i) })
		}
	} else {
		var next atomic.Int64
		for range workers {
			wg.Go(func() {
				for {
					i := int(next.Add(1) - 1)
					if i >= total {
						return
					}
					one(i)
				}
			})
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	after := apiserverRequests(b)
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d requests failed", f, total)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[total/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[total*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(total)/elapsed.Seconds(), "req/s")
	b.ReportMetric((after-before)/float64(total), "apiserver-req/op")
}
