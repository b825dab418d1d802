//! The HTTP face of the master: SLAP routes (axum), Werkzeug-compatible
//! error pages and access log lines.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use slap::marshal::{self, Value};

use crate::app::FullInfo;
pub use crate::app::{error_page, App};
use crate::limits::{excerpt, Limits};
use crate::master::{self, Answer, InstanceRequest, MasterError, Site};
use crate::store::Store;

/// Log lines show at most this much of a value that comes from a request.
const LOGGED_VALUE: usize = 300;

type Shared = Arc<App>;

fn text(body: String) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

impl IntoResponse for MasterError {
    fn into_response(self) -> Response {
        match &self {
            MasterError::BadRequest(m) => error_page(StatusCode::BAD_REQUEST, m),
            MasterError::TooLarge(m) => error_page(StatusCode::PAYLOAD_TOO_LARGE, m),
            MasterError::NotFound(m) => error_page(StatusCode::NOT_FOUND, m),
            MasterError::Forbidden(m) => error_page(StatusCode::FORBIDDEN, m),
            MasterError::Unknown(m) => error_page(StatusCode::INTERNAL_SERVER_ERROR, m),
            MasterError::NotReady(m) => error_page(StatusCode::REQUEST_TIMEOUT, m),
            MasterError::Unreachable(m) => error_page(StatusCode::from_u16(523).unwrap_or(StatusCode::BAD_GATEWAY), m),
            MasterError::Store(e) => {
                tracing::error!("storage failure: {e}");
                error_page(StatusCode::INTERNAL_SERVER_ERROR, &format!("storage failure: {e}"))
            }
        }
    }
}

fn answer(r: Result<Answer, MasterError>) -> Response {
    match r {
        Ok(Answer::Text(t)) | Ok(Answer::Marshal(t)) => text(t),
        Err(e) => e.into_response(),
    }
}

/// Form fields (POST body) or query arguments (GET), in wire order.
struct Fields {
    fields: Vec<(String, String)>,
    marshal: marshal::Limits,
}

/// Free-text fields longer than `max_field_size` are accepted: the master
/// stores their end only (an error log's last lines say the most).
const FREE_TEXT_FIELDS: &[&str] = &["error_log", "message"];

impl Fields {
    /// Parses a form, refusing one with too many fields (400) or a field
    /// larger than allowed (413).
    fn parse(bytes: &[u8], limits: &Limits) -> Result<Fields, MasterError> {
        let mut fields = Vec::new();
        for (k, v) in form_urlencoded::parse(bytes) {
            if fields.len() == limits.max_fields {
                return Err(MasterError::BadRequest(format!("more than {} fields in the request", limits.max_fields)));
            }
            if v.len() > limits.max_field_size && !FREE_TEXT_FIELDS.contains(&k.as_ref()) {
                return Err(MasterError::TooLarge(format!("field '{}' is larger than {} bytes", excerpt(&k, 100), limits.max_field_size)));
            }
            fields.push((k.into_owned(), v.into_owned()));
        }
        Ok(Fields { fields, marshal: limits.marshal })
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    fn require(&self, key: &str) -> Result<&str, MasterError> {
        self.get(key).ok_or_else(|| MasterError::BadRequest(format!("missing field '{key}'")))
    }
    /// A marshalled field (absent: `default`), decoded within the limits.
    fn marshal(&self, key: &str, default: Value) -> Result<Value, MasterError> {
        match self.get(key) {
            None => Ok(default),
            Some(text) => marshal::decode_with(text, &self.marshal).map_err(|e| {
                let message = format!("field '{key}': {e}");
                if e.is_limit() {
                    MasterError::TooLarge(message)
                } else {
                    MasterError::BadRequest(message)
                }
            }),
        }
    }
    fn marshal_dict(&self, key: &str) -> Result<BTreeMap<String, Value>, MasterError> {
        match self.marshal(key, Value::Dict(BTreeMap::new()))? {
            Value::Dict(d) => Ok(d),
            other => Err(MasterError::BadRequest(format!("field '{key}' must be a dictionary, found <{}>", other.type_name()))),
        }
    }
}

/// Parses the form in `body` and builds what the handler needs from it
/// (marshalled fields decoded) on the blocking pool, at most
/// `decode_workers` requests at once, so that a heavy body never holds the
/// threads that serve connections.
async fn form<R: Send + 'static>(
    app: &Shared,
    body: Bytes,
    build: impl FnOnce(&Fields) -> Result<R, MasterError> + Send + 'static,
) -> Result<R, MasterError> {
    let permit = app.decoders.clone().acquire_owned().await.map_err(|e| MasterError::Unknown(format!("internal failure: {e}")))?;
    let limits = app.limits;
    tokio::task::spawn_blocking(move || {
        // held until the work is done, even if the client has gone
        let _permit = permit;
        build(&Fields::parse(&body, &limits)?)
    })
    .await
    .map_err(|e| MasterError::Unknown(format!("internal failure: {e}")))?
}

