//! Sidecar injection: one pure function decides whether a pod gets the `ksit-exporter` sidecar and
//! returns the new pod, or the reason it does not. The admission webhook turns the result into a
//! JSONPatch and `ksit-exporter inject` writes it back into manifests; because the function reads
//! no environment and has no side effects, both (and the tests) see exactly the same decisions.

pub mod cli;
pub mod manifests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::LazyLock;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, Pod, PodSpec, Probe, ResourceRequirements, SeccompProfile,
    SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use regex::Regex;
use serde::Deserialize;

use crate::config;

/// Name of the injected container; also how an already injected pod is recognised.
pub const SIDECAR_NAME: &str = "ksit-exporter";
/// The sidecar serves its (merged) metrics on this port, named [`METRICS_PORT_NAME`].
pub const METRICS_PORT: i32 = 8080;
pub const METRICS_PORT_NAME: &str = "metrics";
/// First port tried when a manager's metrics are moved off 8080 (the one ksit-api.md suggests).
const TAKEOVER_FIRST_PORT: i32 = 8082;

/// Namespace label (`enabled`) or pod label (`true`) that opts in; `false` on the pod opts out.
pub const INJECT_KEY: &str = "ksit.io/inject";
/// Records the outcome on the pod: `injected: ...` or `skipped: <reason>: <detail>`.
pub const STATUS_ANNOTATION: &str = "ksit.io/inject-status";
/// Overrides the configured sidecar mode for one pod (`native` or `classic`).
pub const MODE_ANNOTATION: &str = "ksit.io/sidecar-mode";
/// `false` keeps a manager that binds its metrics on 8080 untouched (and so skips injection).
pub const TAKEOVER_ANNOTATION: &str = "ksit.io/metrics-takeover";
/// kubectl logs/exec pick this container when none is named; set in classic mode so the sidecar
/// does not become the one users land in.
const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// Pod annotations copied into the sidecar's environment, in the order they are written.
pub const ANNOTATION_ENV: &[(&str, &str)] = &[
    ("ksit.io/component", "KSIT_COMPONENT"),
    ("ksit.io/health-urls", "KSIT_HEALTH_URLS"),
    ("ksit.io/upstream-metrics-url", "KSIT_UPSTREAM_METRICS_URL"),
    ("ksit.io/process-match", "KSIT_PROCESS_MATCH"),
    ("ksit.io/probe-interval", "KSIT_PROBE_INTERVAL"),
    ("ksit.io/probe-timeout", "KSIT_PROBE_TIMEOUT"),
    ("ksit.io/upstream-max-bytes", "KSIT_UPSTREAM_MAX_BYTES"),
    ("ksit.io/log-format", "KSIT_LOG_FORMAT"),
];

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

/// Where the sidecar goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarMode {
    /// An init container with `restartPolicy: Always` (Kubernetes 1.29+): it starts before the
    /// app containers and does not keep a Job's pod running after its work is done.
    Native,
    /// A regular container, for clusters older than 1.29.
    Classic,
}

impl SidecarMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SidecarMode::Native => "native",
            SidecarMode::Classic => "classic",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "native" => Some(SidecarMode::Native),
            "classic" => Some(SidecarMode::Classic),
            _ => None,
        }
    }
}

/// Default image: the release matching this binary, so an injector injects its own version.
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/kubestellar/ksit-exporter:",
    env!("CARGO_PKG_VERSION")
);

/// Every variable the injector reads, with its default and meaning (`inject --help`, `webhook
/// --help` and the README's table).
pub const VARIABLES: &[(&str, &str, &str)] = &[
    (
        "KSIT_SIDECAR_IMAGE",
        DEFAULT_IMAGE,
        "the sidecar's image (`inject --image` overrides)",
    ),
    (
        "KSIT_SIDECAR_MODE",
        "native",
        "`native` (an init container with `restartPolicy: Always`, Kubernetes 1.29+) or `classic`; a pod's `ksit.io/sidecar-mode` overrides",
    ),
    (
        "KSIT_SIDECAR_CPU_REQUEST",
        "10m",
        "the sidecar's CPU request; empty for none",
    ),
    (
        "KSIT_SIDECAR_MEMORY_REQUEST",
        "16Mi",
        "the sidecar's memory request; empty for none",
    ),
    // No CPU limit by default: CFS throttling would make scrapes slow exactly when the node is
    // busy, while the memory limit already bounds what the sidecar can take from the pod.
    (
        "KSIT_SIDECAR_CPU_LIMIT",
        "",
        "the sidecar's CPU limit; none by default, since throttling would slow scrapes exactly when the node is busy",
    ),
    (
        "KSIT_SIDECAR_MEMORY_LIMIT",
        "64Mi",
        "the sidecar's memory limit; empty for none",
    ),
];

