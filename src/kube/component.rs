//! The component's own pod and the workload that owns it: two watches, each run by
//! [`watch::changes`](super::watch::changes).

use std::borrow::Cow;
use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::PodStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::core::Selector;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource};
use prometheus::proto::{Counter, Metric, MetricType};
use serde::Deserialize;
use tokio::sync::watch;

use super::series::Series;
use super::shard::Peers;
use super::watch::{self as watches, by_name};
use crate::labels;
use crate::metrics::{Family, Gauges, Mirror, Registry, label};
use crate::status::{self, Board};

labels! {
    pub struct Info { component, node, workload_kind, workload }
}

labels! {
    pub struct PodPhase { phase }
}

labels! {
    pub struct Container { container }
}

labels! {
    pub struct Terminated { container, reason }
}

labels! {
    pub struct ReplicaState { state }
}

pub const INFO: Family = Family {
    name: "ksit_component_info",
    help: "The component beside this exporter; always 1. The pod name comes as the target's pod label.",
};
pub const POD_PHASE: Family = Family {
    name: "ksit_component_pod_phase",
    help: "The component pod's phase, one-hot.",
};
pub const CONTAINER_READY: Family = Family {
    name: "ksit_component_container_ready",
    help: "1 when the container of the component's pod is ready.",
};
pub const CONTAINER_RESTARTS: Family = Family {
    name: "ksit_component_container_restarts_total",
    help: "Restarts of each container of the component's pod, as the kubelet counts them.",
};
pub const CONTAINER_LAST_TERMINATED: Family = Family {
    name: "ksit_component_container_last_terminated_reason",
    help: "Why the container last terminated (OOMKilled, Error, Completed, ...); 1 for the last reason.",
};
pub const REPLICAS: Family = Family {
    name: "ksit_component_replicas",
    help: "Replicas of the component's workload (Deployment or StatefulSet) by state: desired, ready, available, updated.",
};

#[derive(Clone)]
pub struct Families {
    info: Gauges<Info>,
    pod_phase: Gauges<PodPhase>,
    container_ready: Gauges<Container>,
    /// A counter the kubelet keeps, served as read.
    container_restarts: Mirror,
    container_last_terminated: Gauges<Terminated>,
    replicas: Gauges<ReplicaState>,
    board: Board,
}

impl Families {
    pub fn register(registry: &Registry) -> Self {
        Self {
            info: registry.gauges(INFO),
            pod_phase: registry.gauges(POD_PHASE),
            container_ready: registry.gauges(CONTAINER_READY),
            container_restarts: registry.mirror(&[(CONTAINER_RESTARTS, &["container"])]),
            container_last_terminated: registry.gauges(CONTAINER_LAST_TERMINATED),
            replicas: registry.gauges(REPLICAS),
            board: registry.board().clone(),
        }
    }

    fn set_container_restarts(&self, restarts: &[(String, i64)]) {
        let metrics: Vec<Metric> = restarts
            .iter()
            .map(|(container, n)| {
                let mut counter = Counter::default();
                counter.set_value(*n as f64);
                let mut m = Metric::from_label(vec![label("container", container)]);
                m.set_counter(counter);
                m
            })
            .collect();
        let families = if metrics.is_empty() {
            Vec::new()
        } else {
            vec![CONTAINER_RESTARTS.with(MetricType::COUNTER, metrics)]
        };
        self.container_restarts.set(families);
    }
}

const PHASES: &[&str] = &["Pending", "Running", "Succeeded", "Failed", "Unknown"];

/// Pod labels that name a component, most specific first.
const COMPONENT_LABELS: &[&str] = &[
    "app.kubernetes.io/component",
    "app.kubernetes.io/name",
    "app",
    "control-plane",
];

pub struct Target {
    pub pod: String,
    pub namespace: String,
    pub node: Option<String>,
    pub component: Option<String>,
}

/// The workload that owns the pod, as far as the exporter follows it.
#[derive(Debug, Clone, PartialEq)]
enum Workload {
    Deployment(String),
    StatefulSet(String),
}

/// Follows the pod and its workload; `peers` learns who the workload's replicas are (for
/// sharding).
pub async fn run(
    client: Client,
    target: Target,
    families: Families,
    watch_families: watches::Families,
    peers: watch::Sender<Peers>,
) {
    let (workload_tx, workload_rx) = watch::channel(None);
    tokio::join!(
        pod(
            client.clone(),
            &target,
            workload_tx,
            &families,
            watch_families.clone(),
            &peers,
        ),
        workload(
            client,
            &target.namespace,
            workload_rx,
            &families,
            watch_families,
            &peers,
        ),
    );
}

