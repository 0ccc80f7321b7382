//! [`inject`] over a stream of Kubernetes manifests, for `ksit-exporter inject`.
//!
//! Documents stay [`Doc`]s (what a `serde_json::Value` holds, smaller) so every kind and field
//! the injection does not change passes through as written; only what inject reads of a pod
//! template is deserialized ([`compact`]), and only what the injection changed in it is
//! written back. Comments are lost and keys come out sorted (as `kubectl get -o yaml` prints
//! them); values are not changed.

use std::collections::BTreeMap;
use std::io::Cursor;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use serde_json::Value;

use super::compact::{self, Layout, Positions, SlimPod};
use super::doc::Doc;
use super::{InjectorConfig, Outcome, STATUS_ANNOTATION, inject_elided};

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
    /// The reader's limits keep a hostile file from exhausting memory; none is a YAML error.
    #[error(
        "document {index} is too large to read: {what} (at line {line}); \
         split it into smaller documents"
    )]
    TooLarge {
        index: usize,
        what: String,
        line: u64,
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
    let options = super::doc::read_options();
    let mut reader = Cursor::new(input.as_bytes());
    let mut docs = Vec::new();
    for (i, doc) in serde_saphyr::read_with_options::<_, Doc>(&mut reader, options).enumerate() {
        docs.push(doc.map_err(|source| read_error(i + 1, source))?);
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

fn read_error(index: usize, source: serde_saphyr::Error) -> ManifestError {
    use serde_saphyr::budget::BudgetBreach;
    let serde_saphyr::Error::Budget { breach, location } = &source else {
        return ManifestError::Yaml { index, source };
    };
    let limits = serde_saphyr::Budget::default();
    let what = match breach {
        BudgetBreach::Nodes { .. } => format!(
            "more than {} nodes (scalars, sequences and mappings)",
            limits.max_nodes
        ),
        BudgetBreach::Depth { .. } => format!("nested deeper than {}", limits.max_depth),
        BudgetBreach::Events { .. } => format!("more than {} YAML events", limits.max_events),
        other => format!("past a limit of the YAML reader ({other:?})"),
    };
    ManifestError::TooLarge {
        index,
        what,
        line: location.line(),
    }
}

fn walk(
    doc: &mut Doc,
    location: &str,
    cfg: &InjectorConfig,
    notes: &mut Vec<String>,
) -> Result<(), ManifestError> {
    let field = |key| doc.get(key).and_then(Doc::as_str).unwrap_or_default();
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
            if let Some(items) = doc.get_mut("items").and_then(Doc::as_seq_mut) {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item, &format!("{location}, items[{i}]"), cfg, notes)?;
                }
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    let meta = |key| {
        doc.get("metadata")
            .and_then(|m| m.get(key))
            .and_then(Doc::as_str)
    };
    let name = match (meta("namespace"), meta("name").or(meta("generateName"))) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.to_string(),
        (_, None) => "(unnamed)".to_string(),
    };
    let location = format!("{location} ({kind} {name})");
    match path.iter().try_fold(doc, |v, key| v.get_mut(key)) {
        Some(template) => inject_template(template, &location, cfg, notes),
        // Nothing to inject into; the API server would reject it, not us.
        None => Ok(()),
    }
}

fn inject_template(
    template: &mut Doc,
    location: &str,
    cfg: &InjectorConfig,
    notes: &mut Vec<String>,
) -> Result<(), ManifestError> {
    // A Pod document parses as a template too: apiVersion, kind and status are ignored. Only
    // what inject reads is decoded, whatever the rest of the template holds.
    let invalid = |source| ManifestError::Template {
        location: location.to_string(),
        source,
    };
    let json = serde_json::to_vec(&*template).map_err(invalid)?;
    let read = compact::read(|| serde_json::from_slice::<SlimPod>(&json)).map_err(invalid)?;
    drop(json);
    // Offline there is no namespace to read labels from; the config opts in instead.
    let outcome = inject_elided(&read.pod, &read.elided, &BTreeMap::new(), cfg);
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
        let to_value = |p: &Pod| {
            let t = PodTemplateSpec {
                metadata: Some(p.metadata.clone()),
                spec: p.spec.clone(),
            };
            serde_json::to_value(t).expect("a Kubernetes object always converts to JSON")
        };
        overlay(
            template,
            &to_value(&read.pod),
            &to_value(new),
            Lists::Template(&read.layout),
        );
    }
    Ok(())
}

