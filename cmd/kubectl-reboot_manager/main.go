// Command kubectl-reboot_manager is the operator's view of reboot-manager,
// installed as a kubectl plugin (`kubectl reboot-manager status`). It reads
// and changes the arbiter's state in the API server directly, so it works
// while the arbiter is down.
//
//	kubectl reboot-manager status [-o table|json]
//	kubectl reboot-manager release NODE|ID [-o table|json]
//	kubectl reboot-manager pause GROUP...|--all
//	kubectl reboot-manager resume GROUP...|--all
//	kubectl reboot-manager id MACHINE-ID
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rebootmanager/reboot-manager/arbiter/operator"
	"github.com/rebootmanager/reboot-manager/shared/envflag"
	"github.com/rebootmanager/reboot-manager/shared/kubeclient"
	"github.com/rebootmanager/reboot-manager/shared/zincatiid"
)

const usage = `kubectl reboot-manager: the operator's view of reboot-manager

Commands:
  status             groups, slots and holders, and each node's reboot status and what it waits for
  release NODE|ID    free the reboot slot a node (or a Zincati id) holds, and put a draining node back in service
  pause GROUP...     halt groups (--all: every group): no new slot, no new approval, until resume
  resume GROUP...    lift the halt of groups (--all: every halted group), whatever halted them
  id MACHINE-ID      print the Zincati id of a machine id (/etc/machine-id)`

// env is the prefix of the environment variables behind the flags.
const env = "REBOOT_MANAGER"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.LookupEnv))
}

// run executes one command and returns the exit status: 0 on success, 1 when
// the command failed, 2 on a usage error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	fs := flag.NewFlagSet("kubectl-reboot_manager", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file; empty means $KUBECONFIG, then ~/.kube/config")
	where := operator.Where{}
	fs.StringVar(&where.Namespace, "namespace", "reboot-manager", "the arbiter's namespace")
	fs.StringVar(&where.GroupsConfigMap, "groups-configmap", "reboot-manager-groups", "the groups ConfigMap")
	output := fs.String("o", "table", "output format: table or json")
	all := fs.Bool("all", false, "pause or resume: every group")
	timeout := fs.Duration("request-timeout", 30*time.Second, "time limit for the whole command")
	// Parse errors are reported in one line below; the usage only on -h.
	fs.SetOutput(io.Discard)
	words, err := parseInterleaved(fs, args)
	if err == nil {
		err = envflag.FromEnv(fs, env, lookup)
	}
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(stderr)
		envflag.Usage(fs, env, usage)()
		return 0
	}
	if err == nil && *output != "table" && *output != "json" {
		err = fmt.Errorf("-o must be table or json, not %q", *output)
	}
	if err == nil && len(words) == 0 {
		err = errors.New("no command: want status, release, pause, resume or id (-h for help)")
	}
	if err != nil {
		fmt.Fprintln(stderr, "kubectl-reboot_manager:", err)
		return 2
	}

	fail := func(err error) int {
		fmt.Fprintln(stderr, "kubectl-reboot_manager:", err)
		return 1
	}
	cmd, rest := words[0], words[1:]
	want := map[string]int{"status": 0, "release": 1, "id": 1, "pause": -1, "resume": -1}
	n, ok := want[cmd]
	switch {
	case !ok:
		fmt.Fprintf(stderr, "kubectl-reboot_manager: unknown command %q: want status, release, pause, resume or id\n", cmd)
		return 2
	case n < 0 && (len(rest) == 0) == !*all:
		fmt.Fprintf(stderr, "kubectl-reboot_manager: %s takes groups, or --all, not both\n", cmd)
		return 2
	case n >= 0 && *all:
		fmt.Fprintf(stderr, "kubectl-reboot_manager: --all goes with pause and resume only\n")
		return 2
	case n >= 0 && len(rest) != n:
		fmt.Fprintf(stderr, "kubectl-reboot_manager: %s takes %d argument(s), got %d\n", cmd, n, len(rest))
		return 2
	}
	if cmd == "id" {
		id, err := zincatiid.FromMachineID(rest[0])
		if err != nil {
			return fail(err)
		}
		fmt.Fprintln(stdout, id)
		return 0
	}

	client, _, err := kubeclient.New(*kubeconfig, "kubectl-reboot_manager")
	if err != nil {
		return fail(err)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	switch cmd {
	case "status":
		r, err := operator.Status(ctx, client, where)
		if err != nil {
			return fail(err)
		}
		if *output == "json" {
			err = r.WriteJSON(stdout)
		} else {
			err = r.WriteTable(stdout)
		}
		if err != nil {
			return fail(err)
		}
	case "pause", "resume":
		act := operator.Pause
		if cmd == "resume" {
			act = operator.Resume
		}
		r, err := act(ctx, client, where, rest, *all, operatorName(lookup))
		if err == nil {
			err = show(stdout, *output, r)
		}
		if err != nil {
			return fail(err)
		}
	case "release":
		r, err := operator.Release(ctx, client, where, rest[0])
		if err == nil {
			err = show(stdout, *output, r)
		}
		if err != nil {
			return fail(err)
		}
	}
	return 0
}

// parseInterleaved parses flags wherever they stand among the positional
// words, as kubectl does, and returns the words.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var words []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return words, nil
		}
		words = append(words, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// show writes a command's result as JSON, or as its confirmation message.
func show(w io.Writer, output string, r fmt.Stringer) error {
	if output == "json" {
		return writeJSON(w, r)
	}
	_, err := fmt.Fprint(w, r)
	return err
}

// operatorName names who acts, for the halt record and its Event.
func operatorName(lookup func(string) (string, bool)) string {
	if u, ok := lookup("USER"); ok && u != "" {
		return "operator " + u
	}
	return "an operator"
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
