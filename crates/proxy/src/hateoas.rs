//! The HATEOAS routes (`slap-protocol.md` §10) that `slapos service
//! list|info` and `slapos computer list|info` use when `master_rest_url`
//! points at `/hateoas/`: the same JSON documents as the Python proxy, plus
//! (beyond it) the last state each node reported.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Extension;
use axum::Router;
use serde_json::{json, Map, Value as J};
use slap::instance_xml::dict_to_xml;
use slap::marshal::{self, Value};

use crate::app::{error_page, App};
use crate::master::MasterError;
use crate::rules::Identity;
use crate::store::{PartitionRow, ReportRow, Store, Tx};

type Shared = Arc<App>;

const SERVICE_LIST: &str = "portal_type:\"Instance Tree\" AND validation_state:validated";
const COMPUTER_LIST: &str = "portal_type:\"Compute Node\" AND validation_state:validated";

fn json_response(v: J) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn partition_json(p: &PartitionRow, report: Option<&ReportRow>) -> J {
    let mut m = Map::new();
    m.insert("computer_reference".into(), json!(p.computer_reference));
    m.insert("connection_xml".into(), json!(p.connection_xml));
    m.insert("partition_reference".into(), json!(p.partition_reference));
    m.insert("reference".into(), json!(p.reference));
    m.insert("relative_url".into(), json!(format!("/hateoas/partitions/{}", p.partition_reference.as_deref().unwrap_or(""))));
    m.insert("requested_by".into(), json!(p.requested_by));
    m.insert("requested_state".into(), json!(p.requested_state));
    m.insert("requester_id".into(), json!(p.requester_id));
    m.insert("slap_state".into(), json!(p.slap_state));
    m.insert("slave_instance_list".into(), json!(p.slave_instance_list));
    m.insert("software_release".into(), json!(p.software_release));
    m.insert("software_type".into(), json!(p.software_type));
    m.insert("timestamp".into(), json!(p.timestamp));
    m.insert("title".into(), json!(p.partition_reference));
    m.insert("url_string".into(), json!(p.software_release));
    m.insert("xml".into(), json!(p.xml));
    if let Some(r) = report {
        m.insert("reported_state".into(), json!(r.state));
        m.insert("reported_message".into(), json!(r.message));
        m.insert("reported_at".into(), json!(r.time));
    }
    J::Object(m)
}

fn last_report<'a>(reports: &'a [ReportRow], p: &PartitionRow) -> Option<&'a ReportRow> {
    reports.iter().find(|r| r.kind == "partition" && r.computer_reference == p.computer_reference && r.reference == p.reference)
}

/// The SlapOS master's `news` of an instance tree (`InstanceTree_getNewsDict`):
/// one access status per instance of the tree, made from what the nodes
/// last reported, with the master's texts (`#access Instance correctly
/// started`, `#error while instanciating: …`, `#error bang called`, `#error
/// no data found for …`), which `slapos service info` turns into a status.
fn tree_news(root: &PartitionRow, tree: &[PartitionRow], reports: &[ReportRow]) -> J {
    match root.requested_state.as_str() {
        "stopped" => json!({"instance": [], "is_stopped": 1}),
        "destroyed" => json!({"instance": [], "is_destroyed": 1}),
        _ => json!({"instance": tree.iter().map(|p| instance_news(p, last_report(reports, p))).collect::<Vec<_>>()}),
    }
}

/// One instance's access status, as the master's `getAccessStatus`.
fn instance_news(p: &PartitionRow, report: Option<&ReportRow>) -> J {
    let reference = p.partition_reference.as_deref().unwrap_or(&p.reference);
    match p.requested_state.as_str() {
        "stopped" => {
            return json!({"user": "SlapOS Master", "text": format!("#nodata is an stopped instance {reference}"), "is_stopped": 1})
        }
        "destroyed" => {
            return json!({"user": "SlapOS Master", "text": format!("#nodata is an destroyed instance {reference}"), "is_destroyed": 1})
        }
        _ => {}
    }
    let date = |t: f64| chrono::DateTime::from_timestamp(t as i64, 0).unwrap_or_default().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let Some(r) = report else {
        let now = date(chrono::Utc::now().timestamp() as f64);
        return json!({"user": "SlapOS Master", "created_at": now, "since": now, "state": "", "text": format!("#error no data found for {reference}"),
                      "portal_type": "Software Instance", "reference": reference});
    };
    let (text, state) = match r.state.as_str() {
        "started" | "stopped" => (format!("#access Instance correctly {}", r.state), r.state.as_str()),
        "error" => {
            let log = r.message.as_deref().unwrap_or("");
            let cut = log.char_indices().rev().nth(79).map(|(i, _)| i).unwrap_or(0);
            (format!("#error while instanciating: {}", &log[cut..]), "")
        }
        "bang" => ("#error bang called".to_string(), ""),
        other => (format!("#building instance {other}"), ""),
    };
    json!({"user": r.computer_reference, "created_at": date(r.time), "since": date(r.time), "state": state, "text": text,
           "portal_type": "Software Instance", "reference": reference})
}

