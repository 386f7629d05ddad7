// Package operator implements the operator's commands: the fleet's reboot
// status and freeing a slot by hand. They talk to the API server only, so
// they work while the arbiter is down.
package operator

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/client-go/kubernetes"

	"github.com/rebootmanager/reboot-manager/arbiter/finish"
	"github.com/rebootmanager/reboot-manager/arbiter/groups"
	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/arbiter/nodes"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
)

// Where says where the arbiter keeps its state.
type Where struct {
	// Namespace holds the lock objects and the groups ConfigMap.
	Namespace string
	// GroupsConfigMap is the name of the groups ConfigMap.
	GroupsConfigMap string
}

// StatusWaiting is the status shown for a node whose last pre-reboot was
// turned away before it took a slot. It is never written on the node.
const StatusWaiting = "Waiting"

// Report is the fleet's reboot state at one instant.
type Report struct {
	// Time is when the report was read.
	Time time.Time `json:"time"`
	// ConfigError says why the groups ConfigMap was rejected; the arbiter
	// then keeps its last good settings, which the report cannot know, so it
	// shows the defaults.
	ConfigError string `json:"configError,omitempty"`
	// Groups are the configured groups and every group with a lock object.
	Groups []Group `json:"groups"`
	// Nodes are every Node, by name.
	Nodes []Node `json:"nodes"`
}

// Group is one reboot group.
type Group struct {
	Name    string   `json:"name"`
	Slots   int      `json:"slots"`
	Holders []Holder `json:"holders"`
	// Halts, when any, are why the group grants no slot and approves no
	// reboot until `kubectl reboot-manager resume`.
	Halts []lock.Halt `json:"halts,omitempty"`
}

// Holder is one holder of a slot.
type Holder struct {
	ID          string    `json:"id"`
	Node        string    `json:"node,omitempty"`
	Since       time.Time `json:"since"`
	HeldSeconds int64     `json:"heldSeconds"`
}

// Node is one node's place in the reboot cycle.
type Node struct {
	Name string `json:"name"`
	// Group is the group of the node's cycle, else its group label, else
	// "default".
	Group string `json:"group"`
	// Status is the node's rebootmanager/status, or Waiting.
	Status string `json:"status"`
	// Unschedulable is the node's cordon, whoever set it.
	Unschedulable bool `json:"unschedulable"`
	// Since is when the node took its slot, or when it last asked in vain.
	Since *time.Time `json:"since,omitempty"`
	// Reason says what the node waits for.
	Reason string `json:"reason,omitempty"`
	// Credential is "yes" when the node publishes a host credential's hash
	// (its requests must carry the credential), "rotating" while a previous
	// one is still accepted, and "no" when its requests are served
	// unprotected.
	Credential string `json:"credential"`
	// Versions is the OS version at the approval and now ("from → to"),
	// while an approved cycle goes on; after it, how the last completed
	// reboot moved the node, and when.
	Versions string `json:"versions,omitempty"`
}

// Status reads the fleet's reboot state from the API server.
func Status(ctx context.Context, client kubernetes.Interface, where Where) (Report, error) {
	r := Report{Time: time.Now().UTC().Truncate(time.Second)}
	cfg := groups.Default()
	cm, err := client.CoreV1().ConfigMaps(where.Namespace).Get(ctx, where.GroupsConfigMap, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return r, fmt.Errorf("read the groups ConfigMap %s/%s: %w", where.Namespace, where.GroupsConfigMap, err)
	default:
		if cfg, err = groups.Parse(cm); err != nil {
			r.ConfigError = err.Error()
			cfg = groups.Default()
		}
	}
	leases, err := client.CoordinationV1().Leases(where.Namespace).List(ctx, metav1.ListOptions{LabelSelector: lock.Label + "=true"})
	if err != nil {
		return r, fmt.Errorf("read the reboot slots: %w", err)
	}
	held := map[string][]lock.Holder{}
	halts := map[string][]lock.Halt{}
	approved := map[string]lock.Holder{} // node → its approved holder
	for i := range leases.Items {
		o, err := lock.DecodeObject(&leases.Items[i])
		if err != nil {
			return r, fmt.Errorf("read the reboot slots: %w", err)
		}
		held[o.Group], halts[o.Group] = o.Holders, o.Halts
		for _, h := range o.Holders {
			if h.Node != "" && h.Stage() == lock.PhaseApproved {
				approved[h.Node] = h
			}
		}
	}
	list, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return r, fmt.Errorf("list nodes: %w", err)
	}

	names := map[string]bool{"default": true}
	for g := range cfg.Groups {
		names[g] = true
	}
	for g := range held {
		names[g] = true
	}
	for _, g := range slices.Sorted(maps.Keys(names)) {
		grp := Group{Name: g, Slots: cfg.For(g).Slots, Holders: []Holder{}, Halts: halts[g]}
		for _, h := range held[g] {
			grp.Holders = append(grp.Holders, Holder{ID: h.ID, Node: h.Node, Since: h.Since,
				HeldSeconds: int64(r.Time.Sub(h.Since).Seconds())})
		}
		r.Groups = append(r.Groups, grp)
	}
	for i := range list.Items {
		n := &list.Items[i]
		s := nodeStatus(n, r.Time)
		if s.Status == StatusWaiting && len(held[s.Group]) > 0 {
			// The node's mark says why, in words that do not change at each
			// hand-off; who holds the slots now comes from the lock object.
			s.Reason += "; held now by " + holderNames(held[s.Group])
		}
		if h, ok := approved[n.Name]; ok {
			if from, to := finish.Versions(h, n); from != "" || to != "" {
				s.Versions = dash(from) + " → " + dash(to)
			}
		}
		r.Nodes = append(r.Nodes, s)
	}
	slices.SortFunc(r.Nodes, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	return r, nil
}

