//! KSIT installed from upstream's kustomize overlays brings an older CRD set
//! (tests/testdata/crds-kustomize-base; docs/upstream.md), and KSIT's CRDs may be installed
//! after the sidecar starts. On a control plane of its own (so removing KSIT's CRDs disturbs no
//! other suite): the exporter starts with no ksit.io CRD, its two KSIT collectors report down
//! while the rest serves, the older set is installed and both come up without a restart, and
//! `ksit_cluster_status` is served from the stand-in manager's statuses with every Kubernetes
//! collector up; the one series the older set cannot fill (`lastSyncTime` is pruned) is absent.
//!
//! Needs the control plane binaries; under `CI=true` a missing one is a failure.

mod common;

use std::time::Duration;

use common::exporter::start;
use common::fleet::ExtraControlPlane;
use common::{check, control_plane, repo_path, start_manager, test_namespace};

const KSIT_CRDS: [&str; 2] = ["integrations.ksit.io", "integrationtargets.ksit.io"];

#[tokio::test]
async fn the_older_crd_set_installed_after_the_sidecar_started() {
    // The main control plane's presence decides skip or fail; this test then starts its own.
    if control_plane().await.is_none() {
        return;
    }
    let extra = ExtraControlPlane::up("controlplane-oldcrds").await;
    let cp = &extra.cp;
    let ns = test_namespace(cp, "old-crds", &[]).await;
    // The up script installed manifests/crds; this install has none yet (a rerun may find the
    // older set from before: delete whichever is there).
    check(
        cp.kubectl(&[
            "delete",
            "crd",
            KSIT_CRDS[0],
            KSIT_CRDS[1],
            "--ignore-not-found",
            "--wait=true",
        ]),
        "deleting KSIT's CRDs",
    );

    let kubeconfig = cp.kubeconfig.display().to_string();
    let e = start(&[
        ("KUBECONFIG", kubeconfig.as_str()),
        ("KSIT_KUBERNETES", "true"),
        ("KSIT_WATCH_NAMESPACES", ns.name.as_str()),
        ("KSIT_CR_METRICS", "always"),
    ])
    .await;
    let down = e
        .scrape_until("the KSIT collectors down without their CRDs", |s| {
            s.is(
                "ksit_exporter_collector_up{collector=\"integrationtargets\"}",
                0.0,
            ) && s.is(
                "ksit_exporter_collector_up{collector=\"integrations\"}",
                0.0,
            )
        })
        .await;
    down.assert("ksit_exporter_collector_up{collector=\"process\"}", 1.0);
    assert_eq!(e.get("/healthz").await.status, 200);

    cp.apply_path(&ns.name, "tests/testdata/crds-kustomize-base/crds.yaml");
    cp.wait_established(&KSIT_CRDS).await;
    // The watcher retries with backoff (up to 30 s between attempts in kube-runtime).
    e.scrape_within(Duration::from_secs(90), "both KSIT collectors up", |s| {
        s.is(
            "ksit_exporter_collector_up{collector=\"integrationtargets\"}",
            1.0,
        ) && s.is(
            "ksit_exporter_collector_up{collector=\"integrations\"}",
            1.0,
        )
    })
    .await;

    // Upstream's samples, and the manager writing their status, on the older schema. The
    // sample Integration with spec.autoInstall is refused by kubectl's strict field validation
    // there; with warnings only, the field is pruned and the object stored without it.
    let samples = repo_path("manifests/samples");
    let applied = cp.kubectl(&[
        "-n",
        &ns.name,
        "apply",
        "--validate=warn",
        "-k",
        samples.to_str().expect("UTF-8 path"),
    ]);
    let stderr = String::from_utf8_lossy(&applied.stderr).into_owned();
    check(applied, "applying the samples with --validate=warn");
    assert!(
        stderr.contains("autoInstall"),
        "no warning about spec.autoInstall: {stderr}"
    );
    // cluster1 reaches this control plane's API server, so the manager makes it ready.
    cp.put_sample_secrets(&ns.name);
    let _manager = start_manager(cp, &[&ns.name]).await;
    let status = |target: &str, cluster: &str| {
        format!(
            "ksit_cluster_status{{cluster_name=\"{cluster}\",namespace=\"{}\",source=\"integrationtarget\",target=\"{target}\"}}",
            ns.name
        )
    };
    let s = e
        .scrape_within(
            Duration::from_secs(60),
            "ksit_cluster_status from the manager",
            |s| {
                s.is(&status("cluster1", "cluster1"), 1.0)
                    && s.series("ksit_integration_status_phase").count() > 0
            },
        )
        .await;
    for collector in ["integrations", "integrationtargets", "process"] {
        s.assert(
            &format!("ksit_exporter_collector_up{{collector=\"{collector}\"}}"),
            1.0,
        );
    }
    s.assert("ksit_exporter_kube_up", 1.0);
    // The older IntegrationTarget has no status.lastSyncTime: the API server pruned what the
    // manager wrote, so that series, and only that one, is missing (docs/metrics.md).
    let stored = check(
        cp.kubectl(&[
            "-n",
            &ns.name,
            "get",
            "integrationtargets",
            "cluster1",
            "-o",
            "jsonpath={.status}",
        ]),
        "reading cluster1's status",
    );
    assert!(
        stored.contains("\"ready\":true") && !stored.contains("lastSyncTime"),
        "{stored}"
    );
    assert_eq!(
        s.series("ksit_cluster_last_sync_timestamp_seconds").count(),
        0,
        "no lastSyncTime in the older CRD set, yet its series is served"
    );
    assert!(
        s.series("ksit_cluster_condition").count() > 0,
        "conditions are in the older set"
    );
    let promtool = repo_path("target/controlplane/bin/promtool");
    common::exporter::assert_promtool_clean(&promtool, &s.text);
}
