//! What must hold for any AdmissionReview body, any manifest stream, any watched object and any
//! `Accept` header and any pod the webhook reads compactly: the properties of the fuzz targets
//! `admission_review`, `inject_manifests`, `kube_objects`, `accept` and `compact_pod`, which
//! `tests/fuzz_inputs.rs` also replays on stable over their corpora.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use ksit_exporter::inject::{Outcome, inject};

use ksit_exporter::inject::InjectorConfig;
use ksit_exporter::inject::manifests::inject_manifests;
use ksit_exporter::kube::exposition_of;
use ksit_exporter::metrics::{Format, negotiate};
use ksit_exporter::upstream::parse::parse;
use ksit_exporter::webhook::admission::{Entry, review};

fn config() -> InjectorConfig {
    InjectorConfig::from_vars([]).expect("the injector's defaults are valid")
}

/// Any body gets an answer, never a panic: 200 with a JSON AdmissionReview, or a 4xx.
pub fn review_holds(body: &[u8]) -> Result<(), String> {
    let cfg = config();
    for entry in [Entry::Pod, Entry::Namespace] {
        let answer = review(body, entry, &cfg);
        match answer.status.as_u16() {
            200 => {
                let v: serde_json::Value = serde_json::from_slice(&answer.body)
                    .map_err(|e| format!("{entry:?}: a 200 whose body is not JSON: {e}"))?;
                if v["response"]["uid"].as_str().is_none() {
                    return Err(format!("{entry:?}: a 200 without response.uid: {v}"));
                }
            }
            400..=499 => {}
            status => return Err(format!("{entry:?}: status {status}: {}", answer.detail)),
        }
    }
    Ok(())
}

/// Any text is injected or refused with an error, never a panic; what is injected is injected
/// once: running `inject` again on its output changes nothing.
pub fn manifests_hold(bytes: &[u8]) -> Result<(), String> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(());
    };
    let cfg = config();
    let Ok(once) = inject_manifests(text, &cfg) else {
        return Ok(());
    };
    let twice = inject_manifests(&once.yaml, &cfg).map_err(|e| {
        format!(
            "the output of inject does not read back: {e}\n{}",
            once.yaml
        )
    })?;
    if twice.yaml != once.yaml {
        return Err(format!(
            "a second inject changed the output:\n{}\n---- became ----\n{}",
            once.yaml, twice.yaml
        ));
    }
    Ok(())
}

/// Any JSON, read as each kind of watched object, renders series that read back as the text
/// format: every line well formed and no series twice, whatever the names, labels, conditions
/// and cluster lists hold (anyone who may write the object writes them).
pub fn objects_hold(json: &[u8]) -> Result<(), String> {
    for (kind, text) in exposition_of(json) {
        let Some(text) = text else {
            continue;
        };
        let parsed = parse(&text, &|_| false);
        if let Some(r) = parsed.rejected.first() {
            return Err(format!(
                "{kind}: the exposition does not read back ({:?}: {}):\n{}",
                r.reason,
                r.detail,
                String::from_utf8_lossy(&text)
            ));
        }
    }
    Ok(())
}

/// Any `Accept` field values (one per line) pick a format without a panic; OpenMetrics only
/// when some value names its media type, the text format when none does.
pub fn accept_holds(bytes: &[u8]) -> Result<(), String> {
    let values: Vec<hyper::header::HeaderValue> = bytes
        .split(|b| *b == b'\n')
        .filter_map(|v| hyper::header::HeaderValue::from_bytes(v).ok())
        .collect();
    let format = negotiate(&values);
    let named = values.iter().any(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .to_ascii_lowercase()
            .contains("openmetrics-text")
    });
    if format == Format::OpenMetrics && !named {
        return Err(format!("OpenMetrics for {values:?}"));
    }
    Ok(())
}

/// Any pod the webhook reads compactly (only the containers inject's decision can depend on)
/// gets the answer the whole pod gets: the same reason, warnings and patch as inject of the
/// whole typed pod and a diff of the whole documents. Its corpus holds the dense shapes (many
/// containers, managers, ports) whose cost the compact reading bounds.
pub fn compact_holds(pod: &[u8]) -> Result<(), String> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(pod) else {
        return Ok(());
    };
    let Ok(typed) = serde_json::from_value::<Pod>(value.clone()) else {
        return Ok(());
    };
    let body = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE", "userInfo": {}, "object": value,
        }
    });
    let cfg = config();
    let answer = review(body.to_string(), Entry::Pod, &cfg);
    if answer.status.as_u16() != 200 {
        return Err(format!(
            "a pod that reads typed got {}: {}",
            answer.status, answer.detail
        ));
    }
    let outcome = inject(&typed, &BTreeMap::new(), &cfg);
    let (reason, warnings): (&str, Vec<String>) = match &outcome {
        Outcome::Injected { warnings, .. } => ("none", warnings.clone()),
        Outcome::Skipped {
            reason,
            detail,
            pod,
        } => (
            reason.as_str(),
            pod.iter().map(|_| format!("{reason}: {detail}")).collect(),
        ),
    };
    if answer.reason != reason {
        return Err(format!(
            "reason {} where the whole pod's is {reason}",
            answer.reason
        ));
    }
    let sent: serde_json::Value =
        serde_json::from_slice(&answer.body).map_err(|e| format!("not JSON: {e}"))?;
    let response = &sent["response"];
    let sent_warnings: Vec<String> = response
        .get("warnings")
        .and_then(|w| serde_json::from_value(w.clone()).ok())
        .unwrap_or_default();
    if sent_warnings != warnings {
        return Err(format!(
            "warnings {sent_warnings:?} where the whole pod's are {warnings:?}"
        ));
    }
    let whole = outcome.pod().map(|new| {
        let to_value = |p: &Pod| serde_json::to_value(p).expect("a pod converts to JSON");
        json_patch::diff(&to_value(&typed), &to_value(new))
    });
    let patch = match response.get("patch").and_then(|p| p.as_str()) {
        None => None,
        Some(text) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| format!("the patch is not base64: {e}"))?;
            Some(
                serde_json::from_slice::<json_patch::Patch>(&raw)
                    .map_err(|e| format!("the patch is not a JSONPatch: {e}"))?,
            )
        }
    };
    if patch != whole {
        return Err(format!(
            "patch {patch:?} where the whole pod's is {whole:?}"
        ));
    }
    Ok(())
}
