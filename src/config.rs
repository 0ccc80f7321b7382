//! Configuration from the environment, validated before anything starts.
//!
//! Every value is read as a string first and then checked here, so that an error can name the
//! variable, the value and what was expected in one line (envy's own errors cannot).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::Uri;
use regex::Regex;
use serde::Deserialize;

/// Every variable the binary reads, with its default and meaning: the source of `--help`, of the
/// README's configuration table (a test keeps them equal) and of the unknown-variable warning.
pub const VARIABLES: &[(&str, &str, &str)] = &[
    (
        "KSIT_LISTEN_ADDR",
        "0.0.0.0:8080",
        "where /metrics, /healthz and /readyz are served",
    ),
    (
        "KSIT_HEALTH_URLS",
        "",
        "comma list of the component's health endpoints, `name=url` or a bare url (name = last path segment)",
    ),
    (
        "KSIT_UPSTREAM_METRICS_URL",
        "",
        "the component's own Prometheus endpoint, e.g. `http://127.0.0.1:8082/metrics`",
    ),
    (
        "KSIT_UPSTREAM_MAX_BYTES",
        "8388608",
        "largest upstream body read; a larger one marks the upstream down",
    ),
    (
        "KSIT_PROCESS_MATCH",
        "",
        "regex matched against process names and executables; needs `shareProcessNamespace` for other containers",
    ),
    (
        "KSIT_PROBE_INTERVAL",
        "10s",
        "how often health, process and upstream collectors run",
    ),
    (
        "KSIT_PROBE_TIMEOUT",
        "2s",
        "timeout of one health probe or upstream fetch",
    ),
    (
        "KSIT_COMPONENT",
        "",
        "component name when the pod labels do not give one",
    ),
    (
        "KSIT_LOG_FORMAT",
        "text",
        "`text` or `json`; `RUST_LOG` filters (default `info`)",
    ),
    (
        "KSIT_KUBERNETES",
        "auto",
        "`auto` (watch the API when in a cluster or a kubeconfig is found), `true` (must) or `false`",
    ),
    (
        "KSIT_WATCH_NAMESPACES",
        "",
        "comma list of namespaces whose Integrations and IntegrationTargets are read; empty = the pod's namespace; `*` = all",
    ),
    (
        "KSIT_LEADER_LEASE",
        "ksit.io",
        "name of the component's leader-election Lease, in the pod's namespace",
    ),
    (
        "KSIT_CR_METRICS",
        "leader",
        "who exports Integration and IntegrationTarget series: `leader` (only the lease holder's sidecar), `always` or `never`",
    ),
    (
        "KSIT_OCM_CLUSTERS",
        "false",
        "also report open-cluster-management ManagedClusters (`true`/`false`)",
    ),
    (
        "KSIT_MAX_OBJECTS",
        "1000",
        "most objects of one kind exported; the rest are counted as dropped",
    ),
    ("POD_NAME", "", "this pod's name, from the downward API"),
    (
        "POD_NAMESPACE",
        "",
        "this pod's namespace, from the downward API",
    ),
    ("NODE_NAME", "", "this pod's node, from the downward API"),
];

/// Variables read by the `inject` and `webhook` subcommands; known here so that setting them
/// never draws an unknown-variable warning.
const OTHER_SUBCOMMAND_PREFIXES: &[&str] = &["KSIT_SIDECAR_", "KSIT_WEBHOOK_", "KSIT_TLS_"];

/// A configuration value that failed validation.
#[derive(Debug, thiserror::Error)]
#[error("{var}={value:?} is invalid: {expected}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub expected: String,
}

