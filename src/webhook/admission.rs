//! One AdmissionReview in, one answer out: request bytes to status and response bytes, with no
//! I/O, so every case is a unit test without TLS or an API server.
//!
//! The decision itself is [`crate::inject::inject`]; this turns its outcome into a JSONPatch
//! against the pod as the API server sent it. `dryRun` requests get exactly the same answer:
//! the webhook has no side effects (`sideEffects: None`), so there is nothing to hold back.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hyper::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::{DynamicResourceScope, ObjectMeta, Resource, TypeMeta};
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::inject::compact::{self, Compact, SlimPod};
use crate::inject::{self, INJECT_KEY, InjectorConfig, Outcome};
use crate::telemetry::excerpt;

/// Largest request body read. The API server's own limit on a request is 3 MiB, so no real
/// AdmissionReview of a pod comes near it.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

const API_VERSION: &str = "admission.k8s.io/v1";

/// How much of the request a message (and so the log) quotes, in characters: a parse error may
/// hold a whole string of the request, which can be megabytes.
const QUOTE: usize = 200;

/// Outside text as a message may hold it: short and escaped.
fn quote(text: &str) -> String {
    excerpt(text.as_bytes(), QUOTE)
}

/// The admission's outcome, a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Injected,
    Skipped,
    Error,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Injected => "injected",
            Decision::Skipped => "skipped",
            Decision::Error => "error",
        }
    }
}

/// What to send back, and what to count and log.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub decision: Decision,
    /// `none` when injected, a [`inject::SkipReason`] label, `not_a_pod`, `not_a_create`, or for
    /// errors `bad_request`, `too_large`, `internal`.
    pub reason: &'static str,
    /// For the log: what was decided about which object.
    pub detail: String,
}

impl Answer {
    /// A request the webhook cannot read: HTTP 400 and a message (the API server logs it and,
    /// with `failurePolicy: Ignore`, admits the pod untouched).
    pub fn bad_request(message: String) -> Self {
        Self::error(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn error(status: StatusCode, reason: &'static str, message: String) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{message}\n").into_bytes(),
            decision: Decision::Error,
            reason,
            detail: message,
        }
    }
}

/// Which webhook entry called: the namespace one only matches namespaces labelled
/// `ksit.io/inject=enabled` (the API server evaluates its namespaceSelector), so the webhook
/// learns the namespace opted in without reading the namespace itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Pod,
    Namespace,
}

