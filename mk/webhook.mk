# The admission webhook's benchmark, added to `make bench` and its docs/figures.md; included by
# the Makefile.
.PHONY: bench-webhook

bench: bench-webhook
BENCH_RESULTS += target/bench-webhook.txt

bench-webhook: ## injection latency (median, p99) and the webhook's admissions/s over TLS on loopback
	@mkdir -p target
	set -o pipefail; $(CARGO) bench --bench webhook | tee target/bench-webhook.txt
