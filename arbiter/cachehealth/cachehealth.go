// Package cachehealth tells whether the arbiter's informer caches can be
// trusted for a decision made without an API request: not while a watch
// has broken (the API server went away, say) and no event has arrived
// since.
package cachehealth

import (
	"context"
	"sync"

	"k8s.io/client-go/tools/cache"
)

// Informer is what Tracker needs of a shared informer.
type Informer interface {
	LastSyncResourceVersion() string
	SetWatchErrorHandlerWithContext(handler cache.WatchErrorHandlerWithContext) error
}

// Tracker follows the watches of some informers.
type Tracker struct {
	mu     sync.Mutex
	watch  map[Informer]string // informer → its last resourceVersion when its watch broke
	onFail func(ctx context.Context, r *cache.Reflector, err error)
}

// New returns a Tracker; call Track for each informer before it starts.
func New() *Tracker {
	return &Tracker{watch: map[Informer]string{}, onFail: cache.DefaultWatchErrorHandler}
}

// Track follows inf's watch: a failure marks its cache stale until it
// records a newer resourceVersion (a fresh list, or a watch event).
func (t *Tracker) Track(inf Informer) error {
	return inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, r *cache.Reflector, err error) {
		t.mu.Lock()
		if _, broken := t.watch[inf]; !broken {
			t.watch[inf] = inf.LastSyncResourceVersion()
		}
		t.mu.Unlock()
		t.onFail(ctx, r, err)
	})
}

// Fresh reports whether every tracked cache is current: no watch broke, or
// each that broke has seen a newer resourceVersion since.
func (t *Tracker) Fresh() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for inf, rv := range t.watch {
		if inf.LastSyncResourceVersion() != rv {
			delete(t.watch, inf)
		}
	}
	return len(t.watch) == 0
}
