//! A bounded HTTP GET for the local endpoints the collectors read (health probes, the upstream's
//! metrics): one timeout over connect, headers and body, and a cap on the body size. Its errors
//! never hold a URL's credentials; print the URL itself with [`redact`].

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Incoming};
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
            let body = read_at_most(response.into_body(), max_bytes).await?;
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| FetchError::Timeout(timeout))?
    }
}

/// Reads a body into one buffer sized from its declared length, chunk by chunk: collecting
/// the chunks first and then joining them would hold the body twice.
async fn read_at_most(mut body: Incoming, max_bytes: usize) -> Result<Bytes, FetchError> {
    let declared = body.size_hint().exact().unwrap_or(0);
    if declared > max_bytes as u64 {
        return Err(FetchError::TooLarge(max_bytes));
    }
    let mut buf = BytesMut::with_capacity(declared as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| FetchError::Body(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max_bytes {
                return Err(FetchError::TooLarge(max_bytes));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves one response of `chunks` in chunked encoding (no declared length) and returns
    /// its URL.
    async fn chunked(chunks: Vec<&'static str>) -> Uri {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = [0; 1024];
            let _ = stream.read(&mut request).await;
            let mut response =
                String::from("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
            for c in chunks {
                response.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
            }
            response.push_str("0\r\n\r\n");
            let _ = stream.write_all(response.as_bytes()).await;
        });
        format!("http://{addr}/metrics").parse().expect("valid URI")
    }

    #[tokio::test]
    async fn a_body_without_a_declared_length_is_read_up_to_the_cap() {
        let get = |uri: Uri, max| async move {
            Client::default()
                .get(&uri, "text/plain", Duration::from_secs(5), max)
                .await
        };
        let (status, body) = get(chunked(vec!["a 1\n", "b 2\n"]).await, 8)
            .await
            .expect("within the cap");
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"a 1\nb 2\n"[..]));
        let over = get(chunked(vec!["a 1\n", "b 2\n", "c"]).await, 8).await;
        assert!(matches!(over, Err(FetchError::TooLarge(8))), "{over:?}");
    }
}