fn tell(peers: &watch::Sender<Peers>, now: Peers) {
    peers.send_if_modified(|p| std::mem::replace(p, now.clone()) != now);
}

/// The component's pod as its series read it: identity, labels, owner, node and status. Its
/// spec is skipped while read (but for the node), so a pod of thousands of env entries costs
/// what its status does, not about 35 times its bytes as a whole typed Pod did.
#[derive(Clone, Debug, Default)]
pub struct Pod {
    pub metadata: ObjectMeta,
    pub node_name: Option<String>,
    pub status: Option<PodStatus>,
}

impl<'de> Deserialize<'de> for Pod {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Meta {
            name: Option<String>,
            namespace: Option<String>,
            uid: Option<String>,
            resource_version: Option<String>,
            labels: Option<BTreeMap<String, String>>,
            owner_references: Option<Vec<OwnerReference>>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Spec {
            node_name: Option<String>,
        }
        #[derive(Deserialize)]
        struct Wire {
            metadata: Option<Meta>,
            spec: Option<Spec>,
            status: Option<PodStatus>,
        }
        let wire = Wire::deserialize(d)?;
        let meta = wire.metadata;
        let metadata = meta.map_or_else(ObjectMeta::default, |m| ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            resource_version: m.resource_version,
            labels: m.labels,
            owner_references: m.owner_references,
            ..ObjectMeta::default()
        });
        Ok(Pod {
            metadata,
            node_name: wire.spec.and_then(|s| s.node_name),
            status: wire.status,
        })
    }
}

impl Resource for Pod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("Pod")
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("pods")
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

async fn pod(
    client: Client,
    t: &Target,
    workload_tx: watch::Sender<Option<Workload>>,
    families: &Families,
    watch_families: watches::Families,
    peers: &watch::Sender<Peers>,
) {
    let api: Api<Pod> = Api::namespaced(client.clone(), &t.namespace);
    let rs_api: Api<ReplicaSet> = Api::namespaced(client, &t.namespace);
    let (store, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, by_name(&t.pod)).default_backoff());
    let mut series = Series::default();
    let mut owner_rs: Option<String> = None;
    let mut changes = std::pin::pin!(watches::changes("pod", stream, watch_families));
    while changes.next().await.is_some() {
        let pod = store.state().into_iter().next();
        let workload = match pod.as_deref().and_then(controller_of) {
            Some(("StatefulSet", name)) => Some(Workload::StatefulSet(name.to_string())),
            // A ReplicaSet's owner is looked up once per ReplicaSet: a GET, not a watch, since
            // the pod is replaced (and the sidecar with it) when it changes.
            Some(("ReplicaSet", name)) if owner_rs.as_deref() != Some(name) => {
                owner_rs = Some(name.to_string());
                match rs_api.get(name).await {
                    Ok(rs) => owning_deployment(&rs),
                    Err(e) => {
                        tracing::warn!(replicaset = name, error = %e, "cannot read the pod's ReplicaSet; replica series are off");
                        None
                    }
                }
            }
            Some(("ReplicaSet", _)) => workload_tx.borrow().clone(),
            _ => None,
        };
        workload_tx.send_if_modified(|w| {
            let changed = *w != workload;
            *w = workload.clone();
            changed
        });
        if pod.is_some() && workload.is_none() {
            tell(peers, Peers::Alone);
        }
        write_pod(&mut series, families, t, pod.as_deref(), workload.as_ref());
    }
}

/// The Deployment a ReplicaSet belongs to; a bare ReplicaSet has no workload the exporter follows.
fn owning_deployment(rs: &ReplicaSet) -> Option<Workload> {
    controller_of_meta(&rs.metadata)
        .and_then(|(kind, n)| (kind == "Deployment").then(|| Workload::Deployment(n.to_string())))
}

fn controller_of(pod: &Pod) -> Option<(&str, &str)> {
    controller_of_meta(&pod.metadata)
}

fn controller_of_meta(meta: &ObjectMeta) -> Option<(&str, &str)> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.as_str(), o.name.as_str()))
}

