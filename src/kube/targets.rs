//! KSIT's IntegrationTargets, one per managed cluster: `ksit_cluster_*` with
//! `source="integrationtarget"`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Client, ResourceExt};
use serde::Deserialize;

use super::cluster::{self, Cluster};
use super::object::{Fields, Object};
use super::watch::{self, Export, watch_all};
use super::{Condition, first_of_each_type, ksit_resource, unix_seconds};
use crate::metrics::Render;
use crate::status::rows::{self, State};

const NAME: &str = "integrationtargets";

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    cluster_name: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    #[serde(default)]
    ready: bool,
    #[serde(default)]
    conditions: Vec<Condition>,
    last_sync_time: Option<Time>,
    #[serde(default)]
    message: String,
}

/// An IntegrationTarget as the collector reads it.
type IntegrationTarget = Object<Spec, Status>;

impl Fields for Spec {
    const FIELDS: &'static [&'static str] = &["clusterName"];
}

impl Fields for Status {
    const FIELDS: &'static [&'static str] = &["ready", "conditions", "lastSyncTime", "message"];
}

pub async fn run(
    client: Client,
    namespaces: Option<Vec<String>>,
    export: Export,
    families: cluster::Families,
    watch_families: watch::Families,
) {
    watch::objects(
        NAME,
        watch_all(
            &client,
            &ksit_resource("IntegrationTarget", NAME),
            &namespaces,
        ),
        export,
        (families, watch_families),
        write,
    )
    .await;
}

/// What one IntegrationTarget, given as JSON, serves as the only object of its kind.
pub(super) fn alone(json: &[u8]) -> Option<bytes::Bytes> {
    super::alone(json, cluster::Families::register, write)
}

/// Writes one IntegrationTarget's series.
fn write(out: &mut Render, f: &cluster::Families, obj: &IntegrationTarget) {
    let spec = &obj.spec;
    let status = &obj.status;
    let cluster = Cluster {
        source: "integrationtarget".to_string(),
        namespace: obj.namespace().unwrap_or_default(),
        target: obj.name_any(),
        cluster_name: spec.cluster_name.clone(),
    };
    out.set(&f.status, &cluster, f64::from(u8::from(status.ready)));
    if let Some(t) = &status.last_sync_time {
        out.set(&f.last_sync, &cluster, unix_seconds(t));
    }
    f.write_conditions(out, &cluster, &status.conditions);
    out.note(row(&cluster, obj).note());
}

