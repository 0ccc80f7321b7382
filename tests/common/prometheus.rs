//! Asking a test's Prometheus server: an instant query over its HTTP API.

use serde_json::Value;

use super::http;

/// `data.result` of an instant query, or what went wrong (Prometheus not up yet, a bad query).
pub async fn query(prom: &str, promql: &str) -> Result<Vec<Value>, String> {
    let path = format!("/api/v1/query?query={}", urlencode(promql));
    let reply = http::try_request(prom, "GET", &path, &[]).await?;
    if reply.status != 200 {
        return Err(format!("{promql}: {} {}", reply.status, reply.text()));
    }
    let v: Value =
        serde_json::from_slice(&reply.body).map_err(|e| format!("{e}: {}", reply.text()))?;
    v["data"]["result"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("{promql}: {v}"))
}

/// The port of a `host:port` address.
pub fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
