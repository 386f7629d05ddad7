package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// repository returns REGISTRY/<program>, checked: registry is a registry
// host with an optional path (ghcr.io/owner, localhost:5000), never a bare
// Docker Hub user (write docker.io/user), a tag or a digest.
func repository(registry, program string) (name.Repository, error) {
	if registry == "" {
		return name.Repository{}, fmt.Errorf("-registry is required (for example ghcr.io/you)")
	}
	if strings.ContainsAny(registry, "@") || strings.HasSuffix(registry, "/") {
		return name.Repository{}, fmt.Errorf("-registry %q: give a registry and path such as ghcr.io/you, without a tag, digest or trailing /", registry)
	}
	host, _, _ := strings.Cut(registry, "/")
	if !strings.ContainsAny(host, ".:") && host != "localhost" {
		return name.Repository{}, fmt.Errorf("-registry %q does not start with a registry host (for Docker Hub write docker.io/%s)", registry, registry)
	}
	repo, err := name.NewRepository(registry+"/"+program, name.StrictValidation)
	if err != nil {
		return name.Repository{}, fmt.Errorf("-registry %q: %w", registry, err)
	}
	return repo, nil
}

// layoutIndex returns the index that the OCI layout at dir names version.
func layoutIndex(dir, version string) (v1.ImageIndex, error) {
	l, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("read the layout %s (run make images first): %w", dir, err)
	}
	m, err := l.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("read %s/index.json: %w", dir, err)
	}
	var have []string
	for _, d := range m.Manifests {
		if d.Annotations[refName] == version {
			idx, err := l.ImageIndex(d.Digest)
			if err != nil {
				return nil, fmt.Errorf("read the index %s in %s: %w", d.Digest, dir, err)
			}
			return idx, nil
		}
		have = append(have, d.Annotations[refName])
	}
	return nil, fmt.Errorf("%s holds version %s, not %s: run make images VERSION=%s", dir, strings.Join(have, ", "), version, version)
}

// pushed is one image pushed.
type pushed struct {
	tag    name.Tag
	digest v1.Hash
}

// push pushes each program's index from the layouts under imagesDir to
// REGISTRY/<program>:version, with credentials from the Docker config
// ($DOCKER_CONFIG/config.json, by default ~/.docker/config.json, and its
// credential helpers), and checks that the registry then serves that digest.
func push(ctx context.Context, log *slog.Logger, imagesDir, registry, version string) ([]pushed, error) {
	if err := checkVersion(version); err != nil {
		return nil, err
	}
	// Check every name before pushing anything.
	var tags []name.Tag
	for _, p := range programs() {
		repo, err := repository(registry, p.name)
		if err != nil {
			return nil, err
		}
		tags = append(tags, repo.Tag(version))
	}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}
	var out []pushed
	for i, p := range programs() {
		idx, err := layoutIndex(filepath.Join(imagesDir, p.name), version)
		if err != nil {
			return nil, err
		}
		want, err := idx.Digest()
		if err != nil {
			return nil, fmt.Errorf("digest the %s index: %w", p.name, err)
		}
		if err := remote.WriteIndex(tags[i], idx, opts...); err != nil {
			var terr *transport.Error
			if errors.As(err, &terr) && (terr.StatusCode == http.StatusUnauthorized || terr.StatusCode == http.StatusForbidden) {
				return nil, fmt.Errorf("push %s: the registry answered %d %s: log in to %s first (docker login %[4]s, or its auths in $DOCKER_CONFIG/config.json, by default ~/.docker/config.json)",
					tags[i], terr.StatusCode, http.StatusText(terr.StatusCode), tags[i].RegistryStr())
			}
			return nil, fmt.Errorf("push %s: %w", tags[i], err)
		}
		got, err := remote.Head(tags[i], opts...)
		if err != nil {
			return nil, fmt.Errorf("check %s after the push: %w", tags[i], err)
		}
		if got.Digest != want {
			return nil, fmt.Errorf("%s is %s after the push, not %s", tags[i], got.Digest, want)
		}
		log.Info("pushed", "image", tags[i].String(), "digest", want.String())
		out = append(out, pushed{tag: tags[i], digest: want})
	}
	return out, nil
}
