//! Sidecar injection: one pure function decides whether a pod gets the `ksit-exporter` sidecar and
//! returns the new pod, or the reason it does not. The admission webhook turns the result into a
//! JSONPatch and `ksit-exporter inject` writes it back into manifests; because the function reads
//! no environment and has no side effects, both (and the tests) see exactly the same decisions.
//!
//! As Linkerd's injector keeps the report apart from the patch: `decision` says whether and why
//! not, `args` reads and rewrites the containers' Go flags (the metrics takeover), `template` is
//! the sidecar container, `config` its variables; [`inject`] ties them.

mod args;
pub mod config;
mod decision;
pub mod manifests;
mod template;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};

pub use config::{DEFAULT_IMAGE, InjectorConfig, SidecarMode, VARIABLES};
pub use decision::SkipReason;
use decision::{Plan, Skip};
pub use template::ANNOTATION_ENV;

/// Name of the injected container; also how an already injected pod is recognised.
pub const SIDECAR_NAME: &str = "ksit-exporter";
/// The sidecar serves its (merged) metrics on this port, named [`METRICS_PORT_NAME`].
pub const METRICS_PORT: i32 = 8080;
pub const METRICS_PORT_NAME: &str = "metrics";

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
    match with_sidecar(pod, namespace_labels, cfg) {
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
    namespace_labels: &BTreeMap<String, String>,
    cfg: &InjectorConfig,
) -> Result<Outcome, Skip> {
    let Plan { mode, takeover } = decision::admit(pod, namespace_labels, cfg)?;
    let mut spec = pod.spec.clone().unwrap_or_default();

    // A controller-runtime manager binding its metrics on 8080 (KSIT's as shipped): move them to a
    // free loopback port and let the sidecar serve them merged with its own.
    let mut defaults = BTreeMap::new();
    let mut status = format!("injected: {}", mode.as_str());
    let managers = args::metrics_on_8080(&spec);
    if let Some(name) = decision::metrics_owner(&managers, takeover)? {
        let port = args::free_port(&spec).ok_or_else(|| {
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
    let sidecar = template::sidecar_container(cfg, mode, template::ksit_env(pod, defaults));

    let annotation = |key: &str| get(&pod.metadata.annotations, key);
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
    Ok(Outcome::Injected {
        pod: with_annotation(new, STATUS_ANNOTATION, status),
        warnings,
    })
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
}
