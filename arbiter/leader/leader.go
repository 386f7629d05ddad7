// Package leader runs work in leadership terms: while this replica holds
// the leader-election Lease, and never two terms at once.
package leader

import (
	"context"
	"log/slog"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationclient "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Config names the leader-election Lease and this replica.
type Config struct {
	// Namespace and Name are the Lease's.
	Namespace, Name string
	// Identity is this replica's name in the Lease.
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod are client-go's; zero
	// means 15 s, 10 s and 2 s.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// Run calls term once per leadership term, with a context that ends when
// the term does, until ctx ends. A term that ends (the Lease could not be
// renewed within RenewDeadline, say while the API server is away) is
// followed by a new election; the next term starts only after term has
// returned, so the work of two terms never overlaps. On shutdown the Lease
// is released, so another replica takes over at once.
func Run(ctx context.Context, client coordinationclient.LeasesGetter, cfg Config, log *slog.Logger, term func(context.Context)) {
	if cfg.LeaseDuration == 0 {
		cfg.LeaseDuration, cfg.RenewDeadline, cfg.RetryPeriod = 15*time.Second, 10*time.Second, 2*time.Second
	}
	rl := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: cfg.Name, Namespace: cfg.Namespace},
		Client:     client,
		LockConfig: resourcelock.ResourceLockConfig{Identity: cfg.Identity},
	}
	for n := 1; ctx.Err() == nil; n++ {
		started, done := make(chan struct{}), make(chan struct{})
		// RunOrDie starts OnStartedLeading in a goroutine and returns as soon
		// as renewing fails, without waiting for it.
		leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
			Lock:            rl,
			ReleaseOnCancel: true,
			LeaseDuration:   cfg.LeaseDuration,
			RenewDeadline:   cfg.RenewDeadline,
			RetryPeriod:     cfg.RetryPeriod,
			Name:            cfg.Name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					close(started)
					defer close(done)
					log.Info("leading: draining and reconciling", "identity", cfg.Identity, "term", n)
					term(ctx)
				},
				OnStoppedLeading: func() { log.Info("stopped leading", "identity", cfg.Identity, "term", n) },
			},
		})
		// RunOrDie returns before ctx ends only after it led, so the term has
		// started or is about to. Once ctx ends, a term that never started
		// never will.
		if ctx.Err() == nil {
			<-started
		}
		select {
		case <-started:
			<-done // the term's context is cancelled: wait until its work stopped
			log.Info("leadership term ended", "identity", cfg.Identity, "term", n)
		default:
		}
	}
}
