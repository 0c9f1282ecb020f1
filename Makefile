# quotagate: every entry point. `make dev` and `make test` each work alone from a fresh clone:
# they install what is missing first (`make setup`), and setup is fast when nothing is missing.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO_BIN := $(or $(CARGO_HOME),$(HOME)/.cargo)/bin
# Tools are installed per version under a per-user cache, so clones share them and a version bump
# installs the new one beside the old.
TOOLS_DIR ?= $(HOME)/.cache/quotagate/tools
# The wasm-bindgen step is tools/bindgen: wasm-bindgen-cli-support alone (the CLI also compiles a
# test runner, an HTTP client and server: 5 of a fresh machine's minutes). It must match the
# wasm-bindgen library in Cargo.lock exactly; its cache directory is named for its sources.
WASM_BINDGEN_VERSION := $(shell awk '$$1 == "name" && $$3 == "\"wasm-bindgen\"" { getline; gsub(/"/, "", $$3); print $$3 }' Cargo.lock)
BINDGEN_SOURCES := tools/bindgen/Cargo.toml tools/bindgen/Cargo.lock tools/bindgen/src/main.rs
BINDGEN_HASH := $(shell cat $(BINDGEN_SOURCES) | sha256sum | cut -c1-12)
export WASM_BINDGEN_BIN := $(TOOLS_DIR)/bindgen-$(BINDGEN_HASH)/bin/quotagate-bindgen
NODE_BIN := $(CURDIR)/node_modules/.bin
# esbuild (wrangler's own) and wasm-opt (binaryen, a devDependency) come from npm.
export ESBUILD_BIN := $(NODE_BIN)/esbuild
export WASM_OPT_BIN := $(NODE_BIN)/wasm-opt
# schemathesis (PyPI), for the OpenAPI conformance run, in its own venv.
SCHEMATHESIS_VERSION := 4.32.5
export SCHEMATHESIS := $(TOOLS_DIR)/schemathesis-$(SCHEMATHESIS_VERSION)/bin/st
# promtool, from Debian's `prometheus` package, unpacked into the tool cache (no service runs):
# it checks and unit-tests the alert rules and lints the gateway's Prometheus text.
export PROMTOOL := $(TOOLS_DIR)/prometheus-debian/usr/bin/promtool
# Node 22 from the `node` devDependency comes first, for wrangler.
export PATH := $(NODE_BIN):$(CARGO_BIN):$(PATH)
export WRANGLER_SEND_METRICS := false

.PHONY: help setup compile-wasm wasm-target chromium screenshots build bundle dev test test-core test-clients test-ops test-e2e bench-rpc crossings test-dev lint fmt deploy deploy-dry-run clean bench bench-setup reliability test-reliability sim

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  make %-15s %s\n", $$1, $$2 }'

# Its pieces are independent: the downloads (apt, npm, PyPI) run beside the one compile.
setup: wasm-target ## Install the toolchain pieces that are missing
	@$(MAKE) --no-print-directory -j4 --output-sync=target chromium node_modules/.package-lock.json $(WASM_BINDGEN_BIN) $(SCHEMATHESIS) $(PROMTOOL)

# Debian's Chromium, for the dashboard test in a real browser (playwright-core drives it).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

wasm-target:
	@rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

$(WASM_BINDGEN_BIN):
	@test -n "$(WASM_BINDGEN_VERSION)" || { echo "no wasm-bindgen in Cargo.lock" >&2; exit 1; }
	@grep -q '^wasm-bindgen-cli-support = "=$(WASM_BINDGEN_VERSION)"' tools/bindgen/Cargo.toml || { \
	  echo "tools/bindgen/Cargo.toml must pin wasm-bindgen-cli-support = \"=$(WASM_BINDGEN_VERSION)\", the wasm-bindgen of Cargo.lock" >&2; exit 1; }
	cargo install --path tools/bindgen --locked --root $(TOOLS_DIR)/bindgen-$(BINDGEN_HASH) --target-dir $(CURDIR)/target/tools

$(PROMTOOL):
	@mkdir -p $(TOOLS_DIR)/prometheus-debian
	cd $(TOOLS_DIR)/prometheus-debian && { apt-get download prometheus 2>/dev/null || { $(SUDO) apt-get update -qq && apt-get download prometheus; }; }
	cd $(TOOLS_DIR)/prometheus-debian && dpkg-deb -x prometheus_*.deb . && rm -f prometheus_*.deb
	@test -x $@

