//! A blocking HTTP client of a SLAP master: every call the Python
//! `slapos.slap` client makes (`slap-protocol.md` §5), with the same form
//! fields, the `X-SlapPartition` authorization header on instance-level POSTs,
//! configurable timeouts, TLS client certificates, and HTTP statuses mapped to
//! typed errors as the Python client maps them (`slap-protocol.md` §1.3).
//!
//! Blocking on purpose (ureq): the node and the client commands make their
//! calls one after the other, and a blocking client keeps them free of an
//! async runtime (smaller, simpler, lower memory).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::marshal::{self, DecodeError, Value};
use crate::model::{Computer, ComputerPartition, InstanceState, ModelError, RequestedInstance, SoftwareState};
use crate::tls::{describe_handshake_error, TlsFileError, TlsFiles};

/// The version we announce in `User-Agent` (the protocol level we speak).
pub const PROTOCOL_VERSION: &str = "1.26.1";

/// Errors of a SLAP call. Each names the URL and carries the master's message.
#[derive(Debug, thiserror::Error)]
pub enum SlapError {
    /// 404: the master does not know the object (or the route).
    #[error("not found: {url}: {message}")]
    NotFound {
        /// The URL called.
        url: String,
        /// The master's message.
        message: String,
    },
    /// 408: the master accepted the request but the resource is not ready yet.
    #[error("not ready yet: {url}: {message}")]
    NotReady {
        /// The URL called.
        url: String,
        /// The master's message.
        message: String,
    },
    /// 401/403.
    #[error("unauthorized ({status}): {url}: {message}")]
    Unauthorized {
        /// The HTTP status.
        status: u16,
        /// The URL called.
        url: String,
        /// The master's message.
        message: String,
    },
    /// 500, 502, 503, 520, 523, 524, 526.
    #[error("server error {status} from {url}: {message}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The URL called.
        url: String,
        /// The master's message.
        message: String,
    },
    /// Any other 4xx/5xx.
    #[error("HTTP error {status} from {url}: {message}")]
    Http {
        /// The HTTP status.
        status: u16,
        /// The URL called.
        url: String,
        /// The master's message.
        message: String,
    },
    /// Refused, reset, unresolvable…
    #[error("cannot connect to the master at {url}: {message}")]
    Connection {
        /// The URL called.
        url: String,
        /// Why.
        message: String,
    },
    /// The master did not answer within the client's timeout.
    #[error("no answer from the master at {url} within {seconds} s")]
    Timeout {
        /// The URL called.
        url: String,
        /// The timeout.
        seconds: u64,
    },
    /// The TLS handshake or certificates failed.
    #[error("TLS error talking to {url}: {message}")]
    Tls {
        /// The URL called.
        url: String,
        /// Why.
        message: String,
    },
    /// The answer is not a valid marshal document.
    #[error("invalid answer from {url}: {error}")]
    Decode {
        /// The URL called.
        url: String,
        /// Where and why decoding failed.
        error: DecodeError,
    },
    /// The answer decodes but is not the SLAP object expected.
    #[error("unexpected answer from {url}: {error}")]
    Model {
        /// The URL called.
        url: String,
        /// What does not fit.
        error: ModelError,
    },
    /// The client cannot be built (bad `master_url`, unreadable key or certificate).
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// A certificate, key or CA file that cannot be used (names the file).
    #[error(transparent)]
    Certificate(#[from] TlsFileError),
}

impl SlapError {
    /// The master could not be reached (connection refused, timeout, TLS):
    /// the node switches to its offline behaviour on these.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, SlapError::Connection { .. } | SlapError::Timeout { .. } | SlapError::Tls { .. })
    }
    /// The master does not know the object (404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, SlapError::NotFound { .. })
    }
    /// The HTTP status of the master's answer, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            SlapError::NotFound { .. } => Some(404),
            SlapError::NotReady { .. } => Some(408),
            SlapError::Unauthorized { status, .. } | SlapError::Server { status, .. } | SlapError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// How to reach a master.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `master_url` of the configuration (`http://…` or `https://…`, with an
    /// optional path prefix).
    pub master_url: String,
    /// Time allowed for each call (Python: 60 s).
    pub timeout: Duration,
    /// Private key (PEM) of `cert_file`, for TLS client authentication.
    pub key_file: Option<PathBuf>,
    /// Client certificate (PEM), for TLS client authentication.
    pub cert_file: Option<PathBuf>,
    /// `master_ca_file`: CA certificates (PEM) that verify the master;
    /// without it the master's certificate is verified against the web PKI
    /// roots. Verification is never turned off.
    pub ca_file: Option<PathBuf>,
}

