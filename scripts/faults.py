#!/usr/bin/env python3
"""Issue 12's attacks and issue 28's dense reviews against a ksit-exporter binary, on loopback;
and docs/figures.md's "Faults".

Usage: faults.py PATH/TO/ksit-exporter RESULTS.json
       faults.py --figures docs/figures.md RESULTS.json

Runs each attack against a fresh process of the binary (the exporter, or `ksit-exporter webhook`
with a certificate made by `ksit-exporter webhook certs`) and prints one row per attack:
  - peak RSS: VmHWM from /proc/PID/status once the attack is over;
  - /healthz worst: the slowest answer to a /healthz polled every 20 ms by a separate process
    (so this script's own work does not count) for as long as the attack lasts;
  - RSS after: VmRSS FAULTS_SETTLE_SECONDS (default 60) after the attack ended; the next attack
    runs meanwhile, against its own process;
  - what was served: /metrics (or a review) answered after the attack, checked by
    `promtool check metrics` when target/controlplane/bin/promtool or a promtool on PATH exists.
Nothing is asserted: tests assert behaviour, this records figures. Every loop has a count and a
deadline, and the whole run is cut at 15 minutes.

With --figures, writes RESULTS.json into docs/figures.md as its "## Faults" section (replacing
the one there, else appended at the end, which `make bench` keeps), stamped with the commit
(`git rev-parse --short HEAD`, marked when the tree differs from it) and the UTC date.
"""
import datetime
import http.client
import json
import os
import resource
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

MIB = 1024 * 1024
PEAK_LIMIT_KIB = 48 * 1024
HEALTHZ_LIMIT_MS = 50.0
# The exporter's default KSIT_UPSTREAM_MAX_BYTES and the webhook's MAX_BODY_BYTES.
UPSTREAM_MAX_BYTES = 8 * MIB
REVIEW_MAX_BYTES = 3 * MIB
# Just under the exporter's READ_BUFFER_BYTES (16 KiB), so each connection buffers the most.
HEADER_BYTES = 16 * 1024 - 512
RUN_DEADLINE_SECONDS = 15 * 60
SECTION = "## Faults"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_kib(pid):
    """VmRSS and VmHWM of `pid`, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(l.split(":", 1) for l in f if ":" in l)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def listen_overflows():
    """The kernel's count of connections dropped because a listen queue was full (all sockets)."""
    with open("/proc/net/netstat") as f:
        lines = [l.split() for l in f if l.startswith("TcpExt:")]
    return int(dict(zip(lines[0], lines[1]))["ListenOverflows"])


