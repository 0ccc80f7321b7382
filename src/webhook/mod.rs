//! `ksit-exporter webhook`: the mutating admission webhook that adds the sidecar to pods as they
//! are created. HTTPS (rustls, TLS 1.2+) on `KSIT_WEBHOOK_LISTEN_ADDR` answers AdmissionReviews
//! on two paths, one per webhook entry of the MutatingWebhookConfiguration:
//!
//! - `/mutate`: the entry whose objectSelector matches pods labelled `ksit.io/inject=true`;
//! - `/mutate/namespace-enabled`: the entry whose namespaceSelector matches namespaces labelled
//!   `ksit.io/inject=enabled`. The API server has already evaluated that selector, so this path
//!   is how the handler learns the namespace opted in: the webhook makes no API calls, needs no
//!   RBAC and has no cache or API outage to fail on.
//!
//! A pod matching both entries is seen twice; the second call finds the sidecar and changes
//! nothing, since [`crate::inject::inject`] is idempotent. Metrics, `/healthz` and `/readyz` are
//! served in plain HTTP on `KSIT_WEBHOOK_METRICS_ADDR` by [`crate::server`]. The command's wiring
//! and variables are in [`crate::cmd::webhook`]; this module answers the requests.

pub mod admission;
pub mod certs;
pub mod metrics;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::inject::InjectorConfig;
use crate::server::{self, HEADER_READ_TIMEOUT};
use admission::{Answer, Decision, Entry, MAX_BODY_BYTES};
use metrics::WebhookMetrics;

/// Paths of the two webhook entries (see the module documentation).
pub const POD_PATH: &str = "/mutate";
pub const NAMESPACE_PATH: &str = "/mutate/namespace-enabled";

/// What each admission request needs.
pub struct Handler {
    pub injector: InjectorConfig,
    pub metrics: WebhookMetrics,
}

/// The HTTPS server: [`server::serve_with`] with a TLS handshake first, bounded by the header
/// timeout so a silent client cannot hold a task.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handler: Arc<Handler>,
    shutdown: impl Future<Output = ()>,
) {
    let handshake = move |stream, peer: SocketAddr| {
        let acceptor = acceptor.clone();
        async move {
            match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => Some(tls),
                Ok(Err(e)) => {
                    // Usually a client that does not trust the CA: worth seeing.
                    tracing::warn!(%peer, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    None
                }
            }
        }
    };
    let handle = move |req| {
        let handler = handler.clone();
        async move { handle(&handler, req).await }
    };
    server::serve_with(listener, shutdown, handshake, handle).await;
}

async fn handle(handler: &Handler, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let start = Instant::now();
    let entry = match req.uri().path() {
        POD_PATH => Entry::Pod,
        NAMESPACE_PATH => Entry::Namespace,
        _ => {
            return plain(
                StatusCode::NOT_FOUND,
                format!("not found; AdmissionReviews go to {POD_PATH} or {NAMESPACE_PATH}"),
            );
        }
    };
    if req.method() != Method::POST {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST an AdmissionReview".into(),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let answer = match read_body(req.into_body(), MAX_BODY_BYTES).await {
        Ok(body) => admission::review(&body, entry, &handler.injector),
        Err(answer) => answer,
    };
    handler.metrics.answered(
        answer.decision.as_str(),
        answer.reason,
        start.elapsed().as_secs_f64(),
    );
    match answer.decision {
        Decision::Injected => tracing::info!("{}", answer.detail),
        Decision::Skipped => tracing::debug!("{}", answer.detail),
        Decision::Error => tracing::warn!(status = answer.status.as_u16(), "{}", answer.detail),
    }
    let mut r = Response::new(Full::new(Bytes::from(answer.body)));
    *r.status_mut() = answer.status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(answer.content_type),
    );
    r
}

/// The whole body, at most `limit` bytes and within the header timeout; otherwise the answer
/// to send instead (413 or 400).
async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, Answer>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tokio::time::timeout(HEADER_READ_TIMEOUT, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Answer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("AdmissionReview larger than {limit} bytes"),
        )),
        Ok(Err(e)) => Err(Answer::bad_request(format!("cannot read the body: {e}"))),
        Err(_) => Err(Answer::bad_request(format!(
            "body not received within {HEADER_READ_TIMEOUT:?}"
        ))),
    }
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_oversized_body_is_a_413_and_a_small_one_is_read() {
        let big = Full::new(Bytes::from(vec![b' '; 1025]));
        let answer = read_body(big, 1024).await.unwrap_err();
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            (answer.decision, answer.reason),
            (Decision::Error, "too_large")
        );
        let small = Full::new(Bytes::from_static(b"{}"));
        assert_eq!(
            read_body(small, 1024).await.unwrap(),
            Bytes::from_static(b"{}")
        );
    }
}
