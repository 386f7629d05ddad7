package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// operatorClient acts as a user in the reboot-manager-operators group of
// deploy/operator-rbac.yaml.
func operatorClient(t *testing.T) kubernetes.Interface {
	t.Helper()
	cfg := rest.CopyConfig(cluster.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "alice", Groups: []string{"reboot-manager-operators", "system:authenticated"}}
	c, err := kubernetes.NewForConfig(cfg)
	must(t, err)
	return c
}

// refused fails t unless err is a denial by RBAC or by a policy.
func refused(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: allowed, want refused", what)
	} else if !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) {
		t.Errorf("%s: %v, want Forbidden or Invalid", what, err)
	}
}

// TestOperatorPolicy replays, as the operator role, each attack that the
// role allowed before its admission policies: on Nodes, on the lock and
// leader-election Leases, and with Events. Each is refused; what release,
// pause and resume write is allowed.
func TestOperatorPolicy(t *testing.T) {
	installRBAC(t)
	ctx := context.Background()
	op := operatorClient(t)
	node := newNodes(t, "reboot-manager", 1, nil)[0]
	patchNode := func(p string) error {
		_, err := op.CoreV1().Nodes().Patch(ctx, node.name, types.MergePatchType, []byte(p), metav1.PatchOptions{})
		return err
	}
	// The API server picks new policies up within a moment.
	harness.Eventually(t, 20*time.Second, "the node policy in force", func() error {
		if patchNode(`{"metadata":{"labels":{"example.com/x":"y"}}}`) == nil {
			return fmt.Errorf("the operator labelled a node")
		}
		return nil
	})

	for _, tt := range []struct {
		name, patch string
		allowed     bool
	}{
		{"cordon", `{"spec":{"unschedulable":true}}`, true},
		{"uncordon", `{"spec":{"unschedulable":false}}`, true},
		{"a cycle annotation", `{"metadata":{"annotations":{"` + annotations.Status + `":"Ready","` + annotations.Holding + `":null}}}`, true},
		{"the node-restriction label", `{"metadata":{"labels":{"node-restriction.kubernetes.io/pool":"x"}}}`, false},
		{"the control-plane role label", `{"metadata":{"labels":{"node-role.kubernetes.io/control-plane":""}}}`, false},
		{"a taint", `{"spec":{"taints":[{"key":"example.com/x","effect":"NoSchedule"}]}}`, false},
		{"an owner that does not exist (the GC would delete the Node)",
			`{"metadata":{"ownerReferences":[{"apiVersion":"v1","kind":"ConfigMap","name":"gone","uid":"00000000-0000-0000-0000-000000000001"}]}}`, false},
		{"a finalizer", `{"metadata":{"finalizers":["example.com/pin"]}}`, false},
		{"the Zincati id", `{"metadata":{"annotations":{"` + annotations.ZincatiID + `":"` + strings.Repeat("0", 32) + `"}}}`, false},
		{"the credential hash", `{"metadata":{"annotations":{"` + annotations.CredentialSHA256 + `":"` + strings.Repeat("a", 64) + `"}}}`, false},
		{"the boot witness", `{"metadata":{"annotations":{"` + annotations.BootComplete + `":"reached"}}}`, false},
		{"another annotation", `{"metadata":{"annotations":{"example.com/x":"y"}}}`, false},
	} {
		t.Run("node/"+tt.name, func(t *testing.T) {
			err := patchNode(tt.patch)
			if tt.allowed {
				if err != nil {
					t.Errorf("patch %s: %v, want allowed", tt.patch, err)
				}
				return
			}
			refused(t, "patch "+tt.patch, err)
		})
	}
	if n := getNode(t, node.name); len(n.OwnerReferences) != 0 || len(n.Finalizers) != 0 ||
		slices.ContainsFunc(n.Spec.Taints, func(x corev1.Taint) bool { return x.Key == "example.com/x" }) {
		t.Errorf("node after the attacks: owners %v, finalizers %v, taints %v; want none of the operator's", n.OwnerReferences, n.Finalizers, n.Spec.Taints)
	}

	// The leader-election Lease, as a replica holds it.
	leases := cluster.Client.CoordinationV1().Leases("reboot-manager")
	leaderName := "reboot-manager-arbiter"
	holder, duration := "arbiter-0", int32(15)
	_ = leases.Delete(ctx, leaderName, metav1.DeleteOptions{})
	_, err := leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: leaderName},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &duration}}, metav1.CreateOptions{})
	must(t, err)
	t.Cleanup(func() { _ = leases.Delete(context.Background(), leaderName, metav1.DeleteOptions{}) })
	opLeases := op.CoordinationV1().Leases("reboot-manager")
	leader, err := opLeases.Get(ctx, leaderName, metav1.GetOptions{})
	must(t, err)
	foreign, long := "attacker", int32(1<<30)
	leader.Spec.HolderIdentity, leader.Spec.LeaseDurationSeconds = &foreign, &long
	_, err = opLeases.Update(ctx, leader, metav1.UpdateOptions{})
	refused(t, "rewrite the leader-election Lease", err)
	if l, _ := leases.Get(ctx, leaderName, metav1.GetOptions{}); l == nil || *l.Spec.HolderIdentity != holder {
		t.Errorf("leader-election Lease after the attack: %+v, want held by %s", l, holder)
	}
	_, err = opLeases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "reboot-manager-arbiter-2"},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &foreign}}, metav1.CreateOptions{})
	refused(t, "create a Lease that is not a lock object", err)

	// A lock object with one holder, as the arbiter writes it.
	group := harness.Prefix(t)
	sem := lock.New(cluster.Client.CoordinationV1(), nil, "reboot-manager")
	if _, err := sem.Acquire(ctx, group, lock.Holder{ID: node.id, Node: node.name}, lock.Limits{Slots: 2}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = leases.Delete(context.Background(), lock.ObjectName(group), metav1.DeleteOptions{}) })
	fake := lock.Holder{ID: strings.Repeat("f", 32), Node: "victim", Since: time.Now().UTC().Truncate(time.Second), Phase: lock.PhaseApproved}
	record, _ := json.Marshal(fake)
	member, _ := json.Marshal(map[string]any{"id": fake.ID, "node": fake.Node, "since": fake.Since})
	for _, tt := range []struct {
		name   string
		change func(l *coordinationv1.Lease)
	}{
		{"a made-up holder's record", func(l *coordinationv1.Lease) { l.Annotations[lock.HolderKey(fake.ID)] = string(record) }},
		{"a made-up holder in the list", func(l *coordinationv1.Lease) {
			list := l.Annotations[annotations.LockHolders]
			l.Annotations[annotations.LockHolders] = strings.TrimSuffix(list, "]") + "," + string(member) + "]"
		}},
		{"a made-up holder replacing the real one", func(l *coordinationv1.Lease) {
			l.Annotations[annotations.LockHolders] = "[" + string(member) + "]"
			l.Annotations[lock.HolderKey(fake.ID)] = string(record)
			delete(l.Annotations, lock.HolderKey(node.id))
		}},
		{"the holder's record changed (approved)", func(l *coordinationv1.Lease) {
			var h lock.Holder
			must(t, json.Unmarshal([]byte(l.Annotations[lock.HolderKey(node.id)]), &h))
			h.Phase = lock.PhaseApproved
			raw, _ := json.Marshal(h)
			l.Annotations[lock.HolderKey(node.id)] = string(raw)
		}},
		{"the line", func(l *coordinationv1.Lease) { l.Annotations[annotations.LockLine] = `[{"id":"x"}]` }},
		{"the lock label", func(l *coordinationv1.Lease) { l.Labels[lock.Label] = "false" }},
		{"the lease duration", func(l *coordinationv1.Lease) { l.Spec.LeaseDurationSeconds = &long }},
	} {
		t.Run("lock/"+tt.name, func(t *testing.T) {
			l, err := opLeases.Get(ctx, lock.ObjectName(group), metav1.GetOptions{})
			must(t, err)
			tt.change(l)
			_, err = opLeases.Update(ctx, l, metav1.UpdateOptions{})
			refused(t, tt.name, err)
		})
	}
	if h := holders(t, "reboot-manager", group); len(h) != 1 || h[0].ID != node.id || h[0].Stage() == lock.PhaseApproved {
		t.Errorf("holders after the attacks = %+v, want only %s, not approved", h, node.id)
	}

	// Events: where release records them, and nowhere else.
	event := func(ns string) error {
		about := corev1.ObjectReference{Kind: "Node", Name: node.name}
		if ns != metav1.NamespaceDefault { // namespaced: the lock Lease
			about = corev1.ObjectReference{APIVersion: "coordination.k8s.io/v1", Kind: "Lease", Namespace: ns, Name: lock.ObjectName(group)}
		}
		_, err := op.CoreV1().Events(ns).Create(ctx, &corev1.Event{
			ObjectMeta:     metav1.ObjectMeta{GenerateName: "x."},
			InvolvedObject: about,
			Reason:         "Test", Message: "test", Type: corev1.EventTypeNormal,
		}, metav1.CreateOptions{})
		return err
	}
	for _, ns := range []string{"default", "reboot-manager"} {
		if err := event(ns); err != nil {
			t.Errorf("an Event in %s, where release records them: %v", ns, err)
		}
	}
	refused(t, "an Event in kube-system", event("kube-system"))
}

