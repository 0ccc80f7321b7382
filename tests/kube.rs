//! The Kubernetes collectors against the real test control plane (`make controlplane-up`).
//!
//! No kubelet or controller runs there, so the tests write pod, workload and KSIT object status
//! themselves through the status subresource, as those controllers would.

mod common;

use std::time::Duration;

use common::{
    ControlPlane, Exporter, TestNamespace, assert_promtool_clean, control_plane, start,
    test_namespace,
};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::json;

fn ksit(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("ksit.io", "v1alpha1", kind), plural)
}

fn dynamic(cp: &ControlPlane, ns: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    Api::namespaced_with(cp.client.clone(), ns, &ksit(kind, plural))
}

async fn create<K>(api: &Api<K>, value: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value).expect("valid object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create")
}

async fn patch_status<K>(api: &Api<K>, name: &str, status: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .expect("patch status");
}

fn kubeconfig(cp: &ControlPlane) -> String {
    cp.kubeconfig.display().to_string()
}

async fn exporter(cp: &ControlPlane, ns: &TestNamespace, extra: &[(&str, &str)]) -> Exporter {
    let kc = kubeconfig(cp);
    let mut env = vec![
        ("KUBECONFIG", kc.as_str()),
        ("KSIT_KUBERNETES", "true"),
        ("KSIT_WATCH_NAMESPACES", ns.name.as_str()),
    ];
    env.extend_from_slice(extra);
    start(&env).await
}

/// The `Ready` condition series of target edge-1 (labels sorted by name).
fn condition(ns: &str, status: &str) -> String {
    format!(
        "ksit_cluster_condition{{cluster_name=\"cluster1\",condition=\"Ready\",namespace=\"{ns}\",source=\"integrationtarget\",status=\"{status}\",target=\"edge-1\"}}"
    )
}

fn target_series(ns: &str, target: &str, cluster: &str) -> String {
    format!(
        "ksit_cluster_status{{cluster_name=\"{cluster}\",namespace=\"{ns}\",source=\"integrationtarget\",target=\"{target}\"}}"
    )
}

