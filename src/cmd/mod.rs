//! The commands, each a small module over the shared parts: [`crate::env`] (the variable
//! tables), [`crate::telemetry`] (logging, runtime, signals) and [`crate::server`] (HTTP).
//! `main.rs` only dispatches to them.

pub mod certs;
pub mod inject;
pub mod serve;
pub mod webhook;

use std::process::ExitCode;

use crate::env::{self, ConfigError, Doc};

/// Every command's variables: a variable of any of them may be set for all (one ConfigMap, one
/// shell), so only a `KSIT_*` name in none of them is warned about.
const ALL_VARIABLES: &[&[Doc]] = &[
    crate::config::VARIABLES,
    crate::inject::VARIABLES,
    webhook::VARIABLES,
];

/// The process environment as text, and the warnings to give once logging is up.
pub struct Environment {
    pub vars: Vec<(String, String)>,
    pub warnings: Vec<String>,
}

/// Reads the process environment; a variable of `ours` that is not UTF-8 is an error, other such
/// variables are ignored.
pub fn environment(ours: &[&[Doc]]) -> Result<Environment, ConfigError> {
    let vars = env::text_vars(std::env::vars_os(), ours)?;
    let warnings = env::unknown_variables(&vars, ALL_VARIABLES);
    Ok(Environment { vars, warnings })
}

/// A configuration error: one line on stderr and exit status 2.
pub fn config_error(command: &str, err: &ConfigError) -> ExitCode {
    eprintln!("{command}: {err}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_of_other_commands_are_not_unknown() {
        let vars: Vec<(String, String)> = [
            ("KSIT_LISTEN_ADR", "0.0.0.0:9"),
            ("KSIT_SIDECAR_IMAGE", "x"),
            ("KSIT_TLS_CERT_FILE", "/tls.crt"),
            ("KSIT_PROBE_INTERVAL", "5s"),
            ("HOME", "/root"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let warnings = env::unknown_variables(&vars, ALL_VARIABLES);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("KSIT_LISTEN_ADR"));
    }
}
