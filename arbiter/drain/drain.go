// Package drain empties cordoned nodes through the Eviction API in the
// background: a work queue of nodes, kubectl's drain filters to choose the
// pods, evictions with no client-side retry and our own backoff on
// PodDisruptionBudget refusals, and a fresh, exact answer to "what is still
// on this node".
package drain

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/workqueue"
	kubectldrain "k8s.io/kubectl/pkg/drain"

	"github.com/rebootmanager/reboot-manager/arbiter/groups"
	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/arbiter/volumes"
)

// Config tunes the drain.
type Config struct {
	// Force evicts pods that no controller manages; without it they block
	// the drain.
	Force bool
	// DeleteEmptyDirData evicts pods with emptyDir volumes; without it they
	// block the drain.
	DeleteEmptyDirData bool
	// Concurrency bounds the evictions in flight for one node.
	Concurrency int
	// Timeout, when positive, is the drain timeout of the groups that set
	// no drainTimeout: after it the node gets a DrainTimeout Warning Event,
	// and the group's drainTimeoutAction applies (yield: the slot is given
	// back; wait: the drain goes on). A reboot is never approved before the
	// node is empty.
	Timeout time.Duration
	// PodTimeout, when positive, is how long one pod may resist eviction or
	// stay terminating before it is named as stuck, in a Warning Event and in
	// the drain message. It is still never skipped.
	PodTimeout time.Duration
	// Self is the arbiter's own pod, evicted only when nothing else is left.
	Self types.NamespacedName
	// Metrics receives the eviction counts; nil means unregistered ones.
	Metrics *Metrics
}

// Nodes is what the drainer needs of the node directory.
type Nodes interface {
	Fresh(ctx context.Context, name string) (*corev1.Node, error)
	SetDrainMessage(ctx context.Context, name, msg string) error
	// Yielded ends the holding's cycle after its drain gave the slot back:
	// uncordon if ours, status DrainFailed with msg.
	Yielded(ctx context.Context, name, holding, msg string) error
	Event(n *corev1.Node, eventType, reason, format string, args ...any)
}

// Cycle says which nodes are to be emptied: those whose slot holder is in
// the Draining phase. Both read the lock objects fresh, never a cache, so a
// node whose slot was released is never evicted on a stale word.
type Cycle interface {
	// Draining returns the node's holder when it is Draining.
	Draining(ctx context.Context, node string) (group string, h lock.Holder, ok bool, err error)
	// DrainingNodes lists every node whose holder is Draining.
	DrainingNodes(ctx context.Context) ([]string, error)
	// Advance changes the holding's record by compare-and-swap.
	Advance(ctx context.Context, group, id string, since time.Time, change func(*lock.Holder)) (lock.Holder, error)
	// Yield gives back the slot of a holding not yet approved and turns
	// its node away until c.Until, by compare-and-swap.
	Yield(ctx context.Context, group, id string, since time.Time, c lock.CoolOff) (bool, error)
}

// Settings gives each group's drain timeout and what it does.
type Settings interface {
	For(group string) groups.Settings
}

// Volumes resolves the PersistentVolumes a pod uses, and says which are
// still attached to a node (package volumes).
type Volumes interface {
	Of(ctx context.Context, pod *corev1.Pod) ([]lock.Volume, error)
	Attached(ctx context.Context, node string, vols []lock.Volume) ([]lock.Volume, error)
}

// Pending is what stands between a node and its reboot.
type Pending struct {
	// Pods are the pods still to go, terminating ones included.
	Pods []corev1.Pod
	// Problems are pods the filters refuse to evict (no controller, local
	// data), which block the drain until the configuration or the pod changes.
	Problems []string
}

// Done reports whether the node is empty of everything that must go.
func (p Pending) Done() bool { return len(p.Pods) == 0 && len(p.Problems) == 0 }

// String lists what remains, for a FleetLock reply or an annotation.
func (p Pending) String() string {
	if p.Done() {
		return "no pods remain"
	}
	names := make([]string, 0, len(p.Pods))
	for _, pod := range p.Pods {
		n := pod.Namespace + "/" + pod.Name
		if pod.DeletionTimestamp != nil {
			n += " (terminating)"
		}
		names = append(names, n)
	}
	sort.Strings(names)
	const show = 10
	more := ""
	if len(names) > show {
		more = fmt.Sprintf(" and %d more", len(names)-show)
		names = names[:show]
	}
	s := fmt.Sprintf("%d pods remain: %s%s", len(p.Pods), strings.Join(names, ", "), more)
	if len(p.Problems) > 0 {
		s += "; cannot evict: " + strings.Join(p.Problems, "; ")
	}
	return s
}

