package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDockerfiles checks that the Dockerfiles, for people with an engine,
// build what `make images` builds: every base pinned by digest, the same
// entrypoint and user.
func TestDockerfiles(t *testing.T) {
	from := regexp.MustCompile(`^FROM (\S+)`)
	pinned := regexp.MustCompile(`^[a-z0-9./-]+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}$`)
	for _, p := range programs() {
		t.Run(p.name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile."+p.name))
			if err != nil {
				t.Fatal(err)
			}
			var froms, users, entrypoints []string
			for _, line := range strings.Split(string(b), "\n") {
				switch {
				case from.MatchString(line):
					froms = append(froms, from.FindStringSubmatch(line)[1])
				case strings.HasPrefix(line, "USER "):
					users = append(users, strings.TrimPrefix(line, "USER "))
				case strings.HasPrefix(line, "ENTRYPOINT "):
					entrypoints = append(entrypoints, strings.TrimPrefix(line, "ENTRYPOINT "))
				}
			}
			if len(froms) != 2 {
				t.Errorf("%d FROM lines, want a build stage and a base", len(froms))
			}
			for _, f := range froms {
				if !pinned.MatchString(f) {
					t.Errorf("FROM %s is not pinned as image:tag@sha256:digest", f)
				}
			}
			if len(users) != 1 || users[0] != p.user {
				t.Errorf("USER %q, want %q", users, p.user)
			}
			if want := `["/` + p.name + `"]`; len(entrypoints) != 1 || entrypoints[0] != want {
				t.Errorf("ENTRYPOINT %q, want %s", entrypoints, want)
			}
		})
	}
}