/// How to inject. Built from `KSIT_*` environment variables by [`InjectorConfig::from_env`].
#[derive(Debug, Clone, PartialEq)]
pub struct InjectorConfig {
    pub image: String,
    /// Default mode; a pod's `ksit.io/sidecar-mode` annotation overrides it.
    pub mode: SidecarMode,
    pub resources: ResourceRequirements,
    /// Inject into pods that did not opt in: false for the webhook (it must never touch unrelated
    /// pods), true for the offline command (running it is the request).
    pub default_opt_in: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Invalid(#[from] config::ConfigError),
    #[error("reading the KSIT_* environment")]
    Env(#[from] envy::Error),
}

/// The environment as read; each value is checked by [`InjectorConfig::from_vars`].
#[derive(Deserialize)]
struct RawConfig {
    sidecar_image: Option<String>,
    sidecar_mode: Option<String>,
    sidecar_cpu_request: Option<String>,
    sidecar_memory_request: Option<String>,
    sidecar_cpu_limit: Option<String>,
    sidecar_memory_limit: Option<String>,
}

/// A Kubernetes resource quantity without a sign (resources cannot be negative).
static QUANTITY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$")
        .expect("the quantity pattern is a valid regex")
});

impl InjectorConfig {
    /// Reads `KSIT_SIDECAR_*` from the process environment (variables that are not valid UTF-8
    /// are ignored rather than aborting, as `std::env::vars` would).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// Same as [`Self::from_env`] over the given variables; tests use it so the process
    /// environment is never mutated.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = envy::prefixed("KSIT_").from_iter(vars)?;
        let image = raw
            .sidecar_image
            .unwrap_or_else(|| DEFAULT_IMAGE.to_string());
        if image.trim().is_empty() {
            return Err(config::ConfigError::new(
                "KSIT_SIDECAR_IMAGE",
                &image,
                "an image reference",
            )
            .into());
        }
        let mode = raw
            .sidecar_mode
            .unwrap_or_else(|| default_of("KSIT_SIDECAR_MODE").to_string());
        let mode = SidecarMode::parse(&mode).ok_or_else(|| {
            config::ConfigError::new("KSIT_SIDECAR_MODE", &mode, "`native` or `classic`")
        })?;
        let requests = quantities([
            ("cpu", "KSIT_SIDECAR_CPU_REQUEST", raw.sidecar_cpu_request),
            (
                "memory",
                "KSIT_SIDECAR_MEMORY_REQUEST",
                raw.sidecar_memory_request,
            ),
        ])?;
        let limits = quantities([
            ("cpu", "KSIT_SIDECAR_CPU_LIMIT", raw.sidecar_cpu_limit),
            (
                "memory",
                "KSIT_SIDECAR_MEMORY_LIMIT",
                raw.sidecar_memory_limit,
            ),
        ])?;
        Ok(InjectorConfig {
            image,
            mode,
            resources: ResourceRequirements {
                requests,
                limits,
                ..Default::default()
            },
            default_opt_in: false,
        })
    }
}

/// The default of one of [`VARIABLES`], so the table `--help` prints is the one applied.
fn default_of(var: &str) -> &'static str {
    VARIABLES
        .iter()
        .find(|(name, _, _)| *name == var)
        .map(|(_, default, _)| *default)
        .expect("every variable the injector reads is in VARIABLES")
}

