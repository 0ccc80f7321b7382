//! `cargo bench --bench webhook`: how long the webhook takes to answer for a typical pod (the
//! KSIT controller-manager, whose metrics port the sidecar takes over), and how many admissions
//! per second one webhook process answers over TLS on loopback.
//!
//! 1. In-process: `inject::inject` alone, and `admission::review` (parse the AdmissionReview,
//!    decide, diff into a JSONPatch, serialize), each timed one call at a time; median and p99.
//! 2. The real binary (`ksit-exporter webhook`, this profile's build) with a certificate from
//!    `webhook certs`, driven by keep-alive TLS connections for a few seconds. Client and server
//!    share the machine's cores, so the figure is a floor.
//!
//! `cargo test --all-targets` runs this too (it has no test harness), without the `--bench`
//! flag `cargo bench` passes: then it only checks each path once (one call of each, one
//! admission over TLS) and measures nothing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ksit_exporter::inject::{self, InjectorConfig};
use ksit_exporter::webhook::admission::{self, Entry};
use ksit_exporter::webhook::certs;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

const CONNECTIONS: usize = 4;
const LOAD_SECONDS: u64 = 5;
/// The load phase, start-up included, must be over within this beyond its own duration.
const LOAD_GRACE: Duration = Duration::from_secs(30);

fn review_body() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "ksit-system", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": manager_pod(),
            "dryRun": false,
        }
    }))
    .expect("serializable")
}

/// KSIT's controller-manager pod as its ReplicaSet creates it.
fn manager_pod() -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "ksit-controller-manager-7d4b9c6f5-",
            "namespace": "ksit-system",
            "labels": {"control-plane": "controller-manager", "app.kubernetes.io/name": "ksit",
                       "pod-template-hash": "7d4b9c6f5"},
            "annotations": {"kubectl.kubernetes.io/default-container": "manager",
                            "ksit.io/health-urls": "http://127.0.0.1:8081/healthz,http://127.0.0.1:8081/readyz"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "ksit-controller-manager-7d4b9c6f5",
                                 "uid": "4b3c2d1e-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "serviceAccountName": "ksit-controller-manager",
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "terminationGracePeriodSeconds": 10,
            "containers": [{
                "name": "manager", "image": "ghcr.io/kubestellar/ksit:0.1.0", "command": ["/manager"],
                "args": ["--leader-elect", "--health-probe-bind-address=:8081", "--metrics-bind-address=:8080"],
                "ports": [{"name": "webhook-server", "containerPort": 9443, "protocol": "TCP"}],
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8081}, "initialDelaySeconds": 15, "periodSeconds": 20},
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8081}, "initialDelaySeconds": 5, "periodSeconds": 10},
                "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "10m", "memory": "64Mi"}},
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "cert", "mountPath": "/tmp/k8s-webhook-server/serving-certs", "readOnly": true}]
            }],
            "volumes": [{"name": "cert", "secret": {"secretName": "webhook-server-cert", "defaultMode": 420}}]
        }
    })
}

