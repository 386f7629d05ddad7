// Package arbiter serves FleetLock v1 over HTTP with gin: routing under a
// base path, the protocol header check, body limits, and the mapping of
// decisions to status codes and {"kind","value"} replies. It knows nothing of
// Kubernetes; the decisions come from a Decider.
package arbiter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/rebootmanager/reboot-manager/arbiter/connlimit"
	"github.com/rebootmanager/reboot-manager/arbiter/coordinator"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
)

// Decider makes the FleetLock decisions. A nil error is a 200; any other
// error is answered with its fleetlock.Kind (internal if it has none).
type Decider interface {
	PreReboot(ctx context.Context, p fleetlock.ClientParams) error
	SteadyState(ctx context.Context, p fleetlock.ClientParams) error
}

// Config configures the HTTP handler.
type Config struct {
	// BasePath is where the v1 endpoints live, "/" by default. It matches
	// the path of Zincati's base_url, which must end in "/".
	BasePath string
	// Ready reports whether the server can decide (caches synced, API
	// server reachable); nil means always. Until it does, /readyz fails and
	// FleetLock requests are answered 503 unavailable.
	Ready func() error
	// Registry receives the FleetLock request metrics, and Probes serves
	// it on /metrics; nil means a registry of their own, served nowhere.
	Registry *prometheus.Registry
}

// Handler returns the HTTP handler for the FleetLock endpoints. It never
// redirects. The probes and metrics are served by Probes, on a listener of
// their own, so that they never queue behind FleetLock traffic.
func Handler(d Decider, cfg Config, log *slog.Logger) http.Handler {
	gin.SetMode(gin.ReleaseMode)
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rebootmanager_fleetlock_requests_total",
		Help: "FleetLock requests by operation and result kind (ok for 200).",
	}, []string{"operation", "kind"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "rebootmanager_fleetlock_request_duration_seconds",
		Help:    "Time to answer a FleetLock request, by operation.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
	}, []string{"operation"})
	cfg.Registry.MustRegister(requests, duration)

	r := gin.New()
	r.RedirectTrailingSlash = false
	r.RedirectFixedPath = false
	r.HandleMethodNotAllowed = true
	r.Use(gin.CustomRecovery(func(c *gin.Context, err any) {
		log.Error("panic while serving a request", "path", c.Request.URL.Path, "panic", err)
		reply(c, fleetlock.Errorf(fleetlock.KindInternal, "internal error"))
	}))
	r.NoRoute(func(c *gin.Context) {
		reply(c, fleetlock.Errorf(fleetlock.KindNotFound, "no such endpoint %s %s; FleetLock v1 serves POST %s and POST %s",
			c.Request.Method, c.Request.URL.Path, joinPath(cfg.BasePath, fleetlock.PreRebootPath), joinPath(cfg.BasePath, fleetlock.SteadyStatePath)))
	})
	r.NoMethod(func(c *gin.Context) {
		reply(c, fleetlock.Errorf(fleetlock.KindMethodNotAllowed, "%s is not allowed on %s", c.Request.Method, c.Request.URL.Path))
	})

	op := func(name string, decide func(context.Context, fleetlock.ClientParams) error) gin.HandlerFunc {
		return func(c *gin.Context) {
			start := time.Now()
			err := serve(c, cfg, decide)
			kind := "ok"
			if err != nil {
				kind = string(fleetlock.KindOf(err))
			}
			requests.WithLabelValues(name, kind).Inc()
			duration.WithLabelValues(name).Observe(time.Since(start).Seconds())
		}
	}
	r.POST(joinPath(cfg.BasePath, fleetlock.PreRebootPath), op("pre-reboot", d.PreReboot))
	r.POST(joinPath(cfg.BasePath, fleetlock.SteadyStatePath), op("steady-state", d.SteadyState))
	return r
}