$(SCHEMATHESIS):
	python3 -m venv $(TOOLS_DIR)/schemathesis-$(SCHEMATHESIS_VERSION)
	$(TOOLS_DIR)/schemathesis-$(SCHEMATHESIS_VERSION)/bin/pip install -q schemathesis==$(SCHEMATHESIS_VERSION)

build: setup build/.built ## Build the Worker (build/index.js + build/index_bg.wasm)

# Rebuilt only when the Rust sources or the manifests change: `make test` and `make dev` build once.
# The compile needs only cargo, so `make test` runs it beside the tool installs.
WASM_OUT := target/wasm32-unknown-unknown/release/quotagate.wasm
$(WASM_OUT): Cargo.toml Cargo.lock $(shell find src -type f) | wasm-target
	scripts/build-worker.sh compile
compile-wasm: $(WASM_OUT)
build/.built: $(WASM_OUT) scripts/build-worker.sh $(BINDGEN_SOURCES) | setup
	scripts/build-worker.sh package
	@touch $@

# What the tests and benchmarks run (tests/support/bundle.mjs): the `wrangler deploy --dry-run`
# bundle, wrangler.toml's bindings, and a migrated local ledger each test gateway starts from.
bundle: build ## The deployable bundle and a migrated ledger under build/bundle (remade when stale)
	node tests/support/bundle.mjs

.dev.vars:
	cp .dev.vars.example .dev.vars
	@echo "created .dev.vars from .dev.vars.example (ADMIN_TOKEN=dev-admin-token)"

# DEV_STATE: where the local DO and D1 state lives (wrangler's own default; the smoke test gives
# its own). PORT and DEMO_ORIGIN_PORT move the gateway and the demo origin.
dev: build .dev.vars ## Build, migrate the local D1, start the demo origin and the gateway on 127.0.0.1:8787
	scripts/dev.sh

# Each phase is timed, and the table is printed at the end, a failed phase included. Targets
# joined by a comma run at the same time (scripts/phases.sh): on a fresh machine the tool compile
# (wasm-bindgen-cli) leaves a core free for the lint and the Worker's own compile, and packaging
# the wasm (one core) leaves one for the native tests.
TEST_PHASES := wasm-target setup,lint,compile-wasm build,test-core,test-clients,test-ops test-e2e test-reliability test-dev

test: ## Lint, then every test: the core natively, the worker end to end in workerd, the reliability suite at small scale, the `make dev` smoke test
	@MAKE="$(MAKE)" scripts/phases.sh $(TEST_PHASES)

test-core: ## The pure policy core: unit and property tests, natively
	cargo test --locked

# The operations pictures: the alert rules pass `promtool check rules` and their unit tests; the
# dashboard's queries are checked against the running gateway's metrics in tests/e2e/ops.test.mjs.
test-ops: $(PROMTOOL) ## Check and unit-test the Prometheus alert rules with promtool
	$(PROMTOOL) check rules ops/prometheus/quotagate-rules.yml
	cd ops/prometheus && $(PROMTOOL) test rules quotagate-rules.test.yml

# clients/quotagate is TypeScript: its types, its Hono middleware and the API Worker the e2e test
# runs with it (tests/e2e/workers/app.ts) must type-check under strict settings.
test-clients: node_modules/.package-lock.json ## Type-check the TypeScript client, its Hono middleware and the test's API Worker
	$(NODE_BIN)/tsc -p clients/quotagate/tsconfig.json