/// Builds a requests or limits map; an empty value means "none" so a default can be turned off.
fn quantities<const N: usize>(
    entries: [(&str, &'static str, Option<String>); N],
) -> Result<Option<BTreeMap<String, Quantity>>, ConfigError> {
    let mut map = BTreeMap::new();
    for (resource, var, value) in entries {
        let value = value.unwrap_or_else(|| default_of(var).to_string());
        if value.is_empty() {
            continue;
        }
        if !QUANTITY.is_match(&value) {
            return Err(config::ConfigError::new(
                var,
                &value,
                "a Kubernetes quantity such as 10m, 0.5, 64Mi or empty for none",
            )
            .into());
        }
        map.insert(resource.to_string(), Quantity(value));
    }
    Ok((!map.is_empty()).then_some(map))
}

/// Why a pod did not get the sidecar. [`SkipReason::as_str`] is stable (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    NotOptedIn,
    OptedOut,
    AlreadyInjected,
    /// `hostNetwork: true`: port 8080 would be the node's, shared with everything on it.
    HostNetwork,
    PortConflict,
    NameConflict,
    InvalidAnnotation,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotOptedIn => "not_opted_in",
            SkipReason::OptedOut => "opted_out",
            SkipReason::AlreadyInjected => "already_injected",
            SkipReason::HostNetwork => "host_network",
            SkipReason::PortConflict => "port_conflict",
            SkipReason::NameConflict => "name_conflict",
            SkipReason::InvalidAnnotation => "invalid_annotation",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The decision for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Injected {
        pod: Pod,
        /// Worth telling whoever created the pod (admission warnings, stderr).
        warnings: Vec<String>,
    },
    Skipped {
        reason: SkipReason,
        detail: String,
        /// A copy annotated with the reason when the pod asked for the sidecar but cannot have it;
        /// `None` when the pod must be left exactly as it came (not opted in, opted out, already
        /// injected).
        pod: Option<Pod>,
    },
}

impl Outcome {
    /// The pod to store instead of the input, or `None` to leave the input untouched.
    pub fn pod(&self) -> Option<&Pod> {
        match self {
            Outcome::Injected { pod, .. } => Some(pod),
            Outcome::Skipped { pod, .. } => pod.as_ref(),
        }
    }
}

/// Decides whether `pod` gets the sidecar and builds the result. `namespace_labels` are the labels
/// of the pod's namespace (empty when unknown, as offline).
pub fn inject(
    pod: &Pod,
    namespace_labels: &BTreeMap<String, String>,
    cfg: &InjectorConfig,
) -> Outcome {
    let annotation = |key: &str| get(&pod.metadata.annotations, key);
    let label = |key: &str| get(&pod.metadata.labels, key);
    let untouched = |reason, detail: &str| Outcome::Skipped {
        reason,
        detail: detail.to_string(),
        pod: None,
    };
    let refuse = |reason, detail: String| Outcome::Skipped {
        pod: Some(with_annotation(
            pod.clone(),
            STATUS_ANNOTATION,
            format!("skipped: {reason}: {detail}"),
        )),
        reason,
        detail,
    };

    if annotation(INJECT_KEY) == Some("false") || label(INJECT_KEY) == Some("false") {
        return untouched(SkipReason::OptedOut, "the pod sets ksit.io/inject=false");
    }
    let opted_in = cfg.default_opt_in
        || namespace_labels.get(INJECT_KEY).map(String::as_str) == Some("enabled")
        || label(INJECT_KEY) == Some("true");
    if !opted_in {
        return untouched(
            SkipReason::NotOptedIn,
            "neither the namespace (ksit.io/inject=enabled) nor the pod (ksit.io/inject=true) opts in",
        );
    }
    if has_sidecar(pod) || annotation(STATUS_ANNOTATION).is_some_and(|s| s.starts_with("injected"))
    {
        return untouched(
            SkipReason::AlreadyInjected,
            "the pod already has the sidecar",
        );
    }

    let mode = match annotation(MODE_ANNOTATION) {
        None => cfg.mode,
        Some(value) => match SidecarMode::parse(value) {
            Some(mode) => mode,
            None => {
                return refuse(
                    SkipReason::InvalidAnnotation,
                    format!("{MODE_ANNOTATION}={value:?}, expected native or classic"),
                );
            }
        },
    };
    let takeover = match annotation(TAKEOVER_ANNOTATION) {
        None | Some("true") => true,
        Some("false") => false,
        Some(value) => {
            return refuse(
                SkipReason::InvalidAnnotation,
                format!("{TAKEOVER_ANNOTATION}={value:?}, expected true or false"),
            );
        }
    };

    let mut spec = pod.spec.clone().unwrap_or_default();
    if spec.host_network == Some(true) {
        return refuse(
            SkipReason::HostNetwork,
            format!(
                "the pod uses the node's network, where port {METRICS_PORT} is not the pod's to take"
            ),
        );
    }

    // A controller-runtime manager binding its metrics on 8080 (KSIT's as shipped): move them to a
    // free loopback port and let the sidecar serve them merged with its own.
    let mut defaults = BTreeMap::new();
    let mut status = format!("injected: {}", mode.as_str());
    let managers: Vec<String> = containers(&spec)
        .filter(|c| {
            container_flag(c, METRICS_FLAGS)
                .is_some_and(|(_, f)| listen_port(&f.value) == Some(METRICS_PORT))
        })
        .map(|c| c.name.clone())
        .collect();
    match managers.as_slice() {
        [] => {}
        [name] if takeover => {
            let Some(port) = free_port(&spec) else {
                return refuse(
                    SkipReason::PortConflict,
                    format!("no free port to move the metrics of container {name} to"),
                );
            };
            let manager = containers_mut(&mut spec)
                .find(|c| &c.name == name)
                .expect("the manager was found in this spec above");
            take_over_metrics(manager, port);
            defaults.insert(
                "KSIT_UPSTREAM_METRICS_URL",
                format!("http://127.0.0.1:{port}/metrics"),
            );
            status += &format!(", metrics of container {name} moved to 127.0.0.1:{port}");
        }
        [name] => {
            return refuse(
                SkipReason::PortConflict,
                format!(
                    "container {name} binds its metrics on port {METRICS_PORT} and {TAKEOVER_ANNOTATION}=false"
                ),
            );
        }
        names => {
            return refuse(
                SkipReason::PortConflict,
                format!(
                    "containers {} all bind their metrics on port {METRICS_PORT}",
                    names.join(", ")
                ),
            );
        }
    }
    if let Some((reason, detail)) = find_conflict(&spec) {
        return refuse(reason, detail);
    }

    // KSIT's manager shape: its health endpoints are the ones to probe.
    if let Some(port) = containers(&spec)
        .find_map(|c| container_flag(c, HEALTH_FLAGS).and_then(|(_, f)| listen_port(&f.value)))
        .filter(|port| *port != 0)
    {
        defaults.insert(
            "KSIT_HEALTH_URLS",
            format!("http://127.0.0.1:{port}/healthz,http://127.0.0.1:{port}/readyz"),
        );
    }
    let env = ANNOTATION_ENV.iter().filter_map(|(key, var)| {
        let value = annotation(key)
            .map(str::to_string)
            .or_else(|| defaults.remove(var))?;
        Some(EnvVar {
            name: (*var).to_string(),
            value: Some(value),
            ..Default::default()
        })
    });
    let sidecar = sidecar_container(cfg, mode, env.collect());

    let mut warnings = Vec::new();
    // Containers do not see each other's processes unless the pod shares one PID namespace.
    if annotation("ksit.io/process-match").is_some() && spec.share_process_namespace != Some(true) {
        warnings.push(
            "ksit.io/process-match only sees the sidecar's own processes unless the pod sets shareProcessNamespace: true"
                .to_string(),
        );
    }
    let mut new = pod.clone();
    match mode {
        SidecarMode::Native => spec
            .init_containers
            .get_or_insert_with(Vec::new)
            .push(sidecar),
        SidecarMode::Classic => {
            if matches!(spec.restart_policy.as_deref(), Some("Never" | "OnFailure")) {
                warnings.push(format!(
                    "classic sidecar mode keeps this run-to-completion pod running after its work is done; use {MODE_ANNOTATION}=native (Kubernetes 1.29+)"
                ));
            }
            if annotation(DEFAULT_CONTAINER_ANNOTATION).is_none()
                && let Some(first) = spec.containers.first()
            {
                new = with_annotation(new, DEFAULT_CONTAINER_ANNOTATION, first.name.clone());
            }
            spec.containers.push(sidecar);
        }
    }
    new.spec = Some(spec);
    Outcome::Injected {
        pod: with_annotation(new, STATUS_ANNOTATION, status),
        warnings,
    }
}

fn get<'a>(map: &'a Option<BTreeMap<String, String>>, key: &str) -> Option<&'a str> {
    map.as_ref()?.get(key).map(String::as_str)
}

