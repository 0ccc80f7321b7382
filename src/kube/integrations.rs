//! KSIT's Integrations: `ksit_integration_*`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Client, ResourceExt};
use serde::Deserialize;

use super::cluster::CONDITION_STATUSES;
use super::object::{Fields, Object};
use super::watch::{self, Export, watch_all};
use super::{Condition, first_of_each_type, ksit_resource, unix_seconds};
use crate::labels;
use crate::metrics::Render;
use crate::metrics::{Family, ObjectGauges, Objects, Registry};
use crate::status::rows;

const NAME: &str = "integrations";
const PHASES: &[&str] = &["Initializing", "Running", "Failed", "Succeeded"];

labels! {
    pub struct Integration { namespace, integration }
}

labels! {
    pub struct Info { namespace, integration, kind = "type", enabled }
}

labels! {
    pub struct Phase { namespace, integration, kind = "type", phase }
}

labels! {
    pub struct IntegrationCondition { namespace, integration, condition, status }
}

labels! {
    pub struct ClusterConnection { namespace, integration, cluster_name }
}

pub const INFO: Family = Family {
    name: "ksit_integration_info",
    help: "Each Integration, its type and whether it is enabled; always 1.",
};
pub const PHASE: Family = Family {
    name: "ksit_integration_status_phase",
    help: "The Integration's status.phase, one-hot over Initializing, Running, Failed and Succeeded.",
};
pub const CONDITION: Family = Family {
    name: "ksit_integration_condition",
    help: "Conditions of the Integration, one-hot over True, False and Unknown.",
};
pub const CLUSTER_CONNECTED: Family = Family {
    name: "ksit_integration_cluster_connected",
    help: "1 when the Integration reports the target cluster connected (status.clusterStatuses).",
};
pub const LAST_RECONCILE: Family = Family {
    name: "ksit_integration_last_reconcile_timestamp_seconds",
    help: "Unix time of the Integration's status.lastReconcileTime.",
};
pub const GENERATION_LAG: Family = Family {
    name: "ksit_integration_generation_lag",
    help: "metadata.generation minus status.observedGeneration: above 0, the controller has not caught up.",
};

/// Rendered per object.
#[derive(Clone)]
pub struct Families {
    objects: Objects,
    info: ObjectGauges<Info>,
    phase: ObjectGauges<Phase>,
    condition: ObjectGauges<IntegrationCondition>,
    cluster_connected: ObjectGauges<ClusterConnection>,
    last_reconcile: ObjectGauges<Integration>,
    generation_lag: ObjectGauges<Integration>,
}

impl Families {
    pub fn register(registry: &Registry) -> Self {
        let objects = registry.objects();
        Self {
            info: registry.object_gauges(&objects, INFO),
            phase: registry.object_gauges(&objects, PHASE),
            condition: registry.object_gauges(&objects, CONDITION),
            cluster_connected: registry.object_gauges(&objects, CLUSTER_CONNECTED),
            last_reconcile: registry.object_gauges(&objects, LAST_RECONCILE),
            generation_lag: registry.object_gauges(&objects, GENERATION_LAG),
            objects,
        }
    }
}

impl watch::ObjectFamilies for Families {
    fn objects(&self) -> &Objects {
        &self.objects
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(rename = "type", default)]
    type_: String,
    #[serde(default = "yes")]
    enabled: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            type_: String::new(),
            enabled: true,
        }
    }
}

fn yes() -> bool {
    true
}

impl Fields for Spec {
    const FIELDS: &'static [&'static str] = &["type", "enabled"];
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClusterStatus {
    #[serde(default)]
    name: String,
    #[serde(default)]
    connected: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    phase: Option<String>,
    #[serde(default)]
    conditions: Vec<Condition>,
    #[serde(default)]
    cluster_statuses: Vec<ClusterStatus>,
    last_reconcile_time: Option<Time>,
    observed_generation: Option<i64>,
    #[serde(default)]
    message: String,
}

/// An Integration as the collector reads it.
type IntegrationObject = Object<Spec, Status>;

impl Fields for Status {
    const FIELDS: &'static [&'static str] = &[
        "phase",
        "conditions",
        "clusterStatuses",
        "lastReconcileTime",
        "observedGeneration",
        "message",
    ];
}

