//! `ksit-exporter webhook [certs ...]`: the mutating admission webhook's wiring and variables.
//! The requests are answered by [`crate::webhook`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::env::{self, ConfigError, Doc, Empty, Reader, Var};
use crate::inject::{self, InjectorConfig};
use crate::metrics::Registry;
use crate::server;
use crate::telemetry::{self, LOG_FORMAT, LogFormat};
use crate::tls;
use crate::webhook::metrics::WebhookMetrics;
use crate::webhook::{Handler, serve_tls};

const COMMAND: &str = "ksit-exporter";

/// Every variable `webhook` reads besides `KSIT_SIDECAR_*`, with its default and meaning.
pub const VARIABLES: &[Doc] = &[
    LISTEN_ADDR.doc(),
    METRICS_ADDR.doc(),
    CERT_FILE.doc(),
    KEY_FILE.doc(),
    RELOAD_INTERVAL.doc(),
    LOG_FORMAT.doc(),
];

fn socket_addr(value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| "a socket address such as 0.0.0.0:8443 or 127.0.0.1:0".to_string())
}

fn path(value: &str, expected: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err(expected.to_string());
    }
    Ok(PathBuf::from(value))
}

const LISTEN_ADDR: Var<SocketAddr> = Var {
    name: "KSIT_WEBHOOK_LISTEN_ADDR",
    default: "0.0.0.0:8443",
    help: "where the HTTPS admission endpoints /mutate and /mutate/namespace-enabled are served",
    empty: Empty::Default,
    parse: socket_addr,
    show: SocketAddr::to_string,
};

const METRICS_ADDR: Var<SocketAddr> = Var {
    name: "KSIT_WEBHOOK_METRICS_ADDR",
    default: "0.0.0.0:9090",
    help: "where the webhook's /metrics, /healthz and /readyz are served (plain HTTP)",
    empty: Empty::Default,
    parse: socket_addr,
    show: SocketAddr::to_string,
};

const CERT_FILE: Var<PathBuf> = Var {
    name: "KSIT_TLS_CERT_FILE",
    default: "",
    help: "PEM serving certificate (chain), re-read when it changes; required",
    empty: Empty::Default,
    parse: |v| path(v, "the path of the PEM serving certificate (tls.crt)"),
    show: |p| p.display().to_string(),
};

const KEY_FILE: Var<PathBuf> = Var {
    name: "KSIT_TLS_KEY_FILE",
    default: "",
    help: "PEM private key of the certificate, re-read with it; required",
    empty: Empty::Default,
    parse: |v| path(v, "the path of the PEM private key (tls.key)"),
    show: |p| p.display().to_string(),
};

const RELOAD_INTERVAL: Var<Duration> = Var {
    name: "KSIT_TLS_RELOAD_INTERVAL",
    default: "5s",
    help: "how often the certificate and key files are checked for a change (100ms to 1h)",
    empty: Empty::Default,
    parse: |v| env::duration(v, Duration::from_millis(100), Duration::from_secs(3600)),
    show: env::show_duration,
};

#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub tls: tls::Files,
    pub reload_interval: Duration,
    pub log_format: LogFormat,
    pub injector: InjectorConfig,
}

impl Config {
    /// Validates every variable, the sidecar's included; nothing is bound or read before this
    /// succeeds.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::read(&mut Reader::new(vars))
    }

    fn read(env: &mut Reader) -> Result<Self, ConfigError> {
        Ok(Config {
            listen_addr: env.read(&LISTEN_ADDR)?,
            metrics_addr: env.read(&METRICS_ADDR)?,
            tls: tls::Files {
                cert: env.read(&CERT_FILE)?,
                key: env.read(&KEY_FILE)?,
            },
            reload_interval: env.read(&RELOAD_INTERVAL)?,
            log_format: env.read(&LOG_FORMAT)?,
            injector: InjectorConfig::read(env)?,
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
        env::describe(VARIABLES),
        env::describe(inject::VARIABLES)
    )
}

/// `ksit-exporter webhook [certs ...]`.
pub fn main(args: &[String]) -> ExitCode {
    match args.first().map(String::as_str) {
        None => serve(),
        Some("certs") => super::certs::main(&args[1..]),
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
    let loaded = super::environment(&[VARIABLES, inject::VARIABLES])
        .and_then(|env| Ok((Config::from_vars(env.vars)?, env.warnings)));
    let (config, warnings) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => return super::config_error(COMMAND, &e),
    };
    telemetry::init_logging(config.log_format);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    // One thread, as the exporter: an admission is tens of microseconds of work, and the
    // Deployment scales by replicas.
    telemetry::block_on(async {
        // Unusable certificate files at start are a configuration error like a bad variable.
        if let Err(e) = config.tls.load().await {
            eprintln!("ksit-exporter: KSIT_TLS_CERT_FILE/KSIT_TLS_KEY_FILE: {e}");
            return ExitCode::from(2);
        }
        match run(config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn run(config: Config) -> anyhow::Result<()> {
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
    let m = metrics.clone();
    let files = config.tls.clone();
    let (acceptor, not_after) = tls::start(&config.tls, config.reload_interval, move |loaded| {
        m.certificate(loaded.not_after, true);
        tracing::info!(cert = %files.cert.display(), not_after = loaded.not_after, "serving the new certificate");
    })
    .await?;
    metrics.certificate(not_after, false);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signal = telemetry::shutdown_signal();
    tokio::spawn(async move {
        signal.await;
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
        page: crate::webhook::status::Page::new(
            registry.clone(),
            metrics.clone(),
            metrics_listener.local_addr()?,
        ),
    });
    // Readiness needs nothing more than this point: the certificate is loaded and both ports
    // are bound.
    let state = server::State {
        registry,
        scrapes: None,
        readiness: server::Readiness::default(),
        page: None,
        auth: None,
    };
    tokio::join!(
        serve_tls(listener, acceptor, handler, stopped(stop_rx.clone())),
        server::serve(metrics_listener, state, stopped(stop_rx)),
    );
    tracing::info!("stopped");
    Ok(())
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

    /// The defaults `--help` and the README show are the ones applied.
    #[test]
    fn documented_defaults_are_the_applied_ones() {
        let explicit = VARIABLES
            .iter()
            .filter(|(_, default, _)| !default.is_empty())
            .map(|(name, default, _)| (*name, *default));
        let explicit = Config::from_vars(vars(
            &FILES.iter().copied().chain(explicit).collect::<Vec<_>>(),
        ))
        .expect("the documented defaults are valid");
        let unset = Config::from_vars(vars(FILES)).expect("valid");
        assert_eq!(format!("{explicit:?}"), format!("{unset:?}"));
        // The tables list exactly what is read.
        let mut env = Reader::new(vars(FILES));
        Config::read(&mut env).expect("valid");
        let read: Vec<&str> = env.effective().0.iter().map(|(name, _)| *name).collect();
        let documented: Vec<&str> = VARIABLES
            .iter()
            .chain(inject::VARIABLES)
            .map(|(name, _, _)| *name)
            .collect();
        assert_eq!(read, documented);
    }
}
