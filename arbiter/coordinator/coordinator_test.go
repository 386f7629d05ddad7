package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rebootmanager/reboot-manager/arbiter/drain"
	"github.com/rebootmanager/reboot-manager/arbiter/groups"
	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/credential"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
)

// fake is the node directory, drainer, settings and gate around a memLock;
// it records every call by name.
type fake struct {
	memLock
	found     []*corev1.Node // what Lookup returns (the cache)
	fresh     []*corev1.Node // what LookupFresh returns
	cordoned  bool           // what Fresh returns (the API server)
	pending   drain.Pending
	finishErr error
	gateErr   error
	notReady  error
	// releaseOnPending empties the lock when the pods are listed.
	releaseOnPending bool
	// yieldOnPending also turns n1 away for a cool-off.
	yieldOnPending bool
	// idMoved: the fresh node carries another id than the cache said.
	idMoved bool
	marked  bool // the node carries the mark of id's holding (see holding)
	// recordUnprotected records NoNodeCredential Events too.
	recordUnprotected bool
	// freshHash is the credential hash the fresh node carries, though the
	// cache shows none.
	freshHash string
	// inUse are the fresh node's volumesInUse; attached the volumes still
	// attached.
	inUse    []corev1.UniqueVolumeName
	attached []lock.Volume
}

func (f *fake) call(s string) { f.mu.Lock(); f.calls = append(f.calls, s); f.mu.Unlock() }

func (f *fake) Lookup(string) ([]*corev1.Node, error) { return f.found, nil }
func (f *fake) LookupFresh(context.Context, string) ([]*corev1.Node, error) {
	f.call("LookupFresh")
	if f.fresh == nil {
		return f.found, nil
	}
	return f.fresh, nil
}
func (f *fake) Fresh(_ context.Context, name string) (*corev1.Node, error) {
	f.call("Fresh")
	return f.node(name), nil
}

// node is the node as the API server holds it.
func (f *fake) node(name string) *corev1.Node {
	ann := map[string]string{annotations.ZincatiID: "id"}
	if f.marked {
		ann[annotations.Holding] = holdingMark("id")
	}
	if f.idMoved {
		ann[annotations.ZincatiID] = "another-id"
	}
	if f.freshHash != "" {
		ann[annotations.CredentialSHA256] = f.freshHash
	}
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann, Labels: map[string]string{annotations.GroupLabel: "g"}}, Spec: corev1.NodeSpec{Unschedulable: f.cordoned},
		Status: corev1.NodeStatus{NodeInfo: corev1.NodeSystemInfo{BootID: "boot-1"}, VolumesInUse: f.inUse}}
}
func (f *fake) SetPhase(_ context.Context, _, _, phase string) error {
	f.call("SetPhase(" + phase + ")")
	return nil
}
func (f *fake) Attached(context.Context, string, []lock.Volume) ([]lock.Volume, error) {
	f.call("Attached")
	return f.attached, nil
}

// StartDrain returns the node as the cordon left it, as the patch's
// response does.
func (f *fake) StartDrain(_ context.Context, n *corev1.Node, _, holding string) (*corev1.Node, error) {
	f.call("StartDrain")
	f.cordoned, f.marked = true, holding == holdingMark("id")
	return f.node(n.Name), nil
}
func (f *fake) MarkRebooting(context.Context, string, string) error {
	f.call("MarkRebooting")
	return nil
}
func (f *fake) SetWaiting(_ context.Context, _, reason string) error {
	f.call("SetWaiting(" + reason + ")")
	return nil
}
func (f *fake) Finish(_ context.Context, name, _ string) error {
	f.call("Finish(" + name + ")")
	return f.finishErr
}
func (f *fake) Event(_ *corev1.Node, _, reason, _ string, _ ...any) {
	if reason == "NoNodeCredential" && !f.recordUnprotected {
		return // every test node has none; TestUnprotectedWarnedOnce counts them
	}
	f.call("Event(" + reason + ")")
}
func (f *fake) Pending(context.Context, string) (drain.Pending, error) {
	f.call("Pending")
	if f.releaseOnPending { // another replica releases the slot meanwhile
		f.mu.Lock()
		f.holders = nil
		f.mu.Unlock()
	}
	if f.yieldOnPending { // the leader's drainer yields the slot meanwhile
		f.mu.Lock()
		f.holders = nil
		f.coolOffs = []lock.CoolOff{{Node: "n1", Until: time.Now().Add(time.Hour), Message: "1 pods remain"}}
		f.mu.Unlock()
	}
	return f.pending, nil
}
func (f *fake) Enqueue(string)             { f.call("Enqueue") }
func (f *fake) For(string) groups.Settings { return groups.Settings{Slots: 1} }
func (f *fake) Ready() error               { return f.notReady }
func (f *fake) Check(context.Context, string, groups.Settings, string) error {
	f.call("Check")
	return f.gateErr
}

