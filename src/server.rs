//! The HTTP server: `/metrics`, `/healthz`, `/readyz`, and a graceful drain on shutdown.
//!
//! Handlers never do I/O: `/metrics` hands out the encoded state the collectors left behind in
//! a [`Registry`]: the exporter's, or the admission webhook's own on its plain-HTTP metrics port.
//! The one exception is `KSIT_METRICS_AUTH=kubernetes`, whose check of a caller not seen lately
//! asks the API server ([`crate::auth`]). HTTPS ([`serve_https`]) uses the TLS serving
//! [`crate::tls`] shares with the webhook.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::auth::{Authorizer, Verdict};
use crate::metrics::{Counters, Family, Format, Piece, Registry};

/// A client must send a request's headers within this time. hyper arms the same timer while a
/// kept-alive connection waits for its next request, so it also bounds idle connections.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long in-flight requests may take to finish once shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(4);

/// Connections open at once (constants, not variables: no legitimate client needs more). A
/// sidecar's clients (the kubelet's probes, a Prometheus or two) and the webhook's (the API
/// servers) use a handful. With [`READ_BUFFER_BYTES`] this bounds what connections can hold:
/// 256 × 64 KiB = 16 MiB, well inside the 64Mi memory limit. A new connection beyond it takes
/// the place of the oldest one not in a request (see [`serve_with`]).
pub const MAX_CONNECTIONS: usize = 256;

/// Unparsed input buffered per connection; request headers that do not fit get a 431. Real
/// requests' headers are under 1 KiB.
pub const READ_BUFFER_BYTES: usize = 16 * 1024;

/// A response must be written whole within this, or the connection is closed, so a client
/// that reads slowly or not at all cannot hold a connection and its buffers. Any client that
/// reads gets a scrape or an admission answer in milliseconds.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

crate::labels! {
    struct Build { version, revision }
}

pub const BUILD_INFO: Family = Family {
    name: "ksit_exporter_build_info",
    help: "Build of the running ksit-exporter; always 1.",
};

/// The exporter's serving families: build info, scrapes, failed TLS handshakes.
pub struct ServingFamilies {
    /// For [`State::scrapes`].
    pub scrapes: prometheus::IntCounter,
    pub handshake_failures: Counters<()>,
}

/// Registers the exporter's build info and the families of its serving.
pub fn register_exporter_families(registry: &Registry) -> ServingFamilies {
    registry.info(
        BUILD_INFO,
        &Build {
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: env!("KSIT_GIT_REVISION").to_string(),
        },
    );
    ServingFamilies {
        scrapes: registry.uncached_counter(SCRAPES),
        handshake_failures: registry.counters(HANDSHAKE_FAILURES),
    }
}

pub const HANDSHAKE_FAILURES: Family = Family {
    name: "ksit_exporter_tls_handshake_failures_total",
    help: "TLS handshakes on the HTTPS metrics port that failed (a client that does not trust the certificate, or one speaking plain HTTP); 0 without KSIT_TLS_CERT_FILE.",
};

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
    /// The status page at `/`; without one, `/` is a 404 like any unknown path.
    pub page: Option<Arc<crate::status::Page>>,
    /// Checks callers of `/metrics` and `/` (`KSIT_METRICS_AUTH=kubernetes`); the probes stay open.
    pub auth: Option<Arc<Authorizer>>,
}

