//! The authorization matrix: every route of `proxy::rules::RULES` × every
//! kind of caller, over HTTPS with certificates issued by the master's CA,
//! against the status the policy expects (written here independently of
//! `rules::decide`). On a refusal the whole database is compared before
//! and after: a refusal changes nothing. Every route the sources declare
//! must have a rule, and every rule a call here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use slap::marshal::{self, Value};
use slapos_proxy::ca::{Ca, Subject};
use slapos_proxy::identity::{Authority, Security, Validity};
use slapos_proxy::rules::{Rule, RULES};
use slapos_proxy::store::{SqliteStore, Store, StoreError, Tx};
use slapos_proxy::{start_background, ProxyConfig};

/// The callers of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Anonymous,
    OtherComputer,
    Computer,
    OtherPartition,
    Partition,
    Requester,
    OtherUser,
    Owner,
    Admin,
    Revoked,
    Expired,
}

const EVERYONE: [Who; 11] = [
    Who::Anonymous,
    Who::OtherComputer,
    Who::Computer,
    Who::OtherPartition,
    Who::Partition,
    Who::Requester,
    Who::OtherUser,
    Who::Owner,
    Who::Revoked,
    Who::Expired,
    // last: the administrator's calls change the most
    Who::Admin,
];

const C1: &str = "COMP-1";
const C2: &str = "COMP-2";
const SR: &str = "http://sr.example/software.cfg";
/// The partition object of the matrix: `child`, requested by `slappart0`.
const Q: &str = "slappart1";

/// What the policy says (independently of the code that enforces it).
fn allowed(rule: Rule, who: Who) -> bool {
    use Who::*;
    if who == Admin {
        return !matches!(rule, Rule::Token);
    }
    match rule {
        Rule::Public => true,
        Rule::Authenticated => who != Anonymous,
        Rule::People => matches!(who, Owner | OtherUser),
        Rule::Administrator | Rule::Token => false,
        Rule::Computer(_) | Rule::Hosted(..) => who == Computer,
        Rule::ComputerUser(_) => matches!(who, Computer | Owner),
        Rule::Supply(_) => who == Owner,
        Rule::Instance(..) | Rule::Guid(_) => matches!(who, Computer | Partition | Requester | Owner),
        Rule::GuidHost(_) => who == Computer,
        Rule::JsonRequest => matches!(who, Requester | Owner),
        Rule::Tree(_) => who == Owner,
        // the partition may not request itself (it would become its own requester)
        Rule::Request => matches!(who, Requester | Owner),
        // the matrix stores (PUT/POST); reading is public (tests/shacache.rs)
        Rule::Cache => matches!(who, Computer | OtherComputer),
        // the matrix names COMP-1 (open to alice)
        Rule::Accounting => matches!(who, Computer | Owner),
    }
}

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

/// One HTTPS caller.
struct Caller {
    agent: ureq::Agent,
    /// (computer, partition) it requests as, for partitions.
    partition: Option<(String, String)>,
}

struct Site {
    _dir: tempfile::TempDir,
    url: String,
    db: PathBuf,
    callers: BTreeMap<Who, Caller>,
    _master: slapos_proxy::Background,
}

fn agent(dir: &Path, name: &str, pair: Option<(&str, &str)>) -> ureq::Agent {
    let mut files = slap::tls::TlsFiles { ca_file: Some(dir.join("ca/ca.crt")), cert_file: None, key_file: None };
    if let Some((cert, key)) = pair {
        let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        files.cert_file = Some(c);
        files.key_file = Some(k);
    }
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(20)))
        .tls_config(files.config().unwrap())
        .build()
        .into()
}