impl ClientConfig {
    /// A configuration for `master_url` with the Python client's 60 s timeout.
    pub fn new(master_url: impl Into<String>) -> ClientConfig {
        ClientConfig { master_url: master_url.into(), timeout: Duration::from_secs(60), key_file: None, cert_file: None, ca_file: None }
    }
    /// The same with another time allowed for each call.
    pub fn with_timeout(mut self, timeout: Duration) -> ClientConfig {
        self.timeout = timeout;
        self
    }
    /// The TLS files of this configuration.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles { ca_file: self.ca_file.clone(), cert_file: self.cert_file.clone(), key_file: self.key_file.clone() }
    }
}

/// What a request for an instance gave.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestResult {
    /// The master allocated (or already had) the instance.
    Ready(Box<RequestedInstance>),
    /// The master accepted the request but has no partition for it yet (408).
    NotReady {
        /// The master's message.
        message: String,
    },
}

/// A request for an instance (`requestComputerPartition`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InstanceRequest {
    /// The software release URL to instantiate.
    pub software_release: String,
    /// The software type; `default` when empty, as the Python client.
    pub software_type: String,
    /// The instance title.
    pub partition_reference: String,
    /// Instance parameters (sent as instance XML).
    pub parameters: BTreeMap<String, Value>,
    /// The SLA (`computer_guid`, `instance_guid`, …).
    pub filter: BTreeMap<String, String>,
    /// The requested state (`None`: started).
    pub state: Option<InstanceState>,
    /// A shared (slave) instance, hosted by another partition.
    pub shared: bool,
    /// The requesting partition `(computer_id, partition_id)` when a partition
    /// asks (child instances), None for a person (OpenOrder).
    pub requester: Option<(String, String)>,
}

impl InstanceRequest {
    /// A request for an instance titled `title` of `software_release`, default type, no parameters.
    pub fn new(software_release: impl Into<String>, title: impl Into<String>) -> InstanceRequest {
        InstanceRequest { software_release: software_release.into(), partition_reference: title.into(), ..Default::default() }
    }
}

/// A client of one master.
#[derive(Clone)]
pub struct SlapClient {
    agent: ureq::Agent,
    base: url::Url,
    timeout: Duration,
    /// The last full computer information read, with its ETag, sent back
    /// as `If-None-Match` (a master that has no change answers 304).
    full_info: std::sync::Arc<std::sync::Mutex<Option<FullInfoCopy>>>,
}

/// A copy of a computer's full information and the master's ETag for it.
#[derive(Debug, Clone)]
struct FullInfoCopy {
    computer_id: String,
    etag: String,
    body: String,
}

impl std::fmt::Debug for SlapClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlapClient").field("master_url", &self.base.as_str()).finish()
    }
}