# Every test file is a process of its own with its own runtime, ports and state directory, run two
# at a time (one per core). The files that measure (the lease race counts how many admissions
# needed no DO call), kill processes or run `make dev` run alone, after the others.
SOLO_E2E := tests/e2e/lease.test.mjs
SOLO_TESTS := $(SOLO_E2E) tests/reliability/crash.test.mjs tests/e2e/devsmoke.test.mjs
NODE_TEST := node --disable-warning=ExperimentalWarning --test --test-reporter=spec
E2E_TESTS := $(filter-out $(SOLO_TESTS),$(sort $(wildcard tests/e2e/*.test.mjs)))
RELIABILITY_TESTS := $(filter-out $(SOLO_TESTS),$(sort $(wildcard tests/reliability/*.test.mjs)))

test-e2e: bundle ## The built bundle in workerd (the faithful host) against a real origin, two files at a time
	$(NODE_TEST) --test-concurrency=2 --test-timeout=300000 $(E2E_TESTS)
	$(NODE_TEST) --test-concurrency=1 --test-timeout=300000 $(SOLO_E2E)

test-dev: build ## The `make dev` smoke test: the README walk-through against wrangler dev
	$(NODE_TEST) --test-timeout=600000 tests/e2e/devsmoke.test.mjs

# The reliability suite (tests/reliability): overshoot, SIGKILL restarts, D1 failure, idempotent
# retries, the bad-input corpus, fuzzing, security. Small counts in `make test`; `make reliability`
# runs it in full and publishes the summary table in bench/RESULTS.md.
RELIABILITY_RUN = $(NODE_TEST) --test-timeout=1800000

test-reliability: bundle ## The reliability suite with small counts (part of `make test`)
	rm -f target/reliability-small.jsonl
	RELIABILITY_SCALE=small RELIABILITY_REPORT=$(CURDIR)/target/reliability-small.jsonl $(RELIABILITY_RUN) --test-concurrency=2 $(RELIABILITY_TESTS)
	RELIABILITY_SCALE=small RELIABILITY_REPORT=$(CURDIR)/target/reliability-small.jsonl $(RELIABILITY_RUN) tests/reliability/crash.test.mjs
	node bench/reliability.mjs target/reliability-small.jsonl target/reliability-small.json

# In full, one file at a time: the counts are large enough to load both cores alone.
reliability: bundle ## The reliability suite in full (≥ 20 kills, 5 orgs × 10 overshoot rounds, 100k fuzz cases) → bench/RESULTS.md
	rm -f target/reliability-full.jsonl
	RELIABILITY_SCALE=full RELIABILITY_REPORT=$(CURDIR)/target/reliability-full.jsonl $(RELIABILITY_RUN) --test-concurrency=1 tests/reliability/*.test.mjs
	node bench/reliability.mjs target/reliability-full.jsonl target/reliability-full.json --publish

screenshots: bundle ## Refresh the usage page's and the console's screenshots in docs/
	DOCS_SCREENSHOTS=1 node --disable-warning=ExperimentalWarning --test --test-reporter=spec tests/e2e/dashboard.test.mjs tests/e2e/console.test.mjs

lint: wasm-target ## rustfmt --check, clippy -D warnings for native and wasm32, the OpenAPI document is current
	python3 scripts/openapi.py --check
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings
	cargo clippy --locked --target wasm32-unknown-unknown -- -D warnings

fmt: ## Format the Rust code
	cargo fmt --all

# wrk (load generator) and redis-server (contender e), from Debian.
bench-setup: setup
	@command -v wrk >/dev/null 2>&1 && command -v redis-server >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk redis-server; }

bench: bundle bench-setup ## Every contender under the same load → bench/RESULTS.md + bench/results.json (≈ 12 min)
	cargo bench --locked --bench decision --no-run  # compiled before the measured run starts
	node --disable-warning=ExperimentalWarning bench/run.mjs

crossings: bundle ## wasm ↔ JS crossings per proxied request, counted on each path → target/crossings.json
	node --disable-warning=ExperimentalWarning bench/crossings.mjs

bench-rpc: bundle ## quotagate's added latency to a calling Worker at concurrency 1: service binding (RPC) vs HTTP API → target/bench-rpc.json
	node --disable-warning=ExperimentalWarning bench/rpc.mjs

sim: ## The lease-mode simulation (one hot org, many isolates) → bench/SIMULATION.md (deterministic, ≈ 1 min)
	@mkdir -p target
	cargo test --locked --release --lib published_table -- --ignored --nocapture --test-threads=1 > target/sim.txt
	{ echo "# Lease mode: the hot-org simulation"; echo; \
	  echo "\`make sim\` (src/org/tests/sim.rs): the real org machine as the DO and real holder slots as the isolates, 10,000 decisions/s for 120 s against a hard month limit of 10 M of which 9 M were used before (so the limit is reached at about 100 s), max_units 5,000, ttl 10 s, one-way DO latency 2–60 ms; a grant lasts at most 2 s whatever the plan says. Bursty: 4× the mean rate for 1 s in every 5 s. Evictions: an isolate is lost (its lease and its answers in flight) after an exponential lifetime. The oracle admits exactly min(demand, limit). Deterministic: the same table every run."; \
	  echo; grep '^|' target/sim.txt; echo; cat bench/simulation-notes.md; } > bench/SIMULATION.md
	@cat bench/SIMULATION.md

deploy-dry-run: build ## Bundle as `wrangler deploy` would, without deploying
	wrangler deploy --dry-run --outdir build/dry-run

deploy: build ## Deploy to Cloudflare (needs `wrangler login` and a real database_id)
	wrangler d1 migrations apply LEDGER --remote
	wrangler deploy

clean: ## Remove build output and local state
	rm -rf build target .wrangler
