#!/usr/bin/env python3
"""The remote-write volume one ksit-exporter sidecar adds to a Prometheus agent (docs/fleet.md).

Usage: remote_write_volume.py [EXPORTER]     (default target/debug/ksit-exporter)

Needs the test control plane up (`make remote-write-volume` does it all). SIZES (default
"100 1000") lists the IntegrationTarget counts; SCRAPE (default 30, the page's interval, in
seconds) and WINDOW (default 5 scrape intervals) set the measurement.

For each N, bench_compare.py's objects are created in namespace ksit-bench (N IntegrationTargets,
half ready and half failing, N/10 Integrations, statuses written), and three processes run:
the stand-in KSIT manager (watching a namespace of its own: its controller-runtime metrics are
what the sidecar passes through), the sidecar (KSIT_CR_METRICS=always, upstream and health URLs
set to the manager) and a Prometheus in agent mode that scrapes only the sidecar, with the page's
job settings (honor_labels, the target labels namespace/service/pod/container given statically),
`external_labels: {cluster: ...}` and default queue settings, remote-writing into a sink here
that counts what it receives. The agent scrapes nothing else (not itself), so all it sends is the
sidecar's: there is no baseline to subtract. After the sidecar serves all N targets and two
scrape intervals of warm-up, the agent's prometheus_remote_storage_bytes_total (compressed bytes
of samples sent) and prometheus_remote_storage_samples_total are read at both ends of WINDOW
scrape intervals, beside the sink's count of request bodies (metadata included). One JSON line
per N is printed; target/remote-write-volume.json holds them all.
"""
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_compare as bc  # noqa: E402  (its control-plane client and object makers)

ROOT = bc.ROOT
BIN = os.path.join(bc.CP, "bin")
LOG_DIR = os.path.join(ROOT, "target", "remote-write-volume")
OUT = os.path.join(ROOT, "target", "remote-write-volume.json")
SIZES = [int(n) for n in os.environ.get("SIZES", "100 1000").split()]
SCRAPE = int(os.environ.get("SCRAPE", "30"))
WINDOW = int(os.environ.get("WINDOW", "5"))
MANAGER_NS = "ksit-rwvol-manager"
READY_TIMEOUT = 300


