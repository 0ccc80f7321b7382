//! `ksit-exporter inject`: adds the sidecar to manifests by hand or in a GitOps pipeline, with the
//! same decisions as the webhook, except that every pod template counts as opted in unless it opts
//! out (running the command is the request).

use std::io::{Read, Write};
use std::process::ExitCode;

use crate::env;
use crate::inject::config::image_reference;
use crate::inject::manifests::inject_manifests;
use crate::inject::{InjectorConfig, SidecarMode, VARIABLES};

const COMMAND: &str = "ksit-exporter inject";

const USAGE: &str = "\
usage: ksit-exporter inject -f FILE|- [--image IMAGE] [--mode native|classic]

Adds the ksit-exporter sidecar to the pod templates of Kubernetes manifests (Pod, Deployment,
StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, also inside Lists) and prints the result;
other documents pass through unchanged. Comments are not kept.

  -f, --filename FILE   manifests to read, - for standard input
      --image IMAGE     sidecar image (default: KSIT_SIDECAR_IMAGE, else this release's image)
      --mode MODE       native (init container with restartPolicy Always, Kubernetes 1.29+) or
                        classic (default: KSIT_SIDECAR_MODE, else native); a pod's
                        ksit.io/sidecar-mode annotation still wins
  -h, --help            print this help

Exit status: 0 done, 1 unreadable input, 2 usage or configuration error.

Environment:
";

#[derive(Debug, PartialEq)]
struct Options {
    file: String,
    image: Option<String>,
    mode: Option<SidecarMode>,
}

/// Runs `ksit-exporter inject`; `args` are the arguments after `inject`.
pub fn main(args: &[String]) -> ExitCode {
    let opts = match parse_args(args) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            print!("{USAGE}{}", env::describe(VARIABLES));
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("{COMMAND}: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let loaded = super::environment(&[VARIABLES])
        .and_then(|env| Ok((InjectorConfig::from_vars(env.vars)?, env.warnings)));
    let (mut cfg, warnings) = match loaded {
        Ok(loaded) => loaded,
        Err(err) => return super::config_error(COMMAND, &err),
    };
    for w in &warnings {
        eprintln!("{COMMAND}: warning: {w}");
    }
    cfg.default_opt_in = true;
    if let Some(image) = opts.image {
        cfg.image = image;
    }
    if let Some(mode) = opts.mode {
        cfg.mode = mode;
    }

    let input = if opts.file == "-" {
        let mut buf = String::new();
        std::io::stdin().read_to_string(&mut buf).map(|_| buf)
    } else {
        std::fs::read_to_string(&opts.file)
    };
    let input = match input {
        Ok(input) => input,
        Err(err) => {
            eprintln!("{COMMAND}: reading {}: {err}", opts.file);
            return ExitCode::FAILURE;
        }
    };
    match inject_manifests(&input, &cfg) {
        Ok(out) => {
            for note in &out.notes {
                eprintln!("{note}");
            }
            // Not print!: it panics when the reader of a pipe has gone away.
            if let Err(err) = std::io::stdout().lock().write_all(out.yaml.as_bytes()) {
                eprintln!("{COMMAND}: writing the result: {err}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{COMMAND}: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// `Ok(None)` asks for help.
fn parse_args(args: &[String]) -> Result<Option<Options>, String> {
    let mut file = None;
    let mut image = None;
    let mut mode = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with('-') => (flag, Some(value.to_string())),
            _ => (arg.as_str(), None),
        };
        if matches!(flag, "-h" | "--help") {
            return Ok(None);
        }
        let slot = match flag {
            "-f" | "--filename" => &mut file,
            "--image" => &mut image,
            "--mode" => &mut mode,
            _ => return Err(format!("unexpected argument {arg:?}")),
        };
        let value = match inline.or_else(|| args.next().cloned()) {
            Some(value) if !value.is_empty() => value,
            _ => return Err(format!("{flag} needs a value")),
        };
        if slot.replace(value).is_some() {
            return Err(format!("{flag} given more than once"));
        }
    }
    let mode = match mode {
        None => None,
        Some(m) => Some(
            SidecarMode::parse(&m)
                .ok_or_else(|| format!("--mode {m:?}: expected native or classic"))?,
        ),
    };
    let image = match image {
        None => None,
        Some(i) => Some(image_reference(&i).map_err(|e| format!("--image {i:?}: expected {e}"))?),
    };
    let file = file.ok_or("-f FILE|- is required")?;
    Ok(Some(Options { file, image, mode }))
}

/// An error and its causes on one line, as `serde_saphyr` puts the position in the cause.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        text += &format!(": {err}");
        cause = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Options>, String> {
        parse_args(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags() {
        let opts = parse(&["-f", "-", "--image=img:1", "--mode", "classic"]);
        assert_eq!(
            opts,
            Ok(Some(Options {
                file: "-".into(),
                image: Some("img:1".into()),
                mode: Some(SidecarMode::Classic),
            }))
        );
        assert_eq!(parse(&["--filename=x.yaml", "-h"]), Ok(None));
    }

    #[test]
    fn usage_errors() {
        for args in [
            &[][..],
            &["-f"],
            &["-f", "a", "-f", "b"],
            &["-f", "a", "--mode", "sidecar"],
            &["-f", "a", "extra"],
            &["--image=", "-f", "a"],
            &["--image", "ghcr.io/x y:1", "-f", "a"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }
}
