//! TLS settings of the master clients (SLAP and HATEOAS): which CA verifies
//! the master, and which certificate and key identify us.
//!
//! * With `master_ca_file` the master's certificate must chain to one of the
//!   certificates of that PEM file; without it, to the built-in web PKI roots
//!   (Mozilla's list). Verification is never turned off.
//! * Every file is checked when it is loaded, the way rustls will use it
//!   (a certificate rustls cannot parse, such as an X.509 v1 client
//!   certificate, or a key that does not match the certificate, would
//!   otherwise make ureq panic on the first request): a file we cannot use
//!   is a [`TlsFileError`] that names it.
//! * Handshake failures become one sentence ([`describe_handshake_error`])
//!   that says what to fix.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

/// The files of a client's TLS configuration, as the configuration names
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `master_ca_file`: PEM certificates that may sign the master's
    /// certificate; None for the web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// `cert_file`: our PEM certificate (chain), for TLS client
    /// authentication; goes with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// `key_file`: the PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// A certificate or key file that cannot be used. The message is one line
/// and names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// The file cannot be read.
    #[error("cannot read {what} {path}: {source}")]
    Unreadable {
        /// Which file it is, as the configuration names it (e.g. "CA file (master_ca_file)").
        what: &'static str,
        /// The file, as configured (`master_ca_file`, `cert_file` or `key_file`).
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// The file is not PEM, or a PEM section is broken.
    #[error("{what} {path} is not valid PEM: {message}")]
    InvalidPem {
        /// Which file it is, as the configuration names it (e.g. "CA file (master_ca_file)").
        what: &'static str,
        /// The file, as configured (`master_ca_file`, `cert_file` or `key_file`).
        path: PathBuf,
        /// What the PEM parser refused.
        message: String,
    },
    /// The file holds no `CERTIFICATE` section.
    #[error("no certificate in {what} {path}")]
    NoCertificate {
        /// Which file it is, as the configuration names it (e.g. "CA file (master_ca_file)").
        what: &'static str,
        /// The file, as configured (`master_ca_file`, `cert_file` or `key_file`).
        path: PathBuf,
    },
    /// The key file holds no private key section.
    #[error("no private key in key file {path}")]
    NoKey {
        /// The `key_file`.
        path: PathBuf,
    },
    /// An X.509 v1 client certificate: TLS stacks (rustls) only use v3.
    #[error("certificate file {path} holds an X.509 v1 certificate, which TLS client authentication cannot use: reissue it as X.509 v3")]
    Version1 {
        /// The `cert_file`.
        path: PathBuf,
    },
    /// A certificate that does not parse as X.509.
    #[error("{what} {path} holds an invalid certificate: {message}")]
    InvalidCertificate {
        /// Which file it is, as the configuration names it (e.g. "CA file (master_ca_file)").
        what: &'static str,
        /// The file, as configured (`master_ca_file`, `cert_file` or `key_file`).
        path: PathBuf,
        /// What the X.509 parser refused.
        message: String,
    },
    /// A key of a kind we cannot sign with.
    #[error("key file {path} holds a key that cannot be used: {message}")]
    UnusableKey {
        /// The `key_file`.
        path: PathBuf,
        /// Why rustls cannot sign with it (e.g. an unsupported algorithm).
        message: String,
    },
    /// The key is not the certificate's.
    #[error("the key in {key} does not match the certificate in {cert}")]
    KeyMismatch {
        /// The `cert_file`.
        cert: PathBuf,
        /// The `key_file`, whose key is not the certificate's.
        key: PathBuf,
    },
    /// Only one of `cert_file` and `key_file` is set.
    #[error("cert_file and key_file go together: set both or neither")]
    Incomplete,
}

const CA: &str = "CA file (master_ca_file)";
const CERT: &str = "certificate file";

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Unreadable { what, path: path.into(), source })
}

fn pem_error(path: &Path, what: &'static str, e: pem::Error) -> TlsFileError {
    TlsFileError::InvalidPem { what, path: path.into(), message: e.to_string() }
}

/// Every `CERTIFICATE` section of a PEM file; at least one.
fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let bytes = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>().map_err(|e| pem_error(path, what, e))?;
    if certs.is_empty() {
        return Err(TlsFileError::NoCertificate { what, path: path.into() });
    }
    Ok(certs)
}

