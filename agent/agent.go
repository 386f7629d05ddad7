// Package agent configures Zincati on its host: it derives the FleetLock
// drop-in from the arbiter's Service and the Node's group label, gives the
// host a credential, writes the drop-in when it changes, restarts Zincati
// only when the node is not in a reboot cycle, and publishes the host's
// Zincati id and its credential's hash on its Node. On a host that is not
// Fedora CoreOS, or has no Zincati, it does nothing at all.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/rebootmanager/reboot-manager/agent/dropin"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/credential"
	"github.com/rebootmanager/reboot-manager/shared/zincatiid"
	"github.com/rebootmanager/reboot-manager/systemd"
)

// Host is the host's systemd: it restarts a unit and waits for the result,
// says how boot-complete.target stands in this boot ("reached",
// "pending", "failed", or "" for a host without it), and reads a unit's
// state. An error wrapping systemd.ErrNoBus says the bus is not there
// (yet): the agent keeps the drop-in and the Node up to date meanwhile.
type Host interface {
	Restart(ctx context.Context, unit string) error
	BootComplete(ctx context.Context) (string, error)
	Unit(ctx context.Context, unit string) (systemd.UnitState, error)
}

// Config configures the agent.
type Config struct {
	// NodeName is this host's Node.
	NodeName string
	// HostRoot is where the host's / is mounted ("/host" in the DaemonSet).
	HostRoot string
	// ConfigDir is Zincati's drop-in directory under HostRoot.
	ConfigDir string
	// FileName is the drop-in's name; it must sort after 30-.
	FileName string
	// Unit is Zincati's unit.
	Unit string
	// BaseURL, when set, overrides the URL derived from the Service.
	BaseURL string
	// ServiceNamespace and ServiceName locate the arbiter's Service.
	ServiceNamespace, ServiceName string
	// External uses the Service's LoadBalancer or external IP instead of
	// its ClusterIP.
	External bool
	// BootIDPath is where the kernel gives this boot's id (not under
	// HostRoot: /proc/sys is the host's in every container).
	BootIDPath string
	// Force manages a host that CheckHost would leave alone (not Fedora
	// CoreOS, or Zincati not at /usr/libexec/zincati).
	Force bool
}

// Agent reconciles one host.
type Agent struct {
	cfg       Config
	client    kubernetes.Interface
	restarter Host
	log       *slog.Logger
	queue     workqueue.TypedRateLimitingInterface[string]
	nodes     corelisters.NodeLister
	services  corelisters.ServiceLister
	// restartPending is set when the drop-in changed but Zincati could not
	// be restarted yet (a slot is held, or the restart failed).
	restartPending bool
	// startChecked is set once the agent has compared, after its start,
	// the drop-in's age with Zincati's last start: a restart that an
	// earlier agent could not make is still owed.
	startChecked bool
	// noted is the last state logged per topic (logged once per change).
	noted map[string]string
	// busDown is set during a pass that found no system bus.
	busDown bool
	// unwritten is a credential whose hash the agent published but that
	// no drop-in carries yet (writing it failed): the next pass writes it
	// instead of making, and publishing, another. Without it, a drop-in
	// that cannot be written made a new credential on every pass, and each
	// Node patch woke the next pass at once.
	unwritten hostCredential
}

// New returns an Agent.
func New(cfg Config, client kubernetes.Interface, r Host, log *slog.Logger) *Agent {
	if cfg.BootIDPath == "" {
		cfg.BootIDPath = "/proc/sys/kernel/random/boot_id"
	}
	limiter := workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Second, 5*time.Minute)
	return &Agent{
		cfg: cfg, client: client, restarter: r,
		log:   log.With("node", cfg.NodeName),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(limiter, workqueue.TypedRateLimitingQueueConfig[string]{Name: "agent"}),
		noted: map[string]string{},
	}
}

// note logs msg at level when topic's state is not the one last noted,
// and reports whether it did: each state change is logged once, however
// often a retry meets it.
func (a *Agent) note(topic, state string, level slog.Level, msg string, args ...any) bool {
	if a.noted[topic] == state {
		return false
	}
	a.noted[topic] = state
	a.log.Log(context.Background(), level, msg, args...)
	return true
}

const key = "host"

