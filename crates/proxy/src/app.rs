//! What the HTTP layers share: the master's state ([`App`]) and its
//! Werkzeug-compatible error pages. Both [`crate::http`] and
//! [`crate::hateoas`] build on it (neither depends on the other's internals).

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::limits::Limits;
use crate::master::Site;
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
}

impl App {
    /// The state of a master on `store`.
    pub fn new(store: SqliteStore, site: Site, run_id: String, limits: Limits) -> App {
        let decoders = Arc::new(Semaphore::new(limits.decode_workers.max(1)));
        App { store, site, run_id, limits, decoders, identity: None }
    }
}

/// A Werkzeug-like HTML page with the message in `<p>…</p>`, which the
/// Python tools (and ours) show to people.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let reason = status.canonical_reason().unwrap_or("Error");
    let body = format!(
        "<!doctype html>\n<html lang=en>\n<title>{} {reason}</title>\n<h1>{reason}</h1>\n<p>{}</p>\n",
        status.as_u16(),
        html_escape(message)
    );
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
