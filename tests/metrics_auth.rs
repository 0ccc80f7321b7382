//! The HTTPS metrics port behind Kubernetes authentication and authorization, against the test
//! API server: real service accounts and tokens, a real RBAC grant on the non-resource URL
//! `/metrics`, a token signed with the control plane's own service-account key but expired, and
//! an exporter whose API server cannot be asked. Also: no plain HTTP and no TLS below 1.2 on
//! that port, the decision cache under 200 scrapes and under thousands of made-up tokens, and a
//! certificate rotated while a real Prometheus scrapes with a bearer token.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::exporter::logged_line;
use common::prometheus::{query, query_range};
use common::{
    ControlPlane, Exporter, Scrape, check, control_plane, eventually, free_port, test_namespace,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use ksit_exporter::webhook::certs;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::json;

/// An HTTPS client that trusts `ca` only.
fn connector(ca: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).expect("the CA"))
        .expect("a CA certificate");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// `GET path` over HTTPS with an optional bearer token: the status, `WWW-Authenticate` and body.
async fn get(
    tls: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (u16, String, String) {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let stream = tls
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .expect("a TLS handshake");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP");
        tokio::spawn(conn);
        let mut req = hyper::Request::get(path).header("host", addr.to_string());
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let response = sender
            .send_request(req.body(Full::new(Bytes::new())).expect("a request"))
            .await
            .expect("an answer");
        let status = response.status().as_u16();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        (
            status,
            challenge,
            String::from_utf8_lossy(&body).into_owned(),
        )
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("an answer within 10 s")
}

/// A token for service account `name` of `ns`, from the TokenRequest API.
fn token(cp: &ControlPlane, ns: &str, name: &str) -> String {
    check(
        cp.kubectl(&["-n", ns, "create", "token", name, "--duration=1h"]),
        "kubectl create token",
    )
    .trim()
    .to_string()
}

/// A service-account token as the API server issues them, signed with its own key, but expired
/// an hour ago: only the expiry makes it invalid.
fn expired_token(cp: &ControlPlane, ns: &str, name: &str) -> String {
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let header = json!({ "alg": "RS256", "typ": "JWT" });
    let claims = json!({
        "iss": "https://kubernetes.default.svc",
        "aud": ["https://kubernetes.default.svc"],
        "sub": format!("system:serviceaccount:{ns}:{name}"),
        "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600,
        "kubernetes.io": { "namespace": ns, "serviceaccount": { "name": name } },
    });
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let key = cp.dir.join("pki/sa.key");
    let mut openssl = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    std::io::Write::write_all(&mut openssl.stdin.take().expect("stdin"), signed.as_bytes())
        .expect("writing");
    let out = openssl.wait_with_output().expect("openssl signs");
    assert!(out.status.success(), "openssl dgst -sign {}", key.display());
    format!("{signed}.{}", b64(&out.stdout))
}

/// The exporter on HTTPS with the check on, reading the API server through `kubeconfig`.
async fn start(kubeconfig: &Path, ns: &str, certs: &Path) -> Exporter {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ksit-exporter"));
    cmd.env_clear()
        .env("KSIT_LISTEN_ADDR", "127.0.0.1:0")
        .env("KSIT_LOG_FORMAT", "json")
        .env("KUBECONFIG", kubeconfig)
        .env("KSIT_KUBERNETES", "true")
        .env("KSIT_WATCH_NAMESPACES", ns)
        .env("KSIT_TLS_CERT_FILE", certs.join("tls.crt"))
        .env("KSIT_TLS_KEY_FILE", certs.join("tls.key"))
        .env("KSIT_TLS_RELOAD_INTERVAL", "200ms")
        .env("KSIT_METRICS_AUTH", "kubernetes")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("the exporter starts");
    let line = logged_line(&mut child, "exporter", "serving /metrics").await;
    assert_eq!(line["https"], true, "{line}");
    let addr = line["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("an address");
    Exporter { child, addr }
}

/// Service accounts `reader` (granted get on /metrics and /) and `nobody` (granted nothing).
fn accounts(cp: &ControlPlane, ns: &str) {
    cp.apply_yaml(
        ns,
        &format!(
            r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{ name: reader, namespace: {ns} }}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{ name: nobody, namespace: {ns} }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{ name: {ns}-metrics-reader }}
rules:
- nonResourceURLs: ["/metrics", "/"]
  verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{ name: {ns}-metrics-reader }}
roleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {ns}-metrics-reader }}
subjects:
- {{ kind: ServiceAccount, name: reader, namespace: {ns} }}
"#
        ),
    );
}

/// Peak resident memory of `pid` (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

/// A copy of the kubeconfig whose server is `server` or whose user is `token`.
fn kubeconfig_variant(
    cp: &ControlPlane,
    dir: &Path,
    server: Option<&str>,
    token: Option<&str>,
) -> PathBuf {
    let text = std::fs::read_to_string(&cp.kubeconfig).expect("the kubeconfig");
    let mut config: serde_json::Value = serde_saphyr::from_str(&text).expect("YAML");
    if let Some(server) = server {
        config["clusters"][0]["cluster"]["server"] = json!(server);
    }
    if let Some(token) = token {
        config["users"][0]["user"] = json!({ "token": token });
    }
    let path = dir.join(format!("kubeconfig-{}", free_port()));
    std::fs::write(&path, config.to_string()).expect("writing");
    path
}

