//! The accounting (`proxy::accounting`): usage summed by hour and day in SQL
//! (from the hourly sums kept as movements come) on both backends for a seeded history (known sums, bucket edges, several
//! resources, several partitions of one tree), the journals our node,
//! slapgrid 1.26.1 and slapos.collect write read into movements, and the
//! HTTP API (`/api/events`, `/api/usage`, JSON and CSV).

use std::collections::BTreeMap;

use serde_json::Value as J;
use slap::marshal::{self, Value};
use slapos_proxy::accounting::{self, EventFilter, EventKind, Scope, UsageBucket, UsageQuery};
use slapos_proxy::store::{MovementRow, PgStore, SqliteStore, Store, Tx};
use slapos_proxy::{start_background, ProxyConfig};

/// 2026-11-30 00:00:00 UTC.
const DAY: f64 = 1_795_996_800.0;
const H: f64 = 3600.0;

fn movement(time: f64, partition: &str, tree: Option<&str>, resource: &str, unit: &str, quantity: f64) -> MovementRow {
    MovementRow {
        time,
        computer_reference: if partition == "other" { "C2".into() } else { "C".into() },
        partition_reference: if partition == "other" { "slappart0".into() } else { partition.into() },
        tree: tree.map(str::to_string),
        resource: resource.into(),
        title: resource.into(),
        quantity,
        unit: unit.into(),
        received: DAY + 2.0 * 86400.0,
    }
}

/// Tree `T` is slappart0 and slappart1 of C; `U` is slappart2; C2 has
/// its own; the computer reports its own memory.
fn seed(store: &impl Store) {
    let rows = vec![
        movement(DAY + 10.0, "slappart0", Some("T"), "CPU Consumption", "s", 1.5),
        movement(DAY + H - 1.0, "slappart0", Some("T"), "CPU Consumption", "s", 2.25),
        movement(DAY + H, "slappart0", Some("T"), "CPU Consumption", "s", 4.0),
        movement(DAY + 86400.0 - 1.0, "slappart0", Some("T"), "CPU Consumption", "s", 0.5),
        movement(DAY + 86400.0, "slappart0", Some("T"), "CPU Consumption", "s", 8.0),
        movement(DAY + 20.0, "slappart1", Some("T"), "CPU Consumption", "s", 0.25),
        movement(DAY + 30.0, "slappart1", Some("T"), "Memory Consumption", "MiB", 100.0),
        movement(DAY + 40.0, "slappart2", Some("U"), "CPU Consumption", "s", 1000.0),
        movement(DAY + 50.0, "", None, "service_module/memory_used", "B", 7.0),
        movement(DAY + 60.0, "other", Some("T"), "CPU Consumption", "s", 50.0),
        // before the window of every query
        movement(DAY - 1.0, "slappart0", Some("T"), "CPU Consumption", "s", 64.0),
    ];
    store.transaction(|tx: &mut dyn Tx| tx.add_movements(&rows)).unwrap();
}

fn sums(store: &impl Store, scope: Scope, bucket: i64, since: f64, until: f64) -> Vec<(String, String, i64, f64)> {
    let q = UsageQuery { scope, bucket, since, until, limit: 1000, tree: None };
    let buckets: Vec<UsageBucket> = store.read(|tx: &mut dyn Tx| accounting::usage(tx, &q)).unwrap();
    buckets.into_iter().map(|b| (b.resource, b.unit, b.start, b.quantity)).collect()
}

fn row(resource: &str, unit: &str, start: f64, quantity: f64) -> (String, String, i64, f64) {
    (resource.into(), unit.into(), start as i64, quantity)
}

