//! Collectors that read the Kubernetes API: the component's pod and workload (`component`), its
//! leader Lease (`lease`), KSIT's IntegrationTargets (`targets`) and Integrations (`integrations`), and
//! open-cluster-management ManagedClusters (`ocm`). Each declares its families and runs its
//! watches through the one runner in `watch`.
//!
//! After the initial list the API server carries one watch per watched kind, re-established with
//! backoff. Each event of IntegrationTargets, Integrations and ManagedClusters renders that
//! object's series alone (`watch::objects`), so a deleted object loses its series at once; the
//! pod, its workload and the Lease keep a reflector store of their one object. A failing
//! collector sets its `ksit_exporter_collector_up` to 0 and keeps its last series; the others
//! carry on and it recovers by itself.

pub mod cluster;
pub mod component;
pub mod integrations;
pub mod lease;
pub mod object;
pub mod ocm;
pub mod series;
pub mod shard;
pub mod targets;
pub mod watch;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ApiResource, GroupVersionKind};
use serde::Deserialize;

use crate::collector;
use crate::config::{Config, CrMetrics, KubeMode, Namespaces};
use crate::metrics::{Objects, Registry, Render};
use watch::ObjectFamilies;

/// What the Kubernetes collectors need from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub node_name: Option<String>,
    pub component: Option<String>,
    pub namespaces: Namespaces,
    pub leader_lease: String,
    pub cr_metrics: CrMetrics,
    pub shard: Option<crate::config::Shard>,
    pub ocm_clusters: bool,
    /// Where ManagedClusters are read from instead of the sidecar's own API server.
    pub its_kubeconfig: Option<std::path::PathBuf>,
    pub max_objects: usize,
}

impl From<&Config> for Settings {
    fn from(c: &Config) -> Self {
        Self {
            pod_name: c.pod_name.clone(),
            pod_namespace: c.pod_namespace.clone(),
            node_name: c.node_name.clone(),
            component: c.component.clone(),
            namespaces: c.watch_namespaces.clone(),
            leader_lease: c.leader_lease.clone(),
            cr_metrics: c.cr_metrics,
            shard: c.shard,
            ocm_clusters: c.ocm_clusters || c.its_kubeconfig.is_some(),
            its_kubeconfig: c.its_kubeconfig.clone(),
            max_objects: c.max_objects,
        }
    }
}

/// Builds a client from the pod's service account or a kubeconfig, as `KSIT_KUBERNETES` asks.
/// `Ok(None)` means: not in a cluster and not asked to be.
pub async fn client(mode: KubeMode) -> anyhow::Result<Option<kube::Client>> {
    if mode == KubeMode::Off {
        return Ok(None);
    }
    match kube::Client::try_default().await {
        Ok(c) => Ok(Some(c)),
        Err(e) if mode == KubeMode::Auto => {
            tracing::info!(error = %e, "no in-cluster config or kubeconfig; Kubernetes collectors are off (KSIT_KUBERNETES=auto)");
            Ok(None)
        }
        Err(e) => Err(anyhow::anyhow!(
            "KSIT_KUBERNETES=true but no Kubernetes client could be configured: {e}; run in a pod with a service account or set KUBECONFIG"
        )),
    }
}

/// The families of every Kubernetes collector, registered whether or not they run, so that the
/// registry always names them (an upstream family of one of these names is dropped).
#[derive(Clone)]
pub struct Families {
    watch: watch::Families,
    component: component::Families,
    lease: lease::Families,
    clusters: cluster::Families,
    integrations: integrations::Families,
    shard: shard::Families,
}

impl Families {
    pub fn register(registry: &Registry, collectors: collector::Families) -> Self {
        Self {
            shard: shard::Families::register(registry),
            watch: watch::Families::register(registry, collectors),
            component: component::Families::register(registry),
            lease: lease::Families::register(registry),
            clusters: cluster::Families::register(registry),
            integrations: integrations::Families::register(registry),
        }
    }
}

