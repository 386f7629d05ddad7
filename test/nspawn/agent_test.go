package nspawn

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rebootmanager/reboot-manager/agent"
	"github.com/rebootmanager/reboot-manager/agent/dropin"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/zincatiid"
	"github.com/rebootmanager/reboot-manager/systemd"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

const (
	agentSA     = "system:serviceaccount:reboot-manager-agent:agent"
	fcosVersion = "41.20241109.3.0 (CoreOS)"
	fcosRelease = "NAME=\"Fedora Linux\"\nVERSION=\"" + fcosVersion + "\"\nID=fedora\nVERSION_ID=41\nVARIANT_ID=coreos\nPRETTY_NAME=\"Fedora CoreOS 41.20241109.3.0\"\n"
	baseURL     = "http://10.0.0.9:80/"
	dropInPath  = "/etc/zincati/config.d/" + dropin.DefaultName
)

var (
	buildOnce sync.Once
	built     string
	buildErr  error
)

// agentBinary builds ./cmd/agent once, as the image does.
func agentBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "nspawn-agent")
		if err != nil {
			buildErr = err
			return
		}
		built = filepath.Join(dir, "agent")
		cmd := exec.Command("go", "build", "-trimpath", "-o", built, "./cmd/agent")
		cmd.Dir = repo()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/agent: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return built
}

// withoutBusEnv is the environment without DBUS_SYSTEM_BUS_ADDRESS, so
// that the agent finds the bus under its host root, as in the DaemonSet.
func withoutBusEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DBUS_SYSTEM_BUS_ADDRESS=") {
			env = append(env, kv)
		}
	}
	return env
}

// zincatiStarts counts the dummy Zincati's starts in the container's
// journal.
func zincatiStarts(t *testing.T) int {
	t.Helper()
	out, err := box.exec("journalctl", "-u", "zincati.service", "--no-pager", "-o", "cat")
	if err != nil {
		t.Fatalf("journalctl -u zincati: %v\n%s", err, out)
	}
	return strings.Count(out, "zincati dummy started")
}

// waitStarts waits until Zincati has started want times in all, then
// checks for 3 s that it starts no more.
func waitStarts(t *testing.T, want int) {
	t.Helper()
	harness.Eventually(t, 40*time.Second, "Zincati's starts", func() error {
		if got := zincatiStarts(t); got != want {
			return fmt.Errorf("%d starts, want %d", got, want)
		}
		return nil
	})
	time.Sleep(3 * time.Second)
	if got := zincatiStarts(t); got != want {
		t.Fatalf("Zincati started %d times, want %d", got, want)
	}
}

// waitJournal returns a function that polls journalctl (with args) in the
// container until cond holds.
func waitJournal(t *testing.T, args ...string) func(cond func(string) bool) string {
	return func(cond func(string) bool) string {
		t.Helper()
		var out string
		harness.Eventually(t, 20*time.Second, "journalctl "+strings.Join(args, " "), func() error {
			out, _ = box.exec(append([]string{"journalctl", "--no-pager"}, args...)...)
			if !cond(out) {
				return fmt.Errorf("not yet in the journal:\n%s", tail(out, 15))
			}
			return nil
		})
		return out
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// agentLog is the agent's journal records since the node's first.
func agentLog(t *testing.T, node string) string {
	t.Helper()
	out, _ := box.exec("journalctl", "--no-pager", "-t", "reboot-manager-agent", "NODE="+node, "-o", "cat")
	return out
}

// setOS makes the container's os-release content (restored at the end),
// and /usr/libexec/zincati present or not.
func setOS(t *testing.T, release string, zincati bool) {
	t.Helper()
	osRelease := box.root + "/usr/lib/os-release"
	old, err := os.ReadFile(osRelease)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.WriteFile(osRelease, old, 0o644) })
	if err := os.WriteFile(osRelease, []byte(release), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := box.root + "/usr/libexec/zincati"
	t.Cleanup(func() { os.Remove(bin) })
	if zincati {
		if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bin, []byte("#!/bin/sh\nexec /usr/local/bin/zincati\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	} else {
		os.Remove(bin)
	}
}

// noZincatiDir removes the container's /etc/zincati, as on a host whose
// Zincati package ships none (or that has no Zincati), and puts an empty
// config.d back at the end.
func noZincatiDir(t *testing.T) {
	t.Helper()
	if err := os.RemoveAll(box.root + "/etc/zincati"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.RemoveAll(box.root + "/etc/zincati")
		_ = os.MkdirAll(box.root+"/etc/zincati/config.d", 0o755)
	})
}

// installRBAC applies the namespaces and the agent's RBAC and policy.
func installRBAC(t *testing.T) {
	t.Helper()
	for _, f := range []string{"deploy/namespace.yaml", "deploy/agent-rbac.yaml"} {
		if _, err := cluster.Kubectl("apply", "-f", f); err != nil {
			t.Fatal(err)
		}
	}
}

// newNode creates a kwok Node for the container, deleted at the end.
func newNode(t *testing.T) string {
	t.Helper()
	name := harness.Prefix(t)
	if _, err := fixtures.CreateNode(context.Background(), cluster.Client, fixtures.NodeSpec{Name: name}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fixtures.DeleteNodes(context.Background(), cluster.Client, name) })
	return name
}

