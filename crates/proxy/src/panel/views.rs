//! The panel's pages, as maud templates (checked at compile time; maud
//! escapes every interpolated value, so text from partitions and users is
//! never markup). Only http(s) URLs become links ([`link`]).

use std::collections::BTreeMap;

use maud::{html, Markup, DOCTYPE};

use super::data::{Computer, Detail, Instance, Overview, Software, Tree};
use crate::accounting::{Event, EventKind};
use crate::store::ReportRow;

/// Seconds between two refreshes of a page's live part (htmx polling).
const REFRESH: &str = "every 5s";

/// The last lines of an error log shown on an instance page.
const LOG_TAIL_LINES: usize = 40;

/// A flash line after an action: (is it an error, text).
pub type Flash = Option<(bool, String)>;

/// The frame of every page: head, navigation, flash message.
pub fn page(title: &str, flash: &Flash, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // no inline scripts or styles from htmx (the CSP allows none)
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false}"#;
                title { (title) " · SlapOS master" }
                link rel="icon" href="data:,";
                link rel="stylesheet" href="/panel/assets/uPlot.min.css";
                link rel="stylesheet" href="/panel/assets/panel.css";
                script src="/panel/assets/htmx.min.js" defer {}
                script src="/panel/assets/uPlot.iife.min.js" defer {}
                script src="/panel/assets/panel.js" defer {}
            }
            body {
                header {
                    nav {
                        a href="/panel/" { "SlapOS master" }
                        a href="/panel/request" { "Request an instance" }
                    }
                }
                main {
                    @if let Some((error, text)) = flash {
                        p.flash.error[*error] role="status" { (text) }
                    }
                    (body)
                }
            }
        }
    }
}

/// `url` as a link when it is an http or https URL, else as text.
pub fn link(url: &str) -> Markup {
    let safe = url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
    html! {
        @if safe { a.url href=(url) rel="noopener noreferrer" target="_blank" { (url) } } @else { span.url { (url) } }
    }
}

/// Seconds since the epoch as a UTC date and time.
pub fn when(t: f64) -> String {
    chrono::DateTime::from_timestamp(t as i64, 0).map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_default()
}

fn state(word: &str) -> Markup {
    html! { span class={ "state s-" (word.chars().filter(char::is_ascii_alphanumeric).collect::<String>()) } { (word) } }
}

fn reported(r: &Option<ReportRow>) -> Markup {
    html! {
        @match r {
            Some(r) => { (state(&r.state)) " " small.when { (when(r.time)) } },
            None => { span.muted { "no report yet" } },
        }
    }
}

/// The query string of an instance page.
pub fn instance_href(computer: &str, partition: &str) -> String {
    let q = form_urlencoded::Serializer::new(String::new()).append_pair("computer", computer).append_pair("partition", partition).finish();
    format!("/panel/instance?{q}")
}

/// The site at a glance (its `#live` part polled).
pub fn overview(o: &Overview, flash: &Flash) -> Markup {
    let body = html! {
        div #live hx-get="/panel/" hx-select="#live" hx-target="this" hx-swap="outerHTML" hx-trigger=(REFRESH) {
            h1 { "Instance trees" }
            @if o.trees.is_empty() { p.muted { "No instance yet: supply a software release below, then request an instance." } }
            @for t in &o.trees { (tree(t)) }
            h1 { "Computers" }
            @for c in &o.computers { (computer(c)) }
        }
        (supply_form(&o.computers))
    };
    page("Site", flash, body)
}

fn tree(t: &Tree) -> Markup {
    html! {
        section.tree.error[t.in_error()] {
            h2 { (t.title) }
            div.scroll { table {
                thead { tr { th { "Instance" } th { "Requested" } th { "Reported" } th { "Software release" } } }
                tbody { @for i in &t.instances { (instance_row(i)) } }
            } }
        }
    }
}

fn instance_row(i: &Instance) -> Markup {
    html! {
        tr.error[i.in_error()] {
            td { a href=(instance_href(&i.row.computer_reference, &i.row.reference)) { (i.title()) } br; small { (i.row.reference) " on " (i.row.computer_reference) } }
            td { (state(&i.row.requested_state)) }
            td { (reported(&i.reported)) }
            td.url { (i.row.software_release.as_deref().unwrap_or("")) " " small { (i.row.software_type.as_deref().unwrap_or("")) } }
        }
    }
}

fn computer(c: &Computer) -> Markup {
    html! {
        section.computer {
            h2 { (c.reference) }
            p {
                (c.used) " partition(s) used, " (c.free) " free"
                @if let Some(a) = &c.address { " · " (a) }
                " · last contact: "
                @match c.last_contact { Some(t) => (when(t)), None => span.muted { "never" } }
            }
            @if c.software.is_empty() { p.muted { "No software release supplied." } } @else {
                div.scroll { table {
                    thead { tr { th { "Software release" } th { "Requested" } th { "Build" } th {} } }
                    tbody { @for s in &c.software { (software_row(s)) } }
                } }
            }
        }
    }
}