/// `Authorization: X-SlapPartition computer_id=…, computer_partition_id=…`,
/// parsed leniently like the Python proxy.
pub fn parse_authorization(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("x-slappartition") {
        return None;
    }
    let mut computer = None;
    let mut partition = None;
    for item in rest.split(',') {
        let (k, v) = item.split_once('=').unwrap_or((item, ""));
        match k.trim() {
            "computer_id" => computer = Some(v.trim().to_string()),
            "computer_partition_id" => partition = Some(v.trim().to_string()),
            _ => {}
        }
    }
    Some((computer?, partition.unwrap_or_default()))
}

/// Runs `f` in one transaction on the blocking pool.
async fn tx<R: Send + 'static>(
    app: &Shared,
    f: impl Fn(&mut dyn crate::store::Tx, &Site) -> Result<R, MasterError> + Send + 'static,
) -> Result<R, MasterError> {
    blocking(app, move |app| app.store.transaction(|t| f(t, &app.site))).await
}

/// Runs `f` in a read-only transaction on the blocking pool.
async fn read<R: Send + 'static>(
    app: &Shared,
    f: impl Fn(&mut dyn crate::store::Tx, &Site) -> Result<R, MasterError> + Send + 'static,
) -> Result<R, MasterError> {
    blocking(app, move |app| app.store.read(|t| f(t, &app.site))).await
}

/// Runs `work` on the blocking pool.
async fn blocking<R: Send + 'static>(
    app: &Shared,
    work: impl FnOnce(&App) -> Result<R, MasterError> + Send + 'static,
) -> Result<R, MasterError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || work(&app)).await.map_err(|e| MasterError::Unknown(format!("internal failure: {e}")))?
}

/// The query arguments (bounded by the size of the request head).
fn query(app: &App, uri: &Uri) -> Result<Fields, MasterError> {
    Fields::parse(uri.query().unwrap_or("").as_bytes(), &app.limits)
}

// -- GET routes ------------------------------------------------------------

/// Full computer information, with an `ETag`; `If-None-Match` with the
/// current one is answered 304 without a body (the Python node sends none
/// and gets the same document as ever).
async fn full_computer_information(State(app): State<Shared>, headers: HeaderMap, uri: Uri) -> Response {
    let if_none_match = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).map(str::to_string);
    let r = async {
        let computer_id = query(&app, &uri)?.require("computer_id")?.to_string();
        let shared = app.clone();
        read(&app, move |t, _| shared.full_information(t, &computer_id, if_none_match.as_deref())).await
    };
    match r.await {
        Ok(FullInfo::NotModified(etag)) => (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response(),
        Ok(FullInfo::Body(etag, body)) => {
            let mut response = text(body.as_str().to_string());
            if let Ok(v) = header::HeaderValue::from_str(&etag) {
                response.headers_mut().insert(header::ETAG, v);
            }
            response
        }
        Err(e) => e.into_response(),
    }
}

async fn register_partition(State(app): State<Shared>, uri: Uri) -> Response {
    let r = async {
        let q = query(&app, &uri)?;
        let c = q.require("computer_reference")?.to_string();
        let p = q.require("computer_partition_reference")?.to_string();
        read(&app, move |t, _| master::register_partition(t, &c, &p)).await
    };
    answer(r.await)
}

async fn partition_status() -> Response {
    text(marshal::encode(&Value::str("Not implemented.")).unwrap_or_default())
}

async fn product_list(State(app): State<Shared>, uri: Uri) -> Response {
    let r =
        query(&app, &uri).and_then(|q| master::product_list(&app.site, q.get("software_product_reference"), q.get("software_release_url")));
    answer(r)
}

async fn run_id(State(app): State<Shared>) -> Response {
    text(app.run_id.clone())
}

// -- POST routes -----------------------------------------------------------

