//! The one registry, the typed family handles collectors write through, and the exposition cache.
//!
//! Each collector declares its own families (in its own module) and registers them here. Every
//! write through a handle that changes what would be served bumps one change counter, so the
//! cache cannot be left stale by a writer that forgot to say so: [`Registry::snapshot`] encodes
//! (and gzips, when asked) at most once per change, and repeated scrapes of an unchanged state
//! cost a pointer copy.

mod objects;
mod openmetrics;

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use bytes::Bytes;
use prometheus::core::{Collector, Desc};

use crate::status::Board;

pub use objects::{Key, Note, ObjectGauges, Objects, Part, Render, key};
pub use openmetrics::{Format, negotiate, qvalue};
use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, TextEncoder,
};

/// The label names of a family and, for one series, its values in the same order. Implement it
/// with [`labels!`](crate::labels): names and values then come from one struct, so a series with
/// the wrong labels does not compile.
pub trait Labels {
    const NAMES: &'static [&'static str];
    fn values(&self) -> Vec<&str>;
}

/// The empty label set, for families of one series.
impl Labels for () {
    const NAMES: &'static [&'static str] = &[];
    fn values(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// Declares a label set: a struct of `String` fields whose names are the label names. A field
/// whose label name is a Rust keyword is renamed: `{ kind = "type" }`.
#[macro_export]
macro_rules! labels {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($field:ident $(= $label:literal)?),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis struct $name {
            $(pub $field: String,)+
        }

        impl $crate::metrics::Labels for $name {
            const NAMES: &'static [&'static str] = &[$($crate::labels!(@name $field $($label)?)),+];
            fn values(&self) -> Vec<&str> {
                vec![$(self.$field.as_str()),+]
            }
        }
    };
    (@name $field:ident $label:literal) => { $label };
    (@name $field:ident) => { stringify!($field) };
}

/// The count of changes to what the registry serves (and to what the status page shows); the
/// caches of both are keyed by it.
#[derive(Clone, Default)]
pub(crate) struct Changes(Arc<AtomicU64>);

