// Command arbiter is the reboot-manager FleetLock server: it grants reboot
// slots per group, drains nodes before approving their reboot and puts them
// back in service afterwards. Run with -h for its flags.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	_ "time/tzdata" // maintenance windows name time zones; the image has no zoneinfo

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"

	"github.com/rebootmanager/reboot-manager/arbiter"
	"github.com/rebootmanager/reboot-manager/arbiter/cachehealth"
	"github.com/rebootmanager/reboot-manager/arbiter/coordinator"
	"github.com/rebootmanager/reboot-manager/arbiter/drain"
	"github.com/rebootmanager/reboot-manager/arbiter/gate"
	"github.com/rebootmanager/reboot-manager/arbiter/groups"
	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/arbiter/nodes"
	"github.com/rebootmanager/reboot-manager/arbiter/reconcile"
	"github.com/rebootmanager/reboot-manager/arbiter/tokens"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/envflag"
	"github.com/rebootmanager/reboot-manager/shared/kubeclient"
)

// config is everything the flags and environment set.
type config struct {
	kubeconfig        string
	listenAddress     string
	namespace         string
	basePath          string
	groupsConfigMap   string
	tokensSecret      string
	allowUnknownNodes bool
	maxWait           time.Duration
	sourceBinding     bool
	maxConnections    int
	tlsCertFile       string
	tlsKeyFile        string
	drain             drain.Config
	drainWorkers      int
	reconcileInterval time.Duration
	maxHold           time.Duration
	leaderElection    bool
	leaseName         string
	identity          string
	logFormat         string
	logLevel          slog.Level
}

func parse(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("arbiter", flag.ContinueOnError)
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file; empty means in-cluster, then $KUBECONFIG, then ~/.kube/config")
	fs.StringVar(&c.listenAddress, "listen-address", ":8080", "address to serve FleetLock, /healthz, /readyz and /metrics on")
	fs.StringVar(&c.namespace, "namespace", "reboot-manager", "namespace of the lock Leases, the groups ConfigMap and the leader-election Lease")
	fs.StringVar(&c.basePath, "base-path", "/", "path prefix of the FleetLock endpoints (Zincati's base_url path)")
	fs.StringVar(&c.groupsConfigMap, "groups-configmap", "reboot-manager-groups", "ConfigMap holding per-group slots under config.yaml")
	fs.StringVar(&c.tokensSecret, "tokens-secret", "reboot-manager-tokens", "Secret whose keys are groups (or _default) and values the token their requests must carry; a missing Secret or key requires none; empty disables")
	fs.BoolVar(&c.allowUnknownNodes, "allow-unknown-nodes", false, "grant slots to ids that match no Node, as a plain semaphore without draining")
	fs.DurationVar(&c.maxWait, "max-wait", 5*time.Minute, "how long a pre-reboot may wait server-side for a slot (first come, first served) or for its drain before a 423; 0 answers at once (plain polling); keep it well under Zincati's 30-minute request timeout")
	fs.BoolVar(&c.sourceBinding, "source-binding", true, "accept a request for a known node only from one of its addresses (InternalIP, ExternalIP, its pod bridge); 403 forbidden_source otherwise")
	fs.StringVar(&c.tlsCertFile, "tls-cert-file", "", "serve HTTPS with this certificate (PEM), reloaded when the file changes; empty serves plain HTTP")
	fs.StringVar(&c.tlsKeyFile, "tls-key-file", "", "the private key (PEM) of -tls-cert-file")
	fs.IntVar(&c.maxConnections, "max-connections", 1000, "connections served at once; more wait in the kernel's backlog")
	fs.BoolVar(&c.drain.Force, "drain-force", true, "evict pods that no controller manages (otherwise they block the drain)")
	fs.BoolVar(&c.drain.DeleteEmptyDirData, "drain-delete-emptydir-data", true, "evict pods with emptyDir volumes (otherwise they block the drain)")
	fs.IntVar(&c.drain.Concurrency, "drain-concurrency", 10, "evictions in flight per node")
	fs.DurationVar(&c.drain.Timeout, "drain-timeout", 30*time.Minute, "drain time after which the node gets a DrainTimeout Warning Event (the drain goes on; 0 disables)")
	fs.DurationVar(&c.drain.PodTimeout, "drain-pod-timeout", 5*time.Minute, "time one pod may resist eviction before a PodEvictionStuck Warning Event names it (it still blocks; 0 disables)")
	fs.IntVar(&c.drainWorkers, "drain-workers", 4, "nodes drained in parallel")
	fs.DurationVar(&c.reconcileInterval, "reconcile-interval", 30*time.Second, "how often to release slots of deleted nodes and clean up leftover cordons")
	fs.DurationVar(&c.maxHold, "max-hold", 2*time.Hour, "slot holding time after which the holder gets a LockHeldTooLong Warning Event and counts in rebootmanager_slots_overdue; the slot is never released automatically (0 disables)")
	fs.BoolVar(&c.leaderElection, "leader-election", true, "run the drainer and reconciler only on the elected replica")
	fs.StringVar(&c.leaseName, "leader-election-lease", "reboot-manager-arbiter", "name of the leader-election Lease")
	fs.StringVar(&c.identity, "pod-name", "", "this pod's name, from the downward API (its own pod is evicted last)")
	podNamespace := fs.String("pod-namespace", "", "this pod's namespace, from the downward API")
	fs.StringVar(&c.logFormat, "log-format", "json", "log format: json or text")
	fs.TextVar(&c.logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	fs.Usage = envflag.Usage(fs, "ARBITER", "arbiter: the reboot-manager FleetLock server")
	if err := envflag.Parse(fs, "ARBITER", args, os.LookupEnv); err != nil {
		return c, err
	}
	if c.logFormat != "json" && c.logFormat != "text" {
		return c, fmt.Errorf("-log-format must be json or text, not %q", c.logFormat)
	}
	if (c.tlsCertFile == "") != (c.tlsKeyFile == "") {
		return c, errors.New("-tls-cert-file and -tls-key-file go together")
	}
	if c.maxConnections < 1 {
		return c, errors.New("-max-connections must be at least 1")
	}
	if c.drainWorkers < 1 || c.drain.Concurrency < 1 {
		return c, errors.New("-drain-workers and -drain-concurrency must be at least 1")
	}
	if c.maxWait < 0 || c.maxWait >= 30*time.Minute {
		return c, errors.New("-max-wait must be at least 0 and under Zincati's 30-minute request timeout")
	}
	if c.maxHold < 0 {
		return c, errors.New("-max-hold must not be negative")
	}
	if c.reconcileInterval <= 0 {
		return c, errors.New("-reconcile-interval must be positive")
	}
	c.drain.Self = types.NamespacedName{Namespace: *podNamespace, Name: c.identity}
	return c, nil
}

func main() {
	cfg, err := parse(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "arbiter:", err)
		os.Exit(2)
	}
	log := newLogger(cfg)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("arbiter failed", "err", err)
		fmt.Fprintln(os.Stderr, "arbiter:", err)
		os.Exit(1)
	}
}

