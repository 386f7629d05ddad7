package e2e

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

const (
	arbiterSA = "system:serviceaccount:reboot-manager:arbiter"
	agentSA   = "system:serviceaccount:reboot-manager-agent:agent"
)

// agentGroups are the groups of the agent's ServiceAccount.
var agentGroups = []string{"system:serviceaccounts", "system:serviceaccounts:reboot-manager-agent", "system:authenticated"}

// installRBAC applies the namespace, RBAC and groups manifests for real.
func installRBAC(t *testing.T) {
	t.Helper()
	for _, f := range []string{"deploy/namespace.yaml", "deploy/arbiter-rbac.yaml", "deploy/agent-rbac.yaml", "deploy/operator-rbac.yaml", "deploy/groups.yaml"} {
		if _, err := cluster.Kubectl("apply", "-f", f); err != nil {
			t.Fatal(err)
		}
	}
}

// TestManifestsServerDryRun: every manifest passes the API server's own
// validation and admission.
func TestManifestsServerDryRun(t *testing.T) {
	installRBAC(t)
	out, err := cluster.Kubectl("apply", "-k", "deploy", "--dry-run=server")
	if err != nil {
		t.Fatal(err)
	}
	rendered, err := cluster.Kubectl("kustomize", "deploy")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "reboot-manager.yaml")
	must(t, os.WriteFile(file, []byte(rendered), 0o644))
	if _, err := cluster.Kubectl("apply", "-f", file, "--dry-run=server"); err != nil {
		t.Fatalf("the rendered single file (make manifests): %v", err)
	}
	if out, err := cluster.Kubectl("apply", "-f", "deploy/networkpolicy.yaml", "--dry-run=server"); err != nil {
		t.Fatalf("deploy/networkpolicy.yaml: %v\n%s", err, out)
	}
	for _, want := range []string{"deployment.apps/arbiter", "service/arbiter", "poddisruptionbudget.policy/arbiter", "configmap/reboot-manager-groups",
		"daemonset.apps/agent", "validatingadmissionpolicy.admissionregistration.k8s.io/reboot-manager-agent-own-node"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry-run output lacks %s:\n%s", want, out)
		}
	}
}

