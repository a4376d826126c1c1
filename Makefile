# `make test` is the project's whole check, and exactly what CI runs
# (.ci/run). It installs missing tools, then lints, runs every Go test (unit
# and e2e, which builds and runs the real hearth binary and Bazel), and fuzzes
# each fuzz target briefly.

GO ?= go
# Each package's test binary; the e2e package runs several Bazel builds.
TEST_TIMEOUT ?= 30m
FUZZTIME ?= 10s
# Recursively expanded, so it is looked up after `deps` has installed it.
STATICCHECK = $(shell command -v staticcheck || echo "$$($(GO) env GOPATH)/bin/staticcheck")
# SA1019 (use of deprecated identifiers) is off: REAPI marks fields deprecated
# that servers must still honour for older clients (Command.output_files,
# output_directories, platform; ActionResult.output_file_symlinks, ...).
STATICCHECK_CHECKS ?= inherit,-SA1019

.PHONY: test deps lint fmt vet staticcheck gotest fuzz bench

test: deps lint gotest fuzz

deps:
	bash scripts/install-test-deps.sh

lint: fmt vet staticcheck

fmt:
	@files="$$(gofmt -l .)"; if [ -n "$$files" ]; then echo "gofmt -l: these files need gofmt -w:"; echo "$$files"; exit 1; fi

vet:
	$(GO) vet ./...

staticcheck:
	$(STATICCHECK) -checks=$(STATICCHECK_CHECKS) ./...

# -count=1: the e2e tests build and run binaries from source that the test
# cache does not track, so a cached pass could hide a regression. -race: the
# scheduler, pools and stores are concurrent by nature.
gotest:
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

fuzz:
	bash scripts/fuzz.sh $(FUZZTIME)

# `make bench` runs every benchmark scenario (~10 min on 2 cores; not part of
# `make test`); e.g. BENCHFLAGS='-run bytestream,execute -size 256MiB' for a
# quick run. Results: bench/RESULTS.md.
BENCHFLAGS ?=
bench:
	$(GO) run ./bench/cmd/hearthbench $(BENCHFLAGS)
