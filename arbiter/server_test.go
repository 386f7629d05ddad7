package arbiter

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
)

// decider records the calls and answers with err.
type decider struct {
	mu    sync.Mutex
	calls []string
	err   error
	panic bool
}

func (d *decider) record(op string, p fleetlock.ClientParams) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.panic {
		panic("boom")
	}
	d.calls = append(d.calls, op+" "+p.ID+" "+p.Group)
	return d.err
}

func (d *decider) PreReboot(_ context.Context, p fleetlock.ClientParams) error {
	return d.record("pre-reboot", p)
}

func (d *decider) SteadyState(_ context.Context, p fleetlock.ClientParams) error {
	return d.record("steady-state", p)
}

const zincatiBody = "{\n  \"client_params\": {\n    \"id\": \"978a225b3d7b40e9acd7ce9b62f68444\",\n    \"group\": \"default\"\n  }\n}"

func TestHandler(t *testing.T) {
	tests := []struct {
		name        string
		base        string
		method      string
		path        string
		header      map[string]string
		body        string
		decideErr   error
		panic       bool
		wantStatus  int
		wantKind    fleetlock.Kind
		wantCall    string
		wantNoCalls bool
	}{
		{name: "zincati pre-reboot, no content type", method: "POST", path: "/v1/pre-reboot", header: map[string]string{"fleet-lock-protocol": "true"},
			body: zincatiBody, wantStatus: 200, wantCall: "pre-reboot 978a225b3d7b40e9acd7ce9b62f68444 default"},
		{name: "curl -d form content type", method: "POST", path: "/v1/steady-state",
			header: map[string]string{"fleet-lock-protocol": "true", "Content-Type": "application/x-www-form-urlencoded"},
			body:   `{"client_params":{"id":"a","group":"g"}}`, wantStatus: 200, wantCall: "steady-state a g"},
		{name: "under a base path", base: "/fleetlock/", method: "POST", path: "/fleetlock/v1/pre-reboot",
			header: map[string]string{"fleet-lock-protocol": "true"}, body: zincatiBody, wantStatus: 200,
			wantCall: "pre-reboot 978a225b3d7b40e9acd7ce9b62f68444 default"},
		{name: "missing header", method: "POST", path: "/v1/pre-reboot", body: zincatiBody, wantStatus: 400, wantKind: fleetlock.KindMissingHeader, wantNoCalls: true},
		{name: "header not true", method: "POST", path: "/v1/pre-reboot", header: map[string]string{"fleet-lock-protocol": "yes"},
			body: zincatiBody, wantStatus: 400, wantKind: fleetlock.KindMissingHeader, wantNoCalls: true},
		{name: "bad body", method: "POST", path: "/v1/pre-reboot", header: map[string]string{"fleet-lock-protocol": "true"},
			body: `id=a&group=b`, wantStatus: 400, wantKind: fleetlock.KindBadRequest, wantNoCalls: true},
		{name: "bad group", method: "POST", path: "/v1/pre-reboot", header: map[string]string{"fleet-lock-protocol": "true"},
			body: `{"client_params":{"id":"a","group":"a/b"}}`, wantStatus: 400, wantKind: fleetlock.KindBadRequest, wantNoCalls: true},
		{name: "oversized body", method: "POST", path: "/v1/pre-reboot", header: map[string]string{"fleet-lock-protocol": "true"},
			body: strings.Repeat(" ", fleetlock.MaxBodyBytes+10) + `{}`, wantStatus: 400, wantKind: fleetlock.KindBadRequest, wantNoCalls: true},
		{name: "GET is 405", method: "GET", path: "/v1/pre-reboot", wantStatus: 405, wantKind: fleetlock.KindMethodNotAllowed, wantNoCalls: true},
		{name: "unknown path is 404", method: "POST", path: "/v2/pre-reboot", wantStatus: 404, wantKind: fleetlock.KindNotFound, wantNoCalls: true},
		{name: "trailing slash is 404, never a redirect", method: "POST", path: "/v1/pre-reboot/", header: map[string]string{"fleet-lock-protocol": "true"},
			body: zincatiBody, wantStatus: 404, wantKind: fleetlock.KindNotFound, wantNoCalls: true},
		{name: "double slash is 404, never a redirect", method: "POST", path: "//v1/pre-reboot", header: map[string]string{"fleet-lock-protocol": "true"},
			body: zincatiBody, wantStatus: 404, wantKind: fleetlock.KindNotFound, wantNoCalls: true},
		{name: "outside the base path", base: "/fleetlock/", method: "POST", path: "/v1/pre-reboot", header: map[string]string{"fleet-lock-protocol": "true"},
			body: zincatiBody, wantStatus: 404, wantKind: fleetlock.KindNotFound, wantNoCalls: true},
		{name: "lock held is 423", method: "POST", path: "/v1/pre-reboot", header: map[string]string{"fleet-lock-protocol": "true"},
			body: zincatiBody, decideErr: fleetlock.Errorf(fleetlock.KindLockHeld, "full"), wantStatus: 423, wantKind: fleetlock.KindLockHeld,
			wantCall: "pre-reboot 978a225b3d7b40e9acd7ce9b62f68444 default"},
		{name: "draining is 423, never 2xx", method: "POST", path: "/v1/pre-reboot", header: map[string]string{"fleet-lock-protocol": "true"},
			body: zincatiBody, decideErr: fleetlock.Errorf(fleetlock.KindDrainInProgress, "3 pods"), wantStatus: 423, wantKind: fleetlock.KindDrainInProgress,
			wantCall: "pre-reboot 978a225b3d7b40e9acd7ce9b62f68444 default"},
		{name: "plain error is internal", method: "POST", path: "/v1/pre-reboot", header: map[string]string{"fleet-lock-protocol": "true"},
			body: zincatiBody, decideErr: io.ErrUnexpectedEOF, wantStatus: 500, wantKind: fleetlock.KindInternal,
			wantCall: "pre-reboot 978a225b3d7b40e9acd7ce9b62f68444 default"},
		{name: "panic is internal", method: "POST", path: "/v1/pre-reboot", header: map[string]string{"fleet-lock-protocol": "true"},
			body: zincatiBody, panic: true, wantStatus: 500, wantKind: fleetlock.KindInternal, wantNoCalls: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &decider{err: tt.decideErr, panic: tt.panic}
			srv := httptest.NewServer(Handler(d, Config{BasePath: tt.base}, slog.New(slog.DiscardHandler)))
			defer srv.Close()
			req, err := http.NewRequest(tt.method, srv.URL+tt.path, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			resp, err := noRedirect.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d, want %d; body %s", resp.StatusCode, tt.wantStatus, raw)
			}
			if tt.wantKind != "" {
				var fe fleetlock.Error
				if err := json.Unmarshal(raw, &fe); err != nil || fe.Kind != tt.wantKind || fe.Value == "" {
					t.Errorf("body = %s, want {kind:%s, value:…}", raw, tt.wantKind)
				}
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			if tt.wantCall != "" && (len(d.calls) != 1 || d.calls[0] != tt.wantCall) {
				t.Errorf("calls = %q, want [%q]", d.calls, tt.wantCall)
			}
			if tt.wantNoCalls && len(d.calls) != 0 {
				t.Errorf("calls = %q, want none", d.calls)
			}
		})
	}
}

