//! What the HTTP layers share: the master's state ([`App`]) and its
//! Werkzeug-compatible error pages. Both [`crate::http`] and
//! [`crate::hateoas`] build on it (neither depends on the other's internals).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::limits::Limits;
use crate::master::{self, Answer, MasterError, Site};
use crate::multimaster::Multimaster;
use crate::store::{AnyStore, Tx};

/// What every handler shares.
pub struct App {
    /// The master's database (`[slapproxy] database_uri`): computers,
    /// partitions, software releases and instances.
    pub store: AnyStore,
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
    /// Full computer information, encoded once per version of each computer.
    pub full_info: FullInfoCache,
    /// The database's identity (part of every ETag).
    pub site_id: String,
}

impl App {
    /// The state of a master on `store`.
    pub fn new(store: AnyStore, site: Site, run_id: String, limits: Limits) -> App {
        let decoders = Arc::new(Semaphore::new(limits.decode_workers.max(1)));
        let relay = crate::relay::Relay::new(limits.relay_max_response);
        App {
            store,
            site,
            run_id,
            limits,
            decoders,
            identity: None,
            multimaster: Multimaster::default(),
            relay,
            full_info: FullInfoCache::default(),
            site_id: String::new(),
            shacache: None,
        }
    }

    /// The same state, forwarding requests as `multimaster` says.
    pub fn with_multimaster(mut self, multimaster: Multimaster) -> App {
        self.multimaster = multimaster;
        self
    }

    /// The same state, naming its database `site_id` in ETags.
    pub fn with_site_id(mut self, site_id: String) -> App {
        self.site_id = site_id;
        self
    }

    /// The ETag of a computer at `version`: the database's identity (a new
    /// database never reuses one), the version, and this program's version
    /// (another encoder may encode differently).
    pub fn etag(&self, version: i64) -> String {
        format!("\"{}-{version}-{}\"", self.site_id, env!("CARGO_PKG_VERSION"))
    }

    /// `getFullComputerInformation` within `tx`: not modified when
    /// `if_none_match` names the current version, else the encoding of that
    /// version, built once by this process (the version comes from the
    /// database, so a change written by any master is seen).
    pub fn full_information(&self, tx: &mut dyn Tx, computer: &str, if_none_match: Option<&str>) -> Result<FullInfo, MasterError> {
        let version = tx.computer_version(computer)?;
        let etag = self.etag(version);
        // version 0: nothing ever written for it (maybe unknown: no 304, no cache)
        if version > 0 && if_none_match.is_some_and(|h| h.split(',').any(|t| t.trim().trim_start_matches("W/") == etag)) {
            return Ok(FullInfo::NotModified(etag));
        }
        if let Some(body) = self.full_info.get(computer, version).filter(|_| version > 0) {
            return Ok(FullInfo::Body(etag, body));
        }
        let body = match master::computer_information(tx, &self.site, computer)? {
            Answer::Text(t) | Answer::Marshal(t) => Arc::new(t),
        };
        self.full_info.put(computer, version, body.clone());
        Ok(FullInfo::Body(etag, body))
    }
}

/// What `getFullComputerInformation` answers.
pub enum FullInfo {
    /// 304: the client's copy (this ETag) is current.
    NotModified(String),
    /// 200: the document and its ETag.
    Body(String, Arc<String>),
}

/// The cached encodings, at most [`FullInfoCache::MAX_BYTES`] in all.
#[derive(Default)]
pub struct FullInfoCache {
    entries: Mutex<CacheEntries>,
}

#[derive(Default)]
struct CacheEntries {
    by_computer: HashMap<String, (i64, Arc<String>)>,
    bytes: usize,
}

impl FullInfoCache {
    /// The most the cache holds; beyond, it starts again empty.
    pub const MAX_BYTES: usize = 256 << 20;

    fn get(&self, computer: &str, version: i64) -> Option<Arc<String>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.by_computer.get(computer).filter(|(v, _)| *v == version).map(|(_, b)| b.clone())
    }

    fn put(&self, computer: &str, version: i64, body: Arc<String>) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if e.bytes + body.len() > Self::MAX_BYTES {
            e.by_computer.clear();
            e.bytes = 0;
        }
        e.bytes += body.len();
        if let Some((_, old)) = e.by_computer.insert(computer.to_string(), (version, body)) {
            e.bytes -= old.len();
        }
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