func newLogger(cfg config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.logLevel}
	if cfg.logFormat == "text" {
		return slog.New(slog.NewTextHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, opts))
}

func run(ctx context.Context, cfg config, log *slog.Logger) error {
	client, _, err := kubeclient.New(cfg.kubeconfig, "reboot-manager-arbiter")
	if err != nil {
		return err
	}
	if cfg.identity == "" {
		host, _ := os.Hostname()
		cfg.identity = fmt.Sprintf("%s-%d", host, os.Getpid())
	}

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "reboot-manager"})

	// Nodes: the whole cluster, indexed by Zincati id.
	nodeFactory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(nodes.Slim))
	nodeInformer := nodeFactory.Core().V1().Nodes().Informer()
	if err := nodeInformer.AddIndexers(cache.Indexers{nodes.IDIndex: nodes.IndexByID}); err != nil {
		return fmt.Errorf("add the Zincati id index: %w", err)
	}
	// Lock Leases and the groups ConfigMap: only ours, in our namespace.
	lockFactory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(cfg.namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = lock.Label + "=true" }))
	leases := lockFactory.Coordination().V1().Leases()
	leaseInformer := leases.Informer()
	cmFactory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(cfg.namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + cfg.groupsConfigMap }))
	cmInformer := cmFactory.Core().V1().ConfigMaps().Informer()

	// Decisions made from the caches alone wait until broken watches recover.
	caches := cachehealth.New()
	for _, inf := range []cache.SharedIndexInformer{nodeInformer, leaseInformer} {
		if err := caches.Track(inf); err != nil {
			return fmt.Errorf("track the informer caches: %w", err)
		}
	}

	// The tokens Secret, only that one, when configured.
	tokenStore := tokens.NewStore()
	var secretFactory informers.SharedInformerFactory
	hasSynced := []cache.InformerSynced{nodeInformer.HasSynced, leaseInformer.HasSynced, cmInformer.HasSynced}
	if cfg.tokensSecret != "" {
		secretFactory = informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(cfg.namespace),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + cfg.tokensSecret }))
		secretInformer := secretFactory.Core().V1().Secrets().Informer()
		setTokens := func(obj any) {
			secret, _ := obj.(*corev1.Secret)
			tokenStore.Set(secret)
			log.Info("group tokens loaded", "secret", cfg.tokensSecret, "deleted", secret == nil)
		}
		if _, err := secretInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    setTokens,
			UpdateFunc: func(_, obj any) { setTokens(obj) },
			DeleteFunc: func(any) { setTokens(nil) },
		}); err != nil {
			return fmt.Errorf("watch the tokens Secret: %w", err)
		}
		hasSynced = append(hasSynced, secretInformer.HasSynced)
	}

	settings := groups.NewStore()
	var decider *coordinator.Coordinator // set below, before the informers start
	setGroups := func(obj any) {
		cm, _ := obj.(*corev1.ConfigMap)
		if err := settings.Set(cm); err != nil {
			log.Error("groups ConfigMap rejected; keeping the last good settings", "err", err)
			return
		}
		log.Info("groups settings loaded", "configmap", cfg.groupsConfigMap, "deleted", cm == nil)
		if decider != nil {
			decider.WakeAll()
		}
	}
	if _, err := cmInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    setGroups,
		UpdateFunc: func(_, obj any) { setGroups(obj) },
		DeleteFunc: func(any) { setGroups(nil) },
	}); err != nil {
		return fmt.Errorf("watch the groups ConfigMap: %w", err)
	}

	registry := prometheus.NewRegistry()
	directory := nodes.New(client, nodeInformer, recorder)
	semaphore := lock.New(client.CoordinationV1(), leases.Lister(), cfg.namespace)
	cfg.drain.Metrics = drain.NewMetrics(registry)
	drainer := drain.New(client, directory, cfg.drain, log)
	reconciler := reconcile.New(directory, semaphore, recorder, reconcile.Config{
		Namespace: cfg.namespace, Interval: cfg.reconcileInterval, MaxHold: cfg.maxHold, Metrics: reconcile.NewMetrics(registry),
	}, log)
	apiServer := probeAPIServer(ctx, client, 2*time.Second, log)
	decider = coordinator.New(coordinator.Deps{
		Nodes: directory, Lock: semaphore, Drainer: drainer, Settings: settings, Gate: gate.New(client),
	}, coordinator.Config{
		AllowUnknownNodes: cfg.allowUnknownNodes, MaxWait: cfg.maxWait, SourceBinding: cfg.sourceBinding,
		// After an outage the caches are trusted again only once every
		// broken watch has caught up and the API server has been back a while.
		CacheFresh: func() bool { return caches.Fresh() && apiServer.settled(30*time.Second) },
	}, coordinator.NewMetrics(registry), log)

	// Waiting pre-reboots are woken by changes to the lock objects and to
	// the slots.
	wakeGroup := func(obj any) {
		if l, ok := obj.(*coordinationv1.Lease); ok {
			decider.Wake(l.Annotations[annotations.LockGroup])
		}
	}
	if _, err := leaseInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    wakeGroup,
		UpdateFunc: func(_, obj any) { wakeGroup(obj) },
	}); err != nil {
		return fmt.Errorf("watch the lock objects: %w", err)
	}

	if _, err := nodeInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { enqueueDraining(drainer, obj) },
		UpdateFunc: func(_, obj any) { enqueueDraining(drainer, obj) },
		DeleteFunc: func(any) { reconciler.Kick() },
	}); err != nil {
		return fmt.Errorf("watch nodes: %w", err)
	}

	for _, f := range []informers.SharedInformerFactory{nodeFactory, lockFactory, cmFactory, secretFactory} {
		if f != nil {
			f.Start(ctx.Done())
		}
	}
	var synced atomic.Bool
	ready := func() error {
		if !synced.Load() {
			return errors.New("caches are not synced yet")
		}
		return apiServer.ready()
	}
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		lock.NewCollector(semaphore, func(g string) int { return settings.For(g).Slots }, cfg.maxHold))
	srv := arbiter.NewServer(cfg.listenAddress, arbiter.Handler(decider, arbiter.Config{
		BasePath: cfg.basePath, Ready: ready, Registry: registry, Token: tokenStore.For,
	}, log))
	// Requests end when shutdown starts, so waiting pre-reboots answer 503
	// at once instead of holding the shutdown up.
	requests, endRequests := context.WithCancelCause(context.Background())
	defer endRequests(nil)
	srv.BaseContext = func(net.Listener) context.Context { return requests }
	ln, err := arbiter.Listen(cfg.listenAddress, cfg.maxConnections)
	if err != nil {
		return err
	}
	serveErr := make(chan error, 1)
	if cfg.tlsCertFile != "" {
		certs, err := arbiter.NewCertReloader(cfg.tlsCertFile, cfg.tlsKeyFile)
		if err != nil {
			ln.Close()
			return err
		}
		srv.TLSConfig = &tls.Config{GetCertificate: certs.GetCertificate, MinVersion: tls.VersionTLS12}
		go func() { serveErr <- srv.ServeTLS(ln, "", "") }()
	} else {
		go func() { serveErr <- srv.Serve(ln) }()
	}
	log.Info("serving FleetLock", "tls", cfg.tlsCertFile != "", "address", cfg.listenAddress, "base_path", cfg.basePath, "namespace", cfg.namespace)

	if !cache.WaitForCacheSync(ctx.Done(), hasSynced...) {
		endRequests(errShuttingDown)
		return shutdown(srv, ctx.Err())
	}
	synced.Store(true)
	log.Info("caches synced")

	background := func(ctx context.Context) {
		var wg sync.WaitGroup
		wg.Go(func() { drainer.Run(ctx, cfg.drainWorkers) })
		reconciler.Run(ctx)
		wg.Wait()
	}
	// On shutdown, wait for the leader to give up its Lease, so the next
	// replica takes over at once instead of after the lease duration.
	leaderDone := make(chan struct{})
	go func() {
		defer close(leaderDone)
		if cfg.leaderElection {
			lead(ctx, client, cfg, log, background)
		} else {
			background(ctx)
		}
	}()

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve %s: %w", cfg.listenAddress, err)
	case <-ctx.Done():
		log.Info("shutting down")
		endRequests(errShuttingDown)
		err := shutdown(srv, nil)
		select {
		case <-leaderDone:
		case <-time.After(5 * time.Second):
		}
		return err
	}
}