/// A shared instance as its host lists it: its dict, the host partition,
/// and the shared instance's own connection XML.
type SharedEntry = (std::collections::BTreeMap<String, Value>, PartitionRow, Option<String>);

/// The entry of a shared instance hosted somewhere: (its dict in the host's list, host).
fn shared_entry(tx: &mut dyn Tx, reference: &str) -> Result<Option<SharedEntry>, MasterError> {
    let Some(slave) = tx.slaves()?.into_iter().find(|s| s.reference == reference) else {
        return Ok(None);
    };
    let Some(host_ref) = &slave.hosted_by else {
        return Ok(None);
    };
    let Some(host) =
        tx.partitions(None)?.into_iter().find(|p| &p.reference == host_ref && p.computer_reference == slave.computer_reference)
    else {
        return Ok(None);
    };
    let list = host.slave_instance_list.as_deref().and_then(|t| marshal::decode(t).ok());
    let entry = list
        .as_ref()
        .and_then(Value::as_seq)
        .and_then(|items| {
            items.iter().filter_map(Value::as_dict).find(|d| d.get("slave_reference").and_then(Value::as_str) == Some(reference))
        })
        .cloned();
    Ok(entry.map(|e| (e, host, slave.connection_xml)))
}

/// Whether `viewer` (None: everyone is shown everything: the local cloud,
/// the administrator) may see the object (`tree` title or `computer` id).
fn visible(tx: &mut dyn Tx, viewer: Option<&str>, kind: &str, reference: &str) -> Result<bool, MasterError> {
    Ok(match viewer {
        None => true,
        Some(user) => crate::rules::may_use(tx, kind, reference, user)?,
    })
}

/// The answer of a search: services and computers, only those `viewer`
/// may see.
fn search(tx: &mut dyn Tx, query: &str, viewer: Option<&str>) -> Result<Option<Vec<J>>, MasterError> {
    let quoted = |rest: &str| -> Option<String> {
        let inner = rest.strip_prefix('"')?.strip_suffix('"')?;
        (!inner.contains('"') || inner.contains("\\\"")).then(|| inner.to_string())
    };
    let services = |tx: &mut dyn Tx, title: Option<&str>| -> Result<Vec<J>, MasterError> {
        let reports = tx.last_reports()?;
        let mut out: Vec<J> = Vec::new();
        for p in tx.partitions(None)? {
            if p.slap_state == "free" || !p.requested_by.is_empty() || (title.is_some() && p.partition_reference.as_deref() != title) {
                continue;
            }
            if visible(tx, viewer, "tree", p.partition_reference.as_deref().unwrap_or(""))? {
                out.push(partition_json(&p, last_report(&reports, &p)));
            }
        }
        if title.is_some() && !out.is_empty() {
            return Ok(out);
        }
        for s in tx.slaves()? {
            let Some(name) = s.reference.strip_prefix('_') else {
                continue;
            };
            if title.is_some_and(|t| t != name) || !visible(tx, viewer, "tree", name)? {
                continue;
            }
            if let Some((_, host, _)) = shared_entry(tx, &s.reference)? {
                out.push(json!({
                    "url_string": host.software_release,
                    "title": name,
                    "relative_url": format!("/hateoas/shared/{name}"),
                }));
            }
        }
        Ok(out)
    };
    let computers = |tx: &mut dyn Tx, reference: Option<&str>| -> Result<Vec<J>, MasterError> {
        let mut out = Vec::new();
        for c in tx.computers()? {
            if reference.is_some_and(|r| r != c.reference) || !visible(tx, viewer, "computer", &c.reference)? {
                continue;
            }
            out.push(json!({
                "reference": c.reference, "address": c.address, "netmask": c.netmask,
                "title": c.reference, "relative_url": format!("/hateoas/computers/{}", c.reference),
            }));
        }
        Ok(out)
    };
    if query == SERVICE_LIST {
        return Ok(Some(services(tx, None)?));
    }
    if let Some(rest) = query.strip_prefix(&format!("{SERVICE_LIST} AND title:=")) {
        return Ok(match quoted(rest) {
            Some(t) => Some(services(tx, Some(&t))?),
            None => None,
        });
    }
    if query == COMPUTER_LIST {
        return Ok(Some(computers(tx, None)?));
    }
    if let Some(rest) = query.strip_prefix(&format!("{COMPUTER_LIST} AND reference:=")) {
        return Ok(match quoted(rest) {
            Some(r) => Some(computers(tx, Some(&r))?),
            None => None,
        });
    }
    Ok(None)
}

