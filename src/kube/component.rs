//! The component's own pod, the workload that owns it, and its leader Lease.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use super::{Health, Series, follow};
use crate::metrics::Metrics;

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
    pub lease: String,
}

/// The workload that owns the pod, as far as the exporter follows it.
#[derive(Debug, Clone, PartialEq)]
enum Workload {
    Deployment(String),
    StatefulSet(String),
}

pub async fn run(
    client: Client,
    target: Target,
    leader: watch::Sender<bool>,
    metrics: Arc<Metrics>,
) {
    let (workload_tx, workload_rx) = watch::channel(None);
    tokio::join!(
        pod(client.clone(), &target, workload_tx, metrics.clone()),
        workload(
            client.clone(),
            &target.namespace,
            workload_rx,
            metrics.clone()
        ),
        lease(client, &target, leader, metrics),
    );
}

fn by_name(name: &str) -> watcher::Config {
    watcher::Config::default().fields(&format!("metadata.name={name}"))
}

async fn pod(
    client: Client,
    t: &Target,
    workload_tx: watch::Sender<Option<Workload>>,
    metrics: Arc<Metrics>,
) {
    let api: Api<Pod> = Api::namespaced(client.clone(), &t.namespace);
    let rs_api: Api<ReplicaSet> = Api::namespaced(client, &t.namespace);
    let (store, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, by_name(&t.pod)).default_backoff());
    let mut health = Health::new("pod", metrics.clone());
    let mut series = Series::default();
    let mut owner_rs: Option<String> = None;
    let mut stream = std::pin::pin!(stream);
    use futures::StreamExt;
    while let Some(item) = stream.next().await {
        match item {
            Ok(watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                health.ok();
                let pod = store.state().into_iter().next();
                let workload = match pod.as_deref().and_then(controller_of) {
                    Some(("StatefulSet", name)) => Some(Workload::StatefulSet(name.to_string())),
                    // A ReplicaSet's owner is looked up once per ReplicaSet: a GET, not a watch,
                    // since the pod is replaced (and the sidecar with it) when it changes.
                    Some(("ReplicaSet", name)) if owner_rs.as_deref() != Some(name) => {
                        owner_rs = Some(name.to_string());
                        match rs_api.get(name).await {
                            Ok(rs) => controller_of_meta(&rs.metadata).and_then(|(kind, n)| {
                                (kind == "Deployment").then(|| Workload::Deployment(n.to_string()))
                            }),
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
                write_pod(&mut series, &metrics, t, pod.as_deref(), workload.as_ref());
                metrics.touch();
            }
            Ok(watcher::Event::InitApply(_)) => health.ok(),
            // Init is sent before the list request, on every retry: it proves nothing.
            Ok(watcher::Event::Init) => {}
            Err(e) => health.failed(&e),
        }
    }
}

fn controller_of(pod: &Pod) -> Option<(&str, &str)> {
    controller_of_meta(&pod.metadata)
}

fn controller_of_meta(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<(&str, &str)> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.as_str(), o.name.as_str()))
}

fn write_pod(
    series: &mut Series,
    metrics: &Metrics,
    t: &Target,
    pod: Option<&Pod>,
    workload: Option<&Workload>,
) {
    let k = &metrics.kube;
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
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .or_else(|| t.node.clone())
            .unwrap_or_default();
        let (kind, name) = match workload {
            Some(Workload::Deployment(n)) => ("Deployment", n.as_str()),
            Some(Workload::StatefulSet(n)) => ("StatefulSet", n.as_str()),
            None => ("", ""),
        };
        series.set(&k.component_info, &[&component, &node, kind, name], 1.0);
        let status = pod.status.clone().unwrap_or_default();
        series.one_hot(
            &k.pod_phase,
            &[],
            PHASES,
            status.phase.as_deref().unwrap_or("Unknown"),
        );
        let mut restarts = Vec::new();
        for c in status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten())
        {
            series.set(&k.container_ready, &[&c.name], f64::from(u8::from(c.ready)));
            restarts.push((c.name.clone(), i64::from(c.restart_count)));
            let reason = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.reason.as_deref());
            if let Some(reason) = reason {
                series.set(&k.container_last_terminated, &[&c.name, reason], 1.0);
            }
        }
        k.set_container_restarts(&restarts);
    } else {
        k.set_container_restarts(&[]);
    }
    series.finish();
}

