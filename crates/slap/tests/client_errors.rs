//! The client against loopback servers: exact requests (fields, Authorization
//! only on instance POSTs), HTTP statuses mapped to typed errors with the
//! server's message, bad bodies, refused connections and timeouts.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use slap::client::{ClientConfig, InstanceRequest, RequestResult, SlapClient, SlapError};
use slap::marshal::Value;
use test_support::canned;

const WERKZEUG_404: &str = "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n<p>No free computer partition found for: NoRoom</p>\n";

/// Tells whether an error is of the kind expected for a status.
type ErrorCheck = fn(&SlapError) -> bool;

fn client(url: &str) -> SlapClient {
    SlapClient::new(ClientConfig::new(url).with_timeout(Duration::from_secs(10))).unwrap()
}

#[test]
fn statuses_map_to_typed_errors_with_the_message() {
    let cases: [(u16, ErrorCheck); 7] = [
        (404, |e| matches!(e, SlapError::NotFound { .. })),
        (408, |e| matches!(e, SlapError::NotReady { .. })),
        (500, |e| matches!(e, SlapError::Server { status: 500, .. })),
        (503, |e| matches!(e, SlapError::Server { status: 503, .. })),
        (400, |e| matches!(e, SlapError::Http { status: 400, .. })),
        (405, |e| matches!(e, SlapError::Http { status: 405, .. })),
        (403, |e| matches!(e, SlapError::Unauthorized { status: 403, .. })),
    ];
    for (status, check) in cases {
        let server = canned(status, WERKZEUG_404);
        let e = client(&server.url).computer_information("C").unwrap_err();
        assert!(check(&e), "{status}: {e:?}");
        let text = e.to_string();
        assert!(text.contains("No free computer partition found for: NoRoom"), "{status}: {text}");
        assert!(text.contains(&server.url), "{status}: the error names the URL: {text}");
    }
}

#[test]
fn a_408_on_request_is_not_ready_not_an_error() {
    let server = canned(408, "<p>Resource not ready</p>");
    let r = client(&server.url).request(&InstanceRequest::new("http://sr", "x")).unwrap();
    assert_eq!(r, RequestResult::NotReady { message: "Resource not ready".into() });
}

#[test]
fn a_malformed_body_is_a_decode_error_with_position() {
    let server = canned(200, "<marshal><object id=\"i2\" module=\"slapos.slap.slap\" class=\"Computer\">");
    match client(&server.url).computer_information("C").unwrap_err() {
        SlapError::Decode { url, error } => {
            assert!(url.ends_with("/getFullComputerInformation"), "{url}");
            assert!(error.message.contains("truncated"), "{error}");
        }
        e => panic!("{e:?}"),
    }
    let server = canned(200, "<marshal><string>not a computer</string></marshal>");
    assert!(matches!(client(&server.url).computer_information("C").unwrap_err(), SlapError::Model { .. }));
}

#[test]
fn a_refused_connection_names_the_url() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let e = client(&url).computer_information("C").unwrap_err();
    assert!(matches!(e, SlapError::Connection { .. }), "{e:?}");
    assert!(e.is_unreachable());
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
}

