package coordinator

import (
	"github.com/rebootmanager/reboot-manager/arbiter/drain"
	"github.com/rebootmanager/reboot-manager/arbiter/lock"
)

// step is what a pre-reboot of a slot holder does next.
type step int

const (
	// stepCordon: cordon the node and record the holder as Draining, then
	// look again.
	stepCordon step = iota
	// stepWait: pods remain; have them evicted, and answer 423 (or wait).
	stepWait
	// stepApprove: record the approval by compare-and-swap; only if that
	// succeeds, answer 200.
	stepApprove
	// stepConfirm: the reboot was approved and nothing changed since: 200
	// again, with no write (the lock is recursive).
	stepConfirm
	// stepRefuse: the node no longer carries the id that asks: this is not
	// the host the slot was taken for.
	stepRefuse
	// stepReturned: the approved reboot has happened; its cycle ends when
	// the node is back (package finish), never with another 200.
	stepReturned
	// stepVolumes: the pods are gone, their volumes not yet detached:
	// answer 423 (or wait).
	stepVolumes
)

func (s step) String() string {
	return [...]string{"cordon", "wait", "approve", "confirm", "refuse", "returned", "volumes"}[s]
}

// decide is the pre-reboot decision for a node whose id holds a slot. It is
// a pure function of fresh inputs only:
//
//   - h, the holder's record as the caller's own compare-and-swap (or a
//     consistent read) of the lock object returned it;
//   - identified, whether that node, in a consistent GET made in this
//     request (or the object this request's own cordon wrote, as the API
//     server returned it), still carries the id that asks (its
//     agent-published id, or the id its machine id derives to): the cache
//     that named it may lag;
//   - rebooted, whether that GET shows another boot id than the one the
//     approval recorded (false before an approval);
//   - cordoned, the node's spec.unschedulable from the same GET;
//   - pending, the node's pods from a consistent LIST made after that GET;
//   - volumesClear, whether the volumes of the pods the drain evicted are
//     all detached (or the wait for their detach has timed out), read
//     after that LIST (see Coordinator.volumesLeft).
//
// It never reads a cache or a node annotation: those lag, and a 200 lets
// Zincati reboot. A holder new in this request (PhaseTaken) is always
// cordoned before it can be approved, unless the fresh GET shows the node
// already unschedulable; every approval needs the node cordoned and empty,
// and is given once per boot: a node that rebooted since its approval asks
// again only when its update failed, and its cycle must end first.
func decide(h lock.Holder, identified, rebooted, cordoned bool, pending drain.Pending, volumesClear bool) step {
	switch {
	case !identified:
		return stepRefuse
	case rebooted && h.Stage() == lock.PhaseApproved:
		return stepReturned
	case !cordoned:
		return stepCordon
	case !pending.Done() && h.Stage() == lock.PhaseDraining:
		return stepWait
	case !pending.Done():
		// Taken, or Approved with pods back on the node: drain (again).
		return stepCordon
	case h.Stage() == lock.PhaseApproved:
		return stepConfirm
	case !volumesClear:
		return stepVolumes
	default:
		return stepApprove
	}
}
