//! A manifest document as `ksit-exporter inject` holds it: what `serde_json::Value` holds, in
//! the same order (a map's keys sorted), read and written
//! through the same serde calls, so that the YAML written is the same, byte for byte. Only
//! smaller: a `Value` map is a `BTreeMap`, whose first node takes about 600 bytes however
//! few its entries, so a dense manifest (many tiny containers, env entries or volumes) cost
//! about 25 times its bytes; a map here is a sorted `Vec` of its entries.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Number, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Doc {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Seq(Vec<Doc>),
    /// Sorted by key, each key once.
    Map(Vec<(String, Doc)>),
}

impl Doc {
    pub fn get(&self, key: &str) -> Option<&Doc> {
        match self {
            Doc::Map(entries) => find(entries, key).ok().map(|i| &entries[i].1),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Doc> {
        match self {
            Doc::Map(entries) => match find(entries, key) {
                Ok(i) => Some(&mut entries[i].1),
                Err(_) => None,
            },
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Doc::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_seq_mut(&mut self) -> Option<&mut Vec<Doc>> {
        match self {
            Doc::Seq(items) => Some(items),
            _ => None,
        }
    }

    /// Sets `key` (in its sorted place) when this is a map.
    pub fn insert(&mut self, key: &str, value: Doc) {
        if let Doc::Map(entries) = self {
            match find(entries, key) {
                Ok(i) => entries[i].1 = value,
                Err(i) => entries.insert(i, (key.to_string(), value)),
            }
        }
    }

    pub fn remove(&mut self, key: &str) {
        if let Doc::Map(entries) = self
            && let Ok(i) = find(entries, key)
        {
            entries.remove(i);
        }
    }
}

/// YAML 1.1's merge key, as kubectl's YAML reader (go-yaml) expands it.
const MERGE_KEY: &str = "<<";

/// The options documents are read with: the reader passes repeated keys and merge keys on to
/// [`Doc`]'s visitor, which refuses the one and expands the other, so that the reader keeps no
/// record of the keys it has seen (about 250 bytes a key: 30 MiB for a mapping of 120,000).
pub fn read_options() -> serde_saphyr::options::Options {
    let mut options = serde_saphyr::options::Options::default();
    options.duplicate_keys = serde_saphyr::options::DuplicateKeyPolicy::PassThrough;
    options.merge_keys = serde_saphyr::options::MergeKeyPolicy::AsOrdinary;
    // kubectl reads YAML 1.1, where `defaultMode: 0644` is octal.
    options.legacy_octal_numbers = true;
    options
}

/// Adds to `entries` (sorted, each key once) the entries of the mappings a merge key named,
/// as YAML 1.1 says: a key of the mapping itself wins over a merged one, and an earlier merged
/// mapping over a later one.
fn merge(entries: &mut Vec<(String, Doc)>, merged: Vec<Doc>) -> Result<(), String> {
    let mut sources = Vec::new();
    for value in merged {
        match value {
            Doc::Map(map) => sources.push(map),
            Doc::Seq(items) => {
                for item in items {
                    match item {
                        Doc::Map(map) => sources.push(map),
                        _ => return Err(MERGE_ERROR.to_string()),
                    }
                }
            }
            _ => return Err(MERGE_ERROR.to_string()),
        }
    }
    let mut extra: Vec<_> = sources.into_iter().flatten().collect();
    // Stable, so of one key the earliest mapping's entry comes first and is kept.
    extra.sort_by(|a, b| a.0.cmp(&b.0));
    extra.dedup_by(|later, first| later.0 == first.0);
    extra.retain(|(key, _)| find(entries, key).is_err());
    // Both sorted: one pass, not an insert (and a shift) per merged key.
    let own = std::mem::take(entries);
    let mut own = own.into_iter().peekable();
    let mut extra = extra.into_iter().peekable();
    while let (Some(a), Some(b)) = (own.peek(), extra.peek()) {
        let next = if a.0 < b.0 { own.next() } else { extra.next() };
        entries.extend(next);
    }
    entries.extend(own);
    entries.extend(extra);
    Ok(())
}

const MERGE_ERROR: &str = "a merge key (<<) takes a mapping or a sequence of mappings";

fn find(entries: &[(String, Doc)], key: &str) -> Result<usize, usize> {
    entries.binary_search_by(|(k, _)| k.as_str().cmp(key))
}

impl From<&Value> for Doc {
    fn from(value: &Value) -> Doc {
        match value {
            Value::Null => Doc::Null,
            Value::Bool(b) => Doc::Bool(*b),
            Value::Number(n) => Doc::Number(n.clone()),
            Value::String(s) => Doc::String(s.clone()),
            Value::Array(items) => Doc::Seq(items.iter().map(Doc::from).collect()),
            // serde_json's map is sorted (a BTreeMap): so is this.
            Value::Object(map) => {
                Doc::Map(map.iter().map(|(k, v)| (k.clone(), v.into())).collect())
            }
        }
    }
}

impl Serialize for Doc {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Doc::Null => serializer.serialize_unit(),
            Doc::Bool(b) => serializer.serialize_bool(*b),
            Doc::Number(n) => n.serialize(serializer),
            Doc::String(s) => serializer.serialize_str(s),
            Doc::Seq(items) => serializer.collect_seq(items),
            Doc::Map(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// The visitor of `serde_json::Value`, making a [`Doc`] instead.
impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Doc, D::Error> {
        struct DocVisitor;
        impl<'de> Visitor<'de> for DocVisitor {
            type Value = Doc;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any valid JSON value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Doc, E> {
                Ok(Doc::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Doc, E> {
                Ok(Doc::Number(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Doc, E> {
                Ok(Doc::Number(n.into()))
            }
            fn visit_i128<E: serde::de::Error>(self, n: i128) -> Result<Doc, E> {
                let value = Value::deserialize(serde::de::value::I128Deserializer::<E>::new(n))?;
                Ok(Doc::from(&value))
            }
            fn visit_u128<E: serde::de::Error>(self, n: u128) -> Result<Doc, E> {
                let value = Value::deserialize(serde::de::value::U128Deserializer::<E>::new(n))?;
                Ok(Doc::from(&value))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Doc, E> {
                Ok(Number::from_f64(n).map_or(Doc::Null, Doc::Number))
            }
            fn visit_str<E>(self, s: &str) -> Result<Doc, E> {
                Ok(Doc::String(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<Doc, E> {
                Ok(Doc::String(s))
            }
            fn visit_none<E>(self) -> Result<Doc, E> {
                Ok(Doc::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Doc, D::Error> {
                Doc::deserialize(d)
            }
            fn visit_unit<E>(self) -> Result<Doc, E> {
                Ok(Doc::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Doc, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                items.shrink_to_fit();
                Ok(Doc::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc, A::Error> {
                let mut entries: Vec<(String, Doc)> = Vec::new();
                let mut merged = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Doc>()? {
                    if key == MERGE_KEY {
                        merged.push(value);
                    } else {
                        entries.push((key, value));
                    }
                }
                // Sorted in place (a stable sort would take a buffer of half the entries).
                entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                if let Some(pair) = entries.windows(2).find(|pair| pair[0].0 == pair[1].0) {
                    return Err(serde::de::Error::custom(format!(
                        "the mapping key {:?} is repeated (a key may appear once in a mapping)",
                        pair[0].0
                    )));
                }
                if !merged.is_empty() {
                    merge(&mut entries, merged).map_err(serde::de::Error::custom)?;
                }
                entries.shrink_to_fit();
                Ok(Doc::Map(entries))
            }
        }
        deserializer.deserialize_any(DocVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read and written as a `serde_json::Value` is: the same YAML and JSON out, for maps out
    /// of order, numbers of every kind, nulls, tags, octal and nesting.
    #[test]
    fn yaml_round_trips_as_a_value_does() {
        let input = "b: 1\na: [1, -2, 3.5, 1e300, 18446744073709551615, ~, true, 'x']\ne: {z: 1, y: [], x: {}}\nc: !!str 12\nd: 0644\n";
        let value: Vec<Value> = serde_saphyr::from_multiple(input).expect("valid YAML");
        let doc: Vec<Doc> = serde_saphyr::from_multiple(input).expect("valid YAML");
        assert_eq!(
            serde_saphyr::to_string_multiple(&doc).expect("YAML"),
            serde_saphyr::to_string_multiple(&value).expect("YAML")
        );
        assert_eq!(doc, value.iter().map(Doc::from).collect::<Vec<_>>());
        assert_eq!(
            serde_json::to_string(&doc).expect("JSON"),
            serde_json::to_string(&value).expect("JSON")
        );
    }

    fn read(input: &str) -> Result<Doc, serde_saphyr::Error> {
        serde_saphyr::from_str_with_options(input, read_options())
    }

    /// Merge keys expand as the YAML reader's own merging does: the mapping's keys win, then
    /// the earlier of the merged mappings; nested, through aliases, in a sequence.
    #[test]
    fn merge_keys_expand_as_the_reader_would() {
        let input = "base: &b {a: 1, b: 2, n: {x: 1}}\nmore: &m {b: 3, c: 4}\none: {<<: *b, a: 9}\nboth: {<<: [*m, *b], z: 0}\nnested: {k: {<<: *b, n: 2}}\n";
        let ours = read(input).expect("valid YAML");
        let theirs: Value = serde_saphyr::from_str(input).expect("valid YAML");
        assert_eq!(ours, Doc::from(&theirs));
        assert_eq!(
            ours.get("both").and_then(|m| m.get("b")),
            Some(&Doc::Number(3.into()))
        );
        for bad in ["a: {<<: 1}", "a: {<<: [{b: 1}, 2]}"] {
            let err = read(bad).expect_err(bad).to_string();
            assert!(err.contains("merge key"), "{bad}: {err}");
        }
    }

    /// A repeated key is refused, naming the key, as the reader's own check did.
    #[test]
    fn a_repeated_key_is_refused_by_name() {
        for input in ["a: 1\nb: 2\na: 3\n", "m: {x: 1, y: 2, x: 1}\n"] {
            let err = read(input).expect_err(input).to_string();
            let key = if input.starts_with('a') {
                "\"a\""
            } else {
                "\"x\""
            };
            assert!(
                err.contains("repeated") && err.contains(key),
                "{input}: {err}"
            );
        }
        // Not a repeat: an explicit key beside the same key merged in.
        assert!(read("b: &b {x: 1}\nc: {<<: *b, x: 2}\n").is_ok());
    }
}
