//! The binary cache of the master (`/shacache`), as slapos.core 1.26.1's
//! `slapos/proxy/shacache_proxy.py` serves it to `slapos.libnetworkcache`:
//!
//! * `GET /shacache/cache/<sha512>`: a file, by the SHA-512 of its content;
//! * `POST /shacache/cache`: store a file, answered with its SHA-512 (201);
//! * `PUT /shacache/cache/<sha512>`: store a file whose SHA-512 must match;
//! * `GET /shacache/dir/<key>`: the JSON list of `[document, signature]`
//!   entries indexed under `key`;
//! * `PUT /shacache/dir/<key>`: add one `[document, signature]` entry;
//! * `POST /shacache/update`: with an upstream, add upstream's new entries
//!   to each local key ([`sync_with_upstream`]); without an upstream cache,
//!   drop entries whose file is gone; remove files
//!   no entry references (older than [`UNREFERENCED_GRACE`]: an upload names
//!   its file before its entry), and abandoned partial uploads.
//!
//! With `shacache_upstream_cache_url`/`shacache_upstream_dir_url`, a file
//! or key missing here is fetched from the upstream cache (the file checked
//! against its SHA-512, the entries checked as uploads are), kept and
//! served, as the Python proxy does.
//!
//! Unlike the Python proxy, names from requests are never paths: a file name
//! is 128 lowercase hex digits, a key follows [`valid_key`]; uploads stream to
//! a temporary file in the content directory (hashed on the way, bounded by
//! `shacache_max_file_size`) renamed into place only when complete and
//! matching. Signatures are not checked here (the nodes check them against
//! their own certificate list, as in SlapOS).

// a handler's early answer is an axum Response, large by design
#![allow(clippy::result_large_err)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;
use slapos_config::Config;

use crate::app::{error_page, App};

/// Most entries kept under one key (the oldest go first).
pub const MAX_ENTRIES_PER_KEY: usize = 64;
/// Largest `[document, signature]` entry accepted.
pub const MAX_ENTRY_SIZE: usize = 64 << 10;
/// Age under which a file no entry references is kept by the garbage
/// collection (the entry of an upload follows its file).
pub const UNREFERENCED_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// The `[slapproxy] shacache_*` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `shacache_content_directory`: the files, named by their SHA-512.
    pub content_dir: PathBuf,
    /// `shacache_metadata_directory`: one JSON list of entries per key.
    pub metadata_dir: PathBuf,
    /// `shacache_signing_key_path`: read by the Python proxy and unused
    /// there; kept for the same configuration files.
    pub signing_key: Option<PathBuf>,
    /// `shacache_upstream_cache_url`: where a file missing here is fetched.
    pub upstream_cache_url: Option<String>,
    /// `shacache_upstream_dir_url`: where a key missing here is fetched.
    pub upstream_dir_url: Option<String>,
    /// `shacache_max_file_size` (ours): largest file stored, in bytes (8 GiB).
    pub max_file_size: u64,
}

impl Options {
    /// Reads the `shacache_*` options of `[slapproxy]`: None when neither
    /// directory is set; both or neither, as in the Python proxy.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Options>> {
        let get = |k: &str| config.get_nonempty("slapproxy", k).map(str::to_string);
        let (content_dir, metadata_dir) = match (get("shacache_content_directory"), get("shacache_metadata_directory")) {
            (None, None) => return Ok(None),
            (Some(c), Some(m)) => (PathBuf::from(c), PathBuf::from(m)),
            _ => anyhow::bail!("[slapproxy] shacache_content_directory and shacache_metadata_directory go together"),
        };
        Ok(Some(Options {
            content_dir,
            metadata_dir,
            signing_key: get("shacache_signing_key_path").map(PathBuf::from),
            upstream_cache_url: get("shacache_upstream_cache_url"),
            upstream_dir_url: get("shacache_upstream_dir_url"),
            max_file_size: crate::limits::positive(config, "shacache_max_file_size", 8 << 30)?,
        }))
    }

    /// Options with both directories under `dir` (tests, tools).
    pub fn under(dir: &Path) -> Options {
        Options {
            content_dir: dir.join("shacache"),
            metadata_dir: dir.join("shadir"),
            signing_key: None,
            upstream_cache_url: None,
            upstream_dir_url: None,
            max_file_size: 8 << 30,
        }
    }

    /// Creates both directories.
    pub fn create_dirs(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.content_dir)?;
        std::fs::create_dir_all(&self.metadata_dir)
    }
}