/// The fields of `requestComputerPartition` as an [`InstanceRequest`].
fn instance_request(f: &Fields, authorization: Option<(String, String)>) -> Result<InstanceRequest, MasterError> {
    let req = InstanceRequest {
        software_release: f.require("software_release")?.to_string(),
        software_type: f.require("software_type")?.to_string(),
        title: f.require("partition_reference")?.to_string(),
        parameters: f.marshal_dict("partition_parameter_xml")?,
        filter: f.marshal_dict("filter_xml")?,
        state: match f.marshal("state", Value::None)? {
            Value::None => None,
            Value::Str(s) => Some(s),
            other => return Err(MasterError::BadRequest(format!("field 'state' must be a string, found <{}>", other.type_name()))),
        },
        shared: f.marshal("shared_xml", Value::Bool(false))?.is_truthy(),
        authorization,
        form_requester: (f.get("computer_id").map(str::to_string), f.get("computer_partition_id").map(str::to_string)),
        ..Default::default()
    };
    if req.software_release.is_empty() {
        return Err(MasterError::BadRequest("empty software_release".into()));
    }
    Ok(req)
}

async fn request_partition(State(app): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let authorization = parse_authorization(&headers);
    let origin = crate::relay::Origin::from_headers(&headers);
    let r = async {
        let mut req = form(&app, body, move |f| instance_request(f, authorization)).await?;
        req.origin = origin;
        let forwarder = app.clone();
        let (forwarded, req) = tokio::task::spawn_blocking(move || {
            let forwarded = crate::multimaster::route(&forwarder, &mut req);
            (forwarded, req)
        })
        .await
        .map_err(|e| MasterError::Unknown(format!("internal failure: {e}")))?;
        if let Some(answer) = forwarded? {
            return Ok(answer);
        }
        tx(&app, move |t, site| master::request(t, site, &req)).await
    };
    answer(r.await)
}

async fn set_connection(State(app): State<Shared>, body: Bytes) -> Response {
    let r = async {
        let (c, p, conn, slave) = form(&app, body, |f| {
            let conn = match f.marshal("connection_xml", Value::None)? {
                Value::Dict(d) => d,
                other => {
                    return Err(MasterError::BadRequest(format!(
                        "field 'connection_xml' must be a dictionary, found <{}>",
                        other.type_name()
                    )))
                }
            };
            let c = f.require("computer_id")?.to_string();
            let p = f.require("computer_partition_id")?.to_string();
            Ok((c, p, conn, f.get("slave_reference").map(str::to_string)))
        })
        .await?;
        tx(&app, move |t, _| master::set_connection(t, &c, &p, &conn, slave.as_deref())).await
    };
    answer(r.await)
}

/// The values of `keys`, all required.
fn required<const N: usize>(f: &Fields, keys: [&str; N]) -> Result<[String; N], MasterError> {
    let mut out: [String; N] = std::array::from_fn(|_| String::new());
    for (slot, key) in out.iter_mut().zip(keys) {
        *slot = f.require(key)?.to_string();
    }
    Ok(out)
}

