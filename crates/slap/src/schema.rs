//! Software release schemas: `software.cfg.json` and its per-type parameter
//! schemas, loaded as slapos.core 1.26.1 does (`slapos.util.SoftwareReleaseSchema`)
//! and validated with the `jsonschema` crate.
//!
//! A software release `<url>` may publish `<url>.json`:
//!
//! ```json
//! {"name": "…", "serialisation": "xml",
//!  "software-type": {"default": {"title": "…", "description": "…",
//!     "request": "instance-input-schema.json", "response": "instance-output-schema.json",
//!     "serialisation": "json-in-xml", "shared": false, "index": 0}}}
//! ```
//!
//! `request` and `response` are relative to the software release URL; the
//! schemas they name may `$ref` other documents relative to themselves.
//! Parameters of a `json-in-xml` type travel as one `_` parameter holding
//! their JSON text ([`Serialisation::JsonInXml`]); `xml` ones as flat
//! string parameters; [`crate::instance_xml::wrap_json`] serialises them so.
//!
//! Every document is untrusted: fetched with a timeout (and a total for
//! all the fetches of one release), at most
//! [`Options::max_document_bytes`] each and [`Options::max_documents`] in
//! all, only over `http(s)` or, for a local software release, from local
//! files (`file:` and plain paths; below [`Options::local_root`] when set).
//! A remote release can never make us read a local file. Documents are
//! cached for the life of the [`SoftwareReleaseSchema`], and each type's
//! validator is compiled once.
//!
//! Why the `jsonschema` crate: it implements drafts 4, 6, 7, 2019-09 and
//! 2020-12 (SlapOS schemas use 4 and 7) against the official test suite, is
//! actively maintained, compiles a schema once into a fast validator, and
//! takes a custom retriever, so every `$ref` goes through our bounded fetcher
//! rather than its own HTTP client.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use url::Url;

/// The software type requested when none is named.
pub const DEFAULT_SOFTWARE_TYPE: &str = "default";
/// The old name of the default type, read as [`DEFAULT_SOFTWARE_TYPE`].
pub const OLD_DEFAULT_SOFTWARE_TYPE: &str = "RootSoftwareInstance";

/// Limits and timeouts of schema loading.
#[derive(Debug, Clone)]
pub struct Options {
    /// Timeout of each HTTP fetch (connection to end of body).
    pub timeout: Duration,
    /// Time all the HTTP fetches of one software release may take together
    /// (a chain of slow documents stops there).
    pub total_timeout: Duration,
    /// Largest document read, in bytes (larger ones are an error).
    pub max_document_bytes: u64,
    /// Most documents fetched for one software release (`software.cfg.json`
    /// and every schema it leads to).
    pub max_documents: usize,
    /// For a local software release: local files must be below this
    /// directory (after resolving links). None: any local file the release
    /// names (it is the caller's own file, as in SlapOS). Never used for a
    /// remote release, which reads no local file at all.
    pub local_root: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(30),
            max_document_bytes: 1 << 20,
            max_documents: 32,
            local_root: None,
        }
    }
}

