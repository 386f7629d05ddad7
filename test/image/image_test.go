package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// repoRoot is the product module, two levels up from this one.
const repoRoot = "../.."

// testBinaries returns a directory with the static binaries for linux/amd64
// and linux/arm64: $IMAGE_TEST_BIN when set (make tools-test passes the
// Makefile's bin/, built by `make binaries`), or a build of ../../cmd/...
// with the Makefile's flags.
func testBinaries(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("IMAGE_TEST_BIN"); dir != "" {
		return dir
	}
	dir := t.TempDir()
	for _, arch := range []string{"amd64", "arm64"} {
		cmd := exec.Command("go", "build", "-C", repoRoot, "-trimpath", "-ldflags", "-s -w",
			"-o", filepath.Join(dir, "linux_"+arch)+"/", "./cmd/arbiter", "./cmd/agent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build the binaries for linux/%s: %v\n%s", arch, err, out)
		}
	}
	return dir
}

// testMeta is the metadata of the test builds.
func testMeta() metadata {
	return metadata{
		version:  "v9.8.7-test",
		revision: "0123456789abcdef0123456789abcdef01234567",
		source:   "https://example.org/reboot-manager",
		created:  time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	}
}

// buildForTest builds both images for both platforms into a new directory.
func buildForTest(t *testing.T, binDir string) (string, []built) {
	t.Helper()
	out := t.TempDir()
	platforms, err := parsePlatforms("linux/amd64,linux/arm64")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	res, err := build(context.Background(), slog.New(slog.DiscardHandler), buildOptions{binDir: binDir, outDir: out, platforms: platforms, meta: testMeta()})
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	t.Logf("built %d images in %v", 2*len(res), time.Since(start).Round(time.Millisecond))
	return out, res
}

// TestImages builds both images for both platforms and checks them: their
// configs and layers, the index and the OCI layout, the docker tarball, that
// a second build gives the same digests, the amd64 images run in containerd
// and runc, and a push to a registry.
func TestImages(t *testing.T) {
	binDir := testBinaries(t)
	out, res := buildForTest(t, binDir)
	if len(res) != 2 || res[0].name != "arbiter" || res[1].name != "agent" {
		t.Fatalf("built %v, want arbiter and agent", res)
	}
	t.Run("Config", func(t *testing.T) { checkConfigs(t, binDir, res) })
	t.Run("Index", func(t *testing.T) { checkIndexes(t, out, res) })
	t.Run("Tarball", func(t *testing.T) { checkTarballs(t, res) })
	t.Run("Reproducible", func(t *testing.T) {
		_, again := buildForTest(t, binDir)
		for i := range res {
			if again[i].digest != res[i].digest {
				t.Errorf("%s: a second build gave index %s, the first %s", res[i].name, again[i].digest, res[i].digest)
			}
		}
	})
	t.Run("Runtime", func(t *testing.T) { checkRuntime(t, res) })
	t.Run("Push", func(t *testing.T) { checkPush(t, out, res) })
	t.Run("Overlay", func(t *testing.T) { checkOverlay(t) })
}

