//! The web panel (`/panel/`): the site at a glance, an instance's page, and
//! forms to supply, request, start, stop and destroy, which call the same
//! master logic as SLAP ([`crate::master`]).
//!
//! Server-rendered HTML ([`maud`] templates, compiled in) with htmx for the
//! live parts (polling) and uPlot for usage charts; the three files and
//! ours are embedded in the binary ([`ASSETS`]), so nothing is built or
//! downloaded at run time. Lists and forms work without JavaScript;
//! `panel.js` adds the forms generated from a software release's JSON
//! schema (`/api/schema`) and the charts (`/api/usage`).

mod data;
mod views;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use slap::marshal::Value;

use crate::app::App;
use crate::master::{self, InstanceRequest, MasterError};
use crate::store::{Store, Tx};

type Shared = Arc<App>;

/// The embedded files: (name, content type, bytes).
pub const ASSETS: &[(&str, &str, &[u8])] = &[
    ("htmx.min.js", "text/javascript; charset=utf-8", include_bytes!("../../assets/panel/htmx.min.js")),
    ("uPlot.iife.min.js", "text/javascript; charset=utf-8", include_bytes!("../../assets/panel/uPlot.iife.min.js")),
    ("uPlot.min.css", "text/css; charset=utf-8", include_bytes!("../../assets/panel/uPlot.min.css")),
    ("panel.css", "text/css; charset=utf-8", include_bytes!("../../assets/panel/panel.css")),
    ("panel.js", "text/javascript; charset=utf-8", include_bytes!("../../assets/panel/panel.js")),
];

/// What the panel's pages may load: our own files only, no inline script
/// (uPlot and htmx set inline styles).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The routes of the panel (each has a rule in [`crate::rules::RULES`]).
pub fn router() -> Router<Shared> {
    Router::new()
        .route("/panel/", get(overview))
        .route("/panel/instance", get(instance))
        .route("/panel/request", get(request_page).post(request))
        .route("/panel/supply", post(supply))
        .route("/panel/instance/state", post(change_state))
        .route("/panel/instance/parameters", post(change_parameters))
        .route("/panel/assets/{name}", get(asset))
}

/// `GET /`: to the panel, as the Python proxy (302, Werkzeug's body).
pub async fn index() -> Response {
    let mut r = html_response(views::redirect_body("/panel/"));
    *r.status_mut() = StatusCode::FOUND;
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/panel/"));
    r
}

fn html_response(body: String) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn page(markup: maud::Markup) -> Response {
    let mut r = html_response(markup.into_string());
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, bytes)) => {
            ([(header::CONTENT_TYPE, *kind), (header::CACHE_CONTROL, "max-age=3600"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")], *bytes)
                .into_response()
        }
        None => crate::app::error_page(StatusCode::NOT_FOUND, "no such panel file"),
    }
}

/// The query or form fields, last value of each name.
fn fields(text: &[u8]) -> BTreeMap<String, String> {
    form_urlencoded::parse(text).into_owned().collect()
}

fn flash(q: &BTreeMap<String, String>) -> views::Flash {
    q.get("error").map(|e| (true, e.clone())).or_else(|| q.get("done").map(|d| (false, d.clone())))
}

/// Runs `f` on the store on the blocking pool (a read-only transaction
/// unless `write`).
async fn store<R: Send + 'static>(
    app: &Shared,
    write: bool,
    f: impl Fn(&mut dyn Tx, &App) -> Result<R, MasterError> + Send + 'static,
) -> Result<R, MasterError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || if write { app.store.transaction(|t| f(t, &app)) } else { app.store.read(|t| f(t, &app)) })
        .await
        .map_err(|e| MasterError::Unknown(format!("internal failure: {e}")))?
}

async fn overview(State(app): State<Shared>, RawQuery(q): RawQuery) -> Response {
    let q = fields(q.unwrap_or_default().as_bytes());
    match store(&app, false, |t, app| Ok(data::overview(t, &app.site.computer_id)?)).await {
        Ok(o) => page(views::overview(&o, &flash(&q))),
        Err(e) => e.into_response(),
    }
}

