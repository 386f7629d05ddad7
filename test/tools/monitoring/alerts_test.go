package monitoring

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/promqltest"
)

// TestAlertExpressions evaluates the shipped alert expressions with
// Prometheus's own engine over series shaped as the arbiter exports them
// (two replicas, counters that appear at their first increment, the
// leader-only drainer counters, samples every minute), and checks when each fires. Each row
// counts the expression's result by the alert's labels at one instant;
// want empty means it does not fire. The for: durations are not evaluated.
func TestAlertExpressions(t *testing.T) {
	exprs := map[string]string{}
	for _, g := range ruleGroups(t, render(t, viaOverlay)).Groups {
		for _, r := range g.Rules {
			exprs[r.Alert] = r.Expr
		}
	}
	const (
		job    = `job="reboot-manager-arbiter"`
		a, b   = `pod="arbiter-a"`, `pod="arbiter-b"`
		pre    = `operation="pre-reboot"`
		every1 = "1m"
	)
	tests := []struct {
		name, alert string
		series      []string // loaded every 5m from 0
		at, by      string
		want        []string
	}{
		{"no replica up", "RebootManagerArbiterDown",
			[]string{`up{` + job + `,` + a + `} 0x60`, `up{` + job + `,` + b + `} 0x60`}, "60m", "", []string{`{} 1`}},
		{"no target at all", "RebootManagerArbiterDown",
			[]string{`up{job="something-else"} 1x60`}, "60m", "", []string{`{} 1`}},
		{"one replica up", "RebootManagerArbiterDown",
			[]string{`up{` + job + `,` + a + `} 0x60`, `up{` + job + `,` + b + `} 1x60`}, "60m", "", nil},
		{"one replica down", "RebootManagerArbiterReplicaDown",
			[]string{`up{` + job + `,` + a + `} 0x60`, `up{` + job + `,` + b + `} 1x60`}, "60m", "pod", []string{`{pod="arbiter-a"} 1`}},
		{"answering 503", "RebootManagerArbiterUnavailable",
			[]string{`rebootmanager_fleetlock_requests_total{` + a + `,` + pre + `,kind="unavailable"} 0+5x60`}, "60m", "", []string{`{} 1`}},
		{"503s long ago", "RebootManagerArbiterUnavailable",
			[]string{`rebootmanager_fleetlock_requests_total{` + a + `,` + pre + `,kind="unavailable"} 0+5x20 100x40`}, "60m", "", nil},
		{"no groups config on one replica", "RebootManagerGroupsConfigInvalid",
			[]string{`rebootmanager_groups_config_loaded{` + a + `} 0x60`, `rebootmanager_groups_config_loaded{` + b + `} 1x60`}, "60m", "pod", []string{`{pod="arbiter-a"} 1`}},
		{"a slot overdue, seen by both replicas", "RebootManagerSlotHeldTooLong",
			[]string{`rebootmanager_slots_overdue{` + a + `,group="g"} 1x60`, `rebootmanager_slots_overdue{` + b + `,group="g"} 1x60`,
				`rebootmanager_slots_overdue{` + a + `,group="h"} 0x60`}, "60m", "group", []string{`{group="g"} 1`}},
		{"a halted group, seen by both replicas", "RebootManagerGroupHalted",
			[]string{`rebootmanager_group_halted{` + a + `,group="g",reason="not_back"} 1x60`, `rebootmanager_group_halted{` + b + `,group="g",reason="not_back"} 1x60`},
			"60m", "group, reason", []string{`{group="g",reason="not_back"} 1`}},
		{"the first yield on a replica (its series starts at 1)", "RebootManagerDrainYielded",
			[]string{`rebootmanager_drain_yields_total{` + a + `,group="g"} _x60 1x60`}, "70m", "group", []string{`{group="g"} 1`}},
		{"a later yield", "RebootManagerDrainYielded",
			[]string{`rebootmanager_drain_yields_total{` + a + `,group="g"} 1x149 2x30`}, "160m", "group", []string{`{group="g"} 1`}},
		{"a yield over an hour ago", "RebootManagerDrainYielded",
			[]string{`rebootmanager_drain_yields_total{` + a + `,group="g"} 1x150`}, "130m", "group", nil},
		{"evictions refused, none succeeding", "RebootManagerDrainStuck",
			[]string{`rebootmanager_evictions_total{` + a + `,result="pdb_blocked"} 0+4x60`, `rebootmanager_evictions_total{` + a + `,result="ok"} 3x60`,
				`rebootmanager_evictions_total{` + b + `,result="pdb_blocked"} 0x60`}, "60m", "", []string{`{} 1`}},
		{"evictions refused while others succeed", "RebootManagerDrainStuck",
			[]string{`rebootmanager_evictions_total{` + a + `,result="pdb_blocked"} 0+4x60`, `rebootmanager_evictions_total{` + a + `,result="ok"} 0+1x60`}, "60m", "", nil},
		{"nodes wait and none was ever approved", "RebootManagerRolloutStalled",
			[]string{`rebootmanager_fleetlock_requests_total{` + a + `,` + pre + `,kind="lock_held"} 0+2x480`}, "7h", "", []string{`{} 1`}},
		{"nodes wait, the last approval 6.5 hours ago", "RebootManagerRolloutStalled",
			[]string{`rebootmanager_fleetlock_requests_total{` + a + `,` + pre + `,kind="lock_held"} 0+2x480`,
				`rebootmanager_fleetlock_requests_total{` + a + `,` + pre + `,kind="ok"} 0x29 1x450`}, "7h", "", []string{`{} 1`}},
		{"nodes wait, an approval 2 hours ago", "RebootManagerRolloutStalled",
			[]string{`rebootmanager_fleetlock_requests_total{` + a + `,` + pre + `,kind="drain_in_progress"} 0+2x480`,
				`rebootmanager_fleetlock_requests_total{` + b + `,` + pre + `,kind="ok"} 0x299 1x180`}, "7h", "", nil},
		{"nobody waits", "RebootManagerRolloutStalled",
			[]string{`rebootmanager_fleetlock_requests_total{` + a + `,` + pre + `,kind="lock_held"} 10x480`}, "7h", "", nil},
		{"only paused groups and closed windows", "RebootManagerRolloutStalled",
			[]string{`rebootmanager_fleetlock_requests_total{` + a + `,` + pre + `,kind="paused"} 0+2x480`,
				`rebootmanager_fleetlock_requests_total{` + a + `,` + pre + `,kind="outside_window"} 0+2x480`}, "7h", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.alert+": "+tt.name, func(t *testing.T) {
			expr, ok := exprs[tt.alert]
			if !ok {
				t.Fatalf("no alert %s", tt.alert)
			}
			script := fmt.Sprintf("load %s\n  %s\n\neval instant at %s count by (%s) (%s)\n",
				every1, strings.Join(tt.series, "\n  "), tt.at, tt.by, strings.ReplaceAll(expr, "\n", " "))
			for _, w := range tt.want {
				script += "  " + w + "\n"
			}
			promqltest.RunTest(t, script, promqltest.NewTestEngine(t, false, 0, promqltest.DefaultMaxSamplesPerQuery))
		})
	}
}
