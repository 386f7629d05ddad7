package fleetlock

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// Client sends FleetLock requests the way Zincati does: a pretty-printed
// body, no Content-Type, the protocol header, and the operation path joined
// relative to the base URL (so a base with a path needs a trailing slash).
type Client struct {
	// BaseURL is the server's base, as in Zincati's updates.fleet_lock.base_url.
	BaseURL string
	// HTTP is the client to use; nil means one that never follows redirects.
	HTTP *http.Client
}

// PreReboot asks for a reboot slot. A nil error means the reboot is approved.
func (c *Client) PreReboot(ctx context.Context, p ClientParams) error {
	return c.do(ctx, PreRebootPath, p)
}

// SteadyState reports that the node is up and releases its slot if it holds one.
func (c *Client) SteadyState(ctx context.Context, p ClientParams) error {
	return c.do(ctx, SteadyStatePath, p)
}

// StatusError is a non-2xx reply. It wraps the decoded *Error when the body
// was FleetLock JSON.
type StatusError struct {
	Status int
	Body   string
	Err    *Error
}

func (e *StatusError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("HTTP %d: %v", e.Status, e.Err)
	}
	return fmt.Sprintf("HTTP %d: %s", e.Status, truncate(e.Body, 200))
}

// Unwrap returns the FleetLock error, if any.
func (e *StatusError) Unwrap() error {
	if e.Err == nil {
		return nil
	}
	return e.Err
}

func (c *Client) do(ctx context.Context, path string, p ClientParams) error {
	base, err := url.Parse(c.BaseURL)
	if err != nil {
		return fmt.Errorf("parse the base URL: %w", redactErr(err))
	}
	target := base.ResolveReference(&url.URL{Path: path})
	body, err := json.MarshalIndent(Request{ClientParams: p}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode request: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target.String(), bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header.Set(Header, "true")
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s://%s%s: %w", target.Scheme, target.Host, target.Path, redactErr(err))
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, MaxBodyBytes))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	se := &StatusError{Status: resp.StatusCode, Body: string(raw)}
	var fe Error
	if json.Unmarshal(raw, &fe) == nil && fe.Kind != "" {
		se.Err = &fe
	}
	return se
}

// IsKind reports whether err is a FleetLock error of the given kind.
func IsKind(err error, kind Kind) bool {
	var fe *Error
	return errors.As(err, &fe) && fe.Kind == kind
}

// redactErr keeps a URL's user info, which may hold a credential, out of
// an error: *url.Error prints the URL, and hides only a password.
func redactErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil {
			u.User = nil
			return &url.Error{Op: ue.Op, URL: u.String(), Err: ue.Err}
		}
		return &url.Error{Op: ue.Op, URL: "(a URL)", Err: ue.Err}
	}
	return err
}