def get(port, path, timeout=5.0):
    """(status, body) of a plain GET on loopback."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def wait_ready(proc, port, path, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited {proc.returncode} before {path} answered 200")
        try:
            if get(port, path, timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise SystemExit(f"{proc.args}: {path} on port {port} not 200 within {seconds} s")


def poll_healthz(port, seconds):
    """Child process: GET /healthz every 20 ms until stdin closes or `seconds` pass; prints the
    worst latency in ms, the polls, the failed ones and why they failed as JSON."""
    worst, polls, failed, errors = 0.0, 0, 0, set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        try:
            status = get(port, "/healthz", timeout=5)[0]
            if status != 200:
                errors.add(f"status {status}")
        except OSError as e:
            status = None
            errors.add(type(e).__name__)
        ok = status == 200
        worst = max(worst, (time.perf_counter() - t0) * 1000)
        polls += 1
        failed += not ok
        if select.select([sys.stdin], [], [], 0.02)[0]:
            break
    print(json.dumps({"worst_ms": worst, "polls": polls, "failed": failed, "errors": sorted(errors)}))


class Poller:
    """/healthz polled by a child process while the `with` block runs."""

    def __init__(self, port, seconds=120):
        self.args = [sys.executable, __file__, "--poll", str(port), str(seconds)]

    def __enter__(self):
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        time.sleep(0.1)
        return self

    def __exit__(self, *exc):
        out, _ = self.proc.communicate(input="stop\n", timeout=130)
        self.result = json.loads(out)


class Target:
    """A fresh exporter or webhook process, its ports and its stderr file."""

    live = []  # every process started, stopped at the end of the run whatever happens

    def __init__(self, binary, workdir, name, webhook=False, env=None):
        self.port = free_port()
        self.log_path = os.path.join(workdir, f"{name}.log")
        full = {"RUST_LOG": "info", "KSIT_LOG_FORMAT": "json", **(env or {})}
        if webhook:
            self.tls_port = free_port()
            full |= {
                "KSIT_WEBHOOK_LISTEN_ADDR": f"127.0.0.1:{self.tls_port}",
                "KSIT_WEBHOOK_METRICS_ADDR": f"127.0.0.1:{self.port}",
                "KSIT_TLS_CERT_FILE": os.path.join(workdir, "certs", "tls.crt"),
                "KSIT_TLS_KEY_FILE": os.path.join(workdir, "certs", "tls.key"),
            }
            args = [binary, "webhook"]
        else:
            full |= {"KSIT_LISTEN_ADDR": f"127.0.0.1:{self.port}", "KSIT_KUBERNETES": "false"}
            args = [binary]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(args, env=full, stdout=subprocess.DEVNULL, stderr=log)
        Target.live.append(self)
        wait_ready(self.proc, self.port, "/readyz")

    def log_lines(self):
        with open(self.log_path, errors="replace") as f:
            return sum(1 for _ in f)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def find_promtool():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    built = os.path.join(repo, "target/controlplane/bin/promtool")
    return built if os.path.exists(built) else shutil.which("promtool")


def metrics_served(port):
    """What /metrics answers now, and whether promtool finds it clean."""
    try:
        status, body = get(port, "/metrics", timeout=10)
    except OSError as e:
        return f"/metrics failed: {e}"
    said = f"/metrics {status}, {len(body):,} bytes"
    promtool = find_promtool()
    if promtool is None:
        return said + ", promtool not checked (none found)"
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    if check.returncode == 0:
        return said + ", promtool clean"
    problem = (check.stdout + check.stderr).decode(errors="replace").strip().splitlines()
    return said + f", promtool: {problem[0] if problem else 'exit ' + str(check.returncode)}"


def series(body, name):
    """Values of the series of `name` (any labels) in exposition text."""
    out = []
    for line in body.decode(errors="replace").splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            out.append(line.rsplit(" ", 1)[1])
    return out


# Exporter attacks.


def hostile_body():
    """Just under 8 MiB of upstream text: valid gauge families with a malformed one after each;
    returns it and the count of malformed families."""
    bad = [
        b'# TYPE bad_braces gauge\nbad_braces{a="1" 1\n',
        b"# TYPE bad_unquoted gauge\nbad_unquoted{a=b} 1\n",
        b"# TYPE bad_trailing gauge\nbad_trailing 1 2 garbage\n",
        b"# TYPE bad_retyped gauge\nbad_retyped 1\n# TYPE bad_retyped counter\n",
        b'# TYPE bad_duplicate gauge\nbad_duplicate{a="1"} 1\nbad_duplicate{a="1"} 2\n',
        b"# TYPE bad_type bogus\nbad_type 1\n",
        b"bad_\xff_name 1\n",  # not UTF-8
    ]
    parts, size, i = [], 0, 0
    while i < 100_000:
        family = f"# HELP upstream_queue_depth_{i} Depth.\n# TYPE upstream_queue_depth_{i} gauge\n" + "".join(
            f'upstream_queue_depth_{i}{{shard="{j}",pod="manager-{j:04d}"}} {j}\n' for j in range(100)
        )
        chunk = family.encode() + bad[i % len(bad)].replace(b"bad_", f"bad{i}_".encode())
        if size + len(chunk) > UPSTREAM_MAX_BYTES - 1024:
            break
        parts.append(chunk)
        size += len(chunk)
        i += 1
    return b"".join(parts), i


def serve_upstream(body):
    """A loopback HTTP server answering every GET with `body`; returns (server, port)."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def attack_upstream(binary, workdir):
    body, malformed = hostile_body()
    server, up = serve_upstream(body)
    try:
        t = Target(binary, workdir, "upstream", env={
            "KSIT_UPSTREAM_METRICS_URL": f"http://127.0.0.1:{up}/metrics",
            "KSIT_PROBE_INTERVAL": "2s",
            "KSIT_PROBE_TIMEOUT": "2s",
        })
        before = memory_kib(t.proc.pid)[0]
        with Poller(t.port) as p:
            time.sleep(10)  # about five fetches and parses
        _, metrics = get(t.port, "/metrics", timeout=10)
        up_now = series(metrics, "ksit_exporter_upstream_up")
        # Every malformed family's name starts with "bad" (see hostile_body).
        names = {l.split(b"{")[0].split(b" ")[0] for l in metrics.splitlines()}
        leaked = sum(name.startswith(b"bad") for name in names)
        rejected = sum(float(v) for v in series(metrics, "ksit_exporter_upstream_rejected_families"))
        served = (
            f"{len(body):,}-byte body with {malformed:,} malformed families: upstream_up "
            f"{','.join(up_now) or 'absent'}, rejected_families {rejected:,.0f} (last read), "
            f"{leaked:,} malformed families served; "
            + metrics_served(t.port)
        )
        return t, before, p.result, served
    finally:
        server.shutdown()
        server.server_close()


