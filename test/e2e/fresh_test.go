package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// rounds is the number of rounds of a race test: def, or SOAK_RACE_ROUNDS.
func rounds(def int) int {
	if v, err := strconv.Atoi(os.Getenv("SOAK_RACE_ROUNDS")); err == nil && v > 0 {
		return v
	}
	return def
}

// approveUntil asks a until it approves the node's reboot.
func approveUntil(t *testing.T, a *arbiter, node simNode, group string, within time.Duration) {
	t.Helper()
	harness.Eventually(t, within, "approval of "+node.name, func() error { return a.preReboot(node.id, group) })
}

// bindPod creates a pod bound to node that no controller manages, and
// waits until the API server has it.
func bindPod(ctx context.Context, t *testing.T, ns, name, node string) {
	t.Helper()
	must(t, create(ctx, cluster.Client.CoreV1().Pods(ns).Create, fixtures.BarePod(ns, name, node)))
}

// podStays reports whether the pod still exists and is not terminating.
func podStays(ctx context.Context, t *testing.T, ns, name string) bool {
	t.Helper()
	p, err := cluster.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false
	}
	must(t, err)
	return p.DeletionTimestamp == nil
}

// TestFreshApproval is the race of "Correct under lag and loss": a node
// whose reboot was approved reports steady-state, a pod is bound to it, and
// its next pre-reboot follows at once, against one arbiter and against two
// replicas (steady-state to one, pre-reboot to the other). No pre-reboot
// may be approved while the pod is there: a cache that has not seen the
// release still says Rebooting. 20 rounds each (SOAK_RACE_ROUNDS; make soak
// runs 200).
func TestFreshApproval(t *testing.T) {
	for _, replicas := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d replicas", replicas), func(t *testing.T) {
			ctx := context.Background()
			ns := cluster.Namespace(t)
			node := newNodes(t, ns, 1, nil)[0]
			first := startArbiter(t, ns)
			second := first
			if replicas == 2 {
				second = startArbiter(t, ns)
			}
			n, unsafe := rounds(20), 0
			for i := range n {
				approveUntil(t, second, node, "default", 30*time.Second)
				pod := fmt.Sprintf("bound-%d", i)
				bindPod(ctx, t, ns, pod, node.name)
				must(t, first.steadyState(node.id, "default"))
				err := second.preReboot(node.id, "default")
				if err == nil && podStays(ctx, t, ns, pod) {
					unsafe++
					t.Errorf("round %d: pre-reboot approved with pod %s still on the node", i, pod)
				}
				if err != nil && !fleetlock.IsKind(err, fleetlock.KindDrainInProgress) {
					t.Errorf("round %d: pre-reboot = %v, want drain_in_progress", i, err)
				}
				approveUntil(t, second, node, "default", 30*time.Second)
				if podStays(ctx, t, ns, pod) {
					t.Fatalf("round %d: approved with pod %s on the node", i, pod)
				}
			}
			t.Logf("fresh approval, %d replicas: %d rounds, %d unsafe approvals", replicas, n, unsafe)
		})
	}
}

// TestNoLostRelease: a pre-reboot granted by one replica, the reboot, and
// a steady-state for the same id answered by the other, at once. After
// every 200 to the steady-state the lock object, read from the API server,
// holds nothing, or the holder with that steady-state recorded (the leader
// releases it a moment later): never a holder that lost it. 50 rounds
// (SOAK_RACE_ROUNDS).
func TestNoLostRelease(t *testing.T) {
	ns := cluster.Namespace(t)
	node := newNodes(t, ns, 1, nil)[0]
	a, b := startArbiter(t, ns), startArbiter(t, ns)
	n, lost := rounds(50), 0
	for i := range n {
		must(t, a.preReboot(node.id, "default"))
		reboot(t, node.name)
		must(t, b.steadyState(node.id, "default"))
		if h := holders(t, ns, "default"); len(h) > 1 || (len(h) == 1 && h[0].SteadyStateAt == nil) {
			lost++
			t.Errorf("round %d: steady-state answered 200 and the slot is held without it: %+v", i, h)
			_, _ = lockRelease(t, ns, "default")
		}
		released(t, ns, "default", node.name)
	}
	t.Logf("lost releases: %d rounds across two replicas, %d lost", n, lost)
}

func lockRelease(t *testing.T, ns, group string) ([]lock.Holder, error) {
	t.Helper()
	sem := lock.New(cluster.Client.CoordinationV1(), nil, ns)
	return sem.ReleaseMatching(context.Background(), group, func(lock.Holder) bool { return true })
}

