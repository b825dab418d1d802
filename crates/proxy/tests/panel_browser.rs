//! The web panel in a real browser (headless Chromium, `needs_browser`):
//! our master with a seeded site (hostile names included); every page
//! renders without a browser error, fits 375 px, escapes what partitions
//! wrote; the schema form validates; the actions work; the lists update
//! without a reload. Screenshots go to `target/panel-screenshots/`.

use std::collections::BTreeMap;
use std::time::Duration;

use fantoccini::Locator;
use slap::marshal::Value;
use slapos_proxy::master::{self, InstanceRequest, ReportedPartition, Site};
use slapos_proxy::store::{ComputerRow, SqliteStore, Store, Tx};
use slapos_proxy::{start_background, ProxyConfig};
use test_support::browser::Browser;

const COMPUTER: &str = "COMP-0";
const SR: &str = "https://lab.example/software/e2e/software.cfg";
const BROKEN_SR: &str = "https://lab.example/software/broken/software.cfg";
/// Not supplied: `/api/schema` answers 404 without fetching anything.
const UNSUPPLIED_SR: &str = "https://lab.example/software/unsupplied/software.cfg";
const HOSTILE: &str = "<script>alert('title')</script><img src=x onerror=alert(1)>";

fn request(tx: &mut dyn Tx, title: &str, params: &[(&str, &str)], authorization: Option<(String, String)>) -> (String, String) {
    let site = Site { computer_id: COMPUTER.into(), ..Default::default() };
    let req = InstanceRequest {
        software_release: SR.into(),
        title: title.into(),
        parameters: params.iter().map(|(k, v)| (k.to_string(), Value::str(*v))).collect(),
        authorization: authorization.clone(),
        ..Default::default()
    };
    master::request(tx, &site, &req).unwrap();
    let tree = match &authorization {
        Some(_) => HOSTILE.to_string(),
        None => String::new(),
    };
    let p = tx.partition_by_title(title, &tree).unwrap().unwrap_or_else(|| panic!("{title} not allocated"));
    (p.computer_reference, p.reference)
}

/// The seeded site: a computer, two software releases (one failed), a tree
/// with a hostile title, connection parameters and a child, a tree in error.
fn seed(tx: &mut dyn Tx, schema_sr: &str) -> Vec<(String, String)> {
    let computer = ComputerRow { reference: COMPUTER.into(), address: Some("10.0.0.1".into()), netmask: Some("255.255.255.0".into()) };
    let partitions: Vec<ReportedPartition> = (0..5)
        .map(|i| ReportedPartition {
            reference: format!("slappart{i}"),
            addresses: vec![(format!("slappart{i}"), format!("10.0.0.{}", 10 + i), "255.255.255.0".into())],
        })
        .collect();
    master::load_format_report(tx, &computer, &partitions).unwrap();
    master::supply(tx, SR, COMPUTER, "available").unwrap();
    master::supply(tx, BROKEN_SR, COMPUTER, "available").unwrap();
    master::supply(tx, schema_sr, COMPUTER, "available").unwrap();
    master::report(tx, "software", COMPUTER, SR, "available", None).unwrap();
    master::report(tx, "software", COMPUTER, BROKEN_SR, "error", Some("Installing foo.\nError: <b>download</b> failed")).unwrap();
    let root = request(tx, HOSTILE, &[("name", "<i>x</i>")], None);
    let conn = BTreeMap::from([
        ("url".to_string(), Value::str("https://example.com/?a=1&b=<b>")),
        ("evil".to_string(), Value::str("javascript:alert(1)")),
        ("html".to_string(), Value::str("<img src=x onerror=alert(2)>")),
    ]);
    master::set_connection(tx, &root.0, &root.1, &conn, None).unwrap();
    master::report(tx, "partition", &root.0, &root.1, "started", None).unwrap();
    let journal = format!(
        "<?xml version=\"1.0\"?><journal><transaction type=\"Sale Packing List\"><title>Resource consumptions</title>\
         <reference>{COMPUTER}</reference><movement><resource>CPU</resource><title>CPU Usage</title><reference>{}</reference>\
         <quantity>42.0</quantity><price>0.0</price></movement></transaction></journal>",
        root.1
    );
    master::use_computer(tx, COMPUTER, &journal).unwrap();
    let child = request(tx, "child", &[], Some(root.clone()));
    master::report(tx, "partition", &child.0, &child.1, "started", None).unwrap();
    let broken = request(tx, "broken", &[], None);
    let log = (1..=60).map(|i| format!("line {i} <script>alert(3)</script>")).collect::<Vec<_>>().join("\n");
    master::report(tx, "partition", &broken.0, &broken.1, "error", Some(&log)).unwrap();
    vec![root, child, broken]
}

