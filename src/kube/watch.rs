//! The one event loop every Kubernetes collector runs: a kube-rs watcher feeding a reflector
//! store, its health in `ksit_exporter_collector_up` and `ksit_exporter_kube_up`, and an optional
//! leader gate, so that series every replica's sidecar would see alike come from one of them.

use std::collections::HashSet;

use futures::stream::{BoxStream, SelectAll, select_all};
use futures::{Stream, StreamExt};
use std::fmt::Debug;

use kube::api::ApiResource;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::object::{MAX_KEPT_VALUES, TooLarge};
use super::shard::{Assignment, Shards};
use crate::collector::{self, Collector};
use crate::labels;
use crate::metrics::{self, Counters, Family, Gauges, Key, Objects, Registry, Render};

labels! {
    /// The plural of a watched kind: `integrationtargets`, `managedclusters`, ...
    pub struct Kind { kind }
}

labels! {
    /// A watched kind and why an object of it was skipped (`too_large`).
    pub struct Skipped { kind, reason }
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
pub const OBJECTS_SKIPPED: Family = Family {
    name: "ksit_exporter_kube_objects_skipped_total",
    help: "Objects left out of the series because they could not be read within bounds (reason too_large: the fields the series read hold more values than the exporter keeps), counted once each.",
};

/// What every watch reports about itself.
#[derive(Clone)]
pub struct Families {
    kube_up: Gauges<()>,
    /// False for a watch on another API server (the ITS): `ksit_exporter_kube_up` is about
    /// the sidecar's own cluster, and that watch's health is its collector's alone.
    own_server: bool,
    objects: Gauges<Kind>,
    dropped: Counters<Kind>,
    skipped: Counters<Skipped>,
    collectors: collector::Families,
}

impl Families {
    pub fn register(registry: &Registry, collectors: collector::Families) -> Self {
        Self {
            kube_up: registry.gauges(KUBE_UP),
            own_server: true,
            objects: registry.gauges(OBJECTS),
            dropped: registry.counters(OBJECTS_DROPPED),
            skipped: registry.counters(OBJECTS_SKIPPED),
            collectors,
        }
    }

    /// Reports a collector that could not start its watch at all.
    pub fn report_failed(&self, collector: &'static str, error: &str) {
        self.collectors
            .report(&Collector::named(collector), Err(error));
    }

    /// The same families for a watch on another API server than the sidecar's own.
    pub fn other_server(&self) -> Self {
        Self {
            own_server: false,
            ..self.clone()
        }
    }
}

/// Whether this pod's sidecar exports the gated series: the leader's does.
pub type Gate = Option<watch::Receiver<bool>>;

/// Follows one watch of a single object (the pod, its workload, the Lease): yields after every
/// change. Errors only update the watch's health series: the watcher retries with backoff, and
/// the stream ends only when the watch does.
pub fn changes<K, S>(
    name: &'static str,
    stream: S,
    families: Families,
) -> impl Stream<Item = ()> + Send
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Send,
{
    let state = (Tracker::new(name, families), Box::pin(stream));
    futures::stream::unfold(state, |(mut tracker, mut stream)| async move {
        loop {
            match stream.next().await? {
                Ok(
                    watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_),
                ) => {
                    tracker.ok();
                    return Some(((), (tracker, stream)));
                }
                Ok(watcher::Event::InitApply(_)) => tracker.ok(),
                // Init is sent before the list request, on every retry: it proves nothing.
                Ok(watcher::Event::Init) => {}
                Err(e) => tracker.failed(&e),
            }
        }
    })
}

/// The families of one group rendered per object, and the group they are written into.
pub trait ObjectFamilies {
    fn objects(&self) -> &Objects;
}

/// Who exports a collector's objects, and how many it keeps.
#[derive(Clone)]
pub struct Export {
    /// Exported only while this sidecar leads (`KSIT_CR_METRICS=leader`).
    pub gate: Gate,
    /// Only this sidecar's share is exported (`KSIT_CR_METRICS=sharded`).
    pub shards: Shards,
    pub max: usize,
}

