# The kind suite (issue 24): a real kubelet, scheduler and container runtime. Included by the Makefile.

.PHONY: test-kind engine-up engine-down

# kind writes the cluster's context here, not into ~/.kube/config, so the suite never touches
# the user's kubeconfig; `make demo` uses the user's.
KIND_KUBECONFIG := $(CURDIR)/target/kind/kubeconfig

test-kind: ## kind cluster ksit-demo as `make demo` makes it, then tests/kind_e2e.rs on it; cluster (and an engine it started) removed after, pass or fail
	@mkdir -p target/kind
	@trap 'KUBECONFIG=$(KIND_KUBECONFIG) scripts/demo.sh down' EXIT; \
	KUBECONFIG=$(KIND_KUBECONFIG) scripts/demo.sh up && \
	KUBECONFIG=$(KIND_KUBECONFIG) $(CARGO) test --test kind_e2e -- --ignored --test-threads=1

engine-up: ## start the Docker engine the demo and the kind suite use, unless one answers (scripts/engine.sh)
	scripts/engine.sh up

engine-down: ## stop the engine engine-up started, by its pid
	scripts/engine.sh down
