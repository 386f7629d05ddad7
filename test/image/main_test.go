package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCommandLine checks that a bad command line gets one line on stderr
// naming the mistake, and the right exit status, before any work is done.
func TestCommandLine(t *testing.T) {
	dir := t.TempDir()
	// A dynamically linked amd64 binary where a static one belongs, and the
	// same binary posing as arm64.
	host, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatalf("read /bin/true: %v", err)
	}
	for _, p := range []string{"dynamic/linux_amd64/arbiter", "wrongarch/linux_arm64/arbiter", "text/linux_amd64/arbiter"} {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		body := host
		if strings.HasPrefix(p, "text/") {
			body = []byte("#!/bin/sh\n")
		}
		if err := os.WriteFile(filepath.Join(dir, p), body, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "out")
	build := func(extra ...string) []string {
		return append([]string{"build", "-bin", dir, "-out", out, "-version", "v1.0.0", "-revision", "abc"}, extra...)
	}
	for _, tc := range []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"no command", nil, 2, "usage:"},
		{"unknown command", []string{"load"}, 2, `image load: unknown command "load"`},
		{"unknown flag", []string{"build", "-frobnicate"}, 2, "flag provided but not defined: -frobnicate"},
		{"stray argument", append(build(), "extra"), 2, `unexpected argument "extra"`},
		{"build without -bin", []string{"build", "-out", out, "-version", "v1", "-revision", "abc"}, 2, "-bin and -out are required"},
		{"build without -version", []string{"build", "-bin", dir, "-out", out, "-revision", "abc"}, 2, "-version is required"},
		{"build with a version that is no tag", []string{"build", "-bin", dir, "-out", out, "-version", "v1/2", "-revision", "abc"}, 2, `-version "v1/2" is not an image tag`},
		{"build with a version starting with -", []string{"build", "-bin", dir, "-out", out, "-version", "-dirty", "-revision", "abc"}, 2, `-version "-dirty" is not an image tag`},
		{"build without -revision", []string{"build", "-bin", dir, "-out", out, "-version", "v1"}, 2, "-revision is required"},
		{"build with a bad -created", build("-created", "yesterday"), 2, `-created "yesterday" is not an RFC 3339 time`},
		{"build with a bad -source", build("-source", "ftp://example.org/x"), 2, `-source "ftp://example.org/x" is not an http(s) URL`},
		{"build for 386", build("-platforms", "linux/386"), 2, `-platforms: "linux/386" is not one of linux/amd64, linux/arm64`},
		{"build for darwin", build("-platforms", "darwin/arm64"), 2, `"darwin/arm64" is not one of`},
		{"build a platform twice", build("-platforms", "linux/amd64,linux/amd64"), 2, `"linux/amd64" is listed twice`},
		{"single without -tag", []string{"single", "-binary", "x", "-out", "y"}, 2, "-binary, -tag and -out are required"},
		{"single with a bad tag", []string{"single", "-binary", "x", "-tag", "Bad:Name:x", "-out", "y"}, 2, "-tag:"},
		{"single from no binary", []string{"single", "-binary", filepath.Join(dir, "none"), "-tag", "t/pause:test", "-out", filepath.Join(dir, "p.tar")}, 1, "no such file or directory"},
		{"build with no binaries", build("-bin", filepath.Join(dir, "none")), 1, "no such file or directory"},
		{"build from a dynamic binary", build("-bin", filepath.Join(dir, "dynamic"), "-platforms", "linux/amd64"), 1, "is dynamically linked: build it with CGO_ENABLED=0"},
		{"build from another architecture's binary", build("-bin", filepath.Join(dir, "wrongarch"), "-platforms", "linux/arm64"), 1, "is a EM_X86_64 binary, not linux/arm64"},
		{"build from a script", build("-bin", filepath.Join(dir, "text"), "-platforms", "linux/amd64"), 1, "text/linux_amd64/arbiter is not an ELF executable"},
		{"push without -registry", []string{"push", "-images", out, "-version", "v1"}, 2, "-registry is required"},
		{"push without -images", []string{"push", "-registry", "ghcr.io/you", "-version", "v1"}, 2, "-images is required"},
		{"push to a bare Docker Hub user", []string{"push", "-images", out, "-registry", "you", "-version", "v1"}, 2, `-registry "you" does not start with a registry host (for Docker Hub write docker.io/you)`},
		{"push to a registry with a trailing /", []string{"push", "-images", out, "-registry", "ghcr.io/you/", "-version", "v1"}, 2, "without a tag, digest or trailing /"},
		{"push to an upper-case repository", []string{"push", "-images", out, "-registry", "ghcr.io/You", "-version", "v1"}, 2, `-registry "ghcr.io/You"`},
		{"push with a bad version", []string{"push", "-images", out, "-registry", "ghcr.io/you", "-version", "1 2"}, 2, `-version "1 2" is not an image tag`},
		{"push before build", []string{"push", "-images", out, "-registry", "ghcr.io/you", "-version", "v1"}, 1, "(run make images first)"},
		{"overlay without -deploy", []string{"overlay", "-out", out, "-version", "v1"}, 2, "-deploy and -out are required"},
		{"overlay of no kustomization", []string{"overlay", "-deploy", dir, "-out", out, "-version", "v1"}, 1, "kustomization.yaml: no such file or directory"},
		{"overlay with a bad registry", []string{"overlay", "-deploy", dir, "-out", out, "-registry", "ghcr.io/a b", "-version", "v1"}, 2, `-registry "ghcr.io/a b"`},
		{"overlay with a bad version", []string{"overlay", "-deploy", dir, "-out", out, "-version", "x:y"}, 2, `-version "x:y" is not an image tag`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tc.args, &stdout, &stderr)
			if code != tc.wantCode {
				t.Errorf("exit status %d, want %d; stderr:\n%s", code, tc.wantCode, stderr.String())
			}
			msg := stderr.String()
			if !strings.Contains(msg, tc.wantErr) {
				t.Errorf("stderr %q does not say %q", msg, tc.wantErr)
			}
			if tc.args != nil && strings.Count(msg, "\n") != 1 {
				t.Errorf("stderr is not one line:\n%s", msg)
			}
			if stdout.Len() > 0 {
				t.Errorf("stdout %q, want nothing", stdout.String())
			}
		})
	}
}

// TestHelp checks that -h exits 0.
func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"help"}, {"build", "-h"}, {"push", "-h"}, {"overlay", "-h"}} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), args, &stdout, &stderr); code != 0 {
			t.Errorf("%q: exit status %d, want 0; stderr:\n%s", args, code, stderr.String())
		}
		if !strings.Contains(stdout.String()+stderr.String(), "-") {
			t.Errorf("%q printed no help", args)
		}
	}
}
