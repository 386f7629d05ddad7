package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// metric returns the value of the sample of name whose labels include
// labels, read from the arbiter's /metrics: a counter's or gauge's value, a
// histogram's count. ok is false when there is no such sample.
func metric(t testing.TB, a *arbiter, name string, labels map[string]string) (v float64, ok bool) {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(getBody(t, a.probe+"metrics")))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	f, found := families[name]
	if !found {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue next
			}
		}
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue(), true
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue(), true
		case dto.MetricType_HISTOGRAM:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// TestMetricsAndMaxHold: a PDB-blocked drain counts pdb_blocked evictions,
// then ok ones and a drain duration; a slot held past --max-hold gets one
// LockHeldTooLong Event and counts as overdue but is not released; a deleted
// node's slot release is counted.
func TestMetricsAndMaxHold(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := cluster.Client
	ns := cluster.Namespace(t)
	target := guardedNode(ctx, t, ns)
	newNodes(t, ns, 1, func(_ int, s *fixtures.NodeSpec) { s.Name += "-spare" })
	group := fleetlock.DefaultGroup // the group of nodes without a label

	a := startArbiter(t, ns, "--max-hold", "3s")
	harness.Eventually(t, 30*time.Second, "evictions refused by the PDB counted", func() error {
		if err := a.preReboot(target.id, group); !fleetlock.IsKind(err, fleetlock.KindDrainInProgress) {
			t.Fatalf("pre-reboot = %v, want drain_in_progress", err)
		}
		if v, _ := metric(t, a, "rebootmanager_evictions_total", map[string]string{"result": "pdb_blocked"}); v < 1 {
			return fmt.Errorf("pdb_blocked evictions = %v", v)
		}
		return nil
	})
	if v, _ := metric(t, a, "rebootmanager_evictions_total", map[string]string{"result": "ok"}); v != 0 {
		t.Errorf("ok evictions while the PDB blocks every pod = %v, want 0", v)
	}

	// Past --max-hold: one Warning Event, overdue, and the slot still held.
	harness.Eventually(t, 20*time.Second, "LockHeldTooLong", func() error {
		evs := nodeEvents(ctx, t, target.name, "LockHeldTooLong")
		if len(evs) == 0 {
			return fmt.Errorf("no LockHeldTooLong Event")
		}
		if evs[0].Count != 1 || !strings.Contains(evs[0].Message, "not released automatically") {
			return fmt.Errorf("event = %d× %q", evs[0].Count, evs[0].Message)
		}
		return nil
	})
	if v, ok := metric(t, a, "rebootmanager_slots_overdue", map[string]string{"group": group}); !ok || v != 1 {
		t.Errorf("rebootmanager_slots_overdue = %v (present %v), want 1", v, ok)
	}
	if h := holders(t, ns, group); len(h) != 1 {
		t.Fatalf("holders past --max-hold = %v, want the slot kept", h)
	}
	time.Sleep(2 * time.Second) // several reconcile passes: still a single Event
	if evs := nodeEvents(ctx, t, target.name, "LockHeldTooLong"); len(evs) != 1 || evs[0].Count != 1 {
		t.Errorf("LockHeldTooLong Events after more passes: %d objects, want 1 with count 1", len(evs))
	}

	must(t, fixtures.SetMinAvailable(ctx, c, ns, "web", 0))
	harness.Eventually(t, 60*time.Second, "reboot approved", func() error { return a.preReboot(target.id, group) })
	if v, _ := metric(t, a, "rebootmanager_evictions_total", map[string]string{"result": "ok"}); v < 2 {
		t.Errorf("ok evictions after the drain = %v, want at least 2", v)
	}
	if v, ok := metric(t, a, "rebootmanager_drain_duration_seconds", map[string]string{"group": group}); !ok || v != 1 {
		t.Errorf("drain durations observed = %v (present %v), want 1", v, ok)
	}

	// The node is deleted while holding the slot: the release is counted.
	fixtures.DeleteNodes(ctx, c, target.name)
	harness.Eventually(t, 20*time.Second, "stale-lock release counted", func() error {
		if v, _ := metric(t, a, "rebootmanager_stale_lock_releases_total", map[string]string{"group": group}); v != 1 {
			return fmt.Errorf("stale-lock releases = %v", v)
		}
		return nil
	})
}
