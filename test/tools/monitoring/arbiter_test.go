package monitoring

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/shared/zincatiid"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// family is one metric family the arbiter exported: its type, and for each
// label the values seen.
type family struct {
	typ    dto.MetricType
	labels map[string]map[string]bool
}

// catalogue is what one scrape of the arbiter's /metrics held, by family
// name.
type catalogue map[string]*family

// parseCatalogue reads the Prometheus text exposition.
func parseCatalogue(text string) (catalogue, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("parse /metrics: %w", err)
	}
	cat := catalogue{}
	for name, f := range families {
		fam := &family{typ: f.GetType(), labels: map[string]map[string]bool{}}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if fam.labels[l.GetName()] == nil {
					fam.labels[l.GetName()] = map[string]bool{}
				}
				fam.labels[l.GetName()][l.GetValue()] = true
			}
		}
		cat[name] = fam
	}
	return cat, nil
}

// buildBinaries builds the arbiter and the kubectl plugin from the
// checkout, as the images build them, into a temporary directory.
func buildBinaries(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", dir+"/", "./cmd/arbiter", "./cmd/kubectl-reboot_manager")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Dir = cluster.Root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/arbiter ./cmd/kubectl-reboot_manager: %v\n%s", err, out)
	}
	return dir
}

// freeAddr returns a loopback address with a port free now.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// runArbiter starts the real arbiter binary against the plane with its
// objects in namespace ns, waits until it is ready, and returns its
// FleetLock client and its /metrics URL. It is stopped when the test ends.
func runArbiter(t testing.TB, bin, ns string, args ...string) (*fleetlock.Client, string) {
	t.Helper()
	addr, probe := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "arbiter"), append([]string{
		"--kubeconfig", cluster.Kubeconfig, "--namespace", ns,
		"--listen-address", addr, "--probe-address", probe, "--log-format", "text",
	}, args...)...)
	var log bytes.Buffer
	var logMu sync.Mutex
	cmd.Stdout = &lockedWriter{w: &log, mu: &logMu}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the arbiter: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cancel()
			<-done
		}
		cancel()
		if t.Failed() {
			logMu.Lock()
			t.Logf("arbiter log:\n%s", log.String())
			logMu.Unlock()
		}
	})
	harness.Eventually(t, 30*time.Second, "the arbiter ready", func() error {
		select {
		case <-done:
			t.Fatalf("the arbiter exited before it was ready")
		default:
		}
		_, err := get("http://" + probe + "/readyz")
		return err
	})
	return &fleetlock.Client{BaseURL: "http://" + addr + "/"}, "http://" + probe + "/metrics"
}

// lockedWriter serialises writes to w.
type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// get returns the body of a GET of url, or an error for anything but 200.
func get(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(body), nil
}

// node is a simulated node and its Zincati id.
type node struct{ name, id string }

// newNode creates a kwok Node with labels, deleted when the test ends. It
// may run on a goroutine of its own.
func newNode(ctx context.Context, t testing.TB, name string, labels map[string]string) (node, error) {
	s := fixtures.NodeSpec{Name: name, Labels: labels, MachineID: fixtures.RandomID()}
	id, err := zincatiid.FromMachineID(s.MachineID)
	if err != nil {
		return node{}, fmt.Errorf("zincati id of node %s: %w", name, err)
	}
	t.Cleanup(func() { fixtures.DeleteNodes(context.Background(), cluster.Client, name) })
	if _, err := fixtures.CreateNode(ctx, cluster.Client, s); err != nil {
		return node{}, err
	}
	return node{name: name, id: id}, nil
}

// value scrapes metricsURL and returns the sum of the samples of family
// name whose labels include want: counters' and gauges' values.
func value(t testing.TB, metricsURL, name string, want map[string]string) float64 {
	t.Helper()
	text, err := get(metricsURL)
	if err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	sum := 0.0
next:
	for _, m := range families[name].GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	return sum
}

