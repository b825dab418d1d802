//! The JSON-RPC API of the Python proxy (`slapos/proxy/json_rpc.py` of
//! slapos.core 1.26.1, `slap-protocol.md` §10), wire-compatible: POST-only
//! routes `/slapos.<verb>.v0.<object>` (and the experimental
//! `/slapos.allDocs.WIP.compute_node_list`), JSON bodies validated against
//! the vendored OpenAPI schemas ([`schema`]), answers and error documents
//! `{"status", "type", "title"}` written as Python's `json.dumps` writes
//! them. What each route does is [`routes`], over the master's own
//! functions ([`crate::master`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{MatchedPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value as J;
use slap::pyjson;

use crate::app::{werkzeug_name, App};
use crate::master::{Answer, InstanceRequest, MasterError};
use crate::rules::Identity;
use crate::store::Store;

pub mod routes;
pub mod schema;

type Shared = Arc<App>;

/// An instance id of the API: `<title>___<root title>___<0|1 shared>`.
pub fn instance_guid(title: &str, root: &str, shared: bool) -> String {
    format!("{title}___{root}___{}", u8::from(shared))
}

/// Reads an instance id as Python does (`split('___', 2)`, then
/// `bool(int(...))` of the last part): (title, root title, shared).
pub fn parse_guid(guid: &str) -> Option<(String, String, bool)> {
    let mut parts = guid.splitn(3, "___");
    let (title, root, flag) = (parts.next()?, parts.next()?, parts.next()?);
    Some((title.to_string(), root.to_string(), python_int(flag)? != 0))
}

/// Python's `int(text)` for what it accepts here: blanks around, a sign,
/// ASCII digits with single `_` between them.
fn python_int(text: &str) -> Option<i128> {
    let t = text.trim();
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    let well_formed = !digits.is_empty()
        && !digits.starts_with('_')
        && !digits.ends_with('_')
        && !digits.contains("__")
        && digits.chars().all(|c| c.is_ascii_digit() || c == '_');
    if !well_formed {
        return None;
    }
    let n: i128 = digits.replace('_', "").parse().ok()?;
    Some(if t.starts_with('-') { -n } else { n })
}

/// An answer of a route: the document, or an error status and its title.
pub type Reply = Result<J, (u16, String)>;

/// A `{"type": "success", "title": …}` document.
pub fn success(title: &str) -> Reply {
    Ok(serde_json::json!({"type": "success", "title": title}))
}

/// A 403 with `title`, as the Python proxy's `abort(403, …)`.
pub fn forbidden(title: String) -> Reply {
    Err((403, title))
}

/// What a route knows of the call beyond its body.
#[derive(Debug, Clone)]
pub struct Call {
    /// The `X-SlapPartition` header: (computer, partition).
    pub authorization: Option<(String, String)>,
    /// Where the request came to (for `hateoas_url`).
    pub origin: crate::relay::Origin,
    /// Who calls (None in the local-cloud mode: no identities).
    pub identity: Option<Identity>,
}

/// The body of an answer as Python's `json.dumps`.
fn dumps(doc: &J) -> String {
    pyjson::dumps(doc, &pyjson::Options::DEFAULT)
}

/// `send_json_rpc_document` with the error handler's document
/// `{"status", "type", "title"}` for an error.
fn document(status: u16, doc: &J) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, [(header::CONTENT_TYPE, "application/json")], dumps(doc)).into_response()
}

/// The error document Python's `_custom_handle_http_exception` sends.
pub fn error_document(status: u16, title: &str) -> Response {
    document(status, &serde_json::json!({"status": status, "type": werkzeug_name(status), "title": title}))
}

/// Werkzeug's description of a 406.
const NOT_ACCEPTABLE: &str = "The resource identified by the request is only capable of generating response entities which have content characteristics not acceptable according to the accept headers sent in the request.";

/// Whether the `Accept` header lets `application/json` through (no header,
/// or an empty one, does): Werkzeug's `best_match(['application/json'])`.
fn accepts_json(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let items: Vec<&str> = accept.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    items.is_empty()
        || items.iter().any(|item| {
            let mut parts = item.split(';');
            let mime = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts.filter_map(|p| p.trim().strip_prefix("q=").and_then(|q| q.trim().parse::<f64>().ok())).next_back().unwrap_or(1.0);
            q > 0.0 && matches!(mime.as_str(), "*/*" | "application/*" | "application/json" | "*")
        })
}

/// Flask's `request.json`: a JSON media type (else 415), then JSON (else 400).
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<J, (u16, String)> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if !(mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))) {
        let m = "Did not attempt to load JSON data because the request Content-Type was not 'application/json'.";
        return Err((415, m.into()));
    }
    serde_json::from_slice(body).map_err(|_| (400, "The browser (or proxy) sent a request that this server could not understand.".into()))
}

/// Every route: body read and validated, then the route's function in one
/// transaction (a read-only one for `get` and `allDocs`).
async fn handle(State(app): State<Shared>, path: MatchedPath, headers: HeaderMap, req: axum::extract::Request) -> Response {
    let route = path.as_str().to_string();
    let identity = req.extensions().get::<Identity>().cloned();
    let body = match axum::body::to_bytes(req.into_body(), app.limits.max_request_size).await {
        Ok(b) => b,
        Err(_) => return error_document(413, &format!("request body larger than {} bytes", app.limits.max_request_size)),
    };
    let call =
        Call { authorization: crate::http::parse_authorization(&headers), origin: crate::relay::Origin::from_headers(&headers), identity };
    let reply = answer(&app, &route, &headers, body, call).await;
    if !accepts_json(&headers) {
        return error_document(406, NOT_ACCEPTABLE);
    }
    match reply {
        Ok(doc) => document(200, &doc),
        Err((status, title)) => error_document(status, &title),
    }
}

