package drain

import (
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of an eviction, the values of the result label.
const (
	ResultOK         = "ok"
	ResultPDBBlocked = "pdb_blocked"
	ResultError      = "error"
)

// Metrics are the drainer's Prometheus metrics.
type Metrics struct {
	evictions *prometheus.CounterVec
	yields    *prometheus.CounterVec
}

// NewMetrics returns the drainer's metrics, registered with reg when it is
// not nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rebootmanager_evictions_total",
			Help: "Evictions sent, by result: ok, pdb_blocked (refused by a PodDisruptionBudget) or error.",
		}, []string{"result"}),
		yields: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rebootmanager_drain_yields_total",
			Help: "Drains that did not finish within their group's drainTimeout and gave their slot back, by group.",
		}, []string{"group"}),
	}
	for _, r := range []string{ResultOK, ResultPDBBlocked, ResultError} {
		m.evictions.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.evictions, m.yields)
	}
	return m
}

// Result classifies an eviction's outcome.
func Result(err error) string {
	switch {
	case err == nil, apierrors.IsNotFound(err):
		return ResultOK
	case budgetRefusal(err) != "":
		return ResultPDBBlocked
	default:
		return ResultError
	}
}
