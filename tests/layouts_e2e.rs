//! The real path, once per upstream install layout (tests/testdata/layouts): KSIT installed as
//! that layout ships it, plus `manifests/layouts/<layout>` (the ksit-monitor Service and the
//! sidecar's RBAC for the layout's service account), then the README's steps: label the
//! namespace for injection and restart the Deployment. From there nothing is written by the
//! test that a cluster would not write itself, except what a kubelet would:
//!
//! 1. kube-controller-manager's deployment and replicaset controllers create the new Pod, and
//!    the API server sends it through the webhook (the real binary, registered with the shipped
//!    MutatingWebhookConfiguration, as tests/webhook.rs does), which adds the sidecar and the
//!    `ksit.io/exporter` label;
//! 2. the test plays scheduler and kubelet: it binds the Pod to a Node and writes its status
//!    (Running, Ready, podIP = the address of a network namespace, tests/common/netns.rs);
//! 3. the endpoints and endpointslice controllers fill ksit-monitor's Endpoints and
//!    EndpointSlice from the Pod (checked, never written by the test);
//! 4. the sidecar runs as the pod would run it: the exporter binary with the injected
//!    container's environment (downward API resolved from the Pod), in the network namespace,
//!    with a token of the layout's service account, so only the RBAC that
//!    `manifests/layouts/<layout>` binds lets it read anything; the manager it reads beside it
//!    is the stand-in on 127.0.0.1:8081/8082 of the namespace, where the injection moved it;
//! 5. a real Prometheus with the page's scrape config (kubernetes_sd, role endpoints, pointed at
//!    the test API server), and with the job prometheus-operator makes of the ServiceMonitor
//!    (role endpointslice), finds the Pod's address and `ksit_cluster_status` answers in PromQL.
//!
//! Needs the control plane and root (for the network namespace); under `CI=true` a missing one
//! is a failure.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::prometheus::{port_of, query};
use common::{
    Cleanup, ControlPlane, check, control_plane, eventually, free_port, http, netns, test_namespace,
};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Endpoints, Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_ksit-exporter");
/// The Node the test binds pods to. The endpointslice controller skips pods whose Node does not
/// exist; with no node-lifecycle controller running, nothing ever taints or evicts it.
const NODE: &str = "ksit-test-node";
/// Every collector the injected sidecar runs beside a manager (docs/metrics.md,
/// `ksit_exporter_collector_up`); `managedclusters` runs only with KSIT_OCM_CLUSTERS=true,
/// which injection does not set.
const COLLECTORS: [&str; 8] = [
    "health",
    "integrations",
    "integrationtargets",
    "lease",
    "pod",
    "process",
    "upstream",
    "workload",
];
/// The label the ksit-monitor Service selects.
const EXPORTER_LABEL: (&str, &str) = ("ksit.io/exporter", "sidecar");

/// One upstream install layout: its fixture (tests/testdata/layouts/NAME), its Deployment and
/// the service account its pods run as.
struct Layout {
    name: &'static str,
    deployment: &'static str,
    service_account: &'static str,
    /// The Deployment's replicas, as the layout ships them.
    replicas: u32,
}

const KUBEBUILDER: Layout = Layout {
    name: "kubebuilder",
    deployment: "ksit-controller-manager",
    service_account: "ksit-controller",
    replicas: 1,
};
const KUSTOMIZE_DEV: Layout = Layout {
    name: "kustomize-dev",
    deployment: "dev-ksit-controller-manager",
    service_account: "dev-ksit-controller",
    replicas: 1,
};
const KUSTOMIZE_PROD: Layout = Layout {
    name: "kustomize-prod",
    deployment: "prod-ksit-controller-manager",
    service_account: "prod-ksit-controller",
    replicas: 3,
};
const HELM: Layout = Layout {
    name: "helm",
    deployment: "ksit-controller-manager",
    service_account: "ksit-controller-manager",
    replicas: 1,
};

/// How the sidecar gets into the pod (README, "Install").
#[derive(Clone, Copy, Debug)]
enum Way {
    /// Label the namespace `ksit.io/inject=enabled` and restart the Deployment.
    Webhook,
    /// `kubectl apply -k` of an overlay of the install listing the manifests/sidecar Component.
    Component,
    /// `ksit-exporter inject -f` of the install, applied over it.
    Inject,
}

// Each test has its own network slot (tests/common/netns.rs), so they can run at once; a
// layout with more replicas takes EXTRA_SLOTS[slot] for the others.
#[tokio::test]
async fn kubebuilder_config_with_the_webhook() {
    run(KUBEBUILDER, Way::Webhook, 0).await;
}

#[tokio::test]
async fn kustomize_dev_with_the_webhook() {
    run(KUSTOMIZE_DEV, Way::Webhook, 1).await;
}

#[tokio::test]
async fn kustomize_prod_with_the_webhook() {
    run(KUSTOMIZE_PROD, Way::Webhook, 2).await;
}

#[tokio::test]
async fn helm_chart_with_the_webhook() {
    run(HELM, Way::Webhook, 3).await;
}

