package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/systemd"
)

// bootHost is a Host whose boot-complete.target reads as state, or err.
type bootHost struct {
	state string
	err   error
}

func (bootHost) Restart(context.Context, string) error          { return nil }
func (h bootHost) BootComplete(context.Context) (string, error) { return h.state, h.err }
func (bootHost) Unit(context.Context, string) (systemd.UnitState, error) {
	return systemd.UnitState{Load: "loaded", Active: "active"}, nil
}

// TestWitness: the three values always describe the boot id beside them.
// A value that cannot be read in a new boot is removed, never left from
// the boot before (pure logic: the fake clientset only applies the patch).
func TestWitness(t *testing.T) {
	before := map[string]string{annotations.BootID: "b1", annotations.BootComplete: "reached", annotations.OSVersion: "41.1"}
	tests := []struct {
		name    string
		host    bootHost
		version string // "" for no os-release
		want    map[string]string
	}{
		{"everything read", bootHost{state: "failed"}, "41.2", map[string]string{annotations.BootID: "b2", annotations.BootComplete: "failed", annotations.OSVersion: "41.2"}},
		{"boot-complete unreadable: removed", bootHost{err: errors.New("no bus")}, "41.2", map[string]string{annotations.BootID: "b2", annotations.OSVersion: "41.2"}},
		{"no boot-complete.target: removed", bootHost{}, "41.2", map[string]string{annotations.BootID: "b2", annotations.OSVersion: "41.2"}},
		{"os-release unreadable: removed", bootHost{state: "reached"}, "", map[string]string{annotations.BootID: "b2", annotations.BootComplete: "reached"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			bootID := filepath.Join(root, "boot_id")
			if err := os.WriteFile(bootID, []byte("b2\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if tt.version != "" {
				if err := os.MkdirAll(filepath.Join(root, "usr/lib"), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(root, "usr/lib/os-release"), []byte("VERSION="+tt.version+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Annotations: map[string]string{}}}
			for k, v := range before {
				node.Annotations[k] = v
			}
			client := fake.NewClientset(node.DeepCopy())
			a := New(Config{NodeName: "n", HostRoot: root, BootIDPath: bootID}, client, tt.host, slog.New(slog.DiscardHandler))
			a.witness(context.Background(), node)
			got, err := client.CoreV1().Nodes().Get(context.Background(), "n", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{annotations.BootID, annotations.BootComplete, annotations.OSVersion} {
				if got.Annotations[k] != tt.want[k] {
					t.Errorf("%s = %q, want %q", k, got.Annotations[k], tt.want[k])
				}
			}
		})
	}
}
