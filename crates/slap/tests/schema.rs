//! `slap::schema`: software release schemas loaded from disk and from a
//! loopback HTTP server, validation, and hostile documents.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use slap::schema::{Options, SchemaError, Serialisation, SoftwareReleaseSchema};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/schema")
}

fn local() -> SoftwareReleaseSchema {
    let url = fixture_dir().join("software.cfg");
    SoftwareReleaseSchema::load(url.to_str().unwrap(), &Options::default()).unwrap().expect("the fixture has a schema")
}

/// A loopback server of the fixture directory plus `extra` documents
/// (path → body); everything else is 404.
fn server(extra: Vec<(&'static str, String)>) -> test_support::Canned {
    test_support::serve(move |r| {
        let path = r.path().to_string();
        if let Some((_, body)) = extra.iter().find(|(p, _)| *p == path) {
            return (200, body.clone());
        }
        match std::fs::read_to_string(fixture_dir().join(path.trim_start_matches("sr/"))) {
            Ok(body) if path.starts_with("sr/") && !path.contains("..") => (200, body),
            _ => (404, "not found".into()),
        }
    })
}

fn paths(issues: &[slap::schema::Issue]) -> Vec<&str> {
    issues.iter().map(|i| i.path.as_str()).collect()
}

#[test]
fn types_are_read_with_their_titles_serialisation_and_shared_flag() {
    let schema = local();
    let names: Vec<_> = schema.software_types().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["default", "json", "default-slave", "untyped"]);
    let shared = schema.software_type(Some("default-slave")).unwrap();
    assert!(shared.shared);
    assert_eq!(shared.software_type.as_deref(), Some("default"));
    assert_eq!(schema.software_type(None).unwrap().title.as_deref(), Some("Default"));
    assert_eq!(schema.software_type(Some("RootSoftwareInstance")).unwrap().name, "default");
    assert_eq!(schema.serialisation(None), Some(Serialisation::Xml));
    assert_eq!(schema.serialisation(Some("json")), Some(Serialisation::JsonInXml));
    assert!(schema
        .software_type(Some("default"))
        .unwrap()
        .request
        .as_ref()
        .unwrap()
        .as_str()
        .ends_with("/schema/instance-input-schema.json"));
}

#[test]
fn a_release_without_schema_is_none_and_an_unknown_type_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let sr = dir.path().join("software.cfg");
    assert!(SoftwareReleaseSchema::load(sr.to_str().unwrap(), &Options::default()).unwrap().is_none());
    let err = local().validate(Some("nope"), &json!({})).unwrap_err();
    assert!(matches!(err, SchemaError::NoSuchType { .. }), "{err}");
    assert!(local().validate(Some("untyped"), &json!({"anything": 1})).unwrap().is_empty());
}

#[test]
fn typed_parameters_are_validated_through_a_local_ref() {
    let schema = local();
    assert_eq!(schema.validate(None, &json!({"name": "a", "port": 80, "mode": "fast"})).unwrap(), []);
    let issues = schema.validate(None, &json!({"port": "80", "mode": "slow", "other": 1})).unwrap();
    let mut p = paths(&issues);
    p.sort();
    assert_eq!(p, ["$", "$.mode", "$.port"], "{issues:?}");
    // Python jsonschema's words, values as Python reprs
    let text: Vec<String> = issues.iter().map(ToString::to_string).collect();
    for line in ["$.port: '80' is not of type 'integer'", "$.mode: 'slow' is not one of ['fast', 'safe']"] {
        assert!(text.iter().any(|t| t == line), "no {line:?} in {text:?}");
    }
    assert_eq!(paths(&schema.validate(None, &json!({"port": 70000})).unwrap()), ["$.port"]);
    // SlapOS ignores $schema in the parameters
    assert_eq!(schema.validate(None, &json!({"$schema": "x"})).unwrap(), []);
}

