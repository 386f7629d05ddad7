// Package apiclient builds the arbiter's Kubernetes clients, one per job,
// each with a client-side rate limiter of its own, and measures how long
// each job's requests wait for their limiter and for the API server.
//
// A job that floods its limiter (the Events of 2,000 first contacts, the
// evictions of a large drain) then delays only itself: a request's
// decision never queues behind another job's backlog.
package apiclient

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
)

// Metrics measures the clients built with it.
type Metrics struct {
	wait     *prometheus.HistogramVec
	requests *prometheus.HistogramVec
}

// NewMetrics registers the clients' metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "rebootmanager_api_rate_limiter_wait_seconds",
			Help: "How long a Kubernetes API request waited for its client's rate limiter, by client (the job it serves).",
			// 0 for most: the interesting part is the tail.
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"client"}),
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "rebootmanager_api_request_duration_seconds",
			Help:    "How long a Kubernetes API request took, from sending it to the response's headers, by client, method and status code.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"client", "method", "code"}),
	}
	reg.MustRegister(m.wait, m.requests)
	return m
}

// Config returns a copy of base for the client named job, with a rate
// limiter of its own at base's QPS and burst (client-go's default when
// base sets none). Its requests are measured in m.
func Config(base *rest.Config, job string, m *Metrics) *rest.Config {
	cfg := rest.CopyConfig(base)
	qps, burst := base.QPS, base.Burst
	if qps <= 0 {
		qps, burst = rest.DefaultQPS, rest.DefaultBurst
	}
	cfg.RateLimiter = &timedLimiter{RateLimiter: flowcontrol.NewTokenBucketRateLimiter(qps, burst), wait: m.wait.WithLabelValues(job)}
	cfg.Wrap(func(next http.RoundTripper) http.RoundTripper {
		return &timedTransport{next: next, job: job, requests: m.requests}
	})
	return cfg
}

// New returns a clientset for the client named job: see Config.
func New(base *rest.Config, job string, m *Metrics) (kubernetes.Interface, error) {
	c, err := kubernetes.NewForConfig(Config(base, job, m))
	if err != nil {
		return nil, fmt.Errorf("build the %s Kubernetes client: %w", job, err)
	}
	return c, nil
}

// timedLimiter observes how long Wait blocks.
type timedLimiter struct {
	flowcontrol.RateLimiter
	wait prometheus.Observer
}

func (l *timedLimiter) Wait(ctx context.Context) error {
	start := time.Now()
	err := l.RateLimiter.Wait(ctx)
	l.wait.Observe(time.Since(start).Seconds())
	return err
}

// timedTransport observes each request's time to its response headers.
type timedTransport struct {
	next     http.RoundTripper
	job      string
	requests *prometheus.HistogramVec
}

func (t *timedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.next.RoundTrip(r)
	code := "error"
	if err == nil {
		code = strconv.Itoa(resp.StatusCode)
	}
	t.requests.WithLabelValues(t.job, r.Method, code).Observe(time.Since(start).Seconds())
	return resp, err
}
