//! A CA and a serving pair for the demo and the tests (`ksit-exporter webhook certs`), written as
//! `ca.crt`, `ca.key`, `tls.crt` and `tls.key`, and the base64 `caBundle` printed for the
//! MutatingWebhookConfiguration. Part of the binary (rcgen, pure Rust) rather than an openssl
//! script so it runs wherever the binary does, including from the FROM-scratch image, and gives
//! the same result everywhere.
//!
//! A CA already in the directory is reused: running the command again renews the serving pair
//! under the same CA, which is exactly a rotation the webhook picks up without a restart while
//! the registered `caBundle` stays valid.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

const CA_DAYS: i64 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Rcgen {
        what: &'static str,
        source: rcgen::Error,
    },
}

/// What one run issued.
pub struct Issued {
    pub ca_pem: String,
    pub cert_der: Vec<u8>,
    /// The serving certificate's notAfter, Unix seconds.
    pub not_after: i64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertsError + '_ {
    move |source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn rcgen(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertsError {
    move |source| CertsError::Rcgen { what, source }
}

/// Writes through a temporary file and a rename, so a reader never sees half a file. Keys are
/// created 0600.
fn write(dir: &Path, name: &str, contents: &str, secret: bool) -> Result<(), CertsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(contents.as_bytes()).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

/// The CA in `dir`, or a new one written there.
fn ca(
    dir: &Path,
    now: time::OffsetDateTime,
) -> Result<(Issuer<'static, KeyPair>, String), CertsError> {
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    if crt.exists() && key.exists() {
        let pem = std::fs::read_to_string(&crt).map_err(io(&crt))?;
        let key_pem = std::fs::read_to_string(&key).map_err(io(&key))?;
        let key = KeyPair::from_pem(&key_pem).map_err(rcgen("reading ca.key"))?;
        let issuer = Issuer::from_ca_cert_pem(&pem, key).map_err(rcgen("reading ca.crt"))?;
        return Ok((issuer, pem));
    }
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(rcgen("CA parameters"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "ksit-exporter webhook CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(CA_DAYS);
    let key = KeyPair::generate().map_err(rcgen("generating the CA key"))?;
    let pem = params
        .self_signed(&key)
        .map_err(rcgen("signing the CA"))?
        .pem();
    write(dir, "ca.key", &key.serialize_pem(), true)?;
    write(dir, "ca.crt", &pem, false)?;
    Ok((Issuer::new(params, key), pem))
}

/// Issues a serving certificate for `names` (DNS names or IP addresses) valid for `days`, under
/// the CA in `dir` (created if absent), and writes `tls.crt` then `tls.key`.
pub fn issue(dir: &Path, names: &[String], days: i64) -> Result<Issued, CertsError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let now = time::OffsetDateTime::now_utc();
    let (issuer, ca_pem) = ca(dir, now)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(rcgen("serving names"))?;
    if let Some(first) = names.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    // An hour back for clocks that are a little behind this machine's.
    params.not_before = now - time::Duration::hours(1);
    let not_after = now + time::Duration::days(days);
    // X.509 times have whole seconds; what the certificate says is what the metric will report.
    params.not_after = not_after.replace_nanosecond(0).unwrap_or(not_after);
    let key = KeyPair::generate().map_err(rcgen("generating the serving key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(rcgen("signing the serving certificate"))?;
    write(dir, "tls.crt", &cert.pem(), false)?;
    write(dir, "tls.key", &key.serialize_pem(), true)?;
    Ok(Issued {
        ca_pem,
        cert_der: cert.der().to_vec(),
        not_after: params.not_after.unix_timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_keeps_the_ca_and_renews_the_pair() {
        let dir = tempfile::tempdir().unwrap();
        let first = issue(dir.path(), &["localhost".into()], 1).unwrap();
        let ca_key = std::fs::read(dir.path().join("ca.key")).unwrap();
        let second = issue(dir.path(), &["localhost".into()], 1).unwrap();
        assert_eq!(first.ca_pem, second.ca_pem);
        assert_eq!(ca_key, std::fs::read(dir.path().join("ca.key")).unwrap());
        assert_ne!(first.cert_der, second.cert_der);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
