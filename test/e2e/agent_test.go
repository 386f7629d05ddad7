package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/rebootmanager/reboot-manager/agent"
	"github.com/rebootmanager/reboot-manager/agent/dropin"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/credential"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// restarts records restarts; the real D-Bus path is tested in systemd/.
type restarts struct {
	mu    sync.Mutex
	units []string
}

func (r *restarts) Restart(_ context.Context, unit string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.units = append(r.units, unit)
	return nil
}

// BootComplete says the boot is complete.
func (r *restarts) BootComplete(context.Context) (string, error) { return "reached", nil }

func (r *restarts) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.units)
}

// TestAgent runs the agent against the real API server with a kwok node and
// a host root in a temporary directory.
func TestAgent(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := cluster.Client
	ns := cluster.Namespace(t)
	machineID := fixtures.RandomID()
	node := newNodes(t, ns, 1, func(_ int, s *fixtures.NodeSpec) {
		s.MachineID = machineID
		s.Labels[annotations.GroupLabel] = "workers"
	})[0]
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "arbiter", Namespace: ns},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}, Selector: map[string]string{"app": "arbiter"}},
	}
	created, err := c.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
	must(t, err)

	root := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(root, "etc/zincati/config.d"), 0o755))
	r := &restarts{}
	a := agent.New(agent.Config{
		NodeName: node.name, HostRoot: root, ConfigDir: "etc/zincati/config.d", FileName: dropin.DefaultName,
		Unit: "zincati.service", ServiceNamespace: ns, ServiceName: "arbiter",
	}, c, r, slog.New(slog.DiscardHandler))
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	file := filepath.Join(root, "etc/zincati/config.d", dropin.DefaultName)

	// The host's machine id appears late: the agent retries, with backoff,
	// and does nothing before it can publish the id.
	time.Sleep(300 * time.Millisecond)
	if _, err := os.Stat(file); err == nil || r.count() != 0 {
		t.Fatal("the agent configured Zincati before it could read the machine id")
	}
	must(t, os.WriteFile(filepath.Join(root, "etc/machine-id"), []byte(machineID+"\n"), 0o444))

	waitFile := func(want ...string) {
		t.Helper()
		harness.Eventually(t, 15*time.Second, "the drop-in", func() error {
			b, err := os.ReadFile(file)
			if err != nil {
				return err
			}
			for _, w := range want {
				if !strings.Contains(string(b), w) {
					return fmt.Errorf("drop-in lacks %q:\n%s", w, b)
				}
			}
			return nil
		})
	}
	waitRestarts := func(n int) {
		t.Helper()
		harness.Eventually(t, 15*time.Second, "Zincati restarts", func() error {
			if got := r.count(); got != n {
				return fmt.Errorf("restarts = %d, want %d", got, n)
			}
			return nil
		})
	}

	waitFile(`base_url = "http://`+node.name+`:`, `@`+created.Spec.ClusterIP+`:80/"`, `group = "workers"`, `strategy = "fleet_lock"`)
	waitRestarts(1)
	harness.Eventually(t, 10*time.Second, "the published id", func() error {
		if got := getNode(t, node.name).Annotations[annotations.ZincatiID]; got != node.id {
			return fmt.Errorf("zincati-id = %q, want %q", got, node.id)
		}
		return nil
	})

	// The Service comes back with another IP: rewritten, restarted.
	must(t, c.CoreV1().Services(ns).Delete(ctx, "arbiter", metav1.DeleteOptions{}))
	svc.Spec.ClusterIP = ""
	for {
		again, err := c.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
		must(t, err)
		if again.Spec.ClusterIP != created.Spec.ClusterIP {
			waitFile(`@` + again.Spec.ClusterIP + `:80/"`)
			break
		}
		must(t, c.CoreV1().Services(ns).Delete(ctx, "arbiter", metav1.DeleteOptions{}))
	}
	waitRestarts(2)

	// In a reboot cycle, a change is written but Zincati is not restarted.
	patch := func(p string) {
		_, err := c.CoreV1().Nodes().Patch(ctx, node.name, types.MergePatchType, []byte(p), metav1.PatchOptions{})
		must(t, err)
	}
	patch(`{"metadata":{"annotations":{"rebootmanager/status":"Draining"},"labels":{"rebootmanager/group":"db"}}}`)
	waitFile(`group = "db"`)
	time.Sleep(500 * time.Millisecond)
	if got := r.count(); got != 2 {
		t.Fatalf("restarts while draining = %d, want still 2", got)
	}
	patch(`{"metadata":{"annotations":{"rebootmanager/status":"Ready"}}}`)
	waitRestarts(3)

	// Unrelated node changes write nothing and restart nothing.
	patch(`{"metadata":{"labels":{"unrelated":"x"}}}`)
	time.Sleep(500 * time.Millisecond)
	if got := r.count(); got != 3 {
		t.Fatalf("restarts after an unrelated change = %d, want 3", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("agent: %v", err)
	}
}

