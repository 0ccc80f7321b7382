//! The objects the per-object collectors watch, parsed trimmed: their identity and the spec and
//! status fields a collector reads, nothing else. `managedFields`, annotations and every field
//! not named are skipped while the JSON is read, so a list of thousands of objects never exists
//! in memory as whole JSON trees. Of `spec` and `status` only the fields the collector reads
//! ([`Fields`]) are kept while reading (an Integration's `spec.config` of 100,000 entries
//! costs nothing), and at most [`MAX_KEPT_VALUES`] values of each: an object whose read
//! fields hold more is [`Object::too_large`], which the collector skips and counts.

use std::borrow::Cow;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::ApiResource;
use kube::core::DynamicResourceScope;
use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// The most JSON values (of any kind, nested ones counted) kept of the fields a collector
/// reads in one object's `spec`, and again in its `status`: about 2 MiB held at most while
/// the object is read. Far above any real object's (an Integration's status across 1,000
/// clusters holds about 6,000), far below what the API server lets one object hold (1.5 MiB of
/// JSON can be 200,000 values).
pub const MAX_KEPT_VALUES: usize = 20_000;

/// A spec's or status's type, and the names (as written in JSON) of the fields it reads: only
/// those are kept while the object is read.
pub trait Fields: DeserializeOwned + Default {
    const FIELDS: &'static [&'static str];
}

impl Fields for IgnoredAny {
    const FIELDS: &'static [&'static str] = &[];
}

/// One object of the kind `dt` names, with its `spec` read as `Spec` and `status` as `Status`.
#[derive(Clone, Debug, Default)]
pub struct Object<Spec, Status> {
    /// Name, namespace, UID, generation and resourceVersion only.
    pub metadata: ObjectMeta,
    pub spec: Spec,
    pub status: Status,
    /// The fields read of the spec or the status hold more than [`MAX_KEPT_VALUES`] values:
    /// `spec` and `status` are their defaults, and the collector skips the object.
    pub too_large: bool,
}

/// The metadata fields the series use, and the resourceVersion the watcher resumes from (an
/// event without one fails the watch).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    generation: Option<i64>,
    resource_version: Option<String>,
}

#[derive(Deserialize)]
#[serde(bound = "Spec: Fields, Status: Fields")]
struct Wire<Spec, Status> {
    metadata: Meta,
    #[serde(default)]
    spec: Kept<Spec>,
    #[serde(default)]
    status: Kept<Status>,
}

/// A spec or status read leniently: a field of an unexpected shape reads as its default, so
/// that one odd object (a CRD without a schema accepts anything) cannot stop a whole list, and
/// the others, from being read. Only `T`'s [`Fields`] are kept, within [`MAX_KEPT_VALUES`].
#[derive(Default)]
struct Kept<T> {
    value: T,
    too_large: bool,
}