/// Writes the pod's series; `None` (the pod is gone) removes them.
fn write_pod(
    series: &mut Series,
    f: &Families,
    t: &Target,
    pod: Option<&Pod>,
    workload: Option<&Workload>,
) {
    let mut restarts = Vec::new();
    if let Some(pod) = pod {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let component = t
            .component
            .clone()
            .or_else(|| {
                COMPONENT_LABELS
                    .iter()
                    .find_map(|l| labels.get(*l).cloned())
            })
            .unwrap_or_else(|| "unknown".to_string());
        let node = pod
            .node_name
            .clone()
            .or_else(|| t.node.clone())
            .unwrap_or_default();
        let (workload_kind, workload) = match workload {
            Some(Workload::Deployment(n)) => ("Deployment", n.as_str()),
            Some(Workload::StatefulSet(n)) => ("StatefulSet", n.as_str()),
            None => ("", ""),
        };
        let info = Info {
            component,
            node,
            workload_kind: workload_kind.to_string(),
            workload: workload.to_string(),
        };
        series.set(&f.info, &info, 1.0);
        f.board.set_component(Some(status::Component {
            workload: match workload {
                "" => String::new(),
                name => format!("{workload_kind}/{name}"),
            },
            name: info.component.clone(),
            node: info.node.clone(),
        }));
        let status = pod.status.clone().unwrap_or_default();
        let phase = status.phase.as_deref().unwrap_or("Unknown");
        series.one_hot(&f.pod_phase, PHASES, phase, |phase| PodPhase {
            phase: phase.to_string(),
        });
        for c in status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten())
        {
            let container = Container {
                container: c.name.clone(),
            };
            series.set(&f.container_ready, &container, f64::from(u8::from(c.ready)));
            restarts.push((c.name.clone(), i64::from(c.restart_count)));
            let reason = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.reason.as_deref());
            if let Some(reason) = reason {
                let terminated = Terminated {
                    container: c.name.clone(),
                    reason: reason.to_string(),
                };
                series.set(&f.container_last_terminated, &terminated, 1.0);
            }
        }
    }
    if pod.is_none() {
        f.board.set_component(None);
    }
    f.set_container_restarts(&restarts);
    series.finish();
}

async fn workload(
    client: Client,
    namespace: &str,
    mut target: watch::Receiver<Option<Workload>>,
    families: &Families,
    watch_families: watches::Families,
    peers: &watch::Sender<Peers>,
) {
    let mut series = Series::default();
    loop {
        let current = target.borrow_and_update().clone();
        let watching = async {
            let w = watch_families.clone();
            match &current {
                Some(Workload::Deployment(name)) => {
                    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
                    let read: Read<Deployment> = (deployment_replicas, |d| {
                        d.spec.as_ref().map(|s| s.selector.clone())
                    });
                    follow_replicas(api, name, w, &mut series, families, read, peers).await
                }
                Some(Workload::StatefulSet(name)) => {
                    let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
                    let read: Read<StatefulSet> = (statefulset_replicas, |s| {
                        s.spec.as_ref().map(|s| s.selector.clone())
                    });
                    follow_replicas(api, name, w, &mut series, families, read, peers).await
                }
                None => {
                    write_replicas(&mut series, families, None);
                    std::future::pending::<()>().await
                }
            }
        };
        tokio::select! {
            () = watching => {}
            changed = target.changed() => if changed.is_err() { return },
        }
    }
}

/// How a workload's replica counts and pod selector are read.
type Read<K> = (fn(&K) -> Replicas, fn(&K) -> Option<LabelSelector>);

/// (desired, ready, available, updated) as a workload's spec and status give them.
type Replicas = (Option<i32>, Option<i32>, Option<i32>, Option<i32>);

fn deployment_replicas(d: &Deployment) -> Replicas {
    let s = d.status.clone().unwrap_or_default();
    let desired = d.spec.as_ref().and_then(|s| s.replicas);
    (
        desired,
        s.ready_replicas,
        s.available_replicas,
        s.updated_replicas,
    )
}

fn statefulset_replicas(s: &StatefulSet) -> Replicas {
    let st = s.status.clone().unwrap_or_default();
    let desired = s.spec.as_ref().and_then(|s| s.replicas);
    (
        desired,
        st.ready_replicas,
        st.available_replicas,
        st.updated_replicas,
    )
}

/// The replica counts served: an unset spec.replicas means 1, as the API server defaults it.
fn replica_counts((desired, ready, available, updated): Replicas) -> [i32; 4] {
    [
        desired.unwrap_or(1),
        ready.unwrap_or(0),
        available.unwrap_or(0),
        updated.unwrap_or(0),
    ]
}

