package e2e

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sync/errgroup"

	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/shared/zincatiid"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/fleetsim"
)

// BenchmarkReleaseUnderLoad (P5, release under load) measures whether a
// holder's release and the hand-off to the next host keep up while the rest
// of the fleet keeps asking. One arbiter (the real binary, leader election
// on, long-poll with --max-wait 20s, the default --max-waiters and
// --max-connections), one group with 1 slot, BENCH_P5_HOSTS Nodes (default
// 2,000). One host takes the slot (an empty node: its drain is a cordon).
// Then every other host sends pre-reboot, first at a random moment within
// one BENCH_P5_PAUSE (default 2 s: Zincati asks every 300–330 s, so this
// is 150 times its rate; 200 ms makes a stress run, where the load
// generator, the API server and etcd saturate the 2 cores and every
// answer, a turn-away's too, waits for CPU), and
// asks again BENCH_P5_PAUSE ±10% after each non-2xx answer: hosts tick
// out of step, as a fleet's do. They ask over one shared http.Client
// whose transport allows
// BENCH_P5_CONNS connections (default: one per host). A host answered 200
// stops asking: it "reboots". The load runs until every host has had one
// answer (but the 10 in line), then BENCH_P5_ROUNDS times (default 30):
//
//  1. the holder reboots: its Node gets a new boot id and osImage, Ready
//     (fixtures.BootAgain for the plain Nodes, fixtures.Reboot for kwok
//     ones), after BENCH_P5_REBOOT (default 1 s) from its approval;
//  2. it sends steady-state, on a connection of its own (a rebooted host
//     dials anew), again every BENCH_P5_PAUSE until 2xx;
//  3. the next 200 among the waiters makes its host the next holder.
//
// Figures:
//   - release_{p50,p99,max}_ms: from the holder's first steady-state sent
//     to its 2xx answer, over the rounds (nearest rank: with fewer than 100
//     rounds p99 is the max);
//   - handoff_{p50,max}_ms: from that steady-state's 2xx answer to the next
//     200 pre-reboot answer that a waiter receives (the reboot fixture is
//     applied before the steady-state, so it is not in it);
//   - release_lag_max_ms: from the steady-state's answer to the moment a
//     watch on the lock object sees it no longer name the old holder (the
//     leader's finisher releases the slot once the node is back);
//   - grant_{p50,max}_ms: from that moment to the next 200;
//   - noop_{p50,p99}_ms: steady-states every 250 ms, on new connections,
//     from an extra Node that holds nothing, during the whole load;
//   - turnaway_{p50,p99}_ms: pre-reboots answered 423 at once because the
//     line (--max-waiters) is full;
//   - asks/s, and the counts of 503s, other errors and transport errors;
//   - rss_MiB, fds, goroutines: the arbiter's peaks, sampled every 250 ms
//     during the load (VmRSS, /proc/PID/fd, go_goroutines from /metrics),
//     with rss_hwm_MiB (VmHWM, the peak since start) and their values
//     before the load (*_idle).
//
// A round that does not finish within BENCH_P5_ROUND_LIMIT (default 3m:
// the steady-state's 2xx, then the next 200) ends the rounds, and no round
// starts after the load ran BENCH_P5_BUDGET (default 10m); rounds_done
// says how many handed the slot on, and the summary line why it stopped.
// The arbiter's log is checked for lost leader leases (leader_losses) and
// client-go's client-side throttling (throttle_max_s, the longest wait it
// logged). BENCH_P5_LOG, when set, is a path to copy the arbiter's log to;
// BENCH_P5_ARBITER, the path of an arbiter binary to run instead of one
// built from the working tree (to pin the version measured).
//
// The Nodes are plain objects, not run by kwok (as in P1 and P4), so the
// plane does not spend its CPU on 2,000 simulated kubelets; BENCH_P5_KWOK=1
// makes them kwok Nodes. Goals (issue): release p99 ≤ 100 ms, hand-off ≤
// 500 ms, RSS ≤ 150 MiB. The bench reports them; it asserts only that every
// round hands the slot on, to one host at a time.
func BenchmarkReleaseUnderLoad(b *testing.B) {
	cfg := p5Config{
		hosts:  p5Int("BENCH_P5_HOSTS", 2000),
		rounds: p5Int("BENCH_P5_ROUNDS", 30),
		pause:  p5Duration("BENCH_P5_PAUSE", 2*time.Second),
		reboot: p5Duration("BENCH_P5_REBOOT", time.Second),
		limit:  p5Duration("BENCH_P5_ROUND_LIMIT", 3*time.Minute),
		budget: p5Duration("BENCH_P5_BUDGET", 10*time.Minute),
		kwok:   os.Getenv("BENCH_P5_KWOK") == "1",
	}
	cfg.conns = p5Int("BENCH_P5_CONNS", cfg.hosts)
	if cfg.hosts < 2 {
		b.Fatalf("BENCH_P5_HOSTS=%d: want at least 2", cfg.hosts)
	}
	for b.Loop() {
		p5Run(b, cfg)
	}
}

