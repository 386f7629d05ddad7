package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/arbiter/operator"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// cli runs the real kubectl-reboot_manager binary against the plane, with
// the arbiter's state in namespace ns, and returns its output and exit code.
func cli(t *testing.T, ns string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	// A later --kubeconfig in args wins over the admin's.
	cmd := exec.Command(binary(t, "kubectl-reboot_manager"),
		append([]string{"--kubeconfig", cluster.Kubeconfig, "--namespace", ns}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return out.String(), errOut.String(), code
}

func cliStatus(t *testing.T, ns string) operator.Report {
	t.Helper()
	out, errOut, code := cli(t, ns, "status", "-o", "json")
	if code != 0 {
		t.Fatalf("status -o json: exit %d: %s", code, errOut)
	}
	var r operator.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("status -o json printed %q: %v", out, err)
	}
	return r
}

func nodeIn(r operator.Report, name string) operator.Node {
	for _, n := range r.Nodes {
		if n.Name == name {
			return n
		}
	}
	return operator.Node{}
}

// TestCLI drives status and release against the real plane: status explains
// a draining and a waiting node, release works with the arbiter down, puts
// the node back in service, and is safe when several run at once.
func TestCLI(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ns := cluster.Namespace(t)
	target := guardedNode(ctx, t, ns)
	others := newNodes(t, ns, 2, func(i int, s *fixtures.NodeSpec) { s.Name += "-other" })
	waiter := others[0]

	a := startArbiter(t, ns)
	harness.Eventually(t, 30*time.Second, "the drain blocked by the PDB", func() error {
		err := a.preReboot(target.id, "default")
		if !fleetlock.IsKind(err, fleetlock.KindDrainInProgress) {
			t.Fatalf("pre-reboot = %v, want drain_in_progress", err)
		}
		if !strings.Contains(getNode(t, target.name).Annotations[annotations.DrainMessage], "PodDisruptionBudget") {
			return errors.New("no drain message naming the PDB yet")
		}
		return nil
	})
	if err := a.preReboot(waiter.id, "default"); !fleetlock.IsKind(err, fleetlock.KindLockHeld) {
		t.Fatalf("second pre-reboot = %v, want lock_held", err)
	}

	r := cliStatus(t, ns)
	var def operator.Group
	for _, g := range r.Groups {
		if g.Name == "default" {
			def = g
		}
	}
	if def.Slots != 1 || len(def.Holders) != 1 || def.Holders[0].Node != target.name || def.Holders[0].ID != target.id {
		t.Errorf("status: group default = %+v, want 1 slot held by %s", def, target.name)
	}
	if n := nodeIn(r, target.name); n.Status != annotations.StatusDraining || !n.Unschedulable ||
		!strings.Contains(n.Reason, "PodDisruptionBudget") || !strings.Contains(n.Reason, ns+"/web") {
		t.Errorf("status: draining node = %+v, want Draining, cordoned, the PDB and its pods as the reason", n)
	}
	if n := nodeIn(r, waiter.name); n.Status != operator.StatusWaiting || n.Unschedulable ||
		!strings.Contains(n.Reason, `group "default" is full`) || !strings.Contains(n.Reason, target.name) {
		t.Errorf("status: waiting node = %+v, want Waiting on the full group held by %s", n, target.name)
	}
	if n := nodeIn(r, others[1].name); n.Status != annotations.StatusReady || n.Reason != "" {
		t.Errorf("status: idle node = %+v, want Ready with no reason", n)
	}
	table, _, code := cli(t, ns, "status")
	for _, want := range []string{"GROUP", "HOLDERS", target.name + " (", "Draining", "Waiting", "PodDisruptionBudget"} {
		if code != 0 || !strings.Contains(table, want) {
			t.Errorf("status table (exit %d) lacks %q:\n%s", code, want, table)
		}
	}

	// The arbiter goes down; the operator frees the stuck slot by hand.
	a.stop()
	out, errOut, code := cli(t, ns, "release", target.name)
	if code != 0 || !strings.Contains(out, "released the reboot slot of "+target.name) ||
		!strings.Contains(out, "uncordoned") {
		t.Fatalf("release: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if h := holders(t, ns, "default"); len(h) != 0 {
		t.Errorf("holders after release = %v, want none", h)
	}
	n := getNode(t, target.name)
	if n.Spec.Unschedulable || n.Annotations[annotations.Status] != annotations.StatusReady || nodesInCycle(n.Annotations) {
		t.Errorf("node after release: unschedulable=%v annotations=%v, want back in service", n.Spec.Unschedulable, n.Annotations)
	}
	if evs := nodeEvents(ctx, t, target.name, "SlotReleasedByHand"); len(evs) != 1 {
		t.Errorf("SlotReleasedByHand Events on %s: %d, want 1", target.name, len(evs))
	}

	// Bad targets: one line on stderr, exit 1, nothing changed.
	for _, arg := range []string{target.name, "no-such-node", strings.Repeat("a", 32)} {
		out, errOut, code := cli(t, ns, "release", arg)
		if code != 1 || out != "" || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || errOut == "" {
			t.Errorf("release %s: exit %d, stdout %q, stderr %q; want exit 1 and one line", arg, code, out, errOut)
		}
	}

	// Concurrent releases of one slot: exactly one frees it.
	a = startArbiter(t, ns)
	if err := a.preReboot(waiter.id, "default"); err != nil {
		t.Fatalf("pre-reboot of the empty waiting node = %v, want approval", err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		codes []int
	)
	for range 5 {
		wg.Go(func() {
			_, _, code := cli(t, ns, "release", waiter.id, "-o", "json")
			mu.Lock()
			codes = append(codes, code)
			mu.Unlock()
		})
	}
	wg.Wait()
	ok := 0
	for _, code := range codes {
		if code == 0 {
			ok++
		}
	}
	if ok != 1 {
		t.Errorf("5 concurrent releases: exit codes %v, want exactly one 0", codes)
	}
	if h := holders(t, ns, "default"); len(h) != 0 {
		t.Errorf("holders after the concurrent releases = %v, want none", h)
	}
}

// nodesInCycle reports whether any reboot-cycle annotation is left.
func nodesInCycle(a map[string]string) bool {
	for _, k := range []string{annotations.Group, annotations.Since, annotations.CordonedBy, annotations.DrainMessage,
		annotations.ApprovedBootID, annotations.Waiting, annotations.WaitingAt} {
		if a[k] != "" {
			return true
		}
	}
	return false
}

// TestCLIAsOperator runs status and release as a user in the
// reboot-manager-operators group of deploy/operator-rbac.yaml, so that
// ClusterRole is proven sufficient; and that user may not delete pods or
// read Secrets.
func TestCLIAsOperator(t *testing.T) {
	installRBAC(t)
	ctx := context.Background()
	node := newNodes(t, "reboot-manager", 1, nil)[0]
	group := harness.Prefix(t)
	sem := lock.New(cluster.Client.CoordinationV1(), nil, "reboot-manager")
	if _, err := sem.Acquire(ctx, group, lock.Holder{ID: node.id, Node: node.name}, lock.Limits{Slots: 1}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = sem.Release(ctx, group, node.id) })
	// The node is mid-drain, as the arbiter leaves it.
	if _, err := cluster.Kubectl("annotate", "node", node.name, annotations.Status+"="+annotations.StatusDraining,
		annotations.Group+"="+group, annotations.CordonedBy+"="+annotations.CordonOwner); err != nil {
		t.Fatal(err)
	}
	must(t, fixtures.Cordon(ctx, cluster.Client, node.name))
	kubeconfig := cluster.ImpersonatingKubeconfig(t, "alice", "reboot-manager-operators")
	run := func(args ...string) (string, string, int) {
		return cli(t, "reboot-manager", append([]string{"--kubeconfig", kubeconfig}, args...)...)
	}

	out, errOut, code := run("status")
	if code != 0 || !strings.Contains(out, group) || !strings.Contains(out, node.name+" (") {
		t.Fatalf("status as an operator: exit %d, stderr %q, stdout:\n%s", code, errOut, out)
	}
	out, errOut, code = run("release", node.name)
	if code != 0 || !strings.Contains(out, "released the reboot slot") || !strings.Contains(out, "uncordoned") {
		t.Fatalf("release as an operator: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if n := getNode(t, node.name); n.Spec.Unschedulable || nodesInCycle(n.Annotations) {
		t.Errorf("node after release as an operator: unschedulable=%v annotations=%v", n.Spec.Unschedulable, n.Annotations)
	}
	if h := holders(t, "reboot-manager", group); len(h) != 0 {
		t.Errorf("holders after release = %v", h)
	}
	// pause and resume: of the group whose lock object exists, and of one
	// that never had one (pause creates it).
	fresh := group + "-new"
	t.Cleanup(func() {
		_ = cluster.Client.CoordinationV1().Leases("reboot-manager").Delete(context.Background(), lock.ObjectName(fresh), metav1.DeleteOptions{})
	})
	for _, args := range [][]string{{"pause", group}, {"pause", fresh}, {"resume", group}, {"resume", fresh}} {
		if out, errOut, code := run(args...); code != 0 {
			t.Errorf("%v as an operator: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
	for _, g := range []string{group, fresh} {
		l, err := cluster.Client.CoordinationV1().Leases("reboot-manager").Get(ctx, lock.ObjectName(g), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if o, err := lock.DecodeObject(l); err != nil || len(o.Halts) != 0 {
			t.Errorf("group %s after pause and resume as an operator: halts %v, %v; want none", g, o.Halts, err)
		}
	}
	for _, args := range [][]string{
		{"auth", "can-i", "delete", "pods", "-n", "default"},
		{"auth", "can-i", "get", "secrets", "-n", "reboot-manager"},
		{"auth", "can-i", "update", "leases.coordination.k8s.io", "-n", "kube-system"},
	} {
		out, _ := cluster.Kubectl(append(args, "--as", "alice", "--as-group", "reboot-manager-operators")...)
		if strings.TrimSpace(out) != "no" {
			t.Errorf("operator %v = %q, want no", args[2:], out)
		}
	}
}
