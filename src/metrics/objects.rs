//! Series rendered per object, as kube-state-metrics' metrics store keeps them: each watched
//! object's lines are rendered once when the object changes, kept under its key (its UID), and
//! dropped when it is deleted, so a change costs the same at 10 objects or 10,000.
//!
//! The text format wants each family's lines together, so an object's lines are kept per family
//! and the exposition is assembled from blocks: objects are spread over [`BUCKETS`] buckets by
//! a hash of their key, and each bucket keeps, per family, the concatenation of its objects'
//! lines. A family is served as runs of consecutive buckets' blocks, each run one gzip member of
//! at least [`RUN_BYTES`] (gzip members may be concatenated: Go's reader, and so Prometheus's
//! scraper, reads them as one stream). A change rebuilds one bucket's blocks; a scrape after it
//! re-compresses only the runs holding them.

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::io::Write;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;

use super::openmetrics::{self, Format};
use super::{Changes, Family, Labels};

/// Buckets per group: at 10,000 objects a change re-renders ~150 objects' lines of a family.
const BUCKETS: usize = 64;

/// A gzip member holds at least this much of a family's text where the family has it. Each
/// member starts deflate afresh, with no window to refer back to: members of a bucket's block
/// each (1-2 KiB at 1,000 objects) made the gzip body 1.5x kube-state-metrics' one-stream body,
/// although the plain one is 0.6x. Twice deflate's 32 KiB window loses little to one stream,
/// and a change re-compresses at most twice this per family it touches (~1 ms).
const RUN_BYTES: usize = 64 * 1024;

/// A piece of the exposition and, made the first time a client asks, its gzip member.
#[derive(Clone)]
pub struct Part(Arc<Inner>);

struct Inner {
    text: Text,
    gzip: OnceLock<Bytes>,
    level: flate2::Compression,
}

enum Text {
    Plain(Bytes),
    /// LZ4-compressed (the objects' blocks: an eighth of their size, and read back at a
    /// gigabyte per second), `len` bytes once unpacked.
    Packed {
        lz4: Box<[u8]>,
        len: usize,
    },
    /// Other parts' texts one after the other (a run of a family's blocks), `len` bytes in all:
    /// one gzip member for all of them, with no copy of their text kept.
    Joined {
        parts: Box<[Part]>,
        len: usize,
    },
}

impl Part {
    /// A part that may be large (the upstream's text, megabytes): compressed fast.
    pub fn new(text: Bytes) -> Self {
        Self::with(Text::Plain(text), flate2::Compression::fast())
    }

    /// A part that changes seldom and is small (family headers, the registry's own
    /// families): compressed at the default level.
    pub(super) fn block(text: Bytes) -> Self {
        Self::with(Text::Plain(text), flate2::Compression::default())
    }

    /// A block of objects' series, held packed: compressed once per change of one of its
    /// objects, so worth the default level's better ratio.
    fn packed(text: &[u8]) -> Self {
        Self::with(
            Text::Packed {
                lz4: lz4_flex::block::compress(text).into_boxed_slice(),
                len: text.len(),
            },
            flate2::Compression::default(),
        )
    }

    /// A run of parts served as one gzip member; they are compressed once together, so at the
    /// default level.
    fn joined(parts: Vec<Part>) -> Self {
        let len = parts.iter().map(Part::len).sum();
        Self::with(
            Text::Joined {
                parts: parts.into_boxed_slice(),
                len,
            },
            flate2::Compression::default(),
        )
    }

    fn with(text: Text, level: flate2::Compression) -> Self {
        Self(Arc::new(Inner {
            text,
            gzip: OnceLock::new(),
            level,
        }))
    }

