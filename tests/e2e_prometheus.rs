//! End to end: the real control plane, the stand-in KSIT manager, the exporter beside it, and a
//! real Prometheus server that finds the exporter with the page's `scrape_configs`
//! (manifests/monitoring/common/prometheus-scrape-config.yaml) through kubernetes_sd, role
//! endpoints, against the test API server.
//!
//! Endpoints may not hold loopback addresses, so the exporter runs as the test's own host in a
//! network namespace the test creates: a veth pair with a /30 from TEST-NET-3 (203.0.113.0/24,
//! documentation-only; not TEST-NET-1, which this CI machine's own eth0 is on), the exporter
//! listening on the namespace's end, the `ksit-monitor` Endpoints naming that address.
//! Prometheus reaches it over the veth, so the page's relabelling stays exactly as shipped; the
//! scrape config gains only what points it at the test API server (`api_server`, `tls_config`,
//! and `namespaces`, because other tests share the control plane). Inside the namespace,
//! loopback is the namespace's own, so a relay (a process with one foot in each namespace)
//! carries the exporter's connections to the API server and to the manager on this machine's
//! 127.0.0.1. No packet leaves the machine.
//! (Both live in tests/common/netns.rs.)
//!
//! Needs root (CAP_NET_ADMIN) for `ip netns`; without it the test is skipped, except under
//! `CI=true`, where that is a failure.

mod common;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{
    check, control_plane, eventually, free_port, http, monitor_yaml, netns, prometheus,
    test_namespace,
};
use prometheus::port_of;
use serde_json::{Value, json};

/// A child process killed on drop, with its log file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_logged(cmd: &mut Command, log: PathBuf) -> Proc {
    let file = std::fs::File::create(&log).unwrap();
    let child = cmd
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    Proc { child, log }
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target")
}

