// Package apihealth follows whether the API server is ready, for the
// arbiter's own readiness: an arbiter that cannot write a decision should
// get no requests, and answers every one 503 until the API server is back.
package apihealth

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"k8s.io/client-go/rest"
)

// Probe asks the API server's /readyz at an interval.
type Probe struct {
	mu  sync.Mutex
	err error // the last probe's failure, nil when ready
}

// Start probes the API server behind client at once and then every interval
// until ctx ends.
func Start(ctx context.Context, client rest.Interface, interval time.Duration, log *slog.Logger) *Probe {
	p := &Probe{}
	probe := func() {
		pctx, cancel := context.WithTimeout(ctx, interval)
		defer cancel()
		err := client.Get().AbsPath("/readyz").Do(pctx).Error()
		if err != nil {
			err = fmt.Errorf("the API server is not ready: %w", err)
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		switch {
		case err != nil && p.err == nil:
			log.Warn("API server unreachable; answering 503 until it is back", "err", err)
		case err == nil && p.err != nil:
			log.Info("API server reachable again")
		}
		p.err = err
	}
	probe()
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				probe()
			}
		}
	}()
	return p
}

// Ready returns why the API server is not ready, or nil.
func (p *Probe) Ready() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}