    /// The text's length.
    pub fn len(&self) -> usize {
        match &self.0.text {
            Text::Plain(b) => b.len(),
            Text::Packed { len, .. } | Text::Joined { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the text is held packed (and [`Part::text`] unpacks a copy).
    pub fn is_packed(&self) -> bool {
        matches!(self.0.text, Text::Packed { .. })
    }

    /// The parts a joined part is made of, in order (a plain body writes them one by one).
    pub fn members(&self) -> Option<&[Part]> {
        match &self.0.text {
            Text::Joined { parts, .. } => Some(parts),
            _ => None,
        }
    }

    /// The text; a packed or joined part's is made anew on each call.
    pub fn text(&self) -> Bytes {
        match &self.0.text {
            Text::Plain(b) => b.clone(),
            Text::Packed { lz4, len } => Bytes::from(
                lz4_flex::block::decompress(lz4, *len)
                    .expect("the block was packed here, at this length"),
            ),
            Text::Joined { parts, len } => {
                let mut text = Vec::with_capacity(*len);
                parts.iter().for_each(|p| text.extend_from_slice(&p.text()));
                Bytes::from(text)
            }
        }
    }

    /// The text as one gzip member.
    pub fn gzip(&self) -> Bytes {
        self.0
            .gzip
            .get_or_init(|| {
                let mut enc = flate2::write::GzEncoder::new(
                    Vec::with_capacity(self.len() / 4 + 32),
                    self.0.level,
                );
                // A joined part's members are unpacked one at a time, not all at once.
                let written = match self.members() {
                    Some(parts) => parts.iter().try_for_each(|p| enc.write_all(&p.text())),
                    None => enc.write_all(&self.text()),
                };
                // Shrunk to its length: the part may live for hours, and the guess above is
                // often 4x what deflate needs.
                written
                    .and_then(|()| enc.finish())
                    .map(|gz| Bytes::from(gz.into_boxed_slice()))
                    .expect("gzip into a Vec cannot fail")
            })
            .clone()
    }
}

/// A gauge family whose series belong to objects, with the label set `L`.
pub struct ObjectGauges<L> {
    index: usize,
    name: &'static str,
    /// Label positions in name order: the text encoder writes labels sorted by name.
    order: Arc<[usize]>,
    labels: PhantomData<fn(&L)>,
}

impl<L> Clone for ObjectGauges<L> {
    fn clone(&self) -> Self {
        Self {
            index: self.index,
            name: self.name,
            order: self.order.clone(),
            labels: PhantomData,
        }
    }
}

/// What the status page shows of one object: the fields of its table row, written with the
/// series (the object is not kept, so this is the page's only copy), and its rank: the page
/// lists low ranks first and counts each. The fields are kept joined, and the row's markup made
/// only for the rows a page shows: at 100,000 objects the markup alone was 25 MB.
#[derive(Clone)]
pub struct Note {
    pub rank: u8,
    /// Separated by NUL, which no field holds (each becomes U+FFFD).
    fields: Box<str>,
    row: fn(&[&str]) -> String,
}

impl Note {
    pub fn new(rank: u8, row: fn(&[&str]) -> String, fields: &[&str]) -> Self {
        let mut joined = String::with_capacity(fields.iter().map(|f| f.len() + 1).sum());
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                joined.push('\0');
            }
            joined.extend(f.chars().map(|c| if c == '\0' { '\u{fffd}' } else { c }));
        }
        Self {
            rank,
            fields: joined.into(),
            row,
        }
    }

    /// The fields, joined: in the order the row shows them, so it sorts rows within a rank.
    pub fn key(&self) -> &str {
        &self.fields
    }

    /// The table row's markup.
    pub fn row(&self) -> String {
        let fields: Vec<&str> = self.fields.split('\0').collect();
        (self.row)(&fields)
    }
}

impl PartialEq for Note {
    fn eq(&self, other: &Self) -> bool {
        // The markup follows from the fields: a note of another kind has other fields.
        self.rank == other.rank && self.fields == other.fields
    }
}

impl Eq for Note {}

impl std::fmt::Debug for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Note")
            .field("rank", &self.rank)
            .field("fields", &self.fields)
            .finish()
    }
}

/// One object's lines while they are written, per family, and its note.
#[derive(Default)]
pub struct Render {
    families: Vec<Vec<u8>>,
    note: Option<Note>,
}

impl Render {
    /// Sets what the status page shows of this object.
    pub fn note(&mut self, note: Note) {
        self.note = Some(note);
    }