impl Changes {
    pub(crate) fn bump(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// A family of float gauges with the label set `L`.
pub struct Gauges<L> {
    vec: GaugeVec,
    name: Arc<str>,
    changes: Changes,
    labels: PhantomData<fn(&L)>,
}

impl<L> Clone for Gauges<L> {
    fn clone(&self) -> Self {
        Self {
            vec: self.vec.clone(),
            name: self.name.clone(),
            changes: self.changes.clone(),
            labels: PhantomData,
        }
    }
}

impl<L: Labels> Gauges<L> {
    pub fn set(&self, labels: &L, value: f64) {
        set_gauge(&self.vec, &labels.values(), value, &self.changes);
    }

    pub fn remove(&self, labels: &L) {
        if self.vec.remove_label_values(&labels.values()).is_ok() {
            self.changes.bump();
        }
    }

    /// Removes every series of the family (an info family before its one series is replaced).
    pub fn clear(&self) {
        self.vec.reset();
        self.changes.bump();
    }

    /// The value of one series, if it exists (for tests and for callers that compare).
    pub fn get(&self, labels: &L) -> Option<f64> {
        let values = labels.values();
        self.vec
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .find(|m| {
                let mut pairs: Vec<(&str, &str)> = L::NAMES
                    .iter()
                    .copied()
                    .zip(values.iter().copied())
                    .collect();
                pairs.sort_unstable();
                m.get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .eq(pairs)
            })
            .map(|m| m.get_gauge().get_value())
    }

    /// This family without its label type, for code that tracks series of several families.
    pub fn erased(&self) -> ErasedGauges {
        ErasedGauges {
            vec: self.vec.clone(),
            name: self.name.clone(),
            changes: self.changes.clone(),
        }
    }
}

/// A gauge family whose label values are plain strings, in the family's label order.
#[derive(Clone)]
pub struct ErasedGauges {
    vec: GaugeVec,
    name: Arc<str>,
    changes: Changes,
}

impl ErasedGauges {
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn set(&self, values: &[&str], value: f64) {
        set_gauge(&self.vec, values, value, &self.changes);
    }

    pub fn remove(&self, values: &[&str]) {
        if self.vec.remove_label_values(values).is_ok() {
            self.changes.bump();
        }
    }
}

fn set_gauge(vec: &GaugeVec, values: &[&str], value: f64, changes: &Changes) {
    let gauge = vec.with_label_values(values);
    // A new series starts at 0, and the prometheus crate cannot tell a new series from an old
    // one: so setting 0 over 0 counts as a change too (one needless encode, never a stale body).
    if gauge.get().to_bits() != value.to_bits() || value == 0.0 {
        gauge.set(value);
        changes.bump();
    }
}

/// A family of integer counters with the label set `L`.
pub struct Counters<L> {
    vec: IntCounterVec,
    changes: Changes,
    labels: PhantomData<fn(&L)>,
}

impl<L> Clone for Counters<L> {
    fn clone(&self) -> Self {
        Self {
            vec: self.vec.clone(),
            changes: self.changes.clone(),
            labels: PhantomData,
        }
    }
}

impl<L: Labels> Counters<L> {
    pub fn inc_by(&self, labels: &L, n: u64) {
        self.vec.with_label_values(&labels.values()).inc_by(n);
        self.changes.bump();
    }

    pub fn inc(&self, labels: &L) {
        self.inc_by(labels, 1);
    }

    pub fn get(&self, labels: &L) -> u64 {
        self.vec.with_label_values(&labels.values()).get()
    }

    /// The counts summed per value of the label `name` (over the family's other labels).
    pub fn sum_by(&self, name: &str) -> BTreeMap<String, u64> {
        let mut sums = BTreeMap::new();
        for m in self.vec.collect().iter().flat_map(|f| f.get_metric()) {
            let value = m.get_label().iter().find(|l| l.name() == name);
            let key = value.map(|l| l.value().to_string()).unwrap_or_default();
            *sums.entry(key).or_default() += m.get_counter().get_value() as u64;
        }
        sums
    }
}

/// A family of histograms with the label set `L`.
pub struct Histograms<L> {
    vec: HistogramVec,
    changes: Changes,
    labels: PhantomData<fn(&L)>,
}

impl<L> Clone for Histograms<L> {
    fn clone(&self) -> Self {
        Self {
            vec: self.vec.clone(),
            changes: self.changes.clone(),
            labels: PhantomData,
        }
    }
}

impl<L: Labels> Histograms<L> {
    pub fn observe(&self, labels: &L, value: f64) {
        self.vec.with_label_values(&labels.values()).observe(value);
        self.changes.bump();
    }
}

/// Families whose samples a collector computes whole (upstream histograms, counters read from
/// the kernel or the kubelet): the prometheus crate cannot set a counter or a histogram to a
/// given value, so the collector hands over finished families and this serves them.
#[derive(Clone)]
pub struct Mirror {
    descs: Arc<Vec<Desc>>,
    families: Arc<Mutex<Vec<MetricFamily>>>,
    changes: Changes,
}

impl Mirror {
    /// Replaces everything this mirror serves.
    pub fn set(&self, families: Vec<MetricFamily>) {
        let mut current = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        if *current != families {
            *current = families;
            self.changes.bump();
        }
    }
}

impl Collector for Mirror {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.families
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// One family's name and help, as a collector declares it.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
}

impl Family {
    /// A family of the given type holding `metrics`; its name and help are this declaration's.
    pub fn with(self, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
        let mut f = MetricFamily::default();
        f.set_name(self.name.to_string());
        f.set_help(self.help.to_string());
        f.set_field_type(kind);
        f.set_metric(metrics);
        f
    }
}

/// A label pair of a hand-built [`Metric`].
pub fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

/// A family without labels has one series, served (at 0) from the start, as a plain gauge or
/// counter is: `create` makes it. A labelled family has series only once they are written.
fn served_from_start<L: Labels>(create: impl FnOnce()) {
    if L::NAMES.is_empty() {
        create();
    }
}

/// An encoded exposition of one state, in parts: the registry's own families, the blocks of
/// families rendered per object, then the upstream's pass-through text. Each part is shared
/// with the state it came from rather than copied (the pass-through can be megabytes), and each
/// keeps its gzip member once made.
pub struct Snapshot {
    pub(crate) parts: Vec<Part>,
    /// The bodies as served, made once: small parts joined, so that a response is a few hundred
    /// writes at most rather than one per part; packed parts stay packed until written.
    text: OnceLock<Vec<Piece>>,
    gzip: OnceLock<Vec<Bytes>>,
}

/// A piece of a plain body: bytes, or a part held packed, unpacked only as it is written (so a
/// scrape without gzip does not hold the whole exposition unpacked).
#[derive(Clone)]
pub enum Piece {
    Ready(Bytes),
    Packed(Part),
}

impl Piece {
    pub fn len(&self) -> usize {
        match self {
            Piece::Ready(b) => b.len(),
            Piece::Packed(p) => p.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> Bytes {
        match self {
            Piece::Ready(b) => b.clone(),
            Piece::Packed(p) => p.text(),
        }
    }
}

impl Snapshot {
    fn new(parts: Vec<Part>) -> Self {
        Self {
            parts,
            text: OnceLock::new(),
            gzip: OnceLock::new(),
        }
    }

    /// The text, in pieces.
    pub fn texts(&self) -> &[Piece] {
        self.text.get_or_init(|| {
            let mut pieces = Vec::new();
            let mut plain = Vec::new();
            // A joined part is written member by member, its packed blocks as they are.
            let members = self
                .parts
                .iter()
                .flat_map(|p| p.members().unwrap_or(std::slice::from_ref(p)));
            for part in members {
                if part.is_packed() {
                    pieces.extend(coalesce(plain.drain(..)).into_iter().map(Piece::Ready));
                    pieces.push(Piece::Packed(part.clone()));
                } else {
                    plain.push(part.text());
                }
            }
            if !plain.is_empty() || pieces.is_empty() {
                pieces.extend(coalesce(plain.into_iter()).into_iter().map(Piece::Ready));
            }
            pieces
        })
    }

    /// The whole text in one buffer (a copy when there are several pieces).
    pub fn text(&self) -> Bytes {
        match self.texts() {
            [Piece::Ready(one)] => one.clone(),
            pieces => Bytes::from(pieces.iter().flat_map(|p| p.bytes()).collect::<Vec<u8>>()),
        }
    }

    /// The gzip form in chunks: a member per part (made at most once per part), which a gzip
    /// reader reads as one stream.
    pub fn gzip(&self) -> &[Bytes] {
        self.gzip
            .get_or_init(|| coalesce(self.parts.iter().map(Part::gzip)))
    }
}

/// Parts of `SHARE_BYTES` or more are kept as they are; runs of smaller ones are joined into
/// chunks of about `CHUNK_BYTES`.
///
/// Sharing rather than copying matters under churn: at 10,000 objects the per-object blocks
/// are ~20 KiB each and 8 MiB together, and copying them into each new snapshot left the
/// allocator holding 6 MiB more after a few minutes of changes with plain scrapes.
fn coalesce(parts: impl Iterator<Item = Bytes>) -> Vec<Bytes> {
    const SHARE_BYTES: usize = 4 * 1024;
    const CHUNK_BYTES: usize = 64 * 1024;
    // Shrunk to its length: a chunk lives as long as its snapshot, and a grown Vec has up to
    // half its capacity spare.
    let chunk = |small: &mut Vec<u8>| Bytes::from(std::mem::take(small).into_boxed_slice());
    let mut out = Vec::new();
    let mut small = Vec::new();
    for part in parts {
        if part.len() >= SHARE_BYTES {
            if !small.is_empty() {
                out.push(chunk(&mut small));
            }
            out.push(part);
        } else {
            small.extend_from_slice(&part);
            if small.len() >= CHUNK_BYTES {
                out.push(chunk(&mut small));
            }
        }
    }
    if !small.is_empty() || out.is_empty() {
        out.push(chunk(&mut small));
    }
    out
}

/// A snapshot and the change count it was made at.
type Cached = (u64, Arc<Snapshot>);

/// The one explicit registry of a process: what it serves on /metrics.
#[derive(Default)]
pub struct Registry {
    inner: prometheus::Registry,
    /// Every family registered, with its variable labels (the docs list them).
    families: Mutex<BTreeMap<String, Vec<String>>>,
    changes: Changes,
    /// The last snapshot per [`Format`], and the change count it was made at.
    cache: Arc<Mutex<[Option<Cached>; 2]>>,
    /// Families rendered per object, group by group.
    groups: Mutex<Vec<Objects>>,
    /// Upstream families passed through, already stripped of names registered here: as text
    /// and as OpenMetrics.
    passthrough: RwLock<Option<[Part; 2]>>,
    /// What the status page shows that no series carries; its writes count as changes too.
    board: OnceLock<Board>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts changes to what is served or shown: equal counts, same /metrics, same status page.
    pub fn version(&self) -> u64 {
        self.changes.get()
    }

    /// The status page's notes, whose writes invalidate the same caches as a series' do.
    pub fn board(&self) -> &Board {
        self.board.get_or_init(|| Board::new(self.changes.clone()))
    }

    fn register(&self, collector: Box<dyn Collector>) {
        let mut families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        for d in collector.desc() {
            families.insert(d.fq_name.clone(), d.variable_labels.clone());
        }
        self.inner
            .register(collector)
            .expect("each family is registered once, with a valid static name");
        self.changes.bump();
    }

    pub fn gauges<L: Labels>(&self, family: Family) -> Gauges<L> {
        let vec = GaugeVec::new(Opts::new(family.name, family.help), L::NAMES)
            .expect("family names and labels are static and valid");
        served_from_start::<L>(|| vec.with_label_values::<&str>(&[]).set(0.0));
        self.register(Box::new(vec.clone()));
        Gauges {
            vec,
            name: family.name.into(),
            changes: self.changes.clone(),
            labels: PhantomData,
        }
    }

    pub fn counters<L: Labels>(&self, family: Family) -> Counters<L> {
        let vec = IntCounterVec::new(Opts::new(family.name, family.help), L::NAMES)
            .expect("family names and labels are static and valid");
        served_from_start::<L>(|| vec.with_label_values::<&str>(&[]).reset());
        self.register(Box::new(vec.clone()));
        Counters {
            vec,
            changes: self.changes.clone(),
            labels: PhantomData,
        }
    }

    pub fn histograms<L: Labels>(&self, family: Family, buckets: Vec<f64>) -> Histograms<L> {
        let vec = HistogramVec::new(
            HistogramOpts::new(family.name, family.help).buckets(buckets),
            L::NAMES,
        )
        .expect("family names, labels and buckets are static and valid");
        served_from_start::<L>(|| {
            vec.with_label_values::<&str>(&[]);
        });
        self.register(Box::new(vec.clone()));
        Histograms {
            vec,
            changes: self.changes.clone(),
            labels: PhantomData,
        }
    }

    /// A counter whose increments do not invalidate the cached body: it is served as of the
    /// last encode (the exporter's scrape count, which would otherwise force an encode per scrape).
    pub fn uncached_counter(&self, family: Family) -> prometheus::IntCounter {
        let counter = prometheus::IntCounter::new(family.name, family.help)
            .expect("family names are static and valid");
        self.register(Box::new(counter.clone()));
        counter
    }

    /// A family that is always 1, its labels saying what is running (`*_build_info`).
    pub fn info<L: Labels>(&self, family: Family, labels: &L) {
        self.gauges::<L>(family).set(labels, 1.0);
    }

    /// Families served from finished samples; `families` lists each with its label names.
    pub fn mirror(&self, families: &[(Family, &[&str])]) -> Mirror {
        let descs = families
            .iter()
            .map(|(f, labels)| {
                Desc::new(
                    f.name.to_string(),
                    f.help.to_string(),
                    labels.iter().map(|l| l.to_string()).collect(),
                    Default::default(),
                )
                .expect("family names and labels are static and valid")
            })
            .collect();
        self.mirror_descs(descs)
    }

    /// A mirror of families described elsewhere (the prometheus crate's process collector).
    pub fn mirror_descs(&self, descs: Vec<Desc>) -> Mirror {
        let mirror = Mirror {
            descs: Arc::new(descs),
            families: Arc::default(),
            changes: self.changes.clone(),
        };
        self.register(Box::new(mirror.clone()));
        mirror
    }

    /// A new group of families rendered per object; declare its families with
    /// [`Registry::object_gauges`].
    pub fn objects(&self) -> Objects {
        let cache = self.cache.clone();
        let drop_cached = Arc::new(move || {
            *cache.lock().unwrap_or_else(PoisonError::into_inner) = [None, None];
        });
        let objects = Objects::new(self.changes.clone(), drop_cached);
        self.groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(objects.clone());
        objects
    }

    /// A gauge family of the group `objects`, its series written per object.
    pub fn object_gauges<L: Labels>(&self, objects: &Objects, family: Family) -> ObjectGauges<L> {
        let mut families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        let labels = L::NAMES.iter().map(|l| l.to_string()).collect();
        let clash = families.insert(family.name.to_string(), labels);
        assert!(clash.is_none(), "family {} registered twice", family.name);
        objects.family(family)
    }

    /// Every family registered, with its variable labels.
    pub fn families(&self) -> BTreeMap<String, Vec<String>> {
        self.families
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether a family of this name is registered here (an upstream one of that name is dropped).
    pub fn has_family(&self, name: &str) -> bool {
        self.families
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(name)
    }

    /// Sets the upstream families served after the registry's own: `text` in the text format
    /// and the same families in OpenMetrics (without `# EOF`).
    pub fn set_passthrough(&self, text: Bytes, openmetrics: Bytes) {
        let mut current = self
            .passthrough
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let unchanged = match &*current {
            Some([part, _]) => part.text() == text,
            None => text.is_empty(),
        };
        if !unchanged {
            // The old text is freed before the next snapshot is assembled.
            *current = (!text.is_empty()).then(|| [Part::new(text), Part::new(openmetrics)]);
            self.changes.bump();
        }
    }

    /// The text-format exposition of the current state (see [`Registry::snapshot_in`]).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot_in(Format::Text)
    }

    /// The exposition of the current state in `format`, assembled once per change and format.
    pub fn snapshot_in(&self, format: Format) -> Arc<Snapshot> {
        let changes = self.changes.get();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let cached = &mut cache[format.index()];
        if let Some((seen, snap)) = cached.as_ref()
            && *seen == changes
        {
            return snap.clone();
        }
        // The stale one goes first: it may share no block with the new one.
        *cached = None;
        let snap = Arc::new(self.assemble(format));
        *cached = Some((changes, snap.clone()));
        snap
    }

    /// Encodes the registry's own families, then appends the per-object groups' blocks and the
    /// upstream's families as they are (the blocks are shared by both formats).
    fn assemble(&self, format: Format) -> Snapshot {
        let families = self.inner.gather();
        let mut own = Vec::with_capacity(16 * 1024);
        match format {
            Format::Text => TextEncoder::new()
                .encode(&families, &mut own)
                .expect("the text encoder writes into a Vec and our families are well formed"),
            Format::OpenMetrics => openmetrics::encode(&families, &mut own),
        }
        let own = without_nul(own);
        // At the default level: it is re-compressed only after a change, and at 100 objects it is
        // most of the body.
        let mut parts = vec![Part::block(Bytes::from(own.into_boxed_slice()))];
        for group in self
            .groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            group.parts(&mut parts, format);
        }
        let passthrough = self
            .passthrough
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|p| p[format.index()].clone());
        parts.extend(passthrough);
        if format == Format::OpenMetrics {
            parts.push(Part::new(Bytes::from_static(openmetrics::EOF)));
        }
        Snapshot::new(parts)
    }
}

/// The text format has no escape for NUL, and Prometheus's lexer takes one for the end of the
/// body. Label values set through the prometheus crate can come from outside the process (a
/// container's termination reason, a Lease's holder), and its encoder writes a NUL as it is: it
/// becomes U+FFFD, as in the objects' series.
fn without_nul(text: Vec<u8>) -> Vec<u8> {
    if !text.contains(&0) {
        return text;
    }
    let mut out = Vec::with_capacity(text.len() + 16);
    for b in text {
        match b {
            0 => out.extend_from_slice("\u{fffd}".as_bytes()),
            b => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::labels! {
        struct Probe { probe }
    }

    crate::labels! {
        struct Two { b, a, kind = "type" }
    }

    const G: Family = Family {
        name: "ksit_test_gauge",
        help: "A test gauge.",
    };

    fn text(r: &Registry) -> String {
        String::from_utf8(r.snapshot().text().to_vec()).expect("utf8")
    }

    #[test]
    fn every_write_that_changes_the_exposition_invalidates_the_cache() {
        let r = Registry::new();
        let g = r.gauges::<Probe>(G);
        let p = Probe {
            probe: "live".into(),
        };
        let empty = r.snapshot();
        g.set(&p, 0.0);
        let created = r.snapshot();
        assert!(!Arc::ptr_eq(&empty, &created), "a new series is a change");
        assert!(text(&r).contains("\nksit_test_gauge{probe=\"live\"} 0\n"));
        g.set(&p, 1.0);
        let one = r.snapshot();
        assert!(!Arc::ptr_eq(&created, &one));
        g.set(&p, 1.0);
        assert!(Arc::ptr_eq(&one, &r.snapshot()), "same value, same body");
        g.remove(&p);
        let removed = r.snapshot();
        assert!(!Arc::ptr_eq(&one, &removed));
        assert!(!text(&r).contains("ksit_test_gauge{"), "{}", text(&r));
        g.remove(&p);
        assert!(Arc::ptr_eq(&removed, &r.snapshot()), "nothing to remove");
        r.set_passthrough(Bytes::from_static(b"x 1\n"), Bytes::from_static(b"x 1\n"));
        assert!(!Arc::ptr_eq(&removed, &r.snapshot()));
    }

    #[test]
    fn a_nul_in_a_label_value_is_never_served() {
        let r = Registry::new();
        let g = r.gauges::<Probe>(G);
        let p = Probe {
            probe: "Error\0more".into(),
        };
        g.set(&p, 1.0);
        let body = r.snapshot().text().to_vec();
        assert!(!body.contains(&0));
        assert!(text(&r).contains("\nksit_test_gauge{probe=\"Error\u{fffd}more\"} 1\n"));
        g.remove(&p);
        assert!(
            !text(&r).contains("ksit_test_gauge{"),
            "the same value removes it"
        );
    }

    #[test]
    fn labels_come_from_the_struct_in_its_order() {
        let r = Registry::new();
        let g = r.gauges::<Two>(G);
        let two = Two {
            b: "1".into(),
            a: "2".into(),
            kind: "t".into(),
        };
        g.set(&two, 3.0);
        assert_eq!(g.get(&two), Some(3.0));
        assert_eq!(
            r.families().get("ksit_test_gauge"),
            Some(&vec!["b".to_string(), "a".to_string(), "type".to_string()])
        );
        assert!(text(&r).contains("\nksit_test_gauge{a=\"2\",b=\"1\",type=\"t\"} 3\n"));
    }

    #[test]
    fn mirror_serves_finished_families_and_tracks_changes() {
        let r = Registry::new();
        const C: Family = Family {
            name: "ksit_test_total",
            help: "A test counter.",
        };
        let m = r.mirror(&[(C, &[])]);
        let before = r.snapshot();
        let mut counter = prometheus::proto::Counter::default();
        counter.set_value(1.5);
        let mut metric = Metric::default();
        metric.set_counter(counter);
        let families = vec![C.with(MetricType::COUNTER, vec![metric])];
        m.set(families.clone());
        let after = r.snapshot();
        assert!(!Arc::ptr_eq(&before, &after));
        assert!(text(&r).contains("\nksit_test_total 1.5\n"), "{}", text(&r));
        m.set(families);
        assert!(Arc::ptr_eq(&after, &r.snapshot()));
    }

    #[test]
    fn families_without_labels_are_served_from_the_start() {
        let r = Registry::new();
        r.gauges::<()>(G);
        r.counters::<()>(Family {
            name: "ksit_test_total",
            help: "A test counter.",
        });
        r.gauges::<Probe>(Family {
            name: "ksit_test_labelled",
            help: "A labelled gauge.",
        });
        let samples: Vec<String> = text(&r)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(String::from)
            .collect();
        assert_eq!(samples, ["ksit_test_gauge 0", "ksit_test_total 0"]);
    }

    #[test]
    fn small_parts_are_joined_and_large_ones_shared() {
        let large = Bytes::from(vec![b'x'; 4 * 1024]);
        let parts = [
            Bytes::from_static(b"a\n"),
            Bytes::from_static(b"b\n"),
            large.clone(),
            Bytes::from_static(b"c\n"),
        ];
        let chunks = coalesce(parts.into_iter());
        assert_eq!(chunks.len(), 3);
        assert_eq!(&chunks[0][..], b"a\nb\n");
        assert_eq!(chunks[1].as_ptr(), large.as_ptr(), "not copied");
        assert_eq!(&chunks[2][..], b"c\n");
        assert_eq!(coalesce(std::iter::empty()), [Bytes::new()]);
    }

    #[test]
    fn passthrough_follows_own_families() {
        let r = Registry::new();
        r.gauges::<()>(G).set(&(), 1.0);
        let upstream =
            Bytes::from_static(b"# TYPE workqueue_depth gauge\nworkqueue_depth{name=\"a\"} 3\n");
        r.set_passthrough(upstream.clone(), upstream);
        let text = text(&r);
        assert!(text.ends_with("workqueue_depth{name=\"a\"} 3\n"), "{text}");
        assert!(text.starts_with("# HELP ksit_test_gauge A test gauge.\n"));
        assert!(r.has_family("ksit_test_gauge"));
        assert!(!r.has_family("workqueue_depth"));
    }
}
