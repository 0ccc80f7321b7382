//! A bounded HTTP GET for the local endpoints the collectors read (health probes, the upstream's
//! metrics): one timeout over connect, headers and body, and a cap on the body size. Its errors
//! never hold a URL's credentials; print the URL itself with [`redact`].

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, Uri, header};
use hyper_util::client::legacy::{Client as HyperClient, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

pub use crate::telemetry::redact;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Request(String),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("reading the body failed: {0}")]
    Body(String),
}

#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Empty<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // Idle pooled connections to loopback cost nothing to reopen; do not hold them for long.
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .build(connector);
        Self { inner }
    }
}

impl Client {
    /// GETs `uri`, returning the status and up to `max_bytes` of body; `accept` sets the header.
    pub async fn get(
        &self,
        uri: &Uri,
        accept: &str,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<(StatusCode, Bytes), FetchError> {
        let request = Request::get(uri.clone())
            .header(header::ACCEPT, accept)
            .header(
                header::USER_AGENT,
                concat!("ksit-exporter/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| FetchError::Request(error_chain(&e)))?;
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| FetchError::Request(error_chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), max_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        FetchError::TooLarge(max_bytes)
                    } else {
                        FetchError::Body(e.to_string())
                    }
                })?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| FetchError::Timeout(timeout))?
    }
}

/// hyper-util's errors say "client error (Connect)" and keep the cause in `source()`. A cause
/// may quote the URL, so credentials are masked.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    crate::telemetry::redact_text(&out).into_owned()
}
