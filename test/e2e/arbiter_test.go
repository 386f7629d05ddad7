package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/shared/zincatiid"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

var (
	buildMu  sync.Mutex
	binaries = map[string]string{}
)

// binary builds ./cmd/<name> once per test run, as the images do, and
// returns its path.
func binary(t testing.TB, name string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if path, ok := binaries[name]; ok {
		return path
	}
	dir, err := os.MkdirTemp("", "e2e-bin")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	// Built as the images build it (Dockerfile.*): static, trimmed paths.
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", path, "./cmd/"+name)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Dir = cluster.Root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/%s: %v\n%s", name, err, out)
	}
	binaries[name] = path
	return path
}

// arbiter is a running arbiter process.
type arbiter struct {
	pid    int
	log    string // the path of its log
	url    string // FleetLock's base URL
	probe  string // the base URL of /healthz, /readyz and /metrics
	client *fleetlock.Client
	ns     string
	stop   func()
	kill   func() // SIGKILL, as a crash
}

// startArbiter runs the real arbiter binary against the plane, with its
// locks in namespace ns, and waits until it is ready.
func startArbiter(t testing.TB, ns string, args ...string) *arbiter {
	t.Helper()
	return startArbiterBinary(t, binary(t, "arbiter"), ns, args...)
}

// startArbiterBinary is startArbiter with the arbiter binary at path, such
// as an earlier release's.
func startArbiterBinary(t testing.TB, path, ns string, args ...string) *arbiter {
	t.Helper()
	addr, probeAddr := freeAddr(t), freeAddr(t)
	listen, probeListen := addr, probeAddr
	for i, a := range args { // a caller's --listen-address and --probe-address win
		if i+1 >= len(args) {
			continue
		}
		switch a {
		case "--listen-address":
			listen = args[i+1]
			_, port, _ := net.SplitHostPort(listen)
			addr = net.JoinHostPort("127.0.0.1", port)
		case "--probe-address":
			probeListen = args[i+1]
			_, port, _ := net.SplitHostPort(probeListen)
			probeAddr = net.JoinHostPort("127.0.0.1", port)
		}
	}
	if !slices.Contains(args, "--no-groups-configmap") {
		if err := fixtures.EnsureGroups(context.Background(), cluster.Client, cluster.Root, ns); err != nil {
			t.Fatal(err)
		}
	}
	args = slices.DeleteFunc(slices.Clone(args), func(a string) bool { return a == "--no-groups-configmap" })
	ctx, cancel := context.WithCancel(context.Background())
	base := []string{"--probe-address", probeListen}
	if !hasFlag(t, path, "probe-address") { // an earlier release serves the probes with FleetLock
		base, probeAddr = nil, addr
	}
	cmd := exec.CommandContext(ctx, path, append(append(base,
		"--kubeconfig", cluster.Kubeconfig, "--listen-address", listen, "--namespace", ns,
		"--log-format", "text", "--reconcile-interval", "1s",
		"--max-wait", "0", // tests of long-poll set their own; a later flag wins
		"--source-binding=false", // requests come from 127.0.0.1; TestSourceBinding sets it
	), args...)...)
	logFile, err := os.Create(filepath.Join(t.TempDir(), "arbiter.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	stop := sync.OnceFunc(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cancel()
			<-done
		}
		cancel()
	})
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			out, _ := os.ReadFile(logFile.Name())
			t.Logf("arbiter log:\n%s", out)
		}
	})
	kill := func() {
		_ = cmd.Process.Kill()
		<-done
	}
	a := &arbiter{pid: cmd.Process.Pid, log: logFile.Name(), url: "http://" + addr + "/", probe: "http://" + probeAddr + "/", ns: ns, stop: stop, kill: kill}
	a.client = &fleetlock.Client{BaseURL: a.url}
	harness.Eventually(t, 30*time.Second, "arbiter ready", func() error {
		return getOK(a.probe + "readyz")
	})
	return a
}

// hasFlag reports whether the arbiter binary at path has the flag name.
func hasFlag(t testing.TB, path, name string) bool {
	t.Helper()
	out, _ := exec.Command(path, "-h").CombinedOutput()
	return strings.Contains(string(out), "-"+name+" ")
}

// freeAddr is a loopback address with a port free when it was asked for.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// logged counts the arbiter's log lines that contain s.
func (a *arbiter) logged(t testing.TB, s string) int {
	t.Helper()
	raw, err := os.ReadFile(a.log)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(raw), s)
}

func (a *arbiter) preReboot(id, group string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return a.client.PreReboot(ctx, fleetlock.ClientParams{ID: id, Group: group})
}

func (a *arbiter) steadyState(id, group string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return a.client.SteadyState(ctx, fleetlock.ClientParams{ID: id, Group: group})
}

// holders reads a group's holders from the API server.
func holders(t *testing.T, ns, group string) []lock.Holder {
	t.Helper()
	l, err := cluster.Client.CoordinationV1().Leases(ns).Get(context.Background(), lock.ObjectName(group), metav1.GetOptions{})
	if err != nil {
		return nil
	}
	h, err := lock.Decode(l)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// inGroup puts the nodes in reboot group g (the label the agent writes
// into Zincati's configuration).
func inGroup(g string) func(int, *fixtures.NodeSpec) {
	return func(_ int, s *fixtures.NodeSpec) { s.Labels[annotations.GroupLabel] = g }
}

// simNode is a kwok node with its Zincati id.
type simNode struct {
	name, id string
}

// newNodes creates n kwok nodes labelled pool=ns and deletes them after the test.
func newNodes(t testing.TB, ns string, n int, mutate func(i int, s *fixtures.NodeSpec)) []simNode {
	t.Helper()
	ctx := context.Background()
	prefix := harness.Prefix(t)
	out := make([]simNode, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		s := fixtures.NodeSpec{Name: fmt.Sprintf("%s-%d", prefix, i), Labels: map[string]string{"pool": ns}, MachineID: fixtures.RandomID()}
		if mutate != nil {
			mutate(i, &s)
		}
		id, err := zincatiid.FromMachineID(s.MachineID)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = simNode{name: s.Name, id: id}
		wg.Go(func() { _, errs[i] = fixtures.CreateNode(ctx, cluster.Client, s) })
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, s := range out {
			fixtures.DeleteNodes(context.Background(), cluster.Client, s.name)
		}
	})
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func getNode(t *testing.T, name string) *corev1.Node {
	t.Helper()
	n, err := cluster.Client.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// guardedNode creates, in ns, a kwok node running web: a 2-replica
// Deployment whose PodDisruptionBudget allows no disruption, so its drain
// blocks until the budget is relaxed with fixtures.SetMinAvailable.
func guardedNode(ctx context.Context, t *testing.T, ns string) simNode {
	t.Helper()
	target := newNodes(t, ns, 1, nil)[0]
	must(t, fixtures.CreateGuarded(ctx, cluster.Client, ns, "web", ns, 2, 2))
	must(t, fixtures.WaitRunning(ctx, cluster.Client, ns, "app=web", 2))
	return target
}

// nodeEvents lists the Events of reason on a node.
func nodeEvents(ctx context.Context, t *testing.T, node, reason string) []corev1.Event {
	t.Helper()
	evs, err := cluster.Client.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{FieldSelector: fields.AndSelectors(
		fields.OneTermEqualSelector("involvedObject.name", node),
		fields.OneTermEqualSelector("reason", reason)).String()})
	must(t, err)
	return evs.Items
}
