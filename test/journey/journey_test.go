package journey

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/credential"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/shared/zincatiid"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

const (
	nodeA, nodeB = "real-1", "real-2"
	// workloads is the namespace of the pods the journey drains.
	workloads = "journey"
	// slowStop is how long the slow pod takes to stop after SIGTERM,
	// within its 20 s grace period.
	slowStop = 8 * time.Second
)

// host is one real node as its Zincati sees it: the drop-in the agent wrote
// on it, and the id Zincati would send.
type host struct {
	node   string
	client *fleetlock.Client
	params fleetlock.ClientParams
	base   string
}

// TestJourney is the user's whole journey on real kubelets: deploy/ applied
// with the project's images; each agent writes its node's drop-in; a
// Zincati-faithful client on the host, using the base_url the agent wrote
// (the Service's ClusterIP, through kube-proxy, with the node's credential),
// takes the slot for real-1, which is drained of a pod behind a
// PodDisruptionBudget and a pod that stops slowly, approved only once both
// are gone, rebooted, and released by steady-state; then the slot passes to
// real-2, which goes through the same.
func TestJourney(t *testing.T) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	installImages(t)
	restarts := map[string]int{nodeA: zincatiRestarts(t, nodeA), nodeB: zincatiRestarts(t, nodeB)}
	apply(t)
	t.Logf("deployed: %s", time.Since(start).Round(time.Second))

	a, b := readHost(t, nodeA), readHost(t, nodeB)
	for _, h := range []*host{a, b} {
		harness.Eventually(t, 60*time.Second, h.node+"'s Zincati restarted by its agent", func() error {
			if n := zincatiRestarts(t, h.node); n <= restarts[h.node] {
				return fmt.Errorf("%d restarts of Zincati, as before the deployment", n)
			}
			return nil
		})
	}
	deployWorkloads(t, ctx)
	watcher := watchPods(t, ctx)

	// real-1: drained (the PDB and the slow pod), approved once empty.
	approved := preReboot(t, ctx, a)
	t.Logf("%s approved after %s", nodeA, time.Since(start).Round(time.Second))
	watcher.checkDrain(t, nodeA, approved)
	t.Logf("the arbiter saw %s's requests from %s", nodeA, arbiterSource(t, a))

	// While real-1 holds the group's only slot, real-2 is turned away.
	rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
	err := b.client.PreReboot(rctx, b.params)
	rcancel()
	if err == nil {
		t.Fatalf("%s was approved while %s holds the only slot", nodeB, nodeA)
	}
	t.Logf("%s, while %s holds the slot: %v", nodeB, nodeA, err)

	rebootAndSteady(t, ctx, a)
	t.Logf("%s back in service after %s", nodeA, time.Since(start).Round(time.Second))

	// The slot passes to real-2.
	approved = preReboot(t, ctx, b)
	watcher.checkDrain(t, nodeB, approved)
	rebootAndSteady(t, ctx, b)
	t.Logf("the journey took %s", time.Since(start).Round(time.Second))
}

// installImages builds the arbiter's and the agent's images (make images)
// and imports them into the real nodes' containerd.
func installImages(t *testing.T) {
	t.Helper()
	make := exec.Command("make", "-C", cluster.Root, "images", "VERSION=journey", "PLATFORMS=linux/amd64")
	if out, err := make.CombinedOutput(); err != nil {
		t.Fatalf("make images: %v\n%s", err, out)
	}
	images := filepath.Join(cluster.Root, "bin/images")
	imp := exec.Command(filepath.Join(cluster.Root, "test/cluster/cluster.sh"), "import",
		filepath.Join(images, "arbiter-linux-amd64.tar"), filepath.Join(images, "agent-linux-amd64.tar"))
	if out, err := imp.CombinedOutput(); err != nil {
		t.Fatalf("cluster.sh import: %v\n%s", err, out)
	}
}

