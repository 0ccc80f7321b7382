//! The exporter's configuration (`serve` and `check-config`): one [`Var`] per environment
//! variable, validated before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hyper::Uri;
use regex::{Regex, RegexBuilder};

use crate::env::{self, ConfigError, Doc, Effective, Empty, Reader, Var};
pub use crate::telemetry::LogFormat;
use crate::telemetry::{LOG_FORMAT, redact};

/// Whether to read the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeMode {
    Auto,
    On,
    Off,
}

/// Which sidecar exports the Integration and IntegrationTarget series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrMetrics {
    Leader,
    Always,
    Never,
    /// Each replica's sidecar exports its share of the objects (see [`crate::kube::shard`]).
    Sharded,
}

/// This sidecar's shard when set by hand (`KSIT_SHARD=INDEX/TOTAL`): `index` < `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub total: u32,
}

/// Who may read `/metrics` and the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAuth {
    /// Anyone who can reach the port.
    None,
    /// Callers whose bearer token the API server authenticates and whose user may `get` the
    /// path (see [`crate::auth`]).
    Kubernetes,
}

/// Namespaces whose KSIT objects are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    /// All of them, as KSIT's manager reads (its ClusterRole covers every namespace).
    All,
    List(Vec<String>),
}

/// One local health endpoint to probe.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthTarget {
    pub name: String,
    pub url: Uri,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub health_targets: Vec<HealthTarget>,
    pub upstream_url: Option<Uri>,
    pub upstream_max_bytes: usize,
    pub process_match: Option<Regex>,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub component: Option<String>,
    pub log_format: LogFormat,
    pub kubernetes: KubeMode,
    pub watch_namespaces: Namespaces,
    pub leader_lease: String,
    pub cr_metrics: CrMetrics,
    pub shard: Option<Shard>,
    pub ocm_clusters: bool,
    pub its_kubeconfig: Option<PathBuf>,
    pub max_objects: usize,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub node_name: Option<String>,
    /// HTTPS on the listen address, from these files.
    pub tls: Option<crate::tls::Files>,
    pub tls_reload_interval: Duration,
    pub metrics_auth: MetricsAuth,
}

/// Every variable the exporter reads, in the order `check-config` prints them: the source of
/// `--help` and of the documented configuration table (a test keeps them equal).
pub const VARIABLES: &[Doc] = &[
    LISTEN_ADDR.doc(),
    HEALTH_URLS.doc(),
    UPSTREAM_METRICS_URL.doc(),
    UPSTREAM_MAX_BYTES.doc(),
    PROCESS_MATCH.doc(),
    PROBE_INTERVAL.doc(),
    PROBE_TIMEOUT.doc(),
    COMPONENT.doc(),
    LOG_FORMAT.doc(),
    KUBERNETES.doc(),
    WATCH_NAMESPACES.doc(),
    LEADER_LEASE.doc(),
    CR_METRICS.doc(),
    SHARD.doc(),
    OCM_CLUSTERS.doc(),
    ITS_KUBECONFIG.doc(),
    MAX_OBJECTS.doc(),
    POD_NAME.doc(),
    POD_NAMESPACE.doc(),
    NODE_NAME.doc(),
    TLS_CERT_FILE.doc(),
    TLS_KEY_FILE.doc(),
    TLS_RELOAD_INTERVAL.doc(),
    METRICS_AUTH.doc(),
];

/// A loaded configuration and what `check-config` prints of it.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub effective: Effective,
}

