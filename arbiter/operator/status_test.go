package operator

import (
	"bytes"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
)

func TestNodeStatus(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	ready := corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue}
	node := func(unschedulable bool, bootID string, a map[string]string) *corev1.Node {
		return &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "n", Annotations: a, Labels: map[string]string{annotations.GroupLabel: "workers"}},
			Spec:       corev1.NodeSpec{Unschedulable: unschedulable},
			Status:     corev1.NodeStatus{NodeInfo: corev1.NodeSystemInfo{BootID: bootID}, Conditions: []corev1.NodeCondition{ready}},
		}
	}
	tests := []struct {
		name       string
		node       *corev1.Node
		wantStatus string
		wantGroup  string
		wantReason string
	}{
		{"never touched", node(false, "b1", nil), annotations.StatusReady, "workers", ""},
		{"draining with a message", node(true, "b1", map[string]string{
			annotations.Status: annotations.StatusDraining, annotations.Group: "g", annotations.Since: "2026-11-24T11:50:00Z",
			annotations.DrainMessage: "ns/web-1: blocked by PodDisruptionBudget"}),
			annotations.StatusDraining, "g", "ns/web-1: blocked by PodDisruptionBudget"},
		{"draining, nothing refused yet", node(true, "b1", map[string]string{annotations.Status: annotations.StatusDraining}),
			annotations.StatusDraining, "workers", "evicting pods"},
		{"approved, not yet rebooted", node(true, "b1", map[string]string{
			annotations.Status: annotations.StatusRebooting, annotations.ApprovedBootID: "b1"}),
			annotations.StatusRebooting, "workers", "waiting for the reboot"},
		{"returning", node(true, "b2", map[string]string{
			annotations.Status: annotations.StatusReturning, annotations.ApprovedBootID: "b1"}),
			annotations.StatusReturning, "workers", "waiting for Ready, and for Zincati's steady-state or the agent's boot-complete"},
		{"settling", node(true, "b2", map[string]string{annotations.Status: annotations.StatusSettling}),
			annotations.StatusSettling, "workers", "settle time"},
		{"halted", node(true, "b2", map[string]string{annotations.Status: annotations.StatusHalted}),
			annotations.StatusHalted, "workers", "halted the group"},
		{"waiting", node(false, "b1", map[string]string{
			annotations.Waiting: `group "workers" is full`, annotations.WaitingAt: "2026-11-24T11:58:00Z"}),
			StatusWaiting, "workers", `group "workers" is full (last asked 2m ago)`},
		{"an admin's cordon", node(true, "b1", nil), annotations.StatusReady, "workers", "cordoned by someone else"},
		{"drain failed, cooling off", node(false, "b1", map[string]string{annotations.Status: annotations.StatusDrainFailed,
			annotations.DrainFailed: "retry after 2026-11-24T12:43:00Z: drain did not finish within 1h0m0s: 1 pods remain: ns/web-1"}),
			annotations.StatusDrainFailed, "workers", "may retry in 43m (at 2026-11-24T12:43:00Z): drain did not finish within 1h0m0s: 1 pods remain: ns/web-1"},
		{"drain failed, cool-off over", node(false, "b1", map[string]string{annotations.Status: annotations.StatusDrainFailed,
			annotations.DrainFailed: "retry after 2026-11-24T11:43:00Z: drain did not finish"}),
			annotations.StatusDrainFailed, "workers", "may retry now: drain did not finish"},
		{"drain failed, unreadable mark", node(false, "b1", map[string]string{annotations.Status: annotations.StatusDrainFailed,
			annotations.DrainFailed: "garbled"}),
			annotations.StatusDrainFailed, "workers", "gave its slot back: garbled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := nodeStatus(tt.node, now)
			if got.Status != tt.wantStatus || got.Group != tt.wantGroup || !strings.Contains(got.Reason, tt.wantReason) ||
				(tt.wantReason == "" && got.Reason != "") {
				t.Errorf("nodeStatus = %+v, want status %s, group %s, reason containing %q", got, tt.wantStatus, tt.wantGroup, tt.wantReason)
			}
		})
	}
}

func TestWriteTable(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	since := now.Add(-90 * time.Second)
	r := Report{
		Time:        now,
		ConfigError: "parse: bad slots",
		Groups: []Group{
			{Name: "default", Slots: 1, Holders: []Holder{{ID: "abc", Node: "n1", Since: since, HeldSeconds: 90}}},
			{Name: "outside", Slots: 2, Holders: []Holder{{ID: "def", Since: since, HeldSeconds: 3700}},
				Halts: []lock.Halt{{Reason: lock.HaltUpdateNotApplied, Node: "n3", Message: "back on 41.1"}}},
		},
		Nodes: []Node{
			{Name: "n1", Group: "default", Status: annotations.StatusDraining, Unschedulable: true, Since: &since, Reason: "evicting pods", Credential: "yes"},
			{Name: "n2", Group: "default", Status: annotations.StatusReady, Credential: "no"},
			{Name: "n3", Group: "outside", Status: annotations.StatusSettling, Unschedulable: true, Credential: "yes", Versions: "41.1 → 41.2"},
		},
	}
	var b bytes.Buffer
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"WARNING: groups ConfigMap rejected",
		"default  1      1     n1 (90s)",
		"outside  2      1     id def (61m)  update_not_applied (node n3): back on 41.1",
		"n1    default  Draining  yes       yes         90s  -            evicting pods",
		"n2    default  Ready     no        no          -    -            -",
		"n3    outside  Settling  yes       yes         -    41.1 → 41.2  -",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

func TestNodeLastReboot(t *testing.T) {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Annotations: map[string]string{
		annotations.LastReboot: "41.1 → 41.2 at 2026-12-02T10:00:00Z"}}}
	if got := nodeStatus(n, time.Now()); got.Status != annotations.StatusReady || got.Versions != "41.1 → 41.2 at 2026-12-02T10:00:00Z" {
		t.Errorf("nodeStatus = %+v, want Ready with the last reboot's versions", got)
	}
}

func TestNodeCredential(t *testing.T) {
	for _, tc := range []struct {
		ann  map[string]string
		want string
	}{
		{nil, "no"},
		{map[string]string{annotations.CredentialSHA256: "h"}, "yes"},
		{map[string]string{annotations.CredentialSHA256: "h", annotations.CredentialPreviousSHA256: "p"}, "rotating"},
		{map[string]string{annotations.CredentialPreviousSHA256: "p"}, "rotating"},
	} {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Annotations: tc.ann}}
		if got := nodeStatus(n, time.Now()).Credential; got != tc.want {
			t.Errorf("credential of %v = %q, want %q", tc.ann, got, tc.want)
		}
	}
}