async fn instance(State(app): State<Shared>, RawQuery(q): RawQuery) -> Response {
    let q = fields(q.unwrap_or_default().as_bytes());
    let (c, p) = (q.get("computer").cloned().unwrap_or_default(), q.get("partition").cloned().unwrap_or_default());
    match store(&app, false, move |t, _| Ok(data::detail(t, &c, &p)?)).await {
        Ok(Some(d)) => page(views::instance(&d, &flash(&q))),
        Ok(None) => {
            let mut r = page(views::not_found("No instance in that partition."));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
        Err(e) => e.into_response(),
    }
}

async fn request_page(State(app): State<Shared>, RawQuery(q): RawQuery) -> Response {
    let q = fields(q.unwrap_or_default().as_bytes());
    let r = store(&app, false, |t, app| Ok((data::supplied_urls(t)?, data::computer_references(t, &app.site.computer_id)?))).await;
    match r {
        Ok((urls, computers)) => page(views::request_form(&urls, &computers, &q, &flash(&q))),
        Err(e) => e.into_response(),
    }
}

/// After an action: back to `to` (a panel path) with a message (303).
fn back(to: &str, result: Result<String, MasterError>) -> Response {
    let (key, text) = match result {
        Ok(done) => ("done", done),
        Err(e) => ("error", e.to_string()),
    };
    let sep = if to.contains('?') { '&' } else { '?' };
    let q = form_urlencoded::Serializer::new(String::new()).append_pair(key, &text).finish();
    let location = format!("{to}{sep}{q}");
    match HeaderValue::from_str(&location) {
        Ok(v) => (StatusCode::SEE_OTHER, [(header::LOCATION, v)]).into_response(),
        Err(_) => crate::app::error_page(StatusCode::BAD_REQUEST, "bad redirect"),
    }
}

fn require<'a>(f: &'a BTreeMap<String, String>, key: &str) -> Result<&'a str, MasterError> {
    f.get(key).map(String::as_str).filter(|v| !v.is_empty()).ok_or_else(|| MasterError::BadRequest(format!("missing field '{key}'")))
}

/// `POST /panel/supply` (url, computer, state): `supplySupply`.
async fn supply(State(app): State<Shared>, body: Bytes) -> Response {
    let f = fields(&body);
    let r = async {
        let (url, c, s) = (require(&f, "url")?.to_string(), require(&f, "computer")?.to_string(), require(&f, "state")?.to_string());
        store(&app, true, move |t, _| master::supply(t, &url, &c, &s)).await?;
        Ok(if f.get("state").is_some_and(|s| s == "destroyed") { "Removal requested." } else { "Supplied." }.to_string())
    };
    back("/panel/", r.await)
}

/// The parameters of a form (a JSON object) as instance parameters:
/// `json-in-xml` keeps the document whole under `_` (as SlapOS serialises
/// it), `xml` makes each value a string (non-strings as JSON).
pub fn parameters_of(text: &str, serialisation: &str) -> Result<BTreeMap<String, Value>, MasterError> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| MasterError::BadRequest(format!("parameters: not JSON: {e}")))?;
    let serde_json::Value::Object(map) = doc else {
        return Err(MasterError::BadRequest("parameters: a JSON object is needed".into()));
    };
    if serialisation == "json-in-xml" {
        return Ok(BTreeMap::from([("_".to_string(), Value::str(serde_json::Value::Object(map).to_string()))]));
    }
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let s = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, Value::str(s))
        })
        .collect())
}

fn computer_filter(computer: &str) -> BTreeMap<String, Value> {
    BTreeMap::from([("computer_guid".to_string(), Value::str(computer))])
}

/// Requests as a person (no requester partition), then finds the instance.
fn request_as_user(tx: &mut dyn Tx, app: &App, req: &InstanceRequest) -> Result<String, MasterError> {
    master::request(tx, &app.site, req)?;
    match tx.partition_by_title(&req.title, "")? {
        Some(p) => Ok(views::instance_href(&p.computer_reference, &p.reference)),
        None => Ok("/panel/".into()),
    }
}

/// `POST /panel/request`: `requestComputerPartition` as a person.
async fn request(State(app): State<Shared>, body: Bytes) -> Response {
    let f = fields(&body);
    let r = async {
        let req = InstanceRequest {
            software_release: require(&f, "software_release")?.to_string(),
            software_type: f.get("software_type").cloned().unwrap_or_default(),
            title: require(&f, "title")?.to_string(),
            parameters: parameters_of(
                f.get("parameters").map(String::as_str).unwrap_or(""),
                f.get("serialisation").map(String::as_str).unwrap_or("xml"),
            )?,
            filter: computer_filter(require(&f, "computer")?),
            ..Default::default()
        };
        store(&app, true, move |t, app| request_as_user(t, app, &req)).await
    };
    match r.await {
        Ok(to) => back(&to, Ok("Requested.".into())),
        Err(e) => {
            let again: Vec<(&String, &String)> = f.iter().filter(|(k, _)| k.as_str() != "error").collect();
            let q = form_urlencoded::Serializer::new(String::new()).extend_pairs(again).finish();
            back(&format!("/panel/request?{q}"), Err(e))
        }
    }
}

