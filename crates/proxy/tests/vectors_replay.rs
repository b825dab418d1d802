//! Server-side wire test: the requests of the 88 captures
//! (`testdata/slap-vectors/`, Python client → Python proxy) are replayed in
//! order against our master, set up like the captured proxy (computer
//! COMP-1234, product `my-product`); every answer must be the Python
//! proxy's, byte for byte once timestamps (and ports) are normalised.

use serde_json::Value as J;
use slapos_proxy::{start_background, ProxyConfig};

fn vectors() -> Vec<(String, J)> {
    test_support::vectors()
}

/// Timestamps (`<string>1795541544.3356452</string>` after a `timestamp`
/// key) vary from run to run.
fn normalise(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    let key = "<string>timestamp</string><string>";
    while let Some(i) = rest.find(key) {
        out.push_str(&rest[..i + key.len()]);
        rest = &rest[i + key.len()..];
        let end = rest.find('<').unwrap_or(rest.len());
        out.push_str("TIMESTAMP");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Steps we do not replay: multimaster forwarding (not implemented yet),
/// the JSON-RPC API, the panel redirect.
fn skipped(name: &str, step: &str) -> bool {
    step.starts_with("multimaster") || step.starts_with("jsonrpc") || name.starts_with("074")
}

/// Where we answer differently on purpose: malformed input is a 400 with a
/// message (the Python proxy crashes with a 500).
fn deliberate_status(name: &str) -> Option<u16> {
    match &name[..3] {
        "049" | "051" => Some(400),
        _ => None,
    }
}

#[test]
fn our_master_answers_every_captured_request_like_the_python_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let config = ProxyConfig {
        computer_id: "COMP-1234".into(),
        host: "127.0.0.1".into(),
        port: 0,
        database: dir.path().join("proxy.db"),
        software_products: [("my-product".to_string(), "http://example.com/software/my-software/software.cfg".to_string())]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    let master = start_background(&config).unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
    let mut compared = 0;
    let mut failures = Vec::new();
    for (name, v) in vectors() {
        if v["server"] != "A" || skipped(&name, v["step"].as_str().unwrap_or("")) {
            continue;
        }
        let req = &v["request"];
        let method = req["method"].as_str().unwrap();
        let mut url = format!("{}{}", master.url(), req["path"].as_str().unwrap());
        if let Some(q) = req["query_string"].as_str().filter(|q| !q.is_empty()) {
            url.push('?');
            url.push_str(q);
        }
        let auth = req["headers"].get("Authorization").and_then(J::as_str);
        let mut resp = if method == "GET" {
            let mut r = agent.get(&url);
            if let Some(a) = auth {
                r = r.header("Authorization", a);
            }
            r.call().unwrap()
        } else {
            let mut r = agent.post(&url).header("Content-Type", "application/x-www-form-urlencoded");
            if let Some(a) = auth {
                r = r.header("Authorization", a);
            }
            r.send(req["body"].as_str().unwrap_or("")).unwrap()
        };
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().unwrap();
        let expected_status = v["response"]["status"].as_u64().unwrap() as u16;
        let expected_body = v["response"]["body"].as_str().unwrap_or("");
        compared += 1;
        if let Some(ours) = deliberate_status(&name) {
            if status != ours {
                failures.push(format!("{name}: status {status}, expected our deliberate {ours}"));
            }
            continue;
        }
        if status != expected_status {
            failures.push(format!("{name}: status {status}, expected {expected_status}: {body}"));
            continue;
        }
        if status >= 400 || req["path"].as_str().unwrap().starts_with("/hateoas") || name.starts_with("033") {
            // error pages carry our own (more precise) messages; HATEOAS
            // documents carry ports; the run id is random
            continue;
        }
        if normalise(&body) != normalise(expected_body) {
            failures.push(format!("{name}: body differs\n ours:   {body}\n python: {expected_body}"));
        }
    }
    eprintln!("{compared} exchanges replayed, {} differ", failures.len());
    assert!(compared >= 70, "only {compared} exchanges replayed");
    assert!(failures.is_empty(), "{} of {compared} exchanges differ:\n{}", failures.len(), failures.join("\n"));
}
