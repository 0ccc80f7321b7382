#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context;
use ksit_exporter::config::{self, Config};
use ksit_exporter::exporter::Exporter;
use ksit_exporter::{runtime, server};

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
    out.push_str(&config::describe(config::VARIABLES));
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

fn serve() -> ExitCode {
    let loaded = match load_config() {
        Ok(l) => l,
        Err(code) => return code,
    };
    runtime::init_logging(loaded.config.log_format);
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    runtime::block_on(async {
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
    let kube_client = ksit_exporter::kube::client(config.kubernetes).await?;
    let listener = server::bind(config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on KSIT_LISTEN_ADDR={}", config.listen_addr))?;
    let state = Exporter::new().start(&config, kube_client);
    tracing::info!(addr = %listener.local_addr()?, version = env!("CARGO_PKG_VERSION"), "serving /metrics");
    server::serve(listener, state, runtime::shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(())
}