impl Config {
    /// Builds the configuration from any set of variables (the command passes the process
    /// environment, tests a map); nothing starts before this succeeds.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let mut env = Reader::new(vars);
        let config = Config {
            listen_addr: env.read(&LISTEN_ADDR)?,
            health_targets: env.read(&HEALTH_URLS)?,
            upstream_url: env.read(&UPSTREAM_METRICS_URL)?,
            upstream_max_bytes: env.read(&UPSTREAM_MAX_BYTES)?,
            process_match: env.read(&PROCESS_MATCH)?,
            probe_interval: env.read(&PROBE_INTERVAL)?,
            probe_timeout: env.read(&PROBE_TIMEOUT)?,
            component: env.read(&COMPONENT)?,
            log_format: env.read(&LOG_FORMAT)?,
            kubernetes: env.read(&KUBERNETES)?,
            watch_namespaces: env.read(&WATCH_NAMESPACES)?,
            leader_lease: env.read(&LEADER_LEASE)?,
            cr_metrics: env.read(&CR_METRICS)?,
            shard: env.read(&SHARD)?,
            ocm_clusters: env.read(&OCM_CLUSTERS)?,
            its_kubeconfig: env.read(&ITS_KUBECONFIG)?,
            max_objects: env.read(&MAX_OBJECTS)?,
            pod_name: env.read(&POD_NAME)?,
            pod_namespace: env.read(&POD_NAMESPACE)?,
            node_name: env.read(&NODE_NAME)?,
            tls: tls_files(env.read(&TLS_CERT_FILE)?, env.read(&TLS_KEY_FILE)?)?,
            tls_reload_interval: env.read(&TLS_RELOAD_INTERVAL)?,
            metrics_auth: env.read(&METRICS_AUTH)?,
        };
        if config.metrics_auth == MetricsAuth::Kubernetes {
            // Bearer tokens over plain HTTP could be read off the wire and replayed.
            if config.tls.is_none() {
                return Err(ConfigError::invalid(
                    METRICS_AUTH.name,
                    "kubernetes",
                    format!(
                        "`none` unless {} and {} are set: callers send bearer tokens, which \
                         must not cross the network in plain HTTP",
                        TLS_CERT_FILE.name, TLS_KEY_FILE.name
                    ),
                ));
            }
            if config.kubernetes == KubeMode::Off {
                return Err(ConfigError::invalid(
                    METRICS_AUTH.name,
                    "kubernetes",
                    format!(
                        "`none` while {}=false: tokens are checked by the API server",
                        KUBERNETES.name
                    ),
                ));
            }
        }
        if config.cr_metrics == CrMetrics::Sharded {
            if config.shard.is_none()
                && (config.pod_name.is_none() || config.pod_namespace.is_none())
            {
                // The shards come from the workload's pods, found through this one.
                return Err(ConfigError::Missing {
                    var: if config.pod_name.is_none() {
                        POD_NAME.name
                    } else {
                        POD_NAMESPACE.name
                    },
                    expected: format!(
                        "this pod's identity from the downward API ({}=sharded without {} finds the shards from the workload's pods)",
                        CR_METRICS.name, SHARD.name
                    ),
                });
            }
        } else if let Some(shard) = &config.shard {
            return Err(ConfigError::invalid(
                SHARD.name,
                &show_shard(&Some(*shard)),
                format!("unset unless {}=sharded", CR_METRICS.name),
            ));
        }
        if config.probe_timeout > config.probe_interval {
            // Blame the one the user set: an interval of 10ms is what is wrong when the timeout
            // is the default 2s.
            let (interval, timeout) = (
                env::show_duration(&config.probe_interval),
                env::show_duration(&config.probe_timeout),
            );
            return Err(
                if env.is_set(&PROBE_INTERVAL) && !env.is_set(&PROBE_TIMEOUT) {
                    ConfigError::invalid(
                        PROBE_INTERVAL.name,
                        &interval,
                        format!(
                            "a duration no shorter than {} ({timeout})",
                            PROBE_TIMEOUT.name
                        ),
                    )
                } else {
                    ConfigError::invalid(
                        PROBE_TIMEOUT.name,
                        &timeout,
                        format!(
                            "a duration no longer than {} ({interval})",
                            PROBE_INTERVAL.name
                        ),
                    )
                },
            );
        }
        Ok(Loaded {
            config,
            effective: env.effective(),
        })
    }
}

const LISTEN_ADDR: Var<SocketAddr> = Var {
    name: "KSIT_LISTEN_ADDR",
    default: "0.0.0.0:8080",
    help: "where /metrics, /healthz and /readyz are served",
    empty: Empty::Default,
    parse: |v| {
        v.parse()
            .map_err(|_| "an IP:port such as 0.0.0.0:8080 or [::]:8080".to_string())
    },
    show: SocketAddr::to_string,
};

const HEALTH_URLS: Var<Vec<HealthTarget>> = Var {
    name: "KSIT_HEALTH_URLS",
    default: "",
    help: "comma list of the component's health endpoints, `name=url` or a bare url (name = last path segment)",
    empty: Empty::Default,
    parse: parse_health_urls,
    show: |targets| {
        let items: Vec<String> = targets
            .iter()
            .map(|t| format!("{}={}", t.name, redact(&t.url)))
            .collect();
        items.join(",")
    },
};

const UPSTREAM_METRICS_URL: Var<Option<Uri>> = Var {
    name: "KSIT_UPSTREAM_METRICS_URL",
    default: "",
    help: "the component's own Prometheus endpoint, one URL, e.g. `http://127.0.0.1:8082/metrics`",
    empty: Empty::Default,
    parse: |v| {
        if v.contains(',') || v.contains(char::is_whitespace) {
            return Err(
                "one http:// URL, without commas or spaces (two URLs cannot both be the upstream)"
                    .to_string(),
            );
        }
        (!v.is_empty()).then(|| parse_http_url(v)).transpose()
    },
    show: |url| {
        url.as_ref()
            .map(|u| redact(u).to_string())
            .unwrap_or_default()
    },
};

/// The sidecar's memory limit as shipped: a body larger than this could not even be held.
const MAX_UPSTREAM_BYTES: usize = 64 * 1024 * 1024;

const UPSTREAM_MAX_BYTES: Var<usize> = Var {
    name: "KSIT_UPSTREAM_MAX_BYTES",
    default: "8388608",
    help: "largest upstream body read (1024 to 67108864, the sidecar's 64 MiB memory limit); a larger one marks the upstream down",
    empty: Empty::Default,
    parse: |v| {
        count(
            v,
            1024..=MAX_UPSTREAM_BYTES,
            "a byte count from 1024 to 67108864 (64 MiB, the sidecar's memory limit)",
        )
    },
    show: usize::to_string,
};

