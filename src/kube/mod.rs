//! Collectors that read the Kubernetes API: the component's pod, workload and leader Lease
//! (`component`), KSIT's Integrations and IntegrationTargets (`ksit`), and open-cluster-management
//! ManagedClusters (`ocm`).
//!
//! Each is a kube-rs watcher feeding a reflector store: after the initial list the API server
//! carries one watch per watched kind, re-established with backoff. Every change recomputes
//! that kind's series from its store, so a deleted object loses its series at once. A failing
//! collector sets its `ksit_exporter_collector_up` to 0 and keeps its last series; the others
//! carry on and it recovers by itself.

mod component;
mod ksit;
mod ocm;
mod series;

use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::config::{Config, CrMetrics, KubeMode, Namespaces};
use crate::metrics::Metrics;

pub use series::Series;

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
    pub ocm_clusters: bool,
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
            ocm_clusters: c.ocm_clusters,
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

/// Starts every Kubernetes collector the settings call for, each in its own task.
pub fn spawn(client: kube::Client, settings: Settings, metrics: Arc<Metrics>) {
    let own_namespace = settings
        .pod_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let mut cr_metrics = settings.cr_metrics;
    let identity = settings
        .pod_name
        .clone()
        .zip(settings.pod_namespace.clone());
    if identity.is_none() && cr_metrics == CrMetrics::Leader {
        tracing::warn!(
            "POD_NAME and POD_NAMESPACE are unset, so leadership cannot be known; exporting Integration series as with KSIT_CR_METRICS=always"
        );
        cr_metrics = CrMetrics::Always;
    }
    let (leader_tx, leader_rx) = watch::channel(false);
    if let Some((pod, namespace)) = identity {
        tokio::spawn(component::run(
            client.clone(),
            component::Target {
                pod,
                namespace,
                node: settings.node_name.clone(),
                component: settings.component.clone(),
                lease: settings.leader_lease.clone(),
            },
            leader_tx,
            metrics.clone(),
        ));
    }
    if cr_metrics != CrMetrics::Never {
        let namespaces = match &settings.namespaces {
            Namespaces::Own => Some(vec![own_namespace]),
            Namespaces::All => None,
            Namespaces::List(l) => Some(l.clone()),
        };
        let gate = (cr_metrics == CrMetrics::Leader).then_some(leader_rx);
        tokio::spawn(ksit::run_targets(
            client.clone(),
            namespaces.clone(),
            gate.clone(),
            settings.max_objects,
            metrics.clone(),
        ));
        tokio::spawn(ksit::run_integrations(
            client.clone(),
            namespaces,
            gate,
            settings.max_objects,
            metrics.clone(),
        ));
    }
    if settings.ocm_clusters {
        tokio::spawn(ocm::run(client, settings.max_objects, metrics));
    }
}

/// Keeps `ksit_exporter_collector_up` and `ksit_exporter_kube_up` for one watcher, and logs its
/// failures once per outage rather than on every retry.
struct Health {
    name: &'static str,
    metrics: Arc<Metrics>,
    up: Option<bool>,
}

impl Health {
    fn new(name: &'static str, metrics: Arc<Metrics>) -> Self {
        Self {
            name,
            metrics,
            up: None,
        }
    }

    fn ok(&mut self) {
        if self.up == Some(false) {
            tracing::info!(collector = self.name, "watch recovered");
        }
        self.up = Some(true);
        self.metrics
            .collector_up
            .with_label_values(&[self.name])
            .set(1);
        self.metrics.kube.up.set(1);
    }

    fn failed(&mut self, e: &watcher::Error) {
        if self.up != Some(false) {
            tracing::warn!(collector = self.name, error = %e, hint = hint(e), "watch failed; retrying with backoff");
        }
        self.up = Some(false);
        self.metrics
            .collector_up
            .with_label_values(&[self.name])
            .set(0);
        self.metrics.kube.up.set(i64::from(api_answered(e)));
        self.metrics.touch();
    }
}

/// Whether the error came from an API server that answered (403, 404, 410...) rather than from
/// one that could not be reached.
fn api_answered(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(k)
        | watcher::Error::WatchStartFailed(k)
        | watcher::Error::WatchFailed(k) => {
            matches!(k, kube::Error::Api(_))
        }
        watcher::Error::WatchError(_) | watcher::Error::NoResourceVersion => true,
    }
}

fn hint(e: &watcher::Error) -> &'static str {
    let code = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code,
        watcher::Error::WatchError(s) => s.code,
        _ => 0,
    };
    match code {
        403 => "the service account lacks get/list/watch on this resource; see manifests/rbac",
        404 => "the resource is not served; is its CRD installed?",
        0 => "the API server could not be reached",
        _ => "",
    }
}

/// Drives a watch stream, calling `changed` whenever the set of objects changed.
async fn follow<K, S>(stream: S, health: &mut Health, mut changed: impl FnMut())
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                health.ok();
                changed();
                health.metrics.touch();
            }
            Ok(watcher::Event::InitApply(_)) => health.ok(),
            // Init is sent before the list request, on every retry: it proves nothing.
            Ok(watcher::Event::Init) => {}
            Err(e) => health.failed(&e),
        }
    }
}

/// Unix seconds of an RFC 3339 time as Kubernetes writes it.
fn unix_seconds(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> f64 {
    t.0.as_second() as f64 + f64::from(t.0.subsec_nanosecond()) / 1e9
}