#[test]
fn json_in_xml_parameters_are_unwrapped_before_validation() {
    let schema = local();
    let ok = json!({"_": "{\"size\": 2, \"tree\": {\"child\": {\"child\": {}}}}"});
    assert_eq!(schema.validate(Some("json"), &ok).unwrap(), []);
    let bad = json!({"_": "{\"size\": 0, \"tags\": [1]}"});
    let mut p = paths(&schema.validate(Some("json"), &bad).unwrap()).into_iter().map(str::to_string).collect::<Vec<_>>();
    p.sort();
    assert_eq!(p, ["$.size", "$.tags[0]"]);
    // not wrapped: validated as given
    assert_eq!(paths(&schema.validate(Some("json"), &json!({})).unwrap()), ["$"]);
    let err = schema.validate(Some("json"), &json!({"_": "{not json"})).unwrap_err().to_string();
    assert!(err.contains("parameter '_'"), "{err}");
}

#[test]
fn the_resolved_schema_inlines_refs_and_leaves_loops() {
    let schema = local();
    let resolved = schema.resolved_request_schema(None).unwrap().unwrap();
    assert_eq!(
        resolved["properties"]["port"],
        json!({"title": "Port", "type": "integer", "minimum": 1, "maximum": 65535, "default": 8080})
    );
    let json_type = schema.resolved_request_schema(Some("json")).unwrap().unwrap();
    let child = &json_type["properties"]["tree"]["properties"]["child"];
    assert!(child["$ref"].as_str().unwrap().ends_with("instance-json-schema.json#/definitions/node"), "{child}");
    assert!(schema.resolved_request_schema(Some("untyped")).unwrap().is_none());
}

#[test]
fn a_remote_release_is_fetched_once_per_document() {
    let srv = server(vec![]);
    let url = format!("{}/sr/software.cfg", srv.url);
    let schema = SoftwareReleaseSchema::load(&url, &Options::default()).unwrap().unwrap();
    for _ in 0..3 {
        assert_eq!(paths(&schema.validate(None, &json!({"port": 0})).unwrap()), ["$.port"]);
    }
    let resolved = schema.resolved_request_schema(None).unwrap().unwrap();
    assert_eq!(resolved["properties"]["port"]["default"], 8080);
    let got: Vec<String> = srv.received.lock().unwrap().iter().map(|r| r.path().to_string()).collect();
    assert_eq!(got, ["sr/software.cfg.json", "sr/instance-input-schema.json", "sr/definitions.json"]);
    let missing = format!("{}/nothing/software.cfg", srv.url);
    assert!(SoftwareReleaseSchema::load(&missing, &Options::default()).unwrap().is_none());
}

/// A remote `software.cfg.json` whose default type's request schema is `schema`.
fn remote_with(schema: Value, extra: Vec<(&'static str, String)>) -> (test_support::Canned, String) {
    let cfg = json!({"software-type": {"default": {"request": "req.json"}}}).to_string();
    let mut docs = vec![("h/software.cfg.json", cfg), ("h/req.json", schema.to_string())];
    docs.extend(extra);
    let srv = server(docs);
    let url = format!("{}/h/software.cfg", srv.url);
    (srv, url)
}

#[test]
fn a_remote_schema_cannot_read_local_files() {
    let (_srv, url) = remote_with(json!({"properties": {"a": {"$ref": "file:///etc/passwd"}}}), vec![]);
    let schema = SoftwareReleaseSchema::load(&url, &Options::default()).unwrap().unwrap();
    let err = schema.validate(None, &json!({"a": 1})).unwrap_err().to_string();
    assert!(err.contains("refused") && err.contains("/etc/passwd"), "{err}");
    let err = schema.resolved_request_schema(None).unwrap_err().to_string();
    assert!(err.starts_with("refused to read file:///etc/passwd"), "{err}");
    // a relative path stays on the server
    let (srv, url) = remote_with(json!({"properties": {"a": {"$ref": "/etc/passwd"}}}), vec![]);
    let schema = SoftwareReleaseSchema::load(&url, &Options::default()).unwrap().unwrap();
    assert!(schema.validate(None, &json!({"a": 1})).is_err());
    assert!(srv.received.lock().unwrap().iter().any(|r| r.path() == "etc/passwd"));
}

#[test]
fn a_local_release_reads_files_only_below_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let sr = dir.path().join("sr");
    std::fs::create_dir(&sr).unwrap();
    std::fs::write(sr.join("software.cfg.json"), json!({"software-type": {"default": {"request": "req.json"}}}).to_string()).unwrap();
    std::fs::write(sr.join("req.json"), json!({"properties": {"a": {"$ref": "../outside.json"}}}).to_string()).unwrap();
    std::fs::write(dir.path().join("outside.json"), json!({"type": "string"}).to_string()).unwrap();
    let url = sr.join("software.cfg");
    let open = SoftwareReleaseSchema::load(url.to_str().unwrap(), &Options::default()).unwrap().unwrap();
    assert_eq!(paths(&open.validate(None, &json!({"a": 1})).unwrap()), ["$.a"]);
    let options = Options { local_root: Some(sr.clone()), ..Options::default() };
    let fenced = SoftwareReleaseSchema::load(url.to_str().unwrap(), &options).unwrap().unwrap();
    let err = fenced.validate(None, &json!({"a": 1})).unwrap_err().to_string();
    assert!(err.contains("refused") && err.contains("outside"), "{err}");
}

