package groups

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the Store's metrics.
type Metrics struct {
	rejected prometheus.Counter
	valid    prometheus.Gauge
}

// NewMetrics returns the Store's metrics, registered with reg unless it is
// nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rebootmanager_groups_config_rejected_total",
			Help: "Groups ConfigMap versions rejected (malformed or deleted); the last good settings stay.",
		}),
		valid: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "rebootmanager_groups_config_loaded",
			Help: "1 once a valid groups ConfigMap was read; until then every pre-reboot is answered 503.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.rejected, m.valid)
	}
	return m
}