/// Why a schema could not be loaded or used. Messages are one line.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SchemaError {
    /// The software release URL or a reference is not a URL we can read.
    #[error("invalid URL '{url}': {message}")]
    InvalidUrl {
        /// The text given.
        url: String,
        /// Why.
        message: String,
    },
    /// A reference leads somewhere we refuse to read.
    #[error("refused to read {url}: {reason}")]
    Refused {
        /// The absolute URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A document is larger than [`Options::max_document_bytes`].
    #[error("{url} is larger than {limit} bytes")]
    TooLarge {
        /// The document.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// More documents than [`Options::max_documents`].
    #[error("more than {limit} schema documents for one software release (at {url})")]
    TooManyDocuments {
        /// The document that went over.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// A fetch failed (network, timeout, HTTP status, file).
    #[error("cannot read {url}: {message}")]
    Fetch {
        /// The document.
        url: String,
        /// Why.
        message: String,
    },
    /// A document is not JSON or not shaped as expected.
    #[error("invalid schema document {url}: {message}")]
    Invalid {
        /// The document.
        url: String,
        /// Why.
        message: String,
    },
    /// The release's `software.cfg.json` has no entry for this type.
    #[error("no schema defined for software type '{software_type}'")]
    NoSuchType {
        /// The type asked for.
        software_type: String,
    },
}

/// How a type's parameters travel to the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serialisation {
    /// Flat `<parameter id="k">v</parameter>` strings.
    Xml,
    /// The parameters' JSON text in the one `_` parameter.
    JsonInXml,
}

impl Serialisation {
    /// `xml` or `json-in-xml`, the names of `software.cfg.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Serialisation::Xml => "xml",
            Serialisation::JsonInXml => "json-in-xml",
        }
    }
    /// Parses `xml` / `json-in-xml`.
    pub fn parse(s: &str) -> Option<Serialisation> {
        match s {
            "xml" => Some(Serialisation::Xml),
            "json-in-xml" => Some(Serialisation::JsonInXml),
            _ => None,
        }
    }
}

/// One entry of the `software-type` map.
#[derive(Debug, Clone, PartialEq)]
pub struct SoftwareType {
    /// The key in the map (what `slapos request --type` names).
    pub name: String,
    /// `title`, if any.
    pub title: Option<String>,
    /// `description`, if any.
    pub description: Option<String>,
    /// `shared`: a type for shared (slave) instances.
    pub shared: bool,
    /// `software-type`: the type actually requested, when it differs from
    /// the key (newer releases key shared variants as `<type>-slave`).
    pub software_type: Option<String>,
    /// The type's own `serialisation`, if any.
    pub serialisation: Option<Serialisation>,
    /// The request (input) schema, resolved against the release URL.
    pub request: Option<Url>,
    /// The response (connection parameters) schema, resolved likewise.
    pub response: Option<Url>,
}

/// One way the parameters do not match the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Where, as a JSON path (`$`, `$.port`, `$.list[0]`), as SlapOS prints it.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A software release's schema: its `software.cfg.json` and, on demand, the
/// request schema of each type (fetched, cached, compiled once).
pub struct SoftwareReleaseSchema {
    software_url: String,
    document: Value,
    serialisation: Option<Serialisation>,
    types: Vec<SoftwareType>,
    fetcher: Arc<Fetcher>,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl std::fmt::Debug for SoftwareReleaseSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareReleaseSchema").field("software_url", &self.software_url).field("types", &self.types).finish()
    }
}

