package e2e

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMakeRunCtrlC runs `make run` as a terminal does, in a process group
// of its own, on a second plane (its own state directory and ports), and
// waits for the arbiter to serve. Then either Ctrl-C (SIGINT to the whole
// group) or the arbiter's own end (SIGTERM to it alone) must end make run
// and stop the plane: every process of it gone, its state directory
// removed. Once, an errexit inside run.sh's exit trap (a `kill` of an
// arbiter that had already exited) left etcd, kube-apiserver, the
// controller manager, the scheduler and kwok all running.
func TestMakeRunCtrlC(t *testing.T) {
	for _, tt := range []struct {
		name  string
		group bool // SIGINT to make's process group; else SIGTERM to the arbiter
	}{
		{"Ctrl-C", true},
		{"the arbiter exits", false},
	} {
		t.Run(tt.name, func(t *testing.T) { makeRunStops(t, tt.group) })
	}
}

func makeRunStops(t *testing.T, group bool) {
	state := filepath.Join(t.TempDir(), "plane")
	probe := freeAddr(t)
	cmd := exec.Command("make", "run")
	cmd.Dir = cluster.Root
	cmd.Env = append(os.Environ(),
		"CLUSTER_DIR="+state, "CLUSTER_PORT_BASE=27400",
		"ARBITER_LISTEN_ADDRESS="+freeAddr(t), "ARBITER_PROBE_ADDRESS="+probe)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	pids := func() map[string]int {
		out := map[string]int{}
		files, _ := filepath.Glob(filepath.Join(state, "pids", "*.pid"))
		for _, f := range files {
			b, err := os.ReadFile(f)
			if pid, err2 := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && err2 == nil {
				out[strings.TrimSuffix(filepath.Base(f), ".pid")] = pid
			}
		}
		return out
	}
	t.Cleanup(func() {
		// Whatever happened, leave no plane behind.
		for _, pid := range pids() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for {
		if r, err := http.Get("http://" + probe + "/healthz"); err == nil {
			r.Body.Close()
			if r.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("make run exited before the arbiter served: %v\n%s", err, out.String())
		case <-ctx.Done():
			t.Fatalf("the arbiter of make run did not serve within 5 minutes\n%s", out.String())
		case <-time.After(500 * time.Millisecond):
		}
	}
	plane := pids()
	if len(plane) < 5 {
		t.Fatalf("make run's plane recorded %d processes, want 5 (%v)", len(plane), plane)
	}

	if group {
		if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
	} else {
		pid := groupMember(cmd.Process.Pid, "arbiter")
		if pid == 0 {
			t.Fatalf("no arbiter process in make run's group")
		}
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-exited:
	case <-time.After(time.Minute):
		t.Fatalf("make run still running a minute after it was stopped\n%s", out.String())
	}
	for name, pid := range plane {
		if running(pid) {
			t.Errorf("%s (pid %d) still runs after make run was stopped", name, pid)
		}
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("the plane's state directory %s is still there after make run was stopped (%v)", state, err)
	}
	if !strings.Contains(out.String(), "cluster: stopped") {
		t.Errorf("make run did not say the plane stopped:\n%s", out.String())
	}
}

// stat returns the command, the state and the process group of pid from
// /proc; ok false when there is no such process.
func stat(pid int) (comm string, state byte, pgid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", 0, 0, false
	}
	// "pid (comm) state ppid pgrp ...": the command may hold spaces.
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return "", 0, 0, false
	}
	f := strings.Fields(s[end+1:])
	if len(f) < 3 {
		return "", 0, 0, false
	}
	pgid, _ = strconv.Atoi(f[2])
	return s[open+1 : end], f[0][0], pgid, true
}

// running reports whether pid is a live process (a zombie is not).
func running(pid int) bool {
	_, state, _, ok := stat(pid)
	return ok && state != 'Z'
}

// groupMember returns the pid of a live process named comm in the process
// group pgid, or 0.
func groupMember(pgid int, comm string) int {
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if c, state, g, ok := stat(pid); ok && g == pgid && c == comm && state != 'Z' {
			return pid
		}
	}
	return 0
}
