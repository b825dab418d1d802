//! `/http_proxy/<scheme>/<netloc><path>`: the relay behind the frontend
//! bypass (`slap-protocol.md` §7.11). When the master is reached over https
//! (after `X-Forwarded-Proto`), a shared request for the apache frontend is
//! answered with this master's own relay URL for the backend, so that the
//! "secure access" goes through the master, as the Python proxy does.
//!
//! This relays to any host the URL names, exactly as far as the Python proxy
//! does and no further: GET, HEAD and OPTIONS only, http and https only (also
//! for redirects, at most [`MAX_REDIRECTS`] of them), the request headers and
//! answer headers of its lists only, certificates not verified (backends have
//! self-signed ones), answers of at most `[slapproxy]
//! http_proxy_max_response_size` bytes, [`TIMEOUT`] to connect and between
//! bytes, [`TOTAL_TIMEOUT`] in all, and every answer sent as an attachment so
//! that a browser never shows a relayed page as the master's. Errors:
//! upstream 500 → 520, too many redirects 520, connection 523, timeout 524,
//! TLS 526, too large 502, a URL that is not http(s) 400.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::app::{error_page, App};

/// Time to connect, and for the answer to start and to continue (Python: 5 s).
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a whole relayed exchange.
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(60);
/// Redirects followed (http and https only).
pub const MAX_REDIRECTS: u32 = 10;

/// Request headers passed on (the Python proxy's list).
const REQUEST_HEADERS: &[&str] =
    &["content-type", "accept", "accept-language", "range", "if-modified-since", "if-none-match", "user-agent", "authorization", "origin"];

/// Answer headers passed back (the Python proxy's list; `Location` is
/// rewritten to go through the relay).
const RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "date",
    "last-modified",
    "vary",
    "cache-control",
    "etag",
    "accept-ranges",
    "content-range",
    "www-authenticate",
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-expose-headers",
    "access-control-allow-headers",
    "access-control-allow-credentials",
];

/// The HTTP client of the relay.
pub struct Relay {
    agent: ureq::Agent,
    max_response: usize,
}

impl Relay {
    /// A relay answering at most `max_response` bytes per request.
    pub fn new(max_response: usize) -> Relay {
        let tls = ureq::tls::TlsConfig::builder().disable_verification(true).build();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(MAX_REDIRECTS)
            .max_redirects_will_error(true)
            .timeout_connect(Some(TIMEOUT))
            .timeout_recv_response(Some(TIMEOUT))
            .timeout_recv_body(Some(TIMEOUT))
            .timeout_global(Some(TOTAL_TIMEOUT))
            .tls_config(tls)
            .build()
            .into();
        Relay { agent, max_response }
    }
}

/// The public address of this master as the request shows it, after
/// `X-Forwarded-Proto`, `X-Forwarded-Prefix` and the `Host` header (as
/// Werkzeug's `ProxyFix` with one trusted proxy, which the Python proxy uses).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    /// `http`, or what `X-Forwarded-Proto` says.
    pub scheme: String,
    /// The `Host` header, without the port of its scheme.
    pub host: String,
    /// `X-Forwarded-Prefix`, without trailing `/`.
    pub prefix: String,
}

fn last_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let v = headers.get(name)?.to_str().ok()?;
    v.rsplit(',').next().map(str::trim).filter(|s| !s.is_empty())
}

impl Origin {
    /// The origin of a request with `headers`.
    pub fn from_headers(headers: &HeaderMap) -> Origin {
        let scheme = last_value(headers, "x-forwarded-proto").unwrap_or("http").to_ascii_lowercase();
        let mut host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").trim().to_string();
        let default_port = if scheme == "https" { ":443" } else { ":80" };
        if let Some(h) = host.strip_suffix(default_port) {
            host = h.to_string();
        }
        let prefix = last_value(headers, "x-forwarded-prefix").unwrap_or("").trim_end_matches('/').to_string();
        Origin { scheme, host, prefix }
    }
}

/// What Werkzeug leaves unquoted in a path part of a URL it builds.
const PATH_QUOTED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b'/')
    .remove(b':')
    .remove(b';')
    .remove(b'=')
    .remove(b'@');

