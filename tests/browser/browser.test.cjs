// What a person sees, in a real browser: Debian's chromium, headless, driven by Playwright's core
// library. Against the test control plane (scripts/controlplane.sh up), it starts the stand-in
// manager on the sample IntegrationTargets (cluster1 ready, cluster2 failing), the exporter, and
// the Prometheus with its web UI (scripts/controlplane.sh build-ui) scraping it; then checks the
// exporter's status page and Prometheus's graph page, and saves screenshots in target/browser/.
//
// Run by `make test-browser`, which brings up and builds all of that. Variables: CHROMIUM (the
// browser, default /usr/bin/chromium), KSIT_EXPORTER_BIN (default target/debug/ksit-exporter),
// PLAYWRIGHT_CORE (the installed package's directory, as the make target sets it).
"use strict";

const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const { spawn, execFileSync } = require("node:child_process");
const fs = require("node:fs");
const net = require("node:net");
const path = require("node:path");

const ROOT = path.resolve(__dirname, "..", "..");
const OUT = path.join(ROOT, "target", "browser");
const NAMESPACE = `ksit-browser-${process.pid}`;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const EXPORTER = process.env.KSIT_EXPORTER_BIN || path.join(ROOT, "target", "debug", "ksit-exporter");
// Every wait has this deadline: the exporter's first list, the manager's first status writes
// and Prometheus's first scrapes of a 1s interval all land within seconds.
const DEADLINE_MS = 60_000;

// Missing prerequisites fail the test (never skip it): `make test-browser` provides them all.
function need(file, what) {
  if (!fs.existsSync(file)) {
    throw new Error(`${what} not found at ${file}`);
  }
  return file;
}