impl SoftwareReleaseSchema {
    /// Loads `<software_url>.json`. `Ok(None)`: the release publishes no
    /// schema (404, or no such local file). `software_url` is an `http(s)`
    /// URL, a `file:` URL or a local path (relative to the current directory).
    pub fn load(software_url: &str, options: &Options) -> Result<Option<SoftwareReleaseSchema>, SchemaError> {
        let release = release_url(software_url)?;
        let fetcher = Arc::new(Fetcher::new(&release, options.clone()));
        let json_url = Url::parse(&format!("{release}.json"))
            .map_err(|e| SchemaError::InvalidUrl { url: software_url.to_string(), message: e.to_string() })?;
        let document = match fetcher.get(&json_url) {
            Ok(d) => d,
            Err(Fetched::Missing) => return Ok(None),
            Err(Fetched::Error(e)) => return Err(e),
        };
        let invalid = |message: String| SchemaError::Invalid { url: json_url.to_string(), message };
        let root = document.as_object().ok_or_else(|| invalid("not a JSON object".into()))?;
        let serialisation = root.get("serialisation").and_then(Value::as_str).and_then(Serialisation::parse);
        let types = match root.get("software-type") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(m)) => m.iter().map(|(k, v)| software_type(&release, k, v)).collect::<Result<_, _>>().map_err(invalid)?,
            Some(_) => return Err(invalid("'software-type' is not an object".into())),
        };
        let document = (*document).clone();
        Ok(Some(SoftwareReleaseSchema {
            software_url: software_url.to_string(),
            document,
            serialisation,
            types,
            fetcher,
            validators: Mutex::new(HashMap::new()),
        }))
    }

    /// The software release URL, as given.
    pub fn software_url(&self) -> &str {
        &self.software_url
    }

    /// The whole `software.cfg.json`.
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// The types, in the document's order.
    pub fn software_types(&self) -> &[SoftwareType] {
        &self.types
    }

    /// The entry of `software_type` (None or `RootSoftwareInstance`: the
    /// default type), as SlapOS looks it up: by its key.
    pub fn software_type(&self, software_type: Option<&str>) -> Result<&SoftwareType, SchemaError> {
        let name = normal_type(software_type);
        self.types.iter().find(|t| t.name == name).ok_or_else(|| SchemaError::NoSuchType { software_type: name.to_string() })
    }

    /// The serialisation of `software_type`'s parameters: the type's own,
    /// else the release's. None when neither declares a valid one (SlapOS
    /// then warns and assumes json-in-xml).
    pub fn serialisation(&self, software_type: Option<&str>) -> Option<Serialisation> {
        self.software_type(software_type).ok().and_then(|t| t.serialisation).or(self.serialisation)
    }

    /// The request schema of `software_type`, as published (its `$ref`s
    /// unresolved). `Ok(None)`: the type names no request schema.
    pub fn request_schema(&self, software_type: Option<&str>) -> Result<Option<Arc<Value>>, SchemaError> {
        match &self.software_type(software_type)?.request {
            None => Ok(None),
            Some(url) => self.fetcher.get(url).map(Some).map_err(|e| e.into_error(url)),
        }
    }

    /// The request schema of `software_type` with its `$ref`s replaced by
    /// what they point to (for a form generator). A reference that loops,
    /// that is not a JSON pointer, or beyond the expansion budget is left as
    /// an absolute `$ref`.
    pub fn resolved_request_schema(&self, software_type: Option<&str>) -> Result<Option<Value>, SchemaError> {
        let Some(url) = self.software_type(software_type)?.request.clone() else { return Ok(None) };
        let document = self.fetcher.get(&url).map_err(|e| e.into_error(&url))?;
        let mut inliner = Inliner { fetcher: &self.fetcher, url: &url, stack: Vec::new(), budget: 1000, size: 0 };
        let base = document_base(&url, &document);
        inliner.inline(&document, &base, &document, 0).map(Some)
    }

    /// Validates `parameters` (the JSON object a requester sends: for a
    /// json-in-xml type, `{"_": "<json>"}` is unwrapped first, as SlapOS
    /// does; `$schema` is ignored) against `software_type`'s request schema.
    /// An empty list: valid, or the type has no request schema.
    pub fn validate(&self, software_type: Option<&str>, parameters: &Value) -> Result<Vec<Issue>, SchemaError> {
        let Some(validator) = self.validator(software_type)? else { return Ok(Vec::new()) };
        let mut parameters = parameters.clone();
        if let Some(Value::String(text)) = parameters.get("_") {
            if self.serialisation(software_type) != Some(Serialisation::Xml) {
                parameters = serde_json::from_str(text)
                    .map_err(|e| SchemaError::Invalid { url: "parameter '_'".into(), message: format!("its JSON does not parse: {e}") })?;
            }
        }
        if let Value::Object(m) = &mut parameters {
            m.remove("$schema");
        }
        Ok(validator.iter_errors(&parameters).map(|e| Issue { path: json_path(e.instance_path()), message: python_message(&e) }).collect())
    }

    /// The compiled validator of `software_type`'s request schema (compiled
    /// on first use, then shared).
    fn validator(&self, software_type: Option<&str>) -> Result<Option<Arc<jsonschema::Validator>>, SchemaError> {
        let name = normal_type(software_type).to_string();
        if let Some(v) = self.validators.lock().unwrap_or_else(|p| p.into_inner()).get(&name) {
            return Ok(Some(v.clone()));
        }
        let Some(url) = self.software_type(software_type)?.request.clone() else { return Ok(None) };
        let document = self.fetcher.get(&url).map_err(|e| e.into_error(&url))?;
        let validator = jsonschema::options()
            .with_base_uri(url.to_string())
            .with_retriever(Retriever(self.fetcher.clone()))
            .should_validate_formats(false)
            .build(&document)
            .map_err(|e| SchemaError::Invalid { url: url.to_string(), message: one_line(&e.to_string()) })?;
        let validator = Arc::new(validator);
        self.validators.lock().unwrap_or_else(|p| p.into_inner()).insert(name, validator.clone());
        Ok(Some(validator))
    }
}

