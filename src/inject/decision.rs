//! Whether a pod gets the sidecar, and why not: opt-in and opt-out, a sidecar already there (or
//! a container of someone else's under its name), the pod's own annotations (which the sidecar
//! must be able to start with), the node's network, and anything that would clash with the
//! sidecar's port or port name. Nothing here changes the pod.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::args::{bound_ports, is_tcp};
use super::{
    ANNOTATION_ENV, INJECT_KEY, InjectorConfig, METRICS_PORT, METRICS_PORT_NAME, MODE_ANNOTATION,
    SIDECAR_NAME, STATUS_ANNOTATION, SidecarMode, TAKEOVER_ANNOTATION, containers, get,
};
use crate::config::Config;
use crate::env::ConfigError;
use crate::telemetry::excerpt;

/// How much of an annotation's value a status or warning quotes, in characters: a value may be
/// as long as the pod's annotations allow, and the status annotation must stay well inside that.
const VALUE_EXCERPT: usize = 64;

/// Why a pod did not get the sidecar. [`SkipReason::as_str`] is stable (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    NotOptedIn,
    OptedOut,
    AlreadyInjected,
    /// `hostNetwork: true`: port 8080 would be the node's, shared with everything on it.
    HostNetwork,
    PortConflict,
    /// A port named `metrics`, or a container named `ksit-exporter` that is not the sidecar.
    NameConflict,
    /// An annotation the sidecar could not start with, or an unknown mode or takeover value.
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

/// Why a pod is not injected.
#[derive(Debug)]
pub(super) struct Skip {
    pub reason: SkipReason,
    pub detail: String,
    /// The pod asked for the sidecar and cannot have it: its status annotation says why. Otherwise
    /// (not opted in, opted out, already injected) it is left exactly as it came.
    pub annotate: bool,
}

impl Skip {
    fn untouched(reason: SkipReason, detail: &str) -> Self {
        Skip {
            reason,
            detail: detail.to_string(),
            annotate: false,
        }
    }

    pub(super) fn refused(reason: SkipReason, detail: String) -> Self {
        Skip {
            reason,
            detail,
            annotate: true,
        }
    }
}

/// What an admitted pod gets.
#[derive(Debug)]
pub(super) struct Plan {
    pub mode: SidecarMode,
    /// Whether a manager binding its metrics on 8080 may have them moved.
    pub takeover: bool,
}

/// Whether `pod` is to get the sidecar, from its labels and annotations, its namespace's labels
/// and its network.
pub(super) fn admit(
    pod: &Pod,
    namespace_labels: &BTreeMap<String, String>,
    cfg: &InjectorConfig,
) -> Result<Plan, Skip> {
    let annotation = |key: &str| get(&pod.metadata.annotations, key);
    let label = |key: &str| get(&pod.metadata.labels, key);

    if annotation(INJECT_KEY) == Some("false") || label(INJECT_KEY) == Some("false") {
        return Err(Skip::untouched(
            SkipReason::OptedOut,
            "the pod sets ksit.io/inject=false",
        ));
    }
    let opted_in = cfg.default_opt_in
        || namespace_labels.get(INJECT_KEY).map(String::as_str) == Some("enabled")
        || label(INJECT_KEY) == Some("true");
    if !opted_in {
        return Err(Skip::untouched(
            SkipReason::NotOptedIn,
            "neither the namespace (ksit.io/inject=enabled) nor the pod (ksit.io/inject=true) opts in",
        ));
    }
    // A container of the sidecar's name is ours when we wrote it (the status says so) or when it
    // runs our image (added by hand as manifests/sidecar shows, maybe from a mirror).
    let injected = annotation(STATUS_ANNOTATION).is_some_and(|s| s.starts_with("injected"));
    let named = pod
        .spec
        .iter()
        .flat_map(containers)
        .find(|c| c.name == SIDECAR_NAME);
    if let Some(c) = named
        && !injected
        && !c.image.as_deref().is_some_and(|i| is_ours(i, cfg))
    {
        let image = c.image.as_deref().unwrap_or_default();
        return Err(Skip::refused(
            SkipReason::NameConflict,
            format!(
                "a container named {SIDECAR_NAME} (image \"{}\") is not the sidecar: the pod has no {STATUS_ANNOTATION} of an injection and the image is not ksit-exporter; rename the container",
                excerpt(image.as_bytes(), VALUE_EXCERPT)
            ),
        ));
    }
    if injected || named.is_some() {
        return Err(Skip::untouched(
            SkipReason::AlreadyInjected,
            "the pod already has the sidecar",
        ));
    }

    let mode = match annotation(MODE_ANNOTATION) {
        None => cfg.mode,
        Some(value) => SidecarMode::parse(value).ok_or_else(|| {
            Skip::refused(
                SkipReason::InvalidAnnotation,
                format!(
                    "{}, expected native or classic",
                    quoted(MODE_ANNOTATION, value)
                ),
            )
        })?,
    };
    let takeover = match annotation(TAKEOVER_ANNOTATION) {
        None | Some("true") => true,
        Some("false") => false,
        Some(value) => {
            return Err(Skip::refused(
                SkipReason::InvalidAnnotation,
                format!(
                    "{}, expected true or false",
                    quoted(TAKEOVER_ANNOTATION, value)
                ),
            ));
        }
    };
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return Err(Skip::refused(
            SkipReason::HostNetwork,
            format!(
                "the pod uses the node's network, where port {METRICS_PORT} is not the pod's to take"
            ),
        ));
    }
    Ok(Plan { mode, takeover })
}