/// A file name of the cache: the lowercase hex SHA-512 of its content.
pub fn valid_sha512(s: &str) -> bool {
    s.len() == 128 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A shadir key: 1 to 200 of `A-Za-z0-9._:+=@-`, not starting with `.`
/// (slapgrid's md5 of a release URL, `file-urlmd5:…`, `pypi:…`; never a path).
pub fn valid_key(s: &str) -> bool {
    (1..=200).contains(&s.len())
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'+' | b'=' | b'@' | b'-'))
}

/// Checks one `[document, signature]` entry: a list of two strings whose
/// document is a JSON object with a valid `sha512`.
pub fn check_entry(entry: &serde_json::Value) -> Result<(), String> {
    let pair = entry.as_array().filter(|a| a.len() == 2).ok_or("an entry is a list of [document, signature]")?;
    let (Some(doc), Some(_sig)) = (pair[0].as_str(), pair[1].as_str()) else {
        return Err("document and signature are strings".into());
    };
    let doc: serde_json::Value = serde_json::from_str(doc).map_err(|e| format!("the document is not JSON: {e}"))?;
    match doc.get("sha512").and_then(|s| s.as_str()) {
        Some(s) if valid_sha512(s) => Ok(()),
        _ => Err("the document has no valid sha512".into()),
    }
}

fn cache_of(app: &App) -> Result<&Options, Response> {
    app.shacache.as_deref().ok_or_else(|| error_page(StatusCode::SERVICE_UNAVAILABLE, "Shacache not configured"))
}

fn bad(m: &str) -> Response {
    error_page(StatusCode::BAD_REQUEST, m)
}

async fn download(State(app): State<Arc<App>>, UrlPath(sha512): UrlPath<String>) -> Response {
    let o = match cache_of(&app) {
        Ok(o) => o,
        Err(r) => return r,
    };
    if !valid_sha512(&sha512) {
        return bad("not a SHA-512");
    }
    let path = o.content_dir.join(&sha512);
    if !path.is_file() {
        if let Some(upstream) = o.upstream_cache_url.clone() {
            let (o2, sum) = (o.clone(), sha512.clone());
            match tokio::task::spawn_blocking(move || fetch_upstream_file(&o2, &upstream, &sum)).await {
                Ok(Ok(())) => {}
                Ok(Err((status, m))) => return error_page(status, &m),
                Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &format!("internal failure: {e}")),
            }
        }
    }
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return error_page(StatusCode::NOT_FOUND, "no such file in the cache"),
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot read {sha512}: {e}")),
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot read {sha512}: {e}")),
    };
    let stream = futures::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 << 10];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename={sha512}")),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Streams `body` to a temporary file of the content directory, hashing it;
