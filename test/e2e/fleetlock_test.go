package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/rebootmanager/reboot-manager/arbiter/groups"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/shared/zincatiid"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// setGroups writes the groups ConfigMap the arbiter watches.
func setGroups(t testing.TB, ns, doc string) {
	t.Helper()
	ctx := context.Background()
	cms := cluster.Client.CoreV1().ConfigMaps(ns)
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "reboot-manager-groups"}, Data: map[string]string{groups.ConfigKey: doc}}
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, cm, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	} else if err != nil {
		t.Fatal(err)
	}
}

func rawPost(t *testing.T, url, body string, header map[string]string) (int, fleetlock.Error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var fe fleetlock.Error
	_ = json.Unmarshal(raw, &fe)
	return resp.StatusCode, fe
}

// TestProtocol sends Zincati's exact wire format and the protocol's error
// cases to the real arbiter.
func TestProtocol(t *testing.T) {
	ns := cluster.Namespace(t)
	nodes := newNodes(t, ns, 1, nil)
	a := startArbiter(t, ns)
	zincati := "{\n  \"client_params\": {\n    \"id\": \"" + nodes[0].id + "\",\n    \"group\": \"default\"\n  }\n}"
	hdr := map[string]string{"fleet-lock-protocol": "true"}

	tests := []struct {
		name       string
		path, body string
		header     map[string]string
		wantStatus int
		wantKind   fleetlock.Kind
		wantValue  string
	}{
		{"steady-state from a non-holder is 200", "v1/steady-state", zincati, hdr, 200, "", ""},
		{"zincati pre-reboot of an empty node is approved", "v1/pre-reboot", zincati, hdr, 200, "", ""},
		{"recursive pre-reboot is 200 again", "v1/pre-reboot", zincati, hdr, 200, "", ""},
		{"missing header", "v1/pre-reboot", zincati, nil, 400, fleetlock.KindMissingHeader, "fleet-lock-protocol"},
		{"curl -d form content type", "v1/steady-state", zincati,
			map[string]string{"fleet-lock-protocol": "true", "Content-Type": "application/x-www-form-urlencoded"}, 200, "", ""},
		{"unknown node", "v1/pre-reboot", `{"client_params":{"id":"0123456789abcdef0123456789abcdef","group":"default"}}`, hdr,
			404, fleetlock.KindUnknownNode, "deploy the reboot-manager agent"},
		{"bad group", "v1/pre-reboot", `{"client_params":{"id":"x","group":"no/slash"}}`, hdr, 400, fleetlock.KindBadRequest, "group"},
		{"unknown path", "v1/pre-reboot/", zincati, hdr, 404, fleetlock.KindNotFound, ""},
	}
	for _, tt := range tests {
		if tt.name == "curl -d form content type" {
			reboot(t, nodes[0].name) // the steady-state ends the approved cycle
		}
		t.Run(tt.name, func(t *testing.T) {
			status, fe := rawPost(t, a.url+tt.path, tt.body, tt.header)
			if status != tt.wantStatus {
				t.Fatalf("status = %d (%+v), want %d", status, fe, tt.wantStatus)
			}
			if fe.Kind != tt.wantKind || !strings.Contains(fe.Value, tt.wantValue) {
				t.Errorf("reply = %+v, want kind %q with value containing %q", fe, tt.wantKind, tt.wantValue)
			}
		})
	}
	released(t, ns, "default", nodes[0].name)
	n := getNode(t, nodes[0].name)
	if n.Spec.Unschedulable || n.Annotations[annotations.Status] != annotations.StatusReady {
		t.Errorf("node after the cycle: unschedulable=%v status=%q, want schedulable and Ready", n.Spec.Unschedulable, n.Annotations[annotations.Status])
	}
}

