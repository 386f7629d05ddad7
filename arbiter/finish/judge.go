package finish

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
)

// Step is what a judgement asks to be done.
type Step int

// The steps.
const (
	// Wait: nothing to change; the node shows Verdict.Phase.
	Wait Step = iota
	// MarkBack records in the holder that the node is back, which starts
	// the settle time.
	MarkBack
	// ClearBack forgets that the node was back: it stopped being Ready
	// while it settled.
	ClearBack
	// Release frees the slot and ends the node's cycle.
	Release
	// Hold keeps the slot, and the node cordoned, after a failure.
	Hold
)

// Outcome names how a cycle ended or failed, for Events and metrics.
type Outcome string

// The outcomes.
const (
	// Completed: the node came back on a new OS version.
	Completed Outcome = "completed"
	// NotRebooted: the node sent its steady-state without rebooting.
	NotRebooted Outcome = "not_rebooted"
	// NotApplied: the node came back on the OS version it had.
	NotApplied Outcome = Outcome(lock.HaltUpdateNotApplied)
	// BootFailed: the agent reports boot-complete.target failed.
	BootFailed Outcome = Outcome(lock.HaltBootFailed)
	// NotBack: the node has not come back within the maximum downtime.
	NotBack Outcome = Outcome(lock.HaltNotBack)
)

// Halts returns the halt reason of an outcome that halts its group, or "".
func (o Outcome) Halts() lock.HaltReason {
	switch o {
	case NotApplied, BootFailed, NotBack:
		return lock.HaltReason(o)
	}
	return ""
}

// Verdict is the judgement of one approved holder.
type Verdict struct {
	Step Step
	// Phase is the node's status while the cycle goes on.
	Phase string
	// Outcome is set for Release, and for Hold.
	Outcome Outcome
	// Why says it in words, for logs and Events.
	Why string
}

// Input is what a judgement reads. Every field must be fresh: Holder as a
// consistent read of its lock object returned it; Alive from reads of the
// kubelet's Lease made after the steady-state; Node from a consistent GET
// made after both.
type Input struct {
	Holder lock.Holder
	Node   *corev1.Node
	// Alive is true when the kubelet's Lease was renewed Renewals times
	// since Holder's steady-state arrived (see package doc).
	Alive bool
	// Settle is the group's settle time; MaxDowntime, when positive, the
	// longest a node may take to come back.
	Settle, MaxDowntime time.Duration
	Now                 time.Time
}

// Judge decides what becomes of an approved holder. It is a pure function
// of its input; see the package doc for the rules.
func Judge(in Input) Verdict {
	h, n := in.Holder, in.Node
	a := h.Approval
	if a == nil {
		return Verdict{Step: Wait, Phase: annotations.StatusRebooting, Why: "no approval recorded"}
	}
	boot := n.Status.NodeInfo.BootID
	ready := isReady(n)
	steady := h.SteadyStateAt != nil && !h.SteadyStateAt.Before(a.At)
	witness := n.Annotations[annotations.BootID] // the agent's, for its boot
	overdue := in.MaxDowntime > 0 && in.Now.Sub(a.At) > in.MaxDowntime
	notBack := func(phase, why string) Verdict {
		if overdue {
			return Verdict{Step: Hold, Phase: annotations.StatusHalted, Outcome: NotBack,
				Why: fmt.Sprintf("not back %s after the approval: %s", in.MaxDowntime, why)}
		}
		return Verdict{Step: Wait, Phase: phase, Why: why}
	}

	if boot == "" || boot == a.BootID {
		if boot != "" && steady && in.Alive && ready {
			return Verdict{Step: Release, Outcome: NotRebooted,
				Why: "steady-state on the boot the reboot was approved in, and kubelet kept renewing its Lease since"}
		}
		return notBack(annotations.StatusRebooting, "kubelet still reports the boot the reboot was approved in")
	}
	// A new boot.
	if witness == boot && n.Annotations[annotations.BootComplete] == annotations.BootFailed {
		return Verdict{Step: Hold, Phase: annotations.StatusHalted, Outcome: BootFailed,
			Why: "boot-complete.target failed in the new boot: Zincati will not start on it"}
	}
	if !ready {
		v := notBack(annotations.StatusReturning, "booted again, not Ready yet")
		if v.Step == Wait && h.BackAt != nil {
			v.Step = ClearBack
		}
		return v
	}
	if !steady && !(witness == boot && n.Annotations[annotations.BootComplete] == annotations.BootReached) {
		return notBack(annotations.StatusReturning, "Ready, waiting for its steady-state or the agent's boot-complete")
	}
	if in.Settle > 0 {
		if h.BackAt == nil || h.BackBootID != boot {
			// Back, or back again on another boot (a crash while settling).
			return Verdict{Step: MarkBack, Phase: annotations.StatusSettling, Why: "back; settling"}
		}
		if left := h.BackAt.Add(in.Settle).Sub(in.Now); left > 0 {
			return Verdict{Step: Wait, Phase: annotations.StatusSettling, Why: fmt.Sprintf("back; settling for %s more", left.Round(time.Second))}
		}
	}
	from, to := Versions(h, n)
	if from != "" && from == to {
		return Verdict{Step: Release, Outcome: NotApplied,
			Why: fmt.Sprintf("back on the OS version it had before the reboot, %s: the update was not applied", to)}
	}
	return Verdict{Step: Release, Outcome: Completed, Why: fmt.Sprintf("back on %s (was %s)", or(to, "?"), or(from, "?"))}
}

// Versions returns the node's OS version at the approval and now: the
// agent's os-version when it has reported for the current boot, else
// kubelet's osImage.
func Versions(h lock.Holder, n *corev1.Node) (from, to string) {
	a := h.Approval
	if a == nil {
		return "", ""
	}
	if a.OSVersion != "" && n.Annotations[annotations.BootID] == n.Status.NodeInfo.BootID && n.Annotations[annotations.OSVersion] != "" {
		return a.OSVersion, n.Annotations[annotations.OSVersion]
	}
	return a.OSImage, n.Status.NodeInfo.OSImage
}

func isReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func or(s, alt string) string {
	if s == "" {
		return alt
	}
	return s
}
