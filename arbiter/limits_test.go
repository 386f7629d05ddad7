package arbiter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rebootmanager/reboot-manager/arbiter/connlimit"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
)

// serveLimited runs the real server on a loopback listener that accepts at
// most maxConns connections, with headers due within headerTimeout.
func serveLimited(t *testing.T, maxConns int, headerTimeout time.Duration) string {
	t.Helper()
	ln, err := Listen("127.0.0.1:0", connlimit.Config{Max: maxConns, PerSource: maxConns})
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer("", Handler(&decider{}, Config{}, slog.New(slog.DiscardHandler)))
	srv.ReadHeaderTimeout = headerTimeout
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// TestSlowAndOversizedClients: a client that never finishes its headers is
// cut off at the header timeout, and oversized headers and bodies are
// refused, the body with a FleetLock error.
func TestSlowAndOversizedClients(t *testing.T) {
	addr := serveLimited(t, 10, 300*time.Millisecond)

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	fmt.Fprint(conn, "POST /v1/pre-reboot HTTP/1.1\r\nHost: arbiter\r\nfleet-lock-protocol: tr") // and nothing more
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(conn); err != nil {
		t.Fatalf("slow client: %v, want the server to close the connection", err)
	}
	if waited := time.Since(start); waited > 3*time.Second {
		t.Errorf("slow client held the connection for %s", waited)
	}

	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/pre-reboot", strings.NewReader(zincatiBody))
	req.Header.Set(fleetlock.Header, "true")
	req.Header.Set("X-Padding", strings.Repeat("a", 100<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("100 KiB header: %s, want 431", resp.Status)
	}

	big := `{"client_params":{"id":"` + strings.Repeat("a", 2*fleetlock.MaxBodyBytes) + `","group":"g"}}`
	req, _ = http.NewRequest(http.MethodPost, "http://"+addr+"/v1/pre-reboot", strings.NewReader(big))
	req.Header.Set(fleetlock.Header, "true")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `"bad_request"`) {
		t.Errorf("oversized body: %s %s, want 400 bad_request", resp.Status, body)
	}
}

// TestConnectionFlood: with a limit of 3, three idle connections hold every
// place; a fourth client waits, and is served as soon as one goes.
func TestConnectionFlood(t *testing.T) {
	addr := serveLimited(t, 3, 10*time.Second)
	var idle []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	time.Sleep(100 * time.Millisecond) // let the server accept them

	ask := func(timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/steady-state", nil)
		tr := &http.Transport{DisableKeepAlives: true}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	if err := ask(500 * time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a fourth client while three connections are open: %v, want it kept waiting", err)
	}
	idle[0].Close()
	if err := ask(5 * time.Second); err != nil {
		t.Fatalf("after one connection closed: %v, want the fourth client served", err)
	}
}