// Run checks the host (CheckHost, then Zincati's unit if the bus
// answers), then watches the Node and the Service and reconciles until ctx
// ends. On a host it must leave alone it logs why once, records a Node
// Event, and waits for ctx without touching the host.
func (a *Agent) Run(ctx context.Context) error {
	if reason, msg := CheckHost(a.cfg.HostRoot, a.cfg.Force); reason != "" {
		return a.idle(ctx, reason, msg)
	}
	switch s, err := a.restarter.Unit(ctx, a.cfg.Unit); {
	case err == nil && !s.Exists():
		return a.idle(ctx, ReasonZincatiAbsent, fmt.Sprintf("the host's systemd knows no %s (LoadState %s): Zincati is not installed; leaving the host alone", a.cfg.Unit, s.Load))
	case errors.Is(err, systemd.ErrNoBus):
		// Sync says so, and retries.
	case err != nil:
		a.log.Warn("cannot read Zincati's unit; carrying on", "unit", a.cfg.Unit, "err", err)
	}
	nodeFactory := informers.NewSharedInformerFactoryWithOptions(a.client, 10*time.Minute,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + a.cfg.NodeName }))
	svcFactory := informers.NewSharedInformerFactoryWithOptions(a.client, 10*time.Minute, informers.WithNamespace(a.cfg.ServiceNamespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + a.cfg.ServiceName }))
	nodeInformer := nodeFactory.Core().V1().Nodes()
	svcInformer := svcFactory.Core().V1().Services()
	a.nodes, a.services = nodeInformer.Lister(), svcInformer.Lister()
	enqueue := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { a.queue.Add(key) },
		UpdateFunc: func(any, any) { a.queue.Add(key) },
		DeleteFunc: func(any) { a.queue.Add(key) },
	}
	if _, err := nodeInformer.Informer().AddEventHandler(enqueue); err != nil {
		return fmt.Errorf("watch node %s: %w", a.cfg.NodeName, err)
	}
	if a.cfg.BaseURL == "" {
		if _, err := svcInformer.Informer().AddEventHandler(enqueue); err != nil {
			return fmt.Errorf("watch service: %w", err)
		}
	}
	nodeFactory.Start(ctx.Done())
	svcFactory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), nodeInformer.Informer().HasSynced, svcInformer.Informer().HasSynced) {
		return ctx.Err()
	}
	go func() {
		<-ctx.Done()
		a.queue.ShutDown()
	}()
	a.queue.Add(key)
	for {
		k, quit := a.queue.Get()
		if quit {
			return nil
		}
		err := a.Sync(ctx)
		var alone *leaveAlone
		switch {
		case errors.As(err, &alone):
			a.queue.Done(k)
			a.queue.ShutDown()
			return a.idle(ctx, alone.reason, alone.message)
		case errors.Is(err, systemd.ErrNoBus):
			a.note("reconcile", "no bus", slog.LevelWarn, "systemd is not reachable on the system bus: the drop-in and the Node are kept up to date, and Zincati's restart waits for the bus; retrying with backoff from 1 s to 5 min", "err", err)
			a.queue.AddRateLimited(k)
		case err != nil:
			a.note("reconcile", err.Error(), slog.LevelError, "reconcile failed; retrying with backoff from 1 s to 5 min", "err", err)
			a.queue.AddRateLimited(k)
		default:
			if a.noted["reconcile"] != "" {
				a.note("reconcile", "", slog.LevelInfo, "reconciled again")
			}
			a.queue.Forget(k)
		}
		a.queue.Done(k)
	}
}

// Sync makes one reconcile pass: publish the id, make sure the host has a
// credential whose hash the Node carries, write the drop-in, and restart
// Zincati if the drop-in changed (or a previous credential is still
// accepted) and the node is not in a reboot cycle.
func (a *Agent) Sync(ctx context.Context) error {
	a.busDown = false
	if err := a.sync(ctx); err != nil {
		return err
	}
	if a.busDown {
		return fmt.Errorf("reconcile without systemd: %w", systemd.ErrNoBus)
	}
	return nil
}

