//! The client commands (`slapos request|supply|remove|service|computer`)
//! against our master and against the real Python master, and their
//! answers to bad input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use slap::client::{ClientConfig, SlapClient};
use slap::marshal::Value;
use test_support::Master;

const BIN: &str = env!("CARGO_BIN_EXE_slapos");
// a local path without schema: `request` fetches no software.cfg.json (no network in tests)
const SR: &str = "/nonexistent/slaptest/client-test/software.cfg";
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
    format_report_with(c, 3)
}

fn format_report_with(c: &SlapClient, partitions: usize) {
    fn s(v: impl Into<String>) -> Value {
        Value::Str(v.into())
    }
    let parts = (0..partitions)
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
    // a local release without schema: nothing fetched, nothing to warn about
    let no_schema = dir.path().join("no-schema/software.cfg").display().to_string();
    one_line_error(&slapos(&cfg, &["request", "x", &no_schema]), 2, "run this command again");
}

/// A local software release whose schema (`software.cfg.json`) declares
/// `serialisation`: neither client downloads anything.
fn local_sr(dir: &Path, name: &str, serialisation: &str) -> String {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("software.cfg"), "[buildout]\n").unwrap();
    std::fs::write(
        d.join("software.cfg.json"),
        format!(r#"{{"name": "{name}", "serialisation": "{serialisation}", "software-type": {{}}}}"#),
    )
    .unwrap();
    d.join("software.cfg").display().to_string()
}