/// Median and p99 of `f`'s duration over `n` calls, after a warm-up.
fn time(n: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    for _ in 0..n / 10 {
        f();
    }
    let mut samples: Vec<Duration> = (0..n)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    samples.sort();
    (samples[n / 2], samples[n * 99 / 100])
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let measure = std::env::args().any(|a| a == "--bench");
    let cfg = InjectorConfig::from_vars(Vec::new()).expect("default configuration");
    let pod = serde_json::from_value(manager_pod()).expect("a pod");
    let opted_in = BTreeMap::from([(inject::INJECT_KEY.to_string(), "enabled".to_string())]);
    assert!(matches!(
        inject::inject(&pod, &opted_in, &cfg),
        inject::Outcome::Injected { .. }
    ));
    let body = review_body();
    let answer = admission::review(&body, Entry::Namespace, &cfg);
    assert_eq!(answer.decision, admission::Decision::Injected);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if !measure {
        let (n, _) = runtime.block_on(load(body, 1, Duration::ZERO));
        assert_eq!(n, 1, "one admission over TLS");
        println!("webhook bench: smoke check passed; `cargo bench --bench webhook` measures");
        return;
    }

    let (median, p99) = time(20_000, || {
        std::hint::black_box(inject::inject(&pod, &opted_in, &cfg));
    });
    println!(
        "inject() for the KSIT manager pod: median {}, p99 {}",
        micros(median),
        micros(p99)
    );
    let (median, p99) = time(20_000, || {
        std::hint::black_box(admission::review(&body, Entry::Namespace, &cfg));
    });
    println!(
        "admission review (parse, inject, JSONPatch, serialize; {} B in, {} B out): median {}, p99 {}",
        body.len(),
        answer.body.len(),
        micros(median),
        micros(p99)
    );

    let load_time = Duration::from_secs(LOAD_SECONDS);
    let (n, elapsed) = runtime.block_on(load(body, CONNECTIONS, load_time));
    let elapsed = elapsed.as_secs_f64();
    println!(
        "webhook over TLS on loopback, {CONNECTIONS} keep-alive connections for {LOAD_SECONDS}s: {n} admissions, {:.0} per second",
        n as f64 / elapsed
    );
}

/// Drives the real webhook binary with `connections` keep-alive TLS connections, each sending
/// admissions back to back for `duration` (at least one each); returns how many were answered,
/// and in what time from the first connection on.
async fn load(body: Vec<u8>, connections: usize, duration: Duration) -> (u64, Duration) {
    tokio::time::timeout(duration + LOAD_GRACE, drive(body, connections, duration))
        .await
        .unwrap_or_else(|_| panic!("the load did not finish within {:?}", duration + LOAD_GRACE))
}

async fn drive(body: Vec<u8>, connections: usize, duration: Duration) -> (u64, Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    certs::issue(dir.path(), &["127.0.0.1".into()], 1).expect("certificates");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ksit-exporter"))
        .arg("webhook")
        .env_clear()
        .env("KSIT_WEBHOOK_LISTEN_ADDR", "127.0.0.1:0")
        .env("KSIT_WEBHOOK_METRICS_ADDR", "127.0.0.1:0")
        .env("KSIT_TLS_CERT_FILE", dir.path().join("tls.crt"))
        .env("KSIT_TLS_KEY_FILE", dir.path().join("tls.key"))
        .env("KSIT_LOG_FORMAT", "json")
        // As deployed: every injection is logged at info, and that is part of its cost.
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("the webhook starts");
    let addr = listening_addr(&mut child);

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.path().join("ca.crt")).expect("ca.crt"))
        .expect("CA");
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let request = Arc::new(
        [
            format!(
                "POST /mutate/namespace-enabled HTTP/1.1\r\nHost: ksit-webhook\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes(),
            body,
        ]
        .concat(),
    );
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (config, request, done) = (config.clone(), request.clone(), done.clone());
            tokio::spawn(async move {
                let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
                tcp.set_nodelay(true).expect("nodelay");
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                    .await
                    .expect("handshake");
                let mut tls = tokio::io::BufReader::new(tls);
                let mut line = String::new();
                let mut buf = Vec::new();
                loop {
                    tls.get_mut().write_all(&request).await.expect("write");
                    let mut length = 0;
                    loop {
                        line.clear();
                        tls.read_line(&mut line).await.expect("read");
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().expect("length");
                        }
                        assert!(!line.is_empty(), "connection closed");
                    }
                    buf.resize(length, 0);
                    tls.read_exact(&mut buf).await.expect("body");
                    done.fetch_add(1, Ordering::Relaxed);
                    if Instant::now() >= deadline {
                        break;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client task");
    }
    let elapsed = start.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    (done.load(Ordering::Relaxed), elapsed)
}

/// The HTTPS address from the webhook's JSON start-up line; stderr keeps being drained after.
fn listening_addr(child: &mut std::process::Child) -> std::net::SocketAddr {
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("serving the admission webhook") {
                let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
                let _ = tx.send(v["addr"].as_str().expect("addr").parse().expect("address"));
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the webhook logs its address")
}