impl ConfigError {
    pub fn new(var: &'static str, value: &str, expected: impl Into<String>) -> Self {
        Self {
            var,
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

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
}

/// Namespaces whose KSIT objects are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    /// The pod's own namespace (or the kubeconfig's default when not in a pod).
    Own,
    All,
    List(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// `text` (also when unset or empty) or `json`; `None` for anything else.
    pub fn parse(value: Option<&str>) -> Option<Self> {
        match value {
            None | Some("" | "text") => Some(LogFormat::Text),
            Some("json") => Some(LogFormat::Json),
            Some(_) => None,
        }
    }
}

/// A variables table as `--help` prints it.
pub fn describe(variables: &[(&str, &str, &str)]) -> String {
    let mut out = String::new();
    for (name, default, meaning) in variables {
        let default = if default.is_empty() {
            String::new()
        } else {
            format!(" (default {default})")
        };
        out.push_str(&format!("  {name}{default}\n      {meaning}\n"));
    }
    out
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
    pub ocm_clusters: bool,
    pub max_objects: usize,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub node_name: Option<String>,
}

/// The raw strings, as envy finds them; all optional so that validation can say which one is bad.
#[derive(Debug, Default, Deserialize)]
struct Raw {
    ksit_listen_addr: Option<String>,
    ksit_health_urls: Option<String>,
    ksit_upstream_metrics_url: Option<String>,
    ksit_upstream_max_bytes: Option<String>,
    ksit_process_match: Option<String>,
    ksit_probe_interval: Option<String>,
    ksit_probe_timeout: Option<String>,
    ksit_component: Option<String>,
    ksit_log_format: Option<String>,
    ksit_kubernetes: Option<String>,
    ksit_watch_namespaces: Option<String>,
    ksit_leader_lease: Option<String>,
    ksit_cr_metrics: Option<String>,
    ksit_ocm_clusters: Option<String>,
    ksit_max_objects: Option<String>,
    pod_name: Option<String>,
    pod_namespace: Option<String>,
    node_name: Option<String>,
}

/// A loaded configuration plus the warnings to log once logging is up.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Loaded, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Builds the configuration from any set of variables; tests pass a map here.
    pub fn from_vars<I>(vars: I) -> Result<Loaded, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let warnings = unknown_variable_warnings(&vars);
        // envy lower-cases the names; every field is a string, so it cannot fail on a value.
        let raw: Raw = envy::from_iter(vars).map_err(|e| {
            ConfigError::new("environment", &e.to_string(), "variables readable as text")
        })?;
        Ok(Loaded {
            config: validate(raw)?,
            warnings,
        })
    }
}

fn unknown_variable_warnings(vars: &[(String, String)]) -> Vec<String> {
    vars.iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("KSIT_"))
        .filter(|k| !VARIABLES.iter().any(|(name, _, _)| name == k))
        .filter(|k| !OTHER_SUBCOMMAND_PREFIXES.iter().any(|p| k.starts_with(p)))
        .map(|k| {
            format!("unknown variable {k} is ignored; `ksit-exporter --help` lists the known ones")
        })
        .collect()
}