// TestAgentFirstCredentialWaitsForCycle: an agent that first runs on a node
// in a reboot cycle (its Zincati began the cycle without a credential)
// publishes none until the cycle ends, so that Zincati is never refused
// mid-cycle; then it publishes one and restarts Zincati at once.
func TestAgentFirstCredentialWaitsForCycle(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := cluster.Namespace(t)
	machineID := fixtures.RandomID()
	node := newNodes(t, ns, 1, func(_ int, s *fixtures.NodeSpec) {
		s.MachineID = machineID
		s.Annotations = map[string]string{annotations.Status: annotations.StatusDraining, annotations.Holding: "default/x/2026-12-01T00:00:00Z"}
	})[0]
	root := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(root, "etc/zincati/config.d"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "etc/machine-id"), []byte(machineID+"\n"), 0o444))
	r := &restarts{}
	a := agent.New(agent.Config{
		NodeName: node.name, HostRoot: root, ConfigDir: "etc/zincati/config.d", FileName: dropin.DefaultName,
		Unit: "zincati.service", BaseURL: "http://10.0.0.9:80/", ServiceNamespace: ns, ServiceName: "arbiter",
	}, cluster.Client, r, slog.New(slog.DiscardHandler))
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	dir := filepath.Join(root, "etc/zincati/config.d")
	harness.Eventually(t, 15*time.Second, "the drop-in without a credential", func() error {
		if b, err := os.ReadFile(filepath.Join(dir, dropin.DefaultName)); err != nil || !strings.Contains(string(b), `base_url = "http://10.0.0.9:80/"`) {
			return fmt.Errorf("drop-in: %s (%v)", b, err)
		}
		return nil
	})
	time.Sleep(time.Second)
	if n := getNode(t, node.name); n.Annotations[annotations.CredentialSHA256] != "" || r.count() != 0 {
		t.Fatalf("mid-cycle: hash %q, restarts %d; want none and none", n.Annotations[annotations.CredentialSHA256], r.count())
	}
	_, err := cluster.Client.CoreV1().Nodes().Patch(ctx, node.name, types.MergePatchType,
		[]byte(`{"metadata":{"annotations":{"rebootmanager/status":"Ready","rebootmanager/holding":null}}}`), metav1.PatchOptions{})
	must(t, err)
	harness.Eventually(t, 15*time.Second, "the credential after the cycle", func() error {
		secret, _ := dropin.Secret(dir, dropin.DefaultName)
		n := getNode(t, node.name)
		if secret == "" || n.Annotations[annotations.CredentialSHA256] != credential.Hash(secret) || r.count() != 1 {
			return fmt.Errorf("secret %v, hash %q, restarts %d", secret != "", n.Annotations[annotations.CredentialSHA256], r.count())
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("agent: %v", err)
	}
}
