package fleetlock

import (
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    ClientParams
		wantErr string
	}{
		{"zincati pretty body", "{\n  \"client_params\": {\n    \"id\": \"abc\",\n    \"group\": \"default\"\n  }\n}", ClientParams{"abc", "default"}, ""},
		{"unknown fields tolerated", `{"client_params":{"id":"a","group":"g","x":1},"extra":true}`, ClientParams{"a", "g"}, ""},
		{"uppercase dotted group", `{"client_params":{"id":"a","group":"Group-A.1"}}`, ClientParams{"a", "Group-A.1"}, ""},
		{"leading dash group", `{"client_params":{"id":"a","group":"-"}}`, ClientParams{"a", "-"}, ""},
		{"empty body", ``, ClientParams{}, "not FleetLock JSON"},
		{"not json", `id=a&group=b`, ClientParams{}, "not FleetLock JSON"},
		{"no client_params", `{"id":"a"}`, ClientParams{}, `no "client_params"`},
		{"null client_params", `{"client_params":null}`, ClientParams{}, `no "client_params"`},
		{"missing id", `{"client_params":{"group":"g"}}`, ClientParams{}, "id is missing"},
		{"id wrong type", `{"client_params":{"id":5,"group":"g"}}`, ClientParams{}, "not FleetLock JSON"},
		{"missing group", `{"client_params":{"id":"a"}}`, ClientParams{}, "group is missing"},
		{"bad group", `{"client_params":{"id":"a","group":"a b"}}`, ClientParams{}, "does not match"},
		{"slash group", `{"client_params":{"id":"a","group":"a/b"}}`, ClientParams{}, "does not match"},
		{"long id", `{"client_params":{"id":"` + strings.Repeat("a", MaxIDLength+1) + `","group":"g"}}`, ClientParams{}, "longer than"},
		{"huge body", `{"client_params":{"id":"a","group":"g"},"pad":"` + strings.Repeat("x", MaxBodyBytes) + `"}`, ClientParams{}, "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode(strings.NewReader(tt.body))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Decode() error = %v, want one containing %q", err, tt.wantErr)
				}
				if KindOf(err) != KindBadRequest {
					t.Errorf("kind = %s, want bad_request", KindOf(err))
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode(): %v", err)
			}
			if got != tt.want {
				t.Errorf("Decode() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestKindStatusNeverSuccess(t *testing.T) {
	for _, k := range append(Kinds, Kind("something_new")) {
		if s := k.Status(); s < 400 || s > 599 {
			t.Errorf("%s.Status() = %d, want 4xx or 5xx: Zincati reboots on any 2xx", k, s)
		}
	}
}
