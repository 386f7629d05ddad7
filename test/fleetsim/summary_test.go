package fleetsim

import (
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	host := func(staged, locked, approved, released float64) Timeline {
		return Timeline{Staged: at(staged), Locked: at(locked), Approved: at(approved), Released: at(released)}
	}
	tests := []struct {
		name      string
		timelines []Timeline
		changes   []change
		slots     int
		want      Summary
	}{
		{
			name: "perfect hand-off, one slot",
			// a holds 0–10, b waits from 1 and holds 10–20.
			timelines: []Timeline{host(0, 0, 4, 10), host(1, 10, 14, 20)},
			changes:   []change{{at(0), 1}, {at(10), 1}, {at(20), 0}},
			slots:     1,
			want: Summary{Hosts: 2, Finished: 2, Makespan: 20 * time.Second, LockWait: 9 * time.Second,
				Drain: 8 * time.Second, Reboot: 12 * time.Second, MaxHolders: 1, Ratio: 1},
		},
		{
			name: "a wasted tick between the release and the next ask",
			// a releases at 10; b, waiting since 1, asks again only at 13.
			timelines: []Timeline{host(0, 0, 4, 10), host(1, 13, 17, 23)},
			changes:   []change{{at(0), 1}, {at(10), 0}, {at(13), 1}, {at(23), 0}},
			slots:     1,
			want: Summary{Hosts: 2, Finished: 2, Makespan: 23 * time.Second, LockWait: 12 * time.Second,
				Drain: 8 * time.Second, Reboot: 12 * time.Second, Idle: 3 * time.Second, MaxHolders: 1, Ratio: 23.0 / 20},
		},
		{
			name:      "a violation seen by the watch",
			timelines: []Timeline{host(0, 0, 1, 2), host(0, 0, 1, 2)},
			changes:   []change{{at(0), 2}, {at(2), 0}},
			slots:     1,
			want: Summary{Hosts: 2, Finished: 2, Makespan: 2 * time.Second, Drain: 2 * time.Second, Reboot: 2 * time.Second,
				MaxHolders: 2, Violations: 1, Ratio: 0.5},
		},
		{
			name:      "an unfinished host",
			timelines: []Timeline{host(0, 0, 1, 2), {Staged: at(0)}},
			changes:   []change{{at(0), 1}, {at(2), 0}},
			slots:     1,
			want: Summary{Hosts: 2, Finished: 1, Makespan: 2 * time.Second, Drain: time.Second, Reboot: time.Second,
				MaxHolders: 1, Ratio: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := summarize(tt.timelines, tt.changes, tt.slots, at(0), at(100)); got != tt.want {
				t.Errorf("summarize =\n %+v\nwant\n %+v", got, tt.want)
			}
		})
	}
}