// agentProc is the real agent binary on the container's host view,
// acting as the agent's ServiceAccount with a token bound to its node.
type agentProc struct {
	cmd    *exec.Cmd
	done   chan struct{}
	stderr *bytes.Buffer
}

func startAgent(t *testing.T, node string, args ...string) *agentProc {
	t.Helper()
	kubeconfig := cluster.ImpersonatingKubeconfigExtra(t, agentSA,
		[]string{"system:serviceaccounts", "system:serviceaccounts:reboot-manager-agent", "system:authenticated"},
		map[string][]string{"authentication.kubernetes.io/node-name": {node}})
	cmd := exec.Command(agentBinary(t), append([]string{"--kubeconfig", kubeconfig, "--node-name", node,
		"--host-root", box.view, "--base-url", baseURL}, args...)...)
	cmd.Env = withoutBusEnv()
	p := &agentProc{cmd: cmd, done: make(chan struct{}), stderr: &bytes.Buffer{}}
	cmd.Stdout, cmd.Stderr = p.stderr, p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("agent on %s, stderr:\n%s\njournal:\n%s", node, p.stderr, agentLog(t, node))
		}
	})
	return p
}

// running fails the test if the agent has exited.
func (p *agentProc) running(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
		t.Fatalf("the agent exited (%v); it must keep running:\n%s", p.cmd.ProcessState, p.stderr)
	default:
	}
}

// stop sends SIGTERM, as the kubelet does, and waits for a clean exit.
func (p *agentProc) stop(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("the agent did not stop in 10 s after SIGTERM")
	}
	if !p.cmd.ProcessState.Success() {
		t.Errorf("the agent exited with %v after SIGTERM:\n%s", p.cmd.ProcessState, p.stderr)
	}
}

// agentEvents are the reasons of the agent's Events on node.
func agentEvents(t *testing.T, node string) []string {
	t.Helper()
	l, err := cluster.Client.CoreV1().Events("default").List(context.Background(),
		metav1.ListOptions{FieldSelector: "involvedObject.name=" + node + ",source=reboot-manager-agent"})
	if err != nil {
		t.Fatal(err)
	}
	var reasons []string
	for _, e := range l.Items {
		reasons = append(reasons, e.Reason)
	}
	return reasons
}

