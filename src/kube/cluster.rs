//! The `ksit_cluster_*` families: one series set per managed cluster, written by two collectors
//! (IntegrationTargets in `targets`, ManagedClusters in `ocm`) and told apart by `source`.

use super::{Condition, first_of_each_type};
use crate::labels;
use crate::metrics::{Family, ObjectGauges, Objects, Registry, Render};

/// Condition statuses as Kubernetes writes them, the one-hot states of a condition series.
pub const CONDITION_STATUSES: &[&str] = &["True", "False", "Unknown"];

labels! {
    /// One managed cluster. `cluster`, `pod`, `service`, `instance` and `job` are left to
    /// Prometheus (external and target labels), so objects use `cluster_name` and `target`.
    pub struct Cluster { source, namespace, target, cluster_name }
}

labels! {
    pub struct ClusterCondition { source, namespace, target, cluster_name, condition, status }
}

pub const STATUS: Family = Family {
    name: "ksit_cluster_status",
    help: "1 when the managed cluster is ready (IntegrationTarget status.ready, or ManagedCluster Available), else 0.",
};
pub const CONDITION: Family = Family {
    name: "ksit_cluster_condition",
    help: "Conditions of the managed cluster, one-hot over True, False and Unknown.",
};
pub const LAST_SYNC: Family = Family {
    name: "ksit_cluster_last_sync_timestamp_seconds",
    help: "Unix time of the IntegrationTarget's status.lastSyncTime.",
};

/// Rendered per object: one group shared by IntegrationTargets and ManagedClusters.
#[derive(Clone)]
pub struct Families {
    pub objects: Objects,
    pub status: ObjectGauges<Cluster>,
    pub condition: ObjectGauges<ClusterCondition>,
    pub last_sync: ObjectGauges<Cluster>,
}

impl Families {
    pub fn register(registry: &Registry) -> Self {
        let objects = registry.objects();
        Self {
            status: registry.object_gauges(&objects, STATUS),
            condition: registry.object_gauges(&objects, CONDITION),
            last_sync: registry.object_gauges(&objects, LAST_SYNC),
            objects,
        }
    }

    /// Writes each condition of `cluster` one-hot over [`CONDITION_STATUSES`].
    pub fn write_conditions(&self, out: &mut Render, cluster: &Cluster, conditions: &[Condition]) {
        for c in first_of_each_type(conditions) {
            out.one_hot(&self.condition, CONDITION_STATUSES, &c.status, |status| {
                ClusterCondition {
                    source: cluster.source.clone(),
                    namespace: cluster.namespace.clone(),
                    target: cluster.target.clone(),
                    cluster_name: cluster.cluster_name.clone(),
                    condition: c.type_.clone(),
                    status: status.to_string(),
                }
            });
        }
    }
}

impl super::watch::ObjectFamilies for Families {
    fn objects(&self) -> &Objects {
        &self.objects
    }
}