impl Families {
    /// The groups whose objects the status page lists: the clusters, and the Integrations.
    pub fn status_groups(&self) -> (Objects, Objects) {
        (
            self.clusters.objects.clone(),
            watch::ObjectFamilies::objects(&self.integrations).clone(),
        )
    }
}

/// Starts every Kubernetes collector the settings call for, each in its own task.
pub fn spawn(client: kube::Client, settings: Settings, families: Families) {
    let mut cr_metrics = settings.cr_metrics;
    let identity = settings
        .pod_name
        .clone()
        .zip(settings.pod_namespace.clone());
    if identity.is_none() && cr_metrics == CrMetrics::Leader {
        tracing::warn!(
            "POD_NAME and POD_NAMESPACE are unset, so leadership cannot be known; exporting Integration, IntegrationTarget and ManagedCluster series as with KSIT_CR_METRICS=always"
        );
        cr_metrics = CrMetrics::Always;
    }
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
    // Series every replica's sidecar would see alike come from the leader's alone.
    let gate = (cr_metrics == CrMetrics::Leader).then_some(leader_rx);
    let (peers_tx, peers_rx) = tokio::sync::watch::channel(shard::Peers::Unknown);
    let shards = match (cr_metrics, settings.shard, &identity) {
        (CrMetrics::Sharded, Some(fixed), _) => Some(shard::fixed(fixed, &families.shard)),
        (CrMetrics::Sharded, None, Some((pod, namespace))) => {
            let (tx, rx) = tokio::sync::watch::channel(shard::Assignment::default());
            tokio::spawn(shard::run(
                client.clone(),
                namespace.clone(),
                pod.clone(),
                peers_rx,
                tx,
                families.shard.clone(),
                families.watch.clone(),
            ));
            Some(rx)
        }
        _ => None,
    };
    let export = watch::Export {
        gate,
        shards,
        max: settings.max_objects,
    };
    if let Some((pod, namespace)) = identity {
        tokio::spawn(lease::run(
            client.clone(),
            namespace.clone(),
            settings.leader_lease.clone(),
            pod.clone(),
            leader_tx,
            families.lease.clone(),
            families.watch.clone(),
        ));
        tokio::spawn(component::run(
            client.clone(),
            component::Target {
                pod,
                namespace,
                node: settings.node_name.clone(),
                component: settings.component.clone(),
            },
            families.component.clone(),
            families.watch.clone(),
            peers_tx,
        ));
    }
    if cr_metrics != CrMetrics::Never {
        let namespaces = watched_namespaces(&settings.namespaces);
        tokio::spawn(targets::run(
            client.clone(),
            namespaces.clone(),
            export.clone(),
            families.clusters.clone(),
            families.watch.clone(),
        ));
        tokio::spawn(integrations::run(
            client.clone(),
            namespaces,
            export.clone(),
            families.integrations.clone(),
            families.watch.clone(),
        ));
    }
    if settings.ocm_clusters {
        match settings.its_kubeconfig {
            None => {
                tokio::spawn(ocm::run(client, export, families.clusters, families.watch));
            }
            Some(path) => {
                tokio::spawn(ocm::run_its(
                    path,
                    export,
                    families.clusters,
                    families.watch.other_server(),
                ));
            }
        }
    }
}

/// A condition of a KSIT or open-cluster-management object's status.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default)]
    pub status: String,
    /// For the status page; not in any series.
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

/// The conditions as Kubernetes reads them: the first of each type wins, as with
/// `meta.FindStatusCondition` and `kubectl wait` (a status may list a type twice: KSIT's CRDs do
/// not forbid it).
pub(crate) fn first_of_each_type(conditions: &[Condition]) -> impl Iterator<Item = &Condition> {
    let mut seen = std::collections::HashSet::new();
    conditions
        .iter()
        .filter(move |c| seen.insert(c.type_.as_str()))
}

/// A kind of KSIT's API group `ksit.io/v1alpha1`.
fn ksit_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("ksit.io", "v1alpha1", kind), plural)
}