#[test]
fn a_huge_document_is_refused() {
    let huge = format!("{{\"description\": \"{}\"}}", "x".repeat(2 << 20));
    let (_srv, url) = remote_with(json!({"$ref": "big.json"}), vec![("h/big.json", huge)]);
    let schema = SoftwareReleaseSchema::load(&url, &Options::default()).unwrap().unwrap();
    let err = schema.validate(None, &json!({})).unwrap_err().to_string();
    assert!(err.contains("larger than 1048576 bytes"), "{err}");
}

#[test]
fn ref_loops_terminate_and_ref_chains_are_bounded() {
    let a = json!({"type": "object", "properties": {"b": {"$ref": "b.json"}}}).to_string();
    let b = json!({"type": "object", "properties": {"a": {"$ref": "a.json"}}}).to_string();
    let (_srv, url) = remote_with(json!({"$ref": "a.json"}), vec![("h/a.json", a), ("h/b.json", b)]);
    let schema = SoftwareReleaseSchema::load(&url, &Options::default()).unwrap().unwrap();
    assert_eq!(paths(&schema.validate(None, &json!({"b": {"a": {"b": 1}}})).unwrap()), ["$.b.a.b"]);
    let resolved = schema.resolved_request_schema(None).unwrap().unwrap();
    assert!(resolved["properties"]["b"]["properties"]["a"]["$ref"].as_str().unwrap().ends_with("/h/a.json"), "{resolved}");
    // every document names the next one: stopped at max_documents
    let srv = test_support::serve(|r| {
        let n: u32 = r.path().trim_start_matches("c/").trim_end_matches(".json").parse().unwrap_or(0);
        if r.path() == "c/software.cfg.json" {
            return (200, json!({"software-type": {"default": {"request": "0.json"}}}).to_string());
        }
        (200, json!({"properties": {"x": {"$ref": format!("{}.json", n + 1)}}}).to_string())
    });
    let schema = SoftwareReleaseSchema::load(&format!("{}/c/software.cfg", srv.url), &Options::default()).unwrap().unwrap();
    let err = schema.validate(None, &json!({})).unwrap_err().to_string();
    assert!(err.contains("more than 32 schema documents"), "{err}");
    let err = schema.resolved_request_schema(None).unwrap_err().to_string();
    assert!(err.contains("more than 32 schema documents"), "{err}");
    assert!(srv.received.lock().unwrap().len() <= 33);
}