#[tokio::test]
async fn cluster_and_integration_series_follow_their_objects() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let ns = test_namespace(&cp, "kube-crs", &[]).await;
    let e = exporter(&cp, &ns, &[("KSIT_CR_METRICS", "always")]).await;
    let targets = dynamic(&cp, &ns.name, "IntegrationTarget", "integrationtargets");
    let integrations = dynamic(&cp, &ns.name, "Integration", "integrations");

    create(
        &targets,
        json!({"apiVersion": "ksit.io/v1alpha1", "kind": "IntegrationTarget",
               "metadata": {"name": "edge-1"}, "spec": {"clusterName": "cluster1"}}),
    )
    .await;
    let status = target_series(&ns.name, "edge-1", "cluster1");
    e.scrape_until("a new target, not ready", |s| s.is(&status, 0.0))
        .await;
    patch_status(
        &targets,
        "edge-1",
        json!({"ready": true, "lastSyncTime": "2026-11-25T10:00:00Z",
               "conditions": [{"type": "Ready", "status": "True", "reason": "ClusterReady", "message": "ok",
                               "lastTransitionTime": "2026-11-25T10:00:00Z"}]}),
    )
    .await;
    let s = e.scrape_until("target ready", |s| s.is(&status, 1.0)).await;
    let labels = format!(
        "cluster_name=\"cluster1\",namespace=\"{}\",source=\"integrationtarget\",target=\"edge-1\"",
        ns.name
    );
    s.assert(
        &format!("ksit_cluster_last_sync_timestamp_seconds{{{labels}}}"),
        1795600800.0,
    );
    s.assert(&condition(&ns.name, "True"), 1.0);
    s.assert(&condition(&ns.name, "False"), 0.0);

    patch_status(
        &targets,
        "edge-1",
        json!({"ready": false, "conditions": [{"type": "Ready", "status": "False", "reason": "ConnectionFailed",
               "message": "dial tcp: timeout", "lastTransitionTime": "2026-11-25T10:01:00Z"}]}),
    )
    .await;
    e.scrape_until("target not ready", |s| {
        s.is(&status, 0.0) && s.is(&condition(&ns.name, "False"), 1.0)
    })
    .await;

    create(
        &integrations,
        json!({"apiVersion": "ksit.io/v1alpha1", "kind": "Integration", "metadata": {"name": "argo"},
               "spec": {"type": "argocd", "targetClusters": ["cluster1"]}}),
    )
    .await;
    let base = format!("integration=\"argo\",namespace=\"{}\"", ns.name);
    e.scrape_until("a new integration", |s| {
        s.is(
            &format!("ksit_integration_info{{enabled=\"true\",{base},type=\"argocd\"}}"),
            1.0,
        ) && s.is(
            &format!(
                "ksit_integration_status_phase{{{base},phase=\"Initializing\",type=\"argocd\"}}"
            ),
            1.0,
        ) && s.is(&format!("ksit_integration_generation_lag{{{base}}}"), 1.0)
    })
    .await;
    patch_status(
        &integrations,
        "argo",
        json!({"phase": "Running", "observedGeneration": 1, "lastReconcileTime": "2026-11-25T10:00:00Z",
               "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled", "message": "",
                               "lastTransitionTime": "2026-11-25T10:00:00Z"}],
               "clusterStatuses": [{"name": "cluster1", "connected": true, "lastSeen": "2026-11-25T10:00:00Z"}]}),
    )
    .await;
    let s = e
        .scrape_until("integration running", |s| {
            s.is(
                &format!(
                    "ksit_integration_status_phase{{{base},phase=\"Running\",type=\"argocd\"}}"
                ),
                1.0,
            )
        })
        .await;
    for (series, value) in [
        (
            format!("ksit_integration_status_phase{{{base},phase=\"Failed\",type=\"argocd\"}}"),
            0.0,
        ),
        (
            format!("ksit_integration_condition{{condition=\"Ready\",{base},status=\"True\"}}"),
            1.0,
        ),
        (
            format!("ksit_integration_cluster_connected{{cluster_name=\"cluster1\",{base}}}"),
            1.0,
        ),
        (
            format!("ksit_integration_last_reconcile_timestamp_seconds{{{base}}}"),
            1795600800.0,
        ),
        (format!("ksit_integration_generation_lag{{{base}}}"), 0.0),
    ] {
        s.assert(&series, value);
    }
    // A spec change the controller has not seen yet shows as lag.
    integrations
        .patch(
            "argo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"enabled": false}})),
        )
        .await
        .expect("patch spec");
    e.scrape_until("generation lag", |s| {
        s.is(&format!("ksit_integration_generation_lag{{{base}}}"), 1.0)
            && s.is(
                &format!("ksit_integration_info{{enabled=\"false\",{base},type=\"argocd\"}}"),
                1.0,
            )
            && !s.has(&format!(
                "ksit_integration_info{{enabled=\"true\",{base},type=\"argocd\"}}"
            ))
    })
    .await;

    targets
        .delete("edge-1", &DeleteParams::default())
        .await
        .expect("delete");
    integrations
        .delete("argo", &DeleteParams::default())
        .await
        .expect("delete");
    let s = e
        .scrape_until("deleted objects gone", |s| {
            !s.has_label("target", "edge-1") && !s.has_label("integration", "argo")
        })
        .await;
    s.assert(
        "ksit_exporter_collector_up{collector=\"integrationtargets\"}",
        1.0,
    );
    s.assert("ksit_exporter_kube_up", 1.0);
}