/// renames it to its SHA-512 (checked against `expected`). The temporary
/// file is removed on any failure.
async fn store(o: &Options, body: Body, expected: Option<&str>) -> Result<String, Response> {
    let tmp = o.content_dir.join(format!(".upload-{:016x}", rand::random::<u64>()));
    let result = receive(o, body, &tmp).await;
    let outcome = match result {
        Ok(sum) if expected.is_some_and(|e| e != sum) => Err(bad("Checksum mismatch")),
        Ok(sum) => std::fs::rename(&tmp, o.content_dir.join(&sum))
            .map(|_| sum)
            .map_err(|e| error_page(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot store the file: {e}"))),
        Err(r) => Err(r),
    };
    if outcome.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    outcome
}

async fn receive(o: &Options, body: Body, tmp: &Path) -> Result<String, Response> {
    let internal = |e: std::io::Error| error_page(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot store the file: {e}"));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(tmp).map_err(internal)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
    let mut size = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| bad(&format!("upload interrupted: {e}")))?;
        size += chunk.len() as u64;
        if size > o.max_file_size {
            return Err(error_page(StatusCode::PAYLOAD_TOO_LARGE, &format!("file larger than {} bytes", o.max_file_size)));
        }
        ctx.update(&chunk);
        // small chunks: a blocking write here is a page-cache copy
        file.write_all(&chunk).map_err(internal)?;
    }
    file.sync_all().map_err(internal)?;
    Ok(ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

async fn upload(State(app): State<Arc<App>>, body: Body) -> Response {
    let o = match cache_of(&app) {
        Ok(o) => o,
        Err(r) => return r,
    };
    match store(o, body, None).await {
        Ok(sum) => (StatusCode::CREATED, sum).into_response(),
        Err(r) => r,
    }
}

async fn upload_named(State(app): State<Arc<App>>, UrlPath(sha512): UrlPath<String>, body: Body) -> Response {
    let o = match cache_of(&app) {
        Ok(o) => o,
        Err(r) => return r,
    };
    if !valid_sha512(&sha512) {
        return bad("not a SHA-512");
    }
    match store(o, body, Some(&sha512)).await {
        Ok(sum) => (StatusCode::CREATED, sum).into_response(),
        Err(r) => r,
    }
}

fn read_entries(path: &Path) -> std::io::Result<Option<Vec<serde_json::Value>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(serde_json::from_slice::<Vec<serde_json::Value>>(&b).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `entries` under `path` atomically (temporary file + rename).
fn write_entries(path: &Path, entries: &[serde_json::Value]) -> std::io::Result<()> {
    let tmp = path.with_file_name(format!(".entry-{:016x}", rand::random::<u64>()));
    std::fs::write(&tmp, serde_json::to_vec(entries).expect("JSON values serialize"))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

async fn select(State(app): State<Arc<App>>, UrlPath(key): UrlPath<String>) -> Response {
    let o = match cache_of(&app) {
        Ok(o) => o,
        Err(r) => return r,
    };
    if !valid_key(&key) {
        return bad("not a valid key");
    }
    let path = o.metadata_dir.join(&key);
    if !path.is_file() {
        if let Some(upstream) = o.upstream_dir_url.clone() {
            let (o2, k) = (o.clone(), key.clone());
            let _guard = DIR_LOCK.lock().await;
            match tokio::task::spawn_blocking(move || fetch_upstream_entries(&o2, &upstream, &k)).await {
                Ok(Ok(())) => {}
                Ok(Err((status, m))) => return error_page(status, &m),
                Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &format!("internal failure: {e}")),
            }
        }
    }
    match read_entries(&path) {
        Ok(Some(entries)) => ([(header::CONTENT_TYPE, "application/json")], serde_json::to_string(&entries).expect("JSON")).into_response(),
        Ok(None) => error_page(StatusCode::NOT_FOUND, "no entry under this key"),
        Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot read the entries: {e}")),
    }
}

/// Serialises changes of the metadata directory (read, add, write).
static DIR_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn index(State(app): State<Arc<App>>, UrlPath(key): UrlPath<String>, body: Body) -> Response {
    let o = match cache_of(&app) {
        Ok(o) => o,
        Err(r) => return r,
    };
    if !valid_key(&key) {
        return bad("not a valid key");
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ENTRY_SIZE).await else {
        return error_page(StatusCode::PAYLOAD_TOO_LARGE, &format!("entry larger than {MAX_ENTRY_SIZE} bytes"));
    };
    let entry: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => return bad("Invalid entry format"),
    };
    if let Err(e) = check_entry(&entry) {
        return bad(&format!("Invalid entry format: {e}"));
    }
    let path = o.metadata_dir.join(&key);
    let _guard = DIR_LOCK.lock().await;
    let mut entries = read_entries(&path).ok().flatten().unwrap_or_default();
    entries.retain(|e| *e != entry);
    entries.push(entry);
    let excess = entries.len().saturating_sub(MAX_ENTRIES_PER_KEY);
    entries.drain(..excess);
    match write_entries(&path, &entries) {
        Ok(()) => (StatusCode::CREATED, "").into_response(),
        Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot store the entry: {e}")),
    }
}

/// Drops the entries whose file is no longer in the content directory (and
/// keys left empty or unreadable); returns the keys changed.
pub fn collect_garbage(o: &Options) -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    for dirent in std::fs::read_dir(&o.metadata_dir)? {
        let name = dirent?.file_name().to_string_lossy().into_owned();
        if !valid_key(&name) {
            continue;
        }
        let path = o.metadata_dir.join(&name);
        let entries = read_entries(&path)?.unwrap_or_default();
        let kept: Vec<_> = entries
            .iter()
            .filter(|e| {
                let doc = e.get(0).and_then(|d| d.as_str()).and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok());
                let sum = doc.as_ref().and_then(|d| d.get("sha512")?.as_str().map(str::to_string));
                sum.is_some_and(|s| valid_sha512(&s) && o.content_dir.join(&s).is_file())
            })
            .cloned()
            .collect();
        if kept.len() == entries.len() && !kept.is_empty() {
            continue;
        }
        if kept.is_empty() {
            std::fs::remove_file(&path)?;
        } else {
            write_entries(&path, &kept)?;
        }
        removed.push(name);
    }
    Ok(removed)
}

/// The agent that asks the upstream cache (60 s to connect and answer).
fn upstream_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_secs(60)))
        .timeout_recv_response(Some(std::time::Duration::from_secs(60)))
        .build()
        .into()
}

