package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// containerd is a containerd daemon on private paths, with ctr to talk to
// it.
type containerd struct {
	dir  string
	sock string
}

// startContainerd starts Debian's containerd (with runc) on private paths
// under a new directory and stops it when the test ends. No container
// engine, registry or CRI is involved: images come in by `ctr images
// import`. A machine without containerd, runc or root fails the test.
func startContainerd(t *testing.T) *containerd {
	t.Helper()
	for _, tool := range []string{"containerd", "ctr", "runc", "containerd-shim-runc-v2"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: the image runtime test needs Debian's containerd and runc (test/deps.sh, or apt-get install containerd runc)", tool)
		}
	}
	if os.Geteuid() != 0 {
		t.Fatalf("the image runtime test runs containerd and runc, which need root")
	}
	// A short path: the socket's must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "rm-ctrd-")
	must(t, err, "make containerd's directory")
	c := &containerd{dir: dir, sock: filepath.Join(dir, "c.sock")}
	config := filepath.Join(dir, "config.toml")
	writeFile(t, config, `version = 2
root = %[1]q
state = %[2]q
# Only what ctr needs: no CRI, so no CNI, streaming server or pod sandbox.
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.sock, c.sock+".ttrpc", filepath.Join(dir, "opt"))
	logPath := filepath.Join(dir, "containerd.log")
	logFile, err := os.Create(logPath)
	must(t, err, "create containerd's log")
	cmd := exec.Command("containerd", "--config", config)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	must(t, cmd.Start(), "start containerd")
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		logFile.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("containerd's log:\n%s", tail(string(b), 40))
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove containerd's directory: %v", err)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, code, err := c.ctr(context.Background(), "version")
		if err == nil && code == 0 {
			return c
		}
		select {
		case err := <-exited:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("containerd exited at start (%v):\n%s", err, tail(string(b), 40))
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("containerd did not answer on %s within 30 s:\n%s", c.sock, tail(string(b), 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ctr runs ctr against c in its own namespace and returns its combined
// output and exit status; err is for a ctr that could not run or hung.
func (c *containerd) ctr(ctx context.Context, args ...string) (string, int, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", c.sock, "--namespace", "reboot-manager-test"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0, nil
	case errors.As(err, &exit) && ctx.Err() == nil:
		return out.String(), exit.ExitCode(), nil
	default:
		return out.String(), -1, err
	}
}

// mustCtr runs ctr and fails the test unless it exits 0.
func (c *containerd) mustCtr(t *testing.T, args ...string) string {
	t.Helper()
	out, code, err := c.ctr(context.Background(), args...)
	if err != nil || code != 0 {
		t.Fatalf("ctr %s: exit %d, %v:\n%s", strings.Join(args, " "), code, err, out)
	}
	return out
}

// checkRuntime imports each amd64 tarball into containerd and runs the
// image through runc, read-only as deploy/ runs it: its entrypoint, its
// --help (exit 0), a bad flag (exit 2), and a check that it runs as its
// user: the arbiter (65532) may not read a root-only file, the agent (root)
// may connect to a root-only socket.
func checkRuntime(t *testing.T, res []built) {
	c := startContainerd(t)
	refs := map[string]string{}
	for _, b := range res {
		start := time.Now()
		c.mustCtr(t, "images", "import", "--platform", "linux/amd64", b.tarball)
		ref := "docker.io/reboot-manager/" + b.name + ":" + testMeta().version
		// The runtime's image has our config, byte for byte: a tarball
		// carries the config blob as built.
		ls := c.mustCtr(t, "images", "ls")
		if !strings.Contains(ls, ref) {
			t.Fatalf("ctr images ls has no %s:\n%s", ref, ls)
		}
		fields := strings.Fields(lineWith(ls, ref))
		manifest := c.mustCtr(t, "content", "get", fields[2])
		var m struct {
			Config struct{ Digest string } `json:"config"`
		}
		must(t, json.Unmarshal([]byte(manifest), &m), "decode the imported manifest")
		if want, _ := b.images[0].ConfigName(); m.Config.Digest != want.String() {
			t.Errorf("%s: containerd's config %s, built %s", b.name, m.Config.Digest, want)
		}
		t.Logf("%s: imported in %v", b.name, time.Since(start).Round(time.Millisecond))
		refs[b.name] = ref
	}

	// A file only root may read, and a socket only root may connect to.
	secret := filepath.Join(c.dir, "secret")
	writeFile(t, secret, "not a kubeconfig\n")
	must(t, os.Chmod(secret, 0o600), "chmod the secret")
	busPath := filepath.Join(c.dir, "bus.sock")
	bus, err := net.Listen("unix", busPath)
	must(t, err, "listen on the fake system bus")
	t.Cleanup(func() { bus.Close() })
	must(t, os.Chmod(busPath, 0o600), "chmod the fake system bus")
	var connected atomic.Int32
	go func() {
		for {
			conn, err := bus.Accept()
			if err != nil {
				return
			}
			connected.Add(1)
			conn.Close()
		}
	}()

	for i, tc := range []struct {
		name    string
		image   string
		opts    []string // ctr run options
		args    []string // none: the image's entrypoint alone
		code    int
		want    []string
		notWant []string
	}{
		{name: "arbiter --help", image: "arbiter", args: []string{"/arbiter", "--help"}, code: 0,
			want: []string{"arbiter: the reboot-manager FleetLock server", "-listen-address (ARBITER_LISTEN_ADDRESS)"}},
		{name: "arbiter entrypoint, bad flag from the environment", image: "arbiter", opts: []string{"--env", "ARBITER_LOG_FORMAT=bogus"}, code: 2,
			want: []string{`arbiter: -log-format must be json or text, not "bogus"`}},
		{name: "arbiter unknown flag", image: "arbiter", args: []string{"/arbiter", "--no-such-flag"}, code: 2,
			want: []string{"flag provided but not defined: -no-such-flag"}},
		{name: "arbiter runs as non-root", image: "arbiter",
			opts: []string{"--mount", "type=bind,src=" + secret + ",dst=/secret/kubeconfig,options=rbind:ro"},
			args: []string{"/arbiter", "--kubeconfig=/secret/kubeconfig"}, code: 1,
			want: []string{"open /secret/kubeconfig: permission denied"}},
		{name: "agent --help", image: "agent", args: []string{"/agent", "--help"}, code: 0,
			want: []string{"agent: configures Zincati for the reboot-manager arbiter on this host", "-node-name (AGENT_NODE_NAME)"}},
		{name: "agent entrypoint without a node name", image: "agent", code: 2,
			want: []string{"agent: -node-name (AGENT_NODE_NAME) is required"}},
		// Whichever the agent opens first, the root-only kubeconfig or the
		// root-only bus socket, root gets past the permission check.
		{name: "agent runs as root", image: "agent",
			opts: []string{"--mount", "type=bind,src=" + secret + ",dst=/secret/kubeconfig,options=rbind:ro",
				"--mount", "type=bind,src=" + busPath + ",dst=/run/dbus/system_bus_socket,options=rbind",
				"--env", "DBUS_SYSTEM_BUS_ADDRESS=unix:path=/run/dbus/system_bus_socket"},
			args: []string{"/agent", "--node-name=n1", "--kubeconfig=/secret/kubeconfig"}, code: 1,
			notWant: []string{"permission denied"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := connected.Load()
			args := append(append([]string{"run", "--rm", "--runc-root", filepath.Join(c.dir, "runc")}, deployOpts()...), tc.opts...)
			args = append(args, refs[tc.image], "rm-test-"+string(rune('a'+i)))
			args = append(args, tc.args...)
			start := time.Now()
			out, code, err := c.ctr(context.Background(), args...)
			if err != nil {
				t.Fatalf("ctr run: %v\n%s", err, out)
			}
			if code != tc.code {
				t.Errorf("exit status %d, want %d:\n%s", code, tc.code, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output does not say %q:\n%s", w, out)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(out, w) {
					t.Errorf("output says %q:\n%s", w, out)
				}
			}
			if tc.name == "agent runs as root" && connected.Load() == before && !strings.Contains(out, `"/secret/kubeconfig"`) {
				t.Errorf("the agent neither connected to the root-only bus socket nor read the root-only kubeconfig:\n%s", out)
			}
			t.Logf("ran in %v", time.Since(start).Round(time.Millisecond))
		})
	}

	// The spec containerd makes from each image: its entrypoint, user and
	// working directory.
	for _, tc := range []struct {
		image    string
		uid, gid int
	}{{"arbiter", 65532, 65532}, {"agent", 0, 0}} {
		t.Run(tc.image+" spec", func(t *testing.T) {
			id := "rm-spec-" + tc.image
			c.mustCtr(t, append(append([]string{"containers", "create"}, deployOpts()...), refs[tc.image], id)...)
			defer c.mustCtr(t, "containers", "rm", id)
			var info struct {
				Spec struct {
					Process struct {
						User            struct{ UID, GID int }
						Args            []string
						Cwd             string
						NoNewPrivileges bool
						Capabilities    map[string][]string
					}
					Root struct{ Readonly bool }
				}
			}
			must(t, json.Unmarshal([]byte(c.mustCtr(t, "containers", "info", id)), &info), "decode ctr containers info")
			p := info.Spec.Process
			if p.User.UID != tc.uid || p.User.GID != tc.gid {
				t.Errorf("runs as %d:%d, want %d:%d", p.User.UID, p.User.GID, tc.uid, tc.gid)
			}
			if strings.Join(p.Args, " ") != "/"+tc.image || p.Cwd != "/" {
				t.Errorf("runs %q in %q, want [/%s] in /", p.Args, p.Cwd, tc.image)
			}
			if !info.Spec.Root.Readonly {
				t.Errorf("root is not read-only")
			}
			for set, caps := range p.Capabilities {
				if len(caps) > 0 {
					t.Errorf("%s capabilities %q, want none", set, caps)
				}
			}
			if !p.NoNewPrivileges {
				t.Errorf("privilege escalation is allowed")
			}
		})
	}
}

// deployOpts are the ctr run options that give the container what
// deploy/'s securityContexts give the pods: a read-only root, no
// capabilities (ctr has no "ALL": these are its defaults) and no privilege
// escalation (ctr's default).
func deployOpts() []string {
	opts := []string{"--read-only"}
	for _, c := range []string{"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
		"SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"} {
		opts = append(opts, "--cap-drop", "CAP_"+c)
	}
	return opts
}

// lineWith returns the first line of s that contains sub.
func lineWith(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}
