//! `ksit-exporter [serve]` and `ksit-exporter check-config`: the exporter itself.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::{self, Config, MetricsAuth};
use crate::exporter::Exporter;
use crate::{server, telemetry, tls};

const COMMAND: &str = "ksit-exporter";

/// Validates before anything else happens: a bad variable exits 2 with one line.
fn load() -> Result<(config::Loaded, Vec<String>), ExitCode> {
    let env =
        super::environment(&[config::VARIABLES]).map_err(|e| super::config_error(COMMAND, &e))?;
    let loaded = Config::from_vars(env.vars).map_err(|e| super::config_error(COMMAND, &e))?;
    Ok((loaded, env.warnings))
}

/// `check-config`: the effective configuration, one `VAR=value` a line.
pub fn check_config() -> ExitCode {
    match load() {
        Ok((loaded, warnings)) => {
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            println!("{}", loaded.effective);
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

pub fn main() -> ExitCode {
    let (loaded, warnings) = match load() {
        Ok(l) => l,
        Err(code) => return code,
    };
    telemetry::init_logging(loaded.config.log_format);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    telemetry::block_on(async {
        // Unusable certificate files at start are a configuration error like a bad variable.
        if let Some(files) = &loaded.config.tls
            && let Err(e) = files.load().await
        {
            eprintln!("{COMMAND}: KSIT_TLS_CERT_FILE/KSIT_TLS_KEY_FILE: {e}");
            return ExitCode::from(2);
        }
        match run(loaded.config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn run(config: Config) -> anyhow::Result<()> {
    let kube_client = crate::kube::client(config.kubernetes).await?;
    if config.metrics_auth == MetricsAuth::Kubernetes && kube_client.is_none() {
        anyhow::bail!(
            "KSIT_METRICS_AUTH=kubernetes checks callers with the API server, and no Kubernetes client could be configured; run in a pod with a service account or set KUBECONFIG"
        );
    }
    let exporter = Exporter::new();
    let tls = match &config.tls {
        Some(files) => {
            let shown = files.cert.display().to_string();
            let (acceptor, not_after) =
                tls::start(files, config.tls_reload_interval, move |loaded| {
                    tracing::info!(cert = %shown, not_after = loaded.not_after, "serving the new certificate");
                })
                .await
                .context("KSIT_TLS_CERT_FILE/KSIT_TLS_KEY_FILE")?;
            tracing::info!(cert = %files.cert.display(), not_after, "serving HTTPS only");
            Some((acceptor, exporter.handshake_failures()))
        }
        None => None,
    };
    let listener = server::bind(config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on KSIT_LISTEN_ADDR={}", config.listen_addr))?;
    // Before the line that says it serves, so a signal from then on finds its handler.
    let stop = telemetry::shutdown_signal();
    let state = exporter.start(&config, kube_client);
    tracing::info!(addr = %listener.local_addr()?, version = env!("CARGO_PKG_VERSION"), https = tls.is_some(), auth = ?config.metrics_auth, "serving /metrics");
    match tls {
        Some((acceptor, failures)) => {
            server::serve_https(listener, state, acceptor, failures, stop).await;
        }
        None => server::serve(listener, state, stop).await,
    }
    tracing::info!("stopped");
    Ok(())
}
