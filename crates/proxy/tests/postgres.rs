//! The PostgreSQL store on a real server: migrations keep data, a failed
//! transaction changes nothing, writes bump the computer's version, and
//! concurrent allocations (as from several masters) never share a partition,
//! with either isolation (both timed).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use slapos_proxy::master::{self, InstanceRequest, Site};
use slapos_proxy::store::{ComputerRow, Isolation, PgStore, SoftwareRow, Store, StoreError, Tx, SCHEMA_VERSION};
use test_support::postgres::TestPostgres;

#[test]
#[ignore = "needs PostgreSQL"]
fn needs_postgres_an_old_database_is_migrated_and_keeps_its_rows() {
    let pg = TestPostgres::start();
    let uri = pg.database("old");
    {
        let v1 = PgStore::open_at_version(&uri, 1).unwrap();
        v1.transaction(|tx: &mut dyn Tx| -> Result<(), StoreError> {
            tx.upsert_computer(&ComputerRow { reference: "C".into(), address: Some("10.0.0.1".into()), netmask: None })?;
            tx.insert_partition_if_missing("C", "slappart0")?;
            tx.upsert_software(&SoftwareRow {
                url: "http://sr".into(),
                computer_reference: "C".into(),
                requested_state: "available".into(),
            })
        })
        .unwrap();
    }
    let store = PgStore::open(&uri).unwrap();
    let (computers, partitions, software, version, site) = store
        .transaction(|tx: &mut dyn Tx| -> Result<_, StoreError> {
            Ok((tx.computers()?, tx.partitions(None)?, tx.software_releases(None)?, tx.schema_version()?, tx.site_id()?))
        })
        .unwrap();
    assert_eq!(computers.len(), 1);
    assert_eq!(partitions[0].reference, "slappart0");
    assert_eq!(software[0].url, "http://sr");
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(site.len(), 16, "a site identity is drawn");
    // a second master opening the same database changes nothing
    drop(PgStore::open(&uri).unwrap());
    assert!(PgStore::open_read_only(&uri).is_ok());
}

#[test]
#[ignore = "needs PostgreSQL"]
fn needs_postgres_a_failed_transaction_changes_nothing_and_writes_bump_versions() {
    let pg = TestPostgres::start();
    let store = PgStore::open(&pg.database("tx")).unwrap();
    let r: Result<(), StoreError> = store.transaction(|tx: &mut dyn Tx| {
        tx.upsert_computer(&ComputerRow { reference: "C".into(), address: None, netmask: None })?;
        Err(StoreError::Pool("deliberate".into()))
    });
    assert!(r.is_err());
    let version = |store: &PgStore| store.read(|tx: &mut dyn Tx| tx.computer_version("C")).unwrap();
    assert_eq!(version(&store), 0, "rolled back, version included");
    store.transaction(|tx: &mut dyn Tx| tx.insert_partition_if_missing("C", "p0")).unwrap();
    let v1 = version(&store);
    assert!(v1 > 0);
    // rewriting a row unchanged keeps the version; a change bumps it
    let p = store.read(|tx: &mut dyn Tx| tx.partition("C", "p0")).unwrap().unwrap();
    store.transaction(|tx: &mut dyn Tx| tx.update_partition(&p)).unwrap();
    assert_eq!(version(&store), v1);
    store.transaction(|tx: &mut dyn Tx| tx.set_timestamp("C", "p0", 12.5)).unwrap();
    assert!(version(&store) > v1);
}

fn format(store: &PgStore, computer: &str, n: usize) {
    let partitions: Vec<master::ReportedPartition> =
        (0..n).map(|i| master::ReportedPartition { reference: format!("slappart{i}"), addresses: vec![] }).collect();
    let row = ComputerRow { reference: computer.into(), address: None, netmask: None };
    store.transaction(|tx: &mut dyn Tx| master::load_format_report(tx, &row, &partitions)).unwrap();
}

