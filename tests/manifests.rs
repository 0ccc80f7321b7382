//! The shipped monitoring manifests, checked by the tools that consume them: kustomize builds of
//! every kustomization (also those nested inside another, which the server-side dry run in
//! controlplane_smoke.rs does not reach), a server-side dry run of those nested ones and of the
//! prometheus-operator bundle the kind demo applies, promtool on the alerts (syntax and unit
//! tests of when each fires), on a Prometheus config embedding the page's scrape config, and on
//! every query of the Grafana dashboard; and that the ServiceMonitor and the scrape config are
//! the page's.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ControlPlane, Overlay, check, control_plane};
use serde_json::{Value, json};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Every directory under `dir` holding a kustomization.yaml, nested ones included.
fn kustomizations(dir: &Path, out: &mut Vec<PathBuf>) {
    if dir.join("kustomization.yaml").exists() {
        out.push(dir.to_path_buf());
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    for d in subdirs {
        kustomizations(&d, out);
    }
}

fn find<'a>(items: &'a [Value], kind: &str, name: &str) -> &'a Value {
    items
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn promtool(cp: &ControlPlane, args: &[&str]) -> String {
    check(
        Command::new(cp.bin_dir.join("promtool"))
            .args(args)
            .output()
            .expect("running promtool"),
        &format!("promtool {}", args.join(" ")),
    )
}

#[tokio::test]
async fn every_kustomization_builds() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let mut dirs = Vec::new();
    kustomizations(&repo("manifests"), &mut dirs);
    for d in [
        "manifests/sidecar",
        "manifests/layouts/kubebuilder",
        "manifests/layouts/kustomize-dev",
        "manifests/layouts/kustomize-prod",
        "manifests/layouts/helm",
        "manifests/monitoring/podmonitor",
        "manifests/demo/prometheus",
    ] {
        assert!(dirs.contains(&repo(d)), "{d} is not a kustomization");
    }
    for dir in dirs {
        check(
            cp.kubectl(&["kustomize", dir.to_str().unwrap()]),
            &format!("kubectl kustomize {}", dir.display()),
        );
    }
}

/// The CRD of a prometheus-operator kind, from the bundle release the tests pin.
fn operator_module_dir() -> PathBuf {
    let crds = repo("tests/controlplane/crds");
    let gomod = std::fs::read_to_string(crds.join("go.mod")).unwrap();
    let version = gomod
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("github.com/prometheus-operator/prometheus-operator ")
        })
        .expect("prometheus-operator pinned in tests/controlplane/crds/go.mod")
        .trim();
    let out = check(
        Command::new("go")
            .args([
                "mod",
                "download",
                "-json",
                &format!("github.com/prometheus-operator/prometheus-operator@{version}"),
            ])
            .current_dir(&crds)
            .env("GOTOOLCHAIN", "local")
            .output()
            .expect("running go"),
        "go mod download",
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    PathBuf::from(v["Dir"].as_str().expect("Dir in go mod download -json"))
}

#[tokio::test]
async fn nested_kustomizations_and_the_operator_bundle_pass_server_side_dry_run() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let module = operator_module_dir();
    let bundle = module.join("bundle.yaml");
    check(
        cp.kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--dry-run=server",
            "-f",
            bundle.to_str().unwrap(),
        ]),
        "server-side dry run of the prometheus-operator bundle",
    );
    // The demo's Prometheus object needs its CRD, which the control plane does not install.
    let prometheuses =
        module.join("example/prometheus-operator-crd/monitoring.coreos.com_prometheuses.yaml");
    check(
        cp.kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            prometheuses.to_str().unwrap(),
        ]),
        "installing the Prometheus CRD",
    );
    cp.wait_established(&["prometheuses.monitoring.coreos.com"])
        .await;
    for dir in [
        "manifests/monitoring/podmonitor",
        "manifests/monitoring/common",
        "manifests/demo/prometheus",
    ] {
        for ns in ["ksit-system", "monitoring"] {
            cp.kubectl(&["create", "namespace", ns]);
        }
        check(
            cp.kubectl(&[
                "apply",
                "--dry-run=server",
                "-k",
                repo(dir).to_str().unwrap(),
            ]),
            &format!("kubectl apply --dry-run=server -k {dir}"),
        );
    }
}

