package journey

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// sysctls are the kernel settings that kubelet, kube-proxy and the bridge
// plugin may change; "down" restores them.
var sysctls = []string{
	"net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet", "net/bridge/bridge-nf-call-iptables",
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// readMachine lists, one line each, what a plane with real nodes may add to
// the machine: links, iptables and ip6tables chains and rules, mount points,
// network namespaces, sysctls, container cgroups, and processes that run
// from the plane's directory or the plane's binaries.
func readMachine(state string) ([]string, error) {
	var out []string
	links, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		return nil, fmt.Errorf("ip link: %w", err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(links)), "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			out = append(out, "link "+name)
		}
	}
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		rules, err := exec.Command(save).Output()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", save, err)
		}
		table := ""
		for _, l := range strings.Split(string(rules), "\n") {
			switch {
			case strings.HasPrefix(l, "*"):
				table = l[1:]
			case strings.HasPrefix(l, ":"), strings.HasPrefix(l, "-A "):
				out = append(out, save+" "+table+" "+counters.ReplaceAllString(l, ""))
			}
		}
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	for _, l := range strings.Split(strings.TrimSpace(string(mounts)), "\n") {
		if f := strings.Fields(l); len(f) > 4 {
			out = append(out, "mount "+f[4])
		}
	}
	if ns, err := exec.Command("ip", "netns", "list").Output(); err == nil {
		for _, l := range strings.Split(strings.TrimSpace(string(ns)), "\n") {
			if l != "" {
				out = append(out, "netns "+strings.Fields(l)[0])
			}
		}
	}
	for _, s := range sysctls {
		if v, err := os.ReadFile(filepath.Join("/proc/sys", s)); err == nil {
			out = append(out, "sysctl "+s+"="+strings.TrimSpace(string(v)))
		}
	}
	cgroups, _ := filepath.Glob("/sys/fs/cgroup/*/k8s.io")
	for _, c := range cgroups {
		out = append(out, "cgroup "+c)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		cmd, err := os.ReadFile(p)
		if err != nil || len(cmd) == 0 {
			continue
		}
		line := string(bytes.ReplaceAll(bytes.TrimRight(cmd, "\x00"), []byte{0}, []byte{' '}))
		for _, mark := range []string{state, "kubelet", "kube-proxy", "containerd", "nodesystemd", "/pause"} {
			if strings.Contains(line, mark) {
				out = append(out, "process "+line)
				break
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// diff returns the lines only in after, and those only in before.
func diff(before, after []string) (added, removed []string) {
	for _, l := range after {
		if _, found := slices.BinarySearch(before, l); !found {
			added = append(added, l)
		}
	}
	for _, l := range before {
		if _, found := slices.BinarySearch(after, l); !found {
			removed = append(removed, l)
		}
	}
	return added, removed
}

// TestReadMachineSees: the leftover check would see a link, a chain and a
// rule left behind (so that its silence after "down" means something).
func TestReadMachineSees(t *testing.T) {
	before, err := readMachine(state)
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	run("ip", "link", "add", "rmjtest0", "type", "veth", "peer", "name", "rmjtest0p")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", "rmjtest0").Run() })
	run("iptables", "-w", "-N", "RMJTEST")
	t.Cleanup(func() { _ = exec.Command("iptables", "-w", "-X", "RMJTEST").Run() })
	run("iptables", "-w", "-A", "RMJTEST", "-d", "10.0.0.9/32", "-j", "RETURN")
	t.Cleanup(func() { _ = exec.Command("iptables", "-w", "-F", "RMJTEST").Run() })
	after, err := readMachine(state)
	if err != nil {
		t.Fatal(err)
	}
	added, _ := diff(before, after)
	for _, want := range []string{"link rmjtest0", "link rmjtest0p", "iptables-save filter :RMJTEST - ", "iptables-save filter -A RMJTEST -d 10.0.0.9/32 -j RETURN"} {
		if !slices.Contains(added, want) {
			t.Errorf("the machine's reading lacks %q; it added %q", want, added)
		}
	}
}