type p5Config struct {
	hosts, rounds, conns int
	pause, reboot        time.Duration
	limit, budget        time.Duration
	kwok                 bool
}

func p5Run(b *testing.B, cfg p5Config) {
	ctx := context.Background()
	group := fleetlock.DefaultGroup
	ns := cluster.Namespace(b)
	setup := time.Now()
	hosts, probe := p5Nodes(b, ns, cfg.hosts, cfg.kwok)
	b.Logf("P5: %d Nodes (kwok %v) and the probe created in %s", len(hosts), cfg.kwok, time.Since(setup).Round(time.Millisecond))
	rebootNode := func(name string) error {
		if cfg.kwok {
			return fixtures.Reboot(ctx, cluster.Client, name, 0)
		}
		_, err := fixtures.BootAgain(ctx, cluster.Client, name, fixtures.OSImage(), true)
		return err
	}

	// The hosts are each their own source in a fleet, but all send from
	// 127.0.0.1 here: no per-source limit (the default --max-connections
	// still holds).
	args := []string{"--log-level", cmp.Or(os.Getenv("BENCH_P5_LOG_LEVEL"), "warn"), "--max-wait", "20s",
		"--max-connections-per-source", "1000"}
	var a *arbiter
	if path := os.Getenv("BENCH_P5_ARBITER"); path != "" {
		if !hasFlag(b, path, "max-connections-per-source") { // an earlier release
			args = args[:len(args)-2]
		}
		a = startArbiterBinary(b, path, ns, args...)
	} else {
		a = startArbiter(b, ns, args...)
	}
	watch, err := fleetsim.WatchLock(context.Background(), cluster.Client, ns, group)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(watch.Stop)
	mon := &p5Monitor{pid: a.pid, url: a.probe + "metrics", metrics: &http.Client{Timeout: 2 * time.Second,
		Transport: &http.Transport{MaxConnsPerHost: 1}}}

	// The first holder.
	approve := time.Now()
	for {
		err := a.preReboot(hosts[0].id, group)
		if err == nil {
			break
		}
		if time.Since(approve) > time.Minute {
			b.Fatalf("first holder not approved within a minute: %v", err)
		}
		time.Sleep(cfg.pause)
	}
	approvedAt := time.Now()
	idle := mon.sample()
	apiBefore := apiserverRequests(b)
	patchesBefore := p5NodePatches(b)

	// The load: every other host asks until approved.
	load, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	transport := &http.Transport{MaxConnsPerHost: cfg.conns, MaxIdleConnsPerHost: cfg.conns, IdleConnTimeout: 90 * time.Second}
	defer transport.CloseIdleConnections()
	client := &fleetlock.Client{BaseURL: a.url, HTTP: &http.Client{Transport: transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	var st p5Stats
	st.other, st.samples = map[string]int{}, map[string]string{}
	turnaway := make([][]time.Duration, len(hosts))
	grants := make(chan p5Grant, len(hosts))
	var answered atomic.Int64
	var workers sync.WaitGroup
	loadStart := time.Now()
	for i := 1; i < len(hosts); i++ {
		workers.Go(func() {
			p := fleetlock.ClientParams{ID: hosts[i].id, Group: group}
			// Hosts tick out of step, as a fleet's do (each Zincati's
			// timer starts at its own boot): a first ask somewhere in
			// the first pause, and each pause ±10%. In step, the whole
			// fleet would ask in one burst every pause.
			select {
			case <-time.After(rand.N(cfg.pause)):
			case <-load.Done():
				return
			}
			first := true
			for load.Err() == nil {
				rctx, cancel := context.WithTimeout(load, 2*time.Minute)
				t0 := time.Now()
				err := client.PreReboot(rctx, p)
				took := time.Since(t0)
				cancel()
				if load.Err() != nil {
					return
				}
				st.asks.Add(1)
				if first {
					first = false
					answered.Add(1)
				}
				if err == nil {
					grants <- p5Grant{host: i, at: time.Now()}
					return
				}
				if st.count(err) {
					turnaway[i] = append(turnaway[i], took)
				}
				select {
				case <-time.After(cfg.pause*9/10 + rand.N(cfg.pause/5+1)):
				case <-load.Done():
					return
				}
			}
		})
	}
	// The monitor and the probe run for the whole load.
	var bg sync.WaitGroup
	bg.Go(func() { mon.run(load) })
	var noop []time.Duration
	var noopErrs int
	bg.Go(func() { noop, noopErrs = p5Probe(load, a.url, probe.id, group) })

	// Warm-up: every waiter but the line (the default --max-waiters, 10)
	// has had an answer, so all are in the loop.
	for answered.Load() < int64(len(hosts)-1-10) {
		if time.Since(loadStart) > 3*time.Minute {
			b.Logf("P5: warm-up: only %d of %d waiters answered within 3 minutes", answered.Load(), len(hosts)-1)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	warmup := time.Since(loadStart)

	holder := 0
	var release, handoff, lag, grant []time.Duration
	steadyFails, unfinished := 0, ""
	for r := 0; r < cfg.rounds && unfinished == ""; r++ {
		if time.Since(loadStart) > cfg.budget {
			unfinished = fmt.Sprintf("round %d not started: the load ran %s (BENCH_P5_BUDGET)", r, cfg.budget)
			break
		}
		if d := cfg.reboot - time.Since(approvedAt); d > 0 {
			time.Sleep(d)
		}
		if err := rebootNode(hosts[holder].name); err != nil {
			b.Fatalf("round %d: reboot %s: %v", r, hosts[holder].name, err)
		}
		// A rebooted host dials anew: its own connection, not the pool's.
		// It asks again after a non-2xx answer, within the round's limit.
		own := &fleetlock.Client{BaseURL: a.url, HTTP: &http.Client{Transport: &http.Transport{DisableKeepAlives: true},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
		p := fleetlock.ClientParams{ID: hosts[holder].id, Group: group}
		sent := time.Now()
		for {
			rctx, cancel := context.WithDeadline(ctx, sent.Add(cfg.limit))
			err := own.SteadyState(rctx, p)
			cancel()
			if err == nil {
				break
			}
			steadyFails++
			b.Logf("round %d: steady-state of %s after %s: %v", r, hosts[holder].name, time.Since(sent).Round(time.Millisecond), err)
			if time.Since(sent) >= cfg.limit {
				unfinished = fmt.Sprintf("round %d: the holder's steady-state not answered 2xx within %s", r, cfg.limit)
				break
			}
			time.Sleep(cfg.pause)
		}
		replied := time.Now()
		release = append(release, replied.Sub(sent)) // at the limit when unanswered: a lower bound
		if unfinished != "" {
			break
		}
		var g p5Grant
		select {
		case g = <-grants:
		case <-time.After(cfg.limit):
			unfinished = fmt.Sprintf("round %d: no waiter approved within %s of the steady-state's answer", r, cfg.limit)
		}
		freed, ok := p5Freed(watch, hosts[holder].id, approvedAt, 10*time.Second)
		if ok {
			lag = append(lag, freed.Sub(replied))
		}
		if g.at.IsZero() {
			break
		}
		handoff = append(handoff, g.at.Sub(replied))
		if ok {
			grant = append(grant, g.at.Sub(freed))
		} else {
			b.Errorf("round %d: a waiter was approved but the lock watch never saw %s released", r, hosts[holder].name)
		}
		holder, approvedAt = g.host, g.at
	}
	if unfinished != "" {
		b.Logf("P5: UNFINISHED: %s", unfinished)
	}
	loadTime := time.Since(loadStart)
	apiAfter := apiserverRequests(b)
	patches := p5NodePatches(b) - patchesBefore
	// A second approval while the slot was held shows as a queued grant.
	time.Sleep(500 * time.Millisecond)
	extra := len(grants)
	stopLoad()
	workers.Wait()
	bg.Wait()
	peak := mon.peak()

	// Figures.
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	all := slices.Concat(turnaway...)
	b.ReportMetric(ms(p5Rank(release, 50)), "release_p50_ms")
	b.ReportMetric(ms(p5Rank(release, 99)), "release_p99_ms")
	b.ReportMetric(ms(p5Rank(release, 100)), "release_max_ms")
	b.ReportMetric(ms(p5Rank(handoff, 50)), "handoff_p50_ms")
	b.ReportMetric(ms(p5Rank(handoff, 100)), "handoff_max_ms")
	b.ReportMetric(ms(p5Rank(lag, 100)), "release_lag_max_ms")
	b.ReportMetric(ms(p5Rank(grant, 50)), "grant_p50_ms")
	b.ReportMetric(ms(p5Rank(grant, 100)), "grant_max_ms")
	b.ReportMetric(ms(p5Rank(noop, 50)), "noop_p50_ms")
	b.ReportMetric(ms(p5Rank(noop, 99)), "noop_p99_ms")
	b.ReportMetric(ms(p5Rank(all, 50)), "turnaway_p50_ms")
	b.ReportMetric(ms(p5Rank(all, 99)), "turnaway_p99_ms")
	b.ReportMetric(float64(st.asks.Load())/loadTime.Seconds(), "asks/s")
	b.ReportMetric(float64(st.unavailable.Load()), "503s")
	b.ReportMetric(float64(st.transport.Load()), "transport_errs")
	b.ReportMetric(peak.rss, "rss_MiB")
	b.ReportMetric(peak.hwm, "rss_hwm_MiB")
	b.ReportMetric(float64(peak.fds), "fds")
	b.ReportMetric(float64(peak.goroutines), "goroutines")
	b.ReportMetric(idle.rss, "rss_idle_MiB")
	b.ReportMetric(float64(idle.fds), "fds_idle")
	b.ReportMetric(float64(idle.goroutines), "goroutines_idle")
	b.ReportMetric((apiAfter-apiBefore)/loadTime.Seconds(), "apiserver_req/s")
	b.ReportMetric(patches, "node_patches")
	b.ReportMetric(float64(len(handoff)), "rounds_done")
	leaderLost := a.logged(b, "Failed to renew lease")
	b.ReportMetric(float64(leaderLost), "leader_losses")
	throttle := p5MaxThrottle(a.log)
	b.ReportMetric(throttle.Seconds(), "throttle_max_s")
	b.ReportMetric(float64(watch.MaxHolders()), "max_holders")

	turned, _ := metric(b, a, "rebootmanager_waiters_turned_away_total", map[string]string{"group": group})
	// The compare-and-swap cost of the line: writes, and those that lost
	// their race (retried; 8 lost in a row would be a 503).
	writes, _ := metric(b, a, "rebootmanager_lock_writes_total", nil)
	conflicts, _ := metric(b, a, "rebootmanager_lock_conflicts_total", nil)
	contention, _ := metric(b, a, "rebootmanager_lock_contention_total", nil)
	b.ReportMetric(writes, "lock_writes")
	b.ReportMetric(conflicts, "lock_conflicts")
	b.ReportMetric(contention, "lock_contention")
	if writes+conflicts > 0 {
		b.ReportMetric(conflicts/(writes+conflicts), "lock_conflict_rate")
	}
	// Client-side throttling, per client (package apiclient): the time
	// its requests waited in all, and how many waited over 10 ms.
	limits := ""
	for _, job := range []string{"decisions", "workers", "events"} {
		sum, slow := p5LimiterWait(b, a, job)
		b.ReportMetric(sum, "limiter_wait_s_"+job)
		b.ReportMetric(slow, "limiter_slow_"+job)
		limits += fmt.Sprintf("; %s client waited %.2f s for its limiter (%.0f requests over 10 ms)", job, sum, slow)
	}
	warns, errs := a.logged(b, "level=WARN"), a.logged(b, "level=ERROR")
	note := ""
	if unfinished != "" {
		note = "; UNFINISHED: " + unfinished
	}
	st.mu.Lock()
	other, samples := maps.Clone(st.other), maps.Clone(st.samples)
	st.mu.Unlock()
	b.Logf("P5 release under load: %d hosts, %d rounds, %d client conns, pause %s: release p50 %s p99 %s max %s (all %v); "+
		"hand-off p50 %s max %s (all %v); release lag max %s; grant p50 %s max %s; noop steady-state p50 %s p99 %s (%d samples, %d errors); "+
		"turn-away p50 %s p99 %s; %d asks (%.0f/s): %d line full, %d waited out, %d 503, %d other %v, %d transport errors; "+
		"steady-state retries %d; arbiter peak RSS %.1f MiB (HWM %.1f, idle %.1f), fds %d (idle %d), goroutines %d (idle %d, %d metrics reads failed); "+
		"turned away (server) %.0f; API server %.0f req/s, %.0f Node PATCHes; warm-up %s; max holders %d; extra grants %d; arbiter log: %d WARN, %d ERROR, %d leader losses, client-side throttling up to %s%s; %d rounds done%s",
		len(hosts), len(release), cfg.conns, cfg.pause,
		p5Rank(release, 50), p5Rank(release, 99), p5Rank(release, 100), p5Round(release),
		p5Rank(handoff, 50), p5Rank(handoff, 100), p5Round(handoff), p5Rank(lag, 100), p5Rank(grant, 50), p5Rank(grant, 100),
		p5Rank(noop, 50), p5Rank(noop, 99), len(noop), noopErrs,
		p5Rank(all, 50), p5Rank(all, 99), st.asks.Load(), float64(st.asks.Load())/loadTime.Seconds(),
		st.lineFull.Load(), st.waitedOut.Load(), st.unavailable.Load(), st.others.Load(), other, st.transport.Load(),
		steadyFails, peak.rss, peak.hwm, idle.rss, peak.fds, idle.fds, peak.goroutines, idle.goroutines, peak.metricsFailed,
		turned, (apiAfter-apiBefore)/loadTime.Seconds(), patches, warmup.Round(time.Millisecond), watch.MaxHolders(), extra, warns, errs,
		leaderLost, throttle, limits, len(handoff), note)
	for _, k := range slices.Sorted(maps.Keys(samples)) {
		b.Logf("a %s reply: %.300s", k, samples[k])
	}
	if dst := os.Getenv("BENCH_P5_LOG"); dst != "" {
		if raw, err := os.ReadFile(a.log); err == nil {
			_ = os.WriteFile(dst, raw, 0o644)
		}
	}
	if lines := p5LogLines(a.log, 8); len(lines) > 0 {
		b.Logf("arbiter warnings and errors (first %d distinct):\n%s", len(lines), strings.Join(lines, "\n"))
	}
	if watch.MaxHolders() > 1 || extra > 0 {
		b.Errorf("the slot was held by %d hosts at once (%d extra grants)", watch.MaxHolders(), extra)
	}
}

// p5NodePatches sums the API server's apiserver_request_total for PATCH
// of nodes (the plane's whole traffic: an upper bound of the arbiter's).
func p5NodePatches(b *testing.B) float64 {
	b.Helper()
	raw, err := cluster.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	total := 0.0
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(line, "apiserver_request_total{") || !strings.Contains(line, `resource="nodes"`) ||
			!strings.Contains(line, `verb="PATCH"`) {
			continue
		}
		if v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64); err == nil {
			total += v
		}
	}
	return total
}

// p5Host is one simulated host.
type p5Host struct{ name, id string }

// p5Grant is a waiter's 200.
type p5Grant struct {
	host int
	at   time.Time
}

// p5Nodes creates n Nodes (plain objects, or kwok Nodes), and one more for
// the probe, and deletes them afterwards.
func p5Nodes(b *testing.B, ns string, n int, kwok bool) ([]p5Host, p5Host) {
	b.Helper()
	if !kwok {
		ids := createPlainNodes(b, ns, n+1, nil)
		hosts := make([]p5Host, n+1)
		for i, id := range ids {
			hosts[i] = p5Host{name: fmt.Sprintf("%s-%05d", ns, i), id: id}
		}
		return hosts[:n], hosts[n]
	}
	ctx := context.Background()
	hosts := make([]p5Host, n+1)
	b.Cleanup(func() {
		g := new(errgroup.Group)
		g.SetLimit(32)
		for _, h := range hosts {
			if h.name != "" {
				g.Go(func() error { fixtures.DeleteNodes(context.Background(), cluster.Client, h.name); return nil })
			}
		}
		_ = g.Wait()
	})
	g := new(errgroup.Group)
	g.SetLimit(32)
	for i := range hosts {
		s := fixtures.NodeSpec{Name: fmt.Sprintf("%s-%05d", ns, i), Labels: map[string]string{"pool": ns}, MachineID: fixtures.RandomID()}
		id, err := zincatiid.FromMachineID(s.MachineID)
		if err != nil {
			b.Fatal(err)
		}
		hosts[i] = p5Host{name: s.Name, id: id}
		g.Go(func() error {
			_, err := fixtures.CreateNode(ctx, cluster.Client, s)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatalf("create kwok nodes: %v", err)
	}
	return hosts[:n], hosts[n]
}

// p5Stats counts the waiters' answers.
type p5Stats struct {
	asks, lineFull, waitedOut, unavailable, others, transport atomic.Int64

	mu      sync.Mutex
	other   map[string]int
	samples map[string]string // a reply of each category
}

// count records a non-2xx answer and reports whether it was a turn-away
// at once (423, the line full).
func (s *p5Stats) count(err error) bool {
	var se *fleetlock.StatusError
	defer func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		k := string(fleetlock.KindOf(err))
		if strings.Contains(err.Error(), "wait ahead of this one") {
			k += " (line full)"
		}
		if _, ok := s.samples[k]; !ok {
			s.samples[k] = err.Error()
		}
	}()
	switch {
	case !errors.As(err, &se):
		s.transport.Add(1)
	case fleetlock.IsKind(err, fleetlock.KindLockHeld) && strings.Contains(err.Error(), "wait ahead of this one"):
		s.lineFull.Add(1)
		return true
	case fleetlock.IsKind(err, fleetlock.KindLockHeld):
		s.waitedOut.Add(1)
	case fleetlock.IsKind(err, fleetlock.KindUnavailable):
		s.unavailable.Add(1)
	default:
		s.others.Add(1)
		s.mu.Lock()
		s.other[fmt.Sprintf("%d %s", se.Status, fleetlock.KindOf(err))]++
		s.mu.Unlock()
	}
	return false
}

// p5Probe sends a steady-state every 250 ms from a host that holds nothing,
// each on a new connection with a 30 s timeout, until ctx ends, and returns
// the latencies of those answered 2xx and the count of the others.
func p5Probe(ctx context.Context, url, id, group string) ([]time.Duration, int) {
	c := &fleetlock.Client{BaseURL: url, HTTP: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}}
	var lat []time.Duration
	errs := 0
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return lat, errs
		case <-t.C:
		}
		start := time.Now()
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := c.SteadyState(rctx, fleetlock.ClientParams{ID: id, Group: group})
		cancel()
		if ctx.Err() != nil {
			return lat, errs
		}
		if err != nil {
			errs++
			continue
		}
		lat = append(lat, time.Since(start))
	}
}

// p5Monitor samples the arbiter's resident memory, open files and
// goroutines.
type p5Monitor struct {
	pid     int
	url     string
	metrics *http.Client

	mu  sync.Mutex
	max p5Sample
}

type p5Sample struct {
	rss, hwm        float64 // MiB
	fds, goroutines int
	metricsFailed   int
}

func (m *p5Monitor) sample() p5Sample {
	var s p5Sample
	if st, err := procStatusMiB(m.pid); err == nil {
		s.rss, s.hwm = st["VmRSS"], st["VmHWM"]
	}
	if fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", m.pid)); err == nil {
		s.fds = len(fds)
	}
	s.goroutines = -1
	if resp, err := m.metrics.Get(m.url); err == nil {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
				if f, err := strconv.ParseFloat(v, 64); err == nil {
					s.goroutines = int(f)
				}
			}
		}
		resp.Body.Close()
	}
	if s.goroutines < 0 {
		s.metricsFailed = 1
	}
	return s
}

