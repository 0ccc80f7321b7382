//! The admission webhook, as the real binary, registered with the real test control plane
//! (`make controlplane-up`) through the shipped MutatingWebhookConfiguration with its service
//! replaced by a loopback `url` and the `caBundle` from `ksit-exporter webhook certs`.
//!
//! The configuration is cluster-wide and the control plane is shared with other test crates,
//! so each test narrows both entries to its own namespaces and deletes the configuration after.
//! The load tests at the end send the API server's requests themselves and need no control
//! plane.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{
    Cleanup, ControlPlane, Scrape, check, control_plane, eventually, http, test_namespace,
};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_ksit-exporter");

/// The webhook process, killed on drop.
struct Webhook {
    child: Child,
    addr: SocketAddr,
    metrics_addr: String,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Webhook {
    async fn start(certs: &Path) -> Webhook {
        let mut child = Command::new(BIN)
            .arg("webhook")
            .env_clear()
            .env("KSIT_WEBHOOK_LISTEN_ADDR", "127.0.0.1:0")
            .env("KSIT_WEBHOOK_METRICS_ADDR", "127.0.0.1:0")
            .env("KSIT_TLS_CERT_FILE", certs.join("tls.crt"))
            .env("KSIT_TLS_KEY_FILE", certs.join("tls.key"))
            .env("KSIT_TLS_RELOAD_INTERVAL", "200ms")
            .env(
                "KSIT_SIDECAR_IMAGE",
                "ghcr.io/kubestellar/ksit-exporter:test",
            )
            .env("KSIT_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            // The image's binary is static musl, whose allocator keeps one heap. This debug
            // one's glibc gives the thread a large review runs on its own arena, which keeps
            // what that review freed beside the main one (twenty `managers` reviews: 51 MiB
            // peak, 42 MiB with one arena): one arena measures what the image would hold.
            .env("MALLOC_ARENA_MAX", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the webhook binary starts");
        let line =
            common::exporter::logged_line(&mut child, "webhook", "serving the admission webhook")
                .await;
        let field = |name: &str| {
            line[name]
                .as_str()
                .unwrap_or_else(|| panic!("no {name} in {line}"))
                .to_string()
        };
        Webhook {
            addr: field("addr").parse().expect("a socket address"),
            metrics_addr: field("metrics_addr"),
            child,
        }
    }

    async fn metrics(&self) -> Scrape {
        let reply = http::get(&self.metrics_addr, "/metrics").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        Scrape::parse(&reply.text())
    }
}

/// `ksit-exporter webhook certs` for 127.0.0.1; returns the printed caBundle.
fn issue_certs(dir: &Path) -> String {
    let out = check(
        Command::new(BIN)
            .args(["webhook", "certs", "--dir", dir.to_str().unwrap()])
            .args(["--host", "127.0.0.1"])
            .output()
            .unwrap(),
        "ksit-exporter webhook certs",
    );
    out.trim().to_string()
}

/// The shipped MutatingWebhookConfiguration, deleted on drop.
struct Registration {
    name: String,
    cleanup: Cleanup,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.cleanup.kubectl(&[
            "delete",
            "mutatingwebhookconfiguration",
            &self.name,
            "--ignore-not-found",
        ]);
    }
}

/// Registers manifests/webhook/base's configuration, pointed at `addr` and limited to
/// `namespaces`.
async fn register(
    cp: &ControlPlane,
    addr: SocketAddr,
    ca_bundle: &str,
    namespaces: &[&str],
) -> Registration {
    let mut mwc = cp
        .render("manifests/webhook/base")
        .into_iter()
        .find(|o| o["kind"] == "MutatingWebhookConfiguration")
        .expect("the base has a MutatingWebhookConfiguration");
    let name = format!("ksit-test-{}", namespaces[0]);
    mwc["metadata"]["name"] = json!(name);
    let webhooks = mwc["webhooks"].as_array_mut().unwrap();
    assert_eq!(
        webhooks.len(),
        2,
        "the namespace entry and the pod-label entry"
    );
    for webhook in webhooks {
        assert_eq!(webhook["failurePolicy"], "Ignore");
        let path = webhook["clientConfig"]["service"]["path"]
            .as_str()
            .unwrap()
            .to_string();
        webhook["clientConfig"] =
            json!({"url": format!("https://{addr}{path}"), "caBundle": ca_bundle});
        webhook["namespaceSelector"]["matchExpressions"]
            .as_array_mut()
            .unwrap()
            .push(json!({"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}));
    }
    let api = Api::<MutatingWebhookConfiguration>::all(cp.client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(mwc).unwrap(),
    )
    .await
    .expect("registering the webhook");
    Registration {
        name,
        cleanup: cp.cleanup(),
    }
}

/// KSIT's controller-manager as shipped: metrics on 8080, which the sidecar takes over.
fn manager_pod(name: &str, labels: Value, annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"containers": [{
            "name": "manager", "image": "controller:latest",
            "args": ["--leader-elect", "--metrics-bind-address=:8080", "--health-probe-bind-address=:8081"],
        }]}
    }))
    .unwrap()
}

fn has_sidecar(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .chain(std::iter::once(&spec.containers))
        .flatten()
        .any(|c| c.name == "ksit-exporter")
}

fn status_annotation(pod: &Pod) -> Option<String> {
    pod.metadata
        .annotations
        .as_ref()?
        .get("ksit.io/inject-status")
        .cloned()
}

fn assert_untouched(pod: &Pod) {
    assert!(!has_sidecar(pod), "{:?}", pod.spec);
    assert_eq!(status_annotation(pod), None, "{:?}", pod.metadata);
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(
        spec.containers[0].args.as_ref().unwrap()[1],
        "--metrics-bind-address=:8080"
    );
}

fn assert_injected(pod: &Pod) {
    assert!(has_sidecar(pod), "{:?}", pod.spec);
    let status = status_annotation(pod).expect("inject-status annotation");
    assert!(status.starts_with("injected: native"), "{status}");
    let init = pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap();
    let sidecar = init.last().unwrap();
    assert_eq!(
        sidecar.image.as_deref(),
        Some("ghcr.io/kubestellar/ksit-exporter:test")
    );
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
}

async fn create(api: &Api<Pod>, pod: &Pod) -> Pod {
    api.create(&PostParams::default(), pod)
        .await
        .unwrap_or_else(|e| panic!("creating {:?}: {e}", pod.metadata.name))
}

/// Waits until the API server calls the webhook (its configuration is picked up
/// asynchronously), probing with dry-run creates: the webhook answers those exactly as real ones.
async fn wait_until_injecting(pods: &Api<Pod>) {
    let probe = manager_pod("probe", json!({"ksit.io/inject": "true"}), json!({}));
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let stored = eventually(
        Duration::from_secs(30),
        "the API server to call the webhook",
        || async {
            match pods.create(&dry, &probe).await {
                Ok(pod) if has_sidecar(&pod) => Ok(pod),
                Ok(_) => Err("a pod without the sidecar".to_string()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    assert_injected(&stored);
    assert!(
        pods.get_opt("probe").await.unwrap().is_none(),
        "a dry run stored nothing"
    );
}

#[tokio::test]
async fn only_opted_in_pods_get_the_sidecar_and_an_outage_blocks_nothing() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let enabled = test_namespace(&cp, "wh-enabled", &[("ksit.io/inject", "enabled")]).await;
    let plain = test_namespace(&cp, "wh-plain", &[]).await;
    let certs = tempfile::tempdir().unwrap();
    let ca_bundle = issue_certs(certs.path());
    let webhook = Webhook::start(certs.path()).await;
    let _registration =
        register(&cp, webhook.addr, &ca_bundle, &[&enabled.name, &plain.name]).await;
    let in_enabled = Api::<Pod>::namespaced(cp.client.clone(), &enabled.name);
    let in_plain = Api::<Pod>::namespaced(cp.client.clone(), &plain.name);
    wait_until_injecting(&in_plain).await;
    // How many dry-run probes reached the webhook varies (a probe the API server gave up on may
    // still have been answered), so what follows is counted from here.
    const INJECTED: &str = r#"ksit_webhook_admissions_total{decision="injected",reason="none"}"#;
    let probes = webhook.metrics().await.get(INJECTED).unwrap_or(0.0);
    assert!(probes >= 1.0, "the probe that got the sidecar was counted");

    // The namespace opts in: an unlabelled pod gets the sidecar.
    let pod = create(&in_enabled, &manager_pod("manager", json!({}), json!({}))).await;
    assert_injected(&pod);
    // ...and the manager's metrics were moved off the sidecar's port.
    let args = pod.spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert_eq!(args[1], "--metrics-bind-address=127.0.0.1:8082");
    // Opted out by label (never reaches the webhook) and by annotation (the handler decides).
    let pod = create(
        &in_enabled,
        &manager_pod("out-label", json!({"ksit.io/inject": "false"}), json!({})),
    )
    .await;
    assert_untouched(&pod);
    let pod = create(
        &in_enabled,
        &manager_pod(
            "out-annotation",
            json!({}),
            json!({"ksit.io/inject": "false"}),
        ),
    )
    .await;
    assert_untouched(&pod);
    // Elsewhere only the pod label opts in.
    assert_untouched(&create(&in_plain, &manager_pod("unlabelled", json!({}), json!({}))).await);
    assert_injected(
        &create(
            &in_plain,
            &manager_pod("labelled", json!({"ksit.io/inject": "true"}), json!({})),
        )
        .await,
    );
    // A Deployment is not mutated: only the pods it would make are.
    let template = manager_pod(
        "t",
        json!({"app": "m", "ksit.io/inject": "true"}),
        json!({}),
    );
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "manager", "labels": {"ksit.io/inject": "true"}},
        // No replicas: the test control plane runs kube-controller-manager, and a pod it made
        // from this template would reach the webhook and be counted below.
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "m"}},
                 "template": {"metadata": {"labels": template.metadata.labels}, "spec": template.spec}}
    }))
    .unwrap();
    let stored = Api::<Deployment>::namespaced(cp.client.clone(), &enabled.name)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let template_spec = stored.spec.unwrap().template.spec.unwrap();
    assert!(template_spec.init_containers.is_none(), "{template_spec:?}");
    assert_eq!(template_spec.containers.len(), 1);

    // What the webhook counted after the probes: the 2 injected (the enabled namespace's
    // unlabelled pod and the labelled pod elsewhere) and the annotation opt-out; the label
    // opt-out and the unlabelled pod elsewhere never reached it.
    let m = webhook.metrics().await;
    m.assert(INJECTED, probes + 2.0);
    m.assert(
        r#"ksit_webhook_admissions_total{decision="skipped",reason="opted_out"}"#,
        1.0,
    );
    assert_eq!(
        m.get(r#"ksit_webhook_admissions_total{decision="skipped",reason="not_opted_in"}"#),
        None,
        "the selectors keep unrelated pods away: {m}"
    );
    m.assert(
        "ksit_webhook_certificate_expiry_timestamp_seconds",
        not_after(&certs.path().join("tls.crt")) as f64,
    );

    // Stopped: failurePolicy Ignore creates the pod, without the sidecar.
    drop(webhook);
    let pod = create(
        &in_enabled,
        &manager_pod("while-down", json!({}), json!({})),
    )
    .await;
    assert_untouched(&pod);
}

