package lock

import (
	"errors"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rebootmanager/reboot-manager/shared/annotations"
)

func lease(ann map[string]string) *coordinationv1.Lease {
	ann[annotations.LockGroup] = "g"
	return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "fleetlock-g", Annotations: ann}}
}

// TestDecodeSchemas reads each layout a lock object may have, including
// those a version-1 arbiter leaves in a rolling upgrade.
func TestDecodeSchemas(t *testing.T) {
	since := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	approved := Holder{ID: "a", Node: "n1", NodeUID: "u1", Since: since, Phase: PhaseApproved,
		Approval: &Approval{At: since.Add(time.Minute), BootID: "b1", OSImage: "Fedora CoreOS 41", OSVersion: "41.1"}}
	written := lease(map[string]string{})
	if err := encode(written, Object{Group: "g", Holders: []Holder{approved}, LastGrant: since}); err != nil {
		t.Fatal(err)
	}
	withV1 := func(list string) *coordinationv1.Lease {
		l := written.DeepCopy()
		l.Annotations[annotations.LockHolders] = list
		return l
	}
	tests := []struct {
		name    string
		l       *coordinationv1.Lease
		want    []Holder
		wantErr error
	}{
		{"schema 2 round trip", written, []Holder{approved}, nil},
		{"schema 1: list only, no phase", lease(map[string]string{annotations.LockHolders: `[{"id":"a","node":"n1","since":"2026-12-01T10:00:00Z"}]`}),
			[]Holder{{ID: "a", Node: "n1", Since: since}}, nil},
		{"released by a v1 arbiter: the record is left over, not a holder", withV1(`[]`), nil, nil},
		{"taken by a v1 arbiter beside a v2 holder", withV1(`[{"id":"a","node":"n1","since":"2026-12-01T10:00:00Z"},{"id":"b","node":"n2","since":"2026-12-01T10:05:00Z"}]`),
			[]Holder{approved, {ID: "b", Node: "n2", Since: since.Add(5 * time.Minute)}}, nil},
		{"released and taken again by a v1 arbiter: the old record does not apply", withV1(`[{"id":"a","node":"n1","since":"2026-12-01T11:00:00Z"}]`),
			[]Holder{{ID: "a", Node: "n1", Since: since.Add(time.Hour)}}, nil},
		{"newer schema: refused", lease(map[string]string{annotations.LockSchema: "3"}), nil, ErrNewerSchema},
		{"no holders", lease(map[string]string{}), nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode(tt.l)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Decode error = %v, want %v", err, tt.wantErr)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("Decode = %+v, want %+v", got, tt.want)
			}
			for i := range got {
				if !equalHolders(got[i], tt.want[i]) {
					t.Errorf("holder %d = %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
	if written.Annotations[annotations.LockSchema] != "2" || written.Annotations[HolderKey("a")] == "" {
		t.Errorf("encode wrote %v, want the schema and a record per holder", written.Annotations)
	}
	if err := encode(written, Object{Group: "g"}); err != nil {
		t.Fatal(err)
	}
	if _, ok := written.Annotations[HolderKey("a")]; ok {
		t.Error("a released holder's record stayed")
	}
}

// TestHaltRecord: halts survive a round trip, are removed when lifted,
// and an unreadable record still halts the group.
func TestHaltRecord(t *testing.T) {
	at := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	hs := []Halt{{Reason: HaltOperator, Message: "paused by operator ann", At: at},
		{Reason: HaltBootFailed, Node: "n1", Message: "boot-complete.target failed", At: at.Add(time.Minute)}}
	l := lease(map[string]string{})
	if err := encode(l, Object{Group: "g", Halts: hs}); err != nil {
		t.Fatal(err)
	}
	o, err := DecodeObject(l)
	if err != nil || len(o.Halts) != 2 || o.Halts[0] != hs[0] || o.Halts[1] != hs[1] {
		t.Fatalf("decoded halts = %+v (%v), want %+v", o.Halts, err, hs)
	}
	if err := encode(l, Object{Group: "g"}); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Annotations[annotations.LockHalt]; ok {
		t.Error("a lifted halt stayed on the object")
	}
	for _, raw := range []string{"{not json", "[]", `{"reason":"boot_failed"}`} {
		o, err = DecodeObject(lease(map[string]string{annotations.LockHalt: raw}))
		if err != nil || len(o.Halts) != 1 {
			t.Errorf("an unreadable halt record %q decoded to %+v (%v), want one halt: fail closed", raw, o.Halts, err)
		}
	}
	msg := (&HaltedError{Group: "g", Halts: hs}).Error()
	for _, want := range []string{`group "g" is halted: operator: paused by operator ann (since 2026-12-02T10:00:00Z); boot_failed (node n1)`, "resume g"} {
		if !strings.Contains(msg, want) {
			t.Errorf("HaltedError = %q, want it to contain %q", msg, want)
		}
	}
}

// TestCoolOffRecord: cool-offs survive a round trip, count only until
// their time, and an object with none carries no annotation.
func TestCoolOffRecord(t *testing.T) {
	at := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	cs := []CoolOff{{Node: "n1", Until: at, Message: "1 pods remain: ns/web-1"}}
	l := lease(map[string]string{})
	if err := encode(l, Object{Group: "g", CoolOffs: cs}); err != nil {
		t.Fatal(err)
	}
	o, err := DecodeObject(l)
	if err != nil || len(o.CoolOffs) != 1 || o.CoolOffs[0] != cs[0] {
		t.Fatalf("decoded cool-offs = %+v (%v), want %+v", o.CoolOffs, err, cs)
	}
	tests := []struct {
		node string
		now  time.Time
		want bool
	}{
		{"n1", at.Add(-time.Second), true},
		{"n1", at, false},
		{"n2", at.Add(-time.Second), false},
		{"", at.Add(-time.Second), false},
	}
	for _, tt := range tests {
		if _, got := o.CoolingOff(tt.node, tt.now); got != tt.want {
			t.Errorf("CoolingOff(%q, %s) = %v, want %v", tt.node, tt.now, got, tt.want)
		}
	}
	o.pruneCoolOffs(at)
	if err := encode(l, o); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Annotations[annotations.LockCoolOff]; ok {
		t.Error("a cool-off that is over stayed on the object")
	}
	if o, err := DecodeObject(lease(map[string]string{annotations.LockCoolOff: "{not json"})); err != nil || len(o.CoolOffs) != 0 {
		t.Errorf("an unreadable cool-off record decoded to %+v (%v), want it dropped: the group must stay usable", o.CoolOffs, err)
	}
}
