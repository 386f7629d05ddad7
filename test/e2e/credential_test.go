package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/rebootmanager/reboot-manager/agent/dropin"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/credential"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fakesystemd"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// agentProc is the real agent binary on a host root in a temporary
// directory, on a private system bus with a stand-in systemd, acting as
// the agent's ServiceAccount with a token bound to its node, so that the
// admission policy applies to it.
type agentProc struct {
	root, dropIn string
	systemd      *fakesystemd.Manager
	logPath      string
	stop         func()
	restart      func()
}

func startAgentBinary(t *testing.T, node simNode, machineID, baseURL string) *agentProc {
	t.Helper()
	root := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(root, "etc/zincati/config.d"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "etc/machine-id"), []byte(machineID+"\n"), 0o444))
	// Fedora CoreOS keeps Zincati's user in /etc/passwd (systemd-sysusers).
	must(t, os.WriteFile(filepath.Join(root, "etc/passwd"),
		[]byte("root:x:0:0:root:/root:/bin/bash\nzincati:x:980:4242:Zincati:/var/lib/zincati:/sbin/nologin\n"), 0o644))
	addr, _ := fakesystemd.StartBus(t)
	sd := fakesystemd.Start(t, addr, map[string]string{"zincati.service": "done"})
	sd.SetUnit("boot-complete.target", map[string]any{"ActiveState": "active", "Job": fakesystemd.NoJob})
	fcosHost(t, root)
	kubeconfig := cluster.ImpersonatingKubeconfigExtra(t, agentSA,
		agentGroups,
		map[string][]string{"authentication.kubernetes.io/node-name": {node.name}})
	p := &agentProc{root: root, dropIn: filepath.Join(root, "etc/zincati/config.d", dropin.DefaultName), systemd: sd,
		logPath: filepath.Join(t.TempDir(), "agent.log")}
	var mu sync.Mutex
	var stop func()
	start := func() {
		ctx, cancel := context.WithCancel(context.Background())
		cmd := exec.CommandContext(ctx, binary(t, "agent"), "--kubeconfig", kubeconfig, "--node-name", node.name,
			"--host-root", root, "--base-url", baseURL, "--service-namespace", "reboot-manager")
		cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+addr)
		logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		must(t, err)
		cmd.Stdout, cmd.Stderr = logFile, logFile
		must(t, cmd.Start())
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); logFile.Close(); close(done) }()
		mu.Lock()
		stop = func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cancel()
				<-done
			}
			cancel()
		}
		mu.Unlock()
	}
	start()
	p.stop = func() { mu.Lock(); s := stop; mu.Unlock(); s() }
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			out, _ := os.ReadFile(p.logPath)
			t.Logf("agent log:\n%s", out)
		}
	})
	// restart is what a DaemonSet does to the agent's pod.
	p.restart = func() { p.stop(); start() }
	return p
}

// baseURL reads the base_url Zincati would use from the agent's drop-in.
func (p *agentProc) baseURL(t *testing.T) string {
	t.Helper()
	var doc struct {
		Updates struct {
			FleetLock struct {
				BaseURL string `toml:"base_url"`
			} `toml:"fleet_lock"`
		} `toml:"updates"`
	}
	_, err := toml.DecodeFile(p.dropIn, &doc)
	must(t, err)
	return doc.Updates.FleetLock.BaseURL
}

// postURL sends a FleetLock request from inside h's network namespace to
// a base URL, with curl, which sends the URL's user info as Basic auth as
// Zincati's reqwest does.
func (h host) postURL(t *testing.T, baseURL, op string, p fleetlock.ClientParams) (int, string) {
	t.Helper()
	body := fmt.Sprintf("{\n  \"client_params\": {\n    \"id\": %q,\n    \"group\": %q\n  }\n}", p.ID, p.Group)
	out, err := exec.Command("ip", "netns", "exec", h.netns, "curl", "-sS", "-m", "30",
		"-H", "fleet-lock-protocol: true", "-H", "Content-Type:", "--data-binary", body, "-w", "\n%{http_code}",
		baseURL+"v1/"+op).CombinedOutput()
	if err != nil {
		t.Fatalf("curl from %s: %v\n%s", h.netns, err, out)
	}
	text := strings.TrimSpace(string(out))
	i := strings.LastIndexByte(text, '\n')
	code, err := strconv.Atoi(text[i+1:])
	if err != nil {
		t.Fatalf("curl output %q", text)
	}
	return code, text[:max(i, 0)]
}