// The `export NAME='value'` lines scripts/controlplane.sh up writes.
function controlPlaneEnv() {
  const file = need(path.join(ROOT, "target", "controlplane", "env"), "the test control plane's env file (run `scripts/controlplane.sh up`)");
  const env = {};
  for (const line of fs.readFileSync(file, "utf8").split("\n")) {
    const m = /^export (\w+)='(.*)'$/.exec(line);
    if (m) env[m[1]] = m[2];
  }
  return env;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const children = [];
// start NAME ARGV ENV: a child logging to target/browser/NAME.log, stopped in after().
function start(name, argv, env = {}) {
  const log = fs.openSync(path.join(OUT, `${name}.log`), "w");
  const child = spawn(argv[0], argv.slice(1), {
    env: { ...process.env, ...env },
    stdio: ["ignore", log, log],
  });
  child.name = name;
  child.exited = null;
  child.on("exit", (code, signal) => {
    child.exited = signal || String(code);
  });
  children.push(child);
  return child;
}

// eventually WHAT FN: FN's result once it stops throwing; else the last error, after the
// deadline, or at once when a child has exited.
async function eventually(what, fn) {
  const end = Date.now() + DEADLINE_MS;
  for (;;) {
    const dead = children.find((c) => c.exited !== null);
    if (dead) throw new Error(`${what}: ${dead.name} exited (${dead.exited}); log in ${OUT}/${dead.name}.log`);
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > end) throw new Error(`${what}: not after ${DEADLINE_MS / 1000}s: ${err.message}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function getOk(url) {
  const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return res;
}

let cp, kubectl, exporterUrl, promUrl, browser, page;

before(async () => {
  fs.rmSync(OUT, { recursive: true, force: true });
  fs.mkdirSync(OUT, { recursive: true });
  cp = controlPlaneEnv();
  const bin = cp.KSIT_CONTROLPLANE_BIN;
  const prometheus = need(path.join(bin, "prometheus-ui"), "the Prometheus with its web UI (run `scripts/controlplane.sh build-ui`)");
  need(EXPORTER, "the exporter (run `cargo build`)");
  need(CHROMIUM, "chromium (apt-get install chromium)");
  const playwrightDir = need(process.env.PLAYWRIGHT_CORE || "", "playwright-core (PLAYWRIGHT_CORE; `make test-browser` installs it)");
  const { chromium } = require(playwrightDir);

  kubectl = (...args) => execFileSync(path.join(bin, "kubectl"), ["--kubeconfig", cp.KUBECONFIG, ...args], { encoding: "utf8" });
  kubectl("create", "namespace", NAMESPACE);
  kubectl("apply", "-n", NAMESPACE, "-k", path.join(ROOT, "manifests", "samples"));
  // The kubeconfig Secrets the samples name, as tests/common's apply_samples makes them: the
  // manager's connection test (a GET /version, as upstream's) passes against this control plane
  // for cluster1 and is refused on port 1 for cluster2.
  const closed = [
    "apiVersion: v1", "kind: Config",
    "clusters: [{name: closed, cluster: {server: 'https://127.0.0.1:1'}}]",
    "users: [{name: nobody, user: {}}]",
    "contexts: [{name: closed, context: {cluster: closed, user: nobody}}]",
    "current-context: closed", "",
  ].join("\n");
  kubectl("-n", NAMESPACE, "create", "secret", "generic", "cluster1-kubeconfig", `--from-file=kubeconfig=${cp.KUBECONFIG}`);
  kubectl("-n", NAMESPACE, "create", "secret", "generic", "cluster2-kubeconfig", `--from-literal=kubeconfig=${closed}`);

  const [exporterPort, promPort, mgrMetrics, mgrHealth] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  const manager = start("ksit-manager", [
    path.join(bin, "ksit-manager"), `--kubeconfig=${cp.KUBECONFIG}`, `--namespaces=${NAMESPACE}`,
    "--leader-elect", `--leader-election-namespace=${NAMESPACE}`,
    `--metrics-bind-address=127.0.0.1:${mgrMetrics}`, `--health-probe-bind-address=127.0.0.1:${mgrHealth}`,
  ]);
  // scripts/controlplane.sh down stops what a killed test leaves behind by these PID files.
  fs.writeFileSync(path.join(ROOT, "target", "controlplane", "run", `ksit-manager-browser-${process.pid}.pid`), `${manager.pid}\n`);

  // KSIT_CR_METRICS=always: outside a pod there is no Lease of its own to hold.
  start("ksit-exporter", [EXPORTER], {
    KUBECONFIG: cp.KUBECONFIG, KSIT_LISTEN_ADDR: `127.0.0.1:${exporterPort}`, KSIT_KUBERNETES: "true",
    KSIT_WATCH_NAMESPACES: NAMESPACE, KSIT_CR_METRICS: "always",
    KSIT_HEALTH_URLS: `http://127.0.0.1:${mgrHealth}/readyz`,
    KSIT_UPSTREAM_METRICS_URL: `http://127.0.0.1:${mgrMetrics}/metrics`,
  });
  exporterUrl = `http://127.0.0.1:${exporterPort}`;

  const config = path.join(OUT, "prometheus.yml");
  fs.writeFileSync(config, [
    "global: { scrape_interval: 1s, evaluation_interval: 1s }",
    "scrape_configs:",
    "  - job_name: ksit",
    `    static_configs: [{ targets: ["127.0.0.1:${exporterPort}"] }]`,
    "",
  ].join("\n"));
  start("prometheus", [
    prometheus, `--config.file=${config}`, `--storage.tsdb.path=${path.join(OUT, "tsdb")}`,
    `--web.listen-address=127.0.0.1:${promPort}`,
  ]);
  promUrl = `http://127.0.0.1:${promPort}`;

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
});

after(async () => {
  if (browser) await browser.close();
  for (const c of children) if (c.exited === null) c.kill("SIGTERM");
  await Promise.all(children.map((c) => c.exited === null && new Promise((r) => c.once("exit", r))));
  fs.rmSync(path.join(ROOT, "target", "controlplane", "run", `ksit-manager-browser-${process.pid}.pid`), { force: true });
  if (kubectl) kubectl("delete", "namespace", NAMESPACE, "--wait=false", "--ignore-not-found");
});

