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
//! served in plain HTTP on `KSIT_WEBHOOK_METRICS_ADDR` by [`crate::server`].

pub mod admission;
pub mod certs;
pub mod metrics;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::{self, LogFormat};
use crate::inject::{self, InjectorConfig};
use crate::metrics::Registry;
use crate::runtime;
use crate::server::{self, HEADER_READ_TIMEOUT};
use admission::{Answer, Decision, Entry, MAX_BODY_BYTES};
use metrics::WebhookMetrics;

/// Paths of the two webhook entries (see the module documentation).
pub const POD_PATH: &str = "/mutate";
pub const NAMESPACE_PATH: &str = "/mutate/namespace-enabled";

/// Every variable `webhook` reads besides `KSIT_SIDECAR_*`, with its default and meaning.
pub const VARIABLES: &[(&str, &str, &str)] = &[
    (
        "KSIT_WEBHOOK_LISTEN_ADDR",
        "0.0.0.0:8443",
        "where the HTTPS admission endpoints /mutate and /mutate/namespace-enabled are served",
    ),
    (
        "KSIT_WEBHOOK_METRICS_ADDR",
        "0.0.0.0:9090",
        "where the webhook's /metrics, /healthz and /readyz are served (plain HTTP)",
    ),
    (
        "KSIT_TLS_CERT_FILE",
        "",
        "PEM serving certificate (chain), re-read when it changes; required",
    ),
    (
        "KSIT_TLS_KEY_FILE",
        "",
        "PEM private key of the certificate, re-read with it; required",
    ),
    (
        "KSIT_TLS_RELOAD_INTERVAL",
        "5s",
        "how often the certificate and key files are checked for a change",
    ),
    (
        "KSIT_LOG_FORMAT",
        "text",
        "`text` or `json`; `RUST_LOG` filters (default `info`)",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Invalid(#[from] config::ConfigError),
    #[error("{var} is not set: expected {expected}")]
    Missing {
        var: &'static str,
        expected: &'static str,
    },
    #[error("{0}")]
    Sidecar(#[from] inject::ConfigError),
    #[error("reading the KSIT_* environment: {0}")]
    Env(#[from] envy::Error),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub tls: tls::Files,
    pub reload_interval: Duration,
    log_format: LogFormat,
    pub injector: InjectorConfig,
}

/// The environment as read; each value is checked by [`Config::from_vars`].
#[derive(Deserialize)]
struct RawConfig {
    webhook_listen_addr: Option<String>,
    webhook_metrics_addr: Option<String>,
    tls_cert_file: Option<String>,
    tls_key_file: Option<String>,
    tls_reload_interval: Option<String>,
    log_format: Option<String>,
}

impl Config {
    /// Validates every variable; nothing is bound or read before this succeeds.
    pub fn from_vars(vars: Vec<(String, String)>) -> Result<Self, ConfigError> {
        let raw: RawConfig = envy::prefixed("KSIT_").from_iter(vars.clone())?;
        let addr = |var, value: Option<String>, default: &str| {
            let value = value.unwrap_or_else(|| default.to_string());
            value.parse().map_err(|_| {
                config::ConfigError::new(
                    var,
                    &value,
                    "a socket address such as 0.0.0.0:8443 or 127.0.0.1:0",
                )
            })
        };
        let file = |var, value: Option<String>, expected| match value {
            Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
            _ => Err(ConfigError::Missing { var, expected }),
        };
        let reload = raw.tls_reload_interval.unwrap_or_else(|| "5s".into());
        let reload_interval = humantime::parse_duration(&reload)
            .ok()
            .filter(|d| *d >= Duration::from_millis(100))
            .ok_or_else(|| {
                config::ConfigError::new(
                    "KSIT_TLS_RELOAD_INTERVAL",
                    &reload,
                    "a duration of at least 100ms such as `5s`",
                )
            })?;
        let log_format = LogFormat::parse(raw.log_format.as_deref()).ok_or_else(|| {
            config::ConfigError::new(
                "KSIT_LOG_FORMAT",
                &raw.log_format.clone().unwrap_or_default(),
                "`text` or `json`",
            )
        })?;
        Ok(Config {
            listen_addr: addr(
                "KSIT_WEBHOOK_LISTEN_ADDR",
                raw.webhook_listen_addr,
                "0.0.0.0:8443",
            )?,
            metrics_addr: addr(
                "KSIT_WEBHOOK_METRICS_ADDR",
                raw.webhook_metrics_addr,
                "0.0.0.0:9090",
            )?,
            tls: tls::Files {
                cert: file(
                    "KSIT_TLS_CERT_FILE",
                    raw.tls_cert_file,
                    "the path of the PEM serving certificate (tls.crt)",
                )?,
                key: file(
                    "KSIT_TLS_KEY_FILE",
                    raw.tls_key_file,
                    "the path of the PEM private key (tls.key)",
                )?,
            },
            reload_interval,
            log_format,
            injector: InjectorConfig::from_vars(vars)?,
        })
    }
}

const USAGE: &str = "Usage:
  ksit-exporter webhook          serve the mutating admission webhook (HTTPS) and its metrics
  ksit-exporter webhook certs    write a CA and a serving pair for a demo (see `webhook certs --help`)

Environment:
";

fn usage() -> String {
    format!(
        "{USAGE}{}{}",
        config::describe(VARIABLES),
        config::describe(inject::VARIABLES)
    )
}

/// `ksit-exporter webhook [certs ...]`.
pub fn main(args: &[String]) -> ExitCode {
    match args.first().map(String::as_str) {
        None => serve(),
        Some("certs") => certs::main(&args[1..]),
        Some("-h" | "--help" | "help") => {
            print!("{}", usage());
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!(
                "ksit-exporter webhook: unknown argument {other:?}\n\n{}",
                usage()
            );
            ExitCode::from(2)
        }
    }
}

fn serve() -> ExitCode {
    let vars = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let config = match Config::from_vars(vars) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ksit-exporter: {e}");
            return ExitCode::from(2);
        }
    };
    runtime::init_logging(config.log_format);
    // One thread, as the exporter: an admission is tens of microseconds of work, and the
    // Deployment scales by replicas.
    runtime::block_on(async {
        // Unusable certificate files at start are a configuration error like a bad variable.
        let first = match config.tls.load().await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("ksit-exporter: KSIT_TLS_CERT_FILE/KSIT_TLS_KEY_FILE: {e}");
                return ExitCode::from(2);
            }
        };
        match run(config, first).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// What each admission request needs.
struct Handler {
    injector: InjectorConfig,
    metrics: WebhookMetrics,
}

async fn run(config: Config, first: tls::Loaded) -> anyhow::Result<()> {
    let listener = server::bind(config.listen_addr).await.with_context(|| {
        format!(
            "cannot listen on KSIT_WEBHOOK_LISTEN_ADDR={}",
            config.listen_addr
        )
    })?;
    let metrics_listener = server::bind(config.metrics_addr).await.with_context(|| {
        format!(
            "cannot listen on KSIT_WEBHOOK_METRICS_ADDR={}",
            config.metrics_addr
        )
    })?;
    let registry = Arc::new(Registry::new());
    let metrics = WebhookMetrics::register(&registry);
    metrics.certificate(first.not_after, false);
    let resolver = tls::Resolver::new(first.key.clone());
    let acceptor = TlsAcceptor::from(tls::server_config(resolver.clone())?);
    let m = metrics.clone();
    let files = config.tls.clone();
    tokio::spawn(tls::reload_every(
        config.tls.clone(),
        config.reload_interval,
        resolver,
        first,
        move |loaded| {
            m.certificate(loaded.not_after, true);
            tracing::info!(cert = %files.cert.display(), not_after = loaded.not_after, "serving the new certificate");
        },
    ));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        runtime::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    tracing::info!(
        addr = %listener.local_addr()?,
        metrics_addr = %metrics_listener.local_addr()?,
        version = env!("CARGO_PKG_VERSION"),
        "serving the admission webhook"
    );
    let handler = Arc::new(Handler {
        injector: config.injector,
        metrics: metrics.clone(),
    });
    // Readiness needs nothing more than this point: the certificate is loaded and both ports
    // are bound.
    let state = server::State {
        registry,
        scrapes: None,
        readiness: server::Readiness::default(),
    };
    tokio::join!(
        serve_tls(listener, acceptor, handler, stopped(stop_rx.clone())),
        server::serve(metrics_listener, state, stopped(stop_rx)),
    );
    tracing::info!("stopped");
    Ok(())
}

/// The HTTPS server: [`server::serve_with`] with a TLS handshake first, bounded by the header
/// timeout so a silent client cannot hold a task.
async fn serve_tls(
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

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const FILES: &[(&str, &str)] = &[
        ("KSIT_TLS_CERT_FILE", "/tls/tls.crt"),
        ("KSIT_TLS_KEY_FILE", "/tls/tls.key"),
    ];

    #[test]
    fn defaults_and_errors_name_the_variable() {
        let c = Config::from_vars(vars(FILES)).unwrap();
        assert_eq!(c.listen_addr.to_string(), "0.0.0.0:8443");
        assert_eq!(c.metrics_addr.to_string(), "0.0.0.0:9090");
        assert_eq!(c.reload_interval, Duration::from_secs(5));
        assert!(
            !c.injector.default_opt_in,
            "the webhook never injects unasked"
        );

        let err = |extra: &[(&str, &str)]| {
            let mut v = vars(FILES);
            v.extend(vars(extra));
            Config::from_vars(v).unwrap_err().to_string()
        };
        assert_eq!(
            err(&[("KSIT_WEBHOOK_LISTEN_ADDR", "8443")]),
            "KSIT_WEBHOOK_LISTEN_ADDR=\"8443\" is invalid: a socket address such as 0.0.0.0:8443 or 127.0.0.1:0"
        );
        assert!(
            err(&[("KSIT_TLS_RELOAD_INTERVAL", "1ms")]).starts_with("KSIT_TLS_RELOAD_INTERVAL=")
        );
        assert!(err(&[("KSIT_SIDECAR_MODE", "sometimes")]).starts_with("KSIT_SIDECAR_MODE="));
        let missing = Config::from_vars(vars(&FILES[..1]))
            .unwrap_err()
            .to_string();
        assert!(
            missing.starts_with("KSIT_TLS_KEY_FILE is not set"),
            "{missing}"
        );
    }

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