// TestNodeCredential: the real agent gives its host a credential and
// publishes its hash; with source binding on, a request carrying it is
// accepted from an address that is not the node's, and one without it, or
// with a wrong one, gets 401. A rotation asked for mid-cycle restarts
// nothing and locks nobody out: the old credential finishes the cycle, the
// new one (after the reboot) ends it, and the old one is retired once
// Zincati has restarted. The secret appears in no log, Event or metric.
func TestNodeCredential(t *testing.T) {
	installRBAC(t)
	ctx := context.Background()
	ns := cluster.Namespace(t)
	suffix := fmt.Sprintf("%08x", rand.Uint32())
	elsewhere := newHost(t, "rmc"+suffix, 121+rand.IntN(60)*2)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	_, port, _ := net.SplitHostPort(l.Addr().String())
	l.Close()
	a := startArbiter(t, ns, "--listen-address", "0.0.0.0:"+port, "--source-binding=true")
	base := "http://" + net.JoinHostPort(elsewhere.gateway, port) + "/"

	machineID := fixtures.RandomID()
	node := guardedNodeWith(ctx, t, ns, machineID)
	agent := startAgentBinary(t, node, machineID, base)
	p := fleetlock.ClientParams{ID: node.id, Group: fleetlock.DefaultGroup}

	// The agent publishes the id and the hash, then writes the drop-in with
	// the secret, root:4242 0640, and restarts Zincati once.
	var secret string
	harness.Eventually(t, 30*time.Second, "the credential", func() error {
		n := getNode(t, node.name)
		secret = dropinSecret(agent.dropIn)
		switch {
		case n.Annotations[annotations.ZincatiID] != node.id:
			return fmt.Errorf("id not published yet")
		case secret == "":
			return fmt.Errorf("no secret in the drop-in yet")
		case n.Annotations[annotations.CredentialSHA256] != credential.Hash(secret):
			return fmt.Errorf("hash %q does not match the drop-in's secret", n.Annotations[annotations.CredentialSHA256])
		case len(agent.systemd.Restarts()) != 1:
			return fmt.Errorf("restarts %v, want one", agent.systemd.Restarts())
		}
		return nil
	})
	fi, err := os.Stat(agent.dropIn)
	must(t, err)
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o640 || st.Uid != 0 || st.Gid != 4242 {
		t.Fatalf("drop-in mode %v owner %d:%d, want 0640 0:4242", fi.Mode().Perm(), st.Uid, st.Gid)
	}
	zincati := agent.baseURL(t)
	if want := "http://" + node.name + ":" + secret + "@" + net.JoinHostPort(elsewhere.gateway, port) + "/"; zincati != want {
		t.Fatalf("base_url = %q, want %q", zincati, want)
	}

	// The boot's witness, through the admission policy.
	bootID, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	must(t, err)
	harness.Eventually(t, 10*time.Second, "the boot's witness", func() error {
		a := getNode(t, node.name).Annotations
		if a[annotations.BootID] != strings.TrimSpace(string(bootID)) || a[annotations.BootComplete] != "reached" ||
			a[annotations.OSVersion] != "41.20241109.3.0 (CoreOS)" {
			return fmt.Errorf("witness: boot-id %q, boot-complete %q, os-version %q", a[annotations.BootID], a[annotations.BootComplete], a[annotations.OSVersion])
		}
		return nil
	})

	// An agent restart changes nothing and restarts nothing. Here it can no
	// longer tell boot-complete.target's state (nothing pulls it in): the
	// value goes, through the admission policy, rather than stay from before.
	agent.systemd.SetUnit("boot-complete.target", map[string]any{"ActiveState": "inactive", "Job": fakesystemd.NoJob, "Requires": []string{}})
	agent.restart()
	harness.Eventually(t, 10*time.Second, "a witness it cannot read removed", func() error {
		a := getNode(t, node.name).Annotations
		if _, ok := a[annotations.BootComplete]; ok || a[annotations.BootID] == "" || a[annotations.OSVersion] == "" {
			return fmt.Errorf("witness: boot-id %q, boot-complete %q, os-version %q", a[annotations.BootID], a[annotations.BootComplete], a[annotations.OSVersion])
		}
		return nil
	})
	agent.systemd.SetUnit("boot-complete.target", map[string]any{"ActiveState": "active", "Job": fakesystemd.NoJob})
	time.Sleep(2 * time.Second)
	if got := dropinSecret(agent.dropIn); got != secret || len(agent.systemd.Restarts()) != 1 {
		t.Fatalf("after an agent restart: secret changed %v, restarts %v", got != secret, agent.systemd.Restarts())
	}

	// Missing and wrong credentials: 401 JSON, from anywhere; nothing held.
	wrong, _ := credential.New()
	for _, tc := range []struct{ name, url, want string }{
		{"none", base, "carries none"},
		{"wrong", "http://" + node.name + ":" + wrong + "@" + strings.TrimPrefix(base, "http://"), "wrong credential"},
		{"the group token slot, empty", "http://" + node.name + ":@" + strings.TrimPrefix(base, "http://"), "wrong credential"},
	} {
		for _, op := range []string{"pre-reboot", "steady-state"} {
			if code, body := elsewhere.postURL(t, tc.url, op, p); code != 401 || !strings.Contains(body, `"kind":"unauthorized"`) || !strings.Contains(body, tc.want) {
				t.Fatalf("%s credential, %s = %d %s; want 401 unauthorized %q", tc.name, op, code, body, tc.want)
			}
		}
	}
	if err := a.preReboot(node.id, p.Group); !fleetlock.IsKind(err, fleetlock.KindUnauthorized) {
		t.Fatalf("pre-reboot from the node's own address without the credential = %v, want unauthorized", err)
	}
	if h := holders(t, ns, p.Group); len(h) != 0 {
		t.Fatalf("holders after refused requests: %+v", h)
	}

	// The credential, from an address that is not the node's: the drain
	// starts (the budget holds the pods).
	if code, body := elsewhere.postURL(t, zincati, "pre-reboot", p); code != 423 || !strings.Contains(body, "drain_in_progress") {
		t.Fatalf("pre-reboot with the credential = %d %s, want 423 drain_in_progress", code, body)
	}

	// Rotation asked for mid-cycle: a new secret in the drop-in, both
	// accepted, Zincati not restarted.
	_, err = cluster.Client.CoreV1().Nodes().Patch(ctx, node.name, types.MergePatchType,
		[]byte(`{"metadata":{"annotations":{"rebootmanager/credential-sha256":null}}}`), metav1.PatchOptions{})
	must(t, err)
	var rotated string
	harness.Eventually(t, 30*time.Second, "the rotation", func() error {
		n := getNode(t, node.name)
		rotated = dropinSecret(agent.dropIn)
		if rotated == secret || rotated == "" || n.Annotations[annotations.CredentialSHA256] != credential.Hash(rotated) ||
			n.Annotations[annotations.CredentialPreviousSHA256] != credential.Hash(secret) {
			return fmt.Errorf("not rotated yet: %v", n.Annotations)
		}
		return nil
	})
	newURL := agent.baseURL(t)
	time.Sleep(time.Second)
	if r := agent.systemd.Restarts(); len(r) != 1 {
		t.Fatalf("Zincati restarted mid-cycle: %v", r)
	}
	if code, body := elsewhere.postURL(t, zincati, "pre-reboot", p); code != 423 || !strings.Contains(body, "drain_in_progress") {
		t.Fatalf("the running Zincati's old credential mid-rotation = %d %s, want 423 drain_in_progress", code, body)
	}
	must(t, fixtures.SetMinAvailable(ctx, cluster.Client, ns, "web", 0))
	harness.Eventually(t, 60*time.Second, "approval with the old credential", func() error {
		if code, body := elsewhere.postURL(t, zincati, "pre-reboot", p); code != 200 {
			return fmt.Errorf("pre-reboot = %d %s", code, body)
		}
		return nil
	})
	// The reboot: Zincati comes back with the drop-in's new credential.
	must(t, fixtures.Reboot(ctx, cluster.Client, node.name, time.Second))
	if code, body := elsewhere.postURL(t, newURL, "steady-state", p); code != 200 {
		t.Fatalf("steady-state with the new credential = %d %s", code, body)
	}
	released(t, ns, p.Group, node.name)
	// Out of the cycle, the agent restarts Zincati once and retires the
	// old credential.
	harness.Eventually(t, 30*time.Second, "the old credential retired", func() error {
		n := getNode(t, node.name)
		if _, ok := n.Annotations[annotations.CredentialPreviousSHA256]; ok || len(agent.systemd.Restarts()) != 2 {
			return fmt.Errorf("previous %q, restarts %v", n.Annotations[annotations.CredentialPreviousSHA256], agent.systemd.Restarts())
		}
		return nil
	})
	if code, body := elsewhere.postURL(t, zincati, "steady-state", p); code != 401 {
		t.Fatalf("the retired credential's steady-state = %d %s, want 401", code, body)
	}
	if code, body := elsewhere.postURL(t, newURL, "steady-state", p); code != 200 {
		t.Fatalf("the new credential's steady-state = %d %s, want 200", code, body)
	}

	// The secret is in no log, Event or metric.
	agentLog, _ := os.ReadFile(agent.logPath)
	arbiterLog, _ := os.ReadFile(a.log)
	metrics := getBody(t, a.probe+"metrics")
	events, err := cluster.Client.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + node.name})
	must(t, err)
	var eventText strings.Builder
	for _, e := range events.Items {
		eventText.WriteString(e.Message + "\n")
	}
	for _, s := range []string{secret, rotated} {
		for what, text := range map[string]string{"agent log": string(agentLog), "arbiter log": string(arbiterLog), "metrics": metrics, "events": eventText.String()} {
			if strings.Contains(text, s) {
				t.Errorf("the secret appears in the %s", what)
			}
		}
	}
	if !strings.Contains(string(agentLog), "published a new credential") {
		t.Errorf("the agent's log does not show the credential's publication:\n%s", agentLog)
	}
}

