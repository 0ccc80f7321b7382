//! The Helm chart (charts/ksit-exporter): `helm lint` of every values file; `helm template`
//! compared object by object with `kubectl kustomize` of the bases each values file stands for;
//! the chart's copies of the monitoring files equal to manifests/; and install, upgrade and
//! uninstall against the test control plane for a small matrix of values.
//!
//! helm and kubectl come from the control plane's bin dir (`scripts/controlplane.sh build`).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::{
    ControlPlane, Overlay, TestNamespace, check, control_plane, repo_path, test_namespace,
};
use serde_json::{Value, json};

const CHART: &str = "charts/ksit-exporter";
/// The release's name in every test; its namespace for `helm template` is the bases'.
const RELEASE: &str = "ksit-exporter";
const BASES_NAMESPACE: &str = "ksit-webhook";

/// The files the chart reads with `.Files.Get`, as copies of what manifests/ ships: a chart is
/// packaged from its own directory, so it cannot read manifests/ (and symlinks would not survive
/// every way a chart is published).
const COPIES: &[(&str, &str)] = &[
    (
        "manifests/monitoring/common/prometheusrule.yaml",
        "charts/ksit-exporter/files/prometheusrule.yaml",
    ),
    (
        "manifests/monitoring/common/ksit-dashboard.json",
        "charts/ksit-exporter/files/ksit-dashboard.json",
    ),
    (
        "manifests/monitoring/common/prometheus-scrape-config.yaml",
        "charts/ksit-exporter/files/prometheus-scrape-config.yaml",
    ),
];

/// The labels Helm's convention adds to every object of the chart (never to a selector or a pod
/// template), which the bases do not have.
const HELM_LABELS: &[&str] = &[
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
];

/// Everything else that may differ between `helm template` and the bases, in one place: each
/// path (JSON object keys, `*` for every array item) is taken out of the chart's object of that
/// kind before the comparison, and checked on its own by the test.
const IGNORED: &[(&str, &[&str], &str)] = &[
    (
        "MutatingWebhookConfiguration",
        &["webhooks", "*", "clientConfig", "caBundle"],
        "the generated CA: checked equal to the Secret's ca.crt",
    ),
    (
        "Deployment",
        &["spec", "template", "spec", "containers", "*", "env"],
        "the chart sets the injected sidecar's KSIT_SIDECAR_* (the base leaves the binary's \
         defaults): checked against the injector's defaults or the case's values, then the rest \
         compared",
    ),
];

/// Objects only the chart has: the generated serving pair (without cert-manager).
const CHART_ONLY: &[(&str, &str)] = &[("Secret", "ksit-webhook-tls")];
/// Objects only the bases have: the webhook's Namespace, which is the release's namespace
/// (`helm install --create-namespace`), so the chart does not own it.
const BASES_ONLY: &[(&str, &str)] = &[("Namespace", "ksit-webhook")];

/// One values file and the bases it stands for.
struct Case {
    name: &'static str,
    /// `ci/<name>-values.yaml` under the chart; `None` for the defaults.
    values: Option<&'static str>,
    /// What the bases are built from: an overlay listing these.
    resources: &'static [&'static str],
    components: &'static [&'static str],
    /// KSIT_SIDECAR_* the values file sets; the others are the injector's defaults.
    sidecar_env: &'static [(&'static str, &'static str)],
}

const CASES: &[Case] = &[
    Case {
        name: "defaults",
        values: None,
        resources: &[
            "manifests/webhook/base",
            "manifests/rbac",
            "manifests/rbac/cluster",
            "manifests/service",
        ],
        components: &[],
        sidecar_env: &[],
    },
    Case {
        name: "cert-manager",
        values: Some("cert-manager"),
        resources: &[
            "manifests/rbac",
            "manifests/rbac/cluster",
            "manifests/service",
        ],
        components: &["manifests/webhook/cert-manager"],
        sidecar_env: &[],
    },
    Case {
        name: "monitoring",
        values: Some("monitoring"),
        resources: &[
            "manifests/webhook/base",
            "manifests/rbac",
            "manifests/rbac/cluster",
            "manifests/service",
            "manifests/monitoring",
        ],
        components: &[
            "manifests/networkpolicy/webhook",
            "manifests/networkpolicy/sidecar",
        ],
        sidecar_env: &[],
    },
    Case {
        name: "podmonitor",
        values: Some("podmonitor"),
        resources: &[
            "manifests/webhook/base",
            "manifests/rbac",
            "manifests/rbac/cluster",
            "manifests/service",
            "manifests/monitoring/podmonitor",
        ],
        components: &[],
        sidecar_env: &[],
    },
    Case {
        name: "sidecar",
        values: Some("sidecar"),
        resources: &[
            "manifests/webhook/base",
            "manifests/rbac",
            "manifests/service",
        ],
        components: &[],
        sidecar_env: &[
            (
                "KSIT_SIDECAR_IMAGE",
                "registry.example:5000/ksit-exporter:0.1.0-rc1",
            ),
            ("KSIT_SIDECAR_MODE", "classic"),
            ("KSIT_SIDECAR_CPU_REQUEST", "20m"),
            ("KSIT_SIDECAR_CPU_LIMIT", "200m"),
            ("KSIT_SIDECAR_MEMORY_LIMIT", ""),
        ],
    },
];

/// helm and kubectl from the control plane's bin dir, or `None` (with a loud SKIPPED line)
/// when they are not built; under `CI=true` that is a failure.
struct Tools {
    helm: PathBuf,
    kubectl: PathBuf,
    /// HELM_*_HOME: helm keeps its caches and settings there, not in the user's home.
    home: PathBuf,
}

