//! Sharded export (`KSIT_CR_METRICS=sharded`) against the real test control plane: the sidecars
//! of one workload's replicas export every IntegrationTarget exactly once between them, and
//! the objects of a replica that goes reappear on the others.
//!
//! No kubelet runs there: the Deployment's ReplicaSet and pods are the control plane's own
//! controllers', and the test writes the pods' `Running` phase as a kubelet would. The sidecars
//! run outside the pods, each told its pod by `POD_NAME`, as the downward API would.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::poll::eventually;
use common::{ControlPlane, Exporter, control_plane, start, test_namespace};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use serde_json::json;

const TARGETS: usize = 300;

fn targets_api(cp: &ControlPlane, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("ksit.io", "v1alpha1", "IntegrationTarget"),
        "integrationtargets",
    );
    Api::namespaced_with(cp.client.clone(), ns, &ar)
}

async fn create_targets(cp: &ControlPlane, ns: &str, n: usize) -> BTreeSet<String> {
    let api = targets_api(cp, ns);
    let names: Vec<String> = (0..n).map(|i| format!("t{i:04}")).collect();
    futures::stream::iter(names.clone())
        .map(|name| {
            let api = api.clone();
            async move {
                let obj: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "ksit.io/v1alpha1", "kind": "IntegrationTarget",
                    "metadata": {"name": name}, "spec": {"clusterName": format!("c-{name}")}}))
                .expect("a target");
                api.create(&PostParams::default(), &obj)
                    .await
                    .expect("create a target");
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    names.into_iter().collect()
}

/// The targets each sidecar exports (from `ksit_cluster_status`), in `sidecars`' order.
async fn shares(sidecars: &[&Exporter]) -> Vec<BTreeSet<String>> {
    let mut out = Vec::new();
    for e in sidecars {
        let s = e.scrape().await;
        out.push(
            s.series("ksit_cluster_status")
                .filter_map(|(k, _)| {
                    let (_, rest) = k.split_once(",target=\"")?;
                    rest.split_once('"').map(|(t, _)| t.to_string())
                })
                .collect(),
        );
    }
    out
}

/// Ok when every one of `all` is exported by exactly one of the shares; else what is off.
fn exactly_once(all: &BTreeSet<String>, shares: &[BTreeSet<String>]) -> Result<(), String> {
    let mut owners: BTreeMap<&str, usize> = BTreeMap::new();
    for share in shares {
        for t in share {
            *owners.entry(t.as_str()).or_default() += 1;
        }
    }
    let missing = all
        .iter()
        .filter(|t| !owners.contains_key(t.as_str()))
        .count();
    let twice = owners.values().filter(|&&n| n > 1).count();
    let sizes: Vec<usize> = shares.iter().map(BTreeSet::len).collect();
    if missing == 0 && twice == 0 && owners.len() == all.len() {
        Ok(())
    } else {
        Err(format!(
            "{missing} missing, {twice} on two sidecars or more, shares {sizes:?}"
        ))
    }
}

async fn sidecar(cp: &ControlPlane, ns: &str, extra: &[(&str, &str)]) -> Exporter {
    let kc = cp.kubeconfig.display().to_string();
    let mut env = vec![
        ("KUBECONFIG", kc.as_str()),
        ("KSIT_KUBERNETES", "true"),
        ("KSIT_WATCH_NAMESPACES", ns),
        ("KSIT_CR_METRICS", "sharded"),
        ("POD_NAMESPACE", ns),
    ];
    env.extend_from_slice(extra);
    start(&env).await
}