// TestAgentOwnNodePolicy: the ValidatingAdmissionPolicy lets an agent
// change only its own Node's zincati-id annotation.
func TestAgentOwnNodePolicy(t *testing.T) {
	installRBAC(t)
	ctx := context.Background()
	ns := cluster.Namespace(t)
	nodes := newNodes(t, ns, 2, nil)
	cfg := rest.CopyConfig(cluster.Config)
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: agentSA,
		Groups:   agentGroups,
		Extra:    map[string][]string{"authentication.kubernetes.io/node-name": {nodes[0].name}},
	}
	agentClient, err := kubernetes.NewForConfig(cfg)
	must(t, err)
	patch := func(node, p string) error {
		_, err := agentClient.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(p), metav1.PatchOptions{})
		return err
	}
	own := nodes[0].name
	// The API server picks a new policy up within a moment.
	harness.Eventually(t, 20*time.Second, "the policy in force", func() error {
		if err := patch(nodes[1].name, `{"metadata":{"annotations":{"rebootmanager/zincati-id":"x"}}}`); err == nil {
			return fmt.Errorf("the agent patched another node")
		}
		return nil
	})
	tests := []struct {
		name, node, patch string
		allowed           bool
	}{
		{"own id annotation", own, `{"metadata":{"annotations":{"rebootmanager/zincati-id":"` + nodes[0].id + `"}}}`, true},
		{"another node", nodes[1].name, `{"metadata":{"annotations":{"rebootmanager/zincati-id":"x"}}}`, false},
		{"own credential hashes", own, `{"metadata":{"annotations":{"rebootmanager/credential-sha256":"` + strings.Repeat("a", 64) +
			`","rebootmanager/credential-previous-sha256":"` + strings.Repeat("b", 64) + `"}}}`, true},
		{"own boot witness", own, `{"metadata":{"annotations":{"rebootmanager/boot-id":"b","rebootmanager/boot-complete":"reached","rebootmanager/os-version":"41.1"}}}`, true},
		{"another node's boot witness", nodes[1].name, `{"metadata":{"annotations":{"rebootmanager/boot-complete":"failed"}}}`, false},
		{"own previous hash removed", own, `{"metadata":{"annotations":{"rebootmanager/credential-previous-sha256":null}}}`, true},
		{"another node's credential (would lock its Zincati out)", nodes[1].name,
			`{"metadata":{"annotations":{"rebootmanager/credential-sha256":"` + strings.Repeat("c", 64) + `"}}}`, false},
		{"own holding mark", own, `{"metadata":{"annotations":{"rebootmanager/holding":"x"}}}`, false},
		{"own status annotation", own, `{"metadata":{"annotations":{"rebootmanager/status":"Ready"}}}`, false},
		{"own label", own, `{"metadata":{"labels":{"rebootmanager/group":"x"}}}`, false},
		{"own cordon", own, `{"spec":{"unschedulable":true}}`, false},
		{"an owner that does not exist (the GC would delete the Node)", own,
			`{"metadata":{"ownerReferences":[{"apiVersion":"v1","kind":"ConfigMap","name":"gone","uid":"00000000-0000-0000-0000-000000000001"}]}}`, false},
		{"a finalizer that pins the Node", own, `{"metadata":{"finalizers":["example.com/pin"]}}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := patch(tt.node, tt.patch)
			if (err == nil) != tt.allowed {
				t.Errorf("patch %s = %v, want allowed=%v", tt.patch, err, tt.allowed)
			}
			if err != nil && !apierrors.IsInvalid(err) && !apierrors.IsForbidden(err) {
				t.Errorf("denial = %v, want Forbidden/Invalid from the policy", err)
			}
		})
	}
	if n := getNode(t, own); len(n.OwnerReferences) != 0 || len(n.Finalizers) != 0 {
		t.Errorf("own node's owners %v, finalizers %v: want none", n.OwnerReferences, n.Finalizers)
	}

	// A token without the node-name extra is denied by the policy's own
	// rule, with its message.
	cfg.Impersonate.Extra = nil
	unbound, err := kubernetes.NewForConfig(cfg)
	must(t, err)
	_, err = unbound.CoreV1().Nodes().Patch(ctx, own, types.MergePatchType,
		[]byte(`{"metadata":{"annotations":{"rebootmanager/zincati-id":"`+nodes[0].id+`"}}}`), metav1.PatchOptions{})
	if err == nil || !strings.Contains(err.Error(), "token bound to a pod") {
		t.Errorf("patch with an unbound token = %v, want the policy's denial", err)
	}
}

// TestRBAC: the arbiter's ServiceAccount may do what the code needs
// and nothing dangerous.
func TestRBAC(t *testing.T) {
	installRBAC(t)
	tests := []struct {
		as, verb, resource, namespace string
		want                          bool
	}{
		{arbiterSA, "list", "nodes", "", true},
		{arbiterSA, "watch", "nodes", "", true},
		{arbiterSA, "patch", "nodes", "", true},
		{arbiterSA, "list", "pods", "*", true},
		{arbiterSA, "create", "pods/eviction", "demo", true},
		{arbiterSA, "get", "daemonsets.apps", "demo", true},
		{arbiterSA, "create", "events", "default", true},
		{arbiterSA, "update", "leases.coordination.k8s.io", "reboot-manager", true},
		{arbiterSA, "watch", "configmaps", "reboot-manager", true},
		{arbiterSA, "delete", "pods", "demo", false},
		{arbiterSA, "get", "secrets", "reboot-manager", false},
		{arbiterSA, "list", "secrets", "*", false},
		{arbiterSA, "update", "nodes", "", false},
		{arbiterSA, "delete", "nodes", "", false},
		{arbiterSA, "update", "leases.coordination.k8s.io", "kube-system", false},
		{arbiterSA, "get", "leases.coordination.k8s.io", "kube-node-lease", true},
		{arbiterSA, "get", "persistentvolumeclaims", "demo", true},
		{arbiterSA, "get", "persistentvolumes", "", true},
		{arbiterSA, "list", "volumeattachments.storage.k8s.io", "", true},
		{arbiterSA, "delete", "volumeattachments.storage.k8s.io", "", false},
		{arbiterSA, "list", "persistentvolumeclaims", "*", false},
		{arbiterSA, "update", "leases.coordination.k8s.io", "kube-node-lease", false},
		{arbiterSA, "list", "leases.coordination.k8s.io", "kube-node-lease", false},
		{arbiterSA, "update", "configmaps", "reboot-manager", false},
		{agentSA, "watch", "services", "reboot-manager", false}, // only the arbiter's, by name
		{agentSA, "patch", "nodes", "", true},
		{agentSA, "list", "services", "*", false},
		{agentSA, "delete", "nodes", "", false},
		{agentSA, "create", "pods/eviction", "demo", false},
		{agentSA, "get", "secrets", "reboot-manager", false},
		{agentSA, "get", "services", "reboot-manager-agent", false},
		{agentSA, "create", "events", "default", true}, // on its Node
		{agentSA, "patch", "events", "default", false},
		{agentSA, "create", "events", "reboot-manager", false},
		{agentSA, "create", "pods", "reboot-manager-agent", false},
	}
	for _, tt := range tests {
		t.Run(tt.as+" "+tt.verb+" "+tt.resource+" "+tt.namespace, func(t *testing.T) {
			resource, sub, _ := strings.Cut(tt.resource, "/")
			args := []string{"auth", "can-i", tt.verb, resource, "--as", tt.as}
			if sub != "" {
				args = append(args, "--subresource", sub)
			}
			switch tt.namespace {
			case "":
			case "*":
				args = append(args, "--all-namespaces")
			default:
				args = append(args, "-n", tt.namespace)
			}
			out, _ := cluster.Kubectl(args...) // exit 1 means "no"
			lines := strings.Fields(out)
			got := len(lines) > 0 && lines[len(lines)-1] == "yes"
			if got != tt.want {
				t.Errorf("can-i %v = %q, want %v", args, out, tt.want)
			}
		})
	}
}

// rbacRow is one row of `kubectl auth can-i --list`, or of the README's
// RBAC table: a resource, the names it is limited to, and one verb.
type rbacRow struct{ resource, names, verb string }

func (r rbacRow) String() string {
	if r.names == "" {
		return r.verb + " " + r.resource
	}
	return r.verb + " " + r.resource + " named " + r.names
}

// canList is what `kubectl auth can-i --list -n ns` says that the user as
// in groups may do to resources.
func canList(t *testing.T, ns, as string, groups ...string) map[rbacRow]bool {
	t.Helper()
	args := []string{"auth", "can-i", "--list", "-n", ns, "--as", as}
	for _, g := range groups {
		args = append(args, "--as-group", g)
	}
	out, err := cluster.Kubectl(args...)
	if err != nil {
		t.Fatalf("kubectl %v: %v\n%s", args, err, out)
	}
	row := regexp.MustCompile(`^(\S+)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$`)
	rows := map[rbacRow]bool{}
	for _, line := range strings.Split(out, "\n")[1:] {
		m := row.FindStringSubmatch(line)
		if m == nil { // a non-resource URL, or blank
			continue
		}
		for _, v := range strings.Fields(m[4]) {
			rows[rbacRow{m[1], m[3], v}] = true
		}
	}
	return rows
}

// readmeRBAC is the README's RBAC table: role → namespace ("*" for all)
// → rows.
func readmeRBAC(t *testing.T) map[string]map[string][]rbacRow {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(cluster.Root, "README.md"))
	must(t, err)
	_, table, ok := strings.Cut(string(raw), "<!-- rbac-table -->")
	table, _, ok2 := strings.Cut(table, "<!-- /rbac-table -->")
	if !ok || !ok2 {
		t.Fatal("README.md has no <!-- rbac-table --> … <!-- /rbac-table -->")
	}
	out := map[string]map[string][]rbacRow{}
	for _, line := range strings.Split(strings.TrimSpace(table), "\n")[2:] {
		cells := strings.Split(strings.Trim(line, "| "), "|")
		if len(cells) != 5 {
			t.Fatalf("README RBAC row %q: want 5 cells", line)
		}
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		role, ns := cells[0], cells[1]
		if out[role] == nil {
			out[role] = map[string][]rbacRow{}
		}
		for _, v := range strings.Fields(cells[4]) {
			out[role][ns] = append(out[role][ns], rbacRow{cells[2], cells[3], v})
		}
	}
	return out
}

// TestRBACList: for the arbiter's and the agent's ServiceAccounts and the
// operators' group, `kubectl auth can-i --list` in each namespace says what
// the README's RBAC table says, beyond what every authenticated user may
// do, and nothing more.
func TestRBACList(t *testing.T) {
	installRBAC(t)
	table := readmeRBAC(t)
	subjects := []struct {
		role   string
		as     string
		groups []string
	}{
		{"arbiter", arbiterSA, nil},
		{"agent", agentSA, nil},
		{"operator", "alice", []string{"reboot-manager-operators"}},
	}
	if len(table) != len(subjects) {
		t.Fatalf("README RBAC table has roles %v, want arbiter, agent and operator", slices.Collect(maps.Keys(table)))
	}
	for _, ns := range []string{"reboot-manager", "reboot-manager-agent", "default", "kube-node-lease", "kube-system", "demo"} {
		base := canList(t, ns, "system:serviceaccount:reboot-manager:nobody")
		for _, s := range subjects {
			t.Run(s.role+" in "+ns, func(t *testing.T) {
				want := map[rbacRow]bool{}
				for _, r := range append(slices.Clone(table[s.role]["*"]), table[s.role][ns]...) {
					want[r] = true
				}
				got := canList(t, ns, s.as, s.groups...)
				for r := range got {
					if !want[r] && !base[r] {
						t.Errorf("may %s, which the README's RBAC table does not say", r)
					}
				}
				for r := range want {
					if !got[r] {
						t.Errorf("may not %s, which the README's RBAC table says it may", r)
					}
				}
			})
		}
	}
}

// TestArbiterAsServiceAccount runs a whole reboot cycle and a stale-lock
// release with the arbiter acting as its ServiceAccount, so the RBAC is
// proven sufficient, not just plausible.
func TestArbiterAsServiceAccount(t *testing.T) {
	installRBAC(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := cluster.Client
	ns := cluster.Namespace(t)
	group := harness.Prefix(t) // its lock object is in the shared namespace
	nodes := newNodes(t, ns, 2, inGroup(group))
	must(t, create(ctx, c.AppsV1().DaemonSets(ns).Create, fixtures.DaemonSet(ns, "agent", ns)))
	must(t, create(ctx, c.CoreV1().Pods(ns).Create, fixtures.BarePod(ns, "bare", nodes[0].name)))
	must(t, fixtures.WaitRunning(ctx, c, ns, "app=agent", 2))

	a := startArbiter(t, "reboot-manager", "--kubeconfig", cluster.ImpersonatingKubeconfig(t, arbiterSA))
	harness.Eventually(t, 30*time.Second, "approval as the ServiceAccount", func() error {
		return a.preReboot(nodes[0].id, group)
	})
	if pods, _ := fixtures.PodsOn(ctx, c, ns, nodes[0].name); len(pods) != 1 {
		t.Fatalf("pods left = %d, want only the DaemonSet pod", len(pods))
	}
	reboot(t, nodes[0].name)
	must(t, a.steadyState(nodes[0].id, group))
	released(t, "reboot-manager", group, nodes[0].name)
	if getNode(t, nodes[0].name).Spec.Unschedulable {
		t.Fatal("node still cordoned after steady-state")
	}
	harness.Eventually(t, 10*time.Second, "Events written as the ServiceAccount", func() error {
		evs, err := c.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + nodes[0].name})
		if err != nil || len(evs.Items) == 0 {
			return fmt.Errorf("no Events (%v)", err)
		}
		return nil
	})

	must(t, a.preReboot(nodes[1].id, group))
	fixtures.DeleteNodes(ctx, c, nodes[1].name)
	harness.Eventually(t, 15*time.Second, "the deleted node's slot released", func() error {
		if h := holders(t, "reboot-manager", group); len(h) != 0 {
			return fmt.Errorf("holders = %+v", h)
		}
		return nil
	})
}

// uninstall runs deploy/uninstall/uninstall.sh against the plane with ns
// as both the arbiter's and the agent's namespace, with the plane's
// kubectl and the kubectl-reboot_manager plugin on PATH.
func uninstall(t *testing.T, ns string, nodes ...string) (string, int) {
	t.Helper()
	bin := t.TempDir()
	must(t, os.Symlink(filepath.Join(cluster.Bin, "kubectl"), filepath.Join(bin, "kubectl")))
	must(t, os.Symlink(binary(t, "kubectl-reboot_manager"), filepath.Join(bin, "kubectl-reboot_manager")))
	cmd := exec.Command(filepath.Join(cluster.Root, "deploy/uninstall/uninstall.sh"), nodes...)
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "KUBECONFIG="+cluster.Kubeconfig,
		"ARBITER_NAMESPACE="+ns, "AGENT_NAMESPACE="+ns, "TIMEOUT=60s")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatal(err)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// TestUninstall: the uninstall script refuses, and changes nothing, while
// a node holds a slot; once none does, it pauses every group, deletes the
// agent's DaemonSet, and runs one cleanup Job pinned to each node, with
// the DaemonSet's image and --cleanup, until each completes.
func TestUninstall(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	nodes := newNodes(t, ns, 2, nil)
	ds := fixtures.DaemonSet(ns, "agent", ns)
	ds.Spec.Template.Spec.Containers[0].Image = "example.com/reboot-manager/agent:uninstall-test"
	must(t, create(ctx, cluster.Client.AppsV1().DaemonSets(ns).Create, ds))
	sem := lock.New(cluster.Client.CoordinationV1(), nil, ns)
	if _, err := sem.Acquire(ctx, "db", lock.Holder{ID: nodes[0].id, Node: nodes[0].name}, lock.Limits{Slots: 1}, nil); err != nil {
		t.Fatal(err)
	}
	jobs := func() []batchv1.Job {
		t.Helper()
		l, err := cluster.Client.BatchV1().Jobs(ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=reboot-manager-cleanup"})
		must(t, err)
		return l.Items
	}
	halted := func(group string) bool {
		t.Helper()
		l, err := cluster.Client.CoordinationV1().Leases(ns).Get(ctx, lock.ObjectName(group), metav1.GetOptions{})
		must(t, err)
		o, err := lock.DecodeObject(l)
		must(t, err)
		return len(o.Halts) > 0
	}

	out, code := uninstall(t, ns, nodes[0].name, nodes[1].name)
	if code != 1 || !strings.Contains(out, "refused") || !strings.Contains(out, "db 1") {
		t.Fatalf("uninstall with a held slot: exit %d:\n%s", code, out)
	}
	if j := jobs(); len(j) != 0 || halted("db") {
		t.Fatalf("the refused uninstall changed things: %d Jobs, halted %v", len(j), halted("db"))
	}
	if _, err := cluster.Client.AppsV1().DaemonSets(ns).Get(ctx, "agent", metav1.GetOptions{}); err != nil {
		t.Fatalf("the refused uninstall deleted the DaemonSet: %v", err)
	}

	if _, err := sem.Release(ctx, "db", nodes[0].id); err != nil {
		t.Fatal(err)
	}
	out, code = uninstall(t, ns, nodes[0].name, nodes[1].name)
	if code != 0 {
		t.Fatalf("uninstall: exit %d:\n%s", code, out)
	}
	if !halted("db") {
		t.Error("uninstall did not pause the groups")
	}
	if _, err := cluster.Client.AppsV1().DaemonSets(ns).Get(ctx, "agent", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the agent's DaemonSet after uninstall: %v, want not found", err)
	}
	pinned := map[string]bool{}
	for _, j := range jobs() {
		spec := j.Spec.Template.Spec
		c := spec.Containers[0]
		if c.Image != ds.Spec.Template.Spec.Containers[0].Image || !slices.Equal(c.Args, []string{"--cleanup"}) || j.Status.Succeeded != 1 {
			t.Errorf("Job %s: image %s, args %v, succeeded %d; want the DaemonSet's image, --cleanup, 1", j.Name, c.Image, c.Args, j.Status.Succeeded)
		}
		var paths []string
		for _, v := range spec.Volumes {
			paths = append(paths, v.HostPath.Path)
		}
		if !slices.Equal(paths, []string{"/etc", "/usr", "/run"}) {
			t.Errorf("Job %s mounts %v, want the agent's /etc, /usr, /run", j.Name, paths)
		}
		pinned[spec.NodeName] = true
	}
	if len(pinned) != 2 || !pinned[nodes[0].name] || !pinned[nodes[1].name] {
		t.Errorf("cleanup Jobs on %v, want one on each of %s and %s", pinned, nodes[0].name, nodes[1].name)
	}
}
