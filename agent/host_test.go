package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/rebootmanager/reboot-manager/agent/dropin"
	"github.com/rebootmanager/reboot-manager/systemd"
)

const fcosRelease = "NAME=\"Fedora Linux\"\nVERSION=\"41.20241109.3.0 (CoreOS)\"\nID=fedora\nVARIANT_ID=coreos\nPRETTY_NAME=\"Fedora CoreOS 41.20241109.3.0\"\n"

// writeTree makes files (content, or a symlink target after "->") under root.
func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if target, ok := strings.CutPrefix(c, "->"); ok {
			if err := os.Symlink(target, full); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCheckHost(t *testing.T) {
	tests := []struct {
		name   string
		files  map[string]string
		force  bool
		reason string
		msg    string
	}{
		{"Fedora CoreOS with Zincati", map[string]string{"usr/lib/os-release": fcosRelease, ZincatiBinary: "bin"}, false, "", ""},
		{"FCOS, os-release by its /etc link (absolute, resolved under the host root)",
			map[string]string{"etc/os-release": "->/usr/lib/os-release", "usr/lib/os-release.d/x": "", "usr/lib/fcos": fcosRelease, "usr/lib/os-release": "->fcos", ZincatiBinary: "bin"}, false, "", ""},
		{"FCOS without Zincati", map[string]string{"usr/lib/os-release": fcosRelease}, false, ReasonZincatiAbsent, "no /usr/libexec/zincati"},
		{"Debian", map[string]string{"etc/os-release": "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n", ZincatiBinary: "bin"}, false, ReasonNotFedoraCoreOS, "runs Debian GNU/Linux 12 (bookworm), not Fedora CoreOS"},
		{"Fedora Server", map[string]string{"usr/lib/os-release": "ID=fedora\nVARIANT_ID=server\n", ZincatiBinary: "bin"}, false, ReasonNotFedoraCoreOS, "ID=fedora VARIANT_ID=server"},
		{"an absolute link to the agent's own os-release is not followed out of the root",
			map[string]string{"etc/os-release": "->/etc/debian_version"}, false, ReasonNotFedoraCoreOS, "cannot be read"},
		{"no os-release", nil, false, ReasonNotFedoraCoreOS, "cannot be read"},
		{"forced: Debian with Zincati elsewhere", map[string]string{"etc/os-release": "ID=debian\n"}, true, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			writeTree(t, root, tt.files)
			reason, msg := CheckHost(root, tt.force)
			if reason != tt.reason || !strings.Contains(msg, tt.msg) {
				t.Errorf("CheckHost = %q, %q; want %q, a message with %q", reason, msg, tt.reason, tt.msg)
			}
		})
	}
}

// unitHost is a Host whose Zincati is in state (or err), and which counts
// restarts.
type unitHost struct {
	state    systemd.UnitState
	err      error
	restarts int
}

func (h *unitHost) Restart(context.Context, string) error                   { h.restarts++; return h.err }
func (h *unitHost) BootComplete(context.Context) (string, error)            { return "reached", h.err }
func (h *unitHost) Unit(context.Context, string) (systemd.UnitState, error) { return h.state, h.err }

// TestRestartDecision: whether the agent restarts Zincati, by Zincati's
// state and start against the drop-in's age; after its own start (owed)
// or after writing the drop-in itself (pending). Pure logic: the fake
// clientset only takes the Event.
func TestRestartDecision(t *testing.T) {
	written := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	before, after := written.Add(-time.Hour), written.Add(time.Minute)
	state := func(active string, enter time.Time) systemd.UnitState {
		return systemd.UnitState{Load: "loaded", Active: active, Sub: "x", ActiveEnter: enter, ActiveEnterKnown: true}
	}
	tests := []struct {
		name     string
		pending  bool // the agent wrote the drop-in itself
		host     unitHost
		restarts int
		still    bool   // a restart is still pending
		event    string // the Event's reason
		err      error
		leave    string // the leaveAlone reason
	}{
		{name: "owed: Zincati started before the drop-in", host: unitHost{state: state("active", before)}, restarts: 1},
		{name: "not owed: Zincati started after the drop-in", host: unitHost{state: state("active", after)}},
		{name: "owed, never active in this boot, failed", host: unitHost{state: state("failed", time.Time{})}, restarts: 1},
		{name: "owed but stopped by an administrator: not started", host: unitHost{state: state("inactive", before)}, still: true, event: ReasonZincatiStopped},
		{name: "owed but being stopped", host: unitHost{state: state("deactivating", before)}, still: true, event: ReasonZincatiStopped},
		{name: "systemd does not say when it started: nothing owed", host: unitHost{state: systemd.UnitState{Load: "loaded", Active: "active"}}},
		{name: "pending, running", pending: true, host: unitHost{state: state("active", before)}, restarts: 1},
		{name: "pending, started after the write (an admin's start): it runs it", pending: true, host: unitHost{state: state("active", after)}},
		{name: "pending, failed", pending: true, host: unitHost{state: state("failed", before)}, restarts: 1},
		{name: "pending, auto-restarting", pending: true, host: unitHost{state: state("activating", before)}, restarts: 1},
		{name: "pending, stopped: not started", pending: true, host: unitHost{state: state("inactive", before)}, still: true, event: ReasonZincatiStopped},
		{name: "pending, no bus: waits", pending: true, host: unitHost{err: systemd.ErrNoBus}, still: true, err: systemd.ErrNoBus},
		{name: "no Zincati unit", host: unitHost{state: systemd.UnitState{Load: "not-found", Active: "inactive"}}, leave: ReasonZincatiAbsent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "etc/zincati/config.d")
			writeTree(t, root, map[string]string{"etc/zincati/config.d/" + dropin.DefaultName: "# drop-in\n"})
			if err := os.Chtimes(filepath.Join(dir, dropin.DefaultName), written, written); err != nil {
				t.Fatal(err)
			}
			client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", UID: "u-1"}})
			a := New(Config{NodeName: "n", HostRoot: root, FileName: dropin.DefaultName, Unit: "zincati.service"}, client, &tt.host, slog.New(slog.DiscardHandler))
			defer a.queue.ShutDown()
			a.restartPending, a.startChecked = tt.pending, tt.pending
			err := a.checkOwed(context.Background(), a.log, dir)
			if err == nil && a.restartPending {
				_, err = a.applyDropIn(context.Background(), a.log, dir)
			}
			var alone *leaveAlone
			switch {
			case tt.leave != "":
				if !errors.As(err, &alone) || alone.reason != tt.leave {
					t.Fatalf("err = %v, want leaveAlone %s", err, tt.leave)
				}
				return
			case tt.err != nil:
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
			case err != nil:
				t.Fatal(err)
			}
			if tt.host.restarts != tt.restarts || a.restartPending != tt.still {
				t.Errorf("restarts %d, still pending %v; want %d, %v", tt.host.restarts, a.restartPending, tt.restarts, tt.still)
			}
			evs, _ := client.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{})
			var reasons []string
			for _, e := range evs.Items {
				reasons = append(reasons, e.Reason)
				if e.InvolvedObject.Kind != "Node" || e.InvolvedObject.Name != "n" || e.InvolvedObject.UID != "u-1" {
					t.Errorf("Event on %+v, want Node n", e.InvolvedObject)
				}
			}
			if want := tt.event; strings.Join(reasons, ",") != want {
				t.Errorf("Events %q, want %q", reasons, want)
			}
		})
	}
}
