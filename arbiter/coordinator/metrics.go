package coordinator

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the coordinator's Prometheus metrics.
type Metrics struct {
	drainSeconds *prometheus.HistogramVec
	lineFull     *prometheus.CounterVec
}

// NewMetrics returns the coordinator's metrics, registered with reg when it
// is not nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		drainSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "rebootmanager_drain_duration_seconds",
			Help: "Time from a node's cordon to the approval of its reboot, by group.",
			// 5 s to about 2.8 h.
			Buckets: prometheus.ExponentialBuckets(5, 2, 12),
		}, []string{"group"}),
		lineFull: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rebootmanager_waiters_turned_away_total",
			Help: "Pre-reboots answered at once because --max-waiters already wait in their group on this replica, by group.",
		}, []string{"group"}),
	}
	if reg != nil {
		reg.MustRegister(m.drainSeconds, m.lineFull)
	}
	return m
}
