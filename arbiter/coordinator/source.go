package coordinator

import (
	"context"
	"log/slog"
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
)

type sourceKey struct{}

// WithSource returns ctx carrying the address a request came from, for
// source binding. The HTTP layer sets it from the connection, never from a
// header a client could forge.
func WithSource(ctx context.Context, addr netip.Addr) context.Context {
	return context.WithValue(ctx, sourceKey{}, addr.Unmap())
}

// sourceFrom returns the address WithSource stored.
func sourceFrom(ctx context.Context) (netip.Addr, bool) {
	a, ok := ctx.Value(sourceKey{}).(netip.Addr)
	return a, ok && a.IsValid()
}

// fromNode reports whether addr is one of the node's own: an InternalIP or
// ExternalIP in its status, or, with podBridge, the first address of one of
// its pod CIDRs, which on bridge CNIs is the pod bridge's, the source of the
// host's own connections to a Service whose pod runs on the same node.
func fromNode(n *corev1.Node, addr netip.Addr, podBridge bool) bool {
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Unmap() == addr {
			return true
		}
	}
	if !podBridge {
		return false
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil && p.Masked().Addr().Next() == addr {
			return true
		}
	}
	return false
}

// requestLog is the logger of one request: its id, group and, when the
// server knows it, the source address it came from (after whatever NAT lay
// between: behind kube-proxy, often not the host's own).
func (c *Coordinator) requestLog(ctx context.Context, p fleetlock.ClientParams) *slog.Logger {
	if src, ok := sourceFrom(ctx); ok {
		return c.log.With("id", p.ID, "group", p.Group, "source", src.String())
	}
	return c.log.With("id", p.ID, "group", p.Group)
}
