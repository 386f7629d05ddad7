package coordinator

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rebootmanager/reboot-manager/arbiter/drain"
	"github.com/rebootmanager/reboot-manager/arbiter/groups"
	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
)

// fake records every call by name; the behaviour behind each is set per case.
type fake struct {
	calls      []string
	node       *corev1.Node
	holds      bool
	acquire    lock.Result
	acquireErr error
	releaseErr error
	pending    drain.Pending
	finishErr  error
	gateErr    error
}

func (f *fake) call(s string) { f.calls = append(f.calls, s) }

func (f *fake) Lookup(string) (*corev1.Node, error) { return f.node, nil }
func (f *fake) StartDrain(context.Context, string, string) error {
	f.call("StartDrain")
	return nil
}
func (f *fake) MarkRebooting(context.Context, string) error { f.call("MarkRebooting"); return nil }
func (f *fake) SetWaiting(_ context.Context, _, reason string) error {
	f.call("SetWaiting(" + reason + ")")
	return nil
}
func (f *fake) Finish(context.Context, string) error { f.call("Finish"); return f.finishErr }
func (f *fake) Acquire(context.Context, string, lock.Holder, lock.Limits) (lock.Result, error) {
	f.call("Acquire")
	return f.acquire, f.acquireErr
}
func (f *fake) Release(context.Context, string, string) (bool, error) {
	f.call("Release")
	return f.releaseErr == nil, f.releaseErr
}
func (f *fake) Holds(string, string) bool   { return f.holds }
func (f *fake) Cached(string) []lock.Holder { return f.acquire.Holders }
func (f *fake) Pending(context.Context, string) (drain.Pending, error) {
	f.call("Pending")
	return f.pending, nil
}
func (f *fake) Enqueue(string)             { f.call("Enqueue") }
func (f *fake) For(string) groups.Settings { return groups.Settings{Slots: 1} }
func (f *fake) Check(context.Context, string, groups.Settings, string) error {
	f.call("Check")
	return f.gateErr
}
func node(status string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Annotations: map[string]string{}}}
	if status != "" {
		n.Annotations[annotations.Status] = status
	}
	return n
}

func waiting() *corev1.Node {
	n := node(annotations.StatusReady)
	n.Annotations[annotations.Waiting] = "group full"
	return n
}

func TestPreReboot(t *testing.T) {
	granted := lock.Result{Granted: true, Changed: true}
	tests := []struct {
		name      string
		f         fake
		allow     bool
		wantKind  fleetlock.Kind // "" for approved
		wantValue string
		wantCalls string
	}{
		{"unknown node", fake{}, false, fleetlock.KindUnknownNode, "deploy the reboot-manager agent", ""},
		{"unknown node allowed: semaphore only", fake{acquire: granted}, true, "", "", "Check Acquire"},
		{"group full", fake{node: node(""), acquire: lock.Result{Holders: []lock.Holder{{ID: "x", Node: "n9"}}}}, false,
			fleetlock.KindLockHeld, "n9", `Check Acquire SetWaiting(group "g" is full: 1 of 1 slots held by n9)`},
		{"minimum gap", fake{node: node(""), acquire: lock.Result{GapLeft: time.Minute}}, false,
			fleetlock.KindMinGap, "next in 1m0s", `Check Acquire SetWaiting(group "g" waits out its minimum gap of 0s)`},
		{"gate refuses: no slot taken", fake{node: node(""), gateErr: fleetlock.Errorf(fleetlock.KindPaused, "paused")}, false,
			fleetlock.KindPaused, "paused", "Check SetWaiting(paused)"},
		{"gate cannot list pods: fails closed", fake{node: node(""), gateErr: errors.New("apiserver down")}, false,
			fleetlock.KindInternal, "apiserver down", "Check"},
		{"gate skipped for a node mid-cycle", fake{node: node(annotations.StatusDraining), acquire: granted, gateErr: errors.New("x")}, false,
			"", "", "Acquire StartDrain Pending MarkRebooting"},
		{"lock contention fails closed", fake{node: node(""), acquireErr: lock.ErrContention}, false, fleetlock.KindUnavailable, "", "Check Acquire"},
		{"lock error", fake{node: node(""), acquireErr: errors.New("boom")}, false, fleetlock.KindInternal, "boom", "Check Acquire"},
		{"pods remain", fake{node: node(""), acquire: granted, pending: drain.Pending{Pods: []corev1.Pod{{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p"}}}}},
			false, fleetlock.KindDrainInProgress, "1 pods remain: a/p", "Check Acquire StartDrain Pending Enqueue"},
		{"unevictable pod blocks", fake{node: node(""), acquire: granted, pending: drain.Pending{Problems: []string{"no controller: a/p"}}},
			false, fleetlock.KindDrainInProgress, "no controller", "Check Acquire StartDrain Pending Enqueue"},
		{"drained", fake{node: node(""), acquire: granted}, false, "", "", "Check Acquire StartDrain Pending MarkRebooting"},
		{"already approved", fake{node: node(annotations.StatusRebooting), acquire: lock.Result{Granted: true}}, false, "", "", "Acquire"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tt.f
			c := New(Deps{&f, &f, &f, &f, &f}, Config{AllowUnknownNodes: tt.allow}, nil, slog.New(slog.DiscardHandler))
			err := c.PreReboot(context.Background(), fleetlock.ClientParams{ID: "id", Group: "g"})
			if tt.wantKind == "" && err != nil {
				t.Fatalf("PreReboot = %v, want approval", err)
			}
			if tt.wantKind != "" && (!fleetlock.IsKind(err, tt.wantKind) || !strings.Contains(err.Error(), tt.wantValue)) {
				t.Fatalf("PreReboot = %v, want %s containing %q", err, tt.wantKind, tt.wantValue)
			}
			if got := strings.Join(f.calls, " "); got != tt.wantCalls {
				t.Errorf("calls = %q, want %q", got, tt.wantCalls)
			}
		})
	}
}

func TestSteadyState(t *testing.T) {
	tests := []struct {
		name      string
		f         fake
		wantKind  fleetlock.Kind
		wantCalls string
	}{
		{"ready non-holder: nothing to do", fake{node: node(annotations.StatusReady)}, "", ""},
		{"waiting non-holder: the mark goes", fake{node: waiting()}, "", "SetWaiting()"},
		{"unknown non-holder", fake{}, "", ""},
		{"holder with unknown node releases", fake{holds: true}, "", "Release"},
		{"holder releases then finishes", fake{holds: true, node: node(annotations.StatusRebooting)}, "", "Release Finish"},
		{"node in cycle, stale cache: release anyway", fake{node: node(annotations.StatusDraining)}, "", "Release Finish"},
		{"release fails: not 200", fake{holds: true, node: node(annotations.StatusRebooting), releaseErr: errors.New("down")}, fleetlock.KindInternal, "Release"},
		{"finish fails after release: still 200", fake{holds: true, node: node(annotations.StatusRebooting), finishErr: errors.New("down")}, "", "Release Finish"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tt.f
			c := New(Deps{&f, &f, &f, &f, &f}, Config{}, nil, slog.New(slog.DiscardHandler))
			err := c.SteadyState(context.Background(), fleetlock.ClientParams{ID: "id", Group: "g"})
			if (tt.wantKind == "") != (err == nil) || (err != nil && !fleetlock.IsKind(err, tt.wantKind)) {
				t.Fatalf("SteadyState = %v, want kind %q", err, tt.wantKind)
			}
			if got := strings.Join(f.calls, " "); got != tt.wantCalls {
				t.Errorf("calls = %q, want %q", got, tt.wantCalls)
			}
		})
	}
}
