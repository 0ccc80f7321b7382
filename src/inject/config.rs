//! How to inject: the sidecar's image, mode and resources, from the `KSIT_SIDECAR_*` variables.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use regex::Regex;

use crate::env::{ConfigError, Doc, Empty, Reader, Var};

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
pub const VARIABLES: &[Doc] = &[
    IMAGE.doc(),
    MODE.doc(),
    CPU_REQUEST.doc(),
    MEMORY_REQUEST.doc(),
    CPU_LIMIT.doc(),
    MEMORY_LIMIT.doc(),
    ITS_KUBECONFIG_SECRET.doc(),
    ITS_KUBECONFIG_KEY.doc(),
    TLS_SECRET.doc(),
    METRICS_AUTH.doc(),
];

const TLS_SECRET: Var<Option<String>> = Var {
    name: "KSIT_SIDECAR_TLS_SECRET",
    default: "",
    help: "a kubernetes.io/tls Secret in the pod's namespace (tls.crt, tls.key; cert-manager's): mounted into the sidecar, which then serves its port over HTTPS only (KSIT_TLS_CERT_FILE), its probes with scheme HTTPS",
    empty: Empty::Default,
    parse: secret_name,
    show: crate::env::show_optional,
};

const METRICS_AUTH: Var<bool> = Var {
    name: "KSIT_SIDECAR_METRICS_AUTH",
    default: "none",
    help: "`kubernetes` puts the sidecar's /metrics and / behind Kubernetes authentication and authorization (KSIT_METRICS_AUTH; needs KSIT_SIDECAR_TLS_SECRET), or `none`",
    empty: Empty::Default,
    parse: |v| match v {
        "none" => Ok(false),
        "kubernetes" => Ok(true),
        _ => Err("`none` or `kubernetes`".to_string()),
    },
    show: |v| if *v { "kubernetes" } else { "none" }.to_string(),
};

const ITS_KUBECONFIG_SECRET: Var<Option<String>> = Var {
    name: "KSIT_SIDECAR_ITS_KUBECONFIG_SECRET",
    default: "",
    help: "a Secret in the pod's namespace holding a kubeconfig for KubeStellar's ITS: mounted into the sidecar, which then reads ManagedClusters from the ITS (KSIT_ITS_KUBECONFIG)",
    empty: Empty::Default,
    parse: secret_name,
    show: crate::env::show_optional,
};

/// A Secret's name, or none when empty.
fn secret_name(v: &str) -> Result<Option<String>, String> {
    if v.is_empty() {
        Ok(None)
    } else if crate::config::is_dns_subdomain(v) {
        Ok(Some(v.to_string()))
    } else {
        Err("a Secret name (a DNS-1123 subdomain)".to_string())
    }
}

const ITS_KUBECONFIG_KEY: Var<String> = Var {
    name: "KSIT_SIDECAR_ITS_KUBECONFIG_KEY",
    default: "kubeconfig",
    help: "the key of that Secret that holds the kubeconfig (a vcluster's own Secret uses `config`)",
    empty: Empty::Default,
    parse: |v| {
        let valid = !v.is_empty()
            && v.len() <= 253
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if valid {
            Ok(v.to_string())
        } else {
            Err("a Secret key (letters, digits, `-`, `_` or `.`)".to_string())
        }
    },
    show: String::clone,
};

/// The ITS kubeconfig Secret the sidecar mounts, and the key in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItsSecret {
    pub name: String,
    pub key: String,
}

const IMAGE: Var<String> = Var {
    name: "KSIT_SIDECAR_IMAGE",
    default: DEFAULT_IMAGE,
    help: "the sidecar's image (`inject --image` overrides)",
    empty: Empty::Value,
    parse: image_reference,
    show: String::clone,
};

/// An image reference as a container's `image` takes it: a kubelet cannot pull one with spaces
/// or control characters, and the pod would never start.
pub fn image_reference(value: &str) -> Result<String, String> {
    if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(
            "an image reference such as ghcr.io/kubestellar/ksit-exporter:0.1.0, without spaces"
                .to_string(),
        );
    }
    Ok(value.to_string())
}

const MODE: Var<SidecarMode> = Var {
    name: "KSIT_SIDECAR_MODE",
    default: "native",
    help: "`native` (an init container with `restartPolicy: Always`, Kubernetes 1.29+) or `classic`; a pod's `ksit.io/sidecar-mode` overrides",
    empty: Empty::Default,
    parse: |v| SidecarMode::parse(v).ok_or_else(|| "`native` or `classic`".to_string()),
    show: |v| v.as_str().to_string(),
};

const CPU_REQUEST: Var<Option<Quantity>> = Var {
    name: "KSIT_SIDECAR_CPU_REQUEST",
    default: "10m",
    help: "the sidecar's CPU request; empty for none",
    empty: Empty::Value,
    parse: quantity,
    show: show_quantity,
};

const MEMORY_REQUEST: Var<Option<Quantity>> = Var {
    name: "KSIT_SIDECAR_MEMORY_REQUEST",
    default: "16Mi",
    help: "the sidecar's memory request; empty for none",
    empty: Empty::Value,
    parse: quantity,
    show: show_quantity,
};

// No CPU limit by default: CFS throttling would make scrapes slow exactly when the node is
// busy, while the memory limit already bounds what the sidecar can take from the pod.
const CPU_LIMIT: Var<Option<Quantity>> = Var {
    name: "KSIT_SIDECAR_CPU_LIMIT",
    default: "",
    help: "the sidecar's CPU limit; none by default, since throttling would slow scrapes exactly when the node is busy",
    empty: Empty::Value,
    parse: quantity,
    show: show_quantity,
};

