//! The node renews its computer certificate in its normal run: our master
//! over HTTPS with its CA issues short-lived computer certificates; a node
//! whose certificate is within its renewal window gets a new one through
//! `generateComputerCertificate` (allowed to the computer for itself) when
//! it starts a run, writes it over `cert_file`/`key_file` (0600) and uses
//! it; a node whose certificate is far from its end asks nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use slap::client::{ClientConfig, SlapClient};
use slapos_config::Config;
use slapos_grid::config::{NodeConfig, NodeOverrides};
use slapos_grid::node::Node;
use slapos_proxy::identity::{Security, Validity};
use slapos_proxy::{start_background, Background, ProxyConfig};

fn master(dir: &Path, computer: Duration) -> Background {
    let config = ProxyConfig {
        computer_id: "COMP-1".into(),
        host: "127.0.0.1".into(),
        database: slapos_proxy::Database::sqlite(dir.join("proxy.db")),
        security: Security::Tls { ca_dir: dir.join("ca"), files: None, validity: Validity { computer, ..Validity::default() } },
        ..Default::default()
    };
    start_background(&config).unwrap()
}

/// Joins COMP-R with a token; its certificate and key in `dir`.
fn join(dir: &Path, url: &str) {
    let client = |cert: Option<&str>| {
        let mut c = ClientConfig::new(url).with_timeout(Duration::from_secs(20));
        c.ca_file = Some(dir.join("ca/ca.crt"));
        if let Some(n) = cert {
            c.cert_file = Some(dir.join(format!("ca/{n}.crt")));
            c.key_file = Some(dir.join(format!("ca/{n}.key")));
        }
        SlapClient::new(c).unwrap()
    };
    let token = client(Some("admin")).post("identity/token", &[("kind", "computer"), ("name", "COMP-R")], None).unwrap();
    let body = client(None).post("Person_requestComputer", &[("token", &token), ("title", "COMP-R")], None).unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    std::fs::write(dir.join("node.crt"), v["certificate"].as_str().unwrap()).unwrap();
    std::fs::write(dir.join("node.key"), v["key"].as_str().unwrap()).unwrap();
}

/// The node as `node software`/`instance` make it, with `extra` in `[slapos]`.
fn node(dir: &Path, url: &str, extra: &str) -> Node {
    let d = dir.display();
    let cfg = dir.join("slapos.cfg");
    std::fs::write(
        &cfg,
        format!(
            "[slapos]\ncomputer_id = COMP-R\nmaster_url = {url}\nsoftware_root = {d}\ninstance_root = {d}\n\
             master_ca_file = {d}/ca/ca.crt\ncert_file = {d}/node.crt\nkey_file = {d}/node.key\n{extra}"
        ),
    )
    .unwrap();
    Node::new(NodeConfig::from_config(&Config::load(&cfg).unwrap(), &NodeOverrides::default()).unwrap()).unwrap()
}

fn validity_of(dir: &Path) -> (i64, i64) {
    slapos_grid::certificate::validity(&std::fs::read_to_string(dir.join("node.crt")).unwrap()).unwrap()
}

#[test]
fn a_node_renews_its_certificate_within_the_renewal_window() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 10 minutes (+ 1 hour of clock skew before): a third of it is left, renewed
    let m = master(d, Duration::from_secs(600));
    join(d, &m.url());
    let before = std::fs::read_to_string(d.join("node.crt")).unwrap();
    let n = node(d, &m.url(), "");
    let after = std::fs::read_to_string(d.join("node.crt")).unwrap();
    assert_ne!(before, after, "the certificate was not renewed");
    let (_, end) = validity_of(d);
    assert!(end > 0);
    let mode = std::fs::metadata(d.join("node.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the renewed key is not private");
    // the new certificate and key work together, as the computer
    n.client.computer_bang("COMP-R", "renewed").unwrap();
    node(d, &m.url(), "").client.computer_bang("COMP-R", "with the renewed files").unwrap();
}

#[test]
fn a_node_keeps_a_certificate_far_from_its_end_unless_told_a_wider_window() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = master(d, Duration::from_secs(365 * 24 * 3600));
    join(d, &m.url());
    let before = std::fs::read_to_string(d.join("node.crt")).unwrap();
    node(d, &m.url(), "").client.computer_bang("COMP-R", "kept").unwrap();
    assert_eq!(before, std::fs::read_to_string(d.join("node.crt")).unwrap(), "renewed a year before its end");
    // certificate_renewal_days wider than what is left: renewed
    node(d, &m.url(), "certificate_renewal_days = 400\n").client.computer_bang("COMP-R", "renewed").unwrap();
    assert_ne!(before, std::fs::read_to_string(d.join("node.crt")).unwrap(), "certificate_renewal_days was not honoured");
}