async fn workload(
    client: Client,
    namespace: &str,
    mut target: watch::Receiver<Option<Workload>>,
    metrics: Arc<Metrics>,
) {
    let mut series = Series::default();
    loop {
        let current = target.borrow_and_update().clone();
        let watching = async {
            let mut health = Health::new("workload", metrics.clone());
            match &current {
                Some(Workload::Deployment(name)) => {
                    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
                    follow_replicas(api, name, &mut health, &mut series, &metrics, |d| {
                        let s = d.status.clone().unwrap_or_default();
                        let desired = d.spec.as_ref().and_then(|s| s.replicas);
                        (
                            desired,
                            s.ready_replicas,
                            s.available_replicas,
                            s.updated_replicas,
                        )
                    })
                    .await
                }
                Some(Workload::StatefulSet(name)) => {
                    let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
                    follow_replicas(api, name, &mut health, &mut series, &metrics, |s| {
                        let st = s.status.clone().unwrap_or_default();
                        let desired = s.spec.as_ref().and_then(|s| s.replicas);
                        (
                            desired,
                            st.ready_replicas,
                            st.available_replicas,
                            st.updated_replicas,
                        )
                    })
                    .await
                }
                None => {
                    write_replicas(&mut series, &metrics, None);
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

/// (desired, ready, available, updated) as a workload's spec and status give them.
type Replicas = (Option<i32>, Option<i32>, Option<i32>, Option<i32>);

/// Watches one Deployment or StatefulSet by name and writes its replica counts.
async fn follow_replicas<K>(
    api: Api<K>,
    name: &str,
    health: &mut Health,
    series: &mut Series,
    metrics: &Metrics,
    counts: impl Fn(&K) -> Replicas,
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
    follow(stream, health, || {
        let found = store.state().into_iter().next().map(|w| {
            let (desired, ready, available, updated) = counts(&w);
            // An unset spec.replicas means 1, as the API server defaults it.
            [
                desired.unwrap_or(1),
                ready.unwrap_or(0),
                available.unwrap_or(0),
                updated.unwrap_or(0),
            ]
        });
        write_replicas(series, metrics, found);
    })
    .await
}

fn write_replicas(series: &mut Series, metrics: &Metrics, counts: Option<[i32; 4]>) {
    if let Some(counts) = counts {
        for (state, n) in ["desired", "ready", "available", "updated"]
            .iter()
            .zip(counts)
        {
            series.set(&metrics.kube.replicas, &[state], f64::from(n));
        }
    }
    series.finish();
}

/// controller-runtime's leader identity is `<hostname>_<uuid>`, and a pod's hostname is its name.
fn holds(lease: &Lease, pod: &str) -> bool {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .is_some_and(|h| {
            h == pod
                || h.strip_prefix(pod)
                    .is_some_and(|rest| rest.starts_with('_'))
        })
}

async fn lease(client: Client, t: &Target, leader: watch::Sender<bool>, metrics: Arc<Metrics>) {
    let api: Api<Lease> = Api::namespaced(client, &t.namespace);
    let (store, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, by_name(&t.lease)).default_backoff());
    let mut health = Health::new("lease", metrics.clone());
    follow(stream, &mut health, || {
        let is_leader = store.state().first().is_some_and(|l| holds(l, &t.pod));
        metrics.kube.leader.set(i64::from(is_leader));
        leader.send_if_modified(|l| std::mem::replace(l, is_leader) != is_leader);
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;

    #[test]
    fn lease_holder_is_matched_by_pod_name_prefix() {
        let lease = |h: &str| Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(h.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(holds(&lease("mgr-abc_0d2c5e4e-1111"), "mgr-abc"));
        assert!(holds(&lease("mgr-abc"), "mgr-abc"));
        assert!(!holds(&lease("mgr-abcd_0d2c"), "mgr-abc"));
        assert!(!holds(&Lease::default(), "mgr-abc"));
    }
}
