//! The master clients over real HTTPS on loopback: the master's certificate
//! is verified against `master_ca_file` (or the web PKI roots without it),
//! client certificates are presented, and certificate or key files that
//! cannot be used are one-line errors naming the file — never a panic.

use test_support::tls as tls_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use slap::client::{ClientConfig, SlapClient, SlapError};
use slap::hateoas::{HateoasClient, HateoasError};
use slap::tls::{TlsFileError, TlsFiles};
use tls_support::{serve, Backend, Pki};

const V1_CERT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/v1-client.crt");
const V1_KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/v1-client.key");

fn config(url: &str, ca: Option<&Path>, identity: Option<(&Path, &Path)>) -> ClientConfig {
    let mut c = ClientConfig::new(url).with_timeout(Duration::from_secs(10));
    c.ca_file = ca.map(Path::to_path_buf);
    if let Some((cert, key)) = identity {
        c.cert_file = Some(cert.into());
        c.key_file = Some(key.into());
    }
    c
}

fn tls_error(e: SlapError) -> String {
    match e {
        SlapError::Tls { message, .. } => message,
        e => panic!("expected a TLS error, got {e:?}"),
    }
}

#[test]
fn the_master_is_verified_with_master_ca_file() {
    let pki = Pki::new("slaptest");
    let server = serve(pki.server_config(&["127.0.0.1"], false), Backend::Canned(200, "done"));
    let c = SlapClient::new(config(&server.url, Some(&pki.ca_file), None)).unwrap();
    c.partition_started("C", "p").unwrap();
    assert_eq!(server.answered.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn without_master_ca_file_a_private_ca_is_refused_with_a_clear_error() {
    let pki = Pki::new("slaptest");
    let server = serve(pki.server_config(&["127.0.0.1"], false), Backend::Canned(200, "done"));
    let e = SlapClient::new(config(&server.url, None, None)).unwrap().partition_started("C", "p").unwrap_err();
    assert!(e.is_unreachable(), "{e:?}");
    let text = e.to_string();
    assert!(text.contains(&server.url) && text.contains("not signed by a trusted CA") && text.contains("master_ca_file"), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
    assert_eq!(server.answered.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing was sent");
}

#[test]
fn a_master_signed_by_another_ca_is_refused() {
    let (pki, other) = (Pki::new("slaptest"), Pki::new("other"));
    let server = serve(pki.server_config(&["127.0.0.1"], false), Backend::Canned(200, "done"));
    let e = SlapClient::new(config(&server.url, Some(&other.ca_file), None)).unwrap().partition_started("C", "p").unwrap_err();
    assert!(tls_error(e).contains("not signed by a trusted CA"));
    assert_eq!(server.answered.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[test]
fn a_certificate_for_another_host_is_refused() {
    let pki = Pki::new("slaptest");
    let server = serve(pki.server_config(&["master.example.com"], false), Backend::Canned(200, "done"));
    let e = SlapClient::new(config(&server.url, Some(&pki.ca_file), None)).unwrap().partition_started("C", "p").unwrap_err();
    assert!(tls_error(e).contains("not valid for the host name"));
}

#[test]
fn the_client_certificate_is_presented_when_the_master_requires_one() {
    let pki = Pki::new("slaptest");
    let server = serve(pki.server_config(&["127.0.0.1"], true), Backend::Canned(200, "done"));
    let (cert, key) = pki.client("slaptest-client");
    SlapClient::new(config(&server.url, Some(&pki.ca_file), Some((&cert, &key)))).unwrap().partition_started("C", "p").unwrap();
    let e = SlapClient::new(config(&server.url, Some(&pki.ca_file), None)).unwrap().partition_started("C", "p").unwrap_err();
    assert!(!e.to_string().contains("panicked"), "{e}");
    assert!(e.is_unreachable(), "refused without a client certificate: {e:?}");
    assert_eq!(server.answered.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// `SlapClient::new` refuses `cfg`; the one-line message names `file`.
fn refused(cfg: ClientConfig, file: &Path, what: &str) -> TlsFileError {
    let e = SlapClient::new(cfg).expect_err(what);
    let text = e.to_string();
    assert!(text.contains(&file.display().to_string()), "{what}: names {}: {text}", file.display());
    assert!(!text.contains('\n'), "{what}: one line: {text}");
    match e {
        SlapError::Certificate(e) => e,
        e => panic!("{what}: {e:?}"),
    }
}

#[test]
fn unusable_certificate_and_key_files_are_one_line_errors_naming_the_file() {
    let pki = Pki::new("slaptest");
    let (cert, key) = pki.client("good");
    let (_, other_key) = pki.client("other");
    let dir = pki.dir.path();
    let file = |name: &str, text: &str| -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let url = "https://127.0.0.1:1/";
    let (v1, v1_key) = (Path::new(V1_CERT), Path::new(V1_KEY));

    let e = refused(config(url, None, Some((v1, v1_key))), v1, "X.509 v1 client certificate");
    assert!(matches!(e, TlsFileError::Version1 { .. }), "{e:?}");
    assert!(e.to_string().contains("v1"), "{e}");
    let e = refused(config(url, None, Some((&cert, &other_key))), &other_key, "another certificate's key");
    assert!(matches!(e, TlsFileError::KeyMismatch { .. }), "{e:?}");
    let missing = dir.join("missing.crt");
    assert!(matches!(refused(config(url, None, Some((&missing, &key))), &missing, "missing"), TlsFileError::Unreadable { .. }));
    let text = file("text.crt", "not a certificate\n");
    assert!(matches!(refused(config(url, None, Some((&text, &key))), &text, "no PEM"), TlsFileError::NoCertificate { .. }));
    let broken = file("broken.crt", "-----BEGIN CERTIFICATE-----\nMIIB\n");
    assert!(matches!(refused(config(url, None, Some((&broken, &key))), &broken, "cut PEM"), TlsFileError::InvalidPem { .. }));
    let garbage = file("garbage.crt", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    let e = refused(config(url, None, Some((&garbage, &key))), &garbage, "not DER");
    assert!(matches!(e, TlsFileError::InvalidCertificate { .. }), "{e:?}");
    let e = refused(config(url, None, Some((&cert, &cert))), &cert, "a certificate as key");
    assert!(matches!(e, TlsFileError::NoKey { .. }), "{e:?}");
    let e = refused(config(url, Some(&garbage), None), &garbage, "CA file");
    assert!(e.to_string().contains("master_ca_file"), "{e}");
    let e = refused(config(url, Some(&text), None), &text, "empty CA file");
    assert!(matches!(e, TlsFileError::NoCertificate { .. }), "{e:?}");

    let mut only_cert = config(url, None, None);
    only_cert.cert_file = Some(cert.clone());
    assert!(matches!(SlapClient::new(only_cert), Err(SlapError::Certificate(TlsFileError::Incomplete))));
}

#[test]
fn hateoas_uses_the_same_tls_files() {
    const ENTRY: &str = r#"{"_links": {"raw_search": {"href": "https://127.0.0.1/s?q={query}"}, "traverse": {"href": "https://127.0.0.1/t?r={relative_url}"}}}"#;
    let pki = Pki::new("slaptest");
    let server = serve(pki.server_config(&["127.0.0.1"], true), Backend::Canned(200, ENTRY));
    let (cert, key) = pki.client("slaptest-client");
    let files = TlsFiles { ca_file: Some(pki.ca_file.clone()), cert_file: Some(cert.clone()), key_file: Some(key.clone()) };
    HateoasClient::connect(&format!("{}/hateoas/", server.url), &files, Duration::from_secs(10)).unwrap();
    let no_ca = TlsFiles { ca_file: None, ..files.clone() };
    match HateoasClient::connect(&format!("{}/hateoas/", server.url), &no_ca, Duration::from_secs(10)) {
        Err(HateoasError::Tls { message, .. }) => {
            assert!(message.contains("master_ca_file"), "{message}")
        }
        other => panic!("{:?}", other.err()),
    }
    // links that leave TLS are refused
    const PLAIN: &str =
        r#"{"_links": {"raw_search": {"href": "http://127.0.0.1/s?q={query}"}, "traverse": {"href": "https://127.0.0.1/t"}}}"#;
    let plain = serve(pki.server_config(&["127.0.0.1"], false), Backend::Canned(200, PLAIN));
    match HateoasClient::connect(&format!("{}/hateoas/", plain.url), &files, Duration::from_secs(10)) {
        Err(HateoasError::Invalid { message, .. }) => {
            assert!(message.contains("not HTTPS"), "{message}")
        }
        other => panic!("{:?}", other.err()),
    }
    let v1 = TlsFiles { cert_file: Some(V1_CERT.into()), key_file: Some(V1_KEY.into()), ..files };
    let e = HateoasClient::connect(&format!("{}/hateoas/", server.url), &v1, Duration::from_secs(10)).err().unwrap();
    assert!(matches!(e, HateoasError::Certificate(TlsFileError::Version1 { .. })), "{e:?}");
}