/// The reply of `route` to `body`.
async fn answer(app: &Shared, route: &str, headers: &HeaderMap, body: Bytes, call: Call) -> Reply {
    let json = parse_body(headers, &body)?;
    schema::check(route, &json).map_err(|m| (400, m))?;
    let Some(function) = routes::function(route) else {
        return Err((500, format!("{route} is not part of the open api definition")));
    };
    let request = match route == REQUEST {
        true => Some(forward(app, &json, &call).await.map_err(master_error)?),
        false => None,
    };
    let shared = app.clone();
    let read_only = route.starts_with("/slapos.get.") || route.starts_with("/slapos.allDocs.");
    let run = move || {
        let work = |tx: &mut dyn crate::store::Tx| match &request {
            Some((req, forwarded)) => routes::request_answered(tx, &shared.site, req, forwarded.as_ref(), &json),
            None => function(tx, &shared.site, &call, &json),
        };
        if read_only {
            shared.store.read(work)
        } else {
            shared.store.transaction(work)
        }
    };
    match tokio::task::spawn_blocking(run).await {
        // Python checks its answers too (`validate_and_send_json_rpc_document`)
        Ok(Ok(Ok(doc))) => schema::check_answer(route, &doc).map(|()| doc).map_err(|m| (500, m)),
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => Err(master_error(e)),
        Err(e) => {
            tracing::error!("JSON-RPC {route}: {e}");
            Err((500, "Internal server error".into()))
        }
    }
}

/// The route of requests, which other masters may answer.
const REQUEST: &str = "/slapos.post.v0.software_instance";

/// A request forwarded to another master when `[multimaster/…]` says so
/// (outside any transaction, as the SLAP route): the request as it is to
/// be done here, or the other master's answer.
async fn forward(app: &Shared, body: &J, call: &Call) -> Result<(InstanceRequest, Option<Answer>), MasterError> {
    let mut req = routes::instance_request(body, call);
    let app = app.clone();
    tokio::task::spawn_blocking(move || {
        let forwarded = crate::multimaster::route(&app, &mut req)?;
        Ok((req, forwarded))
    })
    .await
    .map_err(|e| MasterError::Unknown(format!("internal failure: {e}")))?
}

/// A failure of the master's functions as the Python routes answer it:
/// an allocation failure is a 403, a bad header a 400, the rest a 500.
fn master_error(e: MasterError) -> (u16, String) {
    match e {
        MasterError::BadRequest(m) => (400, m),
        MasterError::NotFound(m) | MasterError::Forbidden(m) => (403, m),
        MasterError::TooLarge(m) => (413, m),
        MasterError::NotReady(m) => (408, m),
        MasterError::Unreachable(m) => (523, m),
        other => {
            tracing::error!("JSON-RPC: {other}");
            (500, "Internal server error".into())
        }
    }
}

/// The vendored OpenAPI documents, served as they are.
async fn openapi(path: MatchedPath) -> Response {
    let doc = if path.as_str() == "/json_rpc.json" { schema::JSON_RPC } else { schema::JSON_RPC_EXPERIMENTAL };
    ([(header::CONTENT_TYPE, "application/json")], doc).into_response()
}

/// The routes of both OpenAPI documents (POST; other methods: Werkzeug's
/// 405 page, as the Python proxy) and the documents themselves (GET).
pub fn router() -> Router<Shared> {
    let mut router = Router::new()
        .route("/json_rpc.json", get(openapi).fallback(crate::http::method_not_allowed))
        .route("/json_rpc_experimental.json", get(openapi).fallback(crate::http::method_not_allowed));
    for route in schema::routes() {
        router = router.route(&route, post(handle).fallback(crate::http::method_not_allowed));
    }
    router
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_read_as_python_reads_them() {
        assert_eq!(parse_guid("MyInstance______0"), Some(("MyInstance".into(), "".into(), false)));
        assert_eq!(parse_guid("a___b___c___1"), None);
        assert_eq!(parse_guid("a___b___ 2 "), Some(("a".into(), "b".into(), true)));
        assert_eq!(parse_guid("a___b___1_0"), Some(("a".into(), "b".into(), true)));
        assert_eq!(parse_guid("a___b"), None);
        assert_eq!(parse_guid("a___b___x"), None);
        assert_eq!(instance_guid("t", "r", true), "t___r___1");
    }

    #[test]
    fn every_route_has_a_rule() {
        for route in schema::routes().iter().map(String::as_str).chain(["/json_rpc.json", "/json_rpc_experimental.json"]) {
            assert!(crate::rules::rule_of(route).is_some(), "{route} has no rule in proxy::rules::RULES");
        }
    }

    #[test]
    fn accept_headers_are_matched_as_werkzeug_does() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, v.parse().unwrap());
            m
        };
        assert!(accepts_json(&HeaderMap::new()));
        assert!(accepts_json(&h("*/*")));
        assert!(accepts_json(&h("text/html, application/json;q=0.5")));
        assert!(!accepts_json(&h("text/html")));
        assert!(!accepts_json(&h("application/json;q=0")));
    }
}