/// None and `RootSoftwareInstance` → `default`.
fn normal_type(software_type: Option<&str>) -> &str {
    match software_type {
        None | Some("") | Some(OLD_DEFAULT_SOFTWARE_TYPE) => DEFAULT_SOFTWARE_TYPE,
        Some(t) => t,
    }
}

/// The software release as an absolute URL: `http(s):`/`file:` as given, a
/// path made absolute.
fn release_url(software_url: &str) -> Result<Url, SchemaError> {
    let invalid = |message: String| SchemaError::InvalidUrl { url: software_url.to_string(), message };
    if software_url.starts_with("http://") || software_url.starts_with("https://") || software_url.starts_with("file:") {
        return Url::parse(software_url).map_err(|e| invalid(e.to_string()));
    }
    if software_url.contains("://") {
        return Err(invalid("only http, https and file URLs or local paths".into()));
    }
    let path = std::path::absolute(software_url).map_err(|e| invalid(e.to_string()))?;
    Url::from_file_path(&path).map_err(|_| invalid("not an absolute path".into()))
}

fn software_type(release: &Url, name: &str, v: &Value) -> Result<SoftwareType, String> {
    let m = v.as_object().ok_or_else(|| format!("software type '{name}' is not an object"))?;
    let text = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
    let join = |k: &str| -> Result<Option<Url>, String> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => release.join(s).map(Some).map_err(|e| format!("software type '{name}': bad '{k}' {s:?}: {e}")),
            Some(_) => Err(format!("software type '{name}': '{k}' is not a string")),
        }
    };
    Ok(SoftwareType {
        name: name.to_string(),
        title: text("title"),
        description: text("description"),
        shared: m.get("shared").and_then(Value::as_bool).unwrap_or(false),
        software_type: text("software-type"),
        serialisation: text("serialisation").as_deref().and_then(Serialisation::parse),
        request: join("request")?,
        response: join("response")?,
    })
}

/// The message of `e` as Python jsonschema words it for the common
/// keywords (values as Python `repr`s); the crate's own for the others.
fn python_message(e: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::{TypeKind, ValidationErrorKind as K};
    let repr = |v: &Value| crate::instance_xml::python_repr(&to_python(v));
    let instance = repr(e.instance());
    match e.kind() {
        K::Type { kind } => {
            let types: Vec<String> = match kind {
                TypeKind::Single(t) => vec![format!("'{t}'")],
                TypeKind::Multiple(set) => set.iter().map(|t| format!("'{t}'")).collect(),
            };
            format!("{instance} is not of type {}", types.join(", "))
        }
        K::Enum { options } => format!("{instance} is not one of {}", repr(options)),
        K::Required { property } => format!("{} is a required property", repr(property)),
        K::Constant { expected_value } => format!("{} was expected", repr(expected_value)),
        K::Minimum { limit } => format!("{instance} is less than the minimum of {}", repr(limit)),
        K::Maximum { limit } => format!("{instance} is greater than the maximum of {}", repr(limit)),
        K::MinLength { limit: 1 } => format!("{instance} should be non-empty"),
        K::MinLength { .. } => format!("{instance} is too short"),
        K::MaxLength { limit: 0 } => format!("{instance} is expected to be empty"),
        K::MaxLength { .. } => format!("{instance} is too long"),
        _ => e.to_string(),
    }
}

