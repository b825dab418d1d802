//! The JSON-RPC API's refusals: every kind of body the OpenAPI schema
//! refuses is a 400 with Python's error document (and changes nothing),
//! other methods a 405 page, other media types a 415, an `Accept` without
//! JSON a 406; and the OpenAPI documents are served. (What Python answers
//! is pinned by the captures, `jsonrpc_replay.rs`; this states it per kind.)

use serde_json::{json, Value as J};
use slapos_proxy::{start_background, Background, Database, ProxyConfig};

struct Master {
    _dir: tempfile::TempDir,
    master: Background,
    agent: ureq::Agent,
}

fn master() -> Master {
    let dir = tempfile::tempdir().unwrap();
    let config = ProxyConfig {
        computer_id: "COMP-1".into(),
        host: "127.0.0.1".into(),
        database: Database::sqlite(dir.path().join("proxy.db")),
        ..Default::default()
    };
    let master = start_background(&config).unwrap();
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    Master { _dir: dir, master, agent }
}

impl Master {
    /// POSTs `body` with `content_type`: (status, content type, body).
    fn post(&self, route: &str, content_type: &str, body: &str) -> (u16, String, String) {
        let mut r = self.agent.post(&format!("{}{route}", self.master.url())).header("Content-Type", content_type).send(body).unwrap();
        let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        (r.status().as_u16(), ct, r.body_mut().read_to_string().unwrap())
    }

    fn json(&self, route: &str, body: &J) -> (u16, String) {
        let (status, ct, text) = self.post(route, "application/json", &body.to_string());
        assert_eq!(ct, "application/json", "{route}: {text}");
        (status, text)
    }
}

fn error(status: u16, kind: &str, title: &str) -> String {
    format!("{{\"status\": {status}, \"type\": \"{kind}\", \"title\": {}}}", serde_json::to_string(title).unwrap())
}

#[test]
fn every_kind_of_invalid_body_is_a_400_with_pythons_message() {
    let m = master();
    let sr = "http://sr/software.cfg";
    let cases: &[(&str, J, &str)] = &[
        ("/slapos.get.v0.software_instance", json!({}), "'instance_guid' is a required property"),
        (
            "/slapos.get.v0.software_instance",
            json!({"instance_guid": "x", "b": 1, "a": 2}),
            "Additional properties are not allowed ('a', 'b' were unexpected)",
        ),
        ("/slapos.allDocs.v0.instance_tree_list", json!({"a": 1}), "Additional properties are not allowed ('a' was unexpected)"),
        ("/slapos.get.v0.compute_node_status", json!({"computer_guid": false}), "False is not of type 'string'"),
        ("/slapos.get.v0.compute_node_status", json!({"computer_guid": {"a": [1, null]}}), "{'a': [1, None]} is not of type 'string'"),
        (
            "/slapos.put.v0.software_instance_reported_state",
            json!({"instance_guid": "x", "reported_state": "error"}),
            "'error' is not one of ['started', 'destroyed', 'stopped']",
        ),
        (
            "/slapos.post.v0.software_instance",
            json!({"title": "T".repeat(201), "software_release_uri": sr, "software_type": "d"}),
            &format!("'{}' is too long", "T".repeat(201)),
        ),
        (
            "/slapos.put.v0.compute_node_format",
            json!({"computer_guid": "C", "compute_partition_list": [{"ip_list": []}]}),
            "'partition_id' is a required property",
        ),
        (
            "/slapos.post.v0.software_instance",
            json!({"title": "T", "software_release_uri": sr, "software_type": "d", "sla_parameters": {"x": 1}}),
            "1 is not of type 'string'",
        ),
        ("/slapos.allDocs.v0.instance_tree_list", json!([1, "a"]), "[1, 'a'] is not of type 'object'"),
        ("/slapos.allDocs.v0.instance_tree_list", J::Null, "None is not of type 'object'"),
    ];
    for (route, body, title) in cases {
        let (status, text) = m.json(route, body);
        assert_eq!((status, text), (400, error(400, "Bad Request", title)), "{route} {body}");
    }
    // nothing was formatted, supplied or requested
    let (status, text) = m.json("/slapos.allDocs.WIP.compute_node_list", &json!({}));
    assert_eq!((status, text.as_str()), (200, "{\"result_list\": []}"));
}

#[test]
fn bodies_that_are_not_json_are_refused_as_flask_does() {
    let m = master();
    let route = "/slapos.get.v0.compute_node_status";
    let bad = error(400, "Bad Request", "The browser (or proxy) sent a request that this server could not understand.");
    assert_eq!(m.post(route, "application/json", "{\"computer_guid\": "), (400, "application/json".into(), bad.clone()));
    assert_eq!(m.post(route, "application/json", ""), (400, "application/json".into(), bad));
    let media = error(
        415,
        "Unsupported Media Type",
        "Did not attempt to load JSON data because the request Content-Type was not 'application/json'.",
    );
    assert_eq!(m.post(route, "application/x-www-form-urlencoded", "computer_guid=C"), (415, "application/json".into(), media));
    let (status, _, _) = m.post(route, "application/vnd.x+json", "{\"computer_guid\": \"C\"}");
    assert_eq!(status, 200);
}