impl Site {
    fn call(&self, who: Who, method: &str, path: &str, form: &[(&str, String)]) -> Result<(u16, String), String> {
        let c = &self.callers[&who];
        let body: String =
            form_urlencoded::Serializer::new(String::new()).extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str()))).finish();
        let url = format!("{}{path}", self.url);
        let mut resp = if method == "JSON" {
            // a JSON-RPC call: the body is the one "form" value
            let mut r = c.agent.post(&url).header("Content-Type", "application/json");
            if let Some((pc, pp)) = &c.partition {
                r = r.header("Authorization", &format!("X-SlapPartition computer_id={pc}, computer_partition_id={pp}"));
            }
            r.send(form.first().map(|(_, v)| v.as_str()).unwrap_or("{}"))
        } else if method == "GET" {
            c.agent.get(&format!("{url}?{body}")).call()
        } else if method == "PUT" {
            c.agent.put(&url).send(&body)
        } else {
            let mut r = c.agent.post(&url).header("Content-Type", "application/x-www-form-urlencoded");
            if let Some((pc, pp)) = &c.partition {
                r = r.header("Authorization", &format!("X-SlapPartition computer_id={pc}, computer_partition_id={pp}"));
            }
            r.send(&body)
        }
        .map_err(|e| e.to_string())?;
        Ok((resp.status().as_u16(), resp.body_mut().read_to_string().unwrap_or_default()))
    }

    fn ok(&self, who: Who, method: &str, path: &str, form: &[(&str, String)]) -> String {
        let (status, body) = self.call(who, method, path, form).unwrap();
        assert_eq!(status, 200, "{who:?} {path}: {body}");
        body
    }

    /// Every row of every table.
    fn dump(&self) -> String {
        let conn = rusqlite::Connection::open_with_flags(&self.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let mut tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        tables.sort();
        let mut out = String::new();
        for t in tables {
            let mut st = conn.prepare(&format!("SELECT * FROM \"{t}\" ORDER BY rowid")).unwrap();
            let n = st.column_count();
            let rows =
                st.query_map([], |r| Ok((0..n).map(|i| format!("{:?}", r.get_ref(i).unwrap())).collect::<Vec<_>>().join("|"))).unwrap();
            for row in rows {
                out.push_str(&format!("{t}: {}\n", row.unwrap()));
            }
        }
        out
    }
}

fn issue(store: &SqliteStore, auth: &Authority, subject: Subject, valid: Duration) -> (String, String) {
    let issued = store.transaction(|tx: &mut dyn Tx| auth.issue(tx, &subject, valid)).unwrap();
    (issued.certificate_pem, issued.key_pem)
}

