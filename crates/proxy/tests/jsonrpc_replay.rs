//! The JSON-RPC API, replayed: the requests of `testdata/jsonrpc-vectors`
//! (recorded from the Python proxy of slapos.core 1.26.1 by
//! `tests/python/record_jsonrpc.py`) are sent in order, with their very
//! headers, to our master set up as the recorded one (computer COMP-1234,
//! fresh database); status, `Content-Type` and body must be the Python
//! proxy's byte for byte. Normalised: only `processing_timestamp` (the time
//! an instance last changed, a different second on every run).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;

use serde_json::Value as J;
use slapos_proxy::{start_background, Database, ProxyConfig};

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/jsonrpc-vectors")
}

/// The captures, in their order of recording.
fn vectors() -> Vec<(String, J)> {
    let mut v: Vec<(String, J)> = std::fs::read_dir(vectors_dir())
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name()?.to_str()?.to_string();
            (name.ends_with(".json") && name.as_bytes()[0].is_ascii_digit())
                .then(|| (name, serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()))
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// `"processing_timestamp": 1795541545` → `"processing_timestamp": T`
/// (0, the value of shared instances and fake frontends, is kept).
fn normalise(body: &str) -> String {
    let key = "\"processing_timestamp\": ";
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(i) = rest.find(key) {
        out.push_str(&rest[..i + key.len()]);
        rest = &rest[i + key.len()..];
        let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        out.push_str(if &rest[..end] == "0" { "0" } else { "T" });
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// One exchange over a new connection, the recorded headers as they are
/// (so `Host`, `Accept` and `Content-Type`, present or not, are the
/// Python proxy's): (status, content type, body).
fn send(addr: &str, request: &J) -> (u16, String, String) {
    let mut head = format!("{} {} HTTP/1.1\r\n", request["method"].as_str().unwrap(), request["path"].as_str().unwrap());
    for (k, v) in request["headers"].as_object().unwrap() {
        head.push_str(&format!("{k}: {}\r\n", v.as_str().unwrap()));
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(request["body"].as_str().unwrap().as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

#[test]
fn our_master_answers_every_json_rpc_capture_like_the_python_proxy() {
    let dir = tempfile::tempdir().unwrap();
    replay(Database::sqlite(dir.path().join("proxy.db")));
}

#[test]
#[ignore = "needs PostgreSQL"]
fn needs_postgres_the_json_rpc_api_on_postgresql_answers_like_the_python_proxy() {
    let pg = test_support::postgres::TestPostgres::start();
    replay(Database::Postgres(pg.database("jsonrpc")));
}

fn replay(database: Database) {
    let config = ProxyConfig { computer_id: "COMP-1234".into(), host: "127.0.0.1".into(), port: 0, database, ..Default::default() };
    let master = start_background(&config).unwrap();
    let addr = master.addr.to_string();
    let (mut compared, mut failures) = (0, Vec::new());
    let mut succeeded = std::collections::BTreeSet::new();
    for (name, v) in vectors() {
        let (status, content_type, body) = send(&addr, &v["request"]);
        let expected = &v["response"];
        compared += 1;
        let expected_type = expected["headers"]["Content-Type"].as_str().unwrap_or("");
        if status != expected["status"].as_u64().unwrap() as u16 || content_type != expected_type {
            failures.push(format!("{name}: {status} {content_type}, expected {} {expected_type}: {body}", expected["status"]));
        } else if normalise(&body) != normalise(expected["body"].as_str().unwrap()) {
            failures.push(format!("{name}: body differs\n ours:   {body}\n python: {}", expected["body"]));
        }
        if status == 200 {
            succeeded.insert(v["request"]["path"].as_str().unwrap().to_string());
        }
    }
    eprintln!("{compared} JSON-RPC exchanges replayed, {} differ", failures.len());
    assert!(failures.is_empty(), "{} of {compared} exchanges differ:\n{}", failures.len(), failures.join("\n"));
    // every route of both OpenAPI documents answered at least once
    let missing: Vec<String> = slapos_proxy::jsonrpc::schema::routes().into_iter().filter(|r| !succeeded.contains(r)).collect();
    assert!(missing.is_empty(), "routes no capture exercises: {missing:?}");
}

#[test]
fn the_python_panels_calls_are_among_the_captures() {
    // static_panel/panel.js (callJsonRpcEntryPoint) calls these
    let panel = [
        "/slapos.allDocs.v0.instance_tree_list",
        "/slapos.get.v0.instance_tree",
        "/slapos.allDocs.WIP.compute_node_list",
        "/slapos.allDocs.v0.compute_node_software_installation_list",
        "/slapos.post.v0.software_instance",
    ];
    let captured: Vec<(String, String)> = vectors()
        .into_iter()
        .map(|(_, v)| (v["step"].as_str().unwrap().to_string(), v["request"]["path"].as_str().unwrap().to_string()))
        .collect();
    for route in panel {
        assert!(captured.iter().any(|(step, path)| step.starts_with("panel-") && path == route), "no panel capture of {route}");
    }
}
