//! Series every replica's sidecar would see alike (IntegrationTargets, Integrations and, with
//! KSIT_OCM_CLUSTERS=true, ManagedClusters) come from the leader's sidecar alone: two sidecars
//! beside two replicas give one copy, and it moves with the Lease.

mod common;
mod exporter_support;

use std::time::Duration;

use common::{control_plane, test_namespace};
use exporter_support::{Exporter, get, has_line, start};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::json;

/// Polls /metrics until `pred` holds, for up to 20 s (the control plane shares two cores).
async fn until(e: &Exporter, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let body = get(e.addr, "/metrics").text();
        if pred(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last /metrics:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_sidecars_export_one_copy_of_managed_clusters() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let ns = test_namespace(&cp, "kube-leader", &[]).await;
    let n = ns.name.as_str();
    let leases: Api<Lease> = Api::namespaced(cp.client.clone(), n);
    let holder = |pod: &str| format!("{pod}_4f1e0e7a-5b1c-4a39-9c1a-0c2d1e0e8b11");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "ksit.io"},
        "spec": {"holderIdentity": holder("mgr-a"), "leaseDurationSeconds": 15}
    }))
    .expect("lease");
    leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("create the Lease");
    let clusters: Api<DynamicObject> = Api::all_with(
        cp.client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("cluster.open-cluster-management.io", "v1", "ManagedCluster"),
            "managedclusters",
        ),
    );
    // Cluster-scoped: the test namespace's name keeps the object apart from other runs.
    let name = format!("mc-{n}");
    let cluster: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cluster.open-cluster-management.io/v1", "kind": "ManagedCluster",
        "metadata": {"name": name}, "spec": {"hubAcceptsClient": true}
    }))
    .expect("managed cluster");
    clusters
        .create(&PostParams::default(), &cluster)
        .await
        .expect("create the ManagedCluster");
    let series = format!(
        "ksit_cluster_status{{cluster_name=\"{name}\",namespace=\"\",source=\"managedcluster\",target=\"{name}\"}} 0"
    );

    let kc = cp.kubeconfig.display().to_string();
    let sidecar = |pod: &'static str| {
        start(&[
            ("KUBECONFIG", kc.as_str()),
            ("KSIT_KUBERNETES", "true"),
            ("KSIT_OCM_CLUSTERS", "true"),
            ("KSIT_WATCH_NAMESPACES", n),
            ("POD_NAME", pod),
            ("POD_NAMESPACE", n),
        ])
    };
    let (a, b) = (sidecar("mgr-a"), sidecar("mgr-b"));
    let settled = |leader: bool| {
        move |body: &str| {
            has_line(body, &format!("ksit_component_leader {}", u8::from(leader)))
                && has_line(
                    body,
                    "ksit_exporter_collector_up{collector=\"managedclusters\"} 1",
                )
        }
    };
    let body = until(&a, "the leader's sidecar exporting", |body| {
        settled(true)(body) && has_line(body, &series)
    })
    .await;
    assert!(has_line(&body, &series), "{body}");
    let body = until(&b, "the follower's sidecar settled", settled(false)).await;
    assert!(
        !body.contains(&format!("target=\"{name}\"")),
        "a follower's sidecar exports no ManagedCluster series:\n{body}"
    );

    // The Lease moves to the other replica: so does the one copy.
    leases
        .patch(
            "ksit.io",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": holder("mgr-b")}})),
        )
        .await
        .expect("move the Lease");
    until(&b, "the new leader's sidecar exporting", |body| {
        settled(true)(body) && has_line(body, &series)
    })
    .await;
    until(&a, "the old leader's sidecar silent", |body| {
        settled(false)(body) && !body.contains(&format!("target=\"{name}\""))
    })
    .await;

    clusters
        .delete(&name, &Default::default())
        .await
        .expect("delete the ManagedCluster");
}