/// The names of the pods the ReplicaSet controller made, once there are `n`.
async fn pods_of(pods: &Api<Pod>, n: usize) -> BTreeSet<String> {
    eventually(Duration::from_secs(30), "the replicas' pods", || async {
        let list = pods
            .list(&ListParams::default().labels("app=mgr"))
            .await
            .map_err(|e| e.to_string())?;
        let names: BTreeSet<String> = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        if names.len() == n {
            Ok(names)
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await
}

async fn run_pod(pods: &Api<Pod>, name: &str) {
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .expect("the pod's phase");
}

/// The `shard` and `shards` labels of a sidecar's `ksit_exporter_shard_info`.
async fn shard_of(e: &Exporter) -> (String, String) {
    let s = e.scrape().await;
    let (key, _) = s
        .series("ksit_exporter_shard_info")
        .next()
        .unwrap_or_else(|| panic!("no ksit_exporter_shard_info\n{s}"));
    let label = |name: &str| {
        key.split_once(&format!("{name}=\""))
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(v, _)| v.to_string())
            .unwrap_or_default()
    };
    assert_eq!(label("source"), "pods", "{key}");
    (label("shard"), label("shards"))
}

#[tokio::test]
async fn the_replicas_sidecars_export_every_object_once_and_take_over_a_lost_ones() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let ns = test_namespace(&cp, "shard-pods", &[]).await;
    let n = ns.name.as_str();
    let deployments: Api<Deployment> = Api::namespaced(cp.client.clone(), n);
    let labels = json!({"app": "mgr"});
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "mgr"},
        "spec": {"replicas": 3, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "manager", "image": "manager:test"}]}}}}))
    .expect("a Deployment");
    deployments
        .create(&PostParams::default(), &deploy)
        .await
        .expect("create the Deployment");
    let pods: Api<Pod> = Api::namespaced(cp.client.clone(), n);
    let first: Vec<String> = pods_of(&pods, 3).await.into_iter().collect();
    for p in &first {
        run_pod(&pods, p).await;
    }
    let all = create_targets(&cp, n, TARGETS).await;

    let started = Instant::now();
    let mut sidecars = Vec::new();
    for p in &first {
        sidecars.push(sidecar(&cp, n, &[("POD_NAME", p)]).await);
    }
    let refs: Vec<&Exporter> = sidecars.iter().collect();
    let split = eventually(
        Duration::from_secs(30),
        "every target exactly once",
        || async {
            let s = shares(&refs).await;
            exactly_once(&all, &s).map(|()| s)
        },
    )
    .await;
    eprintln!(
        "figure: 3 sidecars export {TARGETS} targets exactly once {:?} after the first started; shares {:?}",
        started.elapsed(),
        split.iter().map(BTreeSet::len).collect::<Vec<_>>()
    );
    assert!(split.iter().all(|s| !s.is_empty()), "each has a share");
    let mut seen: Vec<(String, String)> = Vec::new();
    for e in &sidecars {
        seen.push(shard_of(e).await);
    }
    seen.sort();
    let want: Vec<(String, String)> = (0..3).map(|i| (i.to_string(), "3".into())).collect();
    assert_eq!(seen, want, "each sidecar names its own shard of 3");

    // The first replica's pod goes: its objects move to the others, and its sidecar (still
    // running here, as a sidecar draining would be) exports none of them.
    let gone = Instant::now();
    pods.delete(&first[0], &DeleteParams::default().grace_period(0))
        .await
        .expect("delete a pod");
    let survivors = [&sidecars[1], &sidecars[2]];
    let after = eventually(
        Duration::from_secs(30),
        "the survivors take over",
        || async {
            let s = shares(&survivors).await;
            exactly_once(&all, &s).map(|()| s)
        },
    )
    .await;
    eprintln!(
        "figure: a replica's {} targets reappeared on the other two {:?} after its pod was deleted",
        split[0].len(),
        gone.elapsed()
    );
    for (before, now) in split[1..].iter().zip(&after) {
        assert!(
            before.is_subset(now),
            "a survivor keeps its own objects: only the lost replica's move"
        );
    }
    let lost = shares(&[&sidecars[0]]).await;
    assert!(
        lost[0].is_empty(),
        "the deleted pod's sidecar exports none: {:?}",
        lost[0].len()
    );
    assert_eq!(shard_of(&sidecars[0]).await, ("-1".into(), "2".into()));

    // The replacement becomes Running: it takes its share, and only from the others.
    let now = pods_of(&pods, 3).await;
    let new = now
        .iter()
        .find(|p| !first.contains(p))
        .expect("a replacement pod")
        .clone();
    run_pod(&pods, &new).await;
    sidecars.push(sidecar(&cp, n, &[("POD_NAME", &new)]).await);
    let three = [&sidecars[1], &sidecars[2], &sidecars[3]];
    let last = eventually(Duration::from_secs(30), "three shares again", || async {
        let s = shares(&three).await;
        exactly_once(&all, &s).map(|()| s)
    })
    .await;
    assert!(!last[2].is_empty(), "the new replica has a share");
    for (before, now) in after.iter().zip(&last) {
        assert!(
            now.is_subset(before),
            "a replica that comes only takes objects"
        );
    }
    let deleted = targets_api(&cp, n);
    deleted
        .delete("t0000", &DeleteParams::default())
        .await
        .expect("delete a target");
    let mut fewer = all.clone();
    fewer.remove("t0000");
    eventually(
        Duration::from_secs(30),
        "a deleted target leaves its shard",
        || async { exactly_once(&fewer, &shares(&three).await) },
    )
    .await;
}

#[tokio::test]
async fn shards_set_by_hand_export_every_object_once() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let ns = test_namespace(&cp, "shard-fixed", &[]).await;
    let n = ns.name.as_str();
    let all = create_targets(&cp, n, 90).await;
    let mut sidecars = Vec::new();
    for i in 0..3 {
        let shard = format!("{i}/3");
        // No pod identity: the shards are KSIT_SHARD's alone.
        let kc = cp.kubeconfig.display().to_string();
        sidecars.push(
            start(&[
                ("KUBECONFIG", kc.as_str()),
                ("KSIT_KUBERNETES", "true"),
                ("KSIT_WATCH_NAMESPACES", n),
                ("KSIT_CR_METRICS", "sharded"),
                ("KSIT_SHARD", shard.as_str()),
            ])
            .await,
        );
    }
    let refs: Vec<&Exporter> = sidecars.iter().collect();
    let split = eventually(
        Duration::from_secs(30),
        "every target exactly once",
        || async {
            let s = shares(&refs).await;
            exactly_once(&all, &s).map(|()| s)
        },
    )
    .await;
    assert!(split.iter().all(|s| !s.is_empty()), "{split:?}");
    for (i, e) in sidecars.iter().enumerate() {
        let s = e.scrape().await;
        s.assert(
            &format!("ksit_exporter_shard_info{{shard=\"{i}\",shards=\"3\",source=\"static\"}}"),
            1.0,
        );
        s.assert("ksit_exporter_shard_members", 3.0);
        s.assert(
            "ksit_exporter_kube_objects{kind=\"integrationtargets\"}",
            split[i].len() as f64,
        );
    }
}
