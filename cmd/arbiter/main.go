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
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	_ "time/tzdata" // maintenance windows name time zones; the image has no zoneinfo

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/time/rate"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	coordinationlisters "k8s.io/client-go/listers/coordination/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/rebootmanager/reboot-manager/arbiter"
	"github.com/rebootmanager/reboot-manager/arbiter/apiclient"
	"github.com/rebootmanager/reboot-manager/arbiter/apihealth"
	"github.com/rebootmanager/reboot-manager/arbiter/caches"
	"github.com/rebootmanager/reboot-manager/arbiter/connlimit"
	"github.com/rebootmanager/reboot-manager/arbiter/coordinator"
	"github.com/rebootmanager/reboot-manager/arbiter/drain"
	"github.com/rebootmanager/reboot-manager/arbiter/finish"
	"github.com/rebootmanager/reboot-manager/arbiter/gate"
	"github.com/rebootmanager/reboot-manager/arbiter/groups"
	"github.com/rebootmanager/reboot-manager/arbiter/leader"
	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/arbiter/nodes"
	"github.com/rebootmanager/reboot-manager/arbiter/reconcile"
	"github.com/rebootmanager/reboot-manager/arbiter/tokens"
	"github.com/rebootmanager/reboot-manager/arbiter/volumes"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/apiversion"
	"github.com/rebootmanager/reboot-manager/shared/envflag"
	"github.com/rebootmanager/reboot-manager/shared/kubeclient"
)