func (a *Agent) sync(ctx context.Context) error {
	node, err := a.nodes.Get(a.cfg.NodeName)
	if err != nil {
		return fmt.Errorf("get node %s: %w", a.cfg.NodeName, err)
	}
	if err := a.publishID(ctx, node); err != nil {
		return err
	}
	a.witness(ctx, node)
	baseURL, err := a.baseURL()
	if err != nil {
		return err
	}
	group := node.Labels[annotations.GroupLabel]
	dir := filepath.Join(a.cfg.HostRoot, a.cfg.ConfigDir)
	log := a.log.With("base_url", credential.Redact(baseURL), "group", group)
	cred, err := a.credential(ctx, log, node, dir)
	if err != nil {
		return err
	}
	acc := dropin.Public
	if cred.secret != "" {
		acc = a.access(log)
	}
	content, err := dropin.Render(dropin.Settings{BaseURL: baseURL, Group: group, User: node.Name, Secret: cred.secret})
	if err != nil {
		return err
	}
	if err := a.ensureDir(dir); err != nil {
		return err
	}
	changed, err := dropin.Write(dir, a.cfg.FileName, content, acc)
	if err != nil {
		return err
	}
	a.unwritten = hostCredential{}
	log = log.With("changed", changed)
	if changed {
		log.Info("wrote the Zincati drop-in", "path", filepath.Join(dir, a.cfg.FileName), "credential", cred.secret != "", "mode", acc.Mode.String())
		a.restartPending = true
		a.startChecked = true
	}
	if err := a.checkOwed(ctx, log, dir); err != nil {
		return err
	}
	if !a.restartPending && !cred.previous {
		return nil
	}
	if !cred.first {
		// A restart sends steady-state, which would release the slot
		// mid-cycle; the previous credentials stay accepted meanwhile. The
		// cycle is read fresh: the cache may not show one that just began.
		fresh, err := a.client.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("read node %s before restarting Zincati: %w", a.cfg.NodeName, err)
		}
		cred.previous = fresh.Annotations[annotations.CredentialPreviousSHA256] != ""
		if !a.restartPending && !cred.previous {
			return nil // retired already: the cache lags
		}
		if why, ok := inCycle(fresh); ok {
			a.note("cycle", why, slog.LevelInfo, "Zincati restart deferred: the node is in a reboot cycle", "cycle", why)
			return nil
		}
		delete(a.noted, "cycle")
	}
	// A first credential restarts Zincati at once, cycle or not: the Node
	// now publishes a hash, and a Zincati running without the credential
	// would be refused until it restarts.
	if runs, err := a.applyDropIn(ctx, log, dir); err != nil || !runs {
		return err
	}
	if cred.previous {
		// Zincati runs the drop-in's credential now: the old ones are no
		// longer accepted.
		if err := a.annotate(ctx, map[string]any{annotations.CredentialPreviousSHA256: nil}); err != nil {
			return fmt.Errorf("retire the previous credential: %w", err)
		}
		log.Info("retired the previous credential")
	}
	return nil
}

// ensureDir makes Zincati's drop-in directory when the host lacks it:
// only on a host CheckHost passed (Fedora CoreOS with Zincati installed,
// or --force), whose package may not ship /etc/zincati/config.d.
func (a *Agent) ensureDir(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create Zincati's drop-in directory: %w", err)
	}
	a.log.Info("created Zincati's drop-in directory", "path", dir)
	return nil
}

// checkOwed decides, once after the agent starts and the bus answers,
// whether a restart of Zincati is still owed: the drop-in is newer than
// Zincati's last start (its ActiveEnterTimestamp), so an earlier agent
// wrote it and was gone before it could restart Zincati. When systemd does
// not say when Zincati started, no restart is assumed owed: the agent
// does not restart Zincati on a guess.
func (a *Agent) checkOwed(ctx context.Context, log *slog.Logger, dir string) error {
	if a.startChecked || a.restartPending {
		return nil
	}
	s, err := a.restarter.Unit(ctx, a.cfg.Unit)
	switch {
	case errors.Is(err, systemd.ErrNoBus):
		a.busDown = true
		return nil
	case err != nil:
		return fmt.Errorf("read %s's state after the agent's start: %w", a.cfg.Unit, err)
	case !s.Exists():
		return a.absent(s)
	}
	a.startChecked = true
	fi, err := os.Stat(filepath.Join(dir, a.cfg.FileName))
	if err != nil {
		return fmt.Errorf("read the drop-in's age: %w", err)
	}
	if !s.ActiveEnterKnown {
		log.Warn("systemd does not say when Zincati last started: no restart is assumed owed", "unit", a.cfg.Unit)
		return nil
	}
	if fi.ModTime().After(s.ActiveEnter) {
		a.restartPending = true
		log.Info("the drop-in is newer than Zincati's last start: its restart is still owed",
			"unit", a.cfg.Unit, "written", fi.ModTime().UTC().Format(time.RFC3339Nano), "zincati_started", s.ActiveEnter.UTC().Format(time.RFC3339Nano))
	}
	return nil
}