/// Treats an empty value like an unset one, as Kubernetes manifests often render `value: ""`.
fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn validate(raw: Raw) -> Result<Config, ConfigError> {
    let listen_addr = match non_empty(raw.ksit_listen_addr) {
        None => SocketAddr::from(([0, 0, 0, 0], 8080)),
        Some(v) => v.parse().map_err(|_| {
            ConfigError::new(
                "KSIT_LISTEN_ADDR",
                &v,
                "an IP:port such as 0.0.0.0:8080 or [::]:8080",
            )
        })?,
    };
    let health_targets = match non_empty(raw.ksit_health_urls) {
        None => Vec::new(),
        Some(v) => parse_health_urls(&v)?,
    };
    let upstream_url = non_empty(raw.ksit_upstream_metrics_url)
        .map(|v| parse_http_url("KSIT_UPSTREAM_METRICS_URL", &v))
        .transpose()?;
    let upstream_max_bytes = match non_empty(raw.ksit_upstream_max_bytes) {
        None => 8 * 1024 * 1024,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1024)
            .ok_or_else(|| {
                ConfigError::new(
                    "KSIT_UPSTREAM_MAX_BYTES",
                    &v,
                    "a byte count of at least 1024",
                )
            })?,
    };
    let process_match = non_empty(raw.ksit_process_match)
        .map(|v| {
            Regex::new(&v).map_err(|e| {
                // regex's syntax errors draw a caret over several lines; the last one says why.
                let why = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                ConfigError::new(
                    "KSIT_PROCESS_MATCH",
                    &v,
                    format!("a process name or regular expression ({why})"),
                )
            })
        })
        .transpose()?;
    let probe_interval = duration(
        "KSIT_PROBE_INTERVAL",
        raw.ksit_probe_interval,
        Duration::from_secs(10),
    )?;
    let probe_timeout = duration(
        "KSIT_PROBE_TIMEOUT",
        raw.ksit_probe_timeout,
        Duration::from_secs(2),
    )?;
    if probe_timeout > probe_interval {
        return Err(ConfigError::new(
            "KSIT_PROBE_TIMEOUT",
            &humantime::format_duration(probe_timeout).to_string(),
            format!(
                "a duration no longer than KSIT_PROBE_INTERVAL ({})",
                humantime::format_duration(probe_interval)
            ),
        ));
    }
    let log_format = LogFormat::parse(raw.ksit_log_format.as_deref()).ok_or_else(|| {
        ConfigError::new(
            "KSIT_LOG_FORMAT",
            raw.ksit_log_format.as_deref().unwrap_or_default(),
            "`text` or `json`",
        )
    })?;
    let kubernetes = match non_empty(raw.ksit_kubernetes).as_deref() {
        None | Some("auto") => KubeMode::Auto,
        Some("true") => KubeMode::On,
        Some("false") => KubeMode::Off,
        Some(v) => {
            return Err(ConfigError::new(
                "KSIT_KUBERNETES",
                v,
                "`auto`, `true` or `false`",
            ));
        }
    };
    let watch_namespaces = match non_empty(raw.ksit_watch_namespaces) {
        None => Namespaces::Own,
        Some(v) if v == "*" => Namespaces::All,
        Some(v) => {
            let list: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            if let Some(bad) = list.iter().find(|n| !is_dns_label(n)) {
                return Err(ConfigError::new(
                    "KSIT_WATCH_NAMESPACES",
                    &v,
                    format!(
                        "`*` or a comma list of namespace names; `{bad}` is not a namespace name"
                    ),
                ));
            }
            Namespaces::List(list)
        }
    };
    let cr_metrics = match non_empty(raw.ksit_cr_metrics).as_deref() {
        None | Some("leader") => CrMetrics::Leader,
        Some("always") => CrMetrics::Always,
        Some("never") => CrMetrics::Never,
        Some(v) => {
            return Err(ConfigError::new(
                "KSIT_CR_METRICS",
                v,
                "`leader`, `always` or `never`",
            ));
        }
    };
    let ocm_clusters = match non_empty(raw.ksit_ocm_clusters).as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => {
            return Err(ConfigError::new(
                "KSIT_OCM_CLUSTERS",
                v,
                "`true` or `false`",
            ));
        }
    };
    let max_objects = match non_empty(raw.ksit_max_objects) {
        None => 1000,
        Some(v) => v.parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(|| {
            ConfigError::new("KSIT_MAX_OBJECTS", &v, "a whole number of at least 1")
        })?,
    };
    Ok(Config {
        listen_addr,
        health_targets,
        upstream_url,
        upstream_max_bytes,
        process_match,
        probe_interval,
        probe_timeout,
        component: non_empty(raw.ksit_component),
        log_format,
        kubernetes,
        watch_namespaces,
        leader_lease: non_empty(raw.ksit_leader_lease).unwrap_or_else(|| "ksit.io".to_string()),
        cr_metrics,
        ocm_clusters,
        max_objects,
        pod_name: non_empty(raw.pod_name),
        pod_namespace: non_empty(raw.pod_namespace),
        node_name: non_empty(raw.node_name),
    })
}

fn duration(
    var: &'static str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(v) = non_empty(value) else {
        return Ok(default);
    };
    humantime::parse_duration(&v)
        .ok()
        .filter(|d| *d >= Duration::from_millis(10))
        .ok_or_else(|| {
            ConfigError::new(
                var,
                &v,
                "a duration of at least 10ms such as `10s`, `500ms` or `1m`",
            )
        })
}

/// A Kubernetes namespace name: an RFC 1123 label.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn parse_http_url(var: &'static str, v: &str) -> Result<Uri, ConfigError> {
    let uri: Uri = v
        .parse()
        .map_err(|e| ConfigError::new(var, v, format!("an http:// URL ({e})")))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(ConfigError::new(
            var,
            v,
            "an http:// URL with a host, such as http://127.0.0.1:8081/healthz (local endpoints are probed over plain HTTP)",
        ));
    }
    Ok(uri)
}

fn parse_health_urls(list: &str) -> Result<Vec<HealthTarget>, ConfigError> {
    let mut targets: Vec<HealthTarget> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, url) = match item.split_once('=') {
            // `=` may also appear in a query string; a name never contains `:` or `/`.
            Some((name, url)) if !name.contains([':', '/']) => {
                (Some(name.trim().to_string()), url.trim())
            }
            _ => (None, item),
        };
        let url = parse_http_url("KSIT_HEALTH_URLS", url)?;
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
            return Err(ConfigError::new(
                "KSIT_HEALTH_URLS",
                list,
                format!("distinct probe names; `{name}` appears twice, name them as name=url"),
            ));
        }
        targets.push(HealthTarget { name, url });
    }
    Ok(targets)
}