// guardedNodeWith is guardedNode for a node with the given machine id.
func guardedNodeWith(ctx context.Context, t *testing.T, ns, machineID string) simNode {
	t.Helper()
	target := newNodes(t, ns, 1, func(_ int, s *fixtures.NodeSpec) { s.MachineID = machineID })[0]
	must(t, fixtures.CreateGuarded(ctx, cluster.Client, ns, "web", ns, 2, 2))
	must(t, fixtures.WaitRunning(ctx, cluster.Client, ns, "app=web", 2))
	return target
}

func dropinSecret(path string) string {
	s, _ := dropin.Secret(filepath.Dir(path), filepath.Base(path))
	return s
}

// TestUnprotectedNodes: a Node without a credential is served, but shown:
// one NoNodeCredential Warning Event however often it asks, the CREDENTIAL
// column of `status`, and rebootmanager_nodes_without_credential, which
// drops once the node publishes a hash. With --require-node-credential it
// is refused with 401, while a node with its credential is served.
func TestUnprotectedNodes(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	nodes := newNodes(t, ns, 2, nil)
	bare, protected := nodes[0], nodes[1]
	a := startArbiter(t, ns)
	userinfo := giveCredential(ctx, t, protected)
	withCredential := tokenClient(a, userinfo)
	for range 3 {
		must(t, a.steadyState(bare.id, fleetlock.DefaultGroup))
	}
	must(t, withCredential.SteadyState(ctx, fleetlock.ClientParams{ID: protected.id, Group: fleetlock.DefaultGroup}))
	harness.Eventually(t, 10*time.Second, "one NoNodeCredential Event", func() error {
		if n := len(nodeEvents(ctx, t, bare.name, "NoNodeCredential")); n != 1 {
			return fmt.Errorf("%d Events", n)
		}
		return nil
	})
	if n := len(nodeEvents(ctx, t, protected.name, "NoNodeCredential")); n != 0 {
		t.Errorf("NoNodeCredential on the node with a credential")
	}
	r := cliStatus(t, ns)
	if b, p := nodeIn(r, bare.name).Credential, nodeIn(r, protected.name).Credential; b != "no" || p != "yes" {
		t.Errorf("status CREDENTIAL: %s %q, %s %q; want no and yes", bare.name, b, protected.name, p)
	}
	before, ok := metric(t, a, "rebootmanager_nodes_without_credential", nil)
	if !ok || before < 1 {
		t.Fatalf("rebootmanager_nodes_without_credential = %v (%v), want at least the bare node", before, ok)
	}
	credentialed(ctx, t, a, bare)
	harness.Eventually(t, 10*time.Second, "the count drops", func() error {
		if v, _ := metric(t, a, "rebootmanager_nodes_without_credential", nil); v != before-1 {
			return fmt.Errorf("%v, want %v", v, before-1)
		}
		return nil
	})

	a.stop()
	third := newNodes(t, ns, 1, nil)[0]
	strict := startArbiter(t, ns, "--require-node-credential")
	err := strict.preReboot(third.id, fleetlock.DefaultGroup)
	if !fleetlock.IsKind(err, fleetlock.KindUnauthorized) || !strings.Contains(err.Error(), "--require-node-credential") {
		t.Fatalf("pre-reboot of a node without a credential, required = %v, want 401 naming the flag", err)
	}
	if h := holders(t, ns, fleetlock.DefaultGroup); len(h) != 0 {
		t.Fatalf("holders after the refusal: %+v", h)
	}
	must(t, tokenClient(strict, userinfo).PreReboot(ctx, fleetlock.ClientParams{ID: protected.id, Group: fleetlock.DefaultGroup}))
}