func TestClientAgainstHandler(t *testing.T) {
	d := &decider{}
	srv := httptest.NewServer(Handler(d, Config{BasePath: "/base/"}, slog.New(slog.DiscardHandler)))
	defer srv.Close()
	c := &fleetlock.Client{BaseURL: srv.URL + "/base/"}
	p := fleetlock.ClientParams{ID: "id1", Group: "Group-A"}
	if err := c.PreReboot(context.Background(), p); err != nil {
		t.Fatalf("PreReboot: %v", err)
	}
	d.err = fleetlock.Errorf(fleetlock.KindLockHeld, "full")
	err := c.PreReboot(context.Background(), p)
	var se *fleetlock.StatusError
	if !fleetlock.IsKind(err, fleetlock.KindLockHeld) || !asStatus(err, &se) || se.Status != 423 {
		t.Fatalf("PreReboot = %v, want a 423 lock_held", err)
	}
	// Zincati's join drops the last path element of a base without a
	// trailing slash: /base → /v1/…, which is outside the base path.
	c.BaseURL = srv.URL + "/base"
	if err := c.SteadyState(context.Background(), p); !fleetlock.IsKind(err, fleetlock.KindNotFound) {
		t.Fatalf("SteadyState with base lacking a slash = %v, want not_found", err)
	}
}