var errShuttingDown = errors.New("the arbiter is shutting down")

// apiHealth is what probeAPIServer last saw of the API server.
type apiHealth struct {
	mu        sync.Mutex
	err       error     // the last probe's failure, nil when ready
	recovered time.Time // when the API server came back from its last failure
}

// ready returns why the API server is not ready, or nil.
func (h *apiHealth) ready() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// settled reports whether the API server has been ready for at least d
// since its last failure (or never failed).
func (h *apiHealth) settled(d time.Duration) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err == nil && (h.recovered.IsZero() || time.Since(h.recovered) >= d)
}

// probeAPIServer asks the API server's /readyz every interval until ctx
// ends. The arbiter is not ready while the API server is not: it could not
// write a decision, so it should get no requests.
func probeAPIServer(ctx context.Context, client kubernetes.Interface, interval time.Duration, log *slog.Logger) *apiHealth {
	h := &apiHealth{}
	probe := func() {
		pctx, cancel := context.WithTimeout(ctx, interval)
		defer cancel()
		err := client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(pctx).Error()
		if err != nil {
			err = fmt.Errorf("the API server is not ready: %w", err)
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		switch {
		case err != nil && h.err == nil:
			log.Warn("API server unreachable; answering 503 until it is back", "err", err)
		case err == nil && h.err != nil:
			log.Info("API server reachable again")
			h.recovered = time.Now()
		}
		h.err = err
	}
	probe()
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				probe()
			}
		}
	}()
	return h
}

func enqueueDraining(d *drain.Drainer, obj any) {
	if n, ok := obj.(*corev1.Node); ok && n.Annotations[annotations.Status] == annotations.StatusDraining {
		d.Enqueue(n.Name)
	}
}

// lead runs fn while this replica holds the leader-election Lease.
func lead(ctx context.Context, client kubernetes.Interface, cfg config, log *slog.Logger, fn func(context.Context)) {
	rl := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: cfg.leaseName, Namespace: cfg.namespace},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: cfg.identity},
	}
	for ctx.Err() == nil {
		leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
			Lock:            rl,
			ReleaseOnCancel: true,
			LeaseDuration:   15 * time.Second,
			RenewDeadline:   10 * time.Second,
			RetryPeriod:     2 * time.Second,
			Name:            cfg.leaseName,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					log.Info("leading: draining and reconciling", "identity", cfg.identity)
					fn(ctx)
				},
				OnStoppedLeading: func() { log.Info("stopped leading", "identity", cfg.identity) },
			},
		})
	}
}

func shutdown(srv *http.Server, cause error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("shut down the HTTP server: %w", err)
	}
	return cause
}
