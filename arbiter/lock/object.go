package lock

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/rebootmanager/reboot-manager/shared/annotations"
)

// Schema is the version of the lock object's layout that this code writes.
//
//   - 1 (no rebootmanager/schema annotation): the holders are a JSON list of
//     {id, node, since} in rebootmanager/holders.
//   - 2: each holder also has an annotation of its own,
//     rebootmanager/holder.<hash of its id>, holding its whole record (phase,
//     node uid, what the approval saw). The version-1 list is still written,
//     as the membership: a version-1 arbiter in a rolling upgrade reads and
//     changes only that list, so an id is a holder exactly when the list
//     names it, and its own annotation adds the details.
//
// A halted group also carries rebootmanager/halt. An arbiter older than the
// halt keeps that annotation when it rewrites the object, but does not
// enforce it: in a rolling upgrade, the old replicas may grant a slot in a
// halted group until they are replaced.
//
// Code never rewrites an object of a newer schema than its own: it fails
// closed with ErrNewerSchema.
const Schema = 2

// ErrNewerSchema is returned for a lock object written by a newer arbiter,
// which this one must neither interpret nor rewrite.
var ErrNewerSchema = errors.New("lock object has a newer schema than this arbiter understands; upgrade the arbiter")

// Phase is a holder's place in the reboot cycle.
type Phase string

// The phases, in cycle order. A holder recorded by a version-1 arbiter has
// no phase: treat it as PhaseTaken.
const (
	// PhaseTaken: the slot is taken; the node is not yet cordoned.
	PhaseTaken Phase = "Taken"
	// PhaseDraining: the node is cordoned and its pods are being evicted.
	PhaseDraining Phase = "Draining"
	// PhaseApproved: the node was empty and its reboot approved.
	PhaseApproved Phase = "Approved"
)

// Holder is one holder of a slot, as its lock object records it.
type Holder struct {
	// ID is the Zincati id that took the slot.
	ID string `json:"id"`
	// Node is the Node the id mapped to, if any.
	Node string `json:"node,omitempty"`
	// NodeUID is that Node's uid: a Node re-created under the same name is
	// another node.
	NodeUID types.UID `json:"nodeUID,omitempty"`
	// Since is when the slot was taken.
	Since time.Time `json:"since"`
	// Phase is the holder's place in the cycle.
	Phase Phase `json:"phase,omitempty"`
	// Approval is what the node was when its reboot was approved.
	Approval *Approval `json:"approval,omitempty"`
	// DrainingSince is when the holding last moved to Draining: its drain
	// timeout counts from then.
	DrainingSince *time.Time `json:"drainingSince,omitempty"`
	// ApprovedBefore is set when an approved holding is drained again
	// (pods came back before the reboot): it was answered 200 once, so
	// its drain never yields.
	ApprovedBefore bool `json:"approvedBefore,omitempty"`
	// SteadyStateAt is when the holder's steady-state arrived after the
	// approval: the slot is released only once its node is back too.
	SteadyStateAt *time.Time `json:"steadyStateAt,omitempty"`
	// BackAt is when the node was first seen back after the reboot, on the
	// boot BackBootID, for the group's settle time; cleared if it stops
	// being Ready meanwhile.
	BackAt     *time.Time `json:"backAt,omitempty"`
	BackBootID string     `json:"backBootID,omitempty"`
	// Failed are the ways this holding's cycle failed, each recorded once
	// (and its group halted): a resumed group is not halted again for it.
	Failed []HaltReason `json:"failed,omitempty"`
	// Volumes are the PersistentVolumes of the pods the drain evicted,
	// recorded before the evictions: the reboot waits until the node no
	// longer holds them.
	Volumes []Volume `json:"volumes,omitempty"`
	// UnmountedAt is when the node was first seen listing none of Volumes
	// in use; the wait for their detach is bounded from then.
	UnmountedAt *time.Time `json:"unmountedAt,omitempty"`
}

// Volume is a PersistentVolume an evicted pod used.
type Volume struct {
	// PV is the PersistentVolume's name, as VolumeAttachments name it.
	PV string `json:"pv"`
	// UniqueName is its name in a Node's volumesInUse ("" when unknown).
	UniqueName string `json:"uniqueName,omitempty"`
}