/// `openssl s_client` with one protocol version: whether the handshake succeeded.
fn handshake_with(addr: SocketAddr, ca: &Path, version: &str) -> bool {
    Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), version])
        // Lets the client offer the old versions at all; the server must still refuse them.
        .args([
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(ca)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl s_client")
        .success()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_token_with_the_grant_reads_metrics() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let ns = test_namespace(&cp, "metrics-auth", &[]).await;
    accounts(&cp, &ns.name);
    let dir = tempfile::tempdir().expect("a temp dir");
    certs::issue(dir.path(), &["127.0.0.1".into()], 30).expect("a serving pair");
    let ca = dir.path().join("ca.crt");
    let tls = connector(&ca);
    let exporter = start(&cp.kubeconfig, &ns.name, dir.path()).await;
    let addr = exporter.addr;

    let reader = token(&cp, &ns.name, "reader");
    let nobody = token(&cp, &ns.name, "nobody");
    let expired = expired_token(&cp, &ns.name, "reader");

    // The probes are open: the kubelet sends no token.
    for path in ["/healthz", "/readyz"] {
        let answer = eventually(Duration::from_secs(20), path, || async {
            match get(&tls, addr, path, None).await {
                (200, _, body) => Ok(body),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        assert_eq!(answer, "ok\n");
    }
    // Every answer of the check.
    let (status, challenge, body) = get(&tls, addr, "/metrics", None).await;
    assert_eq!(
        (status, challenge.as_str()),
        (401, "Bearer realm=\"ksit-exporter\""),
        "{body}"
    );
    assert!(body.contains("Authorization: Bearer"), "{body}");
    let (status, _, body) = get(&tls, addr, "/metrics", Some("not-a-token")).await;
    assert_eq!(status, 401, "{body}");
    let (status, _, body) = get(&tls, addr, "/metrics", Some(&expired)).await;
    assert_eq!(status, 401, "an expired token: {body}");
    let (status, _, body) = get(&tls, addr, "/metrics", Some(&nobody)).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains(&format!(
            "system:serviceaccount:{}:nobody may not get /metrics",
            ns.name
        )),
        "{body}"
    );
    let (status, _, body) = get(&tls, addr, "/", Some(&nobody)).await;
    assert_eq!(status, 403, "the status page too: {body}");
    let (status, _, body) = get(&tls, addr, "/metrics", Some(&reader)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\nksit_exporter_build_info{"), "{body}");
    let (status, _, page) = get(&tls, addr, "/", Some(&reader)).await;
    assert_eq!(status, 200, "{page}");

    // 200 scrapes: the first asks the API server, the rest are remembered.
    let api_reviews = || {
        let raw = check(
            cp.kubectl(&["get", "--raw", "/metrics"]),
            "the API server's metrics",
        );
        Scrape::parse(&raw)
            .series("apiserver_request_total")
            .filter(|(s, _)| s.contains("resource=\"tokenreviews\"") && s.contains("verb=\"POST\""))
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    let before = api_reviews();
    for _ in 0..200 {
        let (status, _, _) = get(&tls, addr, "/metrics", Some(&reader)).await;
        assert_eq!(status, 200);
    }
    let made = api_reviews() - before;
    let (_, _, body) = get(&tls, addr, "/metrics", Some(&reader)).await;
    let s = Scrape::parse(&body);
    let ours = s
        .get("ksit_exporter_auth_reviews_total{review=\"tokenreview\"}")
        .expect("reviews counted");
    eprintln!(
        "metrics_auth: 200 authorized scrapes cost the API server {made} TokenReviews ({ours} in all, by the exporter's count)"
    );
    assert!(made <= 5.0, "{made} TokenReviews for 200 scrapes");
    assert!(
        s.get("ksit_exporter_auth_decisions_total{decision=\"allowed\"}")
            .is_some_and(|n| n >= 201.0),
        "{body}"
    );
    for decision in ["unauthenticated", "forbidden"] {
        assert!(
            s.has(&format!(
                "ksit_exporter_auth_decisions_total{{decision=\"{decision}\"}}"
            )),
            "{body}"
        );
    }

    // No plain HTTP on the port, and no TLS below 1.2.
    let plain = common::http::try_request(addr, "GET", "/healthz", &[]).await;
    assert!(
        plain.is_err(),
        "plain HTTP answered: {:?}",
        plain.map(|r| r.status)
    );
    assert!(handshake_with(addr, &ca, "-tls1_2"), "TLS 1.2 works");
    assert!(handshake_with(addr, &ca, "-tls1_3"), "TLS 1.3 works");
    assert!(!handshake_with(addr, &ca, "-tls1_1"), "TLS 1.1 refused");
    assert!(!handshake_with(addr, &ca, "-tls1"), "TLS 1.0 refused");
    let (_, _, body) = get(&tls, addr, "/metrics", Some(&reader)).await;
    let failures = Scrape::parse(&body)
        .get("ksit_exporter_tls_handshake_failures_total")
        .expect("counted");
    assert!(
        failures >= 3.0,
        "the plain request and both old versions: {failures}"
    );

    // Thousands of made-up tokens: each costs one TokenReview, the cache stays bounded, and
    // memory inside the sidecar's limit.
    let distinct = 5000;
    let mut statuses = Vec::new();
    for start in (0..distinct).step_by(50) {
        let batch = (start..start + 50).map(|i| {
            let tls = tls.clone();
            async move {
                get(&tls, addr, "/metrics", Some(&format!("made-up-{i}")))
                    .await
                    .0
            }
        });
        statuses.extend(futures::future::join_all(batch).await);
    }
    assert!(
        statuses.iter().all(|s| *s == 401),
        "every made-up token is a 401"
    );
    let peak = peak_rss(exporter.child.id());
    eprintln!(
        "metrics_auth: {distinct} distinct made-up tokens, peak RSS {:.1} MiB",
        peak as f64 / 1048576.0
    );
    assert!(peak < 64 * 1024 * 1024, "peak RSS {peak} bytes");
    let (status, _, _) = get(&tls, addr, "/metrics", Some(&reader)).await;
    assert_eq!(status, 200, "the reader is still let in");

    // An API server that cannot be asked is a 503, never a 200; so is one that refuses the
    // sidecar's own reviews (its service account lacks the grant).
    for (what, kubeconfig) in [
        (
            "an API server on a closed port",
            kubeconfig_variant(
                &cp,
                dir.path(),
                Some(&format!("https://127.0.0.1:{}", free_port())),
                None,
            ),
        ),
        (
            "a sidecar without create on tokenreviews",
            kubeconfig_variant(&cp, dir.path(), None, Some(&nobody)),
        ),
    ] {
        let other = start(&kubeconfig, &ns.name, dir.path()).await;
        let (status, _, body) = get(&tls, other.addr, "/metrics", Some(&reader)).await;
        assert_eq!(status, 503, "{what}: {body}");
        assert!(body.contains("TokenReview"), "{what}: {body}");
        if what.contains("without create") {
            assert!(body.contains("grant create on tokenreviews"), "{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_through_a_certificate_rotation() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let ns = test_namespace(&cp, "metrics-tls", &[]).await;
    accounts(&cp, &ns.name);
    let dir = tempfile::tempdir().expect("a temp dir");
    let certs_dir = dir.path().join("certs");
    certs::issue(&certs_dir, &["127.0.0.1".into()], 10).expect("a serving pair");
    let exporter = start(&cp.kubeconfig, &ns.name, &certs_dir).await;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token(&cp, &ns.name, "reader")).expect("writing the token");

    let config = json!({
        "global": { "scrape_interval": "1s", "scrape_timeout": "1s" },
        "scrape_configs": [{
            "job_name": "ksit",
            "scheme": "https",
            "authorization": { "credentials_file": token_file },
            "tls_config": { "ca_file": certs_dir.join("ca.crt") },
            "static_configs": [{ "targets": [exporter.addr.to_string()] }],
        }],
    });
    let (prometheus, prom) =
        common::prometheus::start(&cp, &config, dir.path(), "metrics-tls-prometheus");
    eventually(Duration::from_secs(60), "an up HTTPS target", || async {
        let up = query(&prom, "up{job=\"ksit\"} == 1").await?;
        if up.len() == 1 {
            Ok(())
        } else {
            Err(format!("{up:?}\n{}", prometheus.log_tail(10)))
        }
    })
    .await;
    let enddate = || {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect {} </dev/null 2>/dev/null | openssl x509 -noout -enddate",
                exporter.addr
            ))
            .output()
            .expect("openssl");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    let first = enddate();
    // Three new serving certificates of the same CA, as cert-manager renews them.
    let mut served = vec![first.clone()];
    for days in [20, 30, 40] {
        tokio::time::sleep(Duration::from_secs(3)).await;
        certs::issue(&certs_dir, &["127.0.0.1".into()], days).expect("a new pair");
        let now = eventually(
            Duration::from_secs(10),
            "the new certificate served",
            || {
                let seen = enddate();
                let last = served.last().cloned().unwrap_or_default();
                std::future::ready(if !seen.is_empty() && seen != last {
                    Ok(seen)
                } else {
                    Err(seen)
                })
            },
        )
        .await;
        served.push(now);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let end = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    let ups = query_range(&prom, "up{job=\"ksit\"}", start, end, 1)
        .await
        .expect("a range query");
    let values: Vec<String> = ups[0]["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|v| v[1].as_str().unwrap_or_default().to_string())
        .collect();
    eprintln!(
        "metrics_tls: {} certificates served in {:.0}s, up over the rotation: {values:?}",
        served.len(),
        end - start
    );
    assert!(values.len() >= 10, "{values:?}");
    assert!(
        values.iter().all(|v| v == "1"),
        "no failed scrape: {values:?}\n{}",
        prometheus.log_tail(20)
    );
    assert_eq!(served.len(), 4, "{served:?}");
}
