package systemd

import "testing"

func TestFieldName(t *testing.T) {
	tests := map[string]string{
		"node": "NODE", "base_url": "BASE_URL", "changed": "CHANGED", "http.status": "HTTP_STATUS",
		"_private": "PRIVATE", "9lives": "LIVES", "": "FIELD", "ünï": "N_",
	}
	for in, want := range tests {
		if got := FieldName(in); got != want {
			t.Errorf("FieldName(%q) = %q, want %q", in, got, want)
		}
	}
}
