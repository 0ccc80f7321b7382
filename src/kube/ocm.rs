//! open-cluster-management ManagedClusters, the clusters of a KubeStellar ITS, reported as
//! `ksit_cluster_*` series with `source="managedcluster"`.

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde::Deserialize;

use super::cluster::{self, Cluster};
use super::series::Series;
use super::watch::{self, Gate, Limit, watch_all};
use super::{Condition, field};

const NAME: &str = "managedclusters";

/// The condition that says a ManagedCluster is usable.
const AVAILABLE: &str = "ManagedClusterConditionAvailable";

#[derive(Debug, Default, Deserialize)]
struct Status {
    #[serde(default)]
    conditions: Vec<Condition>,
}

pub async fn run(
    client: Client,
    gate: Gate,
    max: usize,
    families: cluster::Families,
    watch_families: watch::Families,
) {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cluster.open-cluster-management.io", "v1", "ManagedCluster"),
        NAME,
    );
    // Cluster-scoped: one watch over all.
    let (stores, stream) = watch_all(&client, &ar, &None);
    let mut series = Series::default();
    let mut limit = Limit::new(NAME, max, watch_families.clone());
    let mut changes = std::pin::pin!(watch::changes(NAME, stream, gate, watch_families));
    while let Some(exporting) = changes.next().await {
        let objects = limit.apply(&stores);
        if exporting {
            for obj in &objects {
                write(&mut series, &families, obj);
            }
        }
        series.finish();
    }
}

/// Writes one ManagedCluster's series.
pub fn write(series: &mut Series, f: &cluster::Families, obj: &DynamicObject) {
    let status: Status = field(obj, "status");
    let cluster = Cluster {
        source: "managedcluster".to_string(),
        namespace: String::new(),
        target: obj.name_any(),
        cluster_name: obj.name_any(),
    };
    let available = status
        .conditions
        .iter()
        .any(|c| c.type_ == AVAILABLE && c.status == "True");
    series.set(&f.status, &cluster, f64::from(u8::from(available)));
    f.write_conditions(series, &cluster, &status.conditions);
}
