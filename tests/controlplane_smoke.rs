//! Smoke tests of the test control plane itself: the API answers, the project's CRDs and
//! samples work with the stand-in KSIT manager, which behaves like upstream's, and every
//! manifest passes server-side validation.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::Value;

#[tokio::test]
async fn lists_namespaces() {
    let Some(cp) = common::control_plane().await else {
        return;
    };
    let names: Vec<String> = Api::<Namespace>::all(cp.client.clone())
        .list(&Default::default())
        .await
        .expect("listing namespaces")
        .items
        .into_iter()
        .filter_map(|ns| ns.metadata.name)
        .collect();
    assert!(
        names.iter().any(|n| n == "default"),
        "no default namespace in {names:?}"
    );
}

fn ksit_api(cp: &common::ControlPlane, ns: &str, kind: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("ksit.io", "v1alpha1", kind));
    Api::namespaced_with(cp.client.clone(), ns, &ar)
}

/// `.status` of an object once `ready(status)` holds.
async fn status_when(
    api: &Api<DynamicObject>,
    name: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    status_within(api, name, Duration::from_secs(15), ready).await
}

/// As [`status_when`], waiting up to `timeout`.
async fn status_within(
    api: &Api<DynamicObject>,
    name: &str,
    timeout: Duration,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    common::eventually(timeout, &format!("the wanted status of {name}"), || async {
        let obj = api.get(name).await.map_err(|e| e.to_string())?;
        let status = obj.data.get("status").cloned().unwrap_or(Value::Null);
        if ready(&status) {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    })
    .await
}

fn ready_condition(status: &Value) -> &Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .unwrap_or(&Value::Null)
}

/// `.metadata` and `.spec` of an object.
async fn object(api: &Api<DynamicObject>, name: &str) -> (Value, Value) {
    let obj = api
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("getting {name}: {e}"));
    let metadata = serde_json::to_value(&obj.metadata).expect("metadata is JSON");
    (metadata, obj.data["spec"].clone())
}