/// `threads` writers each request `per_thread` new instances (twice each);
/// returns the seconds taken and the titles whose requests failed.
fn allocate_concurrently(store: Arc<PgStore>, threads: usize, per_thread: usize) -> (f64, Vec<String>) {
    let site = Site { computer_id: "C".into(), software_products: BTreeMap::new() };
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (store, site) = (store.clone(), site.clone());
            std::thread::spawn(move || {
                let mut failed = Vec::new();
                for i in 0..per_thread {
                    let req = InstanceRequest {
                        software_release: "http://sr".into(),
                        software_type: "default".into(),
                        title: format!("instance {t}-{i}"),
                        ..Default::default()
                    };
                    for _ in 0..2 {
                        // the second time: the same instance, no second partition
                        if let Err(e) = store.transaction(|tx: &mut dyn Tx| master::request(tx, &site, &req)) {
                            failed.push(format!("{}: {e}", req.title));
                        }
                    }
                }
                failed
            })
        })
        .collect();
    let failed = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    (start.elapsed().as_secs_f64(), failed)
}

/// How many partitions hold an instance; no title holds two.
fn allocated_once(store: &PgStore) -> usize {
    let partitions = store.read(|tx: &mut dyn Tx| tx.partitions(Some("C"))).unwrap();
    let mut titles: Vec<String> = partitions.iter().filter_map(|p| p.partition_reference.clone()).collect();
    let n = titles.len();
    titles.sort();
    titles.dedup();
    assert_eq!(titles.len(), n, "no title holds two partitions");
    n
}

#[test]
#[ignore = "needs PostgreSQL"]
fn needs_postgres_concurrent_allocations_never_share_a_partition() {
    let pg = TestPostgres::start();
    let (threads, per_thread) = (16, 12);
    for (name, isolation) in [("row locks + SKIP LOCKED", Isolation::RowLocks), ("serializable + retry", Isolation::Serializable)] {
        let db = if isolation == Isolation::RowLocks { "locks" } else { "serial" };
        let store = Arc::new(PgStore::open(&pg.database(db)).unwrap().with_isolation(isolation));
        format(&store, "C", threads * per_thread + 8);
        let (secs, failed) = allocate_concurrently(store.clone(), threads, per_thread);
        let n = threads * per_thread;
        eprintln!(
            "{name}: {n} instances requested twice by {threads} writers in {secs:.2} s ({:.0} requests/s), {} failed after retries",
            2.0 * n as f64 / secs,
            failed.len()
        );
        let allocated = allocated_once(&store);
        if isolation == Isolation::RowLocks {
            // the default: every request succeeds
            assert!(failed.is_empty(), "{failed:?}");
            assert_eq!(allocated, n);
        }
    }
}

