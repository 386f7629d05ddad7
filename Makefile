# reboot-manager: `make run` runs the arbiter against a local control plane;
# `make test` runs every test. See README.md.
SHELL := /bin/bash
GO ?= go
BIN := bin

.PHONY: all build binaries images push manifests test deps unit tools-test e2e journey vet fmt-check run cluster-up cluster-down bench bench-quick soak fuzz clean

## The images' version (their tag), revision and date: `git describe`, the
## commit and its time unless given. Expanded once, so `make push` builds and
## pushes the same VERSION.
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
VERSION := $(VERSION)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
CREATED ?= $(shell git log -1 --format=%cI 2>/dev/null || echo 1970-01-01T00:00:00Z)
SOURCE_URL ?= https://github.com/rebootmanager/reboot-manager
## REGISTRY: where `make push` pushes and `make manifests` points,
## REGISTRY/arbiter:VERSION and REGISTRY/agent:VERSION (for example
## ghcr.io/you). Empty: the images keep deploy/'s names, reboot-manager/<name>.
REGISTRY ?=
PLATFORMS := linux/amd64 linux/arm64
comma := ,
empty :=
space := $(empty) $(empty)
## The image builder: its own Go module, so go-containerregistry stays out of
## the product's go.mod.
IMAGE_TOOL := $(GO) -C test/image run .

ifneq ($(filter push,$(MAKECMDGOALS)),)
ifeq ($(strip $(REGISTRY)),)
$(error make push needs REGISTRY, e.g. make push REGISTRY=ghcr.io/you VERSION=v1.0.0)
endif
endif

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(BIN)/ ./cmd/...

## binaries: the static arbiter and agent for each of PLATFORMS, in
## bin/<os>_<arch>/, for the images.
binaries:
	@set -e; for p in $(PLATFORMS); do \
		os=$${p%/*} arch=$${p#*/}; \
		echo "CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags \"-s -w\" -o $(BIN)/$${os}_$$arch/ ./cmd/arbiter ./cmd/agent"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags "-s -w" -o $(BIN)/$${os}_$$arch/ ./cmd/arbiter ./cmd/agent; \
	done

## images: OCI images of the arbiter and the agent for PLATFORMS, with no
## container engine: an OCI layout per image in bin/images/<name>/ and a
## `docker load`-able linux/amd64 tarball, bin/images/<name>-linux-amd64.tar.
images: binaries
	$(IMAGE_TOOL) build -bin "$(CURDIR)/$(BIN)" -out "$(CURDIR)/$(BIN)/images" -version "$(VERSION)" \
		-revision "$(REVISION)" -created "$(CREATED)" -source "$(SOURCE_URL)" -platforms "$(subst $(space),$(comma),$(PLATFORMS))"

## push: the images' multi-arch indexes to REGISTRY/<name>:VERSION, with the
## credentials of ~/.docker/config.json ($$DOCKER_CONFIG).
push: images
	$(IMAGE_TOOL) push -images "$(CURDIR)/$(BIN)/images" -registry "$(REGISTRY)" -version "$(VERSION)"

## manifests: both workloads rendered into one file for `kubectl apply -f`,
## with the images REGISTRY/<name>:VERSION (set in an overlay, bin/manifests/;
## deploy/ is not changed).
manifests:
	@mkdir -p $(BIN)
	$(IMAGE_TOOL) overlay -deploy "$(CURDIR)/deploy" -out "$(CURDIR)/$(BIN)/manifests" -registry "$(REGISTRY)" -version "$(VERSION)" >/dev/null
	"$$(test/cluster/build.sh)/kubectl" kustomize $(BIN)/manifests > $(BIN)/reboot-manager.yaml.tmp
	@mv $(BIN)/reboot-manager.yaml.tmp $(BIN)/reboot-manager.yaml
	@echo "wrote $(BIN)/reboot-manager.yaml, with the images $(or $(REGISTRY),reboot-manager)/{arbiter,agent}:$(VERSION)"

## test: gofmt check, go vet, the static builds the Dockerfiles run, unit tests, the image builder's tests (both
## images built and run in containerd), and the end-to-end tier against the local plane (started when needed; a
## plane that cannot start fails).
test: deps fmt-check vet build unit tools-test e2e journey

