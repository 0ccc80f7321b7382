//! The exporter costs the API server only its watches: the first of each streams the current
//! objects (WatchList), and after it nothing but watch events.
//!
//! Alone in its test binary, so that no other test's requests are counted; the API server's own
//! requests (its identity Lease renewals: GET and PUT) are told apart by verb.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Scrape, control_plane, start, test_namespace};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;

/// The watched window; the issue asks for a steady minute.
const STEADY: Duration = Duration::from_secs(60);

/// The API server's own /metrics.
async fn apiserver_metrics(client: &kube::Client) -> String {
    client
        .request_text(
            http::Request::get("/metrics")
                .body(Vec::new())
                .expect("request"),
        )
        .await
        .expect("the API server's /metrics")
}

/// The resources the exporter reads.
const RESOURCES: [&str; 6] = [
    "pods",
    "replicasets",
    "deployments",
    "leases",
    "integrations",
    "integrationtargets",
];

/// The value of label `name` in a series key `family{a="x",...}` (labels without escapes, as
/// the API server's are).
fn label<'a>(series: &'a str, name: &str) -> &'a str {
    series
        .split_once('{')
        .and_then(|(_, labels)| {
            labels
                .trim_end_matches('}')
                .split(',')
                .find_map(|l| l.strip_prefix(name)?.strip_prefix("=\""))
        })
        .map(|v| v.trim_end_matches('"'))
        .unwrap_or_default()
}

/// `apiserver_request_total` by (verb, resource), for the resources the exporter reads.
async fn requests(client: &kube::Client) -> BTreeMap<(String, String), f64> {
    let scrape = Scrape::parse(&apiserver_metrics(client).await);
    let mut out = BTreeMap::new();
    for (series, value) in scrape.series("apiserver_request_total") {
        let resource = label(series, "resource");
        if RESOURCES.contains(&resource) {
            *out.entry((label(series, "verb").to_string(), resource.to_string()))
                .or_default() += value;
        }
    }
    out
}

#[tokio::test]
async fn only_watches_even_for_the_first_read() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let ns = test_namespace(&cp, "requests", &[]).await;
    let n = ns.name.as_str();
    let pods: Api<Pod> = Api::namespaced(cp.client.clone(), n);
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "mgr"}, "spec": {"containers": [{"name": "m", "image": "m"}]}}),
    )
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("pod");
    let leases: Api<Lease> = Api::namespaced(cp.client.clone(), n);
    let lease: Lease = serde_json::from_value(
        json!({"metadata": {"name": "ksit.io"}, "spec": {"holderIdentity": "mgr_1"}}),
    )
    .expect("lease");
    leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("lease");
    // One more than a page of client-go's and kube-rs's default size (500).
    let targets: Vec<String> = (0..501)
        .map(|i| {
            format!(
                "apiVersion: ksit.io/v1alpha1\nkind: IntegrationTarget\nmetadata:\n  name: t{i:03}\nspec:\n  clusterName: c{i:03}\n"
            )
        })
        .collect();
    cp.apply_yaml(n, &targets.join("---\n"));
    let at_start = requests(&cp.client).await;
    let kc = cp.kubeconfig.display().to_string();
    let e = start(&[
        ("KUBECONFIG", kc.as_str()),
        ("KSIT_KUBERNETES", "true"),
        ("POD_NAME", "mgr"),
        ("POD_NAMESPACE", n),
    ])
    .await;
    e.scrape_within(Duration::from_secs(30), "every watch established", |s| {
        ["pod", "lease", "integrations", "integrationtargets"]
            .iter()
            .all(|c| {
                s.is(
                    &format!("ksit_exporter_collector_up{{collector=\"{c}\"}}"),
                    1.0,
                )
            })
    })
    .await;
    // Let the initial lists finish being counted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = requests(&cp.client).await;
    let lists = |r: &BTreeMap<(String, String), f64>| {
        r.get(&("LIST".to_string(), "integrationtargets".to_string()))
            .copied()
            .unwrap_or(0.0)
    };
    // The first read is a watch that streams the current objects (sendInitialEvents), so even
    // 501 objects, past a page, cost no LIST at all.
    assert_eq!(
        lists(&before) - lists(&at_start),
        0.0,
        "501 objects are streamed by the first watch, not LISTed: {before:?}"
    );
    // Changes during the window arrive as watch events, not as re-lists (an event the watcher
    // cannot resume from would make it list again).
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("ksit.io", "v1alpha1", "IntegrationTarget"),
        "integrationtargets",
    );
    let targets: Api<kube::api::DynamicObject> = Api::namespaced_with(cp.client.clone(), n, &ar);
    for i in 0..3 {
        targets
            .patch(
                "t000",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(
                    json!({"metadata": {"labels": {"touched": i.to_string()}}}),
                ),
            )
            .await
            .expect("a label patch");
        tokio::time::sleep(STEADY / 4).await;
    }
    tokio::time::sleep(STEADY / 4).await;
    let after = requests(&cp.client).await;
    let grew: Vec<_> = after
        .iter()
        .filter(|(k, v)| **v > before.get(*k).copied().unwrap_or(0.0))
        // A WATCH is counted when it ends, whoever held it (a process of an earlier test binary,
        // or a watch renewed by its client): the steady state is about lists and gets.
        .filter(|((verb, _), _)| verb != "WATCH")
        .filter(|((verb, resource), _)| !(resource == "leases" && (verb == "GET" || verb == "PUT")))
        // The test's own patches.
        .filter(|((verb, resource), _)| !(resource == "integrationtargets" && verb == "PATCH"))
        .map(|((verb, resource), v)| {
            format!(
                "{verb} {resource}: +{}",
                v - before
                    .get(&(verb.clone(), resource.clone()))
                    .copied()
                    .unwrap_or(0.0)
            )
        })
        .collect();
    assert!(
        grew.is_empty(),
        "requests other than watches in a steady minute: {grew:?}"
    );
    let scrape = Scrape::parse(&apiserver_metrics(&cp.client).await);
    for resource in ["pods", "leases", "integrations", "integrationtargets"] {
        let open: f64 = scrape
            .series("apiserver_longrunning_requests")
            .filter(|(s, _)| label(s, "verb") == "WATCH" && label(s, "resource") == resource)
            .map(|(_, v)| v)
            .sum();
        assert!(open >= 1.0, "an open watch on {resource}");
    }
    e.scrape().await.assert("ksit_exporter_kube_up", 1.0);
}