// Drainer evicts the pods of nodes whose slot holder is Draining.
type Drainer struct {
	client   kubernetes.Interface
	nodes    Nodes
	cycle    Cycle
	volumes  Volumes
	settings Settings
	cfg      Config
	log      *slog.Logger
	now      func() time.Time

	mu       sync.Mutex
	queue    workqueue.TypedRateLimitingInterface[string] // nil between Runs
	reported map[string]string                            // node → the last state reported by Event
	since    map[string]map[types.UID]time.Time           // node → pod → when the drain first met it
	podVols  map[string]map[types.UID][]lock.Volume       // node → pod → its volumes, once resolved
}

// New returns a Drainer that reads each group's drain timeout from
// settings. Call Run to start it.
func New(client kubernetes.Interface, nodes Nodes, cycle Cycle, vols Volumes, settings Settings, cfg Config, log *slog.Logger) *Drainer {
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 10
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	return &Drainer{
		client:   client,
		nodes:    nodes,
		cycle:    cycle,
		volumes:  vols,
		settings: settings,
		cfg:      cfg,
		log:      log,
		now:      time.Now,
		reported: map[string]string{},
		since:    map[string]map[types.UID]time.Time{},
		podVols:  map[string]map[types.UID][]lock.Volume{},
	}
}

// Enqueue asks for a drain pass over the node. Between runs (this replica
// does not lead) it does nothing: the next run starts from the lock objects.
func (d *Drainer) Enqueue(node string) {
	d.mu.Lock()
	q := d.queue
	d.mu.Unlock()
	if q != nil {
		q.Add(node)
	}
}

// Pending lists, fresh from the API server, the pods that must still leave
// the node before it may reboot.
func (d *Drainer) Pending(ctx context.Context, node string) (Pending, error) {
	h := &kubectldrain.Helper{
		Ctx:                 ctx,
		Client:              d.client,
		Force:               d.cfg.Force,
		IgnoreAllDaemonSets: true,
		DeleteEmptyDirData:  d.cfg.DeleteEmptyDirData,
		AdditionalFilters:   []kubectldrain.PodFilter{skipTerminal},
		// Out and ErrOut are unused by GetPodsForDeletion.
	}
	list, errs := h.GetPodsForDeletion(node)
	if list == nil {
		return Pending{}, fmt.Errorf("list pods on node %s: %w", node, errors.Join(errs...))
	}
	p := Pending{Pods: list.Pods()}
	for _, err := range errs {
		p.Problems = append(p.Problems, err.Error())
	}
	return p, nil
}

// Attached returns, from a consistent list of the VolumeAttachments, the
// volumes still attached to node.
func (d *Drainer) Attached(ctx context.Context, node string, vols []lock.Volume) ([]lock.Volume, error) {
	return d.volumes.Attached(ctx, node, vols)
}

// skipTerminal leaves out the pods that have finished and that nothing is
// deleting (a completed Job's): they never leave, and hold nothing. A pod
// whose containers exited on its eviction's SIGTERM is terminal too, but
// the kubelet is still tearing it down (its volumes above all) until it
// deletes the object: it still blocks. On kwok nodes a pod vanished at
// once, and the real-node journey (test/journey) found the approval that
// this let through.
func skipTerminal(pod corev1.Pod) kubectldrain.PodDeleteStatus {
	if (pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed) && pod.DeletionTimestamp == nil {
		return kubectldrain.MakePodDeleteStatusSkip()
	}
	return kubectldrain.MakePodDeleteStatusOkay()
}

// Run drains with the given number of workers until ctx ends, and returns
// once they have stopped. Each Run has a queue of its own, so the drainer
// can run again after a leadership term ends; it starts from every node the
// lock objects show Draining.
func (d *Drainer) Run(ctx context.Context, workers int) {
	limiter := workqueue.NewTypedItemExponentialFailureRateLimiter[string](250*time.Millisecond, 10*time.Second)
	q := workqueue.NewTypedRateLimitingQueueWithConfig(limiter, workqueue.TypedRateLimitingQueueConfig[string]{})
	d.mu.Lock()
	d.queue = q
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		if d.queue == q {
			d.queue = nil
		}
		d.mu.Unlock()
	}()
	stop := context.AfterFunc(ctx, q.ShutDown)
	defer stop()
	go d.seed(ctx, q)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for d.next(ctx, q) {
			}
		})
	}
	wg.Wait()
}

