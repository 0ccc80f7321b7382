//! The exporter's configuration (`serve` and `check-config`): one [`Var`] per environment
//! variable, validated before anything starts.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::Uri;
use regex::Regex;

use crate::env::{self, ConfigError, Doc, Effective, Empty, Reader, Var};
use crate::telemetry::LOG_FORMAT;
pub use crate::telemetry::LogFormat;

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
    OCM_CLUSTERS.doc(),
    MAX_OBJECTS.doc(),
    POD_NAME.doc(),
    POD_NAMESPACE.doc(),
    NODE_NAME.doc(),
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
            ocm_clusters: env.read(&OCM_CLUSTERS)?,
            max_objects: env.read(&MAX_OBJECTS)?,
            pod_name: env.read(&POD_NAME)?,
            pod_namespace: env.read(&POD_NAMESPACE)?,
            node_name: env.read(&NODE_NAME)?,
        };
        if config.probe_timeout > config.probe_interval {
            return Err(ConfigError::invalid(
                PROBE_TIMEOUT.name,
                &env::show_duration(&config.probe_timeout),
                format!(
                    "a duration no longer than {} ({})",
                    PROBE_INTERVAL.name,
                    env::show_duration(&config.probe_interval)
                ),
            ));
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
            .map(|t| format!("{}={}", t.name, t.url))
            .collect();
        items.join(",")
    },
};

const UPSTREAM_METRICS_URL: Var<Option<Uri>> = Var {
    name: "KSIT_UPSTREAM_METRICS_URL",
    default: "",
    help: "the component's own Prometheus endpoint, e.g. `http://127.0.0.1:8082/metrics`",
    empty: Empty::Default,
    parse: |v| (!v.is_empty()).then(|| parse_http_url(v)).transpose(),
    show: env::show_optional,
};

const UPSTREAM_MAX_BYTES: Var<usize> = Var {
    name: "KSIT_UPSTREAM_MAX_BYTES",
    default: "8388608",
    help: "largest upstream body read; a larger one marks the upstream down",
    empty: Empty::Default,
    parse: |v| at_least(v, 1024, "a byte count of at least 1024"),
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
        Regex::new(v).map(Some).map_err(|e| {
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

const PROBE_INTERVAL: Var<Duration> = Var {
    name: "KSIT_PROBE_INTERVAL",
    default: "10s",
    help: "how often health, process and upstream collectors run",
    empty: Empty::Default,
    parse: |v| env::duration(v, Duration::from_millis(10)),
    show: env::show_duration,
};

const PROBE_TIMEOUT: Var<Duration> = Var {
    name: "KSIT_PROBE_TIMEOUT",
    default: "2s",
    help: "timeout of one health probe or upstream fetch",
    empty: Empty::Default,
    parse: |v| env::duration(v, Duration::from_millis(10)),
    show: env::show_duration,
};

const COMPONENT: Var<Option<String>> = Var {
    name: "KSIT_COMPONENT",
    default: "",
    help: "component name when the pod labels do not give one",
    empty: Empty::Default,
    parse: env::optional_text,
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
    default: "",
    help: "comma list of namespaces whose Integrations and IntegrationTargets are read; empty = the pod's namespace; `*` = all",
    empty: Empty::Default,
    parse: |v| match v {
        "" => Ok(Namespaces::Own),
        "*" => Ok(Namespaces::All),
        list => {
            let list: Vec<String> = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            match list.iter().find(|n| !is_dns_label(n)) {
                Some(bad) => Err(format!(
                    "`*` or a comma list of namespace names; `{bad}` is not a namespace name"
                )),
                None => Ok(Namespaces::List(list)),
            }
        }
    },
    show: |v| match v {
        Namespaces::Own => String::new(),
        Namespaces::All => "*".to_string(),
        Namespaces::List(l) => l.join(","),
    },
};

const LEADER_LEASE: Var<String> = Var {
    name: "KSIT_LEADER_LEASE",
    default: "ksit.io",
    help: "name of the component's leader-election Lease, in the pod's namespace",
    empty: Empty::Default,
    parse: |v| Ok(v.to_string()),
    show: String::clone,
};

const CR_METRICS_WORDS: &[(&str, CrMetrics)] = &[
    ("leader", CrMetrics::Leader),
    ("always", CrMetrics::Always),
    ("never", CrMetrics::Never),
];

const CR_METRICS: Var<CrMetrics> = Var {
    name: "KSIT_CR_METRICS",
    default: "leader",
    help: "who exports Integration and IntegrationTarget series (and ManagedCluster series, when on): `leader` (only the lease holder's sidecar), `always` or `never`",
    empty: Empty::Default,
    parse: |v| env::choose(v, CR_METRICS_WORDS),
    show: |v| env::word_of(v, CR_METRICS_WORDS),
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

const MAX_OBJECTS: Var<usize> = Var {
    name: "KSIT_MAX_OBJECTS",
    default: "1000",
    help: "most objects of one kind exported; the rest are counted as dropped",
    empty: Empty::Default,
    parse: |v| at_least(v, 1, "a whole number of at least 1"),
    show: usize::to_string,
};

const POD_NAME: Var<Option<String>> = Var {
    name: "POD_NAME",
    default: "",
    help: "this pod's name, from the downward API",
    empty: Empty::Default,
    parse: env::optional_text,
    show: env::show_optional,
};

const POD_NAMESPACE: Var<Option<String>> = Var {
    name: "POD_NAMESPACE",
    default: "",
    help: "this pod's namespace, from the downward API",
    empty: Empty::Default,
    parse: env::optional_text,
    show: env::show_optional,
};

const NODE_NAME: Var<Option<String>> = Var {
    name: "NODE_NAME",
    default: "",
    help: "this pod's node, from the downward API",
    empty: Empty::Default,
    parse: env::optional_text,
    show: env::show_optional,
};

fn at_least(value: &str, min: usize, expected: &str) -> Result<usize, String> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| *n >= min)
        .ok_or_else(|| expected.to_string())
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
            ("KSIT_OCM_CLUSTERS", "yes"),
            ("KSIT_MAX_OBJECTS", "0"),
        ];
        for (var, value) in cases {
            let e = load(&[(var, value)]).expect_err(var);
            assert_eq!(e.var(), var);
            let line = e.to_string();
            assert!(line.starts_with(&format!("{var}=")), "{line}");
            assert!(!line.contains('\n'), "one line: {line}");
        }
    }

    #[test]
    fn timeout_longer_than_interval_is_rejected() {
        let e =
            load(&[("KSIT_PROBE_INTERVAL", "1s"), ("KSIT_PROBE_TIMEOUT", "5s")]).expect_err("bad");
        assert_eq!(e.var(), "KSIT_PROBE_TIMEOUT");
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
            ("KSIT_CR_METRICS", "always"),
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
