//! The real binary, started on a free loopback port, read back over HTTP.
//!
//! The health endpoints and the upstream here are small local HTTP servers because these tests
//! need faults on demand (a 500, a delay, a hang, a huge or malformed body) that no real
//! component gives. The real controller-runtime upstream is exercised in the control-plane tests.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{assert_promtool_clean, eventually, start};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A local HTTP server whose answer per path the test sets and changes.
#[derive(Clone)]
enum Answer {
    Status(u16, String),
    /// The status and body, after a delay.
    Slow(Duration, u16, String),
    Hang,
}

/// Serves on the test's own runtime, so it lives as long as the test.
struct FakeHttp {
    addr: SocketAddr,
    routes: Arc<Mutex<HashMap<String, Answer>>>,
}

impl FakeHttp {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let routes: Arc<Mutex<HashMap<String, Answer>>> = Arc::default();
        let shared = routes.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let routes = shared.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let answer =
                                routes.lock().expect("lock").get(req.uri().path()).cloned();
                            async move {
                                let (code, body) = match answer {
                                    Some(Answer::Status(c, b)) => (c, b),
                                    Some(Answer::Slow(delay, c, b)) => {
                                        tokio::time::sleep(delay).await;
                                        (c, b)
                                    }
                                    Some(Answer::Hang) => {
                                        tokio::time::sleep(Duration::from_secs(3600)).await;
                                        (200, String::new())
                                    }
                                    None => (404, "no route".to_string()),
                                };
                                let mut r = Response::new(Full::new(Bytes::from(body)));
                                *r.status_mut() = StatusCode::from_u16(code).expect("status");
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, routes }
    }

    fn set(&self, path: &str, answer: Answer) {
        self.routes
            .lock()
            .expect("lock")
            .insert(path.to_string(), answer);
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// Seconds since the epoch, as the exporter's timestamps are.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

const UPSTREAM: &str = r#"# HELP controller_runtime_reconcile_time_seconds Length of time per reconciliation per controller
# TYPE controller_runtime_reconcile_time_seconds histogram
controller_runtime_reconcile_time_seconds_bucket{controller="integrationtarget",le="0.005"} 3
controller_runtime_reconcile_time_seconds_bucket{controller="integrationtarget",le="0.01"} 4
controller_runtime_reconcile_time_seconds_bucket{controller="integrationtarget",le="+Inf"} 5
controller_runtime_reconcile_time_seconds_sum{controller="integrationtarget"} 0.04
controller_runtime_reconcile_time_seconds_count{controller="integrationtarget"} 5
# HELP controller_runtime_reconcile_total Total number of reconciliations per controller
# TYPE controller_runtime_reconcile_total counter
controller_runtime_reconcile_total{controller="integrationtarget",result="success"} 5
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 1.5
# HELP workqueue_depth Current depth of workqueue
# TYPE workqueue_depth gauge
workqueue_depth{name="integrationtarget"} 0
"#;

#[tokio::test]
async fn serves_probes_and_metrics() {
    let e = start(&[]).await;
    assert_eq!(e.get("/healthz").await.status, 200);
    eventually(Duration::from_secs(5), "/readyz 200", || async {
        let r = e.get("/readyz").await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(r.status)
        }
    })
    .await;
    let m = e.get("/metrics").await;
    assert_eq!(m.status, 200);
    assert_eq!(
        m.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let s = common::Scrape::parse(&m.text());
    // build.rs stamps every build from a checkout with its commit.
    let revision = env!("KSIT_GIT_REVISION");
    assert_ne!(revision, "unknown", "the git revision is stamped");
    s.assert(
        &format!(
            "ksit_exporter_build_info{{revision=\"{revision}\",version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        ),
        1.0,
    );
    s.assert("ksit_exporter_collector_up{collector=\"process\"}", 1.0);
    let rss = s.get("process_resident_memory_bytes");
    assert!(rss.is_some_and(|v| v > 0.0), "own process series: {s}");
    assert_eq!(e.get("/nope").await.status, 404);
    let post = e
        .request("POST", "/metrics", &[("Content-Length", "0")])
        .await;
    assert_eq!(post.status, 405);
    assert_eq!(post.headers["allow"], "GET, HEAD");
}

/// /readyz answers 503 until every collector has finished a first pass, here one health probe
/// of an endpoint that takes 2 s to answer, and 200 from then on.
#[tokio::test]
async fn readyz_waits_for_the_first_collection() {
    let fake = FakeHttp::start().await;
    fake.set(
        "/healthz",
        Answer::Slow(Duration::from_secs(2), 200, "ok".into()),
    );
    let e = start(&[
        ("KSIT_HEALTH_URLS", &fake.url("/healthz")),
        ("KSIT_PROBE_INTERVAL", "10s"),
        ("KSIT_PROBE_TIMEOUT", "5s"),
    ])
    .await;
    let early = e.get("/readyz").await;
    assert_eq!(
        (early.status, early.text().as_str()),
        (503, "first collection not finished\n")
    );
    assert_eq!(e.get("/healthz").await.status, 200, "alive while not ready");
    eventually(Duration::from_secs(10), "/readyz 200", || async {
        let r = e.get("/readyz").await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(r.status)
        }
    })
    .await;
    // Ready means the first pass is in: the slow probe's result is there.
    e.scrape()
        .await
        .assert("ksit_component_health_up{probe=\"healthz\"}", 1.0);
}

#[tokio::test]
async fn gzip_when_asked() {
    let e = start(&[]).await;
    let r = e
        .request("GET", "/metrics", &[("Accept-Encoding", "gzip")])
        .await;
    assert_eq!(
        r.headers.get("content-encoding").map(String::as_str),
        Some("gzip")
    );
    let mut text = String::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_string(&mut text)
        .expect("valid gzip");
    assert!(
        text.lines()
            .any(|l| l == "# TYPE ksit_exporter_build_info gauge"),
        "{text}"
    );
    let plain = e
        .request(
            "GET",
            "/metrics",
            &[("Accept-Encoding", "gzip;q=0, identity")],
        )
        .await;
    assert!(!plain.headers.contains_key("content-encoding"));
    assert!(
        plain
            .text()
            .contains("# TYPE ksit_exporter_build_info gauge"),
        "identity is plain text"
    );
}

#[tokio::test]
async fn health_probes_report_each_endpoint() {
    let fake = FakeHttp::start().await;
    fake.set("/healthz", Answer::Status(200, "ok".into()));
    fake.set("/readyz", Answer::Status(500, "not ready".into()));
    fake.set("/hang", Answer::Hang);
    // The kubelet counts 200-399 healthy: so does the probe (no redirect is followed).
    fake.set("/moved", Answer::Status(302, "see elsewhere".into()));
    let urls = format!(
        "{},{},stuck={},{}",
        fake.url("/healthz"),
        fake.url("/readyz"),
        fake.url("/hang"),
        fake.url("/moved")
    );
    let started = now();
    let e = start(&[
        ("KSIT_HEALTH_URLS", &urls),
        ("KSIT_PROBE_INTERVAL", "200ms"),
        ("KSIT_PROBE_TIMEOUT", "100ms"),
    ])
    .await;
    let s = e
        .scrape_until("three probes", |s| {
            s.has("ksit_component_health_up{probe=\"stuck\"}")
        })
        .await;
    s.assert("ksit_component_health_up{probe=\"healthz\"}", 1.0);
    s.assert("ksit_component_health_up{probe=\"readyz\"}", 0.0);
    s.assert("ksit_component_health_up{probe=\"stuck\"}", 0.0);
    s.assert("ksit_component_health_up{probe=\"moved\"}", 1.0);
    let last_success =
        s.get("ksit_component_health_last_success_timestamp_seconds{probe=\"healthz\"}");
    assert!(
        last_success.is_some_and(|t| (started.floor()..=now()).contains(&t)),
        "the last success is a time since the start, {last_success:?}: {s}"
    );
    assert_eq!(
        s.get("ksit_component_health_last_success_timestamp_seconds{probe=\"stuck\"}"),
        None,
        "a probe that never succeeded has no last success: {s}"
    );
    let stuck = s
        .get("ksit_component_health_probe_duration_seconds{probe=\"stuck\"}")
        .expect("duration of the hung probe");
    assert!(
        (0.09..1.0).contains(&stuck),
        "the hang is cut at the timeout: {stuck}"
    );
    // Recovery follows within an interval or two.
    fake.set("/readyz", Answer::Status(200, "ok".into()));
    e.scrape_until("readyz recovered", |s| {
        s.is("ksit_component_health_up{probe=\"readyz\"}", 1.0)
    })
    .await;
}

#[tokio::test]
async fn upstream_reconciles_and_passthrough_and_faults() {
    let fake = FakeHttp::start().await;
    fake.set("/metrics", Answer::Status(200, UPSTREAM.into()));
    let e = start(&[
        ("KSIT_UPSTREAM_METRICS_URL", &fake.url("/metrics")),
        ("KSIT_PROBE_INTERVAL", "200ms"),
        ("KSIT_PROBE_TIMEOUT", "150ms"),
        ("KSIT_UPSTREAM_MAX_BYTES", "4096"),
    ])
    .await;
    let s = e
        .scrape_until("upstream up", |s| s.is("ksit_exporter_upstream_up", 1.0))
        .await;
    assert!(
        s.types()
            .contains(&("ksit_reconcile_duration_seconds".into(), "histogram".into())),
        "{s}"
    );
    for (series, value) in [
        (
            "ksit_reconcile_duration_seconds_bucket{controller=\"integrationtarget\",le=\"0.005\"}",
            3.0,
        ),
        (
            "ksit_reconcile_duration_seconds_bucket{controller=\"integrationtarget\",le=\"+Inf\"}",
            5.0,
        ),
        (
            "ksit_reconcile_duration_seconds_sum{controller=\"integrationtarget\"}",
            0.04,
        ),
        (
            "ksit_reconcile_duration_seconds_count{controller=\"integrationtarget\"}",
            5.0,
        ),
        (
            "ksit_reconcile_total{controller=\"integrationtarget\",result=\"success\"}",
            5.0,
        ),
        ("workqueue_depth{name=\"integrationtarget\"}", 0.0),
        (
            "controller_runtime_reconcile_total{controller=\"integrationtarget\",result=\"success\"}",
            5.0,
        ),
    ] {
        s.assert(series, value);
    }
    // The exporter's own process family wins over the upstream's of the same name.
    let typed = s
        .types()
        .iter()
        .filter(|(name, _)| name == "process_cpu_seconds_total")
        .count();
    assert_eq!(typed, 1, "{s}");
    assert!(
        s.get("process_cpu_seconds_total").is_some_and(|v| v != 1.5),
        "the exporter's own value, not the upstream's 1.5: {s}"
    );
    s.assert(
        "ksit_exporter_upstream_rejected_families{reason=\"shadowed\"}",
        1.0,
    );

    for (what, answer) in [
        (
            "malformed",
            Answer::Status(200, "this is { not the text format\n".into()),
        ),
        (
            "huge",
            Answer::Status(200, format!("# {}\n", "x".repeat(10_000))),
        ),
        ("slow", Answer::Hang),
        ("erroring", Answer::Status(503, "down".into())),
    ] {
        fake.set("/metrics", answer);
        let s = e
            .scrape_until(what, |s| s.is("ksit_exporter_upstream_up", 0.0))
            .await;
        assert!(
            !s.has_family("workqueue_depth"),
            "{what}: stale upstream series withdrawn: {s}"
        );
        assert!(!s.has_family("ksit_reconcile_total"), "{what}: {s}");
        s.assert("ksit_exporter_collector_up{collector=\"upstream\"}", 0.0);
        // Only a body that was read counts rejected families; `this` is the malformed one.
        let syntax = if what == "malformed" { 1.0 } else { 0.0 };
        s.assert(
            "ksit_exporter_upstream_rejected_families{reason=\"syntax\"}",
            syntax,
        );
        fake.set("/metrics", Answer::Status(200, UPSTREAM.into()));
        e.scrape_until("upstream back", |s| s.is("ksit_exporter_upstream_up", 1.0))
            .await;
    }
}

#[tokio::test]
async fn matching_processes_are_measured() {
    let mut sleeper = Command::new("sleep").arg("30").spawn().expect("sleep runs");
    let e = start(&[
        ("KSIT_PROCESS_MATCH", "^sleep$"),
        ("KSIT_PROBE_INTERVAL", "200ms"),
        ("KSIT_PROBE_TIMEOUT", "100ms"),
    ])
    .await;
    let s = e
        .scrape_until("a matching process", |s| {
            s.get("ksit_component_processes").is_some_and(|n| n >= 1.0)
        })
        .await;
    let rss = s.get("ksit_component_process_resident_memory_bytes");
    assert!(rss.is_some_and(|v| v > 0.0), "{s}");
    assert!(
        s.types().contains(&(
            "ksit_component_process_cpu_seconds_total".into(),
            "counter".into()
        )),
        "{s}"
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let mut e = start(&[]).await;
    // An idle kept-alive connection must not hold the shutdown up.
    let mut idle = tokio::net::TcpStream::connect(e.addr)
        .await
        .expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 256];
    let n = idle.read(&mut buf).await.expect("response");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    exits_0_on_sigterm(&mut e).await;
}

/// `kill SIGNAL pid`, as a kubelet or a shell sends it.
fn signal(name: &str, pid: u32) {
    let status = Command::new("kill")
        .args([name, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {name}");
}

/// SIGTERM, then the exit within the drain's time: status 0.
async fn exits_0_on_sigterm(e: &mut common::Exporter) {
    signal("-TERM", e.child.id());
    let child = &mut e.child;
    let exit = eventually(Duration::from_secs(5), "the exit after SIGTERM", || {
        std::future::ready(child.try_wait().expect("wait").ok_or("still running"))
    })
    .await;
    assert_eq!(exit.code(), Some(0));
}

#[test]
fn bad_configuration_exits_2_naming_the_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_ksit-exporter"))
        .env_clear()
        .env("KSIT_PROBE_INTERVAL", "soon")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).expect("utf8");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("KSIT_PROBE_INTERVAL=\"soon\""), "{err}");
}

