//! The one event loop every Kubernetes collector runs: a kube-rs watcher feeding a reflector
//! store, its health in `ksit_exporter_collector_up` and `ksit_exporter_kube_up`, and an optional
//! leader gate, so that series every replica's sidecar would see alike come from one of them.

use std::collections::HashSet;
use std::sync::Arc;

use futures::stream::{BoxStream, select_all};
use futures::{Stream, StreamExt};
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use super::series::Series;
use crate::collector::{self, Collector};
use crate::labels;
use crate::metrics::{Counters, Family, Gauges, Registry};

labels! {
    /// The plural of a watched kind: `integrationtargets`, `managedclusters`, ...
    pub struct Kind { kind }
}

pub const KUBE_UP: Family = Family {
    name: "ksit_exporter_kube_up",
    help: "1 when the Kubernetes API server last answered the exporter, 0 when it could not be reached.",
};
pub const OBJECTS: Family = Family {
    name: "ksit_exporter_kube_objects",
    help: "Objects of each kind the exporter watches.",
};
pub const OBJECTS_DROPPED: Family = Family {
    name: "ksit_exporter_kube_objects_dropped_total",
    help: "Objects left out of the series because KSIT_MAX_OBJECTS was reached, counted once each.",
};

/// What every watch reports about itself.
#[derive(Clone)]
pub struct Families {
    kube_up: Gauges<()>,
    objects: Gauges<Kind>,
    dropped: Counters<Kind>,
    collectors: collector::Families,
}

impl Families {
    pub fn register(registry: &Registry, collectors: collector::Families) -> Self {
        Self {
            kube_up: registry.gauges(KUBE_UP),
            objects: registry.gauges(OBJECTS),
            dropped: registry.counters(OBJECTS_DROPPED),
            collectors,
        }
    }
}

/// Whether this pod's sidecar exports the gated series: the leader's does.
pub type Gate = Option<watch::Receiver<bool>>;

/// Follows one watch: yields `exporting` after every change to the set of objects and, when
/// `gate` is set, whenever leadership changes (`exporting` is false while this pod does not
/// lead; without a gate it is always true). Errors only update the watch's health series: the
/// watcher retries with backoff, and the stream ends only when the watch does.
pub fn changes<K, S>(
    name: &'static str,
    stream: S,
    gate: Gate,
    families: Families,
) -> impl Stream<Item = bool> + Send
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Send,
{
    let state = (Tracker::new(name, families), Box::pin(stream), gate);
    futures::stream::unfold(state, |(mut tracker, mut stream, mut gate)| async move {
        let exporting = |gate: &Gate| gate.as_ref().is_none_or(|g| *g.borrow());
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
                        tracker.ok();
                        break;
                    }
                    Some(Ok(watcher::Event::InitApply(_))) => tracker.ok(),
                    // Init is sent before the list request, on every retry: it proves nothing.
                    Some(Ok(watcher::Event::Init)) => {}
                    Some(Err(e)) => tracker.failed(&e),
                    None => return None,
                },
                true = leadership => break,
            }
        }
        let now = exporting(&gate);
        Some((now, (tracker, stream, gate)))
    })
}

