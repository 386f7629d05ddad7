package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// host is a network namespace joined to this host by a veth pair: a test
// host with an address of its own.
type host struct {
	netns, addr, gateway string
}

// newHost creates a network namespace with address 10.213.<subnet>.2/30,
// reaching this host at 10.213.<subnet>.1, and removes it after the test.
func newHost(t *testing.T, name string, subnet int) host {
	t.Helper()
	h := host{netns: name, addr: fmt.Sprintf("10.213.%d.2", subnet), gateway: fmt.Sprintf("10.213.%d.1", subnet)}
	outer, inner := "vh"+name[2:], "vn"+name[2:] // veth names: 15 bytes at most
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", name)
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", name).Run()
		_ = exec.Command("ip", "link", "del", outer).Run()
	})
	run("link", "add", outer, "type", "veth", "peer", "name", inner)
	run("link", "set", inner, "netns", name)
	run("addr", "add", h.gateway+"/30", "dev", outer)
	run("link", "set", outer, "up")
	run("-n", name, "addr", "add", h.addr+"/30", "dev", inner)
	run("-n", name, "link", "set", inner, "up")
	run("-n", name, "link", "set", "lo", "up")
	return h
}

// post sends a FleetLock request with curl from inside the host's network
// namespace, exactly as Zincati would (no Content-Type), and returns the
// status and the error body.
func (h host) post(t *testing.T, port, op string, p fleetlock.ClientParams) (int, string) {
	t.Helper()
	return h.postURL(t, "http://"+net.JoinHostPort(h.gateway, port)+"/", op, p)
}

// TestSourceBinding: one network namespace poses as the node (its address
// is the Node's InternalIP), another as an intruder, a pod holding the
// first address of the node's pod CIDR. Only the node may take and release
// its slot; the intruder gets 403 forbidden_source and changes nothing,
// unless --source-binding-pod-bridge counts that address as the node's;
// --source-binding=false lets anyone through.
func TestSourceBinding(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	suffix := fmt.Sprintf("%08x", rand.Uint32())
	subnet := 1 + rand.IntN(120)*2
	node := newHost(t, "rmn"+suffix, subnet)
	intruder := newHost(t, "rmi"+suffix, subnet+1)

	// A plain Node (no kwok to rewrite its status) whose InternalIP is the
	// node namespace's address.
	id := fixtures.RandomID()
	name := harness.Prefix(t) + "-node"
	_, err := cluster.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: name, Annotations: map[string]string{annotations.ZincatiID: id},
		Labels: map[string]string{annotations.GroupLabel: "bound"},
	}, Spec: corev1.NodeSpec{
		// An IPAM that hands the pod CIDR's first address to a pod: the
		// intruder holds it.
		PodCIDR: fmt.Sprintf("10.213.%d.1/32", subnet+1),
	}}, metav1.CreateOptions{})
	must(t, err)
	t.Cleanup(func() { fixtures.DeleteNodes(context.Background(), cluster.Client, name) })
	status := fmt.Sprintf(`{"status":{"addresses":[{"type":"InternalIP","address":%q}]}}`, node.addr)
	_, err = cluster.Client.CoreV1().Nodes().PatchStatus(ctx, name, []byte(status))
	must(t, err)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	_, port, _ := net.SplitHostPort(l.Addr().String())
	l.Close()
	a := startArbiter(t, ns, "--listen-address", "0.0.0.0:"+port, "--source-binding=true")
	p := fleetlock.ClientParams{ID: id, Group: "bound"}

	if code, body := intruder.post(t, port, "pre-reboot", p); code != 403 || !strings.Contains(body, `"forbidden_source"`) {
		t.Fatalf("intruder pre-reboot = %d %s, want 403 forbidden_source", code, body)
	}
	if err := a.preReboot(id, p.Group); !fleetlock.IsKind(err, fleetlock.KindForbiddenSource) {
		t.Fatalf("pre-reboot from this host = %v, want forbidden_source", err)
	}
	if h := holders(t, ns, p.Group); len(h) != 0 {
		t.Fatalf("holders after refused requests = %+v", h)
	}
	if code, body := node.post(t, port, "pre-reboot", p); code != 200 {
		t.Fatalf("the node's own pre-reboot = %d %s, want 200", code, body)
	}
	if code, body := intruder.post(t, port, "steady-state", p); code != 403 || !strings.Contains(body, "forbidden_source") {
		t.Fatalf("intruder steady-state = %d %s, want 403", code, body)
	}
	if h := holders(t, ns, p.Group); len(h) != 1 {
		t.Fatalf("the intruder's steady-state released the slot: holders %+v", h)
	}
	rebootPlain(t, name)
	if code, body := node.post(t, port, "steady-state", p); code != 200 {
		t.Fatalf("the node's own steady-state = %d %s", code, body)
	}
	released(t, ns, p.Group, name)

	// The pod bridge's address counts only when opted in.
	a.stop()
	a = startArbiter(t, ns, "--listen-address", "0.0.0.0:"+port, "--source-binding=true", "--source-binding-pod-bridge")
	if code, body := intruder.post(t, port, "pre-reboot", p); code != 200 {
		t.Fatalf("pre-reboot from the pod bridge's address, opted in = %d %s, want 200", code, body)
	}
	if code, body := intruder.post(t, port, "steady-state", p); code != 200 {
		t.Fatalf("steady-state from the pod bridge's address, opted in = %d %s, want 200", code, body)
	}

	// The escape hatch.
	a.stop()
	startArbiter(t, ns, "--listen-address", "0.0.0.0:"+port, "--source-binding=false")
	if code, body := intruder.post(t, port, "pre-reboot", p); code != 200 {
		t.Fatalf("intruder pre-reboot without source binding = %d %s, want 200", code, body)
	}
}
