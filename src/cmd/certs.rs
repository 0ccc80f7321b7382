//! `ksit-exporter webhook certs`: writes a CA and a serving pair with
//! [`crate::webhook::certs::issue`] and prints the `caBundle`.

use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine;

use crate::webhook::certs::issue;

const DEFAULT_DAYS: i64 = 365;

const USAGE: &str = "Usage: ksit-exporter webhook certs --dir DIR --service NAME --namespace NS [--host NAME]... [--days N]

Writes DIR/ca.crt, ca.key (reused when present), tls.crt and tls.key for the Service
NAME.NS.svc (plus each --host, a DNS name or an IP address), valid N days (default 365),
and prints the base64 caBundle of the MutatingWebhookConfiguration. For demos and tests;
in a cluster, prefer the cert-manager overlay (manifests/webhook/cert-manager).
";

struct Args {
    dir: PathBuf,
    names: Vec<String>,
    days: i64,
}

fn parse(args: &[String]) -> Result<Option<Args>, String> {
    let (mut dir, mut service, mut namespace, mut hosts, mut days) =
        (None, None, None, Vec::new(), DEFAULT_DAYS);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if matches!(flag.as_str(), "-h" | "--help") {
            return Ok(None);
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .clone();
        match flag.as_str() {
            "--dir" => dir = Some(PathBuf::from(value)),
            "--service" => service = Some(value),
            "--namespace" => namespace = Some(value),
            "--host" => hosts.push(value),
            "--days" => {
                days = value
                    .parse()
                    .ok()
                    .filter(|d| (1..=3650).contains(d))
                    .ok_or_else(|| format!("--days {value:?}: expected 1 to 3650"))?
            }
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    let dir = dir.ok_or("--dir is required")?;
    let mut names = match (service, namespace) {
        (Some(s), Some(ns)) => vec![
            format!("{s}.{ns}.svc"),
            format!("{s}.{ns}.svc.cluster.local"),
        ],
        (None, None) => Vec::new(),
        _ => return Err("--service and --namespace go together".into()),
    };
    names.extend(hosts);
    if names.is_empty() {
        return Err("name the Service (--service, --namespace) or a --host".into());
    }
    Ok(Some(Args { dir, names, days }))
}

pub fn main(args: &[String]) -> ExitCode {
    let args = match parse(args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ksit-exporter webhook certs: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match issue(&args.dir, &args.names, args.days) {
        Ok(issued) => {
            println!(
                "{}",
                base64::engine::general_purpose::STANDARD.encode(issued.ca_pem)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ksit-exporter webhook certs: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn service_names_and_hosts_become_the_sans() {
        let a = parse(&args(
            "--dir d --service wh --namespace ksit --host 127.0.0.1",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            a.names,
            ["wh.ksit.svc", "wh.ksit.svc.cluster.local", "127.0.0.1"]
        );
        assert!(parse(&args("--dir d --service wh")).is_err());
        assert!(parse(&args("--dir d")).is_err());
        assert!(parse(&args("--dir d --host x --days 0")).is_err());
        assert!(parse(&args("--help")).unwrap().is_none());
    }
}