// The visible text of each cell of the #clusters row for IntegrationTarget NAME.
async function clusterRow(name) {
  const row = page.locator(`#clusters tr[data-kind="IntegrationTarget"][data-namespace="${NAMESPACE}"][data-name="${name}"]`);
  if ((await row.count()) !== 1) throw new Error(`no single #clusters row for ${name}`);
  return { state: await row.getAttribute("data-state"), cells: (await row.locator("td, th").allInnerTexts()).map((t) => t.trim()) };
}

test("the status page shows the failing cluster as failing and the ready one as ready", async () => {
  // The manager writes the statuses a moment after the exporter's first list: until then both
  // rows may say unknown. Reload until neither does.
  const [ready, failing] = await eventually("both clusters known on the status page", async () => {
    const res = await page.goto(`${exporterUrl}/`);
    assert.equal(res.status(), 200, "GET / status");
    const rows = [await clusterRow("cluster1"), await clusterRow("cluster2")];
    for (const r of rows) if (r.state === "unknown") throw new Error(`still unknown: ${r.cells.join(" | ")}`);
    return rows;
  });
  assert.equal(await page.title(), "ksit-exporter");
  // What a person reads, not only the attribute: exactly one state cell each, and the right one.
  assert.equal(failing.state, "failing", `cluster2 (its Secret names a closed port) row: ${failing.cells.join(" | ")}`);
  assert.ok(failing.cells.includes("failing") && !failing.cells.includes("ready"), `cluster2 shown as: ${failing.cells.join(" | ")}`);
  assert.equal(ready.state, "ready", `cluster1 row: ${ready.cells.join(" | ")}`);
  assert.ok(ready.cells.includes("ready") && !ready.cells.includes("failing"), `cluster1 shown as: ${ready.cells.join(" | ")}`);
  const summary = await page.locator("#summary").innerText();
  const m = /(\d+) clusters?: (\d+) ready, (\d+) failing, (\d+) unknown/.exec(summary);
  assert.ok(m, `#summary: ${summary}`);
  assert.deepEqual(m.slice(1).map(Number), [2, 1, 1, 0], `#summary: ${summary}`);
  await page.screenshot({ path: path.join(OUT, "status-page.png") });
});

test("Prometheus's graph page draws ksit_cluster_status for both clusters", async () => {
  // The data first, so a failure says whether the scrape or the page is at fault.
  await eventually("ksit_cluster_status for both clusters in Prometheus", async () => {
    const body = await (await getOk(`${promUrl}/api/v1/query?query=ksit_cluster_status`)).json();
    const got = body.data.result.map((s) => `${s.metric.target}=${s.value[1]}`).sort();
    assert.deepEqual(got, ["cluster1=1", "cluster2=0"]);
  });
  // The link scripts/demo-local.sh prints: the mantine UI's query page, graph tab.
  await page.goto(`${promUrl}/query?g0.expr=ksit_cluster_status&g0.tab=graph&g0.range_input=1m`);
  // uPlot's legend: one row per drawn series, labelled with its labels.
  const legend = page.locator(".u-legend .u-series .u-label");
  const labels = await eventually("two series in the graph's legend", async () => {
    const texts = await legend.allInnerTexts();
    const series = texts.filter((t) => t.includes("ksit_cluster_status"));
    if (series.length < 2) throw new Error(`legend: ${JSON.stringify(texts)}`);
    return series;
  });
  for (const name of ["cluster1", "cluster2"]) {
    assert.equal(labels.filter((t) => t.includes(`target="${name}"`)).length, 1, `legend entries for ${name}: ${JSON.stringify(labels)}`);
  }
  assert.equal(await page.locator(".u-over").count(), 1, "one uPlot chart drawn");
  await page.screenshot({ path: path.join(OUT, "prometheus-graph.png"), fullPage: true });
});
