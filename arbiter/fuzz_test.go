package arbiter

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
)

// FuzzHandler: whatever the method, path, protocol header and body, the
// handler never panics, answers 200 only to a well-formed FleetLock POST,
// and answers everything else on the FleetLock endpoints with JSON
// {"kind","value"} of a known kind and that kind's status.
func FuzzHandler(f *testing.F) {
	f.Add("POST", "/v1/pre-reboot", "true", []byte(zincatiBody))
	f.Add("POST", "/v1/steady-state", "true", []byte(`{"client_params":{"id":"a","group":"g"}}`))
	f.Add("GET", "/v1/pre-reboot", "true", []byte(""))
	f.Add("POST", "/v1/pre-reboot/", "true", []byte(zincatiBody))
	f.Add("POST", "/v1/pre-reboot", "", []byte(zincatiBody))
	f.Add("POST", "/v1/pre-reboot", "true", []byte(`{"client_params":{"id":"a","group":"a b"}}`))
	f.Add("PUT", "/v1//steady-state", "TRUE", []byte("\x00"))
	h := Handler(&decider{}, Config{}, slog.New(slog.DiscardHandler))
	f.Fuzz(func(t *testing.T, method, path, header string, body []byte) {
		req, err := http.NewRequest(method, "http://arbiter"+path, bytes.NewReader(body))
		if err != nil {
			return // not a request any client could send
		}
		req.Header.Set(fleetlock.Header, header)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		endpoint := req.URL.Path == "/v1/pre-reboot" || req.URL.Path == "/v1/steady-state"
		if rec.Code >= 200 && rec.Code < 300 {
			if _, err := fleetlock.Decode(bytes.NewReader(body)); method != http.MethodPost || !endpoint || header != "true" || err != nil {
				t.Fatalf("%s %q header %q body %q answered %d", method, path, header, body, rec.Code)
			}
			return
		}
		if !endpoint && rec.Code == http.StatusNotFound && rec.Body.Len() == 0 {
			return
		}
		var fe fleetlock.Error
		if err := json.Unmarshal(rec.Body.Bytes(), &fe); err != nil || fe.Value == "" || !slices.Contains(fleetlock.Kinds, fe.Kind) {
			t.Fatalf("%s %q answered %d with %q, not a FleetLock error", method, path, rec.Code, rec.Body.String())
		}
		if fe.Kind.Status() != rec.Code {
			t.Fatalf("%s %q answered %d with kind %s (status %d)", method, path, rec.Code, fe.Kind, fe.Kind.Status())
		}
	})
}