impl State {
    /// The exposition of the current state in `format`, gzipped when `gzip` is true.
    fn scrape(&self, format: Format, gzip: bool) -> Chunks {
        if let Some(scrapes) = &self.scrapes {
            scrapes.inc();
        }
        let snapshot = self.registry.snapshot_in(format);
        if gzip {
            Chunks::new(snapshot.gzip().iter().cloned())
        } else {
            Chunks::pieces(snapshot.texts().iter().cloned())
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

/// Connections the kernel queues before they are accepted. Tokio's default (1024) overflows
/// under a burst of a few thousand connects, and a probe caught in an overflow waits for a
/// SYN retransmit (a second or more); the kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the listener; apart from [`serve`] so that tests can bind port 0 and read the address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std's and tokio's own bind do, so that a restart does not wait out TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves until `shutdown` completes, then stops accepting and drains open connections.
pub async fn serve(listener: TcpListener, state: State, shutdown: impl Future<Output = ()>) {
    let plain_tcp = |stream, _peer| async move { Some(stream) };
    serve_with(listener, shutdown, plain_tcp, handler(state)).await;
}

/// [`serve`] over TLS only: a connection whose handshake fails is dropped and counted.
pub async fn serve_https(
    listener: TcpListener,
    state: State,
    acceptor: tokio_rustls::TlsAcceptor,
    failures: Counters<()>,
    shutdown: impl Future<Output = ()>,
) {
    let handshake = move |stream, peer| {
        let (acceptor, failures) = (acceptor.clone(), failures.clone());
        async move { crate::tls::accept(&acceptor, stream, peer, || failures.inc(&())).await }
    };
    serve_with(listener, shutdown, handshake, handler(state)).await;
}

fn handler(
    state: State,
) -> impl Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Chunks>> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |req: Request<Incoming>| {
        let state = state.clone();
        Box::pin(async move {
            if let Some(refused) = check(&state, &req).await {
                return refused;
            }
            route(&state, &req)
        })
    }
}

/// The refusal for a caller of `/metrics` or `/` that the check does not let in, if any.
async fn check(state: &State, req: &Request<Incoming>) -> Option<Response<Chunks>> {
    let auth = state.auth.as_ref()?;
    let path = req.uri().path();
    let protected = path == "/metrics" || (path == "/" && state.page.is_some());
    if !protected {
        return None;
    }
    let (status, why) = match auth
        .check(req.headers().get(header::AUTHORIZATION), path)
        .await
    {
        Verdict::Allowed => return None,
        Verdict::Unauthenticated(why) => (StatusCode::UNAUTHORIZED, why),
        Verdict::Forbidden(why) => (StatusCode::FORBIDDEN, why),
        Verdict::Unavailable(why) => {
            tracing::warn!(path, "cannot check a caller: {why}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the caller cannot be checked: {why}"),
            )
        }
    };
    let mut r = Response::new(Chunks::from(Bytes::from(format!("{why}\n"))));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::UNAUTHORIZED {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"ksit-exporter\""),
        );
    }
    Some(r)
}