/// The optional NetworkPolicy components, each in an overlay of what it protects, as their
/// comments say to use them: the policy is in the Deployment's namespace, selects its pods,
/// lets the monitoring namespace reach the metrics port, names only ports the pods have, and
/// the whole passes a server-side dry run.
#[tokio::test]
async fn network_policy_components_select_their_pods_and_pass_server_side_dry_run() {
    let Some(cp) = control_plane().await else {
        return;
    };
    for (base, components, policy, deployment, metrics_port) in [
        (
            "manifests/webhook/base",
            &["manifests/networkpolicy/webhook"][..],
            "ksit-webhook",
            "ksit-webhook",
            json!("metrics"),
        ),
        // KSIT's install with the sidecar added by hand.
        (
            "tests/testdata/layouts/kubebuilder",
            &["manifests/sidecar", "manifests/networkpolicy/sidecar"][..],
            "ksit-exporter-metrics",
            "ksit-controller-manager",
            json!(8080),
        ),
    ] {
        let component = components.last().expect("a component under test");
        let overlay = Overlay::new(&[base], components);
        let dir = overlay.path();
        let items = cp.render(dir);
        let np = find(&items, "NetworkPolicy", policy);
        let deploy = find(&items, "Deployment", deployment);
        let namespace = deploy["metadata"]["namespace"].as_str().unwrap();
        assert_eq!(np["metadata"]["namespace"], namespace, "{policy}");
        let pod = &deploy["spec"]["template"];
        let selector = np["spec"]["podSelector"]["matchLabels"]
            .as_object()
            .unwrap();
        assert!(!selector.is_empty(), "{np}");
        for (k, v) in selector {
            assert_eq!(&pod["metadata"]["labels"][k], v, "{policy} selects {k}={v}");
        }
        let container_ports: Vec<&Value> = pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .collect();
        let rules = np["spec"]["ingress"].as_array().unwrap();
        for port in rules.iter().flat_map(|r| r["ports"].as_array().unwrap()) {
            let known = match &port["port"] {
                Value::String(name) => container_ports.iter().any(|p| p["name"] == *name),
                // A range keeps whatever else the pod serves open.
                Value::Number(_) if !port["endPort"].is_null() => true,
                n => container_ports.iter().any(|p| p["containerPort"] == *n),
            };
            assert!(
                known,
                "{policy}: port {port} is none of {container_ports:?}"
            );
        }
        let from_monitoring = json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]);
        assert!(
            rules.iter().any(|r| r["from"] == from_monitoring
                && r["ports"] == json!([{"port": metrics_port, "protocol": "TCP"}])),
            "{policy}: metrics from the monitoring namespace: {np}"
        );
        for ns in [namespace, "monitoring"] {
            cp.kubectl(&["create", "namespace", ns]);
        }
        check(
            cp.kubectl(&["apply", "--dry-run=server", "-k", dir]),
            &format!("kubectl apply --dry-run=server -k {base} with {component}"),
        );
    }
}

/// The page's scrape config, verbatim.
const PAGE_SCRAPE_CONFIG: &str = r#"
scrape_configs:
  - job_name: 'ksit'
    kubernetes_sd_configs:
      - role: endpoints
    relabel_configs:
      - source_labels: [__meta_kubernetes_service_name]
        action: keep
        regex: ksit-monitor
"#;