fn tools() -> Option<Tools> {
    let bin = std::env::var("KSIT_CONTROLPLANE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_path("target/controlplane/bin"));
    let (helm, kubectl) = (bin.join("helm"), bin.join("kubectl"));
    if !helm.exists() || !kubectl.exists() {
        let why = format!(
            "no helm or kubectl in {}; run `scripts/controlplane.sh build`",
            bin.display()
        );
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("CI=true but {why}");
        }
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let home = repo_path("target/helm-home");
    std::fs::create_dir_all(&home).expect("creating target/helm-home");
    Some(Tools {
        helm,
        kubectl,
        home,
    })
}

impl Tools {
    fn helm(&self, args: &[&str]) -> Output {
        Command::new(&self.helm)
            .args(args)
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_DATA_HOME", self.home.join("data"))
            .current_dir(repo_path(""))
            .output()
            .expect("running helm")
    }

    /// `helm template` of the chart with a case's values file, in the bases' namespace.
    fn template(&self, case: &Case) -> Vec<Value> {
        let mut args = vec!["template", RELEASE, CHART, "--namespace", BASES_NAMESPACE];
        let values = case.values.map(values_file);
        if let Some(v) = &values {
            args.extend(["--values", v]);
        }
        parse_objects(&check(
            self.helm(&args),
            &format!("helm {}", args.join(" ")),
        ))
    }

    /// `kubectl kustomize` of an overlay of the case's bases.
    fn kustomize(&self, case: &Case) -> Vec<Value> {
        let overlay = Overlay::new(case.resources, case.components);
        let out = check(
            Command::new(&self.kubectl)
                .args(["kustomize", overlay.path()])
                .output()
                .expect("running kubectl kustomize"),
            &format!(
                "kubectl kustomize of {:?} {:?}",
                case.resources, case.components
            ),
        );
        parse_objects(&out)
    }
}

fn values_file(name: &str) -> String {
    format!("{CHART}/ci/{name}-values.yaml")
}

/// The objects of a multi-document YAML stream; empty documents (a disabled template) dropped.
fn parse_objects(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{yaml}"))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// kind, namespace (empty when cluster-scoped), name.
type Key = (String, String, String);

fn key(o: &Value) -> Key {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        s(&o["kind"]),
        s(&o["metadata"]["namespace"]),
        s(&o["metadata"]["name"]),
    )
}

fn by_key(objects: Vec<Value>) -> BTreeMap<Key, Value> {
    let mut map = BTreeMap::new();
    for o in objects {
        let k = key(&o);
        assert!(map.insert(k.clone(), o).is_none(), "{k:?} twice");
    }
    map
}

/// Takes the values at `path` out of `v` (`*`: every array item) and returns them.
fn take(v: &mut Value, path: &[&str]) -> Vec<Value> {
    let Some((first, rest)) = path.split_first() else {
        return vec![];
    };
    match (*first, v) {
        ("*", Value::Array(items)) => items.iter_mut().flat_map(|i| take(i, rest)).collect(),
        (k, Value::Object(map)) if rest.is_empty() => map.remove(k).into_iter().collect(),
        (k, Value::Object(map)) => map.get_mut(k).map(|i| take(i, rest)).unwrap_or_default(),
        _ => vec![],
    }
}

/// The env the webhook container of the chart should set for the injected sidecar: the
/// injector's defaults, with the case's values over them. The ITS kubeconfig's two are set
/// only with `ocm.itsKubeconfigSecret` (the_its_kubeconfig_secret_reaches_the_webhook).
fn expected_sidecar_env(case: &Case) -> Vec<Value> {
    ksit_exporter::inject::VARIABLES
        .iter()
        .filter(|(name, _, _)| !name.starts_with("KSIT_SIDECAR_ITS_"))
        .map(|(name, default, _help)| {
            let value = case
                .sidecar_env
                .iter()
                .find(|(n, _)| n == name)
                .map_or(*default, |(_, v)| v);
            json!({"name": name, "value": value})
        })
        .collect()
}

/// The chart's object with what [`HELM_LABELS`] and [`IGNORED`] name taken out and checked.
fn normalize_chart_object(case: &Case, mut o: Value, secret_ca: Option<&Value>) -> Value {
    let what = format!("{}: {:?}", case.name, key(&o));
    let labels = o["metadata"]["labels"]
        .as_object_mut()
        .unwrap_or_else(|| panic!("{what}: no labels"));
    for label in HELM_LABELS {
        let value = labels
            .remove(*label)
            .unwrap_or_else(|| panic!("{what}: no label {label}"));
        let expected = match *label {
            "helm.sh/chart" => json!(format!("ksit-exporter-{}", chart_meta("version"))),
            "app.kubernetes.io/managed-by" => json!("Helm"),
            "app.kubernetes.io/instance" => json!(RELEASE),
            _ => json!(chart_meta("appVersion")),
        };
        assert_eq!(value, expected, "{what}: label {label}");
    }
    if labels.is_empty() {
        o["metadata"]
            .as_object_mut()
            .expect("metadata is an object")
            .remove("labels");
    }
    let kind = o["kind"].as_str().unwrap_or_default().to_string();
    for (ignored_kind, path, _why) in IGNORED {
        if *ignored_kind != kind {
            continue;
        }
        let taken = take(&mut o, path);
        match kind.as_str() {
            "MutatingWebhookConfiguration" => {
                let expected: Vec<Value> = secret_ca.into_iter().cloned().collect();
                let entries = o["webhooks"].as_array().map_or(0, Vec::len);
                assert_eq!(entries, 2, "{what}");
                assert_eq!(
                    taken,
                    vec![expected; entries].concat(),
                    "{what}: every caBundle is the Secret's ca.crt (none with cert-manager)"
                );
            }
            "Deployment" => {
                // The base's env, then the sidecar's settings: put the base's part back.
                let [Value::Array(env)] = taken.as_slice() else {
                    panic!("{what}: one container with env, got {taken:?}");
                };
                let (sidecar, own): (Vec<Value>, Vec<Value>) = env.iter().cloned().partition(|e| {
                    e["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("KSIT_SIDECAR_"))
                });
                assert_eq!(sidecar, expected_sidecar_env(case), "{what}: sidecar env");
                o["spec"]["template"]["spec"]["containers"][0]["env"] = Value::Array(own);
            }
            other => panic!("no check for ignored paths of {other}"),
        }
    }
    o
}

/// A field of Chart.yaml.
fn chart_meta(field: &str) -> String {
    let chart: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo_path(CHART).join("Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("Chart.yaml parses");
    chart[field]
        .as_str()
        .unwrap_or_else(|| panic!("Chart.yaml has no {field}"))
        .to_string()
}

#[test]
fn the_charts_copies_of_the_monitoring_files_are_the_shipped_ones() {
    for (shipped, copy) in COPIES {
        let read =
            |p: &str| std::fs::read(repo_path(p)).unwrap_or_else(|e| panic!("reading {p}: {e}"));
        assert!(
            read(shipped) == read(copy),
            "{copy} differs from {shipped}; the chart serves a copy: `cp {shipped} {copy}`"
        );
    }
    // Every file the chart reads is one of them.
    let files: Vec<PathBuf> = std::fs::read_dir(repo_path(CHART).join("files"))
        .expect("the chart's files/")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    for f in &files {
        assert!(
            COPIES.iter().any(|(_, copy)| repo_path(copy) == *f),
            "{} is in files/ but not in COPIES",
            f.display()
        );
    }
}

/// The README's table of values ("Install with Helm") gives each value's default as
/// values.yaml has it, and names only values that exist.
#[test]
fn the_readmes_values_table_matches_values_yaml() {
    let values: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo_path(CHART).join("values.yaml")).expect("values.yaml"),
    )
    .expect("values.yaml parses");
    let readme = std::fs::read_to_string(repo_path("README.md")).expect("README.md");
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Install with Helm\n"))
        .expect("README.md has a section \"Install with Helm\"");
    let mut rows = 0;
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let (name, default) = (
            cells[0].trim_start_matches("| ").trim_matches('`'),
            cells[1].trim_matches('`'),
        );
        let actual = name.split('.').fold(&values, |v, k| &v[k]);
        assert!(
            !actual.is_null(),
            "README names {name}, which values.yaml lacks"
        );
        let documented: Value = serde_saphyr::from_str(default)
            .unwrap_or_else(|e| panic!("README's default of {name} is not YAML: {e}"));
        assert_eq!(&documented, actual, "README's default of {name}");
        rows += 1;
    }
    assert!(rows >= 10, "only {rows} rows in the README's values table");
}

