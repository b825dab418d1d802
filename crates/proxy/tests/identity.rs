//! Identities end to end over HTTPS with our SLAP client: a computer joins
//! with a one-time token, a person gets a certificate with another, requests
//! an instance; the node fetches the partition's certificate, with which the
//! instance requests a child. Tokens misused are refused.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use slap::client::{ClientConfig, InstanceRequest, RequestResult, SlapClient, SlapError};
use slap::marshal::Value;
use slapos_proxy::identity::{token_hash, Security, Validity};
use slapos_proxy::store::{SqliteStore, Store, TokenRow, Tx};
use slapos_proxy::{start_background, Background, ProxyConfig};

const SR: &str = "http://sr.example/software.cfg";

struct Master {
    dir: tempfile::TempDir,
    master: Background,
}

impl Master {
    fn start() -> Master {
        let dir = tempfile::tempdir().unwrap();
        let config = ProxyConfig {
            computer_id: "COMP-1".into(),
            host: "127.0.0.1".into(),
            database: slapos_proxy::Database::sqlite(dir.path().join("proxy.db")),
            security: Security::Tls { ca_dir: dir.path().join("ca"), files: None, validity: Validity::default() },
            ..Default::default()
        };
        let master = start_background(&config).unwrap();
        Master { dir, master }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca/ca.crt")
    }

    /// A client with `name`.crt/.key of the test directory (None: anonymous).
    fn client(&self, name: Option<&str>) -> SlapClient {
        let mut c = ClientConfig::new(self.master.url()).with_timeout(Duration::from_secs(20));
        c.ca_file = Some(self.ca());
        if let Some(n) = name {
            c.cert_file = Some(self.file(&format!("{n}.crt")));
            c.key_file = Some(self.file(&format!("{n}.key")));
        }
        SlapClient::new(c).unwrap()
    }

    fn file(&self, name: &str) -> PathBuf {
        let d = self.dir.path();
        match name {
            "admin.crt" | "admin.key" => d.join("ca").join(name),
            _ => d.join(name),
        }
    }

    fn save(&self, name: &str, cert: &str, key: &str) {
        std::fs::write(self.file(&format!("{name}.crt")), cert).unwrap();
        std::fs::write(self.file(&format!("{name}.key")), key).unwrap();
    }

    fn token(&self, kind: &str, name: &str) -> String {
        self.client(Some("admin")).post("identity/token", &[("kind", kind), ("name", name)], None).unwrap()
    }

    /// Joins with a token: (certificate, key), or the error.
    fn join(&self, route: &str, form: &[(&str, &str)]) -> Result<(String, String), SlapError> {
        let body = self.client(None).post(route, form, None)?;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["ca"].as_str().unwrap(), std::fs::read_to_string(self.ca()).unwrap());
        Ok((v["certificate"].as_str().unwrap().into(), v["key"].as_str().unwrap().into()))
    }
}

fn status(r: Result<(String, String), SlapError>) -> (Option<u16>, String) {
    let e = r.unwrap_err();
    (e.status(), e.to_string())
}

fn format_report(computer: &str) -> Value {
    let part = |i: usize| {
        Value::Dict(BTreeMap::from([
            ("reference".to_string(), Value::str(format!("slappart{i}"))),
            ("address_list".to_string(), Value::List(vec![])),
            ("tap".to_string(), Value::None),
        ]))
    };
    Value::Dict(BTreeMap::from([
        ("reference".to_string(), Value::str(computer)),
        ("address".to_string(), Value::str("10.0.0.1")),
        ("netmask".to_string(), Value::str("255.255.255.0")),
        ("partition_list".to_string(), Value::List((0..3).map(part).collect())),
    ]))
}