/// The stand-in manager does what upstream's does (docs/upstream.md, "The
/// manager"), and the exporter reports it: no `clusterStatuses`, observedGeneration
/// left as it was on the disabled and auto-install-failure paths (so the generation lag reads 1),
/// `enabled: false` turned back into true by the finalizer update, no `ksit_*` on its /metrics.
/// Two test-only deviations, both flags of the stand-in: it watches the two namespaces given
/// rather than all (tests run at once), and start_manager names its Lease namespace.
#[tokio::test]
async fn the_stand_in_manager_behaves_like_upstream() {
    let Some(cp) = common::control_plane().await else {
        return;
    };
    // Upstream's samples span several namespaces; these span two.
    let a = common::test_namespace(&cp, "smoke-upstream-a", &[]).await;
    let b = common::test_namespace(&cp, "smoke-upstream-b", &[]).await;
    for ns in [&a, &b] {
        cp.apply_samples(&ns.name);
    }
    // cluster1 is ready, but the stand-in installs nothing anywhere: the auto-install fails.
    cp.apply_yaml(
        &b.name,
        "apiVersion: ksit.io/v1alpha1\nkind: Integration\nmetadata:\n  name: istio-autoinstall\nspec:\n  type: istio\n  targetClusters: [cluster1]\n  autoInstall:\n    enabled: true\n    method: helm\n    helmConfig: {repository: https://istio-release.storage.googleapis.com/charts, chart: istiod}\n",
    );
    // A short requeue: like upstream, an Integration sees its targets' readiness only when it
    // is next reconciled.
    let manager =
        common::start_manager_with(&cp, &[&a.name, &b.name], &["--integration-requeue=1s"]).await;

    for ns in [&a, &b] {
        let targets = ksit_api(&cp, &ns.name, "IntegrationTarget");
        let ready = status_when(&targets, "cluster1", |s| s["ready"] == true).await;
        assert_eq!(ready_condition(&ready)["reason"], "ClusterReady");
        assert!(ready["lastSyncTime"].is_string(), "{ready}");
        assert!(ready.get("observedGeneration").is_none(), "{ready}");
        // `ready` is omitempty upstream: a target that is not ready has none.
        let failing = status_when(&targets, "cluster2", |s| {
            ready_condition(s)["status"] == "False"
        })
        .await;
        assert_eq!(ready_condition(&failing)["reason"], "ConnectionFailed");
        assert!(
            failing["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Connection test failed: ")),
            "{failing}"
        );
        assert!(failing.get("ready").is_none(), "{failing}");
        assert!(failing.get("lastSyncTime").is_none(), "{failing}");

        let integrations = ksit_api(&cp, &ns.name, "Integration");
        let running = status_when(&integrations, "argocd-integration", |s| {
            s["phase"] == "Running"
        })
        .await;
        assert_eq!(ready_condition(&running)["reason"], "ReconcileSucceeded");
        assert_eq!(running["observedGeneration"], 1);
        assert!(running["lastReconcileTime"].is_string(), "{running}");
        let (metadata, _) = object(&integrations, "argocd-integration").await;
        assert_eq!(
            metadata["finalizers"],
            serde_json::json!(["ksit.io/finalizer"])
        );
        // A failed reconcile on the main path does record the generation.
        let failed = status_when(&integrations, "flux-integration", |s| {
            s["phase"] == "Failed" && s["observedGeneration"] == 1
        })
        .await;
        assert_eq!(ready_condition(&failed)["reason"], "ReconcileFailed");
        // Created with `enabled: false`: the finalizer update sent no `enabled` (omitempty), so
        // the CRD default made it true, a new generation the manager then reconciled.
        status_when(&integrations, "prometheus-integration", |s| {
            s["phase"] == "Running" && s["observedGeneration"] == 2
        })
        .await;
        let (metadata, spec) = object(&integrations, "prometheus-integration").await;
        assert_eq!(spec["enabled"], true);
        assert_eq!(metadata["generation"], 2);
        for name in [
            "argocd-integration",
            "flux-integration",
            "prometheus-integration",
        ] {
            let status = integrations.get(name).await.expect("get").data["status"].clone();
            assert!(status.get("clusterStatuses").is_none(), "{name}: {status}");
        }
    }

    let b_integrations = ksit_api(&cp, &b.name, "Integration");
    let install_failed = status_when(&b_integrations, "istio-autoinstall", |s| {
        s["phase"] == "Failed"
    })
    .await;
    assert!(
        install_failed["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Auto-install failed: ")),
        "{install_failed}"
    );
    assert!(
        install_failed.get("observedGeneration").is_none(),
        "{install_failed}"
    );

    // Disabled once the finalizer is there: it stays disabled, and the generation is not recorded.
    let a_integrations = ksit_api(&cp, &a.name, "Integration");
    a_integrations
        .patch(
            "argocd-integration",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"enabled": false}})),
        )
        .await
        .expect("disabling argocd-integration");
    let disabled = status_when(&a_integrations, "argocd-integration", |s| {
        s["message"] == "Integration is disabled"
    })
    .await;
    assert_eq!(disabled["phase"], "Failed");
    assert_eq!(disabled["observedGeneration"], 1);
    let (metadata, spec) = object(&a_integrations, "argocd-integration").await;
    assert_eq!(
        (metadata["generation"].clone(), spec["enabled"].clone()),
        (2.into(), false.into())
    );

    // The exporter reads it all, from both namespaces.
    let kubeconfig = cp.kubeconfig.display().to_string();
    let watched = format!("{},{}", a.name, b.name);
    let e = common::start(&[
        ("KUBECONFIG", kubeconfig.as_str()),
        ("KSIT_KUBERNETES", "true"),
        ("KSIT_WATCH_NAMESPACES", watched.as_str()),
        ("KSIT_CR_METRICS", "always"),
        ("KSIT_UPSTREAM_METRICS_URL", manager.metrics_url.as_str()),
        ("KSIT_PROBE_INTERVAL", "500ms"),
        ("KSIT_PROBE_TIMEOUT", "400ms"),
    ])
    .await;
    let lag = |ns: &str, name: &str| {
        format!("ksit_integration_generation_lag{{integration=\"{name}\",namespace=\"{ns}\"}}")
    };
    let status = |ns: &str, target: &str| {
        format!(
            "ksit_cluster_status{{cluster_name=\"{target}\",namespace=\"{ns}\",source=\"integrationtarget\",target=\"{target}\"}}"
        )
    };
    let s = e
        .scrape_until("both namespaces and the upstream read", |s| {
            s.is("ksit_exporter_upstream_up", 1.0)
                && [&a.name, &b.name].iter().all(|ns| {
                    s.is(&status(ns, "cluster1"), 1.0) && s.is(&status(ns, "cluster2"), 0.0)
                })
                && s.is(&lag(&a.name, "argocd-integration"), 1.0)
                && s.is(&lag(&b.name, "istio-autoinstall"), 1.0)
        })
        .await;
    for (ns, name) in [
        (&b.name, "argocd-integration"),
        (&a.name, "flux-integration"),
        (&a.name, "prometheus-integration"),
    ] {
        s.assert(&lag(ns, name), 0.0);
    }
    assert!(
        !s.has_family("ksit_integration_cluster_connected"),
        "upstream writes no clusterStatuses: {s}"
    );

    // The finalizer goes when the Integration is deleted, as upstream's does.
    b_integrations
        .delete("flux-integration", &Default::default())
        .await
        .expect("deleting flux-integration");
    common::eventually(Duration::from_secs(15), "flux-integration gone", || async {
        match b_integrations.get_opt("flux-integration").await {
            Ok(None) => Ok(()),
            Ok(Some(o)) => Err(format!("still there: {:?}", o.metadata.finalizers)),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;

    // It leads through the ksit.io Lease in the namespace given and serves controller-runtime's
    // metrics in plain HTTP, none of them ksit_*.
    let lease = Api::<Lease>::namespaced(cp.client.clone(), &a.name)
        .get("ksit.io")
        .await
        .expect("ksit.io Lease");
    assert!(lease.spec.and_then(|s| s.holder_identity).is_some());
    let metrics = manager.metrics().await;
    let ksit: Vec<&str> = metrics
        .types()
        .iter()
        .map(|(family, _)| family.as_str())
        .filter(|family| family.starts_with("ksit_"))
        .collect();
    assert_eq!(ksit, Vec::<&str>::new(), "{}", manager.metrics_url);
    // Every reconcile requeues after a period, as upstream's do, so that is the result counted;
    // the failing auto-install returns its error.
    for (controller, result) in [
        ("integration", "requeue_after"),
        ("integrationtarget", "requeue_after"),
        ("integration", "error"),
    ] {
        let series = format!(
            r#"controller_runtime_reconcile_total{{controller="{controller}",result="{result}"}}"#
        );
        let count = metrics
            .get(&series)
            .unwrap_or_else(|| panic!("{series} missing from {}", manager.metrics_url));
        assert!(count > 0.0, "{series} is {count}");
    }
    for family in [
        "controller_runtime_reconcile_time_seconds_bucket",
        "workqueue_adds_total",
    ] {
        assert!(
            metrics.has_family(family),
            "{family} missing from {}",
            manager.metrics_url
        );
    }
}

/// As upstream's, outside a pod the manager cannot find the namespace of its leader Lease (it
/// reads the service account's): that is why start_manager passes --leader-election-namespace.
#[tokio::test]
async fn outside_a_pod_leader_election_finds_no_namespace() {
    let Some(cp) = common::control_plane().await else {
        return;
    };
    let log = common::repo_path("target/controlplane/ksit-manager-no-lease-namespace.log");
    let log_file =
        std::fs::File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
    let mut child = Command::new(cp.bin_dir.join("ksit-manager"))
        .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
        .args([
            "--leader-elect",
            "--metrics-bind-address=127.0.0.1:0",
            "--health-probe-bind-address=127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("starting ksit-manager");
    let exited = common::eventually(Duration::from_secs(15), "the manager to exit", || {
        let status = child.try_wait();
        async move {
            match status {
                Ok(Some(status)) => Ok(status),
                Ok(None) => Err("still running".to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await;
    assert!(!exited.success(), "{exited}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("unable to find leader election namespace"),
        "{text}"
    );
}

/// Every kustomization directory under `dir` (a kustomization's own subdirectories too,
/// since alternatives such as `monitoring/podmonitor` are applied on their own), and every
/// YAML file outside kustomizations (inside one, loose files may be patches).
fn manifest_sets(dir: &Path, in_kustomization: bool, out: &mut Vec<(&'static str, PathBuf)>) {
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).ok();
    // A kustomize Component is only valid as part of another kustomization.
    let is_kustomization = kustomization
        .as_ref()
        .is_some_and(|k| !k.contains("kind: Component"));
    if is_kustomization {
        out.push(("-k", dir.to_path_buf()));
    }
    let in_kustomization = in_kustomization || kustomization.is_some();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            manifest_sets(&path, in_kustomization, out);
        } else if !in_kustomization && path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(("-f", path));
        }
    }
}

#[tokio::test]
async fn every_manifest_passes_server_side_dry_run() {
    let Some(cp) = common::control_plane().await else {
        return;
    };
    let mut sets = Vec::new();
    manifest_sets(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests"),
        false,
        &mut sets,
    );
    assert!(!sets.is_empty(), "nothing under manifests/");
    for (flag, path) in &sets {
        let path = path.to_str().unwrap();
        eprintln!("kubectl apply --dry-run=server {flag} {path}");
        // Namespaced objects need their namespace to exist even in a dry run; create any
        // the manifests name (a manifest that creates it is itself only dry-run).
        let namespaces = common::check(
            cp.kubectl(&[
                "apply",
                "--dry-run=client",
                flag,
                path,
                "-o",
                "jsonpath={..metadata.namespace}",
            ]),
            &format!("kubectl apply --dry-run=client {flag} {path}"),
        );
        for ns in namespaces.split_whitespace() {
            cp.kubectl(&["create", "namespace", ns]);
        }
        common::check(
            cp.kubectl(&["apply", "--dry-run=server", flag, path]),
            &format!("kubectl apply --dry-run=server {flag} {path}"),
        );
    }
}

/// Upstream's InvalidSecret: a target whose Secret `<clusterName>-kubeconfig` has no
/// `kubeconfig` key is not ready and never requeued, and Secrets are not watched, so adding the
/// key changes nothing until the target itself changes (no predicates: any update, an
/// annotation included, reconciles it).
#[tokio::test]
async fn a_secret_without_a_kubeconfig_key_is_never_requeued() {
    let Some(cp) = common::control_plane().await else {
        return;
    };
    let ns = common::test_namespace(&cp, "smoke-invalid-secret", &[]).await;
    cp.apply_yaml(
        &ns.name,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: edge-kubeconfig}\nstringData: {config: x}\n---\n\
         apiVersion: ksit.io/v1alpha1\nkind: IntegrationTarget\nmetadata: {name: edge}\nspec: {clusterName: edge}\n",
    );
    // Requeues of a second: a requeued target would be reconciled many times below.
    let _manager = common::start_manager_with(
        &cp,
        &[&ns.name],
        &["--target-ready-requeue=1s", "--target-failing-requeue=1s"],
    )
    .await;
    let targets = ksit_api(&cp, &ns.name, "IntegrationTarget");
    let invalid = status_when(&targets, "edge", |s| {
        ready_condition(s)["reason"] == "InvalidSecret"
    })
    .await;
    assert_eq!(invalid["message"], "Secret missing 'kubeconfig' key");
    assert!(invalid.get("ready").is_none(), "{invalid}");
    assert!(invalid.get("lastSyncTime").is_none(), "{invalid}");

    // A kubeconfig for this API server: once reconciled, the target is ready.
    let patch = serde_json::json!({"stringData": {"kubeconfig": cp.kubeconfig_text()}});
    common::check(
        cp.kubectl(&[
            "-n",
            &ns.name,
            "patch",
            "secret",
            "edge-kubeconfig",
            "--type=merge",
            "-p",
            &patch.to_string(),
        ]),
        "adding the kubeconfig key",
    );
    // Five requeue periods: still InvalidSecret, so it was neither requeued nor woken by the
    // Secret.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let obj = targets.get("edge").await.expect("the target");
    let still = obj.data["status"].clone();
    assert_eq!(
        ready_condition(&still)["reason"],
        "InvalidSecret",
        "requeued or woken by the Secret: {still}"
    );

    // An update of the target reconciles it, and the key is there now.
    common::check(
        cp.kubectl(&[
            "-n",
            &ns.name,
            "annotate",
            "integrationtarget",
            "edge",
            "touched=1",
        ]),
        "annotating the target",
    );
    let ready = status_when(&targets, "edge", |s| s["ready"] == true).await;
    assert_eq!(ready_condition(&ready)["reason"], "ClusterReady");
}

/// Upstream's other IntegrationTarget paths, with a real connection test: no Secret is
/// `SecretNotFound`, a kubeconfig that does not parse `RegistrationFailed`, one naming a closed
/// port `ConnectionFailed` (each requeued after 30 s), one naming this API server `ClusterReady`.
/// Secrets are not watched, so a Secret created or rewritten shows at the next reconcile: the
/// three failing targets turn ready by their 30 s requeue without being touched, and the ready
/// one fails at its next reconcile once its Secret names the closed port (the client is rebuilt
/// when the kubeconfig changes).
#[tokio::test]
async fn targets_are_checked_against_the_cluster_their_secret_names() {
    let Some(cp) = common::control_plane().await else {
        return;
    };
    let ns = common::test_namespace(&cp, "smoke-connect", &[]).await;
    let n = ns.name.as_str();
    for name in ["lost", "garbled", "refused", "reachable"] {
        cp.apply_yaml(
            n,
            &format!(
                "apiVersion: ksit.io/v1alpha1\nkind: IntegrationTarget\nmetadata: {{name: {name}}}\nspec: {{clusterName: {name}}}\n"
            ),
        );
    }
    cp.put_kubeconfig_secret(n, "garbled", "clusters: [not a kubeconfig");
    cp.put_kubeconfig_secret(n, "refused", &common::closed_port_kubeconfig());
    cp.put_kubeconfig_secret(n, "reachable", &cp.kubeconfig_text());
    // Upstream's 30 s for failing targets; a ready one requeued every second, so that its
    // Secret's rewrite shows at once.
    let _manager = common::start_manager_with(&cp, &[n], &["--target-ready-requeue=1s"]).await;
    let targets = ksit_api(&cp, n, "IntegrationTarget");
    let reason_is = |reason: &'static str| move |s: &Value| ready_condition(s)["reason"] == reason;
    let message = |s: &Value| s["message"].as_str().unwrap_or_default().to_string();

    let lost = status_when(&targets, "lost", reason_is("SecretNotFound")).await;
    assert_eq!(
        lost["message"],
        "Kubeconfig secret lost-kubeconfig not found"
    );
    assert_eq!(ready_condition(&lost)["message"], lost["message"]);
    let garbled = status_when(&targets, "garbled", reason_is("RegistrationFailed")).await;
    assert!(
        message(&garbled).starts_with("Failed to register cluster: failed to parse kubeconfig: "),
        "{garbled}"
    );
    let refused = status_when(&targets, "refused", reason_is("ConnectionFailed")).await;
    assert!(
        message(&refused).starts_with("Connection test failed: failed to sync cluster: ")
            && message(&refused).contains("127.0.0.1:1")
            && message(&refused).contains("connection refused"),
        "{refused}"
    );
    for status in [&lost, &garbled, &refused] {
        assert_eq!(ready_condition(status)["status"], "False", "{status}");
        assert_eq!(ready_condition(status)["message"], status["message"]);
        assert!(status.get("ready").is_none(), "{status}");
        assert!(status.get("lastSyncTime").is_none(), "{status}");
    }
    let reachable = status_when(&targets, "reachable", |s| s["ready"] == true).await;
    assert_eq!(
        reachable["message"],
        "Target cluster is connected and ready"
    );
    assert_eq!(ready_condition(&reachable)["status"], "True");
    assert_eq!(ready_condition(&reachable)["reason"], "ClusterReady");
    assert_eq!(
        ready_condition(&reachable)["message"],
        "Successfully connected to target cluster"
    );
    assert!(reachable["lastSyncTime"].is_string(), "{reachable}");

    // Every Secret now names the other server.
    cp.put_kubeconfig_secret(n, "lost", &cp.kubeconfig_text());
    cp.put_kubeconfig_secret(n, "garbled", &cp.kubeconfig_text());
    cp.put_kubeconfig_secret(n, "refused", &cp.kubeconfig_text());
    cp.put_kubeconfig_secret(n, "reachable", &common::closed_port_kubeconfig());
    let rewritten = std::time::Instant::now();
    let failed = status_when(&targets, "reachable", reason_is("ConnectionFailed")).await;
    assert!(failed.get("ready").is_none(), "{failed}");
    // Kept from when the cluster last answered, as upstream's status keeps it.
    let synced = |s: &Value| s["lastSyncTime"].as_str().map(str::to_string);
    assert!(
        synced(&failed).is_some() && synced(&failed) >= synced(&reachable),
        "{failed}"
    );

    // Not woken by their Secrets: still failing a few seconds on.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(rewritten.elapsed())).await;
    for (name, reason) in [
        ("lost", "SecretNotFound"),
        ("garbled", "RegistrationFailed"),
        ("refused", "ConnectionFailed"),
    ] {
        let status = targets.get(name).await.expect("the target").data["status"].clone();
        assert_eq!(
            ready_condition(&status)["reason"],
            reason,
            "{name}: {status}"
        );
    }
    // Requeued after 30 s: ready by then, though only their Secrets changed.
    let timeout = Duration::from_secs(35).saturating_sub(rewritten.elapsed());
    for name in ["lost", "garbled", "refused"] {
        let ready = status_within(&targets, name, timeout, |s| s["ready"] == true).await;
        assert_eq!(ready_condition(&ready)["reason"], "ClusterReady", "{name}");
    }
}
