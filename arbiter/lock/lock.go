// Package lock is the per-group reboot semaphore, kept in coordination.k8s.io
// Lease objects: a recursive, counting lock whose every change is a
// compare-and-swap on the object's resourceVersion, so any number of arbiter
// replicas can share it.
package lock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	coordinationclient "k8s.io/client-go/kubernetes/typed/coordination/v1"
	coordinationlisters "k8s.io/client-go/listers/coordination/v1"

	"github.com/rebootmanager/reboot-manager/shared/annotations"
)

// Label marks the Leases that are lock objects, so informers and the
// status command can select them.
const Label = "rebootmanager/lock"

// MaxAttempts bounds the compare-and-swap retries of one operation.
const MaxAttempts = 8

// ErrContention is returned when MaxAttempts compare-and-swaps in a row lost
// their race. Nothing was changed; the caller may try again.
var ErrContention = errors.New("lock object changed under every attempt")

// Holder is one holder of a slot.
type Holder struct {
	// ID is the Zincati id that took the slot.
	ID string `json:"id"`
	// Node is the Node the id mapped to, if any.
	Node string `json:"node,omitempty"`
	// Since is when the slot was taken.
	Since time.Time `json:"since"`
}

// Who names the holder for people: its node, or "id <ID>" for a host
// outside the cluster.
func (h Holder) Who() string {
	if h.Node != "" {
		return h.Node
	}
	return "id " + h.ID
}

// Result is the outcome of Acquire.
type Result struct {
	// Granted is true when the caller holds a slot.
	Granted bool
	// Changed is true when this call took the slot (false when the caller
	// already held it, or when it was denied).
	Changed bool
	// Holders are the group's holders after the call.
	Holders []Holder
	// GapLeft, on a denial with a slot free, is how long the group's
	// minimum gap still forbids a grant.
	GapLeft time.Duration
}

// Limits bound the grants in a group.
type Limits struct {
	// Slots is how many holders the group may have.
	Slots int
	// MinGap is the least time between two grants.
	MinGap time.Duration
}

// Semaphore is the set of group semaphores in one namespace.
type Semaphore struct {
	client    coordinationclient.LeasesGetter
	namespace string
	lister    coordinationlisters.LeaseLister
	now       func() time.Time
}

// New returns a Semaphore that writes through client and reads the cheap,
// possibly stale views (Holds, Cached, All) from lister, which must watch
// the Leases labelled Label in namespace. A one-shot command that uses only
// Acquire, Release and Fresh may pass a nil lister.
func New(client coordinationclient.LeasesGetter, lister coordinationlisters.LeaseLister, namespace string) *Semaphore {
	return &Semaphore{client: client, lister: lister, namespace: namespace, now: time.Now}
}

// Acquire takes a slot in group for h, or confirms that h.ID already holds
// one (the lock is recursive: asking again changes nothing). It is denied,
// without error, when the group already has lim.Slots holders, or when the
// last grant is more recent than lim.MinGap; holders beyond a lowered slot
// count keep their slots until they release them. The decision is always
// made on a fresh read from the API server, and the grant time is written
// in the same compare-and-swap, so replicas agree on the gap.
func (s *Semaphore) Acquire(ctx context.Context, group string, h Holder, lim Limits) (Result, error) {
	var res Result
	err := s.update(ctx, group, func(holders []Holder, lastGrant time.Time) ([]Holder, bool) {
		if i := index(holders, h.ID); i >= 0 {
			res = Result{Granted: true, Holders: holders}
			return nil, false
		}
		if len(holders) >= lim.Slots {
			res = Result{Holders: holders}
			return nil, false
		}
		now := s.now()
		if left := lastGrant.Add(lim.MinGap).Sub(now); lim.MinGap > 0 && left > 0 {
			res = Result{Holders: holders, GapLeft: left}
			return nil, false
		}
		if h.Since.IsZero() {
			h.Since = now.UTC().Truncate(time.Second)
		}
		res = Result{Granted: true, Changed: true, Holders: append(slices.Clone(holders), h)}
		return res.Holders, true
	})
	if err != nil {
		return Result{}, fmt.Errorf("acquire a slot in group %q for %s: %w", group, h.ID, err)
	}
	return res, nil
}

// Release frees id's slot in group. It reports whether id held one.
func (s *Semaphore) Release(ctx context.Context, group, id string) (bool, error) {
	released := false
	err := s.update(ctx, group, func(holders []Holder, _ time.Time) ([]Holder, bool) {
		i := index(holders, id)
		if i < 0 {
			released = false
			return nil, false
		}
		released = true
		return slices.Delete(slices.Clone(holders), i, i+1), true
	})
	if err != nil {
		return false, fmt.Errorf("release %s's slot in group %q: %w", id, group, err)
	}
	return released, nil
}

// Holds reports, from the cache, whether id holds a slot in group. It makes
// no API request, so a steady-state from a node that holds nothing costs
// nothing; a just-taken slot may not be visible yet.
func (s *Semaphore) Holds(group, id string) bool {
	return index(s.Cached(group), id) >= 0
}

