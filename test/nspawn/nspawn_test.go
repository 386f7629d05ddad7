// Package nspawn tests the agent's host integration against a real systemd,
// D-Bus and journald, booted with systemd-nspawn from a cached debootstrap
// root filesystem (test/systemd/rootfs.sh) with a dummy zincati.service,
// and the agent's whole flow against that host and the local control
// plane (test/harness).
package nspawn

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	sdbus "github.com/coreos/go-systemd/v22/dbus"

	"github.com/rebootmanager/reboot-manager/agent/dropin"
	"github.com/rebootmanager/reboot-manager/shared/credential"
	"github.com/rebootmanager/reboot-manager/systemd"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// machine is a booted container.
type machine struct {
	leader string // PID of the container's systemd, as a string
	root   string // /proc/LEADER/root
	// view is the host as the agent's DaemonSet mounts it, seen from
	// outside: the container's /etc (read-write), /usr and /run
	// (read-only) bind-mounted under /hostview inside it.
	view string
}

var (
	box     *machine
	cluster *harness.Cluster
)

func TestMain(m *testing.M) {
	cl, err := harness.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: the tier-2 agent tests need the local control plane:", err)
		os.Exit(1)
	}
	cluster = cl
	mc, stop, err := boot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: the tier-2 agent tests need a systemd-nspawn container:", err)
		os.Exit(1)
	}
	box = mc
	code := m.Run()
	stop()
	os.Exit(code)
}

// hostView mounts, inside the container, what the DaemonSet's hostPath
// volumes give the agent: /etc read-write, /usr and /run read-only, each
// with its submounts (the kubelet's hostPath binds are recursive), all
// under /hostview.
const hostView = `set -e
for d in etc usr run; do
	mkdir -p /hostview/$d
	mount --rbind /$d /hostview/$d
done
mount -o remount,bind,ro /hostview/usr
mount -o remount,bind,ro /hostview/run`

func repo() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "../..")
}

func boot() (*machine, func(), error) {
	out, err := exec.Command(filepath.Join(repo(), "test/systemd/rootfs.sh")).Output()
	if err != nil {
		return nil, nil, fmt.Errorf("build the root filesystem (test/systemd/rootfs.sh): %w", err)
	}
	rootfs := strings.TrimSpace(string(out))
	name := fmt.Sprintf("rm-agent-%d", os.Getpid())
	cmd := exec.Command("setsid", "systemd-nspawn", "-D", rootfs, "-M", name, "--boot", "--register=no", "--keep-unit",
		"--private-network", "--volatile=overlay", "--console=read-only")
	logf, _ := os.CreateTemp("", "nspawn-*.log")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start systemd-nspawn: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	stop := func() {
		_ = cmd.Process.Kill()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
		os.RemoveAll("/run/systemd/nspawn/propagate/" + name)
		os.Remove(logf.Name())
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		pid, err := exec.Command("pgrep", "-P", fmt.Sprint(cmd.Process.Pid), "-x", "systemd").Output()
		if err != nil {
			continue
		}
		m := &machine{leader: strings.TrimSpace(strings.Split(string(pid), "\n")[0])}
		m.root = "/proc/" + m.leader + "/root"
		state, _ := m.exec("systemctl", "is-system-running")
		if s := strings.TrimSpace(state); s == "running" || s == "degraded" {
			if out, err := m.exec("sh", "-c", hostView); err != nil {
				stop()
				return nil, nil, fmt.Errorf("mount the host view in the container: %v\n%s", err, out)
			}
			m.view = m.root + "/hostview"
			return m, stop, nil
		}
	}
	log, _ := os.ReadFile(logf.Name())
	stop()
	return nil, nil, fmt.Errorf("the container did not reach running in 60 s:\n%s", log)
}

// exec runs a command inside the container's mount and PID namespaces.
func (m *machine) exec(args ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{"-t", m.leader, "-m", "-p"}, args...)...).CombinedOutput()
	return string(out), err
}

func (m *machine) mainPID(t *testing.T) string {
	t.Helper()
	out, err := m.exec("systemctl", "show", "-p", "MainPID", "--value", "zincati.service")
	if err != nil {
		t.Fatalf("systemctl show: %v %s", err, out)
	}
	return strings.TrimSpace(out)
}

func (m *machine) bus(t *testing.T) {
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+m.root+"/run/dbus/system_bus_socket")
}

