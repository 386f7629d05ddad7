// Package harness gives end-to-end tests a client for the local control
// plane: it starts the plane (test/cluster/cluster.sh up) or reuses a running
// one, and hands each test its own namespace and node names.
package harness

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Cluster is a running local control plane.
type Cluster struct {
	// Root is the repository's root directory.
	Root string
	// Kubeconfig is the admin kubeconfig's path.
	Kubeconfig string
	// Bin is the directory of the control-plane binaries, kubectl included.
	Bin string
	// Config and Client talk to the API server as admin.
	Config *rest.Config
	Client kubernetes.Interface
}

// Start starts the local plane if it is not running, and returns it. It
// fails, with the reason, when the plane cannot be built or started: the
// end-to-end tier is never skipped.
func Start() (*Cluster, error) {
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(root, "test/cluster/cluster.sh"), "up")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("start the local control plane (test/cluster/cluster.sh up): %w", err)
	}
	out, err := exec.Command(filepath.Join(root, "test/cluster/build.sh")).Output()
	if err != nil {
		return nil, fmt.Errorf("find the control-plane binaries (test/cluster/build.sh): %w", err)
	}
	bin := strings.TrimSpace(string(out))
	kubeconfig := filepath.Join(stateDir(root), "kubeconfig")
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("build client: %w", err)
	}
	return &Cluster{Root: root, Bin: bin, Kubeconfig: kubeconfig, Config: cfg, Client: client}, nil
}

// Main is a TestMain body: it starts the plane, stores it in *c, and runs the
// tests. A plane that cannot start fails the package.
func Main(m *testing.M, c **Cluster) {
	cl, err := Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: end-to-end tests need the local control plane:", err)
		os.Exit(1)
	}
	*c = cl
	os.Exit(m.Run())
}

func stateDir(root string) string {
	if d := os.Getenv("CLUSTER_DIR"); d != "" {
		return d
	}
	return filepath.Join(root, ".cluster")
}

func repoRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("find the repository root")
	}
	return filepath.Abs(filepath.Join(filepath.Dir(file), "../.."))
}

var unsafeChars = regexp.MustCompile(`[^a-z0-9-]+`)

// Prefix returns a short DNS-safe prefix unique to the test, for the names
// of its nodes and other cluster-scoped objects.
func Prefix(t testing.TB) string {
	sum := sha256.Sum256([]byte(t.Name() + time.Now().String()))
	name := unsafeChars.ReplaceAllString(strings.ToLower(t.Name()), "-")
	if len(name) > 30 {
		name = name[:30]
	}
	return strings.Trim(name, "-") + "-" + hex.EncodeToString(sum[:3])
}

// Kubectl runs the plane's own kubectl as admin and returns its combined output.
func (c *Cluster) Kubectl(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(c.Bin, "kubectl"), append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	cmd.Dir = c.Root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// ImpersonatingKubeconfig writes a kubeconfig that acts as user (for
// example a ServiceAccount) in groups, through the admin's impersonation
// right.
func (c *Cluster) ImpersonatingKubeconfig(t testing.TB, user string, groups ...string) string {
	t.Helper()
	return c.ImpersonatingKubeconfigExtra(t, user, groups, nil)
}

// ImpersonatingKubeconfigExtra is ImpersonatingKubeconfig with extra user
// info, such as the authentication.kubernetes.io/node-name that a token
// bound to a pod carries.
func (c *Cluster) ImpersonatingKubeconfigExtra(t testing.TB, user string, groups []string, extra map[string][]string) string {
	t.Helper()
	raw, err := os.ReadFile(c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	as := "    as: " + user + "\n"
	if len(groups) > 0 {
		as += "    as-groups: [" + strings.Join(groups, ", ") + "]\n"
	}
	if len(extra) > 0 {
		as += "    as-user-extra:\n"
		for k, vs := range extra {
			as += "      " + k + ": [" + strings.Join(vs, ", ") + "]\n"
		}
	}
	text := strings.Replace(string(raw), "    client-key:", as+"    client-key:", 1)
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Namespace creates a namespace for the test and deletes it afterwards.
func (c *Cluster) Namespace(t testing.TB) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Prefix(t)}}
	if _, err := c.Client.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", ns.Name, err)
	}
	t.Cleanup(func() {
		_ = c.Client.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	})
	// Pods are refused until the controller manager has made the default
	// ServiceAccount, which takes a while after an API server restart.
	Eventually(t, 60*time.Second, "the default ServiceAccount in "+ns.Name, func() error {
		_, err := c.Client.CoreV1().ServiceAccounts(ns.Name).Get(context.Background(), "default", metav1.GetOptions{})
		return err
	})
	return ns.Name
}

// Eventually polls cond every 100 ms until it returns nil or timeout passes,
// then fails the test with cond's last error.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not done after %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