// config is everything the flags and environment set.
type config struct {
	kubeconfig        string
	listenAddress     string
	probeAddress      string
	namespace         string
	basePath          string
	groupsConfigMap   string
	tokensSecret      string
	allowUnknownNodes bool
	maxWait           time.Duration
	maxWaiters        int
	sourceBinding     bool
	sourcePodBridge   bool
	requireCredential bool
	maxGroups         int
	maxConnections    int
	maxPerSource      int
	tlsCertFile       string
	tlsKeyFile        string
	drain             drain.Config
	drainWorkers      int
	reconcileInterval time.Duration
	maxHold           time.Duration
	maxDowntime       time.Duration
	volumeDetach      time.Duration
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
	fs.StringVar(&c.listenAddress, "listen-address", ":8080", "address to serve FleetLock on")
	fs.StringVar(&c.probeAddress, "probe-address", ":8081", "address to serve /healthz, /readyz and /metrics on: a listener of their own, so that probes never queue behind FleetLock traffic")
	fs.StringVar(&c.namespace, "namespace", "reboot-manager", "namespace of the lock Leases, the groups ConfigMap and the leader-election Lease")
	fs.StringVar(&c.basePath, "base-path", "/", "path prefix of the FleetLock endpoints (Zincati's base_url path)")
	fs.StringVar(&c.groupsConfigMap, "groups-configmap", "reboot-manager-groups", "ConfigMap holding per-group slots under config.yaml")
	fs.StringVar(&c.tokensSecret, "tokens-secret", "reboot-manager-tokens", "Secret whose keys are groups (or _default) and values the token their requests must carry; a missing Secret or key requires none; empty disables")
	fs.BoolVar(&c.allowUnknownNodes, "allow-unknown-nodes", false, "grant slots to ids that match no Node, as a plain semaphore without draining; needs the _default token of -tokens-secret")
	fs.IntVar(&c.maxGroups, "max-groups", 64, "most lock objects that hosts outside the cluster may create by naming new groups")
	fs.BoolVar(&c.requireCredential, "require-node-credential", false, "refuse (401) requests for a Node without a host credential, instead of serving them unprotected; turn on once every node runs the agent")
	fs.DurationVar(&c.maxWait, "max-wait", 5*time.Minute, "how long a pre-reboot may wait server-side for a slot (first come, first served) or for its drain before a 423; 0 answers at once (plain polling); keep it well under Zincati's 30-minute request timeout")
	fs.IntVar(&c.maxWaiters, "max-waiters", 10, "pre-reboots that may wait server-side (-max-wait) per group on this replica; later ones are answered 423 at once with their place in line, so waiters never hold the connections that releases need")
	fs.BoolVar(&c.sourceBinding, "source-binding", false, "accept a request for a Node without a credential only from one of its addresses (InternalIP, ExternalIP); 403 forbidden_source otherwise. Only for setups that keep the host's address: the arbiter in hostNetwork, or a CNI without masquerade or tunnel for host-to-pod traffic")
	fs.BoolVar(&c.sourcePodBridge, "source-binding-pod-bridge", false, "under -source-binding, also count the first address of the node's pod CIDR as the node's (bridge CNIs; unsafe if the IPAM can hand that address to a pod)")
	fs.StringVar(&c.tlsCertFile, "tls-cert-file", "", "serve HTTPS with this certificate (PEM), reloaded when the file changes; empty serves plain HTTP")
	fs.StringVar(&c.tlsKeyFile, "tls-key-file", "", "the private key (PEM) of -tls-cert-file")
	fs.IntVar(&c.maxConnections, "max-connections", 1000, "FleetLock connections served at once; more wait in the kernel's backlog")
	fs.IntVar(&c.maxPerSource, "max-connections-per-source", 100, "FleetLock connections served at once from one source (an IPv4 address or an IPv6 /64); more are closed at once, so one source cannot take every place. Size it for the hosts behind one SNAT address (README)")
	fs.BoolVar(&c.drain.Force, "drain-force", true, "evict pods that no controller manages (otherwise they block the drain)")
	fs.BoolVar(&c.drain.DeleteEmptyDirData, "drain-delete-emptydir-data", true, "evict pods with emptyDir volumes (otherwise they block the drain)")
	fs.IntVar(&c.drain.Concurrency, "drain-concurrency", 10, "evictions in flight per node")
	fs.DurationVar(&c.drain.Timeout, "drain-timeout", time.Hour, "drain timeout of the groups that set no drainTimeout: after it the drain yields its slot (drainTimeoutAction yield, the default) or goes on with a DrainTimeout Warning Event (wait); 0: no timeout")
	fs.DurationVar(&c.drain.PodTimeout, "drain-pod-timeout", 5*time.Minute, "time one pod may resist eviction before a PodEvictionStuck Warning Event names it (it still blocks; 0 disables)")
	fs.IntVar(&c.drainWorkers, "drain-workers", 4, "nodes drained in parallel")
	fs.DurationVar(&c.reconcileInterval, "reconcile-interval", 30*time.Second, "how often to release slots of deleted nodes and clean up leftover cordons")
	fs.DurationVar(&c.maxHold, "max-hold", 2*time.Hour, "slot holding time after which the holder gets a LockHeldTooLong Warning Event and counts in rebootmanager_slots_overdue; the slot is never released automatically (0 disables)")
	fs.DurationVar(&c.maxDowntime, "max-downtime", time.Hour, "time from a reboot's approval within which the node must be back; after it the group halts with not_back and the slot stays held (0 disables)")
	fs.DurationVar(&c.volumeDetach, "volume-detach-timeout", 5*time.Minute, "how long a drained node's reboot waits, once its evicted pods' volumes are unmounted, for their VolumeAttachments to go; after it the reboot is approved with a VolumeDetachTimeout Warning Event (0: wait for ever)")
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
	if c.maxConnections < 1 || c.maxPerSource < 1 {
		return c, errors.New("-max-connections and -max-connections-per-source must be at least 1")
	}
	if c.drainWorkers < 1 || c.drain.Concurrency < 1 {
		return c, errors.New("-drain-workers and -drain-concurrency must be at least 1")
	}
	if c.maxWait < 0 || c.maxWait >= 30*time.Minute {
		return c, errors.New("-max-wait must be at least 0 and under Zincati's 30-minute request timeout")
	}
	if c.maxHold < 0 || c.maxDowntime < 0 || c.volumeDetach < 0 {
		return c, errors.New("-max-hold, -max-downtime and -volume-detach-timeout must not be negative")
	}
	if c.maxWaiters < 1 {
		return c, errors.New("-max-waiters must be at least 1")
	}
	if c.maxGroups < 1 {
		return c, errors.New("-max-groups must be at least 1")
	}
	if strings.HasPrefix(c.leaseName, lock.NamePrefix) {
		// The operators' admission policy lets them write the Leases named
		// so: the leader-election Lease must stay out of their reach.
		return c, fmt.Errorf("-leader-election-lease must not start with %q, the prefix of the lock Leases", lock.NamePrefix)
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
	restConfig, err := kubeclient.Config(cfg.kubeconfig, "reboot-manager-arbiter")
	if err != nil {
		return err
	}
	registry := prometheus.NewRegistry()
	// Each job gets a client, and so a client-side rate limiter, of its
	// own (package apiclient), so that no job's burst delays another's:
	//   - decisions: the requests' reads and compare-and-swaps; a release
	//     never queues behind a drain's evictions;
	//   - workers: the drainer, reconciler and finisher;
	//   - caches: the informers' lists and watches (a relist of 2,000
	//     Nodes);
	//   - control: leader election and the API server probe, so that no
	//     burst costs the leader its lease or the replica its readiness;
	//   - events: a burst of them (a NoNodeCredential Warning for each of
	//     2,000 Nodes as their first requests arrive) once held every
	//     decision behind it for 40 s.
	//
	// Every request but the informers' watches has a deadline: a request
	// whose response never completes (seen after an API server restart:
	// headers sent, the body never) would otherwise hold its decision, and
	// every request sharing its read, for ever.
	apiMetrics := apiclient.NewMetrics(registry)
	var decisions, workers, cacheClient, control, events kubernetes.Interface
	for _, c := range []struct {
		job     string
		client  *kubernetes.Interface
		timeout time.Duration
	}{
		{"decisions", &decisions, 10 * time.Second},
		{"workers", &workers, 30 * time.Second},
		{"caches", &cacheClient, 0}, // watches last; client-go bounds them itself
		{"control", &control, 10 * time.Second},
		{"events", &events, 10 * time.Second},
	} {
		cfg := rest.CopyConfig(restConfig)
		cfg.Timeout = c.timeout
		if *c.client, err = apiclient.New(cfg, c.job, apiMetrics); err != nil {
			return err
		}
	}
	if err := apiversion.Require(control.Discovery(), log); err != nil {
		return err
	}
	if cfg.identity == "" {
		host, _ := os.Hostname()
		cfg.identity = fmt.Sprintf("%s-%d", host, os.Getpid())
	}

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: events.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "reboot-manager"})

	// The API server's readiness: the arbiter's own, and what the caches
	// wait for to resume their watches after an outage.
	apiServer := apihealth.Start(ctx, control.Discovery().RESTClient(), 2*time.Second, log)
	cacheMetrics := caches.NewMetrics(registry)
	var current []*caches.ListWatch
	informer := func(name string, lw *cache.ListWatch, obj runtime.Object) cache.SharedIndexInformer {
		inf, r := caches.New(name, lw, obj, apiServer, cacheMetrics, log)
		current = append(current, r)
		return inf
	}
	// Nodes: the whole cluster, indexed by Zincati id.
	core := cacheClient.CoreV1().RESTClient()
	nodeInformer := informer("nodes", cache.NewFilteredListWatchFromClient(core, "nodes", metav1.NamespaceAll, func(*metav1.ListOptions) {}), &corev1.Node{})
	if err := nodeInformer.SetTransform(nodes.Slim); err != nil {
		return fmt.Errorf("slim the cached Nodes: %w", err)
	}
	if err := nodeInformer.AddIndexers(cache.Indexers{nodes.IDIndex: nodes.IndexByID}); err != nil {
		return fmt.Errorf("add the Zincati id index: %w", err)
	}
	// Lock Leases, the groups ConfigMap and the tokens Secret: only ours.
	leaseInformer := informer("leases", cache.NewFilteredListWatchFromClient(cacheClient.CoordinationV1().RESTClient(), "leases", cfg.namespace,
		func(o *metav1.ListOptions) { o.LabelSelector = lock.Label + "=true" }), &coordinationv1.Lease{})
	leaseLister := coordinationlisters.NewLeaseLister(leaseInformer.GetIndexer())
	cmInformer := informer("configmap", cache.NewFilteredListWatchFromClient(core, "configmaps", cfg.namespace, named(cfg.groupsConfigMap)), &corev1.ConfigMap{})
	informersToRun := []cache.SharedIndexInformer{nodeInformer, leaseInformer, cmInformer}

	tokenStore := tokens.NewStore()
	if cfg.tokensSecret != "" {
		secretInformer := informer("secret", cache.NewFilteredListWatchFromClient(core, "secrets", cfg.namespace, named(cfg.tokensSecret)), &corev1.Secret{})
		if err := onChange(secretInformer, func(obj any) {
			secret, _ := obj.(*corev1.Secret)
			tokenStore.Set(secret)
			log.Info("group tokens loaded", "secret", cfg.tokensSecret, "deleted", secret == nil)
		}); err != nil {
			return fmt.Errorf("watch the tokens Secret: %w", err)
		}
		informersToRun = append(informersToRun, secretInformer)
	}

	settings := groups.NewStore(cfg.namespace, cfg.groupsConfigMap, groups.NewMetrics(registry))
	// The same caches and lock over the two clients: the requests'
	// decisions, and the background workers'.
	lockMetrics := lock.NewMetrics(registry)
	directory := nodes.New(decisions, nodeInformer, recorder)
	semaphore := lock.New(decisions.CoordinationV1(), leaseLister, cfg.namespace).WithMetrics(lockMetrics)
	workerNodes := nodes.New(workers, nodeInformer, recorder)
	workerLock := lock.New(workers.CoordinationV1(), leaseLister, cfg.namespace).WithMetrics(lockMetrics)
	cfg.drain.Metrics = drain.NewMetrics(registry)
	drainer := drain.New(workers, workerNodes, workerLock, volumes.NewReader(workers), settings, cfg.drain, log)
	reconciler := reconcile.New(workerNodes, workerLock, recorder, reconcile.Config{
		Namespace: cfg.namespace, Interval: cfg.reconcileInterval, MaxHold: cfg.maxHold, Metrics: reconcile.NewMetrics(registry),
	}, log)
	finisher := finish.New(workerNodes, workerLock, workers.CoordinationV1().Leases(corev1.NamespaceNodeLease), settings,
		finish.Config{MaxDowntime: cfg.maxDowntime, Metrics: finish.NewMetrics(registry)}, log)
	decider := coordinator.New(coordinator.Deps{
		Nodes: directory, Lock: semaphore, Drainer: drainer, Settings: settings, Gate: gate.New(decisions),
	}, coordinator.Config{
		AllowUnknownNodes: cfg.allowUnknownNodes, MaxWait: cfg.maxWait, MaxWaiters: cfg.maxWaiters, MaxGroups: cfg.maxGroups,
		SourceBinding: cfg.sourceBinding, SourcePodBridge: cfg.sourcePodBridge,
		RequireNodeCredential: cfg.requireCredential, Token: tokenStore.For, VolumeDetachTimeout: cfg.volumeDetach,
	}, coordinator.NewMetrics(registry), log)

	if err := onChange(cmInformer, func(obj any) {
		cm, _ := obj.(*corev1.ConfigMap)
		if err := settings.Set(cm); err != nil {
			log.Error("groups ConfigMap rejected; keeping the last good settings", "configmap", cfg.groupsConfigMap, "err", err)
			return
		}
		log.Info("groups settings loaded", "configmap", cfg.groupsConfigMap)
		decider.WakeAll()
	}); err != nil {
		return fmt.Errorf("watch the groups ConfigMap: %w", err)
	}
	// A change of a lock object wakes its group's waiting pre-reboots and,
	// when its holders changed (not only its line), hands its Draining
	// nodes to the drainer and its approved ones to the finisher (hints:
	// they confirm fresh). A change of the line alone must not cut short
	// the drainer's backoff on refused evictions.
	onLease := func(old, obj any) {
		l, ok := obj.(*coordinationv1.Lease)
		if !ok {
			return
		}
		decider.Wake(l.Annotations[annotations.LockGroup])
		holders, _ := lock.Decode(l)
		if o, ok := old.(*coordinationv1.Lease); ok {
			if before, err := lock.Decode(o); err == nil && slices.EqualFunc(before, holders, lock.Holder.Equal) {
				return
			}
		}
		for _, h := range holders {
			switch {
			case h.Node != "" && h.Stage() == lock.PhaseDraining:
				drainer.Enqueue(h.Node)
			case h.Node != "" && h.Stage() == lock.PhaseApproved:
				finisher.Kick() // a steady-state, or a node seen back
			}
		}
	}
	if _, err := leaseInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { onLease(nil, obj) },
		UpdateFunc: onLease,
		DeleteFunc: func(any) {},
	}); err != nil {
		return fmt.Errorf("watch the lock objects: %w", err)
	}
	// A node shown Draining is a hint for the drainer, which confirms it on
	// fresh reads of the lock objects and the node.
	// A node in the later phases of a cycle may be back: a hint for the
	// finisher, which judges on fresh reads.
	hintWorkers := func(obj any) {
		n, ok := obj.(*corev1.Node)
		if !ok {
			return
		}
		switch n.Annotations[annotations.Status] {
		case annotations.StatusDraining:
			drainer.Enqueue(n.Name)
		case annotations.StatusRebooting, annotations.StatusReturning, annotations.StatusSettling, annotations.StatusHalted:
			finisher.Kick()
		}
	}
	if _, err := nodeInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: hintWorkers,
		UpdateFunc: func(old, obj any) {
			hintWorkers(obj)
			if o, ok := old.(*corev1.Node); ok {
				if n, ok := obj.(*corev1.Node); ok {
					reconciler.BootChanged(o, n)
				}
			}
		},
		DeleteFunc: func(any) { reconciler.Kick() },
	}); err != nil {
		return fmt.Errorf("watch nodes: %w", err)
	}

	hasSynced := make([]cache.InformerSynced, len(informersToRun))
	for i, inf := range informersToRun {
		go inf.RunWithContext(ctx)
		hasSynced[i] = inf.HasSynced
	}
	var synced atomic.Bool
	ready := func() error {
		if !synced.Load() {
			return errors.New("caches are not synced yet")
		}
		if err := apiServer.Ready(); err != nil {
			return err
		}
		// A refusal may rest on a cache: none is answered from one that is
		// catching up after an outage.
		for _, c := range current {
			if err := c.Current(); err != nil {
				return err
			}
		}
		return nil
	}
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		lock.NewCollector(semaphore, func(g string) int { return settings.For(g).Slots }, cfg.maxHold), nodes.NewCollector(directory))
	handlerCfg := arbiter.Config{BasePath: cfg.basePath, Ready: ready, Registry: registry}
	srv := arbiter.NewServer(cfg.listenAddress, arbiter.Handler(decider, handlerCfg, log))
	// Requests end when shutdown starts, so waiting pre-reboots answer 503
	// at once instead of holding the shutdown up.
	requests, endRequests := context.WithCancelCause(context.Background())
	defer endRequests(nil)
	srv.BaseContext = func(net.Listener) context.Context { return requests }
	connections := newConnectionMetrics(registry, log)
	ln, err := arbiter.Listen(cfg.listenAddress, connlimit.Config{Max: cfg.maxConnections, PerSource: cfg.maxPerSource,
		Refused: connections.refused("fleetlock"), Linger: refusedLinger, MaxLingering: cfg.maxConnections})
	if err != nil {
		return err
	}
	connections.watch("fleetlock", ln)
	probeLn, err := arbiter.Listen(cfg.probeAddress, connlimit.Config{Max: probeMaxConnections, PerSource: probePerSource,
		Refused: connections.refused("probes"), Linger: refusedLinger, MaxLingering: probeMaxConnections})
	if err != nil {
		ln.Close()
		return err
	}
	connections.watch("probes", probeLn)
	probes := arbiter.NewServer(cfg.probeAddress, arbiter.Probes(handlerCfg))
	serveErr := make(chan error, 2)
	go func() {
		if err := probes.Serve(probeLn); !errors.Is(err, http.ErrServerClosed) {
			serveErr <- fmt.Errorf("serve the probes on %s: %w", cfg.probeAddress, err)
		}
	}()
	if cfg.tlsCertFile != "" {
		certs, err := arbiter.NewCertReloader(cfg.tlsCertFile, cfg.tlsKeyFile)
		if err != nil {
			ln.Close()
			return shutdown(err, probes)
		}
		srv.TLSConfig = &tls.Config{GetCertificate: certs.GetCertificate, MinVersion: tls.VersionTLS12}
		go func() {
			serveErr <- fmt.Errorf("serve FleetLock on %s: %w", cfg.listenAddress, srv.ServeTLS(ln, "", ""))
		}()
	} else {
		go func() { serveErr <- fmt.Errorf("serve FleetLock on %s: %w", cfg.listenAddress, srv.Serve(ln)) }()
	}
	log.Info("serving FleetLock", "tls", cfg.tlsCertFile != "", "address", cfg.listenAddress, "probe_address", cfg.probeAddress, "base_path", cfg.basePath, "namespace", cfg.namespace)

	if !cache.WaitForCacheSync(ctx.Done(), hasSynced...) {
		endRequests(errShuttingDown)
		return shutdown(ctx.Err(), srv, probes)
	}
	if cfg.allowUnknownNodes && tokenStore.For(tokens.DefaultKey) == "" {
		// Without a token, an id of a host outside the cluster is all it
		// takes to act for it.
		endRequests(errShuttingDown)
		return shutdown(fmt.Errorf("-allow-unknown-nodes needs a token: set the key %s of the Secret %s/%s", tokens.DefaultKey, cfg.namespace, cfg.tokensSecret), srv, probes)
	}
	synced.Store(true)
	log.Info("caches synced")
	if err := settings.Ready(); err != nil {
		log.Error("no valid groups settings: every pre-reboot is answered 503 until there are", "err", err)
	}

	// One leadership term: a fresh drainer run, finisher and reconciler, all ended
	// before the term returns.
	term := func(ctx context.Context) {
		var wg sync.WaitGroup
		wg.Go(func() { drainer.Run(ctx, cfg.drainWorkers) })
		wg.Go(func() { finisher.Run(ctx) })
		reconciler.Run(ctx)
		wg.Wait()
	}
	leaderDone := make(chan struct{})
	go func() {
		defer close(leaderDone)
		if cfg.leaderElection {
			leader.Run(ctx, control.CoordinationV1(), leader.Config{Namespace: cfg.namespace, Name: cfg.leaseName, Identity: cfg.identity}, log, term)
		} else {
			term(ctx)
		}
	}()

	select {
	case err := <-serveErr:
		endRequests(errShuttingDown)
		return shutdown(err, srv, probes)
	case <-ctx.Done():
		log.Info("shutting down")
		endRequests(errShuttingDown)
		err := shutdown(nil, srv, probes)
		// Wait for the leader to give up its Lease, so the next replica
		// takes over at once instead of after the lease duration.
		select {
		case <-leaderDone:
		case <-time.After(5 * time.Second):
		}
		return err
	}
}

