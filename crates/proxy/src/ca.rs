//! The master's certificate authority: one key and certificate in the
//! master's state directory (`ca.key`, mode 0600 from its creation, never
//! logged or served; `ca.crt`, given to nodes and people as
//! `master_ca_file`), and the certificates it signs: computers, partitions
//! (software instances), users, the administrator and the master's own HTTPS
//! certificate. Every certificate issued is recorded (serial → identity) in
//! the store, where [`crate::rules`] reads who a client certificate names.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SerialNumber,
};

use crate::store::CertificateRow;

/// Subject of the CA certificate (it must not change: issued certificates
/// name it as their issuer).
const CA_NAME: &str = "SlapOS master certificate authority";

/// A certificate can be used this long before its `not_before` (clock skew).
const SKEW: Duration = Duration::from_secs(3600);

/// A CA failure (files, signing), one line for people.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    /// A file of the CA's directory cannot be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    #[error("{path}: not a usable key or certificate: {message}")]
    /// A file of the CA's directory is not a usable certificate or key.
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    #[error("cannot sign a certificate: {0}")]
    /// rcgen could not make or sign a certificate.
    Sign(#[from] rcgen::Error),
}

/// Who a certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A computer (node), by its id (`COMP-…` on SlapOS).
    Computer(String),
    /// A software instance: its partition on its computer.
    Partition {
        /// The computer hosting the partition.
        computer: String,
        /// The partition id (`slappartN`).
        partition: String,
    },
    /// A person.
    User(String),
    /// The master's administrator.
    Administrator(String),
    /// The master itself (HTTPS), with the names and addresses it answers on.
    Server(Vec<String>),
}

impl Subject {
    /// The `kind` of the store's certificate row.
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::Computer(_) => "computer",
            Subject::Partition { .. } => "partition",
            Subject::User(_) => "user",
            Subject::Administrator(_) => "administrator",
            Subject::Server(_) => "server",
        }
    }

    /// (name, computer) of the store's certificate row.
    fn row_names(&self) -> (String, String) {
        match self {
            Subject::Computer(c) => (c.clone(), String::new()),
            Subject::Partition { computer, partition } => (partition.clone(), computer.clone()),
            Subject::User(u) | Subject::Administrator(u) => (u.clone(), String::new()),
            Subject::Server(names) => (names.first().cloned().unwrap_or_default(), String::new()),
        }
    }

    fn distinguished_name(&self) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        let cn = match self {
            Subject::Partition { computer, partition } => format!("{partition} on {computer}"),
            Subject::Server(names) => names.first().cloned().unwrap_or_else(|| "SlapOS master".into()),
            _ => self.row_names().0,
        };
        dn.push(DnType::CommonName, cn);
        dn.push(DnType::OrganizationalUnitName, self.kind());
        dn.push(DnType::OrganizationName, "SlapOS");
        dn
    }
}

/// A certificate just issued, with its new private key.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM), signed by the master's CA.
    pub certificate_pem: String,
    /// The private key (PEM). It is handed to its owner once, never stored
    /// by the master (except the master's own HTTPS key and the
    /// administrator's, in its state directory, mode 0600).
    pub key_pem: String,
    /// What the store records.
    pub row: CertificateRow,
}

/// The loaded CA.
pub struct Ca {
    key: KeyPair,
    /// The CA certificate rebuilt from the key (same subject and key: it
    /// signs exactly as the certificate on disk).
    issuer: Certificate,
    /// `ca.crt` as written on first start.
    certificate_pem: String,
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io { path: path.to_path_buf(), source }
}

/// Writes `data` to `path` (through a temporary file and a rename), the file
/// created with `mode` from the start.
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    dn.push(DnType::OrganizationName, "SlapOS");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    // fixed validity: the rebuilt issuer must match the certificate on disk
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 12, 31);
    params
}

impl Ca {
    /// Opens the CA of `dir`, creating it (directory 0700, key 0600) on
    /// first use.
    pub fn open_or_create(dir: &Path) -> Result<Ca, CaError> {
        let key_path = dir.join("ca.key");
        let cert_path = dir.join("ca.crt");
        if !key_path.exists() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
            let key = KeyPair::generate()?;
            let cert = ca_params().self_signed(&key)?;
            write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
            tracing::info!("created the certificate authority in {}", dir.display());
        }
        let key_pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Invalid { path: key_path.clone(), message: e.to_string() })?;
        let certificate_pem = std::fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let issuer = ca_params().self_signed(&key)?;
        Ok(Ca { key, issuer, certificate_pem, dir: dir.to_path_buf() })
    }

    /// The CA certificate (PEM), what clients give as `master_ca_file`.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The CA certificate (DER), the root client certificates are verified against.
    pub fn certificate_der(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// Where the CA lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Signs a new certificate with a new key for `subject`, valid `valid`
    /// from now.
    pub fn issue(&self, subject: &Subject, valid: Duration) -> Result<Issued, CaError> {
        let key = KeyPair::generate()?;
        let mut params = match subject {
            Subject::Server(names) => CertificateParams::new(names.clone())?,
            _ => CertificateParams::default(),
        };
        params.distinguished_name = subject.distinguished_name();
        // positive, first byte non-zero: the DER integer holds exactly these bytes
        let mut serial: [u8; 16] = rand::thread_rng().gen();
        serial[0] = (serial[0] & 0x7f).max(1);
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - SKEW;
        params.not_after = now + valid;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = match subject {
            Subject::Server(_) => vec![ExtendedKeyUsagePurpose::ServerAuth],
            _ => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        let (name, computer_reference) = subject.row_names();
        let not_after = crate::master::now() + valid.as_secs_f64();
        Ok(Issued {
            certificate_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            row: CertificateRow { serial: hex(&serial), kind: subject.kind().into(), name, computer_reference, not_after, revoked: None },
        })
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_ca_is_created_once_with_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let ca = Ca::open_or_create(&ca_dir).unwrap();
        let mode = std::fs::metadata(ca_dir.join("ca.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let first = ca.certificate_pem().to_string();
        let again = Ca::open_or_create(&ca_dir).unwrap();
        assert_eq!(again.certificate_pem(), first, "the CA is kept");
        // a certificate issued after a restart verifies against the first CA certificate
        let issued = again.issue(&Subject::Computer("COMP-1".into()), Duration::from_secs(3600)).unwrap();
        assert_eq!(issued.row.kind, "computer");
        assert_eq!(issued.row.serial.len(), 32);
        let der = rustls_pemfile_der(&issued.certificate_pem);
        let ee = webpki::EndEntityCert::try_from(&der).unwrap();
        assert_eq!(hex(ee.serial()), issued.row.serial);
        let ca_der = ca.certificate_der();
        let anchor = webpki::anchor_from_trusted_cert(&ca_der).unwrap();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            rustls::pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .unwrap();
    }

    fn rustls_pemfile_der(pem: &str) -> rustls::pki_types::CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }
}