fn with_annotation(mut pod: Pod, key: &str, value: String) -> Pod {
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_string(), value);
    pod
}

/// Containers and init containers: they all share the pod's network.
fn containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
}

fn containers_mut(spec: &mut PodSpec) -> impl Iterator<Item = &mut Container> {
    spec.containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
}

fn has_sidecar(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .is_some_and(|spec| containers(spec).any(|c| c.name == SIDECAR_NAME))
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
fn listen_port(addr: &str) -> Option<i32> {
    addr.rsplit_once(':')?.1.parse::<u16>().ok().map(i32::from)
}

/// Ports the container's arguments bind on the pod's network: listen addresses (`:8081`,
/// `--listen=0.0.0.0:9090`) and bare ports given to a flag named for one (`--port=8080`,
/// `--http-port 8080`).
fn bound_ports(c: &Container) -> impl Iterator<Item = (i32, &str)> {
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

fn is_tcp(port: &ContainerPort) -> bool {
    port.protocol.as_deref().is_none_or(|p| p == "TCP")
}

/// The first port from 8082 up that no container declares or binds.
fn free_port(spec: &PodSpec) -> Option<i32> {
    let mut used: BTreeSet<i32> = containers(spec)
        .flat_map(|c| {
            let declared = c.ports.iter().flatten().map(|p| p.container_port);
            declared.chain(bound_ports(c).map(|(port, _)| port))
        })
        .collect();
    used.insert(METRICS_PORT);
    (TAKEOVER_FIRST_PORT..=i32::from(u16::MAX)).find(|p| !used.contains(p))
}

/// Moves the manager's metrics to loopback `port` and drops its declaration of port 8080, which
/// now belongs to the sidecar (a Service's `targetPort: metrics` then reaches the merged metrics).
fn take_over_metrics(manager: &mut Container, port: i32) {
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

/// Anything left that would clash with the sidecar's port 8080 or its port name `metrics`.
fn find_conflict(spec: &PodSpec) -> Option<(SkipReason, String)> {
    for c in containers(spec) {
        let name = &c.name;
        for port in c.ports.iter().flatten() {
            if port.container_port == METRICS_PORT && is_tcp(port) {
                return Some((
                    SkipReason::PortConflict,
                    format!("container {name} declares containerPort {METRICS_PORT}"),
                ));
            }
            if port.name.as_deref() == Some(METRICS_PORT_NAME) {
                return Some((
                    SkipReason::NameConflict,
                    format!(
                        "container {name} declares a port named {METRICS_PORT_NAME} ({})",
                        port.container_port
                    ),
                ));
            }
        }
        if let Some((_, arg)) = bound_ports(c).find(|(port, _)| *port == METRICS_PORT) {
            return Some((
                SkipReason::PortConflict,
                format!("container {name} binds port {METRICS_PORT} ({arg:?})"),
            ));
        }
        let probes = [&c.liveness_probe, &c.readiness_probe, &c.startup_probe];
        let probe_ports = probes.into_iter().flatten().filter_map(|p| {
            let http = p.http_get.as_ref().map(|h| &h.port);
            http.or(p.tcp_socket.as_ref().map(|t| &t.port))
        });
        for port in probe_ports {
            if *port == IntOrString::Int(METRICS_PORT) {
                return Some((
                    SkipReason::PortConflict,
                    format!("container {name} has a probe on port {METRICS_PORT}"),
                ));
            }
        }
    }
    None
}

fn downward(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn http_probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(METRICS_PORT_NAME.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn sidecar_container(cfg: &InjectorConfig, mode: SidecarMode, ksit_env: Vec<EnvVar>) -> Container {
    // The pod name comes from the downward API at run time: pods created from generateName have
    // no name yet when they are admitted.
    let mut env = vec![
        downward("POD_NAME", "metadata.name"),
        downward("POD_NAMESPACE", "metadata.namespace"),
        downward("NODE_NAME", "spec.nodeName"),
    ];
    env.extend(ksit_env);
    Container {
        name: SIDECAR_NAME.to_string(),
        image: Some(cfg.image.clone()),
        ports: Some(vec![ContainerPort {
            container_port: METRICS_PORT,
            name: Some(METRICS_PORT_NAME.to_string()),
            protocol: Some("TCP".to_string()),
            ..Default::default()
        }]),
        env: Some(env),
        resources: Some(cfg.resources.clone()),
        // The "restricted" Pod Security Standard; the image must run as a numeric non-root user.
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        liveness_probe: Some(http_probe("/healthz")),
        readiness_probe: Some(http_probe("/readyz")),
        restart_policy: (mode == SidecarMode::Native).then(|| "Always".to_string()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> InjectorConfig {
        InjectorConfig::from_vars([("KSIT_SIDECAR_IMAGE".into(), "sidecar:test".into())])
            .expect("test config is valid")
    }

    fn pod(value: serde_json::Value) -> Pod {
        let mut value = value;
        value["apiVersion"] = json!("v1");
        value["kind"] = json!("Pod");
        serde_json::from_value(value).expect("test pod is valid")
    }

    fn app_pod() -> Pod {
        pod(
            json!({"metadata": {"name": "app"}, "spec": {"containers": [{"name": "app", "image": "app"}]}}),
        )
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn reason(outcome: &Outcome) -> &'static str {
        match outcome {
            Outcome::Injected { .. } => "injected",
            Outcome::Skipped { reason, .. } => reason.as_str(),
        }
    }

    fn injected(outcome: Outcome) -> Pod {
        match outcome {
            Outcome::Injected { pod, .. } => pod,
            other => panic!("expected an injection, got {other:?}"),
        }
    }

    fn manager_with_args(args: &[&str]) -> Pod {
        pod(json!({
            "metadata": {"name": "m", "labels": {"ksit.io/inject": "true"}},
            "spec": {"containers": [{
                "name": "manager", "image": "ksit",
                "args": args,
                "ports": [{"containerPort": 8080, "name": "metrics", "protocol": "TCP"}],
            }]},
        }))
    }

    fn sidecar(pod: &Pod) -> &Container {
        containers(pod.spec.as_ref().expect("injected pods have a spec"))
            .find(|c| c.name == SIDECAR_NAME)
            .expect("the sidecar is there")
    }

    fn env(c: &Container, name: &str) -> Option<String> {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == name)?
            .value
            .clone()
    }

    #[test]
    fn opt_in_matrix() {
        // (namespace label, pod label, pod annotation, offline, expected)
        let cases = [
            (None, None, None, false, "not_opted_in"),
            (Some("enabled"), None, None, false, "injected"),
            (Some("disabled"), None, None, false, "not_opted_in"),
            (None, Some("true"), None, false, "injected"),
            (None, Some("yes"), None, false, "not_opted_in"),
            (Some("enabled"), None, Some("false"), false, "opted_out"),
            (None, Some("true"), Some("false"), false, "opted_out"),
            (Some("enabled"), Some("false"), None, false, "opted_out"),
            (None, None, None, true, "injected"),
            (None, None, Some("false"), true, "opted_out"),
            (Some("enabled"), None, Some("true"), false, "injected"),
        ];
        for (ns, label, annotation, offline, expected) in cases {
            let mut p = app_pod();
            if let Some(v) = label {
                p.metadata.labels = Some(labels(&[(INJECT_KEY, v)]));
            }
            if let Some(v) = annotation {
                p.metadata.annotations = Some(labels(&[(INJECT_KEY, v)]));
            }
            let ns = ns.map_or_else(BTreeMap::new, |v| labels(&[(INJECT_KEY, v)]));
            let cfg = InjectorConfig {
                default_opt_in: offline,
                ..cfg()
            };
            let outcome = inject(&p, &ns, &cfg);
            assert_eq!(
                reason(&outcome),
                expected,
                "{ns:?} {label:?} {annotation:?} {offline}"
            );
            if expected != "injected" {
                assert_eq!(
                    outcome.pod(),
                    None,
                    "a skipped pod that did not opt in is untouched"
                );
            }
        }
    }

    #[test]
    fn already_injected_is_returned_unchanged() {
        let offline = InjectorConfig {
            default_opt_in: true,
            ..cfg()
        };
        let once = injected(inject(&app_pod(), &BTreeMap::new(), &offline));
        let again = inject(&once, &BTreeMap::new(), &offline);
        assert_eq!(reason(&again), "already_injected");
        assert_eq!(again.pod(), None);

        // Recognised by the container name alone, in either list, or by the annotation alone.
        for p in [
            pod(json!({"spec": {"containers": [{"name": "ksit-exporter"}]}})),
            pod(
                json!({"spec": {"containers": [{"name": "a"}], "initContainers": [{"name": "ksit-exporter"}]}}),
            ),
            pod(
                json!({"metadata": {"annotations": {STATUS_ANNOTATION: "injected: classic"}}, "spec": {"containers": [{"name": "a"}]}}),
            ),
        ] {
            assert_eq!(
                reason(&inject(&p, &BTreeMap::new(), &offline)),
                "already_injected"
            );
        }
    }

    #[test]
    fn takeover_spellings() {
        let cases: [(&[&str], &[&str]); 6] = [
            (
                &["--metrics-bind-address=:8080"],
                &["--metrics-bind-address=127.0.0.1:8082"],
            ),
            (
                &["--metrics-bind-address", ":8080"],
                &["--metrics-bind-address", "127.0.0.1:8082"],
            ),
            (
                &["--metrics-bind-address=0.0.0.0:8080"],
                &["--metrics-bind-address=127.0.0.1:8082"],
            ),
            (
                &["--metrics-addr=:8080"],
                &["--metrics-addr=127.0.0.1:8082"],
            ),
            (
                &["-metrics-bind-address=[::]:8080"],
                &["-metrics-bind-address=127.0.0.1:8082"],
            ),
            // The last occurrence wins in Go, so that is the one that binds.
            (
                &[
                    "--metrics-bind-address=:9090",
                    "--metrics-bind-address=:8080",
                ],
                &[
                    "--metrics-bind-address=:9090",
                    "--metrics-bind-address=127.0.0.1:8082",
                ],
            ),
        ];
        for (args, expected) in cases {
            let out = injected(inject(&manager_with_args(args), &BTreeMap::new(), &cfg()));
            let manager = &out.spec.as_ref().expect("spec").containers[0];
            assert_eq!(
                manager.args.as_deref(),
                Some(&expected.iter().map(|a| a.to_string()).collect::<Vec<_>>()[..]),
                "{args:?}"
            );
            assert_eq!(manager.ports, None, "the manager's metrics port is dropped");
            assert_eq!(
                env(sidecar(&out), "KSIT_UPSTREAM_METRICS_URL").as_deref(),
                Some("http://127.0.0.1:8082/metrics")
            );
        }
    }

    #[test]
    fn takeover_in_command_keeps_an_explicit_upstream_url() {
        let mut p = manager_with_args(&[]);
        let spec = p.spec.as_mut().expect("spec");
        spec.containers[0].args = None;
        spec.containers[0].command = Some(vec![
            "/manager".into(),
            "--metrics-bind-address=:8080".into(),
        ]);
        p.metadata.annotations = Some(labels(&[(
            "ksit.io/upstream-metrics-url",
            "http://127.0.0.1:9999/m",
        )]));
        let out = injected(inject(&p, &BTreeMap::new(), &cfg()));
        let manager = &out.spec.as_ref().expect("spec").containers[0];
        assert_eq!(
            manager.command.as_ref().expect("command")[1],
            "--metrics-bind-address=127.0.0.1:8082"
        );
        assert_eq!(
            env(sidecar(&out), "KSIT_UPSTREAM_METRICS_URL").as_deref(),
            Some("http://127.0.0.1:9999/m")
        );
    }

    #[test]
    fn takeover_can_be_turned_off() {
        let mut p = manager_with_args(&["--metrics-bind-address=:8080"]);
        p.metadata.annotations = Some(labels(&[(TAKEOVER_ANNOTATION, "false")]));
        let outcome = inject(&p, &BTreeMap::new(), &cfg());
        assert_eq!(reason(&outcome), "port_conflict");
        let status = get(
            &outcome.pod().expect("annotated copy").metadata.annotations,
            STATUS_ANNOTATION,
        );
        assert_eq!(
            status,
            Some(
                "skipped: port_conflict: container manager binds its metrics on port 8080 and ksit.io/metrics-takeover=false"
            )
        );
        // Nothing but the status annotation changed.
        let mut back = outcome.pod().expect("annotated copy").clone();
        back.metadata
            .annotations
            .as_mut()
            .expect("annotations")
            .remove(STATUS_ANNOTATION);
        assert_eq!(back, p);
    }

    #[test]
    fn next_free_port() {
        let mut p = manager_with_args(&[
            "--metrics-bind-address=:8080",
            "--health-probe-bind-address=:8082",
        ]);
        let spec = p.spec.as_mut().expect("spec");
        spec.containers.push(
            serde_json::from_value(json!({"name": "other", "ports": [{"containerPort": 8083}]}))
                .expect("container"),
        );
        spec.init_containers = Some(vec![
            serde_json::from_value(json!({"name": "init", "args": ["--listen", "localhost:8084"]}))
                .expect("container"),
        ]);
        let out = injected(inject(&p, &BTreeMap::new(), &cfg()));
        assert_eq!(
            env(sidecar(&out), "KSIT_UPSTREAM_METRICS_URL").as_deref(),
            Some("http://127.0.0.1:8085/metrics")
        );
        assert_eq!(
            env(sidecar(&out), "KSIT_HEALTH_URLS").as_deref(),
            Some("http://127.0.0.1:8082/healthz,http://127.0.0.1:8082/readyz")
        );
    }

    #[test]
    fn conflicts() {
        let with = |extra: serde_json::Value| {
            let mut p = app_pod();
            p.spec
                .as_mut()
                .expect("spec")
                .containers
                .push(serde_json::from_value(extra).expect("container"));
            reason(&inject(
                &p,
                &BTreeMap::new(),
                &InjectorConfig {
                    default_opt_in: true,
                    ..cfg()
                },
            ))
        };
        assert_eq!(
            with(json!({"name": "web", "ports": [{"containerPort": 8080}]})),
            "port_conflict"
        );
        assert_eq!(
            with(json!({"name": "web", "ports": [{"containerPort": 9090, "name": "metrics"}]})),
            "name_conflict"
        );
        assert_eq!(
            with(json!({"name": "web", "args": ["--listen=0.0.0.0:8080"]})),
            "port_conflict"
        );
        assert_eq!(
            with(json!({"name": "web", "args": ["--addr", ":8080"]})),
            "port_conflict"
        );
        assert_eq!(
            with(json!({"name": "web", "args": ["--port=8080"]})),
            "port_conflict"
        );
        assert_eq!(
            with(json!({"name": "web", "command": ["web", "--http-port", "8080"]})),
            "port_conflict"
        );
        assert_eq!(
            with(json!({"name": "web", "args": ["--port=9090", "--http-port", "8081"]})),
            "injected"
        );
        assert_eq!(
            with(json!({"name": "web", "readinessProbe": {"tcpSocket": {"port": 8080}}})),
            "port_conflict"
        );
        assert_eq!(
            with(json!({"name": "web", "args": ["--metrics-bind-address=:8080"]})),
            "injected"
        );
        // Not clashes: another protocol, or a remote address.
        assert_eq!(
            with(json!({"name": "dns", "ports": [{"containerPort": 8080, "protocol": "UDP"}]})),
            "injected"
        );
        assert_eq!(
            with(json!({"name": "web", "args": ["--upstream=db:8080", "--url=http://x:8080/"]})),
            "injected"
        );
        // Two managers on 8080 cannot both be moved behind one sidecar.
        let mut p = manager_with_args(&["--metrics-bind-address=:8080"]);
        let mut second = p.spec.as_ref().expect("spec").containers[0].clone();
        second.name = "second".into();
        second.ports = None;
        p.spec.as_mut().expect("spec").containers.push(second);
        assert_eq!(
            reason(&inject(&p, &BTreeMap::new(), &cfg())),
            "port_conflict"
        );
        // A manager that also declares a port named metrics elsewhere.
        let mut p = manager_with_args(&["--metrics-bind-address=:8080"]);
        p.spec.as_mut().expect("spec").containers[0]
            .ports
            .as_mut()
            .expect("ports")
            .push(
                serde_json::from_value(json!({"containerPort": 8443, "name": "metrics"}))
                    .expect("port"),
            );
        assert_eq!(
            reason(&inject(&p, &BTreeMap::new(), &cfg())),
            "name_conflict"
        );
    }

    #[test]
    fn host_network_is_refused() {
        let mut p = manager_with_args(&["--metrics-bind-address=:8080"]);
        p.spec.as_mut().expect("spec").host_network = Some(true);
        assert_eq!(
            reason(&inject(&p, &BTreeMap::new(), &cfg())),
            "host_network"
        );
    }

    #[test]
    fn modes() {
        let offline = InjectorConfig {
            default_opt_in: true,
            ..cfg()
        };
        let native = injected(inject(&app_pod(), &BTreeMap::new(), &offline));
        let spec = native.spec.as_ref().expect("spec");
        assert_eq!(spec.containers.len(), 1);
        let init = &spec.init_containers.as_ref().expect("init containers")[0];
        assert_eq!(
            (init.name.as_str(), init.restart_policy.as_deref()),
            (SIDECAR_NAME, Some("Always"))
        );

        let mut job = app_pod();
        job.spec.as_mut().expect("spec").restart_policy = Some("Never".into());
        job.metadata.annotations = Some(labels(&[(MODE_ANNOTATION, "classic")]));
        let Outcome::Injected {
            pod: classic,
            warnings,
        } = inject(&job, &BTreeMap::new(), &offline)
        else {
            panic!("classic mode injects");
        };
        let spec = classic.spec.as_ref().expect("spec");
        assert_eq!(spec.init_containers, None);
        assert_eq!(spec.containers[1].name, SIDECAR_NAME);
        assert_eq!(spec.containers[1].restart_policy, None);
        assert_eq!(
            get(&classic.metadata.annotations, DEFAULT_CONTAINER_ANNOTATION),
            Some("app")
        );
        assert_eq!(
            get(&classic.metadata.annotations, STATUS_ANNOTATION),
            Some("injected: classic")
        );
        assert_eq!(
            warnings.len(),
            1,
            "a classic sidecar keeps a Job's pod running"
        );

        job.metadata.annotations = Some(labels(&[(MODE_ANNOTATION, "sidecar")]));
        assert_eq!(
            reason(&inject(&job, &BTreeMap::new(), &offline)),
            "invalid_annotation"
        );
    }

    #[test]
    fn annotations_become_env() {
        let mut p = app_pod();
        p.metadata.annotations = Some(labels(&[
            ("ksit.io/probe-interval", "15s"),
            ("ksit.io/component", "argocd"),
            ("ksit.io/process-match", "argocd-server"),
            ("ksit.io/health-urls", "http://127.0.0.1:8083/healthz"),
            ("ksit.io/unknown", "ignored"),
        ]));
        let offline = InjectorConfig {
            default_opt_in: true,
            ..cfg()
        };
        let Outcome::Injected { pod: out, warnings } = inject(&p, &BTreeMap::new(), &offline)
        else {
            panic!("an opted-in pod is injected");
        };
        assert_eq!(
            warnings.len(),
            1,
            "process matching needs a shared PID namespace"
        );
        p.spec.as_mut().expect("spec").share_process_namespace = Some(true);
        let Outcome::Injected { warnings, .. } = inject(&p, &BTreeMap::new(), &offline) else {
            panic!("an opted-in pod is injected");
        };
        assert_eq!(warnings, Vec::<String>::new());
        let names: Vec<_> = sidecar(&out)
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "POD_NAME",
                "POD_NAMESPACE",
                "NODE_NAME",
                "KSIT_COMPONENT",
                "KSIT_HEALTH_URLS",
                "KSIT_PROCESS_MATCH",
                "KSIT_PROBE_INTERVAL"
            ]
        );
    }

    #[test]
    fn config_from_vars() {
        let defaults = InjectorConfig::from_vars([]).expect("defaults are valid");
        assert_eq!(defaults.image, DEFAULT_IMAGE);
        assert_eq!(defaults.mode, SidecarMode::Native);
        assert!(!defaults.default_opt_in);
        let value = serde_json::to_value(&defaults.resources).expect("json");
        assert_eq!(
            value,
            json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}})
        );

        let vars = |pairs: &[(&str, &str)]| {
            InjectorConfig::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        };
        let custom = vars(&[
            ("KSIT_SIDECAR_MODE", "classic"),
            ("KSIT_SIDECAR_CPU_LIMIT", "100m"),
            ("KSIT_SIDECAR_MEMORY_LIMIT", ""),
            ("KSIT_HEALTH_URLS", "not ours"),
        ])
        .expect("valid");
        assert_eq!(custom.mode, SidecarMode::Classic);
        let value = serde_json::to_value(&custom.resources).expect("json");
        assert_eq!(
            value,
            json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m"}})
        );

        let err = vars(&[("KSIT_SIDECAR_MODE", "sidecar")]).expect_err("invalid mode");
        assert_eq!(
            err.to_string(),
            r#"KSIT_SIDECAR_MODE="sidecar" is invalid: `native` or `classic`"#
        );
        let err = vars(&[("KSIT_SIDECAR_MEMORY_REQUEST", "16 MB")]).expect_err("invalid quantity");
        assert!(
            err.to_string()
                .starts_with(r#"KSIT_SIDECAR_MEMORY_REQUEST="16 MB" is invalid"#),
            "{err}"
        );
        assert!(vars(&[("KSIT_SIDECAR_CPU_REQUEST", "-1")]).is_err());
        assert!(vars(&[("KSIT_SIDECAR_IMAGE", " ")]).is_err());
    }

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
