package monitoring

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// TestQueriesUseRealMetrics runs the real arbiter through the states the
// monitoring watches, scrapes its /metrics, and checks every alert
// expression and every dashboard query against what it exported.
func TestQueriesUseRealMetrics(t *testing.T) {
	objs := render(t, viaOverlay)
	job := wiring(t, objs).job
	cat := scenarioCatalogue(t)
	c := newChecker(cat, job)
	var own []string
	for name, f := range cat {
		if strings.HasPrefix(name, "rebootmanager_") {
			own = append(own, fmt.Sprintf("%s%v", name, sortedKeys(f.labels)))
		}
	}
	slices.Sort(own)
	t.Logf("the arbiter exported %d families, %d of its own:\n%s", len(cat), len(own), strings.Join(own, "\n"))

	// The checker itself must refuse what is wrong, against the same
	// scrape: otherwise the rows below could pass on anything.
	t.Run("checker", func(t *testing.T) {
		tests := []struct {
			name, expr, wantErr string
		}{
			{"a real gauge", `max by (group) (rebootmanager_slots_overdue) > 0`, ""},
			{"a histogram's buckets", `sum by (group, le) (rate(rebootmanager_drain_duration_seconds_bucket[5m]))`, ""},
			{"a real kind", `rebootmanager_fleetlock_requests_total{operation="pre-reboot",kind=~"ok|lock_held"}`, ""},
			{"up of the ServiceMonitor's job", `up{job="` + job + `"} == 0`, ""},
			{"a misspelt metric", `rebootmanager_slot_overdue > 0`, "exports no metric rebootmanager_slot_overdue"},
			{"a metric the arbiter lacks", `rebootmanager_no_such_metric > 0`, "exports no metric rebootmanager_no_such_metric"},
			{"a label the metric lacks", `rebootmanager_evictions_total{group="x"}`, "carries no label group"},
			{"grouping by a label no series has", `sum by (node) (rebootmanager_evictions_total)`, "by (node)"},
			{"a kind that does not exist", `rebootmanager_fleetlock_requests_total{kind="lock_busy"}`, `never has the value "lock_busy"`},
			{"a result that does not exist", `rebootmanager_evictions_total{result=~"ok|blocked"}`, `never has the value "blocked"`},
			{"another job", `up{job="arbiter"}`, "job must be"},
			{"a histogram without suffix", `rebootmanager_drain_duration_seconds > 0`, "is a histogram"},
			{"buckets of a counter", `rebootmanager_evictions_total_bucket`, "exports no metric"},
			{"not PromQL", `sum(rebootmanager_slots`, "parse"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				errs := c.check(tt.expr)
				got := fmt.Sprint(errs)
				switch {
				case tt.wantErr == "" && len(errs) > 0:
					t.Errorf("check(%s) = %v, want no error", tt.expr, errs)
				case tt.wantErr != "" && !strings.Contains(got, tt.wantErr):
					t.Errorf("check(%s) = %v, want an error containing %q", tt.expr, errs, tt.wantErr)
				}
			})
		}
	})

	t.Run("rules", func(t *testing.T) {
		groups := ruleGroups(t, objs)
		alerts := map[string]bool{}
		for _, g := range groups.Groups {
			for _, r := range g.Rules {
				alerts[r.Alert] = true
				t.Run(r.Alert+r.Record, func(t *testing.T) {
					for _, err := range c.check(r.Expr) {
						t.Errorf("%s: %v", r.Expr, err)
					}
					if r.Alert != "" && (r.Labels["severity"] != "warning" && r.Labels["severity"] != "critical") {
						t.Errorf("severity %q, want warning or critical", r.Labels["severity"])
					}
					if r.Alert != "" && (r.Annotations["summary"] == "" || r.Annotations["description"] == "") {
						t.Errorf("an alert needs a summary and a description")
					}
				})
			}
		}
		// What issue #21 asks the rules to catch.
		for _, want := range []string{"RebootManagerSlotHeldTooLong", "RebootManagerDrainStuck", "RebootManagerDrainYielded",
			"RebootManagerArbiterDown", "RebootManagerArbiterUnavailable", "RebootManagerRolloutStalled", "RebootManagerGroupHalted"} {
			if !alerts[want] {
				t.Errorf("no alert %s", want)
			}
		}
	})

	t.Run("dashboard", func(t *testing.T) {
		raw, err := os.ReadFile(filepath.Join(cluster.Root, "deploy/monitoring/dashboard.json"))
		if err != nil {
			t.Fatal(err)
		}
		queries, err := dashboardQueries(raw)
		if err != nil {
			t.Fatal(err)
		}
		if len(queries) < 10 {
			t.Errorf("the dashboard has %d queries, fewer than its panels need", len(queries))
		}
		for _, q := range queries {
			for _, err := range c.check(q.expr) {
				t.Errorf("%s: %s: %v", q.where, q.expr, err)
			}
		}
		for _, want := range []string{"rebootmanager_slots", "rebootmanager_slots_held", "rebootmanager_lock_held_seconds",
			"rebootmanager_drain_duration_seconds_bucket", "rebootmanager_evictions_total", "rebootmanager_waiters_turned_away_total"} {
			if !slices.ContainsFunc(queries, func(q query) bool { return regexp.MustCompile(`\b` + want + `\b`).MatchString(q.expr) }) {
				t.Errorf("no panel queries %s", want)
			}
		}
	})
}