/// Normalises `master_url` like the Python client: brackets around a bare
/// IPv6 host, and a trailing `/` so that method names join below its path.
pub fn normalise_master_url(master_url: &str) -> Result<url::Url, SlapError> {
    let mut text = master_url.trim().to_string();
    // a bare IPv6 literal host: http://2001:db8::1:5000 cannot be told from a
    // port; SlapOS treats "scheme://<ipv6>:port" only when it parses as an IP
    if let Some((scheme, rest)) = text.split_once("://") {
        let (host_port, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if !host_port.starts_with('[') && host_port.matches(':').count() > 1 {
            let (host, port) = match host_port.rsplit_once(':') {
                Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && h.parse::<std::net::Ipv6Addr>().is_ok() => {
                    (h.to_string(), format!(":{p}"))
                }
                _ => (host_port.to_string(), String::new()),
            };
            if host.parse::<std::net::Ipv6Addr>().is_ok() {
                text = format!("{scheme}://[{host}]{port}{path}");
            }
        }
    }
    if !text.ends_with('/') {
        text.push('/');
    }
    let url = url::Url::parse(&text).map_err(|e| SlapError::Config(format!("invalid master URL '{master_url}': {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(SlapError::Config(format!("invalid master URL '{master_url}': scheme must be http or https")));
    }
    Ok(url)
}

impl SlapClient {
    /// A client of `config.master_url`. The TLS files are read and checked
    /// here (a file we cannot use is [`SlapError::Certificate`]), not on the
    /// first call.
    pub fn new(config: ClientConfig) -> Result<SlapClient, SlapError> {
        let base = normalise_master_url(&config.master_url)?;
        let tls = config.tls_files().config()?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(config.timeout))
            .user_agent(format!("slapos.core/{PROTOCOL_VERSION} (slapos-rs {})", env!("CARGO_PKG_VERSION")))
            .accept("*/*")
            .tls_config(tls)
            .build()
            .into();
        Ok(SlapClient { agent, base, timeout: config.timeout, full_info: Default::default() })
    }

    /// The master URL, normalised (with a trailing `/`).
    pub fn master_url(&self) -> &str {
        self.base.as_str()
    }

    fn url(&self, method: &str) -> Result<url::Url, SlapError> {
        self.base.join(method).map_err(|e| SlapError::Config(format!("cannot join {method} to {}: {e}", self.base)))
    }

    fn map_transport(&self, url: &str, e: ureq::Error) -> SlapError {
        if let Some(message) = describe_handshake_error(&e) {
            return SlapError::Tls { url: url.to_string(), message };
        }
        match e {
            ureq::Error::Timeout(_) => SlapError::Timeout { url: url.to_string(), seconds: self.timeout.as_secs().max(1) },
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                SlapError::Timeout { url: url.to_string(), seconds: self.timeout.as_secs().max(1) }
            }
            other => SlapError::Connection { url: url.to_string(), message: other.to_string() },
        }
    }

    fn finish(&self, url: &str, resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<String, SlapError> {
        let mut resp = resp.map_err(|e| self.map_transport(url, e))?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().with_config().limit(1 << 30).read_to_string().map_err(|e| self.map_transport(url, e))?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let message = error_message(&body);
        let url = url.to_string();
        Err(match status {
            404 => SlapError::NotFound { url, message },
            408 => SlapError::NotReady { url, message },
            401 | 403 => SlapError::Unauthorized { status, url, message },
            500 | 502 | 503 | 520 | 523 | 524 | 526 => SlapError::Server { status, url, message },
            _ => SlapError::Http { status, url, message },
        })
    }

    /// `GET <master>/<method>?<query>`; never carries the Authorization header.
    pub fn get(&self, method: &str, query: &[(&str, &str)]) -> Result<String, SlapError> {
        let mut url = self.url(method)?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        tracing::debug!("GET {url}");
        let resp = self.agent.get(url.as_str()).call();
        self.finish(url.as_str(), resp)
    }

    /// `POST <master>/<method>` with a form body; `partition` adds the
    /// `X-SlapPartition` authorization header of instance-level calls.
    pub fn post(&self, method: &str, form: &[(&str, &str)], partition: Option<(&str, &str)>) -> Result<String, SlapError> {
        let url = self.url(method)?;
        tracing::debug!("POST {url}");
        let mut req = self.agent.post(url.as_str());
        if let Some((computer_id, partition_id)) = partition {
            req = req.header("Authorization", format!("X-SlapPartition computer_id={computer_id}, computer_partition_id={partition_id}"));
        }
        let resp = req.send_form(form.iter().copied());
        self.finish(url.as_str(), resp)
    }

    fn decode(&self, method: &str, body: &str) -> Result<Value, SlapError> {
        marshal::decode(body).map_err(|error| SlapError::Decode { url: self.url_text(method), error })
    }

    fn url_text(&self, method: &str) -> String {
        self.url(method).map(|u| u.to_string()).unwrap_or_else(|_| method.to_string())
    }

    fn model<T>(&self, method: &str, r: Result<T, ModelError>) -> Result<T, SlapError> {
        r.map_err(|error| SlapError::Model { url: self.url_text(method), error })
    }

    fn encode(&self, v: &Value) -> Result<String, SlapError> {
        marshal::encode(v).map_err(|e| SlapError::Config(format!("cannot marshal value: {e}")))
    }

    // -- probes ----------------------------------------------------------

    /// `GET getHateoasUrl`: the master's HATEOAS entry point, or None when it
    /// has none (the Python proxy answers 404).
    pub fn hateoas_url(&self) -> Result<Option<String>, SlapError> {
        match self.get("getHateoasUrl", &[]) {
            Ok(body) => Ok(Some(body.trim().to_string()).filter(|s| !s.is_empty())),
            Err(SlapError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    // -- computer --------------------------------------------------------

    /// `getFullComputerInformation` (falls back to `getComputerInformation`
    /// on 404, like the Python client).
    pub fn computer_information(&self, computer_id: &str) -> Result<Computer, SlapError> {
        let q = [("computer_id", computer_id)];
        let (method, body) = match self.full_information(computer_id) {
            Ok(b) => ("getFullComputerInformation", b),
            Err(SlapError::NotFound { .. }) => ("getComputerInformation", self.get("getComputerInformation", &q)?),
            Err(e) => return Err(e),
        };
        let v = self.decode(method, &body)?;
        self.model(method, Computer::from_value(&v))
    }

    /// `getFullComputerInformation`, conditional when a copy of it is kept:
    /// 304 answers the copy; a 200 with an `ETag` replaces it.
    fn full_information(&self, computer_id: &str) -> Result<String, SlapError> {
        let mut url = self.url("getFullComputerInformation")?;
        url.query_pairs_mut().append_pair("computer_id", computer_id);
        let copy = self.full_info.lock().unwrap_or_else(|p| p.into_inner()).clone().filter(|c| c.computer_id == computer_id);
        let mut req = self.agent.get(url.as_str());
        if let Some(c) = &copy {
            req = req.header("If-None-Match", &c.etag);
        }
        tracing::debug!("GET {url}");
        let resp = req.call().map_err(|e| self.map_transport(url.as_str(), e))?;
        if let (304, Some(c)) = (resp.status().as_u16(), copy) {
            return Ok(c.body);
        }
        let etag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = self.finish(url.as_str(), Ok(resp))?;
        *self.full_info.lock().unwrap_or_else(|p| p.into_inner()) =
            etag.map(|etag| FullInfoCopy { computer_id: computer_id.to_string(), etag, body: body.clone() });
        Ok(body)
    }

    /// `loadComputerConfigurationFromXML`: the format report (`slap-protocol.md` §2.4).
    pub fn load_computer_configuration(&self, report: &Value) -> Result<(), SlapError> {
        let xml = self.encode(report)?;
        self.post("loadComputerConfigurationFromXML", &[("xml", &xml)], None).map(drop)
    }

    /// `useComputer`: a usage report; skipped when empty, like Python.
    pub fn use_computer(&self, computer_id: &str, use_string: &str) -> Result<(), SlapError> {
        if use_string.is_empty() {
            return Ok(());
        }
        self.post("useComputer", &[("computer_id", computer_id), ("use_string", use_string)], None).map(drop)
    }

    /// `computerBang`.
    pub fn computer_bang(&self, computer_id: &str, message: &str) -> Result<(), SlapError> {
        self.post("computerBang", &[("computer_id", computer_id), ("message", message)], None).map(drop)
    }

    // -- software releases -------------------------------------------------

    /// `supplySupply`: ask for a software release on a computer.
    pub fn supply(&self, url: &str, computer_id: &str, state: SoftwareState) -> Result<String, SlapError> {
        self.post("supplySupply", &[("url", url), ("computer_id", computer_id), ("state", state.as_str())], None)
    }

    /// `buildingSoftwareRelease`: the node started building `url`.
    pub fn software_release_building(&self, url: &str, computer_id: &str) -> Result<(), SlapError> {
        self.post("buildingSoftwareRelease", &[("url", url), ("computer_id", computer_id)], None).map(drop)
    }
    /// `availableSoftwareRelease`: `url` is built.
    pub fn software_release_available(&self, url: &str, computer_id: &str) -> Result<(), SlapError> {
        self.post("availableSoftwareRelease", &[("url", url), ("computer_id", computer_id)], None).map(drop)
    }
    /// `destroyedSoftwareRelease`: `url` is removed from the computer.
    pub fn software_release_destroyed(&self, url: &str, computer_id: &str) -> Result<(), SlapError> {
        self.post("destroyedSoftwareRelease", &[("url", url), ("computer_id", computer_id)], None).map(drop)
    }
    /// `softwareReleaseError`: building `url` failed with `log`.
    pub fn software_release_error(&self, url: &str, computer_id: &str, log: &str) -> Result<(), SlapError> {
        self.post("softwareReleaseError", &[("url", url), ("computer_id", computer_id), ("error_log", log)], None).map(drop)
    }

    /// `getSoftwareReleaseListFromSoftwareProduct`.
    pub fn software_release_list_from_product(&self, product: &str) -> Result<Vec<String>, SlapError> {
        const M: &str = "getSoftwareReleaseListFromSoftwareProduct";
        let body = self.get(M, &[("software_product_reference", product)])?;
        let v = self.decode(M, &body)?;
        match v.as_seq() {
            Some(items) => Ok(items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect()),
            None => self.model(M, Err(ModelError::WrongType { expected: "list", found: v.type_name().into() })),
        }
    }

    // -- instances -----------------------------------------------------------

    /// `requestComputerPartition`. A 408 is [`RequestResult::NotReady`].
    pub fn request(&self, req: &InstanceRequest) -> Result<RequestResult, SlapError> {
        const M: &str = "requestComputerPartition";
        let software_type = if req.software_type.is_empty() { "default" } else { &req.software_type };
        let parameters = self.encode(&Value::Dict(req.parameters.clone()))?;
        let filter = self.encode(&Value::Dict(req.filter.iter().map(|(k, v)| (k.clone(), Value::str(v))).collect()))?;
        let state = self.encode(&req.state.map(|s| Value::str(s.as_str())).unwrap_or(Value::None))?;
        let shared = self.encode(&Value::Bool(req.shared))?;
        let result = match &req.requester {
            None => self.post(
                M,
                &[
                    ("software_release", &req.software_release),
                    ("partition_reference", &req.partition_reference),
                    ("partition_parameter_xml", &parameters),
                    ("filter_xml", &filter),
                    ("software_type", software_type),
                    ("state", &state),
                    ("shared_xml", &shared),
                ],
                None,
            ),
            Some((computer_id, partition_id)) => self.post(
                M,
                &[
                    ("computer_id", computer_id),
                    ("computer_partition_id", partition_id),
                    ("software_release", &req.software_release),
                    ("software_type", software_type),
                    ("partition_reference", &req.partition_reference),
                    ("shared_xml", &shared),
                    ("partition_parameter_xml", &parameters),
                    ("filter_xml", &filter),
                    ("state", &state),
                ],
                Some((computer_id, partition_id)),
            ),
        };
        match result {
            Ok(body) => {
                let v = self.decode(M, &body)?;
                Ok(RequestResult::Ready(Box::new(self.model(M, RequestedInstance::from_value(&v))?)))
            }
            Err(SlapError::NotReady { message, .. }) => Ok(RequestResult::NotReady { message }),
            Err(e) => Err(e),
        }
    }

    /// `registerComputerPartition`: one partition as the master sees it.
    pub fn register_partition(&self, computer_id: &str, partition_id: &str) -> Result<ComputerPartition, SlapError> {
        const M: &str = "registerComputerPartition";
        let body = self.get(M, &[("computer_reference", computer_id), ("computer_partition_reference", partition_id)])?;
        let v = self.decode(M, &body)?;
        self.model(M, ComputerPartition::from_value(&v))
    }

    fn partition_post(&self, method: &str, computer_id: &str, partition_id: &str, extra: &[(&str, &str)]) -> Result<String, SlapError> {
        let mut form = vec![("computer_id", computer_id), ("computer_partition_id", partition_id)];
        form.extend_from_slice(extra);
        self.post(method, &form, Some((computer_id, partition_id)))
    }

    /// `startedComputerPartition`: the partition's services run.
    pub fn partition_started(&self, computer_id: &str, partition_id: &str) -> Result<(), SlapError> {
        self.partition_post("startedComputerPartition", computer_id, partition_id, &[]).map(drop)
    }
    /// `stoppedComputerPartition`: the partition's services are stopped.
    pub fn partition_stopped(&self, computer_id: &str, partition_id: &str) -> Result<(), SlapError> {
        self.partition_post("stoppedComputerPartition", computer_id, partition_id, &[]).map(drop)
    }
    /// `destroyedComputerPartition`; returns the master's answer (`OK`, or why
    /// it does not free the partition yet).
    pub fn partition_destroyed(&self, computer_id: &str, partition_id: &str) -> Result<String, SlapError> {
        self.partition_post("destroyedComputerPartition", computer_id, partition_id, &[])
    }
    /// `softwareInstanceError`: processing the partition (or its shared instance `slave_reference`) failed with `log`.
    pub fn partition_error(
        &self,
        computer_id: &str,
        partition_id: &str,
        log: &str,
        slave_reference: Option<&str>,
    ) -> Result<(), SlapError> {
        let mut extra = vec![("error_log", log)];
        if let Some(s) = slave_reference {
            extra.push(("slave_reference", s));
        }
        self.partition_post("softwareInstanceError", computer_id, partition_id, &extra).map(drop)
    }
    /// `setComputerPartitionConnectionXml`: publish connection parameters.
    pub fn set_connection_parameters(
        &self,
        computer_id: &str,
        partition_id: &str,
        parameters: &BTreeMap<String, Value>,
        slave_reference: Option<&str>,
    ) -> Result<(), SlapError> {
        let xml = self.encode(&Value::Dict(parameters.clone()))?;
        self.partition_post(
            "setComputerPartitionConnectionXml",
            computer_id,
            partition_id,
            &[("connection_xml", &xml), ("slave_reference", slave_reference.unwrap_or("None"))],
        )
        .map(drop)
    }
    /// `softwareInstanceBang`: ask the master to reprocess the instance tree.
    pub fn bang(&self, computer_id: &str, partition_id: &str, message: &str) -> Result<(), SlapError> {
        self.partition_post("softwareInstanceBang", computer_id, partition_id, &[("message", message)]).map(drop)
    }
    /// `softwareInstanceRename`.
    pub fn rename(
        &self,
        computer_id: &str,
        partition_id: &str,
        new_name: &str,
        slave_reference: Option<&str>,
    ) -> Result<String, SlapError> {
        let mut extra = vec![("new_name", new_name)];
        if let Some(s) = slave_reference {
            extra.push(("slave_reference", s));
        }
        self.partition_post("softwareInstanceRename", computer_id, partition_id, &extra)
    }
    /// `getComputerPartitionCertificate`: `(certificate, key)`.
    pub fn certificate(&self, computer_id: &str, partition_id: &str) -> Result<(String, String), SlapError> {
        const M: &str = "getComputerPartitionCertificate";
        let body = self.get(M, &[("computer_id", computer_id), ("computer_partition_id", partition_id)])?;
        let v = self.decode(M, &body)?;
        let d = match v.as_dict() {
            Some(d) => d,
            None => return self.model(M, Err(ModelError::WrongType { expected: "dictionary", found: v.type_name().into() })),
        };
        let get = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        Ok((get("certificate"), get("key")))
    }
    /// `updateComputerPartitionRelatedInstanceList`: the instances this
    /// partition requested in its last run.
    pub fn update_related_instance_list(
        &self,
        computer_id: &str,
        partition_id: &str,
        instance_references: &[String],
    ) -> Result<(), SlapError> {
        let xml = self.encode(&Value::List(instance_references.iter().map(Value::str).collect()))?;
        self.partition_post("updateComputerPartitionRelatedInstanceList", computer_id, partition_id, &[("instance_reference_xml", &xml)])
            .map(drop)
    }
}

/// The message of an error body: the text of Werkzeug's `<p>…</p>`, else the
/// start of the body.
pub fn error_message(body: &str) -> String {
    if let (Some(start), Some(end)) = (body.find("<p>"), body.rfind("</p>")) {
        if start + 3 <= end {
            return html_unescape(body[start + 3..end].trim());
        }
    }
    let t = body.trim();
    let mut cut: String = t.chars().take(200).collect();
    if cut.len() < t.len() {
        cut.push('…');
    }
    cut
}

fn html_unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#x27;", "'").replace("&#39;", "'").replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_url_normalisation() {
        assert_eq!(normalise_master_url("http://h:5000").unwrap().as_str(), "http://h:5000/");
        assert_eq!(normalise_master_url("http://h:5000/prefix").unwrap().as_str(), "http://h:5000/prefix/");
        assert_eq!(normalise_master_url("http://2001:db8::1:5000").unwrap().as_str(), "http://[2001:db8::1]:5000/");
        assert_eq!(normalise_master_url("http://[::1]:80/x/").unwrap().as_str(), "http://[::1]/x/");
        assert!(normalise_master_url("ftp://h/").is_err());
        assert!(normalise_master_url("not a url").is_err());
    }

    #[test]
    fn error_messages_from_werkzeug_pages() {
        let body = "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n<p>No free computer partition found for: NoRoom</p>\n";
        assert_eq!(error_message(body), "No free computer partition found for: NoRoom");
        assert_eq!(error_message("plain"), "plain");
    }
}
