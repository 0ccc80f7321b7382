#!/usr/bin/env python3
"""ksit-exporter side by side with kube-state-metrics and node_exporter, in one run; BENCHMARKS.md.

Usage: bench_compare.py                  measure; write target/bench-compare.json and BENCHMARKS.md
       bench_compare.py --markdown JSON  only rewrite BENCHMARKS.md from an earlier run's JSON

Needs the test control plane up (scripts/controlplane.sh up; `make bench-compare` does it all),
kube-state-metrics built by `scripts/controlplane.sh build-bench`, the sidecar image's binary and Debian's
prometheus-node-exporter and wrk. BENCH_SIZES (default "100 1000 5000 10000 100000") lists the IntegrationTarget
counts; BENCH_SHORT=1 shortens every window (a smoke run of this script, not figures to keep).

For each N, IntegrationTargets are created in namespace ksit-bench (half ready, half failing, each
with lastSyncTime and a Ready condition, written through the status subresource), then each tool
runs in turn on the same objects and is measured on loopback (N/10 Integrations beside them):
  - exec to the first /metrics holding all N targets' and N/10 Integrations' series, LISTs made
    meanwhile, VmRSS 2 s after that (memory per object: RSS at N minus RSS at 0 objects, over N):
    then body and gzip size, scrapes/s, p50/p99 and CPU per scrape under wrk's fixed-concurrency
    load (CONNECTIONS kept-alive connections asking for gzip) for SCRAPE_SECONDS: STARTS starts,
    medians kept; the rest is measured on the last start;
  - CPU per status update: UPDATES lastSyncTime patches at 20/s, the process's CPU time from
    /proc/PID/stat over that window (idle CPU measured before it, reported beside);
  - ready->failed (and back) flip latency: from sending the patch to the first scrape showing it,
    scraping back to back; FLIPS flips without churn, then FLIPS with 20 updates/s to other objects;
  - VmRSS before and after CHURN_SECONDS of that churn.
At N of LARGE or more, each tool is started once, and then three of each run sharded
(ksit-exporter with KSIT_CR_METRICS=sharded and KSIT_SHARD=i/3, kube-state-metrics with --shard=i
--total-shards=3), started together: exec to every target visible on exactly one of them, and
each one's RSS, peak and body. Pollers wait N/100,000 s between scrapes there, as a 90 MB body
costs both tools (and the parser here) a tenth of a second and more.
After the sizes up to GROWN, ksit-exporter alone is started with no targets, grown to GROWN while it
watches, and left at rest for WATCH_WINDOW (longer than kube-rs's watch timeout): its API requests
in that window.
node_exporter (its defaults) is scraped the same way beside the exporter at the first N.
Nothing is asserted: this records figures; the issue's targets are compared in BENCHMARKS.md.
"""
import atexit
import datetime
import gzip
import http.client
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CP = os.path.join(ROOT, "target", "controlplane")
# The sidecar image's binary (static musl, `image` profile, no admission feature; scripts/image.sh
# builds the same): what runs beside every pod.
EXPORTER = os.path.join(ROOT, "target", "x86_64-unknown-linux-musl", "image", "ksit-exporter")
KSM = os.path.join(CP, "bin", "kube-state-metrics")
KSM_CONFIG = os.path.join(ROOT, "tests", "controlplane", "kube-state-metrics", "customresourcestate.yaml")
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
LOG_DIR = os.path.join(ROOT, "target", "bench-compare")
JSON_OUT = os.path.join(ROOT, "target", "bench-compare.json")
MD_OUT = os.path.join(ROOT, "BENCHMARKS.md")

NAMESPACE = "ksit-bench"
GROUP_PATH = "/apis/ksit.io/v1alpha1"
SIZES = [int(n) for n in os.environ.get("BENCH_SIZES", "100 1000 5000 10000 100000").split()]
# From this N on: one start per tool, then the sharded runs (BENCH_LARGE: to smoke-test them).
LARGE = int(os.environ.get("BENCH_LARGE", "50000"))
# The "grown while watching" run, after the sizes up to it.
GROWN = max([n for n in SIZES if n <= 10_000] or SIZES[:1])
SHARDS = 3
# Shorter for a smoke run of the script itself: BENCH_SIZES="10 20" BENCH_SHORT=1.
SHORT = os.environ.get("BENCH_SHORT") == "1"
SCRAPE_SECONDS = 1 if SHORT else 5
# Scrapers at once during the load (wrk); a Prometheus HA pair plus a person or two.
CONNECTIONS = 4
# Starts of each tool at each N for exec-to-visible, LISTs and RSS: median, min and max.
STARTS = 1 if SHORT else 3
# Longer than kube-rs's watch timeout (290 s), so every watch is re-established once in it.
WATCH_WINDOW = 20 if SHORT else 320
UPDATE_RATE = 20
# CPU time comes in clock ticks (10 ms): enough updates that a 0.1 ms cost is 4 ticks.
UPDATES = 20 if SHORT else 400
FLIPS = 2 if SHORT else 6
CHURN_SECONDS = 5 if SHORT else 30
READY_TIMEOUT = 300
FLIP_TIMEOUT = 60
CLK_TCK = os.sysconf("SC_CLK_TCK")
# lastSyncTime of every update is this plus a counter, so each patch changes the object: a patch
# that changes nothing writes no new resourceVersion and sends no watch event.
SYNC_BASE = int(time.time())
sync_counter = 0
sync_lock = threading.Lock()


def log(msg):
    print(f"[bench-compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def next_sync_time():
    global sync_counter
    with sync_lock:
        sync_counter += 1
        t = SYNC_BASE + sync_counter
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """The test API server over kept-alive HTTPS, one connection per thread, as its admin."""

    def __init__(self, timeout=30):
        self.timeout = timeout
        env = {}
        with open(os.path.join(CP, "env")) as f:
            for line in f:
                if line.startswith("export "):
                    k, _, v = line[len("export ") :].strip().partition("=")
                    env[k] = v.strip("'")
        self.kubeconfig = env["KUBECONFIG"]
        host, port = env["KSIT_CONTROLPLANE_SERVER"].removeprefix("https://").rsplit(":", 1)
        self.host, self.port = host, int(port)
        pki = os.path.join(CP, "pki")
        self.ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
        self.ctx.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))
        self.local = threading.local()

    def request(self, method, path, body=None, content_type="application/json"):
        for attempt in range(3):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=self.timeout)
            try:
                headers = {"Content-Type": content_type} if body is not None else {}
                conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.status >= 500 and attempt < 2:
                    continue
                return resp.status, data
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def must(self, method, path, body=None, content_type="application/json", ok=(200, 201)):
        status, data = self.request(method, path, body, content_type)
        if status not in ok:
            raise SystemExit(f"{method} {path}: HTTP {status}: {data[:300]!r}")
        return data


def target_name(i):
    return f"it-{i:05d}"


def status_of(ready):
    now = next_sync_time()
    return {
        "status": {
            "ready": ready,
            "lastSyncTime": now,
            "message": "cluster reachable" if ready else "connection refused",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": now,
                    "reason": "ClusterReady" if ready else "ConnectionFailed",
                    "message": "cluster reachable" if ready else "connection refused",
                }
            ],
        }
    }