/// A TLS master with two computers, alice's tree (`tree-a`: `slappart0` of
/// COMP-1 requested `child` = `slappart1`) and bob's tree on COMP-2.
fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("proxy.db");
    let config = ProxyConfig {
        computer_id: C1.into(),
        host: "127.0.0.1".into(),
        database: slapos_proxy::Database::sqlite(&db),
        security: Security::Tls { ca_dir: dir.path().join("ca"), files: None, validity: Validity::default() },
        shacache: Some(slapos_proxy::shacache::Options::under(dir.path())),
        ..Default::default()
    };
    let master = start_background(&config).unwrap();
    assert!(master.url().starts_with("https://"));
    let auth = Authority { ca: Ca::open_or_create(&dir.path().join("ca")).unwrap(), validity: Validity::default() };
    let store = SqliteStore::open(&db).unwrap();
    let year = Duration::from_secs(365 * 86400);
    let d = dir.path();
    let admin_cert = std::fs::read_to_string(d.join("ca/admin.crt")).unwrap();
    let admin_key = std::fs::read_to_string(d.join("ca/admin.key")).unwrap();
    let mut callers = BTreeMap::new();
    let mut add = |who: Who, subject: Option<Subject>, valid: Duration, partition: Option<(&str, &str)>| {
        let pair = subject.map(|s| issue(&store, &auth, s, valid));
        let a = agent(d, &format!("{who:?}"), pair.as_ref().map(|(c, k)| (c.as_str(), k.as_str())));
        callers.insert(who, Caller { agent: a, partition: partition.map(|(c, p)| (c.to_string(), p.to_string())) });
    };
    add(Who::Anonymous, None, year, None);
    add(Who::Computer, Some(Subject::Computer(C1.into())), year, None);
    add(Who::OtherComputer, Some(Subject::Computer(C2.into())), year, None);
    add(Who::Requester, Some(Subject::Partition { computer: C1.into(), partition: "slappart0".into() }), year, Some((C1, "slappart0")));
    add(Who::Partition, Some(Subject::Partition { computer: C1.into(), partition: Q.into() }), year, Some((C1, Q)));
    add(
        Who::OtherPartition,
        Some(Subject::Partition { computer: C2.into(), partition: "slappart0".into() }),
        year,
        Some((C2, "slappart0")),
    );
    add(Who::Owner, Some(Subject::User("alice".into())), year, None);
    add(Who::OtherUser, Some(Subject::User("bob".into())), year, None);
    add(Who::Expired, Some(Subject::Computer(C1.into())), Duration::ZERO, None);
    add(Who::Revoked, Some(Subject::Computer("COMP-R".into())), year, None);
    callers.insert(Who::Admin, Caller { agent: agent(d, "admin", Some((&admin_cert, &admin_key))), partition: None });
    store.transaction(|tx: &mut dyn Tx| tx.revoke_certificates("computer", "COMP-R", "", 1.0)).unwrap();
    let site = Site { url: master.url(), db, callers, _master: master, _dir: dir };
    // the site: computers formatted, alice may use COMP-1, bob COMP-2
    site.ok(Who::Computer, "POST", "/loadComputerConfigurationFromXML", &[("xml", format_report(C1, 4))]);
    site.ok(Who::OtherComputer, "POST", "/loadComputerConfigurationFromXML", &[("xml", format_report(C2, 2))]);
    for (c, u) in [(C1, "alice"), (C2, "bob")] {
        site.ok(Who::Admin, "POST", "/identity/grant", &[("kind", "computer".into()), ("reference", c.into()), ("user", u.into())]);
    }
    site.ok(Who::Owner, "POST", "/requestComputerPartition", &request_form("tree-a", None));
    site.ok(Who::Requester, "POST", "/requestComputerPartition", &request_form("child", Some((C1, "slappart0"))));
    site.ok(Who::OtherUser, "POST", "/requestComputerPartition", &request_form_on("tree-b", C2));
    site
}

fn request_form_on(title: &str, computer: &str) -> Vec<(&'static str, String)> {
    let mut f = request_form(title, None);
    f.retain(|(k, _)| *k != "filter_xml");
    f.push(("filter_xml", enc(&Value::Dict(BTreeMap::from([("computer_guid".to_string(), Value::str(computer))])))));
    f
}

fn request_form(title: &str, requester: Option<(&str, &str)>) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("software_release", SR.to_string()),
        ("software_type", "default".to_string()),
        ("partition_reference", title.to_string()),
        ("partition_parameter_xml", enc(&Value::Dict(BTreeMap::new()))),
        ("filter_xml", enc(&Value::Dict(BTreeMap::new()))),
        ("state", enc(&Value::str("started"))),
        ("shared_xml", enc(&Value::Bool(false))),
    ];
    if let Some((c, p)) = requester {
        f.push(("computer_id", c.into()));
        f.push(("computer_partition_id", p.into()));
    }
    f
}