/// A Deployment, its ReplicaSet and pod (written as a kubelet and the controllers would), and
/// the leader Lease: the component series follow them, and the KSIT series follow leadership.
/// The control plane's controllers run too: the Deployment is paused, so its controller makes no
/// ReplicaSet of its own and keeps the one written here (labelled, or it would release it); the
/// replicaset controller makes its second, never-ready pod; the pod here is Ready as a kubelet
/// would report it; so the status the controllers keep writing has the counts written here.
#[tokio::test]
async fn pod_workload_and_lease_series_and_leader_gating() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let ns = test_namespace(&cp, "kube-pod", &[]).await;
    let n = ns.name.as_str();
    let labels = json!({"app.kubernetes.io/name": "ksit", "control-plane": "controller-manager"});
    let container = json!([{"name": "manager", "image": "ksit/manager:test"}]);
    let deployments: Api<Deployment> = Api::namespaced(cp.client.clone(), n);
    let deploy = create(
        &deployments,
        json!({"metadata": {"name": "ksit-controller-manager"},
               "spec": {"replicas": 2, "paused": true, "selector": {"matchLabels": labels},
                        "template": {"metadata": {"labels": labels}, "spec": {"containers": container}}}}),
    )
    .await;
    patch_status(
        &deployments,
        "ksit-controller-manager",
        json!({"replicas": 2, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 2}),
    )
    .await;
    let owner = |kind: &str, name: &str, uid: &str| json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true}]);
    let replicasets: Api<ReplicaSet> = Api::namespaced(cp.client.clone(), n);
    let rs = create(
        &replicasets,
        json!({"metadata": {"name": "ksit-controller-manager-5d9c", "labels": labels, "ownerReferences":
                            owner("Deployment", "ksit-controller-manager", deploy.metadata.uid.as_deref().expect("uid"))},
               "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                        "template": {"metadata": {"labels": labels}, "spec": {"containers": container}}}}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(cp.client.clone(), n);
    let pod_name = "ksit-controller-manager-5d9c-x7k2p";
    create(
        &pods,
        json!({"metadata": {"name": pod_name, "labels": labels, "ownerReferences":
                            owner("ReplicaSet", "ksit-controller-manager-5d9c", rs.metadata.uid.as_deref().expect("uid"))},
               "spec": {"nodeName": "node-1", "containers": container}}),
    )
    .await;
    patch_status(
        &pods,
        pod_name,
        json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}], "containerStatuses": [{
            "name": "manager", "ready": true, "restartCount": 2, "image": "ksit/manager:test", "imageID": "",
            "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
            "state": {"running": {"startedAt": "2026-11-25T10:00:00Z"}}}]}),
    )
    .await;
    let leases: Api<Lease> = Api::namespaced(cp.client.clone(), n);
    create(
        &leases,
        json!({"metadata": {"name": "ksit.io"},
               "spec": {"holderIdentity": format!("{pod_name}_4f1e0e7a-5b1c-4a39-9c1a-0c2d1e0e8b11"), "leaseDurationSeconds": 15}}),
    )
    .await;
    let targets = dynamic(&cp, n, "IntegrationTarget", "integrationtargets");
    create(
        &targets,
        json!({"apiVersion": "ksit.io/v1alpha1", "kind": "IntegrationTarget",
               "metadata": {"name": "edge-1"}, "spec": {"clusterName": "cluster1"}}),
    )
    .await;

    let kc = kubeconfig(&cp);
    let e = start(&[
        ("KUBECONFIG", kc.as_str()),
        ("KSIT_KUBERNETES", "true"),
        ("POD_NAME", pod_name),
        ("POD_NAMESPACE", n),
        ("NODE_NAME", "node-1"),
    ])
    .await;
    let s = e
        .scrape_until("component series", |s| {
            s.is("ksit_component_leader", 1.0)
                && s.is("ksit_component_replicas{state=\"ready\"}", 1.0)
        })
        .await;
    for (series, value) in [
        (
            "ksit_component_info{component=\"ksit\",node=\"node-1\",workload=\"ksit-controller-manager\",workload_kind=\"Deployment\"}",
            1.0,
        ),
        ("ksit_component_pod_phase{phase=\"Running\"}", 1.0),
        ("ksit_component_pod_phase{phase=\"Pending\"}", 0.0),
        ("ksit_component_container_ready{container=\"manager\"}", 1.0),
        (
            "ksit_component_container_restarts_total{container=\"manager\"}",
            2.0,
        ),
        (
            "ksit_component_container_last_terminated_reason{container=\"manager\",reason=\"OOMKilled\"}",
            1.0,
        ),
        ("ksit_component_replicas{state=\"desired\"}", 2.0),
        ("ksit_component_replicas{state=\"ready\"}", 1.0),
        ("ksit_component_replicas{state=\"available\"}", 1.0),
        ("ksit_component_replicas{state=\"updated\"}", 2.0),
    ] {
        s.assert(series, value);
    }
    let status = target_series(n, "edge-1", "cluster1");
    // The first list streams in as events: the component's series may come first.
    e.scrape_until("the leader exports targets", |s| s.is(&status, 0.0))
        .await;

    // Another replica takes the Lease: this sidecar stops exporting KSIT objects.
    leases
        .patch(
            "ksit.io",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"holderIdentity": "ksit-controller-manager-5d9c-other_1"}}),
            ),
        )
        .await
        .expect("patch lease");
    e.scrape_until("leadership lost", |s| {
        s.is("ksit_component_leader", 0.0) && !s.has_family("ksit_cluster_status")
    })
    .await;
    leases
        .patch(
            "ksit.io",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": format!("{pod_name}_2")}})),
        )
        .await
        .expect("patch lease");
    e.scrape_until("leadership back", |s| {
        s.is("ksit_component_leader", 1.0) && s.is(&status, 0.0)
    })
    .await;

    // The kubelet restarts the container once more.
    patch_status(
        &pods,
        pod_name,
        json!({"phase": "Running", "containerStatuses": [{
            "name": "manager", "ready": false, "restartCount": 3, "image": "ksit/manager:test", "imageID": "",
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
            "state": {"running": {"startedAt": "2026-11-25T10:05:00Z"}}}]}),
    )
    .await;
    let s = e
        .scrape_until("restart counted", |s| {
            s.is(
                "ksit_component_container_restarts_total{container=\"manager\"}",
                3.0,
            )
        })
        .await;
    s.assert("ksit_component_container_ready{container=\"manager\"}", 0.0);
    s.assert(
        "ksit_component_container_last_terminated_reason{container=\"manager\",reason=\"Error\"}",
        1.0,
    );
    assert!(
        !s.has_label("reason", "OOMKilled"),
        "only the last reason stays: {s}"
    );
}