// apply applies deploy/ through the journey's overlay and waits until the
// arbiter's two replicas and the agent on both nodes are ready; the test's
// end deletes it all again.
func apply(t *testing.T) {
	t.Helper()
	overlay := filepath.Join(cluster.Root, "test/journey/overlay")
	t.Cleanup(func() {
		for _, n := range []string{nodeA, nodeB} {
			_, _ = cluster.Kubectl("uncordon", n)
		}
		_, _ = cluster.Kubectl("delete", "namespace", workloads, "--ignore-not-found", "--wait=true", "--timeout=120s")
		if out, err := cluster.Kubectl("delete", "-k", overlay, "--ignore-not-found", "--wait=true", "--timeout=180s"); err != nil {
			t.Errorf("delete the deployment: %v\n%s", err, out)
		}
		// What deploy/uninstall's Job does on each host: the next journey
		// starts on hosts that never ran the agent.
		// Inside the node's mount namespace: under a mounted overlay, a
		// change to its upper directory is not seen.
		for _, n := range []string{nodeA, nodeB} {
			cmd := exec.Command(filepath.Join(cluster.Root, "test/cluster/cluster.sh"), "exec", n,
				"rm", "-f", "/etc/zincati/config.d/55-reboot-manager.toml")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("remove %s's drop-in: %v\n%s", n, err, out)
			}
		}
	})
	if out, err := cluster.Kubectl("apply", "-k", overlay); err != nil {
		t.Fatalf("kubectl apply -k: %v\n%s", err, out)
	}
	for _, args := range [][]string{
		{"rollout", "status", "-n", "reboot-manager", "deployment/arbiter", "--timeout=180s"},
		{"rollout", "status", "-n", "reboot-manager-agent", "daemonset/agent", "--timeout=180s"},
	} {
		if out, err := cluster.Kubectl(args...); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
}