/// Runs a collector of dynamic objects (one watch per namespace, or one over all): each event
/// renders, or drops, the series of that object alone, under its UID; nothing keeps the objects
/// themselves. Up to `max` objects are kept; the group is served only while the gate says this
/// sidecar exports. Sharded, only the objects of this sidecar's shard are rendered, and the
/// watches are started again (a fresh list) when the shards change so that it may own objects
/// it skipped before.
pub async fn objects<K, F>(
    name: &'static str,
    source: Watches<K>,
    export: Export,
    (families, watch_families): (F, Families),
    write: fn(&mut Render, &F, &K),
) where
    K: Resource<DynamicType = ApiResource>
        + TooLarge
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + 'static,
    F: ObjectFamilies,
{
    let Export {
        mut gate,
        mut shards,
        max,
    } = export;
    let group = families.objects().clone();
    let exporting = |gate: &Gate| gate.as_ref().is_none_or(|g| *g.borrow());
    group.set_exported(exporting(&gate));
    let mut tracker = Tracker::new(name, watch_families.clone());
    let mut kept = Kept::new(name, max, watch_families);
    let mut listing = Listing::Stream;
    let mut assignment = shards.as_mut().map(|s| s.borrow_and_update().clone());
    // A sidecar that is no shard yet reads nothing.
    let member = |a: &Option<Assignment>| a.as_ref().is_none_or(|a| a.is_member());
    let mut events = member(&assignment).then(|| source.start(listing));
    loop {
        let leadership = async {
            match gate.as_mut() {
                Some(g) => g.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let resharded = async {
            match shards.as_mut() {
                Some(s) => s.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let next = async {
            match events.as_mut() {
                Some(e) => e.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            item = next => {
                let Some((watch, item)) = item else { return };
                let event = match item {
                    Ok(event) => event,
                    Err(e) if listing == Listing::Stream && streaming_refused(&e) => {
                        tracing::info!(collector = name, error = %e, "the API server does not stream lists (WatchList); listing in pages of {PAGE} instead");
                        listing = Listing::Pages;
                        events = Some(source.start(listing));
                        continue;
                    }
                    Err(e) => {
                        tracker.failed(&e);
                        continue;
                    }
                };
                let ours = |obj: &K| assignment.as_ref().is_none_or(|a| a.owns(key(obj)));
                match event {
                    // Sent before the list request, on every retry: it proves nothing yet.
                    watcher::Event::Init => kept.relist(watch),
                    // Another shard's: nothing of it is kept (a re-list only forgets kept objects).
                    watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) if !ours(&obj) => {
                        tracker.ok();
                    }
                    watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) if obj.too_large() => {
                        tracker.ok();
                        if let Some(key) = kept.skip(watch, &obj) {
                            group.delete_at(key);
                        }
                    }
                    watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) => {
                        tracker.ok();
                        if let Some(key) = kept.admit(watch, &obj) {
                            let mut out = Render::default();
                            write(&mut out, &families, &obj);
                            group.put_at(key, out);
                        }
                    }
                    watcher::Event::Delete(obj) => {
                        tracker.ok();
                        if let Some(key) = kept.remove(watch, &obj) {
                            group.delete_at(key);
                        }
                    }
                    watcher::Event::InitDone => {
                        tracker.ok();
                        for key in kept.relisted(watch) {
                            group.delete_at(key);
                        }
                    }
                }
            }
            true = leadership => group.set_exported(exporting(&gate)),
            true = resharded => {
                let Some(new) = shards.as_mut().map(|s| s.borrow_and_update().clone()) else { continue };
                for key in kept.disown(|key| !new.owns(key)) {
                    group.delete_at(key);
                }
                let old = assignment.replace(new.clone());
                if !new.is_member() {
                    events = None;
                } else if events.is_none() || old.is_none_or(|old| new.gains_from(&old)) {
                    events = Some(source.start(listing));
                }
            }
        }
    }
}

/// How a watch reads what exists before it follows changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// A streaming list (WatchList: a watch that begins with every object, from the API
    /// server's watch cache), so the first sync never holds a whole list.
    Stream,
    /// Where the API server refuses that: lists of [`PAGE`] objects.
    Pages,
}

/// Objects per page of a paged list: what client-go's informers ask for.
const PAGE: u32 = 500;

/// An API server without streaming lists (WatchList off, as on Kubernetes 1.33, or older than
/// 1.27) refuses `sendInitialEvents` as an invalid request.
fn streaming_refused(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 422 || s.code == 400,
        watcher::Error::WatchError(s) => s.code == 422 || s.code == 400,
        _ => false,
    }
}

/// The keys of the objects each watch has had admitted, so that a re-list can drop those that
/// went away meanwhile, and the cap on how many are kept.
struct Kept {
    kind: Kind,
    max: usize,
    families: Families,
    watches: Vec<Keys>,
    total: usize,
    warned: bool,
}

