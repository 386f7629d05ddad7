package e2e

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rebootmanager/reboot-manager/arbiter/lock"
)

// TestLineRefusalPlace: against the real API server, a host that the
// gate turns away for now (a closed window) keeps its place in the line
// kept in the lock object, and one marked LosePlace (a blocker) loses it.
func TestLineRefusalPlace(t *testing.T) {
	tests := []struct {
		name    string
		refusal error
		inLine  bool
	}{
		{"a closed window keeps the place", errors.New("outside its maintenance windows"), true},
		{"a blocker costs it", lock.LosePlace(errors.New("blocked")), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			s := lock.New(cluster.Client.CoordinationV1(), nil, cluster.Namespace(t))
			lim := lock.Limits{Slots: 1, Line: lock.Line{Length: 4, Until: time.Now().Add(lock.Presence)}}
			if _, err := s.Acquire(ctx, "g", lock.Holder{ID: "h"}, lim, nil); err != nil {
				t.Fatal(err)
			}
			if res, err := s.Acquire(ctx, "g", lock.Holder{ID: "a"}, lim, nil); err != nil || res.Granted || res.Place != 0 {
				t.Fatalf("Acquire in a full group = %+v, %v, want a place in line", res, err)
			}
			lim.Slots = 2 // a slot frees: "a" would be granted, but is turned away
			if _, err := s.Acquire(ctx, "g", lock.Holder{ID: "a"}, lim, func() error { return tt.refusal }); !errors.Is(err, tt.refusal) {
				t.Fatalf("Acquire = %v, want the refusal", err)
			}
			o, err := s.Get(ctx, "g")
			if err != nil {
				t.Fatal(err)
			}
			if got := len(o.Line) == 1 && o.Line[0].ID == "a"; got != tt.inLine || len(o.Holders) != 1 {
				t.Errorf("after the refusal: holders %+v, line %+v; want one holder and in line: %v", o.Holders, o.Line, tt.inLine)
			}
		})
	}
}