/// The handler of most node calls: the fields `keys`, all required, then
/// `op` on their values in a transaction.
async fn required_tx<const N: usize>(
    app: &Shared,
    body: Bytes,
    keys: [&'static str; N],
    op: impl Fn(&mut dyn crate::store::Tx, [String; N]) -> Result<Answer, MasterError> + Send + 'static,
) -> Response {
    let r = async {
        let values = form(app, body, move |f| required(f, keys)).await?;
        // a transaction may run again (a conflict on PostgreSQL): each run gets the values
        tx(app, move |t, _| op(t, values.clone())).await
    };
    answer(r.await)
}

async fn supply(State(app): State<Shared>, body: Bytes) -> Response {
    required_tx(&app, body, ["url", "computer_id", "state"], |t, [url, c, s]| master::supply(t, &url, &c, &s)).await
}

async fn format_report(State(app): State<Shared>, body: Bytes) -> Response {
    let r = async {
        let (computer, partitions) = form(&app, body, |f| match f.marshal("xml", Value::None)? {
            Value::None => Err(MasterError::BadRequest("missing field 'xml'".into())),
            v => master::parse_format_report(&v),
        })
        .await?;
        tracing::info!("format report of {}: {} partition(s)", excerpt(&computer.reference, LOGGED_VALUE), partitions.len());
        tx(&app, move |t, _| master::load_format_report(t, &computer, &partitions)).await
    };
    answer(r.await)
}

/// The node's state reports: recorded, answered as the Python proxy does.
fn report_route(kind: &'static str, state: &'static str, word: &'static str) -> MethodRouter<Shared> {
    post(move |State(app): State<Shared>, body: Bytes| async move {
        let r = async {
            // the Python proxy reads none of the fields: without them the
            // report is answered but not recorded
            let fields = form(&app, body, move |f| {
                let c = f.get("computer_id").map(str::to_string);
                let reference = f.get(if kind == "software" { "url" } else { "computer_partition_id" }).map(str::to_string);
                Ok((c, reference, f.get("error_log").map(str::to_string)))
            })
            .await?;
            let (Some(c), Some(reference), message) = fields else {
                return Ok(());
            };
            if state == "error" {
                let last = message.as_deref().unwrap_or("").lines().last().unwrap_or("");
                tracing::warn!(
                    "{kind} {} on {} reports an error: {}",
                    excerpt(&reference, LOGGED_VALUE),
                    excerpt(&c, LOGGED_VALUE),
                    excerpt(last, LOGGED_VALUE)
                );
            }
            tx(&app, move |t, _| master::report(t, kind, &c, &reference, state, message.as_deref())).await
        };
        match r.await {
            Ok(()) => text(word.into()),
            Err(e) => e.into_response(),
        }
    })
    .fallback(method_not_allowed)
}

async fn software_destroyed(State(app): State<Shared>, body: Bytes) -> Response {
    required_tx(&app, body, ["url", "computer_id"], |t, [url, c]| master::software_destroyed(t, &url, &c)).await
}

async fn partition_destroyed(State(app): State<Shared>, body: Bytes) -> Response {
    required_tx(&app, body, ["computer_id", "computer_partition_id"], |t, [c, p]| master::partition_destroyed(t, &c, &p)).await
}

async fn bang(State(app): State<Shared>, body: Bytes) -> Response {
    let r = async {
        let ([c, p], m) =
            form(&app, body, |f| Ok((required(f, ["computer_id", "computer_partition_id"])?, f.get("message").unwrap_or("").to_string())))
                .await?;
        tx(&app, move |t, _| master::bang(t, &c, &p, &m)).await
    };
    answer(r.await)
}

async fn rename(State(app): State<Shared>, body: Bytes) -> Response {
    required_tx(&app, body, ["computer_id", "computer_partition_id", "new_name"], |t, [c, p, n]| master::rename(t, &c, &p, &n)).await
}

async fn use_computer(State(app): State<Shared>, body: Bytes) -> Response {
    let r = async {
        // the Python proxy reads no field: without them nothing is recorded
        let fields = form(&app, body, |f| Ok(required(f, ["computer_id", "use_string"]).ok())).await?;
        let Some([c, u]) = fields else {
            return Ok(Answer::Text("Ignored".into()));
        };
        tx(&app, move |t, _| master::use_computer(t, &c, &u)).await
    };
    answer(r.await)
}

/// `computerBang`: logged and recorded (with a computer id); answered
/// whatever it holds, as the Python proxy.
async fn computer_bang(State(app): State<Shared>, body: Bytes) -> Response {
    let r = async {
        let (c, message) =
            form(&app, body, |f| Ok((f.get("computer_id").unwrap_or("").to_string(), f.get("message").unwrap_or("").to_string()))).await?;
        tracing::info!("computer {} banged: {}", excerpt(&c, LOGGED_VALUE), excerpt(&message, LOGGED_VALUE));
        if !c.is_empty() {
            tx(&app, move |t, _| master::computer_bang(t, &c, &message)).await?;
        }
        Ok::<_, MasterError>(())
    };
    match r.await {
        Ok(()) => text(marshal::encode(&Value::str("")).unwrap_or_default()),
        Err(e) => e.into_response(),
    }
}

/// `updateComputerPartitionRelatedInstanceList`: the instances a partition
/// requested in its last run, recorded (the Python proxy has no such route).
async fn related_instances(State(app): State<Shared>, body: Bytes) -> Response {
    let r = async {
        let (c, p, list) = form(&app, body, |f| {
            let [c, p] = required(f, ["computer_id", "computer_partition_id"])?;
            let list = match f.marshal("instance_reference_xml", Value::List(vec![]))? {
                Value::List(items) | Value::Tuple(items) => items.iter().map(slap::instance_xml::python_str).collect::<Vec<_>>(),
                other => {
                    return Err(MasterError::BadRequest(format!(
                        "field 'instance_reference_xml' must be a list, found <{}>",
                        other.type_name()
                    )))
                }
            };
            Ok((c, p, list))
        })
        .await?;
        tx(&app, move |t, _| master::related_instances(t, &c, &p, &list)).await
    };
    answer(r.await)
}

/// The body is read (within the body limit) so that the connection stays
/// usable for the client's next request.
pub(crate) async fn method_not_allowed(_body: Bytes) -> Response {
    error_page(StatusCode::METHOD_NOT_ALLOWED, "The method is not allowed for the requested URL.")
}

/// The body is read (within the body limit) so that the connection stays
/// usable for the client's next request.
async fn not_found(_body: Bytes) -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.",
    )
}

