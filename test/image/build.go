package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The OCI annotation and label keys the images carry.
const (
	labelSource      = "org.opencontainers.image.source"
	labelVersion     = "org.opencontainers.image.version"
	labelRevision    = "org.opencontainers.image.revision"
	labelTitle       = "org.opencontainers.image.title"
	labelDescription = "org.opencontainers.image.description"
	labelCreated     = "org.opencontainers.image.created"
	// refName names an image in an OCI layout's index.json.
	refName = "org.opencontainers.image.ref.name"
)

// nonRoot is the arbiter's user: distroless's nonroot, and the runAsUser of
// deploy/arbiter.yaml.
const nonRoot = "65532:65532"

// program is one of the project's commands and how its image runs it.
type program struct {
	// name is the command (cmd/<name>), the binary's name in bin/<os>_<arch>/,
	// the image's repository name and the path of its entrypoint (/<name>).
	name string
	// user is the image's USER, uid:gid.
	user string
	// ports are the image's exposed ports.
	ports       []string
	description string
}

// programs are the images this tool builds.
func programs() []program {
	return []program{
		{
			name:        "arbiter",
			user:        nonRoot,
			ports:       []string{"8080/tcp", "8081/tcp"},
			description: "reboot-manager's FleetLock server: drains a node before Zincati reboots it",
		},
		{
			// Root: systemd's D-Bus policy lets only root restart units
			// (deploy/agent.yaml says runAsUser: 0 for the same reason).
			name:        "agent",
			user:        "0:0",
			description: "reboot-manager's node agent: points Zincati at the arbiter",
		},
	}
}

// metadata is what every image of one build is labelled with.
type metadata struct {
	version  string
	revision string
	source   string
	created  time.Time
}

// labels returns the OCI labels (and annotations) of program p's image.
func (m metadata) labels(p program) map[string]string {
	return map[string]string{
		labelSource:      m.source,
		labelVersion:     m.version,
		labelRevision:    m.revision,
		labelTitle:       "reboot-manager " + p.name,
		labelDescription: p.description,
		labelCreated:     m.created.UTC().Format(time.RFC3339),
	}
}

// buildOptions is what `build` is given.
type buildOptions struct {
	// binDir holds the static binaries, as binDir/<os>_<arch>/<name>.
	binDir string
	// outDir gets an OCI layout per image (outDir/<name>/) and a
	// docker-loadable tarball of its linux/amd64 image
	// (outDir/<name>-linux-amd64.tar).
	outDir    string
	platforms []v1.Platform
	meta      metadata
}

// built is one program's result.
type built struct {
	name string
	// index is the multi-arch image index; digest is its digest.
	index  v1.ImageIndex
	digest v1.Hash
	// images are the per-platform images, in the order of the platforms.
	images []v1.Image
	// layout and tarball are the files written ("" when no linux/amd64).
	layout, tarball string
}

// tagPattern is what a registry accepts as a tag (the distribution spec).
var tagPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// checkVersion reports whether v can be an image tag.
func checkVersion(v string) error {
	if v == "" {
		return errors.New("-version is required")
	}
	if !tagPattern.MatchString(v) {
		return fmt.Errorf("-version %q is not an image tag (letters, digits, _ . -, not starting with . or -, at most 128)", v)
	}
	return nil
}

// checkSource reports whether s is an http(s) URL.
func checkSource(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("-source %q is not an http(s) URL", s)
	}
	return nil
}

// machines are the ELF machines of the platforms this tool builds.
func machines() map[string]elf.Machine {
	return map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
}

// parsePlatforms parses a comma-separated list such as linux/amd64,linux/arm64.
func parsePlatforms(s string) ([]v1.Platform, error) {
	var out []v1.Platform
	seen := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		goos, arch, ok := strings.Cut(f, "/")
		if _, known := machines()[arch]; !ok || goos != "linux" || !known {
			return nil, fmt.Errorf("-platforms: %q is not one of linux/amd64, linux/arm64", f)
		}
		if seen[f] {
			return nil, fmt.Errorf("-platforms: %q is listed twice", f)
		}
		seen[f] = true
		out = append(out, v1.Platform{OS: goos, Architecture: arch})
	}
	return out, nil
}

