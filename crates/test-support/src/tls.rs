//! Loopback HTTPS for tests: a CA made with rcgen (per test, so nothing
//! expires and no key is committed), a server certificate for 127.0.0.1,
//! client certificates, and a TLS server (rustls over a std listener) that
//! answers a canned response or forwards each request to a plain HTTP
//! backend (a real master).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA and the files of its certificates, in a temporary directory.
pub struct Pki {
    /// The temporary directory holding the PEM files (removed on drop).
    pub dir: tempfile::TempDir,
    /// The CA certificate (PEM): what `master_ca_file` names.
    pub ca_file: PathBuf,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

impl Pki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let ca_file = write(dir.path(), &format!("{name}-ca.pem"), &ca_cert.pem());
        Pki { dir, ca_file, ca_cert, ca_key }
    }

    fn issue(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("client"));
        params.extended_key_usages = vec![purpose];
        (params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap(), key)
    }

    /// A client certificate and key signed by this CA: `(cert_file, key_file)`.
    pub fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth);
        (write(self.dir.path(), &format!("{name}.crt"), &cert.pem()), write(self.dir.path(), &format!("{name}.key"), &key.serialize_pem()))
    }

    /// A server certificate for `names` and its key signed by this CA, as
    /// PEM files: `(cert_file, key_file)` (a PostgreSQL server's, say).
    pub fn server_files(&self, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(names, ExtendedKeyUsagePurpose::ServerAuth);
        let name = names.first().copied().unwrap_or("server");
        (
            write(self.dir.path(), &format!("{name}-server.crt"), &cert.pem()),
            write(self.dir.path(), &format!("{name}-server.key"), &key.serialize_pem()),
        )
    }

    /// A rustls server configuration with a certificate for `names`, that
    /// requires a client certificate of this CA when `client_auth`.
    pub fn server_config(&self, names: &[&str], client_auth: bool) -> Arc<rustls::ServerConfig> {
        let (cert, key) = self.issue(names, ExtendedKeyUsagePurpose::ServerAuth);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca_cert.der().clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Arc::new(builder.with_single_cert(vec![CertificateDer::from(cert.der().to_vec())], key).unwrap())
    }
}

/// What the server does with each request.
#[derive(Clone)]
pub enum Backend {
    /// Answer `(status, body)`.
    Canned(u16, &'static str),
    /// Forward to this plain HTTP server and relay its answer.
    Forward(SocketAddr),
}

/// A loopback HTTPS server; runs until the test process ends.
pub struct TlsServer {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// Requests answered (after a successful handshake).
    pub answered: Arc<AtomicUsize>,
}

/// Starts a TLS server with `config` in front of `backend`.
pub fn serve(config: Arc<rustls::ServerConfig>, backend: Backend) -> TlsServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            let (config, backend, count) = (config.clone(), backend.clone(), count.clone());
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                // one request per connection (every answer says Connection: close)
                let Some(request) = read_request(&mut tls) else {
                    return;
                };
                let answer = match &backend {
                    Backend::Canned(status, body) => format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .into_bytes(),
                    Backend::Forward(addr) => forward(*addr, &request),
                };
                if tls.write_all(&answer).and_then(|()| tls.flush()).is_ok() {
                    count.fetch_add(1, Ordering::SeqCst);
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            });
        }
    });
    TlsServer { url, answered }
}

/// One HTTP/1.1 request (head and Content-Length body), as bytes.
fn read_request(stream: &mut impl Read) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
            if data.len() >= end + 4 + len {
                return Some(data);
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

/// `message` (request or answer) with its `Connection` header replaced by
/// `Connection: close`, and `extra` header lines added.
fn closing(message: &[u8], extra: &[&str]) -> Vec<u8> {
    let end = message.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(message.len());
    let head = String::from_utf8_lossy(&message[..end]);
    let mut lines: Vec<&str> = head.split("\r\n").filter(|l| !l.to_ascii_lowercase().starts_with("connection:")).collect();
    lines.push("Connection: close");
    lines.extend_from_slice(extra);
    let mut out = lines.join("\r\n").into_bytes();
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(message.get(end + 4..).unwrap_or_default());
    out
}

/// Sends `request` to `addr` and returns the whole answer, both with
/// `Connection: close` (one request per connection); the request says
/// `X-Forwarded-Proto: https`, as a TLS-terminating proxy says it.
fn forward(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut out = TcpStream::connect(addr).unwrap();
    out.write_all(&closing(request, &["X-Forwarded-Proto: https"])).unwrap();
    let mut answer = Vec::new();
    out.read_to_end(&mut answer).unwrap();
    closing(&answer, &[])
}