#[test]
fn other_methods_are_a_405_page_and_accept_is_honoured() {
    let m = master();
    for route in slapos_proxy::jsonrpc::schema::routes() {
        let mut r = m.agent.get(&format!("{}{route}", m.master.url())).call().unwrap();
        assert_eq!(r.status().as_u16(), 405, "{route}");
        let body = r.body_mut().read_to_string().unwrap();
        assert!(body.contains("<title>405 Method Not Allowed</title>"), "{route}: {body}");
    }
    let mut r = m
        .agent
        .post(&format!("{}/slapos.get.v0.compute_node_status", m.master.url()))
        .header("Content-Type", "application/json")
        .header("Accept", "text/html")
        .send("{\"computer_guid\": \"C\"}")
        .unwrap();
    assert_eq!(r.status().as_u16(), 406);
    assert!(r.body_mut().read_to_string().unwrap().starts_with("{\"status\": 406, \"type\": \"Not Acceptable\""));
}

#[test]
fn the_openapi_documents_are_served_as_vendored() {
    let m = master();
    for (path, doc) in [
        ("/json_rpc.json", slapos_proxy::jsonrpc::schema::JSON_RPC),
        ("/json_rpc_experimental.json", slapos_proxy::jsonrpc::schema::JSON_RPC_EXPERIMENTAL),
    ] {
        let mut r = m.agent.get(&format!("{}{path}", m.master.url())).call().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers().get("content-type").unwrap(), "application/json");
        let body = r.body_mut().read_to_string().unwrap();
        assert_eq!(body, doc);
        assert_eq!(serde_json::from_str::<J>(&body).unwrap()["openapi"], "3.0.0");
    }
}

#[test]
fn a_request_through_the_api_is_the_slap_request() {
    let m = master();
    let format = json!({"computer_guid": "COMP-1", "compute_partition_list": [
        {"partition_id": "slappart0", "ip_list": [{"ip-address": "10.0.0.2", "network-interface": "tap0", "netmask": "255.0.0.0"}]}]});
    assert_eq!(m.json("/slapos.put.v0.compute_node_format", &format).0, 200);
    let request = json!({"title": "I", "software_release_uri": "http://sr/software.cfg", "software_type": "t", "parameters": {"n": 3}});
    let (status, text) = m.json("/slapos.post.v0.software_instance", &request);
    assert_eq!(status, 200, "{text}");
    let doc: J = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["instance_guid"], "I______0");
    assert_eq!(doc["parameters"], json!({"n": "3"}));
    assert_eq!(doc["ip_list"], json!([["tap0", "10.0.0.2"]]));
    // the node sees it through SLAP
    let mut r = m.agent.get(&format!("{}/getFullComputerInformation?computer_id=COMP-1", m.master.url())).call().unwrap();
    let full = r.body_mut().read_to_string().unwrap();
    assert!(full.contains("<string>instance_title</string><string>I</string>"), "{full}");
}

#[test]
fn a_request_for_another_master_is_forwarded_as_the_slap_one() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_background(&ProxyConfig {
        computer_id: "COMP-EXT".into(),
        database: Database::sqlite(dir.path().join("b.db")),
        ..Default::default()
    })
    .unwrap();
    let forwarded = "http://example.com/software/forwarded/software.cfg";
    let upstream = slapos_proxy::multimaster::Upstream {
        url: format!("{}/", b.url()),
        software_releases: vec![forwarded.into()],
        ..Default::default()
    };
    let a = start_background(&ProxyConfig {
        computer_id: "COMP-1".into(),
        database: Database::sqlite(dir.path().join("a.db")),
        multimaster: slapos_proxy::multimaster::Multimaster { upstreams: vec![upstream] },
        ..Default::default()
    })
    .unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let post = |url: String, body: J| {
        let mut r = agent.post(&url).header("Content-Type", "application/json").send(body.to_string()).unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    let format = json!({"computer_guid": "COMP-EXT", "compute_partition_list": [{"partition_id": "slappart0", "ip_list": []}]});
    assert_eq!(post(format!("{}/slapos.put.v0.compute_node_format", b.url()), format).0, 200);
    let request = json!({"title": "F", "software_release_uri": forwarded, "software_type": "default"});
    let (status, text) = post(format!("{}/slapos.post.v0.software_instance", a.url()), request);
    assert_eq!(status, 200, "{text}");
    let doc: J = serde_json::from_str(&text).unwrap();
    // B's partition, requested there as `user_F`
    assert_eq!((doc["computer_guid"].as_str(), doc["instance_guid"].as_str()), (Some("COMP-EXT"), Some("F______0")));
    let (_, tree) = post(format!("{}/slapos.get.v0.instance_tree", b.url()), json!({"title": "user_F"}));
    assert!(tree.contains("\"compute_partition_id\": \"slappart0\""), "{tree}");
}