    pub fn set<L: Labels>(&mut self, family: &ObjectGauges<L>, labels: &L, value: f64) {
        if self.families.len() <= family.index {
            self.families.resize_with(family.index + 1, Vec::new);
        }
        let line = &mut self.families[family.index];
        line.extend_from_slice(family.name.as_bytes());
        let values = labels.values();
        for (n, &i) in family.order.iter().enumerate() {
            line.push(if n == 0 { b'{' } else { b',' });
            line.extend_from_slice(L::NAMES[i].as_bytes());
            line.extend_from_slice(b"=\"");
            escape_into(line, values[i]);
            line.push(b'"');
        }
        if !family.order.is_empty() {
            line.push(b'}');
        }
        line.push(b' ');
        write_value(line, value);
        line.push(b'\n');
    }

    /// Writes one series per state, 1 for `current` and 0 for the others; `labels` makes the
    /// label set of each state.
    pub fn one_hot<L: Labels>(
        &mut self,
        family: &ObjectGauges<L>,
        states: &[&str],
        current: &str,
        labels: impl Fn(&str) -> L,
    ) {
        for state in states {
            self.set(
                family,
                &labels(state),
                f64::from(u8::from(*state == current)),
            );
        }
    }

    fn finish(self) -> Rendered {
        let mut text = Vec::with_capacity(self.families.iter().map(Vec::len).sum());
        let mut ends = Vec::with_capacity(self.families.len());
        for f in &self.families {
            text.extend_from_slice(f);
            ends.push(u32::try_from(text.len()).expect("one object's lines are far below 4 GiB"));
        }
        Rendered {
            text: text.into(),
            ends: ends.into(),
            note: self.note,
        }
    }
}

/// Label values escaped as the text format wants them. The format has no escape for NUL, and
/// Prometheus's lexer takes one for the end of the body, so an object's field holding one would
/// cut every scrape short: it becomes U+FFFD.
pub(super) fn escape_into(out: &mut Vec<u8>, value: &str) {
    for b in value.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            0 => out.extend_from_slice("\u{fffd}".as_bytes()),
            _ => out.push(b),
        }
    }
}

/// A sample value as the prometheus crate's text encoder writes it, infinities as `+Inf`/`-Inf`.
pub(super) fn write_value(out: &mut Vec<u8>, value: f64) {
    if value == f64::INFINITY {
        out.extend_from_slice(b"+Inf");
    } else if value == f64::NEG_INFINITY {
        out.extend_from_slice(b"-Inf");
    } else {
        write!(out, "{value}").expect("writing into a Vec cannot fail");
    }
}

/// One object's lines, family after family; `ends[i]` is where family `i`'s lines end.
#[derive(PartialEq, Eq)]
struct Rendered {
    text: Box<[u8]>,
    ends: Box<[u32]>,
    note: Option<Note>,
}

impl Rendered {
    /// A hash of the lines, to tell an unchanged object from a changed one once its lines are
    /// packed in the blocks.
    fn hash(&self) -> u64 {
        let mut h = siphasher::sip::SipHasher13::new();
        h.write(&self.text);
        for e in &*self.ends {
            h.write_u32(*e);
        }
        h.finish()
    }

    fn family(&self, index: usize) -> &[u8] {
        let end = self
            .ends
            .get(index)
            .map_or(self.text.len(), |&e| e as usize);
        let start = match index {
            0 => 0,
            i => self
                .ends
                .get(i - 1)
                .map_or(self.text.len(), |&e| e as usize),
        };
        &self.text[start..end]
    }
}

/// An object's key in its group: a 128-bit hash of its UID, so that 100,000 objects' keys cost
/// 1.6 MB rather than a string each.
pub type Key = u128;

/// The key of an object named `name` (its UID).
pub fn key(name: &str) -> Key {
    use siphasher::sip128::{Hasher128, SipHasher13};
    let mut h = SipHasher13::new();
    h.write(name.as_bytes());
    h.finish128().as_u128()
}