/// The sums of the seeded history, the same on every backend.
fn aggregation_is_right(store: &impl Store) {
    seed(store);
    let (since, until) = (DAY, DAY + 3.0 * 86400.0);
    let cpu = "CPU Consumption";
    let tree = || Scope::Tree("T".into());
    assert_eq!(
        sums(store, tree(), 3600, since, until),
        vec![
            row(cpu, "s", DAY, 1.5 + 2.25 + 0.25 + 50.0),
            row(cpu, "s", DAY + H, 4.0),
            row(cpu, "s", DAY + 23.0 * H, 0.5),
            row(cpu, "s", DAY + 86400.0, 8.0),
            row("Memory Consumption", "MiB", DAY, 100.0),
        ],
        "hourly, a tree: its partitions on every computer, each hour's edge in the next"
    );
    assert_eq!(
        sums(store, tree(), 86400, since, until),
        vec![row(cpu, "s", DAY, 58.5), row(cpu, "s", DAY + 86400.0, 8.0), row("Memory Consumption", "MiB", DAY, 100.0)],
        "daily, a tree"
    );
    let part = || Scope::Partition { computer: "C".into(), partition: "slappart0".into() };
    assert_eq!(
        sums(store, part(), 86400, since, until),
        vec![row(cpu, "s", DAY, 8.25), row(cpu, "s", DAY + 86400.0, 8.0)],
        "daily, one partition"
    );
    assert_eq!(
        sums(store, Scope::Computer("C".into()), 86400, since, until),
        vec![
            row(cpu, "s", DAY, 1008.5),
            row(cpu, "s", DAY + 86400.0, 8.0),
            row("Memory Consumption", "MiB", DAY, 100.0),
            row("service_module/memory_used", "B", DAY, 7.0),
        ],
        "daily, a computer: its partitions and itself"
    );
    // the window: since included, until excluded
    assert_eq!(sums(store, part(), 3600, DAY + H, DAY + 86400.0), vec![row(cpu, "s", DAY + H, 4.0), row(cpu, "s", DAY + 23.0 * H, 0.5)]);
    assert_eq!(sums(store, part(), 86400, DAY - 86400.0, DAY), vec![row(cpu, "s", DAY - 86400.0, 64.0)]);
    assert!(sums(store, Scope::Tree("nobody".into()), 3600, since, until).is_empty());
    // bounded: at most `limit` buckets
    let q = UsageQuery { scope: tree(), bucket: 3600, since, until, limit: 2, tree: None };
    assert_eq!(store.read(|tx: &mut dyn Tx| accounting::usage(tx, &q)).unwrap().len(), 2);
    // restricted to a tree: what another tree did on the partition is not seen
    let q = UsageQuery { scope: part(), bucket: 86400, since, until, limit: 10, tree: Some("U".into()) };
    assert!(store.read(|tx: &mut dyn Tx| accounting::usage(tx, &q)).unwrap().is_empty());
    // the rows are kept for `proxy migrate`
    assert_eq!(store.read(|tx: &mut dyn Tx| tx.movements()).unwrap().len(), 11);
}

#[test]
fn hourly_and_daily_sums_of_a_seeded_history_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    aggregation_is_right(&SqliteStore::open(&dir.path().join("proxy.db")).unwrap());
}

#[test]
#[ignore = "needs PostgreSQL"]
fn needs_postgres_hourly_and_daily_sums_of_a_seeded_history() {
    let pg = test_support::postgres::TestPostgres::start();
    aggregation_is_right(&PgStore::open(&pg.database("accounting")).unwrap());
    events_are_filtered_newest_first(&PgStore::open(&pg.database("events")).unwrap());
}

#[test]
fn old_movements_and_too_many_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let retention = slapos_proxy::store::Retention { movements: 3, movement_days: 10, ..Default::default() };
    let store = SqliteStore::open(&dir.path().join("proxy.db")).unwrap().with_retention(retention);
    let mut rows: Vec<MovementRow> = (0..5).map(|i| movement(DAY + f64::from(i), "slappart0", None, "cpu", "s", 1.0)).collect();
    rows[0].time = DAY + 2.0 * 86400.0 - 11.0 * 86400.0;
    store.transaction(|tx: &mut dyn Tx| tx.add_movements(&rows)).unwrap();
    let kept = store.read(|tx: &mut dyn Tx| tx.movements()).unwrap();
    assert_eq!(kept.iter().map(|m| m.time - DAY).collect::<Vec<_>>(), vec![2.0, 3.0, 4.0]);
    // the hourly sums were made as the movements came: the old hour is gone,
    // the recent one keeps every movement
    let part = Scope::Partition { computer: "C".into(), partition: "slappart0".into() };
    assert_eq!(sums(&store, part, 3600, 0.0, 1e12), vec![row("cpu", "s", DAY, 4.0)]);
}

