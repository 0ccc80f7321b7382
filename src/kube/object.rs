//! The objects the per-object collectors watch, parsed trimmed: their identity and the spec and
//! status fields a collector reads, nothing else. `managedFields`, annotations and every field
//! not named are skipped while the JSON is read, so a list of thousands of objects never exists
//! in memory as whole JSON trees.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::ApiResource;
use kube::core::DynamicResourceScope;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// One object of the kind `dt` names, with its `spec` read as `Spec` and `status` as `Status`.
#[derive(Clone, Debug, Default)]
pub struct Object<Spec, Status> {
    /// Name, namespace, UID, generation and resourceVersion only.
    pub metadata: ObjectMeta,
    pub spec: Spec,
    pub status: Status,
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
#[serde(bound = "Spec: DeserializeOwned + Default, Status: DeserializeOwned + Default")]
struct Wire<Spec, Status> {
    metadata: Meta,
    #[serde(default, deserialize_with = "lenient")]
    spec: Spec,
    #[serde(default, deserialize_with = "lenient")]
    status: Status,
}

/// A field of an unexpected shape reads as its default, so that one odd object (a CRD without a
/// schema accepts anything) cannot stop a whole list, and the others, from being read.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(d: D) -> Result<T, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(T::deserialize(value).unwrap_or_default())
}

impl<'de, Spec, Status> Deserialize<'de> for Object<Spec, Status>
where
    Spec: DeserializeOwned + Default,
    Status: DeserializeOwned + Default,
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
            spec: wire.spec,
            status: wire.status,
        })
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
    use serde_json::json;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    struct Status {
        ready: bool,
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
        assert_eq!(obj.status, Status { ready: true });
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
