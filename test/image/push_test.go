package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// checkPush pushes the built layouts through the command line to an
// in-process registry that demands a password, as the release workflow
// does to ghcr.io: credentials come from $DOCKER_CONFIG/config.json. It
// then pulls each index back, validates every blob and compares digests.
func checkPush(t *testing.T, out string, res []built) {
	const user, password = "ci", "s3cret"
	var pushes atomic.Int32
	handler := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != password {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return
		}
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/") {
			pushes.Add(1)
		}
		handler.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	reg := host + "/team"
	version := testMeta().version

	dockerConfig := func(t *testing.T, auths string) {
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, "config.json"), `{"auths": {%s}}`, auths)
		t.Setenv("DOCKER_CONFIG", dir)
	}
	good := `"` + host + `": {"auth": "` + base64.StdEncoding.EncodeToString([]byte(user+":"+password)) + `"}`
	bad := `"` + host + `": {"auth": "` + base64.StdEncoding.EncodeToString([]byte(user+":wrong")) + `"}`
	for _, tc := range []struct {
		name     string
		auths    string
		version  string
		wantCode int
		wantErr  string
	}{
		{name: "no credentials", auths: "", version: version, wantCode: 1, wantErr: "the registry answered 401 Unauthorized: log in to " + host + " first (docker login " + host + ", or its auths in $DOCKER_CONFIG/config.json"},
		{name: "wrong password", auths: bad, version: version, wantCode: 1, wantErr: "the registry answered 401 Unauthorized: log in to " + host + " first (docker login " + host + ", or its auths in $DOCKER_CONFIG/config.json"},
		{name: "a version not built", auths: good, version: "v0-not-built", wantCode: 1, wantErr: "holds version " + version + ", not v0-not-built: run make images VERSION=v0-not-built"},
		{name: "credentials from DOCKER_CONFIG", auths: good, version: version, wantCode: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dockerConfig(t, tc.auths)
			before := pushes.Load()
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), []string{"push", "-images", out, "-registry", reg, "-version", tc.version}, &stdout, &stderr)
			if code != tc.wantCode {
				t.Fatalf("exit status %d, want %d:\n%s", code, tc.wantCode, stderr.String())
			}
			if tc.wantCode != 0 {
				if !strings.Contains(stderr.String(), tc.wantErr) || strings.Count(stderr.String(), "\n") != 1 {
					t.Errorf("stderr %q is not one line saying %q", stderr.String(), tc.wantErr)
				}
				if n := pushes.Load() - before; n != 0 {
					t.Errorf("%d manifests were pushed", n)
				}
				return
			}
			// Two indexes and their four manifests.
			if n := pushes.Load() - before; n != 6 {
				t.Errorf("%d manifests pushed, want 6", n)
			}
			var want strings.Builder
			for _, b := range res {
				want.WriteString(reg + "/" + b.name + ":" + version + "@" + b.digest.String() + "\n")
			}
			if stdout.String() != want.String() {
				t.Errorf("stdout:\n%s\nwant:\n%s", stdout.String(), want.String())
			}
			for _, b := range res {
				tag, err := name.NewTag(reg+"/"+b.name+":"+version, name.StrictValidation)
				must(t, err, "parse the tag")
				idx, err := remote.Index(tag, remote.WithAuthFromKeychain(authn.DefaultKeychain))
				must(t, err, "pull "+tag.String())
				if got, _ := idx.Digest(); got != b.digest {
					t.Errorf("%s is %s, built %s", tag, got, b.digest)
				}
				if err := validate.Index(idx); err != nil {
					t.Errorf("validate the pulled %s: %v", tag, err)
				}
				m, err := idx.IndexManifest()
				must(t, err, "read the pulled index")
				for i, d := range m.Manifests {
					img, err := remote.Image(tag.Digest(d.Digest.String()), remote.WithAuthFromKeychain(authn.DefaultKeychain))
					must(t, err, "pull "+d.Digest.String())
					got, _ := img.ConfigName()
					if wantCfg, _ := b.images[i].ConfigName(); got != wantCfg {
						t.Errorf("%s %s: config %s, built %s", tag, d.Platform, got, wantCfg)
					}
				}
			}
			// What a node does: containerd pulls both platforms of each
			// index, with the password, and runs the amd64 image.
			c := startContainerd(t)
			for _, b := range res {
				ref := reg + "/" + b.name + ":" + version
				c.mustCtr(t, "images", "pull", "--plain-http", "--user", user+":"+password, "--all-platforms", ref)
				fields := strings.Fields(lineWith(c.mustCtr(t, "images", "ls"), ref))
				if len(fields) < 6 || fields[2] != b.digest.String() || fields[5] != "linux/amd64,linux/arm64" {
					t.Errorf("containerd pulled %q, want digest %s for linux/amd64,linux/arm64", fields, b.digest)
				}
				out := c.mustCtr(t, append(append([]string{"run", "--rm", "--runc-root", filepath.Join(c.dir, "runc")}, deployOpts()...),
					ref, "rm-pulled-"+b.name, "/"+b.name, "--help")...)
				if !strings.Contains(out, b.name+": ") {
					t.Errorf("%s --help printed:\n%s", ref, out)
				}
			}
		})
	}
}

