//! The master's request limits: oversized or overfull requests are refused
//! with 413/400 and change nothing; long free text is stored cut; the node
//! history is kept within its retention. Each test runs on SQLite and, as a
//! `needs_postgres` twin, on PostgreSQL (`test_support::postgres`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slap::client::{ClientConfig, SlapClient};
use slap::marshal::{self, Value};
use slapos_proxy::store::{ReportRow, Store, Tx, UsageRow};
use slapos_proxy::{start_background, AnyStore, Database, ProxyConfig, Retention};
use test_support::postgres::TestPostgres;

const COMPUTER: &str = "COMP-LIM";
const SR: &str = "http://example.com/software.cfg";

fn s(v: &str) -> Value {
    Value::Str(v.into())
}

/// A computer with one partition.
fn format_report() -> Value {
    let partition =
        Value::Dict(BTreeMap::from([("reference".to_string(), s("slappart0")), ("address_list".to_string(), Value::List(vec![]))]));
    Value::Dict(BTreeMap::from([
        ("reference".to_string(), s(COMPUTER)),
        ("address".to_string(), s("10.0.0.1")),
        ("netmask".to_string(), s("255.255.255.0")),
        ("partition_list".to_string(), Value::List(vec![partition])),
    ]))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(60))).build().into()
}

/// Posts a form; (status, body).
fn post(url: &str, form: &[(&str, &str)]) -> (u16, String) {
    let mut r = agent().post(url).send_form(form.iter().copied()).unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

fn request_form<'a>(title: &'a str, parameters: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("software_release", SR),
        ("software_type", "default"),
        ("partition_reference", title),
        ("partition_parameter_xml", parameters),
        ("filter_xml", "<marshal><dictionary id=\"i2\"/></marshal>"),
        ("state", "<marshal><string>started</string></marshal>"),
        ("shared_xml", "<marshal><bool>0</bool></marshal>"),
    ]
}

/// Declares `$name` (on SQLite) and `$pg_name` (on PostgreSQL), both
/// running `$body(database)`.
macro_rules! on_both_backends {
    ($name:ident, $pg_name:ident, $body:ident) => {
        #[test]
        fn $name() {
            let dir = tempfile::tempdir().unwrap();
            $body(Database::sqlite(dir.path().join("proxy.db")));
        }

        #[test]
        #[ignore = "needs PostgreSQL"]
        fn $pg_name() {
            let pg = TestPostgres::start();
            $body(Database::Postgres(pg.database("limits")));
        }
    };
}

fn config(database: &Database) -> ProxyConfig {
    ProxyConfig { computer_id: COMPUTER.into(), database: database.clone(), ..Default::default() }
}

fn partition_titles(db: &Database) -> Vec<String> {
    let store = AnyStore::open_read_only(db).unwrap();
    store
        .read(|t: &mut dyn Tx| t.partitions(None))
        .unwrap()
        .into_iter()
        .filter_map(|p: slapos_proxy::store::PartitionRow| p.partition_reference)
        .collect()
}

fn parameters(value: &str) -> String {
    marshal::encode(&Value::Dict(BTreeMap::from([("big".to_string(), s(value))]))).unwrap()
}

on_both_backends!(
    oversized_requests_are_refused_and_change_nothing,
    needs_postgres_oversized_requests_are_refused_and_change_nothing,
    oversized_requests
);

fn oversized_requests(db: Database) {
    let master = start_background(&config(&db)).unwrap();
    let client = SlapClient::new(ClientConfig::new(master.url())).unwrap();
    client.load_computer_configuration(&format_report()).unwrap();
    let url = format!("{}/requestComputerPartition", master.url());

    // a 10 MB field value: 413, nothing stored
    let big = parameters(&"x".repeat(10 << 20));
    let (status, body) = post(&url, &request_form("big", &big));
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("field 'partition_parameter_xml' is larger than 4194304 bytes"), "{body}");

    // a reference bomb in a field: 413 at once, nothing stored
    let mut bomb =
        String::from("<marshal><dictionary id=\"i1\"><string>k</string><list id=\"i2\"><list id=\"i3\"><string>xxxxxxxxxx</string></list>");
    for l in 3..12 {
        bomb.push_str(&format!("<list id=\"i{}\">{}</list>", l + 1, format!("<reference id=\"i{l}\"/>").repeat(10)));
    }
    bomb.push_str("</list></dictionary></marshal>");
    let started = Instant::now();
    let (status, body) = post(&url, &request_form("bomb", &bomb));
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("too big"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    // too many fields: 400
    let mut many = request_form("many", "<marshal><dictionary id=\"i2\"/></marshal>");
    let names: Vec<String> = (0..100).map(|i| format!("extra{i}")).collect();
    many.extend(names.iter().map(|n| (n.as_str(), "1")));
    let (status, body) = post(&url, &many);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("more than 64 fields"), "{body}");

    // a body announced over 16 MiB: 413 before it is read (a raw request:
    // HTTP clients may see the connection close while they still send)
    let mut raw = std::net::TcpStream::connect(master.addr).unwrap();
    let head = format!(
        "POST /requestComputerPartition HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\nsoftware_release=",
        17 << 20
    );
    raw.write_all(head.as_bytes()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    let _ = raw.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("request body larger than 16777216 bytes"), "{answer}");

    assert!(partition_titles(&db).is_empty(), "{:?}", partition_titles(&db));
    // the same request, small, is served
    let (status, body) = post(&url, &request_form("small", &parameters("ok")));
    assert_eq!(status, 200, "{body}");
    assert_eq!(partition_titles(&db), vec!["small".to_string()]);
}

