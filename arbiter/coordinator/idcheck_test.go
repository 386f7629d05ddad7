package coordinator

import (
	"context"
	"log/slog"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// TestConfirmID: an approval uses the id check started in its request only
// while it is at most IDCheckAge old; else it lists the Nodes again.
func TestConfirmID(t *testing.T) {
	tests := []struct {
		name      string
		started   bool          // a check was started
		age       time.Duration // how long before the approval
		wantLists int           // LookupFresh calls in all
	}{
		{"no check (approved before, drained again): a list now", false, 0, 1},
		{"a check just started: its list", true, 0, 1},
		{"a check at the age limit: its list", true, IDCheckAge, 1},
		{"an older check: a list now", true, IDCheckAge + time.Millisecond, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fake{found: []*corev1.Node{node("n1", "")}}
			c := New(Deps{f, &f.memLock, f, f, f}, Config{}, nil, slog.New(slog.DiscardHandler))
			start := time.Now()
			c.now = func() time.Time { return start }
			var k *idCheck
			if tt.started {
				k = c.startIDCheck(context.Background(), "id")
				defer k.stop()
			}
			c.now = func() time.Time { return start.Add(tt.age) }
			found, err := c.confirmID(context.Background(), k, "id")
			if err != nil || len(found) != 1 || found[0].Name != "n1" {
				t.Fatalf("confirmID = %v, %v; want n1", found, err)
			}
			if k != nil {
				k.stop()
			}
			if _, n := idChecks(f.calls); n != tt.wantLists {
				t.Errorf("%d Nodes lists, want %d", n, tt.wantLists)
			}
		})
	}
}