fn not_after(path: &Path) -> i64 {
    let der = CertificateDer::from_pem_file(path).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    cert.validity().not_after.timestamp()
}

/// The leaf certificate the webhook presents to a client trusting `ca.crt`, and the response to
/// an HTTP request over that connection (which must end within 10 s).
async fn tls_exchange(addr: SocketAddr, certs: &Path, request: &str) -> (Vec<u8>, String) {
    tokio::time::timeout(
        Duration::from_secs(10),
        tls_exchange_unbounded(addr, certs, request),
    )
    .await
    .expect("a TLS exchange with the webhook within 10s")
}

async fn tls_exchange_unbounded(
    addr: SocketAddr,
    certs: &Path,
    request: &str,
) -> (Vec<u8>, String) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(certs.join("ca.crt")).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .expect("TLS handshake with the webhook");
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    (leaf, response)
}

#[tokio::test]
async fn replaced_certificate_files_are_served_without_a_restart() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let ns = test_namespace(&cp, "wh-rotate", &[("ksit.io/inject", "enabled")]).await;
    let certs = tempfile::tempdir().unwrap();
    let ca_bundle = issue_certs(certs.path());
    let webhook = Webhook::start(certs.path()).await;
    let _registration = register(&cp, webhook.addr, &ca_bundle, &[&ns.name]).await;
    let pods = Api::<Pod>::namespaced(cp.client.clone(), &ns.name);
    wait_until_injecting(&pods).await;
    assert_injected(&create(&pods, &manager_pod("before", json!({}), json!({}))).await);

    // A malformed review over the real TLS endpoint: 400 and a message, and it keeps serving.
    let body = "{not json";
    let (first_leaf, response) = tls_exchange(
        webhook.addr,
        certs.path(),
        &format!(
            "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("malformed AdmissionReview"), "{response}");

    // Renew: the same CA (the caBundle stays), a new serving pair written over the old files.
    assert_eq!(issue_certs(certs.path()), ca_bundle);
    let renewed = CertificateDer::from_pem_file(certs.path().join("tls.crt"))
        .unwrap()
        .to_vec();
    assert_ne!(renewed, first_leaf);
    let reloads = "ksit_webhook_certificate_reloads_total";
    eventually(
        Duration::from_secs(10),
        "one certificate reload",
        || async {
            let m = webhook.metrics().await;
            if m.is(reloads, 1.0) { Ok(()) } else { Err(m) }
        },
    )
    .await;
    let (leaf, _) = tls_exchange(
        webhook.addr,
        certs.path(),
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(leaf, renewed, "new handshakes get the new certificate");

    // The API server's next call succeeds, from the same process.
    assert_injected(&create(&pods, &manager_pod("after", json!({}), json!({}))).await);
    let mut webhook = webhook;
    assert!(
        webhook.child.try_wait().unwrap().is_none(),
        "never restarted"
    );
}

/// An AdmissionReview of an opted-in manager pod padded by an annotation to about `size` bytes.
fn large_review(size: usize) -> String {
    let mut pod = serde_json::to_value(manager_pod(
        "large",
        json!({"ksit.io/inject": "true"}),
        json!({"example.com/padding": ""}),
    ))
    .unwrap();
    let review = |pod: &Value| {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "team-a",
                "operation": "CREATE",
                "userInfo": {"username": "admin"},
                "object": pod,
            }
        })
        .to_string()
    };
    let overhead = review(&pod).len();
    pod["metadata"]["annotations"]["example.com/padding"] = json!("x".repeat(size - overhead));
    review(&pod)
}