/// One family's lines of a bucket's objects, in key order, and where each object's begin
/// (`starts[i]`; the last entry is the end), so that the lines are held once, packed in the
/// block served, rather than once per object and again per block.
#[derive(Default)]
struct Block {
    part: Option<Part>,
    starts: Vec<u32>,
}

impl Block {
    /// The text, unpacked, to fold changes into.
    fn text(&self) -> Bytes {
        self.part.as_ref().map(Part::text).unwrap_or_default()
    }

    fn lines<'a>(&self, text: &'a [u8], i: usize) -> &'a [u8] {
        match self.starts.get(i..i + 2) {
            Some(&[a, b]) => &text[a as usize..b as usize],
            _ => &[],
        }
    }
}

/// A bucket's objects: their keys (sorted), notes and blocks, and the changes not yet folded
/// into the blocks. A change is folded once the pending lines pass an eighth of the blocks'
/// (so each line is copied a bounded number of times, and pending changes stay a small part of
/// memory), or before the bucket is served.
#[derive(Default)]
struct Bucket {
    keys: Vec<Key>,
    /// Of each object's lines ([`Rendered::hash`]).
    hashes: Vec<u64>,
    notes: Vec<Option<Note>>,
    blocks: Vec<Block>,
    bytes: usize,
    /// `None`: deleted.
    pending: BTreeMap<Key, Option<Rendered>>,
    pending_bytes: usize,
}

/// Pending lines below this are not worth a fold before a scrape asks for one.
const FOLD_BYTES: usize = 16 * 1024;

impl Bucket {
    fn position(&self, key: Key) -> Result<usize, usize> {
        self.keys.binary_search(&key)
    }

    /// Whether the object is here (as folded or pending) with these very lines; `Some(note)`
    /// (its current note) if so.
    fn same_series(&self, key: Key, new: &Rendered) -> Option<Option<&Note>> {
        if let Some(pending) = self.pending.get(&key) {
            let old = pending.as_ref()?;
            return (old.text == new.text && old.ends == new.ends).then_some(old.note.as_ref());
        }
        let i = self.position(key).ok()?;
        (self.hashes[i] == new.hash()).then_some(self.notes[i].as_ref())
    }

    fn contains(&self, key: Key) -> bool {
        match self.pending.get(&key) {
            Some(p) => p.is_some(),
            None => self.position(key).is_ok(),
        }
    }

    fn set_note(&mut self, key: Key, note: Option<Note>) {
        if let Some(Some(p)) = self.pending.get_mut(&key) {
            p.note = note;
        } else if let Ok(i) = self.position(key) {
            self.notes[i] = note;
        }
    }

    fn change(&mut self, key: Key, rendered: Option<Rendered>, families: usize) {
        self.pending_bytes += rendered.as_ref().map_or(0, |r| r.text.len()) + 64;
        self.pending.insert(key, rendered);
        if self.pending_bytes > FOLD_BYTES.max(self.bytes / 8) {
            self.fold(families);
        }
    }