/// The parts of a URL as Python's `urlsplit` gives them (nothing decoded
/// or normalised): scheme, netloc, path, query, fragment.
pub fn urlsplit(url: &str) -> (String, &str, &str, Option<&str>, Option<&str>) {
    let is_scheme = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_alphabetic()) && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    };
    let (scheme, rest) = match url.split_once(':') {
        Some((s, rest)) if is_scheme(s) => (s.to_ascii_lowercase(), rest),
        _ => (String::new(), url),
    };
    let (netloc, rest) = match rest.strip_prefix("//") {
        Some(r) => {
            let end = r.find(['/', '?', '#']).unwrap_or(r.len());
            (&r[..end], &r[end..])
        }
        None => ("", rest),
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    (scheme, netloc, path, query, fragment)
}

/// This master's relay URL for `scheme://netloc/path` (Flask's
/// `url_for('httpproxy.proxy_request', …, _external=True)`).
pub fn relay_url(origin: &Origin, scheme: &str, netloc: &str, path: &str) -> String {
    let q = |s: &str| utf8_percent_encode(s, PATH_QUOTED).to_string();
    let base = format!("{}://{}{}", origin.scheme, origin.host, origin.prefix);
    if netloc.is_empty() && path.is_empty() {
        return format!("{base}/http_proxy/{}/", q(scheme));
    }
    format!("{base}/http_proxy/{}/{}{}", q(scheme), q(netloc), q(path))
}

/// The routes of the relay.
pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/http_proxy/{scheme}/{netloc}", any(relay))
        .route("/http_proxy/{scheme}/{netloc}/", any(relay))
        .route("/http_proxy/{scheme}/{netloc}/{*path}", any(relay))
}

/// `scheme`, `netloc` and `path` of a relay request path, percent-decoded.
fn target_parts(path: &str) -> Option<(String, String, String)> {
    let rest = path.strip_prefix("/http_proxy/")?;
    let (scheme, rest) = rest.split_once('/')?;
    let (netloc, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let decode = |s: &str| percent_decode_str(s).decode_utf8().ok().map(|c| c.into_owned());
    Some((decode(scheme)?, decode(netloc)?, decode(path)?))
}

/// The upstream URL: only http and https, with a host (else the message of
/// a 400).
fn upstream_url(scheme: &str, netloc: &str, path: &str, query: Option<&str>) -> Result<url::Url, String> {
    if !matches!(scheme, "http" | "https") {
        return Err("\"url\" must be http".into());
    }
    if netloc.is_empty() {
        return Err("no host to relay to".into());
    }
    let mut text = format!("{scheme}://{netloc}{path}");
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        text.push('?');
        text.push_str(q);
    }
    match url::Url::parse(&text) {
        Ok(u) if u.host().is_some() => Ok(u),
        _ => Err(format!("invalid URL to relay: {}", crate::limits::excerpt(&text, 200))),
    }
}

async fn relay(State(app): State<Arc<App>>, req: Request) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return error_page(StatusCode::METHOD_NOT_ALLOWED, "The method is not allowed for the requested URL.");
    }
    let Some((scheme, netloc, path)) = target_parts(req.uri().path()) else {
        return error_page(StatusCode::NOT_FOUND, "The requested URL was not found on the server.");
    };
    let url = match upstream_url(&scheme, &netloc, &path, req.uri().query()) {
        Ok(u) => u,
        Err(message) => return error_page(StatusCode::BAD_REQUEST, &message),
    };
    let origin = Origin::from_headers(req.headers());
    let mut upstream = axum::http::Request::builder().method(req.method().clone()).uri(url.as_str());
    for (name, value) in req.headers() {
        if REQUEST_HEADERS.contains(&name.as_str()) {
            upstream = upstream.header(name, value);
        }
    }
    let Ok(upstream) = upstream.body(()) else {
        return error_page(StatusCode::BAD_REQUEST, "invalid URL to relay");
    };
    let head = req.method() == Method::HEAD;
    let app2 = app.clone();
    let url_text = url.to_string();
    let result = tokio::task::spawn_blocking(move || fetch(&app2.relay, upstream, head)).await;
    match result {
        Ok(Ok((status, headers, body))) => answer(&origin, status, &headers, body),
        Ok(Err(failure)) => failure.page(&url_text, app.relay.max_response),
        Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &format!("internal failure: {e}")),
    }
}

/// Why a relayed request failed.
enum Failure {
    Scheme,
    Tls,
    Connection,
    Timeout,
    Redirects,
    TooLarge,
}