#[test]
fn the_charts_version_is_the_crates() {
    assert_eq!(chart_meta("appVersion"), env!("CARGO_PKG_VERSION"));
}

#[test]
fn helm_lint_passes_for_every_values_file() {
    let Some(tools) = tools() else {
        return;
    };
    let mut files: Vec<String> = std::fs::read_dir(repo_path(CHART).join("ci"))
        .expect("the chart's ci/")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files.sort();
    let cased: Vec<String> = CASES
        .iter()
        .filter_map(|c| c.values.map(values_file))
        .collect();
    let listed: Vec<String> = files.iter().map(|f| format!("{CHART}/ci/{f}")).collect();
    assert_eq!(
        listed,
        {
            let mut c = cased.clone();
            c.sort();
            c
        },
        "every ci/ values file is a Case"
    );
    for values in std::iter::once(None).chain(cased.iter().map(Some)) {
        let mut args = vec!["lint", CHART, "--strict", "--namespace", BASES_NAMESPACE];
        if let Some(v) = values {
            args.extend(["--values", v]);
        }
        let out = check(tools.helm(&args), &format!("helm {}", args.join(" ")));
        assert!(
            !out.contains("[WARNING]") && !out.contains("[ERROR]"),
            "helm {}:\n{out}",
            args.join(" ")
        );
    }
}

#[test]
fn helm_template_renders_the_bases_objects() {
    let Some(tools) = tools() else {
        return;
    };
    for case in CASES {
        let chart = by_key(tools.template(case));
        let mut bases = by_key(tools.kustomize(case));
        let secret_ca = chart
            .get(&(
                "Secret".to_string(),
                BASES_NAMESPACE.to_string(),
                "ksit-webhook-tls".to_string(),
            ))
            .map(|s| {
                for field in ["ca.crt", "tls.crt", "tls.key"] {
                    assert!(
                        s["data"][field].is_string(),
                        "{}: Secret has no {field}",
                        case.name
                    );
                }
                assert_eq!(s["type"], "kubernetes.io/tls", "{}", case.name);
                check_generated_pair(s, BASES_NAMESPACE);
                s["data"]["ca.crt"].clone()
            });
        assert_eq!(
            secret_ca.is_none(),
            case.values == Some("cert-manager"),
            "{}: the chart makes the Secret exactly when cert-manager does not",
            case.name
        );
        for (kind, name) in BASES_ONLY {
            let k = bases
                .keys()
                .find(|k| k.0 == *kind && k.2 == *name)
                .cloned()
                .unwrap_or_else(|| panic!("{}: the bases have no {kind} {name}", case.name));
            bases.remove(&k);
        }
        let mut chart_objects = BTreeMap::new();
        for (k, o) in chart {
            if CHART_ONLY
                .iter()
                .any(|(kind, name)| k.0 == *kind && k.2 == *name)
            {
                continue;
            }
            chart_objects.insert(k, normalize_chart_object(case, o, secret_ca.as_ref()));
        }
        assert_eq!(
            chart_objects.keys().collect::<Vec<_>>(),
            bases.keys().collect::<Vec<_>>(),
            "{}: the chart's objects (left) and the bases' (right)",
            case.name
        );
        for (k, o) in &chart_objects {
            let pretty = |v: &Value| serde_json::to_string_pretty(v).expect("JSON");
            assert!(
                o == &bases[k],
                "{}: {k:?} differs between the chart and the bases\nchart: {}\nbases: {}",
                case.name,
                pretty(o),
                pretty(&bases[k])
            );
        }
    }
}