// absent is the leaveAlone for a unit systemd does not know.
func (a *Agent) absent(s systemd.UnitState) error {
	return &leaveAlone{ReasonZincatiAbsent, fmt.Sprintf("the host's systemd knows no %s (LoadState %s): Zincati is not installed; leaving the host alone", a.cfg.Unit, s.Load)}
}

// applyDropIn restarts Zincati so that it runs the drop-in, and reports
// whether it now does (restartPending is then cleared). A Zincati that is
// stopped without having failed (an administrator's systemctl stop) is
// never started: the agent logs it once, records a Node Event, and looks
// again in a minute; Zincati reads the drop-in whenever it next starts. A
// failed one is restarted: that is no one's stop, and the new drop-in may
// be what it lacked. An active one that started after the drop-in was
// written runs it already, and is left alone.
func (a *Agent) applyDropIn(ctx context.Context, log *slog.Logger, dir string) (bool, error) {
	s, err := a.restarter.Unit(ctx, a.cfg.Unit)
	switch {
	case err != nil:
		return false, fmt.Errorf("read %s's state before restarting it: %w", a.cfg.Unit, err)
	case !s.Exists():
		return false, a.absent(s)
	case s.Stopped():
		msg := fmt.Sprintf("%s is stopped (ActiveState %s, SubState %s), not failed: the agent does not start it; it reads the drop-in when it next starts", a.cfg.Unit, s.Active, s.Sub)
		if a.note("zincati", "stopped", slog.LevelInfo, msg, "unit", a.cfg.Unit) {
			a.event(ctx, corev1.EventTypeNormal, ReasonZincatiStopped, msg)
		}
		a.queue.AddAfter(key, time.Minute)
		return false, nil
	}
	delete(a.noted, "zincati")
	fi, statErr := os.Stat(filepath.Join(dir, a.cfg.FileName))
	if s.Active == "active" && s.ActiveEnterKnown && !s.ActiveEnter.IsZero() && statErr == nil && !s.ActiveEnter.Before(fi.ModTime()) {
		log.Info("Zincati started after the drop-in was written: it runs it, no restart", "unit", a.cfg.Unit)
	} else {
		if err := a.restarter.Restart(ctx, a.cfg.Unit); err != nil {
			return false, fmt.Errorf("apply the new drop-in: %w", err)
		}
		log.Info("restarted Zincati", "unit", a.cfg.Unit)
	}
	a.restartPending = false
	return true, nil
}

// hostCredential is what credential decided.
type hostCredential struct {
	// secret is the one the drop-in is to carry; "" for none yet.
	secret string
	// previous is set when the Node accepts previous credentials too,
	// until Zincati restarts with secret.
	previous bool
	// first is set when secret is the host's first: Zincati runs none.
	first bool
}

// maxPrevious bounds the previous hashes kept during a rotation.
const maxPrevious = 3