impl Failure {
    fn of(e: &ureq::Error) -> Failure {
        if slap::tls::describe_handshake_error(e).is_some() {
            return Failure::Tls;
        }
        match e {
            ureq::Error::Timeout(_) | ureq::Error::BodyStalled => Failure::Timeout,
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => Failure::Timeout,
            ureq::Error::TooManyRedirects => Failure::Redirects,
            ureq::Error::BodyExceedsLimit(_) => Failure::TooLarge,
            ureq::Error::BadUri(_) | ureq::Error::RedirectFailed | ureq::Error::RequireHttpsOnly(_) => Failure::Scheme,
            ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::TlsRequired => Failure::Tls,
            _ => Failure::Connection,
        }
    }

    /// The error page of the Python proxy (its message is the URL).
    fn page(&self, url: &str, max: usize) -> Response {
        let code = match self {
            Failure::Scheme => return error_page(StatusCode::BAD_REQUEST, "\"url\" must be http"),
            Failure::TooLarge => return error_page(StatusCode::BAD_GATEWAY, &format!("the answer of {url} is larger than {max} bytes")),
            Failure::Tls => 526,
            Failure::Connection => 523,
            Failure::Timeout => 524,
            Failure::Redirects => 520,
        };
        error_page(StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY), url)
    }
}

type Fetched = (u16, HeaderMap, Vec<u8>);

fn fetch(relay: &Relay, req: axum::http::Request<()>, head: bool) -> Result<Fetched, Failure> {
    let mut resp = relay.agent.run(req).map_err(|e| Failure::of(&e))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = if head {
        Vec::new()
    } else {
        resp.body_mut().with_config().limit(relay.max_response as u64).read_to_vec().map_err(|e| Failure::of(&e))?
    };
    Ok((status, headers, body))
}

/// The relayed answer: listed headers, `Location` through the relay, always
/// an attachment; upstream 500 becomes 520.
fn answer(origin: &Origin, status: u16, upstream: &HeaderMap, body: Vec<u8>) -> Response {
    let status = if status == 500 { 520 } else { status };
    let mut resp = (StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), Body::from(body)).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    for (name, value) in upstream {
        if RESPONSE_HEADERS.contains(&name.as_str()) {
            headers.insert(name.clone(), value.clone());
        }
    }
    if let Some(location) = upstream.get(header::LOCATION).and_then(|l| l.to_str().ok()) {
        let (scheme, netloc, path, query, _) = urlsplit(location);
        let mut relayed = relay_url(origin, &scheme, netloc, path);
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            relayed.push('?');
            relayed.push_str(q);
        }
        if let Ok(v) = HeaderValue::from_str(&relayed) {
            headers.insert(header::LOCATION, v);
        }
    }
    headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls_are_built_as_flask_builds_them() {
        let o = Origin { scheme: "https".into(), host: "proxy.example:8443".into(), prefix: "/slap".into() };
        assert_eq!(
            relay_url(&o, "http", "[2001:db8::2]:8080", "/app dir/x"),
            "https://proxy.example:8443/slap/http_proxy/http/%5B2001:db8::2%5D:8080/app%20dir/x"
        );
    }

    #[test]
    fn origin_follows_the_forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("proxy.example:443"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("http, https"));
        h.insert("x-forwarded-prefix", HeaderValue::from_static("/slap/"));
        let o = Origin::from_headers(&h);
        assert_eq!(o, Origin { scheme: "https".into(), host: "proxy.example".into(), prefix: "/slap".into() });
        assert_eq!(Origin::from_headers(&HeaderMap::new()).scheme, "http");
    }

    #[test]
    fn urls_are_split_as_python_splits_them() {
        assert_eq!(urlsplit("HTTP://u@[::1]:8080/a%20b?x=1#f"), ("http".into(), "u@[::1]:8080", "/a%20b", Some("x=1"), Some("f")));
        assert_eq!(urlsplit("http://h"), ("http".into(), "h", "", None, None));
        assert_eq!(urlsplit("/p?q"), (String::new(), "", "/p", Some("q"), None));
    }

    #[test]
    fn only_http_and_https_are_relayed() {
        assert!(upstream_url("file", "", "/etc/passwd", None).is_err());
        assert!(upstream_url("gopher", "h", "/", None).is_err());
        assert!(upstream_url("http", "", "/x", None).is_err(), "a host is required");
        assert_eq!(upstream_url("http", "127.0.0.1:1", "/a", Some("b=1")).unwrap().as_str(), "http://127.0.0.1:1/a?b=1");
        assert_eq!(target_parts("/http_proxy/https/h%3A1/a%20b/c"), Some(("https".into(), "h:1".into(), "/a b/c".into())));
    }
}