// holderNames lists holders by node, or by reference for hosts outside the
// cluster.
func holderNames(hs []lock.Holder) string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = h.Who()
	}
	return strings.Join(out, ", ")
}

// phaseReasons says what a node waits for in the phases of a cycle whose
// reason is fixed.
var phaseReasons = map[string]string{
	annotations.StatusWaitingForVolumes: "drained; waiting for the evicted pods' volumes to be unmounted and detached",
	annotations.StatusRebooting:         "drained and approved; waiting for the reboot",
	annotations.StatusReturning:         "booted again; waiting for Ready, and for Zincati's steady-state or the agent's boot-complete",
	annotations.StatusSettling:          "back and Ready; waiting out the group's settle time",
	annotations.StatusHalted:            "its cycle failed and halted the group; see its Events",
}

func nodeStatus(n *corev1.Node, now time.Time) Node {
	a := n.Annotations
	s := Node{Name: n.Name, Status: a[annotations.Status], Unschedulable: n.Spec.Unschedulable, Credential: "no", Versions: a[annotations.LastReboot]}
	switch {
	case a[annotations.CredentialPreviousSHA256] != "":
		s.Credential = "rotating"
	case nodes.HasCredential(n):
		s.Credential = "yes"
	}
	s.Group = a[annotations.Group]
	if s.Group == "" {
		s.Group = n.Labels[annotations.GroupLabel]
	}
	if s.Group == "" {
		s.Group = fleetlock.DefaultGroup
	}
	if s.Status == "" {
		s.Status = annotations.StatusReady
	}
	since := func(key string) {
		if t, err := time.Parse(time.RFC3339, a[key]); err == nil {
			s.Since = &t
		}
	}
	switch {
	case s.Status == annotations.StatusDrainFailed:
		s.Reason = drainFailed(a[annotations.DrainFailed], now)
	case s.Status == annotations.StatusDraining:
		since(annotations.Since)
		s.Reason = a[annotations.DrainMessage]
		if s.Reason == "" {
			s.Reason = "evicting pods"
		}
	case phaseReasons[s.Status] != "":
		since(annotations.Since)
		s.Reason = phaseReasons[s.Status]
	case nodes.Waiting(n):
		s.Status = StatusWaiting
		since(annotations.WaitingAt)
		s.Reason = a[annotations.Waiting]
		if s.Since != nil {
			s.Reason += fmt.Sprintf(" (last asked %s ago)", duration.HumanDuration(now.Sub(*s.Since)))
		}
	case n.Spec.Unschedulable && a[annotations.CordonedBy] != annotations.CordonOwner:
		s.Reason = "cordoned by someone else; left alone"
	}
	return s
}

// drainFailed says what blocked a failed drain and when the node may
// retry, from its rebootmanager/drain-failed ("retry after T: why").
func drainFailed(mark string, now time.Time) string {
	at, why, ok := strings.Cut(strings.TrimPrefix(mark, "retry after "), ": ")
	t, err := time.Parse(time.RFC3339, at)
	if !ok || err != nil {
		return "drain failed and gave its slot back: " + mark
	}
	when := "may retry now"
	if left := t.Sub(now); left > 0 {
		when = fmt.Sprintf("may retry in %s (at %s)", duration.HumanDuration(left), at)
	}
	return "drain failed and gave its slot back; " + when + ": " + why
}

// WriteTable writes the report as two tables: groups, then nodes.
func (r Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	if r.ConfigError != "" {
		fmt.Fprintf(tw, "WARNING: groups ConfigMap rejected, showing defaults: %s\n\n", r.ConfigError)
	}
	fmt.Fprintln(tw, "GROUP\tSLOTS\tHELD\tHOLDERS\tHALTED")
	for _, g := range r.Groups {
		holders := make([]string, len(g.Holders))
		for i, h := range g.Holders {
			who := h.Node
			if who == "" {
				who = "id " + h.ID
			}
			holders[i] = fmt.Sprintf("%s (%s)", who, duration.HumanDuration(time.Duration(h.HeldSeconds)*time.Second))
		}
		halted := haltList(g.Halts)
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\n", g.Name, g.Slots, len(g.Holders), dash(strings.Join(holders, ", ")), dash(halted))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "NODE\tGROUP\tSTATUS\tCORDONED\tCREDENTIAL\tFOR\tVERSIONS\tREASON")
	for _, n := range r.Nodes {
		held := ""
		if n.Since != nil && n.Status != StatusWaiting {
			held = duration.HumanDuration(r.Time.Sub(*n.Since))
		}
		cordoned := "no"
		if n.Unschedulable {
			cordoned = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.Group, n.Status, cordoned, n.Credential, dash(held), dash(n.Versions), dash(n.Reason))
	}
	return tw.Flush()
}

// WriteJSON writes the report as indented JSON.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
