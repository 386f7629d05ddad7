package coordinator

import (
	"context"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestFromNode(t *testing.T) {
	n := &corev1.Node{
		Spec: corev1.NodeSpec{PodCIDRs: []string{"10.244.3.0/24", "fd00:10:244:3::/64"}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "192.168.1.10"},
			{Type: corev1.NodeExternalIP, Address: "203.0.113.7"},
			{Type: corev1.NodeHostName, Address: "192.168.1.99"},
		}},
	}
	tests := []struct {
		addr      string
		podBridge bool
		want      bool
	}{
		{"192.168.1.10", false, true},
		{"::ffff:192.168.1.10", false, true}, // IPv4 in IPv6 from a dual-stack listener
		{"203.0.113.7", false, true},
		{"10.244.3.1", false, false},     // the pod bridge's address: a pod may hold it
		{"10.244.3.1", true, true},       // unless opted in
		{"fd00:10:244:3::1", true, true}, // and its IPv6 one
		{"fd00:10:244:3::1", false, false},
		{"10.244.3.7", true, false},    // a pod on the node
		{"10.244.3.0", true, false},    // flannel.1's network address is no bridge
		{"192.168.1.99", false, false}, // a hostname entry is not an address
		{"192.168.1.11", false, false}, // another host
		{"127.0.0.1", true, false},
	}
	for _, tt := range tests {
		addr := netip.MustParseAddr(tt.addr)
		if got := fromNode(n, addr.Unmap(), tt.podBridge); got != tt.want {
			t.Errorf("fromNode(%s, podBridge %v) = %v, want %v", tt.addr, tt.podBridge, got, tt.want)
		}
	}
	if _, ok := sourceFrom(context.Background()); ok {
		t.Error("a context without a source has one")
	}
	if a, ok := sourceFrom(WithSource(context.Background(), netip.MustParseAddr("::ffff:10.0.0.1"))); !ok || a.String() != "10.0.0.1" {
		t.Errorf("WithSource kept %v, want 10.0.0.1 unmapped", a)
	}
}