// TestLeadershipFlap: the API server is frozen (SIGSTOP) for 20 s, longer
// than the leader's 10 s renew deadline, so the leader's term ends; after
// SIGCONT a new term starts, and a drain that needs evictions completes.
func TestLeadershipFlap(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ns := cluster.Namespace(t)
	node := newNodes(t, ns, 1, nil)[0]
	must(t, fixtures.CreateGuarded(ctx, cluster.Client, ns, "web", ns, 2, 1))
	must(t, fixtures.WaitRunning(ctx, cluster.Client, ns, "app=web", 2))
	// A second node of the pool, made once both pods run on the first: the
	// evicted pods move to it, so the budget lets the next one go.
	newNodes(t, ns, 1, nil)
	if pods, err := fixtures.PodsOn(ctx, cluster.Client, ns, node.name); err != nil || len(pods) != 2 {
		t.Fatalf("pods on %s = %d (%v), want 2", node.name, len(pods), err)
	}
	a := startArbiter(t, ns)
	harness.Eventually(t, 30*time.Second, "leading", func() error {
		if a.logged(t, "leading: draining and reconciling") == 0 {
			return fmt.Errorf("not leading yet")
		}
		return nil
	})

	raw, err := os.ReadFile(filepath.Join(cluster.Root, ".cluster", "pids", "kube-apiserver.pid"))
	must(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	must(t, err)
	restartControllersAfter(t)
	must(t, syscall.Kill(pid, syscall.SIGSTOP))
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)
	time.Sleep(20 * time.Second)
	resume()
	harness.Eventually(t, 60*time.Second, "a new leadership term", func() error {
		if ended, led := a.logged(t, "leadership term ended"), a.logged(t, "leading: draining and reconciling"); ended < 1 || led < 2 {
			return fmt.Errorf("%d terms ended, %d started", ended, led)
		}
		return nil
	})
	harness.Eventually(t, 90*time.Second, "approval after a drain with evictions", func() error {
		return a.preReboot(node.id, "default")
	})
	pods, err := fixtures.PodsOn(ctx, cluster.Client, ns, node.name)
	must(t, err)
	if len(pods) != 0 {
		t.Errorf("approved with %d pods on the node", len(pods))
	}
	// The new term's drainer evicted (the request path never evicts).
	if v, _ := metric(t, a, "rebootmanager_evictions_total", map[string]string{"result": "ok"}); v < 1 {
		t.Errorf("evictions ok = %v: the drainer of the new term did not evict", v)
	}
}

// TestReleasedByHandThenUncordoned: an approved node's slot is released by
// hand, the node uncordoned by hand and a pod bound to it; its next
// pre-reboot takes a new slot and drains, whatever the node's Rebooting
// mark says.
func TestReleasedByHandThenUncordoned(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	node := newNodes(t, ns, 1, nil)[0]
	a := startArbiter(t, ns)
	approveUntil(t, a, node, "default", 30*time.Second)
	if _, errOut, code := cli(t, ns, "release", node.name); code != 0 {
		t.Fatalf("release: exit %d: %s", code, errOut)
	}
	if n := getNode(t, node.name); !n.Spec.Unschedulable || n.Annotations[annotations.Status] != annotations.StatusRebooting {
		t.Fatalf("after the release: unschedulable=%v status=%q, want an approved node left cordoned", n.Spec.Unschedulable, n.Annotations[annotations.Status])
	}
	_, err := cluster.Kubectl("uncordon", node.name)
	must(t, err)
	bindPod(ctx, t, ns, "late", node.name)
	err = a.preReboot(node.id, "default")
	if err == nil {
		t.Fatal("pre-reboot approved with a pod on the node, on the stale Rebooting mark")
	}
	if !fleetlock.IsKind(err, fleetlock.KindDrainInProgress) {
		t.Errorf("pre-reboot = %v, want drain_in_progress", err)
	}
	if !getNode(t, node.name).Spec.Unschedulable {
		t.Error("the new holder's node is not cordoned")
	}
	approveUntil(t, a, node, "default", 30*time.Second)
	if podStays(ctx, t, ns, "late") {
		t.Error("approved with the pod on the node")
	}
}

