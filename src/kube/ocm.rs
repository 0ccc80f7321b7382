//! open-cluster-management ManagedClusters, the clusters of a KubeStellar ITS, reported as
//! `ksit_cluster_*` series with `source="managedcluster"`.

use kube::api::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde::Deserialize;

use super::cluster::{self, Cluster};
use super::object::Object;
use super::watch::{self, Gate, watch_all};
use super::{Condition, first_of_each_type};
use crate::metrics::Render;
use crate::status::rows::{self, State};

const NAME: &str = "managedclusters";

/// The condition that says a ManagedCluster is usable.
const AVAILABLE: &str = "ManagedClusterConditionAvailable";

#[derive(Clone, Debug, Default, Deserialize)]
struct Status {
    #[serde(default)]
    conditions: Vec<Condition>,
}

/// An ManagedCluster as the collector reads it.
type ManagedCluster = Object<serde::de::IgnoredAny, Status>;

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
    watch::objects(
        NAME,
        watch_all(&client, &ar, &None),
        gate,
        max,
        (families, watch_families),
        write,
    )
    .await;
}

/// What one ManagedCluster, given as JSON, serves as the only object of its kind.
pub(super) fn alone(json: &[u8]) -> Option<bytes::Bytes> {
    super::alone(json, cluster::Families::register, write)
}

/// Writes one ManagedCluster's series.
fn write(out: &mut Render, f: &cluster::Families, obj: &ManagedCluster) {
    let status = &obj.status;
    let cluster = Cluster {
        source: "managedcluster".to_string(),
        namespace: String::new(),
        target: obj.name_any(),
        cluster_name: obj.name_any(),
    };
    let condition = first_of_each_type(&status.conditions).find(|c| c.type_ == AVAILABLE);
    let state = match condition.map(|c| c.status.as_str()) {
        Some("True") => State::Ready,
        Some("False") => State::Failing,
        _ => State::Unknown,
    };
    out.set(
        &f.status,
        &cluster,
        f64::from(u8::from(state == State::Ready)),
    );
    f.write_conditions(out, &cluster, &status.conditions);
    let note = rows::Cluster {
        kind: "ManagedCluster",
        namespace: "",
        name: &cluster.target,
        cluster_name: &cluster.cluster_name,
        state,
        reason: condition.map_or("", |c| c.reason.as_str()),
        message: condition.map_or("", |c| c.message.as_str()),
        last_sync: None,
    }
    .note();
    out.note(note);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::table;
    use serde_json::json;

    #[test]
    fn managed_cluster_series() {
        let cases = [
            (
                "available",
                json!({
                    "metadata": {"name": "cluster1"},
                    "status": {"conditions": [
                        {"type": "ManagedClusterConditionAvailable", "status": "True"}
                    ]}
                }),
                r#"
                ksit_cluster_condition{cluster_name="cluster1",condition="ManagedClusterConditionAvailable",namespace="",source="managedcluster",status="False",target="cluster1"} 0
                ksit_cluster_condition{cluster_name="cluster1",condition="ManagedClusterConditionAvailable",namespace="",source="managedcluster",status="True",target="cluster1"} 1
                ksit_cluster_condition{cluster_name="cluster1",condition="ManagedClusterConditionAvailable",namespace="",source="managedcluster",status="Unknown",target="cluster1"} 0
                ksit_cluster_status{cluster_name="cluster1",namespace="",source="managedcluster",target="cluster1"} 1
                "#,
            ),
            (
                "joined but not available: the first Available condition wins",
                json!({
                    "metadata": {"name": "cluster2"},
                    "status": {"conditions": [
                        {"type": "ManagedClusterJoined", "status": "True"},
                        {"type": "ManagedClusterConditionAvailable", "status": "Unknown"},
                        {"type": "ManagedClusterConditionAvailable", "status": "True"}
                    ]}
                }),
                r#"
                ksit_cluster_condition{cluster_name="cluster2",condition="ManagedClusterConditionAvailable",namespace="",source="managedcluster",status="False",target="cluster2"} 0
                ksit_cluster_condition{cluster_name="cluster2",condition="ManagedClusterConditionAvailable",namespace="",source="managedcluster",status="True",target="cluster2"} 0
                ksit_cluster_condition{cluster_name="cluster2",condition="ManagedClusterConditionAvailable",namespace="",source="managedcluster",status="Unknown",target="cluster2"} 1
                ksit_cluster_condition{cluster_name="cluster2",condition="ManagedClusterJoined",namespace="",source="managedcluster",status="False",target="cluster2"} 0
                ksit_cluster_condition{cluster_name="cluster2",condition="ManagedClusterJoined",namespace="",source="managedcluster",status="True",target="cluster2"} 1
                ksit_cluster_condition{cluster_name="cluster2",condition="ManagedClusterJoined",namespace="",source="managedcluster",status="Unknown",target="cluster2"} 0
                ksit_cluster_status{cluster_name="cluster2",namespace="",source="managedcluster",target="cluster2"} 0
                "#,
            ),
            (
                "no status",
                json!({"metadata": {"name": "cluster3"}}),
                r#"
                ksit_cluster_status{cluster_name="cluster3",namespace="",source="managedcluster",target="cluster3"} 0
                "#,
            ),
        ];
        table::check_objects(&cases, cluster::Families::register, write);
    }
}