/// The generated pair: tls.crt names the webhook's Service in `namespace` and is issued by ca.crt.
fn check_generated_pair(secret: &Value, namespace: &str) {
    use base64::Engine;
    let pem = |field: &str| {
        let b64 = secret["data"][field]
            .as_str()
            .unwrap_or_else(|| panic!("Secret has no {field}"));
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|e| panic!("{field} is not base64: {e}"))
    };
    let (ca_pem, tls_pem) = (pem("ca.crt"), pem("tls.crt"));
    let (_, ca) = x509_parser::pem::parse_x509_pem(&ca_pem).expect("ca.crt is PEM");
    let (_, tls) = x509_parser::pem::parse_x509_pem(&tls_pem).expect("tls.crt is PEM");
    let ca = ca.parse_x509().expect("ca.crt is a certificate");
    let tls = tls.parse_x509().expect("tls.crt is a certificate");
    assert!(ca.is_ca(), "ca.crt is not a CA");
    assert_eq!(
        tls.issuer(),
        ca.subject(),
        "tls.crt is not issued by ca.crt"
    );
    let names: Vec<String> = tls
        .subject_alternative_name()
        .expect("a valid SAN extension")
        .expect("tls.crt has SANs")
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .collect();
    for dns in [
        format!("ksit-webhook.{namespace}.svc"),
        format!("ksit-webhook.{namespace}.svc.cluster.local"),
    ] {
        assert!(names.contains(&dns), "tls.crt names {names:?}, not {dns}");
    }
}

/// A release of the chart in the test control plane, in a namespace of its own, with
/// `fullnameOverride` set to that namespace's name so that its cluster-scoped objects do not
/// meet another test's. Uninstalled on drop whatever happened (a MutatingWebhookConfiguration
/// left behind would be consulted by every later pod creation that matches it). While it is
/// installed no pod matches it: the only pods made are the webhook's own, in the release's
/// namespace, which both entries exclude; so the API server never tries to call the webhook's
/// Service, which nothing here could answer.
struct Release<'a> {
    tools: &'a Tools,
    cp: &'a ControlPlane,
    namespace: TestNamespace,
    /// `--set` for every install and upgrade: the namespaces and names of this test.
    base_args: Vec<String>,
    installed: bool,
    /// The objects of the last install or upgrade.
    last: BTreeMap<Key, Value>,
}

/// What an install or upgrade left in the API server.
struct Step {
    /// The release's objects, as the API server has them.
    live: BTreeMap<Key, Value>,
    /// The objects of the step before that this one removed, checked gone from the API server.
    gone: Vec<Key>,
}

impl<'a> Release<'a> {
    async fn new(tools: &'a Tools, cp: &'a ControlPlane, ksit_namespace: &str) -> Release<'a> {
        let namespace = test_namespace(cp, "helm", &[]).await;
        let base_args = vec![
            "--set".to_string(),
            format!("ksit.namespace={ksit_namespace}"),
            "--set".to_string(),
            format!("fullnameOverride={}", namespace.name),
        ];
        Release {
            tools,
            cp,
            namespace,
            base_args,
            installed: false,
            last: BTreeMap::new(),
        }
    }

    fn helm(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend([
            "--namespace",
            &self.namespace.name,
            "--kubeconfig",
            self.cp.kubeconfig.to_str().expect("UTF-8 path"),
        ]);
        self.tools.helm(&all)
    }

    /// `helm install` (or `upgrade`) with `args` after the test's own: every object of the
    /// release's manifest is in the API server, and those of the step before that it no longer
    /// has are not. Without --wait: the control plane runs no pods, so the webhook never
    /// becomes ready.
    fn deploy(&mut self, verb: &str, args: &[&str]) -> Step {
        let mut all = vec![verb, RELEASE, CHART, "--timeout", "60s"];
        all.extend(self.base_args.iter().map(String::as_str));
        all.extend(args);
        self.installed = true;
        check(self.helm(&all), &format!("helm {}", all.join(" ")));
        let manifest = check(
            self.helm(&["get", "manifest", RELEASE]),
            "helm get manifest",
        );
        let rendered = by_key(parse_objects(&manifest));
        let live = self.live(&manifest);
        assert_eq!(
            live.keys().collect::<Vec<_>>(),
            rendered.keys().collect::<Vec<_>>(),
            "after helm {verb}: the objects in the API server (left) and the release's (right)"
        );
        for (k, o) in &live {
            assert_eq!(
                o["metadata"]["labels"]["app.kubernetes.io/instance"], RELEASE,
                "{k:?}"
            );
            assert_eq!(
                o["metadata"]["annotations"]["meta.helm.sh/release-namespace"],
                self.namespace.name.as_str(),
                "{k:?}"
            );
        }
        let removed: BTreeMap<Key, Value> = std::mem::replace(&mut self.last, live.clone())
            .into_iter()
            .filter(|(k, _)| !live.contains_key(k))
            .collect();
        let left = self.live(&to_yaml(&removed));
        assert!(
            left.is_empty(),
            "after helm {verb}: objects the release no longer has are left: {:?}",
            left.keys().collect::<Vec<_>>()
        );
        Step {
            live,
            gone: removed.into_keys().collect(),
        }
    }

    /// Those of the objects in `yaml` that exist in the API server.
    fn live(&self, yaml: &str) -> BTreeMap<Key, Value> {
        if yaml.trim().is_empty() {
            return BTreeMap::new();
        }
        let out = check(
            self.cp.kubectl_stdin(
                &["get", "--ignore-not-found", "-o", "json", "-f", "-"],
                yaml,
            ),
            "kubectl get -f -",
        );
        if out.trim().is_empty() {
            return BTreeMap::new();
        }
        let v: Value = serde_json::from_str(&out).expect("kubectl prints JSON");
        match v["kind"].as_str() {
            Some("List") => by_key(v["items"].as_array().cloned().unwrap_or_default()),
            _ => by_key(vec![v]),
        }
    }

    /// `helm uninstall`, then nothing of the last step's objects is left, nor a ReplicaSet or
    /// pod of the webhook (the garbage collector removes them after their Deployment).
    async fn uninstall(&mut self) {
        check(
            self.helm(&["uninstall", RELEASE, "--timeout", "60s"]),
            "helm uninstall",
        );
        let left = self.live(&to_yaml(&self.last));
        assert!(
            left.is_empty(),
            "left after helm uninstall: {:?}",
            left.keys().collect::<Vec<_>>()
        );
        let ns = self.namespace.name.clone();
        common::eventually(
            Duration::from_secs(60),
            "the webhook's ReplicaSets and pods gone",
            || {
                let out = self.cp.kubectl(&[
                    "get",
                    "replicasets,pods",
                    "-n",
                    &ns,
                    "-l",
                    "app.kubernetes.io/name=ksit-webhook",
                    "-o",
                    "name",
                ]);
                async move {
                    let names = check(out, "kubectl get replicasets,pods");
                    if names.trim().is_empty() {
                        Ok(())
                    } else {
                        Err(names)
                    }
                }
            },
        )
        .await;
        let list = check(self.helm(&["list", "--all", "-q"]), "helm list");
        assert!(list.trim().is_empty(), "releases left: {list}");
        // Only now: whatever failed above, Drop uninstalls again.
        self.installed = false;
    }
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if self.installed {
            let _ = self.helm(&["uninstall", RELEASE, "--wait=false", "--timeout", "30s"]);
        }
    }
}