/// POSTs `body` to /mutate over TLS and returns the response's status line. The body is sent
/// whole even if the webhook answers first, as the API server does.
async fn post_review(addr: SocketAddr, certs: &Path, body: &str) -> String {
    let request = format!(
        "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (_, response) = tls_exchange(addr, certs, &request).await;
    response.lines().next().unwrap_or_default().to_string()
}

/// `VmHWM`, the peak RSS of `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no VmHWM in\n{status}"))
        * 1024
}

/// `reviews` AdmissionReviews of `size` bytes at once, while /healthz on the metrics port is
/// asked every 50 ms and must answer within a second each time. Every review is answered:
/// reviewed, or 503 once the review budget is spent (with failurePolicy Ignore the API server
/// then admits the pod without the sidecar), as the webhook's metrics count.
async fn reviews_at_once(webhook: &Webhook, certs: &Path, reviews: usize, size: usize) {
    let injected = r#"ksit_webhook_admissions_total{decision="injected",reason="none"}"#;
    let refused = r#"ksit_webhook_admissions_total{decision="error",reason="busy"}"#;
    let counts = || async {
        let m = webhook.metrics().await;
        let count = |series: &str| m.get(series).unwrap_or(0.0);
        (count(injected), count(refused))
    };
    let before = counts().await;
    let body = Arc::new(large_review(size));
    let tasks: Vec<_> = (0..reviews)
        .map(|_| {
            let (addr, certs, body) = (webhook.addr, certs.to_path_buf(), body.clone());
            tokio::spawn(async move { post_review(addr, &certs, &body).await })
        })
        .collect();
    healthz_answers_until_done(webhook, &tasks).await;
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| *s == "HTTP/1.1 200 OK").count();
    let busy = statuses
        .iter()
        .filter(|s| *s == "HTTP/1.1 503 Service Unavailable")
        .count();
    assert!(ok >= 1 && ok + busy == reviews, "{statuses:?}");
    let after = counts().await;
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (ok as f64, busy as f64),
        "counted as injected and as refused (busy)"
    );
}