/// The call of a route for a caller: (method, path, form).
fn call_of(route: &str, rule: Rule, who: Who, site: &Site) -> (&'static str, String, Vec<(&'static str, String)>) {
    let cp = |c: &str, p: &str| vec![("computer_id", c.to_string()), ("computer_partition_id", p.to_string())];
    if let Some(body) = json_call_of(route, who, site) {
        return ("JSON", route.to_string(), vec![("", body.to_string())]);
    }
    let path = |p: &str| route.replace("{title}", p).replace("{reference}", p);
    let post =
        !matches!(rule, Rule::Public | Rule::Authenticated | Rule::People | Rule::Tree(_) | Rule::ComputerUser(_) | Rule::Accounting)
            && ![
                "/getFullComputerInformation",
                "/getComputerInformation",
                "/registerComputerPartition",
                "/getComputerPartitionStatus",
                "/getComputerPartitionCertificate",
            ]
            .contains(&route);
    let method = if post { "POST" } else { "GET" };
    let form: Vec<(&'static str, String)> = match route {
        "/" | "/getRunId" | "/hateoas" => vec![],
        "/hateoas/" => vec![("mode", "search".into()), ("query", "portal_type:\"Instance Tree\" AND validation_state:validated".into())],
        "/getSoftwareReleaseListFromSoftwareProduct" => {
            vec![("software_product_reference", "p".into())]
        }
        "/loadComputerConfigurationFromXML" => vec![("xml", format_report(C1, 4))],
        "/buildingSoftwareRelease" | "/availableSoftwareRelease" | "/destroyedSoftwareRelease" => {
            vec![("url", SR.into()), ("computer_id", C1.into())]
        }
        "/softwareReleaseError" => vec![("url", SR.into()), ("computer_id", C1.into()), ("error_log", "e".into())],
        "/useComputer" => vec![("computer_id", C1.into()), ("use_string", "<journal/>".into())],
        "/computerBang" => vec![("computer_id", C1.into()), ("message", "m".into())],
        "/generateComputerCertificate" | "/revokeComputerCertificate" | "/getFullComputerInformation" | "/getComputerInformation" => {
            vec![("computer_id", C1.into())]
        }
        "/supplySupply" => vec![("url", SR.into()), ("computer_id", C1.into()), ("state", "available".into())],
        "/destroyedComputerPartition" => cp(C1, "slappart3"),
        "/getComputerPartitionCertificate" | "/startedComputerPartition" | "/stoppedComputerPartition" | "/getComputerPartitionStatus" => {
            cp(C1, Q)
        }
        "/registerComputerPartition" => vec![("computer_reference", C1.into()), ("computer_partition_reference", Q.into())],
        "/setComputerPartitionConnectionXml" => {
            let mut f = cp(C1, Q);
            f.push(("connection_xml", enc(&Value::Dict(BTreeMap::from([("url".to_string(), Value::str("http://x"))])))));
            f
        }
        "/softwareInstanceError" => [cp(C1, Q), vec![("error_log", "e".into())]].concat(),
        "/updateComputerPartitionRelatedInstanceList" => {
            [cp(C1, Q), vec![("instance_reference_xml", enc(&Value::List(Vec::new())))]].concat()
        }
        // a closed loopback port: allowed callers get the relay's 523
        "/http_proxy/{scheme}/{netloc}" => return ("GET", "/http_proxy/http/127.0.0.1:9".into(), vec![]),
        "/http_proxy/{scheme}/{netloc}/" => return ("GET", "/http_proxy/http/127.0.0.1:9/".into(), vec![]),
        "/http_proxy/{scheme}/{netloc}/{*path}" => return ("GET", "/http_proxy/http/127.0.0.1:9/x".into(), vec![]),
        "/softwareInstanceBang" => [cp(C1, Q), vec![("message", "m".into())]].concat(),
        "/softwareInstanceRename" => [cp(C1, Q), vec![("new_name", "child".into())]].concat(),
        "/requestComputerPartition" => match &site.callers[&who].partition {
            Some((c, p)) => request_form("child", Some((c, p))),
            None => request_form("tree-a", None),
        },
        "/hateoas/partitions/{title}" | "/hateoas/shared/{title}" => return ("GET", path("tree-a"), vec![]),
        "/hateoas/computers/{reference}" => return ("GET", path(C1), vec![]),
        "/identity/token" => vec![("kind", "computer".into()), ("name", "COMP-9".into())],
        "/identity/grant" => vec![("kind", "computer".into()), ("reference", C1.into()), ("user", "alice".into())],
        "/identity/revoke" => vec![("kind", "user".into()), ("name", "carol".into())],
        "/Person_requestComputer" => vec![("token", "0000".into()), ("title", "COMP-9".into())],
        "/Person_getCertificate" => vec![("token", "0000".into())],
        "/shacache/cache" | "/shacache/cache/" | "/shacache/update" => vec![],
        "/shacache/cache/{sha512}" => return ("PUT", route.replace("{sha512}", &"0".repeat(128)), vec![]),
        "/shacache/dir/{key}" => return ("PUT", route.replace("{key}", "k"), vec![]),
        "/api/events" => vec![("computer", C1.into()), ("since", "0".into())],
        "/api/usage" => vec![("scope", "computer".into()), ("id", C1.into()), ("bucket", "day".into())],
        "/json_rpc.json" | "/json_rpc_experimental.json" => vec![],
        // not supplied: allowed callers get 404, nothing fetched (a closed loopback port)
        "/api/schema" => vec![("software_release", "http://127.0.0.1:9/software.cfg".into())],
        "/panel/" | "/panel/instance" | "/panel/request" => return ("GET", route.to_string(), vec![]),
        "/panel/assets/{name}" => return ("GET", "/panel/assets/panel.css".into(), vec![]),
        "/panel/supply" => vec![("url", SR.into()), ("computer", C1.into()), ("state", "available".into())],
        "/panel/instance/state" => vec![("computer", C1.into()), ("partition", Q.into()), ("state", "stopped".into())],
        "/panel/instance/parameters" => vec![("computer", C1.into()), ("partition", Q.into()), ("parameters", "{}".into())],
        other => panic!("route {other} has a rule but no call in the matrix: add one"),
    };
    (method, route.to_string(), form)
}