// scenarioCatalogue runs the real arbiter against the plane through every
// state the alerts and the dashboard watch, then scrapes its /metrics. Many
// families have no sample, and so no line, until their event happens, so
// the scenario makes each happen:
//   - node b (group default, no pods) is drained and approved: a drain
//     duration, a holder, the slot gauges, and a slot past --max-hold;
//   - node c waits for b's slot server-side and d finds the line full: a
//     waiter turned away, lock_held answers;
//   - node a (group drain) cannot drain (a PodDisruptionBudget allows no
//     disruption) and yields after drainTimeout: pdb_blocked evictions, a
//     yield, drain_failed;
//   - group default is paused with the CLI: a halt;
//   - d sends a steady-state.
func scenarioCatalogue(t *testing.T) catalogue {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bin := buildBinaries(t)
	ns := cluster.Namespace(t)
	cms := cluster.Client.CoreV1().ConfigMaps(ns)
	if _, err := cms.Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "reboot-manager-groups"},
		Data:       map[string]string{"config.yaml": "defaults: {slots: 1}\ngroups:\n  drain: {slots: 1, drainTimeout: 6s, drainCoolOff: 1h}\n"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create the groups ConfigMap: %v", err)
	}
	prefix := harness.Prefix(t)
	specs := []struct {
		suffix string
		labels map[string]string
	}{
		{"a", map[string]string{"pool": ns + "-a", "rebootmanager/group": "drain"}},
		{"b", map[string]string{"pool": ns}},
		{"c", map[string]string{"pool": ns}},
		{"d", map[string]string{"pool": ns}},
	}
	nodes := make([]node, len(specs))
	errs := make([]error, len(specs))
	var wg sync.WaitGroup
	for i, s := range specs {
		wg.Go(func() { nodes[i], errs[i] = newNode(ctx, t, prefix+"-"+s.suffix, s.labels) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	a, b, c, d := nodes[0], nodes[1], nodes[2], nodes[3]
	if err := fixtures.CreateGuarded(ctx, cluster.Client, ns, "web", ns+"-a", 2, 2); err != nil {
		t.Fatal(err)
	}
	client, metrics := runArbiter(t, bin, ns, "--max-hold", "1s", "--max-wait", "20s", "--max-waiters", "1",
		"--max-downtime", "0", "--reconcile-interval", "1s")
	ask := func(n node, group string, timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return client.PreReboot(ctx, fleetlock.ClientParams{ID: n.id, Group: group})
	}

	harness.Eventually(t, 60*time.Second, "node b approved", func() error { return ask(b, fleetlock.DefaultGroup, 30*time.Second) })
	// c asks again whenever answered, as Zincati does, so that it waits
	// server-side whenever d asks.
	waiting, stopWaiting := context.WithCancel(ctx)
	var waited sync.WaitGroup
	waited.Go(func() {
		for waiting.Err() == nil {
			_ = client.PreReboot(waiting, fleetlock.ClientParams{ID: c.id, Group: fleetlock.DefaultGroup})
			time.Sleep(100 * time.Millisecond)
		}
	})
	harness.Eventually(t, 30*time.Second, "node c waiting", func() error {
		n, err := cluster.Client.CoreV1().Nodes().Get(ctx, c.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if n.Annotations[annotations.Waiting] == "" {
			return errors.New("no " + annotations.Waiting + " annotation")
		}
		return nil
	})
	harness.Eventually(t, 30*time.Second, "node d turned away while c waits", func() error {
		if err := ask(d, fleetlock.DefaultGroup, 2*time.Second); !fleetlock.IsKind(err, fleetlock.KindLockHeld) {
			return fmt.Errorf("pre-reboot of d = %v, want lock_held", err)
		}
		if v := value(t, metrics, "rebootmanager_waiters_turned_away_total", map[string]string{"group": fleetlock.DefaultGroup}); v < 1 {
			return errors.New("no waiter turned away yet")
		}
		return nil
	})
	harness.Eventually(t, 60*time.Second, "node a's drain yields", func() error {
		if err := ask(a, "drain", 30*time.Second); !fleetlock.IsKind(err, fleetlock.KindDrainFailed) {
			return fmt.Errorf("pre-reboot of a = %v, want drain_failed", err)
		}
		return nil
	})
	out, err := exec.CommandContext(ctx, filepath.Join(bin, "kubectl-reboot_manager"),
		"--kubeconfig", cluster.Kubeconfig, "--namespace", ns, "pause", fleetlock.DefaultGroup).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl reboot-manager pause default: %v\n%s", err, out)
	}
	harness.Eventually(t, 30*time.Second, "group default halted", func() error {
		if value(t, metrics, "rebootmanager_group_halted", map[string]string{"group": fleetlock.DefaultGroup}) != 1 {
			return errors.New("rebootmanager_group_halted not 1")
		}
		return nil
	})
	stopWaiting()
	waited.Wait()
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	defer scancel()
	if err := client.SteadyState(sctx, fleetlock.ClientParams{ID: d.id, Group: fleetlock.DefaultGroup}); err != nil {
		t.Fatalf("steady-state of d: %v", err)
	}

	text, err := get(metrics)
	if err != nil {
		t.Fatal(err)
	}
	cat, err := parseCatalogue(text)
	if err != nil {
		t.Fatal(err)
	}
	return cat
}