/// Objects as one YAML stream (JSON documents), as `kubectl -f -` reads it.
fn to_yaml(objects: &BTreeMap<Key, Value>) -> String {
    objects
        .values()
        .map(|o| serde_json::to_string(o).expect("JSON"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

fn find<'a>(objects: &'a BTreeMap<Key, Value>, kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|(k, _)| k.0 == kind && k.2 == name)
        .map(|(_, o)| o)
        .unwrap_or_else(|| {
            panic!(
                "no {kind} {name} in {:?}",
                objects.keys().collect::<Vec<_>>()
            )
        })
}

fn has(objects: &BTreeMap<Key, Value>, kind: &str) -> bool {
    objects.keys().any(|k| k.0 == kind)
}

fn sidecar_image(objects: &BTreeMap<Key, Value>) -> Value {
    let env = &find(objects, "Deployment", "ksit-webhook")["spec"]["template"]["spec"]["containers"]
        [0]["env"];
    env.as_array()
        .expect("the webhook's env")
        .iter()
        .find(|e| e["name"] == "KSIT_SIDECAR_IMAGE")
        .map(|e| e["value"].clone())
        .expect("KSIT_SIDECAR_IMAGE set")
}

/// The caBundle of each webhook entry, each the Secret's ca.crt.
fn check_ca_bundle(objects: &BTreeMap<Key, Value>) -> Value {
    let ca = find(objects, "Secret", "ksit-webhook-tls")["data"]["ca.crt"].clone();
    assert!(ca.is_string(), "no ca.crt in the Secret");
    let mwc = objects
        .iter()
        .find(|(k, _)| k.0 == "MutatingWebhookConfiguration")
        .map(|(_, o)| o)
        .expect("a MutatingWebhookConfiguration");
    for w in mwc["webhooks"].as_array().expect("webhooks") {
        assert_eq!(w["clientConfig"]["caBundle"], ca, "{}", w["name"]);
    }
    ca
}

/// (kind, name) of each key, sorted.
fn kinds_names(keys: &[Key]) -> Vec<(&str, &str)> {
    let mut v: Vec<(&str, &str)> = keys.iter().map(|k| (k.0.as_str(), k.2.as_str())).collect();
    v.sort();
    v
}

/// Defaults: the generated pair is in the Secret and both caBundles, and an upgrade that
/// changes the sidecar's image and turns on the webhook's NetworkPolicy keeps that pair.
#[tokio::test]
async fn install_upgrade_uninstall_with_defaults() {
    let Some(tools) = tools() else {
        return;
    };
    let Some(cp) = control_plane().await else {
        return;
    };
    let ksit = test_namespace(&cp, "helm-ksit", &[]).await;
    let mut release = Release::new(&tools, &cp, &ksit.name).await;
    let installed = release.deploy("install", &[]).live;
    let ca = check_ca_bundle(&installed);
    check_generated_pair(
        find(&installed, "Secret", "ksit-webhook-tls"),
        &release.namespace.name,
    );
    assert!(has(&installed, "ClusterRole") && !has(&installed, "NetworkPolicy"));
    assert_eq!(
        sidecar_image(&installed),
        format!(
            "ghcr.io/kubestellar/ksit-exporter:{}",
            env!("CARGO_PKG_VERSION")
        )
    );

    let upgraded = release.deploy(
        "upgrade",
        &[
            "--set",
            "sidecar.image.tag=0.2.0-test",
            "--set",
            "networkPolicy.webhook.enabled=true",
        ],
    );
    assert!(upgraded.gone.is_empty(), "{:?}", upgraded.gone);
    let upgraded = upgraded.live;
    assert_eq!(
        sidecar_image(&upgraded),
        "ghcr.io/kubestellar/ksit-exporter:0.2.0-test"
    );
    find(&upgraded, "NetworkPolicy", "ksit-webhook");
    assert_eq!(check_ca_bundle(&upgraded), ca, "the upgrade kept the CA");
    assert_eq!(
        find(&upgraded, "Secret", "ksit-webhook-tls")["data"],
        find(&installed, "Secret", "ksit-webhook-tls")["data"],
        "the upgrade kept the serving pair"
    );

    release.uninstall().await;
}

/// cert-manager on (its CRDs only: no cert-manager runs, so no Secret appears), then off by an
/// upgrade: the Issuers and Certificates go, the generated pair comes.
#[tokio::test]
async fn install_upgrade_uninstall_with_cert_manager() {
    let Some(tools) = tools() else {
        return;
    };
    let Some(cp) = control_plane().await else {
        return;
    };
    install_cert_manager_crds(&cp).await;
    let ksit = test_namespace(&cp, "helm-ksit", &[]).await;
    let mut release = Release::new(&tools, &cp, &ksit.name).await;
    let values = values_file("cert-manager");
    let installed = release.deploy("install", &["--values", &values]).live;
    let mwc = installed
        .iter()
        .find(|(k, _)| k.0 == "MutatingWebhookConfiguration")
        .map(|(_, o)| o)
        .expect("a MutatingWebhookConfiguration");
    assert_eq!(
        mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{}/ksit-webhook", release.namespace.name)
    );
    for w in mwc["webhooks"].as_array().expect("webhooks") {
        assert!(w["clientConfig"]["caBundle"].is_null(), "{w}");
    }
    let certificate = find(&installed, "Certificate", "ksit-webhook");
    assert_eq!(
        certificate["spec"]["dnsNames"][0],
        format!("ksit-webhook.{}.svc", release.namespace.name)
    );
    assert!(!has(&installed, "Secret"));

    let upgraded = release.deploy(
        "upgrade",
        &["--values", &values, "--set", "certManager.enabled=false"],
    );
    assert_eq!(
        kinds_names(&upgraded.gone),
        [
            ("Certificate", "ksit-webhook"),
            ("Certificate", "ksit-webhook-ca"),
            ("Issuer", "ksit-webhook-ca"),
            ("Issuer", "ksit-webhook-selfsigned"),
        ]
    );
    check_ca_bundle(&upgraded.live);

    release.uninstall().await;
}

/// Monitoring and both NetworkPolicies on, then off by an upgrade that also changes the
/// sidecar's image: the ServiceMonitor, PrometheusRule, ConfigMaps and policies go.
#[tokio::test]
async fn install_upgrade_uninstall_with_monitoring() {
    let Some(tools) = tools() else {
        return;
    };
    let Some(cp) = control_plane().await else {
        return;
    };
    let ksit = test_namespace(&cp, "helm-ksit", &[]).await;
    let mut release = Release::new(&tools, &cp, &ksit.name).await;
    let values = values_file("monitoring");
    release.deploy("install", &["--values", &values]);

    let upgraded = release.deploy("upgrade", &["--set", "sidecar.image.tag=0.2.0-test"]);
    assert_eq!(
        kinds_names(&upgraded.gone),
        [
            ("ConfigMap", "ksit-dashboard"),
            ("ConfigMap", "ksit-prometheus-scrape-config"),
            ("NetworkPolicy", "ksit-exporter-metrics"),
            ("NetworkPolicy", "ksit-webhook"),
            ("PrometheusRule", "ksit-exporter"),
            ("ServiceMonitor", "ksit-monitor"),
        ]
    );
    assert_eq!(
        sidecar_image(&upgraded.live),
        "ghcr.io/kubestellar/ksit-exporter:0.2.0-test"
    );

    release.uninstall().await;
}

/// cert-manager's CRDs, from the release pinned in tests/controlplane/helm/cert-manager.
async fn install_cert_manager_crds(cp: &ControlPlane) {
    let moddir = repo_path("tests/controlplane/helm/cert-manager");
    let gomod = std::fs::read_to_string(moddir.join("go.mod")).expect("reading its go.mod");
    let version = gomod
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("require github.com/cert-manager/cert-manager ")
        })
        .expect("cert-manager pinned in tests/controlplane/helm/cert-manager/go.mod")
        .trim();
    let out = check(
        Command::new("go")
            .args([
                "mod",
                "download",
                "-json",
                &format!("github.com/cert-manager/cert-manager@{version}"),
            ])
            .current_dir(&moddir)
            .env("GOTOOLCHAIN", "local")
            .output()
            .expect("running go"),
        "go mod download of cert-manager",
    );
    let dir: Value = serde_json::from_str(&out).expect("go mod download -json prints JSON");
    let crds = PathBuf::from(dir["Dir"].as_str().expect("Dir in go mod download -json"))
        .join("deploy/crds");
    check(
        cp.kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            crds.to_str().expect("UTF-8 path"),
        ]),
        "installing cert-manager's CRDs",
    );
    cp.wait_established(&["issuers.cert-manager.io", "certificates.cert-manager.io"])
        .await;
}