/// A JSON value as the Python value `json.load` makes of it.
fn to_python(v: &Value) -> crate::marshal::Value {
    use crate::marshal::Value as P;
    match v {
        Value::Null => P::None,
        Value::Bool(b) => P::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => P::Int(i.into()),
            (None, Some(u)) => P::Int(u.into()),
            _ => P::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => P::Str(s.clone()),
        Value::Array(a) => P::List(a.iter().map(to_python).collect()),
        Value::Object(m) => P::Dict(m.iter().map(|(k, v)| (k.clone(), to_python(v))).collect()),
    }
}

/// `^[a-zA-Z][a-zA-Z0-9_]*$`: a property name written `.name` in a JSON path.
fn plain_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `/a/0/b-c` → `$.a[0]['b-c']`, as Python jsonschema's `json_path`.
fn json_path(location: &jsonschema::paths::Location) -> String {
    let mut path = String::from("$");
    for segment in location {
        match segment {
            jsonschema::paths::LocationSegment::Index(i) => path.push_str(&format!("[{i}]")),
            jsonschema::paths::LocationSegment::Property(p) if plain_name(&p) => {
                path.push('.');
                path.push_str(&p);
            }
            jsonschema::paths::LocationSegment::Property(p) => {
                path.push_str("['");
                path.push_str(&p.replace('\\', "\\\\").replace('\'', "\\'"));
                path.push_str("']");
            }
        }
    }
    path
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The base URL of references in `document` fetched from `url`: its
/// top-level `$id` (or draft 4's `id`) joined to `url`, else `url`.
fn document_base(url: &Url, document: &Value) -> Url {
    let id = document.get("$id").or_else(|| document.get("id")).and_then(Value::as_str);
    id.and_then(|id| url.join(id).ok()).unwrap_or_else(|| url.clone())
}

/// Why a fetch gave nothing.
enum Fetched {
    /// 404 or no such file.
    Missing,
    /// Anything else.
    Error(SchemaError),
}

impl Fetched {
    fn into_error(self, url: &Url) -> SchemaError {
        match self {
            Fetched::Missing => SchemaError::Fetch { url: url.to_string(), message: "not found".into() },
            Fetched::Error(e) => e,
        }
    }
}

/// Fetches documents within the limits, once each.
struct Fetcher {
    agent: ureq::Agent,
    options: Options,
    /// A local release may read local files; a remote one never.
    local: bool,
    cache: Mutex<HashMap<Url, Arc<Value>>>,
    /// Time spent in HTTP fetches so far.
    spent: Mutex<Duration>,
}

impl Fetcher {
    fn new(release: &Url, options: Options) -> Fetcher {
        let local = release.scheme() == "file";
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(options.timeout))
            .max_redirects(3)
            .user_agent(format!("slapos-rs/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Fetcher { agent, options, local, cache: Mutex::new(HashMap::new()), spent: Mutex::new(Duration::ZERO) }
    }

    /// The JSON document at `url` (its fragment ignored), from the cache or
    /// fetched.
    fn get(&self, url: &Url) -> Result<Arc<Value>, Fetched> {
        let mut url = url.clone();
        url.set_fragment(None);
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = cache.get(&url) {
                return Ok(v.clone());
            }
            if cache.len() >= self.options.max_documents {
                let limit = self.options.max_documents;
                return Err(Fetched::Error(SchemaError::TooManyDocuments { url: url.to_string(), limit }));
            }
        }
        let bytes = match url.scheme() {
            "http" | "https" => self.http(&url)?,
            "file" if self.local => self.file(&url)?,
            "file" => {
                let reason = "a remote software release cannot name local files".into();
                return Err(Fetched::Error(SchemaError::Refused { url: url.to_string(), reason }));
            }
            other => {
                let reason = format!("scheme '{other}' is not http, https or file");
                return Err(Fetched::Error(SchemaError::Refused { url: url.to_string(), reason }));
            }
        };
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Fetched::Error(SchemaError::Invalid { url: url.to_string(), message: e.to_string() }))?;
        let value = Arc::new(value);
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(url, value.clone());
        Ok(value)
    }

    fn http(&self, url: &Url) -> Result<Vec<u8>, Fetched> {
        let error = |message: String| Fetched::Error(SchemaError::Fetch { url: url.to_string(), message });
        let transport = |e: ureq::Error| match e {
            ureq::Error::Timeout(_) => error(format!("timed out after {:?}", self.options.timeout)),
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                error(format!("timed out after {:?}", self.options.timeout))
            }
            ureq::Error::BodyExceedsLimit(_) => {
                Fetched::Error(SchemaError::TooLarge { url: url.to_string(), limit: self.options.max_document_bytes })
            }
            ureq::Error::StatusCode(404) => Fetched::Missing,
            ureq::Error::StatusCode(s) => error(format!("HTTP status {s}")),
            other => error(other.to_string()),
        };
        let spent = *self.spent.lock().unwrap_or_else(|p| p.into_inner());
        let left = self.options.total_timeout.saturating_sub(spent);
        if left.is_zero() {
            return Err(error(format!("the schema's fetches took more than {:?} in all", self.options.total_timeout)));
        }
        let start = std::time::Instant::now();
        let timeout = self.options.timeout.min(left);
        let read = || -> Result<Vec<u8>, ureq::Error> {
            let request = self.agent.get(url.as_str()).config().timeout_global(Some(timeout)).build();
            request.call()?.body_mut().with_config().limit(self.options.max_document_bytes).read_to_vec()
        };
        let result = read();
        *self.spent.lock().unwrap_or_else(|p| p.into_inner()) += start.elapsed();
        result.map_err(transport)
    }

    fn file(&self, url: &Url) -> Result<Vec<u8>, Fetched> {
        let error = |message: String| Fetched::Error(SchemaError::Fetch { url: url.to_string(), message });
        let path = url.to_file_path().map_err(|_| error("not a local path".into()))?;
        let real = match std::fs::canonicalize(&path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Fetched::Missing),
            Err(e) => return Err(error(e.to_string())),
        };
        if let Some(root) = &self.options.local_root {
            let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.clone());
            if !real.starts_with(&root) {
                let reason = format!("outside {}", root.display());
                return Err(Fetched::Error(SchemaError::Refused { url: url.to_string(), reason }));
            }
        }
        read_regular(&real, self.options.max_document_bytes).map_err(|e| match e {
            ReadError::TooLarge => Fetched::Error(SchemaError::TooLarge { url: url.to_string(), limit: self.options.max_document_bytes }),
            ReadError::Other(m) => error(m),
        })
    }
}

