package finish

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the finisher's Prometheus metrics.
type Metrics struct {
	cycles   *prometheus.CounterVec
	halts    *prometheus.CounterVec
	downtime *prometheus.HistogramVec
}

// NewMetrics registers the metrics with reg, unless it is nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		cycles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rebootmanager_reboot_cycles_total",
			Help: "Reboot cycles ended by a release, by group and outcome (completed, not_rebooted, update_not_applied).",
		}, []string{"group", "outcome"}),
		halts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rebootmanager_group_halts_total",
			Help: "Groups halted by a failed cycle, by group and reason.",
		}, []string{"group", "reason"}),
		downtime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "rebootmanager_reboot_seconds",
			Help:    "Time from a reboot's approval to the release of its slot, by group.",
			Buckets: []float64{15, 30, 60, 120, 300, 600, 1200, 3600},
		}, []string{"group"}),
	}
	if reg != nil {
		reg.MustRegister(m.cycles, m.halts, m.downtime)
	}
	return m
}
