//! Series every replica's sidecar would see alike (IntegrationTargets, Integrations and, with
//! KSIT_OCM_CLUSTERS=true, ManagedClusters) come from the leader's sidecar alone: two sidecars
//! beside two replicas give one copy, and it moves with the Lease.

mod common;

use common::{Scrape, control_plane, start, test_namespace};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::json;

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
        "ksit_cluster_status{{cluster_name=\"{name}\",namespace=\"\",source=\"managedcluster\",target=\"{name}\"}}"
    );

    let kc = cp.kubeconfig.display().to_string();
    let env = |pod: &'static str| {
        [
            ("KUBECONFIG", kc.as_str()),
            ("KSIT_KUBERNETES", "true"),
            ("KSIT_OCM_CLUSTERS", "true"),
            ("KSIT_WATCH_NAMESPACES", n),
            ("POD_NAME", pod),
            ("POD_NAMESPACE", n),
        ]
    };
    let (a, b) = (start(&env("mgr-a")).await, start(&env("mgr-b")).await);
    // Settled: the sidecar knows whether it leads, and its ManagedCluster watch is up.
    let settled = |s: &Scrape, leader: bool| {
        s.is("ksit_component_leader", f64::from(u8::from(leader)))
            && s.is(
                "ksit_exporter_collector_up{collector=\"managedclusters\"}",
                1.0,
            )
    };
    let ours = |s: &Scrape| s.text.contains(&format!("target=\"{name}\""));
    a.scrape_until("the leader's sidecar exporting", |s| {
        settled(s, true) && s.is(&series, 0.0)
    })
    .await;
    let follower = b
        .scrape_until("the follower's sidecar settled", |s| settled(s, false))
        .await;
    assert!(
        !ours(&follower),
        "a follower's sidecar exports no ManagedCluster series:\n{}",
        follower.text
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
    b.scrape_until("the new leader's sidecar exporting", |s| {
        settled(s, true) && s.is(&series, 0.0)
    })
    .await;
    a.scrape_until("the old leader's sidecar silent", |s| {
        settled(s, false) && !ours(s)
    })
    .await;

    clusters
        .delete(&name, &Default::default())
        .await
        .expect("delete the ManagedCluster");
}

/// A pod leads only while its Lease is unexpired: when the holder stops renewing (its manager
/// died and nobody took over yet), its sidecar stops leading at renewTime +
/// leaseDurationSeconds, with no change to the Lease to tell it; a renewal makes it lead again.
#[tokio::test]
async fn a_lapsed_lease_is_not_leadership() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let ns = test_namespace(&cp, "kube-lapse", &[]).await;
    let n = ns.name.as_str();
    let leases: Api<Lease> = Api::namespaced(cp.client.clone(), n);
    // As the API server writes a MicroTime: to the microsecond.
    let now = || {
        serde_json::to_value(MicroTime(k8s_openapi::jiff::Timestamp::now()))
            .expect("a MicroTime serializes")
    };
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "ksit.io"},
        "spec": {"holderIdentity": "mgr-a_1", "renewTime": now(), "leaseDurationSeconds": 4}
    }))
    .expect("lease");
    leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("create the Lease");
    let kc = cp.kubeconfig.display().to_string();
    let e = start(&[
        ("KUBECONFIG", kc.as_str()),
        ("KSIT_KUBERNETES", "true"),
        ("KSIT_WATCH_NAMESPACES", n),
        ("POD_NAME", "mgr-a"),
        ("POD_NAMESPACE", n),
    ])
    .await;
    e.scrape_until("leading on a fresh Lease", |s| {
        s.is("ksit_component_leader", 1.0)
    })
    .await;
    e.scrape_until("not leading once the Lease lapsed", |s| {
        s.is("ksit_component_leader", 0.0)
    })
    .await;
    leases
        .patch(
            "ksit.io",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"renewTime": now(), "leaseDurationSeconds": 60}})),
        )
        .await
        .expect("renew the Lease");
    e.scrape_until("leading again once renewed", |s| {
        s.is("ksit_component_leader", 1.0)
    })
    .await;
}

/// Leadership that cannot be known (no POD_NAME, so no Lease is read) is absent, not 0.
#[tokio::test]
async fn unknown_leadership_is_absent() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let kc = cp.kubeconfig.display().to_string();
    let e = start(&[("KUBECONFIG", kc.as_str()), ("KSIT_KUBERNETES", "true")]).await;
    let s = e
        .scrape_until("the KSIT collectors up", |s| {
            s.is(
                "ksit_exporter_collector_up{collector=\"integrationtargets\"}",
                1.0,
            )
        })
        .await;
    assert!(!s.has_family("ksit_component_leader"), "{}", s.text);
}
