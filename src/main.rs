#![forbid(unsafe_code)]

use std::process::ExitCode;

use ksit_exporter::cmd;
use ksit_exporter::{config, env};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        None | Some("serve") => cmd::serve::main(),
        Some("check-config") => cmd::serve::check_config(),
        #[cfg(feature = "admission")]
        Some("inject") => cmd::inject::main(&args[2..]),
        #[cfg(feature = "admission")]
        Some("webhook") => cmd::webhook::main(&args[2..]),
        #[cfg(not(feature = "admission"))]
        Some(command @ ("inject" | "webhook")) => {
            eprintln!(
                "ksit-exporter: this build is the sidecar's and has no {command} command; \
                 it is in the ksit-exporter-webhook image (or a build with the admission feature)"
            );
            ExitCode::from(2)
        }
        Some("-h" | "--help" | "help") => {
            print!("{}", help());
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            println!(
                "ksit-exporter {} ({})",
                env!("CARGO_PKG_VERSION"),
                env!("KSIT_GIT_REVISION")
            );
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
         ksit-exporter --version\n",
    );
    if cfg!(feature = "admission") {
        out.push_str(
            "  ksit-exporter inject -f FILE|-  add the sidecar to the pod templates of manifests (see `inject --help`)\n  \
             ksit-exporter webhook      serve the admission webhook that injects the sidecar (see `webhook --help`)\n",
        );
    }
    out.push_str("\nEnvironment:\n");
    out.push_str(&env::describe(config::VARIABLES));
    out
}
