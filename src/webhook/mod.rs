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
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_rustls::TlsAcceptor;

use crate::inject::InjectorConfig;
use crate::server::{self, Chunks};
use admission::{Answer, Decision, Entry, MAX_BODY_BYTES};
use metrics::WebhookMetrics;

/// Paths of the two webhook entries (see the module documentation).
pub const POD_PATH: &str = "/mutate";
pub const NAMESPACE_PATH: &str = "/mutate/namespace-enabled";

/// Bytes of AdmissionReview bodies being read and reviewed at once, counted by their declared
/// length (a body without one counts as [`MAX_BODY_BYTES`]): one of the largest the API server
/// can send and a hundred real ones beside it (a pod's review is a few KiB), or hundreds of
/// real ones. Reviewing a body costs about twice its size (the body, then the pod read from
/// it), so the budget keeps a burst of large ones well inside the Deployment's 64Mi. A
/// constant, not a variable: it follows that limit. A review that does not fit is answered 503
/// at once rather than queued, so no answer waits on others past the API server's deadline;
/// the API server counts the 503 as a failed call and, with `failurePolicy: Ignore`, creates
/// that pod without the sidecar.
pub const REVIEW_BUDGET_BYTES: usize = MAX_BODY_BYTES + 1024 * 1024;

/// The API server gives up on a call after the configuration's `timeoutSeconds` (5 as shipped,
/// at most 30): a body still arriving later would be answered to no one.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What each admission request needs.
pub struct Handler {
    pub injector: InjectorConfig,
    pub metrics: WebhookMetrics,
    /// The page at `/`.
    pub page: status::Page,
}

/// The HTTPS server: [`server::serve_with`] with a TLS handshake first, bounded by the header
/// timeout so a silent client cannot hold a task, and reviews within [`REVIEW_BUDGET_BYTES`].
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handler: Arc<Handler>,
    shutdown: impl Future<Output = ()>,
) {
    let metrics = handler.metrics.clone();
    let handshake = move |stream, peer: SocketAddr| {
        let (acceptor, metrics) = (acceptor.clone(), metrics.clone());
        async move {
            crate::tls::accept(&acceptor, stream, peer, || metrics.tls_handshake_failed()).await
        }
    };
    let budget = Arc::new(Semaphore::new(REVIEW_BUDGET_BYTES));
    let handle = move |req| {
        let (handler, budget) = (handler.clone(), budget.clone());
        async move { handle(handler, &budget, req).await }
    };
    server::serve_with(listener, shutdown, handshake, handle).await;
}

async fn handle(
    handler: Arc<Handler>,
    budget: &Semaphore,
    req: Request<Incoming>,
) -> Response<Chunks> {
    let start = Instant::now();
    if req.uri().path() == "/" && matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = Response::new(Chunks::from(handler.page.body()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::status::HTML),
        );
        return r;
    }
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
    let body = req.into_body();
    let answer = match reserve(budget, body.size_hint().exact()) {
        Ok(_permit) => match read_body(body, MAX_BODY_BYTES).await {
            Ok(body) => review(&handler, body, entry).await,
            Err(answer) => answer,
        },
        Err(answer) => {
            // Read and drop what the client sends, so that it reads the answer instead of
            // a reset, as it would if the connection closed with the body unread.
            if answer.status == StatusCode::SERVICE_UNAVAILABLE {
                discard(body, MAX_BODY_BYTES).await;
            }
            answer
        }
    };
    handler.metrics.answered(
        answer.decision.as_str(),
        answer.reason,
        start.elapsed().as_secs_f64(),
    );
    match answer.decision {
        Decision::Injected => tracing::info!("{}", answer.detail),
        Decision::Skipped => tracing::debug!("{}", answer.detail),
        // Counted in ksit_webhook_admissions_total{reason="busy"}; a line each would flood
        // the log exactly when a flood is on.
        Decision::Error if answer.reason == BUSY => tracing::debug!("{}", answer.detail),
        Decision::Error => tracing::warn!(status = answer.status.as_u16(), "{}", answer.detail),
    }
    let mut r = Response::new(Chunks::from(Bytes::from(answer.body)));
    *r.status_mut() = answer.status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(answer.content_type),
    );
    r
}

/// Reviews of this many bytes or more run on a blocking thread.
const INLINE_REVIEW_BYTES: usize = 64 * 1024;