#[tokio::test]
async fn the_scrape_config_and_servicemonitor_are_the_pages() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let shipped: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo(
            "manifests/monitoring/common/prometheus-scrape-config.yaml",
        ))
        .unwrap(),
    )
    .unwrap();
    let mut page: Value = serde_saphyr::from_str(PAGE_SCRAPE_CONFIG).unwrap();
    // The additions: docs/metrics.md "Labels that cannot clash", only the Service's port
    // (role endpoints also targets every other port of the pods; tests/layouts_e2e.rs), and the
    // target labels prometheus-operator gives a ServiceMonitor's targets, which the alerts and
    // the dashboard print (tests/dashboard_e2e.rs).
    page["scrape_configs"][0]["honor_labels"] = json!(true);
    let relabel = page["scrape_configs"][0]["relabel_configs"]
        .as_array_mut()
        .unwrap();
    relabel.push(json!({"source_labels": ["__meta_kubernetes_endpoint_port_name"], "action": "keep", "regex": "metrics"}));
    for (meta, label) in [
        ("namespace", "namespace"),
        ("service_name", "service"),
        ("pod_name", "pod"),
        ("pod_container_name", "container"),
    ] {
        relabel.push(
            json!({"source_labels": [format!("__meta_kubernetes_{meta}")], "target_label": label}),
        );
    }
    assert_eq!(shipped, page);

    let items = cp.render("manifests/monitoring");
    let sm = find(&items, "ServiceMonitor", "ksit-monitor");
    assert_eq!(sm["metadata"]["labels"]["app"], "ksit");
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"],
        json!({"app": "ksit"})
    );
    assert_eq!(
        sm["spec"]["endpoints"],
        json!([{"port": "metrics", "interval": "30s", "honorLabels": true}])
    );
    let cm = find(&items, "ConfigMap", "ksit-prometheus-scrape-config");
    assert_eq!(
        serde_saphyr::from_str::<Value>(
            cm["data"]["prometheus-scrape-config.yaml"]
                .as_str()
                .unwrap()
        )
        .unwrap(),
        shipped
    );

    // Both find the ksit-monitor Service; which pods it selects: every_layout_... below.
    let items = cp.render("manifests/service");
    let svc = find(&items, "Service", "ksit-monitor");
    assert_eq!(svc["metadata"]["labels"]["app"], "ksit");
    assert_eq!(
        svc["spec"]["ports"],
        json!([{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}])
    );

    // promtool accepts a Prometheus config that embeds it, with the shipped rules.
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(&cp, dir.path());
    let mut config = shipped.clone();
    config["global"] = json!({"scrape_interval": "30s"});
    config["rule_files"] = json!([rules]);
    let path = dir.path().join("prometheus.yml");
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    promtool(&cp, &["check", "config", path.to_str().unwrap()]);
}

/// What upstream's own files render for each install layout (docs/upstream.md, "Install
/// layouts"): the fixtures must say the same, or every test built on them tests a KSIT that
/// does not exist (the fixtures once bound the dev and Helm layouts to the wrong accounts).
struct UpstreamLayout {
    name: &'static str,
    deployment: &'static str,
    service_account: &'static str,
    pod_labels: &'static [(&'static str, &'static str)],
    replicas: i64,
    leader_elect: &'static str,
    /// The metrics Service (port `metrics` 8080; Helm's targets the named port, the others 8080).
    metrics_service: &'static str,
    /// Whether the layout is a kustomization (the manifests/sidecar Component fits it).
    kustomize: bool,
}

const CONTROL_PLANE: (&str, &str) = ("control-plane", "controller-manager");

