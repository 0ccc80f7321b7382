//! The real binary, started on a free loopback port, read back over HTTP.
//!
//! The health endpoints and the upstream here are small local HTTP servers because these tests
//! need faults on demand (a 500, a hang, a huge or malformed body) that no real component gives.
//! The real controller-runtime upstream is exercised in the control-plane tests.

mod exporter_support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exporter_support::{assert_promtool_clean, get, has_line, request, start, wait_for};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;

/// A local HTTP server whose answer per path the test sets and changes.
#[derive(Clone)]
enum Answer {
    Status(u16, String),
    Hang,
}

struct FakeHttp {
    addr: SocketAddr,
    routes: Arc<Mutex<HashMap<String, Answer>>>,
    _runtime: tokio::runtime::Runtime,
}

impl FakeHttp {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let routes: Arc<Mutex<HashMap<String, Answer>>> = Arc::default();
        let shared = routes.clone();
        runtime.spawn(async move {
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
        Self {
            addr,
            routes,
            _runtime: runtime,
        }
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

#[test]
fn serves_probes_and_metrics() {
    let e = start(&[]);
    assert_eq!(get(e.addr, "/healthz").status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(e.addr, "/readyz").status != 200 {
        assert!(Instant::now() < deadline, "not ready within 5s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = get(e.addr, "/metrics");
    assert_eq!(m.status, 200);
    assert_eq!(
        m.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let body = m.text();
    assert!(
        body.contains(&format!(
            "ksit_exporter_build_info{{revision=\"{}\",version=\"{}\"}} 1",
            option_env!("KSIT_GIT_REVISION").unwrap_or("unknown"),
            env!("CARGO_PKG_VERSION")
        )),
        "{body}"
    );
    assert!(
        has_line(&body, "ksit_exporter_collector_up{collector=\"process\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("\nprocess_resident_memory_bytes "),
        "own process series: {body}"
    );
    assert_eq!(get(e.addr, "/nope").status, 404);
    let post = request(e.addr, "POST", "/metrics", &[("Content-Length", "0")]);
    assert_eq!(post.status, 405);
    assert_eq!(post.headers["allow"], "GET, HEAD");
}

#[test]
fn gzip_when_asked() {
    let e = start(&[]);
    let r = request(e.addr, "GET", "/metrics", &[("Accept-Encoding", "gzip")]);
    assert_eq!(
        r.headers.get("content-encoding").map(String::as_str),
        Some("gzip")
    );
    let mut text = String::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_string(&mut text)
        .expect("valid gzip");
    assert!(
        text.contains("# TYPE ksit_exporter_build_info gauge"),
        "{text}"
    );
    let plain = request(
        e.addr,
        "GET",
        "/metrics",
        &[("Accept-Encoding", "gzip;q=0, identity")],
    );
    assert!(!plain.headers.contains_key("content-encoding"));
}

#[test]
fn health_probes_report_each_endpoint() {
    let fake = FakeHttp::start();
    fake.set("/healthz", Answer::Status(200, "ok".into()));
    fake.set("/readyz", Answer::Status(500, "not ready".into()));
    fake.set("/hang", Answer::Hang);
    let urls = format!(
        "{},{},stuck={}",
        fake.url("/healthz"),
        fake.url("/readyz"),
        fake.url("/hang")
    );
    let e = start(&[
        ("KSIT_HEALTH_URLS", &urls),
        ("KSIT_PROBE_INTERVAL", "200ms"),
        ("KSIT_PROBE_TIMEOUT", "100ms"),
    ]);
    let body = wait_for(e.addr, "three probes", |b| {
        b.contains("ksit_component_health_up{probe=\"stuck\"}")
    });
    assert!(
        has_line(&body, "ksit_component_health_up{probe=\"healthz\"} 1"),
        "{body}"
    );
    assert!(
        has_line(&body, "ksit_component_health_up{probe=\"readyz\"} 0"),
        "{body}"
    );
    assert!(
        has_line(&body, "ksit_component_health_up{probe=\"stuck\"} 0"),
        "{body}"
    );
    assert!(
        body.contains("ksit_component_health_last_success_timestamp_seconds{probe=\"healthz\"} 1")
    );
    assert!(
        !body.contains("ksit_component_health_last_success_timestamp_seconds{probe=\"stuck\"}")
    );
    let stuck: f64 = body
        .lines()
        .find_map(|l| {
            l.strip_prefix("ksit_component_health_probe_duration_seconds{probe=\"stuck\"} ")
        })
        .and_then(|v| v.parse().ok())
        .expect("duration of the hung probe");
    assert!(
        (0.09..1.0).contains(&stuck),
        "the hang is cut at the timeout: {stuck}"
    );
    // Recovery follows within an interval or two.
    fake.set("/readyz", Answer::Status(200, "ok".into()));
    wait_for(e.addr, "readyz recovered", |b| {
        has_line(b, "ksit_component_health_up{probe=\"readyz\"} 1")
    });
}

#[test]
fn upstream_reconciles_and_passthrough_and_faults() {
    let fake = FakeHttp::start();
    fake.set("/metrics", Answer::Status(200, UPSTREAM.into()));
    let e = start(&[
        ("KSIT_UPSTREAM_METRICS_URL", &fake.url("/metrics")),
        ("KSIT_PROBE_INTERVAL", "200ms"),
        ("KSIT_PROBE_TIMEOUT", "150ms"),
        ("KSIT_UPSTREAM_MAX_BYTES", "4096"),
    ]);
    let body = wait_for(e.addr, "upstream up", |b| {
        has_line(b, "ksit_exporter_upstream_up 1")
    });
    for line in [
        "# TYPE ksit_reconcile_duration_seconds histogram",
        "ksit_reconcile_duration_seconds_bucket{controller=\"integrationtarget\",le=\"0.005\"} 3",
        "ksit_reconcile_duration_seconds_bucket{controller=\"integrationtarget\",le=\"+Inf\"} 5",
        "ksit_reconcile_duration_seconds_sum{controller=\"integrationtarget\"} 0.04",
        "ksit_reconcile_duration_seconds_count{controller=\"integrationtarget\"} 5",
        "ksit_reconcile_total{controller=\"integrationtarget\",result=\"success\"} 5",
        "workqueue_depth{name=\"integrationtarget\"} 0",
        "controller_runtime_reconcile_total{controller=\"integrationtarget\",result=\"success\"} 5",
    ] {
        assert!(has_line(&body, line), "missing {line:?}:\n{body}");
    }
    // The exporter's own process family wins over the upstream's of the same name.
    assert_eq!(
        body.matches("# TYPE process_cpu_seconds_total counter")
            .count(),
        1,
        "{body}"
    );
    assert!(!has_line(&body, "process_cpu_seconds_total 1.5"), "{body}");

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
        let body = wait_for(e.addr, what, |b| has_line(b, "ksit_exporter_upstream_up 0"));
        assert!(
            !body.contains("workqueue_depth"),
            "{what}: stale upstream series withdrawn"
        );
        assert!(!body.contains("ksit_reconcile_total{"), "{what}");
        assert!(
            has_line(
                &body,
                "ksit_exporter_collector_up{collector=\"upstream\"} 0"
            ),
            "{what}"
        );
        fake.set("/metrics", Answer::Status(200, UPSTREAM.into()));
        wait_for(e.addr, "upstream back", |b| {
            has_line(b, "ksit_exporter_upstream_up 1")
        });
    }
}

#[test]
fn matching_processes_are_measured() {
    let mut sleeper = Command::new("sleep").arg("30").spawn().expect("sleep runs");
    let e = start(&[
        ("KSIT_PROCESS_MATCH", "^sleep$"),
        ("KSIT_PROBE_INTERVAL", "200ms"),
        ("KSIT_PROBE_TIMEOUT", "100ms"),
    ]);
    let body = wait_for(e.addr, "a matching process", |b| {
        b.lines()
            .find_map(|l| l.strip_prefix("ksit_component_processes "))
            .and_then(|v| v.parse::<i64>().ok())
            .is_some_and(|n| n >= 1)
    });
    let rss: i64 = body
        .lines()
        .find_map(|l| l.strip_prefix("ksit_component_process_resident_memory_bytes "))
        .and_then(|v| v.parse().ok())
        .expect("rss line");
    assert!(rss > 0, "{body}");
    assert!(body.contains("# TYPE ksit_component_process_cpu_seconds_total counter"));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let mut e = start(&[]);
    // An idle kept-alive connection must not hold the shutdown up.
    let mut idle = TcpStream::connect(e.addr).expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    let mut buf = [0u8; 256];
    let _ = idle.read(&mut buf).expect("response");
    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &e.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    let exit = loop {
        if let Some(s) = e.child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "still running 5s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(0), "exit after {:?}", started.elapsed());
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
    assert!(printed.contains("KSIT_PROBE_INTERVAL=30s\n"), "{printed}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown variable KSIT_TYPO"));
}

/// `promtool check metrics` lints the exposition: naming, units, HELP, duplicates.
#[test]
fn promtool_finds_nothing_to_lint() {
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
    let fake = FakeHttp::start();
    fake.set("/metrics", Answer::Status(200, UPSTREAM.into()));
    fake.set("/healthz", Answer::Status(200, "ok".into()));
    let e = start(&[
        ("KSIT_UPSTREAM_METRICS_URL", &fake.url("/metrics")),
        ("KSIT_HEALTH_URLS", &fake.url("/healthz")),
        ("KSIT_PROCESS_MATCH", "cargo|ksit"),
        ("KSIT_PROBE_INTERVAL", "200ms"),
        ("KSIT_PROBE_TIMEOUT", "150ms"),
    ]);
    let body = wait_for(e.addr, "everything collected", |b| {
        has_line(b, "ksit_exporter_upstream_up 1") && b.contains("ksit_component_health_up{")
    });
    assert_promtool_clean(&promtool, &body);
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
