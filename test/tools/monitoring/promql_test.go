package monitoring

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
)

// targetLabels are the labels Prometheus (through the Prometheus Operator's
// ServiceMonitor) puts on every sample of a target.
var targetLabels = []string{"job", "instance", "namespace", "pod", "service", "endpoint", "container"}

// synthesized are the series Prometheus makes itself for each target.
var synthesized = map[string]bool{"up": true}

// checker tells whether a PromQL expression names only what the arbiter
// really exports.
type checker struct {
	cat catalogue
	// job is the job label the ServiceMonitor gives the arbiter's targets.
	job string
	// values are label values known beyond those the scrape showed: the
	// enumerations the arbiter answers with.
	values map[string][]string
}

// newChecker returns a checker over cat for targets of job.
func newChecker(cat catalogue, job string) checker {
	kinds := []string{"ok"} // the kind label of a 200
	for _, k := range fleetlock.Kinds {
		kinds = append(kinds, string(k))
	}
	return checker{cat: cat, job: job, values: map[string][]string{"kind": kinds}}
}

// series is what a metric name in a query stands for.
type series struct {
	labels map[string]map[string]bool // the labels it carries, with the values seen
}

// resolve finds the family behind a series name: a family of the scrape,
// one of a histogram's _bucket, _sum and _count series, or a series
// Prometheus makes itself.
func (c checker) resolve(name string) (series, error) {
	if synthesized[name] {
		return series{labels: map[string]map[string]bool{}}, nil
	}
	if f, ok := c.cat[name]; ok {
		if f.typ == dto.MetricType_HISTOGRAM {
			return series{}, fmt.Errorf("%s is a histogram: query its _bucket, _sum or _count", name)
		}
		return series{labels: f.labels}, nil
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if f := c.cat[base]; ok && f != nil && f.typ == dto.MetricType_HISTOGRAM {
			s := series{labels: f.labels}
			if suffix == "_bucket" {
				s.labels = cloneWith(f.labels, "le")
			}
			return s, nil
		}
	}
	return series{}, fmt.Errorf("the arbiter exports no metric %s", name)
}

func cloneWith(m map[string]map[string]bool, extra string) map[string]map[string]bool {
	out := map[string]map[string]bool{extra: {}}
	for k, v := range m {
		out[k] = v
	}
	return out
}

// literalAlternation matches a regular expression that is only
// alternatives of plain values, such as a|b|c.
var literalAlternation = regexp.MustCompile(`^[A-Za-z0-9_.:-]+(\|[A-Za-z0-9_.:-]+)*$`)

// check parses expr with Prometheus's parser and returns every problem:
// unknown metrics, labels the metric does not carry, label values it never
// has, a job other than the ServiceMonitor's, and grouping or matching on
// labels no series in scope carries.
func (c checker) check(expr string) []error {
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return []error{fmt.Errorf("parse: %w", err)}
	}
	var errs []error
	parser.Inspect(e, func(node parser.Node, _ []parser.Node) error {
		switch n := node.(type) {
		case *parser.VectorSelector:
			errs = append(errs, c.selector(n)...)
		case *parser.AggregateExpr:
			if !n.Without {
				errs = append(errs, c.inScope(n.Expr, n.Grouping, "by")...)
			}
		case *parser.BinaryExpr:
			if n.VectorMatching != nil && len(n.VectorMatching.MatchingLabels) > 0 {
				in := slices.Concat(c.labelsUnder(n.LHS), c.labelsUnder(n.RHS))
				for _, l := range n.VectorMatching.MatchingLabels {
					if !slices.Contains(in, l) && !slices.Contains(targetLabels, l) {
						errs = append(errs, fmt.Errorf("on/ignoring (%s): no series on either side carries it", l))
					}
				}
			}
		}
		return nil
	})
	return errs
}

// selector checks one vector selector's name and matchers.
func (c checker) selector(vs *parser.VectorSelector) []error {
	if vs.Name == "" {
		return []error{fmt.Errorf("selector %s names no metric", vs)}
	}
	s, err := c.resolve(vs.Name)
	if err != nil {
		return []error{err}
	}
	var errs []error
	for _, m := range vs.LabelMatchers {
		if m.Name == labels.MetricName {
			continue
		}
		if slices.Contains(targetLabels, m.Name) {
			if m.Name == "job" && (m.Type != labels.MatchEqual || m.Value != c.job) {
				errs = append(errs, fmt.Errorf("%s: job must be %q, the ServiceMonitor's, not %s", vs, c.job, m))
			}
			continue
		}
		seen, ok := s.labels[m.Name]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: %s carries no label %s (it has %v)", vs, vs.Name, m.Name, sortedKeys(s.labels)))
			continue
		}
		var want []string
		switch {
		case m.Type == labels.MatchEqual || m.Type == labels.MatchNotEqual:
			want = []string{m.Value}
		case literalAlternation.MatchString(m.Value):
			want = strings.Split(m.Value, "|")
		default:
			continue // a pattern, such as a dashboard variable's .*
		}
		for _, v := range want {
			if !seen[v] && !slices.Contains(c.values[m.Name], v) {
				errs = append(errs, fmt.Errorf("%s: %s{%s} never has the value %q (seen %v)", vs, vs.Name, m.Name, v, sortedKeys(seen)))
			}
		}
	}
	return errs
}

// inScope checks that every label of names is carried by some series under
// e, or by every target.
func (c checker) inScope(e parser.Expr, names []string, clause string) []error {
	in := c.labelsUnder(e)
	var errs []error
	for _, l := range names {
		if !slices.Contains(in, l) && !slices.Contains(targetLabels, l) {
			errs = append(errs, fmt.Errorf("%s (%s): no series under %s carries it (they have %v)", clause, l, e, in))
		}
	}
	return errs
}

// labelsUnder returns the labels of every series e selects.
func (c checker) labelsUnder(e parser.Expr) []string {
	var out []string
	parser.Inspect(e, func(node parser.Node, _ []parser.Node) error {
		if vs, ok := node.(*parser.VectorSelector); ok {
			if s, err := c.resolve(vs.Name); err == nil {
				out = append(out, sortedKeys(s.labels)...)
			}
		}
		return nil
	})
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