const UPSTREAM_LAYOUTS: [UpstreamLayout; 4] = [
    UpstreamLayout {
        name: "kubebuilder",
        deployment: "ksit-controller-manager",
        service_account: "ksit-controller",
        pod_labels: &[CONTROL_PLANE, ("app.kubernetes.io/name", "ksit")],
        replicas: 1,
        leader_elect: "--leader-elect",
        metrics_service: "ksit-controller-manager-metrics",
        kustomize: true,
    },
    UpstreamLayout {
        name: "kustomize-dev",
        deployment: "dev-ksit-controller-manager",
        service_account: "dev-ksit-controller",
        pod_labels: &[CONTROL_PLANE],
        replicas: 1,
        leader_elect: "--leader-elect",
        metrics_service: "dev-ksit-controller-manager-metrics-service",
        kustomize: true,
    },
    UpstreamLayout {
        name: "kustomize-prod",
        deployment: "prod-ksit-controller-manager",
        service_account: "prod-ksit-controller",
        pod_labels: &[CONTROL_PLANE],
        replicas: 3,
        leader_elect: "--leader-elect",
        metrics_service: "prod-ksit-controller-manager-metrics-service",
        kustomize: true,
    },
    UpstreamLayout {
        name: "helm",
        deployment: "ksit-controller-manager",
        service_account: "ksit-controller-manager",
        pod_labels: &[
            ("app.kubernetes.io/name", "ksit"),
            ("app.kubernetes.io/instance", "ksit"),
            CONTROL_PLANE,
        ],
        replicas: 1,
        leader_elect: "--leader-elect=true",
        metrics_service: "ksit-metrics-service",
        kustomize: false,
    },
];