/// Reports of two trees on one computer, a software release and the computer.
fn events_are_filtered_newest_first(store: &impl Store) {
    let site = slapos_proxy::master::Site { computer_id: "C".into(), software_products: BTreeMap::new() };
    store
        .transaction(|tx: &mut dyn Tx| -> Result<(), slapos_proxy::master::MasterError> {
            use slapos_proxy::master;
            let computer = slapos_proxy::store::ComputerRow { reference: "C".into(), address: None, netmask: None };
            let parts: Vec<_> =
                (0..3).map(|i| master::ReportedPartition { reference: format!("slappart{i}"), addresses: vec![] }).collect();
            master::load_format_report(tx, &computer, &parts)?;
            for title in ["T", "U"] {
                let req = master::InstanceRequest {
                    software_release: "http://sr".into(),
                    software_type: "default".into(),
                    title: title.into(),
                    ..Default::default()
                };
                master::request(tx, &site, &req)?;
            }
            master::report(tx, "partition", "C", "slappart0", "started", None)?;
            master::report(tx, "partition", "C", "slappart0", "error", Some("Promise 'check-port' failed with output: closed"))?;
            master::report(tx, "partition", "C", "slappart1", "error", Some("buildout failed"))?;
            master::bang(tx, "C", "slappart1", "a service died")?;
            master::report(tx, "software", "C", "http://sr", "available", None)?;
            master::computer_bang(tx, "C", "rebooted")?;
            Ok(())
        })
        .unwrap();
    let events = |f: EventFilter| {
        let f = EventFilter { until: 1e12, limit: if f.limit == 0 { 100 } else { f.limit }, ..f };
        store.read(|tx: &mut dyn Tx| accounting::events(tx, &f)).unwrap()
    };
    let all = events(EventFilter::default());
    let kinds: Vec<&str> = all.iter().map(|e| e.kind.name()).collect();
    assert_eq!(kinds, ["bang", "software", "bang", "error", "promise", "state"], "newest first");
    assert_eq!(all[0].message.as_deref(), Some("rebooted"));
    assert_eq!(
        (all[0].state.as_deref(), all[1].software.as_deref(), all[1].state.as_deref()),
        (None, Some("http://sr"), Some("available"))
    );
    let tree_t = events(EventFilter { tree: Some("T".into()), ..Default::default() });
    assert_eq!(tree_t.iter().map(|e| e.kind).collect::<Vec<_>>(), [EventKind::Promise, EventKind::State]);
    assert!(tree_t.iter().all(|e| e.partition == "slappart0" && e.tree.as_deref() == Some("T")));
    let p1 = events(EventFilter { computer: Some("C".into()), partition: Some("slappart1".into()), ..Default::default() });
    assert_eq!(p1.iter().map(|e| e.kind).collect::<Vec<_>>(), [EventKind::Bang, EventKind::Error]);
    assert_eq!(p1[0].tree.as_deref(), Some("U"));
    assert_eq!(events(EventFilter { limit: 2, ..Default::default() }).len(), 2);
    assert!(events(EventFilter { computer: Some("C2".into()), ..Default::default() }).is_empty());
    assert!(store
        .read(|tx: &mut dyn Tx| accounting::events(tx, &EventFilter { since: 1e12, until: 2e12, limit: 9, ..Default::default() }))
        .unwrap()
        .is_empty());
}

#[test]
fn events_carry_their_tree_and_kind_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    events_are_filtered_newest_first(&SqliteStore::open(&dir.path().join("proxy.db")).unwrap());
}

// --- journals ---------------------------------------------------------------

/// What our node sends (`grid::report::usage_journal`, byte for byte).
const OUR_JOURNAL: &str = "<?xml version='1.0' encoding='utf-8'?>
<journal>
  <transaction type=\"Sale Packing List\">
    <title>Resource consumptions</title>
    <start_date></start_date>
    <stop_date>2026-12-01 at 21:00:00</stop_date>
    <reference>C</reference>
    <currency></currency>
    <payment_mode></payment_mode>
    <category></category>
    <arrow type=\"Administration\">
      <source></source>
      <destination></destination>
    </arrow>
    <movement>
      <resource>CPU Consumption</resource>
      <title>CPU Consumption</title>
      <reference>slappart0</reference>
      <quantity>1.500</quantity>
      <price>0.00</price>
      <VAT>None</VAT>
      <category>None</category>
    </movement>
    <movement>
      <resource>Memory Consumption</resource>
      <title>Memory Consumption</title>
      <reference>slappart0</reference>
      <quantity>20.250</quantity>
      <price>0.00</price>
      <VAT>None</VAT>
      <category>None</category>
    </movement>
    <movement>
      <resource>CPU Consumption</resource>
      <title>CPU Consumption</title>
      <reference>slappart1</reference>
      <quantity>2.500</quantity>
      <price>0.00</price>
      <VAT>None</VAT>
      <category>None</category>
    </movement>
    <movement>
      <resource>CPU Consumption</resource>
      <title>CPU Consumption</title>
      <reference>slappart2</reference>
      <quantity>100.000</quantity>
      <price>0.00</price>
      <VAT>None</VAT>
      <category>None</category>
    </movement>
  </transaction>