impl<'de, T: Fields> Deserialize<'de> for Kept<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Top<T>(std::marker::PhantomData<T>);
        impl<'de, T: Fields> Visitor<'de> for Top<T> {
            type Value = Kept<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kept<T>, A::Error> {
                let mut budget = Budget {
                    left: MAX_KEPT_VALUES,
                    over: false,
                };
                let mut kept = Map::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if T::FIELDS.contains(&key.as_ref()) {
                        let value = map.next_value_seed(&mut budget)?;
                        kept.insert(key.into_owned(), value);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                if budget.over {
                    return Ok(Kept {
                        value: T::default(),
                        too_large: true,
                    });
                }
                Ok(Kept {
                    value: T::deserialize(Value::Object(kept)).unwrap_or_default(),
                    too_large: false,
                })
            }
            // Anything but an object reads as the default.
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kept<T>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Kept::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<Kept<T>, E> {
                Ok(Kept::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Kept<T>, E> {
                Ok(Kept::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Kept<T>, E> {
                Ok(Kept::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Kept<T>, E> {
                Ok(Kept::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<Kept<T>, E> {
                Ok(Kept::default())
            }
            fn visit_unit<E>(self) -> Result<Kept<T>, E> {
                Ok(Kept::default())
            }
            fn visit_none<E>(self) -> Result<Kept<T>, E> {
                Ok(Kept::default())
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Kept<T>, D::Error> {
                d.deserialize_any(self)
            }
        }
        d.deserialize_any(Top(std::marker::PhantomData))
    }
}

/// How many more values a [`Kept`] may hold; past that, the rest is read without being kept.
struct Budget {
    left: usize,
    over: bool,
}

impl Budget {
    /// Takes one value from the budget: false once it is spent.
    fn take(&mut self) -> bool {
        match self.left.checked_sub(1) {
            Some(left) if !self.over => {
                self.left = left;
                true
            }
            _ => {
                self.over = true;
                false
            }
        }
    }
}

/// A JSON value read within the budget (`Value::Null` for what is past it).
impl<'de> DeserializeSeed<'de> for &mut Budget {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for &mut Budget {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(if self.take() {
            Value::Bool(b)
        } else {
            Value::Null
        })
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(if self.take() { n.into() } else { Value::Null })
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(if self.take() { n.into() } else { Value::Null })
    }
    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(if self.take() { n.into() } else { Value::Null })
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(if self.take() { s.into() } else { Value::Null })
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        self.take();
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        self.take();
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        if self.take() {
            while let Some(item) = seq.next_element_seed(&mut *self)? {
                if self.over {
                    break;
                }
                items.push(item);
            }
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Map::new();
        if self.take() {
            while let Some(key) = map.next_key::<String>()? {
                let value = map.next_value_seed(&mut *self)?;
                if self.over {
                    break;
                }
                entries.insert(key, value);
            }
        }
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Value::Object(entries))
    }
}

impl<'de, Spec, Status> Deserialize<'de> for Object<Spec, Status>
where
    Spec: Fields,
    Status: Fields,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = Wire::<Spec, Status>::deserialize(d)?;
        Ok(Self {
            metadata: ObjectMeta {
                name: wire.metadata.name,
                namespace: wire.metadata.namespace,
                uid: wire.metadata.uid,
                generation: wire.metadata.generation,
                resource_version: wire.metadata.resource_version,
                ..ObjectMeta::default()
            },
            spec: wire.spec.value,
            status: wire.status.value,
            too_large: wire.spec.too_large || wire.status.too_large,
        })
    }
}

/// Whether a watched object is too large to read (see [`Object::too_large`]).
pub trait TooLarge {
    fn too_large(&self) -> bool;
}

impl<Spec, Status> TooLarge for Object<Spec, Status> {
    fn too_large(&self) -> bool {
        self.too_large
    }
}

impl<Spec, Status> Resource for Object<Spec, Status> {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[derive(Debug, Default, Deserialize, PartialEq)]
    struct Status {
        ready: bool,
        #[serde(default)]
        conditions: Vec<Value>,
    }

    impl Fields for Status {
        const FIELDS: &'static [&'static str] = &["ready", "conditions"];
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Spec {
        #[serde(default)]
        cluster_name: String,
    }

    impl Fields for Spec {
        const FIELDS: &'static [&'static str] = &["clusterName"];
    }

    /// A field the collector does not read costs nothing however large; one it reads that holds
    /// more than MAX_KEPT_VALUES values makes the object too large (skipped and counted).
    #[test]
    fn huge_unread_fields_are_skipped_and_huge_read_ones_make_the_object_too_large() {
        let config: serde_json::Map<String, Value> = (0..100_000)
            .map(|i| (format!("k{i}"), json!("v")))
            .collect();
        let obj: Object<Spec, Status> = serde_json::from_value(json!({
            "metadata": {"name": "t"},
            "spec": {"clusterName": "c", "config": config},
            "status": {"ready": true, "conditions": [{"type": "Ready"}]}
        }))
        .expect("an object");
        assert_eq!(obj.spec.cluster_name, "c");
        assert!(obj.status.ready && !obj.too_large);

        let conditions: Vec<Value> = (0..MAX_KEPT_VALUES).map(|i| json!({"type": i})).collect();
        let text = serde_json::to_string(&json!({
            "metadata": {"name": "t"},
            "spec": {"clusterName": "c"},
            "status": {"ready": true, "conditions": conditions, "after": 1}
        }))
        .expect("JSON");
        let obj: Object<Spec, Status> = serde_json::from_str(&text).expect("still an object");
        assert!(obj.too_large);
        assert_eq!(obj.status, Status::default());
        assert_eq!(
            obj.metadata.name.as_deref(),
            Some("t"),
            "its identity is read"
        );
        // Just within the budget: kept.
        let conditions: Vec<Value> = (0..MAX_KEPT_VALUES / 3)
            .map(|i| json!({"type": i}))
            .collect();
        let obj: Object<Spec, Status> = serde_json::from_value(json!({
            "metadata": {"name": "t"}, "status": {"ready": true, "conditions": conditions}
        }))
        .expect("an object");
        assert!(!obj.too_large);
        assert_eq!(obj.status.conditions.len(), MAX_KEPT_VALUES / 3);
    }

    type Target = Object<serde::de::IgnoredAny, Status>;

    #[test]
    fn reads_identity_and_the_named_fields_only() {
        let obj: Target = serde_json::from_value(json!({
            "apiVersion": "ksit.io/v1alpha1",
            "kind": "IntegrationTarget",
            "metadata": {
                "name": "t", "namespace": "ns", "uid": "u-1", "generation": 3,
                "resourceVersion": "42",
                "labels": {"a": "b"},
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {"clusterName": "c"},
            "status": {"ready": true, "message": "ok"}
        }))
        .expect("an object");
        let m = &obj.metadata;
        assert_eq!(
            (m.name.as_deref(), m.namespace.as_deref(), m.uid.as_deref()),
            (Some("t"), Some("ns"), Some("u-1"))
        );
        assert_eq!(m.generation, Some(3));
        assert_eq!(
            m.resource_version.as_deref(),
            Some("42"),
            "the watcher resumes from it"
        );
        assert!(m.labels.is_none() && m.managed_fields.is_none());
        assert_eq!(
            obj.status,
            Status {
                ready: true,
                conditions: Vec::new()
            }
        );
    }

    #[test]
    fn an_odd_status_reads_as_its_default() {
        let obj: Target = serde_json::from_value(json!({
            "metadata": {"name": "t"},
            "status": {"ready": "yes"}
        }))
        .expect("still an object");
        assert_eq!(obj.status, Status::default());
        let bare: Target =
            serde_json::from_value(json!({"metadata": {"name": "t"}})).expect("no spec or status");
        assert_eq!(bare.status, Status::default());
    }
}
