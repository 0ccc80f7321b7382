//! TLS serving, shared by the admission webhook and the exporter's optional HTTPS metrics port:
//! a rustls server configuration (TLS 1.2 and 1.3) whose certificate can be replaced while it
//! serves. cert-manager (or the `certs` command) rewrites the PEM files before the old
//! certificate expires; a background task re-reads them every few seconds and swaps the key that
//! new handshakes get, so rotation needs no restart and no file-watching dependency (a Secret
//! volume is updated through a symlink swap, which inotify on the files themselves would miss).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::server::HEADER_READ_TIMEOUT;
use crate::telemetry::Throttle;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate and key pair could not be used; names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate: {detail}")]
    Certificate { path: PathBuf, detail: String },
    #[error("{path} holds no usable PEM private key: {detail}")]
    Key { path: PathBuf, detail: String },
    #[error("the key in {key} does not belong to the certificate in {cert}: {detail}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
}

/// A parsed certificate chain and key, with what the metrics and the reload loop need.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// The leaf certificate's notAfter, in Unix seconds.
    pub not_after: i64,
    /// The file contents this was parsed from, so a reload only acts on a change.
    source: (Vec<u8>, Vec<u8>),
}

/// The PEM files named by `KSIT_TLS_CERT_FILE` and `KSIT_TLS_KEY_FILE`.
#[derive(Debug, Clone)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn provider() -> Arc<CryptoProvider> {
    // The ring provider kube's client already links; naming it explicitly keeps rustls from
    // needing a process-wide default to be installed.
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Files {
    async fn read(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let read = |path: &Path| {
            let path = path.to_path_buf();
            async move {
                tokio::fs::read(&path)
                    .await
                    .map_err(|source| TlsError::Read { path, source })
            }
        };
        Ok((read(&self.cert).await?, read(&self.key).await?))
    }

    /// Reads and parses both files.
    pub async fn load(&self) -> Result<Loaded, TlsError> {
        let (cert, key) = self.read().await?;
        self.parse(cert, key)
    }

    fn parse(&self, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<Loaded, TlsError> {
        let cert_error = |detail: String| TlsError::Certificate {
            path: self.cert.clone(),
            detail,
        };
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_error(e.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| cert_error("no CERTIFICATE block".into()))?;
        let not_after = not_after(leaf).map_err(cert_error)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
            path: self.key.clone(),
            detail: e.to_string(),
        })?;
        let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
            // A key the provider cannot load and a key for another certificate both end here;
            // the second happens for a moment when a writer replaces the two files one by one.
            TlsError::Mismatch {
                cert: self.cert.clone(),
                key: self.key.clone(),
                detail: e.to_string(),
            }
        })?;
        Ok(Loaded {
            key: Arc::new(certified),
            not_after,
            source: (cert_pem, key_pem),
        })
    }
}

/// The leaf certificate's notAfter as Unix seconds.
fn not_after(der: &CertificateDer<'_>) -> Result<i64, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("the first certificate is not valid X.509: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

/// Hands every new handshake the current key.
#[derive(Debug)]
pub struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Resolver {
    pub fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(key),
        })
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        *self
            .current
            .write()
            .expect("resolver lock is never poisoned: holders only clone or swap an Arc") = key;
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .expect("resolver lock is never poisoned: holders only clone or swap an Arc")
                .clone(),
        )
    }
}

