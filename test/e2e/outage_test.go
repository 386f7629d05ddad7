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
					_ = send("steady-state", p)
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
	time.Sleep(2 * time.Second)

	// The API server goes away.
	raw, err := os.ReadFile(filepath.Join(cluster.Root, ".cluster", "pids", "kube-apiserver.pid"))
	must(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	must(t, err)
	must(t, syscall.Kill(pid, syscall.SIGKILL))
	// The outage starts when the process is gone and its port refuses.
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
	if recovered.IsZero() || recovered.Sub(back) > 15*time.Second {
		t.Errorf("no approval within 15s of the API server's return (recovered %v)", recovered)
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