</journal>
";

/// What slapgrid 1.26.1 sends (`Slapgrid.asXML`: one line, the partitions'
/// own movements, texts as they were, `None` for empty ones).
const SLAPGRID_JOURNAL: &str = "<?xml version=\"1.0\"?><journal><transaction type=\"Sale Packing List\"><title>Resource consumptions</title><start_date></start_date><stop_date>2026-12-01 at 21:00:00</stop_date><reference>C</reference><currency></currency><payment_mode></payment_mode><category></category><arrow type=\"Administration\"><source></source><destination></destination></arrow><movement><resource>CPU</resource><title>CPU Usage</title><reference>slappart1</reference><quantity>42.0</quantity><price>0.0</price><VAT>None</VAT><category>None</category></movement></transaction></journal>";

/// What slapos.collect 1.26.1 writes for a day (`ConsumptionReport.buildXMLReport`),
/// sent as it is from `var/xml_report/<computer>/`.
const COLLECT_JOURNAL: &str = "<?xml version='1.0' encoding='utf-8'?><journal><transaction type=\"Sale Packing List\"><title>Eco Information for C </title><start_date>2026-11-30 00:00:00</start_date><stop_date>2026-11-30 23:59:59</stop_date><reference>2026-11-30-global</reference><currency /><payment_mode /><category /><arrow type=\"Destination\" /><movement><resource>service_module/cpu_load_percent</resource><title>CPU Load Percent Average</title><reference>C</reference><quantity>12.5</quantity><price>0.0</price><VAT /><category /></movement><movement><resource>service_module/memory_used</resource><title>Used Memory</title><reference>C</reference><quantity>1073741824.0</quantity><price>0.0</price><VAT /><category /></movement><movement><resource>service_module/zero_emission_ratio</resource><title>Zero Emission Ratio</title><reference>C</reference><quantity>-1</quantity><price>0.0</price><VAT /><category /></movement><movement><resource>service_module/cpu_load_percent</resource><title>CPU Load Percent Average for slapuser1</title><reference>slapuser1</reference><quantity>3.25</quantity><price>0.0</price><VAT /><category /></movement><movement><resource>service_module/memory_used</resource><title>Memory Used Average for slapuser1</title><reference>slapuser1</reference><quantity>48.0</quantity><price>0.0</price><VAT /><category /></movement><movement><resource>service_module/disk_used</resource><title>Partition Disk Used Average for slapuser1</title><reference>slapuser1</reference><quantity>2.5</quantity><price>0.0</price><VAT /><category /></movement></transaction></journal>";

#[test]
fn truncated_and_mutated_journals_never_panic() {
    use slapos_proxy::accounting::journal;
    let mut tried = 0;
    for doc in [OUR_JOURNAL, SLAPGRID_JOURNAL, COLLECT_JOURNAL] {
        let bytes = doc.as_bytes();
        for cut in (0..bytes.len()).step_by(7) {
            let _ = journal::parse(&String::from_utf8_lossy(&bytes[..cut]));
            let mut mutated = bytes.to_vec();
            mutated[cut] = b"<>&/\"x"[cut % 6];
            let _ = journal::parse(&String::from_utf8_lossy(&mutated));
            tried += 2;
        }
        assert_eq!(journal::parse(doc).unwrap().skipped, 0);
    }
    assert!(tried > 500);
}

// --- HTTP --------------------------------------------------------------------

