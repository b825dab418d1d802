//! `needs_root_e2e_panel_all_ours`: the life cycle of an instance driven from
//! the web panel in a headless Chromium (Debian's `chromium` and
//! `chromium-driver`), inside the test's namespace, against our master and
//! our node: supply the release and request the instance through the panel's
//! forms, run the node, see the instance `started` with its URL, stop it and
//! see the state change, destroy it (confirmed) and see it go. Screenshots
//! under `target/panel-screenshots/e2e-*.png`.

use std::time::Duration;

use fantoccini::Locator;
use test_support::browser::Browser;

use super::{exits, in_netns, Mode, Side, Site, COMPUTER_ID, GREETING, INSTANCE, MASTER_PORT};

const PANEL: &str = "http://127.0.0.1:8765/panel/";
const WAIT: Duration = Duration::from_secs(30);

/// Runs `steps` with a fresh browser inside the site's namespace (the
/// master's loopback); the browser is gone when it returns.
fn with_browser(site: &Site, steps: impl AsyncFnOnce(&Browser) + Send) {
    in_netns(&site.ns, || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let b = Browser::start(375, 812).await;
            steps(&b).await;
            // the e2e release publishes no schema: /api/schema answers 404
            let errors = b.errors(|m| m.contains("/api/schema") && m.contains("404")).await;
            assert!(errors.is_empty(), "[panel] browser errors: {errors:?}");
            b.close().await;
        })
    })
}

async fn text(b: &Browser, css: &str) -> String {
    b.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("[panel] no {css}: {e}")).text().await.unwrap()
}

async fn fill(b: &Browser, css: &str, value: &str) {
    let e = b.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("[panel] no {css}: {e}"));
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

/// Supply and request through the forms; the request's parameters through
/// the fields generated from the release's schema when it has one, as JSON
/// otherwise.
async fn supply_and_request(b: &Browser, sr: &str) {
    b.client.goto(PANEL).await.unwrap();
    fill(b, "#supply-form input[name=url]", sr).await;
    b.client.find(Locator::Css("#supply-form select[name=computer]")).await.unwrap().select_by_value(COMPUTER_ID).await.unwrap();
    b.client.find(Locator::Css("#supply-form button")).await.unwrap().click().await.unwrap();
    assert!(
        b.wait_until("document.querySelector('.flash') && !document.querySelector('.flash.error')", WAIT).await,
        "[panel] supply failed"
    );
    assert!(text(b, "main").await.contains(sr), "[panel] the supplied release is not listed");
    b.screenshot("e2e-01-supplied").await;
    let q = format!("software_release={}", sr.replace('/', "%2F"));
    b.client.goto(&format!("{PANEL}request?{q}")).await.unwrap();
    assert!(b.wait_until("document.getElementById('schema-status').textContent !== ''", WAIT).await, "[panel] no schema answer");
    fill(b, "#title", INSTANCE).await;
    let generated = b.client.find(Locator::Css("[name='schema:greeting']")).await;
    match generated {
        Ok(field) => {
            field.clear().await.unwrap();
            field.send_keys(GREETING).await.unwrap();
        }
        Err(_) => fill(b, "#parameters", &format!("{{\"greeting\": \"{GREETING}\"}}")).await,
    }
    b.screenshot("e2e-02-request-form").await;
    b.client.find(Locator::Id("request-submit")).await.unwrap().click().await.unwrap();
    assert!(b.wait_until("location.pathname === '/panel/instance'", WAIT).await, "[panel] the request did not land on its instance");
    b.screenshot("e2e-03-requested").await;
}

const REQUESTED: &str = "document.getElementById('requested-state').textContent.trim()";
const REPORTED: &str = "document.getElementById('reported-state').textContent.trim()";

/// The instance page of `INSTANCE`, from the site page.
async fn open_instance(b: &Browser) {
    b.client.goto(PANEL).await.unwrap();
    b.client.find(Locator::LinkText(INSTANCE)).await.expect("[panel] the instance is not listed").click().await.unwrap();
    assert!(b.wait_until("location.pathname === '/panel/instance'", WAIT).await);
}

async fn started_with_url(b: &Browser) {
    open_instance(b).await;
    assert!(b.wait_until(&format!("{REPORTED}.startsWith('started')"), WAIT).await, "[panel] the instance is not reported started");
    let url = b.client.find(Locator::Css("#connection a")).await.expect("[panel] no clickable URL published").attr("href").await.unwrap();
    assert!(url.is_some_and(|u| u.starts_with("http://")), "[panel] the published URL is not a link");
    b.screenshot("e2e-04-started").await;
    b.client.find(Locator::Id("action-stopped")).await.unwrap().click().await.unwrap();
    assert!(b.wait_until(&format!("{REQUESTED} === 'stopped'"), WAIT).await, "[panel] stop was not requested");
}

async fn stopped_then_destroyed(b: &Browser) {
    open_instance(b).await;
    assert!(b.wait_until(&format!("{REPORTED}.startsWith('stopped')"), WAIT).await, "[panel] the instance is not reported stopped");
    b.screenshot("e2e-05-stopped").await;
    b.client.find(Locator::Css("#destroy-form input[name=confirm]")).await.unwrap().click().await.unwrap();
    b.client.find(Locator::Id("action-destroy")).await.unwrap().click().await.unwrap();
    assert!(b.wait_until(&format!("{REQUESTED} === 'destroyed'"), WAIT).await, "[panel] destruction was not requested");
    b.screenshot("e2e-06-destroying").await;
}

async fn gone(b: &Browser) {
    b.client.goto(PANEL).await.unwrap();
    assert!(b.wait_until("document.readyState === 'complete'", WAIT).await);
    assert!(b.client.find(Locator::LinkText(INSTANCE)).await.is_err(), "[panel] the destroyed instance is still listed");
    b.screenshot("e2e-07-destroyed").await;
}

#[test]
#[ignore = "needs root"]
fn needs_root_e2e_panel_all_ours() {
    test_support::browser::require_browser();
    let mut site = Site::new(Mode { name: "panel", tag: 'p', master: Side::Ours, node: Side::Ours, tls: false, cache: false });
    assert_eq!(PANEL, format!("http://127.0.0.1:{MASTER_PORT}/panel/"));
    site.node("node-format", exits(1, 0), &["format", "--now", "-v"]);
    let sr = site.sr_url();
    with_browser(&site, async |b| supply_and_request(b, &sr).await);
    site.node("node-software", exits(6, 0), &["software", "--now"]);
    site.node("node-instance", exits(13, 0), &["instance", "--now"]);
    with_browser(&site, async |b| started_with_url(b).await);
    site.node("node-instance-stop", exits(13, 0), &["instance", "--now"]);
    with_browser(&site, async |b| stopped_then_destroyed(b).await);
    site.node("node-instance-destroy", exits(31, 0), &["instance", "--now"]);
    site.node("node-report-destroy", exits(31, 0), &["report", "--now"]);
    with_browser(&site, async |b| gone(b).await);
    site.print_timings();
}
