//! The client commands (`slapos request|supply|remove|service|computer`)
//! against our master and against the real Python master, and their
//! answers to bad input.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use slap::client::{ClientConfig, SlapClient};
use slap::marshal::Value;
use test_support::Master;

const BIN: &str = env!("CARGO_BIN_EXE_slapos");
const SR: &str = "http://example.com/software/client-test/software.cfg";
const COMPUTER: &str = "COMP-CLI";

fn client_cfg(dir: &Path, master_url: &str) -> std::path::PathBuf {
    let p = dir.join("slapos-client.cfg");
    std::fs::write(&p, format!("[slapos]\nmaster_url = {master_url}\n\n[slapconsole]\n")).unwrap();
    p
}

fn slapos(cfg: &Path, args: &[&str]) -> Output {
    Command::new(BIN).args(args).arg("--cfg").arg(cfg).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "exit {:?}: {}", o.status.code(), stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

fn format_report(c: &SlapClient) {
    fn s(v: impl Into<String>) -> Value {
        Value::Str(v.into())
    }
    let parts = (0..3)
        .map(|i| {
            Value::Dict(BTreeMap::from([
                ("reference".into(), s(format!("slappart{i}"))),
                ("tap".into(), Value::Dict(BTreeMap::from([("name".into(), s(format!("slaptap{i}")))]))),
                (
                    "address_list".into(),
                    Value::List(vec![Value::Dict(BTreeMap::from([
                        ("addr".into(), s(format!("10.0.0.{}", i + 2))),
                        ("netmask".into(), s("255.255.255.255")),
                    ]))]),
                ),
            ]))
        })
        .collect();
    c.load_computer_configuration(&Value::Dict(BTreeMap::from([
        ("reference".into(), s(COMPUTER)),
        ("address".into(), s("10.0.0.1")),
        ("netmask".into(), s("255.255.255.0")),
        ("partition_list".into(), Value::List(parts)),
    ])))
    .unwrap();
}

fn every_command(master: &Master, ours: bool) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = client_cfg(dir.path(), &master.url);
    let c = SlapClient::new(ClientConfig::new(&master.url)).unwrap();
    format_report(&c);

    let o = slapos(&cfg, &["supply", SR, COMPUTER]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("to be installed on COMP-CLI"), "{}", stdout(&o));

    let o = slapos(
        &cfg,
        &["request", "my-service", SR, "--parameters", "greeting=hello", "size=2", "--node", &format!("computer_guid={COMPUTER}")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("no connection parameters yet"), "{}", stdout(&o));
    // the partition publishes its URL, the requester reads it
    let partition =
        c.computer_information(COMPUTER).unwrap().partitions.into_iter().find(|p| p.instance_title() == Some("my-service")).unwrap();
    c.set_connection_parameters(
        COMPUTER,
        &partition.partition_id,
        &BTreeMap::from([("url".into(), Value::str("http://10.0.0.2:8080/"))]),
        None,
    )
    .unwrap();
    let doc = json(&slapos(&cfg, &["request", "my-service", SR, "--parameters", "greeting=hello", "size=2", "--json"]));
    assert_eq!(doc["url"], "http://10.0.0.2:8080/");
    let o = slapos(&cfg, &["request", "my-service", SR, "--parameters", "greeting=hello", "size=2"]);
    assert!(stdout(&o).contains("http://10.0.0.2:8080/"), "the table shows the URL: {}", stdout(&o));

    // a JSON parameters file and a shared instance
    let params = dir.path().join("params.json");
    std::fs::write(&params, r#"{"domain": "example.org", "port": 443}"#).unwrap();
    let o = slapos(&cfg, &["request", "my-frontend", SR, "--parameters-file", params.to_str().unwrap(), "--slave"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let host = c.register_partition(COMPUTER, &partition.partition_id).unwrap();
    assert_eq!(host.slave_instance_list()[0]["domain"], Value::str("example.org"));

    if ours {
        c.partition_started(COMPUTER, &partition.partition_id).unwrap();
    }
    let list = json(&slapos(&cfg, &["service", "list", "--json"]));
    assert_eq!(list["my-service"], SR, "{list}");
    let info = json(&slapos(&cfg, &["service", "info", "my-service", "--json"]));
    assert_eq!(info["software-url"], SR);
    assert_eq!(info["requested-state"], "started");
    assert_eq!(info["instance-parameters"]["greeting"], "hello");
    assert_eq!(info["connection-parameters"]["url"], "http://10.0.0.2:8080/");
    if ours {
        assert_eq!(info["reported-state"], "started", "our master shows what the node reported");
    }
    let o = slapos(&cfg, &["service", "info", "my-service"]);
    assert!(stdout(&o).contains("greeting") && stdout(&o).contains("http://10.0.0.2:8080/"), "{}", stdout(&o));
    let computers = json(&slapos(&cfg, &["computer", "list", "--json"]));
    assert_eq!(computers[0]["reference"], COMPUTER, "{computers}");
    let computer = json(&slapos(&cfg, &["computer", "info", COMPUTER, "--json"]));
    assert_eq!(computer["reference"], COMPUTER);

    // stop, destroy, remove
    let o = slapos(&cfg, &["request", "my-service", SR, "--state", "stopped"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(c.register_partition(COMPUTER, &partition.partition_id).unwrap().requested_state, Some(slap::InstanceState::Stopped));
    let o = slapos(&cfg, &["request", "my-service", SR, "--state", "destroyed"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = slapos(&cfg, &["remove", SR, COMPUTER]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(c.computer_information(COMPUTER).unwrap().software_releases[0].state(), slap::SoftwareState::Destroyed);

    // unknown service / computer
    let o = slapos(&cfg, &["service", "info", "no-such-service"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("service 'no-such-service' does not exist"), "{}", stderr(&o));
    let o = slapos(&cfg, &["computer", "info", "NO-SUCH"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn every_command_against_our_master() {
    let master = Master::start(Path::new(BIN), COMPUTER);
    every_command(&master, true);
}

#[test]
#[ignore = "needs the venv"]
fn needs_venv_every_command_against_the_python_master() {
    let master = Master::python(COMPUTER);
    every_command(&master, false);
}

fn one_line_error(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{err}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
    assert!(err.trim().lines().count() <= 2, "a short message, not a dump: {err}");
}

#[test]
fn bad_input_gets_one_clear_line_and_the_right_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    // a master that is down
    let port = test_support::free_port();
    let cfg = client_cfg(dir.path(), &format!("http://127.0.0.1:{port}"));
    one_line_error(&slapos(&cfg, &["supply", SR, COMPUTER]), 1, &format!("127.0.0.1:{port}"));
    one_line_error(&slapos(&cfg, &["service", "list"]), 1, &format!("127.0.0.1:{port}"));
    // malformed KEY=VALUE, repeated keys
    one_line_error(&slapos(&cfg, &["request", "x", SR, "--parameters", "novalue"]), 1, "malformed parameter 'novalue'");
    one_line_error(&slapos(&cfg, &["request", "x", SR, "--node", "a=1", "a=2"]), 1, "same node option key 'a'");
    // invalid JSON parameters: says where
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\n  \"a\": 1,\n  oops\n}").unwrap();
    one_line_error(&slapos(&cfg, &["request", "x", SR, "--parameters-file", bad.to_str().unwrap()]), 1, "line 3");
    // a missing configuration, a configuration without master_url
    one_line_error(&slapos(&dir.path().join("none.cfg"), &["supply", SR, COMPUTER]), 1, "none.cfg");
    let empty = dir.path().join("empty.cfg");
    std::fs::write(&empty, "[slapos]\n").unwrap();
    one_line_error(&slapos(&empty, &["supply", SR, COMPUTER]), 1, "master_url is not set");
    // a master that says "not ready" (408): exit 2, as SlapOS
    let server = test_support::canned(408, "<p>Resource not ready</p>");
    let cfg = client_cfg(dir.path(), &server.url);
    one_line_error(&slapos(&cfg, &["request", "x", SR]), 2, "run this command again");
}
