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

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
)

// BenchmarkDrain (P3) drains two identical nodes in one run, one with
// `kubectl drain --ignore-daemonsets --delete-emptydir-data` and one through
// the arbiter (a pre-reboot that waits for its drain), and reports both
// times and their ratio. Each node runs BENCH_DRAIN_PODS pods (default 100)
// of 10 Deployments whose PodDisruptionBudgets allow one disruption at a
// time, 3 of them with emptyDir volumes; a spare node takes the evicted
// pods. A watch counts the moments any Deployment had fewer ready pods than
// its budget's minAvailable: PDB violations.
func BenchmarkDrain(b *testing.B) {
	pods := 100
	if v, err := strconv.Atoi(os.Getenv("BENCH_DRAIN_PODS")); err == nil && v >= 10 {
		pods = v
	}
	for b.Loop() {
		ns := cluster.Namespace(b)
		kubectlNode, kubectlCheck := drainSetup(b, ns, "k", pods)
		arbiterNode, arbiterCheck := drainSetup(b, ns, "a", pods)

		start := time.Now()
		if out, err := cluster.Kubectl("drain", kubectlNode.name, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=10m"); err != nil {
			b.Fatalf("kubectl drain: %v\n%s", err, out)
		}
		kubectlTime := time.Since(start)

		a := startArbiter(b, ns, "--log-level", "warn", "--max-wait", "10m")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		start = time.Now()
		err := a.client.PreReboot(ctx, fleetlock.ClientParams{ID: arbiterNode.id, Group: fleetlock.DefaultGroup})
		arbiterTime := time.Since(start)
		cancel()
		if err != nil {
			b.Fatalf("pre-reboot waiting for the drain: %v", err)
		}
		if left, _ := fixtures.PodsOn(context.Background(), cluster.Client, ns, arbiterNode.name); len(left) != 0 {
			b.Fatalf("approved with %d pods on the node", len(left))
		}
		b.ReportMetric(kubectlTime.Seconds(), "kubectl-drain-s")
		b.ReportMetric(arbiterTime.Seconds(), "arbiter-drain-s")
		b.ReportMetric(arbiterTime.Seconds()/kubectlTime.Seconds(), "arbiter/kubectl")
		b.ReportMetric(float64(kubectlCheck()+arbiterCheck()), "pdb-violations")
	}
}

// drainSetup creates node <prefix>-<side>-0 in pool ns-side running pods
// pods of 10 budgeted Deployments, then a spare node in the same pool, and
// starts counting budget violations. The returned func stops the count and
// returns it.
func drainSetup(b *testing.B, ns, side string, pods int) (simNode, func() int) {
	b.Helper()
	ctx := context.Background()
	c := cluster.Client
	pool := ns + "-" + side
	inPool := func(_ int, s *fixtures.NodeSpec) { s.Name += "-" + side; s.Labels["pool"] = pool }
	node := newNodes(b, ns, 1, inPool)[0]
	per := int32(pods / 10)
	var wg sync.WaitGroup
	errs := make([]error, 10)
	for i := range 10 {
		wg.Go(func() {
			name := fmt.Sprintf("%s-w%d", side, i)
			d, pdb := fixtures.Deployment(ns, name, pool, per, per-1)
			if i < 3 {
				d.Spec.Template.Spec.Volumes = []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
			}
			if _, err := c.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
				errs[i] = err
				return
			}
			if _, err := c.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, pdb, metav1.CreateOptions{}); err != nil {
				errs[i] = err
				return
			}
			if err := fixtures.WaitRunning(ctx, c, ns, "app="+name, int(per)); err != nil {
				errs[i] = err
				return
			}
			errs[i] = fixtures.WaitPDBAllows(ctx, c, ns, name, 1)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	newNodes(b, ns, 1, func(i int, s *fixtures.NodeSpec) { inPool(i, s); s.Name += "-spare" })

	// Count budget violations: a Deployment with fewer ready, not
	// terminating pods than minAvailable.
	var violations atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			list, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				continue
			}
			ready := map[string]int32{}
			for _, p := range list.Items {
				if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
					for _, cond := range p.Status.Conditions {
						if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
							ready[p.Labels["app"]]++
						}
					}
				}
			}
			for i := range 10 {
				if ready[fmt.Sprintf("%s-w%d", side, i)] < per-1 {
					violations.Add(1)
				}
			}
		}
	}()
	var once sync.Once
	return node, func() int {
		once.Do(func() { close(stop); <-done })
		return int(violations.Load())
	}
}
