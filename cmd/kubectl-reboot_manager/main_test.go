package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestRun covers what needs no API server: usage errors are one line with
// exit 2, id prints the Zincati id, a bad machine id is one line with exit 1.
func TestRun(t *testing.T) {
	noEnv := func(string) (string, bool) { return "", false }
	tests := []struct {
		name       string
		args       []string
		env        map[string]string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"no command", nil, nil, 2, "", "no command"},
		{"unknown command", []string{"reboot"}, nil, 2, "", `unknown command "reboot"`},
		{"release without target", []string{"release"}, nil, 2, "", "release takes 1 argument(s), got 0"},
		{"status with extra word", []string{"status", "x"}, nil, 2, "", "status takes 0 argument(s), got 1"},
		{"pause without a group", []string{"pause"}, nil, 2, "", "pause takes groups, or --all, not both"},
		{"resume with groups and --all", []string{"resume", "g", "--all"}, nil, 2, "", "resume takes groups, or --all, not both"},
		{"--all on release", []string{"release", "n1", "--all"}, nil, 2, "", "--all goes with pause and resume only"},
		{"bad output", []string{"status", "-o", "yaml"}, nil, 2, "", "-o must be table or json"},
		{"bad output from the environment", []string{"status"}, map[string]string{"REBOOT_MANAGER_O": "wide"}, 2, "", "-o must be table or json"},
		{"unknown flag", []string{"status", "--bogus"}, nil, 2, "", "flag provided but not defined"},
		{"id", []string{"id", "5a3b2d7a4c9e4f1b8d6e0c2a1b3d5f7e"}, nil, 0, "c8aacf6bd5254aebb515dff045c41a81\n", ""},
		{"id with flags after", []string{"id", "5A3B2D7A-4C9E-4F1B-8D6E-0C2A1B3D5F7E", "-o", "json"}, nil, 0, "c8aacf6bd5254aebb515dff045c41a81\n", ""},
		{"help", []string{"-h"}, nil, 0, "", "release NODE|ID"},
		{"bad machine id", []string{"id", "nope"}, nil, 1, "", "want 32 hex digits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lookup := noEnv
			if tt.env != nil {
				lookup = func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok }
			}
			var out, errOut bytes.Buffer
			code := run(context.Background(), tt.args, &out, &errOut, lookup)
			if code != tt.wantCode || out.String() != tt.wantStdout || !strings.Contains(errOut.String(), tt.wantStderr) {
				t.Errorf("run(%q) = %d, stdout %q, stderr %q; want %d, %q, stderr containing %q",
					tt.args, code, out.String(), errOut.String(), tt.wantCode, tt.wantStdout, tt.wantStderr)
			}
			if tt.wantCode != 0 && strings.Count(errOut.String(), "\n") != 1 {
				t.Errorf("stderr is not one line: %q", errOut.String())
			}
		})
	}
}
