# The admission webhook's benchmark, added to `make bench`; included by the Makefile.
.PHONY: bench-webhook

bench: bench-webhook

bench-webhook: ## injection latency (median, p99) and the webhook's admissions/s over TLS on loopback
	@mkdir -p target
	$(CARGO) bench --bench webhook | tee target/bench-webhook.txt