// checkBinary reports whether the file at path is a static ELF executable
// for platform p: a binary built with cgo, or for another GOARCH, would not
// run on an empty base.
func checkBinary(path string, p v1.Platform) error {
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("read the binary: %w", err)
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s is not an ELF executable: %v", path, err)
	}
	defer f.Close()
	if want := machines()[p.Architecture]; f.Machine != want {
		return fmt.Errorf("%s is a %s binary, not %s/%s", path, f.Machine, p.OS, p.Architecture)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked: build it with CGO_ENABLED=0", path)
		}
	}
	return nil
}

// layerTar returns the gzipped tar of an image's only layer: the binary at
// /<name> (mode 0755, so any uid may run it) and an /etc/passwd and
// /etc/group that name root and nonroot (65532), like distroless's. Every
// entry is owned by root and dated created, so the same inputs give the same
// bytes.
func layerTar(name string, binary []byte, created time.Time) ([]byte, error) {
	files := []struct {
		name string
		mode int64
		body []byte
		dir  bool
	}{
		{name: "etc/", mode: 0o755, dir: true},
		{name: "etc/group", mode: 0o644, body: []byte("root:x:0:\nnonroot:x:65532:\n")},
		{name: "etc/passwd", mode: 0o644, body: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		{name: name, mode: 0o755, body: binary},
	}
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.DefaultCompression)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(zw)
	for _, f := range files {
		h := &tar.Header{
			Name:    f.name,
			Mode:    f.mode,
			ModTime: created,
			Format:  tar.FormatPAX,
		}
		if f.dir {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(f.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("write %s to the layer: %w", f.name, err)
		}
		if _, err := tw.Write(f.body); err != nil {
			return nil, fmt.Errorf("write %s to the layer: %w", f.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("close the layer's tar: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("compress the layer: %w", err)
	}
	return buf.Bytes(), nil
}

// buildImage builds program p's image for platform plat from the binary at
// path: an empty base, one layer, the entrypoint /<name>, p's user, ports
// and labels.
func buildImage(p program, plat v1.Platform, path string, meta metadata) (v1.Image, error) {
	if err := checkBinary(path, plat); err != nil {
		return nil, err
	}
	binary, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	gz, err := layerTar(p.name, binary, meta.created)
	if err != nil {
		return nil, fmt.Errorf("build the layer of %s: %w", path, err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(gz)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("make a layer of %s: %w", path, err)
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History: v1.History{
			Created:   v1.Time{Time: meta.created},
			CreatedBy: "reboot-manager test/image: /" + p.name + " built with CGO_ENABLED=0 -trimpath",
		},
	})
	if err != nil {
		return nil, fmt.Errorf("add the layer of %s: %w", path, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read the config of %s's image: %w", p.name, err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = plat.OS, plat.Architecture, plat.Variant
	cf.Created = v1.Time{Time: meta.created}
	cf.Author = meta.source
	labels := meta.labels(p)
	cf.Config = v1.Config{
		Entrypoint: []string{"/" + p.name},
		User:       p.user,
		WorkingDir: "/",
		Labels:     labels,
	}
	if len(p.ports) > 0 {
		cf.Config.ExposedPorts = map[string]struct{}{}
		for _, port := range p.ports {
			cf.Config.ExposedPorts[port] = struct{}{}
		}
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("set the config of %s's image: %w", p.name, err)
	}
	return mutate.Annotations(img, labels).(v1.Image), nil
}

// buildIndex builds program p's image for every platform and the index that
// lists them.
func buildIndex(p program, binDir string, platforms []v1.Platform, meta metadata) (v1.ImageIndex, error) {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, plat := range platforms {
		path := filepath.Join(binDir, plat.OS+"_"+plat.Architecture, p.name)
		img, err := buildImage(p, plat, path, meta)
		if err != nil {
			return nil, err
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &plat},
		})
	}
	return mutate.Annotations(idx, meta.labels(p)).(v1.ImageIndex), nil
}

// writeLayout writes idx as an OCI layout at dir, replacing what was there,
// with index.json naming it by version.
func writeLayout(dir string, idx v1.ImageIndex, version string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove the old layout %s: %w", dir, err)
	}
	l, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("start the layout %s: %w", dir, err)
	}
	if err := l.AppendIndex(idx, layout.WithAnnotations(map[string]string{refName: version})); err != nil {
		return fmt.Errorf("write the layout %s: %w", dir, err)
	}
	return nil
}

// readLayout reads back the index that the layout at dir names version,
// and its images in the index's order.
func readLayout(dir, version string) (v1.ImageIndex, []v1.Image, error) {
	idx, err := layoutIndex(dir, version)
	if err != nil {
		return nil, nil, err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, nil, fmt.Errorf("read the index in %s: %w", dir, err)
	}
	var images []v1.Image
	for _, d := range m.Manifests {
		img, err := idx.Image(d.Digest)
		if err != nil {
			return nil, nil, fmt.Errorf("read the image %s in %s: %w", d.Digest, dir, err)
		}
		images = append(images, img)
	}
	return idx, images, nil
}

// localTag is the name the docker-loadable tarballs carry: the image names
// of deploy/, at the build's version (what `make manifests VERSION=…`
// without REGISTRY renders).
func localTag(program, version string) (name.Tag, error) {
	return name.NewTag(defaultPrefix + "/" + program + ":" + version)
}

// build builds every program's images and writes their layouts and
// tarballs under opts.outDir.
func build(ctx context.Context, log *slog.Logger, opts buildOptions) ([]built, error) {
	if err := os.MkdirAll(opts.outDir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", opts.outDir, err)
	}
	var out []built
	for _, p := range programs() {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		start := time.Now()
		idx, err := buildIndex(p, opts.binDir, opts.platforms, opts.meta)
		if err != nil {
			return nil, fmt.Errorf("build the %s image: %w", p.name, err)
		}
		b := built{name: p.name, layout: filepath.Join(opts.outDir, p.name)}
		if err := writeLayout(b.layout, idx, opts.meta.version); err != nil {
			return nil, err
		}
		// From here on, the images are read back from the layout: the
		// tarball and what the caller checks are the bytes on disk.
		if b.index, b.images, err = readLayout(b.layout, opts.meta.version); err != nil {
			return nil, err
		}
		if b.digest, err = b.index.Digest(); err != nil {
			return nil, fmt.Errorf("digest the %s index: %w", p.name, err)
		}
		images := b.images
		for i, plat := range opts.platforms {
			if plat.Architecture != "amd64" {
				continue
			}
			tag, err := localTag(p.name, opts.meta.version)
			if err != nil {
				return nil, fmt.Errorf("name the %s tarball: %w", p.name, err)
			}
			b.tarball = filepath.Join(opts.outDir, p.name+"-linux-amd64.tar")
			if err := tarball.WriteToFile(b.tarball, tag, images[i]); err != nil {
				return nil, fmt.Errorf("write %s: %w", b.tarball, err)
			}
		}
		sizes := make([]any, 0, 2*len(images))
		for i, img := range images {
			size, err := compressedSize(img)
			if err != nil {
				return nil, fmt.Errorf("size the %s image: %w", p.name, err)
			}
			sizes = append(sizes, opts.platforms[i].String(), fmt.Sprintf("%.1f MiB", float64(size)/(1<<20)))
		}
		log.Info("built", append([]any{"image", p.name, "index", b.digest.String(), "layout", b.layout, "tarball", b.tarball, "took", time.Since(start).Round(time.Millisecond)}, sizes...)...)
		out = append(out, b)
	}
	return out, nil
}

// compressedSize is what a pull of img transfers: its manifest, config and
// compressed layers.
func compressedSize(img v1.Image) (int64, error) {
	m, err := img.Manifest()
	if err != nil {
		return 0, err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return 0, err
	}
	size := int64(len(raw)) + m.Config.Size
	for _, l := range m.Layers {
		size += l.Size
	}
	return size, nil
}