def patch_status(api, i, body):
    api.must(
        "PATCH",
        f"{GROUP_PATH}/namespaces/{NAMESPACE}/integrationtargets/{target_name(i)}/status",
        body,
        "application/merge-patch+json",
    )


def create_targets(api, start, end):
    """Targets start..end-1: even ones ready, odd ones failing."""

    def one(i):
        obj = {
            "apiVersion": "ksit.io/v1alpha1",
            "kind": "IntegrationTarget",
            "metadata": {"name": target_name(i), "namespace": NAMESPACE},
            "spec": {"clusterName": f"edge-cluster-{i:05d}"},
        }
        api.must("POST", f"{GROUP_PATH}/namespaces/{NAMESPACE}/integrationtargets", obj, ok=(201, 409))
        patch_status(api, i, status_of(i % 2 == 0))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(start, end)))
    log(f"created targets {start}..{end - 1} in {time.perf_counter() - t0:.1f}s")


def integration_name(i):
    return f"int-{i:05d}"


def create_integrations(api, start, end):
    """Integrations start..end-1, one per ten targets: even ones Running, odd ones Failed."""

    def one(i):
        obj = {
            "apiVersion": "ksit.io/v1alpha1",
            "kind": "Integration",
            "metadata": {"name": integration_name(i), "namespace": NAMESPACE},
            "spec": {"type": "argocd", "enabled": True, "targetClusters": [f"edge-cluster-{i * 10:05d}"]},
        }
        api.must("POST", f"{GROUP_PATH}/namespaces/{NAMESPACE}/integrations", obj, ok=(201, 409))
        running = i % 2 == 0
        now = next_sync_time()
        status = {
            "status": {
                "phase": "Running" if running else "Failed",
                "observedGeneration": 1,
                "lastReconcileTime": now,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True" if running else "False",
                        "lastTransitionTime": now,
                        "reason": "Installed" if running else "InstallFailed",
                        "message": "installed" if running else "Auto-install failed: chart not found",
                    }
                ],
            }
        }
        api.must(
            "PATCH",
            f"{GROUP_PATH}/namespaces/{NAMESPACE}/integrations/{integration_name(i)}/status",
            status,
            "application/merge-patch+json",
        )

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(start, end)))
    log(f"created integrations {start}..{end - 1}")


def list_count(api, verb="LIST"):
    """Requests of VERB on IntegrationTargets the API server has answered so far (its
    apiserver_request_total; a WATCH is counted when it ends)."""
    total = 0
    for line in api.must("GET", "/metrics").decode().splitlines():
        if line.startswith("apiserver_request_total{") and 'resource="integrationtargets"' in line and f'verb="{verb}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def apiserver_bytes(api):
    """Bytes the API server has sent about IntegrationTargets: in responses (LIST, GET; its
    apiserver_response_sizes_sum) and in watch events (apiserver_watch_events_sizes_sum)."""
    out = {"response": 0.0, "watch_events": 0.0}
    for line in api.must("GET", "/metrics").decode().splitlines():
        if 'resource="integrationtargets"' not in line:
            continue
        if line.startswith("apiserver_response_sizes_sum{"):
            out["response"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("apiserver_watch_events_sizes_sum{"):
            out["watch_events"] += float(line.rsplit(" ", 1)[1])
    return out


def poll_interval(n):
    """Between scrapes while waiting: at 100,000 objects a plain body is ~90 MB."""
    return max(0.01, n / 100_000)


def proc_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    mem = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                mem[line.split(":")[0]] = int(line.split()[1]) * 1024
    return cpu, mem["VmRSS"], mem["VmHWM"]


class Scraper:
    """GET /metrics over one kept-alive connection."""

    def __init__(self, port, path="/metrics"):
        self.port, self.path, self.conn = port, path, None

    def get(self, gz=False, decode=True):
        """(status, body as received, decoded body unless DECODE is false)"""
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request("GET", self.path, headers={"Accept-Encoding": "gzip"} if gz else {})
                resp = self.conn.getresponse()
                raw = resp.read()
                enc = resp.getheader("Content-Encoding", "")
                return resp.status, raw, gzip.decompress(raw) if decode and enc == "gzip" else raw
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn:
            self.conn.close()


def status_value(body, name):
    """The value of ksit_cluster_status for target NAME in BODY, or None."""
    key = f'target="{name}"'.encode()
    pos = 0
    while (i := body.find(key, pos)) >= 0:
        start = body.rfind(b"\n", 0, i) + 1
        end = body.find(b"\n", i)
        end = len(body) if end < 0 else end
        line = body[start:end]
        if line.startswith(b"ksit_cluster_status{"):
            return float(line.rsplit(b" ", 1)[1])
        pos = end
    return None


def count_series(body, name):
    return body.count(b"\n" + name + b"{") + body.startswith(name + b"{")


def count_targets(body):
    return count_series(body, b"ksit_cluster_status")


def complete(body, n):
    """Whether BODY holds all N targets' and N/10 Integrations' series."""
    return count_targets(body) >= n and count_series(body, b"ksit_integration_info") >= n // 10


class Tool:
    # Started and not yet stopped: stopped at exit, so that a run that fails leaves none behind.
    running = set()

    def __init__(self, name, argv, env, port):
        self.name, self.argv, self.env, self.port = name, argv, env, port
        self.proc = None

    def start(self):
        os.makedirs(LOG_DIR, exist_ok=True)
        self.logf = open(os.path.join(LOG_DIR, f"{self.name}.log"), "ab")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self.logf, stderr=self.logf)
        Tool.running.add(self)

    def wait_complete(self, n):
        """Seconds from exec to a 200 /metrics holding N targets' and N/10 Integrations' series
        (N=0: to a 200)."""
        scraper = Scraper(self.port)
        try:
            while True:
                try:
                    status, _, body = scraper.get()
                    if status == 200 and complete(body, n):
                        return time.perf_counter() - self.t0
                except OSError:
                    scraper.close()
                    scraper = Scraper(self.port)
                if self.proc.poll() is not None:
                    raise SystemExit(f"{self.name} exited with {self.proc.returncode}; see {LOG_DIR}/{self.name}.log")
                if time.perf_counter() - self.t0 > READY_TIMEOUT:
                    raise SystemExit(f"{self.name}: not all {n} targets in /metrics after {READY_TIMEOUT}s")
                time.sleep(poll_interval(n))
        finally:
            scraper.close()

    def stat(self):
        return proc_stat(self.proc.pid)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()
        Tool.running.discard(self)


atexit.register(lambda: [tool.stop() for tool in list(Tool.running)])