#[derive(Default)]
struct Keys {
    kept: HashSet<Key>,
    /// Left out at the cap, counted once each.
    dropped: HashSet<Key>,
    /// Left out as too large to read, counted once each.
    skipped: HashSet<Key>,
    /// Seen since the re-list began, while one is under way.
    listed: Option<HashSet<Key>>,
}

impl Kept {
    fn new(kind: &'static str, max: usize, families: Families) -> Self {
        Self {
            kind: Kind {
                kind: kind.to_string(),
            },
            max,
            families,
            watches: Vec::new(),
            total: 0,
            warned: false,
        }
    }

    fn keys(&mut self, watch: usize) -> &mut Keys {
        if self.watches.len() <= watch {
            self.watches.resize_with(watch + 1, Keys::default);
        }
        &mut self.watches[watch]
    }

    fn relist(&mut self, watch: usize) {
        self.keys(watch).listed = Some(HashSet::new());
    }

    /// Forgets the objects `gone` says are no longer this sidecar's: the keys of those kept, to
    /// remove their series.
    fn disown(&mut self, gone: impl Fn(Key) -> bool) -> Vec<Key> {
        let mut removed = Vec::new();
        for keys in &mut self.watches {
            keys.kept.retain(|&k| {
                let keep = !gone(k);
                if !keep {
                    removed.push(k);
                }
                keep
            });
            keys.dropped.retain(|&k| !gone(k));
            keys.skipped.retain(|&k| !gone(k));
        }
        self.total -= removed.len();
        self.count();
        removed
    }

    /// The object's key if its series are to be written: it is kept already, or there is room.
    fn admit(&mut self, watch: usize, obj: &impl Resource) -> Option<Key> {
        let key = key(obj);
        let (total, max) = (self.total, self.max);
        let keys = self.keys(watch);
        if let Some(listed) = &mut keys.listed {
            listed.insert(key);
        }
        keys.skipped.remove(&key);
        if keys.kept.contains(&key) {
            return Some(key);
        }
        if total < max {
            keys.kept.insert(key);
            self.total += 1;
            self.count();
            return Some(key);
        }
        if keys.dropped.insert(key) {
            self.count();
            self.families.dropped.inc(&self.kind);
            if !self.warned {
                self.warned = true;
                tracing::warn!(kind = %self.kind.kind, max = self.max, "more objects than KSIT_MAX_OBJECTS; the rest are not exported until room is made");
            }
        }
        None
    }

    /// Leaves out an object too large to read, counting and logging it once (until it is read
    /// again): its key if it had series to remove, written when it was smaller.
    fn skip(&mut self, watch: usize, obj: &impl Resource) -> Option<Key> {
        let key = key(obj);
        let keys = self.keys(watch);
        if let Some(listed) = &mut keys.listed {
            listed.insert(key);
        }
        let had = keys.kept.remove(&key);
        let dropped = keys.dropped.remove(&key);
        let new = keys.skipped.insert(key);
        if new {
            self.families.skipped.inc(&Skipped {
                kind: self.kind.kind.clone(),
                reason: "too_large".to_string(),
            });
            tracing::warn!(
                kind = %self.kind.kind,
                namespace = obj.meta().namespace.as_deref().unwrap_or_default(),
                name = obj.meta().name.as_deref().unwrap_or_default(),
                max = MAX_KEPT_VALUES,
                "the fields the series read of this object hold more values than the exporter keeps; it is not exported (ksit_exporter_kube_objects_skipped_total counts such objects)"
            );
        }
        if had {
            self.total -= 1;
        }
        if had || dropped || new {
            self.count();
        }
        had.then_some(key)
    }

    /// The object's key if it had series to remove.
    fn remove(&mut self, watch: usize, obj: &impl Resource) -> Option<Key> {
        let key = key(obj);
        let keys = self.keys(watch);
        let was_dropped = keys.dropped.remove(&key) | keys.skipped.remove(&key);
        let removed = keys.kept.remove(&key);
        if removed {
            self.total -= 1;
        }
        if removed || was_dropped {
            self.count();
        }
        removed.then_some(key)
    }

    /// Ends a re-list: the keys of the objects it did not list again, now forgotten.
    fn relisted(&mut self, watch: usize) -> Vec<Key> {
        let keys = self.keys(watch);
        let Some(listed) = keys.listed.take() else {
            return Vec::new();
        };
        let gone: Vec<Key> = keys.kept.difference(&listed).copied().collect();
        keys.kept.retain(|k| listed.contains(k));
        keys.dropped.retain(|k| listed.contains(k));
        keys.skipped.retain(|k| listed.contains(k));
        self.total -= gone.len();
        self.count();
        gone
    }

