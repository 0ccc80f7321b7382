//! [`inject`] over a stream of Kubernetes manifests, for `ksit-exporter inject`.
//!
//! Documents stay `serde_json::Value`s so every kind and field the injection does not change passes
//! through as written; only a pod template is deserialized, and only what the injection changed in
//! it is written back. Comments are lost and keys come out sorted (as `kubectl get -o yaml` prints
//! them); values are not changed.

use std::collections::BTreeMap;
use std::io::Cursor;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use serde_json::Value;

use super::{InjectorConfig, Outcome, STATUS_ANNOTATION, inject};

/// The rewritten stream and one line per pod template found, saying what happened to it.
#[derive(Debug)]
pub struct Injected {
    pub yaml: String,
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// `index` counts from 1 and skips empty documents.
    #[error("document {index}: invalid YAML")]
    Yaml {
        index: usize,
        #[source]
        source: serde_saphyr::Error,
    },
    #[error("{location}: not a valid pod template")]
    Template {
        location: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing the result as YAML")]
    Write(#[from] serde_saphyr::SerializeError),
}

/// Injects the sidecar into every pod template of a YAML stream (Pods, Deployments, StatefulSets,
/// DaemonSets, ReplicaSets, Jobs, CronJobs, also inside `List`s) and returns the new stream.
pub fn inject_manifests(input: &str, cfg: &InjectorConfig) -> Result<Injected, ManifestError> {
    let mut options = serde_saphyr::options::Options::default();
    // kubectl reads YAML 1.1, where `defaultMode: 0644` is octal.
    options.legacy_octal_numbers = true;
    let mut reader = Cursor::new(input.as_bytes());
    let mut docs = Vec::new();
    for (i, doc) in serde_saphyr::read_with_options::<_, Value>(&mut reader, options).enumerate() {
        docs.push(doc.map_err(|source| ManifestError::Yaml {
            index: i + 1,
            source,
        })?);
    }
    let mut notes = Vec::new();
    for (i, doc) in docs.iter_mut().enumerate() {
        walk(doc, &format!("document {}", i + 1), cfg, &mut notes)?;
    }
    Ok(Injected {
        yaml: serde_saphyr::to_string_multiple(&docs)?,
        notes,
    })
}

fn walk(
    doc: &mut Value,
    location: &str,
    cfg: &InjectorConfig,
    notes: &mut Vec<String>,
) -> Result<(), ManifestError> {
    let field = |key| doc.get(key).and_then(Value::as_str).unwrap_or_default();
    let kind = field("kind").to_string();
    // Match the API group too: CRDs of other groups may also be called `Job` or `Deployment`.
    let group = field("apiVersion").rsplit_once('/').map_or("", |(g, _)| g);
    let path: &[&str] = match (group, kind.as_str()) {
        ("", "Pod") => &[],
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") | ("batch", "Job") => {
            &["spec", "template"]
        }
        ("batch", "CronJob") => &["spec", "jobTemplate", "spec", "template"],
        (_, kind) if kind.ends_with("List") => {
            if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item, &format!("{location}, items[{i}]"), cfg, notes)?;
                }
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    let meta = |key| {
        doc.pointer(&format!("/metadata/{key}"))
            .and_then(Value::as_str)
    };
    let name = match (meta("namespace"), meta("name").or(meta("generateName"))) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.to_string(),
        (_, None) => "(unnamed)".to_string(),
    };
    let location = format!("{location} ({kind} {name})");
    match path.iter().try_fold(doc, |v, key| v.get_mut(*key)) {
        Some(template) => inject_template(template, &location, cfg, notes),
        // Nothing to inject into; the API server would reject it, not us.
        None => Ok(()),
    }
}