// TestDrainGatedOnPDB walks a full reboot cycle of a node whose pods are
// protected by a PodDisruptionBudget: no approval while the budget blocks,
// approval only once every evictable pod is gone, DaemonSet and mirror pods
// left alone, and the node back in service after steady-state.
func TestDrainGatedOnPDB(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := cluster.Client
	ns := cluster.Namespace(t)
	target := newNodes(t, ns, 1, nil)[0]

	must(t, fixtures.CreateGuarded(ctx, c, ns, "web", ns, 2, 2))
	must(t, create(ctx, c.AppsV1().DaemonSets(ns).Create, fixtures.DaemonSet(ns, "agent", ns)))
	must(t, create(ctx, c.CoreV1().Pods(ns).Create, fixtures.BarePod(ns, "bare", target.name)))
	must(t, create(ctx, c.CoreV1().Pods(ns).Create, fixtures.MirrorPod(ns, "static", target.name)))
	must(t, fixtures.WaitRunning(ctx, c, ns, "app=agent", 1))
	// Only now a second node, where the evicted pods can go.
	newNodes(t, ns, 1, nil)

	a := startArbiter(t, ns, "--drain-pod-timeout", "1s")
	var last error
	harness.Eventually(t, 30*time.Second, "the PDB named in the reply", func() error {
		last = a.preReboot(target.id, "default")
		if !fleetlock.IsKind(last, fleetlock.KindDrainInProgress) {
			t.Fatalf("pre-reboot while a PDB blocks = %v, want drain_in_progress", last)
		}
		if !strings.Contains(last.Error(), "PodDisruptionBudget") {
			return last
		}
		return nil
	})
	if !strings.Contains(last.Error(), "ns/web") && !strings.Contains(last.Error(), ns+"/web") {
		t.Errorf("reply %q does not name the blocked pods", last)
	}
	n := getNode(t, target.name)
	if !n.Spec.Unschedulable || n.Annotations[annotations.Status] != annotations.StatusDraining ||
		n.Annotations[annotations.CordonedBy] != annotations.CordonOwner {
		t.Fatalf("node while draining: unschedulable=%v annotations=%v", n.Spec.Unschedulable, n.Annotations)
	}
	// Still blocked a little later: the budget holds, and the pods are named stuck.
	harness.Eventually(t, 15*time.Second, "stuck pods named", func() error {
		err := a.preReboot(target.id, "default")
		if !fleetlock.IsKind(err, fleetlock.KindDrainInProgress) {
			t.Fatalf("pre-reboot while the PDB still blocks = %v, want drain_in_progress", err)
		}
		if !strings.Contains(err.Error(), "stuck for over 1s") {
			return err
		}
		return nil
	})

	must(t, fixtures.SetMinAvailable(ctx, c, ns, "web", 1))

	harness.Eventually(t, 60*time.Second, "reboot approved", func() error {
		err := a.preReboot(target.id, "default")
		if err != nil && !fleetlock.IsKind(err, fleetlock.KindDrainInProgress) {
			t.Fatalf("pre-reboot while draining = %v, want drain_in_progress or approval", err)
		}
		if err == nil {
			// Approved: nothing evictable may be left on the node.
			pods, err := fixtures.PodsOn(ctx, c, ns, target.name)
			must(t, err)
			for _, p := range pods {
				if p.Labels["app"] != "agent" && p.Name != "static" {
					t.Fatalf("reboot approved while pod %s (deleting=%v) is on the node", p.Name, p.DeletionTimestamp != nil)
				}
			}
			if len(pods) != 2 {
				t.Fatalf("pods left on the node = %d, want the DaemonSet pod and the mirror pod", len(pods))
			}
		}
		return err
	})
	if n := getNode(t, target.name); n.Annotations[annotations.Status] != annotations.StatusRebooting {
		t.Errorf("status after approval = %q, want Rebooting", n.Annotations[annotations.Status])
	}
	must(t, fixtures.Reboot(ctx, c, target.name, 200*time.Millisecond))
	must(t, a.steadyState(target.id, "default"))
	released(t, ns, "default", target.name)
	n = getNode(t, target.name)
	if n.Spec.Unschedulable || n.Annotations[annotations.Status] != annotations.StatusReady || n.Annotations[annotations.CordonedBy] != "" {
		t.Errorf("node after steady-state: unschedulable=%v annotations=%v", n.Spec.Unschedulable, n.Annotations)
	}
	if h := holders(t, ns, "default"); len(h) != 0 {
		t.Errorf("holders after steady-state = %+v", h)
	}
	harness.Eventually(t, 10*time.Second, "Events on the node", func() error {
		evs, err := c.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + target.name})
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, e := range evs.Items {
			seen[e.Reason] = true
		}
		for _, r := range []string{"DrainStarted", "EvictionBlocked", "PodEvictionStuck", "Drained", "RebootApproved", "Released", "Uncordoned"} {
			if !seen[r] {
				return fmt.Errorf("no %s Event yet (have %v)", r, seen)
			}
		}
		return nil
	})
}