const PROCESS_MATCH: Var<Option<Regex>> = Var {
    name: "KSIT_PROCESS_MATCH",
    default: "",
    help: "regex matched against process names and executables; needs `shareProcessNamespace` for other containers",
    empty: Empty::Default,
    parse: |v| {
        if v.is_empty() {
            return Ok(None);
        }
        // The compiled program is bounded well inside the sidecar's memory limit.
        let regex = RegexBuilder::new(v).size_limit(MAX_REGEX_BYTES).build();
        regex.map(Some).map_err(|e| {
            // regex's syntax errors draw a caret over several lines; the last one says why.
            let why = e
                .to_string()
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_string();
            format!("a process name or regular expression ({why})")
        })
    },
    show: env::show_optional,
};

const MAX_REGEX_BYTES: usize = 1024 * 1024;

/// Collectors run at least this often; a longer interval is a collector that has stopped.
const MAX_INTERVAL: Duration = Duration::from_secs(3600);
const MIN_INTERVAL: Duration = Duration::from_millis(10);

const PROBE_INTERVAL: Var<Duration> = Var {
    name: "KSIT_PROBE_INTERVAL",
    default: "10s",
    help: "how often health, process and upstream collectors run (10ms to 1h)",
    empty: Empty::Default,
    parse: |v| env::duration(v, MIN_INTERVAL, MAX_INTERVAL),
    show: env::show_duration,
};

const PROBE_TIMEOUT: Var<Duration> = Var {
    name: "KSIT_PROBE_TIMEOUT",
    default: "2s",
    help: "timeout of one health probe or upstream fetch (10ms to the interval)",
    empty: Empty::Default,
    parse: |v| env::duration(v, MIN_INTERVAL, MAX_INTERVAL),
    show: env::show_duration,
};

const COMPONENT: Var<Option<String>> = Var {
    name: "KSIT_COMPONENT",
    default: "",
    help: "component name when the pod labels do not give one (a Kubernetes label value)",
    empty: Empty::Default,
    parse: |v| {
        optional_name(
            v,
            is_label_value,
            "a Kubernetes label value (up to 63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit)",
        )
    },
    show: env::show_optional,
};

const KUBE_MODES: &[(&str, KubeMode)] = &[
    ("auto", KubeMode::Auto),
    ("true", KubeMode::On),
    ("false", KubeMode::Off),
];

const KUBERNETES: Var<KubeMode> = Var {
    name: "KSIT_KUBERNETES",
    default: "auto",
    help: "`auto` (watch the API when in a cluster or a kubeconfig is found), `true` (must) or `false`",
    empty: Empty::Default,
    parse: |v| env::choose(v, KUBE_MODES),
    show: |v| env::word_of(v, KUBE_MODES),
};

const WATCH_NAMESPACES: Var<Namespaces> = Var {
    name: "KSIT_WATCH_NAMESPACES",
    // All, as upstream's manager reads them: a sidecar that reads less misses what its manager
    // reconciles. The namespaced Role alone (manifests/rbac) needs a list, e.g. $(POD_NAMESPACE).
    default: "*",
    help: "`*` (all) or a comma list of namespaces whose Integrations and IntegrationTargets are read",
    empty: Empty::Default,
    parse: |v| match v {
        "*" => Ok(Namespaces::All),
        list => {
            let mut names: Vec<String> = Vec::new();
            for name in list.split(',').map(str::trim) {
                let why = if name.is_empty() {
                    "an item is empty".to_string()
                } else if !is_dns_label(name) {
                    format!("`{name}` is not a namespace name")
                } else if names.iter().any(|n| n == name) {
                    format!("`{name}` appears twice")
                } else {
                    names.push(name.to_string());
                    continue;
                };
                return Err(format!(
                    "`*` or a comma list of namespace names (DNS-1123 labels); {why}"
                ));
            }
            Ok(Namespaces::List(names))
        }
    },
    show: |v| match v {
        Namespaces::All => "*".to_string(),
        Namespaces::List(l) => l.join(","),
    },
};

const LEADER_LEASE: Var<String> = Var {
    name: "KSIT_LEADER_LEASE",
    default: "ksit.io",
    help: "name of the component's leader-election Lease, in the pod's namespace",
    empty: Empty::Default,
    parse: |v| {
        if is_dns_subdomain(v) {
            Ok(v.to_string())
        } else {
            Err(SUBDOMAIN.replace("NAME", "Lease"))
        }
    },
    show: String::clone,
};

const CR_METRICS_WORDS: &[(&str, CrMetrics)] = &[
    ("leader", CrMetrics::Leader),
    ("always", CrMetrics::Always),
    ("never", CrMetrics::Never),
    ("sharded", CrMetrics::Sharded),
];