/// Hundreds of objects: the exposition stays lint-clean and KSIT_MAX_OBJECTS bounds the series.
#[tokio::test]
async fn many_objects_are_bounded_and_lint_clean() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let ns = test_namespace(&cp, "kube-many", &[]).await;
    let docs: Vec<String> = (0..300)
        .map(|i| {
            format!(
                "apiVersion: ksit.io/v1alpha1\nkind: IntegrationTarget\nmetadata:\n  name: t{i:03}\nspec:\n  clusterName: c{i:03}\n"
            )
        })
        .collect();
    cp.apply_yaml(&ns.name, &docs.join("---\n"));
    let e = exporter(
        &cp,
        &ns,
        &[("KSIT_CR_METRICS", "always"), ("KSIT_MAX_OBJECTS", "250")],
    )
    .await;
    let s = e
        .scrape_until("300 objects seen", |s| {
            s.is(
                "ksit_exporter_kube_objects{kind=\"integrationtargets\"}",
                300.0,
            )
        })
        .await;
    assert_eq!(s.series("ksit_cluster_status").count(), 250, "{s}");
    s.assert(
        "ksit_exporter_kube_objects_dropped_total{kind=\"integrationtargets\"}",
        50.0,
    );
    // The first 250 listed are kept (the API server lists them by name).
    assert!(s.has(&target_series(&ns.name, "t000", "c000")), "{s}");
    assert!(s.has(&target_series(&ns.name, "t249", "c249")), "{s}");
    assert!(!s.has_label("target", "t250"), "{s}");

    let promtool = cp.bin_dir.join("promtool");
    assert_promtool_clean(&promtool, &s.text);
}

/// Hostile objects near the API server's size limit: an Integration whose `spec.config` holds
/// 50,000 entries (no series reads it) is exported as any other; an IntegrationTarget whose
/// status holds 3,500 conditions (more values than the exporter keeps of what it reads) is
/// left out, counted in ksit_exporter_kube_objects_skipped_total and logged; its neighbour is
/// exported; the exporter's peak RSS (the debug binary's) stays under 48 MiB.
#[tokio::test]
async fn objects_too_large_to_read_are_skipped_and_counted() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let ns = test_namespace(&cp, "kube-hostile", &[]).await;
    let targets = dynamic(&cp, &ns.name, "IntegrationTarget", "integrationtargets");
    let integrations = dynamic(&cp, &ns.name, "Integration", "integrations");
    for (name, cluster) in [("big", "c-big"), ("ok", "c-ok")] {
        create(
            &targets,
            json!({"apiVersion": "ksit.io/v1alpha1", "kind": "IntegrationTarget",
                   "metadata": {"name": name}, "spec": {"clusterName": cluster}}),
        )
        .await;
    }
    let conditions: Vec<serde_json::Value> = (0..3_500)
        .map(|i| {
            json!({"type": format!("T{i}"), "status": "True", "reason": "R", "message": "",
                   "lastTransitionTime": "2026-11-25T10:01:00Z"})
        })
        .collect();
    patch_status(
        &targets,
        "big",
        json!({"ready": true, "conditions": conditions}),
    )
    .await;
    let config: serde_json::Map<String, serde_json::Value> =
        (0..50_000).map(|i| (format!("k{i}"), json!("v"))).collect();
    create(
        &integrations,
        json!({"apiVersion": "ksit.io/v1alpha1", "kind": "Integration", "metadata": {"name": "wide"},
               "spec": {"type": "argocd", "config": config}}),
    )
    .await;

    let e = exporter(&cp, &ns, &[("KSIT_CR_METRICS", "always")]).await;
    let info = format!(
        "ksit_integration_info{{enabled=\"true\",integration=\"wide\",namespace=\"{}\",type=\"argocd\"}}",
        ns.name
    );
    let skipped = "ksit_exporter_kube_objects_skipped_total{kind=\"integrationtargets\",reason=\"too_large\"}";
    let s = e
        .scrape_until("the large target skipped, the others exported", |s| {
            s.is(skipped, 1.0) && s.is(&info, 1.0) && s.has(&target_series(&ns.name, "ok", "c-ok"))
        })
        .await;
    assert!(!s.has_label("target", "big"), "{s}");
    s.assert(
        "ksit_exporter_kube_objects{kind=\"integrationtargets\"}",
        2.0,
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", e.child.id()))
        .expect("the exporter's /proc status");
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024;
    eprintln!("exporter peak RSS {peak} bytes");
    assert!(peak < 48 * 1024 * 1024, "peak RSS {peak} bytes");
}