// HaltReason says why a group is halted.
type HaltReason string

// The halt reasons.
const (
	// HaltBootFailed: the agent reported boot-complete.target failed.
	HaltBootFailed HaltReason = "boot_failed"
	// HaltUpdateNotApplied: the node came back on the OS version it had.
	HaltUpdateNotApplied HaltReason = "update_not_applied"
	// HaltNotBack: the node did not come back within the maximum downtime.
	HaltNotBack HaltReason = "not_back"
	// HaltOperator: a person paused the group.
	HaltOperator HaltReason = "operator"
)

// Halt records why a group is halted. While it is, no new slot is granted
// and no reboot is approved; holders already approved still finish.
type Halt struct {
	// Reason is the kind of failure.
	Reason HaltReason `json:"reason"`
	// Node is the node whose cycle failed, if any.
	Node string `json:"node,omitempty"`
	// Message says what happened, for people.
	Message string `json:"message"`
	// At is when the group was halted.
	At time.Time `json:"at"`
}

// String is the halt in one line.
func (h Halt) String() string {
	s := string(h.Reason)
	if h.Node != "" {
		s += " (node " + h.Node + ")"
	}
	return s + ": " + h.Message
}

// HaltedError refuses a grant or an approval in a halted group.
type HaltedError struct {
	Group string
	Halts []Halt
}

func (e *HaltedError) Error() string {
	why := make([]string, len(e.Halts))
	for i, h := range e.Halts {
		why[i] = h.String() + " (since " + h.At.UTC().Format(time.RFC3339) + ")"
	}
	return fmt.Sprintf("group %q is halted: %s; lift it with `kubectl reboot-manager resume %s`",
		e.Group, strings.Join(why, "; "), e.Group)
}

// CoolOff turns a node away after its drain yielded: its drain did not
// finish within the group's drain timeout, so it gave its slot back, and it
// may take one again only after Until.
type CoolOff struct {
	// Node is the node whose drain failed.
	Node string `json:"node"`
	// Until is when the node may take a slot again.
	Until time.Time `json:"until"`
	// Message names what blocked the drain: the pods left and the
	// disruption budgets that refused them.
	Message string `json:"message"`
}

// CoolingOffError refuses a slot to a node that is cooling off after a
// failed drain.
type CoolingOffError struct {
	Group   string
	CoolOff CoolOff
}

func (e *CoolingOffError) Error() string {
	return fmt.Sprintf("node %s's drain failed and gave its slot in group %q back; it may take one again after %s (%s)",
		e.CoolOff.Node, e.Group, e.CoolOff.Until.UTC().Format(time.RFC3339), e.CoolOff.Message)
}

// CoolingOff returns the cool-off of node in effect at now, if any.
func (o *Object) CoolingOff(node string, now time.Time) (CoolOff, bool) {
	for _, c := range o.CoolOffs {
		if node != "" && c.Node == node && now.Before(c.Until) {
			return c, true
		}
	}
	return CoolOff{}, false
}

// Equal reports whether two records are the same in every field.
func (h Holder) Equal(o Holder) bool { return equalHolders(h, o) }

// failed reports whether the holding's failure with reason was recorded.
func (h Holder) failed(reason HaltReason) bool { return slices.Contains(h.Failed, reason) }

// Approval records the node as it was when its reboot was approved, so the
// end of the cycle can be told from the ground truth.
type Approval struct {
	// At is when the reboot was approved.
	At time.Time `json:"at"`
	// BootID is the node's status.nodeInfo.bootID then.
	BootID string `json:"bootID,omitempty"`
	// OSImage is the node's status.nodeInfo.osImage then.
	OSImage string `json:"osImage,omitempty"`
	// OSVersion is the agent's rebootmanager/os-version then, if any.
	OSVersion string `json:"osVersion,omitempty"`
}

// Who names the holder for replies and logs: its node, or a reference that
// is not its id for a host outside the cluster.
func (h Holder) Who() string {
	if h.Node != "" {
		return h.Node
	}
	return "a host outside the cluster (ref " + h.Ref() + ")"
}