/// Answers one AdmissionReview. A body given by value is dropped as soon as the pod is read,
/// before inject copies the pod into the injected one.
///
/// The body is read twice, and neither time into a `serde_json::Value`: first the request
/// with its object skipped, then, only when the request creates a pod, the object alone into
/// the part of a [`Pod`] that inject reads and changes ([`SlimPod`]), so that memory follows
/// that part's size, not the shape of the rest of the pod. A request of another kind is answered without its object ever
/// being parsed as a Pod (it would not be one).
pub fn review(body: impl AsRef<[u8]>, entry: Entry, cfg: &InjectorConfig) -> Answer {
    let review: Review = match serde_json::from_slice(body.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            return Answer::bad_request(format!(
                "malformed AdmissionReview: {}",
                quote(&e.to_string())
            ));
        }
    };
    if review.api_version != API_VERSION || review.kind != "AdmissionReview" {
        return Answer::bad_request(format!(
            "expected kind AdmissionReview of {API_VERSION}, got kind \"{}\" of \"{}\" \
             (register the webhook with admissionReviewVersions: [v1])",
            quote(&review.kind),
            quote(&review.api_version)
        ));
    }
    let Some(mut request) = review.request else {
        return Answer::bad_request("AdmissionReview without a request".into());
    };
    request.types = TypeMeta {
        api_version: review.api_version,
        kind: review.kind,
    };
    let response = AdmissionResponse::from(&request);
    let what = quote(&format!(
        "{}/{} {}",
        request.namespace.as_deref().unwrap_or(""),
        request.name,
        request.kind.kind
    ));

    let is_pod = request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.sub_resource.is_none();
    if !is_pod {
        return allowed(
            response,
            "not_a_pod",
            format!("ksit-exporter injects only into pods; {what} left unchanged"),
        );
    }
    if request.object.is_none() || request.operation != Operation::Create {
        return allowed(
            response,
            "not_a_create",
            format!("ksit-exporter injects only when a pod is created; {what} left unchanged"),
        );
    }
    let read = compact::read(|| {
        serde_json::from_slice::<PodReview>(body.as_ref()).map(|r| r.request.object)
    });
    let Compact {
        pod,
        elided,
        layout,
    } = match read {
        Ok(read) => read,
        Err(e) => {
            return Answer::bad_request(format!(
                "the object of {what} is not a Pod: {}",
                quote(&e.to_string())
            ));
        }
    };
    drop(body);

    let namespace_labels = match entry {
        Entry::Namespace => BTreeMap::from([(INJECT_KEY.to_string(), "enabled".to_string())]),
        Entry::Pod => BTreeMap::new(),
    };
    let (decision, reason, warnings, detail, new) =
        match inject::inject_elided(&pod, &elided, &namespace_labels, cfg) {
            Outcome::Injected { pod, warnings } => (
                Decision::Injected,
                "none",
                warnings,
                format!("injected into {what}"),
                Some(pod),
            ),
            Outcome::Skipped {
                reason,
                detail,
                pod: refused,
            } => (
                Decision::Skipped,
                reason.as_str(),
                // A pod that asked for the sidecar and cannot have it: tell whoever created it.
                refused
                    .iter()
                    .map(|_| format!("{reason}: {detail}"))
                    .collect(),
                format!("{what} skipped: {reason}: {detail}"),
                refused,
            ),
        };
    let mut response = response;
    if let Some(new) = new {
        let patch = match patch(pod, new) {
            Ok(p) => layout.remap(p),
            Err(e) => return internal(e.to_string()),
        };
        response = match response.with_patch(patch) {
            Ok(r) => r,
            Err(e) => return internal(e.to_string()),
        };
    }
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    respond(response, decision, reason, detail)
}

/// An AdmissionReview as sent: kube's `AdmissionReview` flattens its `TypeMeta`, which makes
/// serde buffer the whole document before reading it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    request: Option<AdmissionRequest<Unread>>,
}

/// The same review read again for its object alone, once it is known to be a pod's creation.
#[derive(Deserialize)]
struct PodReview {
    request: PodRequest,
}

#[derive(Deserialize)]
struct PodRequest {
    object: SlimPod,
}

/// An object checked to be a JSON object and otherwise skipped, allocating nothing: the first
/// reading of a review only needs to know one is there. A kube [`Resource`] only because
/// [`AdmissionRequest`] asks for one.
#[derive(Default)]
struct Unread(ObjectMeta);

impl<'de> Deserialize<'de> for Unread {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Skip;
        impl<'de> Visitor<'de> for Skip {
            type Value = Unread;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unread, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Unread::default())
            }
        }
        deserializer.deserialize_map(Skip)
    }
}

impl Resource for Unread {
    type DynamicType = ();
    type Scope = DynamicResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn meta(&self) -> &ObjectMeta {
        &self.0
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0
    }
}