const CR_METRICS: Var<CrMetrics> = Var {
    name: "KSIT_CR_METRICS",
    default: "leader",
    help: "who exports Integration and IntegrationTarget series (and ManagedCluster series, when on): `leader` (only the lease holder's sidecar), `always`, `never`, or `sharded` (each replica's sidecar its share of the objects)",
    empty: Empty::Default,
    parse: |v| env::choose(v, CR_METRICS_WORDS),
    show: |v| env::word_of(v, CR_METRICS_WORDS),
};

const SHARD: Var<Option<Shard>> = Var {
    name: "KSIT_SHARD",
    default: "",
    help: "with KSIT_CR_METRICS=sharded, this sidecar's shard as `INDEX/TOTAL` (e.g. `0/3`), as kube-state-metrics' --shard and --total-shards; unset: the shards are the workload's Running pods",
    empty: Empty::Default,
    parse: parse_shard,
    show: show_shard,
};

fn parse_shard(v: &str) -> Result<Option<Shard>, String> {
    const EXPECTED: &str = "INDEX/TOTAL, two whole numbers with INDEX below TOTAL, e.g. 0/3";
    if v.is_empty() {
        return Ok(None);
    }
    let (index, total) = v.split_once('/').ok_or(EXPECTED)?;
    let number = |s: &str| {
        s.parse::<u32>()
            .ok()
            .filter(|_| s.bytes().all(|b| b.is_ascii_digit()))
    };
    match (number(index), number(total)) {
        (Some(index), Some(total)) if index < total && total <= MAX_SHARDS => {
            Ok(Some(Shard { index, total }))
        }
        (Some(_), Some(total)) if total > MAX_SHARDS => {
            Err(format!("INDEX/TOTAL with TOTAL at most {MAX_SHARDS}"))
        }
        _ => Err(EXPECTED.to_string()),
    }
}

fn show_shard(v: &Option<Shard>) -> String {
    v.map(|s| format!("{}/{}", s.index, s.total))
        .unwrap_or_default()
}

/// More shards than this would each hold a handful of objects: a mistake, not a fleet.
const MAX_SHARDS: u32 = 1000;

/// Both files or neither; the error names the one missing.
fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<crate::tls::Files>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(crate::tls::Files { cert, key })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::Missing {
            var: TLS_KEY_FILE.name,
            expected: format!("the PEM private key of {}", TLS_CERT_FILE.name),
        }),
        (None, Some(_)) => Err(ConfigError::Missing {
            var: TLS_CERT_FILE.name,
            expected: format!("the PEM certificate of {}", TLS_KEY_FILE.name),
        }),
    }
}

const TLS_CERT_FILE: Var<Option<PathBuf>> = Var {
    name: "KSIT_TLS_CERT_FILE",
    default: "",
    help: "PEM serving certificate (chain): with KSIT_TLS_KEY_FILE, the listen address serves HTTPS only (TLS 1.2+), the files re-read when they change",
    empty: Empty::Default,
    parse: |v| Ok((!v.is_empty()).then(|| PathBuf::from(v))),
    show: show_path,
};

const TLS_KEY_FILE: Var<Option<PathBuf>> = Var {
    name: "KSIT_TLS_KEY_FILE",
    default: "",
    help: "PEM private key of KSIT_TLS_CERT_FILE, re-read with it",
    empty: Empty::Default,
    parse: |v| Ok((!v.is_empty()).then(|| PathBuf::from(v))),
    show: show_path,
};

fn show_path(v: &Option<PathBuf>) -> String {
    v.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

const TLS_RELOAD_INTERVAL: Var<Duration> = Var {
    name: "KSIT_TLS_RELOAD_INTERVAL",
    default: "5s",
    help: "how often the certificate and key files are checked for a change (100ms to 1h)",
    empty: Empty::Default,
    parse: |v| env::duration(v, Duration::from_millis(100), MAX_INTERVAL),
    show: env::show_duration,
};

const METRICS_AUTH_WORDS: &[(&str, MetricsAuth)] = &[
    ("none", MetricsAuth::None),
    ("kubernetes", MetricsAuth::Kubernetes),
];

const METRICS_AUTH: Var<MetricsAuth> = Var {
    name: "KSIT_METRICS_AUTH",
    default: "none",
    help: "who may read /metrics and /: `none` (anyone who reaches the port) or `kubernetes` (a bearer token the API server authenticates, whose user may get the path; needs TLS); /healthz and /readyz stay open",
    empty: Empty::Default,
    parse: |v| env::choose(v, METRICS_AUTH_WORDS),
    show: |v| env::word_of(v, METRICS_AUTH_WORDS),
};

const BOOLS: &[(&str, bool)] = &[("true", true), ("false", false)];

const OCM_CLUSTERS: Var<bool> = Var {
    name: "KSIT_OCM_CLUSTERS",
    default: "false",
    help: "also report open-cluster-management ManagedClusters (`true`/`false`)",
    empty: Empty::Default,
    parse: |v| env::choose(v, BOOLS),
    show: bool::to_string,
};

const ITS_KUBECONFIG: Var<Option<PathBuf>> = Var {
    name: "KSIT_ITS_KUBECONFIG",
    default: "",
    help: "a kubeconfig file for KubeStellar's ITS (typically a mounted Secret): ManagedClusters are read from that API server, and only from it; implies KSIT_OCM_CLUSTERS=true",
    empty: Empty::Default,
    parse: its_kubeconfig,
    show: |v| {
        v.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    },
};

/// An ITS kubeconfig is read at start, so a wrong path or a file that is no kubeconfig stops
/// the exporter with this variable's name rather than leaving ManagedClusters silently unread.
fn its_kubeconfig(v: &str) -> Result<Option<PathBuf>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    let path = PathBuf::from(v);
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)
        .map_err(|e| format!("a readable kubeconfig file ({e})"))?;
    if kubeconfig.clusters.is_empty() {
        return Err("a kubeconfig file that names a cluster (it has none)".to_string());
    }
    Ok(Some(path))
}

