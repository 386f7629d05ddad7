package operator

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/reference"

	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/arbiter/nodes"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/zincatiid"
)

// ErrNotHeld is returned by Release when the target holds no slot.
var ErrNotHeld = errors.New("holds no reboot slot")

// Released is what Release did.
type Released struct {
	// Target is what the operator named: a node or an id.
	Target string `json:"target"`
	// Slots are the slots freed.
	Slots []ReleasedSlot `json:"slots"`
	// Node is the node behind the target, when there is one.
	Node string `json:"node,omitempty"`
	// Uncordoned is true when the node was put back in service.
	Uncordoned bool `json:"uncordoned"`
	// Note says what happens to the node next.
	Note string `json:"note,omitempty"`
}

// ReleasedSlot is one freed slot.
type ReleasedSlot struct {
	Group       string `json:"group"`
	ID          string `json:"id"`
	HeldSeconds int64  `json:"heldSeconds"`
}

// String is the confirmation message.
func (r Released) String() string {
	var b strings.Builder
	for _, s := range r.Slots {
		fmt.Fprintf(&b, "released the reboot slot of %s (id %s) in group %q, held for %s\n",
			r.Target, s.ID, s.Group, time.Duration(s.HeldSeconds)*time.Second)
	}
	if r.Note != "" {
		fmt.Fprintln(&b, r.Note)
	}
	return b.String()
}

var zincatiIDPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)

// Release frees, by hand, every slot held by target: a Node name or a
// Zincati id. Each release is a compare-and-swap on the lock object, so it
// is safe against the arbiter and other operators acting at the same time.
// A node that was draining is then put back in service as the arbiter would:
// uncordoned only if the arbiter cordoned it. A node whose reboot was
// approved stays cordoned until it reboots. It returns an error wrapping
// ErrNotHeld when nothing was held.
func Release(ctx context.Context, client kubernetes.Interface, where Where, target string) (Released, error) {
	r := Released{Target: target, Slots: []ReleasedSlot{}}
	node, err := client.CoreV1().Nodes().Get(ctx, target, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		node = nil
		if !zincatiIDPattern.MatchString(target) {
			return r, fmt.Errorf("%q is neither a Node nor a Zincati id (32 lowercase hex digits)", target)
		}
	case err != nil:
		return r, fmt.Errorf("get node %s: %w", target, err)
	default:
		r.Node = node.Name
	}
	ids := map[string]bool{target: true}
	if node != nil {
		if id := node.Annotations[annotations.ZincatiID]; id != "" {
			ids[id] = true
		}
		if id, err := zincatiid.FromMachineID(node.Status.NodeInfo.MachineID); err == nil {
			ids[id] = true
		}
	}

	sem := lock.New(client.CoordinationV1(), nil, where.Namespace)
	held, err := sem.Fresh(ctx)
	if err != nil {
		return r, fmt.Errorf("read the reboot slots: %w", err)
	}
	now := time.Now()
	events := syncRecorder{client: client}
	approvedBoot := "" // the boot id of a released approval of node, if any
	holding := ""      // the node's released holding
	for group, holders := range held {
		if !slices.ContainsFunc(holders, func(h lock.Holder) bool { return ids[h.ID] || (node != nil && h.Node == node.Name) }) {
			continue
		}
		gone, err := sem.ReleaseMatching(ctx, group, func(h lock.Holder) bool {
			return ids[h.ID] || (node != nil && h.Node == node.Name)
		})
		if err != nil {
			return r, fmt.Errorf("release the slot of %s: %w", target, err)
		}
		for _, h := range gone {
			if node != nil && h.Node == node.Name {
				holding = h.Holding(group)
			}
			if h.Stage() == lock.PhaseApproved && h.Approval != nil && node != nil && h.Node == node.Name {
				approvedBoot = h.Approval.BootID
			}
			held := now.Sub(h.Since).Round(time.Second)
			r.Slots = append(r.Slots, ReleasedSlot{Group: group, ID: h.ID, HeldSeconds: int64(held.Seconds())})
			ref := &corev1.ObjectReference{APIVersion: "coordination.k8s.io/v1", Kind: "Lease", Namespace: where.Namespace, Name: lock.ObjectName(group)}
			if h.Node != "" {
				ref = &corev1.ObjectReference{Kind: "Node", Name: h.Node, UID: types.UID(h.Node)}
			}
			events.Eventf(ref, corev1.EventTypeWarning, "SlotReleasedByHand",
				"reboot slot in group %q (id %s, %s, held for %s) released by hand", group, h.ID, h.Stage(), held)
		}
	}
	if len(r.Slots) == 0 {
		return r, fmt.Errorf("%s %w", target, ErrNotHeld)
	}
	if node == nil {
		return r, nil
	}

	// Put the node back in service, as the arbiter's reconciler would.
	dir := nodes.NewUncached(client, events)
	fresh, err := client.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
	if err != nil {
		r.Note = fmt.Sprintf("could not read node %s after the release (%v); the arbiter will put it back in service", node.Name, err)
		return r, nil
	}
	switch {
	case approvedBoot != "" && fresh.Status.NodeInfo.BootID == approvedBoot:
		r.Note = fmt.Sprintf("node %s was approved to reboot and has not yet: it stays cordoned until it reboots "+
			"(run `kubectl uncordon %s` if it never will)", node.Name, node.Name)
	case nodes.InCycle(fresh):
		ours := fresh.Spec.Unschedulable && fresh.Annotations[annotations.CordonedBy] == annotations.CordonOwner
		if err := dir.Finish(ctx, node.Name, holding); err != nil {
			r.Note = fmt.Sprintf("could not put node %s back in service (%v); the arbiter will retry", node.Name, err)
			return r, nil
		}
		r.Uncordoned = ours
		r.Note = fmt.Sprintf("node %s is back in service", node.Name)
		if ours {
			r.Note = fmt.Sprintf("node %s is uncordoned and back in service", node.Name)
		}
	}
	return r, nil
}

// syncRecorder writes each Event at once, for a command that exits right
// after: client-go's broadcaster sends in the background and would lose
// them. It implements record.EventRecorder.
type syncRecorder struct {
	client kubernetes.Interface
}

// Event implements record.EventRecorder.
func (s syncRecorder) Event(obj runtime.Object, eventType, reason, message string) {
	ref, err := reference.GetReference(scheme.Scheme, obj)
	if err != nil {
		return
	}
	ns := ref.Namespace
	if ns == "" {
		ns = metav1.NamespaceDefault
	}
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: ref.Name + ".", Namespace: ns},
		InvolvedObject: *ref,
		Reason:         reason,
		Message:        message,
		Type:           eventType,
		Source:         corev1.EventSource{Component: "reboot-manager-cli"},
		FirstTimestamp: now,
		LastTimestamp:  now,
		Count:          1,
	}
	// An Event is informational: failing to write one must not fail the
	// command, whose own output says what happened.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _ = s.client.CoreV1().Events(ns).Create(ctx, ev, metav1.CreateOptions{})
}

// Eventf implements record.EventRecorder.
func (s syncRecorder) Eventf(obj runtime.Object, eventType, reason, format string, args ...any) {
	s.Event(obj, eventType, reason, fmt.Sprintf(format, args...))
}

// AnnotatedEventf implements record.EventRecorder.
func (s syncRecorder) AnnotatedEventf(obj runtime.Object, _ map[string]string, eventType, reason, format string, args ...any) {
	s.Eventf(obj, eventType, reason, format, args...)
}