#[tokio::test]
async fn kubebuilder_config_with_the_sidecar_component() {
    run(KUBEBUILDER, Way::Component, 4).await;
}

#[tokio::test]
async fn kustomize_dev_with_the_sidecar_component() {
    run(KUSTOMIZE_DEV, Way::Component, 5).await;
}

#[tokio::test]
async fn kustomize_prod_with_the_sidecar_component() {
    run(KUSTOMIZE_PROD, Way::Component, 6).await;
}

#[tokio::test]
async fn helm_chart_with_inject() {
    run(HELM, Way::Inject, 7).await;
}

/// The slots of the replicas after the first, by the test's slot (only prod has any).
fn extra_slots(slot: u32, replicas: u32) -> Vec<u32> {
    let first = match slot {
        2 => 8,
        6 => 10,
        _ => return Vec::new(),
    };
    (first..first + replicas.saturating_sub(1).min(2)).collect()
}

/// A child process killed on drop, with its log file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let child = cmd
            .stdout(file.try_clone().expect("a second handle on the log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        Proc { child, log }
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The webhook binary, killed on drop.
struct Webhook {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_webhook(certs: &Path) -> Webhook {
    let mut child = Command::new(BIN)
        .arg("webhook")
        .env_clear()
        .env("KSIT_WEBHOOK_LISTEN_ADDR", "127.0.0.1:0")
        .env("KSIT_WEBHOOK_METRICS_ADDR", "127.0.0.1:0")
        .env("KSIT_TLS_CERT_FILE", certs.join("tls.crt"))
        .env("KSIT_TLS_KEY_FILE", certs.join("tls.key"))
        .env("KSIT_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the webhook binary starts");
    let line =
        common::exporter::logged_line(&mut child, "webhook", "serving the admission webhook").await;
    let addr = line["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no addr in {line}"));
    Webhook { child, addr }
}

/// Objects the test made outside its namespace, deleted on drop.
struct ClusterObjects {
    names: Vec<(String, String)>,
    cleanup: Cleanup,
}

impl Drop for ClusterObjects {
    fn drop(&mut self) {
        for (kind, name) in &self.names {
            self.cleanup
                .kubectl(&["delete", kind, name, "--ignore-not-found", "--wait=false"]);
        }
    }
}

/// Registers manifests/webhook/base's configuration, pointed at the webhook's loopback address
/// and limited to `namespace` (the control plane is shared with other tests).
async fn register_webhook(
    cp: &ControlPlane,
    addr: SocketAddr,
    ca_bundle: &str,
    namespace: &str,
    owned: &mut Vec<(String, String)>,
) {
    let mut mwc = cp
        .render("manifests/webhook/base")
        .into_iter()
        .find(|o| o["kind"] == "MutatingWebhookConfiguration")
        .expect("the base has a MutatingWebhookConfiguration");
    let name = format!("ksit-test-{namespace}");
    mwc["metadata"]["name"] = json!(name);
    for webhook in mwc["webhooks"].as_array_mut().expect("webhooks") {
        let path = webhook["clientConfig"]["service"]["path"]
            .as_str()
            .expect("a service path")
            .to_string();
        webhook["clientConfig"] =
            json!({"url": format!("https://{addr}{path}"), "caBundle": ca_bundle});
        webhook["namespaceSelector"]["matchExpressions"]
            .as_array_mut()
            .expect("namespace selector expressions")
            .push(json!({"key": "kubernetes.io/metadata.name", "operator": "In", "values": [namespace]}));
    }
    Api::<MutatingWebhookConfiguration>::all(cp.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(mwc).expect("a MutatingWebhookConfiguration"),
        )
        .await
        .expect("registering the webhook");
    owned.push(("mutatingwebhookconfiguration".into(), name));
}

/// `objects` (rendered for ksit-system) moved into `namespace`, as a YAML stream: namespaced
/// objects and service-account subjects get the test's namespace, cluster-scoped objects (and
/// references to them) a suffix, so tests sharing the control plane never share one.
fn into_namespace(
    objects: Vec<Value>,
    namespace: &str,
    owned: &mut Vec<(String, String)>,
) -> String {
    let cluster_scoped = |kind: &Value| kind == "ClusterRole" || kind == "ClusterRoleBinding";
    let mut docs = Vec::new();
    for mut o in objects {
        if cluster_scoped(&o["kind"]) {
            let name = format!(
                "{}-{namespace}",
                o["metadata"]["name"].as_str().expect("name")
            );
            owned.push((
                o["kind"].as_str().expect("kind").to_lowercase(),
                name.clone(),
            ));
            o["metadata"]["name"] = json!(name);
        } else {
            o["metadata"]["namespace"] = json!(namespace);
        }
        if o["roleRef"]["kind"] == "ClusterRole" {
            let name = format!(
                "{}-{namespace}",
                o["roleRef"]["name"].as_str().expect("name")
            );
            o["roleRef"]["name"] = json!(name);
        }
        for subject in o["subjects"].as_array_mut().into_iter().flatten() {
            if subject.get("namespace").is_some() {
                subject["namespace"] = json!(namespace);
            }
        }
        docs.push(serde_json::to_string(&o).expect("JSON"));
    }
    // JSON is YAML.
    docs.join("\n---\n")
}

fn has_sidecar(pod: &Pod) -> bool {
    sidecar(pod).is_some()
}

fn sidecar(pod: &Pod) -> Option<&Container> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == "ksit-exporter")
}

fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

/// The addresses of `service`'s Endpoints and of its EndpointSlices, as the controllers wrote them.
async fn endpoint_addresses(
    cp: &ControlPlane,
    namespace: &str,
    service: &str,
) -> Result<(Vec<String>, Vec<String>), String> {
    let endpoints = Api::<Endpoints>::namespaced(cp.client.clone(), namespace)
        .get_opt(service)
        .await
        .map_err(|e| e.to_string())?;
    let from_endpoints: Vec<String> = endpoints
        .into_iter()
        .flat_map(|e| e.subsets.unwrap_or_default())
        .flat_map(|s| s.addresses.unwrap_or_default())
        .map(|a| a.ip)
        .collect();
    let slices = Api::<EndpointSlice>::namespaced(cp.client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .map_err(|e| e.to_string())?;
    let from_slices: Vec<String> = slices
        .items
        .into_iter()
        .flat_map(|s| s.endpoints)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .flat_map(|e| e.addresses)
        .collect();
    Ok((from_endpoints, from_slices))
}

/// A kubeconfig that authenticates as `account` in `namespace` with a token from the
/// TokenRequest API, as the pod's projected token would.
fn service_account_kubeconfig(
    cp: &ControlPlane,
    namespace: &str,
    account: &str,
    dir: &Path,
) -> PathBuf {
    let token = check(
        cp.kubectl(&["-n", namespace, "create", "token", account, "--duration=1h"]),
        "kubectl create token",
    );
    let ca = cp
        .kubeconfig
        .parent()
        .expect("the kubeconfig is in the control plane's directory")
        .join("pki/ca.crt");
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": cp.server_url, "certificate-authority": ca}}],
        "users": [{"name": account, "user": {"token": token.trim()}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": account, "namespace": namespace}}],
        "current-context": "test",
    });
    let path = dir.join("kubeconfig");
    std::fs::write(&path, config.to_string()).expect("writing the kubeconfig");
    path
}

/// The sidecar's environment as the kubelet would give it: values as written, downward-API
/// fields resolved from the bound Pod.
fn sidecar_env(pod: &Pod) -> Vec<(String, String)> {
    let container = sidecar(pod).expect("the pod has the sidecar");
    container
        .env
        .iter()
        .flatten()
        .map(|e| {
            let value = match (
                &e.value,
                e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()),
            ) {
                (Some(value), _) => value.clone(),
                (None, Some(field)) => match field.field_path.as_str() {
                    "metadata.name" => pod.metadata.name.clone().expect("a stored pod's name"),
                    "metadata.namespace" => pod.metadata.namespace.clone().expect("namespace"),
                    "spec.nodeName" => NODE.to_string(),
                    other => panic!("the sidecar asks for downward-API field {other}"),
                },
                (None, None) => panic!("env {} has neither a value nor a field", e.name),
            };
            (e.name.clone(), value)
        })
        .collect()
}

/// The shipped scrape config pointed at the test API server and limited to `namespace`, plus the
/// job the ServiceMonitor makes.
fn prometheus_config(cp: &ControlPlane, namespace: &str) -> Value {
    let mut config = common::prometheus::scrape_config(cp, namespace);
    let sd = config["scrape_configs"][0]["kubernetes_sd_configs"][0].clone();
    let ours = cp.render("manifests/monitoring");
    let ours_job = servicemonitor_job(servicemonitor(&ours), "ksit-servicemonitor", sd.clone());
    let theirs = cp.render("tests/testdata/upstream-servicemonitor");
    let upstream = servicemonitor_job(servicemonitor(&theirs), UPSTREAM_JOB, sd);
    let jobs = config["scrape_configs"]
        .as_array_mut()
        .expect("scrape_configs");
    jobs.push(ours_job);
    jobs.push(upstream);
    // Neither job sets an interval Prometheus would honour: the global 1 s applies to both.
    config
}

/// The job prometheus-operator makes of manifests/monitoring's ServiceMonitor, in what decides
/// which targets it finds: role endpointslice in the ServiceMonitor's namespace (`sd`), Services
/// kept by the selector's labels, endpoints by the port's name, honorLabels as honor_labels.
/// (Its 30 s interval is left to the global 1 s, to keep the test short.)
fn servicemonitor_job(sm: &Value, job: &str, mut sd: Value) -> Value {
    let mut relabel: Vec<Value> = sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("the ServiceMonitor selects by matchLabels")
        .iter()
        .map(|(key, value)| {
            let key: String = key
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            json!({"source_labels": [format!("__meta_kubernetes_service_label_{key}")], "regex": value, "action": "keep"})
        })
        .collect();
    let endpoints = sm["spec"]["endpoints"]
        .as_array()
        .expect("ServiceMonitor endpoints");
    assert_eq!(endpoints.len(), 1, "{sm}");
    relabel.push(json!({"source_labels": ["__meta_kubernetes_endpointslice_port_name"], "regex": endpoints[0]["port"], "action": "keep"}));
    sd["role"] = json!("endpointslice");
    // metricRelabelings as prometheus-operator writes them: the same rules, snake_case keys.
    let metric_relabel: Vec<Value> = endpoints[0]["metricRelabelings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            json!({
                "action": r["action"].as_str().map(str::to_lowercase),
                "source_labels": r["sourceLabels"],
                "regex": r["regex"],
            })
        })
        .collect();
    json!({
        "job_name": job,
        "honor_labels": endpoints[0]["honorLabels"].as_bool().unwrap_or(false),
        "kubernetes_sd_configs": [sd],
        "relabel_configs": relabel,
        "metric_relabel_configs": metric_relabel,
    })
}