// seed queues every node the lock objects show Draining, retrying with
// backoff until it has read them (right after an outage it may not).
func (d *Drainer) seed(ctx context.Context, q workqueue.TypedRateLimitingInterface[string]) {
	_ = wait.ExponentialBackoffWithContext(ctx, wait.Backoff{Duration: time.Second, Factor: 2, Steps: 1 << 30, Cap: 30 * time.Second},
		func(ctx context.Context) (bool, error) {
			names, err := d.cycle.DrainingNodes(ctx)
			if err != nil {
				d.log.Warn("listing the nodes to drain failed; retrying", "err", err)
				return false, nil
			}
			for _, n := range names {
				q.Add(n)
			}
			return true, nil
		})
}

func (d *Drainer) next(ctx context.Context, q workqueue.TypedRateLimitingInterface[string]) bool {
	name, quit := q.Get()
	if quit {
		return false
	}
	defer q.Done(name)
	res, err := d.sync(ctx, name)
	switch {
	case ctx.Err() != nil:
		q.Forget(name)
	case err != nil:
		d.log.Warn("drain pass failed", "node", name, "err", err)
		q.AddRateLimited(name)
	case res == progressed:
		// Pods are leaving: look again soon, and start the backoff afresh.
		q.Forget(name)
		q.AddAfter(name, ProgressDelay)
	case res == stalled:
		q.AddRateLimited(name)
	default:
		q.Forget(name)
	}
	return true
}

// ProgressDelay is the pause before the next pass over a node whose last
// pass evicted something. A pass that evicted nothing (every eviction
// refused) backs off exponentially from 250 ms to 10 s instead.
const ProgressDelay = 250 * time.Millisecond

// passResult is what a drain pass leaves to do.
type passResult int

const (
	finished   passResult = iota // nothing left, or not ours to drain
	progressed                   // some pods were evicted; more remain
	stalled                      // pods remain and none could be evicted
)

// sync makes one pass over a node: it evicts what can go now and reports
// whether another pass is needed.
func (d *Drainer) sync(ctx context.Context, name string) (passResult, error) {
	group, holder, ok, err := d.cycle.Draining(ctx, name)
	if err != nil {
		return finished, err
	}
	if !ok {
		d.forget(name)
		return finished, nil
	}
	// Evict only from the holder's own Node, and only once it is cordoned,
	// both read fresh: a Node re-created under the name is another node.
	node, err := d.nodes.Fresh(ctx, name)
	if apierrors.IsNotFound(err) {
		d.forget(name)
		return finished, nil
	}
	if err != nil {
		return finished, err
	}
	log := d.log.With("node", name, "group", group, "id", holder.ID)
	if holder.NodeUID != "" && holder.NodeUID != node.UID {
		log.Info("not draining: the Node was re-created since its slot was taken")
		d.forget(name)
		return finished, nil
	}
	if !node.Spec.Unschedulable {
		// The holder records the drain before it cordons the node: look
		// again shortly, with backoff.
		log.Debug("not draining yet: the node is not cordoned")
		return stalled, nil
	}
	pending, err := d.Pending(ctx, name)
	if err != nil {
		return finished, err
	}
	if pending.Done() {
		// The Drained Event comes from the approval, which confirms the
		// node empty once per cycle; a pass may never see it empty.
		if d.report(name, "drained") {
			log.Info("node drained")
		}
		return finished, d.nodes.SetDrainMessage(ctx, name, "")
	}

	// Record the pods' volumes before they go: the reboot waits for them
	// to be detached, and a pod that is gone names none.
	if err := d.recordVolumes(ctx, group, holder, pending.Pods); err != nil {
		return finished, err
	}
	blocked, evicted := d.evict(ctx, log, pending.Pods)
	res := stalled
	if evicted > 0 {
		res = progressed
	}
	if stuck := d.stuck(name, pending.Pods); len(stuck) > 0 {
		blocked = append(blocked, fmt.Sprintf("stuck for over %s: %s", d.cfg.PodTimeout, strings.Join(stuck, ", ")))
		if d.report(name+"/stuck", strings.Join(stuck, ",")) {
			log.Warn("pods resist the drain", "pods", stuck, "timeout", d.cfg.PodTimeout)
			d.nodes.Event(node, corev1.EventTypeWarning, "PodEvictionStuck", "still on the node after %s: %s", d.cfg.PodTimeout, strings.Join(stuck, ", "))
		}
	}
	msg := strings.Join(blocked, "; ")
	s := d.settings.For(group)
	timeout := cmp.Or(s.DrainTimeout.Duration, d.cfg.Timeout)
	started := holder.Since
	if holder.DrainingSince != nil {
		started = *holder.DrainingSince
	}
	if timeout > 0 && d.now().Sub(started) > timeout {
		if s.Yields() && !holder.ApprovedBefore {
			return finished, d.yield(ctx, log, node, group, holder, pending, blocked, s, timeout)
		}
		msg = strings.TrimSuffix(fmt.Sprintf("drain running for over %s; %s", timeout, msg), "; ")
		if d.report(name+"/timeout", "timeout") {
			log.Warn("drain is taking longer than the timeout", "timeout", timeout, "pending", pending.String())
			d.nodes.Event(node, corev1.EventTypeWarning, "DrainTimeout", "drain running for over %s: %s", timeout, pending.String())
		}
	}
	if len(blocked) > 0 && d.report(name, strings.Join(blocked, "; ")) {
		log.Info("evictions refused", "blocked", blocked)
		d.nodes.Event(node, corev1.EventTypeWarning, "EvictionBlocked", "%s", strings.Join(blocked, "; "))
	}
	if err := d.nodes.SetDrainMessage(ctx, name, msg); err != nil {
		return res, err
	}
	return res, nil
}