// Ref names the holder without its id, which for a host outside the
// cluster is all it takes to act for it: the first 8 hex digits of the id's
// SHA-256, as in its annotation's key.
func (h Holder) Ref() string {
	return strings.TrimPrefix(HolderKey(h.ID), holderKeyPrefix)[:8]
}

// Holding names this holding of a slot in group, for the node's
// rebootmanager/holding mark: the group, the id and when it took the slot.
func (h Holder) Holding(group string) string {
	return group + " " + h.ID + " " + h.Since.UTC().Format(time.RFC3339Nano)
}

// Stage returns the holder's phase, PhaseTaken for a holder recorded
// without one.
func (h Holder) Stage() Phase {
	if h.Phase == "" {
		return PhaseTaken
	}
	return h.Phase
}

// Object is a group's lock object as one read of the API server returned
// it: the truth of the group's cycle at ResourceVersion.
type Object struct {
	// Group is the raw FleetLock group.
	Group string
	// Holders are the slot holders, oldest first.
	Holders []Holder
	// LastGrant is when a slot was last granted.
	LastGrant time.Time
	// Halts, when any, are why the group is halted: each failure, and a
	// person's pause, until a resume lifts them all.
	Halts []Halt
	// CoolOffs are the nodes whose drain failed and gave its slot back:
	// each is refused a new slot until its Until.
	CoolOffs []CoolOff
	// Line are the hosts waiting for a slot, by first arrival.
	Line []Waiter
	// ResourceVersion is the version read; a write is conditional on it.
	ResourceVersion string
}

// Holder returns the holder with id, if any.
func (o *Object) Holder(id string) (Holder, bool) {
	i := slices.IndexFunc(o.Holders, func(h Holder) bool { return h.ID == id })
	if i < 0 {
		return Holder{}, false
	}
	return o.Holders[i], true
}

// put replaces the holder with h.ID, or adds h.
func (o *Object) put(h Holder) {
	if i := slices.IndexFunc(o.Holders, func(x Holder) bool { return x.ID == h.ID }); i >= 0 {
		o.Holders[i] = h
		return
	}
	o.Holders = append(o.Holders, h)
}

// Remove drops every holder that match selects and returns them.
func (o *Object) Remove(match func(Holder) bool) []Holder {
	var gone []Holder
	o.Holders = slices.DeleteFunc(o.Holders, func(h Holder) bool {
		if match(h) {
			gone = append(gone, h)
			return true
		}
		return false
	})
	return gone
}

// holderKeyPrefix starts the annotation of each holder's record.
const holderKeyPrefix = "rebootmanager/holder."

// HolderKey is the annotation that holds the record of the holder id: one
// annotation per holder, so an admission policy can check each without
// decoding a list.
func HolderKey(id string) string {
	sum := sha256.Sum256([]byte(id))
	return holderKeyPrefix + hex.EncodeToString(sum[:16])
}

// legacyHolder is a holder in the version-1 list.
type legacyHolder struct {
	ID    string    `json:"id"`
	Node  string    `json:"node,omitempty"`
	Since time.Time `json:"since"`
}

// Decode returns the holders recorded on a lock object, oldest first.
func Decode(l *coordinationv1.Lease) ([]Holder, error) {
	o, err := decode(l)
	if err != nil {
		return nil, err
	}
	return o.Holders, nil
}

// DecodeObject returns the whole lock object: holders, last grant and halt.
func DecodeObject(l *coordinationv1.Lease) (Object, error) { return decode(l) }

