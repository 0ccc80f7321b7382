//! open-cluster-management ManagedClusters, the clusters of a KubeStellar ITS, reported as
//! `ksit_cluster_*` series with `source="managedcluster"`.

use std::sync::Arc;

use kube::api::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde::Deserialize;

use super::ksit::{CONDITION_STATUSES, Condition, Limit, field, watch_all};
use super::{Health, Series, follow};
use crate::metrics::Metrics;

/// The condition that says a ManagedCluster is usable.
const AVAILABLE: &str = "ManagedClusterConditionAvailable";

#[derive(Debug, Default, Deserialize)]
struct Status {
    #[serde(default)]
    conditions: Vec<Condition>,
}

pub async fn run(client: Client, max: usize, metrics: Arc<Metrics>) {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cluster.open-cluster-management.io", "v1", "ManagedCluster"),
        "managedclusters",
    );
    // Cluster-scoped: one watch over all.
    let (stores, stream) = watch_all(&client, &ar, &None);
    let mut series = Series::default();
    let mut limit = Limit::new("managedclusters", max);
    let mut health = Health::new("managedclusters", metrics.clone());
    let k = &metrics.kube;
    follow(stream, &mut health, || {
        for obj in limit.apply(&stores, &metrics) {
            let name = obj.name_any();
            let status: Status = field(&obj, "status");
            let labels = ["managedcluster", "", name.as_str(), name.as_str()];
            let available = status
                .conditions
                .iter()
                .any(|c| c.type_ == AVAILABLE && c.status == "True");
            series.set(&k.cluster_status, &labels, f64::from(u8::from(available)));
            for c in &status.conditions {
                let mut with = labels.to_vec();
                with.push(&c.type_);
                series.one_hot(&k.cluster_condition, &with, CONDITION_STATUSES, &c.status);
            }
        }
        series.finish();
    })
    .await;
}