// deployUser reads runAsUser from the deploy/ manifest of program: the
// image must run as the user the manifest expects.
func deployUser(t *testing.T, program string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "deploy", program+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*runAsUser:\s*(\d+)\s*$`).FindAllSubmatch(b, -1)
	if len(m) != 1 {
		t.Fatalf("deploy/%s.yaml has %d runAsUser lines, want 1", program, len(m))
	}
	return string(m[0][1])
}

func checkConfigs(t *testing.T, binDir string, res []built) {
	meta := testMeta()
	want := map[string]struct {
		user  string
		ports []string
	}{
		"arbiter": {"65532:65532", []string{"8080/tcp", "8081/tcp"}},
		"agent":   {"0:0", nil},
	}
	for _, b := range res {
		uid, _, _ := strings.Cut(want[b.name].user, ":")
		if got := deployUser(t, b.name); got != uid {
			t.Errorf("deploy/%s.yaml runs as %s, the image as %s", b.name, got, want[b.name].user)
		}
		for i, arch := range []string{"amd64", "arm64"} {
			img := b.images[i]
			t.Run(b.name+"/"+arch, func(t *testing.T) {
				if err := validate.Image(img); err != nil {
					t.Errorf("validate: %v", err)
				}
				mt, err := img.MediaType()
				if err != nil || mt != types.OCIManifestSchema1 {
					t.Errorf("manifest media type %q (%v), want %q", mt, err, types.OCIManifestSchema1)
				}
				cf, err := img.ConfigFile()
				if err != nil {
					t.Fatal(err)
				}
				if cf.OS != "linux" || cf.Architecture != arch {
					t.Errorf("platform %s/%s, want linux/%s", cf.OS, cf.Architecture, arch)
				}
				if !slices.Equal(cf.Config.Entrypoint, []string{"/" + b.name}) || len(cf.Config.Cmd) != 0 {
					t.Errorf("entrypoint %q cmd %q, want [/%s] and none", cf.Config.Entrypoint, cf.Config.Cmd, b.name)
				}
				if cf.Config.User != want[b.name].user {
					t.Errorf("user %q, want %q", cf.Config.User, want[b.name].user)
				}
				var ports []string
				for p := range cf.Config.ExposedPorts {
					ports = append(ports, p)
				}
				slices.Sort(ports)
				if !slices.Equal(ports, want[b.name].ports) {
					t.Errorf("exposed ports %q, want %q", ports, want[b.name].ports)
				}
				wantLabels := map[string]string{
					"org.opencontainers.image.source":   meta.source,
					"org.opencontainers.image.version":  meta.version,
					"org.opencontainers.image.revision": meta.revision,
					"org.opencontainers.image.title":    "reboot-manager " + b.name,
					"org.opencontainers.image.created":  "2026-01-02T03:04:05Z",
				}
				for k, v := range wantLabels {
					if cf.Config.Labels[k] != v {
						t.Errorf("label %s = %q, want %q", k, cf.Config.Labels[k], v)
					}
				}
				m, err := img.Manifest()
				if err != nil {
					t.Fatal(err)
				}
				if m.Annotations[labelRevision] != meta.revision {
					t.Errorf("manifest annotations %v lack the revision", m.Annotations)
				}
				if !cf.Created.Time.Equal(meta.created) {
					t.Errorf("created %v, want %v", cf.Created.Time, meta.created)
				}
				checkLayer(t, img, b.name, filepath.Join(binDir, "linux_"+arch, b.name), arch)
			})
		}
	}
}

// checkLayer checks that img has one layer holding the binary at path,
// byte for byte, as /<program> mode 0755 owned by root, a static ELF
// executable for arch, beside /etc/passwd and /etc/group.
func checkLayer(t *testing.T, img v1.Image, program, path, arch string) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%d layers (%v), want 1", len(layers), err)
	}
	if mt, _ := layers[0].MediaType(); mt != types.OCILayer {
		t.Errorf("layer media type %q, want %q", mt, types.OCILayer)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var names []string
	var binary []byte
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read the layer: %v", err)
		}
		names = append(names, h.Name)
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s is owned by %d:%d, want root", h.Name, h.Uid, h.Gid)
		}
		if h.Name == program {
			if h.Mode != 0o755 {
				t.Errorf("/%s has mode %o, want 755", program, h.Mode)
			}
			if binary, err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		}
		if h.Name == "etc/passwd" {
			b, _ := io.ReadAll(tr)
			if !strings.Contains(string(b), "nonroot:x:65532:65532:") {
				t.Errorf("/etc/passwd has no nonroot 65532:\n%s", b)
			}
		}
	}
	if want := []string{"etc/", "etc/group", "etc/passwd", program}; !slices.Equal(names, want) {
		t.Errorf("layer holds %q, want %q", names, want)
	}
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(binary) != sha256.Sum256(src) {
		t.Errorf("/%s (%d bytes) is not %s (%d bytes)", program, len(binary), path, len(src))
	}
	f, err := elf.NewFile(bytes.NewReader(binary))
	if err != nil {
		t.Fatalf("/%s is no ELF file: %v", program, err)
	}
	if f.Machine != machines()[arch] || f.Type != elf.ET_EXEC {
		t.Errorf("/%s is %v %v, want an %v executable", program, f.Machine, f.Type, machines()[arch])
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("/%s is dynamically linked", program)
		}
	}
}

func checkIndexes(t *testing.T, out string, res []built) {
	for _, b := range res {
		t.Run(b.name, func(t *testing.T) {
			if err := validate.Index(b.index); err != nil {
				t.Errorf("validate: %v", err)
			}
			m, err := b.index.IndexManifest()
			if err != nil {
				t.Fatal(err)
			}
			if m.MediaType != types.OCIImageIndex {
				t.Errorf("index media type %q, want %q", m.MediaType, types.OCIImageIndex)
			}
			if m.Annotations[labelVersion] != testMeta().version || m.Annotations[labelSource] != testMeta().source {
				t.Errorf("index annotations %v lack the version and source", m.Annotations)
			}
			var platforms []string
			for i, d := range m.Manifests {
				platforms = append(platforms, d.Platform.String())
				want, err := b.images[i].Digest()
				if err != nil {
					t.Fatal(err)
				}
				if d.Digest != want || d.MediaType != types.OCIManifestSchema1 {
					t.Errorf("manifest %d is %s %s, want %s %s", i, d.MediaType, d.Digest, types.OCIManifestSchema1, want)
				}
			}
			if want := []string{"linux/amd64", "linux/arm64"}; !slices.Equal(platforms, want) {
				t.Errorf("index lists %q, want %q", platforms, want)
			}
			// The layout on disk names this index by version; read back
			// blob by blob, it validates and has the same digest.
			if b.layout != filepath.Join(out, b.name) {
				t.Errorf("layout at %s, want %s", b.layout, filepath.Join(out, b.name))
			}
			back, err := layoutIndex(b.layout, testMeta().version)
			if err != nil {
				t.Fatal(err)
			}
			if d, _ := back.Digest(); d != b.digest {
				t.Errorf("layout index %s, built %s", d, b.digest)
			}
			if err := validate.Index(back); err != nil {
				t.Errorf("validate the layout: %v", err)
			}
			if _, err := layoutIndex(b.layout, "v0-other"); err == nil || !strings.Contains(err.Error(), "holds version "+testMeta().version+", not v0-other") {
				t.Errorf("layoutIndex of another version: %v", err)
			}
		})
	}
}

// checkTarballs checks the docker-loadable tarballs: tagged
// reboot-manager/<name>:<version>, holding the amd64 image's config and
// layer.
func checkTarballs(t *testing.T, res []built) {
	for _, b := range res {
		t.Run(b.name, func(t *testing.T) {
			f, err := os.Open(b.tarball)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var manifest []tarball.Descriptor
			tr := tar.NewReader(f)
			for {
				h, err := tr.Next()
				if err != nil {
					t.Fatalf("no manifest.json in %s: %v", b.tarball, err)
				}
				if h.Name == "manifest.json" {
					if err := json.NewDecoder(tr).Decode(&manifest); err != nil {
						t.Fatal(err)
					}
					break
				}
			}
			want := "reboot-manager/" + b.name + ":" + testMeta().version
			if len(manifest) != 1 || !slices.Contains(manifest[0].RepoTags, want) {
				t.Fatalf("manifest.json %+v, want one image tagged %s", manifest, want)
			}
			tag, err := name.NewTag(want)
			if err != nil {
				t.Fatal(err)
			}
			img, err := tarball.ImageFromPath(b.tarball, &tag)
			if err != nil {
				t.Fatal(err)
			}
			if err := validate.Image(img); err != nil {
				t.Errorf("validate: %v", err)
			}
			got, err := img.ConfigName()
			if err != nil {
				t.Fatal(err)
			}
			if wantCfg, _ := b.images[0].ConfigName(); got != wantCfg {
				t.Errorf("tarball config %s, amd64 image config %s", got, wantCfg)
			}
			if cf, _ := img.ConfigFile(); cf.Architecture != "amd64" {
				t.Errorf("tarball architecture %q, want amd64", cf.Architecture)
			}
		})
	}
}

// must fails the test on err.
func must(t *testing.T, err error, doing string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", doing, err)
	}
}

// writeFile writes a file for the test, failing the test on error.
func writeFile(t *testing.T, path, format string, args ...any) {
	t.Helper()
	must(t, os.WriteFile(path, fmt.Appendf(nil, format, args...), 0o644), "write "+path)
}
