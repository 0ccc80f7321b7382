# ksit-exporter. `make` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo

.PHONY: help build release run test test-unit lint bench faults fuzz bench-compare controlplane-build controlplane-up controlplane-down

# The result files `make bench` turns into docs/figures.md; included makefiles add theirs.
BENCH_RESULTS := target/bench.txt

# Image, demos and end-to-end targets; the webhook's benchmark.
-include mk/ship.mk
-include mk/webhook.mk
-include mk/browser.mk
-include mk/fleet.mk
-include mk/kind.mk

help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

build: ## build the debug binary (target/debug/ksit-exporter)
	$(CARGO) build

release: ## build the optimised binary (target/release/ksit-exporter)
	$(CARGO) build --release

run: build ## run the exporter on :8080 with the environment you give it
	./target/debug/ksit-exporter

# The fleet end to end, older_crds and its_e2e start a second control plane and stop it themselves; a test binary killed
# before that leaves it up, so the trap stops it too (a no-op when it is not running).
DOWN_ALL := scripts/controlplane.sh down; KSIT_CONTROLPLANE_DIR=target/controlplane-fleet scripts/controlplane.sh down; KSIT_CONTROLPLANE_DIR=target/controlplane-oldcrds scripts/controlplane.sh down; KSIT_CONTROLPLANE_DIR=target/controlplane-its scripts/controlplane.sh down

test: ## bring the test control plane up, run every suite, take it down (pass or fail)
	@trap '$(DOWN_ALL)' EXIT; \
	scripts/controlplane.sh up && \
	$(CARGO) test --all-targets

test-unit: ## the tests that need no control plane
	$(CARGO) test --lib

lint: ## rustfmt and clippy, as CI runs them (also the sidecar image's build, without the admission feature)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --no-default-features -- -D warnings

bench: release ## footprint and speed of the release binary; writes target/bench*.txt and docs/figures.md
	set -o pipefail; python3 scripts/bench.py target/release/ksit-exporter | tee target/bench.txt
	python3 scripts/bench.py --figures docs/figures.md $(BENCH_RESULTS)

faults: release ## issue 12's attacks on the release binary (~5 min; FAULTS_SETTLE_SECONDS=60); writes target/faults.json and docs/figures.md
	@mkdir -p target
	python3 scripts/faults.py target/release/ksit-exporter target/faults.json
	python3 scripts/faults.py --figures docs/figures.md target/faults.json

bench-compare: ## ksit-exporter beside kube-state-metrics and node_exporter at 100 to 100,000 IntegrationTargets, sharded at 100,000 (~50 min); writes BENCHMARKS.md
	@for p in prometheus-node-exporter wrk; do command -v $$p >/dev/null || { echo "make bench-compare needs Debian's $$p: apt-get install $$p"; exit 2; }; done
	cargo build --locked --profile image --target x86_64-unknown-linux-musl --no-default-features
	scripts/controlplane.sh build-bench
	@trap 'scripts/controlplane.sh down' EXIT; scripts/controlplane.sh up && python3 scripts/bench_compare.py

FUZZ_SECONDS ?= 60
# Each target with its committed corpus; what a run finds goes to fuzz/corpus/TARGET.new.
FUZZ_TARGETS := upstream_parse:fuzz/corpus/upstream_parse admission_review:fuzz/corpus/admission_review accept:fuzz/corpus/accept \
	inject_manifests:tests/testdata/inject/manifests kube_objects:fuzz/corpus/kube_objects \
	compact_pod:fuzz/corpus/compact_pod
fuzz: ## fuzz the upstream parser, the admission handler, inject's reader, the watched objects' rendering, the webhook's compact pod reading and content negotiation, FUZZ_SECONDS (60) each, with cargo-fuzz on nightly; crashes land in fuzz/artifacts
	@cargo fuzz --version >/dev/null 2>&1 || { echo "make fuzz needs cargo-fuzz: cargo install cargo-fuzz"; exit 2; }
	@rustup toolchain list | grep -q '^nightly' || { echo "make fuzz needs a nightly toolchain: rustup toolchain install nightly"; exit 2; }
	@set -e; for t in $(FUZZ_TARGETS); do \
		name=$${t%%:*}; corpus=$${t#*:}; mkdir -p fuzz/corpus/$$name.new; \
		cargo +nightly fuzz run $$name $(CURDIR)/fuzz/corpus/$$name.new $(CURDIR)/$$corpus -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536; \
	done

controlplane-build: ## build etcd, kube-apiserver, kube-controller-manager, prometheus, promtool and the stand-in manager (cached)
	scripts/controlplane.sh build

controlplane-up: ## start etcd, kube-apiserver and kube-controller-manager on loopback; kubeconfig in target/controlplane/kubeconfig
	scripts/controlplane.sh up

controlplane-down: ## stop the test control plane
	scripts/controlplane.sh down