/// Whether a Kubernetes label selector (matchLabels only, as both Prometheus selectors below
/// are) selects these labels; an empty selector selects everything.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| &labels[k] == v)
}

/// Whether a Prometheus with these ServiceMonitor selectors (as prometheus-operator reads
/// `serviceMonitorSelector` and `serviceMonitorNamespaceSelector`) takes this ServiceMonitor.
fn prometheus_takes(sm_selector: &Value, ns_selector: &Value, sm: &Value) -> bool {
    let ns = sm["metadata"]["namespace"].as_str().unwrap_or_default();
    selects(sm_selector, &sm["metadata"]["labels"])
        && selects(ns_selector, &json!({"kubernetes.io/metadata.name": ns}))
}

/// kube-prometheus-stack's two conventions (docs/upstream.md): KubeStellar's install takes
/// every ServiceMonitor in ks-monitoring whatever its labels; a default one takes every
/// ServiceMonitor labelled `release: <release>` in any namespace. One rendering with
/// `additionalLabels.release`, `namespace=ks-monitoring` and `interval=15s` is taken by both,
/// points back at KSIT's namespace, and is accepted by the API server's CRD schema there; the
/// defaults are taken by neither, and each example values file by its own.
#[tokio::test]
async fn the_servicemonitor_fits_kubestellars_and_a_default_kube_prometheus_stack() {
    let Some(tools) = tools() else {
        return;
    };
    let kubestellar = (
        json!({}),
        json!({"matchLabels": {"kubernetes.io/metadata.name": "ks-monitoring"}}),
    );
    let default_kps = (json!({"matchLabels": {"release": "prometheus"}}), json!({}));
    let render = |extra: &[&str]| -> Vec<Value> {
        let mut args = vec!["template", RELEASE, CHART, "--namespace", BASES_NAMESPACE];
        args.extend(extra);
        parse_objects(&check(
            tools.helm(&args),
            &format!("helm {}", args.join(" ")),
        ))
    };
    let of_kind = |objects: &[Value], kind: &str| -> Value {
        let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "one {kind}: {found:?}");
        found[0].clone()
    };

    let both = render(&[
        "--set",
        "monitoring.serviceMonitor.enabled=true",
        "--set",
        "monitoring.serviceMonitor.additionalLabels.release=prometheus",
        "--set",
        "monitoring.serviceMonitor.namespace=ks-monitoring",
        "--set",
        "monitoring.serviceMonitor.interval=15s",
        "--set",
        "monitoring.serviceMonitor.scrapeTimeout=5s",
        "--set",
        "monitoring.serviceMonitor.honorLabels=false",
        "--set",
        "monitoring.serviceMonitor.relabelings[0].targetLabel=hosting",
        "--set",
        "monitoring.serviceMonitor.relabelings[0].replacement=east",
        "--set",
        "monitoring.serviceMonitor.metricRelabelings[0].action=drop",
        "--set",
        "monitoring.serviceMonitor.metricRelabelings[0].sourceLabels[0]=__name__",
        "--set",
        "monitoring.serviceMonitor.metricRelabelings[0].regex=go_.*",
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--set",
        "monitoring.prometheusRule.namespace=ks-monitoring",
        "--set",
        "monitoring.prometheusRule.additionalLabels.release=prometheus",
    ]);
    let sm = of_kind(&both, "ServiceMonitor");
    assert!(
        prometheus_takes(&kubestellar.0, &kubestellar.1, &sm),
        "KubeStellar's: {sm}"
    );
    assert!(
        prometheus_takes(&default_kps.0, &default_kps.1, &sm),
        "a default one: {sm}"
    );
    assert_eq!(sm["metadata"]["namespace"], "ks-monitoring");
    // The Service is in KSIT's namespace (ksit.namespace), not the ServiceMonitor's.
    assert_eq!(
        sm["spec"]["namespaceSelector"],
        json!({"matchNames": ["ksit-system"]})
    );
    let service = both
        .iter()
        .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "ksit-monitor")
        .expect("the ksit-monitor Service");
    assert!(
        service["metadata"]["namespace"] == "ksit-system"
            && selects(&sm["spec"]["selector"], &service["metadata"]["labels"]),
        "{service}"
    );
    assert_eq!(
        sm["spec"]["endpoints"],
        json!([{
            "port": "metrics",
            "interval": "15s",
            "scrapeTimeout": "5s",
            "honorLabels": false,
            "relabelings": [{"targetLabel": "hosting", "replacement": "east"}],
            "metricRelabelings": [{"action": "drop", "sourceLabels": ["__name__"], "regex": "go_.*"}],
        }])
    );
    let rule = of_kind(&both, "PrometheusRule");
    assert_eq!(rule["metadata"]["namespace"], "ks-monitoring");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");

    // Neither convention takes the defaults: the page's ServiceMonitor in ksit-system, unlabelled.
    let plain = of_kind(
        &render(&["--set", "monitoring.serviceMonitor.enabled=true"]),
        "ServiceMonitor",
    );
    assert!(
        !prometheus_takes(&kubestellar.0, &kubestellar.1, &plain),
        "{plain}"
    );
    assert!(
        !prometheus_takes(&default_kps.0, &default_kps.1, &plain),
        "{plain}"
    );
    assert_eq!(plain["spec"].get("namespaceSelector"), None, "{plain}");

    // Each example values file for the install it names.
    let ks = render(&[
        "--values",
        &format!("{CHART}/examples/kubestellar-values.yaml"),
    ]);
    let ks_sm = of_kind(&ks, "ServiceMonitor");
    assert!(
        prometheus_takes(&kubestellar.0, &kubestellar.1, &ks_sm),
        "{ks_sm}"
    );
    assert_eq!(ks_sm["spec"]["endpoints"][0]["interval"], "15s");
    let kps = render(&[
        "--values",
        &format!("{CHART}/examples/kube-prometheus-stack-values.yaml"),
    ]);
    let kps_sm = of_kind(&kps, "ServiceMonitor");
    assert!(
        prometheus_takes(&default_kps.0, &default_kps.1, &kps_sm),
        "{kps_sm}"
    );
    assert_eq!(
        of_kind(&kps, "PrometheusRule")["metadata"]["labels"]["release"],
        "prometheus"
    );

    // The API server's CRD schemas accept them where they would live.
    let Some(cp) = control_plane().await else {
        return;
    };
    let ks_monitoring = test_namespace(&cp, "ks-monitoring", &[]).await;
    for mut o in [sm, rule] {
        o["metadata"]["namespace"] = json!(ks_monitoring.name);
        let out = cp.kubectl_stdin(
            &["apply", "--dry-run=server", "-f", "-"],
            &serde_json::to_string(&o).expect("JSON"),
        );
        check(out, &format!("server-side dry run of {}", o["kind"]));
    }
}

