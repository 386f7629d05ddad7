// Package apihealth follows whether the API server is ready, for the
// arbiter's own readiness: an arbiter that cannot write a decision should
// get no requests, and answers every one 503 until the API server is back.
// Its caches wait on it too (package caches): they resume their watches as
// soon as it sees the API server back.
package apihealth

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"k8s.io/client-go/rest"
)

// DownInterval is how often the probe asks while the API server is away:
// the caches and the answers come back within about this long of the API
// server's /readyz.
const DownInterval = 250 * time.Millisecond

// Probe asks the API server's /readyz at an interval, and more often while
// it is not ready.
type Probe struct {
	client   rest.Interface
	interval time.Duration
	log      *slog.Logger
	// down wakes the loop when a Check finds the server away, so that the
	// next probe comes at the shorter interval.
	down chan struct{}

	mu   sync.Mutex
	err  error         // the last probe's failure, nil when ready
	back chan struct{} // closed while ready; a new one while not
}

// Start probes the API server behind client at once and then every interval
// (DownInterval while it is not ready) until ctx ends.
func Start(ctx context.Context, client rest.Interface, interval time.Duration, log *slog.Logger) *Probe {
	p := &Probe{client: client, interval: interval, log: log, down: make(chan struct{}, 1), back: make(chan struct{})}
	close(p.back)
	p.probe(ctx)
	go p.run(ctx)
	return p
}

func (p *Probe) run(ctx context.Context) {
	t := time.NewTimer(p.next())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.probe(ctx)
		case <-p.down:
		}
		t.Reset(p.next())
	}
}

// next is the time to the next probe.
func (p *Probe) next() time.Duration {
	if p.Ready() != nil {
		return min(DownInterval, p.interval)
	}
	return p.interval
}

// probe asks /readyz once and records the answer.
func (p *Probe) probe(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, p.interval)
	defer cancel()
	err := p.client.Get().AbsPath("/readyz").Do(pctx).Error()
	if err != nil {
		err = fmt.Errorf("the API server is not ready: %w", err)
	}
	p.set(err)
	return err
}

func (p *Probe) set(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case err != nil && p.err == nil:
		p.log.Warn("API server unreachable; answering 503 until it is back", "err", err)
		p.back = make(chan struct{})
		select {
		case p.down <- struct{}{}:
		default:
		}
	case err == nil && p.err != nil:
		p.log.Info("API server reachable again")
		close(p.back)
	}
	p.err = err
}

// Ready returns why the API server is not ready, or nil.
func (p *Probe) Ready() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Wait returns once the probe has seen the API server ready, at once if
// it is, or ctx's error when ctx ends first.
func (p *Probe) Wait(ctx context.Context) error {
	p.mu.Lock()
	back := p.back
	p.mu.Unlock()
	select {
	case <-back:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Check probes the API server now, for a caller that saw a request fail
// and must know whether the server is away, and returns why it is not
// ready, or nil. The result is recorded as any probe's is, so Wait blocks
// from then on until the API server is back.
func (p *Probe) Check(ctx context.Context) error {
	return p.probe(ctx)
}