/// The JSON body of a JSON-RPC route for a caller (None: not one).
fn json_call_of(route: &str, who: Who, site: &Site) -> Option<serde_json::Value> {
    use serde_json::json;
    let guid = json!({"instance_guid": "child___tree-a___0"});
    let with = |more: serde_json::Value| {
        let mut g = guid.clone();
        g.as_object_mut().unwrap().extend(more.as_object().unwrap().clone());
        g
    };
    let computer = json!({"computer_guid": C1});
    Some(match route.strip_prefix("/slapos.")? {
        "get.v0.hateoas_url" | "allDocs.v0.instance_tree_list" | "allDocs.WIP.compute_node_list" => json!({}),
        "remove.v0.compute_node_certificate"
        | "post.v0.compute_node_certificate"
        | "allDocs.v0.compute_node_instance_list"
        | "allDocs.v0.compute_node_software_installation_list"
        | "get.v0.compute_node_status" => computer,
        "post.v0.compute_node_usage" => json!({"computer_guid": C1, "tioxml": "<journal/>"}),
        "put.v0.compute_node_bang" => json!({"computer_guid": C1, "message": "m"}),
        "put.v0.compute_node_format" => json!({"computer_guid": C1, "compute_partition_list":
            (0..4).map(|i| json!({"partition_id": format!("slappart{i}"), "ip_list": []})).collect::<Vec<_>>()}),
        "put.v0.software_installation_reported_state" => {
            json!({"computer_guid": C1, "software_release_uri": SR, "reported_state": "building"})
        }
        "put.v0.software_installation_error" => json!({"computer_guid": C1, "software_release_uri": SR, "message": "e"}),
        "post.v0.software_installation" => json!({"computer_guid": C1, "software_release_uri": SR}),
        "get.v0.compute_partition" => json!({"computer_guid": C1, "compute_partition_id": Q}),
        "get.v0.software_instance" | "get.v0.software_instance_certificate" | "allDocs.v0.instance_node_instance_list" => guid,
        "put.v0.software_instance_connection_parameter" => with(json!({"connection_parameter_dict": {"url": "http://x"}})),
        "put.v0.software_instance_error" => with(json!({"message": "e"})),
        "put.v0.software_instance_bang" => with(json!({"message": "m"})),
        // the same title: the objects of the next calls stay
        "put.v0.software_instance_title" => with(json!({"title": "child"})),
        "put.v0.software_instance_reported_state" => with(json!({"reported_state": "started"})),
        "post.v0.software_instance" => match &site.callers[&who].partition {
            Some(_) => json!({"title": "child", "software_release_uri": SR, "software_type": "default"}),
            None => json!({"title": "tree-a", "software_release_uri": SR, "software_type": "default"}),
        },
        "get.v0.instance_tree" => json!({"title": "tree-a"}),
        other => panic!("JSON-RPC route {other} has a rule but no call in the matrix: add one"),
    })
}