func getNode(t *testing.T, name string) *corev1.Node {
	t.Helper()
	n, err := cluster.Client.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// etcTree lists the container's /etc (paths, modes, sizes, times), to
// prove that nothing was created or changed there.
func etcTree(t *testing.T) string {
	t.Helper()
	out, err := box.exec("find", "/etc", "-xdev", "-printf", "%p %M %s %T@ %C@\n")
	if err != nil {
		t.Fatalf("find /etc: %v\n%s", err, out)
	}
	return out
}

func unitState(t *testing.T, prop string) string {
	t.Helper()
	return strings.TrimSpace(boxExec(t, "systemctl", "show", "-p", prop, "--value", "zincati.service"))
}

// TestReadOnlyHostView proves what the DaemonSet's mounts rely on: /usr
// and /run, bind-mounted read-only (the container's own, under
// /hostview), refuse writes, and yet a client connects through them to
// the real system bus and to the real journal, since connecting to a unix
// socket needs write permission on the socket, not a writable mount.
func TestReadOnlyHostView(t *testing.T) {
	for _, dir := range []string{"usr", "run"} {
		err := os.WriteFile(filepath.Join(box.view, dir, "probe"), nil, 0o644)
		if !errorsIsErofs(err) {
			t.Fatalf("writing under the host view's /%s = %v, want EROFS (the mount is not read-only)", dir, err)
		}
	}
	if err := os.WriteFile(filepath.Join(box.view, "etc", "probe"), nil, 0o644); err != nil {
		t.Fatalf("the host view's /etc is not writable: %v", err)
	}
	os.Remove(filepath.Join(box.view, "etc", "probe"))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := systemd.ConnectAddress(ctx, "unix:path="+box.view+"/run/dbus/system_bus_socket")
	if err != nil {
		t.Fatalf("D-Bus through the read-only /run: %v", err)
	}
	defer m.Close()
	s, err := m.Unit(ctx, "zincati.service")
	if err != nil || s.Active != "active" || !s.ActiveEnterKnown || s.ActiveEnter.IsZero() {
		t.Fatalf("zincati.service through the read-only /run = %+v, %v", s, err)
	}
	j, err := systemd.OpenJournal(box.view + "/run/systemd/journal/socket")
	if err != nil {
		t.Fatalf("the journal through the read-only /run: %v", err)
	}
	defer j.Close()
	mark := fmt.Sprintf("through a read-only /run %d", time.Now().UnixNano())
	if err := j.Send(mark, 6, map[string]string{"SYSLOG_IDENTIFIER": "rm-readonly-probe"}); err != nil {
		t.Fatal(err)
	}
	waitJournal(t, "-t", "rm-readonly-probe", "-o", "cat")(func(out string) bool { return strings.Contains(out, mark) })
}

func errorsIsErofs(err error) bool {
	pe, ok := err.(*os.PathError)
	return ok && pe.Err == syscall.EROFS
}

// TestAgentLeavesOtherHostsAlone: on a host that is not Fedora CoreOS, or
// has no Zincati, the real agent on the real host creates nothing under
// its /etc (it has no /etc/zincati here), restarts nothing and publishes
// nothing; it logs why to the host's journal and records one Node Event,
// and keeps running until SIGTERM.
func TestAgentLeavesOtherHostsAlone(t *testing.T) {
	installRBAC(t)
	tests := []struct {
		name    string
		release string // "" keeps Debian's
		zincati bool
		args    []string
		reason  string
		log     string
	}{
		{name: "Debian", zincati: true, reason: agent.ReasonNotFedoraCoreOS, log: "not Fedora CoreOS"},
		{name: "Fedora CoreOS without Zincati", release: fcosRelease, reason: agent.ReasonZincatiAbsent, log: "no /usr/libexec/zincati"},
		{name: "Fedora CoreOS whose systemd knows no such unit", release: fcosRelease, zincati: true, args: []string{"--unit", "zincati-gone.service"},
			reason: agent.ReasonZincatiAbsent, log: "knows no zincati-gone.service"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.release != "" {
				setOS(t, tt.release, tt.zincati)
			} else {
				old, _ := os.ReadFile(box.root + "/usr/lib/os-release")
				setOS(t, string(old), tt.zincati)
			}
			noZincatiDir(t)
			node := newNode(t)
			before, starts, pid := etcTree(t), zincatiStarts(t), unitState(t, "MainPID")
			p := startAgent(t, node, tt.args...)
			harness.Eventually(t, 20*time.Second, "the Node Event", func() error {
				if got := agentEvents(t, node); len(got) != 1 || got[0] != tt.reason {
					return fmt.Errorf("Events %q, want [%s]", got, tt.reason)
				}
				return nil
			})
			waitJournal(t, "-t", "reboot-manager-agent", "NODE="+node, "-o", "verbose")(func(out string) bool {
				return strings.Contains(out, tt.log) && strings.Contains(out, "REASON="+tt.reason)
			})
			time.Sleep(2 * time.Second)
			p.running(t)
			if after := etcTree(t); after != before {
				t.Errorf("the host's /etc changed:\n%s", diffLines(before, after))
			}
			if got := zincatiStarts(t); got != starts || unitState(t, "MainPID") != pid {
				t.Errorf("Zincati was restarted (%d starts)", got-starts)
			}
			for k := range getNode(t, node).Annotations {
				if strings.HasPrefix(k, "rebootmanager/") {
					t.Errorf("the agent published %s", k)
				}
			}
			if n := strings.Count(agentLog(t, node), tt.log); n != 1 {
				t.Errorf("the agent logged why %d times, want once", n)
			}
			p.stop(t)
		})
	}
}

