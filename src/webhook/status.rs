//! The webhook's status page at `/` on its HTTPS port: the build, the serving certificate's
//! expiry, the admissions answered. Rendered at most once per change of its registry, as the
//! exporter's page is; /metrics, /healthz and /readyz are on the plain-HTTP metrics port.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use super::metrics::{Summary, WebhookMetrics};
use crate::metrics::Registry;
use crate::status::{self, html, rows};

pub struct Page {
    registry: Arc<Registry>,
    metrics: WebhookMetrics,
    metrics_addr: SocketAddr,
    cache: status::Cache,
}

impl Page {
    pub fn new(registry: Arc<Registry>, metrics: WebhookMetrics, metrics_addr: SocketAddr) -> Self {
        Self {
            registry,
            metrics,
            metrics_addr,
            cache: status::Cache::default(),
        }
    }

    /// The page of the current state, rendered at most once per change.
    pub fn body(&self) -> Bytes {
        self.cache.get(&self.registry, || {
            render(&self.metrics.summary(), self.metrics_addr)
        })
    }
}

pub fn render(s: &Summary, metrics_addr: SocketAddr) -> String {
    let mut out = String::with_capacity(4 * 1024);
    status::head(&mut out, "ksit-exporter webhook");
    let _ = write!(
        out,
        "<h1>ksit-exporter webhook <span class=\"muted\">{} ({})</span></h1>",
        env!("CARGO_PKG_VERSION"),
        env!("KSIT_GIT_REVISION"),
    );
    let total: u64 = s.admissions.values().sum();
    let _ = write!(out, "<p id=\"summary\">{total} admissions answered");
    let mut sep = ": ";
    for (decision, n) in &s.admissions {
        out.push_str(sep);
        let _ = write!(out, "{n} ");
        html::text(&mut out, decision);
        sep = ", ";
    }
    out.push_str("</p><table id=\"webhook\">");
    let expiry = match s.certificate_expiry {
        Some(t) => rows::time(t as i64),
        None => "not loaded".to_string(),
    };
    let rows: [(&str, String); 4] = [
        ("certificate expires", expiry),
        ("certificate reloads", s.certificate_reloads.to_string()),
        (
            "failed TLS handshakes",
            s.tls_handshake_failures.to_string(),
        ),
        (
            "admission paths",
            format!("{} {}", super::POD_PATH, super::NAMESPACE_PATH),
        ),
    ];
    for (name, value) in rows {
        let _ = write!(out, "<tr><th>{name}</th>");
        html::cell(&mut out, &value);
        out.push_str("</tr>");
    }
    out.push_str("</table><p>/metrics, /healthz and /readyz are served in plain HTTP on the metrics port, <code>");
    html::text(&mut out, &metrics_addr.to_string());
    out.push_str("</code> (KSIT_WEBHOOK_METRICS_ADDR).</p>");
    out.push_str(
        "<p class=\"muted\">Rendered once per change of state; reload for the current one.</p></body></html>\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_expiry_and_admissions() {
        let summary = Summary {
            certificate_expiry: Some(1_795_773_600.0),
            admissions: [("injected".to_string(), 3), ("skipped".to_string(), 2)].into(),
            certificate_reloads: 1,
            tls_handshake_failures: 0,
        };
        let page = render(&summary, "0.0.0.0:9090".parse().expect("an address"));
        for fragment in [
            "<title>ksit-exporter webhook</title>",
            "<p id=\"summary\">5 admissions answered: 3 injected, 2 skipped</p>",
            "<tr><th>certificate expires</th><td>2026-11-27T10:00:00Z</td></tr>",
            "<code>0.0.0.0:9090</code>",
        ] {
            assert!(page.contains(fragment), "no {fragment:?} in {page}");
        }
        assert!(page.len() < 4096, "{}", page.len());
    }

    #[test]
    fn cached_until_the_registry_changes() {
        let registry = Arc::new(Registry::new());
        let metrics = WebhookMetrics::register(&registry);
        let page = Page::new(
            registry,
            metrics.clone(),
            "127.0.0.1:9090".parse().expect("addr"),
        );
        let first = page.body();
        assert!(
            first.as_ptr() == page.body().as_ptr(),
            "no change, same body"
        );
        metrics.answered("injected", "opted_in", 0.001);
        let second = page.body();
        assert!(first.as_ptr() != second.as_ptr());
        let text = String::from_utf8(second.to_vec()).expect("utf8");
        assert!(text.contains("1 admissions answered: 1 injected"), "{text}");
    }
}
