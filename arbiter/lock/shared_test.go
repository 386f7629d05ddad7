package lock

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestSharedReadIsFresh: every caller gets a read that started after it
// called, and callers that overlap share reads.
func TestSharedReadIsFresh(t *testing.T) {
	var writes atomic.Int64 // the "state": a counter bumped before each call
	var reads atomic.Int64
	s := &sharedRead[int64]{timeout: time.Second, spacing: time.Millisecond, read: func(context.Context) (int64, error) {
		reads.Add(1)
		v := writes.Load()
		time.Sleep(2 * time.Millisecond)
		return v, nil
	}}
	const callers = 200
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			seen := writes.Add(1) // a write completed before this call
			got, err := s.do(context.Background())
			if err != nil {
				t.Error(err)
				return
			}
			if got < seen {
				t.Errorf("read %d, but write %d completed before the call: a stale read", got, seen)
			}
		})
	}
	wg.Wait()
	if n := reads.Load(); n >= callers {
		t.Errorf("%d reads for %d overlapping callers: none shared", n, callers)
	}
	t.Logf("%d reads served %d callers", reads.Load(), callers)
}

func TestSharedReadCallerGivesUp(t *testing.T) {
	release := make(chan struct{})
	s := &sharedRead[int]{timeout: time.Second, read: func(context.Context) (int, error) { <-release; return 1, nil }}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := s.do(ctx); err == nil {
		t.Fatal("a caller whose context ended got a result")
	}
	close(release)
	if v, err := s.do(context.Background()); err != nil || v != 1 {
		t.Fatalf("next caller = %d, %v", v, err)
	}
}