const MAX_OBJECTS: Var<usize> = Var {
    name: "KSIT_MAX_OBJECTS",
    default: "100000",
    help: "most objects of one kind exported by this sidecar (1 to 1000000; with KSIT_CR_METRICS=sharded, of its shard); the rest are counted as dropped",
    empty: Empty::Default,
    parse: |v| count(v, 1..=MAX_MAX_OBJECTS, "a whole number from 1 to 1000000"),
    show: usize::to_string,
};

/// An object costs ~0.4 KiB (docs/operations.md, "Sharding"): 100,000 targets and 10,000
/// Integrations peak at 57 MiB, inside the sidecar's 64 MiB limit; a million (~450 MiB) is past
/// any limit a sidecar is given.
const MAX_MAX_OBJECTS: usize = 1_000_000;

const SUBDOMAIN: &str = "a Kubernetes NAME name (a DNS-1123 subdomain: up to 253 lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit)";

const POD_NAME: Var<Option<String>> = Var {
    name: "POD_NAME",
    default: "",
    help: "this pod's name, from the downward API",
    empty: Empty::Default,
    parse: |v| optional_name(v, is_dns_subdomain, &SUBDOMAIN.replace("NAME", "pod")),
    show: env::show_optional,
};

const POD_NAMESPACE: Var<Option<String>> = Var {
    name: "POD_NAMESPACE",
    default: "",
    help: "this pod's namespace, from the downward API",
    empty: Empty::Default,
    parse: |v| {
        optional_name(
            v,
            is_dns_label,
            "a Kubernetes namespace name (a DNS-1123 label: up to 63 lowercase letters, digits and `-`, starting and ending with a letter or digit)",
        )
    },
    show: env::show_optional,
};

const NODE_NAME: Var<Option<String>> = Var {
    name: "NODE_NAME",
    default: "",
    help: "this pod's node, from the downward API",
    empty: Empty::Default,
    parse: |v| optional_name(v, is_dns_subdomain, &SUBDOMAIN.replace("NAME", "node")),
    show: env::show_optional,
};

fn count(
    value: &str,
    range: std::ops::RangeInclusive<usize>,
    expected: &str,
) -> Result<usize, String> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| expected.to_string())
}

/// A name that may be absent (empty), checked by `valid`.
fn optional_name(
    value: &str,
    valid: fn(&str) -> bool,
    expected: &str,
) -> Result<Option<String>, String> {
    match value {
        "" => Ok(None),
        name if valid(name) => Ok(Some(name.to_string())),
        _ => Err(expected.to_string()),
    }
}

/// `s` is `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
fn is_lowercase_name(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (s.as_bytes().first(), s.as_bytes().last()) else {
        return false;
    };
    alnum(first) && alnum(last) && s.bytes().all(|b| alnum(b) || b == b'-')
}

/// A Kubernetes namespace name: a DNS-1123 label.
fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_lowercase_name(s)
}

/// A Kubernetes object name such as a pod's, a Lease's or a node's: a DNS-1123 subdomain, dot
/// separated labels.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_lowercase_name)
}

