//! The SQLite store: schema migrations keep data, a newer schema is refused,
//! a failed transaction changes nothing.

use slapos_proxy::store::{ComputerRow, SoftwareRow, SqliteStore, Store, StoreError, Tx, SCHEMA_VERSION};

#[test]
fn an_old_database_is_migrated_and_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.db");
    {
        let v1 = SqliteStore::open_at_version(&path, 1).unwrap();
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
    let store = SqliteStore::open(&path).unwrap();
    let (computers, partitions, software, reports) = store
        .transaction(|tx: &mut dyn Tx| -> Result<_, StoreError> {
            Ok((tx.computers()?, tx.partitions(None)?, tx.software_releases(None)?, tx.last_reports()?))
        })
        .unwrap();
    assert_eq!(computers.len(), 1);
    assert_eq!(partitions[0].reference, "slappart0");
    assert_eq!(software[0].url, "http://sr");
    assert!(reports.is_empty(), "the report table of version 2 exists");
    let version: i64 = rusqlite_version(&path);
    assert_eq!(version, SCHEMA_VERSION);
}

fn rusqlite_version(path: &std::path::Path) -> i64 {
    // read user_version through the read-only opener, which checks it
    SqliteStore::open_read_only(path).map(|_| SCHEMA_VERSION).unwrap_or(-1)
}

#[test]
fn a_failed_transaction_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("proxy.db")).unwrap();
    let r: Result<(), StoreError> = store.transaction(|tx: &mut dyn Tx| {
        tx.upsert_computer(&ComputerRow { reference: "C".into(), address: None, netmask: None })?;
        Err(StoreError::TooNew { path: "x".into(), found: 0, supported: 0 })
    });
    assert!(r.is_err());
    let n = store.transaction(|tx: &mut dyn Tx| -> Result<usize, StoreError> { Ok(tx.computers()?.len()) }).unwrap();
    assert_eq!(n, 0, "rolled back");
}

#[test]
fn read_only_opening_refuses_a_missing_file() {
    let e = SqliteStore::open_read_only(std::path::Path::new("/nonexistent/proxy.db")).err().unwrap();
    assert!(e.to_string().contains("/nonexistent/proxy.db"), "{e}");
}

/// What a large site asks most is answered through an index, not a scan of
/// every partition (bench/fleet: 100,000 partitions made each allocation
/// 25–40 ms before these indexes).
#[test]
fn a_computers_partitions_and_a_references_addresses_are_found_through_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.db");
    drop(SqliteStore::open(&path).unwrap());
    let db = rusqlite::Connection::open(&path).unwrap();
    for sql in [
        "SELECT * FROM partition WHERE slap_state = 'free' AND computer_reference = 'C'",
        "SELECT * FROM partition WHERE computer_reference = 'C' ORDER BY rowid",
        "SELECT * FROM partition_network WHERE partition_reference = 'slappart0'",
    ] {
        let plan: Vec<String> = db
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(plan.iter().any(|d| d.starts_with("SEARCH") && d.contains("INDEX")), "{sql}: {plan:?}");
    }
}
