// Package agent configures Zincati on its host: it derives the FleetLock
// drop-in from the arbiter's Service and the Node's group label, gives the
// host a credential, writes the drop-in when it changes, restarts Zincati
// only when the node is not in a reboot cycle, and publishes the host's
// Zincati id and its credential's hash on its Node.
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
)

// Host is the host's systemd: it restarts a unit and waits for the result,
// and says how boot-complete.target stands in this boot ("reached",
// "pending", "failed", or "" for a host without it).
type Host interface {
	Restart(ctx context.Context, unit string) error
	BootComplete(ctx context.Context) (string, error)
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
	}
}

const key = "host"

// Run watches the Node and the Service and reconciles until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
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
		if err := a.Sync(ctx); err != nil {
			a.log.Error("reconcile failed; retrying with backoff", "err", err, "failures", a.queue.NumRequeues(k)+1)
			a.queue.AddRateLimited(k)
		} else {
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
	changed, err := dropin.Write(dir, a.cfg.FileName, content, acc)
	if err != nil {
		return err
	}
	log = log.With("changed", changed)
	if changed {
		log.Info("wrote the Zincati drop-in", "path", filepath.Join(dir, a.cfg.FileName), "credential", cred.secret != "", "mode", acc.Mode.String())
		a.restartPending = true
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
			log.Info("Zincati restart deferred: the node is in a reboot cycle", "cycle", why)
			return nil
		}
	}
	// A first credential restarts Zincati at once, cycle or not: the Node
	// now publishes a hash, and a Zincati running without the credential
	// would be refused until it restarts.
	if err := a.restarter.Restart(ctx, a.cfg.Unit); err != nil {
		return fmt.Errorf("apply the new drop-in: %w", err)
	}
	a.restartPending = false
	log.Info("restarted Zincati", "unit", a.cfg.Unit)
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
	return hostCredential{secret: secret, previous: len(accepted) > 0, first: first}, nil
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
		log.Warn("the drop-in holding the credential is world-readable: Zincati's group is unknown", "err", err)
		return dropin.Public
	}
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
	case err != nil:
		a.log.Warn("cannot read boot-complete.target", "err", err)
		want[annotations.BootComplete] = ""
		a.queue.AddAfter(key, 5*time.Second)
	default:
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
	var raw []byte
	var err error
	for _, p := range []string{"usr/lib/os-release", "etc/os-release"} {
		if raw, err = os.ReadFile(filepath.Join(root, p)); err == nil {
			break
		}
	}
	if err != nil {
		return "", fmt.Errorf("read os-release: %w", err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "VERSION="); ok {
			return strings.Trim(v, `"'`), nil
		}
	}
	return "", nil
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