/// `data.result` of an instant query that must answer.
async fn query(prom: &str, promql: &str) -> Vec<Value> {
    prometheus::query(prom, promql)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `{target label: value}` of the `ksit_cluster_status` series.
async fn cluster_status(prom: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = query(prom, "ksit_cluster_status")
        .await
        .iter()
        .map(|s| {
            (
                s["metric"]["target"].as_str().unwrap_or("").to_string(),
                s["value"][1].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The last thing a wait saw, and the logs of the processes under test: read only if it fails.
struct Seen<'a> {
    last: String,
    logs: &'a dyn Fn() -> String,
}

impl fmt::Display for Seen<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.last, (self.logs)())
    }
}

/// [`eventually`] for up to 60 s, its failure showing the logs too.
async fn poll<T, F, Fut>(what: &str, logs: &dyn Fn() -> String, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    eventually(Duration::from_secs(60), what, || {
        let attempt = check();
        async move { attempt.await.map_err(|last| Seen { last, logs }) }
    })
    .await
}

async fn reconcile_count(prom: &str) -> Option<f64> {
    query(prom, "sum(ksit_reconcile_duration_seconds_count)")
        .await
        .first()?
        .get("value")?[1]
        .as_str()?
        .parse()
        .ok()
}

#[tokio::test]
async fn prometheus_scrapes_the_exporter_with_the_pages_scrape_config() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let started = Instant::now();
    let Some(netns) = netns::create_or_skip("203.0.113", 0) else {
        return;
    };
    let ns = test_namespace(&cp, "e2e-prom", &[]).await;
    cp.apply_samples(&ns.name);
    // Short requeues, so reconciles keep coming while the test watches their count.
    let manager = common::start_manager_with(
        &cp,
        &[&ns.name],
        &[
            "--integration-requeue=2s",
            "--target-ready-requeue=2s",
            "--target-failing-requeue=2s",
        ],
    )
    .await;

    let api_port = port_of(&cp.server_url);
    let _relay = netns::start_relay(
        &netns,
        &[
            api_port,
            port_of(&manager.metrics_addr),
            port_of(&manager.health_addr),
        ]
        .map(|port| (port, port)),
    )
    .await;
    let listen = format!("{}:8080", netns.ns_ip);
    let exporter_bin = env!("CARGO_BIN_EXE_ksit-exporter");
    let exporter = spawn_logged(
        Command::new("ip")
            .args(["netns", "exec", &netns.name, exporter_bin])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", &cp.kubeconfig)
            .env("KSIT_KUBERNETES", "true")
            .env("KSIT_WATCH_NAMESPACES", &ns.name)
            .env("KSIT_LISTEN_ADDR", &listen)
            .env("KSIT_PROBE_INTERVAL", "1s")
            .env("KSIT_PROBE_TIMEOUT", "1s")
            .env(
                "KSIT_HEALTH_URLS",
                format!("http://{0}/healthz,http://{0}/readyz", manager.health_addr),
            )
            .env("KSIT_UPSTREAM_METRICS_URL", &manager.metrics_url),
        target_dir().join(format!("e2e-exporter-{}.log", std::process::id())),
    );

    // The Service the page's config keeps, and its Endpoints: the namespaced host's address.
    cp.apply_yaml(&ns.name, &monitor_yaml(&netns.ns_ip, None));

    let data = tempfile::tempdir().unwrap();
    let config_path = data.path().join("prometheus.yml");
    let config = prometheus::scrape_config(&cp, &ns.name);
    // JSON is YAML: Prometheus reads it as its config file.
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    check(
        Command::new(cp.bin_dir.join("promtool"))
            .args(["check", "config"])
            .arg(&config_path)
            .output()
            .unwrap(),
        "promtool check config",
    );
    let prom = format!("127.0.0.1:{}", free_port());
    let prometheus = spawn_logged(
        Command::new(cp.bin_dir.join("prometheus"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom}")),
        target_dir().join(format!("e2e-prometheus-{}.log", std::process::id())),
    );

    let logs = || {
        format!(
            "\n--- exporter log:\n{}\n--- prometheus log (tail):\n{}",
            exporter.log_text(),
            prometheus
                .log_text()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        )
    };

    // Prometheus found the ksit-monitor endpoint and scrapes the namespaced host.
    let target = poll("an up ksit target in Prometheus", &logs, || async {
        let reply = http::try_request(&prom, "GET", "/api/v1/targets?state=active", &[]).await?;
        let v: Value =
            serde_json::from_slice(&reply.body).map_err(|e| format!("{e}: {}", reply.text()))?;
        v["data"]["activeTargets"]
            .as_array()
            .and_then(|ts| {
                ts.iter()
                    .find(|t| t["labels"]["job"] == "ksit" && t["health"] == "up")
                    .cloned()
            })
            .ok_or_else(|| format!("active targets: {}", v["data"]["activeTargets"]))
    })
    .await;
    assert_eq!(
        target["scrapeUrl"],
        format!("http://{listen}/metrics"),
        "{target}"
    );
    assert_eq!(
        target["discoveredLabels"]["__meta_kubernetes_service_name"], "ksit-monitor",
        "{target}"
    );
    assert_eq!(
        query(&prom, r#"up{job="ksit"}"#).await.len(),
        1,
        "exactly one ksit target"
    );

    // One series per IntegrationTarget: cluster1 ready, cluster2 not (its Secret names a closed port).
    let expected = |c2: &str| {
        vec![
            ("cluster1".into(), "1".into()),
            ("cluster2".into(), c2.into()),
        ]
    };
    poll("ksit_cluster_status for both targets", &logs, || async {
        let got = cluster_status(&prom).await;
        if got == expected("0") {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    let series = query(&prom, "ksit_cluster_status").await;
    assert_eq!(series.len(), 2, "{series:?}");
    for s in series {
        // honor_labels: the object's namespace, not exported_namespace.
        assert_eq!(s["metric"]["namespace"], json!(ns.name), "{s}");
        assert_eq!(s["metric"]["source"], "integrationtarget", "{s}");
        assert!(s["metric"].get("exported_namespace").is_none(), "{s}");
    }
    let before = poll("ksit_reconcile_duration_seconds_count", &logs, || async {
        match reconcile_count(&prom).await {
            Some(n) if n > 0.0 => Ok(n),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // cluster2 recovers: its Secret now names this API server, the manager's next connection
    // test (within the 2 s failing requeue) passes, and Prometheus follows.
    cp.put_kubeconfig_secret(&ns.name, "cluster2", &cp.kubeconfig_text());
    poll("cluster2 ready in Prometheus", &logs, || async {
        let got = cluster_status(&prom).await;
        if got == expected("1") {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    let after = poll("reconcile count growing", &logs, || async {
        match reconcile_count(&prom).await {
            Some(n) if n > before => Ok(n),
            other => Err(format!("{other:?}, was {before}")),
        }
    })
    .await;
    eprintln!(
        "e2e: Prometheus scraped {listen} through kubernetes_sd; reconciles {before} -> {after}; {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