/// The JSONPatch that turns `old` into `new`, both typed, so that it holds only what inject
/// changed, not artefacts of how the API server and k8s-openapi each spell an empty field.
///
/// What the two share is taken out of both before they are serialized, so a large pod is not
/// copied twice more into JSON values: `json_patch::diff` compares object members by key and
/// array elements by index, so a member equal on both sides, dropped from both, or a pair of
/// equal elements, replaced by another equal pair, adds no operation and changes no other.
/// The patch is the one a diff of the whole documents gives (a test checks it).
fn patch(mut old: Pod, mut new: Pod) -> Result<json_patch::Patch, serde_json::Error> {
    let (mut old_notes, mut new_notes) = (
        old.metadata.annotations.take(),
        new.metadata.annotations.take(),
    );
    if let (Some(old), Some(new)) = (&mut old_notes, &mut new_notes) {
        new.retain(|key, value| {
            let same = old.get(key) == Some(value);
            if same {
                old.remove(key);
            }
            !same
        });
    }
    forget_if_equal(&mut old.metadata, &mut new.metadata);
    (old.metadata.annotations, new.metadata.annotations) = (old_notes, new_notes);

    if let (Some(old), Some(new)) = (&mut old.spec, &mut new.spec) {
        let mut containers = (
            std::mem::take(&mut old.containers),
            std::mem::take(&mut new.containers),
        );
        let mut init = (old.init_containers.take(), new.init_containers.take());
        forget_if_equal(old, new);
        for (old, new) in containers.0.iter_mut().zip(&mut containers.1) {
            forget_if_equal(old, new);
        }
        if let (Some(old), Some(new)) = (&mut init.0, &mut init.1) {
            for (old, new) in old.iter_mut().zip(new) {
                forget_if_equal(old, new);
            }
        }
        (old.containers, new.containers) = containers;
        (old.init_containers, new.init_containers) = init;
    }
    forget_if_equal(&mut old.status, &mut new.status);
    Ok(json_patch::diff(
        &serde_json::to_value(&old)?,
        &serde_json::to_value(&new)?,
    ))
}

/// Replaces both by the same small value when they are equal.
fn forget_if_equal<T: PartialEq + Default>(old: &mut T, new: &mut T) {
    if old == new {
        (*old, *new) = (T::default(), T::default());
    }
}

fn allowed(mut response: AdmissionResponse, reason: &'static str, message: String) -> Answer {
    response.result.message = message.clone();
    respond(response, Decision::Skipped, reason, message)
}

fn respond(
    mut response: AdmissionResponse,
    decision: Decision,
    reason: &'static str,
    detail: String,
) -> Answer {
    // kube serializes the patch bytes as a JSON array of numbers; the API server also accepts
    // that, but its own encoding of []byte is base64, three to four times smaller. Taken out
    // before the review is made a JSON value, where each byte would be a 32-byte number: a
    // 500 KB patch (the refusal of a pod naming 65,000 containers) cost 16 MiB that way.
    let patch = response.patch.take();
    let body = serde_json::to_value(response.into_review()).and_then(|mut review| {
        if let Some(patch) = patch {
            review["response"]["patch"] = BASE64.encode(patch).into();
        }
        serde_json::to_vec(&review)
    });
    match body {
        Ok(body) => Answer {
            status: StatusCode::OK,
            content_type: "application/json",
            body,
            decision,
            reason,
            detail,
        },
        Err(e) => internal(e.to_string()),
    }
}