/// Property paths under `schema` (an OpenAPI v3 schema as JSON) that have no description.
/// `metadata` is exempt: the API server describes it as ObjectMeta whatever the CRD says.
fn undescribed(schema: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    if let Some(properties) = schema["properties"].as_object() {
        for (name, property) in properties {
            let at = format!("{path}.{name}");
            if name != "metadata" && !property["description"].is_string() {
                out.push(at.clone());
            }
            undescribed(property, &at, out);
        }
    }
    if schema["items"].is_object() {
        undescribed(&schema["items"], &format!("{path}[]"), out);
    }
}

/// manifests/crds has upstream's schema (config/crd/bases; docs/upstream.md): objects of
/// upstream's shape are accepted, two Integration conditions of one type included (no list
/// type there), while IntegrationTarget's conditions are a map list keyed by `type`, so two of
/// one type are refused; the fields upstream requires are required;
/// every field is described, as `kubectl explain` shows it.
#[tokio::test]
async fn crds_accept_what_upstream_accepts_and_describe_every_field() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let ns = test_namespace(&cp, "kube-crds", &[]).await;
    let n = ns.name.as_str();
    let ready = |status: &str, reason: &str| {
        json!({"type": "Ready", "status": status, "reason": reason, "message": "",
               "lastTransitionTime": "2026-11-27T10:00:00Z"})
    };
    let integrations = dynamic(&cp, n, "Integration", "integrations");
    create(
        &integrations,
        json!({"apiVersion": "ksit.io/v1alpha1", "kind": "Integration", "metadata": {"name": "full"},
               "spec": {"type": "prometheus", "enabled": true, "targetClusters": ["cluster1"],
                        "config": {"namespace": "monitoring"},
                        "autoInstall": {"enabled": true, "method": "helm", "manifestUrl": "https://example.com/m.yaml",
                                        "helmConfig": {"repository": "https://prometheus-community.github.io/helm-charts",
                                                       "chart": "kube-prometheus-stack", "version": "75.0.0",
                                                       "releaseName": "monitoring", "values": {"grafana.enabled": "false"}}}}}),
    )
    .await;
    patch_status(
        &integrations,
        "full",
        json!({"phase": "Running", "message": "Integration is running", "observedGeneration": 1,
               "lastReconcileTime": "2026-11-27T10:00:00Z",
               "conditions": [ready("True", "ReconcileSucceeded"), ready("False", "ReconcileFailed"),
                              {"type": "Progressing", "status": "Unknown", "reason": "Waiting", "message": "",
                               "lastTransitionTime": "2026-11-27T10:00:00Z"}],
               "clusterStatuses": [{"name": "cluster1", "connected": true, "lastSeen": "2026-11-27T10:00:00Z",
                                    "message": "connected"}]}),
    )
    .await;
    let stored = integrations.get("full").await.expect("get full");
    assert_eq!(
        stored.data["status"]["conditions"].as_array().map(Vec::len),
        Some(3),
        "both Ready conditions kept: {:?}",
        stored.data
    );
    assert_eq!(
        stored.data["spec"]["autoInstall"]["helmConfig"]["version"],
        "75.0.0"
    );

    let targets = dynamic(&cp, n, "IntegrationTarget", "integrationtargets");
    create(
        &targets,
        json!({"apiVersion": "ksit.io/v1alpha1", "kind": "IntegrationTarget", "metadata": {"name": "cluster1"},
               "spec": {"clusterName": "cluster1", "namespace": "default", "labels": {"location-group": "edge"}}}),
    )
    .await;
    patch_status(
        &targets,
        "cluster1",
        json!({"ready": true, "message": "Target cluster is connected and ready", "observedGeneration": 1,
               "lastSyncTime": "2026-11-27T10:00:00Z",
               "conditions": [ready("True", "ClusterReady"),
                              {"type": "Synced", "status": "True", "reason": "Synced", "message": "",
                               "lastTransitionTime": "2026-11-27T10:00:00Z"}]}),
    )
    .await;
    let stored = targets.get("cluster1").await.expect("get cluster1");
    assert_eq!(
        stored.data["status"]["conditions"].as_array().map(Vec::len),
        Some(2),
        "{:?}",
        stored.data
    );
    let twice = targets
        .patch_status(
            "cluster1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions":
                [ready("True", "ClusterReady"), ready("False", "ConnectionFailed")]}})),
        )
        .await;
    match twice {
        Err(kube::Error::Api(e)) => assert!(
            e.code == 422 && e.message.contains("Duplicate value"),
            "two Ready conditions on an IntegrationTarget: {e:?}"
        ),
        other => panic!("two Ready conditions on an IntegrationTarget were not refused: {other:?}"),
    }

    // What upstream's schema refuses, this one refuses too.
    for (what, status) in [
        (
            "a cluster status without connected",
            json!({"clusterStatuses": [{"name": "cluster1"}]}),
        ),
        (
            "a cluster status without name",
            json!({"clusterStatuses": [{"connected": true}]}),
        ),
    ] {
        let refused = integrations
            .patch_status(
                "full",
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await;
        assert!(refused.is_err(), "{what} was accepted");
    }
    // A merge patch keeps the fields it does not name; null removes one.
    for (what, helm) in [
        ("a helmConfig without chart", json!({"chart": null})),
        (
            "a helmConfig without repository",
            json!({"repository": null}),
        ),
    ] {
        let refused = integrations
            .patch(
                "full",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"autoInstall": {"helmConfig": helm}}})),
            )
            .await;
        assert!(refused.is_err(), "{what} was accepted");
    }

    let crds: Api<CustomResourceDefinition> = Api::all(cp.client.clone());
    for name in ["integrations.ksit.io", "integrationtargets.ksit.io"] {
        let crd = serde_json::to_value(crds.get(name).await.expect("get CRD")).expect("JSON");
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        undescribed(schema, "", &mut missing);
        assert_eq!(
            missing,
            Vec::<String>::new(),
            "{name}: fields without a description"
        );
        // Upstream's list types: the IntegrationTarget's conditions alone, a map keyed by type.
        let conditions = &schema["properties"]["status"]["properties"]["conditions"];
        let list_type = (
            conditions["x-kubernetes-list-type"].clone(),
            conditions["x-kubernetes-list-map-keys"].clone(),
        );
        let want = if name == "integrationtargets.ksit.io" {
            (json!("map"), json!(["type"]))
        } else {
            (serde_json::Value::Null, serde_json::Value::Null)
        };
        assert_eq!(list_type, want, "{name}: status.conditions");
        let listed = serde_json::to_string(schema).expect("JSON");
        assert_eq!(
            listed.matches("x-kubernetes-list-type").count(),
            usize::from(name == "integrationtargets.ksit.io"),
            "{name}: {listed}"
        );
    }
    let explained = common::check(
        cp.kubectl(&["explain", "integrations.status.observedGeneration"]),
        "kubectl explain",
    );
    assert!(explained.contains("DESCRIPTION"), "{explained}");
    assert!(explained.contains("generation"), "{explained}");
}

