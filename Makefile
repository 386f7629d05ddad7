# reboot-manager: `make run` runs the arbiter against a local control plane;
# `make test` runs every test. See README.md.
SHELL := /bin/bash
GO ?= go
BIN := bin

.PHONY: all build manifests test deps unit e2e vet fmt-check run cluster-up cluster-down bench bench-quick soak fuzz clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(BIN)/ ./cmd/...

## manifests: both workloads rendered into one file for `kubectl apply -f`.
manifests:
	@mkdir -p $(BIN)
	"$$(test/cluster/build.sh)/kubectl" kustomize deploy > $(BIN)/reboot-manager.yaml
	@echo "wrote $(BIN)/reboot-manager.yaml"

## test: gofmt check, go vet, the static builds the Dockerfiles run, unit tests, and the end-to-end tier against the
## local plane (started when needed; a plane that cannot start fails).
test: deps fmt-check vet build unit e2e

deps:
	test/deps.sh

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.cluster/*')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /test/)

e2e: cluster-up
	$(GO) test -count=1 -timeout 30m ./test/...

## bench: the benchmarks against the local plane (P1 check-in cost, P2
## rollout makespan, P3 drain time, P4 memory; numbers for closing notes);
## bench-quick: the same at a smaller scale, in under 5 minutes.
bench: cluster-up
	$(GO) test -run '^$$' -bench . -benchmem -count=1 -timeout 60m ./test/e2e/ | tee $(BIN)/bench.txt

bench-quick: cluster-up
	BENCH_NODES=1000 BENCH_PODS=5000 BENCH_DRAIN_PODS=30 BENCH_ROLLOUT_HOSTS=6 BENCH_P5_HOSTS=200 BENCH_P5_ROUNDS=2 $(GO) test -run '^$$' -bench . -benchmem -count=1 -timeout 10m ./test/e2e/

cluster-up:
	test/cluster/cluster.sh up

cluster-down:
	test/cluster/cluster.sh down

## run: the local plane with simulated nodes and workloads, and the arbiter
## serving FleetLock on 127.0.0.1:8080, until Ctrl-C.
run: deps build cluster-up
	test/run.sh

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
