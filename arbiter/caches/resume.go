package caches

import (
	"context"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// stream is one watch the reflector holds, across the streams that carry
// it.
type stream struct {
	opts metav1.ListOptions
	out  chan<- watch.Event
	// rv is the resource version the stream has delivered up to.
	rv string
	// last is the last object event delivered: once the store shows it,
	// the store has applied everything delivered.
	last *watch.Event
	// pace is the wait before the next attempt after a failed one.
	pace time.Duration
}

// run forwards w's events, and resumes the stream whenever it ends (at once
// when w is nil), until ctx ends.
func (r *ListWatch) run(ctx context.Context, w watch.Interface, s *stream) {
	defer close(s.out)
	for ctx.Err() == nil {
		var ended error
		if w != nil {
			start := time.Now()
			var n int
			n, ended = forward(ctx, w, s)
			w.Stop()
			if ctx.Err() != nil {
				return
			}
			// A stream that ended at once with nothing, or on an error other
			// than expiry, is a failed attempt: the next waits, longer each
			// time (the reflector's own guards never see it). One that
			// delivered something starts the pace again.
			switch {
			case ended != nil && !expired(ended), n == 0 && time.Since(start) < time.Second:
				if !r.backOff(ctx, s) {
					return
				}
			case n > 0:
				s.pace = r.pace
			}
		}
		var err error
		if w, err = r.resume(ctx, s, ended); err != nil {
			return // ctx ended
		}
	}
}

// forward sends w's events on until w ends, and returns how many it sent,
// and the error an Error event carried (nil when the stream just ended).
func forward(ctx context.Context, w watch.Interface, s *stream) (int, error) {
	for n := 0; ; n++ {
		var e watch.Event
		var ok bool
		select {
		case <-ctx.Done():
			return n, nil
		case e, ok = <-w.ResultChan():
		}
		if !ok {
			return n, nil
		}
		if e.Type == watch.Error {
			return n, apierrors.FromObject(e.Object)
		}
		if !send(ctx, s, e) {
			return n, nil
		}
	}
}

// send delivers e, and records how far the stream has come.
func send(ctx context.Context, s *stream, e watch.Event) bool {
	select {
	case s.out <- e:
	case <-ctx.Done():
		return false
	}
	if rv := resourceVersion(e.Object); rv != "" {
		s.rv = rv
	}
	if e.Type != watch.Bookmark {
		s.last = &e
	}
	return true
}

// resume opens the stream again after it ended (with ended, from an Error
// event, or nil): from the last resource version when the API server
// stayed up, else (after an outage, an expiry, or refusals) from a LIST
// whose difference from the store it delivers first. It waits for the API
// server while it is away and paces its attempts while the API server
// refuses them; only ctx's end stops it.
func (r *ListWatch) resume(ctx context.Context, s *stream, ended error) (watch.Interface, error) {
	relist := expired(ended) || s.rv == "" || s.rv == "0"
	if err := r.server.Check(ctx); err != nil {
		// Away: a restarted API server's watch cache begins at the present,
		// so the stream goes on from a LIST.
		relist = true
		r.log.Info("watch ended with the API server away; resuming once it is back", "err", err)
	}
	for attempt := 1; ; attempt++ {
		if relist {
			r.setBehind(true)
		}
		if err := r.server.Wait(ctx); err != nil {
			return nil, err
		}
		var w watch.Interface
		var err error
		if relist {
			w, err = r.relist(ctx, s)
		} else {
			o := s.opts
			o.ResourceVersion = s.rv
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
			return w, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		relist = relist || expired(err) || attempt >= rewatchAttempts
		if r.server.Check(ctx) != nil {
			continue // away again: Wait holds the next attempt until it is back
		}
		if attempt == 1 || attempt%10 == 0 {
			r.log.Warn("resuming the watch failed; trying again", "err", err, "attempts", attempt, "relist", relist)
		}
		if !r.backOff(ctx, s) {
			return nil, ctx.Err()
		}
	}
}

// backOff waits the stream's pace, then doubles it up to maxPace; false
// when ctx ended first.
func (r *ListWatch) backOff(ctx context.Context, s *stream) bool {
	t := time.NewTimer(s.pace)
	defer t.Stop()
	s.pace = min(2*s.pace, maxPace)
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// relist lists the objects, starts the watch from the list's resource
// version, and delivers the list's difference from the store first (see
// difference), then a bookmark at the list's resource version. It diffs
// only once the store has applied what the stream delivered before (an
// object delivered, not yet applied, and deleted meanwhile would otherwise
// stay), and returns once the store has applied the difference too.
func (r *ListWatch) relist(ctx context.Context, s *stream) (watch.Interface, error) {
	r.waitApplied(ctx, s.last)
	list, err := r.inner.ListWithContext(ctx, metav1.ListOptions{LabelSelector: s.opts.LabelSelector, FieldSelector: s.opts.FieldSelector})
	if err != nil {
		return nil, err
	}
	lm, err := meta.ListAccessor(list)
	if err != nil {
		return nil, err
	}
	items, err := meta.ExtractList(list)
	if err != nil {
		return nil, err
	}
	o := s.opts
	o.ResourceVersion = lm.GetResourceVersion()
	w, err := r.inner.WatchWithContext(ctx, o)
	if err != nil {
		return nil, err
	}
	events := difference(r.store, items)
	if b := r.example.DeepCopyObject(); meta.NewAccessor().SetResourceVersion(b, o.ResourceVersion) == nil {
		events = append(events, watch.Event{Type: watch.Bookmark, Object: b})
	}
	for _, e := range events {
		if !send(ctx, s, e) {
			w.Stop()
			return nil, ctx.Err()
		}
	}
	s.rv = o.ResourceVersion
	r.waitApplied(ctx, s.last)
	return w, nil
}

// waitApplied waits, up to applyWait, until the store shows e applied: in
// order, so everything delivered before it is applied too.
func (r *ListWatch) waitApplied(ctx context.Context, e *watch.Event) {
	if e == nil {
		return
	}
	key, err := cache.MetaNamespaceKeyFunc(e.Object)
	if err != nil {
		return
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	deadline := time.Now().Add(applyWait)
	for {
		obj, exists, err := r.store.GetByKey(key)
		var applied bool
		switch {
		case err != nil:
		case e.Type == watch.Deleted:
			applied = !exists || resourceVersion(obj) != resourceVersion(e.Object)
		default:
			applied = exists && resourceVersion(obj) == resourceVersion(e.Object)
		}
		if applied {
			return
		}
		if time.Now().After(deadline) {
			r.log.Warn("the informer has not applied the last event delivered; going on", "key", key, "type", e.Type)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// difference returns the watch events that take store to items: added for
// an object the store lacks, modified for one at another resource version,
// deleted (with a copy of the store's object) for one the store alone has.
func difference(store cache.Store, items []runtime.Object) []watch.Event {
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
		// A copy: the informer transforms what it is given in place, and
		// the store's object is shared with every reader.
		if old, exists, err := store.GetByKey(key); err == nil && exists {
			if obj, ok := old.(runtime.Object); ok {
				events = append(events, watch.Event{Type: watch.Deleted, Object: obj.DeepCopyObject()})
			}
		}
	}
	return events
}

func expired(err error) bool { return apierrors.IsResourceExpired(err) || apierrors.IsGone(err) }

func resourceVersion(obj any) string {
	m, err := meta.Accessor(obj)
	if err != nil {
		return ""
	}
	return m.GetResourceVersion()
}