pub async fn run(
    client: Client,
    namespaces: Option<Vec<String>>,
    export: Export,
    families: Families,
    watch_families: watch::Families,
) {
    watch::objects(
        NAME,
        watch_all(&client, &ksit_resource("Integration", NAME), &namespaces),
        export,
        (families, watch_families),
        write,
    )
    .await;
}

/// What one Integration, given as JSON, serves as the only object of its kind.
pub(super) fn alone(json: &[u8]) -> Option<bytes::Bytes> {
    super::alone(json, Families::register, write)
}

/// Writes one Integration's series.
fn write(out: &mut Render, f: &Families, obj: &IntegrationObject) {
    let spec = &obj.spec;
    let status = &obj.status;
    let it = Integration {
        namespace: obj.namespace().unwrap_or_default(),
        integration: obj.name_any(),
    };
    out.set(
        &f.info,
        &Info {
            namespace: it.namespace.clone(),
            integration: it.integration.clone(),
            kind: spec.type_.clone(),
            enabled: spec.enabled.to_string(),
        },
        1.0,
    );
    // No phase yet means the controller has not seen it: Initializing is what it will write first.
    let phase = status.phase.as_deref().unwrap_or("Initializing");
    out.one_hot(&f.phase, PHASES, phase, |phase| Phase {
        namespace: it.namespace.clone(),
        integration: it.integration.clone(),
        kind: spec.type_.clone(),
        phase: phase.to_string(),
    });
    for c in first_of_each_type(&status.conditions) {
        out.one_hot(&f.condition, CONDITION_STATUSES, &c.status, |status| {
            IntegrationCondition {
                namespace: it.namespace.clone(),
                integration: it.integration.clone(),
                condition: c.type_.clone(),
                status: status.to_string(),
            }
        });
    }
    // The last entry wins should a cluster be listed twice.
    let connected: BTreeMap<&str, bool> = status
        .cluster_statuses
        .iter()
        .map(|c| (c.name.as_str(), c.connected))
        .collect();
    for (cluster, up) in connected {
        let connection = ClusterConnection {
            namespace: it.namespace.clone(),
            integration: it.integration.clone(),
            cluster_name: cluster.to_string(),
        };
        out.set(&f.cluster_connected, &connection, f64::from(u8::from(up)));
    }
    if let Some(t) = &status.last_reconcile_time {
        out.set(&f.last_reconcile, &it, unix_seconds(t));
    }
    let generation = obj.metadata.generation.unwrap_or(0);
    let lag = generation - status.observed_generation.unwrap_or(0);
    out.set(&f.generation_lag, &it, lag.max(0) as f64);
    let note = rows::Integration {
        namespace: &it.namespace,
        name: &it.integration,
        type_: &spec.type_,
        enabled: spec.enabled,
        phase: status.phase.as_deref(),
        conditions: first_of_each_type(&status.conditions)
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect(),
        message: &status.message,
        last_reconcile: status.last_reconcile_time.as_ref().map(|t| t.0.to_string()),
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
    fn integration_series() {
        let cases = [
            (
                "running, reconciled, one cluster connected and one not",
                json!({
                    "metadata": {"name": "argocd", "namespace": "ksit-system", "generation": 3},
                    "spec": {"type": "argocd", "enabled": true},
                    "status": {
                        "phase": "Running",
                        "observedGeneration": 3,
                        "lastReconcileTime": "2026-11-27T10:00:00Z",
                        "conditions": [{"type": "Ready", "status": "True"}],
                        "clusterStatuses": [
                            {"name": "edge-1", "connected": true},
                            {"name": "edge-2", "connected": false}
                        ]
                    }
                }),
                r#"
                ksit_integration_cluster_connected{cluster_name="edge-1",integration="argocd",namespace="ksit-system"} 1
                ksit_integration_cluster_connected{cluster_name="edge-2",integration="argocd",namespace="ksit-system"} 0
                ksit_integration_condition{condition="Ready",integration="argocd",namespace="ksit-system",status="False"} 0
                ksit_integration_condition{condition="Ready",integration="argocd",namespace="ksit-system",status="True"} 1
                ksit_integration_condition{condition="Ready",integration="argocd",namespace="ksit-system",status="Unknown"} 0
                ksit_integration_generation_lag{integration="argocd",namespace="ksit-system"} 0
                ksit_integration_info{enabled="true",integration="argocd",namespace="ksit-system",type="argocd"} 1
                ksit_integration_last_reconcile_timestamp_seconds{integration="argocd",namespace="ksit-system"} 1795773600
                ksit_integration_status_phase{integration="argocd",namespace="ksit-system",phase="Failed",type="argocd"} 0
                ksit_integration_status_phase{integration="argocd",namespace="ksit-system",phase="Initializing",type="argocd"} 0
                ksit_integration_status_phase{integration="argocd",namespace="ksit-system",phase="Running",type="argocd"} 1
                ksit_integration_status_phase{integration="argocd",namespace="ksit-system",phase="Succeeded",type="argocd"} 0
                "#,
            ),
            (
                "never reconciled: Initializing, lagging by its generation, enabled by default",
                json!({
                    "metadata": {"name": "flux", "namespace": "team-b", "generation": 2},
                    "spec": {"type": "flux"}
                }),
                r#"
                ksit_integration_generation_lag{integration="flux",namespace="team-b"} 2
                ksit_integration_info{enabled="true",integration="flux",namespace="team-b",type="flux"} 1
                ksit_integration_status_phase{integration="flux",namespace="team-b",phase="Failed",type="flux"} 0
                ksit_integration_status_phase{integration="flux",namespace="team-b",phase="Initializing",type="flux"} 1
                ksit_integration_status_phase{integration="flux",namespace="team-b",phase="Running",type="flux"} 0
                ksit_integration_status_phase{integration="flux",namespace="team-b",phase="Succeeded",type="flux"} 0
                "#,
            ),
            (
                "disabled and failed; the first of two Ready conditions wins; a cluster listed twice keeps its last entry",
                json!({
                    "metadata": {"name": "kyverno", "namespace": "ksit-system", "generation": 1},
                    "spec": {"type": "kyverno", "enabled": false},
                    "status": {
                        "phase": "Failed",
                        "observedGeneration": 1,
                        "conditions": [
                            {"type": "Ready", "status": "False"},
                            {"type": "Ready", "status": "True"}
                        ],
                        "clusterStatuses": [
                            {"name": "edge-1", "connected": true},
                            {"name": "edge-1", "connected": false}
                        ]
                    }
                }),
                r#"
                ksit_integration_cluster_connected{cluster_name="edge-1",integration="kyverno",namespace="ksit-system"} 0
                ksit_integration_condition{condition="Ready",integration="kyverno",namespace="ksit-system",status="False"} 1
                ksit_integration_condition{condition="Ready",integration="kyverno",namespace="ksit-system",status="True"} 0
                ksit_integration_condition{condition="Ready",integration="kyverno",namespace="ksit-system",status="Unknown"} 0
                ksit_integration_generation_lag{integration="kyverno",namespace="ksit-system"} 0
                ksit_integration_info{enabled="false",integration="kyverno",namespace="ksit-system",type="kyverno"} 1
                ksit_integration_status_phase{integration="kyverno",namespace="ksit-system",phase="Failed",type="kyverno"} 1
                ksit_integration_status_phase{integration="kyverno",namespace="ksit-system",phase="Initializing",type="kyverno"} 0
                ksit_integration_status_phase{integration="kyverno",namespace="ksit-system",phase="Running",type="kyverno"} 0
                ksit_integration_status_phase{integration="kyverno",namespace="ksit-system",phase="Succeeded",type="kyverno"} 0
                "#,
            ),
        ];
        table::check_objects(&cases, Families::register, write);
    }

    #[test]
    fn a_deleted_integration_loses_its_series_and_others_keep_theirs() {
        let registry = Registry::new();
        let families = Families::register(&registry);
        let obj = |name: &str| -> IntegrationObject {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "generation": 1},
                "spec": {"type": "t"},
                "status": {"phase": "Running", "observedGeneration": 1}
            }))
            .expect("object")
        };
        for name in ["a", "b"] {
            let mut out = Render::default();
            write(&mut out, &families, &obj(name));
            families.objects.put(name, out);
        }
        families.objects.delete("a");
        let left = table::samples(&registry);
        assert!(
            left.iter().all(|l| l.contains("integration=\"b\"")),
            "{left:#?}"
        );
        assert_eq!(left.len(), 6, "{left:#?}");
    }
}