/// The stand-in KSIT manager writes status as upstream's does; the exporter reports it, and
/// reads the manager's controller-runtime metrics as its upstream. Upstream never writes
/// status.clusterStatuses; this test asks the stand-in for them (--write-cluster-statuses) to
/// follow `ksit_integration_cluster_connected` through a change, and for short requeues: a
/// ready target sees its rewritten Secret, and an Integration its targets' readiness, only when
/// next reconciled.
#[tokio::test]
async fn follows_the_stand_in_manager() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let ns = test_namespace(&cp, "kube-mgr", &[]).await;
    let manager = common::start_manager_with(
        &cp,
        &[ns.name.as_str()],
        &[
            "--write-cluster-statuses",
            "--integration-requeue=1s",
            "--target-ready-requeue=1s",
        ],
    )
    .await;
    cp.apply_samples(&ns.name);
    let e = exporter(
        &cp,
        &ns,
        &[
            ("KSIT_CR_METRICS", "always"),
            ("KSIT_UPSTREAM_METRICS_URL", manager.metrics_url.as_str()),
            ("KSIT_PROBE_INTERVAL", "500ms"),
            ("KSIT_PROBE_TIMEOUT", "400ms"),
        ],
    )
    .await;
    let n = ns.name.as_str();
    e.scrape_until("manager-written status", |s| {
        s.is(&target_series(n, "cluster1", "cluster1"), 1.0)
            && s.is(
                &format!(
                    "ksit_integration_status_phase{{integration=\"argocd-integration\",namespace=\"{n}\",phase=\"Running\",type=\"argocd\"}}"
                ),
                1.0,
            )
            && s.is(
                &format!(
                    "ksit_integration_status_phase{{integration=\"flux-integration\",namespace=\"{n}\",phase=\"Failed\",type=\"flux\"}}"
                ),
                1.0,
            )
    })
    .await;
    let reconciles = |s: &common::Scrape| -> f64 {
        s.series("ksit_reconcile_duration_seconds_count")
            .map(|(_, v)| v)
            .sum()
    };
    let s = e
        .scrape_until("the manager's reconciles read", |s| {
            s.is("ksit_exporter_upstream_up", 1.0) && reconciles(s) > 0.0
        })
        .await;
    let before = reconciles(&s);

    // cluster1's Secret now names a closed port: the manager's next connection test fails (a
    // ready target is reconciled again within about a second, each status write changing its
    // lastSyncTime), and the integration that needs it follows.
    cp.put_kubeconfig_secret(n, "cluster1", &common::closed_port_kubeconfig());
    e.scrape_until("failure reported", |s| {
        s.is(&target_series(n, "cluster1", "cluster1"), 0.0)
            && s.is(
                &format!(
                    "ksit_integration_cluster_connected{{cluster_name=\"cluster1\",integration=\"argocd-integration\",namespace=\"{n}\"}}"
                ),
                0.0,
            )
    })
    .await;
    // The manager reconciles the changed target, and the exporter reads its counters again.
    e.scrape_until("reconciles counted after the change", |s| {
        reconciles(s) > before
    })
    .await;
    drop(manager);
}

