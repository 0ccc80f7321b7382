# Image, demos and the shipping checks (issue #6). Included by the Makefile.

.PHONY: image image-check demo demo-down demo-local e2e ship-check

SHIP_SCRIPTS := scripts/image.sh scripts/demo.sh scripts/demo-local.sh scripts/engine.sh scripts/kind-node.sh

image: ## build the sidecar and webhook images (static binaries FROM scratch) with Docker if its engine runs, else Podman or buildah
	scripts/image.sh build

image-check: ## run the images' binaries with buildah: --version, the sidecar's /metrics on loopback as uid 65532, the webhook's commands
	scripts/image.sh check

demo: ## kind cluster ksit-demo: image, prometheus-operator, webhook, injected KSIT manager (DEMO_DRY_RUN=1 prints the steps)
	scripts/demo.sh up

demo-down: ## delete the kind cluster ksit-demo
	scripts/demo.sh down

demo-local: ## the demo as local processes, no container engine: control plane, manager, exporter, Prometheus (Ctrl-C stops)
	scripts/demo-local.sh

e2e: ## the end-to-end test (real Prometheus) and the manifest checks, with the control plane up then down
	@trap 'scripts/controlplane.sh down' EXIT; \
	scripts/controlplane.sh up && \
	$(CARGO) test --test e2e_prometheus --test dashboard_e2e --test manifests

ship-check: ## what CI runs for shipping: shellcheck, image build and run with buildah, the demo's dry run
	shellcheck $(SHIP_SCRIPTS)
	IMAGE_BUILDER=buildah scripts/image.sh build
	scripts/image.sh check
	DEMO_DRY_RUN=1 scripts/demo.sh up
