//! `GET /api/schema?software_release=<url>[&software_type=<t>]`: the JSON
//! schema of a software release's parameters, for the panel's request form.
//!
//! Answers `{"software_release", "software_types": {"<name>": {"title",
//! "description", "shared", "software_type"}}, "software_type",
//! "serialisation": "xml"|"json-in-xml" (json-in-xml when the release declares
//! none, as SlapOS assumes), "parameters": <the request schema,
//! its $refs inlined, or null>}`; 404 `{"error"}` when the release publishes
//! no schema or has no such type; 400 on bad input; 502 when the schema
//! cannot be fetched or is invalid.
//!
//! Not an open URL fetcher: only software releases supplied on this master
//! (on any computer) are looked up, with [`slap::schema`]'s limits (1 MiB per
//! document, 10 s per fetch, 32 documents); a local release reads local files
//! only below its own directory. Results (and failures) are cached per URL
//! for [`TTL`] in at most [`CACHE_ENTRIES`] entries. Fetches run on tokio's
//! blocking pool.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use slap::schema::{Options, SchemaError, Serialisation, SoftwareReleaseSchema};

use crate::app::App;
use crate::store::{Store, StoreError, Tx};

type Shared = Arc<App>;

/// How long a software release's schema (or the failure to load it) is kept.
pub const TTL: Duration = Duration::from_secs(300);
/// How many software releases' schemas are kept at most.
pub const CACHE_ENTRIES: usize = 128;

/// A loaded schema: present, absent, or why it could not be loaded.
type Loaded = Result<Option<Arc<SoftwareReleaseSchema>>, SchemaError>;

/// Schemas by software release URL, with when they were loaded.
#[derive(Default)]
struct Cache(Mutex<HashMap<String, (Instant, Loaded)>>);

impl Cache {
    fn get(&self, url: &str) -> Option<Loaded> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(url).filter(|(at, _)| at.elapsed() < TTL).map(|(_, l)| l.clone())
    }

    fn put(&self, url: &str, loaded: Loaded) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (at, _)| at.elapsed() < TTL);
        if map.len() >= CACHE_ENTRIES {
            if let Some(oldest) = map.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(url.to_string(), (Instant::now(), loaded));
    }
}

/// The query of `/api/schema`.
#[derive(Debug)]
struct SchemaQuery {
    software_release: Option<String>,
    software_type: Option<String>,
}

impl SchemaQuery {
    fn parse(query: Option<&str>) -> SchemaQuery {
        let mut q = SchemaQuery { software_release: None, software_type: None };
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "software_release" => q.software_release = Some(v.into_owned()),
                "software_type" => q.software_type = Some(v.into_owned()),
                _ => {}
            }
        }
        q
    }
}

/// The route of `/api/schema`, with its own cache.
pub fn router() -> Router<Shared> {
    let cache = Arc::new(Cache::default());
    let handler = move |State(app): State<Shared>, RawQuery(query): RawQuery| async move {
        let q = SchemaQuery::parse(query.as_deref());
        match tokio::task::spawn_blocking(move || answer(&app, &cache, q)).await {
            Ok(Ok(body)) => Json(body).into_response(),
            Ok(Err((status, message))) => error(status, message),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("internal failure: {e}")),
        }
    };
    Router::new().route("/api/schema", get(handler))
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// The answer to one query (on the blocking pool).
fn answer(app: &App, cache: &Cache, q: SchemaQuery) -> Result<Value, (StatusCode, String)> {
    let url = q.software_release.filter(|u| !u.is_empty()).ok_or((StatusCode::BAD_REQUEST, "software_release is required".into()))?;
    if url.len() > 2048 || url.chars().any(char::is_control) {
        return Err((StatusCode::BAD_REQUEST, "invalid software_release".into()));
    }
    if !supplied(app, &url).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))? {
        return Err((StatusCode::NOT_FOUND, format!("software release {url} is not supplied on this master")));
    }
    let loaded = cache.get(&url).unwrap_or_else(|| {
        let loaded = load(&url);
        cache.put(&url, loaded.clone());
        loaded
    });
    let schema = match loaded {
        Ok(Some(s)) => s,
        Ok(None) => return Err((StatusCode::NOT_FOUND, format!("software release {url} has no schema (no {url}.json)"))),
        Err(e @ SchemaError::InvalidUrl { .. }) => return Err((StatusCode::BAD_REQUEST, e.to_string())),
        Err(e) => return Err((StatusCode::BAD_GATEWAY, e.to_string())),
    };
    describe(&schema, q.software_type.as_deref().filter(|t| !t.is_empty()))
}

/// Whether `url` is supplied (not destroyed) on any computer of this master.
fn supplied(app: &App, url: &str) -> Result<bool, StoreError> {
    let rows = app.store.read(|t: &mut dyn Tx| t.software_releases(None))?;
    Ok(rows.iter().any(|r| r.url == url && r.requested_state != "destroyed"))
}

/// Loads a release's schema; a local release reads below its own directory.
fn load(url: &str) -> Loaded {
    let path = url.strip_prefix("file://").unwrap_or(url);
    let local_root = (!url.contains("://") || url.starts_with("file:")).then(|| Path::new(path).parent().map(Path::to_path_buf)).flatten();
    let options = Options { local_root, ..Options::default() };
    SoftwareReleaseSchema::load(url, &options).map(|s| s.map(Arc::new))
}

/// The document served for `software_type` (None: `default` if the release
/// has it, else its first type).
fn describe(schema: &SoftwareReleaseSchema, software_type: Option<&str>) -> Result<Value, (StatusCode, String)> {
    let types = schema.software_types();
    let chosen = match software_type {
        Some(t) => Some(schema.software_type(Some(t)).map_err(|e| (StatusCode::NOT_FOUND, e.to_string()))?),
        None => schema.software_type(None).ok().or(types.first()),
    };
    let parameters = match chosen {
        Some(t) => schema.resolved_request_schema(Some(&t.name)).map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?,
        None => None,
    };
    let serialisation = schema.serialisation(chosen.map(|t| t.name.as_str())).unwrap_or(Serialisation::JsonInXml);
    let listed: serde_json::Map<String, Value> = types
        .iter()
        .map(|t| {
            let entry = json!({
                "title": t.title, "description": t.description, "shared": t.shared,
                "software_type": t.software_type.clone().unwrap_or_else(|| t.name.clone()),
            });
            (t.name.clone(), entry)
        })
        .collect();
    Ok(json!({
        "software_release": schema.software_url(),
        "software_types": listed,
        "software_type": chosen.map(|t| t.name.clone()),
        "serialisation": serialisation.as_str(),
        "parameters": parameters,
    }))
}
