//! The sidecar container: what `inject` adds to a pod, and what `manifests/sidecar` and the
//! docs show by hand (tests/sidecar_spec.rs keeps them equal).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    ObjectFieldSelector, Pod, Probe, SeccompProfile, SecretVolumeSource, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::ItsSecret;
use super::{InjectorConfig, METRICS_PORT, METRICS_PORT_NAME, SIDECAR_NAME, SidecarMode, get};

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

/// The sidecar's `KSIT_*` variables: each from the pod's annotation, else from what the
/// injection worked out (`defaults`, by variable name).
pub(super) fn ksit_env(pod: &Pod, mut defaults: BTreeMap<&str, String>) -> Vec<EnvVar> {
    ANNOTATION_ENV
        .iter()
        .filter_map(|(key, var)| {
            let value = get(&pod.metadata.annotations, key)
                .map(str::to_string)
                .or_else(|| defaults.remove(var))?;
            Some(EnvVar {
                name: (*var).to_string(),
                value: Some(value),
                ..Default::default()
            })
        })
        .collect()
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

/// A probe of the sidecar's port; over HTTPS when it serves TLS (the kubelet does not verify
/// the certificate of an HTTPS probe).
fn http_probe(path: &str, https: bool) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(METRICS_PORT_NAME.to_string()),
            scheme: https.then(|| "HTTPS".to_string()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod volume and the sidecar's mount of its serving certificate's Secret.
pub(super) const TLS_VOLUME: &str = "ksit-exporter-tls";
const TLS_MOUNT_DIR: &str = "/var/run/secrets/ksit.io/tls";

pub(super) fn tls_volume(secret: &str) -> Volume {
    Volume {
        name: TLS_VOLUME.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod volume and the sidecar's mount of the ITS kubeconfig Secret.
pub const ITS_VOLUME: &str = "ksit-its-kubeconfig";
const ITS_MOUNT_DIR: &str = "/var/run/secrets/ksit.io/its";

pub(super) fn its_volume(secret: &ItsSecret) -> Volume {
    Volume {
        name: ITS_VOLUME.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.name.clone()),
            items: Some(vec![KeyToPath {
                key: secret.key.clone(),
                path: "kubeconfig".to_string(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn sidecar_container(
    cfg: &InjectorConfig,
    mode: SidecarMode,
    ksit_env: Vec<EnvVar>,
) -> Container {
    // The pod name comes from the downward API at run time: pods created from generateName have
    // no name yet when they are admitted.
    let mut env = vec![
        downward("POD_NAME", "metadata.name"),
        downward("POD_NAMESPACE", "metadata.namespace"),
        downward("NODE_NAME", "spec.nodeName"),
    ];
    env.extend(ksit_env);
    let set = |env: &mut Vec<EnvVar>, name: &str, value: String| {
        env.push(EnvVar {
            name: name.to_string(),
            value: Some(value),
            ..Default::default()
        });
    };
    let mount = |name: &str, dir: &str| VolumeMount {
        name: name.to_string(),
        mount_path: dir.to_string(),
        read_only: Some(true),
        ..Default::default()
    };
    let mut mounts = Vec::new();
    if cfg.its_secret.is_some() {
        set(
            &mut env,
            "KSIT_ITS_KUBECONFIG",
            format!("{ITS_MOUNT_DIR}/kubeconfig"),
        );
        mounts.push(mount(ITS_VOLUME, ITS_MOUNT_DIR));
    }
    let https = cfg.tls_secret.is_some();
    if https {
        set(
            &mut env,
            "KSIT_TLS_CERT_FILE",
            format!("{TLS_MOUNT_DIR}/tls.crt"),
        );
        set(
            &mut env,
            "KSIT_TLS_KEY_FILE",
            format!("{TLS_MOUNT_DIR}/tls.key"),
        );
        mounts.push(mount(TLS_VOLUME, TLS_MOUNT_DIR));
    }
    if cfg.metrics_auth {
        set(&mut env, "KSIT_METRICS_AUTH", "kubernetes".to_string());
    }
    Container {
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
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
        liveness_probe: Some(http_probe("/healthz", https)),
        readiness_probe: Some(http_probe("/readyz", https)),
        restart_policy: (mode == SidecarMode::Native).then(|| "Always".to_string()),
        ..Default::default()
    }
}
