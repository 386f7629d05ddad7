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
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
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
	store   cache.Store // the informer's, set by New
	metrics *Metrics
	log     *slog.Logger
	// pace is the first wait between failed attempts to resume while the
	// API server answers; it doubles up to maxPace.
	pace time.Duration

	mu     sync.Mutex
	behind time.Time // since when the cache may be behind; zero when current
}

// maxPace bounds the wait between attempts to resume a watch that the
// API server refuses while it reports ready.
const maxPace = 5 * time.Second

// New returns an informer of objects like obj, named name in logs and
// metrics, over lw made outage-proof, and its ListWatch (for Current).
func New(name string, lw cache.ListerWatcherWithContext, obj runtime.Object, server Server, m *Metrics, log *slog.Logger) (cache.SharedIndexInformer, *ListWatch) {
	if m == nil {
		m = NewMetrics(nil)
	}
	r := &ListWatch{name: name, inner: lw, server: server, metrics: m, log: log.With("cache", name), pace: 250 * time.Millisecond}
	inf := cache.NewSharedIndexInformer(r, obj, 0, cache.Indexers{})
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
	rw := &resumed{out: make(chan watch.Event), stop: stop}
	go r.run(ctx, w, opts, rw.out)
	return rw, nil
}

// resumed is the watch the reflector holds.
type resumed struct {
	out  chan watch.Event
	stop context.CancelFunc
}

func (w *resumed) Stop()                          { w.stop() }
func (w *resumed) ResultChan() <-chan watch.Event { return w.out }

// run forwards w's events to out, and resumes the stream whenever it ends
// (at once when w is nil), until ctx ends.
func (r *ListWatch) run(ctx context.Context, w watch.Interface, opts metav1.ListOptions, out chan<- watch.Event) {
	defer close(out)
	rv := opts.ResourceVersion
	for {
		var ended error
		if w != nil {
			rv, ended = forward(ctx, w, rv, out)
			w.Stop()
		}
		if ctx.Err() != nil {
			return
		}
		var err error
		if w, rv, err = r.resume(ctx, opts, rv, ended, out); err != nil {
			return // ctx ended
		}
	}
}

// forward sends w's events to out until w ends, and returns the resource
// version of the last one sent, and the error an Error event carried (nil
// when the stream just ended).
func forward(ctx context.Context, w watch.Interface, rv string, out chan<- watch.Event) (string, error) {
	for {
		var e watch.Event
		var ok bool
		select {
		case <-ctx.Done():
			return rv, nil
		case e, ok = <-w.ResultChan():
		}
		if !ok {
			return rv, nil
		}
		if e.Type == watch.Error {
			return rv, apierrors.FromObject(e.Object)
		}
		if m, err := meta.Accessor(e.Object); err == nil && m.GetResourceVersion() != "" {
			rv = m.GetResourceVersion()
		}
		if !send(ctx, out, e) {
			return rv, nil
		}
	}
}

func send(ctx context.Context, out chan<- watch.Event, e watch.Event) bool {
	select {
	case out <- e:
		return true
	case <-ctx.Done():
		return false
	}
}

// resume opens the stream again after it ended (with ended, from an Error
// event, or nil): from rv when the API server stayed up and rv has not
// expired, else from a LIST whose difference from the store it sends to
// out first. It waits for the API server while it is away, and paces its
// attempts while the API server refuses them; only ctx's end stops it.
func (r *ListWatch) resume(ctx context.Context, opts metav1.ListOptions, rv string, ended error, out chan<- watch.Event) (watch.Interface, string, error) {
	// A stream with no resource version yet cannot go on where it ended.
	relist := apierrors.IsResourceExpired(ended) || apierrors.IsGone(ended) || rv == "" || rv == "0"
	if err := r.server.Check(ctx); err != nil {
		// Away: a restarted API server's watch cache begins at the present,
		// so the stream goes on from a LIST.
		relist = true
		r.log.Info("watch ended with the API server away; resuming once it is back", "err", err)
	}
	if relist {
		r.setBehind(true)
	}
	pace := r.pace
	for attempt := 1; ; attempt++ {
		if err := r.server.Wait(ctx); err != nil {
			return nil, "", err
		}
		var w watch.Interface
		var err error
		if relist {
			w, rv, err = r.relist(ctx, opts, out)
		} else {
			o := opts
			o.ResourceVersion = rv
			w, err = r.inner.WatchWithContext(ctx, o)
		}
		if err == nil {
			how := "rewatch"
			if relist {
				how = "relist"
				r.setBehind(false)
				r.log.Info("cache caught up", "attempts", attempt)
			}
			r.metrics.resumes.WithLabelValues(r.name, how).Inc()
			return w, rv, nil
		}
		if ctx.Err() != nil {
			return nil, "", ctx.Err()
		}
		if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
			relist = true
			r.setBehind(true)
			continue
		}
		if r.server.Check(ctx) != nil {
			continue // away again: Wait holds the next attempt until it is back
		}
		if attempt == 1 || attempt%10 == 0 {
			r.log.Warn("resuming the watch failed; trying again", "err", err, "attempts", attempt, "relist", relist)
		}
		if !sleep(ctx, pace) {
			return nil, "", ctx.Err()
		}
		pace = min(2*pace, maxPace)
	}
}