// TestRestartRealZincati writes the drop-in into the container's root and
// restarts the real unit over D-Bus: the job is done, the MainPID changes,
// and the restarted unit saw the new file.
func TestRestartRealZincati(t *testing.T) {
	box.bus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	before := box.mainPID(t)
	content, err := dropin.Render(dropin.Settings{BaseURL: "http://10.0.0.9:80", Group: "workers"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dropin.Write(box.root+"/etc/zincati/config.d", dropin.DefaultName, content, dropin.Public); err != nil {
		t.Fatal(err)
	}
	m, err := systemd.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	start := time.Now()
	if err := m.Restart(ctx, "zincati.service"); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	t.Logf("real RestartUnit took %s", time.Since(start))
	if after := box.mainPID(t); after == before || after == "0" {
		t.Errorf("MainPID %s → %s, want a new process", before, after)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := box.exec("journalctl", "-u", "zincati.service", "--no-pager", "-o", "cat")
		if strings.Contains(out, `base_url = "http://10.0.0.9:80/"`) && strings.Contains(out, `group = "workers"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restarted dummy Zincati never printed the drop-in; its log:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := m.Restart(ctx, "no-such.service"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("Restart of a missing unit = %v, want a not-found error", err)
	}
}

// TestAgentCleanupJournal runs the real agent binary with --cleanup
// against the container as the uninstall Job mounts it (the host view): it
// removes the drop-in, restarts the running Zincati, and its records reach
// the container's journal, through the read-only /run, under the
// identifier reboot-manager-agent.
func TestAgentCleanupJournal(t *testing.T) {
	bin := agentBinary(t)
	if _, err := dropin.Write(box.root+"/etc/zincati/config.d", dropin.DefaultName, []byte("# to be removed\n"), dropin.Public); err != nil {
		t.Fatal(err)
	}
	starts := zincatiStarts(t)
	node := "fcos-cleanup-" + fmt.Sprint(time.Now().UnixNano())
	cmd := exec.Command(bin, "--cleanup", "--host-root", box.view, "--node-name", node)
	cmd.Env = withoutBusEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("agent --cleanup: %v\n%s", err, out)
	}
	if _, err := os.Stat(box.root + "/etc/zincati/config.d/" + dropin.DefaultName); !os.IsNotExist(err) {
		t.Errorf("the drop-in is still there (%v)", err)
	}
	waitJournal(t, "-t", "reboot-manager-agent", "-o", "verbose")(func(out string) bool {
		return strings.Contains(out, "removed the Zincati drop-in") && strings.Contains(out, "NODE="+node) && strings.Contains(out, "CHANGED=true")
	})
	if got := zincatiStarts(t); got != starts+1 {
		t.Errorf("Zincati started %d times during the cleanup, want once", got-starts)
	}
	// Again: nothing left to remove, and Zincati started since: no restart.
	cmd = exec.Command(bin, "--cleanup", "--host-root", box.view, "--node-name", node)
	cmd.Env = withoutBusEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("agent --cleanup again: %v\n%s", err, out)
	}
	if got := zincatiStarts(t); got != starts+1 {
		t.Errorf("a second cleanup started Zincati again (%d starts)", got-starts)
	}
}

// TestDropInAccess proves, on the container's real systemd host with users
// made by its own useradd and groupadd, who may read the drop-in holding the
// credential as the agent writes it (dropin.ZincatiAccess, then
// dropin.Write): owned by root, group the zincati user's primary group (or
// else the group named zincati), mode 0640, so the zincati user (or a
// member of that group) reads it and another unprivileged user gets
// "Permission denied". With no zincati user or group, ZincatiAccess returns
// ErrNoZincatiGroup and the agent's fallback, dropin.Public, is root:root
// 0644. Each case removes the users and groups it made.
func TestDropInAccess(t *testing.T) {
	dir := box.root + "/etc/zincati/config.d"
	const inBox = "/etc/zincati/config.d/" + dropin.DefaultName
	boxExec(t, "useradd", "--system", "--user-group", "--no-create-home", "intruder")
	t.Cleanup(func() { _, _ = box.exec("userdel", "intruder") })
	for _, tc := range []struct {
		name    string
		setup   [][]string // run in the container before ZincatiAccess
		wantErr error      // from ZincatiAccess; the agent then writes dropin.Public
		stat    string     // stat -c '%U %G %a' in the container
		readers []string   // may cat the file
		denied  []string   // get Permission denied
	}{{
		name:    "no zincati user",
		wantErr: dropin.ErrNoZincatiGroup,
		stat:    "root root 644",
		readers: []string{"intruder"},
	}, {
		name:    "zincati system user",
		setup:   [][]string{{"useradd", "--system", "--user-group", "--no-create-home", "zincati"}},
		stat:    "root zincati 640",
		readers: []string{"zincati"},
		denied:  []string{"intruder", "nobody"},
	}, {
		name: "zincati user's primary group is not named zincati",
		setup: [][]string{
			{"groupadd", "--system", "updaters"},
			{"groupadd", "--system", "zincati"}, // passwd's primary group wins over it
			{"useradd", "--system", "--gid", "updaters", "--no-create-home", "zincati"},
		},
		stat:    "root updaters 640",
		readers: []string{"zincati"},
		denied:  []string{"intruder"},
	}, {
		name: "zincati group only",
		setup: [][]string{
			{"groupadd", "--system", "zincati"},
			{"useradd", "--system", "--user-group", "--groups", "zincati", "--no-create-home", "member"},
		},
		stat:    "root zincati 640",
		readers: []string{"member"},
		denied:  []string{"intruder"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Cleanup(func() {
				os.Remove(filepath.Join(dir, dropin.DefaultName))
				for _, u := range []string{"zincati", "member"} {
					_, _ = box.exec("userdel", u)
				}
				for _, g := range []string{"zincati", "updaters"} {
					_, _ = box.exec("groupdel", g)
				}
			})
			for _, c := range tc.setup {
				boxExec(t, c...)
			}
			acc, err := dropin.ZincatiAccess(box.root)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("ZincatiAccess = %+v, %v; want error %v", acc, err, tc.wantErr)
			}
			if err != nil {
				acc = dropin.Public
			} else if acc.Mode != 0o640 {
				t.Errorf("ZincatiAccess mode = %v, want 0640", acc.Mode)
			}
			secret, err := credential.New()
			if err != nil {
				t.Fatal(err)
			}
			content, err := dropin.Render(dropin.Settings{BaseURL: "http://10.0.0.9:80", Group: "workers", User: "fcos-test", Secret: secret})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := dropin.Write(dir, dropin.DefaultName, content, acc); err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(boxExec(t, "stat", "-c", "%U %G %a", inBox)); got != tc.stat {
				t.Errorf("stat %s in the container = %q, want %q", inBox, got, tc.stat)
			}
			for _, u := range tc.readers {
				out, err := box.exec("runuser", "-u", u, "--", "cat", inBox)
				if err != nil || !strings.Contains(out, secret) {
					t.Errorf("runuser -u %s -- cat %s: %v, %q; want the drop-in with the secret", u, inBox, err, out)
				}
			}
			for _, u := range tc.denied {
				out, err := box.exec("runuser", "-u", u, "--", "cat", inBox)
				if err == nil || !strings.Contains(out, "Permission denied") || strings.Contains(out, secret) {
					t.Errorf("runuser -u %s -- cat %s: %v, %q; want Permission denied", u, inBox, err, out)
				}
			}
		})
	}
}

// TestBootComplete proves systemd.Manager.BootComplete against the
// container's real systemd 252 over its system bus. Before each case
// boot-complete.target is stopped, the case's check.service (Type=oneshot,
// Before= and RequiredBy=boot-complete.target, enabled by a symlink in
// boot-complete.target.requires/) is installed and systemd reloaded, then
// the target is started:
//   - with no check unit the target becomes active: "reached";
//   - with a check unit running /bin/false the target's start job fails with
//     result "dependency" and the target stays inactive with no job while the
//     system is running or degraded: "failed";
//   - with a check unit sleeping 5 s, started with --no-block, a start job
//     for the target is queued: "pending", then "reached" once it finishes.
//
// Each case logs the raw ActiveState, SubState, Job (with its Go type) and
// SystemState it saw, and restores a healthy system (no check unit, target
// active, nothing failed) so later tests are unaffected. Before anything
// started the target (nothing in this root pulls it in), BootComplete must
// not say "failed".
func TestBootComplete(t *testing.T) {
	box.bus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m, err := systemd.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	raw, err := sdbus.NewSystemConnectionContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	observe := func(t *testing.T, when string) {
		t.Helper()
		var parts []string
		for _, p := range []string{"LoadState", "ActiveState", "SubState", "Job"} {
			v, err := raw.GetUnitPropertyContext(ctx, systemd.BootCompleteTarget, p)
			if err != nil {
				parts = append(parts, p+": "+err.Error())
				continue
			}
			val := v.Value.Value()
			typ := fmt.Sprintf("%T", val)
			if s, ok := val.([]any); ok {
				for _, e := range s {
					typ += fmt.Sprintf(" %T", e)
				}
			}
			parts = append(parts, fmt.Sprintf("%s=%#v (%s)", p, val, typ))
		}
		if st, err := raw.SystemStateContext(ctx); err == nil {
			parts = append(parts, fmt.Sprintf("SystemState=%v", st.Value.Value()))
		}
		t.Logf("%s: %s", when, strings.Join(parts, ", "))
	}
	bootComplete := func(t *testing.T) string {
		t.Helper()
		got, err := m.BootComplete(ctx)
		if err != nil {
			t.Fatalf("BootComplete: %v", err)
		}
		return got
	}
	const (
		unitDir  = "/etc/systemd/system"
		unit     = unitDir + "/check.service"
		requires = unitDir + "/boot-complete.target.requires/check.service"
	)
	clean := func() {
		os.Remove(box.root + requires)
		os.Remove(box.root + unit)
		_, _ = box.exec("systemctl", "daemon-reload")
		_, _ = box.exec("systemctl", "reset-failed")
		_, _ = box.exec("systemctl", "start", systemd.BootCompleteTarget)
	}
	observe(t, "before any case")
	// Nothing in this root pulls the target in: a boot that never asked
	// for it is no failed boot ("" the first time; "reached" once an
	// earlier run started it).
	if got := bootComplete(t); got != "" && got != systemd.BootReached {
		t.Fatalf("BootComplete before anything started %s = %q, want \"\" (never asked for) or reached", systemd.BootCompleteTarget, got)
	}
	t.Cleanup(clean)

	for _, tc := range []struct {
		name     string
		exec     string   // the check unit's ExecStart; "" installs none
		noBlock  bool     // start the target with --no-block
		startErr bool     // systemctl start fails
		want     []string // BootComplete's values in order, polled until the last
	}{
		{name: "healthy", want: []string{systemd.BootReached}},
		{name: "a required unit fails", exec: "/bin/false", startErr: true, want: []string{systemd.BootFailed}},
		{name: "a required unit is still running", exec: "/bin/sleep 5", noBlock: true, want: []string{systemd.BootPending, systemd.BootReached}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Cleanup(clean)
			boxExec(t, "systemctl", "stop", systemd.BootCompleteTarget)
			if tc.exec != "" {
				content := "[Unit]\nDescription=boot check for reboot-manager tests\nBefore=" + systemd.BootCompleteTarget +
					"\n[Service]\nType=oneshot\nExecStart=" + tc.exec + "\n[Install]\nRequiredBy=" + systemd.BootCompleteTarget + "\n"
				if err := os.WriteFile(box.root+unit, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.MkdirAll(filepath.Dir(box.root+requires), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(unit, box.root+requires); err != nil {
					t.Fatal(err)
				}
			}
			boxExec(t, "systemctl", "daemon-reload")
			start := []string{"systemctl", "start", systemd.BootCompleteTarget}
			if tc.noBlock {
				start = append(start, "--no-block")
			}
			out, err := box.exec(start...)
			if (err != nil) != tc.startErr {
				t.Fatalf("%s: %v %s; want failure %v", strings.Join(start, " "), err, out, tc.startErr)
			}
			observe(t, "after start")
			var seen []string
			deadline := time.Now().Add(20 * time.Second)
			for i, want := range tc.want {
				for {
					got := bootComplete(t)
					if len(seen) == 0 || seen[len(seen)-1] != got {
						seen = append(seen, got)
						observe(t, "BootComplete = "+got)
					}
					if got == want {
						break
					}
					// Only the last value may take a while to arrive.
					if i < len(tc.want)-1 || time.Now().After(deadline) {
						t.Fatalf("BootComplete went %q, want %q", seen, tc.want)
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}
}

// boxExec runs a command in the container and fails the test if it fails.
func boxExec(t *testing.T, args ...string) string {
	t.Helper()
	out, err := box.exec(args...)
	if err != nil {
		t.Fatalf("%s in the container: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}