/// `KSIT_SHARD` as kube-state-metrics' `--shard`/`--total-shards` would refuse them, each on one
/// line naming the variable and the value.
#[test]
fn a_bad_shard_exits_2_naming_it() {
    for (shard, why) in [
        (
            "0/0",
            "INDEX/TOTAL, two whole numbers with INDEX below TOTAL",
        ),
        (
            "3/3",
            "INDEX/TOTAL, two whole numbers with INDEX below TOTAL",
        ),
        (
            "a/b",
            "INDEX/TOTAL, two whole numbers with INDEX below TOTAL",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ksit-exporter"))
            .env_clear()
            .env("KSIT_CR_METRICS", "sharded")
            .env("KSIT_SHARD", shard)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2), "{shard}");
        let err = String::from_utf8(out.stderr).expect("utf8");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(&format!("KSIT_SHARD=\"{shard}\"")), "{err}");
        assert!(err.contains(why), "{err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ksit-exporter"))
        .env_clear()
        .env("KSIT_CR_METRICS", "sharded")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).expect("utf8");
    assert!(
        err.contains("POD_NAME"),
        "no shard and no pod to find them from: {err}"
    );
}

#[test]
fn help_lists_every_variable_and_check_config_prints() {
    let out = Command::new(env!("CARGO_BIN_EXE_ksit-exporter"))
        .arg("--help")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).expect("utf8");
    for (name, _, _) in ksit_exporter::config::VARIABLES {
        assert!(help.contains(name), "{name} missing from --help");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ksit-exporter"))
        .arg("check-config")
        .env_clear()
        .env("KSIT_PROBE_INTERVAL", "30s")
        .env("KSIT_TYPO", "1")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).expect("utf8");
    assert!(
        printed.lines().any(|l| l == "KSIT_PROBE_INTERVAL=30s"),
        "{printed}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown variable KSIT_TYPO"));
}