    /// Merges the pending changes into the keys, notes and blocks: each block made anew at its
    /// exact size, since it lives until one of its objects changes.
    fn fold(&mut self, families: usize) {
        if self.pending.is_empty() && self.blocks.len() == families {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        // The new order: each old object, unless replaced or deleted, merged with the pending.
        enum From {
            Old(usize),
            New(Rendered),
        }
        let mut order: Vec<(Key, From)> = Vec::with_capacity(self.keys.len() + pending.len());
        let mut old = self.keys.iter().copied().enumerate().peekable();
        for (key, change) in pending {
            while let Some(&(i, k)) = old.peek() {
                if k >= key {
                    break;
                }
                order.push((k, From::Old(i)));
                old.next();
            }
            if old.peek().is_some_and(|&(_, k)| k == key) {
                old.next();
            }
            if let Some(r) = change {
                order.push((key, From::New(r)));
            }
        }
        order.extend(old.map(|(i, k)| (k, From::Old(i))));

        let mut blocks = Vec::with_capacity(families);
        let mut bytes = 0;
        for f in 0..families {
            let (old_block, old_text) = match self.blocks.get(f) {
                Some(b) => (Some(b), b.text()),
                None => (None, Bytes::new()),
            };
            fn lines<'a>(
                from: &'a From,
                f: usize,
                old: Option<&Block>,
                text: &'a [u8],
            ) -> &'a [u8] {
                match from {
                    From::Old(i) => old.map_or(&[][..], |b| b.lines(text, *i)),
                    From::New(r) => r.family(f),
                }
            }
            let of = |from| lines(from, f, old_block, &old_text);
            let len: usize = order.iter().map(|(_, from)| of(from).len()).sum();
            let mut text = Vec::with_capacity(len);
            let mut starts = Vec::with_capacity(order.len() + 1);
            for (_, from) in &order {
                starts
                    .push(u32::try_from(text.len()).expect("a bucket's family is far below 4 GiB"));
                text.extend_from_slice(of(from));
            }
            starts.push(u32::try_from(text.len()).expect("a bucket's family is far below 4 GiB"));
            bytes += text.len();
            blocks.push(Block {
                part: (!text.is_empty()).then(|| Part::packed(&text)),
                starts,
            });
        }
        let mut keys = Vec::with_capacity(order.len());
        let mut hashes = Vec::with_capacity(order.len());
        let mut notes = Vec::with_capacity(order.len());
        let mut old_notes = std::mem::take(&mut self.notes);
        for (key, from) in order {
            keys.push(key);
            match from {
                From::Old(i) => {
                    hashes.push(self.hashes[i]);
                    notes.push(old_notes[i].take());
                }
                From::New(r) => {
                    hashes.push(r.hash());
                    notes.push(r.note);
                }
            }
        }
        *self = Bucket {
            keys,
            hashes,
            notes,
            blocks,
            bytes,
            pending: BTreeMap::new(),
            pending_bytes: 0,
        };
    }

    fn notes(&self) -> impl Iterator<Item = &Note> {
        let pending = self
            .pending
            .values()
            .flatten()
            .filter_map(|r| r.note.as_ref());
        let folded = self
            .keys
            .iter()
            .zip(&self.notes)
            .filter(|(k, _)| !self.pending.contains_key(k))
            .filter_map(|(_, n)| n.as_ref());
        pending.chain(folded)
    }
}

struct Group {
    /// Each family's metadata lines, per [`Format`] (the series are the same in both).
    headers: Vec<[Part; 2]>,
    buckets: Vec<Bucket>,
    objects: usize,
    exported: bool,
    /// Per family and format, the runs last served: a run whose blocks are the same parts is
    /// served again, with its gzip member.
    runs: Vec<[Vec<Part>; 2]>,
}

/// A group of families whose series are rendered per object; the handle is shared by the
/// collectors that write them and by the registry that serves them.
#[derive(Clone)]
pub struct Objects {
    group: Arc<Mutex<Group>>,
    changes: Changes,
    /// Drops the registry's cached expositions.
    drop_cached: Arc<dyn Fn() + Send + Sync>,
}