// credential decides the secret the drop-in is to carry, and makes sure,
// before the drop-in carries it, that the Node's hashes cover both it and
// whatever Zincati may still run. It keeps the drop-in's secret while the
// Node publishes its hash. Otherwise (a first run, or the hash deleted to
// ask for a rotation) it makes a new one and publishes its hash, with the
// hashes Zincati may still run as the previous ones: the drop-in's secret
// (if Zincati restarted since it was written) and the previous ones already
// published (if it did not), until Zincati restarts. On a first run during
// a reboot cycle (read fresh) it gives none yet: Zincati, running without
// one, would be refused until its restart, which waits for the cycle's end.
func (a *Agent) credential(ctx context.Context, log *slog.Logger, node *corev1.Node, dir string) (hostCredential, error) {
	file, err := dropin.Secret(dir, a.cfg.FileName)
	if err != nil {
		return hostCredential{}, err
	}
	current := node.Annotations[annotations.CredentialSHA256]
	previous := node.Annotations[annotations.CredentialPreviousSHA256]
	if file != "" && credential.Hash(file) == current {
		return hostCredential{secret: file, previous: previous != ""}, nil
	}
	// A new secret is decided on a fresh read: the cache may not show the
	// hash this agent published a moment ago, or a cycle that just began.
	fresh, err := a.client.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return hostCredential{}, fmt.Errorf("read node %s before a new credential: %w", a.cfg.NodeName, err)
	}
	current = fresh.Annotations[annotations.CredentialSHA256]
	previous = fresh.Annotations[annotations.CredentialPreviousSHA256]
	if file != "" && credential.Hash(file) == current {
		return hostCredential{secret: file, previous: previous != ""}, nil
	}
	if u := a.unwritten; u.secret != "" && credential.Hash(u.secret) == current {
		return hostCredential{secret: u.secret, previous: previous != "", first: u.first}, nil
	}
	first := file == "" && current == "" && previous == ""
	if first {
		if why, ok := inCycle(fresh); ok {
			log.Info("credential deferred: the node is in a reboot cycle that Zincati began without one", "cycle", why)
			return hostCredential{}, nil
		}
	}
	secret, err := credential.New()
	if err != nil {
		return hostCredential{}, err
	}
	var accepted []string
	if file != "" {
		accepted = append(accepted, credential.Hash(file))
	}
	for _, h := range strings.Split(previous, ",") {
		if h != "" && !slices.Contains(accepted, h) && len(accepted) < maxPrevious {
			accepted = append(accepted, h)
		}
	}
	change := map[string]any{annotations.CredentialSHA256: credential.Hash(secret), annotations.CredentialPreviousSHA256: nil}
	if len(accepted) > 0 {
		change[annotations.CredentialPreviousSHA256] = strings.Join(accepted, ",")
	}
	if err := a.annotate(ctx, change); err != nil {
		return hostCredential{}, fmt.Errorf("publish the credential's hash: %w", err)
	}
	log.Info("published a new credential's hash", "rotation", !first, "previous_accepted", len(accepted))
	a.unwritten = hostCredential{secret: secret, previous: len(accepted) > 0, first: first}
	return a.unwritten, nil
}

// inCycle reports whether the node carries a mark of a reboot cycle, and
// which.
func inCycle(n *corev1.Node) (string, bool) {
	a := n.Annotations
	if s := a[annotations.Status]; s == annotations.StatusDraining || s == annotations.StatusRebooting {
		return s, true
	}
	if a[annotations.Holding] != "" {
		return "holding " + a[annotations.Holding], true
	}
	return "", false
}

// access is how the drop-in that holds the secret is written: readable by
// Zincati's group, or by everyone (with a warning) on a host without one.
func (a *Agent) access(log *slog.Logger) dropin.Access {
	acc, err := dropin.ZincatiAccess(a.cfg.HostRoot)
	if err != nil {
		a.note("access", err.Error(), slog.LevelWarn, "the drop-in holding the credential is world-readable: Zincati's group is unknown", "err", err)
		return dropin.Public
	}
	delete(a.noted, "access")
	return acc
}

// annotate merge-patches the node's annotations (nil deletes one).
func (a *Agent) annotate(ctx context.Context, change map[string]any) error {
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": change}})
	if _, err := a.client.CoreV1().Nodes().Patch(ctx, a.cfg.NodeName, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("annotate node %s: %w", a.cfg.NodeName, err)
	}
	return nil
}

// publishID sets the node's zincati-id annotation from the host's machine id.
func (a *Agent) publishID(ctx context.Context, node *corev1.Node) error {
	path := filepath.Join(a.cfg.HostRoot, "etc/machine-id")
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read the host's machine id: %w", err)
	}
	id, err := zincatiid.FromMachineID(string(raw))
	if err != nil {
		return fmt.Errorf("derive the Zincati id from %s: %w", path, err)
	}
	if node.Annotations[annotations.ZincatiID] == id {
		return nil
	}
	if err := a.annotate(ctx, map[string]any{annotations.ZincatiID: id}); err != nil {
		return fmt.Errorf("publish the Zincati id: %w", err)
	}
	a.log.Info("published the Zincati id", "id", id)
	return nil
}

