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
	rules, err := readNetfilter("")
	if err != nil {
		return nil, err
	}
	out = append(out, rules...)
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

// readNetfilter lists the iptables and ip6tables chains and rules of the
// network namespace ns ("" for the machine's own), one line each, as
// netfilterLines reads them.
func readNetfilter(ns string) ([]string, error) {
	var out []string
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		cmd := exec.Command(save)
		if ns != "" {
			cmd = exec.Command("ip", "netns", "exec", ns, save)
		}
		dump, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", save, err)
		}
		out = append(out, netfilterLines(save, dump)...)
	}
	return out, nil
}

// netfilterLines reads the dump of save (iptables-save or ip6tables-save):
// a line for each chain (with its policy) and each rule, prefixed with the
// command and the table, without counters. A table that holds only
// built-in chains at the default policy ACCEPT and no rule is left out: it
// is the same as no table. On a machine that never used iptables the
// nf_tables backend has no tables at all, and the first use creates them
// with those chains, which nothing needs to remove. Anything else in a
// table (a rule, a chain of its own, a changed policy) keeps the whole
// table in the reading.
func netfilterLines(save string, dump []byte) []string {
	var out, table []string
	name, fresh := "", true
	for _, l := range strings.Split(string(dump), "\n") {
		switch {
		case strings.HasPrefix(l, "*"):
			name, fresh, table = l[1:], true, nil
		case strings.HasPrefix(l, ":"):
			// ":CHAIN POLICY [counters]"; a chain of one's own has policy "-".
			if f := strings.Fields(l); len(f) < 2 || f[1] != "ACCEPT" || !slices.Contains(builtin[name], f[0][1:]) {
				fresh = false
			}
			table = append(table, save+" "+name+" "+counters.ReplaceAllString(l, ""))
		case strings.HasPrefix(l, "-A "):
			fresh = false
			table = append(table, save+" "+name+" "+counters.ReplaceAllString(l, ""))
		case l == "COMMIT":
			if !fresh {
				out = append(out, table...)
			}
			table = nil
		}
	}
	if !fresh {
		out = append(out, table...) // a table cut short is never taken for a fresh one
	}
	return out
}

// builtin names the built-in chains of iptables' tables.
var builtin = map[string][]string{
	"filter":   {"INPUT", "FORWARD", "OUTPUT"},
	"nat":      {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"mangle":   {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	"raw":      {"PREROUTING", "OUTPUT"},
	"security": {"INPUT", "FORWARD", "OUTPUT"},
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
// rule left behind (so that its silence after "down" means something), and
// takes a table iptables merely used for no table.
func TestReadMachineSees(t *testing.T) {
	t.Run("a fresh table with default chains is not a leftover; a rule in it is", freshTables)
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

// freshTables: a table that exists only with its empty
// built-in chains at their default policy reads as no table; a rule in it,
// a chain of its own or a changed policy is a leftover. Read in a network
// namespace of its own, whose netfilter starts as a new machine's does.
func freshTables(t *testing.T) {
	ns := fmt.Sprintf("rmjtest-%d", os.Getpid())
	ipt := func(args ...string) {
		t.Helper()
		args = append([]string{"netns", "exec", ns}, args...)
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	read := func() []string {
		t.Helper()
		lines, err := readNetfilter(ns)
		if err != nil {
			t.Fatal(err)
		}
		return lines
	}
	before := read()
	// Used and emptied again: the tables now exist, with their built-in
	// chains, in both families.
	for _, cmd := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"filter", "nat", "mangle", "raw"} {
			ipt(cmd, "-w", "-t", table, "-A", "OUTPUT", "-j", "RETURN")
			ipt(cmd, "-w", "-t", table, "-D", "OUTPUT", "-j", "RETURN")
		}
	}
	if added, removed := diff(before, read()); len(added)+len(removed) > 0 {
		t.Errorf("fresh tables with default chains read as leftovers: added %q, gone %q", added, removed)
	}
	for _, c := range []struct {
		change, undo []string
		want         []string
	}{
		{[]string{"iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-d", "10.0.0.9/32", "-j", "RETURN"},
			[]string{"iptables", "-w", "-t", "nat", "-D", "POSTROUTING", "-d", "10.0.0.9/32", "-j", "RETURN"},
			[]string{"iptables-save nat -A POSTROUTING -d 10.0.0.9/32 -j RETURN", "iptables-save nat :POSTROUTING ACCEPT "}},
		{[]string{"ip6tables", "-w", "-P", "FORWARD", "DROP"}, []string{"ip6tables", "-w", "-P", "FORWARD", "ACCEPT"},
			[]string{"ip6tables-save filter :FORWARD DROP "}},
		{[]string{"iptables", "-w", "-t", "mangle", "-N", "RMJTEST"}, []string{"iptables", "-w", "-t", "mangle", "-X", "RMJTEST"},
			[]string{"iptables-save mangle :RMJTEST - "}},
	} {
		ipt(c.change...)
		added, _ := diff(before, read())
		for _, want := range c.want {
			if !slices.Contains(added, want) {
				t.Errorf("after %v the reading lacks %q; it added %q", c.change, want, added)
			}
		}
		ipt(c.undo...)
		if added, removed := diff(before, read()); len(added)+len(removed) > 0 {
			t.Errorf("after undoing %v: added %q, gone %q", c.change, added, removed)
		}
	}
}

// TestNetfilterLines: which tables of a dump count, and how they read.
func TestNetfilterLines(t *testing.T) {
	const fresh = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [12:720]\nCOMMIT\n"
	for _, c := range []struct {
		name, dump string
		want       []string
	}{
		{"no tables", "", nil},
		{"a fresh table", "# Generated by iptables-nft-save\n" + fresh + "# Completed\n", nil},
		{"a rule", "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [3:180]\n-A POSTROUTING -o rm0 -j MASQUERADE\nCOMMIT\n",
			[]string{"s nat :PREROUTING ACCEPT ", "s nat :POSTROUTING ACCEPT ", "s nat -A POSTROUTING -o rm0 -j MASQUERADE"}},
		{"a chain of its own", "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\nCOMMIT\n",
			[]string{"s filter :INPUT ACCEPT ", "s filter :KUBE-FIREWALL - "}},
		{"a changed policy", "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\nCOMMIT\n",
			[]string{"s filter :INPUT ACCEPT ", "s filter :FORWARD DROP "}},
		{"a base chain not built in", "*filter\n:INPUT ACCEPT [0:0]\n:MINE ACCEPT [0:0]\nCOMMIT\n",
			[]string{"s filter :INPUT ACCEPT ", "s filter :MINE ACCEPT "}},
		{"a fresh table beside a used one", fresh + "*raw\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j RETURN\nCOMMIT\n",
			[]string{"s raw :OUTPUT ACCEPT ", "s raw -A OUTPUT -j RETURN"}},
		{"a dump cut short", "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j RETURN\n",
			[]string{"s filter :INPUT ACCEPT ", "s filter -A INPUT -j RETURN"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := netfilterLines("s", []byte(c.dump)); !slices.Equal(got, c.want) {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
}