def log(msg):
    print(f"[remote-write-volume {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Sink(http.server.BaseHTTPRequestHandler):
    """A remote-write receiver that keeps nothing: it counts request bodies and answers 204."""

    received = 0
    requests = 0
    lock = threading.Lock()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with Sink.lock:
            Sink.received += len(body)
            Sink.requests += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def counters(port):
    """Sums of the agent's remote-storage counters, by name."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in ("prometheus_remote_storage_bytes_total", "prometheus_remote_storage_samples_total"):
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def ensure_namespace(api, name):
    status, _ = api.request("GET", f"/api/v1/namespaces/{name}")
    if status == 404:
        api.must("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def start(name, argv, env=None):
    logf = open(os.path.join(LOG_DIR, f"{name}.log"), "wb")
    return subprocess.Popen(argv, env=env, stdout=logf, stderr=logf)


def stop(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def measure(api, exporter_bin, n, sink_port):
    bc.create_targets(api, 0, n)
    bc.create_integrations(api, 0, n // 10)
    health, metrics, listen, agent = (bc.free_port() for _ in range(4))
    procs = []
    try:
        procs.append(start("manager", [
            os.path.join(BIN, "ksit-manager"), f"--kubeconfig={api.kubeconfig}", f"--namespaces={MANAGER_NS}",
            f"--metrics-bind-address=127.0.0.1:{metrics}", f"--health-probe-bind-address=127.0.0.1:{health}",
            "--leader-elect", f"--leader-election-namespace={MANAGER_NS}",
        ]))
        env = {
            "PATH": os.environ.get("PATH", ""), "KUBECONFIG": api.kubeconfig, "KSIT_KUBERNETES": "true",
            "KSIT_WATCH_NAMESPACES": bc.NAMESPACE, "KSIT_LISTEN_ADDR": f"127.0.0.1:{listen}",
            "POD_NAME": "ksit-controller-manager-0", "POD_NAMESPACE": bc.NAMESPACE, "KSIT_CR_METRICS": "always",
            "KSIT_HEALTH_URLS": f"http://127.0.0.1:{health}/healthz,http://127.0.0.1:{health}/readyz",
            "KSIT_UPSTREAM_METRICS_URL": f"http://127.0.0.1:{metrics}/metrics",
        }
        procs.append(start("exporter", [exporter_bin], env))
        t0, scraper = time.time(), bc.Scraper(listen)
        while True:
            try:
                status, _, body = scraper.get()
                if status == 200 and bc.complete(body, n):
                    break
            except OSError:
                scraper.close()
            if time.time() - t0 > READY_TIMEOUT:
                raise SystemExit(f"the sidecar did not serve {n} targets within {READY_TIMEOUT}s; see {LOG_DIR}")
            time.sleep(0.5)
        scraper.close()
        config = {
            "global": {"scrape_interval": f"{SCRAPE}s", "scrape_timeout": f"{min(SCRAPE, 10)}s", "external_labels": {"cluster": "hosting-1"}},
            "scrape_configs": [{
                "job_name": "ksit", "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{listen}"], "labels": {
                    "namespace": bc.NAMESPACE, "service": "ksit-monitor",
                    "pod": "ksit-controller-manager-0", "container": "ksit-exporter"}}],
            }],
            "remote_write": [{"url": f"http://127.0.0.1:{sink_port}/api/v1/write"}],
        }
        path = os.path.join(LOG_DIR, "agent.yml")
        with open(path, "w") as f:
            json.dump(config, f)
        procs.append(start("agent", [
            os.path.join(BIN, "prometheus"), "--agent", f"--config.file={path}",
            f"--storage.agent.path={os.path.join(LOG_DIR, f'wal-{n}')}", f"--web.listen-address=127.0.0.1:{agent}",
        ]))
        t0 = time.time()
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{agent}/-/ready", timeout=5)
                break
            except OSError:
                if procs[-1].poll() is not None or time.time() - t0 > 60:
                    raise SystemExit(f"the agent did not get ready; see {LOG_DIR}/agent.log")
                time.sleep(0.5)
        # The queue starts sending once it has replayed the WAL (seconds): warm up from then.
        t0 = time.time()
        while counters(agent).get("prometheus_remote_storage_bytes_total", 0) == 0:
            if time.time() - t0 > 120 + 2 * SCRAPE:
                raise SystemExit(f"the agent sent nothing in {time.time() - t0:.0f}s; see {LOG_DIR}/agent.log")
            time.sleep(1)
        log(f"N={n}: sidecar complete, agent sending; warming up for {2 * SCRAPE}s")
        time.sleep(2 * SCRAPE)
        before, sink_before, t_before = counters(agent), Sink.received, time.time()
        time.sleep(WINDOW * SCRAPE)
        after, sink_after, t_after = counters(agent), Sink.received, time.time()
        seconds = t_after - t_before
        scraped = urllib.request.urlopen(
            f"http://127.0.0.1:{agent}/api/v1/targets", timeout=10).read().decode()
        health_of = [t["health"] for t in json.loads(scraped)["data"]["activeTargets"]]
        rate = lambda k: (after.get(k, 0) - before.get(k, 0)) / seconds  # noqa: E731
        return {
            "targets": n, "integrations": n // 10, "scrape_seconds": SCRAPE, "window_seconds": round(seconds, 1),
            "bytes_per_second": round(rate("prometheus_remote_storage_bytes_total"), 1),
            "samples_per_second": round(rate("prometheus_remote_storage_samples_total"), 1),
            "sink_bytes_per_second": round((sink_after - sink_before) / seconds, 1),
            "target_health": health_of,
        }
    finally:
        stop(reversed(procs))
        api.must("DELETE", f"{bc.GROUP_PATH}/namespaces/{bc.NAMESPACE}/integrationtargets")
        api.must("DELETE", f"{bc.GROUP_PATH}/namespaces/{bc.NAMESPACE}/integrations")


def main():
    exporter_bin = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "ksit-exporter")
    os.makedirs(LOG_DIR, exist_ok=True)
    api = bc.Api(timeout=600)
    for ns in (bc.NAMESPACE, MANAGER_NS):
        ensure_namespace(api, ns)
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    results = []
    for n in SIZES:
        r = measure(api, exporter_bin, n, sink.server_address[1])
        print(json.dumps(r), flush=True)
        results.append(r)
    with open(OUT, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d", time.gmtime()), "commit": subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
            "results": results}, f, indent=1)
    log(f"wrote {OUT}")


if __name__ == "__main__":
    main()
