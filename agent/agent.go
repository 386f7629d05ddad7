// Package agent configures Zincati on its host: it derives the FleetLock
// drop-in from the arbiter's Service and the Node's group label, writes it
// when it changes, restarts Zincati only when the node holds no reboot slot,
// and publishes the host's Zincati id on its Node.
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
	"strconv"
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
	"github.com/rebootmanager/reboot-manager/shared/zincatiid"
)

// Restarter restarts a systemd unit and waits for the result.
type Restarter interface {
	Restart(ctx context.Context, unit string) error
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
}

// Agent reconciles one host.
type Agent struct {
	cfg       Config
	client    kubernetes.Interface
	restarter Restarter
	log       *slog.Logger
	queue     workqueue.TypedRateLimitingInterface[string]
	nodes     corelisters.NodeLister
	services  corelisters.ServiceLister
	// restartPending is set when the drop-in changed but Zincati could not
	// be restarted yet (a slot is held, or the restart failed).
	restartPending bool
}

// New returns an Agent.
func New(cfg Config, client kubernetes.Interface, r Restarter, log *slog.Logger) *Agent {
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

// Sync makes one reconcile pass: publish the id, write the drop-in, and
// restart Zincati if the drop-in changed and the node holds no slot.
func (a *Agent) Sync(ctx context.Context) error {
	node, err := a.nodes.Get(a.cfg.NodeName)
	if err != nil {
		return fmt.Errorf("get node %s: %w", a.cfg.NodeName, err)
	}
	if err := a.publishID(ctx, node); err != nil {
		return err
	}
	baseURL, err := a.baseURL()
	if err != nil {
		return err
	}
	group := node.Labels[annotations.GroupLabel]
	content, err := dropin.Render(dropin.Settings{BaseURL: baseURL, Group: group})
	if err != nil {
		return err
	}
	dir := filepath.Join(a.cfg.HostRoot, a.cfg.ConfigDir)
	changed, err := dropin.Write(dir, a.cfg.FileName, content)
	if err != nil {
		return err
	}
	log := a.log.With("base_url", baseURL, "group", group, "changed", changed)
	if changed {
		log.Info("wrote the Zincati drop-in", "path", filepath.Join(dir, a.cfg.FileName))
		a.restartPending = true
	}
	if !a.restartPending {
		return nil
	}
	if s := node.Annotations[annotations.Status]; s == annotations.StatusDraining || s == annotations.StatusRebooting {
		// A restart sends steady-state, which would release the slot mid-cycle.
		log.Info("Zincati restart deferred: the node is in a reboot cycle", "status", s)
		return nil
	}
	if err := a.restarter.Restart(ctx, a.cfg.Unit); err != nil {
		return fmt.Errorf("apply the new drop-in: %w", err)
	}
	a.restartPending = false
	log.Info("restarted Zincati", "unit", a.cfg.Unit)
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
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{annotations.ZincatiID: id}}})
	if _, err := a.client.CoreV1().Nodes().Patch(ctx, node.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("publish the Zincati id on node %s: %w", node.Name, err)
	}
	a.log.Info("published the Zincati id", "id", id)
	return nil
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