// Probes returns the HTTP handler for /healthz (the process serves),
// /readyz (cfg.Ready) and /metrics (cfg.Registry). Anything else is 404.
func Probes(cfg Config) http.Handler {
	registry := cfg.Registry
	if registry == nil {
		registry = prometheus.NewRegistry()
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if cfg.Ready != nil {
			if err := cfg.Ready(); err != nil {
				http.Error(w, fmt.Sprintf("not ready: %v", err), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprint(w, "ok\n")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	return mux
}

// serve checks and decodes one FleetLock request, runs the decision and
// writes the reply. It returns the decision's error, or the protocol error.
func serve(c *gin.Context, cfg Config, decide func(context.Context, fleetlock.ClientParams) error) error {
	if cfg.Ready != nil {
		if err := cfg.Ready(); err != nil {
			fe := fleetlock.Errorf(fleetlock.KindUnavailable, "not ready to decide: %v", err)
			reply(c, fe)
			return fe
		}
	}
	if c.GetHeader(fleetlock.Header) != "true" {
		err := fleetlock.Errorf(fleetlock.KindMissingHeader, "the header %q must be \"true\"", fleetlock.Header)
		reply(c, err)
		return err
	}
	p, err := fleetlock.Decode(http.MaxBytesReader(c.Writer, c.Request.Body, fleetlock.MaxBodyBytes+1))
	if err != nil {
		reply(c, err)
		return err
	}
	ctx := coordinator.WithCredential(c.Request.Context(), presented(c.Request))
	if ap, err := netip.ParseAddrPort(c.Request.RemoteAddr); err == nil {
		ctx = coordinator.WithSource(ctx, ap.Addr())
	}
	err = decide(ctx, p)
	if err != nil {
		// Zincati asks again a tick (5 minutes) later: a connection kept
		// alive that long only takes a place that others need.
		c.Header("Connection", "close")
		reply(c, err)
		return err
	}
	c.JSON(http.StatusOK, gin.H{})
	return nil
}

// presented is the secret a request carries: the password of its Basic
// auth (or the lone user name, for a base_url such as https://TOKEN@host/),
// which is how Zincati sends a base_url's user info, or its Bearer token.
// It is never logged.
func presented(r *http.Request) string {
	if user, pass, ok := r.BasicAuth(); ok {
		if pass != "" {
			return pass
		}
		return user
	}
	if b, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return b
	}
	return ""
}

// reply writes err as a FleetLock error body with its kind's status.
func reply(c *gin.Context, err error) {
	var fe *fleetlock.Error
	if !errors.As(err, &fe) {
		fe = fleetlock.Errorf(fleetlock.KindInternal, "%v", err)
	}
	c.Header("Cache-Control", "no-store")
	c.AbortWithStatusJSON(fe.Kind.Status(), fe)
}

func joinPath(base, p string) string {
	return "/" + strings.TrimPrefix(strings.TrimSuffix(base, "/")+"/"+p, "/")
}

// NewServer returns an http.Server for h with bounded header size and read
// timeouts, so slow or oversized clients cannot pin it: a client has 5 s to
// send its headers (slow-loris, or a connection opened only to hold a
// place) and 30 s for the whole request, headers are capped at 64 KiB (431
// beyond) and bodies at fleetlock.MaxBodyBytes. There is no write timeout:
// a reply may legitimately take long (long-poll). An idle kept-alive
// connection is closed after 5 s, and a connection that was answered
// non-2xx at once: Zincati asks once per tick, 5 minutes apart, so it
// never reuses one. Serve it on Listen's listener to bound the
// connections too.
func NewServer(addr string, h http.Handler) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       5 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
}

// Listen listens on addr with limits's bounds on the connections open at
// once, in all and per source (connlimit).
func Listen(addr string, limits connlimit.Config) (*connlimit.Listener, error) {
	if limits.Max < 1 || limits.PerSource < 1 {
		return nil, fmt.Errorf("listen on %s: connection limits must be at least 1, not %d in all and %d per source", addr, limits.Max, limits.PerSource)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return connlimit.New(ln, limits), nil
}
