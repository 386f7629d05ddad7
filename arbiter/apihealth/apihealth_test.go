package apihealth

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// readyz is an API server's /readyz that the test turns on and off, and
// counts.
type readyz struct {
	ready atomic.Bool
	asked atomic.Int64
}

func (z *readyz) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	z.asked.Add(1)
	if r.URL.Path != "/readyz" || !z.ready.Load() {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ok"))
}

func start(t *testing.T, z *readyz) *Probe {
	t.Helper()
	srv := httptest.NewServer(z)
	t.Cleanup(srv.Close)
	c, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return Start(ctx, c.Discovery().RESTClient(), 2*time.Second, slog.New(slog.DiscardHandler))
}

// TestWaitUntilBack: Wait blocks while the API server is away and returns
// within about DownInterval of its return; Ready says why meanwhile.
func TestWaitUntilBack(t *testing.T) {
	z := &readyz{}
	p := start(t, z)
	if p.Ready() == nil {
		t.Fatal("ready while /readyz fails")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := p.Wait(ctx); err == nil {
		t.Fatal("Wait returned while the API server is away")
	}
	z.ready.Store(true)
	back := time.Now()
	if err := p.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(back); d > DownInterval+500*time.Millisecond {
		t.Errorf("Wait returned %s after the API server was back, want about %s", d, DownInterval)
	}
	if err := p.Ready(); err != nil {
		t.Errorf("not ready once back: %v", err)
	}
}

// TestCheckMarksDown: a Check that finds the API server away holds Wait
// at once, without waiting for the next tick, and brings the next probe
// to DownInterval.
func TestCheckMarksDown(t *testing.T) {
	z := &readyz{}
	z.ready.Store(true)
	p := start(t, z)
	if err := p.Ready(); err != nil {
		t.Fatal(err)
	}
	z.ready.Store(false)
	if err := p.Check(context.Background()); err == nil {
		t.Fatal("Check passed while /readyz fails")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := p.Wait(ctx); err == nil {
		t.Fatal("Wait returned after a failed Check")
	}
	z.ready.Store(true)
	back := time.Now()
	if err := p.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(back); d > DownInterval+500*time.Millisecond {
		t.Errorf("back after %s, want about %s (the 2 s interval still ran)", d, DownInterval)
	}
}
