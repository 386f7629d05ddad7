// Package fleetsim simulates a rollout: a fleet of Zincati agents on kwok
// Nodes asking a FleetLock server for their reboots, in scaled time.
//
// Each host runs Zincati's client state machine as ../shared/notes/
// fleetlock.md describes it: steady-state at start, retried every tick until
// 2xx; once its update is staged, pre-reboot on every tick (300–330 s, no
// backoff; a tick waits for the reply) until 2xx; a reboot of its kwok Node
// (NotReady, a new boot id, Ready again after the reboot time); then
// steady-state again. The wire is Zincati's: a pretty JSON body, no
// Content-Type, the protocol header. A watch on the group's lock object
// records, independently of the server's word, when slots are taken and
// freed and how many are held at every instant.
package fleetsim

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
)

// Zincati's real timing.
const (
	// Tick is Zincati's base tick; each wait adds 0–10% jitter.
	Tick = 300 * time.Second
	// RequestTimeout is Zincati's whole-request timeout.
	RequestTimeout = 30 * time.Minute
)

// Host is one simulated FCOS host.
type Host struct {
	// Node is its kwok Node.
	Node string
	// ID is its Zincati id.
	ID string
}

// Config describes one simulated rollout.
type Config struct {
	// Client reboots the kwok Nodes and watches the lock object.
	Client kubernetes.Interface
	// BaseURL is the FleetLock server's base URL, as in Zincati's drop-in.
	BaseURL string
	// Namespace is the FleetLock server's namespace, where its lock Leases live.
	Namespace string
	// Group is every host's group.
	Group string
	// Slots is the group's configured slots, for the idle-time account.
	Slots int
	// Hosts are the fleet.
	Hosts []Host
	// Scale divides Zincati's tick and the reboot time: 100 runs a rollout
	// 100 times faster than real time. Request timeouts are not scaled.
	Scale float64
	// RebootTime is how long a real reboot keeps a host down (before Scale).
	RebootTime time.Duration
	// Seed makes the jitter and tick phases repeatable.
	Seed uint64
}

// Timeline is one host's rollout.
type Timeline struct {
	Host Host
	// Staged is when its update was staged and its first pre-reboot went out.
	Staged time.Time
	// Asks counts its pre-reboot requests.
	Asks int
	// Locked is when the lock watch first saw it hold a slot.
	Locked time.Time
	// Approved is when its pre-reboot was answered 200.
	Approved time.Time
	// Up is when its Node was Ready again after the reboot.
	Up time.Time
	// Released is when its steady-state after the reboot was answered 200.
	Released time.Time
	// Err is why the host did not finish, if it did not.
	Err error
}

// Run plays the rollout until every host has rebooted and reported back, or
// ctx ends. Every host has been up, with no update, before Run starts.
func Run(ctx context.Context, cfg Config) ([]Timeline, Summary, error) {
	if cfg.Scale <= 0 {
		cfg.Scale = 1
	}
	w, err := watchLock(ctx, cfg.Client, cfg.Namespace, cfg.Group)
	if err != nil {
		return nil, Summary{}, err
	}
	defer w.stop()

	client := &fleetlock.Client{BaseURL: cfg.BaseURL}
	start := time.Now()
	timelines := make([]Timeline, len(cfg.Hosts))
	var wg sync.WaitGroup
	for i, h := range cfg.Hosts {
		rng := rand.New(rand.NewPCG(cfg.Seed, uint64(i)))
		wg.Go(func() { timelines[i] = host(ctx, cfg, client, h, rng) })
	}
	wg.Wait()
	end := time.Now()

	changes, locked := w.snapshot()
	var errs []error
	for i := range timelines {
		timelines[i].Locked = locked[timelines[i].Host.ID]
		if err := timelines[i].Err; err != nil {
			errs = append(errs, fmt.Errorf("host %s: %w", timelines[i].Host.Node, err))
		}
	}
	return timelines, summarize(timelines, changes, cfg.Slots, start, end), errors.Join(errs...)
}