impl Objects {
    pub(super) fn new(changes: Changes, drop_cached: Arc<dyn Fn() + Send + Sync>) -> Self {
        let group = Group {
            headers: Vec::new(),
            buckets: (0..BUCKETS).map(|_| Bucket::default()).collect(),
            objects: 0,
            exported: true,
            runs: Vec::new(),
        };
        Self {
            group: Arc::new(Mutex::new(group)),
            changes,
            drop_cached,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Group> {
        // Nothing panics while holding it, and a group is valid after any update.
        self.group.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn family<L: Labels>(&self, family: Family) -> ObjectGauges<L> {
        let mut group = self.lock();
        let text = format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n",
            name = family.name,
            help = family.help.replace('\\', "\\\\").replace('\n', "\\n"),
        );
        let mut om = Vec::new();
        openmetrics::header(&mut om, family.name, "gauge", family.help);
        group
            .headers
            .push([Part::block(Bytes::from(text)), Part::block(Bytes::from(om))]);
        let mut order: Vec<usize> = (0..L::NAMES.len()).collect();
        order.sort_by_key(|&i| L::NAMES[i]);
        ObjectGauges {
            index: group.headers.len() - 1,
            name: family.name,
            order: order.into(),
            labels: PhantomData,
        }
    }

    /// Replaces the series of the object named `name` with those of `render`.
    pub fn put(&self, name: &str, render: Render) {
        self.put_at(key(name), render);
    }

    /// Replaces the series of the object `key` with those of `render`.
    pub fn put_at(&self, key: Key, render: Render) {
        let rendered = render.finish();
        let mut group = self.lock();
        let families = group.headers.len();
        let bucket = &mut group.buckets[bucket_of(key)];
        if let Some(note) = bucket.same_series(key, &rendered) {
            // Only the page's note may differ: the blocks stay as they are.
            if note != rendered.note.as_ref() {
                bucket.set_note(key, rendered.note);
                drop(group);
                self.changes.bump();
            }
            return;
        }
        let new = !bucket.contains(key);
        bucket.change(key, Some(rendered), families);
        group.objects += usize::from(new);
        drop(group);
        self.changed();
    }

    /// Removes the series of the object named `name`, if it has any.
    pub fn delete(&self, name: &str) {
        self.delete_at(key(name));
    }

    /// Removes the series of the object `key`, if it has any.
    pub fn delete_at(&self, key: Key) {
        let mut group = self.lock();
        let families = group.headers.len();
        let bucket = &mut group.buckets[bucket_of(key)];
        if bucket.contains(key) {
            bucket.change(key, None, families);
            group.objects -= 1;
            drop(group);
            self.changed();
        }
    }

    /// A change of the series: the registry's cached expositions go at once, so that they hold
    /// no block that is being replaced (at 100,000 objects, a second copy of every line).
    fn changed(&self) {
        self.changes.bump();
        (self.drop_cached)();
    }

    /// Whether the group's series are served (a sidecar that does not lead keeps them unserved).
    pub fn set_exported(&self, exported: bool) {
        let mut group = self.lock();
        if group.exported != exported {
            group.exported = exported;
            self.changes.bump();
        }
    }

    /// Whether the group's series are served.
    pub fn exported(&self) -> bool {
        self.lock().exported
    }

    /// Calls `f` with the notes of all objects, in no particular order.
    pub fn with_notes<R>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &Note>) -> R) -> R {
        let group = self.lock();
        let mut notes = group.buckets.iter().flat_map(Bucket::notes);
        f(&mut notes)
    }

    /// Appends the group's parts, family after family, to an exposition being assembled: each
    /// family as runs of its buckets' blocks (the header in the first), as many as leave each
    /// run [`RUN_BYTES`] or more, up to one per bucket.
    pub(super) fn parts(&self, out: &mut Vec<Part>, format: Format) {
        let mut group = self.lock();
        if !group.exported || group.objects == 0 {
            return;
        }
        let Group {
            headers,
            buckets,
            runs,
            ..
        } = &mut *group;
        let families = headers.len();
        let f = format.index();
        runs.resize_with(families, Default::default);
        buckets.iter_mut().for_each(|b| b.fold(families));
        for (i, header) in headers.iter().map(|h| &h[f]).enumerate() {
            let blocks: Vec<Option<&Part>> = buckets
                .iter()
                .map(|b| b.blocks.get(i).and_then(|b| b.part.as_ref()))
                .collect();
            let len: usize = blocks.iter().flatten().map(|p| p.len()).sum();
            if len == 0 {
                runs[i][f].clear();
                continue;
            }
            // A power of two, so that runs are whole ranges of buckets.
            let count = (len / RUN_BYTES).clamp(1, BUCKETS);
            let count = 1 << count.ilog2();
            let last = std::mem::take(&mut runs[i][f]);
            let served = &mut runs[i][f];
            for (r, range) in blocks.chunks(BUCKETS / count).enumerate() {
                let mut members: Vec<Part> = range.iter().flatten().map(|&p| p.clone()).collect();
                if r == 0 {
                    members.insert(0, header.clone());
                }
                if members.is_empty() {
                    continue;
                }
                let same = |run: &&Part| {
                    run.members().is_some_and(|m| {
                        m.len() == members.len()
                            && m.iter().zip(&members).all(|(a, b)| Arc::ptr_eq(&a.0, &b.0))
                    })
                };
                let run = match last.iter().find(same) {
                    Some(run) => run.clone(),
                    None => Part::joined(members),
                };
                out.push(run.clone());
                served.push(run);
            }
        }
    }
}

