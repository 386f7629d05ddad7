package lock

import (
	"context"
	"sync"
	"time"
)

// sharedRead lets concurrent callers share consistent reads without losing
// freshness: every caller gets the result of a read that started after it
// called. At most one read is in flight; callers that arrive meanwhile wait
// for the next one, which starts when the one in flight ends and serves
// them all. Under load each read serves many callers, so the API requests
// per caller fall below one while every answer stays as fresh as its own
// read would have been. Reads start at least spacing apart, so a flood of
// callers costs at most one read per spacing and leaves the rest of the
// client's request budget to drains and compare-and-swaps.
type sharedRead[T any] struct {
	read    func(context.Context) (T, error)
	timeout time.Duration
	spacing time.Duration

	mu       sync.Mutex
	inFlight bool
	next     *round[T] // the round that starts when the one in flight ends
	last     time.Time // when the last read started
}

type round[T any] struct {
	done chan struct{}
	val  T
	err  error
}

// do returns the result of a read that started after the call.
func (s *sharedRead[T]) do(ctx context.Context) (T, error) {
	s.mu.Lock()
	var r *round[T]
	if s.inFlight {
		if s.next == nil {
			s.next = &round[T]{done: make(chan struct{})}
		}
		r = s.next
	} else {
		r = &round[T]{done: make(chan struct{})}
		s.inFlight = true
		go s.run(r)
	}
	s.mu.Unlock()
	select {
	case <-r.done:
		return r.val, r.err
	case <-ctx.Done():
		var zero T
		return zero, context.Cause(ctx)
	}
}

// run reads for r, then for the round that gathered meanwhile, if any.
func (s *sharedRead[T]) run(r *round[T]) {
	for r != nil {
		s.mu.Lock()
		wait := time.Until(s.last.Add(s.spacing))
		s.mu.Unlock()
		if wait > 0 {
			time.Sleep(wait)
		}
		s.mu.Lock()
		s.last = time.Now()
		s.mu.Unlock()
		// The read serves several callers, so no one caller's context
		// bounds it.
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		r.val, r.err = s.read(ctx)
		cancel()
		close(r.done)
		s.mu.Lock()
		r, s.next = s.next, nil
		s.inFlight = r != nil
		s.mu.Unlock()
	}
}
