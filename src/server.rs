//! The HTTP server: `/metrics`, `/healthz`, `/readyz`, and a graceful drain on shutdown.
//!
//! Handlers never do I/O: `/metrics` hands out the encoded state the collectors left behind in
//! a [`Registry`]: the exporter's, or the admission webhook's own on its plain-HTTP metrics port.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::{Family, Registry};

/// Content type of the Prometheus text format this server speaks.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A client must send a request's headers within this time. hyper arms the same timer while a
/// kept-alive connection waits for its next request, so it also bounds idle connections.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long in-flight requests may take to finish once shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(4);

crate::labels! {
    struct Build { version, revision }
}

pub const BUILD_INFO: Family = Family {
    name: "ksit_exporter_build_info",
    help: "Build of the running ksit-exporter; always 1.",
};

/// Registers the exporter's build info and returns the scrape counter for [`State::scrapes`].
pub fn register_exporter_families(registry: &Registry) -> prometheus::IntCounter {
    registry.info(
        BUILD_INFO,
        &Build {
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: env!("KSIT_GIT_REVISION").to_string(),
        },
    );
    registry.uncached_counter(SCRAPES)
}

pub const SCRAPES: Family = Family {
    name: "ksit_exporter_scrapes_total",
    help: "Requests for /metrics served. A response carries the count as of when its body was encoded.",
};

#[derive(Clone)]
pub struct State {
    pub registry: Arc<Registry>,
    /// Counts /metrics requests without invalidating the cached body (see [`SCRAPES`]).
    pub scrapes: Option<prometheus::IntCounter>,
    pub readiness: Readiness,
}

impl State {
    /// The text-format exposition of the current state, gzipped when `gzip` is true.
    fn scrape(&self, gzip: bool) -> Bytes {
        if let Some(scrapes) = &self.scrapes {
            scrapes.inc();
        }
        let snapshot = self.registry.snapshot();
        if gzip {
            snapshot.gzip()
        } else {
            snapshot.text.clone()
        }
    }
}

/// Counts the collectors that have not yet finished a first pass; /readyz waits for zero.
#[derive(Clone, Default)]
pub struct Readiness {
    pending: Arc<AtomicUsize>,
}

impl Readiness {
    /// Registers one more collector that must finish a pass before the process is ready.
    pub fn expect_one(&self) -> FirstPass {
        self.pending.fetch_add(1, Ordering::AcqRel);
        FirstPass {
            pending: Some(self.pending.clone()),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }
}

/// Held by a collector until its first pass is over.
pub struct FirstPass {
    pending: Option<Arc<AtomicUsize>>,
}

impl FirstPass {
    pub fn done(&mut self) {
        if let Some(p) = self.pending.take() {
            p.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Binds the listener; apart from [`serve`] so that tests can bind port 0 and read the address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `shutdown` completes, then stops accepting and drains open connections.
pub async fn serve(listener: TcpListener, state: State, shutdown: impl Future<Output = ()>) {
    let plain_tcp = |stream, _peer| async move { Some(stream) };
    let handle = move |req: Request<Incoming>| {
        let response = route(&state, &req);
        async move { response }
    };
    serve_with(listener, shutdown, plain_tcp, handle).await;
}

/// The accept loop both servers share (this one and the admission webhook's HTTPS one): one
/// task per connection, HTTP/1.1 with [`HEADER_READ_TIMEOUT`], and on `shutdown` a drain of
/// open connections bounded by [`DRAIN_TIMEOUT`]. `accept` turns a TCP stream into the
/// connection to speak HTTP on (the webhook's TLS handshake), or `None` to drop it.
pub async fn serve_with<A, AFut, Io, H, HFut>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    accept: A,
    handle: H,
) where
    A: Fn(TcpStream, SocketAddr) -> AFut + Clone + Send + 'static,
    AFut: Future<Output = Option<Io>> + Send,
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> HFut + Clone + Send + Sync + 'static,
    HFut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (accept, handle, http, watcher) =
                    (accept.clone(), handle.clone(), http.clone(), graceful.watcher());
                tokio::spawn(async move {
                    let Some(io) = accept(stream, peer).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let response = handle(req);
                        async move { Ok::<_, Infallible>(response.await) }
                    });
                    let conn = watcher.watch(http.serve_connection(TokioIo::new(io), service));
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?DRAIN_TIMEOUT, "connections still open after the drain timeout; closing them");
    }
}

fn route(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz or /readyz\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => metrics(state, req),
        // Alive means this process serves HTTP; it never depends on the component or the API
        // server, so a slow dependency cannot get the sidecar restarted.
        "/healthz" => plain(StatusCode::OK, "ok\n"),
        _ if state.readiness.is_ready() => plain(StatusCode::OK, "ok\n"),
        _ => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "first collection not finished\n",
        ),
    }
}

fn metrics(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let gzip = req
        .headers()
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|enc| {
            let mut parts = enc.split(';').map(str::trim);
            parts.next() == Some("gzip") && !parts.any(|p| p.replace(' ', "") == "q=0")
        });
    let mut r = Response::new(Full::new(state.scrape(gzip)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
