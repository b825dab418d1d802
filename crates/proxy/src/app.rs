//! What the HTTP layers share: the master's state ([`App`]) and its
//! Werkzeug-compatible error pages. Both [`crate::http`] and
//! [`crate::hateoas`] build on it (neither depends on the other's internals).

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::limits::Limits;
use crate::master::Site;
use crate::multimaster::Multimaster;
use crate::store::SqliteStore;

/// What every handler shares.
pub struct App {
    /// The master's database (`[slapproxy] database_uri`): computers,
    /// partitions, software releases and instances.
    pub store: SqliteStore,
    /// The configured site: default `computer_id` and `software_product_list`.
    pub site: Site,
    /// Drawn at start, served by `/getRunId` (multimaster self-detection).
    pub run_id: String,
    /// What a request may hold.
    pub limits: Limits,
    /// Permits to parse and decode a request body on the blocking pool
    /// (`limits.decode_workers` of them).
    pub decoders: Arc<Semaphore>,
    /// The CA and validity periods when the master authenticates its
    /// clients (TLS); None in the local-cloud mode, where everything is allowed.
    pub identity: Option<Arc<crate::identity::Authority>>,
    /// `[multimaster/<url>]` sections: where requests are forwarded.
    pub multimaster: Multimaster,
    /// The client of `/http_proxy/` (the frontend bypass's relay).
    pub relay: crate::relay::Relay,
    /// The binary cache (`/shacache`), when its directories are configured.
    pub shacache: Option<Arc<crate::shacache::Options>>,
}

impl App {
    /// The state of a master on `store`.
    pub fn new(store: SqliteStore, site: Site, run_id: String, limits: Limits) -> App {
        let decoders = Arc::new(Semaphore::new(limits.decode_workers.max(1)));
        let relay = crate::relay::Relay::new(limits.relay_max_response);
        App { store, site, run_id, limits, decoders, identity: None, multimaster: Multimaster::default(), relay, shacache: None }
    }

    /// The same state, forwarding requests as `multimaster` says.
    pub fn with_multimaster(mut self, multimaster: Multimaster) -> App {
        self.multimaster = multimaster;
        self
    }
}

/// Werkzeug's name of an HTTP status (`werkzeug.http.HTTP_STATUS_CODES`),
/// shown in the title of error pages; `Unknown Error` for the others
/// (520, 523, 524, 526), as Werkzeug says.
pub fn werkzeug_name(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        203 => "Non Authoritative Information",
        207 => "Multi Status",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Request Entity Too Large",
        414 => "Request URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Requested Range Not Satisfiable",
        418 => "I'm a teapot",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        511 => "Network Authentication Failed",
        _ => match StatusCode::from_u16(code).ok().and_then(|s| s.canonical_reason()) {
            Some(reason) => reason,
            None => "Unknown Error",
        },
    }
}

/// The reason phrase of Werkzeug's status lines: the name in capitals
/// (`404 NOT FOUND`), `UNKNOWN` for codes it has no name for.
pub fn werkzeug_reason(code: u16) -> String {
    match werkzeug_name(code) {
        "Unknown Error" => "UNKNOWN".into(),
        name => name.to_uppercase(),
    }
}

/// Puts Werkzeug's reason phrase on the status line of `resp` (hyper writes
/// the canonical one otherwise), as the Python proxy's answers have it.
pub fn with_werkzeug_reason(mut resp: Response) -> Response {
    let reason = werkzeug_reason(resp.status().as_u16());
    if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(reason.into_bytes()) {
        resp.extensions_mut().insert(phrase);
    }
    resp
}

/// A Werkzeug-like HTML page with the message in `<p>…</p>`, which the
/// Python tools (and ours) show to people.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let reason = werkzeug_name(status.as_u16());
    let body = format!(
        "<!doctype html>\n<html lang=en>\n<title>{} {reason}</title>\n<h1>{reason}</h1>\n<p>{}</p>\n",
        status.as_u16(),
        html_escape(message)
    );
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\n', "<br>")
}