fn inject_template(
    template: &mut Value,
    location: &str,
    cfg: &InjectorConfig,
    notes: &mut Vec<String>,
) -> Result<(), ManifestError> {
    // A Pod document parses as a template too: apiVersion, kind and status are ignored.
    let typed: PodTemplateSpec =
        serde_json::from_value(template.clone()).map_err(|source| ManifestError::Template {
            location: location.to_string(),
            source,
        })?;
    let pod = Pod {
        metadata: typed.metadata.clone().unwrap_or_default(),
        spec: typed.spec.clone(),
        status: None,
    };
    // Offline there is no namespace to read labels from; the config opts in instead.
    let outcome = inject(&pod, &BTreeMap::new(), cfg);
    notes.push(match &outcome {
        Outcome::Injected { pod, warnings } => {
            let status = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(STATUS_ANNOTATION))
                .map_or("injected", String::as_str);
            let mut note = format!("{location}: {status}");
            for warning in warnings {
                note += &format!("\n{location}: warning: {warning}");
            }
            note
        }
        Outcome::Skipped {
            reason,
            detail,
            pod: Some(_),
        } => format!("{location}: skipped: {reason}: {detail}"),
        Outcome::Skipped {
            reason,
            detail,
            pod: None,
        } => format!("{location}: unchanged: {reason}: {detail}"),
    });
    if let Some(new) = outcome.pod() {
        let to_value = |t: &PodTemplateSpec| {
            serde_json::to_value(t).expect("a Kubernetes object always converts to JSON")
        };
        let after = PodTemplateSpec {
            metadata: Some(new.metadata.clone()),
            spec: new.spec.clone(),
        };
        overlay(template, &to_value(&typed), &to_value(&after));
    }
    Ok(())
}

/// Writes into `raw` what changed from `before` to `after`, both typed renderings of `raw`, so what
/// the typed model normalises (`cpu: 1` read as the string "1") stays as the user wrote it.
fn overlay(raw: &mut Value, before: &Value, after: &Value) {
    if before == after {
        return;
    }
    match (raw, before, after) {
        (Value::Object(raw), Value::Object(before), Value::Object(after)) => {
            for (key, new) in after {
                match (raw.get_mut(key), before.get(key)) {
                    (Some(raw), Some(old)) => overlay(raw, old, new),
                    _ => {
                        raw.insert(key.clone(), new.clone());
                    }
                }
            }
            for key in before.keys().filter(|k| !after.contains_key(*k)) {
                raw.remove(key);
            }
        }
        (Value::Array(raw), Value::Array(before), Value::Array(after))
            if raw.len() == before.len() =>
        {
            for (i, new) in after.iter().enumerate() {
                match (raw.get_mut(i), before.get(i)) {
                    (Some(raw), Some(old)) => overlay(raw, old, new),
                    _ => raw.push(new.clone()),
                }
            }
            raw.truncate(after.len());
        }
        (raw, _, after) => *raw = after.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn overlay_keeps_what_did_not_change() {
        let mut raw = json!({"cpu": 1, "keep": "x", "list": [1, 2], "gone": true});
        let before = json!({"cpu": "1", "list": [1, 2], "gone": true});
        let after = json!({"cpu": "1", "list": [1, 3, 4], "new": "y"});
        overlay(&mut raw, &before, &after);
        assert_eq!(
            raw,
            json!({"cpu": 1, "keep": "x", "list": [1, 3, 4], "new": "y"})
        );
    }

    #[test]
    fn bad_yaml_names_the_document() {
        let cfg = InjectorConfig::from_vars([]).expect("defaults are valid");
        let err = inject_manifests("a: 1\n---\nb: [1,\n", &cfg).expect_err("unclosed bracket");
        assert!(
            matches!(err, ManifestError::Yaml { index: 2, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn bad_template_names_the_object() {
        let cfg = InjectorConfig::from_vars([]).expect("defaults are valid");
        let input = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: 3}\n";
        let err = inject_manifests(input, &cfg).expect_err("containers is not a list");
        assert_eq!(
            err.to_string(),
            "document 1 (Pod p): not a valid pod template"
        );
    }
}