// diffLines lists the lines only in a or only in b.
func diffLines(a, b string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	var out []string
	for l := range ma {
		if !mb[l] {
			out = append(out, "- "+l)
		}
	}
	for l := range mb {
		if !ma[l] {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}

// TestAgentOnFedoraCoreOS runs the real agent on the container made to
// look like Fedora CoreOS with Zincati (os-release, /usr/libexec/zincati),
// with no /etc/zincati. It makes the directory, writes the drop-in,
// publishes its annotations and restarts the real zincati.service once,
// which then runs the drop-in. Then, across restarts of the agent:
//   - nothing owed: no restart;
//   - the drop-in newer than Zincati's ActiveEnterTimestamp (an agent that
//     wrote it and died before the restart): restarted once;
//   - Zincati stopped by an administrator, a restart owed: never started,
//     said once in the journal and in a ZincatiStopped Event.
func TestAgentOnFedoraCoreOS(t *testing.T) {
	installRBAC(t)
	setOS(t, fcosRelease, true)
	noZincatiDir(t)
	node := newNode(t)
	machineID, err := os.ReadFile(box.root + "/etc/machine-id")
	if err != nil {
		t.Fatal(err)
	}
	wantID, err := zincatiid.FromMachineID(string(machineID))
	if err != nil {
		t.Fatal(err)
	}
	starts := zincatiStarts(t)
	p := startAgent(t, node)
	harness.Eventually(t, 30*time.Second, "the drop-in and the annotations", func() error {
		b, err := os.ReadFile(box.root + dropInPath)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), `@10.0.0.9:80/"`) {
			return fmt.Errorf("drop-in:\n%s", b)
		}
		a := getNode(t, node).Annotations
		if a[annotations.ZincatiID] != wantID || a[annotations.OSVersion] != fcosVersion || a[annotations.BootID] == "" {
			return fmt.Errorf("annotations %v", a)
		}
		return nil
	})
	if fi, err := os.Stat(box.root + "/etc/zincati/config.d"); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("the drop-in directory: %v, %v; want 0755", fi, err)
	}
	waitStarts(t, starts+1)
	starts++
	waitJournal(t, "-u", "zincati.service", "-o", "cat")(func(out string) bool {
		return strings.Contains(out, "drop-in "+dropInPath+":") && strings.Contains(out, `@10.0.0.9:80/"`)
	})
	p.stop(t)

	t.Run("restarted agent, nothing owed", func(t *testing.T) {
		p := startAgent(t, node)
		time.Sleep(3 * time.Second)
		p.running(t)
		waitStarts(t, starts)
		p.stop(t)
	})

	t.Run("restarted agent, a restart owed", func(t *testing.T) {
		// The drop-in as an agent left it that died before restarting
		// Zincati: the same bytes, written after Zincati's last start.
		now := time.Now()
		if err := os.Chtimes(box.root+dropInPath, now, now); err != nil {
			t.Fatal(err)
		}
		p := startAgent(t, node)
		waitStarts(t, starts+1)
		starts++
		if !strings.Contains(agentLog(t, node), "its restart is still owed") {
			t.Errorf("the agent did not say why it restarted Zincati:\n%s", tail(agentLog(t, node), 10))
		}
		p.stop(t)
	})

	t.Run("Zincati stopped by an administrator", func(t *testing.T) {
		boxExec(t, "systemctl", "stop", "zincati.service")
		t.Cleanup(func() { boxExec(t, "systemctl", "start", "zincati.service") })
		now := time.Now()
		if err := os.Chtimes(box.root+dropInPath, now, now); err != nil {
			t.Fatal(err)
		}
		p := startAgent(t, node)
		harness.Eventually(t, 20*time.Second, "the ZincatiStopped Event", func() error {
			for _, r := range agentEvents(t, node) {
				if r == agent.ReasonZincatiStopped {
					return nil
				}
			}
			return fmt.Errorf("Events %q", agentEvents(t, node))
		})
		time.Sleep(3 * time.Second)
		p.running(t)
		if s := unitState(t, "ActiveState"); s != "inactive" {
			t.Errorf("Zincati is %s, want still inactive", s)
		}
		if got := zincatiStarts(t); got != starts {
			t.Errorf("Zincati started %d times", got-starts)
		}
		if n := strings.Count(agentLog(t, node), "zincati.service is stopped"); n != 1 {
			t.Errorf("the agent said Zincati is stopped %d times, want once", n)
		}
		p.stop(t)
		starts++ // the cleanup's start
	})
}

