# bwp: `make demo` and `make test` work on a fresh machine with Python 3.11 and PyPI access.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.bwp-installed
# Installs come from the lock file: every package, transitive ones included, pinned with its
# hashes (docs/architecture.md, Dependencies). uv installs it (about 4x faster than pip here);
# uv itself is pinned, with hashes, in requirements-uv.lock and lives outside the venv.
LOCK    := requirements.lock
UV_LOCK := requirements-uv.lock
UV_DIR  := $(VENV)/uv-tool
UV      := $(UV_DIR)/bin/uv
# What the lock is resolved for: the Python and platform CI runs (hashes cover every wheel).
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_28

# In CI (CI=true) a tool that cannot be installed fails the run instead of skipping its tests.
CI_STRICT = if [ "$${CI:-}" = true ]; then echo "CI=true: failing instead of skipping"; exit 1; fi

.PHONY: install demo test test-fast bench clean lint help prometheus test-go lock upgrade-check

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(UV): $(UV_LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --require-hashes --no-deps --upgrade --target $(UV_DIR) -r $(UV_LOCK)
	@touch $(UV)

$(STAMP): pyproject.toml $(LOCK) $(UV)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	VIRTUAL_ENV=$(VENV) $(UV) pip sync -q --require-hashes $(LOCK)
	VIRTUAL_ENV=$(VENV) $(UV) pip install -q --no-deps -e .
	@echo "installed from $(LOCK): $$(VIRTUAL_ENV=$(VENV) $(UV) pip freeze | wc -l) packages (uv pip freeze lists them)"
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install bwp, its test and lint extras, from requirements.lock

# `make lock` rewrites requirements.lock from pyproject.toml, keeping every pin that still fits;
# `make lock UPGRADE=1` takes the newest releases pyproject.toml allows. Review before you commit:
# docs/architecture.md, Taking an upgrade.
lock: $(UV)  ## re-resolve requirements.lock from pyproject.toml (UPGRADE=1: newest allowed releases)
	$(UV) pip compile -q pyproject.toml --extra test --extra lint --generate-hashes $(LOCK_TARGET) \
	  $(if $(UPGRADE),--upgrade) --custom-compile-command "make lock" -o $(LOCK)
	@echo "wrote $(LOCK); now: make test, then commit it with the reviewed compat changes"

# Not part of `make test`: the newest allowed releases (UPGRADE_BOUNDS=lift: beyond the upper
# bounds) in a scratch venv, `bwp compat` and the whole suite there (about 15-20 min;
# UPGRADE_TESTS=compat runs only the compat fingerprint tests).
upgrade-check: $(UV)  ## newest allowed releases in a scratch venv: what changed upstream, and the suite
	PYTHON=$(PYTHON) UV=$(CURDIR)/$(UV) tools/upgrade-check.sh

demo: install  ## embedded broker + Redis, quick model, worker + simulator, live view (60 s)
	$(BIN)/bwp demo --seconds $${BWP_DEMO_SECONDS:-60}

test: lint prometheus test-go  ## lint, then the full test suite (unit, integration on embedded Kafka/Redis, training smoke runs)
	$(BIN)/python -m pytest -q -ra

# Style, types and architecture: ruff (lint + format check), mypy on the serving path and the
# wire contract, import-linter's layer contracts, vulture (dead code). `make test` runs it first.
lint: install  ## ruff, mypy, import-linter contracts, vulture
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/vulture --min-confidence 80 stream ml simulator

# Debian/Ubuntu `prometheus` for tests/stream/ops/test_prometheus_scrape.py (skipped without it).
prometheus:  ## install Prometheus if missing (needs root + apt-get; otherwise a note)
	@if command -v prometheus >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  { apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1; }; } \
	  && echo "installed: $$(prometheus --version 2>&1 | head -n 1)" \
	  || { echo "note: apt-get could not install prometheus; tests/stream/ops/test_prometheus_scrape.py will be skipped"; $(CI_STRICT); }; \
	else echo "note: prometheus is not on PATH and cannot be installed here (needs root and apt-get); tests/stream/ops/test_prometheus_scrape.py will be skipped"; $(CI_STRICT); fi

test-fast: install  ## unit tests only
	$(BIN)/python -m pytest -q -ra -m "not integration and not slow"

bench: install  ## benchmarks (JSON)
	$(BIN)/bwp bench model --json
	$(BIN)/bwp bench pipeline --links 1000 --seconds 30 --json

clean:  ## remove generated state (keeps .venv)
	rm -rf .bwp models reports .pytest_cache .hypothesis .upgrade

# Go client (clients/go): Debian's Go 1.19 + sarama 1.22.1, no module proxy needed. Built and
# tested twice: in GOPATH mode (a throw-away GOPATH whose src/ links to clients/go, imports from
# /usr/share/gocode) and in module mode (-mod=vendor, vendor/ assembled from the same sources by
# clients/go/vendor.sh). Skips without Go, except under CI=true.
GO_PKG  := github.com/bwp/clients/go/bwp
GO_PATH := $(CURDIR)/clients/go/.gopath
GO_ENV  := GO111MODULE=off GOPATH=$(GO_PATH):/usr/share/gocode CGO_CFLAGS=-Wno-deprecated-declarations GOFLAGS=
# module mode with no module proxy: every import from clients/go/vendor (assembled from the same sources)
GO_MOD_ENV := GO111MODULE=on GOFLAGS=-mod=vendor GOPROXY=off GOPATH=$(GO_PATH) CGO_CFLAGS=-Wno-deprecated-declarations
test-go:  ## go vet + go test of clients/go (installs golang-go and sarama via apt-get when root)
	@if ! command -v go >/dev/null 2>&1 || [ ! -d /usr/share/gocode/src/github.com/Shopify/sarama ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    { apt-get install -y -q --no-install-recommends golang-go golang-github-shopify-sarama-dev >/dev/null 2>&1 \
	      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends golang-go golang-github-shopify-sarama-dev >/dev/null 2>&1; }; } \
	    || echo "note: apt-get could not install golang-go golang-github-shopify-sarama-dev"; \
	  fi; fi
	@if ! command -v go >/dev/null 2>&1 || [ ! -d /usr/share/gocode/src/github.com/Shopify/sarama ]; then \
	  echo "skip test-go: go or sarama sources (/usr/share/gocode) missing; install golang-go golang-github-shopify-sarama-dev (needs root and apt-get)"; \
	  $(CI_STRICT); \
	else \
	  rm -rf clients/go/vendor && mkdir -p $(GO_PATH)/src/github.com/bwp/clients/go && \
	  ln -sfn $(CURDIR)/clients/go $(GO_PATH)/src/$(GO_PKG) && \
	  echo "== test-go: GOPATH mode (Debian's /usr/share/gocode)" && \
	  (cd $(GO_PATH)/src/$(GO_PKG) && $(GO_ENV) go vet . ./cmd/bwp-agent && $(GO_ENV) go test . ./cmd/bwp-agent) && \
	  echo "== test-go: module mode, offline, from vendor/ (clients/go/vendor.sh)" && clients/go/vendor.sh && \
	  (cd clients/go && $(GO_MOD_ENV) go vet ./... && $(GO_MOD_ENV) go test ./...); \
	fi