// readHost reads what the agent wrote on node: the drop-in under the node's
// /etc (its overlay's upper directory, seen from the machine), and the
// Zincati id it published, which must be the one Zincati derives from the
// node's machine id.
func readHost(t *testing.T, node string) *host {
	t.Helper()
	dir := filepath.Join(state, "nodes", node)
	machineID, err := os.ReadFile(filepath.Join(dir, "etc/upper/machine-id"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := zincatiid.FromMachineID(string(machineID))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Updates struct {
			Strategy  string `toml:"strategy"`
			FleetLock struct {
				BaseURL string `toml:"base_url"`
			} `toml:"fleet_lock"`
		} `toml:"updates"`
		Identity struct {
			Group string `toml:"group"`
		} `toml:"identity"`
	}
	path := dropIn(node)
	harness.Eventually(t, 60*time.Second, node+"'s drop-in and annotations", func() error {
		if _, err := toml.DecodeFile(path, &doc); err != nil {
			return err
		}
		svc, err := cluster.Client.CoreV1().Services("reboot-manager").Get(context.Background(), "arbiter", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !strings.Contains(doc.Updates.FleetLock.BaseURL, "@"+svc.Spec.ClusterIP+":80/") {
			return fmt.Errorf("base_url %s does not name the arbiter's ClusterIP %s", credential.Redact(doc.Updates.FleetLock.BaseURL), svc.Spec.ClusterIP)
		}
		n, err := cluster.Client.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, k := range []string{annotations.ZincatiID, annotations.CredentialSHA256, annotations.BootID} {
			if n.Annotations[k] == "" {
				return fmt.Errorf("no %s yet", k)
			}
		}
		if got := n.Annotations[annotations.ZincatiID]; got != want {
			return fmt.Errorf("the agent published the Zincati id %s, Zincati sends %s", got, want)
		}
		if got := n.Annotations[annotations.BootID]; got != bootID(t, node) {
			return fmt.Errorf("the agent published the boot id %s, the node's is %s", got, bootID(t, node))
		}
		return nil
	})
	if doc.Updates.Strategy != "fleet_lock" {
		t.Fatalf("%s: strategy %q", path, doc.Updates.Strategy)
	}
	group := doc.Identity.Group
	if group == "" {
		group = "default" // Zincati's
	}
	return &host{
		node:   node,
		base:   doc.Updates.FleetLock.BaseURL,
		client: &fleetlock.Client{BaseURL: doc.Updates.FleetLock.BaseURL},
		params: fleetlock.ClientParams{ID: want, Group: group},
	}
}

// bootID is the boot id the plane gave node's current boot.
func bootID(t *testing.T, node string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(state, "nodes", node, "boot_id"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// zincatiRestarts counts the restarts of Zincati that node's systemd
// stand-in has logged, in all its boots.
func zincatiRestarts(t *testing.T, node string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(state, "logs", "node-"+node+".log"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "nodesystemd: restart zincati.service")
}

// dropIn is the path, seen from the machine, of the drop-in the agent
// writes on node.
func dropIn(node string) string {
	return filepath.Join(state, "nodes", node, "etc/upper/zincati/config.d/55-reboot-manager.toml")
}

// deployWorkloads puts the drained pods on real-1: two replicas behind a
// PodDisruptionBudget (one may be down at a time), and a pod that stops
// slowly (slowStop after SIGTERM, within a 20 s grace period).
func deployWorkloads(t *testing.T, ctx context.Context) {
	t.Helper()
	c := cluster.Client
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: workloads}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 60*time.Second, "the default ServiceAccount", func() error {
		_, err := c.CoreV1().ServiceAccounts(workloads).Get(ctx, "default", metav1.GetOptions{})
		return err
	})
	one := intstr.FromInt32(1)
	if _, err := c.PolicyV1().PodDisruptionBudgets(workloads).Create(ctx, &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "guarded"},
		Spec: policyv1.PodDisruptionBudgetSpec{MinAvailable: &one,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "guarded"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Both workloads start on real-1: real-2 is cordoned meanwhile.
	if out, err := cluster.Kubectl("cordon", nodeB); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, d := range []*appsv1.Deployment{
		fixtures.RealDeployment(workloads, "guarded", 2, 1, 0),
		fixtures.RealDeployment(workloads, "slow", 1, 20, slowStop),
	} {
		if _, err := c.AppsV1().Deployments(workloads).Create(ctx, d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"guarded", "slow"} {
		if out, err := cluster.Kubectl("rollout", "status", "-n", workloads, "deployment/"+d, "--timeout=120s"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	if out, err := cluster.Kubectl("uncordon", nodeB); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// preReboot asks for h's reboot as Zincati does, again after every refusal,
// until it is approved, and returns when. An approval while any workload pod
// is still on the node (read after the answer: none can come back to the
// cordoned node) fails the test.
func preReboot(t *testing.T, ctx context.Context, h *host) time.Time {
	t.Helper()
	deadline := time.Now().Add(4 * time.Minute)
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		err := h.client.PreReboot(rctx, h.params)
		cancel()
		if err == nil {
			at := time.Now()
			pods, lerr := cluster.Client.CoreV1().Pods(workloads).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + h.node})
			if lerr != nil {
				t.Fatal(lerr)
			}
			if len(pods.Items) > 0 {
				p := pods.Items[0]
				t.Fatalf("%s approved while %d workload pods were still on it, %s first (phase %s, deleted at %v)",
					h.node, len(pods.Items), p.Name, p.Status.Phase, p.DeletionTimestamp)
			}
			return at
		}
		// A connection that fails (a replica evicted by this very drain,
		// before kube-proxy drops its endpoint) is asked again, as Zincati
		// does; a refused credential is a failure.
		var se *fleetlock.StatusError
		if errors.As(err, &se) && (se.Status == 401 || se.Status == 403) {
			t.Fatalf("pre-reboot for %s refused its credential: %v", h.node, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not approved after 4 minutes: %v", h.node, err)
		}
		t.Logf("pre-reboot for %s: %v", h.node, err)
		time.Sleep(time.Second)
	}
}

// rebootAndSteady powers h's node off for a while, boots it into a new
// Fedora CoreOS version (the update Zincati staged), and sends steady-state
// as Zincati does after a boot, until the arbiter has ended the cycle: the
// node uncordoned and Ready, with its new boot.
func rebootAndSteady(t *testing.T, ctx context.Context, h *host) {
	t.Helper()
	before := bootID(t, h.node)
	reboot(t, h.node, 5, "42."+time.Now().UTC().Format("20060102.150405")+".0")
	if bootID(t, h.node) == before {
		t.Fatalf("%s kept its boot id", h.node)
	}
	harness.Eventually(t, 3*time.Minute, h.node+"'s cycle ended", func() error {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := h.client.SteadyState(rctx, h.params)
		cancel()
		if err != nil {
			return fmt.Errorf("steady-state: %w", err)
		}
		n, err := cluster.Client.CoreV1().Nodes().Get(ctx, h.node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if n.Status.NodeInfo.BootID != bootID(t, h.node) {
			return fmt.Errorf("kubelet reports boot %s, not the new one yet", n.Status.NodeInfo.BootID)
		}
		if n.Spec.Unschedulable || n.Annotations[annotations.Status] != annotations.StatusReady {
			return fmt.Errorf("unschedulable=%v, status %q", n.Spec.Unschedulable, n.Annotations[annotations.Status])
		}
		return nil
	})
}

// reboot reboots node with cluster.sh, down for seconds, into Fedora CoreOS
// version when it is not "".
func reboot(t *testing.T, node string, seconds int, version string) {
	t.Helper()
	args := []string{"reboot", node, fmt.Sprint(seconds)}
	if version != "" {
		args = append(args, version)
	}
	cmd := exec.Command(filepath.Join(cluster.Root, "test/cluster/cluster.sh"), args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cluster.sh reboot %s: %v\n%s", node, err, out)
	}
}

var sourceField = regexp.MustCompile(`"source":"([^"]+)"`)

// arbiterSource is the source address the arbiter logged for h's approved
// pre-reboot: what the kernel and kube-proxy made of the host's connection
// to the ClusterIP.
func arbiterSource(t *testing.T, h *host) string {
	t.Helper()
	// The logs of every replica whose container runs: the drain of h's node
	// evicts a replica there, and its replacement may still be starting
	// (kubectl logs -l fails on a pod with no container yet).
	var source string
	harness.Eventually(t, 30*time.Second, "an arbiter's log of "+h.node+"'s approval", func() error {
		pods, err := cluster.Client.CoreV1().Pods("reboot-manager").List(context.Background(),
			metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=reboot-manager-arbiter"})
		if err != nil {
			return err
		}
		var read []string
		for _, p := range pods.Items {
			if p.Status.Phase != corev1.PodRunning {
				continue
			}
			out, err := cluster.Kubectl("logs", "-n", "reboot-manager", p.Name, "--tail=-1")
			if err != nil {
				return err
			}
			read = append(read, p.Name)
			for _, l := range strings.Split(out, "\n") {
				if !strings.Contains(l, "reboot approved") || !strings.Contains(l, h.params.ID) {
					continue
				}
				m := sourceField.FindStringSubmatch(l)
				if m == nil {
					t.Fatalf("the approval's log line names no source: %s", l)
				}
				if net.ParseIP(m[1]) == nil {
					t.Fatalf("the arbiter logged the source %q, not an address: %s", m[1], l)
				}
				source = m[1]
				return nil
			}
		}
		return fmt.Errorf("no running arbiter (of %v) logged the approval of %s", read, h.node)
	})
	return source
}

// podWatch records, from one watch of the workloads' pods (so in the API
// server's order), when each pod started terminating and when each became
// ready.
type podWatch struct {
	mu          sync.Mutex
	node        map[string]string
	terminating map[string]time.Time
	ready       map[string]time.Time
	app         map[string]string
}

func watchPods(t *testing.T, ctx context.Context) *podWatch {
	t.Helper()
	w, err := cluster.Client.CoreV1().Pods(workloads).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	pw := &podWatch{node: map[string]string{}, terminating: map[string]time.Time{}, ready: map[string]time.Time{}, app: map[string]string{}}
	go func() {
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || ev.Type == watch.Error {
				continue
			}
			pw.mu.Lock()
			now := time.Now()
			pw.node[p.Name], pw.app[p.Name] = p.Spec.NodeName, p.Labels["app"]
			if p.DeletionTimestamp != nil {
				if _, seen := pw.terminating[p.Name]; !seen {
					pw.terminating[p.Name] = now
				}
			}
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
					if _, seen := pw.ready[p.Name]; !seen {
						pw.ready[p.Name] = now
					}
				}
			}
			pw.mu.Unlock()
		}
	}()
	return pw
}

// checkDrain checks node's drain, approved at approved: the slow pod was
// Terminating at least slowStop before the approval (its SIGTERM handled,
// not cut short), and the guarded pods left one at a time, the second only
// after a replacement was ready elsewhere (the PodDisruptionBudget held).
func (pw *podWatch) checkDrain(t *testing.T, node string, approved time.Time) {
	t.Helper()
	pw.mu.Lock()
	defer pw.mu.Unlock()
	var guarded []time.Time
	slow := false
	for name, at := range pw.terminating {
		if pw.node[name] != node || at.After(approved) {
			continue
		}
		switch pw.app[name] {
		case "slow":
			slow = true
			if d := approved.Sub(at); d < slowStop-time.Second {
				t.Errorf("%s: approved %s after the slow pod %s began to stop; it takes %s", node, d.Round(time.Millisecond), name, slowStop)
			}
		case "guarded":
			guarded = append(guarded, at)
		}
	}
	if !slow {
		t.Errorf("%s: the slow pod was never seen terminating before the approval", node)
	}
	if len(guarded) < 1 {
		t.Errorf("%s: no guarded pod was seen terminating", node)
		return
	}
	if len(guarded) == 2 {
		second := guarded[0]
		if guarded[1].After(second) {
			second = guarded[1]
		}
		replaced := false
		for name, at := range pw.ready {
			if pw.app[name] == "guarded" && pw.node[name] != node && !at.After(second) {
				replaced = true
			}
		}
		if !replaced {
			t.Errorf("%s: both guarded pods were stopping before a replacement was ready: the PodDisruptionBudget did not hold", node)
		}
	}
}

// TestEgressGuard: with no kube-proxy rule for it, a ClusterIP is refused
// on this machine at once; it never leaves through the uplink.
func TestEgressGuard(t *testing.T) {
	start := time.Now()
	conn, err := net.DialTimeout("tcp", "10.0.0.250:80", 5*time.Second)
	if err == nil {
		conn.Close()
		t.Fatal("a ClusterIP without a Service was connected")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("a ClusterIP without a Service: %v, want connection refused", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("refused after %s, not at once", d)
	}
	// The backstop sees every packet before anything else in mangle
	// POSTROUTING, with the device it really leaves by, while the plane
	// (kube-proxy and kubelet included) runs.
	out, err := exec.Command("iptables", "-w", "-t", "mangle", "-S", "POSTROUTING").Output()
	if err != nil {
		t.Fatal(err)
	}
	rules := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(rules) < 2 || !regexp.MustCompile(`^-A POSTROUTING -j RM\d+-EGRESS$`).MatchString(rules[1]) {
		t.Fatalf("the egress backstop is not the first rule of mangle POSTROUTING:\n%s", out)
	}
}

// TestRebootLongerThanGrace: a node down longer than the node monitor's
// grace period (30 s in this plane) goes NotReady, comes back with a new
// boot id and a Rebooted Event, and its DaemonSet's pod runs again.
func TestRebootLongerThanGrace(t *testing.T) {
	ctx := context.Background()
	c := cluster.Client
	ns := cluster.Namespace(t)
	pod := fixtures.RealPod("everywhere", 1, 0)
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "everywhere"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: pod.Labels},
			Template: pod,
		},
	}
	if _, err := c.AppsV1().DaemonSets(ns).Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if out, err := cluster.Kubectl("rollout", "status", "-n", ns, "daemonset/everywhere", "--timeout=120s"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	before := bootID(t, nodeB)
	notReady := make(chan struct{})
	go func() {
		defer close(notReady)
		deadline := time.Now().Add(2 * time.Minute)
		for time.Now().Before(deadline) {
			n, err := c.CoreV1().Nodes().Get(ctx, nodeB, metav1.GetOptions{})
			if err == nil && !nodeReady(n) {
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
	}()
	reboot(t, nodeB, 40, "")
	select {
	case <-notReady:
	case <-time.After(10 * time.Second):
	}
	n, err := c.CoreV1().Nodes().Get(ctx, nodeB, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if nodeReady(n) && n.Status.NodeInfo.BootID == before {
		t.Fatalf("%s never went NotReady in 40 s down", nodeB)
	}
	after := bootID(t, nodeB)
	harness.Eventually(t, 2*time.Minute, nodeB+" Ready with its new boot", func() error {
		n, err := c.CoreV1().Nodes().Get(ctx, nodeB, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if n.Status.NodeInfo.BootID != after || !nodeReady(n) {
			return fmt.Errorf("boot %s, ready %v", n.Status.NodeInfo.BootID, nodeReady(n))
		}
		return nil
	})
	harness.Eventually(t, time.Minute, "the Rebooted Event", func() error {
		evs, err := c.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + nodeB + ",reason=Rebooted"})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if strings.Contains(e.Message, after) {
				return nil
			}
		}
		return fmt.Errorf("no Rebooted Event for boot %s among %d", after, len(evs.Items))
	})
	harness.Eventually(t, 2*time.Minute, "the DaemonSet's pod running again on "+nodeB, func() error {
		pods, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + nodeB})
		if err != nil {
			return err
		}
		for _, p := range pods.Items {
			for _, s := range p.Status.ContainerStatuses {
				if s.Ready && s.State.Running != nil && s.State.Running.StartedAt.After(time.Now().Add(-2*time.Minute)) && s.RestartCount >= 1 {
					return nil
				}
			}
		}
		return fmt.Errorf("no pod of the DaemonSet restarted and ready on %s", nodeB)
	})
	if err := c.AppsV1().DaemonSets(ns).Delete(ctx, "everywhere", metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