// checkOverlay renders deploy/ through the overlay with the kubectl that
// `make manifests` uses (test/cluster/build.sh's), and checks that both
// workloads name the registry's images at the version, and nothing else
// is changed.
func checkOverlay(t *testing.T) {
	kubectl := filepath.Join(kubectlDir(t), "kubectl")
	render := func(t *testing.T, dir string) string {
		t.Helper()
		out, err := exec.Command(kubectl, "kustomize", dir).Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr)
		}
		return string(out)
	}
	plain := render(t, filepath.Join(repoRoot, "deploy"))
	imageLine := regexp.MustCompile(`(?m)^\s*image: (\S+)$`)
	images := func(s string) []string {
		var out []string
		for _, m := range imageLine.FindAllStringSubmatch(s, -1) {
			out = append(out, m[1])
		}
		return out
	}
	if got := strings.Join(images(plain), " "); got != "reboot-manager/arbiter:latest reboot-manager/agent:latest" {
		t.Fatalf("deploy/ renders images %q, want reboot-manager/arbiter:latest and reboot-manager/agent:latest", got)
	}
	for _, tc := range []struct {
		name, registry, version string
		want                    []string
	}{
		{"registry", "ghcr.io/example", "v1.2.3", []string{"ghcr.io/example/arbiter:v1.2.3", "ghcr.io/example/agent:v1.2.3"}},
		{"registry with a port and path", "localhost:5000/a/b", "0.1.0-3-gabcdef0-dirty", []string{"localhost:5000/a/b/arbiter:0.1.0-3-gabcdef0-dirty", "localhost:5000/a/b/agent:0.1.0-3-gabcdef0-dirty"}},
		{"no registry", "", "abc1234", []string{"reboot-manager/arbiter:abc1234", "reboot-manager/agent:abc1234"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "overlay")
			args := []string{"overlay", "-deploy", filepath.Join(repoRoot, "deploy"), "-out", dir, "-version", tc.version}
			if tc.registry != "" {
				args = append(args, "-registry", tc.registry)
			}
			var stdout, stderr bytes.Buffer
			if code := run(context.Background(), args, &stdout, &stderr); code != 0 {
				t.Fatalf("overlay: exit %d:\n%s", code, stderr.String())
			}
			got := render(t, dir)
			if g := strings.Join(images(got), " "); g != strings.Join(tc.want, " ") {
				t.Errorf("images %q, want %q", g, tc.want)
			}
			// Apart from the image lines, the output is deploy/'s.
			if a, b := imageLine.ReplaceAllString(got, ""), imageLine.ReplaceAllString(plain, ""); a != b {
				t.Errorf("the overlay changed more than the images")
			}
		})
	}
}

// kubectlDir returns the directory of the local plane's binaries, built
// (or found in the cache) by test/cluster/build.sh.
func kubectlDir(t *testing.T) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(repoRoot, "test", "cluster", "build.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("test/cluster/build.sh (the kubectl of make manifests): %v", err)
	}
	return strings.TrimSpace(string(out))
}
