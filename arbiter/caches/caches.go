// Package caches builds the arbiter's informers over a ListerWatcher that
// rides out an API server outage, so that the caches are current again
// within moments of the API server's return, however often it went away.
//
// A plain informer's reflector, once its watch breaks, waits an
// exponential backoff (0.8 s doubling to 30 s, with up to as much again of
// jitter, reset only every 2 minutes) before each attempt to list again.
// After an outage of 8 s its next attempt came up to 12 s after the API
// server was back; after a few outages in a row, up to 30 s. Meanwhile the
// arbiter refused new nodes as unknown and its workers went unkicked.
//
// Here the reflector never sees the outage. Its watch stays open: when the
// stream underneath ends, the ListerWatcher asks the API server's probe
// whether the server is away, waits until the probe sees it ready again,
// and then resumes the stream itself: from the last resource version it
// delivered when the server never went away, else (a restarted API
// server's watch cache starts at the present) from one LIST, whose
// difference from the informer's store it delivers as watch events
// (added, modified, deleted) before it carries on watching. The reflector
// lists only at its start.
//
// Freshness: nothing here makes a cache fresher than an informer's cache
// is. Current says when a cache may be further behind than that: from the
// moment a break shows the API server away, or the stream's resource
// version expired, until the catch-up is delivered. The arbiter is not
// ready, and answers 503, meanwhile: a refusal that would rest on such a
// cache says so.
package caches

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// Server is the API server's readiness as a probe follows it
// (apihealth.Probe).
type Server interface {
	// Wait returns once the server is ready, or ctx's error.
	Wait(ctx context.Context) error
	// Check probes the server now and returns why it is not ready, or nil;
	// Wait blocks after a failed Check until the server is back.
	Check(ctx context.Context) error
}

// Metrics counts how the caches resumed their watches.
type Metrics struct {
	resumes *prometheus.CounterVec
}

// NewMetrics registers the caches' metrics with reg; nil reg leaves them
// unregistered.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{resumes: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rebootmanager_cache_resumes_total",
		Help: "Watch streams of the arbiter's caches resumed after they ended, by cache and how: rewatch (from the last resource version) or relist (one LIST and its difference delivered, after an API server outage or an expired resource version).",
	}, []string{"cache", "how"})}
	if reg != nil {
		reg.MustRegister(m.resumes)
	}
	return m
}

// ListWatch is a cache.ListerWatcher whose watches ride out API server
// outages (see the package comment).
type ListWatch struct {
	name    string
	inner   cache.ListerWatcherWithContext
	server  Server
	store   cache.Store    // the informer's, set by New
	example runtime.Object // an object of the informer's type, for bookmarks
	metrics *Metrics
	log     *slog.Logger
	// pace is the first wait between failed attempts to resume, or streams
	// that end at once, while the API server answers; it doubles up to
	// maxPace.
	pace time.Duration

	mu     sync.Mutex
	behind time.Time // since when the cache may be behind; zero when current
}

// maxPace bounds the wait between attempts to resume a watch that the
// API server refuses, or ends at once, while it reports ready.
const maxPace = 5 * time.Second

// rewatchAttempts is how many refused attempts to go on from the last
// resource version are made before the stream goes on from a LIST (and
// the cache counts as behind).
const rewatchAttempts = 3

// applyWait bounds the wait for the informer to apply the events
// delivered, before a catch-up is diffed against its store and before the
// cache counts as current again.
const applyWait = 5 * time.Second

// New returns an informer of objects like obj, named name in logs and
// metrics, over lw made outage-proof, and its ListWatch (for Current).
func New(name string, lw cache.ListerWatcherWithContext, obj runtime.Object, server Server, m *Metrics, log *slog.Logger) (cache.SharedIndexInformer, *ListWatch) {
	if m == nil {
		m = NewMetrics(nil)
	}
	r := &ListWatch{name: name, inner: lw, server: server, example: obj, metrics: m, log: log.With("cache", name), pace: 250 * time.Millisecond}
	// The namespace index, as client-go's informer factories add it: the
	// listers' namespaced lists use it.
	inf := cache.NewSharedIndexInformer(r, obj, 0, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	r.store = inf.GetStore()
	return inf, r
}

// Current returns nil when the cache is as current as its watch, or why it
// may be further behind.
func (r *ListWatch) Current() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.behind.IsZero() {
		return nil
	}
	return fmt.Errorf("the %s cache is catching up with the API server (behind since %s)", r.name, r.behind.UTC().Format(time.RFC3339))
}

func (r *ListWatch) setBehind(behind bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case !behind:
		r.behind = time.Time{}
	case r.behind.IsZero():
		r.behind = time.Now()
	}
}

// IsWatchListSemanticsUnSupported tells the reflector to list and then
// watch, not to stream its list through a watch: the stream a watch
// resumes here is one of events after a list.
func (r *ListWatch) IsWatchListSemanticsUnSupported() bool { return true }

// List is ListWithContext without a deadline.
func (r *ListWatch) List(opts metav1.ListOptions) (runtime.Object, error) {
	return r.ListWithContext(context.Background(), opts)
}

// Watch is WatchWithContext without a deadline.
func (r *ListWatch) Watch(opts metav1.ListOptions) (watch.Interface, error) {
	return r.WatchWithContext(context.Background(), opts)
}

// ListWithContext lists once the API server is ready.
func (r *ListWatch) ListWithContext(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
	if err := r.server.Wait(ctx); err != nil {
		return nil, err
	}
	return r.inner.ListWithContext(ctx, opts)
}

// WatchWithContext starts a watch once the API server is ready, and
// returns it resumed whenever its stream ends, until it is stopped or ctx
// ends.
func (r *ListWatch) WatchWithContext(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	if err := r.server.Wait(ctx); err != nil {
		return nil, err
	}
	w, err := r.inner.WatchWithContext(ctx, opts)
	if err != nil {
		if r.server.Check(ctx) == nil {
			return nil, err
		}
		// The API server went away between the reflector's list and this
		// watch: ride it out as any break.
		w = nil
	}
	ctx, stop := context.WithCancel(ctx)
	out := make(chan watch.Event)
	go r.run(ctx, w, &stream{opts: opts, out: out, rv: opts.ResourceVersion, pace: r.pace})
	return &resumed{out: out, stop: stop}, nil
}

// resumed is the watch the reflector holds.
type resumed struct {
	out  chan watch.Event
	stop context.CancelFunc
}

func (w *resumed) Stop()                          { w.stop() }
func (w *resumed) ResultChan() <-chan watch.Event { return w.out }
