//! Go-flag parsing and argument rewriting: which container binds what from its command line,
//! and the metrics takeover that moves a controller-runtime manager's metrics off port 8080.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec};

use super::{METRICS_PORT, containers};

/// First port tried when a manager's metrics are moved off 8080 (docs/upstream.md).
const TAKEOVER_FIRST_PORT: i32 = 8082;
/// controller-runtime's metrics flag: the current spelling and the pre-v0.15 one.
const METRICS_FLAGS: &[&str] = &["metrics-bind-address", "metrics-addr"];
const HEALTH_FLAGS: &[&str] = &["health-probe-bind-address"];
/// Hosts of a listen address on the pod's own network; an argument such as `--listen=:8080`
/// binds a port every container of the pod shares. Remote addresses (`db:8080`) are not binds.
const LOCAL_HOSTS: &[&str] = &[
    "",
    "0.0.0.0",
    "127.0.0.1",
    "localhost",
    "[::]",
    "::",
    "[::1]",
];

/// The containers that bind their metrics on port 8080 (a controller-runtime manager as KSIT
/// ships it).
pub(super) fn metrics_on_8080(spec: &PodSpec) -> Vec<String> {
    containers(spec)
        .filter(|c| binds_metrics_on_8080(c))
        .map(|c| c.name.clone())
        .collect()
}

/// Whether this container is a manager binding its metrics on port 8080.
pub(super) fn binds_metrics_on_8080(c: &Container) -> bool {
    container_flag(c, METRICS_FLAGS)
        .is_some_and(|(_, f)| listen_port(&f.value) == Some(METRICS_PORT))
}

/// The port of the first health-probe flag (KSIT's manager shape), if it names one.
pub(super) fn health_port(spec: &PodSpec) -> Option<i32> {
    containers(spec)
        .find_map(container_health_port)
        .filter(|port| *port != 0)
}

/// The port this container's health-probe flag names, if it has one: the first container with
/// one decides [`health_port`].
pub(super) fn container_health_port(c: &Container) -> Option<i32> {
    container_flag(c, HEALTH_FLAGS).and_then(|(_, f)| listen_port(&f.value))
}

/// Which of a container's argument lists holds a flag.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ArgList {
    Command,
    Args,
}

/// A flag's value inside an argument list: `list[index]` is `prefix` followed by `value`.
#[derive(Debug, PartialEq)]
struct FlagValue {
    index: usize,
    prefix: String,
    value: String,
}

/// Finds a Go flag (`-name` or `--name`, with `=value` or the value as the next argument). Go's
/// flag package lets the last occurrence win, so this does too.
fn find_flag(list: &[String], names: &[&str]) -> Option<FlagValue> {
    let mut found = None;
    for (index, arg) in list.iter().enumerate() {
        let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            continue;
        };
        match body.split_once('=') {
            Some((name, value)) if names.contains(&name) => {
                found = Some(FlagValue {
                    index,
                    prefix: arg[..arg.len() - value.len()].to_string(),
                    value: value.to_string(),
                });
            }
            None if names.contains(&body) => {
                if let Some(value) = list.get(index + 1) {
                    found = Some(FlagValue {
                        index: index + 1,
                        prefix: String::new(),
                        value: value.clone(),
                    });
                }
            }
            _ => {}
        }
    }
    found
}

/// A flag of the container's process: `args` come after `command`, so they win.
fn container_flag(c: &Container, names: &[&str]) -> Option<(ArgList, FlagValue)> {
    let in_list = |list: &Option<Vec<String>>, which| {
        list.as_deref()
            .and_then(|l| find_flag(l, names))
            .map(|f| (which, f))
    };
    in_list(&c.args, ArgList::Args).or_else(|| in_list(&c.command, ArgList::Command))
}

/// The port of a listen address such as `:8080`, `0.0.0.0:8080` or `[::]:8080`.
pub(super) fn listen_port(addr: &str) -> Option<i32> {
    addr.rsplit_once(':')?.1.parse::<u16>().ok().map(i32::from)
}

