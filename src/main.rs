#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context;
use ksit_exporter::collector::{self, Readiness};
use ksit_exporter::config::{self, Config, LogFormat};
use ksit_exporter::metrics::Metrics;
use ksit_exporter::{health, process, server, upstream};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        None | Some("serve") => serve(),
        Some("check-config") => check_config(),
        Some("inject") => ksit_exporter::inject::cli::main(&args[2..]),
        Some("webhook") => ksit_exporter::webhook::main(&args[2..]),
        Some("-h" | "--help" | "help") => {
            print!("{}", help());
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            println!("ksit-exporter {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("ksit-exporter: unknown command {other:?}; see `ksit-exporter --help`");
            ExitCode::from(2)
        }
    }
}

fn help() -> String {
    let mut out = String::from(
        "ksit-exporter: Prometheus metrics for a KSIT component, served beside it.\n\n\
         Usage:\n  ksit-exporter [serve]      serve /metrics, /healthz and /readyz\n  \
         ksit-exporter check-config validate the environment and print the effective configuration\n  \
         ksit-exporter inject -f FILE|-  add the sidecar to the pod templates of manifests (see `inject --help`)\n  \
         ksit-exporter webhook      serve the admission webhook that injects the sidecar (see `webhook --help`)\n  \
         ksit-exporter --version\n\nEnvironment:\n",
    );
    for (name, default, meaning) in config::VARIABLES {
        let default = if default.is_empty() {
            String::new()
        } else {
            format!(" (default {default})")
        };
        out.push_str(&format!("  {name}{default}\n      {meaning}\n"));
    }
    out
}

/// Validates before anything else happens: a bad variable exits 2 with one line.
fn load_config() -> Result<config::Loaded, ExitCode> {
    Config::from_env().map_err(|e| {
        eprintln!("ksit-exporter: {e}");
        ExitCode::from(2)
    })
}

fn check_config() -> ExitCode {
    match load_config() {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            println!("{}", loaded.config);
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn init_logging(format: LogFormat) {
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

fn serve() -> ExitCode {
    let loaded = match load_config() {
        Ok(l) => l,
        Err(code) => return code,
    };
    init_logging(loaded.config.log_format);
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    // One thread: the work is a few small requests per interval, and each extra worker thread
    // costs its stack beside every pod.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ksit-exporter: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(loaded.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let kube_client = ksit_exporter::kube::client(config.kubernetes).await?;
    let listener = server::bind(config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on KSIT_LISTEN_ADDR={}", config.listen_addr))?;
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    let interval = config.probe_interval;

    let processes =
        process::Processes::new(config.process_match.clone(), interval, metrics.clone());
    tokio::spawn(collector::run_every(
        processes,
        interval,
        metrics.clone(),
        readiness.expect_one(),
    ));
    if !config.health_targets.is_empty() {
        let h = health::Health::new(
            config.health_targets.clone(),
            config.probe_timeout,
            metrics.clone(),
        );
        tokio::spawn(collector::run_every(
            h,
            interval,
            metrics.clone(),
            readiness.expect_one(),
        ));
    }
    if let Some(url) = config.upstream_url.clone() {
        let u = upstream::Upstream::new(
            url,
            config.probe_timeout,
            config.upstream_max_bytes,
            metrics.clone(),
        );
        tokio::spawn(collector::run_every(
            u,
            interval,
            metrics.clone(),
            readiness.expect_one(),
        ));
    }

    if let Some(client) = kube_client {
        // Not part of readiness: /readyz means "can serve /metrics", which never waits on the API.
        ksit_exporter::kube::spawn(client, (&config).into(), metrics.clone());
    }

    tracing::info!(addr = %listener.local_addr()?, version = env!("CARGO_PKG_VERSION"), "serving /metrics");
    server::serve(
        listener,
        server::State { metrics, readiness },
        shutdown_signal(),
    )
    .await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
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
