package envflag

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		wantAddr string
		wantWait time.Duration
		wantErr  string
	}{
		{"defaults", nil, nil, ":8080", time.Minute, ""},
		{"env", nil, map[string]string{"ARBITER_LISTEN_ADDRESS": ":9", "ARBITER_MAX_WAIT": "2s"}, ":9", 2 * time.Second, ""},
		{"flag beats env", []string{"-listen-address=:1"}, map[string]string{"ARBITER_LISTEN_ADDRESS": ":9"}, ":1", time.Minute, ""},
		{"bad env", nil, map[string]string{"ARBITER_MAX_WAIT": "soon"}, "", 0, `invalid value "soon" for ARBITER_MAX_WAIT`},
		{"bad flag", []string{"-max-wait=soon"}, nil, "", 0, "invalid value"},
		{"stray argument", []string{"serve"}, nil, "", 0, `unexpected argument "serve"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("arbiter", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			addr := fs.String("listen-address", ":8080", "")
			wait := fs.Duration("max-wait", time.Minute, "")
			err := Parse(fs, "ARBITER", tt.args, func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse() error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *addr != tt.wantAddr || *wait != tt.wantWait {
				t.Errorf("got %q %v, want %q %v", *addr, *wait, tt.wantAddr, tt.wantWait)
			}
		})
	}
}