/// A Kubernetes label value (not empty here: empty means unset).
fn is_label_value(s: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_alphanumeric();
    s.len() <= 63
        && s.as_bytes().first().is_some_and(alnum)
        && s.as_bytes().last().is_some_and(alnum)
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn parse_http_url(v: &str) -> Result<Uri, String> {
    let uri: Uri = v.parse().map_err(|e| format!("an http:// URL ({e})"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(
            "an http:// URL with a host, such as http://127.0.0.1:8081/healthz (local endpoints are probed over plain HTTP)"
                .to_string(),
        );
    }
    Ok(uri)
}

fn parse_health_urls(list: &str) -> Result<Vec<HealthTarget>, String> {
    let mut targets: Vec<HealthTarget> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, url) = match item.split_once('=') {
            // `=` may also appear in a query string; a name never contains `:` or `/`.
            Some((name, url)) if !name.contains([':', '/']) => {
                (Some(name.trim().to_string()), url.trim())
            }
            _ => (None, item),
        };
        let url = parse_http_url(url).map_err(|e| format!("{e}; `{url}` is not"))?;
        let name = match name {
            Some(n) if !n.is_empty() => n,
            _ => url
                .path()
                .rsplit('/')
                .find(|s| !s.is_empty())
                .unwrap_or("root")
                .to_string(),
        };
        if targets.iter().any(|t| t.name == name) {
            return Err(format!(
                "distinct probe names; `{name}` appears twice, name them as name=url"
            ));
        }
        targets.push(HealthTarget { name, url });
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        Config::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults() {
        let c = load(&[]).expect("empty env is valid").config;
        assert_eq!(c.listen_addr, "0.0.0.0:8080".parse().expect("literal"));
        assert_eq!(c.probe_interval, Duration::from_secs(10));
        assert_eq!(c.probe_timeout, Duration::from_secs(2));
        assert!(c.health_targets.is_empty());
        assert!(c.upstream_url.is_none());
        assert_eq!(c.log_format, LogFormat::Text);
        // What KSIT's manager reads: its samples span several namespaces.
        assert_eq!(c.watch_namespaces, Namespaces::All);
    }

    #[test]
    fn tls_files_come_in_pairs_and_authentication_needs_them() {
        let c = load(&[]).expect("valid").config;
        assert!(c.tls.is_none());
        assert_eq!(c.metrics_auth, MetricsAuth::None);
        let pair = [
            ("KSIT_TLS_CERT_FILE", "/tls/tls.crt"),
            ("KSIT_TLS_KEY_FILE", "/tls/tls.key"),
        ];
        let c = load(&pair).expect("valid").config;
        assert_eq!(
            c.tls.map(|f| (f.cert, f.key)),
            Some(("/tls/tls.crt".into(), "/tls/tls.key".into()))
        );
        let err = |pairs: &[(&str, &str)]| load(pairs).expect_err("invalid").to_string();
        assert!(
            err(&pair[..1]).starts_with("KSIT_TLS_KEY_FILE is not set"),
            "{}",
            err(&pair[..1])
        );
        assert!(err(&pair[1..]).starts_with("KSIT_TLS_CERT_FILE is not set"));
        let auth = ("KSIT_METRICS_AUTH", "kubernetes");
        assert!(
            err(&[auth]).starts_with(
                "KSIT_METRICS_AUTH=\"kubernetes\" is invalid: `none` unless KSIT_TLS_CERT_FILE"
            ),
            "{}",
            err(&[auth])
        );
        assert!(
            err(&[auth, pair[0], pair[1], ("KSIT_KUBERNETES", "false")])
                .contains("while KSIT_KUBERNETES=false")
        );
        let c = load(&[auth, pair[0], pair[1]]).expect("valid").config;
        assert_eq!(c.metrics_auth, MetricsAuth::Kubernetes);
        assert!(err(&[("KSIT_METRICS_AUTH", "basic")]).starts_with("KSIT_METRICS_AUTH=\"basic\""));
        assert!(
            err(&[("KSIT_TLS_RELOAD_INTERVAL", "1ms")]).starts_with("KSIT_TLS_RELOAD_INTERVAL=")
        );
    }

    #[test]
    fn health_urls_named_and_bare() {
        let c = load(&[(
            "KSIT_HEALTH_URLS",
            "http://127.0.0.1:8081/healthz, ready=http://127.0.0.1:8081/readyz?verbose=1,http://h:1/",
        )])
        .expect("valid")
        .config;
        let names: Vec<_> = c.health_targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["healthz", "ready", "root"]);
        assert_eq!(
            c.health_targets[1].url.to_string(),
            "http://127.0.0.1:8081/readyz?verbose=1"
        );
    }

    #[test]
    fn duplicate_probe_names_are_rejected() {
        let e = load(&[("KSIT_HEALTH_URLS", "http://a:1/healthz,http://b:1/healthz")])
            .expect_err("dup");
        assert_eq!(e.var(), "KSIT_HEALTH_URLS");
        assert!(e.to_string().contains("`healthz` appears twice"), "{e}");
    }

    #[test]
    fn bad_values_name_the_variable_and_value() {
        let cases = [
            ("KSIT_LISTEN_ADDR", "8080"),
            ("KSIT_HEALTH_URLS", "https://127.0.0.1:8081/healthz"),
            ("KSIT_HEALTH_URLS", "not a url"),
            ("KSIT_UPSTREAM_METRICS_URL", "127.0.0.1:8082/metrics"),
            ("KSIT_UPSTREAM_MAX_BYTES", "12"),
            ("KSIT_PROCESS_MATCH", "manager("),
            ("KSIT_PROBE_INTERVAL", "ten seconds"),
            ("KSIT_PROBE_TIMEOUT", "0s"),
            ("KSIT_LOG_FORMAT", "yaml"),
            ("KSIT_KUBERNETES", "maybe"),
            ("KSIT_WATCH_NAMESPACES", "ksit-system,Bad_NS"),
            ("KSIT_CR_METRICS", "sometimes"),
            ("KSIT_SHARD", "0/0"),
            ("KSIT_SHARD", "3/3"),
            ("KSIT_SHARD", "a/b"),
            ("KSIT_SHARD", "1"),
            ("KSIT_SHARD", "+1/3"),
            ("KSIT_SHARD", "0/1001"),
            ("KSIT_SHARD", "0/3/1"),
            ("KSIT_OCM_CLUSTERS", "yes"),
            ("KSIT_ITS_KUBECONFIG", "/nonexistent/its-kubeconfig"),
            ("KSIT_ITS_KUBECONFIG", "/proc/self/status"),
            ("KSIT_MAX_OBJECTS", "0"),
            ("KSIT_MAX_OBJECTS", "1000001"),
            ("KSIT_UPSTREAM_MAX_BYTES", "18446744073709551615"),
            ("KSIT_UPSTREAM_MAX_BYTES", "67108865"),
            ("KSIT_PROBE_INTERVAL", "584542046090y"),
            ("KSIT_PROBE_INTERVAL", "1h 1s"),
            ("KSIT_PROBE_TIMEOUT", "2h"),
            (
                "KSIT_UPSTREAM_METRICS_URL",
                "http://127.0.0.1:8082/metrics,http://127.0.0.1:8083/metrics",
            ),
            (
                "KSIT_UPSTREAM_METRICS_URL",
                "http://127.0.0.1:8082/metrics http://127.0.0.1:8083/metrics",
            ),
            ("KSIT_WATCH_NAMESPACES", ",,,"),
            ("KSIT_WATCH_NAMESPACES", "a,,b"),
            ("KSIT_WATCH_NAMESPACES", "a,a"),
            ("KSIT_WATCH_NAMESPACES", "a.b"),
            ("KSIT_LEADER_LEASE", "Bad_Lease"),
            ("KSIT_LEADER_LEASE", "a..b"),
            ("KSIT_LEADER_LEASE", "lease."),
            ("KSIT_LEADER_LEASE", &"a".repeat(254)),
            ("POD_NAME", "My Pod"),
            ("POD_NAMESPACE", "team.a"),
            ("POD_NAMESPACE", &"a".repeat(64)),
            ("NODE_NAME", "-node"),
            ("KSIT_COMPONENT", "argo cd"),
            ("KSIT_COMPONENT", &"a".repeat(64)),
            ("KSIT_PROCESS_MATCH", "(a{1000}){1000}"),
        ];
        for (var, value) in cases {
            let e = load(&[(var, value)]).expect_err(&format!("{var}={value}"));
            assert_eq!(e.var(), var);
            let line = e.to_string();
            assert!(line.starts_with(&format!("{var}=")), "{line}");
            assert!(!line.contains('\n'), "one line: {line}");
        }
    }

    #[test]
    fn shards_by_hand_or_from_the_pods_identity() {
        let c = load(&[("KSIT_CR_METRICS", "sharded"), ("KSIT_SHARD", "2/3")])
            .expect("by hand")
            .config;
        assert_eq!(c.shard, Some(Shard { index: 2, total: 3 }));
        let e = load(&[("KSIT_CR_METRICS", "sharded")]).expect_err("no identity");
        assert_eq!(e.var(), "POD_NAME");
        let e = load(&[("KSIT_CR_METRICS", "sharded"), ("POD_NAME", "p")]).expect_err("no ns");
        assert_eq!(e.var(), "POD_NAMESPACE");
        let c = load(&[
            ("KSIT_CR_METRICS", "sharded"),
            ("POD_NAME", "p"),
            ("POD_NAMESPACE", "ns"),
        ])
        .expect("from the pods")
        .config;
        assert_eq!((c.cr_metrics, c.shard), (CrMetrics::Sharded, None));
        let e = load(&[("KSIT_CR_METRICS", "leader"), ("KSIT_SHARD", "0/3")])
            .expect_err("a shard without sharding");
        assert_eq!(
            e.to_string(),
            r#"KSIT_SHARD="0/3" is invalid: unset unless KSIT_CR_METRICS=sharded"#
        );
    }

    #[test]
    fn timeout_longer_than_interval_blames_the_variable_set() {
        let e =
            load(&[("KSIT_PROBE_INTERVAL", "1s"), ("KSIT_PROBE_TIMEOUT", "5s")]).expect_err("bad");
        assert_eq!(e.var(), "KSIT_PROBE_TIMEOUT");
        let e = load(&[("KSIT_PROBE_TIMEOUT", "11s")]).expect_err("longer than the default");
        assert_eq!(e.var(), "KSIT_PROBE_TIMEOUT");
        // The user set only the interval; the default timeout is not theirs to fix.
        let e = load(&[("KSIT_PROBE_INTERVAL", "10ms")]).expect_err("shorter than the default");
        assert_eq!(
            e.to_string(),
            r#"KSIT_PROBE_INTERVAL="10ms" is invalid: a duration no shorter than KSIT_PROBE_TIMEOUT (2s)"#
        );
        let e = load(&[("KSIT_PROBE_INTERVAL", "10ms"), ("KSIT_PROBE_TIMEOUT", " ")])
            .expect_err("a blank timeout is the default");
        assert_eq!(e.var(), "KSIT_PROBE_INTERVAL");
    }

    #[test]
    fn names_and_limits_that_are_fine() {
        let c = load(&[
            ("KSIT_WATCH_NAMESPACES", " a , b-2 "),
            ("KSIT_LEADER_LEASE", "ksit-manager.ksit.io"),
            ("POD_NAME", "ksit-controller-manager-7d9f8-x2x4z"),
            ("POD_NAMESPACE", "ksit-system"),
            ("NODE_NAME", "ip-10-0-0-1.ec2.internal"),
            ("KSIT_COMPONENT", "ArgoCD_server.v2"),
            ("KSIT_UPSTREAM_MAX_BYTES", "67108864"),
            ("KSIT_PROBE_INTERVAL", "1h"),
            ("KSIT_MAX_OBJECTS", "100000"),
            (
                "KSIT_UPSTREAM_METRICS_URL",
                "http://127.0.0.1:8082/metrics?x=1",
            ),
        ])
        .expect("valid")
        .config;
        assert_eq!(
            c.watch_namespaces,
            Namespaces::List(vec!["a".into(), "b-2".into()])
        );
        assert_eq!(c.leader_lease, "ksit-manager.ksit.io");
        assert_eq!(c.upstream_max_bytes, 64 * 1024 * 1024);
    }

    #[test]
    fn credentials_in_urls_are_never_printed() {
        let loaded = load(&[
            (
                "KSIT_HEALTH_URLS",
                "live=http://user:secret@127.0.0.1:8081/healthz",
            ),
            (
                "KSIT_UPSTREAM_METRICS_URL",
                "http://user:secret@127.0.0.1:8082/metrics",
            ),
        ])
        .expect("valid");
        // Kept for the requests, masked where printed.
        assert_eq!(
            loaded.config.upstream_url.expect("set").to_string(),
            "http://user:secret@127.0.0.1:8082/metrics"
        );
        let printed = loaded.effective.to_string();
        assert!(!printed.contains("secret"), "{printed}");
        assert!(
            printed.contains("KSIT_HEALTH_URLS=live=http://***@127.0.0.1:8081/healthz\n"),
            "{printed}"
        );
        assert!(
            printed.contains("KSIT_UPSTREAM_METRICS_URL=http://***@127.0.0.1:8082/metrics\n"),
            "{printed}"
        );
        for (var, value) in [
            ("KSIT_HEALTH_URLS", "http://u:secret@h/x,ftp://u:secret@h/y"),
            (
                "KSIT_UPSTREAM_METRICS_URL",
                "http://u:secret@h/x,http://u:secret@k/y",
            ),
            ("KSIT_UPSTREAM_METRICS_URL", "https://u:secret@h/x"),
        ] {
            let e = load(&[(var, value)]).expect_err(value).to_string();
            assert!(!e.contains("secret"), "{e}");
            assert!(e.contains("://***@h/"), "{e}");
        }
    }

    #[test]
    fn empty_values_mean_unset() {
        let c = load(&[("KSIT_UPSTREAM_METRICS_URL", ""), ("KSIT_LISTEN_ADDR", " ")])
            .expect("valid")
            .config;
        assert!(c.upstream_url.is_none());
        assert_eq!(c.listen_addr.port(), 8080);
    }

    /// The defaults `--help` and the README show are the ones applied: setting every variable to
    /// its documented default gives the configuration of an empty environment.
    #[test]
    fn documented_defaults_are_the_applied_ones() {
        let unset = load(&[]).expect("empty env is valid").effective;
        let explicit = load(
            &VARIABLES
                .iter()
                .map(|(name, default, _)| (*name, *default))
                .collect::<Vec<_>>(),
        )
        .expect("the documented defaults are valid")
        .effective;
        assert_eq!(explicit, unset);
        // check-config prints every documented variable, in the table's order.
        let printed: Vec<&str> = unset.0.iter().map(|(name, _)| *name).collect();
        let documented: Vec<&str> = VARIABLES.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(printed, documented);
    }

    #[test]
    fn display_round_trips() {
        let vars = [
            ("KSIT_LISTEN_ADDR", "127.0.0.1:9100"),
            ("KSIT_HEALTH_URLS", "live=http://127.0.0.1:8081/healthz"),
            ("KSIT_UPSTREAM_METRICS_URL", "http://127.0.0.1:8082/metrics"),
            ("KSIT_PROCESS_MATCH", "^manager$"),
            ("KSIT_PROBE_INTERVAL", "5s"),
            ("KSIT_LOG_FORMAT", "json"),
            ("KSIT_WATCH_NAMESPACES", "a, b"),
            ("KSIT_CR_METRICS", "sharded"),
            ("KSIT_SHARD", "1/4"),
            ("KSIT_OCM_CLUSTERS", "true"),
            ("POD_NAME", "p"),
        ];
        let first = load(&vars).expect("valid").effective.to_string();
        let again = Config::from_vars(first.lines().filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        }))
        .expect("printed config is valid")
        .effective
        .to_string();
        assert_eq!(first, again);
        assert!(first.contains("KSIT_HEALTH_URLS=live=http://127.0.0.1:8081/healthz\n"));
    }
}