// TestAgentWithoutBusAtStart: the real agent starts while the host's
// D-Bus is down (dbus.socket and dbus.service stopped, the socket gone). It
// still writes the drop-in and publishes its annotations, says once that
// the bus is not there, keeps running, and restarts Zincati once D-Bus
// is started again.
func TestAgentWithoutBusAtStart(t *testing.T) {
	installRBAC(t)
	setOS(t, fcosRelease, true)
	node := newNode(t)
	os.Remove(box.root + dropInPath)
	starts := zincatiStarts(t)
	boxExec(t, "systemctl", "stop", "dbus.socket", "dbus.service")
	t.Cleanup(func() { _, _ = box.exec("systemctl", "start", "dbus.socket", "dbus.service") })
	// systemd leaves a stopped socket's file (RemoveOnStop=no): remove it,
	// as on a host whose D-Bus has not started yet.
	boxExec(t, "rm", "-f", "/run/dbus/system_bus_socket")
	if _, err := os.Stat(box.view + "/run/dbus/system_bus_socket"); !os.IsNotExist(err) {
		t.Fatalf("the bus socket is still there: %v", err)
	}
	p := startAgent(t, node)
	harness.Eventually(t, 30*time.Second, "the drop-in and the annotations without D-Bus", func() error {
		if _, err := os.Stat(box.root + dropInPath); err != nil {
			return err
		}
		if a := getNode(t, node).Annotations; a[annotations.ZincatiID] == "" || a[annotations.OSVersion] != fcosVersion {
			return fmt.Errorf("annotations %v", a)
		}
		return nil
	})
	time.Sleep(4 * time.Second)
	p.running(t)
	if got := zincatiStarts(t); got != starts {
		t.Fatalf("Zincati started %d times without a bus", got-starts)
	}
	if n := strings.Count(agentLog(t, node), "Zincati's restart waits for the bus"); n != 1 {
		t.Errorf("the agent said the bus is missing %d times, want once:\n%s", n, tail(agentLog(t, node), 10))
	}
	boxExec(t, "systemctl", "start", "dbus.socket", "dbus.service")
	waitStarts(t, starts+1)
	if !strings.Contains(agentLog(t, node), "reconciled again") {
		t.Errorf("the agent did not say it got on:\n%s", tail(agentLog(t, node), 10))
	}
	p.stop(t)
}
