//! Conditional GETs of full computer information: an ETag per version, 304
//! while nothing changed, a new document after any change, also when the
//! change went through another master on the same PostgreSQL database; our
//! client sends `If-None-Match` and reads the same computer either way.

use slapos_proxy::{start_background, Database, ProxyConfig};

fn config(database: Database) -> ProxyConfig {
    ProxyConfig { computer_id: "COMP-0".into(), database, ..Default::default() }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// (status, ETag, body) of the computer's full information.
fn full_info(base: &str, etag: Option<&str>) -> (u16, Option<String>, String) {
    let mut req = agent().get(format!("{base}/getFullComputerInformation?computer_id=COMP-0"));
    if let Some(e) = etag {
        req = req.header("If-None-Match", e);
    }
    let mut resp = req.call().unwrap();
    let tag = resp.headers().get("etag").map(|v| v.to_str().unwrap().to_string());
    (resp.status().as_u16(), tag, resp.body_mut().read_to_string().unwrap())
}

fn supply(base: &str, url: &str) {
    let resp =
        agent().post(format!("{base}/supplySupply")).send_form([("url", url), ("computer_id", "COMP-0"), ("state", "available")]).unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

/// `writer` changes the computer, `reader` answers conditional GETs.
fn conditional_gets(writer: &str, reader: &str) {
    supply(writer, "http://sr/one");
    let (status, etag, body) = full_info(reader, None);
    assert_eq!(status, 200);
    let etag = etag.expect("an ETag");
    assert!(body.contains("http://sr/one"));
    let (status, again, body) = full_info(reader, Some(&etag));
    assert_eq!((status, again.as_deref(), body.as_str()), (304, Some(etag.as_str()), ""), "nothing changed: 304");
    // the same document without the header, byte for byte (the Python node's case)
    assert_eq!(full_info(reader, None).2, full_info(writer, None).2);
    supply(writer, "http://sr/two");
    let (status, new_etag, body) = full_info(reader, Some(&etag));
    assert_eq!(status, 200, "a change is seen, whoever wrote it");
    assert_ne!(new_etag.as_deref(), Some(etag.as_str()));
    assert!(body.contains("http://sr/two"));
    // our client: a copy kept, sent back, the same computer read
    let client = slap::client::SlapClient::new(slap::client::ClientConfig::new(reader)).unwrap();
    let first = client.computer_information("COMP-0").unwrap();
    let second = client.computer_information("COMP-0").unwrap();
    assert_eq!(first.software_releases.len(), 2);
    assert_eq!(format!("{first:?}"), format!("{second:?}"));
    supply(writer, "http://sr/three");
    assert_eq!(client.computer_information("COMP-0").unwrap().software_releases.len(), 3);
}

#[test]
fn full_information_answers_conditional_gets() {
    let dir = tempfile::tempdir().unwrap();
    let master = start_background(&config(Database::sqlite(dir.path().join("proxy.db")))).unwrap();
    conditional_gets(&master.url(), &master.url());
}

#[test]
#[ignore = "needs PostgreSQL"]
fn needs_postgres_a_change_through_one_master_is_seen_by_the_other() {
    let pg = test_support::postgres::TestPostgres::start();
    let uri = pg.database("conditional");
    let a = start_background(&config(Database::Postgres(uri.clone()))).unwrap();
    let b = start_background(&config(Database::Postgres(uri))).unwrap();
    conditional_gets(&a.url(), &b.url());
}
