// Package monitoring tests deploy/monitoring, the optional kustomize
// Component with the arbiter's ServiceMonitor, PrometheusRule and Grafana
// dashboard: every query parses with Prometheus's own parser and names only
// metrics, labels and label values that the real arbiter exports, and the
// rendered manifests pass the API server's validation with the Prometheus
// Operator's CRDs installed. It lives in a module of its own (test/tools) so
// that Prometheus and kustomize stay out of the product's go.mod; run it
// with `cd test/tools && go test ./...` against the local control plane.
package monitoring