// TestWaiterReleased: a long-polling pre-reboot whose slot is released
// while it waits for the drain is never approved, even once the node is
// empty.
func TestWaiterReleased(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ns := cluster.Namespace(t)
	node := guardedNode(ctx, t, ns)
	a := startArbiter(t, ns, "--max-wait", "60s")
	waiter := a.askAsync(node.id, "default")
	harness.Eventually(t, 20*time.Second, "the waiter draining", func() error {
		for _, h := range holders(t, ns, "default") {
			if h.Stage() == lock.PhaseDraining {
				return nil
			}
		}
		return fmt.Errorf("holders %+v", holders(t, ns, "default"))
	})
	stillWaiting(t, waiter, "the drain is blocked by its budget")
	if _, errOut, code := cli(t, ns, "release", node.name); code != 0 {
		t.Fatalf("release: exit %d: %s", code, errOut)
	}
	must(t, fixtures.SetMinAvailable(ctx, cluster.Client, ns, "web", 0))
	got := waitAnswer(t, waiter, 30*time.Second)
	if got.err == nil {
		t.Fatal("approved after its slot was released")
	}
	if !fleetlock.IsKind(got.err, fleetlock.KindLockHeld) {
		t.Errorf("answer = %v, want lock_held", got.err)
	}
	if h := holders(t, ns, "default"); len(h) != 0 {
		t.Errorf("holders after the release = %+v, want none", h)
	}
	harness.Eventually(t, 20*time.Second, "node back in service", func() error {
		if n := getNode(t, node.name); n.Spec.Unschedulable {
			return fmt.Errorf("still cordoned")
		}
		return nil
	})
}