fn format_report(computer: &str, partitions: usize) -> String {
    let list = (0..partitions)
        .map(|i| {
            Value::Dict(BTreeMap::from([
                ("reference".to_string(), Value::str(format!("slappart{i}"))),
                ("address_list".to_string(), Value::List(vec![])),
                ("tap".to_string(), Value::None),
            ]))
        })
        .collect();
    let d = BTreeMap::from([
        ("reference".to_string(), Value::str(computer)),
        ("address".to_string(), Value::str("10.0.0.1")),
        ("netmask".to_string(), Value::str("255.255.255.0")),
        ("partition_list".to_string(), Value::List(list)),
    ]);
    marshal::encode(&Value::Dict(d)).unwrap()
}

fn enc(v: &Value) -> String {
    marshal::encode(v).unwrap()
}

struct Master {
    _dir: tempfile::TempDir,
    master: slapos_proxy::Background,
    agent: ureq::Agent,
}

impl Master {
    fn start() -> Master {
        let dir = tempfile::tempdir().unwrap();
        let config = ProxyConfig {
            computer_id: "C".into(),
            database: slapos_proxy::Database::sqlite(dir.path().join("proxy.db")),
            ..Default::default()
        };
        let master = start_background(&config).unwrap();
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        Master { _dir: dir, master, agent }
    }
    fn post(&self, path: &str, form: &[(&str, String)]) {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str()))).finish();
        let mut r = self
            .agent
            .post(format!("{}{path}", self.master.url()))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(&body)
            .unwrap();
        assert_eq!(r.status(), 200, "{path}: {}", r.body_mut().read_to_string().unwrap());
    }
    /// (status, content type, body).
    fn get(&self, path_and_query: &str, accept: Option<&str>) -> (u16, String, String) {
        let mut req = self.agent.get(format!("{}{path_and_query}", self.master.url()));
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        let mut r = req.call().unwrap();
        let kind = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        (r.status().as_u16(), kind, r.body_mut().read_to_string().unwrap())
    }
    fn json(&self, path_and_query: &str) -> J {
        let (status, kind, body) = self.get(path_and_query, None);
        assert_eq!((status, kind.as_str()), (200, "application/json"), "{path_and_query}: {body}");
        serde_json::from_str(&body).unwrap()
    }
    fn request(&self, title: &str, requester: Option<&str>) {
        let mut f = vec![
            ("software_release", "http://sr.example/software.cfg".to_string()),
            ("software_type", "default".to_string()),
            ("partition_reference", title.to_string()),
            ("partition_parameter_xml", enc(&Value::Dict(BTreeMap::new()))),
            ("filter_xml", enc(&Value::Dict(BTreeMap::new()))),
            ("state", enc(&Value::str("started"))),
            ("shared_xml", enc(&Value::Bool(false))),
        ];
        if let Some(p) = requester {
            f.push(("computer_id", "C".into()));
            f.push(("computer_partition_id", p.into()));
        }
        self.post("/requestComputerPartition", &f);
    }
    /// C with 4 partitions: `tree-a` on slappart0 with its child on
    /// slappart1, `tree-b` on slappart2.
    fn site() -> Master {
        let m = Master::start();
        m.post("/loadComputerConfigurationFromXML", &[("xml", format_report("C", 4))]);
        m.request("tree-a", None);
        m.request("child", Some("slappart0"));
        m.request("tree-b", None);
        m
    }
}

/// The sum of every point of a resource's series.
fn total(usage: &J, resource: &str) -> f64 {
    let series = usage["series"].as_array().unwrap();
    let s = series.iter().find(|s| s["resource"] == resource).unwrap_or_else(|| panic!("no {resource} in {usage}"));
    s["points"].as_array().unwrap().iter().map(|p| p["quantity"].as_f64().unwrap()).sum()
}