impl fmt::Display for Config {
    /// The effective configuration, one `VAR=value` a line, as `check-config` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let health = self
            .health_targets
            .iter()
            .map(|t| format!("{}={}", t.name, t.url))
            .collect::<Vec<_>>()
            .join(",");
        writeln!(f, "KSIT_LISTEN_ADDR={}", self.listen_addr)?;
        writeln!(f, "KSIT_HEALTH_URLS={health}")?;
        writeln!(
            f,
            "KSIT_UPSTREAM_METRICS_URL={}",
            self.upstream_url
                .as_ref()
                .map(Uri::to_string)
                .unwrap_or_default()
        )?;
        writeln!(f, "KSIT_UPSTREAM_MAX_BYTES={}", self.upstream_max_bytes)?;
        writeln!(
            f,
            "KSIT_PROCESS_MATCH={}",
            self.process_match
                .as_ref()
                .map(Regex::as_str)
                .unwrap_or_default()
        )?;
        writeln!(
            f,
            "KSIT_PROBE_INTERVAL={}",
            humantime::format_duration(self.probe_interval)
        )?;
        writeln!(
            f,
            "KSIT_PROBE_TIMEOUT={}",
            humantime::format_duration(self.probe_timeout)
        )?;
        writeln!(f, "KSIT_COMPONENT={}", opt(&self.component))?;
        let log_format = match self.log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        writeln!(f, "KSIT_LOG_FORMAT={log_format}")?;
        let kubernetes = match self.kubernetes {
            KubeMode::Auto => "auto",
            KubeMode::On => "true",
            KubeMode::Off => "false",
        };
        writeln!(f, "KSIT_KUBERNETES={kubernetes}")?;
        let namespaces = match &self.watch_namespaces {
            Namespaces::Own => String::new(),
            Namespaces::All => "*".to_string(),
            Namespaces::List(l) => l.join(","),
        };
        writeln!(f, "KSIT_WATCH_NAMESPACES={namespaces}")?;
        writeln!(f, "KSIT_LEADER_LEASE={}", self.leader_lease)?;
        let cr = match self.cr_metrics {
            CrMetrics::Leader => "leader",
            CrMetrics::Always => "always",
            CrMetrics::Never => "never",
        };
        writeln!(f, "KSIT_CR_METRICS={cr}")?;
        writeln!(f, "KSIT_OCM_CLUSTERS={}", self.ocm_clusters)?;
        writeln!(f, "KSIT_MAX_OBJECTS={}", self.max_objects)?;
        writeln!(f, "POD_NAME={}", opt(&self.pod_name))?;
        writeln!(f, "POD_NAMESPACE={}", opt(&self.pod_namespace))?;
        write!(f, "NODE_NAME={}", opt(&self.node_name))
    }
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
        assert_eq!(e.var, "KSIT_HEALTH_URLS");
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
            ("KSIT_OCM_CLUSTERS", "yes"),
            ("KSIT_MAX_OBJECTS", "0"),
        ];
        for (var, value) in cases {
            let e = load(&[(var, value)]).expect_err(var);
            assert_eq!(e.var, var);
            let line = e.to_string();
            assert!(line.starts_with(&format!("{var}=")), "{line}");
            assert!(!line.contains('\n'), "one line: {line}");
        }
    }

    #[test]
    fn timeout_longer_than_interval_is_rejected() {
        let e =
            load(&[("KSIT_PROBE_INTERVAL", "1s"), ("KSIT_PROBE_TIMEOUT", "5s")]).expect_err("bad");
        assert_eq!(e.var, "KSIT_PROBE_TIMEOUT");
    }

    #[test]
    fn empty_values_mean_unset() {
        let c = load(&[("KSIT_UPSTREAM_METRICS_URL", ""), ("KSIT_LISTEN_ADDR", " ")])
            .expect("valid")
            .config;
        assert!(c.upstream_url.is_none());
        assert_eq!(c.listen_addr.port(), 8080);
    }

    #[test]
    fn unknown_ksit_variables_warn() {
        let l = load(&[
            ("KSIT_LISTEN_ADR", "0.0.0.0:9"),
            ("KSIT_SIDECAR_IMAGE", "x"),
            ("HOME", "/root"),
        ])
        .expect("valid");
        assert_eq!(l.warnings.len(), 1);
        assert!(l.warnings[0].contains("KSIT_LISTEN_ADR"));
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
            ("KSIT_CR_METRICS", "always"),
            ("KSIT_OCM_CLUSTERS", "true"),
            ("POD_NAME", "p"),
        ];
        let first = load(&vars).expect("valid").config.to_string();
        let again = Config::from_vars(first.lines().filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        }))
        .expect("printed config is valid")
        .config
        .to_string();
        assert_eq!(first, again);
        assert!(first.contains("KSIT_HEALTH_URLS=live=http://127.0.0.1:8081/healthz\n"));
    }
}