/// The exporter runs as a service account bound to exactly manifests/rbac/role.yaml; without
/// the Lease rule, only the lease collector reports down.
#[tokio::test]
async fn least_privilege_role_suffices_and_each_rule_matters() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let role = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/manifests/rbac/role.yaml"
    ))
    .expect("role.yaml");
    let lease_rule =
        "  - apiGroups: [coordination.k8s.io]\n    resources: [leases]\n    verbs: [list, watch]\n";
    assert!(
        role.contains(lease_rule),
        "role.yaml still has the Lease rule this test removes"
    );
    for (case, role_yaml, lease_up) in [
        ("full", role.clone(), 1.0),
        ("no-lease", role.replace(lease_rule, ""), 0.0),
    ] {
        let ns = test_namespace(&cp, &format!("rbac-{case}"), &[]).await;
        let n = ns.name.as_str();
        cp.apply_yaml(n, &role_yaml);
        let sas: Api<ServiceAccount> = Api::namespaced(cp.client.clone(), n);
        create(&sas, json!({"metadata": {"name": "ksit-exporter"}})).await;
        cp.apply_yaml(
            n,
            &format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: ksit-exporter\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: ksit-exporter\nsubjects:\n  - kind: ServiceAccount\n    name: ksit-exporter\n    namespace: {n}\n"
            ),
        );
        let pods: Api<Pod> = Api::namespaced(cp.client.clone(), n);
        create(&pods, json!({"metadata": {"name": "mgr"}, "spec": {"containers": [{"name": "m", "image": "m"}]}})).await;
        let token = sas
            .create_token_request(
                "ksit-exporter",
                &PostParams::default(),
                &serde_json::from_value(json!({"spec": {"audiences": []}})).expect("token request"),
            )
            .await
            .expect("token")
            .status
            .expect("token status")
            .token;
        let dir = tempfile::tempdir().expect("tempdir");
        let kc = dir.path().join("kubeconfig");
        let admin: serde_json::Value = {
            let out = common::check(
                cp.kubectl(&["config", "view", "--raw", "--minify", "-o", "json"]),
                "kubectl config view",
            );
            serde_json::from_str(&out).expect("json kubeconfig")
        };
        let cluster = &admin["clusters"][0]["cluster"];
        std::fs::write(
            &kc,
            serde_json::to_string(&json!({
                "apiVersion": "v1", "kind": "Config", "current-context": "sa",
                "clusters": [{"name": "test", "cluster": cluster}],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "test", "user": "sa", "namespace": n}}],
            }))
            .expect("json"),
        )
        .expect("write kubeconfig");
        let kc = kc.display().to_string();
        let e = start(&[
            ("KUBECONFIG", kc.as_str()),
            ("KSIT_KUBERNETES", "true"),
            ("POD_NAME", "mgr"),
            ("POD_NAMESPACE", n),
            ("KSIT_CR_METRICS", "always"),
            // The Role covers its own namespace: narrowed from the default, all namespaces.
            ("KSIT_WATCH_NAMESPACES", n),
        ])
        .await;
        let up = |c: &str| format!("ksit_exporter_collector_up{{collector=\"{c}\"}}");
        let s = e
            .scrape_until(&format!("{case}: every collector reported"), |s| {
                ["pod", "lease", "integrations", "integrationtargets"]
                    .iter()
                    .all(|c| s.has(&up(c)))
            })
            .await;
        for c in ["pod", "integrations", "integrationtargets"] {
            assert!(s.is(&up(c), 1.0), "{case}: {c} {s}");
        }
        assert!(s.is(&up("lease"), lease_up), "{case}: lease {s}");
        assert!(
            s.is("ksit_exporter_kube_up", 1.0),
            "a 403 is an answer: {s}"
        );
    }
}

/// Where `scripts/controlplane.sh up` put the open-cluster-management CRD it installed.
const OCM_CRD: &str =
    "target/controlplane/crds/0000_00_clusters.open-cluster-management.io_managedclusters.crd.yaml";
const OCM_CRD_NAME: &str = "managedclusters.cluster.open-cluster-management.io";

