package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
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
	"github.com/rebootmanager/reboot-manager/systemd"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// restarts records restarts; the real D-Bus path is tested in systemd/
// and test/nspawn.
type restarts struct {
	mu    sync.Mutex
	units []string
	// unit is Zincati's state; the zero value is a Zincati that runs and
	// started long ago.
	unit *systemd.UnitState
}

func (r *restarts) Restart(_ context.Context, unit string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.units = append(r.units, unit)
	return nil
}

// BootComplete says the boot is complete.
func (r *restarts) BootComplete(context.Context) (string, error) { return "reached", nil }

// Unit says Zincati runs, started long ago, unless told otherwise.
func (r *restarts) Unit(context.Context, string) (systemd.UnitState, error) {
	if r.unit != nil {
		return *r.unit, nil
	}
	return systemd.UnitState{Load: "loaded", Active: "active", Sub: "running", ActiveEnter: time.Unix(1, 0), ActiveEnterKnown: true}, nil
}

// fcosRelease is a Fedora CoreOS host's /usr/lib/os-release.
const fcosRelease = "NAME=\"Fedora Linux\"\nVERSION=\"41.20241109.3.0 (CoreOS)\"\nID=fedora\nVARIANT_ID=coreos\nPRETTY_NAME=\"Fedora CoreOS 41.20241109.3.0\"\n"

// fcosHost makes root look like a Fedora CoreOS host with Zincati to the
// agent: its os-release and /usr/libexec/zincati.
func fcosHost(t testing.TB, root string) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Join(root, "usr/lib"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "usr/lib/os-release"), []byte(fcosRelease), 0o644))
	must(t, os.MkdirAll(filepath.Join(root, "usr/libexec"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "usr/libexec/zincati"), []byte("#!/bin/sh\n"), 0o755))
}

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

	// A Fedora CoreOS host whose Zincati package made no /etc/zincati:
	// the agent makes the directory.
	root := t.TempDir()
	fcosHost(t, root)
	must(t, os.MkdirAll(filepath.Join(root, "etc"), 0o755))
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
	if _, err := os.Stat(filepath.Join(root, "etc/zincati")); err == nil || r.count() != 0 {
		t.Fatal("the agent touched the host before it could read the machine id")
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
	fcosHost(t, root)
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

// tree lists every path under root with its mode and size, to prove that
// nothing was created or changed.
func tree(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	must(t, filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %v %d\n", strings.TrimPrefix(p, root), fi.Mode(), fi.Size())
		return nil
	}))
	return b.String()
}

// TestAgentLeavesOtherHostsAlone: on a host that is not Fedora CoreOS, or
// has no Zincati, the agent creates and changes nothing on the host,
// publishes nothing on its Node, restarts nothing, records one Node Event
// saying why, and keeps running (a DaemonSet pod that exits would
// crash-loop) until it is stopped.
func TestAgentLeavesOtherHostsAlone(t *testing.T) {
	notFound := systemd.UnitState{Load: "not-found", Active: "inactive", Sub: "dead"}
	tests := []struct {
		name   string
		files  map[string]string
		unit   *systemd.UnitState
		reason string
		msg    string
	}{
		{name: "Debian", files: map[string]string{"etc/os-release": "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n"},
			reason: agent.ReasonNotFedoraCoreOS, msg: "runs Debian GNU/Linux 12 (bookworm), not Fedora CoreOS"},
		{name: "Fedora Server with a Zincati binary", files: map[string]string{"usr/lib/os-release": "ID=fedora\nVARIANT_ID=server\n", "usr/libexec/zincati": "x"},
			reason: agent.ReasonNotFedoraCoreOS, msg: "not Fedora CoreOS"},
		{name: "no os-release at all", reason: agent.ReasonNotFedoraCoreOS, msg: "cannot be read"},
		{name: "FCOS without /usr/libexec/zincati", files: map[string]string{"usr/lib/os-release": fcosRelease}, reason: agent.ReasonZincatiAbsent, msg: "no /usr/libexec/zincati"},
		{name: "FCOS whose systemd knows no zincati.service", files: map[string]string{"usr/lib/os-release": fcosRelease, "usr/libexec/zincati": "x"},
			unit: &notFound, reason: agent.ReasonZincatiAbsent, msg: "knows no zincati.service"},
	}
	ns := cluster.Namespace(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			machineID := fixtures.RandomID()
			node := newNodes(t, ns, 1, func(_ int, s *fixtures.NodeSpec) { s.MachineID = machineID })[0]
			root := t.TempDir()
			tt.files = maps.Clone(tt.files)
			if tt.files == nil {
				tt.files = map[string]string{}
			}
			tt.files["etc/machine-id"] = machineID + "\n"
			tt.files["etc/passwd"] = "root:x:0:0:root:/root:/bin/sh\nzincati:x:980:980::/:/sbin/nologin\n"
			for p, c := range tt.files {
				must(t, os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755))
				must(t, os.WriteFile(filepath.Join(root, p), []byte(c), 0o644))
			}
			before := tree(t, root)
			r := &restarts{unit: tt.unit}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			a := agent.New(agent.Config{
				NodeName: node.name, HostRoot: root, ConfigDir: "etc/zincati/config.d", FileName: dropin.DefaultName,
				Unit: "zincati.service", BaseURL: "http://10.0.0.9:80/", ServiceNamespace: ns, ServiceName: "arbiter",
			}, cluster.Client, r, slog.New(slog.DiscardHandler))
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			var ev corev1.Event
			harness.Eventually(t, 15*time.Second, "the Node Event", func() error {
				evs, err := cluster.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{
					FieldSelector: "involvedObject.name=" + node.name + ",source=reboot-manager-agent"})
				if err != nil || len(evs.Items) != 1 {
					return fmt.Errorf("events %v, %v; want one", evs, err)
				}
				ev = evs.Items[0]
				return nil
			})
			n := getNode(t, node.name)
			if ev.Reason != tt.reason || !strings.Contains(ev.Message, tt.msg) || ev.InvolvedObject.Kind != "Node" || ev.InvolvedObject.UID != n.UID || ev.Source.Component != "reboot-manager-agent" {
				t.Errorf("Event %s %q on %+v from %+v; want %s with %q on the Node", ev.Reason, ev.Message, ev.InvolvedObject, ev.Source, tt.reason, tt.msg)
			}
			select {
			case err := <-done:
				t.Fatalf("the agent exited (%v); it must keep running", err)
			case <-time.After(2 * time.Second):
			}
			if after := tree(t, root); after != before {
				t.Errorf("the host changed:\nbefore\n%s\nafter\n%s", before, after)
			}
			for k := range getNode(t, node.name).Annotations {
				if strings.HasPrefix(k, "rebootmanager/") {
					t.Errorf("the agent published %s on its Node", k)
				}
			}
			if r.count() != 0 {
				t.Errorf("restarts = %d, want 0", r.count())
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("agent: %v", err)
			}
		})
	}
}