impl UpstreamLayout {
    /// The fixture's install has this layout's names, labels, account, replicas, ports and args.
    fn check(&self, installed: &[Value], deployment: &Value) {
        let what = self.name;
        let spec = &deployment["spec"];
        assert_eq!(spec["replicas"], json!(self.replicas), "{what}: replicas");
        let pod = &spec["template"];
        let labels: serde_json::Map<String, Value> = self
            .pod_labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        assert_eq!(
            pod["metadata"]["labels"],
            Value::Object(labels),
            "{what}: pod labels"
        );
        assert_eq!(
            pod["spec"]["serviceAccountName"],
            json!(self.service_account),
            "{what}: service account"
        );
        find(installed, "ServiceAccount", self.service_account);
        let containers = pod["spec"]["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "{what}: containers");
        let manager = &containers[0];
        assert_eq!(manager["name"], "manager", "{what}");
        assert_eq!(manager["command"], json!(["/ksit"]), "{what}");
        assert_eq!(
            manager["args"],
            json!([
                self.leader_elect,
                "--metrics-bind-address=:8080",
                "--health-probe-bind-address=:8081"
            ]),
            "{what}: args"
        );
        assert_eq!(
            manager["ports"],
            json!([
                {"containerPort": 8080, "name": "metrics", "protocol": "TCP"},
                {"containerPort": 8081, "name": "health", "protocol": "TCP"},
            ]),
            "{what}: ports"
        );
        let service = find(installed, "Service", self.metrics_service);
        let target = if self.name == "helm" {
            json!("metrics")
        } else {
            json!(8080)
        };
        assert_eq!(
            service["spec"]["ports"],
            json!([{"name": "metrics", "port": 8080, "protocol": "TCP", "targetPort": target}]),
            "{what}: metrics Service"
        );
        for (k, v) in self.pod_labels {
            if service["spec"]["selector"].get(*k).is_some() {
                assert_eq!(
                    service["spec"]["selector"][k],
                    json!(v),
                    "{what}: selector {k}"
                );
            }
        }
        assert_eq!(
            service["spec"]["selector"][CONTROL_PLANE.0], CONTROL_PLANE.1,
            "{what}"
        );
    }
}

/// Each of KSIT's install layouts (tests/testdata/layouts), with the sidecar added by every way
/// that fits it: `ksit-exporter inject`, and for the kustomize layouts the manifests/sidecar
/// Component in an overlay of the install. Each way keeps the Deployment's name and selector
/// (immutable: the result must apply over the install) and puts on the pod template the label
/// that the ksit-monitor Service and the PodMonitor select; manifests/layouts/<layout> binds
/// the sidecar's Role and ClusterRole to the service account the pods run as.
#[tokio::test]
async fn every_layout_gets_a_sidecar_that_the_service_and_podmonitor_select() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let service = find(&cp.render("manifests/service"), "Service", "ksit-monitor").clone();
    let selector = service["spec"]["selector"].as_object().unwrap().clone();
    assert_eq!(selector.len(), 1, "{service}");
    let podmonitor = find(
        &cp.render("manifests/monitoring/podmonitor"),
        "PodMonitor",
        "ksit-monitor",
    )
    .clone();
    assert_eq!(
        podmonitor["spec"]["selector"]["matchLabels"],
        Value::Object(selector.clone())
    );
    let mut cfg = ksit_exporter::inject::InjectorConfig::from_vars([]).expect("defaults are valid");
    // As `ksit-exporter inject` runs: every pod template is opted in unless it opts out.
    cfg.default_opt_in = true;
    for u in UPSTREAM_LAYOUTS {
        let (layout, deployment, kustomize) = (u.name, u.deployment, u.kustomize);
        let fixture = format!("tests/testdata/layouts/{layout}");
        let installed = cp.render(&fixture);
        let original = find(&installed, "Deployment", deployment);
        u.check(&installed, original);
        let account = original["spec"]["template"]["spec"]["serviceAccountName"].clone();
        let pod_labels = original["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .unwrap();
        assert!(
            selector.keys().all(|k| !pod_labels.contains_key(k)),
            "{layout}: the install alone already carries the sidecar's label"
        );

        let extras = cp.render(&format!("manifests/layouts/{layout}"));
        assert_eq!(
            find(&extras, "Service", "ksit-monitor")["spec"],
            service["spec"]
        );
        for (kind, name) in [
            ("RoleBinding", "ksit-exporter"),
            ("ClusterRoleBinding", "ksit-exporter-cluster"),
        ] {
            let binding = find(&extras, kind, name);
            let mut subject = json!({"kind": "ServiceAccount", "name": account});
            // A RoleBinding's subject defaults to the binding's own namespace.
            if kind == "ClusterRoleBinding" {
                subject["namespace"] = json!("ksit-system");
            }
            assert_eq!(
                binding["subjects"],
                json!([subject]),
                "{layout}: {kind} {name}"
            );
        }

        let yaml = installed
            .iter()
            .map(|o| serde_json::to_string(o).unwrap())
            .collect::<Vec<_>>()
            .join("\n---\n");
        let injected = ksit_exporter::inject::manifests::inject_manifests(&yaml, &cfg)
            .unwrap_or_else(|e| panic!("{layout}: inject: {e}"));
        let injected: Vec<Value> = serde_saphyr::from_multiple(&injected.yaml).unwrap();
        let mut ways = vec![("inject", find(&injected, "Deployment", deployment).clone())];
        if kustomize {
            let overlay = Overlay::new(&[&fixture], &["manifests/sidecar"]);
            let items = cp.render(overlay.path());
            ways.push((
                "manifests/sidecar",
                find(&items, "Deployment", deployment).clone(),
            ));
        }
        for (way, deploy) in ways {
            let what = format!("{layout} with {way}");
            assert_eq!(
                deploy["spec"]["selector"], original["spec"]["selector"],
                "{what}"
            );
            let pod = &deploy["spec"]["template"];
            for (k, v) in selector.iter().chain(pod_labels) {
                assert_eq!(&pod["metadata"]["labels"][k], v, "{what}: pod label {k}");
            }
            assert_eq!(pod["spec"]["serviceAccountName"], account, "{what}");
            let containers = pod["spec"]["containers"].as_array().unwrap().iter().chain(
                pod["spec"]["initContainers"]
                    .as_array()
                    .into_iter()
                    .flatten(),
            );
            let (mut manager, mut sidecar) = (None, None);
            for c in containers {
                match c["name"].as_str() {
                    Some("manager") => manager = Some(c),
                    Some("ksit-exporter") => sidecar = Some(c),
                    _ => {}
                }
            }
            let manager = manager.unwrap_or_else(|| panic!("{what}: no manager"));
            assert_eq!(manager["command"], json!(["/ksit"]), "{what}");
            assert_eq!(
                manager["args"],
                json!([
                    u.leader_elect,
                    "--metrics-bind-address=127.0.0.1:8082",
                    "--health-probe-bind-address=:8081"
                ]),
                "{what}"
            );
            let sidecar = sidecar.unwrap_or_else(|| panic!("{what}: no sidecar"));
            assert_eq!(
                sidecar["ports"],
                json!([{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]),
                "{what}"
            );
            assert!(
                sidecar["env"].as_array().unwrap().contains(&json!(
                    {"name": "KSIT_UPSTREAM_METRICS_URL", "value": "http://127.0.0.1:8082/metrics"}
                )),
                "{what}: {sidecar}"
            );
        }
    }
}

/// The PrometheusRule's groups as a rule file (JSON is YAML); returns its path.
fn write_rules(cp: &ControlPlane, dir: &Path) -> String {
    let items = cp.render("manifests/monitoring/common");
    let rule = find(&items, "PrometheusRule", "ksit-exporter");
    let path = dir.join("rules.yml");
    std::fs::write(&path, serde_json::to_string_pretty(&rule["spec"]).unwrap()).unwrap();
    path.to_str().unwrap().to_string()
}

/// When each alert fires, on series shaped as the exporter writes them.
const ALERT_TESTS: &str = r#"
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'ksit_cluster_status{namespace="ksit-system",target="cluster2",cluster_name="cluster2",source="integrationtarget"}'
        values: '1 0x10'
      - series: 'ksit_cluster_status{namespace="ksit-system",target="cluster1",cluster_name="cluster1",source="integrationtarget"}'
        values: '1x10'
      - series: 'ksit_cluster_status{target="hub-lost",cluster_name="hub-lost",source="managedcluster"}'
        values: '1 0x10'
      - series: 'ksit_component_health_up{namespace="ksit-system",pod="mgr-0",probe="readyz"}'
        values: '1 0x10'
      - series: 'ksit_exporter_kube_up{namespace="ksit-system",pod="mgr-0"}'
        values: '1 0x10'
      - series: 'ksit_component_container_restarts_total{namespace="ksit-system",pod="mgr-0",container="manager"}'
        values: '0 1 2 3 4 5 6 7 8 9 10'
      - series: 'ksit_reconcile_duration_seconds_bucket{controller="integration",le="1"}'
        values: '0+1x30'
      - series: 'ksit_reconcile_duration_seconds_bucket{controller="integration",le="10"}'
        values: '0+60x30'
      - series: 'ksit_reconcile_duration_seconds_bucket{controller="integration",le="+Inf"}'
        values: '0+60x30'
    alert_rule_test:
      - { eval_time: 5m, alertname: KsitClusterNotReady }
      - eval_time: 6m
        alertname: KsitClusterNotReady
        exp_alerts:
          - exp_labels: { severity: warning, namespace: ksit-system, target: cluster2, cluster_name: cluster2, source: integrationtarget }
            exp_annotations:
              summary: Managed cluster cluster2 is not ready
              description: >-
                integrationtarget ksit-system/cluster2 has reported cluster cluster2 not ready
                for 5 minutes. `kubectl get integrationtarget cluster2 -n ksit-system -o yaml`
                shows its conditions and their reasons.
          - exp_labels: { severity: warning, target: hub-lost, cluster_name: hub-lost, source: managedcluster }
            exp_annotations:
              summary: Managed cluster hub-lost is not ready
              description: >-
                managedcluster hub-lost has reported cluster hub-lost not ready for 5 minutes.
                `kubectl get managedcluster hub-lost -o yaml` shows its conditions and their
                reasons.
      - { eval_time: 2m, alertname: KsitComponentHealthProbeDown }
      - eval_time: 3m
        alertname: KsitComponentHealthProbeDown
        exp_alerts:
          - exp_labels: { severity: warning, namespace: ksit-system, pod: mgr-0, probe: readyz }
            exp_annotations:
              summary: KSIT component health probe readyz is failing
              description: >-
                The sidecar in ksit-system/mgr-0 has had no 2xx from the component's readyz
                endpoint for 2 minutes.
      - { eval_time: 5m, alertname: KsitExporterKubeUnreachable }
      - eval_time: 6m
        alertname: KsitExporterKubeUnreachable
        exp_alerts:
          - exp_labels: { severity: warning, namespace: ksit-system, pod: mgr-0 }
            exp_annotations:
              summary: ksit-exporter cannot reach the Kubernetes API server
              description: >-
                The sidecar in ksit-system/mgr-0 has had no answer from the API server for 5
                minutes; cluster, integration and pod series are stale. Its log names the
                error (`kubectl logs mgr-0 -c ksit-exporter`).
      - { eval_time: 2m, alertname: KsitComponentRestarting }
      - eval_time: 4m
        alertname: KsitComponentRestarting
        exp_alerts:
          - exp_labels: { severity: warning, namespace: ksit-system, pod: mgr-0, container: manager }
            exp_annotations:
              summary: KSIT container manager is restarting
              description: >-
                Container manager of ksit-system/mgr-0 restarted 4 times in 15 minutes.
      # Almost every reconcile takes between 1 s and 10 s: p99 = 1 + 9 × (0.99 × 60 − 1) / 59 = 9.908 s.
      - { eval_time: 15m, alertname: KsitReconcileLatencyHigh }
      - eval_time: 21m
        alertname: KsitReconcileLatencyHigh
        exp_alerts:
          - exp_labels: { severity: warning, controller: integration }
            exp_annotations:
              summary: KSIT integration reconciles are slow
              description: >-
                The 99th percentile of integration reconcile durations has been 9.908s
                (above 5s) for 15 minutes.
  # A target's series moves from one sidecar to another (a new leader, or a shard's replica
  # gone) while its cluster is not ready: the alert fires five minutes after it went not
  # ready, not five minutes after the move, and names no sidecar.
  - interval: 1m
    input_series:
      - series: 'ksit_cluster_status{job="ksit",instance="10.0.0.1:8080",pod="mgr-0",namespace="ksit-system",target="c3",cluster_name="c3",source="integrationtarget"}'
        values: '1 0 0 0 stale'
      - series: 'ksit_cluster_status{job="ksit",instance="10.0.0.2:8080",pod="mgr-1",namespace="ksit-system",target="c3",cluster_name="c3",source="integrationtarget"}'
        values: '_ _ _ _ 0x10'
    alert_rule_test:
      - { eval_time: 5m, alertname: KsitClusterNotReady }
      - eval_time: 6m
        alertname: KsitClusterNotReady
        exp_alerts:
          - exp_labels: { severity: warning, job: ksit, namespace: ksit-system, target: c3, cluster_name: c3, source: integrationtarget }
            exp_annotations:
              summary: Managed cluster c3 is not ready
              description: >-
                integrationtarget ksit-system/c3 has reported cluster c3 not ready for 5
                minutes. `kubectl get integrationtarget c3 -n ksit-system -o yaml` shows its
                conditions and their reasons.
  # A fleet: two hosting clusters' series in one store, told apart only by the external label
  # `cluster`, with the same managed cluster name in both. Each alert must stay per hosting
  # cluster, and a slow one must not be averaged away by a fast one.
  - interval: 1m
    input_series:
      - series: 'ksit_cluster_status{cluster="east",namespace="ksit-system",target="cluster2",cluster_name="cluster2",source="integrationtarget"}'
        values: '1 0x10'
      - series: 'ksit_cluster_status{cluster="west",namespace="ksit-system",target="cluster2",cluster_name="cluster2",source="integrationtarget"}'
        values: '1 0x10'
      - series: 'ksit_reconcile_duration_seconds_bucket{cluster="east",controller="integration",le="1"}'
        values: '0+1x30'
      - series: 'ksit_reconcile_duration_seconds_bucket{cluster="east",controller="integration",le="10"}'
        values: '0+60x30'
      - series: 'ksit_reconcile_duration_seconds_bucket{cluster="east",controller="integration",le="+Inf"}'
        values: '0+60x30'
      - series: 'ksit_reconcile_duration_seconds_bucket{cluster="west",controller="integration",le="1"}'
        values: '0+6000x30'
      - series: 'ksit_reconcile_duration_seconds_bucket{cluster="west",controller="integration",le="10"}'
        values: '0+6000x30'
      - series: 'ksit_reconcile_duration_seconds_bucket{cluster="west",controller="integration",le="+Inf"}'
        values: '0+6000x30'
    alert_rule_test:
      - eval_time: 6m
        alertname: KsitClusterNotReady
        exp_alerts:
          - exp_labels: { severity: warning, cluster: east, namespace: ksit-system, target: cluster2, cluster_name: cluster2, source: integrationtarget }
            exp_annotations:
              summary: Managed cluster cluster2 is not ready (hosting cluster east)
              description: >-
                integrationtarget ksit-system/cluster2 has reported cluster cluster2 not ready
                for 5 minutes. `kubectl get integrationtarget cluster2 -n ksit-system -o yaml`
                shows its conditions and their reasons.
          - exp_labels: { severity: warning, cluster: west, namespace: ksit-system, target: cluster2, cluster_name: cluster2, source: integrationtarget }
            exp_annotations:
              summary: Managed cluster cluster2 is not ready (hosting cluster west)
              description: >-
                integrationtarget ksit-system/cluster2 has reported cluster cluster2 not ready
                for 5 minutes. `kubectl get integrationtarget cluster2 -n ksit-system -o yaml`
                shows its conditions and their reasons.
      # West's reconciles all take under 1 s; summed with east's, p99 would drop below 5 s.
      - eval_time: 21m
        alertname: KsitReconcileLatencyHigh
        exp_alerts:
          - exp_labels: { severity: warning, cluster: east, controller: integration }
            exp_annotations:
              summary: KSIT integration reconciles are slow in hosting cluster east
              description: >-
                The 99th percentile of integration reconcile durations has been 9.908s
                (above 5s) for 15 minutes.
"#;

#[tokio::test]
async fn promtool_checks_and_unit_tests_the_alerts() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(&cp, dir.path());
    let out = promtool(&cp, &["check", "rules", &rules]);
    assert!(out.contains("SUCCESS: 5 rules found"), "{out}");
    let mut tests: Value = serde_saphyr::from_str(ALERT_TESTS).unwrap();
    tests["rule_files"] = json!([rules]);
    let path = dir.path().join("alerts_test.yml");
    std::fs::write(&path, serde_json::to_string_pretty(&tests).unwrap()).unwrap();
    promtool(&cp, &["test", "rules", path.to_str().unwrap()]);
}

#[tokio::test]
async fn every_dashboard_query_parses() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let items = cp.render("manifests/monitoring");
    let cm = find(&items, "ConfigMap", "ksit-dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: Value =
        serde_json::from_str(cm["data"]["ksit-dashboard.json"].as_str().unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5m")
        })
        .collect();
    let joined = exprs.join("\n");
    for family in [
        "ksit_cluster_status",
        "ksit_integration_status_phase",
        "ksit_reconcile_duration_seconds_bucket",
        "ksit_component_health_up",
        "process_resident_memory_bytes",
    ] {
        assert!(joined.contains(family), "no panel queries {family}");
    }
    // promtool parses each query as a recording rule's expression.
    let rules = json!({"groups": [{"name": "dashboard", "rules": exprs.iter().enumerate()
        .map(|(i, e)| json!({"record": format!("dashboard:query{i}"), "expr": e}))
        .collect::<Vec<_>>()}]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard.yml");
    std::fs::write(&path, rules.to_string()).unwrap();
    promtool(&cp, &["check", "rules", path.to_str().unwrap()]);
}
