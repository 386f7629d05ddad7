package coordinator

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// IDCheckAge is the oldest an id check may be when an approval uses it: a
// Node that joins with the id after the check's list is missed by it, so
// the window stays short. An older check is made again.
const IDCheckAge = 2 * time.Second

// idCheck is the consistent list of the Nodes that carry an id, confirming
// before an approval that the id names one Node (see approve). It starts
// ahead of its use, so that its list, the longest read of a cycle in a
// large cluster, runs alongside the cordon and the pods' list instead of
// after them.
type idCheck struct {
	started time.Time
	cancel  context.CancelFunc
	done    chan struct{}
	found   []*corev1.Node
	err     error
}

// startIDCheck starts the list for id, within the request's ctx.
func (c *Coordinator) startIDCheck(ctx context.Context, id string) *idCheck {
	ctx, cancel := context.WithCancel(ctx)
	k := &idCheck{started: c.now(), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(k.done)
		k.found, k.err = c.nodes.LookupFresh(ctx, id)
	}()
	return k
}

// stop ends k's list if it still runs, and returns once it has ended.
func (k *idCheck) stop() {
	k.cancel()
	<-k.done
}

// confirmID returns the Nodes that carry id, on a consistent list: k's, if
// it started at most IDCheckAge ago, else one made now.
func (c *Coordinator) confirmID(ctx context.Context, k *idCheck, id string) ([]*corev1.Node, error) {
	if k == nil || c.now().Sub(k.started) > IDCheckAge {
		return c.nodes.LookupFresh(ctx, id)
	}
	select {
	case <-k.done:
		return k.found, k.err
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}