/// `--parameters-file` as JSON, YAML and instance XML, for a release that
/// says `xml` and one that says `json-in-xml`: the Python master stores the
/// very same parameters whether SlapOS's client or ours sent them.
#[test]
#[ignore = "needs the venv"]
fn needs_venv_parameters_files_reach_the_master_as_from_slapos() {
    let venv = test_support::python_venv();
    let master = Master::start(&venv.join("bin/slapos"), COMPUTER);
    let dir = tempfile::tempdir().unwrap();
    let cfg = client_cfg(dir.path(), &master.url);
    let c = SlapClient::new(ClientConfig::new(&master.url)).unwrap();
    format_report_with(&c, 12);
    let xml_sr = local_sr(dir.path(), "xml-sr", "xml");
    let json_sr = local_sr(dir.path(), "json-sr", "json-in-xml");
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let yaml = file(
        "p.yaml",
        "# YAML 1.1 as PyYAML reads it\nname: web\nport: 8080\nratio: 1.5\nenabled: yes\ntags: [a, b]\nnested: {k: v}\nempty: null\nquoted: \"042\"\n",
    );
    let yml = file("p.yml", "zeta: 1\nalpha: two\n");
    let xml = file("p.xml", "<?xml version='1.0' encoding='utf-8'?>\n<instance>\n  <parameter id=\"a\">1</parameter>\n  <parameter id=\"e\"></parameter>\n  <parameter id=\"t\">x &amp; y</parameter>\n</instance>\n");
    let json_file = file("p.json", r#"{"b": 2, "a": {"deep": [1, null]}}"#);
    let keys: &[&str] =
        &["name", "port", "ratio", "enabled", "tags", "nested", "empty", "quoted", "zeta", "alpha", "a", "e", "t", "b", "_"];
    let cases = [(&yaml, &xml_sr), (&yaml, &json_sr), (&yml, &json_sr), (&xml, &xml_sr), (&xml, &json_sr), (&json_file, &json_sr)];
    for (i, (params, sr)) in cases.iter().enumerate() {
        let node = format!("computer_guid={COMPUTER}");
        let theirs = Command::new(venv.join("bin/slapos"))
            .args(["request", "--cfg", cfg.to_str().unwrap(), &format!("py-{i}"), sr, "--parameters-file", params, "--node", &node])
            .output()
            .unwrap();
        assert!(theirs.status.success(), "the Python client: {}", stderr(&theirs));
        let ours = slapos(&cfg, &["request", &format!("rs-{i}"), sr, "--parameters-file", params, "--node", &node]);
        assert!(ours.status.success(), "{}", stderr(&ours));
        let computer = c.computer_information(COMPUTER).unwrap();
        let stored = |title: &str| -> BTreeMap<String, Value> {
            let p = computer
                .partitions
                .iter()
                .find(|p| p.instance_title() == Some(title))
                .unwrap_or_else(|| panic!("no partition for {title}"));
            p.instance_parameters().into_iter().filter(|(k, _)| keys.contains(&k.as_str())).collect()
        };
        let (py, rs) = (stored(&format!("py-{i}")), stored(&format!("rs-{i}")));
        assert!(!py.is_empty(), "case {i}: the parameters reached the master");
        assert_eq!(rs, py, "case {i}: {params} for {sr}");
    }
}

/// `service info --news`: the status SlapOS's client computes from the
/// master's news, and the news themselves, are what ours prints, against
/// our master (news made from what the nodes reported: one instance
/// started, one in error → orange) and the Python one (no news:
/// unsupported).
#[test]
#[ignore = "needs the venv"]
fn needs_venv_service_info_news_as_slapos_shows_them() {
    let venv = test_support::python_venv();
    for ours in [true, false] {
        let program = if ours { PathBuf::from(BIN) } else { venv.join("bin/slapos") };
        let master = Master::start(&program, COMPUTER);
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("client.cfg");
        std::fs::write(&cfg, format!("[slapos]\nmaster_url = {0}\nmaster_rest_url = {0}/hateoas/\n", master.url)).unwrap();
        let c = SlapClient::new(ClientConfig::new(&master.url)).unwrap();
        format_report(&c);
        let sr = local_sr(dir.path(), "news-sr", "xml");
        let o = slapos(&cfg, &["request", "news-svc", &sr, "--node", &format!("computer_guid={COMPUTER}")]);
        assert!(o.status.success(), "{}", stderr(&o));
        let partitions = c.computer_information(COMPUTER).unwrap().partitions;
        let root = partitions.iter().find(|p| p.instance_title() == Some("news-svc")).unwrap().partition_id.clone();
        let mut child = slap::client::InstanceRequest::new(&sr, "news-child");
        child.requester = Some((COMPUTER.into(), root.clone()));
        c.request(&child).unwrap();
        let partitions = c.computer_information(COMPUTER).unwrap().partitions;
        let child = partitions.iter().find(|p| p.instance_title() == Some("news-child")).unwrap().partition_id.clone();
        c.partition_started(COMPUTER, &root).unwrap();
        c.partition_error(COMPUTER, &child, &format!("{}\nbuildout failed: boom", "x".repeat(200)), None).unwrap();

        let theirs = Command::new(venv.join("bin/slapos"))
            .args(["service", "info", "--cfg", cfg.to_str().unwrap(), "news-svc", "--news"])
            .output()
            .unwrap();
        let theirs = json(&theirs);
        let mine = json(&slapos(&cfg, &["service", "info", "news-svc", "--news", "--json"]));
        assert_eq!(mine["status"], theirs["status"], "ours: {mine}\nSlapOS: {theirs}");
        assert_eq!(mine.get("news"), theirs.get("news"));
        let table = stdout(&slapos(&cfg, &["service", "info", "news-svc", "--news"]));
        if ours {
            assert_eq!(theirs["status"], "orange", "{theirs}");
            let texts: Vec<&str> = theirs["news"].as_array().unwrap().iter().map(|e| e["text"].as_str().unwrap()).collect();
            assert_eq!(texts[0], "#access Instance correctly started");
            assert!(texts[1].starts_with("#error while instanciating: ") && texts[1].ends_with("boom"), "{texts:?}");
            assert_eq!(texts[1].chars().count(), "#error while instanciating: ".len() + 80, "the last 80 characters, as the master");
            assert!(table.contains("orange") && table.contains("#access Instance correctly started"), "{table}");
        } else {
            assert_eq!(theirs["status"], "unsupported");
            assert!(theirs.get("news").is_none());
            assert!(table.contains("unsupported") && table.contains("the master gives none"), "{table}");
        }
    }
}

/// The software release of slap::schema's fixtures (types `default`: xml,
/// `port` an integer, `mode` an enum, no other property; `json`:
/// json-in-xml, `size` an integer ≥ 1 required).
fn schema_sr() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../slap/tests/data/schema");
    std::fs::canonicalize(dir).unwrap().join("software.cfg").display().to_string()
}