deps:
	test/deps.sh

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.cluster/*')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /test/)

## tools-test: the image builder's module (test/image): go vet, and its tests, which build both images for both
## platforms from bin/<os>_<arch>/, run them in containerd and runc, and push them to an in-process registry.
tools-test: binaries
	cd test/image && $(GO) vet ./... && IMAGE_TEST_BIN="$(CURDIR)/$(BIN)" $(GO) test -count=1 -timeout 20m ./...

## e2e: the end-to-end tier, then the monitoring component's tests (test/tools, a module of its own for
## Prometheus, kustomize and the operator's CRDs), both against the local plane.
e2e: cluster-up
	$(GO) test -count=1 -timeout 30m $$($(GO) list ./test/... | grep -v /test/journey)
	cd test/tools && $(GO) vet ./... && $(GO) test -count=1 -timeout 20m ./...

## journey: the whole user journey on real kubelet nodes (test/journey), on a plane of its own with two real
## nodes (.cluster-journey, ports 26500+), started and torn down by the test, which then checks that nothing of
## it is left on the machine. Needs root.
journey:
	$(GO) test -count=1 -timeout 20m -v ./test/journey/

## bench: the benchmarks against the local plane (P1 check-in cost, P2
## rollout makespan, P3 drain time, P4 memory; numbers for closing notes);
## bench-quick: the same at a smaller scale, in under 5 minutes.
bench: cluster-up
	$(GO) test -run '^$$' -bench . -benchmem -count=1 -timeout 60m ./test/e2e/ | tee $(BIN)/bench.txt

bench-quick: cluster-up
	BENCH_NODES=1000 BENCH_PODS=5000 BENCH_DRAIN_PODS=30 BENCH_ROLLOUT_HOSTS=6 BENCH_P5_HOSTS=200 BENCH_P5_ROUNDS=2 $(GO) test -run '^$$' -bench . -benchmem -count=1 -timeout 10m ./test/e2e/

## REAL_NODES: real kubelet nodes for `make run` and `make cluster-up` (root), beside the kwok ones.
REAL_NODES ?= 0

cluster-up:
	test/cluster/cluster.sh up --real-nodes $(REAL_NODES)

cluster-down:
	test/cluster/cluster.sh down

## run: the local plane with simulated nodes and workloads, and the arbiter
## serving FleetLock on 127.0.0.1:8080, until Ctrl-C.
run: deps build cluster-up
	CLUSTER_REAL_NODES=$(REAL_NODES) test/run.sh

## soak: the hardening runs at full length against the local plane: R1 (250
## rounds of pre-reboot storms on 3 replicas), R2 (50 trials, 100 SIGKILLs), R3 (the API
## server killed under traffic), the fresh-state races (200 rounds each), and R4 (10^6 fuzz
## executions per target).
## make test runs short versions of R1-R3 and the fuzz seed corpora.
soak: cluster-up
	set -o pipefail; SOAK_ROUNDS=250 SOAK_CRASHES=50 SOAK_RACE_ROUNDS=200 $(GO) test -count=1 -timeout 90m -v -run 'TestReplicasStorm|TestCrashes|TestAPIServerOutage|TestFreshApproval|TestNoLostRelease' ./test/e2e/ | grep -E '^(=== RUN|--- |PASS|FAIL|ok)|R[123]:|fresh approval|lost releases'
	$(MAKE) fuzz

## fuzz: each fuzz target for FUZZ_EXECS executions (default 10^6).
FUZZ_EXECS ?= 1000000
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZ_EXECS)x -fuzzminimizetime 100x ./shared/fleetlock/
	$(GO) test -run '^$$' -fuzz '^FuzzFromMachineID$$' -fuzztime $(FUZZ_EXECS)x -fuzzminimizetime 100x ./shared/zincatiid/
	$(GO) test -run '^$$' -fuzz '^FuzzObjectName$$' -fuzztime $(FUZZ_EXECS)x -fuzzminimizetime 100x ./arbiter/lock/
	$(GO) test -run '^$$' -fuzz '^FuzzHandler$$' -fuzztime $(FUZZ_EXECS)x -fuzzminimizetime 100x ./arbiter/

clean: cluster-down
	rm -rf $(BIN)
