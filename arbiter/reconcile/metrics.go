package reconcile

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the reconciler's Prometheus metrics.
type Metrics struct {
	staleReleases      *prometheus.CounterVec
	rebootsWithoutLock prometheus.Counter
}

// NewMetrics returns the reconciler's metrics, registered with reg when it
// is not nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		staleReleases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rebootmanager_stale_lock_releases_total",
			Help: "Slots the reconciler released because their Node was deleted, by group.",
		}, []string{"group"}),
		rebootsWithoutLock: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rebootmanager_reboots_without_lock_total",
			Help: "Node reboots seen while the node held no reboot slot (leader only).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.staleReleases, m.rebootsWithoutLock)
	}
	return m
}
