//! The status page at `/` against the real test control plane (`make controlplane-up`): the
//! clusters it lists follow their IntegrationTargets, and nothing the API holds reaches the page
//! as markup.

mod common;

use common::exporter::WAIT;
use common::{
    ControlPlane, Exporter, TestNamespace, control_plane, eventually, start, test_namespace,
};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::json;

fn targets(cp: &ControlPlane, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("ksit.io", "v1alpha1", "IntegrationTarget"),
        "integrationtargets",
    );
    Api::namespaced_with(cp.client.clone(), ns, &ar)
}

async fn create_target(api: &Api<DynamicObject>, name: &str, cluster: &str) {
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "ksit.io/v1alpha1", "kind": "IntegrationTarget",
        "metadata": {"name": name}, "spec": {"clusterName": cluster}
    }))
    .expect("a valid object");
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("creating IntegrationTarget {name}: {e}"));
}

async fn set_status(api: &Api<DynamicObject>, name: &str, status: serde_json::Value) {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .unwrap_or_else(|e| panic!("patching the status of {name}: {e}"));
}

fn ready() -> serde_json::Value {
    json!({"ready": true, "message": "connected", "lastSyncTime": "2026-11-25T10:00:00Z",
           "conditions": [{"type": "Ready", "status": "True", "reason": "ClusterReady", "message": "ok",
                           "lastTransitionTime": "2026-11-25T10:00:00Z"}]})
}

fn failing(message: &str) -> serde_json::Value {
    json!({"ready": false, "message": message,
           "conditions": [{"type": "Ready", "status": "False", "reason": "SecretNotFound", "message": message,
                           "lastTransitionTime": "2026-11-25T10:01:00Z"}]})
}

async fn exporter(cp: &ControlPlane, ns: &TestNamespace) -> Exporter {
    let kc = cp.kubeconfig.display().to_string();
    start(&[
        ("KUBECONFIG", kc.as_str()),
        ("KSIT_KUBERNETES", "true"),
        ("KSIT_WATCH_NAMESPACES", ns.name.as_str()),
        ("KSIT_CR_METRICS", "always"),
    ])
    .await
}

/// Fetches `/` until `check` holds (up to [`WAIT`]); the failure shows the last page.
async fn page_until(e: &Exporter, what: &str, check: impl Fn(&str) -> bool) -> String {
    eventually(WAIT, what, || async {
        let reply = e.get("/").await;
        assert_eq!(reply.status, 200, "/: {}", reply.text());
        assert_eq!(
            reply.headers.get("content-type").map(String::as_str),
            Some("text/html; charset=utf-8")
        );
        let page = reply.text();
        if check(&page) { Ok(page) } else { Err(page) }
    })
    .await
}

/// The row of target `name`: `<tr ...` up to its `</tr>`.
fn row<'a>(page: &'a str, ns: &str, name: &str) -> Option<&'a str> {
    let start = page.find(&format!(
        "<tr data-kind=\"IntegrationTarget\" data-namespace=\"{ns}\" data-name=\"{name}\""
    ))?;
    let len = page[start..].find("</tr>")?;
    Some(&page[start..start + len])
}

fn state_of<'a>(page: &'a str, ns: &str, name: &str) -> Option<&'a str> {
    let row = row(page, ns, name)?;
    let at = row.find("data-state=\"")? + "data-state=\"".len();
    row[at..].split('"').next()
}

#[tokio::test]
async fn clusters_follow_their_targets() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let ns = test_namespace(&cp, "status-page", &[]).await;
    let e = exporter(&cp, &ns).await;
    let api = targets(&cp, &ns.name);
    create_target(&api, "edge-ok", "cluster-ok").await;
    create_target(&api, "edge-bad", "cluster-bad").await;
    set_status(&api, "edge-ok", ready()).await;
    set_status(
        &api,
        "edge-bad",
        failing("secret cluster-bad-kubeconfig not found"),
    )
    .await;

    let n = &ns.name;
    let page = page_until(&e, "one ready and one failing target", |p| {
        state_of(p, n, "edge-ok") == Some("ready") && state_of(p, n, "edge-bad") == Some("failing")
    })
    .await;
    assert!(
        page.contains("<p id=\"summary\">2 clusters: 1 ready, 1 failing, 0 unknown</p>"),
        "{page}"
    );
    let bad = row(&page, n, "edge-bad").expect("listed");
    for cell in [
        "<td class=\"failing\">failing</td>",
        "<td>cluster-bad</td>",
        "<td>SecretNotFound</td>",
        "<td>secret cluster-bad-kubeconfig not found</td>",
    ] {
        assert!(bad.contains(cell), "no {cell:?} in {bad}");
    }
    let ok = row(&page, n, "edge-ok").expect("listed");
    assert!(ok.contains("<td>2026-11-25T10:00:00Z</td>"), "{ok}");
    assert!(
        page.find("data-name=\"edge-bad\"") < page.find("data-name=\"edge-ok\""),
        "failing first"
    );
    assert!(
        page.contains("<tr data-collector=\"integrationtargets\" data-up=\"1\">"),
        "{page}"
    );

    // The page changes with the object: the ready one fails.
    set_status(
        &api,
        "edge-ok",
        failing("dial tcp 10.0.0.1:6443: i/o timeout"),
    )
    .await;
    let page = page_until(&e, "both failing", |p| {
        state_of(p, n, "edge-ok") == Some("failing")
    })
    .await;
    assert!(
        page.contains("<p id=\"summary\">2 clusters: 0 ready, 2 failing, 0 unknown</p>"),
        "{page}"
    );
    assert!(
        page.contains("dial tcp 10.0.0.1:6443: i/o timeout"),
        "{page}"
    );

    // Unchanged state, same page: served from the cache, byte for byte.
    let again = e.get("/").await.text();
    assert_eq!(again, page);
    let not_found = e.get("/nope").await;
    assert_eq!(not_found.status, 404);
}

/// Object names are DNS names, but a clusterName, a reason and a message are any text: none of
/// it reaches the page as markup.
#[tokio::test]
async fn hostile_text_from_the_api_is_escaped() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let ns = test_namespace(&cp, "status-hostile", &[]).await;
    let e = exporter(&cp, &ns).await;
    let api = targets(&cp, &ns.name);
    let hostile = "<script>alert(\"x&'y\")</script>";
    create_target(&api, "edge-x", hostile).await;
    set_status(
        &api,
        "edge-x",
        json!({"ready": false, "message": format!("{hostile}\u{1b}[31m<img src=x onerror=alert(1)>\u{7}"),
               "conditions": [{"type": "Ready", "status": "False", "reason": "Bad",
                               "message": hostile, "lastTransitionTime": "2026-11-25T10:01:00Z"}]}),
    )
    .await;
    let n = &ns.name;
    let page = page_until(&e, "the hostile target failing", |p| {
        state_of(p, n, "edge-x") == Some("failing")
    })
    .await;
    let row = row(&page, n, "edge-x").expect("listed");
    assert!(
        row.contains("<td>&lt;script&gt;alert(&quot;x&amp;&#39;y&quot;)&lt;/script&gt;</td>"),
        "{row}"
    );
    assert!(row.contains("&lt;img src=x onerror=alert(1)&gt;"), "{row}");
    assert!(!page.contains("<script"), "{page}");
    assert!(!page.contains("<img"), "{page}");
    assert!(
        !page.contains('\u{1b}') && !page.contains('\u{7}'),
        "{page}"
    );
}
