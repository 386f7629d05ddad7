package cachehealth

import (
	"context"
	"errors"
	"testing"

	"k8s.io/client-go/tools/cache"
)

type informer struct {
	rv      string
	handler cache.WatchErrorHandlerWithContext
}

func (i *informer) LastSyncResourceVersion() string { return i.rv }
func (i *informer) SetWatchErrorHandlerWithContext(h cache.WatchErrorHandlerWithContext) error {
	i.handler = h
	return nil
}

func TestTracker(t *testing.T) {
	tr := New()
	tr.onFail = func(context.Context, *cache.Reflector, error) {}
	a, b := &informer{rv: "10"}, &informer{rv: "20"}
	for _, inf := range []*informer{a, b} {
		if err := tr.Track(inf); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		name string
		do   func()
		want bool
	}{
		{"no failure", func() {}, true},
		{"a's watch breaks", func() { a.handler(context.Background(), nil, errors.New("connection refused")) }, false},
		{"it breaks again, nothing new", func() { a.handler(context.Background(), nil, errors.New("refused")) }, false},
		{"b moves on: a still stale", func() { b.rv = "21" }, false},
		{"a relists", func() { a.rv = "30" }, true},
		{"b breaks", func() { b.handler(context.Background(), nil, errors.New("EOF")) }, false},
		{"b sees an event", func() { b.rv = "31" }, true},
	}
	for _, s := range steps {
		s.do()
		if got := tr.Fresh(); got != s.want {
			t.Fatalf("%s: Fresh() = %v, want %v", s.name, got, s.want)
		}
	}
}
