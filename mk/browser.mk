# The browser test (issue 14): Debian's chromium, headless, driven by Playwright's core library,
# loads the exporter's status page and the web UI Prometheus's graph page. Included by the Makefile.
.PHONY: test-browser

# playwright-core, installed by `npm ci` from tests/browser's lockfile into target/ (not into the
# clone's tests/browser), again only when the lockfile changes.
BROWSER_NODE := target/browser-node

$(BROWSER_NODE)/.installed: tests/browser/package.json tests/browser/package-lock.json
	@command -v npm >/dev/null || { echo "make test-browser needs node and npm: apt-get install nodejs npm"; exit 2; }
	rm -rf $(BROWSER_NODE) && mkdir -p $(BROWSER_NODE)
	cp tests/browser/package.json tests/browser/package-lock.json $(BROWSER_NODE)/
	cd $(BROWSER_NODE) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

test-browser: $(BROWSER_NODE)/.installed ## headless chromium checks the status page and Prometheus's graph page; screenshots in target/browser/
	@command -v $${CHROMIUM:-chromium} >/dev/null || { echo "make test-browser needs chromium: apt-get install chromium"; exit 2; }
	@command -v node >/dev/null || { echo "make test-browser needs node: apt-get install nodejs"; exit 2; }
	scripts/controlplane.sh build-ui
	$(CARGO) build
	@trap 'scripts/controlplane.sh down' EXIT; \
	scripts/controlplane.sh up && \
	PLAYWRIGHT_CORE=$(CURDIR)/$(BROWSER_NODE)/node_modules/playwright-core node --test tests/browser/
