package lock

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports the holders seen in the cache as Prometheus metrics.
type Collector struct {
	sem     *Semaphore
	slots   func(group string) int
	maxHold time.Duration
	held    *prometheus.Desc
	total   *prometheus.Desc
	age     *prometheus.Desc
	overdue *prometheus.Desc
	halted  *prometheus.Desc
}

// NewCollector returns a Collector over s; slots gives a group's current
// slot count, and holders older than maxHold (when positive) count as
// overdue.
func NewCollector(s *Semaphore, slots func(group string) int, maxHold time.Duration) *Collector {
	return &Collector{
		sem:     s,
		slots:   slots,
		maxHold: maxHold,
		halted:  prometheus.NewDesc("rebootmanager_group_halted", "1 for each halted group and reason.", []string{"group", "reason"}, nil),
		overdue: prometheus.NewDesc("rebootmanager_slots_overdue", "Slots held for longer than --max-hold, by group.", []string{"group"}, nil),
		held:    prometheus.NewDesc("rebootmanager_slots_held", "Reboot slots held, by group.", []string{"group"}, nil),
		total:   prometheus.NewDesc("rebootmanager_slots", "Reboot slots configured, by group with a lock object.", []string{"group"}, nil),
		age:     prometheus.NewDesc("rebootmanager_lock_held_seconds", "How long each holder has held its slot; id is ref:<hash prefix> for hosts outside the cluster.", []string{"group", "node", "id"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.held
	ch <- c.total
	ch <- c.age
	ch <- c.overdue
	ch <- c.halted
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	all, err := c.sem.All()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.held, err)
		return
	}
	halts, err := c.sem.Halts()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.halted, err)
		return
	}
	for group, hs := range halts {
		seen := map[HaltReason]bool{}
		for _, h := range hs {
			if !seen[h.Reason] {
				seen[h.Reason] = true
				ch <- prometheus.MustNewConstMetric(c.halted, prometheus.GaugeValue, 1, group, string(h.Reason))
			}
		}
	}
	now := c.sem.now()
	for group, holders := range all {
		ch <- prometheus.MustNewConstMetric(c.held, prometheus.GaugeValue, float64(len(holders)), group)
		ch <- prometheus.MustNewConstMetric(c.total, prometheus.GaugeValue, float64(c.slots(group)), group)
		overdue := 0
		for _, h := range holders {
			age := now.Sub(h.Since)
			if c.maxHold > 0 && age > c.maxHold {
				overdue++
			}
			id := h.ID
			if h.Node == "" {
				id = "ref:" + h.Ref() // never a host outside the cluster's id: it acts for the host
			}
			ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, age.Round(time.Second).Seconds(), group, h.Node, id)
		}
		ch <- prometheus.MustNewConstMetric(c.overdue, prometheus.GaugeValue, float64(overdue), group)
	}
}

// Metrics count the lock objects' compare-and-swaps.
type Metrics struct {
	writes     prometheus.Counter
	conflicts  prometheus.Counter
	contention prometheus.Counter
}

// NewMetrics returns the semaphore's metrics, registered with reg when it
// is not nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		writes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rebootmanager_lock_writes_total",
			Help: "Lock object writes (compare-and-swaps) that succeeded.",
		}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rebootmanager_lock_conflicts_total",
			Help: "Lock object writes that lost their compare-and-swap (each retried on a new read, up to 8 attempts per operation).",
		}),
		contention: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rebootmanager_lock_contention_total",
			Help: "Lock operations that lost all 8 of their compare-and-swap attempts and changed nothing (a request's is answered 503).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.writes, m.conflicts, m.contention)
	}
	return m
}

// WithMetrics makes s count its compare-and-swaps in m, and returns s.
func (s *Semaphore) WithMetrics(m *Metrics) *Semaphore {
	s.metrics = m
	return s
}