// ruleGroups parses the rendered PrometheusRule's groups with Prometheus's
// own rule-file parser, unknown fields refused, which also parses every
// expression and template.
func ruleGroups(t testing.TB, objs []*unstructured.Unstructured) *rulefmt.RuleGroups {
	t.Helper()
	pr := find(t, objs, "PrometheusRule", "reboot-manager")
	spec, ok := pr.Object["spec"]
	if !ok {
		t.Fatalf("the PrometheusRule has no spec")
	}
	content, err := yaml.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	groups, errs := rulefmt.Parse(content, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Errorf("rulefmt: %v", err)
	}
	if groups == nil || len(groups.Groups) == 0 {
		t.Fatalf("the PrometheusRule has no rule groups")
	}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if time.Duration(r.For) > 2*time.Hour {
				t.Errorf("%s waits %s before it fires", r.Alert, r.For)
			}
		}
	}
	return groups
}

// query is one PromQL query of the dashboard, with Grafana's variables
// replaced by values PromQL accepts.
type query struct {
	where, expr string
}

// grafanaVariables are the dashboard's variables and Grafana's own, with
// what stands for them in a parsed query.
var grafanaVariables = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h", "${group}", ".*", "$group", ".*")

// dashboardQueries returns the dashboard's queries (panels' targets and
// query variables), checking its structure on the way: unique panel ids,
// no overlapping panels, each panel on the datasource variable, and only
// known variables.
func dashboardQueries(raw []byte) ([]query, error) {
	var d struct {
		UID        string `json:"uid"`
		Title      string `json:"title"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, fmt.Errorf("parse the dashboard JSON: %w", err)
	}
	if d.UID == "" || d.Title == "" {
		return nil, fmt.Errorf("the dashboard needs a uid and a title")
	}
	var out []query
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		switch v.Type {
		case "datasource":
			var q string
			if json.Unmarshal(v.Query, &q) != nil || q != "prometheus" {
				return nil, fmt.Errorf("variable %s: a datasource variable of type prometheus, not %s", v.Name, v.Query)
			}
		case "query":
			var q struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &q); err != nil {
				return nil, fmt.Errorf("variable %s: %w", v.Name, err)
			}
			m := regexp.MustCompile(`^label_values\((.+), *([a-zA-Z_]+)\)$`).FindStringSubmatch(q.Query)
			if m == nil {
				return nil, fmt.Errorf("variable %s: query %q is not label_values(SELECTOR, LABEL)", v.Name, q.Query)
			}
			out = append(out, query{"variable " + v.Name, "count by (" + m[2] + ") (" + m[1] + ")"})
		}
	}
	if !vars["datasource"] || !vars["group"] {
		return nil, fmt.Errorf("the dashboard needs the variables datasource and group, has %v", vars)
	}
	var all []panel
	for _, p := range d.Panels {
		all = append(all, p)
		all = append(all, p.Panels...)
	}
	ids := map[int]bool{}
	for i, p := range all {
		if ids[p.ID] {
			return nil, fmt.Errorf("panel id %d is used twice", p.ID)
		}
		ids[p.ID] = true
		for _, o := range all[:i] {
			if p.GridPos.overlaps(o.GridPos) {
				return nil, fmt.Errorf("panels %q and %q overlap", p.Title, o.Title)
			}
		}
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			return nil, fmt.Errorf("panel %q: gridPos %+v does not fit the 24 columns", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource.UID != "${datasource}" || p.Datasource.Type != "prometheus" || len(p.Targets) == 0 {
			return nil, fmt.Errorf("panel %q: want the ${datasource} Prometheus variable and at least one query", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.Expr == "" || tg.RefID == "" || refs[tg.RefID] || tg.Datasource.UID != "${datasource}" {
				return nil, fmt.Errorf("panel %q: each target needs an expr, a refId of its own and the ${datasource} variable", p.Title)
			}
			refs[tg.RefID] = true
			expr := grafanaVariables.Replace(tg.Expr)
			if strings.Contains(expr, "$") {
				return nil, fmt.Errorf("panel %q: query %q uses a variable the dashboard does not define", p.Title, tg.Expr)
			}
			out = append(out, query{fmt.Sprintf("panel %q %s", p.Title, tg.RefID), expr})
		}
	}
	return out, nil
}

// panel is the part of a Grafana panel this test reads.
type panel struct {
	ID         int        `json:"id"`
	Type       string     `json:"type"`
	Title      string     `json:"title"`
	GridPos    gridPos    `json:"gridPos"`
	Datasource datasource `json:"datasource"`
	Targets    []struct {
		RefID      string     `json:"refId"`
		Expr       string     `json:"expr"`
		Datasource datasource `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// gridPos is a panel's place in Grafana's 24-column grid.
type gridPos struct {
	X int `json:"x"`
	Y int `json:"y"`
	W int `json:"w"`
	H int `json:"h"`
}

func (g gridPos) overlaps(o gridPos) bool {
	return g.X < o.X+o.W && o.X < g.X+g.W && g.Y < o.Y+o.H && o.Y < g.Y+g.H
}