#[test]
fn a_slow_server_times_out() {
    let srv = test_support::serve(|_| {
        std::thread::sleep(Duration::from_secs(3));
        (200, "{}".into())
    });
    let options = Options { timeout: Duration::from_millis(300), ..Options::default() };
    let start = Instant::now();
    let err = SoftwareReleaseSchema::load(&format!("{}/software.cfg", srv.url), &options).unwrap_err().to_string();
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    assert!(err.contains("timed out"), "{err}");
    // a chain of slow documents: stopped by the total
    let cfg = json!({"software-type": {"default": {"request": "0.json"}}}).to_string();
    let srv = test_support::serve(move |r| {
        if r.path() == "software.cfg.json" {
            return (200, cfg.clone());
        }
        std::thread::sleep(Duration::from_millis(250));
        let n: u32 = r.path().trim_end_matches(".json").parse().unwrap_or(0);
        (200, json!({"properties": {"x": {"$ref": format!("{}.json", n + 1)}}}).to_string())
    });
    let options = Options { timeout: Duration::from_secs(1), total_timeout: Duration::from_millis(800), ..Options::default() };
    let schema = SoftwareReleaseSchema::load(&format!("{}/software.cfg", srv.url), &options).unwrap().unwrap();
    let start = Instant::now();
    let err = schema.validate(None, &json!({})).unwrap_err().to_string();
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    assert!(err.contains("took more than") || err.contains("timed out"), "{err}");
}

#[test]
fn other_schemes_are_refused() {
    let err = SoftwareReleaseSchema::load("ftp://example.org/software.cfg", &Options::default()).unwrap_err().to_string();
    assert!(err.contains("only http, https and file"), "{err}");
    let (_srv, url) = remote_with(json!({"$ref": "gopher://127.0.0.1/x.json"}), vec![]);
    let schema = SoftwareReleaseSchema::load(&url, &Options::default()).unwrap().unwrap();
    assert!(schema.validate(None, &json!({})).unwrap_err().to_string().contains("scheme 'gopher'"));
}

#[test]
fn validation_takes_milliseconds_once_compiled() {
    let schema = local();
    schema.validate(None, &json!({})).unwrap();
    let start = Instant::now();
    for i in 0..1000 {
        schema.validate(None, &json!({"name": "n", "port": i + 1})).unwrap();
    }
    assert!(start.elapsed() < Duration::from_secs(1), "1000 validations took {:?}", start.elapsed());
}

#[test]
fn inlining_refs_cannot_blow_up() {
    // a 600 kB definition named 100 times: 60 MB if inlined naively
    let big = json!({"definitions": {"d": {"description": "x".repeat(600_000)}}}).to_string();
    let props: serde_json::Map<String, Value> = (0..100).map(|i| (format!("p{i}"), json!({"$ref": "big.json#/definitions/d"}))).collect();
    let (_srv, url) = remote_with(json!({"properties": props}), vec![("h/big.json", big)]);
    let schema = SoftwareReleaseSchema::load(&url, &Options::default()).unwrap().unwrap();
    let err = schema.resolved_request_schema(None).unwrap_err().to_string();
    assert!(err.contains("with its $refs inlined it is larger than"), "{err}");
    // validation does not inline: it works
    assert_eq!(schema.validate(None, &json!({"p1": 1})).unwrap(), []);
}

#[test]
fn issue_paths_are_written_as_python_jsonschema_writes_them() {
    let props: serde_json::Map<String, Value> =
        ["a-b", "it's", "x1_", "1a", "ok"].iter().map(|k| (k.to_string(), json!({"type": "integer"}))).collect();
    let (_srv, url) = remote_with(json!({"properties": props, "items": {"type": "integer"}}), vec![]);
    let schema = SoftwareReleaseSchema::load(&url, &Options::default()).unwrap().unwrap();
    let issues = schema.validate(None, &json!({"a-b": "x", "it's": "x", "x1_": "x", "1a": "x", "ok": "x"})).unwrap();
    let mut p = paths(&issues);
    p.sort();
    assert_eq!(p, ["$.ok", "$.x1_", "$['1a']", "$['a-b']", "$['it\\'s']"]);
    assert_eq!(paths(&schema.validate(None, &json!(["x"])).unwrap()), ["$[0]"]);
}
