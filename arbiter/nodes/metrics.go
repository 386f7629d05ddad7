package nodes

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rebootmanager/reboot-manager/shared/annotations"
)

// collector reports, from the cache, the Nodes whose requests are served
// without a host credential.
type collector struct {
	d           *Directory
	unprotected *prometheus.Desc
}

// NewCollector returns a Prometheus collector of
// rebootmanager_nodes_without_credential over d's cache.
func NewCollector(d *Directory) prometheus.Collector {
	return &collector{d: d, unprotected: prometheus.NewDesc("rebootmanager_nodes_without_credential",
		"Nodes without a host credential (no "+annotations.CredentialSHA256+" annotation): their FleetLock requests are served unprotected.", nil, nil)}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) { ch <- c.unprotected }

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	all, err := c.d.List()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.unprotected, err)
		return
	}
	n := 0
	for _, node := range all {
		if !HasCredential(node) {
			n++
		}
	}
	ch <- prometheus.MustNewConstMetric(c.unprotected, prometheus.GaugeValue, float64(n))
}