/// Watches one Deployment or StatefulSet by name, writes its replica counts and tells `peers`
/// its pod selector.
async fn follow_replicas<K>(
    api: Api<K>,
    name: &str,
    watch_families: watches::Families,
    series: &mut Series,
    families: &Families,
    (counts, selector): Read<K>,
    peers: &watch::Sender<Peers>,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let stream = reflector(writer, watcher(api, by_name(name)).default_backoff());
    let mut changes = std::pin::pin!(watches::changes("workload", stream, watch_families));
    while changes.next().await.is_some() {
        let workload = store.state().into_iter().next();
        let found = workload.as_deref().map(|w| replica_counts(counts(w)));
        write_replicas(series, families, found);
        match workload
            .as_deref()
            .and_then(selector)
            .map(Selector::try_from)
        {
            Some(Ok(s)) => tell(peers, Peers::Selected(s)),
            Some(Err(e)) => {
                tracing::warn!(workload = name, error = %e, "cannot read the workload's pod selector; this pod is the only shard");
                tell(peers, Peers::Alone);
            }
            None => {}
        }
    }
}

fn write_replicas(series: &mut Series, f: &Families, counts: Option<[i32; 4]>) {
    if let Some(counts) = counts {
        for (state, n) in ["desired", "ready", "available", "updated"]
            .iter()
            .zip(counts)
        {
            let state = ReplicaState {
                state: state.to_string(),
            };
            series.set(&f.replicas, &state, f64::from(n));
        }
    }
    series.finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::table;
    use crate::metrics::Registry;
    use serde_json::json;

    fn target(component: Option<&str>) -> Target {
        Target {
            pod: "mgr-abc".into(),
            namespace: "ksit-system".into(),
            node: Some("node-from-env".into()),
            component: component.map(String::from),
        }
    }

    #[test]
    fn pod_series() {
        let running = json!({
            "metadata": {"name": "mgr-abc", "labels": {"control-plane": "controller-manager", "app": "ksit"}},
            "spec": {"nodeName": "node-1", "containers": []},
            "status": {
                "phase": "Running",
                "initContainerStatuses": [
                    {"name": "ksit-exporter", "ready": true, "restartCount": 0, "image": "", "imageID": ""}
                ],
                "containerStatuses": [{
                    "name": "manager", "ready": false, "restartCount": 3, "image": "", "imageID": "",
                    "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
                }]
            }
        });
        let cases = [
            (
                "running, owned by a Deployment, a container OOMKilled",
                (
                    target(None),
                    Some(running.clone()),
                    Some(Workload::Deployment("ksit-controller-manager".into())),
                ),
                r#"
                ksit_component_container_last_terminated_reason{container="manager",reason="OOMKilled"} 1
                ksit_component_container_ready{container="ksit-exporter"} 1
                ksit_component_container_ready{container="manager"} 0
                ksit_component_container_restarts_total{container="ksit-exporter"} 0
                ksit_component_container_restarts_total{container="manager"} 3
                ksit_component_info{component="ksit",node="node-1",workload="ksit-controller-manager",workload_kind="Deployment"} 1
                ksit_component_pod_phase{phase="Failed"} 0
                ksit_component_pod_phase{phase="Pending"} 0
                ksit_component_pod_phase{phase="Running"} 1
                ksit_component_pod_phase{phase="Succeeded"} 0
                ksit_component_pod_phase{phase="Unknown"} 0
                "#,
            ),
            (
                "pending, unscheduled, of a StatefulSet, named by KSIT_COMPONENT",
                (
                    target(Some("ksit-manager")),
                    Some(json!({
                        "metadata": {"name": "mgr-0"},
                        "status": {"phase": "Pending"}
                    })),
                    Some(Workload::StatefulSet("mgr".into())),
                ),
                r#"
                ksit_component_info{component="ksit-manager",node="node-from-env",workload="mgr",workload_kind="StatefulSet"} 1
                ksit_component_pod_phase{phase="Failed"} 0
                ksit_component_pod_phase{phase="Pending"} 1
                ksit_component_pod_phase{phase="Running"} 0
                ksit_component_pod_phase{phase="Succeeded"} 0
                ksit_component_pod_phase{phase="Unknown"} 0
                "#,
            ),
            (
                "no labels, no status, no workload (a bare ReplicaSet or none)",
                (target(None), Some(json!({"metadata": {"name": "p"}})), None),
                r#"
                ksit_component_info{component="unknown",node="node-from-env",workload="",workload_kind=""} 1
                ksit_component_pod_phase{phase="Failed"} 0
                ksit_component_pod_phase{phase="Pending"} 0
                ksit_component_pod_phase{phase="Running"} 0
                ksit_component_pod_phase{phase="Succeeded"} 0
                ksit_component_pod_phase{phase="Unknown"} 1
                "#,
            ),
            ("the pod is gone", (target(None), None, None), ""),
        ];
        table::check(&cases, |registry, series, (t, pod, workload)| {
            let families = Families::register(registry);
            let pod: Option<Pod> = pod.clone().map(|p| serde_json::from_value(p).expect("pod"));
            write_pod(series, &families, t, pod.as_ref(), workload.as_ref());
        });
    }

    #[test]
    fn a_pod_gone_takes_its_series_with_it() {
        let registry = Registry::new();
        let families = Families::register(&registry);
        let mut series = Series::default();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "manager", "ready": true, "restartCount": 1, "image": "", "imageID": ""}
            ]}
        }))
        .expect("pod");
        write_pod(&mut series, &families, &target(None), Some(&pod), None);
        assert_eq!(table::samples(&registry).len(), 8);
        write_pod(&mut series, &families, &target(None), None, None);
        assert_eq!(table::samples(&registry), Vec::<String>::new());
    }

    /// The pod is read for its identity, labels, owner, node and status only: a spec of
    /// 50,000 env entries is skipped while read.
    #[test]
    fn the_pod_keeps_what_its_series_read() {
        let env: Vec<_> = (0..50_000)
            .map(|i| json!({"name": format!("E{i}"), "value": "v"}))
            .collect();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "resourceVersion": "7",
                "labels": {"app": "ksit"}, "annotations": {"a": "b"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                    "uid": "r", "controller": true}],
                "managedFields": [{"manager": "kubectl"}]},
            "spec": {"nodeName": "node-1", "containers": [{"name": "manager", "env": env}]},
            "status": {"phase": "Running"}
        }))
        .expect("pod");
        assert_eq!(controller_of(&pod), Some(("ReplicaSet", "rs")));
        assert_eq!(pod.node_name.as_deref(), Some("node-1"));
        assert_eq!(
            pod.metadata.resource_version.as_deref(),
            Some("7"),
            "the watcher resumes from it"
        );
        assert!(pod.metadata.annotations.is_none() && pod.metadata.managed_fields.is_none());
        assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Running"));
    }

    /// `reason` is free text that anyone who may patch the pod's status can set.
    #[test]
    fn a_nul_in_a_termination_reason_is_not_served() {
        let registry = Registry::new();
        let families = Families::register(&registry);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"containerStatuses": [{
                "name": "manager", "ready": false, "restartCount": 1, "image": "", "imageID": "",
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error\0"}}
            }]}
        }))
        .expect("pod");
        write_pod(
            &mut Series::default(),
            &families,
            &target(None),
            Some(&pod),
            None,
        );
        let body = registry.snapshot().text().to_vec();
        assert!(!body.contains(&0));
        let text = String::from_utf8(body).expect("utf8");
        assert!(
            text.contains("{container=\"manager\",reason=\"Error\u{fffd}\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn workload_of_a_replicaset() {
        let rs = |owner: serde_json::Value| -> ReplicaSet {
            serde_json::from_value(json!({"metadata": {"name": "rs", "ownerReferences": owner}}))
                .expect("replicaset")
        };
        let owned = rs(json!([{
            "apiVersion": "apps/v1", "kind": "Deployment", "name": "mgr", "uid": "1", "controller": true
        }]));
        assert_eq!(
            owning_deployment(&owned),
            Some(Workload::Deployment("mgr".into()))
        );
        assert_eq!(owning_deployment(&rs(json!([]))), None, "a bare ReplicaSet");
        let not_controller = rs(json!([{
            "apiVersion": "apps/v1", "kind": "Deployment", "name": "mgr", "uid": "1"
        }]));
        assert_eq!(owning_deployment(&not_controller), None);
    }

    #[test]
    fn replica_series() {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "mgr"},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 2}
        }))
        .expect("deployment");
        let statefulset: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "mgr"},
            "spec": {"selector": {}, "template": {}, "serviceName": "mgr"},
            "status": {"replicas": 1, "readyReplicas": 1}
        }))
        .expect("statefulset");
        let cases = [
            (
                "a Deployment rolling out",
                Some(replica_counts(deployment_replicas(&deployment))),
                r#"
                ksit_component_replicas{state="available"} 1
                ksit_component_replicas{state="desired"} 2
                ksit_component_replicas{state="ready"} 1
                ksit_component_replicas{state="updated"} 2
                "#,
            ),
            (
                "a StatefulSet without spec.replicas wants 1",
                Some(replica_counts(statefulset_replicas(&statefulset))),
                r#"
                ksit_component_replicas{state="available"} 0
                ksit_component_replicas{state="desired"} 1
                ksit_component_replicas{state="ready"} 1
                ksit_component_replicas{state="updated"} 0
                "#,
            ),
            ("no workload", None, ""),
        ];
        table::check(&cases, |registry, series, counts| {
            let families = Families::register(registry);
            write_replicas(series, &families, *counts);
        });
    }
}