def unfinished_header():
    header = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
    i = 0
    while len(header) + 1000 < HEADER_BYTES:
        header += f"X-Pad-{i:02}: {'a' * 985}\r\n".encode()
        i += 1
    return header


def open_holding(port, count, seconds):
    """`count` connections, each sent unfinished headers; those opened within `seconds`."""
    header = unfinished_header()
    held = []
    deadline = time.monotonic() + seconds
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(header)
        except OSError:
            pass  # the exporter may already have closed it to make room
        held.append(s)
    return held


def closed_by_peer(held):
    closed = 0
    for s in held:
        s.setblocking(False)
        try:
            closed += s.recv(1) == b""
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return closed


def attack_connections(binary, workdir, name, count, at_once):
    t = Target(binary, workdir, name)
    before = memory_kib(t.proc.pid)[0]
    with Poller(t.port) as p:
        if at_once:
            # Connect all in parallel from 8 threads, so the exporter sees them arrive together.
            parts = [[] for _ in range(8)]
            def hold(out):
                out.extend(open_holding(t.port, count // 8, 60))

            threads = [threading.Thread(target=hold, args=(part,)) for part in parts]
            for th in threads:
                th.start()
            for th in threads:
                th.join(90)
            held = [s for part in parts for s in part]
        else:
            held = open_holding(t.port, count, 60)
        time.sleep(3)  # held a while with the probes running
    closed = closed_by_peer(held)
    served = f"{len(held):,} opened, {closed:,} closed by the exporter; " + metrics_served(t.port)
    for s in held:
        s.close()
    return t, before, p.result, served


def attack_slow_reader(binary, workdir):
    t = Target(binary, workdir, "slow-reader")
    before = memory_kib(t.proc.pid)[0]
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", t.port))
    s.settimeout(1)
    requests = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 2000
    received, ended = 0, None
    t0 = time.monotonic()
    with Poller(t.port) as p:
        s.sendall(requests)
        # Read 64 bytes every 100 ms, for at most 40 s or until the exporter closes.
        while time.monotonic() - t0 < 40:
            try:
                chunk = s.recv(64)
            except socket.timeout:
                chunk = None
            except OSError:
                chunk = b""
            if chunk == b"":
                ended = time.monotonic() - t0
                break
            received += len(chunk or b"")
            time.sleep(0.1)
    s.close()
    cut = f"disconnected after {ended:.1f} s" if ended is not None else "still connected after 40 s"
    served = f"reading 640 B/s: {received:,} bytes read, {cut}; " + metrics_served(t.port)
    return t, before, p.result, served


# Webhook attacks.


# Issue 28's dense shapes: what one entry of each adds to the pod (`i` counts from 0), as
# tests/webhook.rs `dense_review` builds them.
SHAPES = {
    "env": lambda pod, i: pod["spec"]["containers"][0].setdefault("env", []).append({"name": f"e{i}", "value": "v"}),
    "volumes": lambda pod, i: (
        pod["spec"].setdefault("volumes", []).append({"name": f"e{i}", "emptyDir": {}}),
        pod["spec"]["containers"][0].setdefault("volumeMounts", []).append({"name": f"e{i}", "mountPath": "/"}),
    ),
    "labels": lambda pod, i: (
        pod["metadata"]["labels"].__setitem__(f"e{i}", "v"),
        pod["metadata"]["annotations"].__setitem__(f"e{i}", "v"),
    ),
    "containers": lambda pod, i: pod["spec"]["containers"].append({"name": f"e{i}"}),
    "ports": lambda pod, i: pod["spec"]["containers"].append(
        {"name": f"e{i}", "ports": [{"containerPort": 8082 + i % 50000}]}),
    "managers": lambda pod, i: pod["spec"].setdefault("initContainers", []).append(
        {"name": f"e{i}", "args": ["--metrics-addr=:8080"]}),
}


def review(size, shape=None):
    """An AdmissionReview of an opted-in manager pod of `size` bytes: padded by an annotation,
    or filled with many small entries of one of SHAPES (then a little under `size`)."""
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "large", "labels": {"ksit.io/inject": "true"},
                     "annotations": {"example.com/padding": ""}},
        "spec": {"containers": [{
            "name": "manager", "image": "controller:latest",
            "args": ["--leader-elect", "--metrics-bind-address=:8080", "--health-probe-bind-address=:8081"],
        }]},
    }

    def text():
        return json.dumps({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "team-a", "operation": "CREATE", "userInfo": {"username": "admin"},
                "object": pod,
            },
        }, separators=(",", ":"))

    if shape is None:
        pod["metadata"]["annotations"]["example.com/padding"] = "x" * (size - len(text()))
        return text().encode()
    # Grow in steps, measuring now and then: serializing every time would be quadratic.
    i, step = 0, 1000
    while True:
        for _ in range(step):
            SHAPES[shape](pod, i)
            i += 1
        length = len(text())
        if length > size:
            raise AssertionError("unreachable: the step is cut before the size")
        left = size - length
        if left < 64 * 1024:
            return text().encode()
        step = max(1, min(step, left // 80))


def post_review(t, ca, body):
    """(status line, seconds) of one POST /mutate over TLS; the body is sent whole."""
    ctx = ssl.create_default_context(cafile=ca)
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", t.tls_port), timeout=30) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(
                    b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                answer = b""
                while len(answer) < 1 * MIB:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
    except OSError as e:
        return f"error: {e}", time.monotonic() - t0
    line = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    if line.endswith(" 200 OK") and b'"patch"' not in answer:
        line += " (no patch)"
    return line, time.monotonic() - t0


def attack_reviews(binary, workdir, name, count, shape=None):
    ca = os.path.join(workdir, "certs", "ca.crt")
    body = review(REVIEW_MAX_BYTES - 1024, shape)
    t = Target(binary, workdir, name, webhook=True)
    post_review(t, ca, review(4096))  # one ordinary review first, so RSS before includes TLS set up
    before = memory_kib(t.proc.pid)[0]
    answers = []
    with Poller(t.port) as p:
        def one():
            answers.append(post_review(t, ca, body))

        threads = [threading.Thread(target=one) for _ in range(count)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
    counts = {}
    for line, _ in answers:
        counts[line] = counts.get(line, 0) + 1
    slowest = max((s for _, s in answers), default=0)
    said = "; ".join(f"{n} × {line}" for line, n in sorted(counts.items()))
    served = f"{len(body):,}-byte reviews: {said}; slowest answer {slowest:.2f} s"
    return t, before, p.result, served


def attack_handshakes(binary, workdir):
    ca = os.path.join(workdir, "certs", "ca.crt")
    t = Target(binary, workdir, "handshakes", webhook=True)
    post_review(t, ca, review(4096))
    before = memory_kib(t.proc.pid)[0]
    logs_before = t.log_lines()
    with Poller(t.port) as p:
        def plain(n, out):
            for _ in range(n):
                try:
                    with socket.create_connection(("127.0.0.1", t.tls_port), timeout=5) as s:
                        s.sendall(b"GET /mutate HTTP/1.1\r\nHost: x\r\n\r\n")
                        s.recv(4096)
                        out.append(1)
                except OSError:
                    out.append(0)

        done = []
        threads = [threading.Thread(target=plain, args=(250, done)) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
    time.sleep(1)
    line, _ = post_review(t, ca, review(4096))
    served = (
        f"{len(done):,} plain-HTTP connections; then a review: {line}; "
        f"{t.log_lines() - logs_before:,} log lines"
    )
    return t, before, p.result, served


ATTACKS = [
    ("exporter: 8 MiB hostile upstream body (malformed families mixed in), every 2 s for 10 s", attack_upstream),
    ("exporter: 1,000 connections each holding 15.5 KiB of unfinished headers",
     lambda b, w: attack_connections(b, w, "hold-1000", 1000, at_once=False)),
    ("exporter: 2,000 connections at once, each holding 15.5 KiB of unfinished headers",
     lambda b, w: attack_connections(b, w, "hold-2000", 2000, at_once=True)),
    ("exporter: a slow reader of /metrics (2,000 pipelined requests)", attack_slow_reader),
    ("webhook: one 3 MiB AdmissionReview", lambda b, w: attack_reviews(b, w, "review-1", 1)),
    ("webhook: twenty 3 MiB AdmissionReviews at once", lambda b, w: attack_reviews(b, w, "review-20", 20)),
    ("webhook: 2,000 plain-HTTP connections to the TLS port (failed handshakes)", attack_handshakes),
    # Issue 28: memory bounded by the shape of the input, not only its bytes.
    *[(f"webhook: one 3 MiB AdmissionReview, dense: {what}",
       lambda b, w, shape=shape: attack_reviews(b, w, f"review-{shape}", 1, shape))
      for shape, what in [
          ("env", "~90,000 env entries"),
          ("volumes", "~40,000 volumes and as many mounts"),
          ("labels", "~100,000 labels and as many annotations"),
          ("containers", "~150,000 tiny containers"),
          ("ports", "~55,000 containers each declaring a port"),
          ("managers", "~57,000 init containers each binding its metrics on 8080"),
      ]],
    ("webhook: twenty 3 MiB AdmissionReviews of ~150,000 tiny containers at once",
     lambda b, w: attack_reviews(b, w, "review-containers-20", 20, "containers")),
]


def run(binary, out):
    settle = float(os.environ.get("FAULTS_SETTLE_SECONDS", "60"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    rows, pending = [], []
    with tempfile.TemporaryDirectory(prefix="ksit-faults-") as workdir:
        subprocess.run(
            [binary, "webhook", "certs", "--dir", os.path.join(workdir, "certs"), "--host", "127.0.0.1"],
            check=True, capture_output=True, timeout=30,
        )
        try:
            for name, attack in ATTACKS:
                print(f"... {name}", file=sys.stderr, flush=True)
                overflows = listen_overflows()
                t, before, health, served = attack(binary, workdir)
                rss, peak = memory_kib(t.proc.pid)
                overflows = listen_overflows() - overflows
                if overflows:
                    served += f"; {overflows:,} connection(s) dropped by full listen queues (kernel count)"
                row = {"attack": name, "before_kib": before, "peak_kib": peak, "rss_end_kib": rss,
                       "healthz": health, "served": served}
                rows.append(row)
                pending.append((time.monotonic() + settle, t, row))
            # RSS after: each process read `settle` seconds after its attack ended.
            for due, t, row in pending:
                time.sleep(max(0.0, due - time.monotonic()))
                row["rss_after_kib"] = memory_kib(t.proc.pid)[0]
        finally:
            for t in Target.live:
                t.stop()
    result = {
        "commit": stamp(), "date": utc_now(), "settle_seconds": settle,
        "cpus": os.cpu_count(), "binary": binary, "rows": rows,
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(table(result))


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def table(result):
    lines = [
        f"| attack | RSS before | peak RSS | /healthz worst (polls, failed) | RSS {result['settle_seconds']:g} s after | what was served |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        h = r["healthz"]
        lines.append(
            f"| {r['attack']} | {mib(r['before_kib'])} | {mib(r['peak_kib'])} | "
            f"{h['worst_ms']:.1f} ms ({h['polls']}, {h['failed']}{failures(h)}) | {mib(r['rss_after_kib'])} | {r['served']} |"
        )
    return "\n".join(lines)


def failures(health):
    return f": {', '.join(health['errors'])}" if health.get("errors") else ""


def over_limits(result):
    """The attacks past 48 MiB peak RSS or 50 ms /healthz, with exact figures."""
    out = []
    for r in result["rows"]:
        why = []
        if r["peak_kib"] > PEAK_LIMIT_KIB:
            why.append(f"peak RSS {r['peak_kib']:,} KiB > {PEAK_LIMIT_KIB:,} KiB (48 MiB)")
        if r["healthz"]["worst_ms"] > HEALTHZ_LIMIT_MS or r["healthz"]["failed"]:
            why.append(f"/healthz worst {r['healthz']['worst_ms']:.3f} ms, {r['healthz']['failed']} failed")
        if r["rss_after_kib"] > r["before_kib"] + 10 * 1024:
            why.append(f"RSS after {r['rss_after_kib']:,} KiB > before {r['before_kib']:,} KiB + 10 MiB")
        if why:
            out.append(f"- {r['attack']}: " + "; ".join(why))
    return out


def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()


def stamp():
    """The commit measured, marked if the tree differs from it (docs/figures.md aside)."""
    commit = git("rev-parse", "--short", "HEAD")
    if git("status", "--porcelain", "--", ".", ":!docs/figures.md"):
        commit += " plus uncommitted changes"
    return commit


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def near_limits(result):
    """Attacks within the limits but within a tenth of one, with exact figures."""
    out = []
    for r in result["rows"]:
        worst = r["healthz"]["worst_ms"]
        if PEAK_LIMIT_KIB * 0.9 < r["peak_kib"] <= PEAK_LIMIT_KIB:
            out.append(f"- {r['attack']}: peak RSS {r['peak_kib']:,} KiB of {PEAK_LIMIT_KIB:,} KiB")
        if HEALTHZ_LIMIT_MS * 0.9 < worst <= HEALTHZ_LIMIT_MS:
            out.append(f"- {r['attack']}: /healthz worst {worst:.3f} ms")
    return out


def write_figures(out, results):
    with open(results) as f:
        result = json.load(f)
    # Stamped when measured: a later commit of only the docs does not change what was measured.
    commit, date = result["commit"], result["date"]
    over = over_limits(result)
    near = near_limits(result)
    verdict = (
        "Past issue 12's targets (peak RSS under 48 MiB, /healthz within 50 ms and never failing,\n"
        "RSS back within 10 MiB of the RSS before), compared unrounded:\n\n" + "\n".join(over)
        if over
        else "Every attack stays under 48 MiB peak RSS, /healthz answers within 50 ms throughout, "
        "and RSS is back within 10 MiB of the RSS before."
    )
    if near:
        verdict += "\n\nWithin the targets but within a tenth of one:\n\n" + "\n".join(near)
    section = f"""{SECTION}

<!-- Written by `make faults` (scripts/faults.py --figures), which replaces this section;
`make bench` keeps it. -->

Measured at commit `{commit}`, {date}.

Issue 12's attacks, run by `make faults` against the release binary; {result['cpus']} CPUs
shared with other builds, loopback, one run. Each attack gets a fresh process. RSS before is
read once it is ready (for the upstream attack, after its first fetch); peak RSS is its
`VmHWM`; /healthz is polled every 20 ms, on a new connection each time, by a separate process
during the attack; RSS after is read {result['settle_seconds']:g} s after the attack ended.
Raw results: `target/faults.json`.

{table(result)}

{verdict}
"""
    with open(out) as f:
        old = f.read()
    start = old.find(f"\n{SECTION}\n")
    if start < 0:
        text = old.rstrip("\n") + "\n\n" + section
    else:
        end = old.find("\n## ", start + 1)
        text = old[: start + 1] + section + (old[end:] if end >= 0 else "")
    with open(out, "w") as f:
        f.write(text)
    print(f"wrote {out} ({len(result['rows'])} attacks, commit {commit})")


def main():
    if sys.argv[1:2] == ["--poll"] and len(sys.argv) == 4:
        poll_healthz(int(sys.argv[2]), float(sys.argv[3]))
    elif sys.argv[1:2] == ["--figures"] and len(sys.argv) == 4:
        write_figures(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3:
        # Stops by itself: a hung attack ends the run (children are stopped in run()'s finally).
        def give_up(*_):
            raise SystemExit(f"faults.py: gave up after {RUN_DEADLINE_SECONDS} s")

        signal.signal(signal.SIGALRM, give_up)
        signal.alarm(RUN_DEADLINE_SECONDS)
        run(sys.argv[1], sys.argv[2])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
