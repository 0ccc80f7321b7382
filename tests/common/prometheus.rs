//! A test's Prometheus server: the shipped scrape config pointed at the test API server, and
//! queries over its HTTP API.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use super::proc::Proc;
use super::{ControlPlane, free_port, http, repo_path};

/// A Prometheus of the control plane's build with `config` (JSON is YAML), its data in `data`,
/// its log in `target/<log>-<pid>.log`, listening on a free loopback port: the process and
/// that `host:port`.
pub fn start(cp: &ControlPlane, config: &Value, data: &Path, log: &str) -> (Proc, String) {
    let config_path = data.join("prometheus.yml");
    std::fs::write(&config_path, config.to_string()).expect("writing the Prometheus config");
    let addr = format!("127.0.0.1:{}", free_port());
    let proc = Proc::spawn(
        Command::new(cp.bin_dir.join("prometheus"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}")),
        repo_path("target").join(format!("{log}-{}.log", std::process::id())),
    );
    (proc, addr)
}

/// The shipped scrape config (manifests/monitoring/common/prometheus-scrape-config.yaml) as a
/// Prometheus config, pointed at the test API server and limited to `namespace`, because other
/// tests share the control plane: only `api_server`, `tls_config` and `namespaces` are added
/// to its kubernetes_sd entry, and a global 1 s scrape interval, to keep the tests short (the
/// shipped job sets no interval of its own).
pub fn scrape_config(cp: &ControlPlane, namespace: &str) -> Value {
    let shipped = std::fs::read_to_string(repo_path(
        "manifests/monitoring/common/prometheus-scrape-config.yaml",
    ))
    .expect("the shipped scrape config");
    let mut config: Value = serde_saphyr::from_str(&shipped).expect("scrape config is YAML");
    let pki = cp
        .kubeconfig
        .parent()
        .expect("control plane dir")
        .join("pki");
    let job = &mut config["scrape_configs"][0];
    assert_eq!(job["job_name"], "ksit");
    let sd = &mut job["kubernetes_sd_configs"][0];
    assert_eq!(sd["role"], "endpoints");
    sd["api_server"] = json!(cp.server_url);
    sd["tls_config"] = json!({
        "ca_file": pki.join("ca.crt"),
        "cert_file": pki.join("admin.crt"),
        "key_file": pki.join("admin.key"),
    });
    sd["namespaces"] = json!({ "names": [namespace] });
    config["global"] = json!({ "scrape_interval": "1s", "scrape_timeout": "1s" });
    config
}

/// `data` of a GET of Prometheus's HTTP API (`path` from `/api/v1/`), or what went wrong
/// (Prometheus not up yet, a bad query).
pub async fn api(prom: &str, path: &str) -> Result<Value, String> {
    let reply = http::try_request(prom, "GET", path, &[]).await?;
    if reply.status != 200 {
        return Err(format!("GET {path}: {} {}", reply.status, reply.text()));
    }
    let v: Value =
        serde_json::from_slice(&reply.body).map_err(|e| format!("{e}: {}", reply.text()))?;
    if v["status"] != "success" {
        return Err(format!("GET {path}: {v}"));
    }
    Ok(v["data"].clone())
}

/// `data.result` of an instant query, or what went wrong (Prometheus not up yet, a bad query).
pub async fn query(prom: &str, promql: &str) -> Result<Vec<Value>, String> {
    let data = api(prom, &format!("/api/v1/query?query={}", urlencode(promql))).await?;
    data["result"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("{promql}: {data}"))
}

/// `data.result` of a range query from `start` to `end` (Unix seconds) every `step` seconds.
pub async fn query_range(
    prom: &str,
    promql: &str,
    start: f64,
    end: f64,
    step: u64,
) -> Result<Vec<Value>, String> {
    let path = format!(
        "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step}",
        urlencode(promql)
    );
    let data = api(prom, &path).await?;
    data["result"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("{promql}: {data}"))
}

/// The port of a `host:port` address.
pub fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