/// Unix seconds of an RFC 3339 time as Kubernetes writes it.
fn unix_seconds(t: &Time) -> f64 {
    t.0.as_second() as f64 + f64::from(t.0.subsec_nanosecond()) / 1e9
}

/// Namespaces to watch: one list of namespaces, or `None` for one watch over all.
fn watched_namespaces(namespaces: &Namespaces) -> Option<Vec<String>> {
    match namespaces {
        Namespaces::All => None,
        Namespaces::List(l) => Some(l.clone()),
    }
}

/// Helpers for the writers' table tests, in the style of kube-state-metrics': an object in, the
/// exact samples out.
/// The exposition each per-object collector serves for `json` as the only object of its kind,
/// `None` where `json` is not one. For the fuzz target `kube_objects` (`fuzz/inputs.rs`): an
/// object's fields come from whoever may write it, and must not break the text format.
pub fn exposition_of(json: &[u8]) -> [(&'static str, Option<bytes::Bytes>); 3] {
    [
        ("IntegrationTarget", targets::alone(json)),
        ("Integration", integrations::alone(json)),
        ("ManagedCluster", ocm::alone(json)),
    ]
}

/// `json` read as a `K`, rendered by `write` as a watch event would, alone in a fresh registry.
fn alone<K: serde::de::DeserializeOwned, F: ObjectFamilies>(
    json: &[u8],
    register: fn(&Registry) -> F,
    write: fn(&mut Render, &F, &K),
) -> Option<bytes::Bytes> {
    let obj: K = serde_json::from_slice(json).ok()?;
    let registry = Registry::new();
    let families = register(&registry);
    let mut out = Render::default();
    write(&mut out, &families, &obj);
    families.objects().put("uid", out);
    Some(registry.snapshot().text())
}

#[cfg(test)]
pub(crate) mod table {
    use super::series::Series;
    use super::watch::ObjectFamilies;
    use crate::metrics::{Registry, Render};

    /// The samples (no HELP or TYPE lines) the registry serves, sorted.
    pub fn samples(registry: &Registry) -> Vec<String> {
        samples_of(&registry.snapshot().text())
    }

    /// The samples of an exposition, sorted.
    fn samples_of(text: &[u8]) -> Vec<String> {
        let text = std::str::from_utf8(text).expect("UTF-8");
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(String::from)
            .collect();
        lines.sort();
        lines
    }

    /// `want`'s non-empty lines, trimmed and sorted.
    pub fn lines(want: &str) -> Vec<String> {
        let mut lines: Vec<String> = want
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        lines.sort();
        lines
    }

    /// Runs each case on a fresh registry: `write` registers its families, writes the object
    /// into a series set and finishes the pass; the served samples must be exactly `want`.
    pub fn check<T>(cases: &[(&str, T, &str)], write: impl Fn(&Registry, &mut Series, &T)) {
        for (name, input, want) in cases {
            let registry = Registry::new();
            let mut series = Series::default();
            write(&registry, &mut series, input);
            assert_eq!(samples(&registry), lines(want), "case {name:?}");
        }
    }

    /// The same for a writer of dynamic objects, the cases' inputs given as JSON: each object is
    /// rendered and put into its families' group.
    pub fn check_objects<K: serde::de::DeserializeOwned, F: ObjectFamilies>(
        cases: &[(&str, serde_json::Value, &str)],
        register: fn(&Registry) -> F,
        write: fn(&mut Render, &F, &K),
    ) {
        for (name, input, want) in cases {
            let json = serde_json::to_vec(input).expect("JSON");
            let text = super::alone(&json, register, write).expect("a Kubernetes object");
            assert_eq!(samples_of(&text), lines(want), "case {name:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_to_watch() {
        assert_eq!(watched_namespaces(&Namespaces::All), None);
        let list = Namespaces::List(vec!["a".into(), "b".into()]);
        assert_eq!(
            watched_namespaces(&list),
            Some(vec!["a".to_string(), "b".to_string()])
        );
    }
}