/// Identity's and parity's rows on PostgreSQL: a token is taken once (also
/// from two stores, as from two masters), certificates are revoked by
/// identity, grants and settings are kept, a renamed software release keeps
/// one supply per computer.
#[test]
#[ignore = "needs PostgreSQL"]
fn needs_postgres_identity_and_parity_rows_behave_as_on_sqlite() {
    use slapos_proxy::store::{CertificateRow, TokenRow};
    let pg = TestPostgres::start();
    let uri = pg.database("identity");
    let (a, b) = (PgStore::open(&uri).unwrap(), PgStore::open(&uri).unwrap());
    let token = TokenRow { hash: "h".into(), kind: "computer".into(), name: "C".into(), expires: 10.0, used: None };
    a.transaction(|tx: &mut dyn Tx| tx.add_token(&token)).unwrap();
    let first = a.transaction(|tx: &mut dyn Tx| tx.take_token("h", 1.0)).unwrap().unwrap();
    let second = b.transaction(|tx: &mut dyn Tx| tx.take_token("h", 2.0)).unwrap().unwrap();
    assert_eq!((first.used, second.used), (None, Some(1.0)), "taken once, then seen used");
    let cert = |serial: &str| CertificateRow {
        serial: serial.into(),
        kind: "partition".into(),
        name: "p0".into(),
        computer_reference: "C".into(),
        not_after: 99.0,
        revoked: None,
    };
    a.transaction(|tx: &mut dyn Tx| {
        tx.add_certificate(&cert("1"))?;
        tx.add_certificate(&cert("2"))?;
        tx.grant("tree", "T", "alice")?;
        tx.grant("tree", "T", "alice")?;
        tx.set_setting("local_software_release_root", "/srv")?;
        tx.set_setting("local_software_release_root", "/opt")?;
        for c in ["C", "D"] {
            tx.upsert_software(&SoftwareRow {
                url: "/srv/a.cfg".into(),
                computer_reference: c.into(),
                requested_state: "available".into(),
            })?;
        }
        tx.upsert_software(&SoftwareRow { url: "/opt/a.cfg".into(), computer_reference: "D".into(), requested_state: "available".into() })
    })
    .unwrap();
    assert_eq!(b.transaction(|tx: &mut dyn Tx| tx.revoke_certificates("partition", "p0", "C", 5.0)).unwrap(), 2);
    b.transaction(|tx: &mut dyn Tx| tx.rename_software("/srv/a.cfg", "/opt/a.cfg")).unwrap();
    b.read(|tx: &mut dyn Tx| -> Result<(), StoreError> {
        assert_eq!(tx.certificate("1")?.unwrap().revoked, Some(5.0));
        assert_eq!(tx.grantees("tree", "T")?, ["alice"]);
        assert_eq!(tx.setting("local_software_release_root")?.as_deref(), Some("/opt"));
        let mut urls: Vec<(String, String)> = tx.software_releases(None)?.into_iter().map(|s| (s.computer_reference, s.url)).collect();
        urls.sort();
        assert_eq!(urls, [("C".to_string(), "/opt/a.cfg".to_string()), ("D".to_string(), "/opt/a.cfg".to_string())]);
        Ok(())
    })
    .unwrap();
    // ended certificates of a kind pruned, the others kept
    a.transaction(|tx: &mut dyn Tx| tx.add_certificate(&CertificateRow { serial: "3".into(), not_after: 200.0, ..cert("3") })).unwrap();
    assert_eq!(b.transaction(|tx: &mut dyn Tx| tx.prune_certificates("computer", 150.0)).unwrap(), 0);
    assert_eq!(b.transaction(|tx: &mut dyn Tx| tx.prune_certificates("partition", 150.0)).unwrap(), 2);
    b.read(|tx: &mut dyn Tx| -> Result<(), StoreError> {
        assert!(tx.certificate("1")?.is_none());
        assert!(tx.certificate("3")?.is_some());
        Ok(())
    })
    .unwrap();
}

#[test]
#[ignore = "needs PostgreSQL"]
fn needs_postgres_tls_connections_verify_the_server_against_sslrootcert() {
    let pki = test_support::tls::Pki::new("pg");
    let (cert, key) = pki.server_files(&["127.0.0.1"]);
    let port = test_support::free_port();
    let pg = TestPostgres::start_tls(port, &cert, &key);
    pg.database("tls");
    let tcp = pg.tcp_uri("tls");
    let ca = pki.ca_file.display().to_string();
    // TCP to this server is TLS only (hostssl): opening and writing prove it
    let store = PgStore::open(&format!("{tcp}?sslmode=verify-full&sslrootcert={ca}")).unwrap();
    store.transaction(|tx: &mut dyn Tx| tx.upsert_computer(&ComputerRow { reference: "C".into(), ..Default::default() })).unwrap();
    assert_eq!(store.read(|tx: &mut dyn Tx| tx.computers()).unwrap().len(), 1);
    // a server whose certificate another CA signed is refused
    let other = test_support::tls::Pki::new("other");
    let refused = PgStore::open(&format!("{tcp}?sslrootcert={}", other.ca_file.display())).err().expect("an unknown CA is refused");
    let said = refused.to_string();
    assert!(said.contains("database postgresql://postgres@127.0.0.1") && said.contains("certificate"), "{said}");
    // require without a CA: refused rather than unverified
    let unverified = PgStore::open(&format!("{tcp}?sslmode=require")).err().expect("sslmode=require without sslrootcert is refused");
    assert!(unverified.to_string().contains("sslrootcert"), "{unverified}");
    // plain TCP: the server refuses it (so the TLS above was real)
    let plain = PgStore::open(&tcp).err().expect("plain TCP is refused by a hostssl-only server").to_string();
    assert!(plain.contains("no encryption"), "{plain}");
    // a CA file that is not one: one line naming it
    let bad = PgStore::open(&format!("{tcp}?sslrootcert={}", cert.with_extension("nope").display())).err().unwrap();
    assert!(bad.to_string().contains(".nope"), "{bad}");
}