/// Runs a collector of dynamic objects (one watch per namespace, or one over all): after each
/// change, `write` writes every object's series, the first `max` objects of all stores only, and
/// only while the gate says this sidecar exports; what a pass does not write again is removed.
pub async fn objects<F>(
    name: &'static str,
    (stores, stream): (Vec<Store<DynamicObject>>, Events),
    gate: Gate,
    max: usize,
    families: (F, Families),
    write: fn(&mut Series, &F, &DynamicObject),
) {
    let (families, watch_families) = families;
    let mut series = Series::default();
    let mut limit = Limit::new(name, max, watch_families.clone());
    let mut changes = std::pin::pin!(changes(name, stream, gate, watch_families));
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

/// Keeps one watch's health series, and logs its failures once per outage rather than on every
/// retry.
struct Tracker {
    name: Collector,
    families: Families,
    up: Option<bool>,
}

impl Tracker {
    fn new(name: &'static str, families: Families) -> Self {
        Self {
            name: Collector::named(name),
            families,
            up: None,
        }
    }

    fn ok(&mut self) {
        if self.up == Some(false) {
            tracing::info!(collector = %self.name.collector, "watch recovered");
        }
        self.up = Some(true);
        self.families.collectors.up.set(&self.name, 1.0);
        self.families.kube_up.set(&(), 1.0);
    }

    fn failed(&mut self, e: &watcher::Error) {
        if routine(e) {
            // The watcher re-lists by itself; nothing is wrong and nothing is logged above debug.
            tracing::debug!(collector = %self.name.collector, error = %e, "watch restarted");
            return;
        }
        if self.up != Some(false) {
            tracing::warn!(collector = %self.name.collector, error = %e, hint = hint(e), "watch failed; retrying with backoff");
        }
        self.up = Some(false);
        self.families.collectors.up.set(&self.name, 0.0);
        self.families
            .kube_up
            .set(&(), f64::from(u8::from(api_answered(e))));
    }
}

/// A restart the API server asks for in the normal course of a watch: 410 Gone, when the
/// resourceVersion the watch resumes from has been compacted away. The watcher re-lists.
fn routine(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(s) => s.code == 410,
        watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 410,
        _ => false,
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
        403 => {
            "the service account lacks get/list/watch on this resource; see manifests/rbac (and manifests/rbac/cluster for KSIT_WATCH_NAMESPACES=*, the default)"
        }
        404 => "the resource is not served; is its CRD installed?",
        0 => "the API server could not be reached",
        _ => "",
    }
}

/// A watch that selects one object by name.
pub fn by_name(name: &str) -> watcher::Config {
    watcher::Config::default().fields(&format!("metadata.name={name}"))
}

/// Watch events of dynamic objects, from one or several merged watches.
pub type Events = BoxStream<'static, Result<watcher::Event<DynamicObject>, watcher::Error>>;

/// One watch per namespace (`None`: one over all), merged, each with its own store.
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

/// Objects of all stores, sorted, cut at `max`; objects newly cut are counted once.
pub struct Limit {
    kind: Kind,
    max: usize,
    dropped: HashSet<(String, String)>,
    families: Families,
}

impl Limit {
    pub fn new(kind: &'static str, max: usize, families: Families) -> Self {
        Self {
            kind: Kind {
                kind: kind.to_string(),
            },
            max,
            dropped: HashSet::new(),
            families,
        }
    }

    pub fn apply(&mut self, stores: &[Store<DynamicObject>]) -> Vec<Arc<DynamicObject>> {
        let mut all: Vec<Arc<DynamicObject>> = stores.iter().flat_map(Store::state).collect();
        all.sort_by_key(|o| (o.namespace(), o.name_any()));
        self.families.objects.set(&self.kind, all.len() as f64);
        let cut: HashSet<(String, String)> = all
            .iter()
            .skip(self.max)
            .map(|o| (o.namespace().unwrap_or_default(), o.name_any()))
            .collect();
        let new = cut.difference(&self.dropped).count();
        if new > 0 {
            tracing::warn!(
                kind = %self.kind.kind,
                max = self.max,
                dropped = cut.len(),
                "more objects than KSIT_MAX_OBJECTS; the rest are not exported"
            );
            self.families.dropped.inc_by(&self.kind, new as u64);
        }
        self.dropped = cut;
        all.truncate(self.max);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    /// A fault no real part produces on demand: an API server answers 410 only once etcd has
    /// compacted the watch's resourceVersion away, so the errors are made by hand here.
    fn status(code: u16) -> Box<Status> {
        Box::new(Status::failure("test", "Test").with_code(code))
    }

    #[test]
    fn a_routine_410_does_not_take_the_collector_down_and_a_403_does() {
        let registry = Registry::new();
        let families = Families::register(&registry, collector::Families::register(&registry));
        let up = |f: &Families| f.collectors.up.get(&Collector::named("integrations"));
        let mut tracker = Tracker::new("integrations", families.clone());
        tracker.ok();
        tracker.failed(&watcher::Error::WatchError(status(410)));
        assert_eq!(up(&families), Some(1.0), "410 Gone is routine");
        tracker.failed(&watcher::Error::WatchStartFailed(kube::Error::Api(status(
            410,
        ))));
        assert_eq!(up(&families), Some(1.0));
        tracker.failed(&watcher::Error::WatchError(status(403)));
        assert_eq!(up(&families), Some(0.0), "403 is not");
        assert_eq!(
            families.kube_up.get(&()),
            Some(1.0),
            "the API server answered"
        );
    }
}