// TestSlotFollowsTheNode: a node's id and group change in the middle of its
// cycle; its steady-state, with the new id and group, still releases the
// slot it took under the old ones.
func TestSlotFollowsTheNode(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	setGroups(t, ns, "defaults: {slots: 1}")
	node := newNodes(t, ns, 1, inGroup("old"))[0]
	a := startArbiter(t, ns)
	approveUntil(t, a, node, "old", 30*time.Second)
	reboot(t, node.name)
	newID := strings.Repeat("ab", 16)
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q},"labels":{%q:"new"}}}`, annotations.ZincatiID, newID, annotations.GroupLabel)
	_, err := cluster.Client.CoreV1().Nodes().Patch(ctx, node.name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	must(t, err)
	harness.Eventually(t, 10*time.Second, "the new id served", func() error {
		// A host outside the cluster would be unknown_node; the new id maps.
		err := a.steadyState(newID, "new")
		if err != nil {
			return err
		}
		if h := holders(t, ns, "old"); len(h) != 0 {
			return fmt.Errorf("slot in the old group still held: %+v", h)
		}
		return nil
	})
	released(t, ns, "old", node.name) // the uncordon follows the release
	if n := getNode(t, node.name); n.Spec.Unschedulable {
		t.Error("node still cordoned after its steady-state")
	}
}

// TestClonedMachineID: two Nodes share a machine id, so one Zincati id
// names both. Its pre-reboot is refused, with both named and an Event on
// each, and neither is cordoned.
func TestClonedMachineID(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	machine := fixtures.RandomID()
	nodes := newNodes(t, ns, 2, func(_ int, s *fixtures.NodeSpec) { s.MachineID = machine })
	a := startArbiter(t, ns)
	status, fe := rawPost(t, a.url+fleetlock.PreRebootPath,
		fmt.Sprintf(`{"client_params":{"id":%q,"group":"default"}}`, nodes[0].id), map[string]string{fleetlock.Header: "true"})
	if status != 409 || fe.Kind != fleetlock.KindAmbiguousID || !strings.Contains(fe.Value, nodes[0].name) || !strings.Contains(fe.Value, nodes[1].name) {
		t.Fatalf("pre-reboot = %d %+v, want 409 ambiguous_id naming both nodes", status, fe)
	}
	for _, n := range nodes {
		if getNode(t, n.name).Spec.Unschedulable {
			t.Errorf("%s cordoned", n.name)
		}
		harness.Eventually(t, 10*time.Second, "Event on "+n.name, func() error {
			if len(nodeEvents(ctx, t, n.name, "AmbiguousZincatiID")) == 0 {
				return fmt.Errorf("no AmbiguousZincatiID Event")
			}
			return nil
		})
	}
	if h := holders(t, ns, "default"); len(h) != 0 {
		t.Errorf("holders = %+v, want none", h)
	}
	must(t, a.steadyState(nodes[0].id, "default"))
}

// TestGroupsConfigMapFailsClosed: with no groups ConfigMap at start every
// pre-reboot is 503 naming it, and steady-state is still 200; once one is
// read, deleting it keeps its settings (a paused group stays paused).
func TestGroupsConfigMapFailsClosed(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	node := newNodes(t, ns, 1, nil)[0]
	a := startArbiter(t, ns, "--no-groups-configmap")
	err := a.preReboot(node.id, "default")
	if !fleetlock.IsKind(err, fleetlock.KindUnavailable) || !strings.Contains(err.Error(), "reboot-manager-groups") {
		t.Fatalf("pre-reboot without the ConfigMap = %v, want unavailable naming it", err)
	}
	must(t, a.steadyState(node.id, "default"))
	setGroups(t, ns, "groups: {default: {paused: true}}")
	harness.Eventually(t, 10*time.Second, "the settings read", func() error {
		if err := a.preReboot(node.id, "default"); !fleetlock.IsKind(err, fleetlock.KindPaused) {
			return fmt.Errorf("pre-reboot = %v, want paused", err)
		}
		return nil
	})
	must(t, cluster.Client.CoreV1().ConfigMaps(ns).Delete(ctx, "reboot-manager-groups", metav1.DeleteOptions{}))
	harness.Eventually(t, 10*time.Second, "the deletion counted", func() error {
		if v, _ := metric(t, a, "rebootmanager_groups_config_rejected_total", nil); v < 1 {
			return fmt.Errorf("rejected_total = %v", v)
		}
		return nil
	})
	if err := a.preReboot(node.id, "default"); !fleetlock.IsKind(err, fleetlock.KindPaused) {
		t.Errorf("pre-reboot after the ConfigMap was deleted = %v, want paused still", err)
	}
	if getNode(t, node.name).Spec.Unschedulable {
		t.Error("node cordoned")
	}
}

// previousRelease is the commit of the release before the lock object's
// schema 2.
const previousRelease = "bf411467d9e037a60708eab19a245bcb6e4d40ef"

// previousArbiter builds the arbiter of previousRelease from this
// repository's history.
func previousArbiter(t *testing.T) string {
	t.Helper()
	git := func(args ...string) error {
		return exec.Command("git", append([]string{"-C", cluster.Root}, args...)...).Run()
	}
	if git("cat-file", "-e", previousRelease+"^{commit}") != nil {
		// A shallow clone: fetch the commit from where it was cloned.
		_ = git("fetch", "--quiet", "origin", previousRelease)
	}
	if git("cat-file", "-e", previousRelease+"^{commit}") != nil {
		t.Skipf("the repository's history lacks the previous release %s, so the upgrade from it cannot be tested here", previousRelease)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if out, err := exec.Command("git", "-C", cluster.Root, "worktree", "add", "--detach", src, previousRelease).CombinedOutput(); err != nil {
		t.Fatalf("check out the previous release %s (the test needs the repository's history): %v\n%s", previousRelease, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("git", "-C", cluster.Root, "worktree", "remove", "--force", src).Run() })
	path := filepath.Join(dir, "arbiter-previous")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", path, "./cmd/arbiter")
	cmd.Dir, cmd.Env = src, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the previous release's arbiter: %v\n%s", err, out)
	}
	return path
}

// TestRollingUpgrade: the previous release's arbiter starts a cycle (slot
// taken, node cordoned, drain blocked by a budget); the new arbiter runs
// beside it, as in a rolling upgrade, and each sees the other's holders;
// then the old one goes and the new one finishes the cycle.
func TestRollingUpgrade(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ns := cluster.Namespace(t)
	old := startArbiterBinary(t, previousArbiter(t), ns)
	node := guardedNode(ctx, t, ns)
	other := newNodes(t, ns, 1, nil)[0]
	if err := old.preReboot(node.id, "default"); !fleetlock.IsKind(err, fleetlock.KindDrainInProgress) {
		t.Fatalf("old arbiter's pre-reboot = %v, want drain_in_progress", err)
	}
	updated := startArbiter(t, ns)
	if err := updated.preReboot(other.id, "default"); !fleetlock.IsKind(err, fleetlock.KindLockHeld) {
		t.Fatalf("new arbiter, another node, while the old one's holder drains = %v, want lock_held", err)
	}
	if err := updated.preReboot(node.id, "default"); !fleetlock.IsKind(err, fleetlock.KindDrainInProgress) {
		t.Fatalf("new arbiter, the holder = %v, want drain_in_progress", err)
	}
	if err := old.preReboot(other.id, "default"); !fleetlock.IsKind(err, fleetlock.KindLockHeld) {
		t.Fatalf("old arbiter, another node, after the new one wrote schema 2 = %v, want lock_held", err)
	}
	old.stop()
	must(t, fixtures.SetMinAvailable(ctx, cluster.Client, ns, "web", 0))
	approveUntil(t, updated, node, "default", 60*time.Second)
	if pods, err := fixtures.PodsOn(ctx, cluster.Client, ns, node.name); err != nil || len(pods) != 0 {
		t.Fatalf("approved with pods %d on the node (%v)", len(pods), err)
	}
	reboot(t, node.name)
	must(t, updated.steadyState(node.id, "default"))
	released(t, ns, "default", node.name)
	if n := getNode(t, node.name); n.Spec.Unschedulable || n.Annotations[annotations.Status] != annotations.StatusReady {
		t.Errorf("node after the cycle: unschedulable=%v status=%q", n.Spec.Unschedulable, n.Annotations[annotations.Status])
	}
	approveUntil(t, updated, other, "default", 30*time.Second)
}