/// TLS 1.2 and 1.3 only (rustls has nothing older), HTTP/1.1 only: the API server speaks it to
/// webhooks, and one protocol keeps the server small.
pub fn server_config(resolver: Arc<Resolver>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Re-reads the files every `interval`; when their contents changed and parse, new handshakes
/// get the new key and `on_reload` sees it. A pair that does not parse (e.g. the certificate
/// written and the key not yet) keeps the old key serving and is retried on the next tick.
/// Serving from `files`: the acceptor new connections go through, and the first pair loaded
/// (for its expiry). A task re-reads the files every `interval` and calls `on_reload` with each
/// new pair it starts serving; unusable files at start are an error, later ones a warning (the
/// previous pair is served until they are fixed).
pub async fn start(
    files: &Files,
    interval: Duration,
    on_reload: impl Fn(&Loaded) + Send + 'static,
) -> Result<(TlsAcceptor, i64), StartError> {
    let first = files.load().await?;
    let not_after = first.not_after;
    let resolver = Resolver::new(first.key.clone());
    let acceptor = TlsAcceptor::from(server_config(resolver.clone())?);
    tokio::spawn(reload_every(
        files.clone(),
        interval,
        resolver,
        first,
        on_reload,
    ));
    Ok((acceptor, not_after))
}

/// Why serving could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Files(#[from] TlsError),
    #[error("building the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The TLS handshake of one connection, bounded by the header timeout so that a silent client
/// cannot hold a task; `None` (the connection dropped) when it fails, after `failed` counts it.
pub async fn accept(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    failed: impl Fn(),
) -> Option<TlsStream<TcpStream>> {
    // Usually a client that does not trust the CA: worth seeing, but a scan or a plain-HTTP
    // client makes thousands a minute, so the log says it once a minute and the metric counts.
    static HANDSHAKE_FAILURES: Throttle = Throttle::new(Duration::from_secs(60));
    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            failed();
            if let Some(held_back) = HANDSHAKE_FAILURES.allow() {
                tracing::warn!(%peer, error = %e, held_back, "TLS handshake failed (logged at most once a minute; a *_tls_handshake_failures_total counter counts them all)");
            }
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

async fn reload_every(
    files: Files,
    interval: Duration,
    resolver: Arc<Resolver>,
    first: Loaded,
    on_reload: impl Fn(&Loaded),
) {
    let mut current = first.source;
    // The error last logged, so a file that stays broken is reported once, not every tick.
    let mut last_error = String::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let loaded = match files.read().await {
            Ok(source) if source == current => continue,
            Ok((cert, key)) => files.parse(cert, key),
            Err(e) => Err(e),
        };
        match loaded {
            Ok(loaded) => {
                resolver.set(loaded.key.clone());
                on_reload(&loaded);
                current = loaded.source;
                last_error.clear();
            }
            Err(e) => {
                let e = e.to_string();
                if e != last_error {
                    tracing::warn!(error = %e, "new certificate files not usable yet; still serving the previous certificate");
                    last_error = e;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::certs;

    fn files(dir: &Path) -> Files {
        Files {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        }
    }

    #[tokio::test]
    async fn loads_a_generated_pair_and_reads_its_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let issued = certs::issue(dir.path(), &["localhost".into()], 30).unwrap();
        let loaded = files(dir.path()).load().await.unwrap();
        assert_eq!(loaded.not_after, issued.not_after);
        let in_30_days = time::OffsetDateTime::now_utc().unix_timestamp() + 30 * 86400;
        assert!(
            (loaded.not_after - in_30_days).abs() < 120,
            "{}",
            loaded.not_after
        );
        assert!(server_config(Resolver::new(loaded.key)).is_ok());
    }

    #[tokio::test]
    async fn a_key_of_another_certificate_is_refused_with_both_paths() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        certs::issue(a.path(), &["localhost".into()], 1).unwrap();
        certs::issue(b.path(), &["localhost".into()], 1).unwrap();
        let mixed = Files {
            cert: a.path().join("tls.crt"),
            key: b.path().join("tls.key"),
        };
        let err = mixed.load().await.err().expect("mismatched pair refused");
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
        assert!(err.to_string().contains("tls.key"), "{err}");
    }

    #[tokio::test]
    async fn garbage_and_missing_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        assert!(matches!(f.load().await, Err(TlsError::Read { .. })));
        std::fs::write(&f.cert, "not pem").unwrap();
        std::fs::write(&f.key, "not pem").unwrap();
        assert!(matches!(f.load().await, Err(TlsError::Certificate { .. })));
    }

    #[tokio::test]
    async fn replaced_files_are_served_after_the_next_tick() {
        let dir = tempfile::tempdir().unwrap();
        certs::issue(dir.path(), &["localhost".into()], 1).unwrap();
        let f = files(dir.path());
        let first = f.load().await.unwrap();
        let resolver = Resolver::new(first.key.clone());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(reload_every(
            f.clone(),
            Duration::from_millis(20),
            resolver.clone(),
            first,
            move |l: &Loaded| {
                let _ = tx.send(l.not_after);
            },
        ));
        let renewed = certs::issue(dir.path(), &["localhost".into()], 2).unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("reloaded within 5s")
            .unwrap();
        assert_eq!(seen, renewed.not_after);
        let served = resolver.current.read().unwrap().clone();
        assert_eq!(served.cert[0].as_ref(), renewed.cert_der.as_slice());
        task.abort();
    }
}