// host runs one Zincati agent through its rollout.
func host(ctx context.Context, cfg Config, client *fleetlock.Client, h Host, rng *rand.Rand) Timeline {
	t := Timeline{Host: h}
	p := fleetlock.ClientParams{ID: h.ID, Group: cfg.Group}
	scaled := func(d time.Duration) time.Duration { return time.Duration(float64(d) / cfg.Scale) }
	tick := func() time.Duration { return scaled(Tick + time.Duration(rng.Int64N(int64(Tick/10)))) }
	sleep := func(d time.Duration) bool {
		select {
		case <-time.After(d):
			return true
		case <-ctx.Done():
			return false
		}
	}
	call := func(op func(context.Context, fleetlock.ClientParams) error) error {
		rctx, cancel := context.WithTimeout(ctx, RequestTimeout)
		defer cancel()
		return op(rctx, p)
	}
	steady := func() bool {
		for call(client.SteadyState) != nil {
			if !sleep(tick()) {
				return false
			}
		}
		return true
	}

	// Started earlier with no update. The update lands at a random point of
	// this host's tick cycle, and the next tick asks to reboot.
	if !sleep(time.Duration(rng.Int64N(int64(scaled(Tick))))) {
		t.Err = ctx.Err()
		return t
	}
	t.Staged = time.Now()
	for {
		t.Asks++
		if call(client.PreReboot) == nil {
			break
		}
		if !sleep(tick()) {
			t.Err = fmt.Errorf("no reboot approved: %w", ctx.Err())
			return t
		}
	}
	t.Approved = time.Now()
	if err := fixtures.Reboot(ctx, cfg.Client, h.Node, scaled(cfg.RebootTime)); err != nil {
		t.Err = fmt.Errorf("reboot: %w", err)
		return t
	}
	t.Up = time.Now()
	// At boot, Zincati reports steady-state at once, then every tick until 2xx.
	if !steady() {
		t.Err = fmt.Errorf("no steady-state answered: %w", ctx.Err())
		return t
	}
	t.Released = time.Now()
	return t
}

// change is the group's holder count from one instant on.
type change struct {
	at      time.Time
	holders int
}

// lockWatch records every change of the group's lock object.
type lockWatch struct {
	stop func()

	mu      sync.Mutex
	changes []change
	locked  map[string]time.Time // id → when first seen holding
}

func watchLock(ctx context.Context, c kubernetes.Interface, namespace, group string) (*lockWatch, error) {
	ctx, cancel := context.WithCancel(ctx)
	w := &lockWatch{stop: cancel, locked: map[string]time.Time{}}
	factory := informers.NewSharedInformerFactoryWithOptions(c, 0, informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + lock.ObjectName(group) }))
	inf := factory.Coordination().V1().Leases().Informer()
	record := func(obj any) {
		l, ok := obj.(*coordinationv1.Lease)
		if !ok {
			return
		}
		holders, err := lock.Decode(l)
		if err != nil {
			return
		}
		now := time.Now()
		w.mu.Lock()
		defer w.mu.Unlock()
		w.changes = append(w.changes, change{at: now, holders: len(holders)})
		for _, h := range holders {
			if _, ok := w.locked[h.ID]; !ok {
				w.locked[h.ID] = now
			}
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    record,
		UpdateFunc: func(_, obj any) { record(obj) },
		DeleteFunc: func(any) {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.changes = append(w.changes, change{at: time.Now()})
		},
	}); err != nil {
		cancel()
		return nil, fmt.Errorf("watch the lock object: %w", err)
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		cancel()
		return nil, errors.New("watch the lock object: the cache never synced")
	}
	// Holders from before the rollout are not part of it.
	w.mu.Lock()
	w.locked = map[string]time.Time{}
	w.mu.Unlock()
	return w, nil
}

func (w *lockWatch) snapshot() ([]change, map[string]time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	locked := make(map[string]time.Time, len(w.locked))
	for k, v := range w.locked {
		locked[k] = v
	}
	return append([]change(nil), w.changes...), locked
}