/// The accept loop both servers share (this one and the admission webhook's HTTPS one): one
/// task per connection, HTTP/1.1 with [`HEADER_READ_TIMEOUT`], [`READ_BUFFER_BYTES`] and
/// [`WRITE_TIMEOUT`], and on `shutdown` a drain of open connections bounded by
/// [`DRAIN_TIMEOUT`]. `accept` turns a TCP stream into the connection to speak HTTP on (the
/// webhook's TLS handshake), or `None` to drop it.
///
/// At most [`MAX_CONNECTIONS`] are open. Beyond that a new connection is still accepted, and
/// the oldest connection not in a request (idle, in its handshake, or still sending headers)
/// is closed instead. Refusing the newcomer, or leaving it in the listen queue until a slot
/// frees, would let anyone holding the slots (at no cost but a socket each) shut the kubelet's
/// probe out until the header timeout, and then again; closing the oldest makes a flood pay:
/// a probe that answers in a millisecond is only cut if 256 newer connections arrive within
/// that millisecond.
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
    HFut: Future<Output = Response<Chunks>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(READ_BUFFER_BYTES);
    let open = Connections::default();
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
                let (slot, evicted) = open.admit();
                let (accept, handle, http, watcher) =
                    (accept.clone(), handle.clone(), http.clone(), graceful.watcher());
                tokio::spawn(async move {
                    let serve = async move {
                        let Some(io) = accept(stream, peer).await else {
                            return;
                        };
                        let service = hyper::service::service_fn(move |req| {
                            let in_request = slot.in_request();
                            let response = handle(req);
                            async move {
                                let response = response.await;
                                drop(in_request);
                                Ok::<_, Infallible>(response)
                            }
                        });
                        let io = TokioIo::new(WriteDeadline::new(io));
                        let conn = watcher.watch(http.serve_connection(io, service));
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    };
                    tokio::select! {
                        () = serve => {}
                        Ok(()) = evicted => {
                            tracing::debug!(%peer, "closed to make room for a newer connection");
                        }
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

/// The open connections, oldest first, and whether each is in a request.
#[derive(Clone, Default)]
struct Connections(Arc<Mutex<Table>>);

#[derive(Default)]
struct Table {
    next_id: u64,
    by_age: BTreeMap<u64, Entry>,
}

struct Entry {
    in_request: bool,
    close: oneshot::Sender<()>,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Nothing panics while holding it, and a table is valid after any update.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new connection, first closing the oldest idle one (else the oldest) if
    /// [`MAX_CONNECTIONS`] are open. The receiver completes when this one must close in turn.
    fn admit(&self) -> (Slot, oneshot::Receiver<()>) {
        let mut table = self.lock();
        if table.by_age.len() >= MAX_CONNECTIONS {
            let victim = table
                .by_age
                .iter()
                .find(|(_, e)| !e.in_request)
                .or_else(|| table.by_age.first_key_value())
                .map(|(id, _)| *id);
            if let Some(entry) = victim.and_then(|id| table.by_age.remove(&id)) {
                let _ = entry.close.send(());
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let (close, closed) = oneshot::channel();
        table.by_age.insert(
            id,
            Entry {
                in_request: false,
                close,
            },
        );
        (
            Slot {
                open: self.clone(),
                id,
            },
            closed,
        )
    }

    fn set_in_request(&self, id: u64, in_request: bool) {
        if let Some(entry) = self.lock().by_age.get_mut(&id) {
            entry.in_request = in_request;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_age.len()
    }
}

/// A connection's place in [`Connections`], given up when its task ends.
struct Slot {
    open: Connections,
    id: u64,
}

impl Slot {
    /// Marks the connection as in a request until the guard is dropped.
    fn in_request(&self) -> InRequest {
        self.open.set_in_request(self.id, true);
        InRequest {
            open: self.open.clone(),
            id: self.id,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.lock().by_age.remove(&self.id);
    }
}

struct InRequest {
    open: Connections,
    id: u64,
}

impl Drop for InRequest {
    fn drop(&mut self) {
        self.open.set_in_request(self.id, false);
    }
}

/// `io` whose writes fail with `TimedOut` once a response has been [`WRITE_TIMEOUT`] in the
/// writing. The deadline starts with the first write after the last completed flush, and
/// hyper flushes when a response is written whole.
struct WriteDeadline<Io> {
    io: Io,
    deadline: Pin<Box<Sleep>>,
    armed: bool,
}

impl<Io> WriteDeadline<Io> {
    fn new(io: Io) -> Self {
        Self {
            io,
            deadline: Box::pin(tokio::time::sleep(WRITE_TIMEOUT)),
            armed: false,
        }
    }

    fn arm(&mut self) {
        if !self.armed {
            self.deadline.as_mut().reset(Instant::now() + WRITE_TIMEOUT);
            self.armed = true;
        }
    }

    /// For a write that could not proceed: an error once the deadline has passed, else
    /// pending (and woken at the deadline).
    fn expired<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if self.armed && self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("response not written within {WRITE_TIMEOUT:?}"),
            )));
        }
        Poll::Pending
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for WriteDeadline<Io> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<Io> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.arm();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Pending => this.expired(cx),
            ready => ready,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.arm();
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.expired(cx),
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                this.armed = false;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.expired(cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.arm();
        match Pin::new(&mut this.io).poll_shutdown(cx) {
            Poll::Pending => this.expired(cx),
            ready => ready,
        }
    }
}

fn route(state: &State, req: &Request<Incoming>) -> Response<Chunks> {
    let path = req.uri().path();
    let page = state.page.as_ref().filter(|_| path == "/");
    if page.is_none() && !matches!(path, "/metrics" | "/healthz" | "/readyz") {
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
    if let Some(page) = page {
        let mut r = Response::new(Chunks::from(page.body()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::status::HTML),
        );
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

fn metrics(state: &State, req: &Request<Incoming>) -> Response<Chunks> {
    let gzip = accepts_gzip(req.headers().get_all(header::ACCEPT_ENCODING));
    let format = crate::metrics::negotiate(req.headers().get_all(header::ACCEPT));
    let mut r = Response::new(state.scrape(format, gzip));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    h.insert(
        header::VARY,
        HeaderValue::from_static("Accept, Accept-Encoding"),
    );
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}

/// Whether an `Accept-Encoding` field lists `gzip` with a quality above zero (RFC 9110, 12.5.3:
/// `q=0`, `q=0.0` and `q=0.000` all mean "not acceptable"). A malformed quality counts as
/// not acceptable: identity always is, so plain text is the safe answer.
fn accepts_gzip<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> bool {
    values
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|element| {
            let mut parts = element.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default();
            if !coding.eq_ignore_ascii_case("gzip") {
                return false;
            }
            let quality = parts
                .filter_map(|p| p.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
                .map(|(_, value)| crate::metrics::qvalue(value.trim()));
            quality.unwrap_or(Some(1000)).is_some_and(|q| q > 0)
        })
}

fn plain(status: StatusCode, body: &'static str) -> Response<Chunks> {
    let mut r = Response::new(Chunks::from(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A response body of byte chunks sent in turn, so that /metrics serves the parts of a
/// [`crate::metrics::Snapshot`] without first copying them into one buffer.
pub struct Chunks {
    chunks: std::collections::VecDeque<Piece>,
    remaining: u64,
}

impl Chunks {
    pub fn new(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        Self::pieces(chunks.into_iter().map(Piece::Ready))
    }

    /// A body of pieces, the packed ones unpacked one at a time as they are written.
    pub fn pieces(pieces: impl IntoIterator<Item = Piece>) -> Self {
        let chunks: std::collections::VecDeque<Piece> =
            pieces.into_iter().filter(|c| !c.is_empty()).collect();
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        Self { chunks, remaining }
    }
}

impl From<Bytes> for Chunks {
    fn from(bytes: Bytes) -> Self {
        Self::new([bytes])
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = self.chunks.pop_front().map(|piece| piece.bytes());
        if let Some(chunk) = &next {
            self.remaining -= chunk.len() as u64;
        }
        Poll::Ready(next.map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Exact, so that hyper sends a Content-Length rather than chunked encoding.
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(values: &[&'static str]) -> bool {
        let values: Vec<HeaderValue> = values.iter().map(|v| HeaderValue::from_static(v)).collect();
        accepts_gzip(&values)
    }

    #[test]
    fn gzip_only_with_a_quality_above_zero() {
        for yes in [
            &["gzip"][..],
            &["GZIP"],
            &["identity, gzip"],
            &["gzip;q=1"],
            &["gzip; q=0.001"],
            &["gzip;Q=0.5"],
            &["gzip;q=1.000"],
            &["deflate", "gzip;q=0.8"],
        ] {
            assert!(gzip(yes), "{yes:?}");
        }
        for no in [
            &[][..],
            &[""],
            &["identity"],
            &["gzip;q=0"],
            &["gzip;q=0.0"],
            &["gzip;q=0.00"],
            &["gzip;q=0.000"],
            &["gzip;q=0."],
            &["gzip ; q = 0.0 , identity"],
            &["x-gzip"],
            &["gzip;q=1.5"],
            &["gzip;q=0.0001"],
            &["gzip;q=-1"],
            &["gzip;q=abc"],
            &["gzip;q="],
        ] {
            assert!(!gzip(no), "{no:?}");
        }
    }

    /// The oldest connection not in a request makes room; when all are in one, the oldest.
    #[tokio::test]
    async fn the_oldest_idle_connection_makes_room() {
        use oneshot::error::TryRecvError::Empty;
        let open = Connections::default();
        let mut slots: Vec<_> = (0..MAX_CONNECTIONS).map(|_| open.admit()).collect();
        let first_busy = slots[0].0.in_request();
        slots.push(open.admit());
        assert_eq!(open.len(), MAX_CONNECTIONS);
        assert_eq!(slots[0].1.try_recv(), Err(Empty), "in a request: kept");
        assert_eq!(
            slots[1].1.try_recv(),
            Ok(()),
            "the oldest idle one is closed"
        );
        assert_eq!(slots[2].1.try_recv(), Err(Empty));

        let _all_busy: Vec<_> = slots[2..]
            .iter()
            .map(|(slot, _)| slot.in_request())
            .collect();
        slots.push(open.admit());
        assert_eq!(
            slots[0].1.try_recv(),
            Ok(()),
            "all in a request: the oldest goes"
        );
        for (_, closed) in &mut slots[2..] {
            assert_eq!(closed.try_recv(), Err(Empty));
        }
        drop(first_busy);
        slots.drain(..2);
        assert_eq!(open.len(), MAX_CONNECTIONS);
        slots.truncate(10);
        assert_eq!(open.len(), 10, "ended connections give their place up");
        assert_eq!(slots[0].1.try_recv(), Err(Empty));
    }

    #[tokio::test]
    async fn chunks_are_sent_in_order_with_an_exact_length() {
        use http_body_util::BodyExt;
        let body = Chunks::new([
            Bytes::from_static(b"a 1\n"),
            Bytes::new(),
            Bytes::from_static(b"b 2\n"),
        ]);
        assert_eq!(body.size_hint().exact(), Some(8));
        let collected = body.collect().await.expect("infallible").to_bytes();
        assert_eq!(&collected[..], b"a 1\nb 2\n");
        assert!(Chunks::new([]).is_end_stream());
    }
}
