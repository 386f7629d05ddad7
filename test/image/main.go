// Command image builds the OCI images of reboot-manager's arbiter and agent
// with no container engine and no base image (Makefile: make images, make
// push, make manifests), and pushes them to a registry.
//
//	go -C test/image run . build -bin DIR -out DIR -version V -revision R [-created T] [-source URL] [-platforms linux/amd64,linux/arm64]
//	go -C test/image run . push -images DIR -registry REGISTRY -version V
//	go -C test/image run . overlay -deploy DIR -out DIR [-registry REGISTRY] -version V
//	go -C test/image run . single -binary FILE -tag NAME:TAG -out FILE.tar
//
// build reads the static binaries DIR/linux_<arch>/{arbiter,agent} and
// writes, per program, an OCI layout with its multi-arch index
// (OUT/<program>/, index.json naming it V) and a docker-loadable tarball of
// its linux/amd64 image (OUT/<program>-linux-amd64.tar, tagged
// reboot-manager/<program>:V). push sends those indexes to
// REGISTRY/<program>:V with the Docker config's credentials. overlay writes
// a kustomization that renders deploy/ with those image names. single
// builds a docker-loadable image of one static binary for this machine, the
// real-node plane's pause image (test/cluster).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// usageError is a mistake on the command line (exit status 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }

const usage = `usage:
  image build -bin DIR -out DIR -version V -revision R [-created RFC3339] [-source URL] [-platforms linux/amd64,linux/arm64]
  image push -images DIR -registry REGISTRY -version V
  image overlay -deploy DIR -out DIR [-registry REGISTRY] -version V
  image single -binary FILE -tag NAME:TAG -out FILE.tar
`

// run runs the command line args and returns the exit status: 0, 1 when
// the work failed, 2 for a bad command line. Errors are one line on stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "build":
		err = runBuild(ctx, log, args[1:], stdout, stderr)
	case "push":
		err = runPush(ctx, log, args[1:], stdout, stderr)
	case "overlay":
		err = runOverlay(args[1:], stdout, stderr)
	case "single":
		err = runSingle(ctx, log, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		err = usageError{fmt.Errorf("unknown command %q (build, push, overlay or single)", args[0])}
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "image %s: %v\n", args[0], err)
		return 2
	default:
		fmt.Fprintf(stderr, "image %s: %v\n", args[0], err)
		return 1
	}
}

// parseFlags parses args into fs, which prints its own usage only for -h.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(stderr)
		fs.PrintDefaults()
		return err
	}
	if err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

func runBuild(ctx context.Context, log *slog.Logger, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("build", flag.ContinueOnError)
	binDir := fs.String("bin", "", "directory of the static binaries, as DIR/linux_<arch>/<program>")
	outDir := fs.String("out", "", "output directory: an OCI layout per image and docker-loadable linux/amd64 tarballs")
	version := fs.String("version", "", "the images' version: their tag and org.opencontainers.image.version")
	revision := fs.String("revision", "", "the source revision (git rev-parse HEAD): org.opencontainers.image.revision")
	created := fs.String("created", "1970-01-01T00:00:00Z", "the images' creation time, RFC 3339 (the commit's time keeps builds reproducible)")
	source := fs.String("source", "https://github.com/rebootmanager/reboot-manager", "the source repository URL: org.opencontainers.image.source")
	platforms := fs.String("platforms", "linux/amd64,linux/arm64", "comma-separated platforms")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	opts := buildOptions{binDir: *binDir, outDir: *outDir, meta: metadata{version: *version, revision: *revision, source: *source}}
	if opts.binDir == "" || opts.outDir == "" {
		return usageError{errors.New("-bin and -out are required")}
	}
	if err := checkVersion(opts.meta.version); err != nil {
		return usageError{err}
	}
	if opts.meta.revision == "" {
		return usageError{errors.New("-revision is required (git rev-parse HEAD)")}
	}
	if err := checkSource(opts.meta.source); err != nil {
		return usageError{err}
	}
	t, err := time.Parse(time.RFC3339, *created)
	if err != nil {
		return usageError{fmt.Errorf("-created %q is not an RFC 3339 time such as 2026-01-02T15:04:05Z", *created)}
	}
	opts.meta.created = t.UTC()
	if opts.platforms, err = parsePlatforms(*platforms); err != nil {
		return usageError{err}
	}
	start := time.Now()
	out, err := build(ctx, log, opts)
	if err != nil {
		return err
	}
	for _, b := range out {
		fmt.Fprintf(stdout, "%s@%s\n", b.name, b.digest)
	}
	log.Info("images built", "count", len(out), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

func runPush(ctx context.Context, log *slog.Logger, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("push", flag.ContinueOnError)
	imagesDir := fs.String("images", "", "the output directory of build")
	registry := fs.String("registry", "", "where to push: REGISTRY/<program>:VERSION, for example ghcr.io/you")
	version := fs.String("version", "", "the version built, and the tag pushed")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if *imagesDir == "" {
		return usageError{errors.New("-images is required")}
	}
	if err := checkVersion(*version); err != nil {
		return usageError{err}
	}
	if _, err := repository(*registry, "arbiter"); err != nil {
		return usageError{err}
	}
	out, err := push(ctx, log, *imagesDir, *registry, *version)
	if err != nil {
		return err
	}
	for _, p := range out {
		fmt.Fprintf(stdout, "%s@%s\n", p.tag, p.digest)
	}
	return nil
}

func runOverlay(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("overlay", flag.ContinueOnError)
	deployDir := fs.String("deploy", "", "the kustomization to render (deploy/)")
	outDir := fs.String("out", "", "directory for the overlay's kustomization.yaml")
	registry := fs.String("registry", "", "image names REGISTRY/<program>; empty keeps reboot-manager/<program>")
	version := fs.String("version", "", "the images' tag")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if *deployDir == "" || *outDir == "" {
		return usageError{errors.New("-deploy and -out are required")}
	}
	if err := checkVersion(*version); err != nil {
		return usageError{err}
	}
	if *registry != "" {
		if _, err := repository(*registry, "arbiter"); err != nil {
			return usageError{err}
		}
	}
	path, err := writeOverlay(*deployDir, *outDir, *registry, *version)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, path)
	return nil
}