/// The parameters the master stores for the instance titled `title`.
fn stored(c: &SlapClient, title: &str) -> Option<BTreeMap<String, Value>> {
    let computer = c.computer_information(COMPUTER).unwrap();
    let p = computer.partitions.iter().find(|p| p.instance_title() == Some(title))?;
    Some(p.instance_parameters().into_iter().filter(|(k, _)| !k.starts_with("slap_") && k != "ip_list" && k != "timestamp").collect())
}

const NOT_VALID: &str = "Request parameters do not validate against schema definition:";

#[test]
fn request_warns_about_parameters_that_do_not_validate_and_refuses_them_with_strict() {
    let master = Master::start(Path::new(BIN), COMPUTER);
    let dir = tempfile::tempdir().unwrap();
    let cfg = client_cfg(dir.path(), &master.url);
    let c = SlapClient::new(ClientConfig::new(&master.url)).unwrap();
    format_report_with(&c, 8);
    let sr = schema_sr();
    let o = slapos(&cfg, &["request", "valid", &sr, "--parameters", "name=web", "mode=fast"]);
    assert!(o.status.success() && !stderr(&o).contains(NOT_VALID), "{}", stderr(&o));
    // as SlapOS: a warning with one indented line per problem, then the request
    let o = slapos(&cfg, &["request", "invalid", &sr, "--parameters", "mode=slow", "port=80", "other=1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(&format!("{NOT_VALID}\n  $")), "{err}");
    for line in ["\n  $.mode: ", "\n  $.port: ", "\n  $: "] {
        assert!(err.contains(line), "no '{line}' in {err}");
    }
    assert!(err.contains("integer"), "xml parameters are strings: {err}");
    assert!(stored(&c, "invalid").is_some(), "requested despite the warning");
    // --strict: refused, nothing requested, exit 1
    let o = slapos(&cfg, &["request", "strict", &sr, "--parameters", "mode=slow", "--strict"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(NOT_VALID) && stderr(&o).contains("(--strict): nothing requested"), "{}", stderr(&o));
    assert!(stored(&c, "strict").is_none());
    let o = slapos(&cfg, &["request", "strict-ok", &sr, "--parameters", "mode=safe", "--strict"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // a type the schema does not know: SlapOS's warning, no validation
    let o = slapos(&cfg, &["request", "other-type", &sr, "--type", "nope", "--parameters", "x=1", "--strict"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("No schema defined for software type 'nope' of software release"), "{}", stderr(&o));
}

#[test]
fn parameters_files_are_validated_typed_and_serialised_as_the_schema_says() {
    let master = Master::start(Path::new(BIN), COMPUTER);
    let dir = tempfile::tempdir().unwrap();
    let cfg = client_cfg(dir.path(), &master.url);
    let c = SlapClient::new(ClientConfig::new(&master.url)).unwrap();
    format_report_with(&c, 8);
    let sr = schema_sr();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    // YAML and JSON keep their types: valid; instance XML is text: port is not an integer
    let cases = [
        ("yaml", file("p.yaml", "name: web\nport: 8080\n"), None),
        ("json", file("p.json", r#"{"port": 443, "mode": "safe"}"#), None),
        ("json-bad", file("bad.json", r#"{"port": "443"}"#), Some("$.port")),
        (
            "xml",
            file("p.xml", "<?xml version='1.0' encoding='utf-8'?>\n<instance>\n  <parameter id=\"port\">80</parameter>\n</instance>\n"),
            Some("$.port"),
        ),
    ];
    for (title, path, problem) in &cases {
        let o = slapos(&cfg, &["request", title, &sr, "--parameters-file", path]);
        assert!(o.status.success(), "{title}: {}", stderr(&o));
        match problem {
            None => assert!(!stderr(&o).contains(NOT_VALID), "{title}: {}", stderr(&o)),
            Some(p) => assert!(stderr(&o).contains(&format!("\n  {p}: ")), "{title}: {}", stderr(&o)),
        }
    }
    assert_eq!(stored(&c, "yaml").unwrap()["port"], Value::str("8080"));
    // json-in-xml: validated inside, sent as `_`
    let good = file("size.json", r#"{"size": 3, "tags": ["a"]}"#);
    let o = slapos(&cfg, &["request", "jx", &sr, "--type", "json", "--parameters-file", &good, "--strict"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sent = stored(&c, "jx").unwrap();
    assert_eq!(sent.keys().collect::<Vec<_>>(), ["_"]);
    let inner: serde_json::Value = serde_json::from_str(sent["_"].as_str().unwrap()).unwrap();
    assert_eq!(inner, serde_json::json!({"size": 3, "tags": ["a"]}));
    let bad = file("size0.yaml", "size: 0\ntags: [1]\n");
    let o = slapos(&cfg, &["request", "jx-bad", &sr, "--type", "json", "--parameters-file", &bad, "--strict"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("\n  $.size: ") && stderr(&o).contains("\n  $.tags[0]: "), "{}", stderr(&o));
}

#[test]
fn a_schema_that_cannot_be_read_is_a_warning_or_with_strict_an_error() {
    let master = Master::start(Path::new(BIN), COMPUTER);
    let dir = tempfile::tempdir().unwrap();
    let cfg = client_cfg(dir.path(), &master.url);
    let c = SlapClient::new(ClientConfig::new(&master.url)).unwrap();
    format_report(&c);
    let sr_dir = dir.path().join("broken");
    std::fs::create_dir(&sr_dir).unwrap();
    std::fs::write(sr_dir.join("software.cfg"), "[buildout]\n").unwrap();
    std::fs::write(
        sr_dir.join("software.cfg.json"),
        r#"{"serialisation": "xml", "software-type": {"default": {"request": "missing.json"}}}"#,
    )
    .unwrap();
    let sr = sr_dir.join("software.cfg").display().to_string();
    let o = slapos(&cfg, &["request", "lenient", &sr, "--parameters", "a=1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("Error validating request parameters against schema definition:"), "{}", stderr(&o));
    let o = slapos(&cfg, &["request", "strict", &sr, "--parameters", "a=1", "--strict"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("missing.json"), "{}", stderr(&o));
    assert!(stored(&c, "strict").is_none());
}

/// The JSON paths a client's warning names (`  $.port: …` lines), sorted.
fn warned_paths(stderr: &str) -> Vec<String> {
    let mut paths: Vec<String> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  $"))
        .filter_map(|rest| rest.split_once(": ").map(|(p, _)| format!("${p}")))
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// The problem lines of a client's warning (`$.port: …`), sorted.
fn warned_lines(stderr: &str) -> Vec<String> {
    let mut lines: Vec<String> = stderr.lines().filter_map(|l| l.strip_prefix("  $")).map(|l| format!("${l}")).collect();
    lines.sort();
    lines
}

/// SlapOS's `slapos request` and ours give the same verdict (valid, or the
/// same problems at the same places, in the same words) on the same
/// parameters and schemas.
#[test]
#[ignore = "needs the venv"]
fn needs_venv_request_validation_agrees_with_slapos() {
    let venv = test_support::python_venv();
    let master = Master::start(Path::new(BIN), COMPUTER);
    let dir = tempfile::tempdir().unwrap();
    let cfg = client_cfg(dir.path(), &master.url);
    let c = SlapClient::new(ClientConfig::new(&master.url)).unwrap();
    format_report_with(&c, 30);
    let sr = schema_sr();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let cases: Vec<Vec<String>> = vec![
        vec!["--parameters".into(), "name=web".into(), "mode=fast".into()],
        vec!["--parameters".into(), "mode=slow".into(), "port=80".into(), "other=1".into()],
        vec!["--parameters-file".into(), file("a.yaml", "name: web\nport: 8080\n")],
        vec!["--parameters-file".into(), file("b.json", r#"{"port": 70000, "mode": "fast"}"#)],
        vec![
            "--parameters-file".into(),
            file("c.xml", "<?xml version='1.0' encoding='utf-8'?>\n<instance>\n  <parameter id=\"port\">80</parameter>\n</instance>\n"),
        ],
        vec!["--type".into(), "json".into(), "--parameters-file".into(), file("d.json", r#"{"size": 0, "tags": [1, "a"]}"#)],
        vec!["--type".into(), "json".into(), "--parameters-file".into(), file("e.yaml", "size: 4\ntree: {child: {child: {}}}\n")],
        vec!["--type".into(), "json".into(), "--parameters-file".into(), file("f.json", r#"{"tree": {"child": 1}}"#)],
        // the e2e release (names that are not identifiers: `$['fail-buildout']`)
        vec!["--parameters".into(), "fail-buildout=yes".into(), "greeting=".into()],
    ];
    let e2e_sr = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/e2e-sr/software.cfg").display().to_string();
    let expected: [&[&str]; 9] = [
        &[],
        &["$", "$.mode", "$.port"],
        &[],
        &["$.port"],
        &["$.port"],
        &["$.size", "$.tags[0]"],
        &[],
        &["$", "$.tree.child"],
        &["$.greeting", "$['fail-buildout']"],
    ];
    for (i, args) in cases.iter().enumerate() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let sr = if i == 8 { &e2e_sr } else { &sr };
        let theirs = Command::new(venv.join("bin/slapos"))
            .args(["request", "--cfg", cfg.to_str().unwrap(), &format!("py-{i}"), sr])
            .args(&args)
            .output()
            .unwrap();
        assert!(theirs.status.success(), "case {i}, the Python client: {}", stderr(&theirs));
        let ours = Command::new(BIN).args(["request", &format!("rs-{i}"), sr]).args(&args).arg("--cfg").arg(&cfg).output().unwrap();
        assert!(ours.status.success(), "case {i}: {}", stderr(&ours));
        let (py, rs) = (stderr(&theirs), stderr(&ours));
        assert_eq!(warned_paths(&py), expected[i], "case {i} {args:?}: SlapOS's verdict changed: {py}");
        assert_eq!(py.contains(NOT_VALID), rs.contains(NOT_VALID), "case {i} {args:?}: verdicts differ\nSlapOS: {py}\nours: {rs}");
        assert_eq!(warned_paths(&py), warned_paths(&rs), "case {i} {args:?}\nSlapOS: {py}\nours: {rs}");
        // and, for these keywords, the same words
        assert_eq!(warned_lines(&py), warned_lines(&rs), "case {i} {args:?}");
    }
}

/// The e2e software release's schema (the panel generates its request form
/// from it) accepts what the e2e test requests, refuses what its instance
/// profile would not honour, and gives the profile's defaults.
#[test]
fn the_e2e_release_schema_matches_its_instance_profile() {
    use slap::schema::{Options, SoftwareReleaseSchema};
    let sr = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/e2e-sr/software.cfg");
    let schema = SoftwareReleaseSchema::load(sr.to_str().unwrap(), &Options::default()).unwrap().expect("e2e-sr has a schema");
    for ok in [serde_json::json!({}), serde_json::json!({"greeting": "hello-from-e2e"}), serde_json::json!({"fail-buildout": "true"})] {
        assert_eq!(schema.validate(None, &ok).unwrap(), [], "{ok}");
    }
    let bad = schema.validate(None, &serde_json::json!({"greeting": "", "fail-buildout": "yes", "port": "1"})).unwrap();
    assert_eq!(bad.len(), 3, "{bad:?}");
    let form = schema.resolved_request_schema(None).unwrap().unwrap();
    assert_eq!(form["properties"]["greeting"]["default"], "hello");
    assert_eq!(form["properties"]["fail-buildout"]["default"], "false");
    let profile = std::fs::read_to_string(sr.with_file_name("instance.cfg.in")).unwrap();
    assert!(profile.contains("configuration.greeting = hello"), "the profile's default is the schema's");
}