/// `ocm.itsKubeconfigSecret` reaches the webhook as the injector's variables, so every sidecar
/// it injects mounts the ITS's kubeconfig; unset, the webhook gets neither variable.
#[test]
fn the_its_kubeconfig_secret_reaches_the_webhook() {
    let Some(tools) = tools() else {
        return;
    };
    let env_of = |extra: &[&str]| -> Vec<Value> {
        let mut args = vec!["template", RELEASE, CHART, "--namespace", BASES_NAMESPACE];
        args.extend(extra);
        let objects = parse_objects(&check(tools.helm(&args), "helm template"));
        let deployment = objects
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .expect("the webhook's Deployment")
            .clone();
        deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env")
            .iter()
            .filter(|e| e["name"].as_str().is_some_and(|n| n.contains("ITS")))
            .cloned()
            .collect()
    };
    assert_eq!(env_of(&[]), Vec::<Value>::new());
    assert_eq!(
        env_of(&[
            "--set",
            "ocm.itsKubeconfigSecret=its1-kubeconfig",
            "--set",
            "ocm.itsKubeconfigKey=config"
        ]),
        [
            json!({"name": "KSIT_SIDECAR_ITS_KUBECONFIG_SECRET", "value": "its1-kubeconfig"}),
            json!({"name": "KSIT_SIDECAR_ITS_KUBECONFIG_KEY", "value": "config"}),
        ]
    );
}