/// A key's bucket.
fn bucket_of(key: Key) -> usize {
    (key % BUCKETS as u128) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Registry;

    crate::labels! {
        struct Target { target, cluster_name }
    }

    const STATUS: Family = Family {
        name: "t_status",
        help: "Status.",
    };
    const SYNC: Family = Family {
        name: "t_sync",
        help: "Sync.",
    };

    fn text(r: &Registry) -> String {
        String::from_utf8(r.snapshot().text().to_vec()).expect("utf8")
    }

    fn target(name: &str) -> Target {
        Target {
            target: name.into(),
            cluster_name: format!("c\"{name}\\\n"),
        }
    }

    #[test]
    fn objects_are_served_grouped_by_family_and_dropped_on_delete() {
        let r = Registry::new();
        let objects = r.objects();
        let status = r.object_gauges::<Target>(&objects, STATUS);
        let sync = r.object_gauges::<Target>(&objects, SYNC);
        assert!(!text(&r).contains("t_status"), "no objects, no family");
        for (key, name, value) in [("uid-a", "a", 1.0), ("uid-b", "b", 0.0)] {
            let mut render = Render::default();
            render.set(&status, &target(name), value);
            render.set(&sync, &target(name), 1.5e9);
            objects.put(key, render);
        }
        let served = text(&r);
        let mine: Vec<&str> = served.lines().filter(|l| l.contains("t_")).collect();
        let (a, b) = (
            r#"{cluster_name="c\"a\\\n",target="a"}"#,
            r#"{cluster_name="c\"b\\\n",target="b"}"#,
        );
        let status_lines = [format!("t_status{a} 1"), format!("t_status{b} 0")];
        let sync_lines = [
            format!("t_sync{a} 1500000000"),
            format!("t_sync{b} 1500000000"),
        ];
        assert_eq!(
            &mine[..2],
            ["# HELP t_status Status.", "# TYPE t_status gauge"]
        );
        let mut got: Vec<&str> = mine[2..4].to_vec();
        got.sort();
        assert_eq!(got, status_lines);
        assert_eq!(&mine[4..6], ["# HELP t_sync Sync.", "# TYPE t_sync gauge"]);
        let mut got: Vec<&str> = mine[6..].to_vec();
        got.sort();
        assert_eq!(got, sync_lines);

        let before = r.snapshot();
        let mut same = Render::default();
        same.set(&status, &target("a"), 1.0);
        same.set(&sync, &target("a"), 1.5e9);
        objects.put("uid-a", same);
        assert!(
            Arc::ptr_eq(&before, &r.snapshot()),
            "an unchanged object is no change"
        );

        objects.delete("uid-a");
        let served = text(&r);
        assert!(!served.contains("target=\"a\""), "{served}");
        assert!(served.contains(&status_lines[1]), "{served}");
        objects.delete("uid-b");
        assert!(
            !text(&r).contains("t_"),
            "the last object takes its families' headers along"
        );
    }

    /// A change of one object among many rebuilds its bucket's block alone: every other part of
    /// the next exposition is the one already made (and compressed).
    #[test]
    fn a_change_rebuilds_one_block() {
        let r = Registry::new();
        let objects = r.objects();
        let status = r.object_gauges::<Target>(&objects, STATUS);
        let put = |i: usize, value: f64| {
            let mut render = Render::default();
            render.set(&status, &target(&i.to_string()), value);
            objects.put(&format!("uid-{i}"), render);
        };
        // ~150 KiB of lines: two runs of RUN_BYTES or more.
        for i in 0..3000 {
            put(i, 1.0);
        }
        let before = r.snapshot();
        assert_eq!(before.parts.len(), 3, "own, and two runs of 32 buckets");
        assert_eq!(before.parts[1].members().map(<[Part]>::len), Some(33));
        put(7, 0.0);
        let after = r.snapshot();
        assert_eq!(before.parts.len(), after.parts.len());
        let rebuilt = before
            .parts
            .iter()
            .zip(&after.parts)
            .filter(|(a, b)| !Arc::ptr_eq(&a.0, &b.0))
            .count();
        assert_eq!(rebuilt, 2, "the registry's own families and one run");
        // The blocks stay packed in the plain body until written, and read as the gzip one.
        use std::io::Read;
        let packed = after
            .texts()
            .iter()
            .filter(|p| matches!(p, crate::metrics::Piece::Packed(_)))
            .count();
        assert_eq!(packed, BUCKETS);
        let mut unzipped = Vec::new();
        flate2::read::MultiGzDecoder::new(&after.gzip().concat()[..])
            .read_to_end(&mut unzipped)
            .expect("valid gzip");
        assert_eq!(unzipped, after.text().to_vec());
        assert!(after.text().windows(11).any(|w| w == b"target=\"7\"}"));
        // The runs cost little beside one stream (a member per block cost 1.5x at 1,000).
        let served: usize = after.gzip().iter().map(Bytes::len).sum();
        let mut one = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        one.write_all(&unzipped).expect("gzip into a Vec");
        let one = one.finish().expect("gzip into a Vec").len();
        assert!(
            served * 100 <= one * 103,
            "{served} bytes served, {one} as one stream"
        );

        // A small family is one part, made anew on a change.
        let small = Registry::new();
        let objects = small.objects();
        let status = small.object_gauges::<Target>(&objects, STATUS);
        for i in 0..100 {
            let mut render = Render::default();
            render.set(&status, &target(&i.to_string()), 1.0);
            objects.put(&format!("uid-{i}"), render);
        }
        let snap = small.snapshot();
        assert_eq!(snap.parts.len(), 2, "own families, and the family whole");
        assert!(snap.parts[1].text().starts_with(b"# HELP t_status"));
    }

    #[test]
    fn an_unexported_group_serves_nothing() {
        let r = Registry::new();
        let objects = r.objects();
        let status = r.object_gauges::<Target>(&objects, STATUS);
        let mut render = Render::default();
        render.set(&status, &target("a"), 1.0);
        objects.put("uid-a", render);
        objects.set_exported(false);
        assert!(!text(&r).contains("t_status"));
        objects.set_exported(true);
        assert!(text(&r).contains("t_status{"));
    }

    /// The gzip form is one member per part; read as one stream, it is the text.
    #[test]
    fn gzip_members_read_as_one_stream() {
        use std::io::Read;
        let r = Registry::new();
        let objects = r.objects();
        let status = r.object_gauges::<Target>(&objects, STATUS);
        for i in 0..200 {
            let mut render = Render::default();
            render.set(&status, &target(&i.to_string()), 1.0);
            objects.put(&format!("uid-{i}"), render);
        }
        let snap = r.snapshot();
        let gz: Vec<u8> = snap.gzip().concat();
        assert_eq!(
            snap.gzip().len(),
            1,
            "small members are joined into one chunk"
        );
        let mut plain = String::new();
        flate2::read::MultiGzDecoder::new(&gz[..])
            .read_to_string(&mut plain)
            .expect("valid gzip");
        assert_eq!(plain.as_bytes(), &snap.text()[..]);
    }

    #[test]
    fn label_values_are_escaped_and_never_hold_a_nul() {
        let mut out = Vec::new();
        escape_into(&mut out, "a\\b\"c\nd\0e");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "a\\\\b\\\"c\\nd\u{fffd}e"
        );
    }

    #[test]
    fn values_are_written_as_the_text_encoder_writes_them() {
        for (v, want) in [
            (0.0, "0"),
            (1.0, "1"),
            (0.25, "0.25"),
            (1795773600.0, "1795773600"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ] {
            let mut out = Vec::new();
            write_value(&mut out, v);
            assert_eq!(String::from_utf8(out).expect("ascii"), want);
        }
    }
}
