//! `GET /api/schema`: the parameter schema of a software release supplied on
//! this master, for the panel's request form (slap::schema's fixtures).

use std::path::PathBuf;

use serde_json::{json, Value};
use slapos_proxy::{start_background, Database, ProxyConfig};

fn fixture() -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../slap/tests/data/schema/software.cfg");
    std::fs::canonicalize(dir.parent().unwrap()).unwrap().join("software.cfg").to_string_lossy().into_owned()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

struct Master {
    master: slapos_proxy::Background,
    _dir: tempfile::TempDir,
}

impl Master {
    fn start() -> Master {
        let dir = tempfile::tempdir().unwrap();
        let config =
            ProxyConfig { computer_id: "COMP-0".into(), database: Database::sqlite(dir.path().join("proxy.db")), ..Default::default() };
        Master { master: start_background(&config).unwrap(), _dir: dir }
    }

    fn supply(&self, url: &str) {
        let form = [("url", url), ("computer_id", "COMP-0"), ("state", "available")];
        let resp = agent().post(format!("{}/supplySupply", self.master.url())).send_form(form).unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }

    /// (status, JSON body) of `/api/schema` with `query`.
    fn schema(&self, query: &[(&str, &str)]) -> (u16, Value) {
        let mut req = agent().get(format!("{}/api/schema", self.master.url()));
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        let mut resp = req.call().unwrap();
        assert_eq!(resp.headers().get("content-type").unwrap(), "application/json");
        let status = resp.status().as_u16();
        (status, serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap())
    }
}

#[test]
fn a_supplied_release_s_schema_is_served_with_its_refs_inlined() {
    let m = Master::start();
    let sr = fixture();
    m.supply(&sr);
    let (status, body) = m.schema(&[("software_release", &sr)]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["software_release"], json!(sr));
    assert_eq!(body["software_type"], "default");
    assert_eq!(body["serialisation"], "xml");
    assert_eq!(body["parameters"]["properties"]["port"]["default"], 8080);
    assert_eq!(
        body["software_types"]["default-slave"],
        json!({"title": "Shared", "description": "A shared instance", "shared": true, "software_type": "default"})
    );
    let names: Vec<&String> = body["software_types"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["default", "json", "default-slave", "untyped"]);
    let (status, body) = m.schema(&[("software_release", &sr), ("software_type", "json")]);
    assert_eq!((status, body["serialisation"].as_str()), (200, Some("json-in-xml")));
    assert_eq!(body["parameters"]["required"], json!(["size"]));
    let (status, body) = m.schema(&[("software_release", &sr), ("software_type", "untyped")]);
    assert_eq!((status, &body["parameters"]), (200, &Value::Null));
    let (status, body) = m.schema(&[("software_release", &sr), ("software_type", "nope")]);
    assert_eq!(status, 404);
    assert_eq!(body["error"], "no schema defined for software type 'nope'");
}

#[test]
fn only_supplied_releases_are_looked_up_and_bad_input_is_400() {
    let m = Master::start();
    let srv = test_support::canned(200, "{}");
    let url = format!("{}/software.cfg", srv.url);
    let (status, body) = m.schema(&[("software_release", &url)]);
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("is not supplied on this master"), "{body}");
    assert!(srv.received.lock().unwrap().is_empty(), "an unsupplied URL is never fetched");
    assert_eq!(m.schema(&[]).0, 400);
    assert_eq!(m.schema(&[("software_release", "")]).0, 400);
    assert_eq!(m.schema(&[("software_release", "a\u{1}b")]).0, 400);
    m.supply("ftp://example.org/software.cfg");
    assert_eq!(m.schema(&[("software_release", "ftp://example.org/software.cfg")]).0, 400);
}

#[test]
fn a_remote_schema_is_cached_and_a_missing_one_is_404() {
    let m = Master::start();
    let cfg = json!({"software-type": {"default": {"request": "in.json", "serialisation": "json-in-xml"}}}).to_string();
    let srv = test_support::serve(move |r| match r.path() {
        "software.cfg.json" => (200, cfg.clone()),
        "in.json" => (200, json!({"properties": {"a": {"type": "integer", "default": 1}}}).to_string()),
        _ => (404, "no".into()),
    });
    let url = format!("{}/software.cfg", srv.url);
    m.supply(&url);
    for _ in 0..3 {
        let (status, body) = m.schema(&[("software_release", &url)]);
        assert_eq!((status, &body["parameters"]["properties"]["a"]["default"]), (200, &json!(1)), "{body}");
    }
    assert_eq!(srv.received.lock().unwrap().len(), 2, "one fetch per document, then the cache");
    let missing = format!("{}/other/software.cfg", srv.url);
    m.supply(&missing);
    let (status, body) = m.schema(&[("software_release", &missing)]);
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("has no schema"), "{body}");
}

#[test]
fn a_local_release_reads_nothing_outside_its_directory() {
    let m = Master::start();
    let dir = tempfile::tempdir().unwrap();
    let sr = dir.path().join("sr");
    std::fs::create_dir(&sr).unwrap();
    std::fs::write(sr.join("software.cfg.json"), json!({"software-type": {"default": {"request": "../secret.json"}}}).to_string()).unwrap();
    std::fs::write(dir.path().join("secret.json"), "{\"secret\": true}").unwrap();
    let url = sr.join("software.cfg").to_string_lossy().into_owned();
    m.supply(&url);
    let (status, body) = m.schema(&[("software_release", &url)]);
    assert_eq!(status, 502, "{body}");
    assert!(body["error"].as_str().unwrap().contains("refused"), "{body}");
    assert!(!body.to_string().contains("secret\":"), "{body}");
}