on_both_backends!(long_error_logs_are_stored_cut_to_their_end, needs_postgres_long_error_logs_are_stored_cut_to_their_end, long_error_logs);

fn long_error_logs(db: Database) {
    let master = start_background(&config(&db)).unwrap();
    let client = SlapClient::new(ClientConfig::new(master.url())).unwrap();
    let log = format!("{}\nthe last line says why", "z".repeat(10 << 20));
    client.software_release_error(SR, COMPUTER, &log).unwrap();
    let store = AnyStore::open_read_only(&db).unwrap();
    let reports = store.read(|t: &mut dyn Tx| t.last_reports()).unwrap();
    let message = reports[0].message.as_deref().unwrap();
    assert!(message.len() <= 64 * 1024 + 40, "{} bytes stored", message.len());
    assert!(message.starts_with(&format!("[{} bytes cut]\n", log.len() - 64 * 1024)), "{}", &message[..40]);
    assert!(message.ends_with("\nthe last line says why"));
}

fn report(reference: &str, i: usize) -> ReportRow {
    ReportRow {
        kind: "partition".into(),
        computer_reference: COMPUTER.into(),
        reference: reference.into(),
        state: format!("state{i}"),
        message: None,
        time: i as f64,
        tree: None,
    }
}

on_both_backends!(node_history_is_kept_within_its_retention, needs_postgres_node_history_is_kept_within_its_retention, history);

fn history(db: Database) {
    let retention = Retention { reports_per_object: 3, reports: 10, usage_per_computer: 2, usage: 5, ..Retention::default() };
    let store = AnyStore::open(&db, retention).unwrap();
    let reports = || store.read(|t: &mut dyn Tx| t.reports()).unwrap();
    store
        .transaction(|t: &mut dyn Tx| {
            for i in 0..8 {
                t.add_report(&report("slappart0", i))?;
            }
            Ok::<_, slapos_proxy::StoreError>(())
        })
        .unwrap();
    assert_eq!(reports().len(), 3);
    let last = store.read(|t: &mut dyn Tx| t.last_reports()).unwrap();
    assert_eq!(last[0].state, "state7");
    // many objects: at most `reports` in all, the newest
    store
        .transaction(|t: &mut dyn Tx| {
            for i in 0..30 {
                t.add_report(&report(&format!("made-up-{i}"), 100 + i))?;
            }
            for i in 0..4 {
                t.add_usage(&UsageRow { computer_reference: COMPUTER.into(), body: format!("u{i}"), time: i as f64 })?;
            }
            for i in 0..9 {
                t.add_usage(&UsageRow { computer_reference: format!("C{i}"), body: "x".into(), time: 10.0 + i as f64 })?;
            }
            Ok::<_, slapos_proxy::StoreError>(())
        })
        .unwrap();
    let kept = reports();
    assert_eq!(kept.len(), 10);
    assert_eq!(kept.iter().map(|r| r.time as i64).min(), Some(120));
    let usage = store.read(|t: &mut dyn Tx| t.usages(1000)).unwrap();
    assert_eq!(usage.len(), 5);
    assert!(usage.iter().all(|u| u.computer_reference != COMPUTER), "{usage:?}");
}

/// A marshalled dictionary of `n` entries that fails to decode at its very end.
fn slow_to_refuse(n: usize) -> String {
    let mut doc = String::from("<marshal><dictionary id=\"i2\">");
    for i in 0..n {
        doc.push_str(&format!("<string>key{i}</string><string>value</string>"));
    }
    doc.push_str("<bogus/></dictionary></marshal>");
    doc
}

on_both_backends!(heavy_decoding_does_not_hold_other_requests, needs_postgres_heavy_decoding_does_not_hold_other_requests, heavy_decoding);

fn heavy_decoding(db: Database) {
    let master = start_background(&config(&db)).unwrap();
    let url = format!("{}/requestComputerPartition", master.url());
    let heavy = Arc::new(slow_to_refuse(80_000));
    let started = Instant::now();
    let (status, body) = post(&url, &request_form("heavy", &heavy));
    let one = started.elapsed();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unknown element &lt;bogus&gt;"), "{body}");
    // six at once, more than the two threads that serve connections
    let senders: Vec<_> = (0..6)
        .map(|_| {
            let (url, heavy) = (url.clone(), heavy.clone());
            std::thread::spawn(move || post(&url, &request_form("heavy", &heavy)).0)
        })
        .collect();
    std::thread::sleep(one / 2);
    let canary_started = Instant::now();
    let mut answer = agent().get(format!("{}/getRunId", master.url())).call().unwrap();
    let canary = canary_started.elapsed();
    assert_eq!(answer.body_mut().read_to_string().unwrap().len(), 32);
    let statuses: Vec<u16> = senders.into_iter().map(|s| s.join().unwrap()).collect();
    eprintln!("one heavy request: {one:?}; canary during six: {canary:?}");
    assert_eq!(statuses, vec![400; 6]);
    assert!(canary < one / 2 && canary < Duration::from_millis(500), "canary {canary:?}, one heavy request {one:?}");
}
