//! OpenMetrics by negotiation, against independent readers: the exporter beside the stand-in
//! manager on the test control plane (its objects' families) with an upstream body that holds
//! every kind of family a component may serve (tests/testdata/openmetrics/upstream.txt: a
//! counter without `_total`, an untyped family, a summary, HELP and label values that need
//! escaping). The OpenMetrics body must pass the Python client's strict parser (not ours) and
//! hold exactly the text format's samples; and a real Prometheus scraping it twice, once per
//! protocol, must store the same series with the same values.
//!
//! The upstream is a local file server: its body must stay fixed while both formats are read,
//! which a live manager's counters do not.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::exporter::logged_line;
use common::proc::Proc;
use common::prometheus::{api, query, query_range, urlencode};
use common::{check, control_plane, eventually, free_port, http, repo_path, test_namespace};
use serde_json::{Value, json};

const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0;q=0.9,text/plain;q=0.5";
const OM_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Reads an OpenMetrics body with the Python client's strict parser; prints its samples as
/// `[[name, {labels}, value], ...]` and its families as `[name, type, unit]`. A body the parser
/// refuses exits 1 with its reason. (The same client's text parser is not the reference for
/// the text format: it renames a counter's samples as OpenMetrics would, which Prometheus does
/// not; the text body is read as Prometheus reads it, by the tests' own reader.)
const READER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
families = list(om(open(sys.argv[1]).read()))
print(json.dumps({
    "om": [[s.name, s.labels, s.value] for f in families for s in f.samples],
    "families": [[f.name, f.type, f.unit] for f in families],
}))
"#;

fn wheel() -> Option<PathBuf> {
    let path = repo_path("target/controlplane/bin/prometheus_client.whl");
    if path.exists() {
        return Some(path);
    }
    let why = format!(
        "no {}: `scripts/controlplane.sh build` fetches it",
        path.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("CI=true but the OpenMetrics parser is missing: {why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// Served as of when each body was encoded: the one sample two bodies of a state may differ in.
const SCRAPES: &str = "ksit_exporter_scrapes_total";

/// The parser's samples keyed as the tests' text reader keys them: `name{a="v",...}`, labels
/// sorted, values escaped as in the text format.
fn samples(v: &Value) -> BTreeMap<String, f64> {
    let escape = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    v.as_array()
        .expect("a list of samples")
        .iter()
        .map(|s| {
            let labels: BTreeMap<&str, &str> = s[1]
                .as_object()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str().expect("a label value")))
                .collect();
            let mut key = s[0].as_str().expect("a name").to_string();
            if !labels.is_empty() {
                let pairs: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                key = format!("{key}{{{}}}", pairs.join(","));
            }
            (key, s[2].as_f64().expect("a finite value"))
        })
        .filter(|(key, _)| key != SCRAPES)
        .collect()
}

/// Serves `dir`'s files over HTTP on a free loopback port.
fn file_server(dir: &str, logs: PathBuf) -> (Proc, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let port = addr.rsplit(':').next().expect("a port").to_string();
    let proc = Proc::spawn(
        Command::new("python3")
            .args(["-m", "http.server", &port, "--bind", "127.0.0.1", "-d"])
            .arg(repo_path(dir)),
        logs,
    );
    (proc, addr)
}

async fn get(addr: &str, headers: &[(&str, &str)]) -> http::Reply {
    let reply = http::request(addr, "GET", "/metrics", headers).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply
}

fn header<'a>(reply: &'a http::Reply, name: &str) -> &'a str {
    reply.headers.get(name).map_or("", String::as_str)
}

