//! The master's HTTPS: a rustls server configuration whose own certificate
//! comes from `[slapproxy] cert_file`/`key_file` or from the CA, and which
//! asks every client for a certificate without requiring one. A certificate
//! presented is verified against the CA (signature, validity period, client
//! usage) during the handshake; who it names is then read from the store by
//! its serial ([`crate::rules`]). A client without a certificate is
//! anonymous.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::ca::{Ca, CaError, Subject};

/// The serial (lowercase hex) of the verified client certificate of a
/// connection, put in every request's extensions (absent: no certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSerial(pub String);

/// How long the master's own certificate issued by the CA is valid (it is
/// issued again at each start).
const SERVER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The master's certificate chain and key: from the files given, or issued
/// by the CA for `names` (written as `server.crt`/`server.key`, 0600, next
/// to the CA).
fn server_identity(
    ca: &Ca,
    files: Option<(&Path, &Path)>,
    names: &[String],
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    if let Some((cert, key)) = files {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow::anyhow!("[slapproxy] cert_file {}: {e}", cert.display()))?;
        anyhow::ensure!(!chain.is_empty(), "[slapproxy] cert_file {}: no certificate in it", cert.display());
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("[slapproxy] key_file {}: {e}", key.display()))?;
        return Ok((chain, key));
    }
    let issued = ca.issue(&Subject::Server(names.to_vec()), SERVER_VALIDITY)?;
    let dir = ca.dir();
    crate::ca::write_file(&dir.join("server.crt"), issued.certificate_pem.as_bytes(), 0o644)?;
    crate::ca::write_file(&dir.join("server.key"), issued.key_pem.as_bytes(), 0o600)?;
    let chain = vec![CertificateDer::from_pem_slice(issued.certificate_pem.as_bytes()).map_err(pem_err)?];
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).map_err(pem_err)?;
    Ok((chain, key))
}

fn pem_err(e: rustls::pki_types::pem::Error) -> CaError {
    CaError::Invalid { path: "issued certificate".into(), message: e.to_string() }
}

/// The server configuration: our certificate, client certificates optional
/// and verified against `ca`, HTTP/1.1.
pub fn server_config(ca: &Ca, files: Option<(&Path, &Path)>, names: &[String]) -> anyhow::Result<Arc<ServerConfig>> {
    let (chain, key) = server_identity(ca, files, names)?;
    let mut roots = RootCertStore::empty();
    roots.add(ca.certificate_der())?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).allow_unauthenticated().build()?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The serial of the (verified) client certificate of a handshake done.
pub fn client_serial(conn: &rustls::ServerConnection) -> Option<ClientSerial> {
    let cert = conn.peer_certificates()?.first()?;
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    Some(ClientSerial(crate::ca::hex(parsed.serial())))
}