/// The certificates of `master_ca_file`, each checked as a trust anchor
/// (v1 CA certificates are accepted, as rustls accepts them).
pub fn load_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs = certificates(path, CA)?;
    for cert in &certs {
        webpki::anchor_from_trusted_cert(cert).map_err(|e| TlsFileError::InvalidCertificate {
            what: CA,
            path: path.into(),
            message: format!("{e:?}"),
        })?;
    }
    Ok(certs)
}

/// A client certificate chain and its key, checked as rustls will check
/// them: the first certificate parses as an X.509 v3 end-entity
/// certificate, the key is of a supported kind and matches it. Returns the
/// chain and the key file's bytes.
pub fn load_identity(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, Vec<u8>), TlsFileError> {
    let chain = certificates(cert, CERT)?;
    match webpki::EndEntityCert::try_from(&chain[0]) {
        Ok(_) => {}
        Err(webpki::Error::UnsupportedCertVersion) => return Err(TlsFileError::Version1 { path: cert.into() }),
        Err(e) => return Err(TlsFileError::InvalidCertificate { what: CERT, path: cert.into(), message: format!("{e:?}") }),
    }
    let key_pem = read(key, "key file")?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsFileError::NoKey { path: key.into() },
        e => pem_error(key, "key file", e),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    match rustls::sign::CertifiedKey::from_der(chain.clone(), private, &provider) {
        Ok(_) => Ok((chain, key_pem)),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsFileError::KeyMismatch { cert: cert.into(), key: key.into() }),
        Err(e) => Err(TlsFileError::UnusableKey { path: key.into(), message: e.to_string() }),
    }
}

impl TlsFiles {
    /// The ureq TLS configuration of these files, every file checked first
    /// (so that ureq never meets a file it would panic on).
    pub fn config(&self) -> Result<TlsConfig, TlsFileError> {
        let mut tls = TlsConfig::builder();
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let (chain, key_pem) = load_identity(cert, key)?;
                let chain: Vec<Certificate<'static>> = chain.iter().map(|c| Certificate::from_der(c).to_owned()).collect();
                // the same first key section that was checked above
                let private =
                    PrivateKey::from_pem(&key_pem).map_err(|e| TlsFileError::UnusableKey { path: key.clone(), message: e.to_string() })?;
                tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, private)));
            }
            (None, None) => {}
            _ => return Err(TlsFileError::Incomplete),
        }
        if let Some(ca) = &self.ca_file {
            let roots = load_ca(ca)?.iter().map(|c| Certificate::from_der(c).to_owned()).collect();
            tls = tls.root_certs(RootCerts::Specific(Arc::new(roots)));
        }
        Ok(tls.build())
    }
}

/// The rustls error behind a ureq error (directly, or inside an I/O
/// error of the TLS stream).
fn rustls_error(e: &ureq::Error) -> Option<&rustls::Error> {
    match e {
        ureq::Error::Rustls(r) => Some(r),
        ureq::Error::Io(io) => io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    }
}

/// One sentence for a failed TLS handshake with the master, saying what to
/// fix; None when `e` is not a TLS error.
pub fn describe_handshake_error(e: &ureq::Error) -> Option<String> {
    use rustls::CertificateError as C;
    if let ureq::Error::Tls(m) = e {
        return Some(m.to_string());
    }
    Some(match rustls_error(e)? {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::UnknownIssuer => "the master's certificate is not signed by a trusted CA: \
                                 set master_ca_file to the CA certificate that signed it"
                .into(),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "the master's certificate is not valid for the host name of master_url".into()
            }
            C::Expired | C::ExpiredContext { .. } => "the master's certificate has expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => "the master's certificate is not valid yet".into(),
            C::BadSignature => "the master's certificate has a bad signature".into(),
            other => format!("the master's certificate was refused: {other:?}"),
        },
        rustls::Error::AlertReceived(alert) => {
            format!("the master refused the TLS handshake ({alert:?}): check cert_file and key_file")
        }
        other => format!("TLS handshake failed: {other}"),
    })
}