/// Browser errors we expect: the 404 of `/api/schema` for a release that
/// publishes no schema (the panel then asks for JSON).
fn expected(message: &str) -> bool {
    message.contains("/api/schema") && message.contains("404")
}

async fn visit(b: &Browser, url: &str, shot: &str) {
    b.client.goto(url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
    assert!(
        b.wait_until("document.readyState === 'complete' && window.slapPanel && window.htmx", Duration::from_secs(10)).await,
        "{url}: not loaded"
    );
    // the usage chart's fetch answered
    assert!(b.wait_until("!document.querySelector('[data-usage] p.muted') || document.querySelector('[data-usage]').textContent.indexOf('JavaScript') < 0", Duration::from_secs(10)).await);
    let (scroll, window) = b.widths().await;
    b.screenshot(shot).await;
    assert!(scroll <= 375 && window <= 375, "{url}: {scroll} px wide in a {window} px window (horizontal scroll)");
    let errors = b.errors(expected).await;
    assert!(errors.is_empty(), "{url}: browser errors: {errors:?}");
    // nothing a partition wrote became markup
    let injected = b
        .client
        .execute("return document.querySelectorAll('script:not([src]), img[src=x], a[href^=javascript]').length;", vec![])
        .await
        .unwrap();
    assert_eq!(injected, 0, "{url}: hostile text became markup");
}

fn instance_url(base: &str, (c, p): &(String, String)) -> String {
    format!("{base}/panel/instance?computer={c}&partition={p}")
}

async fn pages(b: &Browser, base: &str, seeded: &[(String, String)]) {
    visit(b, &format!("{base}/"), "01-site").await;
    assert!(b.client.current_url().await.unwrap().path() == "/panel/", "/ redirects to the panel");
    let text = b.client.find(Locator::Css("main")).await.unwrap().text().await.unwrap();
    assert!(text.contains(HOSTILE), "the hostile title is shown as text");
    assert!(text.find("broken").unwrap() < text.find(HOSTILE).unwrap(), "the tree in error comes first");
    assert!(text.contains("3 partition(s) used, 2 free"), "{text}");
    // the browser's log is read: an error there fails the test
    b.client.execute("console.error('probe of the log');", vec![]).await.unwrap();
    assert!(b.errors(expected).await.iter().any(|e| e.contains("probe of the log")), "the browser's log cannot be read");
    visit(b, &instance_url(base, &seeded[0]), "02-instance").await;
    let links: Vec<String> = b
        .client
        .execute("return Array.from(document.querySelectorAll('#connection a')).map(a => a.href);", vec![])
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(links, vec!["https://example.com/?a=1&b=%3Cb%3E".to_string()], "only the https URL is a link");
    assert!(b.client.find(Locator::LinkText("child")).await.is_ok(), "the child is listed");
    assert!(b.wait_until("document.querySelector('.usage .uplot')", Duration::from_secs(10)).await, "no usage chart");
    let title = b.client.find(Locator::Css(".usage .u-title")).await.unwrap().text().await.unwrap();
    assert!(title.starts_with("CPU"), "the chart of the CPU usage: {title}");
    b.client.execute("document.querySelector('.usage').scrollIntoView();", vec![]).await.unwrap();
    b.screenshot("02-instance-usage").await;
    visit(b, &instance_url(base, &seeded[1]), "03-child-instance").await;
    visit(b, &instance_url(base, &seeded[2]), "04-instance-in-error").await;
    let log = b.client.find(Locator::Css("#last-error pre")).await.unwrap().text().await.unwrap();
    assert!(log.contains("line 60 <script>") && !log.contains("line 20 "), "the log's tail, as text: {log}");
}

/// A schema as `/api/schema` answers it (TEST FIXTURE: the schema branch
/// serves the real ones).
const SCHEMA_FIXTURE: &str = r#"{"type":"object","required":["name","size"],"properties":{
  "name":{"type":"string","title":"Name","description":"<b>shown as text</b>","minLength":2},
  "size":{"type":"integer","minimum":1,"maximum":10,"default":3},
  "ratio":{"type":"number"},
  "debug":{"type":"boolean","default":false},
  "flavour":{"enum":["small","large"],"default":"large"},
  "extra":{"type":"object"}}}"#;