/// `promtool check metrics` lints the exposition: naming, units, HELP, duplicates.
#[tokio::test]
async fn promtool_finds_nothing_to_lint() {
    let Some(promtool) = find_promtool() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool is missing under CI=true; .ci/run must install it"
        );
        eprintln!(
            "SKIPPED promtool_finds_nothing_to_lint: no promtool (run `make test`, which provides it)"
        );
        return;
    };
    let fake = FakeHttp::start().await;
    fake.set("/metrics", Answer::Status(200, UPSTREAM.into()));
    fake.set("/healthz", Answer::Status(200, "ok".into()));
    let e = start(&[
        ("KSIT_UPSTREAM_METRICS_URL", &fake.url("/metrics")),
        ("KSIT_HEALTH_URLS", &fake.url("/healthz")),
        ("KSIT_PROCESS_MATCH", "cargo|ksit"),
        ("KSIT_PROBE_INTERVAL", "200ms"),
        ("KSIT_PROBE_TIMEOUT", "150ms"),
    ])
    .await;
    let s = e
        .scrape_until("everything collected", |s| {
            s.is("ksit_exporter_upstream_up", 1.0)
                && s.is("ksit_component_health_up{probe=\"healthz\"}", 1.0)
                && s.has_family("ksit_component_processes")
        })
        .await;
    assert_promtool_clean(&promtool, &s.text);
}