var errShuttingDown = errors.New("the arbiter is shutting down")

// named narrows a list or watch to the one object name.
func named(name string) func(*metav1.ListOptions) {
	return func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + name }
}

// onChange calls fn with the object on every add and update, and with nil
// on a delete.
func onChange(inf cache.SharedIndexInformer, fn func(obj any)) error {
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    fn,
		UpdateFunc: func(_, obj any) { fn(obj) },
		DeleteFunc: func(any) { fn(nil) },
	})
	return err
}

// shutdown shuts the servers down, waiting up to 10 s for their requests,
// and returns cause, or the first shutdown error if cause is nil.
func shutdown(cause error, servers ...*http.Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, srv := range servers {
		if err := srv.Shutdown(ctx); err != nil && cause == nil {
			cause = fmt.Errorf("shut down the HTTP server on %s: %w", srv.Addr, err)
		}
	}
	return cause
}

// The probe listener's limits: the kubelet's probes and a scrape or two
// need a handful of connections; a flood from one source takes at most
// probePerSource of them.
const (
	probeMaxConnections = 256
	probePerSource      = 8
)

// refusedLinger is how long a connection refused for its source is held
// before it is closed: a source that dials again at once then costs the
// arbiter one accept a second per connection, not a busy loop.
const refusedLinger = time.Second