func (m *p5Monitor) run(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		s := m.sample()
		m.mu.Lock()
		m.max.rss, m.max.hwm = max(m.max.rss, s.rss), max(m.max.hwm, s.hwm)
		m.max.fds, m.max.goroutines = max(m.max.fds, s.fds), max(m.max.goroutines, s.goroutines)
		m.max.metricsFailed += s.metricsFailed
		m.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *p5Monitor) peak() p5Sample {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.max
}

// p5Freed waits up to within for the watch to see id freed after t.
func p5Freed(w *fleetsim.LockWatch, id string, t time.Time, within time.Duration) (time.Time, bool) {
	deadline := time.Now().Add(within)
	for {
		if f, ok := w.FreedAfter(id, t); ok {
			return f, true
		}
		if time.Now().After(deadline) {
			return time.Time{}, false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// p5Rank is the nearest-rank percentile p (100: the max) of ds, 0 if empty.
func p5Rank(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(ds))
	i := (p*len(s) + 99) / 100
	return s[min(max(i-1, 0), len(s)-1)]
}

func p5Round(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}

// p5MaxThrottle is the longest client-side throttling wait that client-go
// logged in the arbiter's log ("Waited before sending request").
func p5MaxThrottle(path string) time.Duration {
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	var most time.Duration
	for _, line := range strings.Split(string(raw), "\n") {
		_, rest, ok := strings.Cut(line, `"Waited before sending request" delay="`)
		if !ok {
			continue
		}
		v, _, _ := strings.Cut(rest, `"`)
		if d, err := time.ParseDuration(v); err == nil {
			most = max(most, d)
		}
	}
	return most
}

// p5LogLines returns up to n distinct WARN or ERROR messages of the log.
func p5LogLines(path string, n int) []string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.Contains(line, "level=WARN") && !strings.Contains(line, "level=ERROR") {
			continue
		}
		msg := line
		if i := strings.Index(line, "msg="); i >= 0 {
			msg = line[i:]
			if j := strings.Index(msg, "\" "); j > 0 {
				msg = msg[:j+1]
			}
		}
		if seen[msg] {
			continue
		}
		seen[msg] = true
		out = append(out, line)
		if len(out) == n {
			break
		}
	}
	return out
}

func p5Int(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func p5Duration(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(name)); err == nil && v >= 0 {
		return v
	}
	return def
}

// p5LimiterWait reads the arbiter's rebootmanager_api_rate_limiter_wait_seconds
// for client job: the seconds waited in all, and the waits over 10 ms.
func p5LimiterWait(b *testing.B, a *arbiter, job string) (sum, slow float64) {
	b.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(getBody(b, a.probe+"metrics")))
	if err != nil {
		b.Fatalf("parse /metrics: %v", err)
	}
	for _, m := range families["rebootmanager_api_rate_limiter_wait_seconds"].GetMetric() {
		if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool { return l.GetName() == "client" && l.GetValue() == job }) {
			continue
		}
		h := m.GetHistogram()
		fast := uint64(0)
		for _, bk := range h.GetBucket() {
			if bk.GetUpperBound() <= 0.01 {
				fast = bk.GetCumulativeCount()
			}
		}
		return h.GetSampleSum(), float64(h.GetSampleCount() - fast)
	}
	return 0, 0
}
