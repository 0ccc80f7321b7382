//! KSIT's IntegrationTargets (one per managed cluster: `ksit_cluster_*`) and Integrations
//! (`ksit_integration_*`), read as dynamic objects of `ksit.io/v1alpha1`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::{BoxStream, select_all};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;
use tokio::sync::watch;

use super::{Health, Series, unix_seconds};
use crate::metrics::Metrics;

pub const CONDITION_STATUSES: &[&str] = &["True", "False", "Unknown"];
const PHASES: &[&str] = &["Initializing", "Running", "Failed", "Succeeded"];

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("ksit.io", "v1alpha1", kind), plural)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default)]
    pub status: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TargetSpec {
    #[serde(default)]
    cluster_name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TargetStatus {
    #[serde(default)]
    ready: bool,
    #[serde(default)]
    conditions: Vec<Condition>,
    last_sync_time: Option<Time>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IntegrationSpec {
    #[serde(rename = "type", default)]
    type_: String,
    #[serde(default = "yes")]
    enabled: bool,
}

impl Default for IntegrationSpec {
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
struct IntegrationStatus {
    phase: Option<String>,
    #[serde(default)]
    conditions: Vec<Condition>,
    #[serde(default)]
    cluster_statuses: Vec<ClusterStatus>,
    last_reconcile_time: Option<Time>,
    observed_generation: Option<i64>,
}

/// Reads `obj.data[field]` as `T`; a field of an unexpected shape reads as the default, so one
/// odd object cannot stop the others from being reported.
pub fn field<T: for<'de> Deserialize<'de> + Default>(obj: &DynamicObject, name: &str) -> T {
    obj.data
        .get(name)
        .and_then(|v| T::deserialize(v).ok())
        .unwrap_or_default()
}

/// Objects of all stores, sorted, cut at `max`; objects newly cut are counted once.
pub struct Limit {
    kind: &'static str,
    max: usize,
    dropped: HashSet<(String, String)>,
}

impl Limit {
    pub fn new(kind: &'static str, max: usize) -> Self {
        Self {
            kind,
            max,
            dropped: HashSet::new(),
        }
    }

    pub fn apply(
        &mut self,
        stores: &[Store<DynamicObject>],
        metrics: &Metrics,
    ) -> Vec<Arc<DynamicObject>> {
        let mut all: Vec<Arc<DynamicObject>> = stores.iter().flat_map(Store::state).collect();
        all.sort_by_key(|o| (o.namespace(), o.name_any()));
        metrics
            .kube
            .objects
            .with_label_values(&[self.kind])
            .set(all.len() as i64);
        let cut: HashSet<(String, String)> = all
            .iter()
            .skip(self.max)
            .map(|o| (o.namespace().unwrap_or_default(), o.name_any()))
            .collect();
        let new = cut.difference(&self.dropped).count();
        if new > 0 {
            tracing::warn!(
                kind = self.kind,
                max = self.max,
                dropped = cut.len(),
                "more objects than KSIT_MAX_OBJECTS; the rest are not exported"
            );
            metrics
                .kube
                .objects_dropped
                .with_label_values(&[self.kind])
                .inc_by(new as u64);
        }
        self.dropped = cut;
        all.truncate(self.max);
        all
    }
}

/// Watch events of dynamic objects, from one or several merged watches.
pub type Events = BoxStream<'static, Result<watcher::Event<DynamicObject>, watcher::Error>>;

/// One watch per namespace (or one over all), merged, each with its own store.
pub fn watch_all(
    client: &Client,
    ar: &ApiResource,
    namespaces: &Option<Vec<String>>,
) -> (Vec<Store<DynamicObject>>, Events) {
    let apis: Vec<Api<DynamicObject>> = match namespaces {
        None => vec![Api::all_with(client.clone(), ar)],
        Some(list) => list
            .iter()
            .map(|ns| Api::namespaced_with(client.clone(), ns, ar))
            .collect(),
    };
    let mut stores = Vec::new();
    let mut streams = Vec::new();
    for api in apis {
        let writer = reflector::store::Writer::new(ar.clone());
        stores.push(writer.as_reader());
        streams.push(
            reflector::reflector(
                writer,
                watcher(api, watcher::Config::default()).default_backoff(),
            )
            .boxed(),
        );
    }
    (stores, select_all(streams).boxed())
}

/// Runs a CR collector: follows the stream and, when gated, exports only while this pod leads.
async fn drive(
    name: &'static str,
    mut stream: Events,
    mut gate: Option<watch::Receiver<bool>>,
    metrics: Arc<Metrics>,
    mut write: impl FnMut(bool),
) {
    let mut health = Health::new(name, metrics.clone());
    let exporting =
        |gate: &Option<watch::Receiver<bool>>| gate.as_ref().is_none_or(|g| *g.borrow());
    loop {
        let leadership = async {
            match gate.as_mut() {
                Some(g) => g.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            item = stream.next() => match item {
                Some(Ok(watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_))) => {
                    health.ok();
                    write(exporting(&gate));
                    metrics.touch();
                }
                Some(Ok(watcher::Event::InitApply(_))) => health.ok(),
                // Init is sent before the list request, on every retry: it proves nothing.
                Some(Ok(watcher::Event::Init)) => {}
                Some(Err(e)) => health.failed(&e),
                None => return,
            },
            true = leadership => {
                write(exporting(&gate));
                metrics.touch();
            }
        }
    }
}

pub async fn run_targets(
    client: Client,
    namespaces: Option<Vec<String>>,
    gate: Option<watch::Receiver<bool>>,
    max: usize,
    metrics: Arc<Metrics>,
) {
    let ar = resource("IntegrationTarget", "integrationtargets");
    let (stores, stream) = watch_all(&client, &ar, &namespaces);
    let mut series = Series::default();
    let mut limit = Limit::new("integrationtargets", max);
    let m = metrics.clone();
    drive(
        "integrationtargets",
        stream,
        gate,
        metrics,
        move |exporting| {
            let objects = limit.apply(&stores, &m);
            if exporting {
                for obj in &objects {
                    write_target(&mut series, &m, obj);
                }
            }
            series.finish();
        },
    )
    .await;
}

fn write_target(series: &mut Series, m: &Metrics, obj: &DynamicObject) {
    let k = &m.kube;
    let spec: TargetSpec = field(obj, "spec");
    let status: TargetStatus = field(obj, "status");
    let namespace = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let labels = [
        "integrationtarget",
        namespace.as_str(),
        name.as_str(),
        spec.cluster_name.as_str(),
    ];
    series.set(
        &k.cluster_status,
        &labels,
        f64::from(u8::from(status.ready)),
    );
    if let Some(t) = &status.last_sync_time {
        series.set(&k.cluster_last_sync, &labels, unix_seconds(t));
    }
    for c in &status.conditions {
        let mut with = labels.to_vec();
        with.push(&c.type_);
        series.one_hot(&k.cluster_condition, &with, CONDITION_STATUSES, &c.status);
    }
}

pub async fn run_integrations(
    client: Client,
    namespaces: Option<Vec<String>>,
    gate: Option<watch::Receiver<bool>>,
    max: usize,
    metrics: Arc<Metrics>,
) {
    let ar = resource("Integration", "integrations");
    let (stores, stream) = watch_all(&client, &ar, &namespaces);
    let mut series = Series::default();
    let mut limit = Limit::new("integrations", max);
    let m = metrics.clone();
    drive("integrations", stream, gate, metrics, move |exporting| {
        let objects = limit.apply(&stores, &m);
        if exporting {
            for obj in &objects {
                write_integration(&mut series, &m, obj);
            }
        }
        series.finish();
    })
    .await;
}

fn write_integration(series: &mut Series, m: &Metrics, obj: &DynamicObject) {
    let k = &m.kube;
    let spec: IntegrationSpec = field(obj, "spec");
    let status: IntegrationStatus = field(obj, "status");
    let namespace = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let base = [namespace.as_str(), name.as_str()];
    let enabled = if spec.enabled { "true" } else { "false" };
    series.set(
        &k.integration_info,
        &[&namespace, &name, &spec.type_, enabled],
        1.0,
    );
    // No phase yet means the controller has not seen it: Initializing is what it will write first.
    let phase = status.phase.as_deref().unwrap_or("Initializing");
    series.one_hot(
        &k.integration_phase,
        &[&namespace, &name, &spec.type_],
        PHASES,
        phase,
    );
    for c in &status.conditions {
        series.one_hot(
            &k.integration_condition,
            &[&namespace, &name, &c.type_],
            CONDITION_STATUSES,
            &c.status,
        );
    }
    // The last entry wins should a cluster be listed twice.
    let connected: BTreeMap<&str, bool> = status
        .cluster_statuses
        .iter()
        .map(|c| (c.name.as_str(), c.connected))
        .collect();
    for (cluster, up) in connected {
        series.set(
            &k.integration_cluster_connected,
            &[&namespace, &name, cluster],
            f64::from(u8::from(up)),
        );
    }
    if let Some(t) = &status.last_reconcile_time {
        series.set(&k.integration_last_reconcile, &base, unix_seconds(t));
    }
    let generation = obj.metadata.generation.unwrap_or(0);
    let lag = generation - status.observed_generation.unwrap_or(0);
    series.set(&k.integration_generation_lag, &base, lag.max(0) as f64);
}