/// metricsSecurity reaches everything it concerns, as the kustomize pieces for it
/// (manifests/rbac/metrics-auth, manifests/monitoring/secure) have it: the injector's variables,
/// the sidecar's review rights and the metrics-reader role, and a ServiceMonitor endpoint with
/// scheme https, the Secret's CA and the Prometheus's token. auth without TLS is refused.
#[test]
fn the_secure_metrics_port_reaches_the_webhook_rbac_and_monitors() {
    let Some(tools) = tools() else {
        return;
    };
    let render = |extra: &[&str]| -> Vec<Value> {
        let mut args = vec!["template", RELEASE, CHART, "--namespace", BASES_NAMESPACE];
        args.extend(extra);
        parse_objects(&check(tools.helm(&args), "helm template"))
    };
    let secure = render(&[
        "--set",
        "metricsSecurity.tlsSecret=ksit-exporter-metrics-tls",
        "--set",
        "metricsSecurity.auth=kubernetes",
        "--set",
        "metricsSecurity.readers[0].name=prometheus-k8s",
        "--set",
        "metricsSecurity.readers[0].namespace=monitoring",
        "--set",
        "monitoring.serviceMonitor.enabled=true",
    ]);
    let env: Vec<Value> = secure
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("the webhook's Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter(|e| {
            e["name"]
                .as_str()
                .is_some_and(|n| n == "KSIT_SIDECAR_TLS_SECRET" || n == "KSIT_SIDECAR_METRICS_AUTH")
        })
        .cloned()
        .collect();
    assert_eq!(
        env,
        [
            json!({"name": "KSIT_SIDECAR_TLS_SECRET", "value": "ksit-exporter-metrics-tls"}),
            json!({"name": "KSIT_SIDECAR_METRICS_AUTH", "value": "kubernetes"}),
        ]
    );
    // The chart's roles and bindings are the kustomize piece's, rule for rule and subject for
    // subject.
    let kustomized = parse_objects(&check(
        Command::new(&tools.kubectl)
            .args(["kustomize", "manifests/rbac/metrics-auth"])
            .current_dir(repo_path(""))
            .output()
            .expect("kubectl kustomize"),
        "kubectl kustomize manifests/rbac/metrics-auth",
    ));
    for object in &kustomized {
        let name = object["metadata"]["name"].as_str().expect("a name");
        let ours = secure
            .iter()
            .find(|o| o["kind"] == object["kind"] && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("the chart has no {} {name}", object["kind"]));
        for field in ["rules", "roleRef", "subjects"] {
            assert_eq!(
                ours[field], object[field],
                "{} {name} {field}",
                object["kind"]
            );
        }
    }
    let monitor = Overlay::new(&["manifests/monitoring"], &["manifests/monitoring/secure"]);
    let kustomized = parse_objects(&check(
        Command::new(&tools.kubectl)
            .args(["kustomize", monitor.path()])
            .output()
            .expect("kubectl kustomize"),
        "kubectl kustomize of the secure ServiceMonitor",
    ));
    let endpoint = |objects: &[Value]| {
        let sm = objects
            .iter()
            .find(|o| o["kind"] == "ServiceMonitor")
            .expect("a ServiceMonitor");
        let e = &sm["spec"]["endpoints"][0];
        ["scheme", "tlsConfig", "bearerTokenFile"].map(|f| e[f].clone())
    };
    assert_eq!(endpoint(&secure), endpoint(&kustomized));
    assert_eq!(endpoint(&secure)[0], "https");

    // Off by default: nothing of it is rendered.
    let plain = render(&["--set", "monitoring.serviceMonitor.enabled=true"]);
    assert!(!plain.iter().any(|o| {
        o["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.ends_with("-auth") || n.ends_with("-metrics-reader"))
    }));
    assert_eq!(endpoint(&plain)[0], Value::Null);
    let refused = tools.helm(&[
        "template",
        RELEASE,
        CHART,
        "--set",
        "metricsSecurity.auth=kubernetes",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("needs metricsSecurity.tlsSecret"));
}
