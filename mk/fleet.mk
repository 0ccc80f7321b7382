# Issue 15's fleet: the remote-write volume one sidecar adds (docs/fleet.md). The fleet end to
# end itself, tests/fleet_e2e.rs, runs in `make test`. Included by the Makefile.
.PHONY: remote-write-volume test-fleet

remote-write-volume: ## bytes/s one sidecar adds to a Prometheus agent's remote write at 100 and 1,000 IntegrationTargets (~8 min); writes target/remote-write-volume.json
	$(CARGO) build
	@trap 'scripts/controlplane.sh down' EXIT; scripts/controlplane.sh up && python3 scripts/remote_write_volume.py

test-fleet: ## only the fleet end to end: two hosting clusters, agents, Thanos Receive, Query and Rule
	@trap '$(DOWN_ALL)' EXIT; scripts/controlplane.sh up && $(CARGO) test --test fleet_e2e