// yield gives the slot of a drain past its timeout back: in one
// compare-and-swap, only while the holding is not approved, it releases
// the slot and turns the node away for the group's cool-off; then it
// uncordons the node if we cordoned it and shows DrainFailed. Nothing is
// approved after it: an approval must find the holding, which is gone.
// (A crash between the two leaves our cordon on a node that holds no
// slot, which the reconciler removes.)
func (d *Drainer) yield(ctx context.Context, log *slog.Logger, node *corev1.Node, group string, h lock.Holder,
	pending Pending, blocked []string, s groups.Settings, timeout time.Duration) error {
	why := pending.String()
	if len(blocked) > 0 {
		why += "; " + strings.Join(blocked, "; ")
	}
	if len(why) > maxWhy {
		// It is kept in the lock object, whose annotations are bounded.
		why = strings.ToValidUTF8(why[:maxWhy], "") + "…"
	}
	until := d.now().Add(s.CoolOff()).UTC()
	yielded, err := d.cycle.Yield(ctx, group, h.ID, h.Since, lock.CoolOff{Node: node.Name, Until: until, Message: why})
	if err != nil || !yielded {
		return err // not yielded: approved or released meanwhile
	}
	d.forget(node.Name)
	d.cfg.Metrics.yields.WithLabelValues(group).Inc()
	msg := fmt.Sprintf("retry after %s: drain did not finish within %s: %s", until.Format(time.RFC3339), timeout, why)
	log.Warn("drain failed; slot given back", "timeout", timeout, "retry_after", until, "pending", why)
	d.nodes.Event(node, corev1.EventTypeWarning, "DrainFailed",
		"drain did not finish within %s; slot given back, node put back in service; it may retry after %s: %s", timeout, until.Format(time.RFC3339), why)
	if err := d.nodes.Yielded(ctx, node.Name, h.Holding(group), msg); err != nil {
		return fmt.Errorf("put the node back in service after its drain failed: %w", err)
	}
	return nil
}

// maxWhy bounds what a failed drain records of what blocked it.
const maxWhy = 1024

// recordVolumes adds the PersistentVolumes of pods to the holder's record,
// by compare-and-swap, before any of them is evicted. A pod's volumes are
// resolved once.
func (d *Drainer) recordVolumes(ctx context.Context, group string, h lock.Holder, pods []corev1.Pod) error {
	var vols []lock.Volume
	for i := range pods {
		p := &pods[i]
		d.mu.Lock()
		pv, ok := d.podVols[h.Node][p.UID]
		d.mu.Unlock()
		if !ok {
			var err error
			if pv, err = d.volumes.Of(ctx, p); err != nil {
				return err
			}
			d.mu.Lock()
			if d.podVols[h.Node] == nil {
				d.podVols[h.Node] = map[types.UID][]lock.Volume{}
			}
			d.podVols[h.Node][p.UID] = pv
			d.mu.Unlock()
		}
		vols = append(vols, pv...)
	}
	if _, added := volumes.Merge(slices.Clone(h.Volumes), vols); !added {
		return nil
	}
	_, err := d.cycle.Advance(ctx, group, h.ID, h.Since, func(r *lock.Holder) {
		r.Volumes, _ = volumes.Merge(r.Volumes, vols)
	})
	if err != nil {
		return fmt.Errorf("record the volumes of the pods to evict: %w", err)
	}
	return nil
}

