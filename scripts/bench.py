#!/usr/bin/env python3
"""Footprint and speed of a ksit-exporter binary, on loopback; and docs/figures.md from the results.

Usage: bench.py PATH/TO/ksit-exporter
       bench.py --figures docs/figures.md RESULTS...

Measures, and prints one line each:
  - the binary's size;
  - time from exec to the first 200 on /readyz (median and max of 20 starts);
  - resident memory when idle, 3 s after start;
  - CPU time per /metrics scrape (kept-alive connection), over 2000 scrapes each of the text
    format and OpenMetrics, gzipped and not, with a health probe and an upstream of
    controller-runtime size;
  - resident memory after those scrapes (growth means a leak on the scrape path).
Numbers go to stdout; nothing is asserted: tests assert behaviour, this records figures.

With --figures, rewrites the measured part of docs/figures.md from RESULTS (files of such
"what: figure" lines: this script's output and `cargo bench --bench webhook`'s), stamped with
the commit (`git rev-parse --short HEAD`) and the UTC date; the part from FIGURES_BY_HAND on,
figures measured by hand, is kept as it is.
"""
import datetime
import http.client
import http.server
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
FIGURES_BY_HAND = "## Measured by hand"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upstream_body():
    lines = ["# TYPE controller_runtime_reconcile_time_seconds histogram"]
    for c in ["integration", "integrationtarget"]:
        for le in ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"]:
            lines.append(f'controller_runtime_reconcile_time_seconds_bucket{{controller="{c}",le="{le}"}} 7')
        lines.append(f'controller_runtime_reconcile_time_seconds_sum{{controller="{c}"}} 0.1')
        lines.append(f'controller_runtime_reconcile_time_seconds_count{{controller="{c}"}} 7')
    lines.append("# TYPE workqueue_depth gauge")
    for i in range(150):
        lines.append(f'workqueue_depth{{name="queue{i}"}} {i}')
    return ("\n".join(lines) + "\n").encode()


class Handler(http.server.BaseHTTPRequestHandler):
    body = upstream_body()

    def do_GET(self):
        payload = self.body if self.path == "/metrics" else b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def proc_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    return cpu, rss * 1024


def start(binary, env):
    port = free_port()
    full = {"KSIT_LISTEN_ADDR": f"127.0.0.1:{port}", "RUST_LOG": "warn", **env}
    t0 = time.perf_counter()
    proc = subprocess.Popen([binary], env=full, stderr=subprocess.DEVNULL)
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return proc, port, time.perf_counter() - t0
        except OSError:
            pass
        if time.perf_counter() - t0 > 10:
            proc.kill()
            raise SystemExit("exporter not ready within 10 s")
        time.sleep(0.0005)


def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()


def table_row(line):
    """A "what: figure" result line as a Markdown table row."""
    what, sep, figure = line.partition(": ")
    if not sep:
        what, figure = "", line
    return f"| {what.strip()} | {figure.strip()} |"


def write_figures(out, results):
    commit = git("rev-parse", "--short", "HEAD")
    # The figures describe the commit only if nothing else in the tree differs from it.
    if git("status", "--porcelain", "--", ".", f":!{out}"):
        commit += " plus uncommitted changes"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    for path in results:
        with open(path) as f:
            rows += [table_row(l) for l in f.read().splitlines() if l.strip()]
    if not rows:
        raise SystemExit(f"no results in {results}: run the benchmarks first (make bench)")
    by_hand = f"{FIGURES_BY_HAND}\n\nNone recorded.\n"
    if os.path.exists(out):
        with open(out) as f:
            old = f.read()
        heading = f"\n{FIGURES_BY_HAND}\n"
        if heading in old:
            by_hand = old[old.index(heading) + 1 :]
    text = f"""# Figures

<!-- Written by `make bench` (scripts/bench.py --figures): edit only the part from
"{FIGURES_BY_HAND}" on, which it keeps. -->

Figures that change with the code, the toolchain or the machine: footprint, speed and build
times. The other pages link here rather than quote them; tests assert behaviour, never timings.
`make bench` keeps its raw output in `target/bench.txt` and `target/bench-webhook.txt`.

## Measured by `make bench`

Measured at commit `{commit}`, {date}.
{os.cpu_count()} CPUs, release build, loopback, one run; `make bench` rewrites this section.

| what | figure |
|---|---|
""" + "\n".join(rows) + "\n\n" + by_hand
    with open(out, "w") as f:
        f.write(text)
    print(f"wrote {out} ({len(rows)} figures, commit {commit})")


def main():
    if sys.argv[1:2] == ["--figures"] and len(sys.argv) > 3:
        write_figures(sys.argv[2], sys.argv[3:])
        return
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    binary = sys.argv[1]
    print(f"binary size: {os.path.getsize(binary) / 1048576:.1f} MiB ({binary})")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    up = f"http://127.0.0.1:{server.server_address[1]}"

    ready = []
    for _ in range(20):
        proc, _, took = start(binary, {})
        ready.append(took)
        proc.terminate()
        proc.wait()
    print(f"exec to /readyz 200: median {statistics.median(ready) * 1000:.1f} ms, max {max(ready) * 1000:.1f} ms (20 starts, no collectors but process)")

    env = {
        "KSIT_HEALTH_URLS": f"{up}/healthz",
        "KSIT_UPSTREAM_METRICS_URL": f"{up}/metrics",
        "KSIT_PROBE_INTERVAL": "10s",
    }
    proc, port, _ = start(binary, env)
    time.sleep(3)
    _, idle_rss = proc_stat(proc.pid)
    print(f"idle resident memory: {idle_rss / 1048576:.1f} MiB (health probe + upstream configured)")

    n = 2000
    formats = [
        ("text format", "text/plain"),
        ("OpenMetrics", "application/openmetrics-text;version=1.0.0"),
    ]
    for name, accept in formats:
        for encoding in ["gzip", "identity"]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            headers = {"Accept": accept, "Accept-Encoding": encoding}
            size = 0
            cpu0, _ = proc_stat(proc.pid)
            t0 = time.perf_counter()
            for _ in range(n):
                conn.request("GET", "/metrics", headers=headers)
                resp = conn.getresponse()
                size = len(resp.read())
            wall = time.perf_counter() - t0
            cpu1, rss_after = proc_stat(proc.pid)
            conn.close()
            label = "CPU per scrape" if (name, encoding) == (formats[0][0], "gzip") else f"CPU per scrape, {name} {encoding}"
            print(f"{label}: {(cpu1 - cpu0) / n * 1e6:.0f} us ({n} {name} {encoding} scrapes of {size} bytes, {n / wall:.0f} scrapes/s on one connection)")
    print(f"resident memory after {n * 4} scrapes: {rss_after / 1048576:.1f} MiB (growth {(rss_after - idle_rss) / 1024:.0f} KiB)")
    proc.terminate()
    proc.wait()
    server.shutdown()


if __name__ == "__main__":
    main()