fn internal(message: String) -> Answer {
    Answer::error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("cannot build the admission response: {message}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::{SIDECAR_NAME, STATUS_ANNOTATION, random};
    use serde_json::{Value, json};

    fn cfg() -> InjectorConfig {
        InjectorConfig::from_vars(Vec::new()).unwrap()
    }

    fn review_of(object: Value, kind: Value, dry_run: bool) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": kind,
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "team-a",
                "operation": "CREATE",
                "userInfo": {"username": "admin"},
                "object": object,
                "dryRun": dry_run,
            }
        }))
        .unwrap()
    }

    fn pod_kind() -> Value {
        json!({"group": "", "version": "v1", "kind": "Pod"})
    }

    /// The KSIT manager as shipped: metrics on 8080, which the sidecar takes over.
    fn manager_pod(labels: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "ksit-controller-manager-", "namespace": "team-a", "labels": labels},
            "spec": {"containers": [{
                "name": "manager", "image": "ghcr.io/kubestellar/ksit:0.1.0",
                "args": ["--leader-elect", "--metrics-bind-address=:8080", "--health-probe-bind-address=:8081"],
            }]}
        })
    }

    fn response(a: &Answer) -> Value {
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&a.body)
        );
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(v["response"]["allowed"], true);
        v["response"].clone()
    }

    /// The pod the API server would store: the patch applied to what it sent.
    fn patched(pod: &Value, resp: &Value) -> Value {
        assert_eq!(resp["patchType"], "JSONPatch");
        let raw = BASE64.decode(resp["patch"].as_str().unwrap()).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&raw).unwrap();
        let mut doc = pod.clone();
        json_patch::patch(&mut doc, &patch).unwrap();
        doc
    }

    #[test]
    fn a_labelled_pod_gets_a_patch_that_yields_the_injected_pod() {
        let pod = manager_pod(json!({"ksit.io/inject": "true"}));
        let a = review(
            review_of(pod.clone(), pod_kind(), false),
            Entry::Pod,
            &cfg(),
        );
        assert_eq!((a.decision, a.reason), (Decision::Injected, "none"));
        let stored = patched(&pod, &response(&a));
        let typed: Pod = serde_json::from_value(stored.clone()).unwrap();
        let Outcome::Injected { pod: expected, .. } = inject::inject(
            &serde_json::from_value(pod).unwrap(),
            &BTreeMap::new(),
            &cfg(),
        ) else {
            panic!("the function injects this pod")
        };
        assert_eq!(typed, expected);
        let init = &stored["spec"]["initContainers"];
        assert_eq!(init[0]["name"], SIDECAR_NAME);
        assert_eq!(init[0]["restartPolicy"], "Always");
        assert!(
            stored["metadata"]["annotations"][STATUS_ANNOTATION]
                .as_str()
                .unwrap()
                .starts_with("injected: native")
        );
    }

    #[test]
    fn the_namespace_entry_opts_in_an_unlabelled_pod_and_the_pod_entry_does_not() {
        let pod = manager_pod(json!({"app": "x"}));
        let body = review_of(pod, pod_kind(), false);
        let a = review(&body, Entry::Namespace, &cfg());
        assert_eq!(a.decision, Decision::Injected);
        let a = review(&body, Entry::Pod, &cfg());
        assert_eq!((a.decision, a.reason), (Decision::Skipped, "not_opted_in"));
        let r = response(&a);
        assert!(r.get("patch").is_none(), "{r}");
        assert!(r.get("warnings").is_none(), "{r}");
    }

    #[test]
    fn an_already_injected_pod_is_left_alone_so_both_entries_can_match() {
        let pod = manager_pod(json!({"ksit.io/inject": "true"}));
        let first = review(
            review_of(pod.clone(), pod_kind(), false),
            Entry::Namespace,
            &cfg(),
        );
        let stored = patched(&pod, &response(&first));
        let second = review(review_of(stored, pod_kind(), false), Entry::Pod, &cfg());
        assert_eq!(second.reason, "already_injected");
        assert!(response(&second).get("patch").is_none());
    }

    #[test]
    fn a_refused_pod_is_annotated_and_warned_about() {
        let mut pod = manager_pod(json!({"ksit.io/inject": "true"}));
        pod["spec"]["hostNetwork"] = json!(true);
        let a = review(
            review_of(pod.clone(), pod_kind(), false),
            Entry::Pod,
            &cfg(),
        );
        assert_eq!((a.decision, a.reason), (Decision::Skipped, "host_network"));
        let r = response(&a);
        let warning = r["warnings"][0].as_str().unwrap();
        assert!(warning.starts_with("host_network: "), "{warning}");
        let stored = patched(&pod, &r);
        assert_eq!(
            stored["metadata"]["annotations"][STATUS_ANNOTATION],
            format!("skipped: {warning}")
        );
        assert_eq!(stored["spec"], pod["spec"]);
    }

    #[test]
    fn dry_run_gets_the_same_answer() {
        let pod = manager_pod(json!({"ksit.io/inject": "true"}));
        let wet = review(
            review_of(pod.clone(), pod_kind(), false),
            Entry::Pod,
            &cfg(),
        );
        let dry = review(review_of(pod, pod_kind(), true), Entry::Pod, &cfg());
        assert_eq!(wet.body, dry.body);
        assert_eq!(dry.decision, Decision::Injected);
    }

    #[test]
    fn a_deployment_is_allowed_unchanged_with_a_message() {
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "labels": {"ksit.io/inject": "true"}},
            "spec": {"selector": {}, "template": {"spec": {"containers": []}}}});
        let kind = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
        let a = review(review_of(deployment, kind, false), Entry::Namespace, &cfg());
        assert_eq!((a.decision, a.reason), (Decision::Skipped, "not_a_pod"));
        let r = response(&a);
        assert!(r.get("patch").is_none(), "{r}");
        assert!(
            r["status"]["message"]
                .as_str()
                .unwrap()
                .contains("only into pods"),
            "{r}"
        );
    }

    #[test]
    fn an_update_is_not_touched() {
        let mut body: Value = serde_json::from_slice(&review_of(
            manager_pod(json!({"ksit.io/inject": "true"})),
            pod_kind(),
            false,
        ))
        .unwrap();
        body["request"]["operation"] = json!("UPDATE");
        let a = review(serde_json::to_vec(&body).unwrap(), Entry::Pod, &cfg());
        assert_eq!(a.reason, "not_a_create");
        assert!(response(&a).get("patch").is_none());
    }

    #[test]
    fn malformed_input_is_a_400_with_a_message() {
        for (body, expect) in [
            (&b"{not json"[..], "malformed AdmissionReview"),
            (b"", "malformed AdmissionReview"),
            (b"[]", "malformed AdmissionReview"),
            (
                br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#,
                "admissionReviewVersions",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
                "without a request",
            ),
        ] {
            let a = review(body, Entry::Pod, &cfg());
            assert_eq!(a.status, StatusCode::BAD_REQUEST);
            assert_eq!((a.decision, a.reason), (Decision::Error, "bad_request"));
            let text = String::from_utf8(a.body).unwrap();
            assert!(text.contains(expect), "{text}");
        }
    }

    #[test]
    fn an_annotation_the_sidecar_cannot_start_with_is_refused_with_a_warning() {
        let mut pod = manager_pod(json!({"ksit.io/inject": "true"}));
        pod["metadata"]["annotations"] = json!({"ksit.io/probe-interval": "soon"});
        let a = review(
            review_of(pod.clone(), pod_kind(), false),
            Entry::Pod,
            &cfg(),
        );
        assert_eq!(
            (a.decision, a.reason),
            (Decision::Skipped, "invalid_annotation")
        );
        let r = response(&a);
        let warning = r["warnings"][0].as_str().unwrap();
        assert!(
            warning.starts_with(r#"invalid_annotation: ksit.io/probe-interval="soon", expected"#),
            "{warning}"
        );
        let stored = patched(&pod, &r);
        assert_eq!(
            stored["metadata"]["annotations"][STATUS_ANNOTATION],
            format!("skipped: {warning}")
        );
        assert_eq!(stored["spec"], pod["spec"], "no sidecar");
    }

    #[test]
    fn a_container_of_the_sidecars_name_that_is_not_ours_is_warned_about() {
        let mut pod = manager_pod(json!({"ksit.io/inject": "true"}));
        pod["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": SIDECAR_NAME, "image": "busybox"}));
        let a = review(
            review_of(pod.clone(), pod_kind(), false),
            Entry::Pod,
            &cfg(),
        );
        assert_eq!((a.decision, a.reason), (Decision::Skipped, "name_conflict"));
        let r = response(&a);
        let warning = r["warnings"][0].as_str().unwrap();
        assert!(warning.contains("is not the sidecar"), "{warning}");
        assert_eq!(patched(&pod, &r)["spec"], pod["spec"]);
    }

    #[test]
    fn request_content_is_quoted_short_and_escaped() {
        let long = format!("\u{1b}[31m{}", "x".repeat(1 << 20));
        let bodies = [
            json!({"apiVersion": long, "kind": "AdmissionReview"}),
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": "u", "operation": long}}),
            serde_json::from_slice(&review_of(
                json!({"metadata": {"name": long}, "spec": {"containers": long}}),
                pod_kind(),
                false,
            ))
            .unwrap(),
        ];
        for body in bodies {
            let a = review(serde_json::to_vec(&body).unwrap(), Entry::Pod, &cfg());
            assert_eq!(a.status, StatusCode::BAD_REQUEST);
            assert!(a.body.len() < 1024, "{} bytes", a.body.len());
            assert!(a.detail.len() < 1024, "{} bytes", a.detail.len());
            assert!(!a.detail.contains('\u{1b}'), "{}", a.detail);
        }
    }

    #[test]
    fn the_patch_is_the_diff_of_the_whole_documents() {
        let mut pods = vec![
            manager_pod(json!({"ksit.io/inject": "true"})),
            // Nothing to take over, no annotations, shared parts everywhere.
            json!({"metadata": {"name": "p", "labels": {"ksit.io/inject": "true"},
                                "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
                   "spec": {"initContainers": [{"name": "init", "image": "busybox"}],
                            "containers": [{"name": "a", "image": "a"}, {"name": "b", "image": "b"}],
                            "volumes": [{"name": "v", "emptyDir": {}}]},
                   "status": {"phase": "Pending"}}),
        ];
        let mut classic = manager_pod(json!({"ksit.io/inject": "true"}));
        classic["metadata"]["annotations"] =
            json!({"ksit.io/sidecar-mode": "classic", "example.com/a": "1", "example.com/z": "2"});
        classic["spec"]["restartPolicy"] = json!("Never");
        pods.push(classic);
        let mut refused = manager_pod(json!({"ksit.io/inject": "true"}));
        refused["metadata"]["annotations"] = json!({"example.com/a": "1"});
        refused["spec"]["hostNetwork"] = json!(true);
        pods.push(refused);

        let mut cases = 0;
        for pod in pods {
            let pod: Pod = serde_json::from_value(pod).unwrap();
            let outcome = inject::inject(&pod, &BTreeMap::new(), &cfg());
            let new = outcome
                .pod()
                .expect("each pod is injected or annotated")
                .clone();
            let whole = json_patch::diff(
                &serde_json::to_value(&pod).unwrap(),
                &serde_json::to_value(&new).unwrap(),
            );
            assert!(!whole.0.is_empty());
            assert_eq!(patch(pod, new).unwrap(), whole);
            cases += 1;
        }
        assert_eq!(cases, 4);
    }

    #[test]
    fn a_pod_kind_with_a_non_pod_object_is_a_400() {
        let body = review_of(json!({"spec": {"containers": "nope"}}), pod_kind(), false);
        let a = review(&body, Entry::Pod, &cfg());
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(a.detail.contains("not a Pod"), "{}", a.detail);
    }

    /// The answer to a pod read slim is the one the whole pod gets: the same patch (a diff of
    /// the whole documents) for pods whose bulk is in fields inject does not read.
    #[test]
    fn a_pod_read_slim_gets_the_patch_of_the_whole_pod() {
        let env: Vec<Value> = (0..50)
            .map(|i| json!({"name": format!("E{i}"), "value": "v"}))
            .collect();
        let mut pods = Vec::new();
        let mut dense = manager_pod(json!({"ksit.io/inject": "true", "app": "x"}));
        dense["metadata"]["annotations"] = json!({"example.com/a": "1",
            "ksit.io/scrape-interval": "30s", "kubectl.kubernetes.io/default-container": "manager"});
        dense["metadata"]["managedFields"] = json!([{"manager": "m", "fieldsV1": {"f:a": {}}}]);
        dense["spec"]["containers"][0]["env"] = json!(env);
        dense["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "v", "mountPath": "/v"}]);
        dense["spec"]["volumes"] = json!([{"name": "v", "emptyDir": {}}]);
        dense["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "b", "image": "b", "env": env}));
        pods.push(dense.clone());
        dense["metadata"]["annotations"]["ksit.io/sidecar-mode"] = json!("classic");
        pods.push(dense.clone());
        dense["spec"]["hostNetwork"] = json!(true);
        pods.push(dense);
        pods.push(json!({"metadata": {"labels": {"ksit.io/inject": "true"}},
            "spec": {"containers": [{"name": "a", "env": env}]}}));

        for pod in pods {
            let full = review(
                review_of(pod.clone(), pod_kind(), false),
                Entry::Pod,
                &cfg(),
            );
            let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
            let new = inject::inject(&typed, &BTreeMap::new(), &cfg())
                .pod()
                .expect("injected or annotated")
                .clone();
            let whole = json_patch::diff(
                &serde_json::to_value(&typed).unwrap(),
                &serde_json::to_value(&new).unwrap(),
            );
            let r = response(&full);
            let raw = BASE64.decode(r["patch"].as_str().unwrap()).unwrap();
            let sent: json_patch::Patch = serde_json::from_slice(&raw).unwrap();
            assert_eq!(sent, whole, "{pod}");
        }
    }

    /// The webhook keeps of a pod's containers only those the decision can depend on; for
    /// thousands of random pods (the kinds of container inject tells apart, in any number and
    /// order, with and without the ITS volume), injected plainly, with the ITS kubeconfig or with
    /// the serving certificate (both add a volume beside the pod's own), its answer is the one a
    /// diff of the whole pods gives: the same decision, reason, warnings and patch.
    #[test]
    fn compact_pods_get_the_whole_pods_answer() {
        let its = InjectorConfig::from_vars([(
            "KSIT_SIDECAR_ITS_KUBECONFIG_SECRET".to_string(),
            "its1-kubeconfig".to_string(),
        )])
        .unwrap();
        let tls = InjectorConfig::from_vars(
            [
                ("KSIT_SIDECAR_TLS_SECRET", "ksit-exporter-metrics-tls"),
                ("KSIT_SIDECAR_METRICS_AUTH", "kubernetes"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap();
        let mut rng = random::Rng(0x9e37_79b9_7f4a_7c15);
        let mut reasons = BTreeMap::new();
        for round in 0..4000 {
            let cfg = match round % 3 {
                0 => cfg(),
                1 => its.clone(),
                _ => tls.clone(),
            };
            let pod = random::pod(&mut rng);
            let answer = review(review_of(pod.clone(), pod_kind(), false), Entry::Pod, &cfg);
            let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
            let outcome = inject::inject(&typed, &BTreeMap::new(), &cfg);
            let (reason, warnings) = match &outcome {
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
            assert_eq!(answer.reason, reason, "{pod}");
            *reasons.entry(reason).or_insert(0) += 1;
            let r = response(&answer);
            let sent_warnings: Vec<String> = r
                .get("warnings")
                .map(|w| serde_json::from_value(w.clone()).unwrap())
                .unwrap_or_default();
            assert_eq!(sent_warnings, warnings, "{pod}");
            match outcome.pod() {
                None => assert!(r.get("patch").is_none(), "{pod}"),
                Some(new) => {
                    let whole = json_patch::diff(
                        &serde_json::to_value(&typed).unwrap(),
                        &serde_json::to_value(new).unwrap(),
                    );
                    let raw = BASE64.decode(r["patch"].as_str().unwrap()).unwrap();
                    let sent: json_patch::Patch = serde_json::from_slice(&raw).unwrap();
                    assert_eq!(sent, whole, "{pod}");
                }
            }
        }
        // Every outcome was met, many times.
        for reason in [
            "none",
            "already_injected",
            "name_conflict",
            "port_conflict",
            "invalid_annotation",
            "not_opted_in",
        ] {
            assert!(reasons.get(reason).is_some_and(|n| *n > 20), "{reasons:?}");
        }
    }
}
