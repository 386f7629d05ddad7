package finish

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
)

func TestJudge(t *testing.T) {
	approved := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	now := approved.Add(3 * time.Minute)
	at := func(d time.Duration) *time.Time { t := approved.Add(d); return &t }
	holder := func(steady, back *time.Time, osVersion string) lock.Holder {
		h := lock.Holder{ID: "id", Node: "n", Phase: lock.PhaseApproved, SteadyStateAt: steady, BackAt: back,
			Approval: &lock.Approval{At: approved, BootID: "b1", OSImage: "Fedora CoreOS 41.1", OSVersion: osVersion}}
		if back != nil {
			h.BackBootID = "b2"
		}
		return h
	}
	type node struct {
		boot, image string
		ready       bool
		agent       map[string]string // the agent's witness annotations
	}
	mk := func(n node) *corev1.Node {
		status := corev1.ConditionFalse
		if n.ready {
			status = corev1.ConditionTrue
		}
		return &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "n", Annotations: n.agent},
			Status: corev1.NodeStatus{
				NodeInfo:   corev1.NodeSystemInfo{BootID: n.boot, OSImage: n.image},
				Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: status}},
			},
		}
	}
	witness := func(boot, complete, version string) map[string]string {
		return map[string]string{annotations.BootID: boot, annotations.BootComplete: complete, annotations.OSVersion: version}
	}
	tests := []struct {
		name        string
		holder      lock.Holder
		node        node
		alive       bool
		settle, max time.Duration
		want        Step
		wantPhase   string
		wantOutcome Outcome
	}{
		// Zincati's order: the steady-state before kubelet reports.
		{"steady-state, old boot, kubelet not yet renewing twice: held", holder(at(time.Minute), nil, ""), node{"b1", "Fedora CoreOS 41.1", true, nil}, false, 0, time.Hour,
			Wait, annotations.StatusRebooting, ""},
		{"steady-state, new boot, not Ready yet: held", holder(at(time.Minute), nil, ""), node{"b2", "Fedora CoreOS 41.2", false, nil}, false, 0, time.Hour,
			Wait, annotations.StatusReturning, ""},
		{"steady-state, new boot, Ready: released", holder(at(time.Minute), nil, ""), node{"b2", "Fedora CoreOS 41.2", true, nil}, false, 0, time.Hour,
			Release, "", Completed},
		{"a steady-state from before the approval does not count", holder(at(-time.Minute), nil, ""), node{"b2", "Fedora CoreOS 41.2", true, nil}, false, 0, time.Hour,
			Wait, annotations.StatusReturning, ""},
		// The other order: back before the steady-state.
		{"back, no steady-state, no agent: held", holder(nil, nil, ""), node{"b2", "Fedora CoreOS 41.2", true, nil}, false, 0, time.Hour,
			Wait, annotations.StatusReturning, ""},
		{"back, agent reached for this boot: released", holder(nil, nil, "41.1"), node{"b2", "Fedora CoreOS 41.2", true, witness("b2", "reached", "41.2")}, false, 0, time.Hour,
			Release, "", Completed},
		{"back, agent reached for the old boot: held", holder(nil, nil, "41.1"), node{"b2", "Fedora CoreOS 41.2", true, witness("b1", "reached", "41.1")}, false, 0, time.Hour,
			Wait, annotations.StatusReturning, ""},
		{"back, agent pending: held", holder(nil, nil, "41.1"), node{"b2", "Fedora CoreOS 41.2", true, witness("b2", "pending", "41.2")}, false, 0, time.Hour,
			Wait, annotations.StatusReturning, ""},
		{"boot failed: held, halts", holder(nil, nil, "41.1"), node{"b2", "Fedora CoreOS 41.2", true, witness("b2", "failed", "41.2")}, false, 0, time.Hour,
			Hold, annotations.StatusHalted, BootFailed},
		{"boot failed even with a steady-state (from curl): held", holder(at(time.Minute), nil, "41.1"), node{"b2", "Fedora CoreOS 41.2", true, witness("b2", "failed", "41.2")}, false, 0, time.Hour,
			Hold, annotations.StatusHalted, BootFailed},
		{"failed in the old boot says nothing of the new one", holder(at(time.Minute), nil, "41.1"), node{"b2", "Fedora CoreOS 41.2", true, witness("b1", "failed", "41.1")}, false, 0, time.Hour,
			Release, "", Completed},
		// The update.
		{"back on the same version (agent): released, halts", holder(nil, nil, "41.1"), node{"b2", "Fedora CoreOS 41.2", true, witness("b2", "reached", "41.1")}, false, 0, time.Hour,
			Release, "", NotApplied},
		{"back on the same osImage (no agent): released, halts", holder(at(time.Minute), nil, ""), node{"b2", "Fedora CoreOS 41.1", true, nil}, false, 0, time.Hour,
			Release, "", NotApplied},
		{"the agent has not reported this boot: osImage decides", holder(at(time.Minute), nil, "41.1"), node{"b2", "Fedora CoreOS 41.2", true, witness("b1", "reached", "41.1")}, false, 0, time.Hour,
			Release, "", Completed},
		// No reboot.
		{"steady-state, old boot, kubelet renewed twice since: released", holder(at(time.Minute), nil, ""), node{"b1", "Fedora CoreOS 41.1", true, nil}, true, 0, time.Hour,
			Release, "", NotRebooted},
		{"kubelet renewed twice, but no steady-state: held", holder(nil, nil, ""), node{"b1", "Fedora CoreOS 41.1", true, nil}, true, 0, time.Hour,
			Wait, annotations.StatusRebooting, ""},
		{"kubelet renewed twice, old boot, not Ready: held", holder(at(time.Minute), nil, ""), node{"b1", "Fedora CoreOS 41.1", false, nil}, true, 0, time.Hour,
			Wait, annotations.StatusRebooting, ""},
		// Not back.
		{"old boot past the maximum downtime: held, halts", holder(nil, nil, ""), node{"b1", "Fedora CoreOS 41.1", true, nil}, false, 0, time.Minute,
			Hold, annotations.StatusHalted, NotBack},
		{"new boot, never Ready, past the maximum: held, halts", holder(nil, nil, ""), node{"b2", "Fedora CoreOS 41.2", false, nil}, false, 0, time.Minute,
			Hold, annotations.StatusHalted, NotBack},
		{"back without a witness past the maximum: held, halts", holder(nil, nil, ""), node{"b2", "Fedora CoreOS 41.2", true, nil}, false, 0, time.Minute,
			Hold, annotations.StatusHalted, NotBack},
		{"no maximum: waits for ever", holder(nil, nil, ""), node{"b1", "Fedora CoreOS 41.1", true, nil}, false, 0, 0,
			Wait, annotations.StatusRebooting, ""},
		// Settle.
		{"back, settle time: starts settling", holder(at(time.Minute), nil, ""), node{"b2", "Fedora CoreOS 41.2", true, nil}, false, 5 * time.Minute, time.Hour,
			MarkBack, annotations.StatusSettling, ""},
		{"settling, time left: waits", holder(at(time.Minute), at(time.Minute), ""), node{"b2", "Fedora CoreOS 41.2", true, nil}, false, 5 * time.Minute, time.Hour,
			Wait, annotations.StatusSettling, ""},
		{"settled: released", holder(at(time.Minute), at(-3*time.Minute), ""), node{"b2", "Fedora CoreOS 41.2", true, nil}, false, 5 * time.Minute, time.Hour,
			Release, "", Completed},
		{"a crash while settling, Ready again on another boot: starts again", holder(at(time.Minute), at(-3*time.Minute), ""), node{"b3", "Fedora CoreOS 41.2", true, nil}, false, 5 * time.Minute, time.Hour,
			MarkBack, annotations.StatusSettling, ""},
		{"not Ready while settling: starts again", holder(at(time.Minute), at(time.Minute), ""), node{"b2", "Fedora CoreOS 41.2", false, nil}, false, 5 * time.Minute, time.Hour,
			ClearBack, annotations.StatusReturning, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := Judge(Input{Holder: tt.holder, Node: mk(tt.node), Alive: tt.alive, Settle: tt.settle, MaxDowntime: tt.max, Now: now})
			if v.Step != tt.want || v.Phase != tt.wantPhase || v.Outcome != tt.wantOutcome {
				t.Errorf("Judge = %+v, want step %d, phase %q, outcome %q", v, tt.want, tt.wantPhase, tt.wantOutcome)
			}
			if v.Step == Release && (tt.node.boot == "b1") != (v.Outcome == NotRebooted) {
				t.Errorf("released %s on boot %s", v.Outcome, tt.node.boot)
			}
		})
	}
}