    /// Counts every object seen, kept or left out (at the cap, or as too large).
    fn count(&mut self) {
        if self.total < self.max {
            self.warned = false;
        }
        let dropped: usize = self
            .watches
            .iter()
            .map(|k| k.dropped.len() + k.skipped.len())
            .sum();
        let seen = (self.total + dropped) as f64;
        self.families.objects.set(&self.kind, seen);
    }
}

/// An object's key in its group: of its UID (a name can be reused by a new object).
fn key(obj: &impl Resource) -> Key {
    match &obj.meta().uid {
        Some(uid) => metrics::key(uid),
        None => metrics::key(&format!(
            "{}/{}",
            obj.namespace().unwrap_or_default(),
            obj.name_any()
        )),
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
        self.families.collectors.report(&self.name, Ok(()));
        if self.families.own_server {
            self.families.kube_up.set(&(), 1.0);
        }
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
        let hint = hint(e);
        let error = if hint.is_empty() {
            e.to_string()
        } else {
            format!("{e} ({hint})")
        };
        self.families.collectors.report(&self.name, Err(&error));
        if self.families.own_server {
            self.families
                .kube_up
                .set(&(), f64::from(u8::from(api_answered(e))));
        }
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

/// The watches of one kind: one per namespace (`None`: one over all).
pub struct Watches<K> {
    apis: Vec<Api<K>>,
}

/// One watch per namespace (`None`: one over all).
pub fn watch_all<K>(
    client: &Client,
    ar: &ApiResource,
    namespaces: &Option<Vec<String>>,
) -> Watches<K>
where
    K: Resource<DynamicType = ApiResource, Scope = kube::core::DynamicResourceScope>,
{
    let apis = match namespaces {
        None => vec![Api::all_with(client.clone(), ar)],
        Some(list) => list
            .iter()
            .map(|ns| Api::namespaced_with(client.clone(), ns, ar))
            .collect(),
    };
    Watches { apis }
}

impl<K> Watches<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    /// Starts the watches afresh, each event tagged with its watch's index.
    fn start(&self, listing: Listing) -> SelectAll<BoxStream<'static, (usize, WatchItem<K>)>> {
        let config = match listing {
            Listing::Stream => watcher::Config::default().streaming_lists(),
            // From etcd, page by page: a list at any resourceVersion comes from the watch
            // cache, which may ignore the page size and answer all at once.
            Listing::Pages => watcher::Config {
                page_size: Some(PAGE),
                ..watcher::Config::default()
            },
        };
        select_all(self.apis.iter().enumerate().map(|(i, api)| {
            watcher(api.clone(), config.clone())
                .default_backoff()
                .map(move |event| (i, event))
                .boxed()
        }))
    }
}

type WatchItem<K> = Result<watcher::Event<K>, watcher::Error>;

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

    /// An object too large to read is left out, its earlier series removed, counted and
    /// logged once however often it changes, and exported again once it is small enough.
    #[test]
    fn a_too_large_object_is_skipped_counted_once_and_back_when_smaller() {
        use super::super::object::Object;
        let registry = Registry::new();
        let families = Families::register(&registry, collector::Families::register(&registry));
        let mut kept = Kept::new("integrations", 10, families.clone());
        let mut obj = Object::<serde::de::IgnoredAny, serde::de::IgnoredAny>::default();
        obj.metadata.uid = Some("u-1".into());
        let skipped = || {
            families.skipped.get(&Skipped {
                kind: "integrations".into(),
                reason: "too_large".into(),
            })
        };
        let seen = || {
            families.objects.get(&Kind {
                kind: "integrations".into(),
            })
        };
        assert!(kept.admit(0, &obj).is_some());
        assert_eq!(
            kept.skip(0, &obj),
            Some(metrics::key("u-1")),
            "its series go"
        );
        assert_eq!(kept.skip(0, &obj), None);
        assert_eq!(skipped(), 1, "counted once");
        assert_eq!(seen(), Some(1.0), "still an object watched");
        assert!(kept.admit(0, &obj).is_some(), "read again once smaller");
        assert_eq!(kept.skip(0, &obj), Some(metrics::key("u-1")));
        assert_eq!(skipped(), 2);
        assert_eq!(kept.remove(0, &obj), None);
        assert_eq!(seen(), Some(0.0));
    }
}