enum ReadError {
    TooLarge,
    Other(String),
}

/// Reads a regular file (never a FIFO or device), at most `limit` bytes.
fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let meta = std::fs::metadata(path).map_err(|e| ReadError::Other(e.to_string()))?;
    if !meta.is_file() {
        return Err(ReadError::Other("not a regular file".into()));
    }
    let file = std::fs::File::open(path).map_err(|e| ReadError::Other(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| ReadError::Other(e.to_string()))?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge);
    }
    Ok(bytes)
}

/// The `jsonschema` crate's view of our fetcher.
struct Retriever(Arc<Fetcher>);

impl jsonschema::Retrieve for Retriever {
    fn retrieve(&self, uri: &jsonschema::Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let url = Url::parse(uri.as_str())?;
        match self.0.get(&url) {
            Ok(v) => Ok((*v).clone()),
            Err(e) => Err(Box::new(e.into_error(&url))),
        }
    }
}

/// The largest schema [`SoftwareReleaseSchema::resolved_request_schema`]
/// makes: its values plus the bytes of its strings and keys.
pub const MAX_RESOLVED_SIZE: usize = 8 << 20;

/// Replaces `$ref`s by their targets, within a budget.
struct Inliner<'a> {
    fetcher: &'a Fetcher,
    /// The request schema (named in errors).
    url: &'a Url,
    /// What was written so far, in [`MAX_RESOLVED_SIZE`] units.
    size: usize,
    /// The references being expanded (a loop leaves the `$ref`).
    stack: Vec<Url>,
    /// References left to expand.
    budget: usize,
}

