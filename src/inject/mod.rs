//! Sidecar injection: one pure function decides whether a pod gets the `ksit-exporter` sidecar and
//! returns the new pod, or the reason it does not. The admission webhook turns the result into a
//! JSONPatch and `ksit-exporter inject` writes it back into manifests; because the function reads
//! no environment and has no side effects, both (and the tests) see exactly the same decisions.
//!
//! As Linkerd's injector keeps the report apart from the patch: `decision` says whether and why
//! not, `args` reads and rewrites the containers' Go flags (the metrics takeover), `template` is
//! the sidecar container, `config` its variables; [`inject`] ties them.

mod args;
pub mod compact;
pub mod config;
mod decision;
pub mod doc;
pub mod manifests;
#[cfg(test)]
pub(crate) mod random;
mod template;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Volume};

pub use config::{DEFAULT_IMAGE, InjectorConfig, SidecarMode, VARIABLES};
pub use decision::SkipReason;
use decision::{Plan, Skip};
pub use template::{ANNOTATION_ENV, ITS_VOLUME};

/// Name of the injected container; also how an already injected pod is recognised.
pub const SIDECAR_NAME: &str = "ksit-exporter";
/// The sidecar serves its (merged) metrics on this port, named [`METRICS_PORT_NAME`].
pub const METRICS_PORT: i32 = 8080;
pub const METRICS_PORT_NAME: &str = "metrics";

/// Namespace label (`enabled`) or pod label (`true`) that opts in; `false` on the pod opts out.
pub const INJECT_KEY: &str = "ksit.io/inject";
/// Pod label every pod with the sidecar carries ([`EXPORTER_LABEL_VALUE`]): what the `ksit-monitor`
/// Service and the PodMonitor select, whatever labels the component's own install gives its pods.
pub const EXPORTER_LABEL: &str = "ksit.io/exporter";
pub const EXPORTER_LABEL_VALUE: &str = "sidecar";
/// Records the outcome on the pod: `injected: ...` or `skipped: <reason>: <detail>`.
pub const STATUS_ANNOTATION: &str = "ksit.io/inject-status";
/// Overrides the configured sidecar mode for one pod (`native` or `classic`).
pub const MODE_ANNOTATION: &str = "ksit.io/sidecar-mode";
/// `false` keeps a manager that binds its metrics on 8080 untouched (and so skips injection).
pub const TAKEOVER_ANNOTATION: &str = "ksit.io/metrics-takeover";
/// kubectl logs/exec pick this container when none is named; set in classic mode so the sidecar
/// does not become the one users land in.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
/// KSIT's manager binary: `/ksit` upstream, `manager` in kubebuilder's scaffold.
pub const DEFAULT_PROCESS_MATCH: &str = "^(ksit|manager)$";

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
    inject_elided(pod, &Elided::default(), namespace_labels, cfg)
}

/// What a pod read compactly (the webhook's) leaves out of its containers that the decision
/// still depends on, so that [`inject_elided`] of the compact pod decides as [`inject`] of the
/// whole one. A container can be left out when [`Traits::of`] shows nothing the decision reads
/// from it but the ports it uses, and no other container's outcome depends on its name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Elided {
    /// Ports in the range a manager's metrics can be moved to that left-out containers declare
    /// or bind.
    pub ports: BTreeSet<i32>,
    /// Every container binding its metrics on port 8080, in order (containers, then init
    /// containers), when some of them were left out: only their names are then read.
    pub managers: Option<Vec<String>>,
}

impl Elided {
    /// Records the ports a left-out container uses.
    pub fn add_ports(&mut self, c: &Container) {
        self.ports
            .extend(args::used_ports(c).filter(|p| args::TAKEOVER_PORTS.contains(p)));
    }
}

/// What the decision reads from one container, besides the ports it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Traits {
    /// Named as the sidecar: the first such container decides whether the pod has it.
    pub sidecar_named: bool,
    /// Binds its metrics on port 8080: a manager whose metrics the sidecar takes over.
    pub manager: bool,
    /// Would clash with the sidecar's port or port name: the first such container is refused.
    pub conflict: bool,
    /// Names a health-probe port: the first such container gives the sidecar's health URLs.
    pub health: bool,
}