func node(name string, status string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{}, Labels: map[string]string{annotations.GroupLabel: "g"}}}
	if status != "" {
		n.Annotations[annotations.Status] = status
	}
	return n
}

func inGroup(name, group string) *corev1.Node {
	n := node(name, "")
	if group == "" {
		delete(n.Labels, annotations.GroupLabel)
	} else {
		n.Labels[annotations.GroupLabel] = group
	}
	return n
}

func waiting() *corev1.Node {
	n := node("n1", annotations.StatusReady)
	n.Annotations[annotations.Waiting] = "group full"
	return n
}

// holdingMark is the node mark of id's holding as holding makes it.
func holdingMark(id string) string { return holding(id, "", "")[0].Holding("g") }

func holding(id, node string, phase lock.Phase) []lock.Holder {
	return []lock.Holder{{ID: id, Node: node, Phase: phase, Since: time.Unix(1, 0)}}
}

// withVolumes gives holders an evicted pod's volume, pv1.
func withVolumes(hs []lock.Holder) []lock.Holder {
	for i := range hs {
		hs[i].Volumes = []lock.Volume{{PV: "pv1", UniqueName: "kubernetes.io/csi/d^h1"}}
	}
	return hs
}

var onePod = drain.Pending{Pods: []corev1.Pod{{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p"}}}}

// TestDecide covers every combination of the decision's fresh inputs.
func TestDecide(t *testing.T) {
	phases := []lock.Phase{"", lock.PhaseTaken, lock.PhaseDraining, lock.PhaseApproved}
	pendings := map[string]drain.Pending{
		"empty": {}, "pods": onePod, "unevictable": {Problems: []string{"no controller"}},
	}
	want := func(p lock.Phase, identified, rebooted, cordoned bool, pods string, volumesClear bool) step {
		switch {
		case !identified:
			return stepRefuse
		case rebooted && p == lock.PhaseApproved:
			return stepReturned
		case !cordoned:
			return stepCordon
		case pods != "empty" && p == lock.PhaseDraining:
			return stepWait
		case pods != "empty":
			return stepCordon
		case p == lock.PhaseApproved:
			return stepConfirm
		case !volumesClear:
			return stepVolumes
		}
		return stepApprove
	}
	approvals := 0
	for _, p := range phases {
		for _, identified := range []bool{false, true} {
			for _, rebooted := range []bool{false, true} {
				for _, cordoned := range []bool{false, true} {
					for name, pending := range pendings {
						for _, vc := range []bool{false, true} {
							got := decide(lock.Holder{Phase: p}, identified, rebooted, cordoned, pending, vc)
							if w := want(p, identified, rebooted, cordoned, name, vc); got != w {
								t.Errorf("decide(phase %q, identified %v, rebooted %v, cordoned %v, %s, volumes clear %v) = %s, want %s", p, identified, rebooted, cordoned, name, vc, got, w)
							}
							if got == stepApprove || got == stepConfirm {
								approvals++
								if !identified || !cordoned || !pending.Done() || (rebooted && p == lock.PhaseApproved) || (got == stepApprove && !vc) {
									t.Errorf("decide(phase %q, identified %v, rebooted %v, cordoned %v, %s, volumes clear %v) = %s: a 200 for a node not identified, cordoned and empty, with volumes attached, or a second one after its reboot",
										p, identified, rebooted, cordoned, name, vc, got)
								}
							}
						}
					}
				}
			}
		}
	}
	// Identified, cordoned and empty: per rebooted value, the three phases
	// before an approval with their volumes clear, and the approved one
	// (which no longer looks at volumes) unless it rebooted since.
	if want := 2*(len(phases)-1) + 2; approvals != want {
		t.Errorf("%d combinations answer 200, want %d", approvals, want)
	}
}

func TestPreReboot(t *testing.T) {
	n1 := node("n1", "")
	tests := []struct {
		name      string
		f         *fake
		allow     bool
		wantKind  fleetlock.Kind // "" for approved
		wantValue string
		wantCalls string
		wantPhase lock.Phase // of id's holding afterwards; "" for none
	}{
		{"settings not read: 503", &fake{notReady: errors.New("no ConfigMap")}, false, fleetlock.KindUnavailable, "no ConfigMap", "", ""},
		{"unknown node", &fake{}, false, fleetlock.KindUnknownNode, "deploy the reboot-manager agent", "", ""},
		{"unknown node allowed: semaphore only, confirmed fresh", &fake{}, true, "", "", "LookupFresh Acquire Check", lock.PhaseTaken},
		{"unknown to the cache, known fresh: drained", &fake{fresh: []*corev1.Node{n1}, pending: onePod}, true, fleetlock.KindDrainInProgress, "a/p",
			"LookupFresh List Acquire Fresh Check Advance(Draining) StartDrain Enqueue Pending Enqueue LookupFresh", lock.PhaseDraining},
		{"unknown host holding a slot for a node: refused", &fake{memLock: memLock{holders: holding("id", "n1", lock.PhaseDraining)}}, true,
			fleetlock.KindAmbiguousID, "node n1", "LookupFresh Acquire", lock.PhaseDraining},
		{"the cache shows no credential, the fresh node does: refused before a slot", &fake{found: []*corev1.Node{n1}, freshHash: credential.Hash("secret")}, false,
			fleetlock.KindUnauthorized, "wrong credential", "List Acquire Fresh", ""},
		{"another group than the node's: refused, nothing read", &fake{found: []*corev1.Node{inGroup("n1", "db")}}, false,
			fleetlock.KindWrongGroup, `in group "db"`, "", ""},
		{"another group than the node's, but its cycle is there: goes on", &fake{found: []*corev1.Node{inGroup("n1", "db")}, cordoned: true, marked: true,
			memLock: memLock{holders: holding("id", "n1", lock.PhaseDraining)}}, false,
			"", "", "List Acquire Fresh Pending LookupFresh Advance(Approved) Event(Drained) MarkRebooting", lock.PhaseApproved},
		{"the label says nothing: the default group", &fake{found: []*corev1.Node{inGroup("n1", "")}}, false,
			fleetlock.KindWrongGroup, `in group "default"`, "", ""},
		{"group full", &fake{found: []*corev1.Node{n1}, memLock: memLock{holders: holding("x", "n9", lock.PhaseDraining)}}, false,
			fleetlock.KindLockHeld, "n9", `List Acquire Fresh Check SetWaiting(group "g" is full: all 1 slots are held)`, ""},
		{"gate refuses: no slot taken", &fake{found: []*corev1.Node{n1}, gateErr: fleetlock.Errorf(fleetlock.KindPaused, "paused")}, false,
			fleetlock.KindPaused, "paused", "List Acquire Fresh Check SetWaiting(paused)", ""},
		{"gate cannot list pods: fails closed", &fake{found: []*corev1.Node{n1}, gateErr: errors.New("apiserver down")}, false,
			fleetlock.KindInternal, "apiserver down", "List Acquire Fresh Check", ""},
		{"holder: gate skipped on the fresh lock", &fake{found: []*corev1.Node{n1}, cordoned: true, marked: true, memLock: memLock{holders: holding("id", "n1", lock.PhaseDraining)}, gateErr: errors.New("x")}, false,
			"", "", "List Acquire Fresh Pending LookupFresh Advance(Approved) Event(Drained) MarkRebooting", lock.PhaseApproved},
		{"halted group, new holder: refused before the gate", &fake{found: []*corev1.Node{n1}, memLock: memLock{halt: &lock.Halt{Reason: lock.HaltBootFailed, Node: "n9", Message: "boot failed"}}}, false,
			fleetlock.KindHalted, "boot_failed (node n9)", "List Acquire SetWaiting(" + (&lock.HaltedError{Group: "g", Halts: []lock.Halt{{Reason: lock.HaltBootFailed, Node: "n9", Message: "boot failed"}}}).Error() + ")", ""},
		{"halted group, draining holder, empty node: no approval", &fake{found: []*corev1.Node{n1}, cordoned: true, marked: true,
			memLock: memLock{holders: holding("id", "n1", lock.PhaseDraining), halt: &lock.Halt{Reason: lock.HaltOperator, Message: "paused"}}}, false,
			fleetlock.KindHalted, "operator", "List Acquire Fresh Pending LookupFresh", lock.PhaseDraining},
		{"halted group, already approved: the repeat 200 stands", &fake{found: []*corev1.Node{n1}, cordoned: true, marked: true,
			memLock: memLock{holders: holding("id", "n1", lock.PhaseApproved), halt: &lock.Halt{Reason: lock.HaltOperator, Message: "paused"}}}, false,
			"", "", "List Acquire Fresh Pending MarkRebooting", lock.PhaseApproved},
		{"empty, an evicted pod's volume still in use: 423 naming it", &fake{found: []*corev1.Node{n1}, cordoned: true, marked: true,
			inUse:   []corev1.UniqueVolumeName{"kubernetes.io/csi/d^h1"},
			memLock: memLock{holders: withVolumes(holding("id", "n1", lock.PhaseDraining))}}, false,
			fleetlock.KindDrainInProgress, "volumesInUse): pv1", "List Acquire Fresh Pending Fresh SetPhase(WaitingForVolumes) LookupFresh", lock.PhaseDraining},
		{"empty, unmounted, still attached: 423 naming the VolumeAttachment", &fake{found: []*corev1.Node{n1}, cordoned: true, marked: true, attached: []lock.Volume{{PV: "pv1"}},
			memLock: memLock{holders: withVolumes(holding("id", "n1", lock.PhaseDraining))}}, false,
			fleetlock.KindDrainInProgress, "VolumeAttachments of volumes of evicted pods to be deleted (detached): pv1", "List Acquire Fresh Pending Fresh Attached SetPhase(WaitingForVolumes) LookupFresh", lock.PhaseDraining},
		{"empty, volumes detached: approved", &fake{found: []*corev1.Node{n1}, cordoned: true, marked: true,
			memLock: memLock{holders: withVolumes(holding("id", "n1", lock.PhaseDraining))}}, false,
			"", "", "List Acquire Fresh Pending Fresh Attached LookupFresh Advance(Approved) Event(Drained) MarkRebooting", lock.PhaseApproved},
		{"lock contention fails closed", &fake{found: []*corev1.Node{n1}, memLock: memLock{err: lock.ErrContention}}, false, fleetlock.KindUnavailable, "", "List Acquire", ""},
		{"newer lock schema fails closed", &fake{found: []*corev1.Node{n1}, memLock: memLock{err: lock.ErrNewerSchema}}, false, fleetlock.KindUnavailable, "", "List Acquire", ""},
		{"lock error", &fake{found: []*corev1.Node{n1}, memLock: memLock{err: errors.New("boom")}}, false, fleetlock.KindInternal, "boom", "List Acquire", ""},
		{"new holder, pods remain: cordon, drain", &fake{found: []*corev1.Node{n1}, pending: onePod}, false, fleetlock.KindDrainInProgress, "1 pods remain: a/p",
			"List Acquire Fresh Check Advance(Draining) StartDrain Enqueue Pending Enqueue LookupFresh", lock.PhaseDraining},
		{"unevictable pod blocks", &fake{found: []*corev1.Node{n1}, pending: drain.Pending{Problems: []string{"no controller: a/p"}}},
			false, fleetlock.KindDrainInProgress, "no controller", "List Acquire Fresh Check Advance(Draining) StartDrain Enqueue Pending Enqueue LookupFresh", lock.PhaseDraining},
		{"new holder of an empty node is cordoned before the approval", &fake{found: []*corev1.Node{n1}}, false, "", "",
			"List Acquire Fresh Check Advance(Draining) StartDrain Enqueue Pending LookupFresh Advance(Approved) Event(Drained) MarkRebooting", lock.PhaseApproved},
		{"stale node mirror says Rebooting, new holder: still drained", &fake{found: []*corev1.Node{node("n1", annotations.StatusRebooting)}, pending: onePod}, false,
			fleetlock.KindDrainInProgress, "a/p", "List Acquire Fresh Check Advance(Draining) StartDrain Enqueue Pending Enqueue LookupFresh", lock.PhaseDraining},
		{"approved, still cordoned and empty: 200, no write", &fake{found: []*corev1.Node{n1}, cordoned: true, marked: true, memLock: memLock{holders: holding("id", "n1", lock.PhaseApproved)}}, false,
			"", "", "List Acquire Fresh Pending MarkRebooting", lock.PhaseApproved},
		{"approved, released before the confirmation: not 200", &fake{found: []*corev1.Node{n1}, cordoned: true, marked: true, memLock: memLock{holders: holding("id", "n1", lock.PhaseApproved)}, releaseOnPending: true}, false,
			fleetlock.KindLockHeld, "released", "List Acquire Fresh Pending Get", ""},
		{"drained as the drain yields: drain_failed, never 200", &fake{found: []*corev1.Node{n1}, cordoned: true, marked: true, memLock: memLock{holders: holding("id", "n1", lock.PhaseDraining)}, yieldOnPending: true}, false,
			fleetlock.KindDrainFailed, "may take one again after", "List Acquire Fresh Pending LookupFresh Get", ""},
		{"cooling off, seen in the cache: drain_failed at once", &fake{found: []*corev1.Node{n1}, memLock: memLock{cached: true, coolOffs: []lock.CoolOff{{Node: "n1", Until: time.Now().Add(time.Hour), Message: "1 pods remain"}}}}, false,
			fleetlock.KindDrainFailed, "1 pods remain", "", ""},
		{"cooled off: a slot again", &fake{found: []*corev1.Node{n1}, memLock: memLock{cached: true, coolOffs: []lock.CoolOff{{Node: "n1", Until: time.Now().Add(-time.Second)}}}}, false,
			"", "", "List Acquire Fresh Check Advance(Draining) StartDrain Enqueue Pending LookupFresh Advance(Approved) Event(Drained) MarkRebooting", lock.PhaseApproved},
		{"approved, uncordoned by hand: drained again", &fake{found: []*corev1.Node{n1}, memLock: memLock{holders: holding("id", "n1", lock.PhaseApproved)}, pending: onePod}, false,
			fleetlock.KindDrainInProgress, "a/p", "List Acquire Fresh Advance(Draining) StartDrain Enqueue Pending Enqueue", lock.PhaseDraining},
		{"the fresh node no longer carries the id: refused, never approved", &fake{found: []*corev1.Node{n1}, cordoned: true, idMoved: true}, false,
			fleetlock.KindAmbiguousID, "no longer carries it", "List Acquire Fresh Check LookupFresh", lock.PhaseTaken},
		{"ambiguous id, no slot: refused, both named", &fake{found: []*corev1.Node{n1, node("n2", "")}}, false,
			fleetlock.KindAmbiguousID, "n1, n2", "Get Event(AmbiguousZincatiID) Event(AmbiguousZincatiID)", ""},
		{"ambiguous id holding a slot: the lock object's node is drained, but no 200 while the id is ambiguous", &fake{found: []*corev1.Node{n1, node("n2", "")}, cordoned: true, marked: true, memLock: memLock{holders: holding("id", "n2", lock.PhaseDraining)}}, false,
			fleetlock.KindAmbiguousID, "n1, n2", "Get List Acquire Fresh Pending LookupFresh", lock.PhaseDraining},
		{"slot held for another node than the id names now", &fake{found: []*corev1.Node{n1}, memLock: memLock{holders: holding("id", "n2", lock.PhaseDraining)}}, false,
			fleetlock.KindAmbiguousID, "n2", "List Acquire", lock.PhaseDraining},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tt.f
			c := New(Deps{f, &f.memLock, f, f, f}, Config{AllowUnknownNodes: tt.allow, Token: hostsToken}, nil, slog.New(slog.DiscardHandler))
			err := c.PreReboot(withToken(context.Background()), fleetlock.ClientParams{ID: "id", Group: "g"})
			if tt.wantKind == "" && err != nil {
				t.Fatalf("PreReboot = %v, want approval", err)
			}
			if tt.wantKind != "" && (!fleetlock.IsKind(err, tt.wantKind) || !strings.Contains(err.Error(), tt.wantValue)) {
				t.Fatalf("PreReboot = %v, want %s containing %q", err, tt.wantKind, tt.wantValue)
			}
			// The id check runs alongside the cycle: where it falls among
			// the calls varies, how many there are does not.
			got, gotChecks := idChecks(f.calls)
			want, wantChecks := idChecks(strings.Fields(tt.wantCalls))
			if got != want || gotChecks != wantChecks {
				t.Errorf("calls = %q, want %q", strings.Join(f.calls, " "), tt.wantCalls)
			}
			var phase lock.Phase
			for _, h := range f.holders {
				if h.ID == "id" {
					phase = h.Stage()
				}
			}
			if phase != tt.wantPhase {
				t.Errorf("phase afterwards = %q, want %q", phase, tt.wantPhase)
			}
		})
	}
}

// TestReleasedWhileWaiting: a slot released while its pre-reboot waits for
// the drain is never approved.
func TestReleasedWhileWaiting(t *testing.T) {
	f := &fake{found: []*corev1.Node{node("n1", "")}, pending: onePod}
	c := New(Deps{f, &f.memLock, f, f, f}, Config{MaxWait: time.Minute, DrainPoll: 5 * time.Millisecond}, nil, slog.New(slog.DiscardHandler))
	done := make(chan error, 1)
	go func() { done <- c.PreReboot(context.Background(), fleetlock.ClientParams{ID: "id", Group: "g"}) }()
	for len(f.Cached("g")) == 0 || f.Cached("g")[0].Stage() != lock.PhaseDraining {
		time.Sleep(time.Millisecond)
	}
	if _, err := f.ReleaseMatching(context.Background(), "g", func(lock.Holder) bool { return true }); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.pending = drain.Pending{}
	f.mu.Unlock()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("approved after its slot was released")
		}
		if !fleetlock.IsKind(err, fleetlock.KindLockHeld) {
			t.Errorf("answer = %v, want lock_held", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no answer")
	}
}

func TestSteadyState(t *testing.T) {
	n1 := node("n1", "")
	other := func(g string) []lock.Holder { return holding("other-id", "n1", lock.PhaseApproved) }
	tests := []struct {
		name      string
		f         *fake
		wantKind  fleetlock.Kind
		wantCalls string
		wantLeft  int
	}{
		{"ready non-holder: one fresh list, nothing else", &fake{found: []*corev1.Node{node("n1", annotations.StatusReady)}}, "", "List", 0},
		{"waiting non-holder: the mark goes", &fake{found: []*corev1.Node{waiting()}}, "", "List SetWaiting()", 0},
		{"unknown non-holder", &fake{}, "", "List", 0},
		{"holder outside the cluster, no token configured: kept", &fake{memLock: memLock{holders: holding("id", "", lock.PhaseApproved)}}, fleetlock.KindUnauthorized, "Get", 1},
		{"approved holder: the steady-state is recorded, the slot kept for the node's return", &fake{found: []*corev1.Node{n1}, memLock: memLock{holders: holding("id", "n1", lock.PhaseApproved)}},
			"", "Get Fresh SteadyState", 1},
		{"draining holder (Zincati gave up the reboot): released, then finished", &fake{found: []*corev1.Node{n1}, memLock: memLock{holders: holding("id", "n1", lock.PhaseDraining)}}, "", "Get Fresh SteadyState Finish(n1)", 0},
		{"node's id changed mid-cycle: found by node", &fake{found: []*corev1.Node{n1}, memLock: memLock{holders: other("g")}}, "", "Get Fresh SteadyState", 1},
		{"ambiguous id: only the id's own holding", &fake{found: []*corev1.Node{n1, node("n2", "")}, memLock: memLock{holders: append(holding("id", "n2", lock.PhaseDraining), holding("x", "n1", lock.PhaseDraining)...)}},
			"", "Get Fresh SteadyState Finish(n2)", 1},
		{"approved holder, the cache still shows it draining: kept, never uncordoned (one fresh read proves both)", &fake{found: []*corev1.Node{node("n1", annotations.StatusDraining)}, memLock: memLock{holders: holding("id", "n1", lock.PhaseApproved)}},
			"", "Get Fresh SteadyState", 1},
		{"node mirror in cycle, nothing held: finished", &fake{found: []*corev1.Node{node("n1", annotations.StatusDraining)}}, "", "List Fresh Finish(n1)", 0},
		{"the cache shows a holding a fresh read no longer has: every group listed, nothing released", &fake{found: []*corev1.Node{n1}, memLock: memLock{stale: holding("id", "n1", lock.PhaseDraining)}},
			"", "Get List Fresh", 0},
		{"the same, node mirror in cycle: every group listed before the leftover cycle ends", &fake{found: []*corev1.Node{node("n1", annotations.StatusDraining)}, memLock: memLock{stale: holding("id", "n1", lock.PhaseDraining)}},
			"", "Get List Fresh Finish(n1)", 0},
		{"node mirror in cycle, the group read holds the id on another node: every group listed, the leftover cycle ends", &fake{found: []*corev1.Node{node("n1", annotations.StatusDraining)}, memLock: memLock{holders: holding("id", "n2", lock.PhaseApproved)}},
			"", "Get List Fresh Fresh SteadyState Finish(n1)", 1},
		{"lock list fails: not 200", &fake{found: []*corev1.Node{n1}, memLock: memLock{holders: holding("id", "n1", lock.PhaseApproved), err: errors.New("down")}}, fleetlock.KindInternal, "Get Fresh", 1},
		{"the cache shows no credential, the fresh holder node does: refused, nothing released", &fake{found: []*corev1.Node{n1}, freshHash: credential.Hash("secret"),
			memLock: memLock{holders: holding("id", "n1", lock.PhaseApproved)}}, fleetlock.KindUnauthorized, "Get Fresh", 1},
		{"ambiguous id: the holder node's fresh credential decides", &fake{found: []*corev1.Node{n1, node("n2", "")}, freshHash: credential.Hash("secret"),
			memLock: memLock{holders: holding("id", "n2", lock.PhaseApproved)}}, fleetlock.KindUnauthorized, "Get Fresh", 1},
		{"finish fails after release: not 200, but released", &fake{found: []*corev1.Node{n1}, memLock: memLock{holders: holding("id", "n1", lock.PhaseDraining)}, finishErr: errors.New("down")}, fleetlock.KindInternal, "Get Fresh SteadyState Finish(n1)", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tt.f
			c := New(Deps{f, &f.memLock, f, f, f}, Config{}, nil, slog.New(slog.DiscardHandler))
			err := c.SteadyState(context.Background(), fleetlock.ClientParams{ID: "id", Group: "g"})
			if (tt.wantKind == "") != (err == nil) || (err != nil && !fleetlock.IsKind(err, tt.wantKind)) {
				t.Fatalf("SteadyState = %v, want kind %q", err, tt.wantKind)
			}
			// The node's fresh read may start alongside the lock reads:
			// the reads before the first write are compared in a fixed
			// order, lock reads first.
			calls := slices.Clone(f.calls)
			reads := slices.IndexFunc(calls, func(c string) bool { return c != "Get" && c != "List" && c != "Fresh" })
			if reads < 0 {
				reads = len(calls)
			}
			lockFirst := func(a, b string) int {
				switch {
				case a != "Fresh" && b == "Fresh":
					return -1
				case a == "Fresh" && b != "Fresh":
					return 1
				}
				return 0
			}
			slices.SortStableFunc(calls[:reads], lockFirst)
			got := strings.Join(calls, " ")
			if got != tt.wantCalls {
				t.Errorf("calls = %q, want %q", got, tt.wantCalls)
			}
			if left := len(f.holders); left != tt.wantLeft {
				t.Errorf("holders left = %d (%s), want %d", left, fmt.Sprint(f.holders), tt.wantLeft)
			}
		})
	}
}

// idChecks returns calls without the id checks (LookupFresh), and how many
// there were.
func idChecks(calls []string) (string, int) {
	rest := slices.DeleteFunc(slices.Clone(calls), func(c string) bool { return c == "LookupFresh" })
	return strings.Join(rest, " "), len(calls) - len(rest)
}
