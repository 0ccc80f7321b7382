//! open-cluster-management ManagedClusters, the clusters of a KubeStellar ITS, reported as
//! `ksit_cluster_*` series with `source="managedcluster"`.

use std::path::{Path, PathBuf};

use kube::api::{ApiResource, GroupVersionKind};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use serde::Deserialize;

use super::cluster::{self, Cluster};
use super::object::{Fields, Object};
use super::watch::{self, Export, watch_all};
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

impl Fields for Status {
    const FIELDS: &'static [&'static str] = &["conditions"];
}

pub async fn run(
    client: Client,
    export: Export,
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
        export,
        (families, watch_families),
        write,
    )
    .await;
}

/// Why the ITS's client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ItsError {
    #[error("reading the ITS kubeconfig {path} (KSIT_ITS_KUBECONFIG): {source}")]
    Read {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("building a client for the ITS from {path} (KSIT_ITS_KUBECONFIG): {source}")]
    Client { path: String, source: kube::Error },
}

/// A client for the ITS's API server from its kubeconfig, read anew on each attempt so a
/// Secret remounted with a new kubeconfig is taken without a restart.
async fn its_client(path: &Path) -> Result<Client, ItsError> {
    let shown = path.display().to_string();
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| ItsError::Read {
        path: shown.clone(),
        source,
    })?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| ItsError::Read {
            path: shown.clone(),
            source,
        })?;
    Client::try_from(config).map_err(|source| ItsError::Client {
        path: shown,
        source,
    })
}

/// The ITS's API server, as the status page names it: the kubeconfig's current cluster.
pub fn its_server(path: &Path) -> String {
    let server = Kubeconfig::read_from(path).ok().and_then(|k| {
        let context = k.current_context.clone();
        let cluster = k
            .contexts
            .iter()
            .find(|c| Some(&c.name) == context.as_ref())
            .and_then(|c| c.context.as_ref())
            .map(|c| c.cluster.clone());
        k.clusters
            .iter()
            .find(|c| Some(&c.name) == cluster.as_ref())
            .or(k.clusters.first())
            .and_then(|c| c.cluster.as_ref())
            .and_then(|c| c.server.clone())
    });
    format!(
        "the ITS at {} (KSIT_ITS_KUBECONFIG={})",
        server.as_deref().unwrap_or("an unnamed server"),
        path.display()
    )
}

/// As [`run`], on the ITS's API server; until a client can be made from the kubeconfig, the
/// collector is down with the reason, and it tries again every 30 s.
pub async fn run_its(
    path: PathBuf,
    export: Export,
    families: cluster::Families,
    watch_families: watch::Families,
) {
    let client = loop {
        match its_client(&path).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "no client for the ITS; retrying in 30s");
                watch_families.report_failed(NAME, &e.to_string());
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            }
        }
    };
    run(client, export, families, watch_families).await;
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