fn service_document(kw: &Map<String, J>) -> J {
    let field = |key: &str, ty: &str, name: &str| json!({"type": ty, "key": format!("field_{key}"), "default": kw.get(name).cloned().unwrap_or(J::Null)});
    let mut view = Map::new();
    view.insert("form_id".into(), json!({"type": "StringField", "key": "form_id", "default": "InstanceTree_viewAsHateoas"}));
    view.insert("my_reference".into(), field("my_reference", "StringField", "reference"));
    view.insert("my_slap_state".into(), field("my_slap_state", "StringField", "requested_state"));
    view.insert("my_text_content".into(), field("my_text_content", "StringField", "xml"));
    view.insert("my_connection_parameter_list".into(), field("my_connection_parameter_list", "StringField", "connection_xml"));
    view.insert("my_url_string".into(), field("my_url_string", "StringField", "software_release"));
    view.insert("my_source_reference".into(), field("my_source_reference", "StringField", "software_type"));
    view.insert("my_root_slave".into(), field("my_root_slave", "IntegerField", "shared"));
    // as the SlapOS master (the Python proxy has none): status of each instance
    if kw.contains_key("news") {
        view.insert("my_news".into(), field("my_news", "StringField", "news"));
    }
    // beyond the Python proxy: what the node last reported
    if kw.contains_key("reported_state") {
        view.insert("my_reported_state".into(), field("my_reported_state", "StringField", "reported_state"));
        view.insert("my_reported_message".into(), field("my_reported_message", "StringField", "reported_message"));
        view.insert("my_reported_at".into(), field("my_reported_at", "FloatField", "reported_at"));
    }
    json!({"_embedded": {"_view": J::Object(view)}, "_links": {"type": {"name": "Instance Tree"}}})
}

async fn in_tx<R: Send + 'static>(
    app: &Shared,
    f: impl FnMut(&mut dyn Tx) -> Result<R, MasterError> + Send + 'static,
) -> Result<R, MasterError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || app.store.read(f)).await.map_err(|e| MasterError::Unknown(format!("internal failure: {e}")))?
}

/// `/hateoas/`: the links, a search (filtered for a user: their trees and
/// the computers open to them), a traversal.
async fn root(State(app): State<Shared>, who: Option<Extension<Identity>>, headers: HeaderMap, uri: Uri) -> Response {
    let viewer = match who.map(|Extension(w)| w) {
        Some(Identity::User(u)) => Some(u),
        _ => None,
    };
    let args: Vec<(String, String)> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect();
    let arg = |k: &str| args.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match arg("mode").as_deref() {
        None => {
            // links as Flask builds them behind ProxyFix (X-Forwarded-Proto, -Prefix)
            let mut o = crate::relay::Origin::from_headers(&headers);
            if app.identity.is_some() && !headers.contains_key("x-forwarded-proto") {
                // the master serves HTTPS itself: its links are https too
                o.scheme = "https".into();
            }
            let host = if o.host.is_empty() { "localhost" } else { &o.host };
            let base = format!("{}://{host}{}", o.scheme, o.prefix);
            json_response(json!({"_links": {
                "raw_search": {"href": format!("{base}/hateoas/?mode=search&query={{query}}&select_list={{select_list}}")},
                "traverse": {"href": format!("{base}/hateoas/?mode=traverse&relative_url={{relative_url}}&view={{view}}")},
            }}))
        }
        Some("search") => {
            let Some(query) = arg("query") else {
                return error_page(StatusCode::BAD_REQUEST, "missing argument 'query'");
            };
            let q = query.clone();
            match in_tx(&app, move |tx| search(tx, &q, viewer.as_deref())).await {
                Ok(Some(contents)) => json_response(json!({"_embedded": {"contents": contents}})),
                Ok(None) => error_page(StatusCode::BAD_REQUEST, &format!("Unhandled query: {query}")),
                Err(e) => e.into_response(),
            }
        }
        Some("traverse") => match arg("relative_url") {
            Some(u) if u.starts_with('/') => Redirect::to(&u).into_response(),
            _ => error_page(StatusCode::BAD_REQUEST, "missing or invalid argument 'relative_url'"),
        },
        Some(m) => error_page(StatusCode::BAD_REQUEST, &format!("Unhandled mode: {m}")),
    }
}