fn software_row(s: &Software) -> Markup {
    html! {
        tr.error[s.reported.as_ref().is_some_and(|r| r.state == "error")] {
            td.url { (s.url) }
            td { (state(&s.requested_state)) }
            td { (reported(&s.reported)) }
            td { @if s.requested_state != "destroyed" {
                form method="post" action="/panel/supply" {
                    input type="hidden" name="url" value=(s.url);
                    input type="hidden" name="computer" value=(s.computer);
                    input type="hidden" name="state" value="destroyed";
                    button.small type="submit" { "Remove" }
                }
                a.button.small href={ "/panel/request?" (form_urlencoded::Serializer::new(String::new()).append_pair("software_release", &s.url).finish()) } { "Request" }
            } }
        }
    }
}

fn supply_form(computers: &[Computer]) -> Markup {
    html! {
        section.card {
            h2 { "Supply a software release" }
            form #supply-form method="post" action="/panel/supply" {
                label { "Software release URL" input name="url" type="text" required placeholder="https://…/software.cfg"; }
                label { "Computer" select name="computer" { @for c in computers { option value=(c.reference) { (c.reference) } } } }
                input type="hidden" name="state" value="available";
                button type="submit" { "Supply" }
            }
        }
    }
}

fn dict(d: &BTreeMap<String, String>, links: bool) -> Markup {
    html! {
        @if d.is_empty() { p.muted { "none" } } @else {
            dl.dict { @for (k, v) in d { dt { (k) } dd { @if links { (link(v)) } @else { span.value { (v) } } } } }
        }
    }
}

/// An instance's page (its `#live` part polled).
pub fn instance(d: &Detail, flash: &Flash) -> Markup {
    let i = &d.instance;
    let href = instance_href(&i.row.computer_reference, &i.row.reference);
    let body = html! {
        p { a href="/panel/" { "← site" } " · tree " strong { (i.tree()) } }
        h1 { (i.title()) }
        div #live hx-get=(href) hx-select="#live" hx-target="this" hx-swap="outerHTML" hx-trigger=(REFRESH) {
            dl.facts {
                dt { "Requested" } dd #requested-state { (state(&i.row.requested_state)) }
                dt { "Reported" } dd #reported-state { (reported(&i.reported)) }
                dt { "Partition" } dd { (i.row.reference) " on " (i.row.computer_reference) }
                dt { "Software release" } dd.url { (i.row.software_release.as_deref().unwrap_or("")) }
                dt { "Software type" } dd { (i.row.software_type.as_deref().unwrap_or("")) }
                @for (iface, addr) in &d.addresses { dt { "Address" } dd { (addr) " " small { (iface) } } }
            }
            (errors(&d.timeline))
            h2 { "Connection parameters" }
            div #connection { (dict(&d.connection, true)) }
            h2 { "Promises" }
            (promises(&d.timeline))
            h2 { "Children" }
            @if d.children.is_empty() { p.muted { "none" } } @else {
                ul { @for c in &d.children { li { a href=(instance_href(&c.row.computer_reference, &c.row.reference)) { (c.title()) } " " (reported(&c.reported)) } } }
            }
            h2 { "Timeline" }
            (timeline(&d.timeline))
        }
        h2 { "Parameters" }
        (dict(&d.parameters, false))
        h2 { "Usage" }
        div.usage data-usage={ "/api/usage?" (form_urlencoded::Serializer::new(String::new()).append_pair("scope", "partition").append_pair("id", &format!("{}/{}", i.row.computer_reference, i.row.reference)).append_pair("bucket", "hour").finish()) } {
            p.muted { "Usage charts need JavaScript." }
        }
        @if i.is_root() { (actions(d)) } @else { p.muted { "Requested by another instance: change it through its requester." } }
    };
    page(i.title(), flash, body)
}

/// The newest error or promise failure, unless a later report says the
/// instance is fine again.
fn last_error(timeline: &[Event]) -> Option<&Event> {
    let newest = timeline.iter().find(|e| e.kind != EventKind::Bang)?;
    matches!(newest.kind, EventKind::Error | EventKind::Promise).then_some(newest)
}

fn errors(timeline: &[Event]) -> Markup {
    html! {
        @if let Some(e) = last_error(timeline) {
            section.card.error #last-error {
                h2 { @if e.kind == EventKind::Promise { "Promise failed" } @else { "Error" } } small.when { (when(e.time)) }
                pre.log { (log_tail(e.message.as_deref().unwrap_or(""))) }
            }
        }
    }
}

fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// The promises' result at the node's last run: failing (a promise event
/// newest), passing (a `started` state newest), unknown otherwise.
fn promises(timeline: &[Event]) -> Markup {
    let newest = timeline.iter().find(|e| matches!(e.kind, EventKind::State | EventKind::Error | EventKind::Promise));
    html! {
        @match newest {
            Some(e) if e.kind == EventKind::Promise => p.error { "failing at " (when(e.time)) " (see above)" },
            Some(e) if e.kind == EventKind::Error => p.error { "not checked: the instance failed (see above)" },
            Some(e) if e.state.as_deref() == Some("started") => p { "all passed at the last run (" (when(e.time)) ")" },
            _ => p.muted { "not checked yet" },
        }
    }
}

fn timeline(events: &[Event]) -> Markup {
    html! {
        @if events.is_empty() { p.muted { "no report yet" } } @else {
            ol.timeline { @for e in events {
                li { small.when { (when(e.time)) } " "
                    @if let Some(s) = &e.state { (state(s)) } @else { (state(e.kind.name())) }
                    @if e.kind != EventKind::State { " " small { (e.kind.name()) } }
                    @if let Some(m) = e.message.as_deref().and_then(|m| m.lines().last()) { " " span.msg { (m) } } }
            } }
        }
    }
}

fn parameters_json(d: &Detail) -> (String, &'static str) {
    if let (1, Some(inner)) = (d.parameters.len(), d.parameters.get("_")) {
        return (inner.clone(), "json-in-xml");
    }
    (serde_json::to_string_pretty(&d.parameters).unwrap_or_default(), "xml")
}

fn actions(d: &Detail) -> Markup {
    let r = &d.instance.row;
    let (params, serialisation) = parameters_json(d);
    let hidden = html! { input type="hidden" name="computer" value=(r.computer_reference); input type="hidden" name="partition" value=(r.reference); };
    html! {
        section.card #actions {
            h2 { "Actions" }
            div.buttons {
                @for s in ["started", "stopped"] {
                    form method="post" action="/panel/instance/state" {
                        (hidden) input type="hidden" name="state" value=(s);
                        button #{ "action-" (s) } type="submit" disabled[r.requested_state == s] { @if s == "started" { "Start" } @else { "Stop" } }
                    }
                }
            }
            form #destroy-form method="post" action="/panel/instance/state" {
                (hidden) input type="hidden" name="state" value="destroyed";
                label.inline { input type="checkbox" name="confirm" value="yes" required; " I want to destroy this instance and its data" }
                button.danger #action-destroy type="submit" { "Destroy" }
            }
            form #parameters-form method="post" action="/panel/instance/parameters" {
                (hidden) input type="hidden" name="serialisation" value=(serialisation);
                label { "Parameters (JSON)" textarea name="parameters" rows="6" { (params) } }
                button type="submit" { "Change parameters" }
            }
        }
    }
}

/// The request form: software release, type, title, computer and the
/// parameters as JSON, which `panel.js` replaces by fields generated from
/// the software release's schema (`/api/schema`) when it has one.
pub fn request_form(urls: &[String], computers: &[String], chosen: &BTreeMap<String, String>, flash: &Flash) -> Markup {
    let v = |k: &str| chosen.get(k).cloned().unwrap_or_default();
    let body = html! {
        h1 { "Request an instance" }
        form #request-form method="post" action="/panel/request" {
            label { "Software release URL" input #software_release name="software_release" type="text" required list="supplied" value=(v("software_release")); }
            datalist #supplied { @for u in urls { option value=(u) {} } }
            label { "Software type" input #software_type name="software_type" type="text" list="software-types" value=(v("software_type")) placeholder="default"; }
            datalist #software-types {}
            p #schema-status.muted {}
            label { "Title" input #title name="title" type="text" required value=(v("title")); }
            label { "Computer" select name="computer" { @for c in computers { option value=(c) selected[v("computer") == *c] { (c) } } } }
            input #serialisation type="hidden" name="serialisation" value="xml";
            div #schema-fields {}
            label #parameters-label { "Parameters (JSON object)" textarea #parameters name="parameters" rows="6" { (v("parameters")) } }
            button #request-submit type="submit" { "Request" }
        }
    };
    page("Request", flash, body)
}

/// A page for an unknown instance.
pub fn not_found(what: &str) -> Markup {
    page("Not found", &Some((true, what.to_string())), html! { p { a href="/panel/" { "Back to the site" } } })
}

/// The body of the `/` redirect, as the Python proxy (Werkzeug) words it.
pub fn redirect_body(to: &str) -> String {
    let escaped = html! { (to) }.into_string();
    format!(
        "<!doctype html>\n<html lang=en>\n<title>Redirecting...</title>\n<h1>Redirecting...</h1>\n<p>You should be redirected automatically to the target URL: <a href=\"{escaped}\">{escaped}</a>. If not, click the link.\n"
    )
}