func asStatus(err error, se **fleetlock.StatusError) bool {
	e, ok := err.(*fleetlock.StatusError)
	*se = e
	return ok
}

// TestProbes: the probes and metrics are served by Probes alone, and the
// FleetLock handler answers them 404 in FleetLock's JSON.
func TestProbes(t *testing.T) {
	var ready error = io.EOF
	registry := prometheus.NewRegistry()
	cfg := Config{Ready: func() error { return ready }, Registry: registry}
	probes := httptest.NewServer(Probes(cfg))
	defer probes.Close()
	fleet := httptest.NewServer(Handler(&decider{}, cfg, slog.New(slog.DiscardHandler)))
	defer fleet.Close()
	if err := (&fleetlock.Client{BaseURL: fleet.URL + "/"}).SteadyState(context.Background(), fleetlock.ClientParams{ID: "a", Group: "g"}); err == nil {
		t.Fatal("steady-state before ready: 200, want 503")
	}

	for _, tt := range []struct {
		name     string
		url      string
		ready    error
		want     int
		contains string
	}{
		{"readyz before ready", probes.URL + "/readyz", io.EOF, 503, "not ready: EOF"},
		{"readyz", probes.URL + "/readyz", nil, 200, "ok"},
		{"healthz while not ready", probes.URL + "/healthz", io.EOF, 200, "ok"},
		{"metrics", probes.URL + "/metrics", nil, 200, "rebootmanager_fleetlock_request_duration_seconds"},
		{"no FleetLock on probes", probes.URL + "/v1/pre-reboot", nil, 404, ""},
		{"no healthz on FleetLock", fleet.URL + "/healthz", nil, 404, `"kind":"not_found"`},
		{"no metrics on FleetLock", fleet.URL + "/metrics", nil, 404, `"kind":"not_found"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ready = tt.ready
			resp, err := http.Get(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.want || !strings.Contains(string(body), tt.contains) {
				t.Errorf("GET %s = %d %q, want %d with %q", tt.url, resp.StatusCode, body, tt.want, tt.contains)
			}
		})
	}
}

// TestPresented: the secret a request carries, however a client sends it;
// the coordinator decides what it must be.
func TestPresented(t *testing.T) {
	tests := []struct {
		name   string
		header string
		url    string
		want   string
	}{
		{"none", "", "http://arbiter/", ""},
		{"bearer", "Bearer s3cret", "http://arbiter/", "s3cret"},
		{"basic password, as Zincati sends https://node:SECRET@host/", "", "http://node-1:s3cret@arbiter/", "s3cret"},
		{"basic password without a user", "", "http://:s3cret@arbiter/", "s3cret"},
		{"basic user name alone", "", "http://s3cret@arbiter/", "s3cret"},
		{"malformed basic", "Basic !!!not-base64", "http://arbiter/", ""},
		{"another scheme", "Digest x", "http://arbiter/", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, tt.url, nil)
			if tt.header != "" {
				req.Header.Set("Authorization", tt.header)
			}
			if u := req.URL.User; u != nil {
				pass, _ := u.Password()
				req.SetBasicAuth(u.Username(), pass)
			}
			if got := presented(req); got != tt.want {
				t.Fatalf("presented = %q, want %q", got, tt.want)
			}
		})
	}
}