async fn partition(State(app): State<Shared>, Path(title): Path<String>) -> Response {
    let r = in_tx(&app, move |tx| {
        let reports = tx.last_reports()?;
        let p = tx.partitions(None)?.into_iter().find(|p| p.partition_reference.as_deref() == Some(title.as_str()));
        let Some(p) = p else { return Ok(None) };
        let tree: Vec<PartitionRow> = std::iter::once(p.clone()).chain(tx.partitions_requested_by(&title)?).collect();
        let mut kw = match partition_json(&p, last_report(&reports, &p)) {
            J::Object(m) => m,
            _ => Map::new(),
        };
        kw.insert("reference".into(), json!(p.partition_reference));
        kw.insert("shared".into(), json!(0));
        kw.insert("news".into(), tree_news(&p, &tree, &reports));
        Ok(Some(service_document(&kw)))
    })
    .await;
    match r {
        Ok(Some(doc)) => json_response(doc),
        Ok(None) => error_page(StatusCode::NOT_FOUND, "no such instance"),
        Err(e) => e.into_response(),
    }
}

async fn shared(State(app): State<Shared>, Path(title): Path<String>) -> Response {
    let r = in_tx(&app, move |tx| {
        let Some((mut entry, host, connection_xml)) = shared_entry(tx, &format!("_{title}"))? else {
            return Ok(None);
        };
        entry.remove("slave_title");
        entry.remove("slave_reference");
        let software_type = entry.remove("slap_software_type").and_then(|v| v.as_str().map(str::to_string));
        let mut kw = Map::new();
        kw.insert("reference".into(), json!(title));
        kw.insert("requested_state".into(), json!("unused"));
        kw.insert("xml".into(), json!(dict_to_xml(&entry)));
        kw.insert("connection_xml".into(), json!(connection_xml));
        kw.insert("software_release".into(), json!(host.software_release));
        kw.insert("software_type".into(), json!(software_type));
        kw.insert("shared".into(), json!(1));
        kw.insert("news".into(), json!({"instance": [], "is_slave": 1}));
        Ok(Some(service_document(&kw)))
    })
    .await;
    match r {
        Ok(Some(doc)) => json_response(doc),
        Ok(None) => error_page(StatusCode::NOT_FOUND, "no such shared instance"),
        Err(e) => e.into_response(),
    }
}

async fn computer(State(app): State<Shared>, Path(reference): Path<String>) -> Response {
    let r = in_tx(&app, move |tx| tx.computer(&reference).map_err(MasterError::from)).await;
    match r {
        Ok(Some(c)) => json_response(json!({
            "_embedded": {"_view": {
                "form_id": {"type": "StringField", "key": "computer", "default": c.reference},
                "my_reference": {"type": "StringField", "key": "reference", "default": c.reference},
                "my_title": {"type": "StringField", "key": "reference", "default": c.reference},
            }},
            "_links": {"type": {"name": "Computer"}},
        })),
        Ok(None) => error_page(StatusCode::NOT_FOUND, "no such computer"),
        Err(e) => e.into_response(),
    }
}

/// The `/hateoas/` routes (the documents `slapos service|computer list|info` read).
pub fn router() -> Router<Shared> {
    Router::new()
        .route("/hateoas", get(root))
        .route("/hateoas/", get(root))
        .route("/hateoas/partitions/{title}", get(partition))
        .route("/hateoas/shared/{title}", get(shared))
        .route("/hateoas/computers/{reference}", get(computer))
}