fn apply_ocm_crd_args() -> Vec<String> {
    let crd = common::repo_path(OCM_CRD);
    ["apply", "--server-side", "--force-conflicts", "-f"]
        .into_iter()
        .map(String::from)
        .chain([crd.to_str().expect("UTF-8 path").to_string()])
        .collect()
}

/// Re-installs the ManagedCluster CRD if the test fails while it is deleted, so the shared
/// control plane is left as it was found (best effort: a `Drop` cannot wait for it).
struct ReinstallOcmCrdOnFailure(common::Cleanup);

impl Drop for ReinstallOcmCrdOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let args = apply_ocm_crd_args();
            self.0
                .kubectl(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }
}

/// ManagedClusters (KSIT_OCM_CLUSTERS=true) give `ksit_cluster_*` series with
/// `source="managedcluster"`; with their CRD gone only that collector goes down, the rest and
/// /healthz carry on, and it recovers by itself when the CRD returns. No other test in this
/// binary reads ManagedClusters; tests/dashboard_e2e.rs does, in its own test binary, which
/// cargo runs before or after this one, never beside it.
#[tokio::test]
async fn managed_clusters_and_a_missing_crd() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let ns = test_namespace(&cp, "kube-ocm", &[]).await;
    let mut e = exporter(
        &cp,
        &ns,
        &[("KSIT_OCM_CLUSTERS", "true"), ("KSIT_CR_METRICS", "always")],
    )
    .await;
    let clusters: Api<DynamicObject> = Api::all_with(
        cp.client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("cluster.open-cluster-management.io", "v1", "ManagedCluster"),
            "managedclusters",
        ),
    );
    // Cluster-scoped: the test namespace's name keeps the object apart from other runs.
    let name = format!("mc-{}", ns.name);
    create(
        &clusters,
        json!({"apiVersion": "cluster.open-cluster-management.io/v1", "kind": "ManagedCluster",
               "metadata": {"name": name}, "spec": {"hubAcceptsClient": true}}),
    )
    .await;
    let labels = format!(
        "cluster_name=\"{name}\",namespace=\"\",source=\"managedcluster\",target=\"{name}\""
    );
    let status = format!("ksit_cluster_status{{{labels}}}");
    e.scrape_until("a new ManagedCluster, not available", |s| {
        s.is(&status, 0.0)
    })
    .await;
    patch_status(
        &clusters,
        &name,
        json!({"conditions": [{"type": "ManagedClusterConditionAvailable", "status": "True",
                               "reason": "ManagedClusterAvailable", "message": "ok",
                               "lastTransitionTime": "2026-11-25T10:00:00Z"}]}),
    )
    .await;
    let s = e
        .scrape_until("the ManagedCluster available", |s| s.is(&status, 1.0))
        .await;
    for (condition_status, value) in [("True", 1.0), ("False", 0.0), ("Unknown", 0.0)] {
        s.assert(
            &format!(
                "ksit_cluster_condition{{cluster_name=\"{name}\",condition=\"ManagedClusterConditionAvailable\",namespace=\"\",source=\"managedcluster\",status=\"{condition_status}\",target=\"{name}\"}}"
            ),
            value,
        );
    }

    let _reinstall = ReinstallOcmCrdOnFailure(cp.cleanup());
    common::check(
        cp.kubectl(&["delete", "crd", OCM_CRD_NAME, "--wait=true"]),
        "kubectl delete crd managedclusters",
    );
    let s = e
        .scrape_until("the managedclusters collector down", |s| {
            s.is(
                "ksit_exporter_collector_up{collector=\"managedclusters\"}",
                0.0,
            )
        })
        .await;
    for series in [
        "ksit_exporter_collector_up{collector=\"integrationtargets\"}",
        "ksit_exporter_collector_up{collector=\"integrations\"}",
        "ksit_exporter_kube_up",
    ] {
        s.assert(series, 1.0);
    }
    assert_eq!(e.get("/healthz").await.status, 200);
    assert!(
        e.child.try_wait().expect("try_wait").is_none(),
        "the exporter must not exit"
    );

    let args = apply_ocm_crd_args();
    common::check(
        cp.kubectl(&args.iter().map(String::as_str).collect::<Vec<_>>()),
        "re-installing the ManagedCluster CRD",
    );
    cp.wait_established(&[OCM_CRD_NAME]).await;
    // The watcher retries with backoff (up to 30 s between attempts in kube-runtime).
    let s = e
        .scrape_within(
            Duration::from_secs(90),
            "the managedclusters collector recovered",
            |s| {
                s.is(
                    "ksit_exporter_collector_up{collector=\"managedclusters\"}",
                    1.0,
                )
            },
        )
        .await;
    assert!(
        !s.has_label("target", &name),
        "the deleted CRD took its objects, and their series, with it: {s}"
    );
}
