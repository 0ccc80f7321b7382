//! What the long-running commands (`serve` and `webhook`) share around their servers: logging
//! (and its `KSIT_LOG_FORMAT` variable), the one-thread runtime and the stop signal.

use std::future::Future;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use crate::env::{self, Empty, Var};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

const LOG_FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];

pub const LOG_FORMAT: Var<LogFormat> = Var {
    name: "KSIT_LOG_FORMAT",
    default: "text",
    help: "`text` or `json`; `RUST_LOG` filters (default `info`)",
    empty: Empty::Default,
    parse: |v| env::choose(v, LOG_FORMATS),
    show: |v| env::word_of(v, LOG_FORMATS),
};

/// Logs to stderr in `format`; `RUST_LOG` filters.
pub fn init_logging(format: LogFormat) {
    // kube-runtime's watcher warns on every retry of a failing watch; the exporter's own
    // collectors log each outage once, so the default keeps only its errors.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube_runtime::watcher=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Runs `main` on a one-thread runtime. One thread: the work is a few small requests at a time,
/// and each extra worker thread costs its stack beside every pod.
pub fn block_on(main: impl Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(main),
        Err(e) => {
            eprintln!("ksit-exporter: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or SIGINT, when the server should drain and stop.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; draining"),
        _ = int.recv() => tracing::info!("SIGINT received; draining"),
    }
}
