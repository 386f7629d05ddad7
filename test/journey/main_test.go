// Package journey runs the whole user journey on real kubelet nodes: a plane
// of its own (test/cluster/cluster.sh up --real-nodes 2, in .cluster-journey
// on ports 26500+), deploy/ applied with the project's own images, Zincati's
// wire through kube-proxy, real drains and real reboots. Before the plane
// starts and after it is torn down, it reads what the machine has (links,
// iptables chains and rules, mounts, network namespaces, sysctls, cgroups,
// processes), and fails when "down" left anything behind.
package journey

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/rebootmanager/reboot-manager/test/harness"
)

var (
	cluster *harness.Cluster
	// state is the journey plane's directory (CLUSTER_DIR).
	state string
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	_, file, _, _ := runtime.Caller(0)
	root, err := filepath.Abs(filepath.Join(filepath.Dir(file), "../.."))
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: find the repository:", err)
		return 1
	}
	setDefault("CLUSTER_DIR", filepath.Join(root, ".cluster-journey"))
	setDefault("CLUSTER_PORT_BASE", "26500")
	os.Setenv("CLUSTER_REAL_NODES", "2")
	state = os.Getenv("CLUSTER_DIR")
	script := filepath.Join(root, "test/cluster/cluster.sh")
	down := func() error {
		cmd := exec.Command(script, "down")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		return cmd.Run()
	}
	// The plane is this package's own: one left by an interrupted run goes
	// first, so that the machine is read as it is without it.
	if err := down(); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: stop an earlier journey plane:", err)
		return 1
	}
	before, err := readMachine(state)
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: read the machine before the plane:", err)
		return 1
	}
	c, err := harness.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: the journey needs a plane with real nodes:", err)
		_ = down()
		return 1
	}
	cluster = c
	code := m.Run()
	if err := down(); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: cluster.sh down:", err)
		return 1
	}
	after, err := readMachine(state)
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: read the machine after the plane:", err)
		return 1
	}
	if added, removed := diff(before, after); len(added)+len(removed) > 0 {
		fmt.Fprintln(os.Stderr, "FAIL: cluster.sh down did not leave the machine as it found it")
		for _, l := range added {
			fmt.Fprintln(os.Stderr, "  left behind:", l)
		}
		for _, l := range removed {
			fmt.Fprintln(os.Stderr, "  gone:", l)
		}
		return 1
	}
	fmt.Fprintln(os.Stderr, "journey: cluster.sh down left the machine as it found it")
	return code
}

func setDefault(key, value string) {
	if os.Getenv(key) == "" {
		os.Setenv(key, value)
	}
}