/// One Werkzeug-style access line per request (`run.sh` reads them):
/// `127.0.0.1 - - [24/Nov/2026 17:32:24] "POST /path HTTP/1.1" 200 -`.
async fn access_log(req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string()).unwrap_or_else(|| "-".into());
    let uri = req.uri().to_string();
    let line = format!("{} {} {:?}", req.method(), excerpt(&uri, LOGGED_VALUE), req.version());
    let resp = next.run(req).await;
    let now = chrono::Local::now().format("%d/%b/%Y %H:%M:%S");
    tracing::info!("{peer} - - [{now}] \"{line}\" {} -", resp.status().as_u16());
    resp
}

/// Bodies over `max_request_size`: refused from their announced length before
/// they are read, or by axum's limit while they are read (its 413 shown as
/// our error page).
async fn too_large(State(app): State<Shared>, req: Request, next: Next) -> Response {
    let max = app.limits.max_request_size;
    let refused = || error_page(StatusCode::PAYLOAD_TOO_LARGE, &format!("request body larger than {max} bytes"));
    let announced = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return refused();
    }
    let resp = next.run(req).await;
    let ours = resp.headers().get(header::CONTENT_TYPE).is_some_and(|t| t == "text/html; charset=utf-8");
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE && !ours {
        return refused();
    }
    resp
}

async fn werkzeug_reason(resp: Response) -> Response {
    crate::app::with_werkzeug_reason(resp)
}

fn g<H, T>(h: H) -> MethodRouter<Shared>
where
    H: axum::handler::Handler<T, Shared>,
    T: 'static,
{
    get(h).fallback(method_not_allowed)
}

fn p<H, T>(h: H) -> MethodRouter<Shared>
where
    H: axum::handler::Handler<T, Shared>,
    T: 'static,
{
    post(h).fallback(method_not_allowed)
}

/// The router of the master.
pub fn router(app: Arc<App>) -> Router {
    let max_body = app.limits.max_request_size;
    Router::new()
        .route("/", g(crate::panel::index))
        .route("/getRunId", g(run_id))
        .route("/getFullComputerInformation", g(full_computer_information))
        .route("/getComputerInformation", g(full_computer_information))
        .route("/registerComputerPartition", g(register_partition))
        .route("/getComputerPartitionStatus", g(partition_status))
        .route("/getSoftwareReleaseListFromSoftwareProduct", g(product_list))
        .route("/requestComputerPartition", p(request_partition))
        .route("/setComputerPartitionConnectionXml", p(set_connection))
        .route("/supplySupply", p(supply))
        .route("/loadComputerConfigurationFromXML", p(format_report))
        .route("/buildingSoftwareRelease", report_route("software", "building", "Ignored"))
        .route("/availableSoftwareRelease", report_route("software", "available", "Ignored"))
        .route("/softwareReleaseError", report_route("software", "error", "Ignored"))
        .route("/destroyedSoftwareRelease", p(software_destroyed))
        .route("/startedComputerPartition", report_route("partition", "started", "Ignored"))
        .route("/stoppedComputerPartition", report_route("partition", "stopped", "Ignored"))
        .route("/softwareInstanceError", report_route("partition", "error", "Ignored"))
        .route("/destroyedComputerPartition", p(partition_destroyed))
        .route("/softwareInstanceBang", p(bang))
        .route("/softwareInstanceRename", p(rename))
        .route("/useComputer", p(use_computer))
        .route("/computerBang", p(computer_bang))
        .route("/updateComputerPartitionRelatedInstanceList", p(related_instances))
        .merge(crate::hateoas::router())
        .merge(crate::relay::router())
        .merge(crate::identity::router())
        .merge(crate::accounting::routes::router())
        .merge(crate::jsonrpc::router())
        .merge(crate::schema_api::router())
        .merge(crate::panel::router())
        // every route is authorized by proxy::rules (a route without a rule
        // is refused): routes merged after this layer would escape it
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), crate::rules::authorize))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), too_large))
        .layer(DefaultBodyLimit::max(max_body))
        // the binary cache streams its bodies within its own limits, and
        // applies the same authorize layer itself (shacache::router)
        .merge(crate::shacache::router(app.clone()))
        .layer(axum::middleware::from_fn(access_log))
        .layer(axum::middleware::map_response(werkzeug_reason))
        .with_state(app)
}