// evict sends one eviction for each pod not yet terminating, the arbiter's
// own pod only when it is the last, at most Concurrency at once. It returns
// the refusals, described, and how many pods were evicted.
func (d *Drainer) evict(ctx context.Context, log *slog.Logger, pods []corev1.Pod) ([]string, int) {
	var todo []corev1.Pod
	for _, p := range pods {
		if p.DeletionTimestamp == nil {
			todo = append(todo, p)
		}
	}
	if len(todo) > 1 || len(pods) > len(todo) {
		todo = slices.DeleteFunc(todo, func(p corev1.Pod) bool {
			return p.Namespace == d.cfg.Self.Namespace && p.Name == d.cfg.Self.Name
		})
	}
	var (
		mu      sync.Mutex
		blocked []string
		evicted int
		wg      sync.WaitGroup
		sem     = make(chan struct{}, d.cfg.Concurrency)
	)
	for _, p := range todo {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			err := Evict(ctx, d.client, p.Namespace, p.Name)
			d.cfg.Metrics.evictions.WithLabelValues(Result(err)).Inc()
			if err == nil || apierrors.IsNotFound(err) {
				log.Debug("evicted", "pod", p.Namespace+"/"+p.Name)
				mu.Lock()
				evicted++
				mu.Unlock()
				return
			}
			why := Describe(err)
			mu.Lock()
			blocked = append(blocked, fmt.Sprintf("%s/%s: %s", p.Namespace, p.Name, why))
			mu.Unlock()
		})
	}
	wg.Wait()
	sort.Strings(blocked)
	return blocked, evicted
}

// Evict sends one policy/v1 Eviction for a pod, without client-side
// retries: client-go would otherwise silently retry a 429 carrying
// Retry-After for up to ~100 s. Backoff is the caller's job.
func Evict(ctx context.Context, client kubernetes.Interface, namespace, name string) error {
	ev := &policyv1.Eviction{
		TypeMeta:   metav1.TypeMeta{APIVersion: "policy/v1", Kind: "Eviction"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
	}
	return client.CoreV1().RESTClient().Post().
		AbsPath("/api/v1").Namespace(namespace).Resource("pods").Name(name).SubResource("eviction").
		MaxRetries(0).Body(ev).Do(ctx).Error()
}

// Describe explains an eviction refusal, naming the disruption budget when
// one is the cause.
func Describe(err error) string {
	if msg := budgetRefusal(err); msg != "" {
		return "blocked by PodDisruptionBudget: " + msg
	}
	var se apierrors.APIStatus
	if errors.As(err, &se) {
		st := se.Status()
		if st.Code == 429 {
			return "eviction refused (429): " + st.Message
		}
		return st.Message
	}
	return err.Error()
}

// budgetRefusal returns the message of a PodDisruptionBudget's refusal, or
// "" when err is something else.
func budgetRefusal(err error) string {
	var se apierrors.APIStatus
	if !errors.As(err, &se) || se.Status().Details == nil {
		return ""
	}
	for _, c := range se.Status().Details.Causes {
		if c.Type == policyv1.DisruptionBudgetCause {
			return c.Message
		}
	}
	return ""
}

// stuck returns the pods the drain has met for longer than PodTimeout, and
// forgets pods that are gone.
func (d *Drainer) stuck(node string, pods []corev1.Pod) []string {
	if d.cfg.PodTimeout <= 0 {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.now()
	seen := d.since[node]
	next := make(map[types.UID]time.Time, len(pods))
	var out []string
	for _, p := range pods {
		first, ok := seen[p.UID]
		if !ok {
			first = now
		}
		next[p.UID] = first
		if now.Sub(first) > d.cfg.PodTimeout {
			out = append(out, p.Namespace+"/"+p.Name)
		}
	}
	d.since[node] = next
	sort.Strings(out)
	return out
}

// report records what was last reported for key and says whether it changed.
func (d *Drainer) report(key, state string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.reported[key] == state {
		return false
	}
	d.reported[key] = state
	return true
}

func (d *Drainer) forget(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.reported, name)
	delete(d.reported, name+"/timeout")
	delete(d.reported, name+"/stuck")
	delete(d.podVols, name)
	delete(d.since, name)
}