#[test]
fn a_master_that_does_not_answer_times_out_after_the_configured_time() {
    // accepts connections (the kernel backlog) but never answers
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let c = SlapClient::new(ClientConfig::new(&url).with_timeout(Duration::from_secs(1))).unwrap();
    let start = Instant::now();
    let e = c.computer_information("C").unwrap_err();
    let took = start.elapsed();
    assert!(matches!(e, SlapError::Timeout { .. }), "{e:?}");
    assert!(e.to_string().contains(&url), "{e}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(20), "{took:?}");
    drop(listener);
}

#[test]
fn requests_carry_the_python_fields_and_the_authorization_only_on_instance_posts() {
    let server = canned(200, "<marshal><object id=\"i2\" module=\"slapos.slap.slap\" class=\"SoftwareInstance\"><tuple/><dictionary id=\"i3\"><string>slap_computer_id</string><string>C</string><string>slap_computer_partition_id</string><string>p1</string></dictionary></object></marshal>");
    let c = client(&server.url);
    // a child request, as in [cap 014]
    let mut req = InstanceRequest::new("http://example.com/software/my-software/software.cfg", "MyChild");
    req.parameters.insert("_".into(), Value::str("{\"size\": 2, \"name\": \"child\"}"));
    req.filter.insert("computer_guid".into(), "COMP-1234".into());
    req.requester = Some(("COMP-1234".into(), "slappart0".into()));
    let RequestResult::Ready(i) = c.request(&req).unwrap() else { panic!() };
    assert_eq!(i.partition_id.as_deref(), Some("p1"));
    // a GET made by the same client
    let _ = c.register_partition("COMP-1234", "slappart0");
    let _ = c.set_connection_parameters("COMP-1234", "slappart0", &BTreeMap::from([("k".into(), Value::str("a&b"))]), None);
    let _ = c.supply("http://sr", "COMP-1234", slap::SoftwareState::Available);
    let got = server.received.lock().unwrap().clone();
    assert_eq!(got.len(), 4);
    let r = &got[0];
    assert_eq!((r.method.as_str(), r.target.as_str()), ("POST", "/requestComputerPartition"));
    assert_eq!(r.header("Authorization"), Some("X-SlapPartition computer_id=COMP-1234, computer_partition_id=slappart0"));
    assert_eq!(r.header("Content-Type"), Some("application/x-www-form-urlencoded"));
    let captured = vec![
        ("computer_id", "COMP-1234"),
        ("computer_partition_id", "slappart0"),
        ("software_release", "http://example.com/software/my-software/software.cfg"),
        ("software_type", "default"),
        ("partition_reference", "MyChild"),
        ("shared_xml", "<marshal><bool>0</bool></marshal>"),
        (
            "partition_parameter_xml",
            "<marshal><dictionary id=\"i2\"><string>_</string><string>{\"size\": 2, \"name\": \"child\"}</string></dictionary></marshal>",
        ),
        ("filter_xml", "<marshal><dictionary id=\"i2\"><string>computer_guid</string><string>COMP-1234</string></dictionary></marshal>"),
        ("state", "<marshal><none/></marshal>"),
    ];
    let form = r.form();
    assert_eq!(form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>(), captured, "fields of [cap 014]");
    let g = &got[1];
    assert_eq!(g.method, "GET");
    assert_eq!(g.target, "/registerComputerPartition?computer_reference=COMP-1234&computer_partition_reference=slappart0");
    assert_eq!(g.header("Authorization"), None, "GETs never carry the header");
    let s = &got[2];
    assert_eq!(s.form()[2].1, "<marshal><dictionary id=\"i2\"><string>k</string><string>a&amp;amp;b</string></dictionary></marshal>");
    assert_eq!(s.form()[3], ("slave_reference".to_string(), "None".to_string()), "absent slave_reference is the text None");
    assert!(s.header("Authorization").is_some());
    assert_eq!(got[3].header("Authorization"), None, "supply is not an instance call");
    assert_eq!(
        got[3].form(),
        vec![
            ("url".to_string(), "http://sr".to_string()),
            ("computer_id".to_string(), "COMP-1234".to_string()),
            ("state".to_string(), "available".to_string()),
        ]
    );
}

#[test]
fn master_url_with_a_prefix_joins_below_it() {
    let server = canned(200, "done");
    let c = client(&format!("{}/some/prefix", server.url));
    c.partition_started("C", "p").unwrap();
    assert_eq!(server.received.lock().unwrap()[0].target, "/some/prefix/startedComputerPartition");
}

#[test]
fn bad_tls_configuration_is_reported() {
    let mut cfg = ClientConfig::new("https://127.0.0.1:1/");
    cfg.key_file = Some("/nonexistent/key.pem".into());
    assert!(matches!(SlapClient::new(cfg.clone()), Err(SlapError::Certificate(_))), "key without cert");
    cfg.cert_file = Some("/nonexistent/cert.pem".into());
    let e = SlapClient::new(cfg).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/cert.pem"), "{e}");
}
