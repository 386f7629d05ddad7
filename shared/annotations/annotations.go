// Package annotations defines, once, the rebootmanager/* keys that the
// arbiter and the agent write on Nodes and lock objects, and the node status
// values.
package annotations

// Keys on Node objects.
const (
	// Status is the node's place in the reboot cycle; see the Status values.
	Status = "rebootmanager/status"
	// ZincatiID is the node's Zincati id, published by the agent.
	ZincatiID = "rebootmanager/zincati-id"
	// CredentialSHA256 is the SHA-256 of the host's FleetLock credential,
	// published by the agent. Requests for a Node that carries it must carry
	// the credential; deleting it asks the agent to rotate the credential.
	CredentialSHA256 = "rebootmanager/credential-sha256"
	// CredentialPreviousSHA256 is the hash of the credential Zincati may
	// still run while a new one waits for Zincati's restart; the agent
	// removes it once Zincati has restarted with the new one.
	CredentialPreviousSHA256 = "rebootmanager/credential-previous-sha256"
	// OSVersion is VERSION from the host's os-release, published by the
	// agent; an approval records it when present.
	OSVersion = "rebootmanager/os-version"
	// BootID is the host's boot id, published by the agent: its witness of
	// which boot the other values are about.
	BootID = "rebootmanager/boot-id"
	// BootComplete is how systemd's boot-complete.target stands in that
	// boot: "reached", "pending" or "failed" (Zincati, which requires it,
	// then never starts), published by the agent.
	BootComplete = "rebootmanager/boot-complete"
	// Group is the reboot group the node holds a slot in.
	Group = "rebootmanager/group"
	// Since is when the node took its slot (RFC 3339).
	Since = "rebootmanager/since"
	// Holding names the slot holding whose cycle the node is in (group, id
	// and when it took the slot); the end of that cycle removes it, and never
	// a later cycle's.
	Holding = "rebootmanager/holding"
	// CordonedBy is "rebootmanager" when the arbiter cordoned the node; an
	// admin's cordon never carries it, so the arbiter never undoes one.
	CordonedBy = "rebootmanager/cordoned-by"
	// ApprovedBootID is the node's boot id when its reboot was approved; a
	// different boot id means the reboot happened.
	ApprovedBootID = "rebootmanager/approved-boot-id"
	// LastReboot says how the node's last completed reboot cycle moved it:
	// "FROM → TO" versions and when, e.g. "41.1 → 41.2 at 2026-12-02T10:00:00Z".
	LastReboot = "rebootmanager/last-reboot"
	// DrainMessage says why the drain is stuck: refused evictions, a timeout.
	DrainMessage = "rebootmanager/drain-message"
	// DrainFailed says, after a drain that yielded its slot, what blocked
	// it and when the node may retry: "retry after T: pods ...".
	DrainFailed = "rebootmanager/drain-failed"
	// Waiting says why the node's last pre-reboot was turned away before it
	// took a slot (the group is full, say). It is not part of the cycle: a
	// waiting node is still in service.
	Waiting = "rebootmanager/waiting"
	// WaitingAt is when the node last asked and was turned away (RFC 3339),
	// refreshed at most every few minutes.
	WaitingAt = "rebootmanager/waiting-at"
)

// Label on Nodes.
const (
	// GroupLabel selects the node's reboot group; the agent writes it into
	// Zincati's configuration.
	GroupLabel = "rebootmanager/group"
)

// Keys on lock objects.
const (
	// LockGroup holds the raw FleetLock group a lock object belongs to.
	LockGroup = "rebootmanager/group"
	// LockSchema is the version of the lock object's layout (absent: 1).
	LockSchema = "rebootmanager/schema"
	// LockHolders holds the JSON list of slot holders: their membership;
	// each holder's whole record is in an annotation of its own.
	LockHolders = "rebootmanager/holders"
	// LockLastGrant is when a slot was last granted (RFC 3339 with
	// nanoseconds), for the group's minimum gap.
	LockLastGrant = "rebootmanager/last-grant"
	// LockHalt, when set, holds the JSON list of why the group is halted:
	// no slot is granted and no reboot approved until it is lifted.
	LockHalt = "rebootmanager/halt"
	// LockCoolOff holds the JSON list of nodes cooling off after a drain
	// that yielded its slot: each is refused a slot until its time.
	LockCoolOff = "rebootmanager/cool-off"
	// LockLine holds the JSON list of the hosts waiting for a slot, in
	// order of first arrival, so every replica grants in the same order.
	LockLine = "rebootmanager/line"
)

// CordonOwner is the value of CordonedBy.
const CordonOwner = "rebootmanager"

// Values of Status.
const (
	StatusReady     = "Ready"
	StatusDraining  = "Draining"
	StatusRebooting = "Rebooting"
	// StatusWaitingForVolumes: the node is empty; the volumes of its
	// evicted pods are not yet detached.
	StatusWaitingForVolumes = "WaitingForVolumes"
	// StatusReturning: the node booted again, but is not yet Ready, or
	// neither Zincati nor the agent has said the boot completed.
	StatusReturning = "Returning"
	// StatusSettling: the node is back; its group's settle time runs.
	StatusSettling = "Settling"
	// StatusHalted: the node's cycle failed and halted its group.
	StatusHalted = "Halted"
	// StatusDrainFailed: the node's drain did not finish in time and gave
	// its slot back; the node is in service again, and may retry after
	// the time in DrainFailed. It is not part of a cycle.
	StatusDrainFailed = "DrainFailed"
)

// Values of BootComplete.
const (
	BootReached = "reached"
	BootPending = "pending"
	BootFailed  = "failed"
)