// TestJudgeNeverReleasesEarly checks every combination of the inputs: a
// release needs Ready and a steady-state or the agent's reached for the
// new boot, or a proven no-reboot; never a failed boot.
func TestJudgeNeverReleasesEarly(t *testing.T) {
	approved := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	steadyAt := approved.Add(time.Minute)
	for _, boot := range []string{"", "b1", "b2"} {
		for _, ready := range []bool{false, true} {
			for _, steady := range []bool{false, true} {
				for _, alive := range []bool{false, true} {
					for _, witnessBoot := range []string{"", "b1", "b2"} {
						for _, complete := range []string{"", "pending", "reached", "failed"} {
							h := lock.Holder{Phase: lock.PhaseApproved, Approval: &lock.Approval{At: approved, BootID: "b1", OSImage: "a"}}
							if steady {
								h.SteadyStateAt = &steadyAt
							}
							status := corev1.ConditionFalse
							if ready {
								status = corev1.ConditionTrue
							}
							n := &corev1.Node{
								ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{annotations.BootID: witnessBoot, annotations.BootComplete: complete}},
								Status: corev1.NodeStatus{NodeInfo: corev1.NodeSystemInfo{BootID: boot, OSImage: "b"},
									Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: status}}},
							}
							v := Judge(Input{Holder: h, Node: n, Alive: alive, MaxDowntime: time.Hour, Now: approved.Add(2 * time.Minute)})
							if v.Step != Release {
								continue
							}
							newBoot := boot == "b2"
							witnessed := steady || (witnessBoot == boot && complete == "reached")
							noReboot := boot == "b1" && steady && alive
							if !ready || (newBoot && !witnessed) || (!newBoot && !noReboot) || (newBoot && witnessBoot == boot && complete == "failed") {
								t.Errorf("released (%s): boot %q ready %v steady %v alive %v witness %q %q", v.Outcome, boot, ready, steady, alive, witnessBoot, complete)
							}
						}
					}
				}
			}
		}
	}
}

// BenchmarkJudge is the cost of one judgement, made for every approved
// holder on every pass of the leader.
func BenchmarkJudge(b *testing.B) {
	approved := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	steady := approved.Add(time.Minute)
	in := Input{
		Holder: lock.Holder{Phase: lock.PhaseApproved, SteadyStateAt: &steady,
			Approval: &lock.Approval{At: approved, BootID: "b1", OSImage: "Fedora CoreOS 41.1", OSVersion: "41.1"}},
		Node: &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{annotations.BootID: "b2", annotations.BootComplete: "reached", annotations.OSVersion: "41.2"}},
			Status: corev1.NodeStatus{NodeInfo: corev1.NodeSystemInfo{BootID: "b2", OSImage: "Fedora CoreOS 41.2"},
				Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}},
		},
		MaxDowntime: time.Hour, Now: approved.Add(3 * time.Minute),
	}
	for b.Loop() {
		if v := Judge(in); v.Step != Release {
			b.Fatal(v)
		}
	}
}