/// The request that changes a root instance: the same software release,
/// type, title and computer; `change` sets what differs.
fn request_again(tx: &mut dyn Tx, app: &App, c: &str, p: &str, change: &dyn Fn(&mut InstanceRequest)) -> Result<String, MasterError> {
    let Some(row) = tx.partition(c, p)?.filter(|r| r.slap_state == "busy") else {
        return Err(MasterError::NotFound("no instance in that partition".into()));
    };
    if !row.requested_by.is_empty() {
        return Err(MasterError::Forbidden("requested by another instance: change it through its requester".into()));
    }
    let parameters = match row.xml.as_deref() {
        Some(x) => slap::instance_xml::xml_to_dict(x)
            .map_err(|e| MasterError::BadRequest(format!("stored parameters: {e}")))?
            .into_iter()
            .map(|(k, v)| (k, Value::str(v.unwrap_or_default())))
            .collect(),
        None => BTreeMap::new(),
    };
    let mut req = InstanceRequest {
        software_release: row.software_release.clone().unwrap_or_default(),
        software_type: row.software_type.clone().unwrap_or_default(),
        title: row.partition_reference.clone().unwrap_or_default(),
        parameters,
        filter: computer_filter(c),
        state: Some(row.requested_state.clone()),
        ..Default::default()
    };
    change(&mut req);
    request_as_user(tx, app, &req)
}

/// `POST /panel/instance/state` (computer, partition, state; `confirm=yes`
/// to destroy).
async fn change_state(State(app): State<Shared>, body: Bytes) -> Response {
    let f = fields(&body);
    let (c, p) = (f.get("computer").cloned().unwrap_or_default(), f.get("partition").cloned().unwrap_or_default());
    let here = views::instance_href(&c, &p);
    let r = async {
        let state = require(&f, "state")?.to_string();
        if !matches!(state.as_str(), "started" | "stopped" | "destroyed") {
            return Err(MasterError::BadRequest("state: started, stopped or destroyed".into()));
        }
        if state == "destroyed" && f.get("confirm").map(String::as_str) != Some("yes") {
            return Err(MasterError::BadRequest("tick the confirmation to destroy".into()));
        }
        let s = state.clone();
        store(&app, true, move |t, app| request_again(t, app, &c, &p, &|r| r.state = Some(s.clone()))).await?;
        Ok(format!("Requested {state}."))
    };
    back(&here, r.await)
}

/// `POST /panel/instance/parameters` (computer, partition, parameters as
/// JSON, serialisation).
async fn change_parameters(State(app): State<Shared>, body: Bytes) -> Response {
    let f = fields(&body);
    let (c, p) = (f.get("computer").cloned().unwrap_or_default(), f.get("partition").cloned().unwrap_or_default());
    let here = views::instance_href(&c, &p);
    let r = async {
        let parameters = parameters_of(
            f.get("parameters").map(String::as_str).unwrap_or(""),
            f.get("serialisation").map(String::as_str).unwrap_or("xml"),
        )?;
        store(&app, true, move |t, app| request_again(t, app, &c, &p, &|r| r.parameters = parameters.clone())).await?;
        Ok("Parameters changed.".to_string())
    };
    back(&here, r.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_strings_or_one_json_document() {
        let p = parameters_of(r#"{"a": "x", "n": 3, "b": true}"#, "xml").unwrap();
        assert_eq!(p["a"], Value::str("x"));
        assert_eq!(p["n"], Value::str("3"));
        assert_eq!(p["b"], Value::str("true"));
        let p = parameters_of(r#"{"n": 3}"#, "json-in-xml").unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p["_"], Value::str(r#"{"n":3}"#));
        assert!(parameters_of("[1]", "xml").is_err());
        assert!(parameters_of("{", "xml").is_err());
        assert!(parameters_of("  ", "xml").unwrap().is_empty());
    }

    #[test]
    fn only_http_urls_are_links_and_text_is_escaped() {
        let l = views::link("https://example.com/?a=1&b=<x>").into_string();
        assert!(l.starts_with("<a "), "{l}");
        assert!(l.contains("&amp;b=&lt;x&gt;"), "{l}");
        for bad in ["javascript:alert(1)", "data:text/html,<script>", "//evil", "<img src=x onerror=alert(1)>"] {
            let l = views::link(bad).into_string();
            assert!(!l.contains("<a") && !l.contains("<img") && !l.contains("<script"), "{l}");
        }
    }

    #[test]
    fn the_redirect_is_werkzeugs() {
        assert_eq!(
            views::redirect_body("/panel/"),
            "<!doctype html>\n<html lang=en>\n<title>Redirecting...</title>\n<h1>Redirecting...</h1>\n<p>You should be redirected automatically to the target URL: <a href=\"/panel/\">/panel/</a>. If not, click the link.\n"
        );
    }

    #[test]
    fn assets_stay_small() {
        let total: usize = ASSETS.iter().map(|(_, _, b)| b.len()).sum();
        assert!(total < 300 * 1024, "the panel's assets weigh {total} bytes");
    }
}