#[test]
fn every_route_answers_every_caller_as_the_rule_table_says() {
    let site = site();
    // the expired certificate's end is now in the past
    std::thread::sleep(Duration::from_millis(2100));
    // revocation last: it takes the computer's certificate away
    let mut routes: Vec<(&str, Rule)> = RULES.to_vec();
    routes.sort_by_key(|(r, _)| *r == "/revokeComputerCertificate");
    let mut checked = 0;
    let mut failures = Vec::new();
    for (route, rule) in routes {
        for who in EVERYONE {
            let (method, path, form) = call_of(route, rule, who, &site);
            let before = site.dump();
            let result = site.call(who, method, &path, &form);
            let after = site.dump();
            checked += 1;
            let expect = match who {
                Who::Expired => "TLS refusal",
                Who::Revoked => "403",
                _ if allowed(rule, who) => "not 403",
                _ => "403",
            };
            let good = match (&result, expect) {
                (Err(_), "TLS refusal") => true,
                (Ok((403, body)), "403") => body.contains("refused") && before == after,
                // a JSON-RPC call allowed must succeed (its body is right)
                (Ok((s, _)), "not 403") => *s != 403 && (method != "JSON" || *s == 200),
                _ => false,
            };
            if !good {
                failures.push(format!(
                    "{method} {path} as {who:?}: expected {expect}, got {result:?}{}",
                    if before != after { " (the database changed)" } else { "" }
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {checked} calls wrong:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(checked, RULES.len() * EVERYONE.len());
}

#[test]
fn every_route_of_the_sources_has_a_rule() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut missing = Vec::new();
    // every source file, in subdirectories too (src/store/)
    let mut dirs = vec![src];
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    assert!(files.iter().any(|f| f.ends_with("http.rs")), "the routes' source not found in {files:?}");
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        for part in text.split(".route(\"").skip(1) {
            let route = &part[..part.find('"').unwrap()];
            if slapos_proxy::rules::rule_of(route).is_none() {
                missing.push(route.to_string());
            }
        }
    }
    assert!(missing.is_empty(), "routes without a rule in proxy::rules::RULES: {missing:?}");
}

#[test]
fn a_refused_request_is_answered_with_who_and_what() {
    let site = site();
    let (status, body) = site
        .call(
            Who::OtherUser,
            "POST",
            "/setComputerPartitionConnectionXml",
            &[("computer_id", C1.into()), ("computer_partition_id", Q.into()), ("connection_xml", enc(&Value::Dict(BTreeMap::new())))],
        )
        .unwrap();
    assert_eq!(status, 403);
    assert!(
        body.contains("user bob refused on /setComputerPartitionConnectionXml: may not act on partition &#x27;slappart1&#x27;")
            || body.contains("user bob refused on /setComputerPartitionConnectionXml: may not act on partition 'slappart1' of 'COMP-1'"),
        "{body}"
    );
    let tx_count = SqliteStore::open(&site.db)
        .unwrap()
        .read(|tx: &mut dyn Tx| -> Result<usize, StoreError> { Ok(tx.partitions(None)?.len()) })
        .unwrap();
    assert_eq!(tx_count, 6);
}

#[test]
fn a_person_sees_a_partition_through_its_tree_only_what_that_tree_did() {
    let site = site();
    let cp = |p: &str| vec![("computer_id", C1.to_string()), ("computer_partition_id", p.to_string())];
    // `child` (slappart1) starts in tree-a, whose root is then renamed tree-x
    site.ok(Who::Computer, "POST", "/startedComputerPartition", &cp(Q));
    site.ok(Who::Computer, "POST", "/softwareInstanceRename", &[cp("slappart0"), vec![("new_name", "tree-x".into())]].concat());
    site.ok(Who::Computer, "POST", "/stoppedComputerPartition", &cp(Q));
    let journal = format!("<journal><transaction><movement><resource>cpu</resource><reference>{Q}</reference><quantity>2</quantity></movement></transaction></journal>");
    site.ok(Who::Computer, "POST", "/useComputer", &[("computer_id", C1.into()), ("use_string", journal)]);
    site.ok(Who::Admin, "POST", "/identity/grant", &[("kind", "tree".into()), ("reference", "tree-x".into()), ("user", "bob".into())]);
    let states = |who: Who| -> Vec<String> {
        let body = site.ok(who, "GET", "/api/events", &[("computer", C1.into()), ("partition", Q.into())]);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["events"].as_array().unwrap().iter().map(|e| format!("{} {}", e["state"].as_str().unwrap_or("-"), e["tree"])).collect()
    };
    assert_eq!(states(Who::Admin), ["stopped \"tree-x\"", "started \"tree-a\""]);
    assert_eq!(states(Who::Owner), ["stopped \"tree-x\"", "started \"tree-a\""], "alice may use COMP-1: all of it");
    assert_eq!(states(Who::OtherUser), ["stopped \"tree-x\""], "bob sees slappart1 through tree-x only");
    let usage = site.ok(Who::OtherUser, "GET", "/api/usage", &[("scope", "partition".into()), ("id", format!("{C1}/{Q}"))]);
    assert!(usage.contains("\"quantity\":2.0"), "{usage}");
    for form in [vec![("computer", C1.to_string())], vec![("tree", "tree-a".to_string())], vec![]] {
        let (status, body) = site.call(Who::OtherUser, "GET", "/api/events", &form).unwrap();
        assert_eq!(status, 403, "{form:?}: {body}");
    }
    let (status, _) = site.call(Who::Computer, "GET", "/api/usage", &[("scope", "computer".into()), ("id", C2.into())]).unwrap();
    assert_eq!(status, 403, "a computer sees only itself");
}

#[test]
fn a_user_lists_only_their_trees_and_computers_through_the_json_api() {
    let site = site();
    let list = |who: Who, route: &str| {
        let (status, body) = site.call(who, "JSON", route, &[("", "{}".to_string())]).unwrap();
        assert_eq!(status, 200, "{who:?} {route}: {body}");
        body
    };
    assert_eq!(list(Who::Owner, "/slapos.allDocs.v0.instance_tree_list"), "{\"result_list\": [{\"title\": \"tree-a\"}]}");
    assert_eq!(list(Who::OtherUser, "/slapos.allDocs.v0.instance_tree_list"), "{\"result_list\": [{\"title\": \"tree-b\"}]}");
    assert_eq!(list(Who::Owner, "/slapos.allDocs.WIP.compute_node_list"), "{\"result_list\": [{\"computer_guid\": \"COMP-1\"}]}");
    // the administrator sees everything
    // a refusal is a JSON error document there
    let (status, body) = site
        .call(
            Who::Owner,
            "JSON",
            "/slapos.put.v0.compute_node_bang",
            &[("", "{\"computer_guid\": \"COMP-1\", \"message\": \"m\"}".to_string())],
        )
        .unwrap();
    assert_eq!(status, 403);
    assert!(
        body.starts_with("{\"status\": 403, \"type\": \"Forbidden\", \"title\": \"user alice refused on /slapos.put.v0.compute_node_bang"),
        "{body}"
    );
    assert_eq!(
        list(Who::Admin, "/slapos.allDocs.v0.instance_tree_list"),
        "{\"result_list\": [{\"title\": \"tree-a\"}, {\"title\": \"tree-b\"}]}"
    );
}