#[test]
fn tokens_are_spent_once_before_they_expire_for_what_they_were_minted() {
    let m = Master::start();
    let t = m.token("computer", "COMP-9");
    assert_eq!(t.len(), 64);
    // wrong token
    let (s, e) = status(m.join("Person_requestComputer", &[("token", "f00"), ("title", "COMP-9")]));
    assert_eq!(s, Some(403), "{e}");
    assert!(e.contains("unknown token"), "{e}");
    // a token for another computer: refused, and spent
    let (s, e) = status(m.join("Person_requestComputer", &[("token", &t), ("title", "COMP-8")]));
    assert_eq!(s, Some(403), "{e}");
    let (_, e) = status(m.join("Person_requestComputer", &[("token", &t), ("title", "COMP-9")]));
    assert!(e.contains("already used"), "{e}");
    // a good one, once
    let t = m.token("computer", "COMP-9");
    m.join("Person_requestComputer", &[("token", &t), ("title", "COMP-9")]).unwrap();
    let (s, e) = status(m.join("Person_requestComputer", &[("token", &t), ("title", "COMP-9")]));
    assert_eq!(s, Some(403));
    assert!(e.contains("already used"), "{e}");
    // the same computer id again, with a new token: it has already joined
    let t = m.token("computer", "COMP-9");
    let (_, e) = status(m.join("Person_requestComputer", &[("token", &t), ("title", "COMP-9")]));
    assert!(e.contains("already joined"), "{e}");
    // in the words the Python `slapos node register` recognises
    assert!(e.contains("Certificate still active."), "{e}");
    // a computer's token does not get a person a certificate
    let t = m.token("computer", "COMP-6");
    let (s, e) = status(m.join("Person_getCertificate", &[("token", &t)]));
    assert_eq!(s, Some(403), "{e}");
    assert!(e.contains("not for a user"), "{e}");
    // a user's token does not join a computer
    let t = m.token("user", "COMP-7");
    let (_, e) = status(m.join("Person_requestComputer", &[("token", &t), ("title", "COMP-7")]));
    assert!(e.contains("not for a computer"), "{e}");
    // expired
    let store = SqliteStore::open(&m.dir.path().join("proxy.db")).unwrap();
    let row = TokenRow { hash: token_hash("old"), kind: "user".into(), name: "carol".into(), expires: 1.0, used: None };
    store.transaction(|tx: &mut dyn Tx| tx.add_token(&row)).unwrap();
    let (_, e) = status(m.join("Person_getCertificate", &[("token", "old")]));
    assert!(e.contains("expired"), "{e}");
    // only the administrator mints tokens
    let e = m.client(None).post("identity/token", &[("kind", "user"), ("name", "x")], None).unwrap_err();
    assert_eq!(e.status(), Some(403));
}

#[test]
fn a_node_a_person_and_an_instance_work_with_their_certificates() {
    let m = Master::start();
    // the node joins
    let t = m.token("computer", "COMP-9");
    let (cert, key) = m.join("Person_requestComputer", &[("token", &t), ("title", "COMP-9")]).unwrap();
    // the Python `slapos node register` reads the computer id from the text
    // before the PEM, as SlapOS master's: from "COMP-" to "/email"
    let k = cert.find("COMP-").unwrap();
    assert_eq!(&cert[k..k + cert[k..].find("/email").unwrap()], "COMP-9");
    m.save("node", &cert, &key);
    let node = m.client(Some("node"));
    node.load_computer_configuration(&format_report("COMP-9")).unwrap();
    // a person gets a certificate; the administrator opens COMP-9 to them
    let t = m.token("user", "alice");
    let (cert, key) = m.join("Person_getCertificate", &[("token", &t)]).unwrap();
    m.save("alice", &cert, &key);
    let admin = m.client(Some("admin"));
    admin.post("identity/grant", &[("kind", "computer"), ("reference", "COMP-9"), ("user", "alice")], None).unwrap();
    let alice = m.client(Some("alice"));
    alice.supply(SR, "COMP-9", slap::model::SoftwareState::Available).unwrap();
    let mut req = InstanceRequest::new(SR, "my-tree");
    req.filter.insert("computer_guid".into(), "COMP-9".into());
    let RequestResult::Ready(root) = alice.request(&req).unwrap() else { panic!("not ready") };
    let partition = root.partition_id.clone().unwrap();
    // the node reads its computer and gets the partition's certificate
    let info = node.computer_information("COMP-9").unwrap();
    assert!(info.partitions.iter().any(|p| p.partition_id == partition && p.software_release.is_some()));
    let (pcert, pkey) = node.certificate("COMP-9", &partition).unwrap();
    assert!(pcert.starts_with("-----BEGIN CERTIFICATE-----") && pkey.contains("PRIVATE KEY"));
    m.save("instance", &pcert, &pkey);
    // another computer may not read it, nor the person
    let e = alice.certificate("COMP-9", &partition).unwrap_err();
    assert_eq!(e.status(), Some(403));
    // the instance requests a child with its certificate
    let instance = m.client(Some("instance"));
    let mut child = InstanceRequest::new(SR, "child");
    child.filter.insert("computer_guid".into(), "COMP-9".into());
    child.requester = Some(("COMP-9".into(), partition.clone()));
    let RequestResult::Ready(c) = instance.request(&child).unwrap() else { panic!("not ready") };
    assert_ne!(c.partition_id.as_deref(), Some(partition.as_str()));
    // pretending to be another partition is refused
    child.requester = Some(("COMP-9".into(), "slappart2".into()));
    assert_eq!(instance.request(&child).unwrap_err().status(), Some(403));
    // the computer's certificate revoked: refused at once
    node.post("revokeComputerCertificate", &[("computer_id", "COMP-9")], None).unwrap();
    let e = node.computer_information("COMP-9").unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    // the anonymous get nothing but the front page
    assert_eq!(m.client(None).computer_information("COMP-9").unwrap_err().status(), Some(403));
}