def exporter_tool(api, shard=None):
    """SHARD: (index, total), or None for one sidecar exporting every object."""
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "KUBECONFIG": api.kubeconfig,
        "KSIT_KUBERNETES": "true",
        "KSIT_CR_METRICS": "always",
        "KSIT_WATCH_NAMESPACES": NAMESPACE,
        "KSIT_LISTEN_ADDR": f"127.0.0.1:{port}",
        "RUST_LOG": "warn",
    }
    name = "ksit-exporter"
    if shard:
        env.update(KSIT_CR_METRICS="sharded", KSIT_SHARD=f"{shard[0]}/{shard[1]}")
        name += f"-shard{shard[0]}"
    return Tool(name, [EXPORTER], env, port)


def ksm_tool(api, shard=None):
    port = free_port()
    argv = [
        KSM,
        f"--kubeconfig={api.kubeconfig}",
        "--custom-resource-state-only",
        f"--custom-resource-state-config-file={KSM_CONFIG}",
        f"--namespaces={NAMESPACE}",
        "--host=127.0.0.1",
        f"--port={port}",
        "--telemetry-host=127.0.0.1",
        f"--telemetry-port={free_port()}",
        # Prometheus asks for gzip; ksit-exporter always honours it.
        "--enable-gzip-encoding",
        # ksit-exporter's one LIST is served from the API server's watch cache too.
        "--use-apiserver-cache",
    ]
    name = "kube-state-metrics"
    if shard:
        argv += [f"--shard={shard[0]}", f"--total-shards={shard[1]}"]
        name += f"-shard{shard[0]}"
    return Tool(name, argv, {"PATH": "/usr/bin:/bin"}, port)


def node_exporter_tool():
    port = free_port()
    return Tool("node_exporter", [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"], {"PATH": "/usr/bin:/bin"}, port)


def idle_cpu_rate(tool, seconds=2.0):
    c0, _, _ = tool.stat()
    time.sleep(seconds)
    c1, _, _ = tool.stat()
    return (c1 - c0) / seconds


def wrk_ms(text):
    """wrk's latency text ("812.00us", "1.20ms", "2.01s") in milliseconds."""
    for unit, factor in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    raise ValueError(f"wrk latency {text!r} has no unit")


def wrk_load(tool, path):
    """wrk's figures for a fixed-concurrency load (CONNECTIONS kept-alive connections asking for
    gzip) on PATH for SCRAPE_SECONDS, or six times that where no scrape completed in it."""
    for seconds in (SCRAPE_SECONDS, 6 * SCRAPE_SECONDS):
        out = subprocess.run(
            # wrk's own timeout is 2 s, and kube-state-metrics' gzip body at 100,000 objects
            # takes longer: a slow scrape is a figure, not an error.
            ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "60s", "--latency",
             "-H", "Accept-Encoding: gzip", f"http://127.0.0.1:{tool.port}{path}"],
            capture_output=True, text=True, check=True,
        ).stdout
        words = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] in ("50%", "99%"):
                words[parts[0]] = wrk_ms(parts[1])
            elif "requests in" in line:
                words["requests"] = int(parts[0])
            elif line.startswith("Requests/sec:"):
                words["rate"] = float(parts[1])
            elif "Non-2xx" in line or "Socket errors" in line:
                raise SystemExit(f"{tool.name}: wrk reports errors: {line.strip()}")
        if words.get("requests"):
            break
    if not {"50%", "99%", "requests", "rate"} <= words.keys() or not words["requests"]:
        raise SystemExit(f"{tool.name}: cannot read wrk's output:\n{out}")
    return words


def measure_scrapes(tool):
    """Body sizes from one scrape; then the load (wrk_load) on /metrics, and the tool's CPU over it."""
    scraper = Scraper(tool.port)
    _, raw, body = scraper.get(gz=True)
    scraper.close()
    c0, _, _ = tool.stat()
    words = wrk_load(tool, "/metrics")
    c1, _, _ = tool.stat()
    return {
        "body_bytes": len(body),
        "gzip_bytes": len(raw),
        "series": sum(1 for line in body.splitlines() if line and not line.startswith(b"#")),
        "scrapes": words["requests"],
        "scrapes_per_s": words["rate"],
        "scrape_p50_ms": words["50%"],
        "scrape_p99_ms": words["99%"],
        "cpu_per_scrape_us": (c1 - c0) / words["requests"] * 1e6,
    }


def steady_updates(api, indices, rate, count=None, stop=None):
    """lastSyncTime patches to INDICES in turn at RATE per second, COUNT of them or until STOP is set."""
    t0 = time.perf_counter()
    k = 0
    while (count is None or k < count) and not (stop and stop.is_set()):
        delay = t0 + k / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        patch_status(api, indices[k % len(indices)], {"status": {"lastSyncTime": next_sync_time()}})
        k += 1
    return k


def measure_updates(api, tool, n):
    # After the scrapes' garbage has been collected. Reported beside, not subtracted: at 10 ms
    # ticks, one tick more or less in a short idle window would swing the per-update figure.
    time.sleep(3)
    idle = idle_cpu_rate(tool, 5.0)
    c0, _, _ = tool.stat()
    t0 = time.perf_counter()
    done = steady_updates(api, list(range(1, n)), UPDATE_RATE, count=UPDATES)
    time.sleep(0.5)  # let the last events be handled
    wall = time.perf_counter() - t0
    c1, _, _ = tool.stat()
    return {
        "idle_cpu_percent": idle * 100,
        "cpu_per_update_ms": (c1 - c0) / done * 1e3,
        "updates": done,
    }


def flip_latencies(api, tool, count):
    """Target 0 flipped ready->failed and back COUNT times; seconds until each shows in /metrics."""
    scraper = Scraper(tool.port)
    out = []
    try:
        for k in range(count):
            ready = k % 2 == 1
            t0 = time.perf_counter()
            patch_status(api, 0, status_of(ready))
            while True:
                _, _, body = scraper.get()
                if status_value(body, target_name(0)) == float(ready):
                    out.append(time.perf_counter() - t0)
                    break
                if time.perf_counter() - t0 > FLIP_TIMEOUT:
                    out.append(None)
                    log(f"{tool.name}: flip {k} not visible after {FLIP_TIMEOUT}s")
                    break
                time.sleep(0.002)
            time.sleep(0.3)
    finally:
        scraper.close()
    # Leave target 0 ready, as created.
    if count % 2 == 1:
        patch_status(api, 0, status_of(True))
    return out


def summarise(lat):
    ok = [x * 1e3 for x in lat if x is not None]
    return {
        "median_ms": statistics.median(ok) if ok else None,
        "max_ms": max(ok) if ok else None,
        "all_ms": [round(x * 1e3, 1) if x is not None else None for x in lat],
        "timeouts": sum(x is None for x in lat),
    }


def measure_churn(api, tool, n):
    _, rss_before, _ = tool.stat()
    stop = threading.Event()
    churn = {}
    c0, _, _ = tool.stat()
    t0 = time.perf_counter()
    th = threading.Thread(target=lambda: churn.update(k=steady_updates(Api(), list(range(1, n)), UPDATE_RATE, stop=stop)))
    th.start()
    try:
        time.sleep(1)
        flips = flip_latencies(api, tool, FLIPS)
        remaining = CHURN_SECONDS - (time.perf_counter() - t0)
        if remaining > 0:
            time.sleep(remaining)
    finally:
        stop.set()
        th.join()
    wall = time.perf_counter() - t0
    c1, _, _ = tool.stat()
    time.sleep(2)
    _, rss_after, hwm = tool.stat()
    return {
        "flip_churn": summarise(flips),
        "churn_updates": churn.get("k", 0),
        "churn_seconds": wall,
        "cpu_percent_under_churn": (c1 - c0) / wall * 100,
        "rss_before_churn": rss_before,
        "rss_after_churn": rss_after,
        "hwm_after_churn": hwm,
    }


