//! Smoke tests of the test control plane itself: the API answers, the project's CRDs and
//! samples work with the stand-in KSIT manager, and every manifest passes server-side
//! validation.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;

#[tokio::test]
async fn lists_namespaces() {
    let Some(cp) = common::control_plane().await else {
        return;
    };
    let names: Vec<String> = Api::<Namespace>::all(cp.client.clone())
        .list(&Default::default())
        .await
        .expect("listing namespaces")
        .items
        .into_iter()
        .filter_map(|ns| ns.metadata.name)
        .collect();
    assert!(
        names.iter().any(|n| n == "default"),
        "no default namespace in {names:?}"
    );
}

fn ksit_api(cp: &common::ControlPlane, ns: &str, kind: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("ksit.io", "v1alpha1", kind));
    Api::namespaced_with(cp.client.clone(), ns, &ar)
}

/// `.status` of an object once `ready(status)` holds.
async fn status_when(
    api: &Api<DynamicObject>,
    name: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    common::eventually(
        Duration::from_secs(15),
        &format!("the wanted status of {name}"),
        || async {
            let obj = api.get(name).await.map_err(|e| e.to_string())?;
            let status = obj.data.get("status").cloned().unwrap_or(Value::Null);
            if ready(&status) {
                Ok(status)
            } else {
                Err(status.to_string())
            }
        },
    )
    .await
}

fn ready_condition(status: &Value) -> &Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn samples_get_status_from_the_stand_in_manager() {
    let Some(cp) = common::control_plane().await else {
        return;
    };
    let ns = common::test_namespace(&cp, "smoke-samples", &[]).await;
    cp.apply_path(&ns.name, "manifests/samples");
    let manager = common::start_manager(&cp, &[&ns.name]).await;

    let targets = ksit_api(&cp, &ns.name, "IntegrationTarget");
    let ready = status_when(&targets, "cluster1", |s| s["ready"] == true).await;
    assert_eq!(ready_condition(&ready)["reason"], "ClusterReady");
    assert!(ready["lastSyncTime"].is_string(), "{ready}");
    let failing = status_when(&targets, "cluster2", |s| s["ready"] == false).await;
    assert_eq!(ready_condition(&failing)["reason"], "ConnectionFailed");
    assert_eq!(ready_condition(&failing)["status"], "False");

    let integrations = ksit_api(&cp, &ns.name, "Integration");
    let running = status_when(&integrations, "argocd-integration", |s| {
        s["phase"] == "Running"
    })
    .await;
    assert_eq!(ready_condition(&running)["status"], "True");
    assert_eq!(running["observedGeneration"], 1);
    assert!(running["lastReconcileTime"].is_string(), "{running}");
    let failed = status_when(&integrations, "flux-integration", |s| {
        s["phase"] == "Failed"
    })
    .await;
    let connected: Vec<(&str, bool)> = failed["clusterStatuses"]
        .as_array()
        .expect("clusterStatuses")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["connected"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(connected, [("cluster1", true), ("cluster2", false)]);

    // It leads through the ksit.io Lease and serves controller-runtime's metrics in plain HTTP.
    let lease = Api::<Lease>::namespaced(cp.client.clone(), &ns.name)
        .get("ksit.io")
        .await
        .expect("ksit.io Lease");
    assert!(lease.spec.and_then(|s| s.holder_identity).is_some());
    let metrics = manager.metrics().await;
    // Every reconcile requeues after a period, as upstream's do, so that is the result counted.
    for controller in ["integration", "integrationtarget"] {
        let series = format!(
            r#"controller_runtime_reconcile_total{{controller="{controller}",result="requeue_after"}}"#
        );
        let count = metrics
            .get(&series)
            .unwrap_or_else(|| panic!("{series} missing from {}", manager.metrics_url));
        assert!(count > 0.0, "{series} is {count}");
    }
    for family in [
        "controller_runtime_reconcile_time_seconds_bucket",
        "workqueue_adds_total",
    ] {
        assert!(
            metrics.has_family(family),
            "{family} missing from {}",
            manager.metrics_url
        );
    }
}

/// Every kustomization directory under `dir` (a kustomization's own subdirectories too,
/// since alternatives such as `monitoring/podmonitor` are applied on their own), and every
/// YAML file outside kustomizations (inside one, loose files may be patches).
fn manifest_sets(dir: &Path, in_kustomization: bool, out: &mut Vec<(&'static str, PathBuf)>) {
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).ok();
    // A kustomize Component is only valid as part of another kustomization.
    let is_kustomization = kustomization
        .as_ref()
        .is_some_and(|k| !k.contains("kind: Component"));
    if is_kustomization {
        out.push(("-k", dir.to_path_buf()));
    }
    let in_kustomization = in_kustomization || kustomization.is_some();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            manifest_sets(&path, in_kustomization, out);
        } else if !in_kustomization && path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(("-f", path));
        }
    }
}

#[tokio::test]
async fn every_manifest_passes_server_side_dry_run() {
    let Some(cp) = common::control_plane().await else {
        return;
    };
    let mut sets = Vec::new();
    manifest_sets(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests"),
        false,
        &mut sets,
    );
    assert!(!sets.is_empty(), "nothing under manifests/");
    for (flag, path) in &sets {
        let path = path.to_str().unwrap();
        eprintln!("kubectl apply --dry-run=server {flag} {path}");
        // Namespaced objects need their namespace to exist even in a dry run; create any
        // the manifests name (a manifest that creates it is itself only dry-run).
        let namespaces = common::check(
            cp.kubectl(&[
                "apply",
                "--dry-run=client",
                flag,
                path,
                "-o",
                "jsonpath={..metadata.namespace}",
            ]),
            &format!("kubectl apply --dry-run=client {flag} {path}"),
        );
        for ns in namespaces.split_whitespace() {
            cp.kubectl(&["create", "namespace", ns]);
        }
        common::check(
            cp.kubectl(&["apply", "--dry-run=server", flag, path]),
            &format!("kubectl apply --dry-run=server {flag} {path}"),
        );
    }
}