// witness publishes what the host knows of this boot on its Node, for the
// arbiter to tell a reboot's end from a failed boot or a failed update:
// the boot id, boot-complete.target's state and the OS version. It patches
// only what differs from the Node as cached (a stale cache costs a
// redundant, idempotent patch), and looks again in a few seconds while the
// boot is not complete yet. The three go in one patch, so the values are
// always about the boot id beside them: a value it cannot read is removed
// (with a warning), never left over from an earlier boot; without the
// boot id it publishes nothing. The drop-in is managed regardless.
func (a *Agent) witness(ctx context.Context, node *corev1.Node) {
	raw, err := os.ReadFile(a.cfg.BootIDPath)
	if err != nil {
		a.log.Warn("cannot read the boot id", "err", err)
		return
	}
	want := map[string]string{annotations.BootID: strings.TrimSpace(string(raw))} // "" removes
	switch state, err := a.restarter.BootComplete(ctx); {
	case errors.Is(err, systemd.ErrNoBus):
		// Sync retries with backoff until the bus is there.
		a.busDown = true
		want[annotations.BootComplete] = ""
	case err != nil:
		a.note("boot-complete", err.Error(), slog.LevelWarn, "cannot read boot-complete.target", "err", err)
		want[annotations.BootComplete] = ""
		a.queue.AddAfter(key, 5*time.Second)
	default:
		delete(a.noted, "boot-complete")
		want[annotations.BootComplete] = state
		if state == "pending" {
			a.queue.AddAfter(key, 5*time.Second)
		}
	}
	v, err := osVersion(a.cfg.HostRoot)
	if err != nil {
		a.log.Warn("cannot read the host's os-release", "err", err)
	}
	want[annotations.OSVersion] = v
	change := map[string]any{}
	for k, v := range want {
		if node.Annotations[k] == v {
			continue
		}
		if v == "" {
			if _, ok := node.Annotations[k]; ok {
				change[k] = nil
			}
			continue
		}
		change[k] = v
	}
	if len(change) == 0 {
		return
	}
	if err := a.annotate(ctx, change); err != nil {
		a.log.Warn("publishing the boot's witness failed; retrying on the next pass", "err", err)
		a.queue.AddAfter(key, 5*time.Second)
		return
	}
	a.log.Info("published the boot's witness", "boot_id", want[annotations.BootID],
		"boot_complete", want[annotations.BootComplete], "os_version", want[annotations.OSVersion])
}

// osVersion is VERSION from the host's os-release (/usr/lib/os-release,
// else /etc/os-release), "" when it has none.
func osVersion(root string) (string, error) {
	rel, err := osRelease(root)
	if err != nil {
		return "", err
	}
	return rel["VERSION"], nil
}

// baseURL returns the configured override or the arbiter Service's URL.
func (a *Agent) baseURL() (string, error) {
	if a.cfg.BaseURL != "" {
		return a.cfg.BaseURL, nil
	}
	svc, err := a.services.Services(a.cfg.ServiceNamespace).Get(a.cfg.ServiceName)
	if apierrors.IsNotFound(err) {
		return "", fmt.Errorf("the arbiter Service %s/%s does not exist", a.cfg.ServiceNamespace, a.cfg.ServiceName)
	}
	if err != nil {
		return "", fmt.Errorf("get the arbiter Service: %w", err)
	}
	return ServiceURL(svc, a.cfg.External)
}

// ServiceURL returns http://IP:PORT/ for the Service's first port, with its
// ClusterIP, or with its LoadBalancer ingress or external IP when external.
func ServiceURL(svc *corev1.Service, external bool) (string, error) {
	if len(svc.Spec.Ports) == 0 {
		return "", fmt.Errorf("service %s/%s has no ports", svc.Namespace, svc.Name)
	}
	ip := svc.Spec.ClusterIP
	if external {
		ip = ""
		for _, in := range svc.Status.LoadBalancer.Ingress {
			if in.IP != "" {
				ip = in.IP
				break
			}
		}
		if ip == "" && len(svc.Spec.ExternalIPs) > 0 {
			ip = svc.Spec.ExternalIPs[0]
		}
	}
	if ip == "" || ip == corev1.ClusterIPNone {
		return "", errors.New("service " + svc.Namespace + "/" + svc.Name + " has no usable IP yet")
	}
	return "http://" + net.JoinHostPort(ip, strconv.Itoa(int(svc.Spec.Ports[0].Port))) + "/", nil
}
