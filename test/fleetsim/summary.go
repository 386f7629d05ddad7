package fleetsim

import (
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"
)

// Summary is a rollout's account.
type Summary struct {
	// Hosts and Finished count the fleet and the hosts that rebooted and
	// reported back.
	Hosts, Finished int
	// Makespan runs from the first staged update to the last release.
	Makespan time.Duration
	// LockWait, Drain and Reboot sum, over the hosts, the time from staged to
	// slot taken, from slot taken to approval, and from approval to the node
	// Ready on its new boot. Return sums the time from Ready to the slot's
	// release: the server's own delay.
	LockWait, Drain, Reboot, Return time.Duration
	// Idle is slot time wasted: free slots, counted only while some host
	// waited for one.
	Idle time.Duration
	// MaxHolders is the most slots held at once, as the watch on the lock
	// object saw it; Violations counts the changes that put the holders
	// over Slots.
	MaxHolders, Violations int
	// Inversions counts the pairs of finished hosts granted a slot in the
	// other order than they first asked for one.
	Inversions int
	// Ratio is Makespan over the ideal, (Drain+Reboot)/Slots: 1.0 means no
	// slot ever stood idle while a host waited, and each was released the
	// moment its node was back.
	Ratio float64
}

// summarize accounts for a rollout from the hosts' timelines and the lock
// object's holder counts.
func summarize(timelines []Timeline, changes []change, slots int, start, end time.Time) Summary {
	s := Summary{Hosts: len(timelines)}
	first, last := end, start
	for _, t := range timelines {
		if !t.Staged.IsZero() && t.Staged.Before(first) {
			first = t.Staged
		}
		if t.Released.IsZero() {
			continue
		}
		s.Finished++
		if t.Released.After(last) {
			last = t.Released
		}
		if !t.Locked.IsZero() {
			s.LockWait += t.Locked.Sub(t.Staged)
			s.Drain += t.Approved.Sub(t.Locked)
		}
		up := t.Up
		if up.IsZero() {
			up = t.Released
		}
		s.Reboot += up.Sub(t.Approved)
		s.Return += t.Released.Sub(up)
	}
	if last.After(first) {
		s.Makespan = last.Sub(first)
	}
	for _, c := range changes {
		s.MaxHolders = max(s.MaxHolders, c.holders)
		if c.holders > slots {
			s.Violations++
		}
	}
	s.Idle = idle(timelines, changes, slots)
	s.Inversions = inversions(timelines)
	if busy := s.Drain + s.Reboot; busy > 0 && slots > 0 {
		s.Ratio = float64(s.Makespan) / (float64(busy) / float64(slots))
	}
	return s
}

// inversions counts the pairs of finished hosts whose slots were taken in
// the other order than their first requests went out.
func inversions(timelines []Timeline) int {
	n := 0
	for i, a := range timelines {
		for _, b := range timelines[i+1:] {
			if a.Released.IsZero() || b.Released.IsZero() || a.Locked.IsZero() || b.Locked.IsZero() {
				continue
			}
			if a.Staged.Before(b.Staged) != a.Locked.Before(b.Locked) {
				n++
			}
		}
	}
	return n
}

// idle sums, over time, the free slots that a waiting host could have
// taken: min(free slots, hosts waiting for one).
func idle(timelines []Timeline, changes []change, slots int) time.Duration {
	var times []time.Time
	for _, c := range changes {
		times = append(times, c.at)
	}
	for _, t := range timelines {
		if !t.Staged.IsZero() && !t.Locked.IsZero() {
			times = append(times, t.Staged, t.Locked)
		}
	}
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	var total time.Duration
	for i := 0; i+1 < len(times); i++ {
		at, next := times[i], times[i+1]
		holders := 0
		for _, c := range changes {
			if !c.at.After(at) {
				holders = c.holders
			}
		}
		waiting := 0
		for _, t := range timelines {
			if !t.Staged.IsZero() && !t.Locked.IsZero() && !t.Staged.After(at) && t.Locked.After(at) {
				waiting++
			}
		}
		if free := min(slots-holders, waiting); free > 0 {
			total += time.Duration(free) * next.Sub(at)
		}
	}
	return total
}

// String is the summary in one table.
func (s Summary) String() string {
	return fmt.Sprintf("hosts %d/%d  makespan %s  Σlock-wait %s  Σdrain %s  Σreboot %s  Σreturn %s  idle %s  max holders %d  violations %d  inversions %d  makespan/ideal %.2f",
		s.Finished, s.Hosts, s.Makespan.Round(time.Millisecond), s.LockWait.Round(time.Millisecond), s.Drain.Round(time.Millisecond),
		s.Reboot.Round(time.Millisecond), s.Return.Round(time.Millisecond), s.Idle.Round(time.Millisecond), s.MaxHolders, s.Violations, s.Inversions, s.Ratio)
}

// WriteTimelines prints one line per host, times relative to the first
// staged update.
func WriteTimelines(w io.Writer, timelines []Timeline) error {
	var zero time.Time
	for _, t := range timelines {
		if !t.Staged.IsZero() && (zero.IsZero() || t.Staged.Before(zero)) {
			zero = t.Staged
		}
	}
	rel := func(at time.Time) string {
		if at.IsZero() {
			return "-"
		}
		return at.Sub(zero).Round(10 * time.Millisecond).String()
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTAGED\tASKS\tLOCKED\tAPPROVED\tSTEADY\tUP\tRELEASED\tERROR")
	for _, t := range timelines {
		errText := "-"
		if t.Err != nil {
			errText = t.Err.Error()
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Host.Node, rel(t.Staged), t.Asks, rel(t.Locked),
			rel(t.Approved), rel(t.SteadyState), rel(t.Up), rel(t.Released), errText)
	}
	return tw.Flush()
}
