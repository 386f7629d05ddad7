package coordinator

import "sync"

// waitQueue holds, per group, the pre-reboots waiting server-side for a
// slot, first come first served. It only orders wake-ups: the lock object
// stays the single source of truth, so a woken waiter still has to win its
// compare-and-swap.
type waitQueue struct {
	mu      sync.Mutex
	waiters map[string][]*waiter
}

// waiter is one waiting request.
type waiter struct {
	id   string
	wake chan struct{} // buffered: a wake-up is never lost, never blocks
}

func newWaitQueue() *waitQueue { return &waitQueue{waiters: map[string][]*waiter{}} }

// join appends a waiter for id to group's queue and returns its place:
// 0 when it is the only one.
func (q *waitQueue) join(group, id string) (*waiter, int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	w := &waiter{id: id, wake: make(chan struct{}, 1)}
	q.waiters[group] = append(q.waiters[group], w)
	return w, len(q.waiters[group]) - 1
}

// leave removes w from group's queue.
func (q *waitQueue) leave(group string, w *waiter) {
	q.mu.Lock()
	defer q.mu.Unlock()
	ws := q.waiters[group]
	for i, x := range ws {
		if x == w {
			ws = append(ws[:i:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(q.waiters, group)
	} else {
		q.waiters[group] = ws
	}
}

// wake signals the waiters of group that due selects, by their place on
// this replica and their id.
func (q *waitQueue) wake(group string, due func(i int, id string) bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, w := range q.waiters[group] {
		if due(i, w.id) {
			select {
			case w.wake <- struct{}{}:
			default:
			}
		}
	}
}

// groups returns the groups that have waiters.
func (q *waitQueue) groups() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]string, 0, len(q.waiters))
	for g := range q.waiters {
		out = append(out, g)
	}
	return out
}

// size returns the number of waiters in group.
func (q *waitQueue) size(group string) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.waiters[group])
}
