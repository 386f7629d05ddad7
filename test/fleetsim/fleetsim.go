// Package fleetsim simulates a rollout: a fleet of Zincati agents on kwok
// Nodes asking a FleetLock server for their reboots, in scaled time.
//
// Each host runs Zincati's client state machine as ../shared/notes/
// fleetlock.md describes it: steady-state at start, retried every tick until
// 2xx; once its update is staged, pre-reboot on every tick (300–330 s, no
// backoff; a tick waits for the reply) until 2xx; then the reboot, in the
// order ../shared/notes/after-reboot.md gives: the host goes down (its kwok
// Node's Lease taken over, so nothing reports for it) for the reboot time;
// Zincati starts and sends its steady-state at once, before kubelet has
// reported the new boot; kubelet reports it (a new boot id and OS version,
// Ready) a moment later. The wire is Zincati's: a pretty JSON body, no
// Content-Type, the protocol header. A watch on the group's lock object
// records, independently of the server's word, when slots are taken and
// freed and how many are held at every instant.
package fleetsim

import (
	"context"
	"errors"
	"fmt"
	"maps"
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
	// Stuck marks a host whose drain can never finish: it asks on every
	// tick until the others are done, and must never be approved.
	Stuck bool
}

// Config describes one simulated rollout.
type Config struct {
	// Client reboots the kwok Nodes and watches the lock object.
	Client kubernetes.Interface
	// BaseURL is the FleetLock server's base URL, as in Zincati's drop-in.
	BaseURL string
	// BaseURLs, when set, are several replicas' base URLs: host i asks
	// BaseURLs[i % len], as a Service spreading its connections would.
	BaseURLs []string
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
	// KubeletDelay is how long after Zincati's steady-state kubelet reports
	// the new boot (before Scale).
	KubeletDelay time.Duration
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
	// SteadyState is when its steady-state after the reboot was answered
	// 200: before kubelet reports the new boot.
	SteadyState time.Time
	// Up is when its Node was Ready again on the new boot.
	Up time.Time
	// Released is when the lock watch saw its slot freed.
	Released time.Time
	// DrainFailed counts the answers drain_failed (a stuck host's).
	DrainFailed int
	// Err is why the host did not finish, if it did not.
	Err error
}

// Run plays the rollout until every host has rebooted and reported back, or
// ctx ends. Every host has been up, with no update, before Run starts.
func Run(ctx context.Context, cfg Config) ([]Timeline, Summary, error) {
	if cfg.Scale <= 0 {
		cfg.Scale = 1
	}
	w, err := WatchLock(ctx, cfg.Client, cfg.Namespace, cfg.Group)
	if err != nil {
		return nil, Summary{}, err
	}
	defer w.Stop()

	urls := cfg.BaseURLs
	if len(urls) == 0 {
		urls = []string{cfg.BaseURL}
	}
	start := time.Now()
	timelines := make([]Timeline, len(cfg.Hosts))
	var wg, stuck sync.WaitGroup
	stuckCtx, stopStuck := context.WithCancel(ctx)
	defer stopStuck()
	for i, h := range cfg.Hosts {
		rng := rand.New(rand.NewPCG(cfg.Seed, uint64(i)))
		client := &fleetlock.Client{BaseURL: urls[i%len(urls)]}
		if h.Stuck {
			stuck.Go(func() { timelines[i] = stuckHost(stuckCtx, cfg, client, h, rng) })
			continue
		}
		wg.Go(func() { timelines[i] = host(ctx, cfg, client, w, h, rng) })
	}
	wg.Wait()
	end := time.Now()
	stopStuck()
	stuck.Wait()

	changes, locked, freed := w.snapshot()
	var errs []error
	for i := range timelines {
		timelines[i].Locked = locked[timelines[i].Host.ID]
		if timelines[i].Err == nil && !timelines[i].Host.Stuck {
			timelines[i].Released = freed[timelines[i].Host.ID]
		}
		if err := timelines[i].Err; err != nil {
			errs = append(errs, fmt.Errorf("host %s: %w", timelines[i].Host.Node, err))
		}
	}
	return timelines, summarize(timelines, changes, cfg.Slots, start, end), errors.Join(errs...)
}