// relist lists the objects, starts the watch from the list's resource
// version, and sends the list's difference from the store to out as watch
// events: those the store lacks as added, those of another resource
// version as modified, and those only the store has as deleted (with the
// store's object).
func (r *ListWatch) relist(ctx context.Context, opts metav1.ListOptions, out chan<- watch.Event) (watch.Interface, string, error) {
	list, err := r.inner.ListWithContext(ctx, metav1.ListOptions{LabelSelector: opts.LabelSelector, FieldSelector: opts.FieldSelector})
	if err != nil {
		return nil, "", fmt.Errorf("list the %s: %w", r.name, err)
	}
	lm, err := meta.ListAccessor(list)
	if err != nil {
		return nil, "", fmt.Errorf("read the %s list: %w", r.name, err)
	}
	items, err := meta.ExtractList(list)
	if err != nil {
		return nil, "", fmt.Errorf("read the %s list: %w", r.name, err)
	}
	o := opts
	o.ResourceVersion = lm.GetResourceVersion()
	w, err := r.inner.WatchWithContext(ctx, o)
	if err != nil {
		return nil, "", err
	}
	for _, e := range Difference(r.store, items) {
		if !send(ctx, out, e) {
			w.Stop()
			return nil, "", ctx.Err()
		}
	}
	return w, o.ResourceVersion, nil
}

// Difference returns the watch events that take store to items: added for
// an object the store lacks, modified for one at another resource version,
// deleted (with the store's object) for one the store alone has.
func Difference(store cache.Store, items []runtime.Object) []watch.Event {
	var events []watch.Event
	listed := make(map[string]bool, len(items))
	for _, obj := range items {
		key, err := cache.MetaNamespaceKeyFunc(obj)
		if err != nil {
			continue
		}
		listed[key] = true
		old, exists, err := store.GetByKey(key)
		switch {
		case err != nil || !exists:
			events = append(events, watch.Event{Type: watch.Added, Object: obj})
		case resourceVersion(old) != resourceVersion(obj):
			events = append(events, watch.Event{Type: watch.Modified, Object: obj})
		}
	}
	for _, key := range store.ListKeys() {
		if listed[key] {
			continue
		}
		if old, exists, err := store.GetByKey(key); err == nil && exists {
			if obj, ok := old.(runtime.Object); ok {
				events = append(events, watch.Event{Type: watch.Deleted, Object: obj})
			}
		}
	}
	return events
}

func resourceVersion(obj any) string {
	m, err := meta.Accessor(obj)
	if err != nil {
		return ""
	}
	return m.GetResourceVersion()
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// From is the ListerWatcher of a typed client's List and Watch (such as
// client.CoreV1().Nodes()'s), with tweak, if not nil, applied to the
// options of every request.
func From[L runtime.Object](list func(context.Context, metav1.ListOptions) (L, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error), tweak func(*metav1.ListOptions)) *cache.ListWatch {
	if tweak == nil {
		tweak = func(*metav1.ListOptions) {}
	}
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			tweak(&o)
			return list(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			tweak(&o)
			return watchFn(ctx, o)
		},
	}
}