#[test]
fn our_nodes_journal_ends_up_in_the_hourly_sums_of_its_trees() {
    let m = Master::site();
    m.post("/useComputer", &[("computer_id", "C".into()), ("use_string", OUR_JOURNAL.into())]);
    let tree_a = m.json("/api/usage?scope=tree&id=tree-a&bucket=hour");
    assert_eq!((tree_a["scope"].as_str(), tree_a["id"].as_str(), tree_a["bucket"].as_str()), (Some("tree"), Some("tree-a"), Some("hour")));
    assert_eq!(total(&tree_a, "CPU Consumption"), 4.0, "slappart0 and its child slappart1: {tree_a}");
    assert_eq!(total(&tree_a, "Memory Consumption"), 20.25);
    let cpu = &tree_a["series"][0];
    assert_eq!(cpu["unit"], "s");
    let start = cpu["points"][0]["start"].as_i64().unwrap();
    assert_eq!(start % 3600, 0, "hour buckets");
    assert!(cpu["points"][0]["iso"].as_str().unwrap().ends_with(":00:00Z"));
    let p2 = m.json("/api/usage?scope=partition&id=C/slappart2&bucket=day");
    assert_eq!(total(&p2, "CPU Consumption"), 100.0);
    assert_eq!(p2["series"][0]["points"][0]["start"].as_i64().unwrap() % 86400, 0, "day buckets");
    assert_eq!(total(&m.json("/api/usage?scope=computer&id=C"), "CPU Consumption"), 104.0);
    // CSV, asked either way
    for (query, accept) in [("/api/usage?scope=tree&id=tree-a&format=csv", None), ("/api/usage?scope=tree&id=tree-a", Some("text/csv"))] {
        let (status, kind, body) = m.get(query, accept);
        assert_eq!((status, kind.as_str()), (200, "text/csv; charset=utf-8"));
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines[0], "start,resource,unit,quantity");
        assert!(lines[1..].iter().any(|l| l.ends_with(",CPU Consumption,s,4")), "{body}");
        assert!(lines[1..].iter().any(|l| l.ends_with(",Memory Consumption,MiB,20.25")), "{body}");
    }
    // the journal's reception is an event
    let events = m.json("/api/events?computer=C");
    let usage = events["events"].as_array().unwrap().iter().find(|e| e["kind"] == "usage").unwrap();
    assert_eq!(usage["message"], "4 movements recorded, 0 skipped");
}

