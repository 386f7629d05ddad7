// Package nodes finds the Node behind a Zincati id from an informer cache and
// changes Nodes the way the reboot cycle needs: cordon with ownership,
// status annotations, uncordon of only what we cordoned, and Events.
package nodes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/retry"

	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/shared/zincatiid"
)

// IDIndex is the name of the informer index from Zincati id to Node.
const IDIndex = "zincati-id"

// IndexByID is the informer IndexFunc behind IDIndex. A Node is indexed under
// the id the agent published on it and under the id derived from its
// status.nodeInfo.machineID.
func IndexByID(obj any) ([]string, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return nil, nil
	}
	var ids []string
	if id := n.Annotations[annotations.ZincatiID]; id != "" {
		ids = append(ids, id)
	}
	if m := n.Status.NodeInfo.MachineID; m != "" {
		if id, err := zincatiid.FromMachineID(m); err == nil && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// Slim is the Node informer's transform: it drops what the arbiter never
// reads (managed fields, the image list, volume lists), which on real
// nodes is most of the object, before it is cached.
func Slim(obj any) (any, error) {
	if n, ok := obj.(*corev1.Node); ok {
		n.ManagedFields = nil
		n.Status.Images = nil
		n.Status.VolumesInUse = nil
		n.Status.VolumesAttached = nil
		delete(n.Annotations, corev1.LastAppliedConfigAnnotation)
	}
	return obj, nil
}

// Directory looks Nodes up in the cache and changes them through the API.
type Directory struct {
	client   kubernetes.Interface
	indexer  cache.Indexer
	lister   corelisters.NodeLister
	recorder record.EventRecorder
	now      func() time.Time
}

// New returns a Directory over a Node informer that has IDIndex.
func New(client kubernetes.Interface, informer cache.SharedIndexInformer, recorder record.EventRecorder) *Directory {
	return &Directory{
		client:   client,
		indexer:  informer.GetIndexer(),
		lister:   corelisters.NewNodeLister(informer.GetIndexer()),
		recorder: recorder,
		now:      time.Now,
	}
}

// NewUncached returns a Directory for one-shot commands: it reads every Node
// from the API server. Lookup and List need the cache and fail on it.
func NewUncached(client kubernetes.Interface, recorder record.EventRecorder) *Directory {
	return &Directory{client: client, recorder: recorder, now: time.Now}
}

var errNoCache = errors.New("this node directory has no cache")

// Lookup returns the Nodes whose Zincati id is id, sorted by name: none
// when no Node matches, several when the id is ambiguous (a cloned machine
// id, or an agent that published another node's id). It reads only the
// cache, so it may lag: it names who asks, and the caller decides on fresh
// reads.
func (d *Directory) Lookup(id string) ([]*corev1.Node, error) {
	if d.indexer == nil {
		return nil, errNoCache
	}
	objs, err := d.indexer.ByIndex(IDIndex, id)
	if err != nil {
		return nil, fmt.Errorf("look up node by Zincati id %s: %w", id, err)
	}
	out := make([]*corev1.Node, 0, len(objs))
	for _, o := range objs {
		out = append(out, o.(*corev1.Node))
	}
	slices.SortFunc(out, func(a, b *corev1.Node) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// LookupFresh is Lookup on a consistent list of every Node from the API
// server, page by page: costly, for a decision that must not trust a cache
// to say "no Node has this id".
func (d *Directory) LookupFresh(ctx context.Context, id string) ([]*corev1.Node, error) {
	var out []*corev1.Node
	opts := metav1.ListOptions{Limit: 500}
	for {
		list, err := d.client.CoreV1().Nodes().List(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("list nodes: %w", err)
		}
		for i := range list.Items {
			ids, _ := IndexByID(&list.Items[i])
			if slices.Contains(ids, id) {
				out = append(out, &list.Items[i])
			}
		}
		if opts.Continue = list.Continue; opts.Continue == "" {
			break
		}
	}
	slices.SortFunc(out, func(a, b *corev1.Node) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Fresh reads a Node from the API server: a consistent read.
func (d *Directory) Fresh(ctx context.Context, name string) (*corev1.Node, error) {
	n, err := d.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get node %s: %w", name, err)
	}
	return n, nil
}

// Get returns a Node from the cache.
func (d *Directory) Get(name string) (*corev1.Node, error) {
	if d.lister == nil {
		return nil, errNoCache
	}
	return d.lister.Get(name)
}

// List returns every Node in the cache.
func (d *Directory) List() ([]*corev1.Node, error) {
	if d.lister == nil {
		return nil, errNoCache
	}
	return d.lister.List(labels.Everything())
}

// StartDrain cordons the node and marks it Draining in group, for the
// holding named holding (see Finish). If the node was already unschedulable
// and not by us (an admin's cordon), it stays so and is not marked as ours,
// so Finish will leave it cordoned. from is a fresh read of the node to start
// from, so a lagging cache cannot make it skip the cordon. It returns the
// node as the patch's response shows it (the stored object, as fresh as a
// consistent read made after the cordon), or nil when nothing needed to
// change.
func (d *Directory) StartDrain(ctx context.Context, from *corev1.Node, group, holding string) (*corev1.Node, error) {
	return d.patchFrom(ctx, from.Name, from, false, func(n *corev1.Node) *nodePatch {
		p := &nodePatch{annotations: map[string]*string{
			annotations.Status:  ptr(annotations.StatusDraining),
			annotations.Group:   ptr(group),
			annotations.Holding: ptr(holding),
		}}
		if n.Annotations[annotations.Waiting] != "" || n.Annotations[annotations.WaitingAt] != "" {
			p.annotations[annotations.Waiting] = nil
			p.annotations[annotations.WaitingAt] = nil
		}
		if n.Annotations[annotations.DrainFailed] != "" {
			p.annotations[annotations.DrainFailed] = nil
		}
		if n.Annotations[annotations.Since] == "" {
			p.annotations[annotations.Since] = ptr(d.now().UTC().Format(time.RFC3339))
		}
		if !n.Spec.Unschedulable {
			p.unschedulable = ptr(true)
			p.annotations[annotations.CordonedBy] = ptr(annotations.CordonOwner)
		}
		if n.Annotations[annotations.Status] == annotations.StatusDraining && p.unschedulable == nil &&
			n.Annotations[annotations.Group] == group && n.Annotations[annotations.Since] != "" &&
			n.Annotations[annotations.Holding] == holding &&
			n.Annotations[annotations.Waiting] == "" && n.Annotations[annotations.WaitingAt] == "" &&
			n.Annotations[annotations.DrainFailed] == "" {
			return nil
		}
		return p
	}, "DrainStarted", "cordoned for a reboot in group %q; draining", group)
}

// MarkRebooting mirrors an approval on the node: status Rebooting, and the
// boot id the approval recorded in the lock object.
func (d *Directory) MarkRebooting(ctx context.Context, name, bootID string) error {
	return d.patch(ctx, name, func(n *corev1.Node) *nodePatch {
		if n.Annotations[annotations.Status] == annotations.StatusRebooting && n.Annotations[annotations.ApprovedBootID] == bootID {
			return nil
		}
		return &nodePatch{annotations: map[string]*string{
			annotations.Status:         ptr(annotations.StatusRebooting),
			annotations.ApprovedBootID: ptr(bootID),
			annotations.DrainMessage:   nil,
		}}
	}, "RebootApproved", "drained; reboot approved")
}

// SetPhase shows phase as the node's status while the holding's cycle goes
// on after the approval (Rebooting, Returning, Settling, Halted). It is a
// display: decided on the cache first, and only on a node whose
// rebootmanager/holding is holding.
func (d *Directory) SetPhase(ctx context.Context, name, holding, phase string) error {
	return d.patchCached(ctx, name, func(n *corev1.Node) *nodePatch {
		if n.Annotations[annotations.Holding] != holding || n.Annotations[annotations.Status] == phase {
			return nil
		}
		return &nodePatch{annotations: map[string]*string{annotations.Status: ptr(phase)}}
	})
}

// SetLastReboot records how the node's last completed reboot moved it.
func (d *Directory) SetLastReboot(ctx context.Context, name, text string) error {
	return d.patchCached(ctx, name, func(n *corev1.Node) *nodePatch {
		if n.Annotations[annotations.LastReboot] == text {
			return nil
		}
		return &nodePatch{annotations: map[string]*string{annotations.LastReboot: ptr(text)}}
	})
}

// SetDrainMessage records what the drain waits for. An empty message removes it.
func (d *Directory) SetDrainMessage(ctx context.Context, name, msg string) error {
	return d.patchCached(ctx, name, func(n *corev1.Node) *nodePatch {
		if n.Annotations[annotations.DrainMessage] == msg {
			return nil
		}
		var v *string
		if msg != "" {
			v = ptr(msg)
		}
		return &nodePatch{annotations: map[string]*string{annotations.DrainMessage: v}}
	})
}

// WaitingRefresh is how old the WaitingAt mark may get before a request
// with the same reason rewrites it, so a node that keeps asking costs one
// write per WaitingRefresh, not one per request.
const WaitingRefresh = 15 * time.Minute

// SetWaiting records why the node's pre-reboot was turned away. It writes
// only when the reason changed or the mark is older than WaitingRefresh; an
// empty reason removes the mark.
func (d *Directory) SetWaiting(ctx context.Context, name, reason string) error {
	return d.patchCached(ctx, name, func(n *corev1.Node) *nodePatch {
		old, at := n.Annotations[annotations.Waiting], n.Annotations[annotations.WaitingAt]
		if reason == "" {
			if old == "" && at == "" {
				return nil
			}
			return &nodePatch{annotations: map[string]*string{annotations.Waiting: nil, annotations.WaitingAt: nil}}
		}
		if t, err := time.Parse(time.RFC3339, at); old == reason && err == nil && d.now().Sub(t) < WaitingRefresh {
			return nil
		}
		return &nodePatch{annotations: map[string]*string{
			annotations.Waiting:   ptr(reason),
			annotations.WaitingAt: ptr(d.now().UTC().Format(time.RFC3339)),
		}}
	})
}

// Waiting reports whether the node carries a mark of a turned-away
// pre-reboot.
func Waiting(n *corev1.Node) bool {
	return n.Annotations[annotations.Waiting] != "" || n.Annotations[annotations.WaitingAt] != ""
}

// Finish ends the node's reboot cycle: it uncordons the node only if we
// cordoned it, and marks it Ready. A node the cycle never touched is left
// alone, and so is a node whose cycle is another holding's: Finish acts only
// when the node's rebootmanager/holding is holding, or absent. Decided on a
// fresh read of the node in the same conditional patch, this keeps a
// release decided a moment ago from ending a cycle that started since.
func (d *Directory) Finish(ctx context.Context, name, holding string) error {
	return d.end(ctx, name, holding, annotations.StatusReady, "", "Released", "reboot cycle finished")
}

// Yielded ends the node's cycle as Finish does, after its drain failed
// and gave the slot back: status DrainFailed, and msg (what blocked it,
// when it may retry) in rebootmanager/drain-failed.
func (d *Directory) Yielded(ctx context.Context, name, holding, msg string) error {
	return d.end(ctx, name, holding, annotations.StatusDrainFailed, msg, "DrainYielded", "drain failed; slot given back")
}

func (d *Directory) end(ctx context.Context, name, holding, status, failed, reason, message string) error {
	return d.patch(ctx, name, func(n *corev1.Node) *nodePatch {
		if !InCycle(n) {
			return nil
		}
		if mark := n.Annotations[annotations.Holding]; mark != "" && mark != holding {
			return nil
		}
		p := &nodePatch{annotations: map[string]*string{
			annotations.Holding:        nil,
			annotations.Status:         ptr(status),
			annotations.Group:          nil,
			annotations.Since:          nil,
			annotations.DrainMessage:   nil,
			annotations.CordonedBy:     nil,
			annotations.ApprovedBootID: nil,
			annotations.Waiting:        nil,
			annotations.WaitingAt:      nil,
			annotations.DrainFailed:    nil,
		}}
		if failed != "" {
			p.annotations[annotations.DrainFailed] = ptr(failed)
		}
		if n.Annotations[annotations.CordonedBy] == annotations.CordonOwner && n.Spec.Unschedulable {
			p.unschedulable = ptr(false)
			p.event = "Uncordoned"
		}
		return p
	}, reason, "%s", message)
}

// InCycle reports whether the node carries any mark of a reboot cycle. A
// node whose drain failed (DrainFailed) is in service: in no cycle.
func InCycle(n *corev1.Node) bool {
	a := n.Annotations
	return a[annotations.CordonedBy] != "" || a[annotations.Group] != "" || a[annotations.Since] != "" || a[annotations.Holding] != "" ||
		a[annotations.DrainMessage] != "" ||
		(a[annotations.Status] != "" && a[annotations.Status] != annotations.StatusReady && a[annotations.Status] != annotations.StatusDrainFailed)
}

// Rebooted reports whether a node approved for a reboot has since come
// back: it is Ready with another boot id.
func Rebooted(n *corev1.Node) bool {
	approved := n.Annotations[annotations.ApprovedBootID]
	if approved == "" || approved == n.Status.NodeInfo.BootID {
		return false
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Event records an Event on the node.
func (d *Directory) Event(n *corev1.Node, eventType, reason, format string, args ...any) {
	d.recorder.Eventf(nodeRef(n.Name), eventType, reason, format, args...)
}

type nodePatch struct {
	unschedulable *bool
	annotations   map[string]*string // nil value removes the key
	event         string             // an extra Event reason
}

// patch applies the patch that decide computes from a fresh read of the
// node. The patch carries the resourceVersion decide saw, so the API server
// rejects it if the node changed since; then decide runs again on a new
// read. decide returns nil when nothing needs to change. On success an
// Event of reason is recorded.
func (d *Directory) patch(ctx context.Context, name string, decide func(*corev1.Node) *nodePatch, reason, format string, args ...any) error {
	_, err := d.patchFrom(ctx, name, nil, false, decide, reason, format, args...)
	return err
}

// patchCached is patch whose first attempt decides on the cache: for marks
// that are only shown (why a node waits, what its drain waits for), where a
// write skipped on a stale read costs nothing, and repeated requests should
// cost no read.
func (d *Directory) patchCached(ctx context.Context, name string, decide func(*corev1.Node) *nodePatch) error {
	_, err := d.patchFrom(ctx, name, nil, true, decide, "", "")
	return err
}

// patchFrom is patch whose first attempt starts from the node from, when
// not nil, or else from the cache when cached. It returns the patched node
// as the API server returned it, or nil when decide asked for nothing.
func (d *Directory) patchFrom(ctx context.Context, name string, from *corev1.Node, cached bool, decide func(*corev1.Node) *nodePatch, reason, format string, args ...any) (*corev1.Node, error) {
	var patched *corev1.Node
	first := true
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var n *corev1.Node
		var err error
		switch {
		case first && from != nil:
			n = from
		case first && cached && d.lister != nil:
			n, err = d.lister.Get(name)
		}
		first = false
		if n == nil || err != nil {
			n, err = d.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		}
		if err != nil {
			return err
		}
		p := decide(n)
		if p == nil {
			patched = nil
			return nil
		}
		body := map[string]any{"metadata": map[string]any{
			"resourceVersion": n.ResourceVersion,
			"annotations":     p.annotations,
		}}
		if p.unschedulable != nil {
			body["spec"] = map[string]any{"unschedulable": *p.unschedulable}
		}
		raw, err := json.Marshal(body)
		if err != nil {
			return err
		}
		if patched, err = d.client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, raw, metav1.PatchOptions{}); err != nil {
			return err
		}
		if reason != "" {
			d.recorder.Eventf(nodeRef(name), corev1.EventTypeNormal, reason, format, args...)
		}
		if p.event == "Uncordoned" {
			d.recorder.Eventf(nodeRef(name), corev1.EventTypeNormal, "Uncordoned", "uncordoned after the reboot")
		}
		return nil
	})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("node %s: %w", name, err)
		}
		return nil, fmt.Errorf("update node %s: %w", name, err)
	}
	return patched, nil
}

func nodeRef(name string) *corev1.ObjectReference {
	// Events about Nodes use the node name as the UID, as kubelet does.
	return &corev1.ObjectReference{Kind: "Node", Name: name, UID: types.UID(name)}
}

func ptr[T any](v T) *T { return &v }

// Group is the node's reboot group: its rebootmanager/group label, or
// Zincati's default group without one.
func Group(n *corev1.Node) string {
	if g := n.Labels[annotations.GroupLabel]; g != "" {
		return g
	}
	return fleetlock.DefaultGroup
}

// HasCredential reports whether the node publishes a host credential's
// hash, so that its requests must carry the credential.
func HasCredential(n *corev1.Node) bool {
	return n.Annotations[annotations.CredentialSHA256] != "" || n.Annotations[annotations.CredentialPreviousSHA256] != ""
}