impl Traits {
    pub fn of(c: &Container) -> Traits {
        Traits {
            sidecar_named: c.name == SIDECAR_NAME,
            manager: args::binds_metrics_on_8080(c),
            conflict: decision::container_conflict(c).is_some(),
            health: args::container_health_port(c).is_some(),
        }
    }
}

/// [`inject`] of a pod some of whose containers were left out, as [`Elided`] says.
pub fn inject_elided(
    pod: &Pod,
    elided: &Elided,
    namespace_labels: &BTreeMap<String, String>,
    cfg: &InjectorConfig,
) -> Outcome {
    match with_sidecar(pod, elided, namespace_labels, cfg) {
        Ok(outcome) => outcome,
        Err(Skip {
            reason,
            detail,
            annotate,
        }) => Outcome::Skipped {
            pod: annotate.then(|| {
                with_annotation(
                    pod.clone(),
                    STATUS_ANNOTATION,
                    format!("skipped: {reason}: {detail}"),
                )
            }),
            reason,
            detail,
        },
    }
}

fn with_sidecar(
    pod: &Pod,
    elided: &Elided,
    namespace_labels: &BTreeMap<String, String>,
    cfg: &InjectorConfig,
) -> Result<Outcome, Skip> {
    let Plan { mode, takeover } = decision::admit(pod, namespace_labels, cfg)?;
    let mut spec = pod.spec.clone().unwrap_or_default();

    // A controller-runtime manager binding its metrics on 8080 (KSIT's as shipped): move them to a
    // free loopback port and let the sidecar serve them merged with its own.
    let mut defaults = BTreeMap::new();
    let mut status = format!("injected: {}", mode.as_str());
    let managers = match &elided.managers {
        Some(all) => all.clone(),
        None => args::metrics_on_8080(&spec),
    };
    if let Some(name) = decision::metrics_owner(&managers, takeover)? {
        let port = args::free_port(&spec, &elided.ports).ok_or_else(|| {
            Skip::refused(
                SkipReason::PortConflict,
                format!("no free port to move the metrics of container {name} to"),
            )
        })?;
        let manager = containers_mut(&mut spec)
            .find(|c| c.name == name)
            .expect("the manager was found in this spec above");
        args::take_over_metrics(manager, port);
        defaults.insert(
            "KSIT_UPSTREAM_METRICS_URL",
            format!("http://127.0.0.1:{port}/metrics"),
        );
        status += &format!(", metrics of container {name} moved to 127.0.0.1:{port}");
    }
    if let Some((reason, detail)) = decision::find_conflict(&spec) {
        return Err(Skip::refused(reason, detail));
    }

    // KSIT's manager shape: its health endpoints are the ones to probe.
    if let Some(port) = args::health_port(&spec) {
        defaults.insert(
            "KSIT_HEALTH_URLS",
            format!("http://127.0.0.1:{port}/healthz,http://127.0.0.1:{port}/readyz"),
        );
    }
    // Only a pod that shares its PID namespace lets the sidecar see the manager's process.
    if spec.share_process_namespace == Some(true) {
        defaults.insert("KSIT_PROCESS_MATCH", DEFAULT_PROCESS_MATCH.to_string());
    }
    let env = template::ksit_env(pod, defaults);
    decision::check_env(&env)?;
    let sidecar = template::sidecar_container(cfg, mode, env);

    let annotation = |key: &str| get(&pod.metadata.annotations, key);
    let mut warnings = Vec::new();
    // Containers do not see each other's processes unless the pod shares one PID namespace.
    if annotation("ksit.io/process-match").is_some() && spec.share_process_namespace != Some(true) {
        warnings.push(
            "ksit.io/process-match only sees the sidecar's own processes unless the pod sets shareProcessNamespace: true"
                .to_string(),
        );
    }
    if let Some(secret) = &cfg.its_secret {
        add_volume(&mut spec, template::its_volume(secret), "ITS kubeconfig")?;
    }
    if let Some(secret) = &cfg.tls_secret {
        add_volume(
            &mut spec,
            template::tls_volume(secret),
            "serving certificate",
        )?;
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
    new.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(EXPORTER_LABEL.to_string(), EXPORTER_LABEL_VALUE.to_string());
    Ok(Outcome::Injected {
        pod: with_annotation(new, STATUS_ANNOTATION, status),
        warnings,
    })
}

fn get<'a>(map: &'a Option<BTreeMap<String, String>>, key: &str) -> Option<&'a str> {
    map.as_ref()?.get(key).map(String::as_str)
}