type Upstream = Result<(), (StatusCode, String)>;

fn upstream_error(what: &str, e: ureq::Error) -> (StatusCode, String) {
    match e {
        ureq::Error::StatusCode(404) => (StatusCode::NOT_FOUND, format!("no such {what} here or upstream")),
        e => {
            tracing::warn!("shacache: upstream {what}: {e}");
            (StatusCode::BAD_GATEWAY, format!("Upstream error: {e}"))
        }
    }
}

/// Fetches `<upstream>/<sha512>` into the content directory, streamed to a
/// temporary file (within `shacache_max_file_size`), renamed only when its
/// SHA-512 matches.
fn fetch_upstream_file(o: &Options, upstream: &str, sha512: &str) -> Upstream {
    use std::io::Read;
    tracing::info!("shacache: fetching {sha512} from upstream");
    let url = format!("{}/{sha512}", upstream.trim_end_matches('/'));
    let resp = upstream_agent().get(&url).call().map_err(|e| upstream_error("file", e))?;
    let mut reader = resp.into_body().into_with_config().limit(o.max_file_size).reader();
    let tmp = o.content_dir.join(format!(".upload-{:016x}", rand::random::<u64>()));
    let result = (|| -> Upstream {
        let bad_gateway = |m: String| (StatusCode::BAD_GATEWAY, m);
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| bad_gateway(e.to_string()))?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = reader.read(&mut buf).map_err(|e| bad_gateway(format!("Upstream error: {e}")))?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(|e| bad_gateway(e.to_string()))?;
        }
        let sum: String = ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
        if sum != sha512 {
            tracing::warn!("shacache: upstream served {sha512} with another content: refused");
            return Err(bad_gateway("Upstream error: the content does not match its SHA-512".into()));
        }
        std::fs::rename(&tmp, o.content_dir.join(sha512)).map_err(|e| bad_gateway(e.to_string()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Fetches the entries of `key` from `<upstream>/<key>` and keeps those
/// that are valid entries (at most [`MAX_ENTRIES_PER_KEY`]).
fn fetch_upstream_entries(o: &Options, upstream: &str, key: &str) -> Upstream {
    tracing::info!("shacache: fetching dir {key} from upstream");
    let url = format!("{}/{key}", upstream.trim_end_matches('/'));
    let mut resp = upstream_agent().get(&url).call().map_err(|e| upstream_error("key", e))?;
    let limit = (MAX_ENTRY_SIZE * MAX_ENTRIES_PER_KEY) as u64;
    let body = resp.body_mut().with_config().limit(limit).read_to_vec().map_err(|e| upstream_error("key", e))?;
    let list: Vec<serde_json::Value> =
        serde_json::from_slice(&body).map_err(|e| (StatusCode::BAD_GATEWAY, format!("Upstream error: not a list of entries: {e}")))?;
    let mut kept: Vec<_> = list.into_iter().filter(|e| check_entry(e).is_ok()).collect();
    let excess = kept.len().saturating_sub(MAX_ENTRIES_PER_KEY);
    kept.drain(..excess);
    write_entries(&o.metadata_dir.join(key), &kept)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot store the entries: {e}")))
}

/// With an upstream directory: adds to each local key the valid entries
/// upstream has that it lacks (at most [`MAX_ENTRIES_PER_KEY`], newest
/// kept); returns the keys changed. Unlike the Python proxy, which replaces
/// each key by upstream's list (dropping what nodes uploaded here), local
/// entries are kept; an upstream that fails is logged and skipped.
pub fn sync_with_upstream(o: &Options, upstream: &str) -> std::io::Result<Vec<String>> {
    let mut updated = Vec::new();
    for dirent in std::fs::read_dir(&o.metadata_dir)? {
        let key = dirent?.file_name().to_string_lossy().into_owned();
        if !valid_key(&key) {
            continue;
        }
        let path = o.metadata_dir.join(&key);
        let mut entries = read_entries(&path)?.unwrap_or_default();
        let url = format!("{}/{key}", upstream.trim_end_matches('/'));
        let limit = (MAX_ENTRY_SIZE * MAX_ENTRIES_PER_KEY) as u64;
        let theirs = upstream_agent().get(&url).call().and_then(|mut r| r.body_mut().with_config().limit(limit).read_to_vec());
        let theirs: Vec<serde_json::Value> = match theirs {
            Ok(body) => serde_json::from_slice(&body).unwrap_or_default(),
            Err(ureq::Error::StatusCode(404)) => continue,
            Err(e) => {
                tracing::warn!("shacache update: upstream {key}: {e}");
                continue;
            }
        };
        let before = entries.len();
        for e in theirs.into_iter().filter(|e| check_entry(e).is_ok()) {
            if !entries.contains(&e) {
                entries.push(e);
            }
        }
        if entries.len() != before {
            let excess = entries.len().saturating_sub(MAX_ENTRIES_PER_KEY);
            entries.drain(..excess);
            write_entries(&path, &entries)?;
            updated.push(key);
        }
    }
    updated.sort();
    Ok(updated)
}

/// Removes the files of the content directory that no entry references
/// and that are older than `grace`, and partial uploads older than a day;
/// returns the names removed.
pub fn collect_unreferenced(o: &Options, grace: std::time::Duration) -> std::io::Result<Vec<String>> {
    let mut referenced = std::collections::HashSet::new();
    for dirent in std::fs::read_dir(&o.metadata_dir)? {
        let name = dirent?.file_name().to_string_lossy().into_owned();
        if !valid_key(&name) {
            continue;
        }
        for e in read_entries(&o.metadata_dir.join(&name))?.unwrap_or_default() {
            let doc = e.get(0).and_then(|d| d.as_str()).and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok());
            if let Some(sum) = doc.as_ref().and_then(|d| d.get("sha512")?.as_str().map(str::to_string)) {
                referenced.insert(sum);
            }
        }
    }
    let now = std::time::SystemTime::now();
    let mut removed = Vec::new();
    for dirent in std::fs::read_dir(&o.content_dir)? {
        let dirent = dirent?;
        let name = dirent.file_name().to_string_lossy().into_owned();
        let meta = dirent.metadata()?;
        let age = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).unwrap_or_default();
        let partial = name.starts_with(".upload-") && age > std::time::Duration::from_secs(86_400);
        let unreferenced = valid_sha512(&name) && !referenced.contains(&name) && age > grace;
        if meta.is_file() && (partial || unreferenced) {
            std::fs::remove_file(dirent.path())?;
            removed.push(name);
        }
    }
    removed.sort();
    Ok(removed)
}

async fn update(State(app): State<Arc<App>>) -> Response {
    let o = match cache_of(&app) {
        Ok(o) => o.clone(),
        Err(r) => return r,
    };
    let _guard = DIR_LOCK.lock().await;
    let gc = move || -> std::io::Result<(Vec<String>, Vec<String>, Vec<String>)> {
        let updated = match o.upstream_dir_url.as_deref() {
            Some(upstream) => sync_with_upstream(&o, upstream)?,
            None => Vec::new(),
        };
        // with an upstream cache, a file missing here is fetched when asked
        let removed = if o.upstream_cache_url.is_some() { Vec::new() } else { collect_garbage(&o)? };
        Ok((removed, updated, collect_unreferenced(&o, UNREFERENCED_GRACE)?))
    };
    match tokio::task::spawn_blocking(gc).await {
        Ok(Ok((removed, updated, files))) => {
            tracing::info!(
                "shacache update: {} keys updated, {} keys changed, {} files removed",
                updated.len(),
                removed.len(),
                files.len()
            );
            let doc = serde_json::json!({"removed": removed, "updated": updated, "removed_files": files});
            ([(header::CONTENT_TYPE, "application/json")], doc.to_string()).into_response()
        }
        Ok(Err(e)) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot update: {e}")),
        Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &format!("internal failure: {e}")),
    }
}