def start_once(api, tool, n):
    """Start TOOL; exec to all N objects visible, LISTs made meanwhile, VmRSS and VmHWM 2 s later,
    then (N > 0) the scrape load."""
    lists, watches = list_count(api), list_count(api, "WATCH")
    sent = apiserver_bytes(api)
    tool.start()
    r = {"ready_s": tool.wait_complete(n)}
    r["lists_at_start"] = list_count(api) - lists
    r.update({f"api_{k}_bytes_at_start": v - sent[k] for k, v in apiserver_bytes(api).items()})
    # Streamed first reads (WatchList) are counted when they end, which they do at startup
    # only if refused; the open ones are counted from apiserver_longrunning_requests.
    r["watches_at_start"] = list_count(api, "WATCH") - watches
    time.sleep(2)
    _, r["rss_ready"], r["hwm_ready"] = tool.stat()
    if n:
        # On every start: one window swings by 20% with what else the 2 cores run.
        r.update(measure_scrapes(tool))
    return r


def run_tool(api, make_tool, n):
    """STARTS starts of a fresh tool (medians of their start figures), then the rest on the last."""
    starts = []
    count = 1 if n >= LARGE else STARTS
    for k in range(count):
        tool = make_tool()
        log(f"{tool.name} at N={n}, start {k + 1} of {count}")
        try:
            starts.append(start_once(api, tool, n))
        finally:
            if k < count - 1:
                tool.stop()
    r = {key: statistics.median(s[key] for s in starts) for key in starts[0]}
    r["starts"] = starts
    try:
        if n == 0:
            return r
        if n == SIZES[0] and tool.name == "ksit-exporter":
            # What wrk and this machine allow at all: the same load on a 3-byte body.
            r["healthz_per_s"] = wrk_load(tool, "/healthz")["rate"]
        r.update(measure_updates(api, tool, n))
        r["flip"] = summarise(flip_latencies(api, tool, FLIPS))
        r.update(measure_churn(api, tool, n))
        log(
            f"{tool.name} N={n}: ready {r['ready_s']:.2f}s, RSS {r['rss_ready'] / 2**20:.1f} MiB, "
            f"{r['scrapes_per_s']:.0f} scrapes/s, {r['cpu_per_update_ms']:.3f} ms/update, "
            f"flip {r['flip']['median_ms']} / churn {r['flip_churn']['median_ms']} ms"
        )
        return r
    finally:
        tool.stop()


def target_names(body):
    """The targets of ksit_cluster_status's series in BODY (its target label)."""
    out = []
    for line in body.split(b"\n"):
        if line.startswith(b"ksit_cluster_status{"):
            i = line.find(b'target="')
            out.append(line[i + 8 : line.index(b'"', i + 8)])
    return out


def run_sharded(api, make_tool, n):
    """SHARDS instances of one tool, sharded, started together: exec to every target visible
    on exactly one of them (and every Integration on one), then each one's RSS, peak and body."""
    tools = [make_tool((i, SHARDS)) for i in range(SHARDS)]
    log(f"{tools[0].name.rsplit('-', 1)[0]} x{SHARDS} sharded at N={n}")
    lists = list_count(api)
    sent = apiserver_bytes(api)
    scrapers = [Scraper(t.port) for t in tools]
    try:
        for t in tools:
            t.start()
        t0 = tools[0].t0
        while True:
            bodies = []
            for t, sc in zip(tools, scrapers):
                try:
                    status, _, body = sc.get()
                    bodies.append(body if status == 200 else b"")
                except OSError:
                    sc.close()
                    bodies.append(b"")
                if t.proc.poll() is not None:
                    raise SystemExit(f"{t.name} exited with {t.proc.returncode}; see {LOG_DIR}/{t.name}.log")
            counts = [count_targets(b) for b in bodies]
            integrations = sum(count_series(b, b"ksit_integration_info") for b in bodies)
            if sum(counts) >= n and integrations >= n // 10:
                ready = time.perf_counter() - t0
                break
            if time.perf_counter() - t0 > READY_TIMEOUT:
                raise SystemExit(f"sharded: {sum(counts)} of {n} targets after {READY_TIMEOUT}s")
            time.sleep(poll_interval(n))
        names = [name for b in bodies for name in target_names(b)]
        time.sleep(2)
        each = []
        for t, sc in zip(tools, scrapers):
            _, raw, body = sc.get(gz=True)
            _, rss, hwm = t.stat()
            each.append({"targets": count_targets(body), "rss": rss, "hwm": hwm, "body_bytes": len(body), "gzip_bytes": len(raw)})
        sent_after = apiserver_bytes(api)
        return {
            "ready_s": ready,
            "targets_served": len(names),
            "targets_distinct": len(set(names)),
            "lists_at_start": list_count(api) - lists,
            **{f"api_{k}_bytes_at_start": v - sent[k] for k, v in sent_after.items()},
            "shards": each,
        }
    finally:
        for sc in scrapers:
            sc.close()
        for t in tools:
            t.stop()


