package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/credential"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// The attacks of issue #17, each made the way it was first demonstrated:
// requests from this host posing as nodes and pods, and kubectl acting as
// the agent with the node-name extra that a bound token carries.

// credentialed gives node a credential, as its agent would, and returns a
// client that sends it the way Zincati does (Basic auth from the base_url's
// user info).
func credentialed(ctx context.Context, t *testing.T, a *arbiter, node simNode) *fleetlock.Client {
	t.Helper()
	return tokenClient(a, giveCredential(ctx, t, node))
}

// giveCredential publishes a new credential's hash on node and returns the
// user info that carries it.
func giveCredential(ctx context.Context, t *testing.T, node simNode) string {
	t.Helper()
	secret, err := credential.New()
	must(t, err)
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, annotations.CredentialSHA256, credential.Hash(secret))
	_, err = cluster.Client.CoreV1().Nodes().Patch(ctx, node.name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	must(t, err)
	return node.name + ":" + secret
}

// tokenClient sends userinfo (user:password, or a lone token) as Basic auth.
func tokenClient(a *arbiter, userinfo string) *fleetlock.Client {
	return &fleetlock.Client{BaseURL: strings.Replace(a.url, "http://", "http://"+userinfo+"@", 1),
		HTTP: &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// agentClient acts as the agent's ServiceAccount with a token bound to a
// pod on node.
func agentClient(t *testing.T, node string) kubernetes.Interface {
	t.Helper()
	cfg := rest.CopyConfig(cluster.Config)
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: agentSA,
		Groups:   agentGroups,
		Extra:    map[string][]string{"authentication.kubernetes.io/node-name": {node}},
	}
	c, err := kubernetes.NewForConfig(cfg)
	must(t, err)
	return c
}

// TestIDTakeover: the agent on node A publishes node B's id on A (its own
// annotation: the policy allows it) while B drains. A's requests with B's
// id are checked against B's credential, the node the lock object
// records, so A can neither release nor drive B's slot; B's own Zincati
// still reaches its cycle; nobody else is approved meanwhile; and a new
// request for the now ambiguous id is refused with Events on both Nodes.
func TestIDTakeover(t *testing.T) {
	installRBAC(t)
	ctx := context.Background()
	ns := cluster.Namespace(t)
	a := startArbiter(t, ns)
	nodes := newNodes(t, ns, 3, func(i int, s *fixtures.NodeSpec) {
		if i == 1 {
			s.Labels["pool"] = ns + "-b"
		}
	})
	nodeA, nodeB, nodeC := nodes[0], nodes[1], nodes[2]
	must(t, fixtures.CreateGuarded(ctx, cluster.Client, ns, "web", ns+"-b", 2, 2))
	ca, cb, cc := credentialed(ctx, t, a, nodeA), credentialed(ctx, t, a, nodeB), credentialed(ctx, t, a, nodeC)
	p := func(n simNode) fleetlock.ClientParams {
		return fleetlock.ClientParams{ID: n.id, Group: fleetlock.DefaultGroup}
	}

	if err := cb.PreReboot(ctx, p(nodeB)); !fleetlock.IsKind(err, fleetlock.KindDrainInProgress) {
		t.Fatalf("B's pre-reboot = %v, want drain_in_progress", err)
	}
	_, err := agentClient(t, nodeA.name).CoreV1().Nodes().Patch(ctx, nodeA.name, types.MergePatchType,
		[]byte(`{"metadata":{"annotations":{"rebootmanager/zincati-id":"`+nodeB.id+`"}}}`), metav1.PatchOptions{})
	must(t, err)
	time.Sleep(time.Second) // the arbiter's watch sees the claim within milliseconds

	for _, op := range []func(context.Context, fleetlock.ClientParams) error{ca.SteadyState, ca.PreReboot, a.client.SteadyState, a.client.PreReboot} {
		if err := op(ctx, p(nodeB)); !fleetlock.IsKind(err, fleetlock.KindUnauthorized) {
			t.Fatalf("a request for B's id from A (or a pod) = %v, want unauthorized", err)
		}
	}
	if h := holders(t, ns, fleetlock.DefaultGroup); len(h) != 1 || h[0].Node != nodeB.name {
		t.Fatalf("holders after A's forged requests = %+v, want B alone", h)
	}
	if err := cb.PreReboot(ctx, p(nodeB)); !fleetlock.IsKind(err, fleetlock.KindDrainInProgress) {
		t.Fatalf("B's own pre-reboot while A claims its id = %v, want drain_in_progress", err)
	}
	if err := cc.PreReboot(ctx, p(nodeC)); !fleetlock.IsKind(err, fleetlock.KindLockHeld) {
		t.Fatalf("C's pre-reboot while B drains = %v, want lock_held", err)
	}
	// Drained, B is still not approved while its id names two Nodes.
	must(t, fixtures.SetMinAvailable(ctx, cluster.Client, ns, "web", 0))
	harness.Eventually(t, 30*time.Second, "B drained", func() error {
		pods, err := fixtures.PodsOn(ctx, cluster.Client, ns, nodeB.name)
		if err != nil || len(pods) != 0 {
			return fmt.Errorf("pods on B: %d (%v)", len(pods), err)
		}
		return nil
	})
	if err := cb.PreReboot(ctx, p(nodeB)); !fleetlock.IsKind(err, fleetlock.KindAmbiguousID) {
		t.Fatalf("B's pre-reboot, drained, while its id is ambiguous = %v, want ambiguous_id", err)
	}
	// B's own steady-state still ends its cycle.
	must(t, cb.SteadyState(ctx, p(nodeB)))
	if h := holders(t, ns, fleetlock.DefaultGroup); len(h) != 0 {
		t.Fatalf("holders after B's steady-state = %+v", h)
	}
	if n := getNode(t, nodeB.name); n.Spec.Unschedulable {
		t.Fatal("B still cordoned after its steady-state")
	}
	// A new cycle for the ambiguous id: refused, both Nodes told.
	if err := cb.PreReboot(ctx, p(nodeB)); !fleetlock.IsKind(err, fleetlock.KindAmbiguousID) ||
		!strings.Contains(err.Error(), nodeA.name) || !strings.Contains(err.Error(), nodeB.name) {
		t.Fatalf("a new pre-reboot for the ambiguous id = %v, want ambiguous_id naming both", err)
	}
	for _, n := range []simNode{nodeA, nodeB} {
		harness.Eventually(t, 10*time.Second, "AmbiguousZincatiID on "+n.name, func() error {
			if len(nodeEvents(ctx, t, n.name, "AmbiguousZincatiID")) == 0 {
				return fmt.Errorf("no Event yet")
			}
			return nil
		})
	}
}

// TestWrongGroup: a node's group is its label (or, mid-cycle, its lock
// object's), never what the request names. A tokenless pod that names the
// default group for a node of a tokened group gets 409 wrong_group and
// drains nothing; a label changed mid-cycle cannot open a second slot;
// a steady-state naming any group ends the node's own cycle, with the
// token of that cycle's group.
func TestWrongGroup(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	_, err := cluster.Client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "reboot-manager-tokens"}, StringData: map[string]string{"workers": "w-token"},
	}, metav1.CreateOptions{})
	must(t, err)
	a := startArbiter(t, ns)
	w := newNodes(t, ns, 1, func(_ int, s *fixtures.NodeSpec) { s.Labels[annotations.GroupLabel] = "workers" })[0]
	withToken := tokenClient(a, ":w-token")

	for _, g := range []string{fleetlock.DefaultGroup, "etcd"} {
		err := a.preReboot(w.id, g)
		if !fleetlock.IsKind(err, fleetlock.KindWrongGroup) || !strings.Contains(err.Error(), `group "workers"`) {
			t.Fatalf("tokenless pre-reboot naming %q = %v, want wrong_group naming workers", g, err)
		}
		if h := holders(t, ns, g); h != nil {
			t.Fatalf("a lock object of group %q came into being: %+v", g, h)
		}
	}
	if n := getNode(t, w.name); n.Spec.Unschedulable || touched(n) {
		t.Fatalf("node touched by wrong-group requests: %v", n.Annotations)
	}
	if err := a.preReboot(w.id, "workers"); !fleetlock.IsKind(err, fleetlock.KindUnauthorized) {
		t.Fatalf("tokenless pre-reboot naming the node's group = %v, want unauthorized", err)
	}
	must(t, withToken.PreReboot(ctx, fleetlock.ClientParams{ID: w.id, Group: "workers"}))

	// The label changes mid-cycle: the cycle's group stays the node's.
	_, err = cluster.Client.CoreV1().Nodes().Patch(ctx, w.name, types.MergePatchType,
		[]byte(`{"metadata":{"labels":{"rebootmanager/group":"db"}}}`), metav1.PatchOptions{})
	must(t, err)
	harness.Eventually(t, 10*time.Second, "the relabelled node refused a second slot", func() error {
		err := withToken.PreReboot(ctx, fleetlock.ClientParams{ID: w.id, Group: "db"})
		if !fleetlock.IsKind(err, fleetlock.KindWrongGroup) || !strings.Contains(err.Error(), "holds a reboot slot there") {
			return fmt.Errorf("pre-reboot naming the new label's group = %v, want wrong_group", err)
		}
		return nil
	})
	if h := holders(t, ns, "db"); h != nil {
		t.Fatalf("a second slot in db: %+v", h)
	}
	must(t, withToken.PreReboot(ctx, fleetlock.ClientParams{ID: w.id, Group: "workers"}))
	reboot(t, w.name)

	// Steady-state names any group; the cycle's group's token decides.
	if err := a.steadyState(w.id, fleetlock.DefaultGroup); !fleetlock.IsKind(err, fleetlock.KindUnauthorized) {
		t.Fatalf("tokenless steady-state = %v, want unauthorized", err)
	}
	if h := holders(t, ns, "workers"); len(h) != 1 {
		t.Fatalf("a tokenless steady-state released the slot: %+v", h)
	}
	must(t, withToken.SteadyState(ctx, fleetlock.ClientParams{ID: w.id, Group: "anything"}))
	released(t, ns, "workers", w.name)
	if n := getNode(t, w.name); n.Spec.Unschedulable {
		t.Fatal("still cordoned after the steady-state")
	}
}

