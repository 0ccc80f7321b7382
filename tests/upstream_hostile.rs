//! The upstream collector against hostile and huge bodies, through the real binary: a malformed
//! family is dropped alone and counted, the whole /metrics stays promtool-clean, and /healthz
//! answers while a large body is parsed.

mod common;

use std::time::{Duration, Instant};

use common::{Scrape, assert_promtool_clean, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers every request with 200 and `body`, on the test's runtime, closing each connection.
async fn serve(body: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let body: std::sync::Arc<[u8]> = body.into();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let body = body.clone();
            tokio::spawn(async move {
                // Read the request head (bounded), then answer whatever it asked.
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.write_all(&body).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    format!("http://{addr}/metrics")
}

fn promtool() -> Option<std::path::PathBuf> {
    let built = common::repo_path("target/controlplane/bin/promtool");
    if built.exists() {
        return Some(built);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("promtool"))
            .find(|p| p.exists())
    })
}

/// Each malformed case of issue 12 between well-formed families a Go component serves.
const HOSTILE: &[u8] = b"# HELP workqueue_depth Current depth of workqueue
# TYPE workqueue_depth gauge
workqueue_depth{name=\"a,b}\"} 3
bad_braces{a=\"b\" 1
bad_unquoted{a=b} 1
bad_garbage 1 2 3
# TYPE bad_twice_total counter
# TYPE bad_twice_total counter
bad_twice_total 1
# TYPE bad_type bogus
bad_type 1
bad_dup{a=\"1\"} 1
bad_dup{a=\"1\"} 2
bad\xffutf8 1
bad_split 1
# HELP controller_runtime_reconcile_total Total number of reconciliations per controller
# TYPE controller_runtime_reconcile_total counter
controller_runtime_reconcile_total{controller=\"a,b\",result=\"success\",pod=\"x\"} 4
controller_runtime_reconcile_total{controller=\"a,b\",result=\"success\",pod=\"y\"} 5
bad_split 2
ksit_reconcile_duration_seconds_count 1
process_cpu_seconds_total 1.5
{a=\"b\"} 1
# HELP queue_items_total Items added, the last family.
# TYPE queue_items_total counter
queue_items_total 7
";

#[tokio::test]
async fn a_hostile_body_is_served_without_its_bad_families_and_passes_promtool() {
    let url = serve(HOSTILE.to_vec()).await;
    let e = start(&[
        ("KSIT_UPSTREAM_METRICS_URL", url.as_str()),
        ("KSIT_PROBE_INTERVAL", "200ms"),
        ("KSIT_PROBE_TIMEOUT", "150ms"),
    ])
    .await;
    let s = e
        .scrape_until("the upstream read", |s| {
            s.is("ksit_exporter_upstream_up", 1.0)
        })
        .await;
    for (reason, n) in [
        // bad_braces, bad_unquoted, bad_garbage, bad\xff..., and the line that names no family.
        ("syntax", 5.0),
        ("metadata", 2.0),
        ("duplicate_series", 1.0),
        ("split", 1.0),
        ("shadowed", 2.0),
        ("type", 0.0),
        ("clash", 0.0),
        ("limit", 0.0),
    ] {
        s.assert(
            &format!("ksit_exporter_upstream_rejected_families{{reason=\"{reason}\"}}"),
            n,
        );
    }
    s.assert("workqueue_depth{name=\"a,b}\"}", 3.0);
    s.assert("queue_items_total", 7.0);
    s.assert(
        "ksit_reconcile_total{controller=\"a,b\",result=\"success\"}",
        9.0,
    );
    assert!(
        s.text.lines().all(|l| !l.starts_with("bad")),
        "no bad family served: {s}"
    );
    assert!(
        s.get("process_cpu_seconds_total").is_some_and(|v| v != 1.5),
        "the exporter's own: {s}"
    );
    assert!(
        !s.has_family("ksit_reconcile_duration_seconds_count"),
        "{s}"
    );
    match promtool() {
        Some(promtool) => assert_promtool_clean(&promtool, &s.text),
        None => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "promtool is missing under CI=true; .ci/run must install it"
            );
            eprintln!(
                "SKIPPED the promtool check: no promtool (run `make test`, which provides it)"
            );
        }
    }
}

/// Far past anything a healthy /healthz takes, far under a parse of the body on the one runtime
/// thread (which the test checks, so that it can fail).
const HEALTHZ_BOUND: Duration = Duration::from_millis(200);

#[tokio::test]
async fn healthz_answers_while_a_large_body_is_parsed() {
    let mut body = Vec::with_capacity(8 << 20);
    body.extend_from_slice(
        b"# HELP workqueue_adds_total Adds.\n# TYPE workqueue_adds_total counter\n",
    );
    let mut i = 0;
    while body.len() < (8 << 20) - 100 {
        body.extend_from_slice(
            format!("workqueue_adds_total{{controller=\"c\",name=\"queue-{i:08}\"}} {i}\n")
                .as_bytes(),
        );
        i += 1;
    }
    let url = serve(body).await;
    let e = start(&[
        ("KSIT_UPSTREAM_METRICS_URL", url.as_str()),
        ("KSIT_PROBE_INTERVAL", "1s"),
        ("KSIT_PROBE_TIMEOUT", "900ms"),
    ])
    .await;
    let s = e
        .scrape_within(Duration::from_secs(60), "the large body read", |s| {
            s.is("ksit_exporter_upstream_up", 1.0)
        })
        .await;
    assert!(s.has("workqueue_adds_total{controller=\"c\",name=\"queue-00000000\"}"));
    // Several reads and parses happen in this window; /healthz must answer in each.
    let window = Instant::now();
    let mut worst = Duration::ZERO;
    let mut asked = 0;
    while window.elapsed() < Duration::from_secs(4) {
        let t = Instant::now();
        let reply = e.get("/healthz").await;
        assert_eq!(reply.status, 200);
        worst = worst.max(t.elapsed());
        asked += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let parse = Scrape::parse(&e.get("/metrics").await.text())
        .get("ksit_exporter_collect_duration_seconds{collector=\"upstream\"}")
        .expect("the upstream's duration");
    assert!(
        parse > HEALTHZ_BOUND.as_secs_f64(),
        "a read takes {parse}s, under the {HEALTHZ_BOUND:?} bound: the body is too small to tell a blocked /healthz"
    );
    assert!(
        worst < HEALTHZ_BOUND,
        "/healthz took {worst:?} at worst over {asked} requests while reads of {parse}s ran"
    );
}