// host runs one Zincati agent through its rollout.
func host(ctx context.Context, cfg Config, client *fleetlock.Client, w *LockWatch, h Host, rng *rand.Rand) Timeline {
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
	kubelet, err := fixtures.TakeDown(ctx, cfg.Client, h.Node, time.Hour)
	if err != nil {
		t.Err = fmt.Errorf("reboot: %w", err)
		return t
	}
	if !sleep(scaled(cfg.RebootTime)) {
		t.Err = ctx.Err()
		return t
	}
	// At boot, Zincati reports steady-state at once, then every tick until
	// 2xx; kubelet has not reported the new boot yet.
	if !steady() {
		t.Err = fmt.Errorf("no steady-state answered: %w", ctx.Err())
		return t
	}
	t.SteadyState = time.Now()
	if !sleep(scaled(cfg.KubeletDelay)) {
		t.Err = ctx.Err()
		return t
	}
	if _, err := fixtures.BootAgain(ctx, cfg.Client, h.Node, fixtures.OSImage(), true); err != nil {
		t.Err = fmt.Errorf("report the new boot: %w", err)
		return t
	}
	t.Up = time.Now()
	if err := fixtures.BringBack(ctx, cfg.Client, h.Node, kubelet); err != nil {
		t.Err = err
		return t
	}
	// The slot is the server's to release now: wait for the watch to see it.
	for !w.freedSince(h.ID, t.Approved) {
		if !sleep(10 * time.Millisecond) {
			t.Err = fmt.Errorf("slot never released: %w", ctx.Err())
			return t
		}
	}
	return t
}

// stuckHost runs the Zincati agent of a host whose drain never finishes:
// it asks on every tick until ctx ends, and records an approval as an
// error (it would reboot with its pods on it).
func stuckHost(ctx context.Context, cfg Config, client *fleetlock.Client, h Host, rng *rand.Rand) Timeline {
	t := Timeline{Host: h, Staged: time.Now()}
	p := fleetlock.ClientParams{ID: h.ID, Group: cfg.Group}
	tick := func() time.Duration {
		return time.Duration(float64(Tick+time.Duration(rng.Int64N(int64(Tick/10)))) / cfg.Scale)
	}
	for {
		t.Asks++
		err := client.PreReboot(ctx, p)
		switch {
		case err == nil:
			t.Approved = time.Now()
			t.Err = errors.New("approved although its drain cannot finish")
			return t
		case fleetlock.IsKind(err, fleetlock.KindDrainFailed):
			t.DrainFailed++
		}
		select {
		case <-time.After(tick()):
		case <-ctx.Done():
			return t
		}
	}
}

// change is the group's holder count from one instant on.
type change struct {
	at      time.Time
	holders int
}

// LockWatch records every change of a group's lock object, independently
// of the server's word.
type LockWatch struct {
	stop func()

	mu      sync.Mutex
	changes []change
	locked  map[string]time.Time // id → when first seen holding
	freed   map[string]time.Time // id → when last seen no longer holding
}

// WatchLock watches group's lock object in namespace until ctx ends or
// Stop is called; holdings from before the call are not recorded.
func WatchLock(ctx context.Context, c kubernetes.Interface, namespace, group string) (*LockWatch, error) {
	ctx, cancel := context.WithCancel(ctx)
	w := &LockWatch{stop: cancel, locked: map[string]time.Time{}, freed: map[string]time.Time{}}
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
		held := map[string]bool{}
		for _, h := range holders {
			held[h.ID] = true
			if _, ok := w.locked[h.ID]; !ok {
				w.locked[h.ID] = now
			}
		}
		for id, at := range w.locked {
			if f, ok := w.freed[id]; !held[id] && (!ok || f.Before(at)) {
				w.freed[id] = now
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
	w.locked, w.freed = map[string]time.Time{}, map[string]time.Time{}
	w.mu.Unlock()
	return w, nil
}

// Stop ends the watch.
func (w *LockWatch) Stop() { w.stop() }

// FreedAfter returns when the watch saw id's slot freed, if after t.
func (w *LockWatch) FreedAfter(id string, t time.Time) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f, ok := w.freed[id]
	return f, ok && f.After(t)
}

// MaxHolders is the most holders the watch saw at once.
func (w *LockWatch) MaxHolders() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	most := 0
	for _, c := range w.changes {
		most = max(most, c.holders)
	}
	return most
}

func (w *LockWatch) snapshot() ([]change, map[string]time.Time, map[string]time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]change(nil), w.changes...), maps.Clone(w.locked), maps.Clone(w.freed)
}

// freedSince reports whether the watch saw id's slot freed after t.
func (w *LockWatch) freedSince(id string, t time.Time) bool {
	_, ok := w.FreedAfter(id, t)
	return ok
}