// touched reports whether a cycle marked the node.
func touched(n *corev1.Node) bool {
	return n.Annotations[annotations.Holding] != "" || n.Annotations[annotations.Status] == annotations.StatusDraining
}

// TestUnknownHosts: --allow-unknown-nodes refuses to start without a
// _default token, needs it on every request, never shows a host's id (in
// a 423 reply or in /metrics), and caps the groups that hosts can create.
func TestUnknownHosts(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	must(t, fixtures.EnsureGroups(ctx, cluster.Client, cluster.Root, ns))
	cmd := exec.Command(binary(t, "arbiter"), "--kubeconfig", cluster.Kubeconfig, "--namespace", ns,
		"--listen-address", "127.0.0.1:0", "--probe-address", "127.0.0.1:0", "--allow-unknown-nodes", "--leader-election=false")
	cmd.Env = os.Environ()
	done := make(chan error, 1)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	must(t, cmd.Start())
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(out.String(), "-allow-unknown-nodes needs a token") {
			t.Fatalf("arbiter without a _default token: %v\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("the arbiter started with --allow-unknown-nodes and no token:\n%s", out.String())
	}

	_, err := cluster.Client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "reboot-manager-tokens"}, StringData: map[string]string{"_default": "hosts-token"},
	}, metav1.CreateOptions{})
	must(t, err)
	a := startArbiter(t, ns, "--allow-unknown-nodes", "--max-groups", "3")
	hosts := tokenClient(a, ":hosts-token")
	x, y := fixtures.RandomID(), fixtures.RandomID()
	must(t, hosts.PreReboot(ctx, fleetlock.ClientParams{ID: x, Group: "edge"}))
	err = hosts.PreReboot(ctx, fleetlock.ClientParams{ID: y, Group: "edge"})
	if !fleetlock.IsKind(err, fleetlock.KindLockHeld) || strings.Contains(err.Error(), x) || !strings.Contains(err.Error(), "a host outside the cluster") {
		t.Fatalf("second host = %v, want lock_held that does not show the holder's id", err)
	}
	if m := getBody(t, a.probe+"metrics"); strings.Contains(m, x) {
		t.Fatal("/metrics shows the id of a host outside the cluster")
	}
	// A pod without the token can neither release nor take.
	for _, op := range []func(string, string) error{a.steadyState, a.preReboot} {
		if err := op(x, "edge"); !fleetlock.IsKind(err, fleetlock.KindUnauthorized) {
			t.Fatalf("tokenless request for a host = %v, want unauthorized", err)
		}
	}
	if h := holders(t, ns, "edge"); len(h) != 1 || h[0].ID != x {
		t.Fatalf("holders = %+v, want x alone", h)
	}
	// Three groups at most.
	must(t, hosts.PreReboot(ctx, fleetlock.ClientParams{ID: y, Group: "edge-2"}))
	must(t, hosts.PreReboot(ctx, fleetlock.ClientParams{ID: fixtures.RandomID(), Group: "edge-3"}))
	harness.Eventually(t, 10*time.Second, "the group cap", func() error {
		err := hosts.PreReboot(ctx, fleetlock.ClientParams{ID: fixtures.RandomID(), Group: "edge-4"})
		if !fleetlock.IsKind(err, fleetlock.KindTooManyGroups) {
			return fmt.Errorf("a fourth group = %v, want too_many_groups", err)
		}
		return nil
	})
	must(t, hosts.SteadyState(ctx, fleetlock.ClientParams{ID: x, Group: "edge"}))
	if h := holders(t, ns, "edge"); len(h) != 0 {
		t.Fatalf("holders after the steady-state = %+v", h)
	}
}