/// Whether `image` is the sidecar's: the configured image, or any image whose repository is
/// named `ksit-exporter` (another release, a mirror, a digest).
fn is_ours(image: &str, cfg: &InjectorConfig) -> bool {
    if image == cfg.image {
        return true;
    }
    let name = image.split_once('@').map_or(image, |(name, _)| name);
    // A tag follows the last `:` after the last `/`; a `:` before it is a registry's port.
    let path = name.rsplit_once('/').map_or(name, |(_, last)| last);
    path.split_once(':').map_or(path, |(repo, _)| repo) == SIDECAR_NAME
}

/// `key="value"`, the value cut short and escaped.
fn quoted(key: &str, value: &str) -> String {
    format!("{key}=\"{}\"", excerpt(value.as_bytes(), VALUE_EXCERPT))
}

/// Refuses a sidecar environment the sidecar would not start with: it goes through the
/// exporter's own configuration, so whatever would make the sidecar exit 2 refuses the pod
/// instead, naming the annotation the value came from.
pub(super) fn check_env(env: &[EnvVar]) -> Result<(), Skip> {
    let vars = env
        .iter()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)));
    let Err(err) = Config::from_vars(vars) else {
        return Ok(());
    };
    let key = ANNOTATION_ENV
        .iter()
        .find(|(_, var)| *var == err.var())
        .map(|(key, _)| *key);
    let detail = match (&err, key) {
        (
            ConfigError::Invalid {
                value, expected, ..
            },
            Some(key),
        ) => {
            // Speak of the annotations the pod sets, not of the variables they become.
            let expected = ANNOTATION_ENV
                .iter()
                .fold(expected.clone(), |text, (key, var)| text.replace(var, key));
            format!("{}, expected {expected}", quoted(key, value))
        }
        // Only annotations are the pod's; anything else would be the injector's own mistake.
        _ => format!("the sidecar would not start: {err}"),
    };
    Err(Skip::refused(SkipReason::InvalidAnnotation, detail))
}

/// Of the containers binding their metrics on port 8080, the one whose metrics the sidecar takes
/// over, if any: one such container is moved unless the pod said not to; several cannot all sit
/// behind one sidecar.
pub(super) fn metrics_owner(managers: &[String], takeover: bool) -> Result<Option<&str>, Skip> {
    match managers {
        [] => Ok(None),
        [name] if takeover => Ok(Some(name)),
        [name] => Err(Skip::refused(
            SkipReason::PortConflict,
            format!(
                "container {name} binds its metrics on port {METRICS_PORT} and {TAKEOVER_ANNOTATION}=false"
            ),
        )),
        names => Err(Skip::refused(
            SkipReason::PortConflict,
            format!(
                "containers {} all bind their metrics on port {METRICS_PORT}",
                names.join(", ")
            ),
        )),
    }
}

/// Anything left that would clash with the sidecar's port 8080 or its port name `metrics`.
pub(super) fn find_conflict(spec: &PodSpec) -> Option<(SkipReason, String)> {
    containers(spec).find_map(container_conflict)
}

/// What of this container alone would clash with the sidecar's port or port name.
pub(super) fn container_conflict(c: &Container) -> Option<(SkipReason, String)> {
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
    None
}