#[test]
fn slapgrid_and_slapos_collect_journals_are_read() {
    let m = Master::site();
    m.post("/useComputer", &[("computer_id", "C".into()), ("use_string", SLAPGRID_JOURNAL.into())]);
    m.post("/useComputer", &[("computer_id", "C".into()), ("use_string", COLLECT_JOURNAL.into())]);
    let child = m.json("/api/usage?scope=partition&id=C/slappart1&bucket=day&since=2026-11-01&until=2027-01-01");
    assert_eq!(total(&child, "CPU"), 42.0, "slapgrid's journal: {child}");
    assert_eq!(total(&child, "service_module/cpu_load_percent"), 3.25, "slapuser1 is slappart1");
    let days: Vec<(i64, f64)> = child["series"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["resource"] == "service_module/disk_used")
        .flat_map(|s| s["points"].as_array().unwrap().iter().map(|p| (p["start"].as_i64().unwrap(), p["quantity"].as_f64().unwrap())))
        .collect();
    assert_eq!(days, vec![(DAY as i64, 2.5)], "the collect report's day (its start_date)");
    let computer = m.json("/api/usage?scope=computer&id=C&bucket=day&since=1795996800&until=1796083200");
    let units: BTreeMap<String, String> = computer["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (format!("{} {}", s["resource"].as_str().unwrap(), s["points"][0]["quantity"]), s["unit"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(units["service_module/memory_used 1073741824.0"], "B", "{units:?}");
    assert_eq!(units["service_module/memory_used 48.0"], "MiB");
    assert_eq!(units["service_module/cpu_load_percent 15.75"], "%", "the computer's own and its partition's, one day");
    // a journal that cannot be read is kept, said so, and answered the same
    m.post("/useComputer", &[("computer_id", "C".into()), ("use_string", "<journal><movement>".into())]);
    let events = m.json("/api/events?computer=C&limit=1");
    assert_eq!(events["events"][0]["kind"], "usage");
    assert!(events["events"][0]["message"].as_str().unwrap().starts_with("unreadable usage journal"));
}

#[test]
fn events_answer_with_their_tree_kind_and_text_as_json_and_csv() {
    let m = Master::site();
    let cp = |p: &str| vec![("computer_id", "C".to_string()), ("computer_partition_id", p.to_string())];
    m.post("/startedComputerPartition", &cp("slappart1"));
    m.post("/softwareInstanceError", &[cp("slappart0"), vec![("error_log", "Promise 'http' failed with output: down".into())]].concat());
    m.post("/softwareInstanceBang", &[cp("slappart1"), vec![("message", "service died".into())]].concat());
    m.post("/softwareInstanceError", &[cp("slappart2"), vec![("error_log", "buildout: error\nline 2".into())]].concat());
    m.post(
        "/softwareReleaseError",
        &[("url", "http://sr.example/software.cfg".into()), ("computer_id", "C".into()), ("error_log", "e".into())],
    );
    m.post("/computerBang", &[("computer_id", "C".into()), ("message", "rebooted".into())]);
    let tree_a = m.json("/api/events?tree=tree-a");
    let list = tree_a["events"].as_array().unwrap();
    let kinds: Vec<&str> = list.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["bang", "promise", "state"], "newest first, tree-a only: {tree_a}");
    assert_eq!(list[0]["partition"], "slappart1");
    assert_eq!((list[0]["message"].as_str(), list[0]["state"].as_str()), (Some("service died"), None));
    assert_eq!((list[2]["state"].as_str(), list[2]["tree"].as_str()), (Some("started"), Some("tree-a")));
    let t = list[0]["time"].as_f64().unwrap();
    assert!(t > 1.7e9 && list[0]["iso"].as_str().unwrap().ends_with('Z'));
    let all = m.json("/api/events?computer=C");
    let kinds: Vec<&str> = all["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["bang", "software", "error", "bang", "promise", "state"]);
    assert_eq!(all["events"][0]["tree"], J::Null);
    let only = m.json("/api/events?computer=C&partition=slappart2");
    assert_eq!(only["events"][0]["message"], "buildout: error\nline 2");
    assert_eq!(m.json("/api/events?computer=C&limit=2")["events"].as_array().unwrap().len(), 2);
    assert_eq!(m.json("/api/events?computer=C&until=2000-01-01")["events"].as_array().unwrap().len(), 0);
    let (status, kind, csv) = m.get("/api/events?tree=tree-a&format=csv", None);
    assert_eq!((status, kind.as_str()), (200, "text/csv; charset=utf-8"));
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("time,iso,kind,computer,partition,tree,state,message,software"));
    assert!(lines.next().unwrap().contains(",bang,C,slappart1,tree-a,,service died,"), "{csv}");
    // arguments that make no sense: 400 with a JSON error
    for bad in [
        "/api/usage?scope=galaxy&id=x",
        "/api/usage?scope=partition&id=nopartition",
        "/api/usage?scope=tree",
        "/api/events?since=soon",
        "/api/usage?scope=tree&id=t&bucket=week",
    ] {
        let (status, kind, body) = m.get(bad, None);
        assert_eq!((status, kind.as_str()), (400, "application/json"), "{bad}: {body}");
        assert!(serde_json::from_str::<J>(&body).unwrap()["error"].is_string());
    }
}

#[test]
#[ignore = "needs the venv"]
fn needs_venv_the_journals_slapos_core_writes_are_read() {
    let venv = test_support::python_venv();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/journals.py");
    let out = std::process::Command::new(venv.join("bin/python3")).arg(&script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (collect, slapgrid) = text.split_once("\n---8<---\n").expect("two journals");
    let m = Master::site();
    for journal in [collect, slapgrid] {
        m.post("/useComputer", &[("computer_id", "C".into()), ("use_string", journal.into())]);
    }
    let child = m.json("/api/usage?scope=tree&id=tree-a&bucket=day&since=2026-11-01&until=2100-01-01");
    assert_eq!(total(&child, "CPU"), 42.0, "slapgrid's journal, for slappart1 of tree-a: {child}");
    assert_eq!(total(&child, "service_module/cpu_load_percent"), 3.25, "collect's, slapuser1 being slappart1");
    let computer = m.json("/api/usage?scope=computer&id=C&bucket=day&since=2026-11-30&until=2026-12-01");
    let memory = computer["series"].as_array().unwrap().iter().find(|s| s["resource"] == "service_module/memory_used").unwrap();
    assert_eq!((memory["unit"].as_str(), memory["points"][0]["quantity"].as_f64()), (Some("B"), Some(2048.0)));
    let events = m.json("/api/events?computer=C");
    let summaries: Vec<&str> = events["events"].as_array().unwrap().iter().filter_map(|e| e["message"].as_str()).collect();
    assert_eq!(summaries, ["1 movements recorded, 0 skipped", "2 movements recorded, 0 skipped"]);
}
