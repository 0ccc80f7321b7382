//! `ksit-exporter [serve]` and `ksit-exporter check-config`: the exporter itself.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::{self, Config};
use crate::exporter::Exporter;
use crate::{server, telemetry};

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
    let listener = server::bind(config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on KSIT_LISTEN_ADDR={}", config.listen_addr))?;
    // Before the line that says it serves, so a signal from then on finds its handler.
    let stop = telemetry::shutdown_signal();
    let state = Exporter::new().start(&config, kube_client);
    tracing::info!(addr = %listener.local_addr()?, version = env!("CARGO_PKG_VERSION"), "serving /metrics");
    server::serve(listener, state, stop).await;
    tracing::info!("stopped");
    Ok(())
}