fn find_promtool() -> Option<std::path::PathBuf> {
    let built =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/controlplane/bin/promtool");
    if built.exists() {
        return Some(built);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("promtool"))
            .find(|p| p.exists())
    })
}

#[tokio::test]
async fn sighup_is_ignored_and_the_exporter_keeps_serving() {
    let mut e = start(&[]).await;
    signal("-HUP", e.child.id());
    // Answering takes the process to run after the signal was delivered: had SIGHUP's default
    // action (terminate) applied, there would be nobody to answer.
    let reply = e.get("/healthz").await;
    assert_eq!(reply.status, 200);
    assert!(
        e.child.try_wait().expect("wait").is_none(),
        "the exporter exited on SIGHUP"
    );
    // And it still drains and exits 0 on SIGTERM.
    exits_0_on_sigterm(&mut e).await;
}

#[test]
fn text_logs_have_no_colour_when_stderr_is_not_a_terminal() {
    // KSIT_KUBERNETES=true with no kubeconfig: a warning, an error and exit 1, all logged.
    let out = Command::new(env!("CARGO_BIN_EXE_ksit-exporter"))
        .env_clear()
        .env("KSIT_LOG_FORMAT", "text")
        .env("KSIT_LISTEN_ADDR", "127.0.0.1:0")
        .env("KSIT_KUBERNETES", "true")
        .env("KSIT_TYPO", "1")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8(out.stderr).expect("utf8");
    assert!(log.contains("unknown variable KSIT_TYPO"), "{log}");
    assert!(log.contains("KSIT_KUBERNETES=true but"), "{log}");
    assert!(!log.contains('\u{1b}'), "escape codes in a pipe: {log:?}");
}