// Cached returns group's holders as the cache last saw them, without an API
// request; nil when the group has no lock object or it cannot be read.
func (s *Semaphore) Cached(group string) []Holder {
	l, err := s.lister.Leases(s.namespace).Get(ObjectName(group))
	if err != nil {
		return nil
	}
	holders, err := Decode(l)
	if err != nil {
		return nil
	}
	return holders
}

// All returns every group's holders from the cache, keyed by group.
func (s *Semaphore) All() (map[string][]Holder, error) {
	leases, err := s.lister.Leases(s.namespace).List(labels.SelectorFromSet(labels.Set{Label: "true"}))
	if err != nil {
		return nil, fmt.Errorf("list lock objects: %w", err)
	}
	return byGroup(leases)
}

// Fresh returns every group's holders read from the API server, for
// decisions that must not act on a stale cache.
func (s *Semaphore) Fresh(ctx context.Context) (map[string][]Holder, error) {
	list, err := s.client.Leases(s.namespace).List(ctx, metav1.ListOptions{LabelSelector: Label + "=true"})
	if err != nil {
		return nil, fmt.Errorf("list lock objects: %w", err)
	}
	leases := make([]*coordinationv1.Lease, len(list.Items))
	for i := range list.Items {
		leases[i] = &list.Items[i]
	}
	return byGroup(leases)
}

func byGroup(leases []*coordinationv1.Lease) (map[string][]Holder, error) {
	all := make(map[string][]Holder, len(leases))
	for _, l := range leases {
		holders, err := Decode(l)
		if err != nil {
			return nil, err
		}
		all[l.Annotations[annotations.LockGroup]] = holders
	}
	return all, nil
}

// Decode returns the holders recorded on a lock object.
func Decode(l *coordinationv1.Lease) ([]Holder, error) {
	raw := l.Annotations[annotations.LockHolders]
	if raw == "" {
		return nil, nil
	}
	var holders []Holder
	if err := json.Unmarshal([]byte(raw), &holders); err != nil {
		return nil, fmt.Errorf("decode holders of lock object %s: %w", l.Name, err)
	}
	return holders, nil
}

// update runs change on the group's current holders and last grant time,
// and writes the result conditionally on the resourceVersion it read,
// retrying on conflicts. change returns the new holders and whether to
// write them; a write that adds a holder records the grant time.
func (s *Semaphore) update(ctx context.Context, group string, change func([]Holder, time.Time) ([]Holder, bool)) error {
	leases := s.client.Leases(s.namespace)
	name := ObjectName(group)
	for range MaxAttempts {
		l, err := leases.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			next, write := change(nil, time.Time{})
			if !write {
				return nil
			}
			l = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{
				Name:        name,
				Namespace:   s.namespace,
				Labels:      map[string]string{Label: "true", "app.kubernetes.io/managed-by": "reboot-manager"},
				Annotations: map[string]string{annotations.LockGroup: group},
			}}
			if err := s.encode(l, nil, next); err != nil {
				return err
			}
			_, err = leases.Create(ctx, l, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				continue
			}
			if err != nil {
				return fmt.Errorf("create lock object %s: %w", name, err)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("get lock object %s: %w", name, err)
		}
		if g := l.Annotations[annotations.LockGroup]; g != group {
			return fmt.Errorf("lock object %s belongs to group %q, not %q", name, g, group)
		}
		holders, err := Decode(l)
		if err != nil {
			return err
		}
		lastGrant, _ := time.Parse(time.RFC3339Nano, l.Annotations[annotations.LockLastGrant])
		next, write := change(holders, lastGrant)
		if !write {
			return nil
		}
		if err := s.encode(l, holders, next); err != nil {
			return err
		}
		_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("update lock object %s: %w", name, err)
		}
		return nil
	}
	return ErrContention
}

// encode writes holders into the lock object, and the time of the grant
// when it adds a holder to before. spec.holderIdentity carries the
// holders' node names too, so `kubectl get leases` shows them.
func (s *Semaphore) encode(l *coordinationv1.Lease, before, holders []Holder) error {
	raw, err := json.Marshal(holders)
	if err != nil {
		return fmt.Errorf("encode holders: %w", err)
	}
	if l.Annotations == nil {
		l.Annotations = map[string]string{}
	}
	l.Annotations[annotations.LockHolders] = string(raw)
	if len(holders) > len(before) {
		l.Annotations[annotations.LockLastGrant] = s.now().UTC().Format(time.RFC3339Nano)
	}
	names := make([]string, len(holders))
	for i, h := range holders {
		names[i] = h.Node
		if names[i] == "" {
			names[i] = h.ID
		}
	}
	l.Spec.HolderIdentity = nil
	if len(names) > 0 {
		who := strings.Join(names, ",")
		l.Spec.HolderIdentity = &who
	}
	return nil
}

func index(holders []Holder, id string) int {
	return slices.IndexFunc(holders, func(h Holder) bool { return h.ID == id })
}
