package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/credential"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// outcome is one request's result during the outage test.
type outcome struct {
	start, end time.Time
	op         string
	err        error
}

// TestAPIServerOutage (R3): kube-apiserver is killed while six nodes send
// pre-reboots and steady-states, kept down for a few seconds, and started
// again. While it is gone no pre-reboot is approved (each is a 503
// unavailable) and /readyz fails; after it returns the arbiter serves again
// within seconds, without a restart, and no slot leaks.
func TestAPIServerOutage(t *testing.T) {
	ns := cluster.Namespace(t)
	setGroups(t, ns, "defaults: {slots: 2}")
	ids := createPlainNodes(t, ns, 6, nil)
	a := startArbiter(t, ns)
	client := &fleetlock.Client{BaseURL: a.url, HTTP: &http.Client{Timeout: 20 * time.Second}}

	var (
		mu       sync.Mutex
		outcomes []outcome
		stop     = make(chan struct{})
		wg       sync.WaitGroup
	)
	send := func(op string, p fleetlock.ClientParams) error {
		o := outcome{start: time.Now(), op: op}
		if op == "pre-reboot" {
			o.err = client.PreReboot(context.Background(), p)
		} else {
			o.err = client.SteadyState(context.Background(), p)
		}
		o.end = time.Now()
		mu.Lock()
		outcomes = append(outcomes, o)
		mu.Unlock()
		return o.err
	}
	for i, id := range ids {
		name := fmt.Sprintf("%s-%05d", ns, i) // as createPlainNodes names them
		wg.Go(func() {
			p := fleetlock.ClientParams{ID: id, Group: "default"}
			for {
				select {
				case <-stop:
					// Leave nothing held: report steady-state until it lands.
					for send("steady-state", p) != nil {
						time.Sleep(200 * time.Millisecond)
					}
					return
				default:
				}
				if send("pre-reboot", p) == nil {
					// The reboot: kubelet reports a new boot, once the API
					// server takes it.
					for {
						if _, err := fixtures.BootAgain(context.Background(), cluster.Client, name, fixtures.OSImage(), true); err == nil {
							break
						}
						time.Sleep(200 * time.Millisecond)
					}
					// Zincati sends its steady-state until it lands (every 5
					// minutes; here at once): one answered 503, while the
					// arbiter was not ready yet, would hold the slot for ever.
					for send("steady-state", p) != nil {
						time.Sleep(200 * time.Millisecond)
					}
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
	time.Sleep(2 * time.Second)

	// The API server goes away.
	killAPIServer(t)
	killed := time.Now()
	restartControllersAfter(t)
	t.Cleanup(func() {
		_ = exec.Command(filepath.Join(cluster.Root, "test/cluster/cluster.sh"), "start-apiserver").Run()
	})
	notReady := false
	for time.Since(killed) < 4*time.Second {
		if err := getOK(a.probe + "readyz"); err != nil {
			notReady = true
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The outage ends when kube-apiserver starts again; an approval from
	// then on is legitimate, so the outage window closes before the start.
	restarting := time.Now()
	if out, err := exec.Command(filepath.Join(cluster.Root, "test/cluster/cluster.sh"), "start-apiserver").CombinedOutput(); err != nil {
		t.Fatalf("start kube-apiserver again: %v\n%s", err, out)
	}
	back := time.Now()

	// Recovery: a pre-reboot is approved again, with no arbiter restart.
	var recovered time.Time
	for time.Since(back) < 30*time.Second {
		mu.Lock()
		for _, o := range outcomes {
			if o.op == "pre-reboot" && o.err == nil && o.start.After(back) && recovered.IsZero() {
				recovered = o.end
			}
		}
		mu.Unlock()
		if !recovered.IsZero() && getOK(a.probe+"readyz") == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	close(stop)
	wg.Wait()

	var during, refused int
	for _, o := range outcomes {
		if o.op != "pre-reboot" || o.start.Before(killed) || o.end.After(restarting) {
			continue
		}
		during++
		if o.err == nil {
			t.Errorf("pre-reboot approved while the API server was down (%s–%s)", o.start.Format(time.StampMilli), o.end.Format(time.StampMilli))
		} else if fleetlock.IsKind(o.err, fleetlock.KindUnavailable) {
			refused++
		}
	}
	t.Logf("R3: API server down %s; %d pre-reboots during the outage, %d answered 503 unavailable, none approved; "+
		"serving again %s after it was back", restarting.Sub(killed).Round(time.Millisecond), during, refused,
		recovered.Sub(back).Round(time.Millisecond))
	if !notReady {
		t.Error("/readyz never failed while the API server was down")
	}
	if during == 0 || refused != during {
		t.Errorf("%d of %d pre-reboots during the outage were 503 unavailable, want all (and some)", refused, during)
	}
	if recovered.IsZero() || recovered.Sub(back) > 5*time.Second {
		t.Errorf("no approval within 5 s of the API server's return (recovered %v, back %v)", recovered, back)
	}
	harness.Eventually(t, 20*time.Second, "every slot released", func() error {
		if h := holders(t, ns, "default"); len(h) != 0 {
			return fmt.Errorf("slots still held after every node rebooted and reported steady-state: %+v", h)
		}
		return nil
	})
}

// restartControllersAfter restarts the plane's controller manager,
// scheduler and kwok when the test ends (after its own cleanups registered
// later, such as the API server's start): backed off by an outage, their
// informers once took over a minute to make the next test's default
// ServiceAccount, or its node Ready.
func restartControllersAfter(t *testing.T) {
	t.Cleanup(func() {
		if out, err := exec.Command(filepath.Join(cluster.Root, "test/cluster/cluster.sh"), "restart-controllers").CombinedOutput(); err != nil {
			t.Errorf("restart the controllers: %v\n%s", err, out)
		}
	})
}

// TestRepeatedOutages: kube-apiserver is killed and started again five
// times in a row, as in a control-plane upgrade, twice for longer than the
// leader's renew deadline. Two seconds before each kill a new Node appears
// with its host credential, and another Node's credential changes. After
// each return both are approved within 5 s of the API server's /readyz:
// from a cache that had not caught up, the first would be refused as
// unknown and the second as a wrong credential. Every node carries a
// credential, as the agent makes them, and no request is approved while
// the API server is away.
func TestRepeatedOutages(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	setGroups(t, ns, "defaults: {slots: 20}")
	a := startArbiter(t, ns)
	script := filepath.Join(cluster.Root, "test/cluster/cluster.sh")
	restartControllersAfter(t)
	t.Cleanup(func() { _ = exec.Command(script, "start-apiserver").Run() })
	t.Cleanup(func() {
		_ = cluster.Client.CoreV1().Nodes().DeleteCollection(context.Background(), metav1.DeleteOptions{},
			metav1.ListOptions{LabelSelector: "outage=" + ns})
	})
	type host struct {
		name, id, secret string
	}
	create := func(name string) host {
		t.Helper()
		h := host{name: name, id: fixtures.RandomID()}
		var err error
		h.secret, err = credential.New()
		must(t, err)
		_, err = cluster.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name: name, Labels: map[string]string{"outage": ns},
			Annotations: map[string]string{annotations.ZincatiID: h.id, annotations.CredentialSHA256: credential.Hash(h.secret)},
		}}, metav1.CreateOptions{})
		must(t, err)
		return h
	}
	const rounds = 5
	rotating := make([]host, rounds)
	for i := range rotating {
		rotating[i] = create(fmt.Sprintf("%s-rot-%d", ns, i))
	}
	// approved asks as h until approved, and returns the approval's time.
	// Until then every answer must be a 503: a refusal that rests on a
	// cache still catching up (unknown_node, a wrong credential) says so.
	approved := func(h host, within time.Duration) (time.Time, error) {
		base, err := credential.InURL(a.url, h.name, h.secret)
		must(t, err)
		c := &fleetlock.Client{BaseURL: base, HTTP: &http.Client{Timeout: 5 * time.Second}}
		end := time.Now().Add(within)
		for {
			err := c.PreReboot(ctx, fleetlock.ClientParams{ID: h.id, Group: "default"})
			if err == nil {
				return time.Now(), nil
			}
			if !fleetlock.IsKind(err, fleetlock.KindUnavailable) {
				t.Errorf("%s: answered %v, want 503 unavailable until approved", h.name, err)
			}
			if time.Now().After(end) {
				return time.Time{}, err
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	var recoveries []string
	for round := range rounds {
		down := 4 * time.Second
		if round%2 == 1 {
			down = 12 * time.Second // longer than the leader's 10 s renew deadline
		}
		fresh := create(fmt.Sprintf("%s-new-%d", ns, round))
		rotated := rotating[round]
		secret, err := credential.New()
		must(t, err)
		patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, annotations.CredentialSHA256, credential.Hash(secret))
		_, err = cluster.Client.CoreV1().Nodes().Patch(ctx, rotated.name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
		must(t, err)
		rotated.secret = secret
		time.Sleep(2 * time.Second)

		killAPIServer(t)
		killed := time.Now()
		deadline := killed.Add(down)
		for time.Now().Before(deadline) {
			if _, err := approved(fresh, 0); err == nil {
				t.Fatalf("round %d: %s approved while the API server was down", round+1, fresh.name)
			}
			time.Sleep(500 * time.Millisecond)
		}
		if out, err := exec.Command(script, "start-apiserver").CombinedOutput(); err != nil {
			t.Fatalf("start kube-apiserver again: %v\n%s", err, out)
		}
		back := time.Now()
		var wg sync.WaitGroup
		took := make([]time.Duration, 2)
		for i, h := range []host{fresh, rotated} {
			wg.Go(func() {
				at, err := approved(h, 15*time.Second)
				if err != nil {
					t.Errorf("round %d: %s not approved within 15 s of the API server's return: %v", round+1, h.name, err)
					return
				}
				took[i] = at.Sub(back)
			})
		}
		wg.Wait()
		recoveries = append(recoveries, fmt.Sprintf("round %d (down %s): new node %s, new credential %s", round+1, down,
			took[0].Round(time.Millisecond), took[1].Round(time.Millisecond)))
		for i, d := range took {
			if d > 5*time.Second {
				t.Errorf("round %d: %s approved %s after the API server's return, want within 5 s", round+1, []string{"the new node", "the node with a new credential"}[i], d)
			}
		}
	}
	t.Logf("approvals after each return:\n  %s", strings.Join(recoveries, "\n  "))
}

// killAPIServer kills kube-apiserver and returns once its port refuses.
func killAPIServer(t *testing.T) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(cluster.Root, ".cluster", "pids", "kube-apiserver.pid"))
	must(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	must(t, err)
	must(t, syscall.Kill(pid, syscall.SIGKILL))
	api, err := url.Parse(cluster.Config.Host)
	must(t, err)
	harness.Eventually(t, 10*time.Second, "kube-apiserver gone", func() error {
		if syscall.Kill(pid, 0) == nil {
			return fmt.Errorf("process %d still exists", pid)
		}
		if c, err := net.DialTimeout("tcp", api.Host, time.Second); err == nil {
			c.Close()
			return fmt.Errorf("%s still accepts connections", api.Host)
		}
		return nil
	})
}
