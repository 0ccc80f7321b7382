//! KSIT's Integrations: `ksit_integration_*`.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::DynamicObject;
use kube::{Client, ResourceExt};
use serde::Deserialize;

use super::cluster::CONDITION_STATUSES;
use super::series::Series;
use super::watch::{self, Gate, Limit, watch_all};
use super::{Condition, field, ksit_resource, unix_seconds};
use crate::labels;
use crate::metrics::{Family, Gauges, Registry};

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

#[derive(Clone)]
pub struct Families {
    info: Gauges<Info>,
    phase: Gauges<Phase>,
    condition: Gauges<IntegrationCondition>,
    cluster_connected: Gauges<ClusterConnection>,
    last_reconcile: Gauges<Integration>,
    generation_lag: Gauges<Integration>,
}

impl Families {
    pub fn register(registry: &Registry) -> Self {
        Self {
            info: registry.gauges(INFO),
            phase: registry.gauges(PHASE),
            condition: registry.gauges(CONDITION),
            cluster_connected: registry.gauges(CLUSTER_CONNECTED),
            last_reconcile: registry.gauges(LAST_RECONCILE),
            generation_lag: registry.gauges(GENERATION_LAG),
        }
    }
}

#[derive(Debug, Deserialize)]
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

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClusterStatus {
    #[serde(default)]
    name: String,
    #[serde(default)]
    connected: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    phase: Option<String>,
    #[serde(default)]
    conditions: Vec<Condition>,
    #[serde(default)]
    cluster_statuses: Vec<ClusterStatus>,
    last_reconcile_time: Option<Time>,
    observed_generation: Option<i64>,
}

pub async fn run(
    client: Client,
    namespaces: Option<Vec<String>>,
    gate: Gate,
    max: usize,
    families: Families,
    watch_families: watch::Families,
) {
    let (stores, stream) = watch_all(&client, &ksit_resource("Integration", NAME), &namespaces);
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

/// Writes one Integration's series.
pub fn write(series: &mut Series, f: &Families, obj: &DynamicObject) {
    let spec: Spec = field(obj, "spec");
    let status: Status = field(obj, "status");
    let it = Integration {
        namespace: obj.namespace().unwrap_or_default(),
        integration: obj.name_any(),
    };
    series.set(
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
    series.one_hot(&f.phase, PHASES, phase, |phase| Phase {
        namespace: it.namespace.clone(),
        integration: it.integration.clone(),
        kind: spec.type_.clone(),
        phase: phase.to_string(),
    });
    for c in &status.conditions {
        series.one_hot(&f.condition, CONDITION_STATUSES, &c.status, |status| {
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
        series.set(&f.cluster_connected, &connection, f64::from(u8::from(up)));
    }
    if let Some(t) = &status.last_reconcile_time {
        series.set(&f.last_reconcile, &it, unix_seconds(t));
    }
    let generation = obj.metadata.generation.unwrap_or(0);
    let lag = generation - status.observed_generation.unwrap_or(0);
    series.set(&f.generation_lag, &it, lag.max(0) as f64);
}