const MEMORY_LIMIT: Var<Option<Quantity>> = Var {
    name: "KSIT_SIDECAR_MEMORY_LIMIT",
    default: "64Mi",
    help: "the sidecar's memory limit; empty for none",
    empty: Empty::Value,
    parse: quantity,
    show: show_quantity,
};

/// A Kubernetes resource quantity without a sign (resources cannot be negative).
static QUANTITY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$")
        .expect("the quantity pattern is a valid regex")
});

/// A quantity, or none when empty (so a default can be turned off).
fn quantity(value: &str) -> Result<Option<Quantity>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    if !QUANTITY.is_match(value) {
        return Err("a Kubernetes quantity such as 10m, 0.5, 64Mi or empty for none".to_string());
    }
    Ok(Some(Quantity(value.to_string())))
}

fn show_quantity(value: &Option<Quantity>) -> String {
    value.as_ref().map(|q| q.0.clone()).unwrap_or_default()
}

/// How to inject, from the `KSIT_SIDECAR_*` variables.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectorConfig {
    pub image: String,
    /// Default mode; a pod's `ksit.io/sidecar-mode` annotation overrides it.
    pub mode: SidecarMode,
    pub resources: ResourceRequirements,
    /// Inject into pods that did not opt in: false for the webhook (it must never touch unrelated
    /// pods), true for the offline command (running it is the request).
    pub default_opt_in: bool,
    /// Mounted into the sidecar when set (`KSIT_SIDECAR_ITS_KUBECONFIG_SECRET`).
    pub its_secret: Option<ItsSecret>,
    /// The serving certificate's Secret: HTTPS on the sidecar's port (`KSIT_SIDECAR_TLS_SECRET`).
    pub tls_secret: Option<String>,
    /// Callers of /metrics checked with the API server (`KSIT_SIDECAR_METRICS_AUTH`).
    pub metrics_auth: bool,
}

impl InjectorConfig {
    /// Builds the configuration from any set of variables (the commands pass the process
    /// environment, tests a map); variables that are not the injector's are ignored.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::read(&mut Reader::new(vars))
    }

    /// Reads the injector's variables; the webhook reads them beside its own.
    pub fn read(env: &mut Reader) -> Result<Self, ConfigError> {
        let image = env.read(&IMAGE)?;
        let mode = env.read(&MODE)?;
        let resources = |pairs: [(&str, Option<Quantity>); 2]| {
            let map: BTreeMap<String, Quantity> = pairs
                .into_iter()
                .filter_map(|(resource, q)| Some((resource.to_string(), q?)))
                .collect();
            (!map.is_empty()).then_some(map)
        };
        let requests = resources([
            ("cpu", env.read(&CPU_REQUEST)?),
            ("memory", env.read(&MEMORY_REQUEST)?),
        ]);
        let limits = resources([
            ("cpu", env.read(&CPU_LIMIT)?),
            ("memory", env.read(&MEMORY_LIMIT)?),
        ]);
        let its_secret = env.read(&ITS_KUBECONFIG_SECRET)?;
        let its_key = env.read(&ITS_KUBECONFIG_KEY)?;
        let tls_secret = env.read(&TLS_SECRET)?;
        let metrics_auth = env.read(&METRICS_AUTH)?;
        if metrics_auth && tls_secret.is_none() {
            return Err(ConfigError::invalid(
                METRICS_AUTH.name,
                "kubernetes",
                format!(
                    "`none` unless {} is set: callers send bearer tokens, which must not cross \
                     the network in plain HTTP",
                    TLS_SECRET.name
                ),
            ));
        }
        Ok(InjectorConfig {
            image,
            mode,
            resources: ResourceRequirements {
                requests,
                limits,
                ..Default::default()
            },
            default_opt_in: false,
            its_secret: its_secret.map(|name| ItsSecret { name, key: its_key }),
            tls_secret,
            metrics_auth,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        for image in [" ", "", "ghcr.io/x y:1", " ghcr.io/x:1", "x:1\n", "x:\u{7}"] {
            let err = vars(&[("KSIT_SIDECAR_IMAGE", image)]).expect_err(image);
            assert_eq!(err.var(), "KSIT_SIDECAR_IMAGE");
        }
        let ok = vars(&[(
            "KSIT_SIDECAR_IMAGE",
            "registry.local:5000/ksit-exporter@sha256:01",
        )]);
        assert_eq!(
            ok.expect("a digest reference").image,
            "registry.local:5000/ksit-exporter@sha256:01"
        );
    }

    /// The defaults `--help` and the README show are the ones applied.
    #[test]
    fn documented_defaults_are_the_applied_ones() {
        let explicit = InjectorConfig::from_vars(
            VARIABLES
                .iter()
                .map(|(name, default, _)| (name.to_string(), default.to_string())),
        )
        .expect("the documented defaults are valid");
        assert_eq!(
            explicit,
            InjectorConfig::from_vars([]).expect("defaults are valid")
        );
        // The table lists exactly what is read.
        let mut env = Reader::new([]);
        InjectorConfig::read(&mut env).expect("defaults are valid");
        let read: Vec<&str> = env.effective().0.iter().map(|(name, _)| *name).collect();
        let documented: Vec<&str> = VARIABLES.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(read, documented);
    }
}