async fn schema_form(b: &Browser, base: &str) {
    let url = format!("{base}/panel/request?software_release={UNSUPPLIED_SR}&title=from-form&computer={COMPUTER}");
    visit(b, &url, "05-request-form").await;
    assert!(b.wait_until("document.getElementById('schema-status').textContent !== ''", Duration::from_secs(10)).await);
    let render = format!("return slapPanel.renderSchemaForm(document.getElementById('schema-fields'), {SCHEMA_FIXTURE});");
    assert_eq!(b.client.execute(&render, vec![]).await.unwrap(), 6);
    b.client.execute("document.getElementById('parameters-label').hidden = true;", vec![]).await.unwrap();
    let set = |name: &str, value: &str| {
        format!("document.querySelector('[name=\"schema:{name}\"]').value = {};", serde_json::to_string(value).unwrap())
    };
    let collect = "return slapPanel.collect(document.getElementById('schema-fields'));";
    b.client.execute(&(set("name", "a") + &set("size", "11") + &set("ratio", "x") + &set("extra", "{")), vec![]).await.unwrap();
    let r = b.client.execute(collect, vec![]).await.unwrap();
    assert_eq!(r["ok"], false);
    for field in ["name", "size", "extra"] {
        assert!(r["errors"][field].is_string(), "{field} refused: {r}");
    }
    b.screenshot("06-request-form-invalid").await;
    // refused before sending: still on the form
    b.client.find(Locator::Id("request-submit")).await.unwrap().click().await.unwrap();
    assert!(b.client.current_url().await.unwrap().path() == "/panel/request");
    b.client.execute(&(set("name", "web") + &set("size", "4") + &set("ratio", "") + &set("extra", r#"{"k":[1]}"#)), vec![]).await.unwrap();
    let r = b.client.execute(collect, vec![]).await.unwrap();
    assert_eq!(
        r["parameters"],
        serde_json::json!({"name": "web", "size": 4, "debug": false, "flavour": "large", "extra": {"k": [1]}}),
        "{r}"
    );
    b.client.find(Locator::Id("request-submit")).await.unwrap().click().await.unwrap();
    assert!(b.wait_until("location.pathname === '/panel/instance'", Duration::from_secs(10)).await, "the request lands on its instance");
    let text = b.client.find(Locator::Css("main")).await.unwrap().text().await.unwrap();
    assert!(text.contains("Requested.") && text.contains("from-form") && text.contains("web"), "{text}");
}

/// The form generated from the schema `/api/schema` serves for a supplied
/// release: its fields, a `$ref` resolved, bounds enforced, the
/// serialisation of each software type.
async fn served_schema(b: &Browser, base: &str, sr: &str) {
    let q = form_urlencoded::Serializer::new(String::new()).append_pair("software_release", sr).append_pair("title", "typed").finish();
    visit(b, &format!("{base}/panel/request?{q}"), "07-request-form-from-schema").await;
    let status = "document.getElementById('schema-status').textContent";
    assert!(
        b.wait_until(&format!("{status}.startsWith('3 parameter')"), Duration::from_secs(10)).await,
        "no fields from the served schema"
    );
    let kinds = b
        .client
        .execute(
            "return Array.from(document.querySelectorAll('#schema-fields .field')).map(f => f.dataset.name + ':' + f.dataset.kind);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(kinds, serde_json::json!(["name:string", "port:integer", "mode:enum"]));
    let max = b.client.execute("return document.querySelector('[name=\"schema:port\"]').max;", vec![]).await.unwrap();
    assert_eq!(max, "65535", "the $ref'd bounds");
    assert!(b.wait_until("document.getElementById('parameters-label').hidden", Duration::from_secs(2)).await, "the JSON field is hidden");
    b.client.execute("document.querySelector('[name=\"schema:port\"]').value = '70000';", vec![]).await.unwrap();
    b.client.find(Locator::Id("request-submit")).await.unwrap().click().await.unwrap();
    let refused = "document.querySelector('[data-name=port] .field-error').textContent === 'at most 65535'";
    assert!(b.wait_until(refused, Duration::from_secs(5)).await, "an out-of-bounds port is refused before sending");
    assert_eq!(b.client.current_url().await.unwrap().path(), "/panel/request", "not sent");
    b.screenshot("08-request-form-from-schema-invalid").await;
    // the json type serialises as JSON in XML
    b.client
        .execute("const t = document.getElementById('software_type'); t.value = 'json'; t.dispatchEvent(new Event('change'));", vec![])
        .await
        .unwrap();
    assert!(b.wait_until("document.getElementById('serialisation').value === 'json-in-xml'", Duration::from_secs(10)).await);
}

async fn actions(b: &Browser) {
    let state = "document.getElementById('requested-state').textContent.trim()";
    b.client.find(Locator::Id("action-stopped")).await.unwrap().click().await.unwrap();
    assert!(b.wait_until(&format!("{state} === 'stopped'"), Duration::from_secs(10)).await, "stopped");
    b.screenshot("09-instance-stopped").await;
    // destroying needs the confirmation ticked: the browser refuses the form
    b.client.find(Locator::Id("action-destroy")).await.unwrap().click().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(b.wait_until(&format!("{state} === 'stopped'"), Duration::from_secs(2)).await, "not destroyed without confirmation");
    b.client.find(Locator::Css("#destroy-form input[name=confirm]")).await.unwrap().click().await.unwrap();
    b.client.find(Locator::Id("action-destroy")).await.unwrap().click().await.unwrap();
    assert!(b.wait_until(&format!("{state} === 'destroyed'"), Duration::from_secs(10)).await, "destroyed");
    b.screenshot("10-instance-destroyed").await;
}

/// The site page follows a node's report without being reloaded.
async fn live(b: &Browser, base: &str, broken: &(String, String)) {
    visit(b, &format!("{base}/panel/"), "11-site-before-update").await;
    b.client.execute("window.notReloaded = true;", vec![]).await.unwrap();
    let form = [("computer_id", broken.0.as_str()), ("computer_partition_id", broken.1.as_str())];
    ureq::post(&format!("{base}/startedComputerPartition")).send_form(form).unwrap();
    let fixed = "window.notReloaded && !document.querySelector('section.tree.error')";
    assert!(b.wait_until(fixed, Duration::from_secs(15)).await, "the error went away without a reload");
    b.screenshot("12-site-after-update").await;
    let errors = b.errors(expected).await;
    assert!(errors.is_empty(), "browser errors: {errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium"]
async fn needs_browser_panel_pages_forms_and_actions() {
    test_support::browser::require_browser();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("proxy.db");
    // a local release publishing a schema (software.cfg.json, per-type
    // schemas, a $ref): slap::schema's test fixture
    let release = dir.path().join("schema-sr");
    std::fs::create_dir(&release).unwrap();
    let fixture = test_support::repo_root().join("crates/slap/tests/data/schema");
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, release.join(path.file_name().unwrap())).unwrap();
    }
    let schema_sr = release.join("software.cfg").to_str().unwrap().to_string();
    let seeded = SqliteStore::open(&db)
        .unwrap()
        .transaction(|tx| -> Result<_, slapos_proxy::store::StoreError> { Ok(seed(tx, &schema_sr)) })
        .unwrap();
    let config = ProxyConfig { computer_id: COMPUTER.into(), database: slapos_proxy::Database::sqlite(&db), ..Default::default() };
    let master = tokio::task::spawn_blocking(move || start_background(&config).unwrap()).await.unwrap();
    let base = master.url();
    let b = Browser::start(375, 812).await;
    // a wide screen first (the README's screenshot), then a phone's
    b.client.set_window_size(1280, 1000).await.unwrap();
    b.client.goto(&format!("{base}/panel/")).await.unwrap();
    b.screenshot("00-site-wide").await;
    b.client.set_window_size(375, 812).await.unwrap();
    pages(&b, &base, &seeded).await;
    schema_form(&b, &base).await;
    actions(&b).await;
    served_schema(&b, &base, &schema_sr).await;
    live(&b, &base, &seeded[2]).await;
    b.close().await;
    tokio::task::spawn_blocking(move || drop(master)).await.unwrap();
}
