//! `proxy migrate`: a site filled by every client call moves from SQLite to
//! PostgreSQL (and back); every answer a node or `proxy show` gets is the
//! same before and after.

use test_support::postgres as pg;

use slapos_proxy::migrate::migrate;
use slapos_proxy::store::{AnyStore, Store, Tx};
use slapos_proxy::{start_background, Database, ProxyConfig};

fn config(database: Database) -> ProxyConfig {
    ProxyConfig { computer_id: "COMP-TEST".into(), database, ..Default::default() }
}

/// What a master on `database` answers: `proxy show`'s document, every
/// computer's full information, every partition's registration, the
/// accounting's events and usage.
fn answers(database: &Database) -> Vec<String> {
    let store = AnyStore::open_read_only(database).unwrap();
    let mut out = vec![slapos_proxy::show::snapshot(&store).unwrap().to_string()];
    let partitions = store.read(|tx: &mut dyn Tx| tx.partitions(None)).unwrap();
    drop(store);
    let master = start_background(&config(database.clone())).unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut get = |path: String| {
        let mut r = agent.get(format!("{}{path}", master.url())).call().unwrap();
        out.push(format!("{} {path}\n{}", r.status(), r.body_mut().read_to_string().unwrap()));
    };
    let mut computers: Vec<&str> = partitions.iter().map(|p| p.computer_reference.as_str()).collect();
    computers.dedup();
    for c in &computers {
        get(format!("/getFullComputerInformation?computer_id={c}"));
    }
    for p in &partitions {
        get(format!("/registerComputerPartition?computer_reference={}&computer_partition_reference={}", p.computer_reference, p.reference));
    }
    // the accounting: events with their trees, usage by hour
    get("/api/events?since=0&limit=5000".into());
    for c in &computers {
        get(format!("/api/usage?scope=computer&id={c}&since=0"));
    }
    out
}

#[test]
#[ignore = "needs PostgreSQL"]
fn needs_postgres_a_site_moves_to_postgresql_and_back_with_every_answer_kept() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Database::sqlite(dir.path().join("proxy.db"));
    {
        let master = start_background(&config(sqlite.clone())).unwrap();
        test_support::exercise::every_client_call(&master.url());
        // usage of the partitions the exercise left, to the accounting
        let store = AnyStore::open_read_only(&sqlite).unwrap();
        let partitions = store.read(|tx: &mut dyn Tx| tx.partitions(None)).unwrap();
        let movements: String = partitions
            .iter()
            .map(|p| format!("<movement><resource>cpu</resource><reference>{}</reference><quantity>1.5</quantity></movement>", p.reference))
            .collect();
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("computer_id", &partitions[0].computer_reference)
            .append_pair("use_string", &format!("<journal><transaction>{movements}</transaction></journal>"))
            .finish();
        let r = ureq::post(format!("{}/useComputer", master.url())).header("Content-Type", "application/x-www-form-urlencoded").send(&body);
        assert_eq!(r.unwrap().status(), 200);
    }
    let before = answers(&sqlite);
    assert!(before.len() > 3, "the exercise left partitions: {before:?}");
    assert!(before.iter().any(|a| a.contains("/api/usage") && a.contains("\"resource\":\"cpu\"")), "usage recorded: {before:?}");
    assert!(before.iter().any(|a| a.contains("/api/events") && a.contains("\"tree\":\"")), "events with their tree: {before:?}");
    let pg = pg::TestPostgres::start();
    let postgres = Database::Postgres(pg.database("moved"));
    let copied = migrate(&sqlite, &postgres).unwrap();
    assert!(copied.partitions > 0 && copied.reports > 0 && copied.forwards > 0, "{copied:?}");
    assert_eq!(answers(&postgres), before);
    // a second migration into a site that has rows is refused
    let e = migrate(&sqlite, &postgres).unwrap_err().to_string();
    assert!(e.contains("not empty"), "{e}");
    // and back to a new SQLite file
    let back = Database::sqlite(dir.path().join("back.db"));
    migrate(&postgres, &back).unwrap();
    assert_eq!(answers(&back), before);
}