#[tokio::test(flavor = "multi_thread")]
async fn openmetrics_is_what_independent_readers_read_as_the_text_format() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let Some(wheel) = wheel() else {
        return;
    };
    let target = repo_path("target");
    let ns = test_namespace(&cp, "openmetrics", &[]).await;
    cp.apply_samples(&ns.name);
    let _manager = common::start_manager(&cp, &[&ns.name]).await;
    let (_files, files) = file_server(
        "tests/testdata/openmetrics",
        target.join(format!("openmetrics-files-{}.log", std::process::id())),
    );
    let upstream = format!("http://{files}/upstream.txt");
    eventually(Duration::from_secs(10), "the file server", || async {
        http::try_request(&files, "GET", "/upstream.txt", &[]).await
    })
    .await;

    let mut exporter = Command::new(env!("CARGO_BIN_EXE_ksit-exporter"))
        .env_clear()
        .env("KSIT_LISTEN_ADDR", "127.0.0.1:0")
        .env("KSIT_LOG_FORMAT", "json")
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("KSIT_KUBERNETES", "true")
        .env("KSIT_WATCH_NAMESPACES", &ns.name)
        .env("KSIT_UPSTREAM_METRICS_URL", &upstream)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the exporter starts");
    let line = logged_line(&mut exporter, "exporter", "serving /metrics").await;
    let addr = line["addr"].as_str().expect("an address").to_string();
    let _exporter = common::Exporter {
        child: exporter,
        addr: addr.parse().expect("a socket address"),
    };

    // Both of the samples' targets and the upstream's families are in.
    eventually(Duration::from_secs(60), "objects and upstream", || async {
        let text = get(&addr, &[]).await.text();
        let ready = text.contains("\nksit_cluster_status{")
            && text.contains("\nksit_exporter_upstream_up 1\n")
            && text.contains("\nlegacy_untyped{");
        if ready { Ok(()) } else { Err(text) }
    })
    .await;

    // --- The body itself: the two formats of one state, read by the Python client. ---
    let (text, om) = eventually(Duration::from_secs(30), "one state read twice", || async {
        let before = get(&addr, &[]).await.text();
        let om = get(&addr, &[("Accept", OPENMETRICS)]).await;
        let after = get(&addr, &[]).await.text();
        if before == after {
            Ok((before, om))
        } else {
            Err("the state changed between the reads".to_string())
        }
    })
    .await;
    assert_eq!(header(&om, "content-type"), OM_TYPE);
    assert!(header(&om, "vary").contains("Accept"), "{:?}", om.headers);
    let om_text = om.text();
    assert!(om_text.ends_with("\n# EOF\n"), "{om_text}");
    assert_eq!(om_text.matches("# EOF").count(), 1);
    let dir = tempfile::tempdir().expect("a temp dir");
    let (om_file, text_file) = (dir.path().join("om.txt"), dir.path().join("text.txt"));
    std::fs::write(&om_file, &om_text).expect("writing");
    std::fs::write(&text_file, &text).expect("writing");
    let read = check(
        Command::new("python3")
            .env("PYTHONPATH", &wheel)
            .args(["-c", READER])
            .arg(&om_file)
            .arg(&text_file)
            .output()
            .expect("python3 runs"),
        "the strict OpenMetrics parser",
    );
    let read: Value = serde_json::from_str(&read).expect("the reader prints JSON");
    let from_om = samples(&read["om"]);
    let mut from_text = common::Scrape::parse(&text).samples().clone();
    from_text.remove(SCRAPES);
    assert!(from_text.len() > 50, "{from_text:?}");
    let differ: Vec<String> = from_om
        .keys()
        .chain(from_text.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|k| from_om.get(*k) != from_text.get(*k))
        .map(|k| {
            format!(
                "{k}: {:?} in OpenMetrics, {:?} in text",
                from_om.get(k),
                from_text.get(k)
            )
        })
        .collect();
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    let families: BTreeMap<String, (String, String)> = read["families"]
        .as_array()
        .expect("families")
        .iter()
        .map(|f| {
            let s = |i: usize| f[i].as_str().expect("a string").to_string();
            (s(0), (s(1), s(2)))
        })
        .collect();
    for (name, kind, unit) in [
        // The family without `_total`; its samples keep it.
        ("controller_runtime_reconcile", "counter", ""),
        ("ksit_exporter_scrapes", "counter", ""),
        // OpenMetrics would rename this counter's samples: it stays as it is, unknown.
        ("certwatcher_read_certificate", "unknown", ""),
        ("legacy_untyped", "unknown", ""),
        ("go_gc_duration_seconds", "summary", ""),
        ("controller_runtime_reconcile_time_seconds", "histogram", ""),
        (
            "ksit_cluster_last_sync_timestamp_seconds",
            "gauge",
            "seconds",
        ),
        ("ksit_reconcile_duration_seconds", "histogram", "seconds"),
        ("ksit_exporter_collect_duration_seconds", "gauge", "seconds"),
        ("process_resident_memory_bytes", "gauge", "bytes"),
        ("ksit_cluster_status", "gauge", ""),
    ] {
        assert_eq!(
            families.get(name),
            Some(&(kind.to_string(), unit.to_string())),
            "{name} in {families:?}"
        );
    }

    // gzip carries the same body.
    let again = eventually(
        Duration::from_secs(30),
        "one state read gzipped",
        || async {
            let plain = get(&addr, &[("Accept", OPENMETRICS)]).await.text();
            let gz = get(
                &addr,
                &[("Accept", OPENMETRICS), ("Accept-Encoding", "gzip")],
            )
            .await;
            let after = get(&addr, &[("Accept", OPENMETRICS)]).await.text();
            if plain == after {
                Ok((plain, gz))
            } else {
                Err("changed".to_string())
            }
        },
    )
    .await;
    assert_eq!(header(&again.1, "content-encoding"), "gzip");
    assert_eq!(header(&again.1, "content-type"), OM_TYPE);
    let mut unzipped = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::MultiGzDecoder::new(&again.1.body[..]),
        &mut unzipped,
    )
    .expect("gzip");
    assert_eq!(unzipped, again.0);

    // --- A real Prometheus, one job per protocol, the same target. ---
    let data = tempfile::tempdir().expect("a temp dir");
    let job = |name: &str, protocol: &str| {
        json!({
            "job_name": name,
            "honor_labels": true,
            "scrape_protocols": [protocol],
            "static_configs": [{ "targets": [addr] }],
        })
    };
    let config = json!({
        "global": { "scrape_interval": "1s", "scrape_timeout": "1s" },
        "scrape_configs": [job("om", "OpenMetricsText1.0.0"), job("text", "PrometheusText0.0.4")],
    });
    let (prometheus, prom) =
        common::prometheus::start(&cp, &config, data.path(), "openmetrics-prometheus");
    eventually(Duration::from_secs(60), "both jobs scraped", || async {
        let got = query(&prom, "count by (job) (legacy_untyped)").await?;
        if got.len() == 2 {
            Ok(())
        } else {
            Err(format!("{got:?}\n{}", prometheus.log_tail(20)))
        }
    })
    .await;
    // A few scrapes of each, so that `changes` below sees a window.
    tokio::time::sleep(Duration::from_secs(12)).await;

    // The same series (the job aside), from the synthetic `up` to every family above.
    let series = |job: &'static str| {
        let prom = prom.clone();
        async move {
            let matcher = urlencode(&format!("{{job=\"{job}\"}}"));
            let data = api(&prom, &format!("/api/v1/series?match[]={matcher}"))
                .await
                .expect("the series API");
            data.as_array()
                .expect("series")
                .iter()
                .map(|s| {
                    let mut labels = s.as_object().expect("labels").clone();
                    labels.remove("job");
                    Value::Object(labels).to_string()
                })
                .collect::<BTreeSet<String>>()
        }
    };
    let (om_series, text_series) = (series("om").await, series("text").await);
    assert!(text_series.len() > 50, "{text_series:?}");
    assert_eq!(
        om_series.difference(&text_series).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "stored from OpenMetrics only"
    );
    assert_eq!(
        text_series.difference(&om_series).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "stored from the text format only"
    );

    // The same values, for every series that held still over the last 10 s in both jobs.
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    let stable = |job: &'static str| {
        let prom = prom.clone();
        async move {
            let range = query_range(&prom, &format!("{{job=\"{job}\"}}"), end - 10.0, end, 1)
                .await
                .expect("a range query");
            range
                .iter()
                .filter_map(|s| {
                    let values: Vec<&Value> = s["values"]
                        .as_array()
                        .expect("values")
                        .iter()
                        .map(|v| &v[1])
                        .collect();
                    let still = values.len() >= 5 && values.windows(2).all(|w| w[0] == w[1]);
                    let mut labels = s["metric"].as_object().expect("labels").clone();
                    labels.remove("job");
                    still.then(|| (Value::Object(labels).to_string(), values[0].to_string()))
                })
                .collect::<BTreeMap<String, String>>()
        }
    };
    let (om_values, text_values) = (stable("om").await, stable("text").await);
    let mut compared = 0;
    for (series, value) in &text_values {
        if let Some(om) = om_values.get(series) {
            assert_eq!(om, value, "{series}");
            compared += 1;
        }
    }
    for family in [
        "ksit_cluster_status",
        "legacy_untyped",
        "certwatcher_read_certificate",
        "go_gc_duration_seconds",
        "controller_runtime_reconcile_time_seconds_bucket",
        "controller_runtime_reconcile_total",
    ] {
        let name = format!("\"__name__\":\"{family}\"");
        assert!(
            text_values.keys().any(|k| k.contains(&name))
                && om_values.keys().any(|k| k.contains(&name)),
            "{family} was compared: {text_values:?}"
        );
    }
    eprintln!(
        "openmetrics: {} series stored alike from both formats; {compared} values compared",
        text_series.len()
    );

    // Each job spoke its protocol: the metadata differs where the formats do.
    let metadata = |job: &'static str, metric: &'static str| {
        let prom = prom.clone();
        async move {
            let m = urlencode(&format!("{{job=\"{job}\"}}"));
            let data = api(
                &prom,
                &format!("/api/v1/targets/metadata?match_target={m}&metric={metric}"),
            )
            .await
            .expect("the metadata API");
            let entry = &data[0];
            (
                entry["type"].as_str().unwrap_or_default().to_string(),
                entry["unit"].as_str().unwrap_or_default().to_string(),
            )
        }
    };
    assert_eq!(
        metadata("om", "certwatcher_read_certificate").await.0,
        "unknown"
    );
    assert_eq!(
        metadata("text", "certwatcher_read_certificate").await.0,
        "counter"
    );
    assert_eq!(
        metadata("om", "process_resident_memory_bytes").await,
        ("gauge".to_string(), "bytes".to_string())
    );
}