/// /healthz, asked every 50 ms until every task is done, answers each time within a second
/// (the kubelet's default probe timeout).
async fn healthz_answers_until_done<T>(webhook: &Webhook, tasks: &[tokio::task::JoinHandle<T>]) {
    while !tasks.iter().all(|t| t.is_finished()) {
        healthz_answers_within_a_second(webhook).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One /healthz on the metrics port: a 200 within a second (the kubelet's default probe
/// timeout).
async fn healthz_answers_within_a_second(webhook: &Webhook) {
    let reply = tokio::time::timeout(
        Duration::from_secs(1),
        http::try_request(&webhook.metrics_addr, "GET", "/healthz", &[]),
    )
    .await
    .expect("/healthz answers within 1s")
    .expect("/healthz answers");
    assert_eq!(reply.status, 200);
}

const MIB: u64 = 1024 * 1024;

/// Twenty reviews of nearly the largest size the API server sends cost hardly more memory at
/// once than one alone: the review budget holds one of that size at a time. (What one costs is
/// the admission handler's: see the next test for the absolute bound.) No control plane
/// needed: the requests are the API server's, sent directly.
#[tokio::test]
async fn twenty_largest_reviews_at_once_cost_about_what_one_does() {
    use ksit_exporter::webhook::admission::MAX_BODY_BYTES;
    let certs = tempfile::tempdir().unwrap();
    issue_certs(certs.path());
    let webhook = Webhook::start(certs.path()).await;
    let size = MAX_BODY_BYTES - 64 * 1024;
    reviews_at_once(&webhook, certs.path(), 1, size).await;
    let one = peak_rss(webhook.child.id());
    reviews_at_once(&webhook, certs.path(), 20, size).await;
    let twenty = peak_rss(webhook.child.id());
    assert!(
        twenty - one < 8 * MIB,
        "peak RSS {one} bytes after one review, {twenty} after twenty at once"
    );
    // A review of ordinary size goes through after the flood.
    assert_eq!(
        post_review(webhook.addr, certs.path(), &large_review(8 * 1024)).await,
        "HTTP/1.1 200 OK"
    );
}

/// One review of nearly the largest size costs the webhook about two copies of its body (the
/// body and the pod read from it, then the pod and the injected one), not one per step of the
/// review: measured beyond what a small review over a new TLS connection costs.
#[tokio::test]
async fn the_largest_review_costs_about_two_copies_of_its_body() {
    use ksit_exporter::webhook::admission::MAX_BODY_BYTES;
    let certs = tempfile::tempdir().unwrap();
    issue_certs(certs.path());
    let webhook = Webhook::start(certs.path()).await;
    reviews_at_once(&webhook, certs.path(), 1, 8 * 1024).await;
    let small = peak_rss(webhook.child.id());
    let size = MAX_BODY_BYTES - 64 * 1024;
    reviews_at_once(&webhook, certs.path(), 1, size).await;
    let large = peak_rss(webhook.child.id());
    assert!(
        large - small < 3 * size as u64,
        "peak RSS {small} bytes after a small review, {large} after one of {size} bytes"
    );
}

/// Twenty 1 MiB reviews at once (a large pod: four fit the review budget together), then
/// twenty of nearly the largest size (one at a time fits): the webhook's peak RSS stays under
/// 48 MiB (the debug binary's, which idles near 24 MiB).
#[tokio::test]
async fn twenty_large_reviews_at_once_stay_under_48_mib() {
    use ksit_exporter::webhook::admission::MAX_BODY_BYTES;
    let certs = tempfile::tempdir().unwrap();
    issue_certs(certs.path());
    let webhook = Webhook::start(certs.path()).await;
    for size in [1024 * 1024, MAX_BODY_BYTES - 64 * 1024] {
        reviews_at_once(&webhook, certs.path(), 20, size).await;
        let peak = peak_rss(webhook.child.id());
        assert!(
            peak < 48 * MIB,
            "peak RSS {peak} bytes after reviews of {size} bytes"
        );
    }
}

/// An AdmissionReview of nearly the largest size whose bulk is dense: `shape` fills an
/// opted-in manager pod with many small entries (`env`: env entries of one container,
/// `volumes`: volumes and mounts, `labels`: labels and annotations, `containers`: tiny
/// containers, `ports`: containers each declaring a port, `managers`: init containers each
/// binding its metrics on 8080).
fn dense_review(shape: &str, size: usize) -> String {
    let mut review: Value = serde_json::from_str(&large_review(8 * 1024)).unwrap();
    let pod = &mut review["request"]["object"];
    let (mut i, mut len) = (0, 8 * 1024);
    while len < size {
        let entry = format!("e{i}");
        len += match shape {
            "env" => push(
                &mut pod["spec"]["containers"][0]["env"],
                json!({"name": entry, "value": "v"}),
            ),
            "volumes" => {
                push(
                    &mut pod["spec"]["volumes"],
                    json!({"name": entry, "emptyDir": {}}),
                ) + push(
                    &mut pod["spec"]["containers"][0]["volumeMounts"],
                    json!({"name": entry, "mountPath": "/"}),
                )
            }
            "containers" => push(&mut pod["spec"]["containers"], json!({"name": entry})),
            // Each uses a port, as many as there are (a manager's metrics move past them).
            "ports" => push(
                &mut pod["spec"]["containers"],
                json!({"name": entry, "ports": [{"containerPort": 8082 + i % 50_000}]}),
            ),
            // Each binds its metrics on 8080: the pod is refused, naming them all.
            "managers" => push(
                &mut pod["spec"]["initContainers"],
                json!({"name": entry, "args": ["--metrics-addr=:8080"]}),
            ),
            _ => {
                pod["metadata"]["labels"][&entry] = json!("v");
                pod["metadata"]["annotations"][&entry] = json!("v");
                2 * (entry.len() + 7)
            }
        };
        i += 1;
    }
    review.to_string()
}

/// Appends `entry` to the array `list` (made if absent); returns its serialized length.
fn push(list: &mut Value, entry: Value) -> usize {
    let len = entry.to_string().len() + 1;
    match list.as_array_mut() {
        Some(items) => items.push(entry),
        None => *list = json!([entry]),
    }
    len
}

/// A review of nearly the largest size is cheap whatever its shape: tens of thousands of env
/// entries, volumes, labels or containers cost the webhook under 48 MiB peak RSS (the debug
/// binary's), one review and then twenty at once, and each is answered; /healthz answers
/// within a second meanwhile (a review runs off the runtime's one thread).
#[tokio::test]
async fn dense_reviews_of_the_largest_size_stay_under_48_mib() {
    use ksit_exporter::webhook::admission::MAX_BODY_BYTES;
    let certs = tempfile::tempdir().unwrap();
    issue_certs(certs.path());
    let size = MAX_BODY_BYTES - 64 * 1024;
    for shape in [
        "env",
        "volumes",
        "labels",
        "containers",
        "ports",
        "managers",
    ] {
        let webhook = Webhook::start(certs.path()).await;
        let body = Arc::new(dense_review(shape, size));
        assert!(
            body.len() <= MAX_BODY_BYTES,
            "{shape}: {} bytes",
            body.len()
        );
        for reviews in [1, 20] {
            let tasks: Vec<_> = (0..reviews)
                .map(|_| {
                    let (addr, certs, body) =
                        (webhook.addr, certs.path().to_path_buf(), body.clone());
                    tokio::spawn(async move { post_review(addr, &certs, &body).await })
                })
                .collect();
            healthz_answers_until_done(&webhook, &tasks).await;
            let mut ok = 0;
            for task in tasks {
                let status = task.await.unwrap();
                assert!(
                    status.ends_with(" 200 OK") || status.ends_with(" 503 Service Unavailable"),
                    "{shape}: {status}"
                );
                ok += usize::from(status.ends_with(" 200 OK"));
            }
            assert!(ok >= 1, "{shape}: no review of {reviews} answered 200");
            let peak = peak_rss(webhook.child.id());
            eprintln!("{shape}: peak RSS {peak} bytes after {reviews} review(s)");
            assert!(
                peak < 48 * MIB,
                "{shape}: peak RSS {peak} bytes after {reviews} review(s) of {} bytes",
                body.len()
            );
        }
    }
}

/// 1,000 TLS connections each holding nearly as many bytes of headers that never end as the
/// server buffers: the webhook keeps at most MAX_CONNECTIONS of them, /healthz answers within
/// a second, and its peak RSS stays under 48 MiB.
#[tokio::test]
async fn unfinished_headers_on_many_tls_connections_are_bounded() {
    use ksit_exporter::server::{MAX_CONNECTIONS, READ_BUFFER_BYTES};
    let certs = tempfile::tempdir().unwrap();
    issue_certs(certs.path());
    let webhook = Webhook::start(certs.path()).await;
    let pid = webhook.child.id();
    let sockets = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count()
    };
    let idle_sockets = sockets();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(certs.path().join("ca.crt")).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut header = b"POST /mutate HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..READ_BUFFER_BYTES / 1000 - 1 {
        header.extend_from_slice(format!("X-Pad-{i:02}: {}\r\n", "a".repeat(988)).as_bytes());
    }
    let attack = async {
        let mut held = Vec::new();
        for _ in 0..1000 {
            let tcp = tokio::net::TcpStream::connect(webhook.addr).await.unwrap();
            // The webhook may already have closed this one to make room for a newer one.
            let server = ServerName::IpAddress(webhook.addr.ip().into());
            if let Ok(mut tls) = connector.connect(server, tcp).await {
                let _ = tls.write_all(&header).await;
                let _ = tls.flush().await;
                held.push(tls);
            }
        }
        held
    };
    let held = tokio::time::timeout(Duration::from_secs(60), attack)
        .await
        .expect("1,000 connections opened within 60s");
    for _ in 0..5 {
        healthz_answers_within_a_second(&webhook).await;
    }
    // A connection closed to make room, or the last probe's, may take a moment to go.
    let open = eventually(
        Duration::from_secs(5),
        &format!("at most {MAX_CONNECTIONS} connections open"),
        || {
            let open = sockets() - idle_sockets;
            std::future::ready(if open <= MAX_CONNECTIONS {
                Ok(open)
            } else {
                Err(open)
            })
        },
    )
    .await;
    let peak = peak_rss(pid);
    assert!(
        peak < 48 * MIB,
        "peak RSS {peak} bytes with {open} connections"
    );
    drop(held);
}

/// Plain HTTP sent to the TLS port (a misconfigured client, a scan) fails the handshake: each one
/// is counted, and the log says so at most once a minute (telemetry::Throttle's unit test), so
/// a flood of them cannot flood the log.
#[tokio::test]
async fn failed_handshakes_are_counted() {
    let certs = tempfile::tempdir().unwrap();
    issue_certs(certs.path());
    let webhook = Webhook::start(certs.path()).await;
    const N: usize = 300;
    for _ in 0..N {
        let mut tcp = tokio::net::TcpStream::connect(webhook.addr).await.unwrap();
        let _ = tcp
            .write_all(b"GET /mutate HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut answer = Vec::new();
        // The webhook closes the connection once the handshake has failed.
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    }
    let failures = "ksit_webhook_tls_handshake_failures_total";
    eventually(
        Duration::from_secs(10),
        "every failed handshake counted",
        || async {
            let s = webhook.metrics().await;
            if s.is(failures, N as f64) {
                Ok(())
            } else {
                Err(format!("{failures} is {:?}", s.get(failures)))
            }
        },
    )
    .await;
    assert_eq!(
        http::get(&webhook.metrics_addr, "/healthz").await.status,
        200
    );
}

/// The page at `/` on the HTTPS port: the certificate's expiry and the admissions answered,
/// which a review changes. The metrics port keeps `/` a 404.
#[tokio::test]
async fn the_status_page_counts_admissions() {
    let certs = tempfile::tempdir().unwrap();
    issue_certs(certs.path());
    let webhook = Webhook::start(certs.path()).await;
    let page = || async {
        let (_, response) = tls_exchange(
            webhook.addr,
            certs.path(),
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            response.contains("content-type: text/html; charset=utf-8"),
            "{response}"
        );
        response
    };
    let before = page().await;
    for fragment in [
        "<title>ksit-exporter webhook</title>",
        "<p id=\"summary\">0 admissions answered</p>",
        "<tr><th>certificate expires</th><td>20",
    ] {
        assert!(before.contains(fragment), "no {fragment:?} in {before}");
    }
    assert!(
        post_review(webhook.addr, certs.path(), "{not json")
            .await
            .contains("400")
    );
    let after = page().await;
    assert!(
        after.contains("<p id=\"summary\">1 admissions answered: 1 error</p>"),
        "{after}"
    );
    assert_eq!(http::get(&webhook.metrics_addr, "/").await.status, 404);
}
