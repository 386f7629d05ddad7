// Command seed fills the local control plane for `make run`: a few kwok
// nodes with known machine ids, a Deployment guarded by a
// PodDisruptionBudget, a DaemonSet, and the arbiter's namespace; with
// -real-nodes, also pods on the real kubelet nodes that stop slowly. It
// prints the curl commands that drive FleetLock by hand for the first node
// of each kind.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/rebootmanager/reboot-manager/shared/zincatiid"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
)

func main() {
	kubeconfig := flag.String("kubeconfig", ".cluster/kubeconfig", "admin kubeconfig of the local plane")
	nodes := flag.Int("nodes", 4, "simulated nodes to create")
	url := flag.String("url", "http://127.0.0.1:8080/", "the arbiter's base URL, for the printed commands")
	real := flag.Int("real-nodes", 0, "real kubelet nodes the plane runs (real-1…), to put slow pods on")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	err := seed(ctx, *kubeconfig, *nodes, *real, *url)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "seed:", err)
		os.Exit(1)
	}
}

func seed(ctx context.Context, kubeconfig string, nodes, real int, url string) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("load %s: %w", kubeconfig, err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	if err := run(ctx, c, nodes, url); err != nil {
		return err
	}
	return runReal(ctx, c, real, url)
}

func run(ctx context.Context, c kubernetes.Interface, count int, url string) error {
	for _, ns := range []string{"reboot-manager", "demo"} {
		_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create namespace %s: %w", ns, err)
		}
	}
	if err := fixtures.EnsureGroups(ctx, c, ".", "reboot-manager"); err != nil {
		return err
	}
	var first string
	for i := range count {
		// Fixed machine ids, so the printed ids are the same every run.
		machineID := fmt.Sprintf("%032x", 0x1c09ca98649c4c7a+i)
		name := fmt.Sprintf("fcos-%d", i)
		if _, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{}); err == nil {
			if i == 0 {
				first = machineID
			}
			continue
		}
		if _, err := fixtures.CreateNode(ctx, c, fixtures.NodeSpec{Name: name, MachineID: machineID, Labels: map[string]string{"pool": "demo"}}); err != nil {
			return err
		}
		if i == 0 {
			first = machineID
		}
	}
	dep, pdb := fixtures.Deployment("demo", "web", "demo", int32(2*count), int32(2*count-1))
	for _, create := range []func() error{
		func() error {
			_, err := c.AppsV1().Deployments("demo").Create(ctx, dep, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.PolicyV1().PodDisruptionBudgets("demo").Create(ctx, pdb, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.AppsV1().DaemonSets("demo").Create(ctx, fixtures.DaemonSet("demo", "node-agent", "demo"), metav1.CreateOptions{})
			return err
		},
	} {
		if err := create(); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create demo workloads: %w", err)
		}
	}
	if err := fixtures.WaitRunning(ctx, c, "demo", "app=web", 2*count); err != nil {
		return fmt.Errorf("wait for the demo pods: %w", err)
	}
	id, err := zincatiid.FromMachineID(first)
	if err != nil {
		return err
	}
	body := fmt.Sprintf(`{"client_params":{"id":"%s","group":"default"}}`, id)
	fmt.Printf(`
%d simulated nodes (fcos-0…) run demo/web (%d pods, PodDisruptionBudget minAvailable=%d) and a DaemonSet.
Node fcos-0 has machine id %s, so Zincati would send id %s.

Ask to reboot fcos-0 (repeat it: 423 drain_in_progress while its pods leave, then 200):
  curl -sS -H 'fleet-lock-protocol: true' -d '%s' %sv1/pre-reboot; echo
Watch it:
  . .cluster/env; kubectl get pods -n demo -o wide
  bin/kubectl-reboot_manager --kubeconfig .cluster/kubeconfig status
Simulate its reboot (kubelet reports a new boot id and OS version):
  kubectl patch node fcos-0 --subresource=status --type=merge -p '{"status":{"nodeInfo":{"bootID":"'$(cat /proc/sys/kernel/random/uuid)'","osImage":"Fedora CoreOS 41.2"}}}'
Report it back up; the slot passes on and the node is uncordoned once it is back (RebootCompleted).
Without the reboot, kubelet still renews its Lease on the old boot: released within a minute (NotRebooted).
  curl -sS -H 'fleet-lock-protocol: true' -d '%s' %sv1/steady-state; echo

`, count, 2*count, 2*count-1, first, id, body, url, body, url)
	return nil
}

// runReal puts a Deployment of pods that take 8 s to stop (grace period
// 20 s) on the real nodes, and prints how to drain and reboot real-1.
func runReal(ctx context.Context, c kubernetes.Interface, count int, url string) error {
	if count == 0 {
		return nil
	}
	replicas := int32(2 * count)
	dep := fixtures.RealDeployment("demo", "slow", replicas, 20, 8*time.Second)
	if _, err := c.AppsV1().Deployments("demo").Create(ctx, dep, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create demo/slow: %w", err)
	}
	n, err := c.CoreV1().Nodes().Get(ctx, "real-1", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read the real node real-1: %w", err)
	}
	id, err := zincatiid.FromMachineID(n.Status.NodeInfo.MachineID)
	if err != nil {
		return fmt.Errorf("real-1's machine id: %w", err)
	}
	body := fmt.Sprintf(`{"client_params":{"id":"%s","group":"default"}}`, id)
	fmt.Printf(`%d real kubelet nodes (real-1…) run demo/slow (%d pods that take 8 s to stop after SIGTERM).
Ask to reboot real-1 (Zincati id %s), and watch its pods terminate for real:
  curl -sS -H 'fleet-lock-protocol: true' -d '%s' %sv1/pre-reboot; echo
  kubectl get pods -n demo -o wide -l app=slow -w
Reboot it (5 s down, into a new Fedora CoreOS version), then report it back up:
  test/cluster/cluster.sh reboot real-1 5 42.$(date +%%Y%%m%%d).1.0
  curl -sS -H 'fleet-lock-protocol: true' -d '%s' %sv1/steady-state; echo

`, count, replicas, id, body, url, body, url)
	return nil
}