/// Ports the container's arguments bind on the pod's network: listen addresses (`:8081`,
/// `--listen=0.0.0.0:9090`) and bare ports given to a flag named for one (`--port=8080`,
/// `--http-port 8080`).
pub(super) fn bound_ports(c: &Container) -> impl Iterator<Item = (i32, &str)> {
    let args: Vec<&str> = c
        .command
        .iter()
        .chain(c.args.iter())
        .flatten()
        .map(String::as_str)
        .collect();
    (0..args.len()).filter_map(move |i| {
        let arg = args[i];
        let (flag, value) = arg.split_once('=').unwrap_or((arg, arg));
        let port_flag = |f: &str| f.starts_with('-') && f.to_ascii_lowercase().ends_with("port");
        let port = if let Some((host, port)) = value.rsplit_once(':') {
            LOCAL_HOSTS.contains(&host).then_some(port)?
        } else if flag != value && port_flag(flag) {
            value
        } else if port_flag(arg) {
            args.get(i + 1)?
        } else {
            return None;
        };
        let port = port.parse::<u16>().ok()?;
        Some((i32::from(port), arg))
    })
}

pub(super) fn is_tcp(port: &ContainerPort) -> bool {
    port.protocol.as_deref().is_none_or(|p| p == "TCP")
}

/// The first port from 8082 up that no container declares or binds.
/// `elided`: ports that containers left out of `spec` declare or bind ([`super::Elided`]).
pub(super) fn free_port(spec: &PodSpec, elided: &BTreeSet<i32>) -> Option<i32> {
    let mut used: BTreeSet<i32> = containers(spec).flat_map(used_ports).collect();
    used.insert(METRICS_PORT);
    (TAKEOVER_FIRST_PORT..=i32::from(u16::MAX)).find(|p| !used.contains(p) && !elided.contains(p))
}

/// The ports a container declares or binds; [`free_port`] looks only from
/// [`TAKEOVER_FIRST_PORT`] up, so the others matter to no one else.
pub(super) fn used_ports(c: &Container) -> impl Iterator<Item = i32> + '_ {
    let declared = c.ports.iter().flatten().map(|p| p.container_port);
    declared.chain(bound_ports(c).map(|(port, _)| port))
}

/// The ports [`free_port`] can pick.
pub(super) const TAKEOVER_PORTS: std::ops::RangeInclusive<i32> = TAKEOVER_FIRST_PORT..=65535;

/// Moves the manager's metrics to loopback `port` and drops its declaration of port 8080, which
/// now belongs to the sidecar (a Service's `targetPort: metrics` then reaches the merged metrics).
pub(super) fn take_over_metrics(manager: &mut Container, port: i32) {
    if let Some((which, flag)) = container_flag(manager, METRICS_FLAGS) {
        let list = match which {
            ArgList::Args => manager.args.as_mut(),
            ArgList::Command => manager.command.as_mut(),
        };
        if let Some(arg) = list.and_then(|l| l.get_mut(flag.index)) {
            *arg = format!("{}127.0.0.1:{port}", flag.prefix);
        }
    }
    if let Some(ports) = manager.ports.as_mut() {
        ports.retain(|p| !(p.container_port == METRICS_PORT && is_tcp(p)));
        if ports.is_empty() {
            manager.ports = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_flag_forms() {
        let list = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(
            find_flag(&list(&["--metrics-bind-address"]), METRICS_FLAGS),
            None,
            "no value"
        );
        assert_eq!(
            find_flag(&list(&["--metrics-bind-addressx=:1"]), METRICS_FLAGS),
            None
        );
        assert_eq!(
            find_flag(&list(&["-v", "--metrics-addr", ":8080"]), METRICS_FLAGS),
            Some(FlagValue {
                index: 2,
                prefix: String::new(),
                value: ":8080".into()
            })
        );
        assert_eq!(listen_port("[::]:8080"), Some(8080));
        assert_eq!(listen_port("0"), None);
    }
}