/// The status page's row: ready as `status.ready` says; unknown while the controller has
/// written nothing or its Ready condition says Unknown; else failing.
fn row<'a>(cluster: &'a Cluster, obj: &'a IntegrationTarget) -> rows::Cluster<'a> {
    let status = &obj.status;
    let ready = first_of_each_type(&status.conditions).find(|c| c.type_ == "Ready");
    let unwritten = status.conditions.is_empty()
        && status.last_sync_time.is_none()
        && status.message.is_empty();
    let state = if status.ready {
        State::Ready
    } else if unwritten || ready.is_some_and(|c| c.status == "Unknown") {
        State::Unknown
    } else {
        State::Failing
    };
    let message = match (&*status.message, ready) {
        ("", Some(c)) => c.message.as_str(),
        (m, _) => m,
    };
    rows::Cluster {
        kind: "IntegrationTarget",
        namespace: &cluster.namespace,
        name: &cluster.target,
        cluster_name: &cluster.cluster_name,
        state,
        reason: ready.map_or("", |c| c.reason.as_str()),
        message,
        last_sync: status.last_sync_time.as_ref().map(|t| t.0.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::table;
    use serde_json::json;

    #[test]
    fn integration_target_series() {
        let cases = [
            (
                "ready, with conditions and a last sync",
                json!({
                    "metadata": {"name": "edge-1", "namespace": "ksit-system"},
                    "spec": {"clusterName": "edge-cluster-1"},
                    "status": {
                        "ready": true,
                        "lastSyncTime": "2026-11-27T10:00:00Z",
                        "conditions": [{"type": "Ready", "status": "True"}]
                    }
                }),
                r#"
                ksit_cluster_condition{cluster_name="edge-cluster-1",condition="Ready",namespace="ksit-system",source="integrationtarget",status="False",target="edge-1"} 0
                ksit_cluster_condition{cluster_name="edge-cluster-1",condition="Ready",namespace="ksit-system",source="integrationtarget",status="True",target="edge-1"} 1
                ksit_cluster_condition{cluster_name="edge-cluster-1",condition="Ready",namespace="ksit-system",source="integrationtarget",status="Unknown",target="edge-1"} 0
                ksit_cluster_last_sync_timestamp_seconds{cluster_name="edge-cluster-1",namespace="ksit-system",source="integrationtarget",target="edge-1"} 1795773600
                ksit_cluster_status{cluster_name="edge-cluster-1",namespace="ksit-system",source="integrationtarget",target="edge-1"} 1
                "#,
            ),
            (
                "not ready in another namespace, two conditions",
                json!({
                    "metadata": {"name": "edge-2", "namespace": "team-b"},
                    "spec": {"clusterName": "edge-cluster-2"},
                    "status": {
                        "ready": false,
                        "conditions": [
                            {"type": "Ready", "status": "False"},
                            {"type": "Reachable", "status": "Unknown"}
                        ]
                    }
                }),
                r#"
                ksit_cluster_condition{cluster_name="edge-cluster-2",condition="Reachable",namespace="team-b",source="integrationtarget",status="False",target="edge-2"} 0
                ksit_cluster_condition{cluster_name="edge-cluster-2",condition="Reachable",namespace="team-b",source="integrationtarget",status="True",target="edge-2"} 0
                ksit_cluster_condition{cluster_name="edge-cluster-2",condition="Reachable",namespace="team-b",source="integrationtarget",status="Unknown",target="edge-2"} 1
                ksit_cluster_condition{cluster_name="edge-cluster-2",condition="Ready",namespace="team-b",source="integrationtarget",status="False",target="edge-2"} 1
                ksit_cluster_condition{cluster_name="edge-cluster-2",condition="Ready",namespace="team-b",source="integrationtarget",status="True",target="edge-2"} 0
                ksit_cluster_condition{cluster_name="edge-cluster-2",condition="Ready",namespace="team-b",source="integrationtarget",status="Unknown",target="edge-2"} 0
                ksit_cluster_status{cluster_name="edge-cluster-2",namespace="team-b",source="integrationtarget",target="edge-2"} 0
                "#,
            ),
            (
                "no status yet",
                json!({
                    "metadata": {"name": "new", "namespace": "ksit-system"},
                    "spec": {"clusterName": "c"}
                }),
                r#"
                ksit_cluster_status{cluster_name="c",namespace="ksit-system",source="integrationtarget",target="new"} 0
                "#,
            ),
            (
                "a status of an unexpected shape reads as empty",
                json!({
                    "metadata": {"name": "odd", "namespace": "ksit-system"},
                    "spec": {"clusterName": 7},
                    "status": "broken"
                }),
                r#"
                ksit_cluster_status{cluster_name="",namespace="ksit-system",source="integrationtarget",target="odd"} 0
                "#,
            ),
        ];
        table::check_objects(&cases, cluster::Families::register, write);
    }

    /// The page's state: ready, failing, or unknown while nothing says which.
    #[test]
    fn page_state_and_message() {
        let cases = [
            (json!({"ready": true, "message": "ok"}), State::Ready, "ok"),
            (
                json!({"ready": false, "conditions": [{"type": "Ready", "status": "False", "reason": "SecretNotFound", "message": "no secret"}]}),
                State::Failing,
                "no secret",
            ),
            (
                json!({"ready": false, "message": "registration failed"}),
                State::Failing,
                "registration failed",
            ),
            (json!({}), State::Unknown, ""),
            (
                json!({"conditions": [{"type": "Ready", "status": "Unknown"}]}),
                State::Unknown,
                "",
            ),
        ];
        for (status, state, message) in cases {
            let obj: IntegrationTarget = serde_json::from_value(json!({
                "metadata": {"name": "t", "namespace": "ns"},
                "spec": {"clusterName": "c"},
                "status": status,
            }))
            .expect("an object");
            let cluster = Cluster::default();
            let row = row(&cluster, &obj);
            assert_eq!((row.state, row.message), (state, message), "{status}");
        }
    }
}
