package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"runtime"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// runSingle builds the image of one static binary for this machine's
// platform, as a docker-loadable tarball: the real-node plane's pause
// image and test workloads, which never leave this machine.
func runSingle(_ context.Context, log *slog.Logger, args []string, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("single", flag.ContinueOnError)
	binary := fs.String("binary", "", "the static binary; the image's entrypoint is /<its name>")
	tagName := fs.String("tag", "", "the tarball's image name, NAME:TAG")
	out := fs.String("out", "", "the tarball to write")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if *binary == "" || *tagName == "" || *out == "" {
		return usageError{errors.New("-binary, -tag and -out are required")}
	}
	tag, err := name.NewTag(*tagName)
	if err != nil {
		return usageError{fmt.Errorf("-tag: %w", err)}
	}
	p := program{name: filepath.Base(*binary), user: "0:0", description: "reboot-manager test image " + tag.String()}
	meta := metadata{version: tag.TagStr(), revision: "test", source: "https://github.com/rebootmanager/reboot-manager"}
	img, err := buildImage(p, v1.Platform{OS: "linux", Architecture: runtime.GOARCH}, *binary, meta)
	if err != nil {
		return err
	}
	if err := tarball.WriteToFile(*out, tag, img); err != nil {
		return fmt.Errorf("write %s: %w", *out, err)
	}
	log.Info("built", "image", tag.String(), "tarball", *out)
	return nil
}