/// Adds a volume the sidecar mounts (its `what`); a pod that already has a volume of that name
/// is refused rather than silently given the sidecar's.
fn add_volume(spec: &mut PodSpec, volume: Volume, what: &str) -> Result<(), Skip> {
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    if volumes.iter().any(|v| v.name == volume.name) {
        return Err(Skip::refused(
            SkipReason::NameConflict,
            format!(
                "the pod already has a volume named {}, which the sidecar's {what} needs",
                volume.name
            ),
        ));
    }
    volumes.push(volume);
    Ok(())
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

        // Recognised by a container of that name with our image (any release or mirror) in
        // either list, or by the status annotation of an injection.
        for p in [
            pod(
                json!({"spec": {"containers": [{"name": "ksit-exporter", "image": "sidecar:test"}]}}),
            ),
            pod(
                json!({"spec": {"containers": [{"name": "a"}], "initContainers": [{"name": "ksit-exporter", "image": "ghcr.io/kubestellar/ksit-exporter:0.0.9"}]}}),
            ),
            pod(
                json!({"spec": {"containers": [{"name": "ksit-exporter", "image": "registry.local:5000/mirror/ksit-exporter@sha256:0123"}]}}),
            ),
            pod(
                json!({"metadata": {"annotations": {STATUS_ANNOTATION: "injected: classic"}}, "spec": {"containers": [{"name": "a"}]}}),
            ),
            pod(
                json!({"metadata": {"annotations": {STATUS_ANNOTATION: "injected: native"}}, "spec": {"containers": [{"name": "ksit-exporter", "image": "renamed:1"}]}}),
            ),
        ] {
            assert_eq!(
                reason(&inject(&p, &BTreeMap::new(), &offline)),
                "already_injected"
            );
        }
    }

    #[test]
    fn a_foreign_container_of_the_sidecars_name_is_refused_not_taken_for_it() {
        let offline = InjectorConfig {
            default_opt_in: true,
            ..cfg()
        };
        for image in [
            Some("busybox:1.36"),
            Some("ksit-exporter-helper:1"),
            Some("ksit-exporter.example.com:5000/app:1"),
            None,
        ] {
            let mut container = json!({"name": "ksit-exporter"});
            if let Some(image) = image {
                container["image"] = json!(image);
            }
            let p = pod(json!({"spec": {"containers": [{"name": "a"}, container]}}));
            let outcome = inject(&p, &BTreeMap::new(), &offline);
            let Outcome::Skipped {
                reason,
                detail,
                pod: Some(refused),
            } = &outcome
            else {
                panic!("{image:?}: expected a refusal, got {outcome:?}");
            };
            assert_eq!(*reason, SkipReason::NameConflict, "{image:?}");
            assert!(detail.contains("is not the sidecar"), "{detail}");
            assert_eq!(refused.spec, p.spec, "nothing but the status changes");
            assert_eq!(
                refused.metadata.labels, p.metadata.labels,
                "a refused pod is not selected as one with the sidecar"
            );
            // The refusal is stable: the status it wrote does not make the container ours.
            assert_eq!(inject(refused, &BTreeMap::new(), &offline), outcome);
        }
        // A pod that did not opt in is left alone whatever its containers are called.
        let p = pod(json!({"spec": {"containers": [{"name": "ksit-exporter", "image": "x"}]}}));
        assert_eq!(
            reason(&inject(&p, &BTreeMap::new(), &cfg())),
            "not_opted_in"
        );
    }

    fn with_annotations(pairs: &[(&str, &str)]) -> Outcome {
        let mut p = app_pod();
        p.metadata.annotations = Some(labels(pairs));
        let offline = InjectorConfig {
            default_opt_in: true,
            ..cfg()
        };
        inject(&p, &BTreeMap::new(), &offline)
    }

    fn refusal(outcome: &Outcome) -> (&'static str, String) {
        match outcome {
            Outcome::Skipped {
                reason,
                detail,
                pod: Some(p),
            } => {
                assert_eq!(
                    get(&p.metadata.annotations, STATUS_ANNOTATION),
                    Some(format!("skipped: {reason}: {detail}").as_str())
                );
                (reason.as_str(), detail.clone())
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn annotations_the_sidecar_cannot_start_with_are_refused() {
        let cases = [
            (
                ("ksit.io/probe-interval", "soon"),
                r#"ksit.io/probe-interval="soon", expected a duration from 10ms to 1h such as `10s`, `500ms` or `1m`"#,
            ),
            (
                ("ksit.io/health-urls", "ftp://x"),
                "ksit.io/health-urls=\"ftp://x\", expected an http:// URL with a host",
            ),
            (
                ("ksit.io/upstream-metrics-url", "http://a/m,http://b/m"),
                "ksit.io/upstream-metrics-url=\"http://a/m,http://b/m\", expected one http:// URL",
            ),
            (
                ("ksit.io/upstream-max-bytes", "18446744073709551615"),
                "ksit.io/upstream-max-bytes=\"18446744073709551615\", expected a byte count",
            ),
            (
                ("ksit.io/process-match", "manager("),
                "ksit.io/process-match=\"manager(\", expected a process name or regular expression",
            ),
            (
                ("ksit.io/log-format", "yaml"),
                "ksit.io/log-format=\"yaml\", expected `text` or `json`",
            ),
            (
                ("ksit.io/component", "argo cd"),
                "ksit.io/component=\"argo cd\", expected a Kubernetes label value",
            ),
            // The one the pod set is blamed, and named as the annotation it set.
            (
                ("ksit.io/probe-interval", "10ms"),
                r#"ksit.io/probe-interval="10ms", expected a duration no shorter than ksit.io/probe-timeout (2s)"#,
            ),
            (
                ("ksit.io/probe-timeout", "20s"),
                r#"ksit.io/probe-timeout="20s", expected a duration no longer than ksit.io/probe-interval (10s)"#,
            ),
        ];
        for ((key, value), expected) in cases {
            let (reason, detail) = refusal(&with_annotations(&[(key, value)]));
            assert_eq!(reason, "invalid_annotation", "{key}={value}");
            assert!(detail.starts_with(expected), "{key}={value}: {detail}");
        }
        // Credentials are masked, and a long value is quoted short and escaped.
        let (_, detail) = refusal(&with_annotations(&[(
            "ksit.io/health-urls",
            "http://user:secret@127.0.0.1:1/x,ftp://y",
        )]));
        assert!(!detail.contains("secret"), "{detail}");
        let long = format!("a\n{}", "x".repeat(100_000));
        for key in ["ksit.io/component", MODE_ANNOTATION, TAKEOVER_ANNOTATION] {
            let (_, detail) = refusal(&with_annotations(&[(key, &long)]));
            assert!(detail.len() < 400, "{key}: {} bytes", detail.len());
            assert!(detail.contains("=\"a\\nxxx"), "{key}: escaped: {detail}");
            assert!(detail.contains("(100002 bytes)"), "{key}: {detail}");
        }
        // Valid values, a timeout and interval that agree, are injected.
        assert_eq!(
            reason(&with_annotations(&[
                ("ksit.io/probe-interval", "1s"),
                ("ksit.io/probe-timeout", "500ms"),
                ("ksit.io/upstream-max-bytes", "1048576"),
            ])),
            "injected"
        );
    }

    /// Every annotation that becomes a variable is checked by the exporter's own table.
    #[test]
    fn every_annotation_variable_is_an_exporter_variable() {
        for (key, var) in ANNOTATION_ENV {
            assert!(
                crate::config::VARIABLES
                    .iter()
                    .any(|(name, _, _)| name == var),
                "{key} becomes {var}, which the exporter does not read"
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
        for pod in [&native, &classic] {
            assert_eq!(
                get(&pod.metadata.labels, EXPORTER_LABEL),
                Some(EXPORTER_LABEL_VALUE),
                "the Service selects every injected pod by this label"
            );
        }
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
    fn a_shared_pid_namespace_measures_ksits_binary_by_default() {
        let offline = InjectorConfig {
            default_opt_in: true,
            ..cfg()
        };
        let process_match = |share: Option<bool>| {
            let mut p = app_pod();
            p.spec.as_mut().expect("spec").share_process_namespace = share;
            let Outcome::Injected { pod: out, .. } = inject(&p, &BTreeMap::new(), &offline) else {
                panic!("an opted-in pod is injected");
            };
            sidecar(&out)
                .env
                .iter()
                .flatten()
                .find(|e| e.name == "KSIT_PROCESS_MATCH")
                .and_then(|e| e.value.clone())
        };
        assert_eq!(process_match(None), None, "it could not see the manager");
        assert_eq!(
            process_match(Some(true)).as_deref(),
            Some(DEFAULT_PROCESS_MATCH)
        );
        let re = regex::Regex::new(DEFAULT_PROCESS_MATCH).expect("a valid regex");
        assert!(re.is_match("ksit") && re.is_match("manager"));
        assert!(!re.is_match("ksit-exporter") && !re.is_match("kube-manager"));
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
}

#[cfg(test)]
mod its_tests {
    use super::*;
    use serde_json::json;

    /// With KSIT_SIDECAR_ITS_KUBECONFIG_SECRET the sidecar mounts the Secret read-only and is
    /// told where the kubeconfig is; the key is mapped to the file name it reads.
    #[test]
    fn the_its_kubeconfig_secret_is_mounted_into_the_sidecar() {
        let cfg = InjectorConfig {
            default_opt_in: true,
            ..InjectorConfig::from_vars([
                (
                    "KSIT_SIDECAR_ITS_KUBECONFIG_SECRET".to_string(),
                    "its1-kubeconfig".to_string(),
                ),
                (
                    "KSIT_SIDECAR_ITS_KUBECONFIG_KEY".to_string(),
                    "config".to_string(),
                ),
            ])
            .expect("valid")
        };
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "m"},
            "spec": {"containers": [{"name": "manager", "image": "m"}]},
        }))
        .expect("a pod");
        let Outcome::Injected { pod, .. } = inject(&pod, &BTreeMap::new(), &cfg) else {
            panic!("not injected");
        };
        let v = serde_json::to_value(&pod).expect("JSON");
        assert_eq!(
            v["spec"]["volumes"],
            json!([{"name": "ksit-its-kubeconfig", "secret": {
                "secretName": "its1-kubeconfig", "items": [{"key": "config", "path": "kubeconfig"}]}}])
        );
        let sidecar = &v["spec"]["initContainers"][0];
        assert_eq!(
            sidecar["volumeMounts"],
            json!([{"name": "ksit-its-kubeconfig", "mountPath": "/var/run/secrets/ksit.io/its", "readOnly": true}])
        );
        assert!(
            sidecar["env"].as_array().expect("env").contains(&json!(
                {"name": "KSIT_ITS_KUBECONFIG", "value": "/var/run/secrets/ksit.io/its/kubeconfig"}
            )),
            "{sidecar}"
        );
        // A pod that already has a volume of that name is refused, not silently remounted.
        let taken = pod_with_volume();
        assert!(matches!(
            inject(&taken, &BTreeMap::new(), &cfg),
            Outcome::Skipped { .. }
        ));
        assert!(
            InjectorConfig::from_vars([(
                "KSIT_SIDECAR_ITS_KUBECONFIG_SECRET".to_string(),
                "Not_A_Name".to_string()
            )])
            .is_err()
        );
    }

    fn pod_with_volume() -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "m"},
            "spec": {"containers": [{"name": "manager", "image": "m"}],
                     "volumes": [{"name": "ksit-its-kubeconfig", "emptyDir": {}}]},
        }))
        .expect("a pod")
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;
    use serde_json::json;

    fn cfg(vars: &[(&str, &str)]) -> Result<InjectorConfig, crate::env::ConfigError> {
        InjectorConfig::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string()))).map(
            |c| InjectorConfig {
                default_opt_in: true,
                ..c
            },
        )
    }

    /// With KSIT_SIDECAR_TLS_SECRET the sidecar mounts the Secret read-only, serves HTTPS from
    /// it and is probed over HTTPS; with KSIT_SIDECAR_METRICS_AUTH it checks callers.
    #[test]
    fn the_serving_certificate_secret_makes_the_sidecar_serve_https() {
        let cfg = cfg(&[
            ("KSIT_SIDECAR_TLS_SECRET", "ksit-exporter-metrics-tls"),
            ("KSIT_SIDECAR_METRICS_AUTH", "kubernetes"),
        ])
        .expect("valid");
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "m"},
            "spec": {"containers": [{"name": "manager", "image": "m"}]},
        }))
        .expect("a pod");
        let Outcome::Injected { pod, .. } = inject(&pod, &BTreeMap::new(), &cfg) else {
            panic!("not injected");
        };
        let v = serde_json::to_value(&pod).expect("JSON");
        assert_eq!(
            v["spec"]["volumes"],
            json!([{"name": "ksit-exporter-tls", "secret": {"secretName": "ksit-exporter-metrics-tls"}}])
        );
        let sidecar = &v["spec"]["initContainers"][0];
        assert_eq!(
            sidecar["volumeMounts"],
            json!([{"name": "ksit-exporter-tls", "mountPath": "/var/run/secrets/ksit.io/tls", "readOnly": true}])
        );
        let env = sidecar["env"].as_array().expect("env");
        for (name, value) in [
            ("KSIT_TLS_CERT_FILE", "/var/run/secrets/ksit.io/tls/tls.crt"),
            ("KSIT_TLS_KEY_FILE", "/var/run/secrets/ksit.io/tls/tls.key"),
            ("KSIT_METRICS_AUTH", "kubernetes"),
        ] {
            assert!(
                env.contains(&json!({"name": name, "value": value})),
                "{name} in {sidecar}"
            );
        }
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(sidecar[probe]["httpGet"]["scheme"], "HTTPS", "{sidecar}");
        }
        // Without the Secret nothing of it is there, and the probes stay plain HTTP.
        let plain = InjectorConfig {
            default_opt_in: true,
            ..InjectorConfig::from_vars([]).expect("defaults")
        };
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "m"},
            "spec": {"containers": [{"name": "manager", "image": "m"}]},
        }))
        .expect("a pod");
        let Outcome::Injected { pod, .. } = inject(&pod, &BTreeMap::new(), &plain) else {
            panic!("not injected");
        };
        let v = serde_json::to_value(&pod).expect("JSON");
        let sidecar = &v["spec"]["initContainers"][0];
        assert!(sidecar.get("volumeMounts").is_none(), "{sidecar}");
        assert!(sidecar["livenessProbe"]["httpGet"].get("scheme").is_none());
    }

    #[test]
    fn checking_callers_needs_the_certificate() {
        let err = cfg(&[("KSIT_SIDECAR_METRICS_AUTH", "kubernetes")]).expect_err("no TLS");
        assert!(
            err.to_string()
                .starts_with("KSIT_SIDECAR_METRICS_AUTH=\"kubernetes\" is invalid: `none` unless KSIT_SIDECAR_TLS_SECRET"),
            "{err}"
        );
        assert!(cfg(&[("KSIT_SIDECAR_METRICS_AUTH", "basic")]).is_err());
        assert!(cfg(&[("KSIT_SIDECAR_TLS_SECRET", "Not_A_Name")]).is_err());
    }
}