/// Reviews `body`. One of up to 3 MiB of dense JSON takes a good part of a second (a debug
/// build: seconds), which on the one-thread runtime would hold every other connection and
/// /healthz with it: so a large one runs on a blocking thread (the review budget keeps them
/// few), a small one here, where a thread's hop would cost more than the review.
async fn review(handler: &Arc<Handler>, body: Bytes, entry: Entry) -> Answer {
    if body.len() < INLINE_REVIEW_BYTES {
        return admission::review(body, entry, &handler.injector);
    }
    let handler = handler.clone();
    tokio::task::spawn_blocking(move || admission::review(body, entry, &handler.injector))
        .await
        .unwrap_or_else(|e| {
            Answer::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the review failed: {e}; the pod is created without the sidecar (failurePolicy Ignore)"),
            )
        })
}

/// The `reason` of a review refused for [`REVIEW_BUDGET_BYTES`].
const BUSY: &str = "busy";

/// Takes a body of `declared` bytes (unknown: [`MAX_BODY_BYTES`]) out of `budget` until the
/// permit is dropped; otherwise the answer to send instead (413 for a body declared too
/// large, 503 when the budget is spent).
fn reserve(budget: &Semaphore, declared: Option<u64>) -> Result<SemaphorePermit<'_>, Answer> {
    let size = declared.unwrap_or(MAX_BODY_BYTES as u64);
    if size > MAX_BODY_BYTES as u64 {
        return Err(too_large(MAX_BODY_BYTES));
    }
    let permits = u32::try_from(size).expect("at most MAX_BODY_BYTES, which fits");
    budget.try_acquire_many(permits).map_err(|_| {
        Answer::error(
            StatusCode::SERVICE_UNAVAILABLE,
            BUSY,
            format!(
                "too many AdmissionReviews at once: {} of {REVIEW_BUDGET_BYTES} bytes are in \
                 review and this one declares {size}; the pod is created without the sidecar \
                 (failurePolicy Ignore)",
                REVIEW_BUDGET_BYTES - budget.available_permits()
            ),
        )
    })
}

fn too_large(limit: usize) -> Answer {
    Answer::error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("AdmissionReview larger than {limit} bytes"),
    )
}

/// Reads and drops up to `limit` bytes of `body`, for at most [`BODY_READ_TIMEOUT`].
async fn discard<B: Body + Unpin>(mut body: B, limit: usize) {
    let drain = async {
        let mut seen = 0;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, Buf::remaining);
            if seen > limit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(BODY_READ_TIMEOUT, drain).await;
}

/// The whole body, at most `limit` bytes and within [`BODY_READ_TIMEOUT`]; otherwise the
/// answer to send instead (413 or 400). Read into one buffer of the declared size, so the
/// body is held once, not as chunks and then a copy.
async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, Answer>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = usize::try_from(body.size_hint().lower()).unwrap_or(limit);
    let mut body = Limited::new(body, limit);
    let read = async {
        let mut whole = BytesMut::with_capacity(declared.min(limit));
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                whole.put(data);
            }
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(whole.freeze())
    };
    match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Ok(Ok(whole)) => Ok(whole),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        Ok(Err(e)) => Err(Answer::bad_request(format!("cannot read the body: {e}"))),
        Err(_) => Err(Answer::bad_request(format!(
            "body not received within {BODY_READ_TIMEOUT:?}"
        ))),
    }
}

fn plain(status: StatusCode, body: String) -> Response<Chunks> {
    let mut r = Response::new(Chunks::from(Bytes::from(body + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;

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

    #[test]
    fn reviews_take_their_declared_size_from_the_budget() {
        let budget = Semaphore::new(REVIEW_BUDGET_BYTES);
        let too_big = reserve(&budget, Some(MAX_BODY_BYTES as u64 + 1)).unwrap_err();
        assert_eq!(
            (too_big.status, too_big.reason),
            (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
        );
        let unknown = reserve(&budget, None).expect("one of unknown size fits");
        let busy = reserve(&budget, Some(MAX_BODY_BYTES as u64)).unwrap_err();
        assert_eq!(
            (busy.status, busy.decision, busy.reason),
            (StatusCode::SERVICE_UNAVAILABLE, Decision::Error, BUSY)
        );
        let small: Vec<_> = (0..100)
            .map(|_| reserve(&budget, Some(10_000)).expect("small ones fit beside a large one"))
            .collect();
        drop((unknown, small));
        assert_eq!(
            budget.available_permits(),
            REVIEW_BUDGET_BYTES,
            "given back when dropped"
        );
    }
}