/// Joins `user` with a token and opens `computers` to them: their client.
fn person(m: &Master, user: &str, computers: &[&str]) -> SlapClient {
    let t = m.token("user", user);
    let (cert, key) = m.join("Person_getCertificate", &[("token", &t)]).unwrap();
    m.save(user, &cert, &key);
    let admin = m.client(Some("admin"));
    for c in computers {
        admin.post("identity/grant", &[("kind", "computer"), ("reference", c), ("user", user)], None).unwrap();
    }
    m.client(Some(user))
}

/// Joins `computer` with a token and reports its partitions: its client.
fn computer(m: &Master, computer: &str) -> SlapClient {
    let t = m.token("computer", computer);
    let (cert, key) = m.join("Person_requestComputer", &[("token", &t), ("title", computer)]).unwrap();
    m.save(computer, &cert, &key);
    let node = m.client(Some(computer));
    node.load_computer_configuration(&format_report(computer)).unwrap();
    node
}

/// The titles (or references) a HATEOAS search lists for `client`.
fn listed(client: &SlapClient, query: &str, key: &str) -> Vec<String> {
    let body = client.get("hateoas/", &[("mode", "search"), ("query", query)]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut names: Vec<String> =
        v["_embedded"]["contents"].as_array().unwrap().iter().map(|c| c[key].as_str().unwrap().to_string()).collect();
    names.sort();
    names
}

fn request_on(client: &SlapClient, title: &str, computer: &str) {
    let mut req = InstanceRequest::new(SR, title);
    req.filter.insert("computer_guid".into(), computer.into());
    client.request(&req).unwrap();
}

#[test]
fn the_hateoas_listing_shows_a_person_only_their_trees_and_computers() {
    let m = Master::start();
    computer(&m, "COMP-A");
    computer(&m, "COMP-B");
    let alice = person(&m, "alice", &["COMP-A"]);
    let bob = person(&m, "bob", &["COMP-B"]);
    request_on(&alice, "alice-tree", "COMP-A");
    request_on(&bob, "bob-tree", "COMP-B");
    const SERVICES: &str = "portal_type:\"Instance Tree\" AND validation_state:validated";
    const COMPUTERS: &str = "portal_type:\"Compute Node\" AND validation_state:validated";
    assert_eq!(listed(&alice, SERVICES, "title"), ["alice-tree"]);
    assert_eq!(listed(&bob, SERVICES, "title"), ["bob-tree"]);
    assert_eq!(listed(&alice, COMPUTERS, "reference"), ["COMP-A"]);
    assert_eq!(listed(&bob, COMPUTERS, "reference"), ["COMP-B"]);
    // the master serves HTTPS itself: the entry point links to https
    let root: serde_json::Value = serde_json::from_str(&alice.get("hateoas/", &[]).unwrap()).unwrap();
    let search = root["_links"]["raw_search"]["href"].as_str().unwrap();
    assert!(search.starts_with("https://"), "{search}");
    // by title: another's tree is not found
    let other = format!("{SERVICES} AND title:=\"bob-tree\"");
    assert!(listed(&alice, &other, "title").is_empty());
    // a computer opened to everyone is listed to everyone
    let admin = m.client(Some("admin"));
    admin.post("identity/grant", &[("kind", "computer"), ("reference", "COMP-B"), ("user", "*")], None).unwrap();
    assert_eq!(listed(&alice, COMPUTERS, "reference"), ["COMP-A", "COMP-B"]);
    // the administrator sees everything
    assert_eq!(listed(&admin, SERVICES, "title"), ["alice-tree", "bob-tree"]);
}

#[test]
fn a_revoked_person_is_refused_at_once_and_others_are_not() {
    let m = Master::start();
    computer(&m, "COMP-A");
    let alice = person(&m, "alice", &["COMP-A"]);
    let bob = person(&m, "bob", &["COMP-A"]);
    alice.supply(SR, "COMP-A", slap::model::SoftwareState::Available).unwrap();
    let n = m.client(Some("admin")).post("identity/revoke", &[("kind", "user"), ("name", "alice")], None).unwrap();
    assert_eq!(n, "1");
    let e = alice.supply(SR, "COMP-A", slap::model::SoftwareState::Available).unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    assert!(e.to_string().contains("revoked"), "{e}");
    bob.supply(SR, "COMP-A", slap::model::SoftwareState::Available).unwrap();
    // only the administrator revokes
    let e = bob.post("identity/revoke", &[("kind", "user"), ("name", "alice")], None).unwrap_err();
    assert_eq!(e.status(), Some(403));
}

#[test]
fn a_freed_partition_s_certificates_are_revoked_and_ended_ones_pruned() {
    let m = Master::start();
    let node = computer(&m, "COMP-A");
    let alice = person(&m, "alice", &["COMP-A"]);
    let mut req = InstanceRequest::new(SR, "tree");
    req.filter.insert("computer_guid".into(), "COMP-A".into());
    let RequestResult::Ready(root) = alice.request(&req).unwrap() else { panic!("not ready") };
    let partition = root.partition_id.unwrap();
    let (cert, key) = node.certificate("COMP-A", &partition).unwrap();
    m.save("instance", &cert, &key);
    let instance = m.client(Some("instance"));
    let status = |c: &SlapClient| c.get("getComputerPartitionStatus", &[("computer_id", "COMP-A"), ("computer_partition_id", &partition)]);
    status(&instance).unwrap();
    // an ended partition certificate in the store goes at the next issue
    let store = SqliteStore::open(&m.dir.path().join("proxy.db")).unwrap();
    let ended = slapos_proxy::store::CertificateRow {
        serial: "0badc0de".into(),
        kind: "partition".into(),
        name: "slappart2".into(),
        computer_reference: "COMP-A".into(),
        not_after: 1.0,
        revoked: None,
    };
    store.transaction(|tx: &mut dyn Tx| tx.add_certificate(&ended)).unwrap();
    node.certificate("COMP-A", &partition).unwrap();
    assert!(store.transaction(|tx: &mut dyn Tx| tx.certificate("0badc0de")).unwrap().is_none(), "the ended certificate was kept");
    // destroyed and freed: the instance's certificate no longer works
    req.state = Some(slap::model::InstanceState::Destroyed);
    alice.request(&req).unwrap();
    node.partition_destroyed("COMP-A", &partition).unwrap();
    let e = status(&instance).unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    assert!(e.to_string().contains("revoked"), "{e}");
}