/// The one ServiceMonitor of a rendering.
fn servicemonitor(items: &[Value]) -> &Value {
    items
        .iter()
        .find(|o| o["kind"] == "ServiceMonitor")
        .expect("a ServiceMonitor")
}

/// The job of upstream's sample ServiceMonitor (tests/testdata/upstream-servicemonitor), with
/// manifests/monitoring/upstream-sample over it.
const UPSTREAM_JOB: &str = "ksit-controller-metrics";

const WAIT: Duration = Duration::from_secs(60);

/// A kustomization under target/ (kustomize refuses absolute paths) with the layout's fixture
/// and the manifests/sidecar Component, as a user's overlay of their install would be.
fn sidecar_overlay(layout: &Layout) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("layouts-e2e-")
        .tempdir_in(common::repo_path("target"))
        .expect("a directory under target/");
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "resources: [../../tests/testdata/layouts/{}]\ncomponents: [../../manifests/sidecar]\n",
            layout.name
        ),
    )
    .expect("writing the overlay");
    dir
}

/// `ksit-exporter inject -f -` of `yaml`.
fn inject(yaml: &str) -> String {
    let mut child = Command::new(BIN)
        .args(["inject", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ksit-exporter inject starts");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin
        .write_all(yaml.as_bytes())
        .expect("writing to ksit-exporter inject");
    drop(stdin);
    check(
        child.wait_with_output().expect("ksit-exporter inject ends"),
        "ksit-exporter inject -f -",
    )
}

async fn run(layout: Layout, way: Way, slot: u32) {
    let Some(cp) = control_plane().await else {
        return;
    };
    let Some(netns) = netns::create_or_skip("198.51.100", slot) else {
        return;
    };
    let started = Instant::now();
    let tag = format!("{}-{way:?}-{}", layout.name, std::process::id());
    let target = common::repo_path("target");
    let mut owned = Vec::new();

    let nodes = Api::<Node>::all(cp.client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(NODE.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating Node {NODE}: {e}"),
    }

    // KSIT as the layout installs it, and what manifests/layouts/<layout> adds beside it.
    let ns = test_namespace(&cp, &format!("layout-{}", layout.name), &[]).await;
    let install = into_namespace(
        cp.render(&format!("tests/testdata/layouts/{}", layout.name)),
        &ns.name,
        &mut owned,
    );
    let extras = into_namespace(
        cp.render(&format!("manifests/layouts/{}", layout.name)),
        &ns.name,
        &mut owned,
    );
    // Kept to the end of the test: the webhook reads its certificate files.
    let _webhook = match way {
        Way::Webhook => {
            let certs = tempfile::tempdir().expect("a temporary directory");
            let ca_bundle = check(
                Command::new(BIN)
                    .args(["webhook", "certs", "--dir"])
                    .arg(certs.path())
                    .args(["--host", "127.0.0.1"])
                    .output()
                    .expect("ksit-exporter webhook certs"),
                "ksit-exporter webhook certs",
            );
            let webhook = start_webhook(certs.path()).await;
            register_webhook(&cp, webhook.addr, ca_bundle.trim(), &ns.name, &mut owned).await;
            Some((webhook, certs))
        }
        Way::Component | Way::Inject => None,
    };
    let _cluster_objects = ClusterObjects {
        names: owned,
        cleanup: cp.cleanup(),
    };
    cp.apply_yaml(&ns.name, &install);
    cp.apply_yaml(&ns.name, &extras);

    // As installed, the pod has no sidecar, nor the label the Service selects.
    let pods = Api::<Pod>::namespaced(cp.client.clone(), &ns.name);
    let plain = eventually(WAIT, "the install's first pod", || async {
        let list = pods
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .next()
            .ok_or_else(|| "no pod yet".to_string())
    })
    .await;
    assert!(!has_sidecar(&plain), "injection is not enabled yet");
    assert_eq!(label(&plain, EXPORTER_LABEL.0), None);

    // The README's steps for this way.
    match way {
        Way::Webhook => {
            check(
                cp.kubectl(&["label", "namespace", &ns.name, "ksit.io/inject=enabled"]),
                "kubectl label namespace",
            );
            let probe: Pod = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "probe"},
                "spec": {"containers": [{"name": "app", "image": "app"}]},
            }))
            .expect("a pod");
            let dry = PostParams {
                dry_run: true,
                ..Default::default()
            };
            eventually(WAIT, "the API server to call the webhook", || async {
                match pods.create(&dry, &probe).await {
                    Ok(pod) if has_sidecar(&pod) => Ok(()),
                    Ok(_) => Err("a pod without the sidecar".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await;
            check(
                cp.kubectl(&[
                    "-n",
                    &ns.name,
                    "rollout",
                    "restart",
                    &format!("deployment/{}", layout.deployment),
                ]),
                "kubectl rollout restart",
            );
        }
        // Applied over the running install: a changed selector would be refused here.
        Way::Component => {
            let overlay = sidecar_overlay(&layout);
            let rendered = cp.render(overlay.path().to_str().expect("UTF-8 path"));
            cp.apply_yaml(
                &ns.name,
                &into_namespace(rendered, &ns.name, &mut Vec::new()),
            );
        }
        Way::Inject => cp.apply_yaml(&ns.name, &inject(&install)),
    }

    // The controllers make a new pod, which has the sidecar and the label (from the webhook, or
    // from the pod template).
    let selector = format!("{}={}", EXPORTER_LABEL.0, EXPORTER_LABEL.1);
    let pod = eventually(
        WAIT,
        "an injected pod of the restarted Deployment",
        || async {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .next()
                .ok_or_else(|| "no pod labelled for the Service yet".to_string())
        },
    )
    .await;
    let pod_name = pod.metadata.name.clone().expect("a stored pod has a name");
    assert!(has_sidecar(&pod), "{pod_name}: {:?}", pod.spec);
    let status = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("ksit.io/inject-status"))
        .cloned();
    match way {
        Way::Webhook | Way::Inject => {
            let status = status.unwrap_or_default();
            assert!(
                status.starts_with("injected: ") && status.contains("moved to 127.0.0.1:8082"),
                "{pod_name}: {status}"
            );
        }
        // Added by hand: nothing was injected.
        Way::Component => assert_eq!(status, None, "{pod_name}"),
    }
    let spec = pod.spec.as_ref().expect("a pod has a spec");
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some(layout.service_account)
    );
    let manager = spec
        .containers
        .iter()
        .find(|c| c.name == "manager")
        .expect("the manager container");
    assert!(
        manager
            .args
            .iter()
            .flatten()
            .any(|a| a == "--metrics-bind-address=127.0.0.1:8082"),
        "{:?}",
        manager.args
    );

    // Scheduler and kubelet: bind the pod, and report it running and ready at the pod IP.
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": pod_name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": NODE},
    });
    check(
        cp.kubectl_stdin(
            &[
                "create",
                "--raw",
                &format!("/api/v1/namespaces/{}/pods/{pod_name}/binding", ns.name),
                "-f",
                "-",
            ],
            &binding.to_string(),
        ),
        "binding the pod",
    );
    let pod_status = json!({"status": {
        "phase": "Running",
        "podIP": netns.ns_ip,
        "podIPs": [{"ip": netns.ns_ip}],
        "hostIP": netns.host_ip,
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": "True"},
            {"type": "Ready", "status": "True"},
        ],
    }});
    check(
        cp.kubectl(&[
            "-n",
            &ns.name,
            "patch",
            "pod",
            &pod_name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &pod_status.to_string(),
        ]),
        "writing the pod's status",
    );

    // The controllers, not the test, point ksit-monitor at the pod.
    eventually(
        WAIT,
        "ksit-monitor's Endpoints and EndpointSlice filled with the pod's IP",
        || async {
            let (endpoints, slices) = endpoint_addresses(&cp, &ns.name, "ksit-monitor").await?;
            let want = vec![netns.ns_ip.clone()];
            if endpoints == want && slices == want {
                Ok(())
            } else {
                Err(format!(
                    "Endpoints {endpoints:?}, EndpointSlices {slices:?}"
                ))
            }
        },
    )
    .await;

    // The manager container, as the pod runs it: in the pod's network namespace, with the pod's
    // name as hostname (its Lease identity is `<hostname>_<uuid>`, which is how the sidecar
    // knows it sits beside the leader), with the arguments the injection left it. The binary is
    // the stand-in (upstream's cannot be built here); it is told where the API server and its
    // objects are, which upstream reads from the pod's service account.
    cp.apply_samples(&ns.name);
    let api_port = port_of(&cp.server_url);
    let _relay = netns::start_relay(&netns, &[(api_port, api_port)]).await;
    let bound = pods.get(&pod_name).await.expect("the bound pod");
    let manager_args = bound
        .spec
        .as_ref()
        .and_then(|spec| spec.containers.iter().find(|c| c.name == "manager"))
        .and_then(|c| c.args.clone())
        .expect("the manager container has arguments");
    let manager = Proc::spawn(
        Command::new("ip")
            .args(["netns", "exec", &netns.name, "unshare", "--uts", "sh", "-c"])
            .arg(r#"hostname "$0" && exec "$@""#)
            .arg(&pod_name)
            .arg(cp.bin_dir.join("ksit-manager"))
            .args(&manager_args)
            .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
            .arg(format!("--namespaces={}", ns.name))
            // Upstream reads it from the service account's namespace file, which only a pod has.
            .arg(format!("--leader-election-namespace={}", ns.name)),
        target.join(format!("layouts-e2e-manager-{tag}.log")),
    );

    // The sidecar, as the pod runs it: its environment, the service account's token.
    let home = tempfile::tempdir().expect("a temporary directory");
    let kubeconfig = service_account_kubeconfig(&cp, &ns.name, layout.service_account, home.path());
    let env: BTreeMap<String, String> = sidecar_env(&bound).into_iter().collect();
    assert_eq!(
        env.get("KSIT_UPSTREAM_METRICS_URL").map(String::as_str),
        Some("http://127.0.0.1:8082/metrics")
    );
    let exporter = Proc::spawn(
        Command::new("ip")
            .args(["netns", "exec", &netns.name, BIN])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", &kubeconfig)
            .envs(&env),
        target.join(format!("layouts-e2e-exporter-{tag}.log")),
    );

    let data = tempfile::tempdir().expect("a temporary directory");
    let config_path = data.path().join("prometheus.yml");
    std::fs::write(
        &config_path,
        serde_json::to_string_pretty(&prometheus_config(&cp, &ns.name)).expect("JSON"),
    )
    .expect("writing prometheus.yml");
    let prom = format!("127.0.0.1:{}", free_port());
    let prometheus = Proc::spawn(
        Command::new(cp.bin_dir.join("prometheus"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom}")),
        target.join(format!("layouts-e2e-prometheus-{tag}.log")),
    );
    let logs = || {
        format!(
            "\n--- manager log (tail):\n{}\n--- exporter log (tail):\n{}\n--- prometheus log (tail):\n{}",
            manager.log_tail(20),
            exporter.log_tail(30),
            prometheus.log_tail(10)
        )
    };

    // The page's job (role endpoints) and the ServiceMonitor's (role endpointslice) each find
    // the pod, and only on the sidecar's port.
    for job in ["ksit", "ksit-servicemonitor"] {
        let found = eventually(
            WAIT,
            &format!("Prometheus job {job} scraping the pod through ksit-monitor"),
            || async {
                let reply =
                    http::try_request(&prom, "GET", "/api/v1/targets?state=active", &[]).await?;
                let v: Value = serde_json::from_slice(&reply.body)
                    .map_err(|e| format!("{e}: {}", reply.text()))?;
                v["data"]["activeTargets"]
                    .as_array()
                    .and_then(|ts| {
                        ts.iter()
                            .find(|t| t["labels"]["job"] == job && t["health"] == "up")
                            .cloned()
                    })
                    .ok_or_else(|| {
                        format!("active targets: {}{}", v["data"]["activeTargets"], logs())
                    })
            },
        )
        .await;
        assert_eq!(
            found["scrapeUrl"],
            format!("http://{}:8080/metrics", netns.ns_ip),
            "{found}"
        );
        let discovered = &found["discoveredLabels"];
        assert_eq!(discovered["__meta_kubernetes_service_name"], "ksit-monitor");
        assert_eq!(discovered["__meta_kubernetes_pod_name"], json!(pod_name));
        // An active target's first `up` sample lands a moment after it is listed.
        let promql = format!(r#"up{{job="{job}"}}"#);
        eventually(WAIT, "exactly one up sample of the job", || async {
            let up = query(&prom, &promql).await?;
            if up.len() == 1 {
                Ok(())
            } else {
                Err(format!("{job}: {up:?}"))
            }
        })
        .await;
    }

    let series = eventually(WAIT, "ksit_cluster_status in PromQL", || async {
        // The sidecar reads every namespace (the default), other tests' objects included.
        let promql = format!("ksit_cluster_status{{namespace={:?}}}", ns.name);
        let result = query(&prom, &promql).await?;
        if result.is_empty() {
            Err(format!("no series yet{}", logs()))
        } else {
            Ok(result)
        }
    })
    .await;
    for s in &series {
        assert_eq!(s["metric"]["namespace"], json!(ns.name), "{s}");
        assert_eq!(s["metric"]["source"], "integrationtarget", "{s}");
    }
    // Upstream's sample ServiceMonitor scrapes the same pod through upstream's metrics Service
    // (its port 8080 is the sidecar's now): the job is up and reads the sidecar's series, and
    // manifests/monitoring/upstream-sample drops them all, so each series is stored once, by
    // our job. (The test's two jobs of ours are alternatives, so one is left out of the count.)
    eventually(WAIT, "upstream's job scraping the sidecar", || async {
        let read = query(
            &prom,
            &format!(r#"scrape_samples_scraped{{job="{UPSTREAM_JOB}"}} > 0 and on () up{{job="{UPSTREAM_JOB}"}} == 1"#),
        )
        .await?;
        if read.len() == 1 {
            Ok(())
        } else {
            Err(format!("{read:?}{}", logs()))
        }
    })
    .await;
    let promql = format!(
        r#"count by (__name__, target) ({{__name__=~"ksit_cluster_status|ksit_cluster_condition", namespace={:?}, job!="ksit-servicemonitor"}}) > 0"#,
        ns.name
    );
    let stored = query(&prom, &promql).await.expect("PromQL");
    assert!(!stored.is_empty(), "{promql}: nothing");
    let upstream_series = query(
        &prom,
        &format!(r#"count({{job="{UPSTREAM_JOB}", __name__=~"ksit_.+"}})"#),
    )
    .await
    .expect("PromQL");
    assert_eq!(
        upstream_series,
        Vec::<Value>::new(),
        "upstream's job stored ksit_ series"
    );
    let kept = query(
        &prom,
        &format!(r#"scrape_samples_post_metric_relabeling{{job="{UPSTREAM_JOB}"}}"#),
    )
    .await
    .expect("PromQL");
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        kept[0]["value"][1], "0",
        "upstream's job kept samples: {kept:?}"
    );
    let twice = query(
        &prom,
        &format!(
            r#"count by (target) (ksit_cluster_status{{namespace={:?}, job!="ksit-servicemonitor"}}) != 1"#,
            ns.name
        ),
    )
    .await
    .expect("PromQL");
    assert_eq!(
        twice,
        Vec::<Value>::new(),
        "a ksit_cluster_status stored twice"
    );

    // The RBAC manifests/layouts/<layout> binds is enough: every collector is up (a 403 on any
    // list or watch keeps its collector at 0), and the sidecar logged no refusal.
    eventually(WAIT, "every collector up", || async {
        let result = query(&prom, r#"ksit_exporter_collector_up{job="ksit"}"#).await?;
        let up: BTreeMap<String, String> = result
            .iter()
            .map(|s| {
                (
                    s["metric"]["collector"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    s["value"][1].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let want: BTreeMap<String, String> = COLLECTORS
            .iter()
            .map(|c| (c.to_string(), "1".to_string()))
            .collect();
        if up == want {
            Ok(())
        } else {
            Err(format!("ksit_exporter_collector_up: {up:?}{}", logs()))
        }
    })
    .await;
    let log = std::fs::read_to_string(&exporter.log).expect("the exporter's log");
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .filter(|l| l.contains("403") || l.to_lowercase().contains("forbidden"))
        .collect();
    assert!(
        refused.is_empty(),
        "{}: the sidecar was refused:\n{}",
        layout.name,
        refused.join("\n")
    );
    eprintln!(
        "{} with {way:?}: Deployment -> Pod -> Endpoints -> Prometheus in {:.1}s; {} ksit_cluster_status series",
        layout.name,
        started.elapsed().as_secs_f64(),
        series.len()
    );
    if layout.replicas == 1 {
        return;
    }

    // Every replica of the layout, each pod played as the first was: exactly one sidecar, the
    // one beside the Lease holder, exports the leader-gated series (KSIT_CR_METRICS=leader, the
    // default); when that pod goes, another replica's manager takes the Lease and its sidecar
    // starts exporting them.
    assert_eq!(
        env.get("KSIT_CR_METRICS")
            .map(String::as_str)
            .unwrap_or("leader"),
        "leader"
    );
    let mut replicas = vec![Replica {
        pod: pod_name.clone(),
        ip: netns.ns_ip.clone(),
        procs: Some((manager, exporter)),
    }];
    let mut extra = Vec::new();
    for extra_slot in extra_slots(slot, layout.replicas) {
        let ns_net = netns::create_or_skip("198.51.100", extra_slot)
            .unwrap_or_else(|| panic!("no network namespace for slot {extra_slot}"));
        let played: Vec<String> = replicas.iter().map(|r| r.pod.clone()).collect();
        let next = eventually(WAIT, "another injected replica", || async {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.metadata.name)
                .find(|n| !played.contains(n))
                .ok_or_else(|| format!("only {played:?} so far"))
        })
        .await;
        let played =
            play_replica(&cp, &ns.name, &next, &ns_net, layout.service_account, &tag).await;
        replicas.push(played.0);
        extra.push((ns_net, played.1, played.2));
    }
    assert_eq!(
        replicas.len() as u32,
        layout.replicas,
        "every replica played"
    );

    let leases = Api::<Lease>::namespaced(cp.client.clone(), &ns.name);
    let first = eventually(WAIT, "exactly one sidecar exporting as leader", || async {
        one_leader(&replicas, &leases).await
    })
    .await;
    eprintln!(
        "{}: {} replicas, leader {first} (the Lease's holder), its sidecar alone exports ksit_cluster_status",
        layout.name,
        replicas.len()
    );

    // The leader's pod goes: its processes die with it (no Lease release), and it is deleted.
    let gone = Instant::now();
    let leader = replicas
        .iter_mut()
        .find(|r| r.pod == first)
        .expect("the leader is a played replica");
    leader.procs = None;
    check(
        cp.kubectl(&[
            "-n",
            &ns.name,
            "delete",
            "pod",
            &first,
            "--grace-period=0",
            "--force",
        ]),
        "deleting the leader's pod",
    );
    replicas.retain(|r| r.pod != first);
    let second = eventually(
        Duration::from_secs(90),
        "another replica exporting as leader",
        || async { one_leader(&replicas, &leases).await },
    )
    .await;
    assert_ne!(second, first, "the Lease moved");
    eprintln!(
        "{}: handoff from {first} to {second} in {:.1}s (controller-runtime's 15 s Lease duration, unreleased)",
        layout.name,
        gone.elapsed().as_secs_f64()
    );
    drop(extra);
}

/// One played replica: its pod, its IP, and the manager and sidecar processes (dropped when
/// the pod goes).
struct Replica {
    pod: String,
    ip: String,
    procs: Option<(Proc, Proc)>,
}

/// Plays one more replica as the test played the first: bind it, report it running and ready at
/// the namespace's address, and run the stand-in manager and the sidecar in it.
async fn play_replica(
    cp: &ControlPlane,
    namespace: &str,
    pod_name: &str,
    ns_net: &netns::NetNs,
    service_account: &str,
    tag: &str,
) -> (Replica, netns::Relay, tempfile::TempDir) {
    let target = common::repo_path("target");
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": pod_name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": NODE},
    });
    check(
        cp.kubectl_stdin(
            &[
                "create",
                "--raw",
                &format!("/api/v1/namespaces/{namespace}/pods/{pod_name}/binding"),
                "-f",
                "-",
            ],
            &binding.to_string(),
        ),
        "binding the pod",
    );
    let pod_status = json!({"status": {
        "phase": "Running",
        "podIP": ns_net.ns_ip,
        "podIPs": [{"ip": ns_net.ns_ip}],
        "hostIP": ns_net.host_ip,
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": "True"},
            {"type": "Ready", "status": "True"},
        ],
    }});
    check(
        cp.kubectl(&[
            "-n",
            namespace,
            "patch",
            "pod",
            pod_name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &pod_status.to_string(),
        ]),
        "writing the pod's status",
    );
    let api_port = port_of(&cp.server_url);
    let relay = netns::start_relay(ns_net, &[(api_port, api_port)]).await;
    let pods = Api::<Pod>::namespaced(cp.client.clone(), namespace);
    let bound = pods.get(pod_name).await.expect("the bound pod");
    let manager_args = bound
        .spec
        .as_ref()
        .and_then(|spec| spec.containers.iter().find(|c| c.name == "manager"))
        .and_then(|c| c.args.clone())
        .expect("the manager container has arguments");
    let manager = Proc::spawn(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns_net.name,
                "unshare",
                "--uts",
                "sh",
                "-c",
            ])
            .arg(r#"hostname "$0" && exec "$@""#)
            .arg(pod_name)
            .arg(cp.bin_dir.join("ksit-manager"))
            .args(&manager_args)
            .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
            .arg(format!("--namespaces={namespace}"))
            .arg(format!("--leader-election-namespace={namespace}")),
        target.join(format!("layouts-e2e-manager-{tag}-{pod_name}.log")),
    );
    let home = tempfile::tempdir().expect("a temporary directory");
    let kubeconfig = service_account_kubeconfig(cp, namespace, service_account, home.path());
    let env: BTreeMap<String, String> = sidecar_env(&bound).into_iter().collect();
    let exporter = Proc::spawn(
        Command::new("ip")
            .args(["netns", "exec", &ns_net.name, BIN])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", &kubeconfig)
            .envs(&env),
        target.join(format!("layouts-e2e-exporter-{tag}-{pod_name}.log")),
    );
    (
        Replica {
            pod: pod_name.to_string(),
            ip: ns_net.ns_ip.clone(),
            procs: Some((manager, exporter)),
        },
        relay,
        home,
    )
}

/// The pod whose sidecar exports as leader, if exactly one does and it is the Lease holder's:
/// its sidecar says `ksit_component_leader 1` and serves `ksit_cluster_status`; every other
/// replica's says 0 and serves none.
async fn one_leader(replicas: &[Replica], leases: &Api<Lease>) -> Result<String, String> {
    let mut leaders = Vec::new();
    let mut seen = Vec::new();
    for r in replicas {
        let reply = http::try_request(format!("{}:8080", r.ip), "GET", "/metrics", &[]).await?;
        let text = reply.text();
        let leader = text.lines().any(|l| l == "ksit_component_leader 1");
        let follower = text.lines().any(|l| l == "ksit_component_leader 0");
        let exports = text.lines().any(|l| l.starts_with("ksit_cluster_status{"));
        seen.push(format!(
            "{}: leader {leader}, follower {follower}, exports {exports}",
            r.pod
        ));
        match (leader, follower, exports) {
            (true, false, true) => leaders.push(r.pod.clone()),
            (false, true, false) => {}
            _ => return Err(format!("not settled: {seen:?}")),
        }
    }
    let [leader] = leaders.as_slice() else {
        return Err(format!("{} leaders: {seen:?}", leaders.len()));
    };
    let lease = leases.get("ksit.io").await.map_err(|e| e.to_string())?;
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    if holder.starts_with(&format!("{leader}_")) {
        Ok(leader.clone())
    } else {
        Err(format!(
            "the Lease is held by {holder:?}, not {leader}: {seen:?}"
        ))
    }
}