// TestOperatorCannotHaltDrains replays the attack that halted every drain,
// against a running arbiter in the middle of one: the operator rewrites the
// leader-election Lease with a foreign holder and a long duration, by
// update and by patch, and deletes it. Each is refused, the arbiter keeps
// leading, and the drain, blocked by a PodDisruptionBudget until then, goes
// on to its approval once the budget allows it.
func TestOperatorCannotHaltDrains(t *testing.T) {
	installRBAC(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const arbiterNS, leaderName = "reboot-manager", "reboot-manager-arbiter"
	wns := cluster.Namespace(t)
	group := harness.Prefix(t)
	target := newNodes(t, wns, 1, inGroup(group))[0]
	must(t, fixtures.CreateGuarded(ctx, cluster.Client, wns, "web", wns, 2, 2))
	must(t, fixtures.WaitRunning(ctx, cluster.Client, wns, "app=web", 2))
	t.Cleanup(func() {
		_ = cluster.Client.CoordinationV1().Leases(arbiterNS).Delete(context.Background(), lock.ObjectName(group), metav1.DeleteOptions{})
	})
	a := startArbiter(t, arbiterNS)
	host, err := os.Hostname()
	must(t, err)
	self := fmt.Sprintf("%s-%d", host, a.pid)
	leases := cluster.Client.CoordinationV1().Leases(arbiterNS)
	renewed := func() (*coordinationv1.Lease, error) {
		l, err := leases.Get(ctx, leaderName, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != self || l.Spec.RenewTime == nil {
			return nil, fmt.Errorf("leader-election Lease held by %v, want %s", l.Spec.HolderIdentity, self)
		}
		return l, nil
	}
	// Before a previous test's leader times out this may take its lease duration.
	harness.Eventually(t, 40*time.Second, "the arbiter leads", func() error { _, err := renewed(); return err })
	harness.Eventually(t, 30*time.Second, "the drain blocked by the PDB", func() error {
		err := a.preReboot(target.id, group)
		if !fleetlock.IsKind(err, fleetlock.KindDrainInProgress) {
			t.Fatalf("pre-reboot = %v, want drain_in_progress", err)
		}
		if !strings.Contains(getNode(t, target.name).Annotations[annotations.DrainMessage], "PodDisruptionBudget") {
			return errors.New("no drain message naming the PDB yet")
		}
		return nil
	})

	opLeases := operatorClient(t).CoordinationV1().Leases(arbiterNS)
	leader, err := opLeases.Get(ctx, leaderName, metav1.GetOptions{})
	must(t, err)
	foreign, long := "attacker", int32(1<<30)
	leader.Spec.HolderIdentity, leader.Spec.LeaseDurationSeconds = &foreign, &long
	_, err = opLeases.Update(ctx, leader, metav1.UpdateOptions{})
	refused(t, "rewrite the leader-election Lease", err)
	_, err = opLeases.Patch(ctx, leaderName, types.MergePatchType,
		[]byte(`{"spec":{"holderIdentity":"attacker","leaseDurationSeconds":1073741824}}`), metav1.PatchOptions{})
	refused(t, "patch the leader-election Lease", err)
	err = opLeases.Delete(ctx, leaderName, metav1.DeleteOptions{})
	refused(t, "delete the leader-election Lease", err)

	// The arbiter still leads: it renews after the attack.
	before, err := renewed()
	must(t, err)
	harness.Eventually(t, 20*time.Second, "a renewal after the attack", func() error {
		l, err := renewed()
		if err != nil {
			t.Fatalf("after the attack: %v", err)
		}
		if !l.Spec.RenewTime.After(before.Spec.RenewTime.Time) {
			return errors.New("not renewed yet")
		}
		return nil
	})
	// And the drain goes on: with the budget relaxed, the node empties and
	// is approved.
	must(t, fixtures.SetMinAvailable(ctx, cluster.Client, wns, "web", 0))
	approveUntil(t, a, target, group, 40*time.Second)
	if n := a.logged(t, "stopped leading"); n != 0 {
		t.Errorf("the arbiter logged %d leadership losses", n)
	}
}