impl Inliner<'_> {
    fn inline(&mut self, value: &Value, base: &Url, document: &Value, depth: usize) -> Result<Value, SchemaError> {
        self.size += 1 + match value {
            Value::String(s) => s.len(),
            Value::Object(m) => m.keys().map(String::len).sum(),
            _ => 0,
        };
        if self.size > MAX_RESOLVED_SIZE {
            let message = format!("with its $refs inlined it is larger than {MAX_RESOLVED_SIZE} bytes");
            return Err(SchemaError::Invalid { url: self.url.to_string(), message });
        }
        match value {
            Value::Array(a) => a.iter().map(|v| self.inline(v, base, document, depth)).collect::<Result<_, _>>().map(Value::Array),
            Value::Object(m) => match m.get("$ref").and_then(Value::as_str) {
                Some(reference) => self.reference(m, reference, base, document, depth),
                None => {
                    let mut out = Map::new();
                    for (k, v) in m {
                        out.insert(k.clone(), self.inline(v, base, document, depth)?);
                    }
                    Ok(Value::Object(out))
                }
            },
            other => Ok(other.clone()),
        }
    }

    fn reference(
        &mut self,
        m: &Map<String, Value>,
        reference: &str,
        base: &Url,
        document: &Value,
        depth: usize,
    ) -> Result<Value, SchemaError> {
        let target = base.join(reference).map_err(|e| SchemaError::InvalidUrl { url: reference.to_string(), message: e.to_string() })?;
        let unresolved = || {
            let mut out = m.clone();
            out.insert("$ref".into(), Value::String(target.to_string()));
            Ok(Value::Object(out))
        };
        if self.budget == 0 || depth > 64 || self.stack.contains(&target) {
            return unresolved();
        }
        let pointer = percent_encoding::percent_decode_str(target.fragment().unwrap_or("")).decode_utf8_lossy().into_owned();
        if !pointer.is_empty() && !pointer.starts_with('/') {
            return unresolved();
        }
        let mut doc_url = target.clone();
        doc_url.set_fragment(None);
        let mut base_no_fragment = base.clone();
        base_no_fragment.set_fragment(None);
        let (doc, doc_base) = if doc_url == base_no_fragment {
            (Arc::new(document.clone()), base.clone())
        } else {
            let doc = self.fetcher.get(&doc_url).map_err(|e| e.into_error(&doc_url))?;
            let b = document_base(&doc_url, &doc);
            (doc, b)
        };
        let Some(found) = doc.pointer(&pointer) else { return unresolved() };
        self.budget -= 1;
        self.stack.push(target);
        let expanded = self.inline(found, &doc_base, &doc, depth + 1);
        self.stack.pop();
        let mut expanded = expanded?;
        if let Value::Object(out) = &mut expanded {
            out.remove("$schema");
            out.remove("$id");
            for (k, v) in m.iter().filter(|(k, _)| k.as_str() != "$ref") {
                out.insert(k.clone(), self.inline(v, base, document, depth)?);
            }
        }
        Ok(expanded)
    }
}
