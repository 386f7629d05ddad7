package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rebootmanager/reboot-manager/arbiter/drain"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// TestPlaneEnforcesPDB checks the plane itself: a kwok node runs pods, and
// an eviction that a PodDisruptionBudget forbids gets 429, while one it
// allows succeeds and the pod goes away.
func TestPlaneEnforcesPDB(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := cluster.Client
	ns := cluster.Namespace(t)
	node := harness.Prefix(t)
	if _, err := fixtures.CreateNode(ctx, c, fixtures.NodeSpec{Name: node, Labels: map[string]string{"pool": ns}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fixtures.DeleteNodes(context.Background(), c, node) })

	if err := fixtures.CreateGuarded(ctx, c, ns, "web", ns, 2, 2); err != nil {
		t.Fatal(err)
	}
	pods, err := fixtures.PodsOn(ctx, c, ns, node)
	if err != nil || len(pods) != 2 {
		t.Fatalf("pods on %s = %d, %v; want 2", node, len(pods), err)
	}

	err = drain.Evict(ctx, c, ns, pods[0].Name)
	if !apierrors.IsTooManyRequests(err) {
		t.Fatalf("eviction against minAvailable=2 = %v, want 429", err)
	}
	if why := drain.Describe(err); why == "" || !strings.Contains(why, "PodDisruptionBudget") {
		t.Errorf("Describe(429) = %q, want it to name the PodDisruptionBudget", why)
	}

	if err := fixtures.SetMinAvailable(ctx, c, ns, "web", 1); err != nil {
		t.Fatal(err)
	}
	if err := fixtures.WaitPDBAllows(ctx, c, ns, "web", 1); err != nil {
		t.Fatal(err)
	}
	if err := drain.Evict(ctx, c, ns, pods[0].Name); err != nil {
		t.Fatalf("eviction against minAvailable=1: %v", err)
	}
	harness.Eventually(t, 20*time.Second, "evicted pod gone", func() error {
		_, err := c.CoreV1().Pods(ns).Get(ctx, pods[0].Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("pod %s still exists (%v)", pods[0].Name, err)
	})
}