func decode(l *coordinationv1.Lease) (Object, error) {
	o := Object{Group: l.Annotations[annotations.LockGroup], ResourceVersion: l.ResourceVersion}
	if v := l.Annotations[annotations.LockSchema]; v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return o, fmt.Errorf("lock object %s: schema %q is not a number", l.Name, v)
		}
		if n > Schema {
			return o, fmt.Errorf("lock object %s is schema %d, this arbiter writes %d: %w", l.Name, n, Schema, ErrNewerSchema)
		}
	}
	o.LastGrant, _ = time.Parse(time.RFC3339Nano, l.Annotations[annotations.LockLastGrant])
	if raw := l.Annotations[annotations.LockHalt]; raw != "" {
		if err := json.Unmarshal([]byte(raw), &o.Halts); err != nil || len(o.Halts) == 0 {
			// Unreadable is still halted: fail closed, and say so.
			o.Halts = []Halt{{Reason: HaltOperator, Message: fmt.Sprintf("unreadable halt record %q: %v", raw, err)}}
		}
	}
	if raw := l.Annotations[annotations.LockCoolOff]; raw != "" {
		// A cool-off only turns a node away for a while, and a node given a
		// slot again drains again: an unreadable record is dropped rather
		// than fail every operation on the group.
		if err := json.Unmarshal([]byte(raw), &o.CoolOffs); err != nil {
			o.CoolOffs = nil
		}
	}
	if raw := l.Annotations[annotations.LockLine]; raw != "" {
		// A line is an order, never a permission: an unreadable one is
		// dropped, and rebuilt by the next arrivals.
		if err := json.Unmarshal([]byte(raw), &o.Line); err != nil {
			o.Line = nil
		}
	}
	var members []legacyHolder
	if raw := l.Annotations[annotations.LockHolders]; raw != "" {
		if err := json.Unmarshal([]byte(raw), &members); err != nil {
			return o, fmt.Errorf("decode holders of lock object %s: %w", l.Name, err)
		}
	}
	for _, m := range members {
		h := Holder{ID: m.ID, Node: m.Node, Since: m.Since}
		if raw, ok := l.Annotations[HolderKey(m.ID)]; ok {
			var rec Holder
			if err := json.Unmarshal([]byte(raw), &rec); err != nil {
				return o, fmt.Errorf("decode holder %s of lock object %s: %w", m.ID, l.Name, err)
			}
			// The record counts only if it is this holding's: a version-1
			// arbiter may have released the id and granted it again.
			if rec.ID == m.ID && rec.Since.Equal(m.Since) {
				h = rec
			}
		}
		o.Holders = append(o.Holders, h)
	}
	return o, nil
}

// encode writes o's holders into l: the schema, the membership list, one
// record per holder, and spec.holderIdentity for `kubectl get leases`.
// Records of holders that are gone are removed.
func encode(l *coordinationv1.Lease, o Object) error {
	if l.Annotations == nil {
		l.Annotations = map[string]string{}
	}
	for k := range l.Annotations {
		if strings.HasPrefix(k, holderKeyPrefix) {
			delete(l.Annotations, k)
		}
	}
	members := make([]legacyHolder, len(o.Holders))
	names := make([]string, len(o.Holders))
	for i, h := range o.Holders {
		members[i] = legacyHolder{ID: h.ID, Node: h.Node, Since: h.Since}
		rec, err := json.Marshal(h)
		if err != nil {
			return fmt.Errorf("encode holder %s: %w", h.ID, err)
		}
		l.Annotations[HolderKey(h.ID)] = string(rec)
		names[i] = h.Node
		if names[i] == "" {
			names[i] = h.ID
		}
	}
	raw, err := json.Marshal(members)
	if err != nil {
		return fmt.Errorf("encode holders: %w", err)
	}
	l.Annotations[annotations.LockSchema] = strconv.Itoa(Schema)
	l.Annotations[annotations.LockHolders] = string(raw)
	if !o.LastGrant.IsZero() {
		l.Annotations[annotations.LockLastGrant] = o.LastGrant.UTC().Format(time.RFC3339Nano)
	}
	for _, a := range []struct {
		key  string
		n    int
		list any
	}{
		{annotations.LockHalt, len(o.Halts), o.Halts},
		{annotations.LockCoolOff, len(o.CoolOffs), o.CoolOffs},
		{annotations.LockLine, len(o.Line), o.Line},
	} {
		// A list annotation is there only while its list is not empty.
		delete(l.Annotations, a.key)
		if a.n == 0 {
			continue
		}
		raw, err := json.Marshal(a.list)
		if err != nil {
			return fmt.Errorf("encode %s: %w", a.key, err)
		}
		l.Annotations[a.key] = string(raw)
	}
	l.Spec.HolderIdentity = nil
	if len(names) > 0 {
		who := strings.Join(names, ",")
		l.Spec.HolderIdentity = &who
	}
	return nil
}