/// Credentials in a URL are masked in `check-config`, in configuration errors and in the log
/// lines of failing probes and fetches.
#[test]
fn url_credentials_are_never_printed() {
    let health = "http://user:secret@127.0.0.1:1/healthz";
    let upstream = "http://user:secret@127.0.0.1:1/metrics";
    let exporter = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ksit-exporter"));
        cmd.env_clear()
            .env("KSIT_LISTEN_ADDR", "127.0.0.1:0")
            .env("KSIT_LOG_FORMAT", "json")
            .env("KSIT_KUBERNETES", "false")
            .env("KSIT_HEALTH_URLS", health)
            .env("KSIT_UPSTREAM_METRICS_URL", upstream)
            .env("KSIT_PROBE_INTERVAL", "200ms")
            .env("KSIT_PROBE_TIMEOUT", "150ms");
        cmd
    };

    let out = exporter().arg("check-config").output().expect("runs");
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).expect("utf8");
    assert!(
        printed.contains("KSIT_UPSTREAM_METRICS_URL=http://***@127.0.0.1:1/metrics"),
        "{printed}"
    );
    assert!(!printed.contains("secret"), "{printed}");

    let out = exporter()
        .env("KSIT_HEALTH_URLS", format!("{health},ftp://user:secret@h/"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).expect("utf8");
    assert!(err.contains("KSIT_HEALTH_URLS="), "{err}");
    assert!(!err.contains("secret"), "{err}");

    let mut child = exporter()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the exporter starts");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Until both the probe's and the upstream's failure are logged (each once).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut log = Vec::new();
    let seen = |log: &[String], what: &str| log.iter().any(|l| l.contains(what));
    while !(seen(&log, "health probe failed") && seen(&log, "\"collector\":\"upstream\"")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => log.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "no probe and upstream failures logged within 10s:\n{}",
                    log.join("\n")
                );
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = log.join("\n");
    assert!(log.contains("http://***@127.0.0.1:1/healthz"), "{log}");
    assert!(!log.contains("secret"), "{log}");
}