/// Where [`overlay`] is in a template: the pod spec's lists were read compactly, so their
/// entries are found by [`Layout`].
#[derive(Clone, Copy)]
enum Lists<'a> {
    Template(&'a Layout),
    Spec(&'a Layout),
    None,
}

/// Writes into `raw` what changed from `before` to `after`, both typed renderings of `raw`, so what
/// the typed model normalises (`cpu: 1` read as the string "1") stays as the user wrote it.
fn overlay(raw: &mut Doc, before: &Value, after: &Value, lists: Lists) {
    if before == after {
        return;
    }
    match (raw, before, after) {
        (raw @ Doc::Map(_), Value::Object(before), Value::Object(after)) => {
            for (key, new) in after {
                if let Some(old) = before.get(key)
                    && let Some(raw) = raw.get_mut(key)
                {
                    match (lists, raw, old, new) {
                        (Lists::Template(layout), raw, old, new) if key == "spec" => {
                            overlay(raw, old, new, Lists::Spec(layout))
                        }
                        (
                            Lists::Spec(layout),
                            Doc::Seq(raw),
                            Value::Array(old),
                            Value::Array(new),
                        ) if layout.list(key).is_some() => {
                            if let Some(positions) = layout.list(key) {
                                overlay_list(raw, old, new, positions)
                            }
                        }
                        (_, raw, old, new) => overlay(raw, old, new, Lists::None),
                    }
                    continue;
                }
                raw.insert(key, Doc::from(new));
            }
            for key in before.keys().filter(|k| !after.contains_key(*k)) {
                raw.remove(key);
            }
        }
        (Doc::Seq(raw), Value::Array(before), Value::Array(after)) if raw.len() == before.len() => {
            for (i, new) in after.iter().enumerate() {
                match (raw.get_mut(i), before.get(i)) {
                    (Some(raw), Some(old)) => overlay(raw, old, new, Lists::None),
                    _ => raw.push(Doc::from(new)),
                }
            }
            raw.truncate(after.len());
        }
        (raw, _, after) => *raw = Doc::from(after),
    }
}

/// [`overlay`] of a list read compactly: `before` and `after` hold only its kept entries (and
/// what inject appended), found in `raw` at their `positions`.
fn overlay_list(raw: &mut Vec<Doc>, before: &[Value], after: &[Value], positions: &Positions) {
    if raw.len() != positions.len {
        *raw = after.iter().map(Doc::from).collect();
        return;
    }
    for (i, new) in after.iter().enumerate() {
        match (before.get(i), raw.get_mut(positions.original(i))) {
            (Some(old), Some(raw)) => overlay(raw, old, new, Lists::None),
            _ => raw.push(Doc::from(new)),
        }
    }
    for i in (after.len()..before.len()).rev() {
        if positions.original(i) < raw.len() {
            raw.remove(positions.original(i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A document past the reader's node limit is refused as too large, with the limit and
    /// what to do, not as invalid YAML.
    #[test]
    fn a_document_past_the_node_limit_is_too_large_not_invalid() {
        let cfg = InjectorConfig::from_vars([]).expect("defaults are valid");
        let input = format!("kind: Pod\n---\nitems: [{}]\n", "1,".repeat(250_001));
        let err = inject_manifests(&input, &cfg).expect_err("past the limit");
        assert!(
            matches!(err, ManifestError::TooLarge { index: 2, .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "document 2 is too large to read: more than 250000 nodes (scalars, sequences and \
             mappings) (at line 3); split it into smaller documents"
        );
    }

    #[test]
    fn overlay_keeps_what_did_not_change() {
        let mut raw = Doc::from(&json!({"cpu": 1, "keep": "x", "list": [1, 2], "gone": true}));
        let before = json!({"cpu": "1", "list": [1, 2], "gone": true});
        let after = json!({"cpu": "1", "list": [1, 3, 4], "new": "y"});
        overlay(&mut raw, &before, &after, Lists::None);
        assert_eq!(
            raw,
            Doc::from(&json!({"cpu": 1, "keep": "x", "list": [1, 3, 4], "new": "y"}))
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

    /// What `ksit-exporter inject` wrote before it read templates compactly: the whole
    /// template typed, its typed renderings overlaid on a `serde_json::Value`.
    fn whole(input: &str, cfg: &InjectorConfig) -> String {
        fn overlay_value(raw: &mut Value, before: &Value, after: &Value) {
            if before == after {
                return;
            }
            match (raw, before, after) {
                (Value::Object(raw), Value::Object(before), Value::Object(after)) => {
                    for (key, new) in after {
                        match (raw.get_mut(key), before.get(key)) {
                            (Some(raw), Some(old)) => overlay_value(raw, old, new),
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
                            (Some(raw), Some(old)) => overlay_value(raw, old, new),
                            _ => raw.push(new.clone()),
                        }
                    }
                    raw.truncate(after.len());
                }
                (raw, _, after) => *raw = after.clone(),
            }
        }
        let mut docs: Vec<Value> = serde_saphyr::from_multiple(input).expect("valid YAML");
        for doc in &mut docs {
            let typed: PodTemplateSpec = serde_json::from_value(doc.clone()).expect("a template");
            let pod = Pod {
                metadata: typed.metadata.clone().unwrap_or_default(),
                spec: typed.spec.clone(),
                status: None,
            };
            if let Some(new) = super::super::inject(&pod, &BTreeMap::new(), cfg).pod() {
                let after = PodTemplateSpec {
                    metadata: Some(new.metadata.clone()),
                    spec: new.spec.clone(),
                };
                let to_value = |t| serde_json::to_value(t).expect("JSON");
                overlay_value(doc, &to_value(&typed), &to_value(&after));
            }
        }
        serde_saphyr::to_string_multiple(&docs).expect("YAML")
    }

    /// For thousands of random pods (the kinds of container inject tells apart, in any number
    /// and order), the stream written is the one the whole template, typed, gave.
    #[test]
    fn compact_templates_are_written_as_whole_ones_were() {
        let its = InjectorConfig::from_vars([(
            "KSIT_SIDECAR_ITS_KUBECONFIG_SECRET".to_string(),
            "its1-kubeconfig".to_string(),
        )])
        .expect("valid");
        let plain = InjectorConfig::from_vars([]).expect("defaults are valid");
        let mut rng = crate::inject::random::Rng(0x2545_f491_4f6c_dd1d);
        for round in 0..1500 {
            let mut cfg = if round % 2 == 0 {
                plain.clone()
            } else {
                its.clone()
            };
            cfg.default_opt_in = round % 3 != 0;
            let mut pod = crate::inject::random::pod(&mut rng);
            pod["apiVersion"] = json!("v1");
            pod["kind"] = json!("Pod");
            if let Some(first) = pod["spec"]["containers"].get_mut(0) {
                // What the typed model normalises ("1") stays as written.
                first["resources"] = json!({"limits": {"cpu": 1}});
            }
            let input = serde_saphyr::to_string(&pod).expect("YAML");
            let out = inject_manifests(&input, &cfg).expect("injected");
            assert_eq!(out.yaml, whole(&input, &cfg), "{input}");
        }
    }
}
