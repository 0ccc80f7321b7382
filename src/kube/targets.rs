//! KSIT's IntegrationTargets, one per managed cluster: `ksit_cluster_*` with
//! `source="integrationtarget"`.

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::DynamicObject;
use kube::{Client, ResourceExt};
use serde::Deserialize;

use super::cluster::{self, Cluster};
use super::series::Series;
use super::watch::{self, Gate, Limit, watch_all};
use super::{Condition, field, ksit_resource, unix_seconds};

const NAME: &str = "integrationtargets";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    cluster_name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    #[serde(default)]
    ready: bool,
    #[serde(default)]
    conditions: Vec<Condition>,
    last_sync_time: Option<Time>,
}

pub async fn run(
    client: Client,
    namespaces: Option<Vec<String>>,
    gate: Gate,
    max: usize,
    families: cluster::Families,
    watch_families: watch::Families,
) {
    let (stores, stream) = watch_all(
        &client,
        &ksit_resource("IntegrationTarget", NAME),
        &namespaces,
    );
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

/// Writes one IntegrationTarget's series.
pub fn write(series: &mut Series, f: &cluster::Families, obj: &DynamicObject) {
    let spec: Spec = field(obj, "spec");
    let status: Status = field(obj, "status");
    let cluster = Cluster {
        source: "integrationtarget".to_string(),
        namespace: obj.namespace().unwrap_or_default(),
        target: obj.name_any(),
        cluster_name: spec.cluster_name,
    };
    series.set(&f.status, &cluster, f64::from(u8::from(status.ready)));
    if let Some(t) = &status.last_sync_time {
        series.set(&f.last_sync, &cluster, unix_seconds(t));
    }
    f.write_conditions(series, &cluster, &status.conditions);
}