/// What the kernel says about `pid`: `VmRSS` and `VmHWM` (peak RSS) in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{status}"))
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Sockets `pid` holds open (its listener, its connections, tokio's signal pipe).
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

const MIB: u64 = 1024 * 1024;

/// 1,000 connections each holding as many bytes of headers that never end as the exporter
/// buffers: it keeps at most MAX_CONNECTIONS of them, /healthz keeps answering, and its peak
/// RSS stays under 48 MiB (the debug binary's, which idles at about 21 MiB).
#[tokio::test]
async fn unfinished_headers_on_many_connections_are_bounded() {
    use ksit_exporter::server::{MAX_CONNECTIONS, READ_BUFFER_BYTES};
    let e = start(&[]).await;
    let pid = e.child.id();
    let idle_sockets = sockets(pid);
    let mut header = b"GET /metrics HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..READ_BUFFER_BYTES / 1000 - 1 {
        header.extend_from_slice(format!("X-Pad-{i:02}: {}\r\n", "a".repeat(988)).as_bytes());
    }
    assert!(header.len() < READ_BUFFER_BYTES, "{}", header.len());
    let attack = async {
        let mut held = Vec::new();
        for _ in 0..1000 {
            let mut conn = tokio::net::TcpStream::connect(e.addr)
                .await
                .expect("connect");
            // A connection the exporter already closed to make room may refuse the bytes.
            let _ = conn.write_all(&header).await;
            held.push(conn);
        }
        held
    };
    let held = tokio::time::timeout(Duration::from_secs(60), attack)
        .await
        .expect("1,000 connections opened within 60s");
    for _ in 0..5 {
        let r = e.get("/healthz").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // A connection closed to make room, or the last probe's, may take a moment to go.
    let open = eventually(
        Duration::from_secs(5),
        &format!("at most {MAX_CONNECTIONS} connections open"),
        || {
            let open = sockets(pid) - idle_sockets;
            std::future::ready(if open <= MAX_CONNECTIONS {
                Ok(open)
            } else {
                Err(open)
            })
        },
    )
    .await;
    let (rss, peak) = memory(pid);
    assert!(
        peak < 48 * MIB,
        "peak RSS {peak} (now {rss}) with {open} connections"
    );
    drop(held);
}

/// A client that sends requests and never reads the answers is disconnected once a response
/// has gone unwritten for the write timeout.
#[tokio::test]
async fn a_client_that_does_not_read_is_disconnected() {
    let e = start(&[]).await;
    let pid = e.child.id();
    let idle_sockets = sockets(pid);
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut conn = socket.connect(e.addr).await.expect("connect");
    // Far more answers than the two sockets' buffers hold.
    let requests = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    conn.write_all(requests.as_bytes())
        .await
        .expect("requests sent");
    eventually(Duration::from_secs(10), "the connection open", || {
        std::future::ready((sockets(pid) > idle_sockets).then_some(()))
    })
    .await;
    let timeout = ksit_exporter::server::WRITE_TIMEOUT;
    eventually(
        timeout + Duration::from_secs(20),
        "the exporter to close the connection of a client that does not read",
        || std::future::ready((sockets(pid) == idle_sockets).then_some(())),
    )
    .await;
    // What was written before the close is readable, then the end (or a reset).
    let mut received = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut received))
        .await
        .expect("the connection ends");
    let answers = String::from_utf8_lossy(&received)
        .matches("HTTP/1.1 200")
        .count();
    assert!(answers < 2000, "{answers} answers, {end:?}");
    assert_eq!(e.get("/healthz").await.status, 200);
}

/// `q=0` in any spelling refuses gzip.
#[tokio::test]
async fn gzip_with_quality_zero_gets_plain_text() {
    let e = start(&[]).await;
    for accept in [
        "gzip;q=0.0",
        "gzip;q=0.00",
        "gzip;q=0.",
        "gzip; Q=0.000, identity",
    ] {
        let r = e
            .request("GET", "/metrics", &[("Accept-Encoding", accept)])
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers.get("content-encoding"), None, "{accept}");
        assert!(
            r.text().contains("# TYPE ksit_exporter_build_info gauge"),
            "{accept}: plain text"
        );
    }
    let r = e
        .request("GET", "/metrics", &[("Accept-Encoding", "gzip;q=0.5")])
        .await;
    assert_eq!(
        r.headers.get("content-encoding").map(String::as_str),
        Some("gzip")
    );
}