def request_counts(api):
    """apiserver_request_total for the kinds the exporter watches, by resource and verb."""
    out = {}
    for line in api.must("GET", "/metrics").decode().splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1 : line.rindex("}")].split(","))
        resource = labels.get("resource", "").strip('"')
        if resource in ("integrationtargets", "integrations", "managedclusters"):
            key = f'{resource} {labels["verb"].strip(chr(34))}'
            out[key] = out.get(key, 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


def measure_grown(api, n):
    """ksit-exporter started with no objects, then N created while it watches: its RSS without
    whatever the initial LIST of N objects leaves behind."""
    # One request; at 10,000 objects it takes longer than the usual timeout.
    Api(timeout=600).must("DELETE", f"{GROUP_PATH}/namespaces/{NAMESPACE}/integrationtargets")
    deadline = time.perf_counter() + 120
    while json.loads(api.must("GET", f"{GROUP_PATH}/namespaces/{NAMESPACE}/integrationtargets?limit=1"))["items"]:
        if time.perf_counter() > deadline:
            raise SystemExit("IntegrationTargets still there 120 s after deleting them")
        time.sleep(0.5)
    tool = exporter_tool(api)
    log(f"ksit-exporter started empty, grown to N={n}")
    tool.start()
    try:
        tool.wait_complete(0)
        time.sleep(2)
        _, rss_empty, _ = tool.stat()
        create_targets(api, 0, n)
        tool.t0 = time.perf_counter()
        tool.wait_complete(n)
        time.sleep(2)
        _, rss, hwm = tool.stat()
        log(f"ksit-exporter at N={n}: counting its API requests for {WATCH_WINDOW} s")
        before = request_counts(api)
        c0, _, _ = tool.stat()
        time.sleep(WATCH_WINDOW)
        c1, _, rss_window_end = tool.stat()
        after = request_counts(api)
        window = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
        return {
            "n": n,
            "rss_empty": rss_empty,
            "rss_grown": rss,
            "hwm_grown": hwm,
            "window_s": WATCH_WINDOW,
            "window_requests": window,
            "window_cpu_percent": (c1 - c0) / WATCH_WINDOW * 100,
            "rss_window_end": rss_window_end,
        }
    finally:
        tool.stop()


def run_node_exporter():
    """STARTS starts, each scraped under the same load as the others; medians of their figures."""
    starts = []
    for k in range(STARTS):
        tool = node_exporter_tool()
        log(f"node_exporter, start {k + 1} of {STARTS}")
        tool.start()
        try:
            r = {"ready_s": tool.wait_complete(0)}
            time.sleep(2)
            _, r["rss_ready"], r["hwm_ready"] = tool.stat()
            r.update(measure_scrapes(tool))
            starts.append(r)
        finally:
            tool.stop()
    r = {key: statistics.median(s[key] for s in starts) for key in starts[0]}
    r["starts"] = starts
    return r


def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def measure():
    for path, what in [
        (EXPORTER, "cargo build --profile image --target x86_64-unknown-linux-musl --no-default-features"),
        (KSM, "scripts/controlplane.sh build-bench"),
        (NODE_EXPORTER, "apt-get install prometheus-node-exporter"),
        ("/usr/bin/wrk", "apt-get install wrk"),
    ]:
        if not os.access(path, os.X_OK):
            raise SystemExit(f"{path} missing: run `{what}` first (make bench-compare does)")
    api = Api()
    commit = git("rev-parse", "--short", "HEAD")
    if git("status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"):
        commit += " plus uncommitted changes"
    res = {
        "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "load_start": loadavg(),
        "exporter_version": subprocess.run([EXPORTER, "--version"], capture_output=True, text=True).stdout.strip(),
        "ksm_version": os.path.basename(os.path.dirname(os.path.realpath(KSM))),
        "sizes": SIZES,
        "runs": {},
    }
    status, _ = api.request("GET", f"/api/v1/namespaces/{NAMESPACE}")
    if status == 200:
        raise SystemExit(f"namespace {NAMESPACE} exists: start from a fresh control plane (scripts/controlplane.sh down)")
    api.must("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    t_start = time.perf_counter()
    res["exporter_bytes"] = os.path.getsize(EXPORTER)
    have = 0
    for n in [0, *SIZES]:
        if n > GROWN and "grown" not in res:
            # It deletes the targets and creates GROWN of them again.
            res["grown"] = measure_grown(api, GROWN)
            have = GROWN
        if n > have:
            create_targets(api, have, n)
            create_integrations(api, have // 10, n // 10)
            have = n
        run = {"load_before": loadavg()}
        run["ksit-exporter"] = run_tool(api, lambda: exporter_tool(api), n)
        run["kube-state-metrics"] = run_tool(api, lambda: ksm_tool(api), n)
        if n == SIZES[0]:
            run["node_exporter"] = run_node_exporter()
        if n >= LARGE:
            run["sharded"] = {
                "ksit-exporter": run_sharded(api, lambda sh: exporter_tool(api, sh), n),
                "kube-state-metrics": run_sharded(api, lambda sh: ksm_tool(api, sh), n),
            }
        run["load_after"] = loadavg()
        res["runs"][str(n)] = run
        # Written after each N, so an interrupted run keeps what it measured.
        with open(JSON_OUT, "w") as f:
            json.dump(res, f, indent=1)
    if "grown" not in res:
        res["grown"] = measure_grown(api, GROWN)
    res["load_end"] = loadavg()
    res["minutes"] = (time.perf_counter() - t_start) / 60
    with open(JSON_OUT, "w") as f:
        json.dump(res, f, indent=1)
    log(f"wrote {JSON_OUT}")
    return res


# --- BENCHMARKS.md -------------------------------------------------------------------------

def mib(b):
    return f"{b / 2**20:.1f} MiB"


def kib(b):
    return f"{b / 1024:.1f} KiB"


def ms(x):
    return "timeout" if x is None else (f"{x:.1f} ms" if x >= 1 else f"{x:.3f} ms")


def opt(fmt):
    return lambda v: "n/a" if v is None else fmt(v)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    r = a / b
    return f"{r:.0f}x" if r >= 10 else f"{r:.2f}x"


def flip_cell(f):
    extra = f", {f['timeouts']} timed out" if f["timeouts"] else ""
    return f"{ms(f['median_ms'])} (max {ms(f['max_ms'])}{extra})"


ROWS = [
    # (what, value from a run's result, its text, "lower is better")
    ("exec to all N objects in /metrics (median of the starts)", lambda r, b: r["ready_s"] * 1e3, lambda v: ms(v), True),
    ("LISTs of IntegrationTargets at startup", lambda r, b: r["lists_at_start"], lambda v: f"{v}", True),
    ("API server's bytes about IntegrationTargets at startup: LIST/GET responses", lambda r, b: r.get("api_response_bytes_at_start"), opt(mib), True),
    ("API server's bytes about IntegrationTargets at startup: watch events", lambda r, b: r.get("api_watch_events_bytes_at_start"), opt(mib), True),
    ("RSS 2 s after ready (VmRSS, median of the starts)", lambda r, b: r["rss_ready"], mib, True),
    ("peak at ready, initial sync included (VmHWM, median of the starts)", lambda r, b: r.get("hwm_ready"), opt(mib), True),
    ("memory per object ((RSS at N - RSS at 0) / N)", lambda r, b: (r["rss_ready"] - b["rss_ready"]) / r["n"], kib, True),
    ("high water mark after churn (VmHWM)", lambda r, b: r["hwm_after_churn"], mib, True),
    ("/metrics body (plain)", lambda r, b: r["body_bytes"], kib, True),
    ("/metrics body (gzip)", lambda r, b: r["gzip_bytes"], kib, True),
    ("series in the body", lambda r, b: r["series"], lambda v: f"{v:,}", True),
    (f"scrapes/s (gzip, wrk with {CONNECTIONS} kept-alive connections)", lambda r, b: r["scrapes_per_s"], lambda v: f"{v:.0f}", False),
    ("scrape latency p50", lambda r, b: r["scrape_p50_ms"], ms, True),
    ("scrape latency p99", lambda r, b: r["scrape_p99_ms"], ms, True),
    ("CPU per scrape", lambda r, b: r["cpu_per_scrape_us"], lambda v: f"{v:.0f} us", True),
    ("scrapes per CPU-second (1 / CPU per scrape)", lambda r, b: 1e6 / r["cpu_per_scrape_us"], lambda v: f"{v:.0f}", False),
    ("idle CPU (5 s, before the updates)", lambda r, b: r["idle_cpu_percent"], lambda v: f"{v:.1f}%", True),
    ("CPU per status update (20/s; idle included)", lambda r, b: r["cpu_per_update_ms"], ms, True),
    ("flip ready->failed visible, no churn: median", lambda r, b: r["flip"]["median_ms"], lambda v: ms(v), True),
    ("flip visible under 20 updates/s of churn: median", lambda r, b: r["flip_churn"]["median_ms"], lambda v: ms(v), True),
    ("CPU while churning (20 updates/s + flips)", lambda r, b: r["cpu_percent_under_churn"], lambda v: f"{v:.1f}%", True),
    (f"RSS before -> after {CHURN_SECONDS} s of churn", lambda r, b: r["rss_after_churn"] / r["rss_before_churn"], None, True),
]


def starts_cell(r):
    starts = r.get("starts", [])
    cell = f"{[round(x['ready_s'] * 1e3, 1) for x in starts]}, {[round(x['rss_ready'] / 2**20, 1) for x in starts]}"
    if starts and "scrapes_per_s" in starts[0]:
        cell += f", {[round(x['scrapes_per_s']) for x in starts]}"
    return cell


def table_for(n, run, base):
    e, k = dict(run["ksit-exporter"], n=n), dict(run["kube-state-metrics"], n=n)
    eb, kb = base["ksit-exporter"], base["kube-state-metrics"]
    lines = [
        f"### N = {n:,} IntegrationTargets, {n // 10:,} Integrations",
        "",
        "| what | ksit-exporter | kube-state-metrics | ratio (ksit / ksm) |",
        "|---|---|---|---|",
    ]
    for what, get, fmt, _ in ROWS:
        if fmt is None:  # the churn growth row: both RSS figures, and the growth as a percentage
            cells = [
                f"{mib(r['rss_before_churn'])} -> {mib(r['rss_after_churn'])} ({(r['rss_after_churn'] / r['rss_before_churn'] - 1) * 100:+.1f}%)"
                for r in (e, k)
            ]
            lines.append(f"| {what} | {cells[0]} | {cells[1]} | |")
            continue
        a, b = get(e, eb), get(k, kb)
        lines.append(f"| {what} | {fmt(a)} | {fmt(b)} | {ratio(a, b)} |")
    lines.append(
        f"| starts: exec to visible (ms), RSS (MiB), scrapes/s | {starts_cell(e)} | {starts_cell(k)} | |"
    )
    lines.append(
        f"| flips (ms), no churn / churn | {e['flip']['all_ms']} / {e['flip_churn']['all_ms']} "
        f"| {k['flip']['all_ms']} / {k['flip_churn']['all_ms']} | |"
    )
    return lines


def targets_section(res):
    runs = res["runs"]
    sizes = res["sizes"]
    lo, hi = str(sizes[0]), str(sizes[-1])
    e = {n: dict(runs[n]["ksit-exporter"], n=int(n)) for n in runs if n != "0"}
    k = {n: runs[n]["kube-state-metrics"] for n in runs if n != "0"}
    e0 = runs["0"]["ksit-exporter"]
    ne = runs[lo]["node_exporter"]

    def mark(ok):
        return "met" if ok else "**missed**"

    upd_lo, upd_hi = e[lo]["cpu_per_update_ms"], e[hi]["cpu_per_update_ms"]
    flip_hi = e[hi]["flip_churn"]["median_ms"]
    per_obj = {n: (e[n]["rss_ready"] - e0["rss_ready"]) / e[n]["n"] for n in e}
    growth = {n: e[n]["rss_after_churn"] / e[n]["rss_before_churn"] - 1 for n in e}
    ksm_x = {n: e[n]["scrapes_per_s"] / k[n]["scrapes_per_s"] for n in e}
    # node_exporter's body does not grow with N; it is measured at the first N only and compared at every N.
    ne_x = {n: e[n]["scrapes_per_s"] / ne["scrapes_per_s"] for n in e}
    g = res.get("grown")
    grown_text, grown_ok = "not measured", None
    if g:
        per = (g["rss_grown"] - g["rss_empty"]) / g["n"]
        grown_text = f"{kib(per)} ({mib(g['rss_empty'])} with no targets -> {mib(g['rss_grown'])} at N={g['n']})"
        grown_ok = per <= 8192
    # The load generator shares the machine's cores with the tool: what the CPU allows is the
    # other reading of "scrapes per second".
    ksm_cpu_x = {n: k[n]["cpu_per_scrape_us"] / e[n]["cpu_per_scrape_us"] for n in e}
    ne_cpu_x = {n: ne["cpu_per_scrape_us"] / e[n]["cpu_per_scrape_us"] for n in e}
    # Series served per second: node_exporter's body is fixed while ours grows with N, so at
    # large N a scrape rate 100x node_exporter's would mean serving far more bytes per second
    # than loopback carries; this is the like-for-like reading (absent from older result files).
    ne_series_x = {
        n: e[n]["scrapes_per_s"] * e[n]["series"] / (ne["scrapes_per_s"] * ne["series"])
        for n in e
        if "series" in e[n] and "series" in ne
    }
    rows = [
        (
            f"CPU per status update flat in N (N={hi} within 2x of N={lo}) and at or below kube-state-metrics'",
            f"{ms(upd_lo)} at N={lo}, {ms(upd_hi)} at N={hi} ({ratio(upd_hi, upd_lo)}); kube-state-metrics {ms(k[hi]['cpu_per_update_ms'])} at N={hi}",
            upd_hi <= 2 * upd_lo and all(e[n]["cpu_per_update_ms"] <= k[n]["cpu_per_update_ms"] for n in e),
        ),
        (
            f"flip visible under churn: median under 100 ms at the largest N (issue: N=10,000; here N={hi})",
            f"{ms(flip_hi)} (kube-state-metrics {ms(k[hi]['flip_churn']['median_ms'])})",
            flip_hi is not None and flip_hi < 100 and e[hi]["flip_churn"]["timeouts"] == 0,
        ),
        (
            "memory per object at most 8 KiB",
            ", ".join(f"{kib(per_obj[n])} at N={n}" for n in e),
            all(v <= 8192 for v in per_obj.values()),
        ),
        (
            f"memory per object at most 8 KiB, started with no targets and grown to N={g['n'] if g else hi} while watching (no initial LIST of N)",
            grown_text,
            grown_ok,
        ),
        (
            "RSS after churn within 5% of before",
            ", ".join(f"{growth[n] * 100:+.1f}% at N={n}" for n in e),
            all(abs(g) <= 0.05 for g in growth.values()),
        ),
        (
            "scrapes/s at least 50x kube-state-metrics' at every N",
            ", ".join(f"{ksm_x[n]:.1f}x at N={n}" for n in e)
            + "; per CPU-second: "
            + ", ".join(f"{ksm_cpu_x[n]:.0f}x at N={n}" for n in e)
            + (
                f"; the same load on ksit-exporter's /healthz (a 3-byte body) at N={lo}: "
                f"{e[lo]['healthz_per_s']:.0f}/s, {e[lo]['healthz_per_s'] / k[lo]['scrapes_per_s']:.1f}x"
                if "healthz_per_s" in e[lo]
                else ""
            ),
            all(x >= 50 for x in ksm_x.values()),
        ),
        (
            f"scrapes/s at least 100x node_exporter's at every N (node_exporter measured at N={lo} only: its body does not grow)",
            ", ".join(f"{ne_x[n]:.1f}x at N={n}" for n in e)
            + "; per CPU-second: "
            + ", ".join(f"{ne_cpu_x[n]:.0f}x at N={n}" for n in e)
            + (
                "; series per second: "
                + ", ".join(f"{ne_series_x[n]:.0f}x at N={n}" for n in ne_series_x)
                + f" (node_exporter's body: {ne['series']} series)"
                if ne_series_x
                else ""
            ),
            all(x >= 100 for x in ne_x.values()),
        ),
        (
            "idle RSS under 6 MiB (no objects, every watch running; median of the starts)",
            f"{mib(e0['rss_ready'])} (starts: {', '.join(mib(x['rss_ready']) for x in e0['starts'])})",
            e0["rss_ready"] < 6 * 2**20,
        ),
        (
            "image under 10 MB",
            f"the sidecar image's binary is {res['exporter_bytes'] / 1e6:.1f} MB (the image is that file and its labels)",
            res["exporter_bytes"] < 10e6,
        ),
    ]
    lines = ["| target (issue 13) | measured | |", "|---|---|---|"]
    for what, figure, ok in rows:
        lines.append(f"| {what} | {figure} | {'-' if ok is None else mark(ok)} |")
    return lines


def large_section(res):
    """Issue 27's targets, at the largest N run sharded."""
    large = [n for n in res["sizes"] if "sharded" in res["runs"].get(str(n), {})]
    if not large:
        return []
    n = large[-1]
    run = res["runs"][str(n)]
    e, k = run["ksit-exporter"], run["kube-state-metrics"]
    se, sk = run["sharded"]["ksit-exporter"], run["sharded"]["kube-state-metrics"]
    e0 = res["runs"]["0"]["ksit-exporter"]
    per = (e["rss_ready"] - e0["rss_ready"]) / (n + n // 10)
    peak = max(e["hwm_ready"], e["hwm_after_churn"])
    shard_peak = max(x["hwm"] for x in se["shards"])
    flip = e["flip_churn"]["median_ms"]
    rows = [
        ("exec to all series visible under 5 s", f"{e['ready_s']:.1f} s (kube-state-metrics {k['ready_s']:.1f} s); sharded: {se['ready_s']:.1f} s (kube-state-metrics {sk['ready_s']:.1f} s)", e["ready_s"] < 5),
        ("one sidecar's peak at or under 128 MiB, initial sync included", f"{mib(peak)} (kube-state-metrics {mib(max(k['hwm_ready'], k['hwm_after_churn']))})", peak <= 128 * 2**20),
        (f"each of {len(se['shards'])} sharded sidecars' peak at or under 64 MiB", f"{', '.join(mib(x['hwm']) for x in se['shards'])} (kube-state-metrics {', '.join(mib(x['hwm']) for x in sk['shards'])})", shard_peak <= 64 * 2**20),
        ("every target exported exactly once across the shards", f"{se['targets_served']:,} series, {se['targets_distinct']:,} distinct, of {n:,}", se["targets_served"] == se["targets_distinct"] == n),
        ("memory per object at or under 1 KiB (targets and Integrations)", kib(per), per <= 1024),
        ("flip visible under 20 updates/s of churn under 100 ms", f"{ms(flip)} (kube-state-metrics {ms(k['flip_churn']['median_ms'])})", flip is not None and flip < 100),
        ("gzip body at or under kube-state-metrics'", f"{kib(e['gzip_bytes'])} vs {kib(k['gzip_bytes'])} ({ratio(e['gzip_bytes'], k['gzip_bytes'])}); plain {ratio(e['body_bytes'], k['body_bytes'])}", e["gzip_bytes"] <= k["gzip_bytes"]),
    ]
    lines = [f"## Against issue 27's targets (N = {n:,})", "", "| target (issue 27) | measured | |", "|---|---|---|"]
    for what, figure, ok in rows:
        lines.append(f"| {what} | {figure} | {'met' if ok else '**missed**'} |")
    return lines + [""]


def sharded_section(n, sharded):
    e, k = sharded["ksit-exporter"], sharded["kube-state-metrics"]
    lines = [
        f"### N = {n:,}, sharded: {len(e['shards'])} of each, started together",
        "",
        "ksit-exporter with `KSIT_CR_METRICS=sharded` and `KSIT_SHARD=i/3` (rendezvous hashing of "
        "each object's UID); kube-state-metrics with `--shard=i --total-shards=3` (its hash of the "
        "UID, modulo the total).",
        "",
        "| what | ksit-exporter | kube-state-metrics | ratio (ksit / ksm) |",
        "|---|---|---|---|",
        f"| exec to every target visible on one of them | {ms(e['ready_s'] * 1e3)} | {ms(k['ready_s'] * 1e3)} | {ratio(e['ready_s'], k['ready_s'])} |",
        f"| target series served, distinct targets (each exactly once: both {n:,}) | {e['targets_served']:,}, {e['targets_distinct']:,} | {k['targets_served']:,}, {k['targets_distinct']:,} | |",
        f"| LISTs of IntegrationTargets at startup (all {len(e['shards'])}) | {e['lists_at_start']} | {k['lists_at_start']} | |",
        f"| API server's bytes at startup: responses, watch events | {mib(e['api_response_bytes_at_start'])}, {mib(e['api_watch_events_bytes_at_start'])} | {mib(k['api_response_bytes_at_start'])}, {mib(k['api_watch_events_bytes_at_start'])} | |",
    ]
    for what, key, fmt in [
        ("targets per shard", "targets", lambda v: f"{v:,}"),
        ("RSS per shard, 2 s after ready (VmRSS)", "rss", mib),
        ("peak per shard, initial sync included (VmHWM)", "hwm", mib),
        ("/metrics body per shard (plain)", "body_bytes", kib),
        ("/metrics body per shard (gzip)", "gzip_bytes", kib),
    ]:
        cells = [", ".join(fmt(x[key]) for x in t["shards"]) for t in (e, k)]
        hi = [max(x[key] for x in t["shards"]) for t in (e, k)]
        lines.append(f"| {what} | {cells[0]} | {cells[1]} | {ratio(*hi)} (largest) |")
    return lines


def window_section(res):
    g = res.get("grown")
    if not g or "window_requests" not in g:
        return []
    reqs = ", ".join(f"{v} {k}" for k, v in sorted(g["window_requests"].items())) or "none"
    return [
        f"### ksit-exporter at rest with N = {g['n']:,} (started with no IntegrationTargets, grown while watching)",
        "",
        "| what | ksit-exporter |",
        "|---|---|",
        f"| RSS with no targets ({g['n'] // 10:,} Integrations) -> grown to N targets (VmRSS) | {mib(g['rss_empty'])} -> {mib(g['rss_grown'])} |",
        f"| API requests in {g['window_s']} s at rest (longer than kube-rs's 290 s watch timeout) | {reqs} |",
        f"| CPU at rest over that window | {g['window_cpu_percent']:.2f}% |",
        f"| RSS at the end of that window | {mib(g['rss_window_end'])} |",
        "",
        "kube-state-metrics is not run in this window: client-go's reflectors re-watch every 5 to 10 "
        "minutes (a random timeout), so a window that shows it would double the run.",
        "",
    ]


def write_markdown(res, out=MD_OUT):
    runs = res["runs"]
    lo = str(res["sizes"][0])
    base = runs["0"]
    e, ne = runs[lo]["ksit-exporter"], runs[lo]["node_exporter"]
    text = [
        "# Benchmarks: ksit-exporter beside kube-state-metrics and node_exporter",
        "",
        "<!-- Written by `make bench-compare` (scripts/bench_compare.py); do not edit by hand. -->",
        "",
        f"Measured at commit `{res['commit']}` ({res['exporter_version']}), {res['date']}, on a machine with "
        f"{res['cpus']} CPUs shared with other work (load average {res['load_start']} at the start, "
        f"{res.get('load_end', 'n/a')} at the end), in {res.get('minutes', 0):.0f} minutes. Raw results: "
        "`target/bench-compare.json`.",
        "",
        "How it was run: `make bench-compare` starts the test control plane (etcd and kube-apiserver on "
        "loopback), creates IntegrationTargets in one namespace (half ready, half failing, each with "
        "lastSyncTime and a Ready condition, written through the status subresource) and one Integration "
        "per ten targets (half Running, half Failed, with a Ready condition), and, at each N, runs "
        "ksit-exporter as the sidecar image runs it (its static musl binary: `image` profile, "
        "`--no-default-features`; `KSIT_CR_METRICS=always`, `KSIT_MAX_OBJECTS` at its default, that namespace "
        f"watched) and then kube-state-metrics ({res['ksm_version']}, v2.16.0, `--custom-resource-state-only` with "
        "`tests/controlplane/kube-state-metrics/customresourcestate.yaml`, which exports the same "
        "IntegrationTarget and Integration families with the same labels, but for generation lag and "
        "cluster_connected; `--enable-gzip-encoding`, `--use-apiserver-cache`) on the same "
        f"objects, one at a time. Each tool is started {STARTS} times at each N (exec to visible, LISTs, RSS "
        "and the scrape load are the median of the starts; each start's figures are listed), and the last start is measured "
        f"further; from N = {LARGE:,} on, once, and then {SHARDS} of each run sharded and started together. "
        "While waiting for all objects, a poller scrapes every N/100,000 s (10 ms at least): at 100,000 "
        f"objects a plain body is ~90 MB, and parsing it here takes a good part of a second. Load is wrk with {CONNECTIONS} kept-alive connections asking for gzip for {SCRAPE_SECONDS} s (six times that where no scrape completed in it) "
        "(one wrk thread, on the same 2 cores as the tool); CPU is the process's utime+stime from /proc/PID/stat (10 ms ticks); "
        f"status updates move lastSyncTime at {UPDATE_RATE}/s ({UPDATES} of them); a flip patches one "
        "target ready->failed (or back) and times until a back-to-back plain scrape shows it, so its "
        f"resolution is one scrape; {FLIPS} flips without churn, then {FLIPS} while other targets get "
        f"{UPDATE_RATE} updates/s for {CHURN_SECONDS} s. Ratios are ksit-exporter's figure over the peer's "
        "(above 1 is more scrapes per second, or more cost). LISTs are counted from the API server's "
        "apiserver_request_total. The load generator shares the cores, so scrapes per CPU-second is "
        "given beside scrapes/s. "
        "kube-state-metrics' RSS follows Go's garbage collector, so its memory per object is noise at "
        "small N (even negative). The image is measured by `make bench` (docs/figures.md), not here.",
        "",
        "## Against issue 13's targets",
        "",
        *targets_section(res),
        "",
        *large_section(res),
        "## Side by side",
        "",
        "### No objects",
        "",
        "| what | ksit-exporter | kube-state-metrics | ratio (ksit / ksm) |",
        "|---|---|---|---|",
        f"| exec to first /metrics | {ms(base['ksit-exporter']['ready_s'] * 1e3)} | {ms(base['kube-state-metrics']['ready_s'] * 1e3)} | {ratio(base['ksit-exporter']['ready_s'], base['kube-state-metrics']['ready_s'])} |",
        f"| idle RSS (VmRSS, 2 s after) | {mib(base['ksit-exporter']['rss_ready'])} | {mib(base['kube-state-metrics']['rss_ready'])} | {ratio(base['ksit-exporter']['rss_ready'], base['kube-state-metrics']['rss_ready'])} |",
        "",
    ]
    for n in res["sizes"]:
        if str(n) in runs:
            text += table_for(n, runs[str(n)], base) + [""]
            if "sharded" in runs[str(n)]:
                text += sharded_section(n, runs[str(n)]["sharded"]) + [""]
    text += [
        f"### node_exporter (Debian's 1.5, its defaults) beside ksit-exporter at N = {lo}",
        "",
        "| what | ksit-exporter | node_exporter | ratio (ksit / node_exporter) |",
        "|---|---|---|---|",
        f"| scrapes/s (gzip, wrk, {CONNECTIONS} connections) | {e['scrapes_per_s']:.0f} | {ne['scrapes_per_s']:.0f} | {ratio(e['scrapes_per_s'], ne['scrapes_per_s'])} |",
        f"| CPU per scrape | {e['cpu_per_scrape_us']:.0f} us | {ne['cpu_per_scrape_us']:.0f} us | {ratio(e['cpu_per_scrape_us'], ne['cpu_per_scrape_us'])} |",
        f"| scrapes per CPU-second | {1e6 / e['cpu_per_scrape_us']:.0f} | {1e6 / ne['cpu_per_scrape_us']:.0f} | {ratio(ne['cpu_per_scrape_us'], e['cpu_per_scrape_us'])} |",
        f"| /metrics body (gzip) | {kib(e['gzip_bytes'])} | {kib(ne['gzip_bytes'])} | |",
        f"| series in the body | {e.get('series', 0):,} | {ne.get('series', 0):,} | |",
        f"| RSS | {mib(e['rss_ready'])} | {mib(ne['rss_ready'])} | {ratio(e['rss_ready'], ne['rss_ready'])} |",
        f"| scrapes/s of each start | {[round(x.get('scrapes_per_s', 0)) for x in e.get('starts', [])]} "
        f"| {[round(x.get('scrapes_per_s', 0)) for x in ne.get('starts', [])]} | |",
        "",
    ]
    text += window_section(res)
    with open(out, "w") as f:
        f.write("\n".join(text))
    log(f"wrote {out}")


def main():
    if sys.argv[1:2] == ["--markdown"] and len(sys.argv) == 3:
        with open(sys.argv[2]) as f:
            write_markdown(json.load(f))
        return
    if len(sys.argv) != 1:
        raise SystemExit(__doc__)
    write_markdown(measure())


if __name__ == "__main__":
    main()