// connectionMetrics counts the connections the listeners hold and refuse,
// and logs refusals at most once a minute.
type connectionMetrics struct {
	refusedTotal *prometheus.CounterVec
	registry     *prometheus.Registry
	log          *slog.Logger
	logEvery     rate.Sometimes
}

func newConnectionMetrics(registry *prometheus.Registry, log *slog.Logger) *connectionMetrics {
	m := &connectionMetrics{
		refusedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rebootmanager_connections_refused_total",
			Help: "Connections closed as soon as accepted because their source had -max-connections-per-source open, by listener (fleetlock, probes).",
		}, []string{"listener"}),
		registry: registry,
		log:      log,
		logEvery: rate.Sometimes{Interval: time.Minute},
	}
	registry.MustRegister(m.refusedTotal)
	return m
}

// refused is the Refused hook of listener.
func (m *connectionMetrics) refused(listener string) func(netip.Prefix) {
	counter := m.refusedTotal.WithLabelValues(listener)
	return func(src netip.Prefix) {
		counter.Inc()
		m.logEvery.Do(func() {
			m.log.Warn("connections refused: their source is at its limit (logged once a minute; see rebootmanager_connections_refused_total)",
				"listener", listener, "source", src.String())
		})
	}
}

// watch exports the connections ln holds open.
func (m *connectionMetrics) watch(listener string, ln *connlimit.Listener) {
	m.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "rebootmanager_connections_open",
		Help:        "Connections open, by listener (fleetlock, probes).",
		ConstLabels: prometheus.Labels{"listener": listener},
	}, func() float64 { return float64(ln.Len()) }))
}
