package operator

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/rebootmanager/reboot-manager/arbiter/groups"
	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/arbiter/nodes"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
)

// GroupHalt is what Pause or Resume did to one group.
type GroupHalt struct {
	Group string `json:"group"`
	// Changed is false when the group already was halted (Pause) or was
	// not halted (Resume).
	Changed bool `json:"changed"`
	// Halts are the group's halts: after Pause, all of them; after Resume,
	// those it lifted.
	Halts []lock.Halt `json:"halts,omitempty"`
}

// Halts is the result of Pause or Resume.
type Halts struct {
	Verb   string      `json:"-"`
	Groups []GroupHalt `json:"groups"`
}

// String is the confirmation message.
func (r Halts) String() string {
	var b strings.Builder
	for _, g := range r.Groups {
		switch {
		case r.Verb == "pause" && g.Changed:
			fmt.Fprintf(&b, "group %q halted: no new slot, no new approval; `kubectl reboot-manager resume %s` lifts it\n", g.Group, g.Group)
		case r.Verb == "pause":
			fmt.Fprintf(&b, "group %q was already paused: %s\n", g.Group, haltList(g.Halts))
		case g.Changed:
			fmt.Fprintf(&b, "group %q resumed (was halted: %s)\n", g.Group, haltList(g.Halts))
		default:
			fmt.Fprintf(&b, "group %q was not halted\n", g.Group)
		}
	}
	return b.String()
}

// Pause halts each group with the reason operator, as the on-call's
// emergency stop: no new slot is granted and no reboot approved until
// Resume. Nodes already approved finish their cycle. With all, it halts
// every group the cluster knows: those with a lock object, those the
// groups ConfigMap names, those of every Node's label, and the default
// group.
func Pause(ctx context.Context, client kubernetes.Interface, where Where, names []string, all bool, who string) (Halts, error) {
	r := Halts{Verb: "pause", Groups: []GroupHalt{}}
	names, err := groupNames(ctx, client, where, names, all)
	if err != nil {
		return r, err
	}
	sem := lock.New(client.CoordinationV1(), nil, where.Namespace)
	events := syncRecorder{client: client}
	for _, g := range names {
		hs, set, err := sem.SetHalt(ctx, g, lock.Halt{Reason: lock.HaltOperator, Message: "paused by " + who, At: time.Now()})
		if err != nil {
			return r, err
		}
		r.Groups = append(r.Groups, GroupHalt{Group: g, Changed: set, Halts: hs})
		if set {
			events.Eventf(lockRef(where, g), corev1.EventTypeWarning, "GroupHalted", "group %q halted by %s (kubectl reboot-manager pause)", g, who)
		}
	}
	return r, nil
}

// Resume lifts each group's halt, whatever its reason, and records a
// GroupResumed Event on its lock object.
func Resume(ctx context.Context, client kubernetes.Interface, where Where, names []string, all bool, who string) (Halts, error) {
	r := Halts{Verb: "resume", Groups: []GroupHalt{}}
	sem := lock.New(client.CoordinationV1(), nil, where.Namespace)
	if all {
		leases, err := client.CoordinationV1().Leases(where.Namespace).List(ctx, metav1.ListOptions{LabelSelector: lock.Label + "=true"})
		if err != nil {
			return r, fmt.Errorf("list the lock objects: %w", err)
		}
		names = nil
		for i := range leases.Items {
			names = append(names, leases.Items[i].Annotations[annotations.LockGroup])
		}
		slices.Sort(names)
	}
	events := syncRecorder{client: client}
	for _, g := range names {
		hs, err := sem.Resume(ctx, g)
		if err != nil {
			return r, err
		}
		r.Groups = append(r.Groups, GroupHalt{Group: g, Changed: len(hs) > 0, Halts: hs})
		if len(hs) > 0 {
			events.Eventf(lockRef(where, g), corev1.EventTypeNormal, "GroupResumed", "group %q resumed by %s; it was halted: %s", g, who, haltList(hs))
		}
	}
	return r, nil
}

// groupNames returns names, or with all every group the cluster knows.
func groupNames(ctx context.Context, client kubernetes.Interface, where Where, names []string, all bool) ([]string, error) {
	if !all {
		return names, nil
	}
	set := map[string]bool{fleetlock.DefaultGroup: true}
	leases, err := client.CoordinationV1().Leases(where.Namespace).List(ctx, metav1.ListOptions{LabelSelector: lock.Label + "=true"})
	if err != nil {
		return nil, fmt.Errorf("list the lock objects: %w", err)
	}
	for i := range leases.Items {
		set[leases.Items[i].Annotations[annotations.LockGroup]] = true
	}
	cm, err := client.CoreV1().ConfigMaps(where.Namespace).Get(ctx, where.GroupsConfigMap, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return nil, fmt.Errorf("read the groups ConfigMap: %w", err)
	default:
		if cfg, err := groups.Parse(cm); err == nil {
			for g := range cfg.Groups {
				set[g] = true
			}
		}
	}
	list, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list the nodes: %w", err)
	}
	for i := range list.Items {
		set[nodes.Group(&list.Items[i])] = true
	}
	delete(set, "")
	out := make([]string, 0, len(set))
	for g := range set {
		out = append(out, g)
	}
	slices.Sort(out)
	return out, nil
}

// haltList is halts in one line.
func haltList(hs []lock.Halt) string {
	s := make([]string, len(hs))
	for i, h := range hs {
		s[i] = h.String()
	}
	return strings.Join(s, "; ")
}

func lockRef(where Where, group string) *corev1.ObjectReference {
	return &corev1.ObjectReference{APIVersion: "coordination.k8s.io/v1", Kind: "Lease", Namespace: where.Namespace, Name: lock.ObjectName(group)}
}
