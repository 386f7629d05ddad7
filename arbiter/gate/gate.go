// Package gate decides, before a node may take a reboot slot, whether its
// group admits anyone now: a pause, the group's maintenance windows and its
// pod blockers. A node turned away here takes no slot.
package gate

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/rebootmanager/reboot-manager/arbiter/groups"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
)

// Gate checks a group's pacing controls.
type Gate struct {
	client kubernetes.Interface
	now    func() time.Time
}

// New returns a Gate that lists pods through client for blockers.
func New(client kubernetes.Interface) *Gate { return &Gate{client: client, now: time.Now} }

// Check returns nil when a new slot may be granted now in group, whose
// settings are s, to the node named node ("" for a host outside the
// cluster). Otherwise it returns a *fleetlock.Error of kind paused,
// outside_window or blocked that says why, or an error when the pods could
// not be listed.
func (g *Gate) Check(ctx context.Context, group string, s groups.Settings, node string) error {
	if s.Paused {
		return fleetlock.Errorf(fleetlock.KindPaused, "reboots in group %q are paused", group)
	}
	if !s.Open(g.now()) {
		return fleetlock.Errorf(fleetlock.KindOutsideWindow, "group %q is outside its maintenance windows: %s", group, describe(s.Windows))
	}
	for _, b := range s.Blockers {
		why, err := g.blocked(ctx, b, node)
		if err != nil {
			return fmt.Errorf("check blocker %q: %w", b.Selector, err)
		}
		if why != "" {
			return fleetlock.Errorf(fleetlock.KindBlocked, "group %q is blocked: %s", group, why)
		}
	}
	return nil
}

// blocked says what of b stands in the way, or "".
func (g *Gate) blocked(ctx context.Context, b groups.Blocker, node string) (string, error) {
	opts := metav1.ListOptions{LabelSelector: b.Selector} // a consistent read: a stale "not blocked" would admit a holder
	scope := b.Scope
	if scope == "" {
		scope = groups.ScopeCluster
	}
	if scope == groups.ScopeNode {
		if node == "" {
			return "", nil
		}
		opts.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
	}
	list, err := g.client.CoreV1().Pods(b.Namespace).List(ctx, opts)
	if err != nil {
		return "", err
	}
	var in []string
	for _, p := range list.Items {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		if scope == groups.ScopeNode || !ready(&p) {
			in = append(in, p.Namespace+"/"+p.Name)
		}
	}
	if len(in) == 0 {
		return "", nil
	}
	sort.Strings(in)
	if len(in) > 5 {
		in = append(in[:5], fmt.Sprintf("and %d more", len(in)-5))
	}
	if scope == groups.ScopeNode {
		return fmt.Sprintf("pods matching %q run on node %s: %s", b.Selector, node, strings.Join(in, ", ")), nil
	}
	return fmt.Sprintf("pods matching %q are not Ready: %s", b.Selector, strings.Join(in, ", ")), nil
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func describe(ws []groups.Window) string {
	parts := make([]string, len(ws))
	for i, w := range ws {
		days := "daily"
		if len(w.Days) > 0 {
			days = strings.Join(w.Days, ",")
		}
		tz := w.TimeZone
		if tz == "" {
			tz = "UTC"
		}
		parts[i] = fmt.Sprintf("%s %s–%s %s", days, w.Start, w.End, tz)
	}
	return strings.Join(parts, "; ")
}