// TestFinishedPodStillDeletingBlocks: a pod whose containers exited on its
// eviction (phase Succeeded) but that its kubelet has not yet torn down and
// deleted still blocks the approval; a completed pod that nothing deletes
// does not. On kwok nodes evicted pods vanish at once; the real-node
// journey (test/journey) found the approval this test now refuses. The
// node here is one no kwok manages, so that the evicted pod stays
// Terminating, as on a real kubelet while it unmounts the pod's volumes.
func TestFinishedPodStillDeletingBlocks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := cluster.Client
	ns := cluster.Namespace(t)
	name := harness.Prefix(t)
	machineID := fixtures.RandomID()
	id, err := zincatiid.FromMachineID(machineID)
	must(t, err)
	_, err = c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	must(t, err)
	t.Cleanup(func() { fixtures.DeleteNodes(context.Background(), c, name) })
	now := metav1.Now()
	status, err := json.Marshal(map[string]any{"status": corev1.NodeStatus{
		NodeInfo:   corev1.NodeSystemInfo{MachineID: machineID, BootID: fixtures.RandomID(), OSImage: fixtures.OSImage()},
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: now, LastTransitionTime: now, Reason: "KubeletReady"}},
	}})
	must(t, err)
	n, err := c.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, status, metav1.PatchOptions{}, "status")
	must(t, err)
	pod := func(name string, phase corev1.PodPhase) {
		t.Helper()
		p := fixtures.BarePod(ns, name, n.Name)
		grace := int64(30) // as a real pod's: the fixtures' 0 deletes at once
		p.Spec.TerminationGracePeriodSeconds = &grace
		p, err := c.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		must(t, err)
		p.Status.Phase = phase
		_, err = c.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		must(t, err)
	}
	pod("web", corev1.PodRunning)
	pod("done", corev1.PodSucceeded) // completed, deleted by nothing

	a := startArbiter(t, ns)
	harness.Eventually(t, 30*time.Second, "the pod evicted", func() error {
		if err := a.preReboot(id, "default"); err == nil {
			t.Fatal("approved while the pod runs")
		}
		p, err := c.CoreV1().Pods(ns).Get(ctx, "web", metav1.GetOptions{})
		must(t, err)
		if p.DeletionTimestamp == nil {
			return errors.New("web not terminating yet")
		}
		// Its containers exited on SIGTERM; the kubelet tears it down.
		p.Status.Phase = corev1.PodSucceeded
		_, err = c.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		return err
	})
	for range 10 {
		err := a.preReboot(id, "default")
		if !fleetlock.IsKind(err, fleetlock.KindDrainInProgress) {
			t.Fatalf("pre-reboot while a finished pod is still being deleted = %v, want drain_in_progress", err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	zero := int64(0)
	must(t, c.CoreV1().Pods(ns).Delete(ctx, "web", metav1.DeleteOptions{GracePeriodSeconds: &zero}))
	harness.Eventually(t, 30*time.Second, "approved once the pod is gone", func() error {
		return a.preReboot(id, "default")
	})
	if _, err := c.CoreV1().Pods(ns).Get(ctx, "done", metav1.GetOptions{}); err != nil {
		t.Errorf("the completed pod: %v, want it left alone", err)
	}
}

// TestAdminCordonPreserved: a node an admin cordoned stays cordoned after
// its reboot cycle.
func TestAdminCordonPreserved(t *testing.T) {
	ns := cluster.Namespace(t)
	node := newNodes(t, ns, 1, func(_ int, s *fixtures.NodeSpec) { s.Unschedulable = true })[0]
	a := startArbiter(t, ns)
	must(t, a.preReboot(node.id, "default"))
	if n := getNode(t, node.name); n.Annotations[annotations.CordonedBy] != "" {
		t.Fatalf("arbiter claimed an admin's cordon: %v", n.Annotations)
	}
	reboot(t, node.name)
	must(t, a.steadyState(node.id, "default"))
	released(t, ns, "default", node.name)
	n := getNode(t, node.name)
	if !n.Spec.Unschedulable {
		t.Fatal("steady-state uncordoned a node an admin had cordoned")
	}
	if n.Annotations[annotations.Status] != annotations.StatusReady {
		t.Errorf("status = %q, want Ready", n.Annotations[annotations.Status])
	}
}

// TestSlotsAndGroups: recursive locking, slots of 2, independent groups
// (including a group that is not a DNS label) and a live slot change.
func TestSlotsAndGroups(t *testing.T) {
	ns := cluster.Namespace(t)
	setGroups(t, ns, "groups: {workers: {slots: 2}}")
	nodes := newNodes(t, ns, 5, func(i int, s *fixtures.NodeSpec) {
		s.Labels[annotations.GroupLabel] = map[bool]string{true: "workers", false: "Group-A.1"}[i < 3]
	})
	a := startArbiter(t, ns)

	must(t, a.preReboot(nodes[0].id, "workers"))
	must(t, a.preReboot(nodes[0].id, "workers")) // recursive
	must(t, a.preReboot(nodes[1].id, "workers"))
	err := a.preReboot(nodes[2].id, "workers")
	if !fleetlock.IsKind(err, fleetlock.KindLockHeld) || !strings.Contains(err.Error(), nodes[0].name) {
		t.Fatalf("third pre-reboot in a 2-slot group = %v, want lock_held naming the holders", err)
	}
	if h := holders(t, ns, "workers"); len(h) != 2 {
		t.Fatalf("holders = %+v, want 2", h)
	}
	harness.Eventually(t, 10*time.Second, "holders in /metrics", func() error {
		m := getBody(t, a.probe+"metrics")
		for _, want := range []string{`rebootmanager_slots_held{group="workers"} 2`, `rebootmanager_slots{group="workers"} 2`,
			`rebootmanager_lock_held_seconds{group="workers",id="` + nodes[0].id + `",node="` + nodes[0].name + `"}`,
			`rebootmanager_fleetlock_requests_total{kind="lock_held",operation="pre-reboot"} 1`} {
			if !strings.Contains(m, want) {
				return fmt.Errorf("/metrics lacks %s", want)
			}
		}
		return nil
	})
	// Another group has its own semaphore, default 1 slot.
	must(t, a.preReboot(nodes[3].id, "Group-A.1"))
	if err := a.preReboot(nodes[4].id, "Group-A.1"); !fleetlock.IsKind(err, fleetlock.KindLockHeld) {
		t.Fatalf("second pre-reboot in a 1-slot group = %v, want lock_held", err)
	}
	// A live change: 3 slots for workers, no restart.
	setGroups(t, ns, "groups: {workers: {slots: 3}}")
	harness.Eventually(t, 10*time.Second, "the third slot", func() error { return a.preReboot(nodes[2].id, "workers") })
	// Shrinking below the holders keeps them; they drain out.
	setGroups(t, ns, "groups: {workers: {slots: 1}}")
	time.Sleep(500 * time.Millisecond)
	reboot(t, nodes[0].name)
	must(t, a.steadyState(nodes[0].id, "workers"))
	released(t, ns, "workers", nodes[0].name)
	if h := holders(t, ns, "workers"); len(h) != 2 {
		t.Fatalf("holders after one release = %+v, want 2", h)
	}
	if err := a.preReboot(nodes[0].id, "workers"); !fleetlock.IsKind(err, fleetlock.KindLockHeld) {
		t.Fatalf("pre-reboot over a shrunk group = %v, want lock_held", err)
	}
}

// TestStaleLocks: a slot held by a deleted Node is released on its own, and
// a steady-state from an id that no longer maps to a Node still releases.
func TestStaleLocks(t *testing.T) {
	ns := cluster.Namespace(t)
	nodes := newNodes(t, ns, 2, nil)
	a := startArbiter(t, ns)

	must(t, a.preReboot(nodes[0].id, "default"))
	fixtures.DeleteNodes(context.Background(), cluster.Client, nodes[0].name)
	harness.Eventually(t, 15*time.Second, "the deleted node's slot released", func() error {
		if h := holders(t, ns, "default"); len(h) != 0 {
			return fmt.Errorf("holders = %+v", h)
		}
		return nil
	})

	must(t, a.preReboot(nodes[1].id, "default"))
	// The node's machine id changes: its Zincati id maps to nothing now.
	_, err := cluster.Client.CoreV1().Nodes().PatchStatus(context.Background(), nodes[1].name,
		[]byte(`{"status":{"nodeInfo":{"machineID":"`+fixtures.RandomID()+`"}}}`))
	must(t, err)
	time.Sleep(500 * time.Millisecond)
	must(t, a.steadyState(nodes[1].id, "default"))
	if h := holders(t, ns, "default"); len(h) != 1 || h[0].SteadyStateAt == nil {
		t.Fatalf("holders after a steady-state from an unknown id = %+v, want the holder, its steady-state recorded", h)
	}
	// The node reboots: its cycle ends, and it is back in service.
	must(t, fixtures.Reboot(context.Background(), cluster.Client, nodes[1].name, 100*time.Millisecond))
	harness.Eventually(t, 15*time.Second, "released and uncordoned", func() error {
		if h := holders(t, ns, "default"); len(h) != 0 {
			return fmt.Errorf("holders = %+v", h)
		}
		if n := getNode(t, nodes[1].name); n.Spec.Unschedulable {
			return fmt.Errorf("node %s still cordoned", n.Name)
		}
		return nil
	})
}

// TestConcurrentPreReboots: 20 nodes ask at once; exactly slots are approved.
func TestConcurrentPreReboots(t *testing.T) {
	for _, slots := range []int{1, 3} {
		t.Run(strings.Repeat("s", slots), func(t *testing.T) {
			ns := cluster.Namespace(t)
			setGroups(t, ns, "defaults: {slots: "+string(rune('0'+slots))+"}")
			nodes := newNodes(t, ns, 20, inGroup("race"))
			a := startArbiter(t, ns)
			var wg sync.WaitGroup
			results := make([]error, len(nodes))
			start := make(chan struct{})
			for i, n := range nodes {
				wg.Go(func() {
					<-start
					results[i] = a.preReboot(n.id, "race")
				})
			}
			close(start)
			wg.Wait()
			granted := 0
			for i, err := range results {
				switch {
				case err == nil:
					granted++
				case fleetlock.IsKind(err, fleetlock.KindLockHeld), fleetlock.IsKind(err, fleetlock.KindUnavailable):
				default:
					t.Errorf("node %d: %v", i, err)
				}
			}
			if granted != slots {
				t.Errorf("granted = %d, want exactly %d", granted, slots)
			}
			if h := holders(t, ns, "race"); len(h) != slots {
				t.Errorf("holders = %d, want %d", len(h), slots)
			}
		})
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func create[T any](ctx context.Context, fn func(context.Context, T, metav1.CreateOptions) (T, error), obj T) error {
	_, err := fn(ctx, obj, metav1.CreateOptions{})
	return err
}

// TestDrainResumesAfterRestart: the drain's state is in the API, so a new
// arbiter process picks up a drain the old one started, with no request.
// The arbiter's own pod is evicted last.
func TestDrainResumesAfterRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := cluster.Client
	ns := cluster.Namespace(t)
	target := newNodes(t, ns, 1, nil)[0]
	must(t, fixtures.CreateGuarded(ctx, c, ns, "db", ns, 1, 1))
	// The arbiter's own pod runs on the node too: it must go last.
	must(t, create(ctx, c.CoreV1().Pods(ns).Create, fixtures.BarePod(ns, "self", target.name)))
	newNodes(t, ns, 1, nil)
	self := []string{"--pod-namespace", ns, "--pod-name", "self"}

	first := startArbiter(t, ns, self...)
	if err := first.preReboot(target.id, "default"); !fleetlock.IsKind(err, fleetlock.KindDrainInProgress) {
		t.Fatalf("pre-reboot = %v, want drain_in_progress", err)
	}
	time.Sleep(time.Second)
	if p, err := c.CoreV1().Pods(ns).Get(ctx, "self", metav1.GetOptions{}); err != nil || p.DeletionTimestamp != nil {
		t.Fatalf("the arbiter's own pod was evicted while another pod remained (err %v)", err)
	}
	first.stop()

	// While no arbiter runs, the budget is relaxed.
	must(t, fixtures.SetMinAvailable(ctx, c, ns, "db", 0))

	second := startArbiter(t, ns, self...)
	harness.Eventually(t, 60*time.Second, "the new arbiter finishes the drain on its own", func() error {
		pods, err := fixtures.PodsOn(ctx, c, ns, target.name)
		if err != nil {
			return err
		}
		if len(pods) > 0 {
			return fmt.Errorf("%d pods still on the node", len(pods))
		}
		return nil
	})
	must(t, second.preReboot(target.id, "default"))
}
