//! The `slapos` binary against our master behind real HTTPS on loopback
//! (a rustls front with a CA made in the test): client commands and the
//! node verify the master with `master_ca_file`, refuse it without or with
//! a wrong CA, and report unusable certificate files in one line (never
//! exit 101). Also: a reader that closes stdout early ends a command
//! quietly.

use test_support as support;
use test_support::tls as tls_support;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use slap::client::{ClientConfig, SlapClient, SlapError};
use slap::marshal::Value;
use slapos_config::Config;
use slapos_grid::config::{NodeConfig, NodeOverrides};
use slapos_grid::node::{Node, NodeError};
use tls_support::{serve, Backend, Pki, TlsServer};

const BIN: &str = env!("CARGO_BIN_EXE_slapos");
// a local path without schema: `request` fetches no software.cfg.json (no network in tests)
const SR: &str = "/nonexistent/slaptest/tls-test/software.cfg";
const COMPUTER: &str = "COMP-TLS";
const V1_CERT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../slap/tests/data/v1-client.crt");
const V1_KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../slap/tests/data/v1-client.key");

/// Our master on plain loopback HTTP; killed by its pid when dropped.
struct Master {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_master() -> Master {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let cfg = dir.path().join("slapos.cfg");
    let db = dir.path().join("p.db");
    std::fs::write(
        &cfg,
        format!("[slapos]\ncomputer_id = {COMPUTER}\n[slapproxy]\nhost = 127.0.0.1\nport = {port}\ndatabase_uri = {}\n", db.display()),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(["proxy", "start", "--cfg"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the master did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Master { child, addr: ([127, 0, 0, 1], port).into(), dir }
}

/// The master behind HTTPS (server certificate of `pki` for 127.0.0.1).
fn https_master(pki: &Pki) -> (Master, TlsServer) {
    let master = start_master();
    let front = serve(pki.server_config(&["127.0.0.1"], false), Backend::Forward(master.addr));
    (master, front)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn slapos(cfg: &Path, args: &[&str]) -> Output {
    Command::new(BIN).args(args).arg("--cfg").arg(cfg).stdin(Stdio::null()).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit 1 (not the 101 of a panic), one error line that contains `needle`.
fn one_line_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| !l.contains(" INFO ")).collect();
    assert_eq!(errors.len(), 1, "one line: {err}");
    assert!(errors[0].contains(needle), "expected '{needle}' in: {err}");
}

#[test]
fn client_commands_verify_the_master_with_master_ca_file() {
    let (pki, other) = (Pki::new("slaptest"), Pki::new("other"));
    let (master, front) = https_master(&pki);
    format_report(&SlapClient::new(ClientConfig::new(format!("http://{}", master.addr))).unwrap());
    let dir = master.dir.path();
    let client = |name: &str, extra: &str| write(dir, name, &format!("[slapos]\nmaster_url = {}\n\n[slapconsole]\n{extra}", front.url));

    // the right CA: every kind of call works (SLAP and HATEOAS)
    let good = client("good.cfg", &format!("master_ca_file = {}\n", pki.ca_file.display()));
    let o = slapos(&good, &["supply", SR, COMPUTER]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = slapos(&good, &["request", "tls-service", SR, "--node", &format!("computer_guid={COMPUTER}")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no connection parameters yet"));
    let o = slapos(&good, &["service", "list", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list["tls-service"], SR, "{list}");

    // no CA: the private CA is not trusted, and the message says what to set
    let none = client("none.cfg", "");
    one_line_error(&slapos(&none, &["supply", SR, COMPUTER]), "master_ca_file");
    one_line_error(&slapos(&none, &["service", "list"]), "not signed by a trusted CA");
    // another CA: refused the same way
    let wrong = client("wrong.cfg", &format!("master_ca_file = {}\n", other.ca_file.display()));
    one_line_error(&slapos(&wrong, &["request", "tls-service", SR]), "not signed by a trusted CA");
    // [slapos] master_ca_file is read too
    let in_slapos =
        write(dir, "slapos-section.cfg", &format!("[slapos]\nmaster_url = {}\nmaster_ca_file = {}\n", front.url, pki.ca_file.display()));
    assert!(slapos(&in_slapos, &["supply", SR, COMPUTER]).status.success());

    // an X.509 v1 client certificate: one line naming the file, not a panic
    let v1 = client("v1.cfg", &format!("master_ca_file = {}\ncert_file = {V1_CERT}\nkey_file = {V1_KEY}\n", pki.ca_file.display()));
    for args in [&["supply", SR, COMPUTER][..], &["service", "list"], &["request", "x", SR]] {
        one_line_error(&slapos(&v1, args), "v1-client.crt");
    }
    // a CA file that is not one
    let bad_ca = client("bad-ca.cfg", &format!("master_ca_file = {}\n", V1_KEY));
    one_line_error(&slapos(&bad_ca, &["supply", SR, COMPUTER]), "v1-client.key");
}

fn node_cfg(dir: &Path, url: &str, extra: &str) -> PathBuf {
    write(
        dir,
        "slapos.cfg",
        &format!(
            "[slapos]\ncomputer_id = {COMPUTER}\nmaster_url = {url}\nsoftware_root = {0}\ninstance_root = {0}\n{extra}",
            dir.display()
        ),
    )
}

fn node(dir: &Path, url: &str, extra: &str) -> Result<Node, NodeError> {
    let config = Config::load(&node_cfg(dir, url, extra)).unwrap();
    Node::new(NodeConfig::from_config(&config, &NodeOverrides::default()).unwrap())
}

#[test]
fn the_node_verifies_the_master_with_master_ca_file() {
    let (pki, other) = (Pki::new("slaptest"), Pki::new("other"));
    let (master, front) = https_master(&pki);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // the node's master client, as node software|instance|report build it
    let n = node(d, &front.url, &format!("master_ca_file = {}\n", pki.ca_file.display())).unwrap();
    n.client.computer_bang(COMPUTER, "over HTTPS").unwrap();
    let e = node(d, &front.url, "").unwrap().client.computer_bang(COMPUTER, "x").unwrap_err();
    assert!(matches!(&e, SlapError::Tls { message, .. } if message.contains("master_ca_file")), "{e:?}");
    let e = node(d, &front.url, &format!("master_ca_file = {}\n", other.ca_file.display()))
        .unwrap()
        .client
        .computer_bang(COMPUTER, "x")
        .unwrap_err();
    assert!(e.is_unreachable() && e.to_string().contains("not signed by a trusted CA"), "{e}");
    match node(d, &front.url, &format!("key_file = {V1_KEY}\ncert_file = {V1_CERT}\n")) {
        Err(NodeError::Master(SlapError::Certificate(e))) => {
            assert!(e.to_string().contains("v1-client.crt"), "{e}")
        }
        other => panic!("{:?}", other.err()),
    }

    // the binary: `node bang` with the CA, without it, with a v1 certificate
    node_cfg(d, &front.url, &format!("master_ca_file = {}\n", pki.ca_file.display()));
    let o = slapos(&d.join("slapos.cfg"), &["node", "bang", "-m", "hello"]);
    assert!(o.status.success(), "{}", stderr(&o));
    node_cfg(d, &front.url, "");
    one_line_error(&slapos(&d.join("slapos.cfg"), &["node", "bang", "-m", "hello"]), "master_ca_file");
    node_cfg(d, &front.url, &format!("master_ca_file = {}\nkey_file = {V1_KEY}\ncert_file = {V1_CERT}\n", pki.ca_file.display()));
    one_line_error(&slapos(&d.join("slapos.cfg"), &["node", "bang", "-m", "hello"]), "v1-client.crt");
    drop(master);
}

/// Tells the master about one partition of COMPUTER.
fn format_report(c: &SlapClient) {
    let s = |v: &str| Value::str(v);
    let partition = Value::Dict(BTreeMap::from([
        ("reference".into(), s("slappart0")),
        ("tap".into(), Value::Dict(BTreeMap::from([("name".into(), s("slaptap0"))]))),
        (
            "address_list".into(),
            Value::List(vec![Value::Dict(BTreeMap::from([("addr".into(), s("10.0.0.2")), ("netmask".into(), s("255.255.255.255"))]))]),
        ),
    ]));
    c.load_computer_configuration(&Value::Dict(BTreeMap::from([
        ("reference".into(), s(COMPUTER)),
        ("address".into(), s("10.0.0.1")),
        ("netmask".into(), s("255.255.255.0")),
        ("partition_list".into(), Value::List(vec![partition])),
    ])))
    .unwrap();
}

/// Runs `slapos args…` with its stdout a pipe whose reader is already
/// gone, and returns how it ended.
fn with_closed_stdout(cfg: &Path, args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--cfg")
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (child.wait().unwrap(), err)
}

#[test]
fn a_reader_that_goes_away_ends_a_command_quietly() {
    let master = start_master();
    let url = format!("http://{}", master.addr);
    let c = SlapClient::new(ClientConfig::new(&url)).unwrap();
    format_report(&c);
    c.supply(SR, COMPUTER, slap::SoftwareState::Available).unwrap();
    let cfg = write(master.dir.path(), "client.cfg", &format!("[slapos]\nmaster_url = {url}\n"));
    let node = write(
        master.dir.path(),
        "slapos.cfg",
        &format!("[slapos]\ncomputer_id = {COMPUTER}\n[slapproxy]\ndatabase_uri = {}\n", master.dir.path().join("p.db").display()),
    );
    let o = slapos(&cfg, &["request", "pipe-service", SR, "--node", &format!("computer_guid={COMPUTER}")]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (cfg, args) in [
        (&cfg, &["service", "list"][..]),
        (&cfg, &["service", "info", "pipe-service"]),
        (&cfg, &["request", "pipe-service", SR, "--json"]),
        (&cfg, &["console", "--command", "print(\"hello\")"]),
        (&node, &["proxy", "show"]),
    ] {
        let (status, err) = with_closed_stdout(cfg, args);
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
        assert_eq!(status.code(), Some(0), "{args:?} ends 0 as SlapOS: {err}");
    }
}