/// The `/shacache` routes, authorized by [`crate::rules`]; bodies are not
/// limited by `max_request_size` here (files stream to disk within
/// `shacache_max_file_size`, entries within [`MAX_ENTRY_SIZE`]).
pub fn router(app: Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route("/shacache/cache", post(upload))
        .route("/shacache/cache/", post(upload))
        .route("/shacache/cache/{sha512}", get(download).put(upload_named))
        .route("/shacache/dir/{key}", get(select).put(index))
        .route("/shacache/update", post(update))
        .route_layer(axum::middleware::from_fn_with_state(app, crate::rules::authorize))
        .layer(DefaultBodyLimit::disable())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_requests_are_never_paths() {
        assert!(valid_sha512(&"a".repeat(128)));
        assert!(!valid_sha512(&"A".repeat(128)));
        assert!(!valid_sha512(&"a".repeat(127)));
        assert!(valid_key("0123abcdef0123abcdef0123abcdef01"));
        assert!(valid_key("file-urlmd5:abc"));
        for k in ["", "..", ".hidden", "a/b", "../etc", "a b", "a\0b", &"k".repeat(201)] {
            assert!(!valid_key(k), "{k:?}");
        }
    }

    #[test]
    fn entries_are_checked() {
        let doc = serde_json::json!({"sha512": "b".repeat(128)}).to_string();
        assert!(check_entry(&serde_json::json!([doc, ""])).is_ok());
        assert!(check_entry(&serde_json::json!([doc])).is_err());
        assert!(check_entry(&serde_json::json!(["{}", ""])).is_err());
        assert!(check_entry(&serde_json::json!(["{\"sha512\": \"../x\"}", ""])).is_err());
    }
}
