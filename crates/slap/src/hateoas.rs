//! Client side of the HATEOAS API (`slap-protocol.md` §10), which `slapos
//! service list|info` and `slapos computer list|info` speak: the entry point
//! at `master_rest_url` gives URI templates for `raw_search` and
//! `traverse`; services (instance trees) and computers are searched with
//! ERP5-like queries and their documents read by traversal. Works against
//! the Python proxy's `/hateoas/` and ours.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value as J;

use crate::client::error_message;
use crate::instance_xml::xml_to_dict;
use crate::tls::{describe_handshake_error, TlsFileError, TlsFiles};

/// Errors of the HATEOAS API.
#[derive(Debug, thiserror::Error)]
pub enum HateoasError {
    /// The REST API cannot be reached.
    #[error("cannot reach the master's REST API at {url}: {message}")]
    Connection {
        /// The URL called.
        url: String,
        /// Why.
        message: String,
    },
    /// The API answered an error status.
    #[error("{url} answered {status}: {message}")]
    Status {
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The answer's text.
        message: String,
    },
    /// The answer is not the JSON document expected.
    #[error("unexpected answer from {url}: {message}")]
    Invalid {
        /// The URL called.
        url: String,
        /// What does not fit.
        message: String,
    },
    /// `master_rest_url` is not a URL.
    #[error("invalid master_rest_url '{0}'")]
    BadUrl(String),
    /// The TLS handshake with the REST API failed (one sentence saying
    /// what to fix).
    #[error("TLS error talking to {url}: {message}")]
    Tls {
        /// The URL called (under `master_rest_url`).
        url: String,
        /// Why the handshake failed and what to fix.
        message: String,
    },
    /// A certificate, key or CA file that cannot be used (names the file).
    #[error(transparent)]
    Certificate(#[from] TlsFileError),
}

fn transport_error(url: &str, e: ureq::Error) -> HateoasError {
    match describe_handshake_error(&e) {
        Some(message) => HateoasError::Tls { url: url.into(), message },
        None => HateoasError::Connection { url: url.into(), message: e.to_string() },
    }
}

/// A service (instance tree) in a list.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServiceSummary {
    /// The service's title.
    pub title: String,
    /// Its software release URL.
    pub software_release: Option<String>,
}

/// What the master says of one service.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServiceInfo {
    /// The service's title.
    pub title: String,
    /// Its software release URL.
    pub software_release: Option<String>,
    /// Its software type.
    pub software_type: Option<String>,
    /// A shared (slave) instance.
    pub shared: bool,
    /// `started`, `stopped` or `destroyed`.
    pub requested_state: Option<String>,
    /// Its instance parameters.
    pub parameters: BTreeMap<String, Option<String>>,
    /// Its published connection parameters.
    pub connection_parameters: BTreeMap<String, Option<String>>,
    /// The last state the node reported (our master only).
    pub reported_state: Option<String>,
    /// The message of that report (an error's log).
    pub reported_message: Option<String>,
    /// When it was reported (seconds since the epoch).
    pub reported_at: Option<f64>,
    /// The master's `news` of the tree (SlapOS master, and ours):
    /// `{"instance": [{"text": "#access …" | "#error …", "created_at": …}, …]}`.
    pub news: Option<J>,
}

/// A computer in a list, or its information.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ComputerSummary {
    /// The computer's reference (`COMP-…`).
    pub reference: String,
    /// Its title, if it has one.
    pub title: Option<String>,
}

/// The catalog query of `slapos service list`: validated instance trees.
pub const SERVICE_LIST: &str = "portal_type:\"Instance Tree\" AND validation_state:validated";
/// The catalog query of `slapos computer list`: validated compute nodes.
pub const COMPUTER_LIST: &str = "portal_type:\"Compute Node\" AND validation_state:validated";

/// A client of one master's HATEOAS API.
pub struct HateoasClient {
    agent: ureq::Agent,
    root: String,
    search_template: String,
    traverse_template: String,
}

fn quote(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

impl HateoasClient {
    /// Reads the entry point at `master_rest_url`, verifying the master
    /// and identifying us with `tls` (the files of the SLAP client: the
    /// Python client uses the same ones).
    pub fn connect(master_rest_url: &str, tls: &TlsFiles, timeout: Duration) -> Result<HateoasClient, HateoasError> {
        let root = url::Url::parse(master_rest_url).map_err(|_| HateoasError::BadUrl(master_rest_url.into()))?.to_string();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .tls_config(tls.config()?)
            .build()
            .into();
        let mut c = HateoasClient { agent, root: root.clone(), search_template: String::new(), traverse_template: String::new() };
        let doc = c.get_json(&root)?;
        let link = |name: &str| doc["_links"][name]["href"].as_str().map(str::to_string);
        c.search_template =
            link("raw_search").ok_or_else(|| HateoasError::Invalid { url: root.clone(), message: "no raw_search link".into() })?;
        c.traverse_template =
            link("traverse").ok_or_else(|| HateoasError::Invalid { url: root.clone(), message: "no traverse link".into() })?;
        // what was asked over verified TLS is never continued in clear text
        if root.starts_with("https:") {
            for href in [&c.search_template, &c.traverse_template] {
                if !href.get(..6).is_some_and(|s| s.eq_ignore_ascii_case("https:")) {
                    return Err(HateoasError::Invalid {
                        url: root.clone(),
                        message: format!("the HTTPS entry point links to {href}, which is not HTTPS: refused (a TLS proxy in front of the master should send X-Forwarded-Proto: https)"),
                    });
                }
            }
        }
        Ok(c)
    }

    fn get_json(&self, url: &str) -> Result<J, HateoasError> {
        let mut resp =
            self.agent.get(url).header("Accept", "application/hal+json, application/json").call().map_err(|e| transport_error(url, e))?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().with_config().limit(1 << 30).read_to_string().map_err(|e| transport_error(url, e))?;
        if !(200..300).contains(&status) {
            return Err(HateoasError::Status { url: url.into(), status, message: error_message(&body) });
        }
        serde_json::from_str(&body).map_err(|e| HateoasError::Invalid { url: url.into(), message: e.to_string() })
    }

    fn fill(template: &str, values: &[(&str, &str)]) -> String {
        let mut out = template.to_string();
        for (k, v) in values {
            out = out.replace(&format!("{{{k}}}"), &quote(v));
        }
        out
    }

    /// `raw_search`: the `contents` rows of a query.
    pub fn search(&self, query: &str, select: &[&str]) -> Result<Vec<J>, HateoasError> {
        let url = Self::fill(&self.search_template, &[("query", query), ("select_list", &select.join(","))]);
        let doc = self.get_json(&url)?;
        Ok(doc["_embedded"]["contents"].as_array().cloned().unwrap_or_default())
    }

    /// `traverse`: the document at a `relative_url`.
    pub fn traverse(&self, relative_url: &str) -> Result<J, HateoasError> {
        let url = Self::fill(&self.traverse_template, &[("relative_url", relative_url), ("view", "view")]);
        self.get_json(&url)
    }

    /// Every service of the user.
    pub fn services(&self) -> Result<Vec<ServiceSummary>, HateoasError> {
        Ok(self
            .search(SERVICE_LIST, &["title", "url_string"])?
            .iter()
            .map(|r| ServiceSummary {
                title: r["title"].as_str().unwrap_or_default().to_string(),
                software_release: r["url_string"].as_str().map(str::to_string),
            })
            .collect())
    }

    /// One service by title; None when the master knows no such service.
    pub fn service(&self, title: &str) -> Result<Option<ServiceInfo>, HateoasError> {
        let query = format!("{SERVICE_LIST} AND title:=\"{}\"", title.replace('"', "\\\""));
        let rows = self.search(&query, &["title", "relative_url"])?;
        let Some(relative_url) = rows.first().and_then(|r| r["relative_url"].as_str()) else { return Ok(None) };
        let doc = self.traverse(relative_url)?;
        let view = &doc["_embedded"]["_view"];
        let field = |k: &str| view[k]["default"].clone();
        let text = |k: &str| field(k).as_str().map(str::to_string);
        let xml = |k: &str| text(k).and_then(|x| xml_to_dict(&x).ok()).unwrap_or_default();
        Ok(Some(ServiceInfo {
            title: title.to_string(),
            software_release: text("my_url_string"),
            software_type: text("my_source_reference"),
            shared: field("my_root_slave").as_i64().unwrap_or(0) != 0,
            requested_state: text("my_slap_state"),
            parameters: xml("my_text_content"),
            connection_parameters: xml("my_connection_parameter_list"),
            reported_state: text("my_reported_state"),
            reported_message: text("my_reported_message"),
            reported_at: field("my_reported_at").as_f64(),
            news: Some(field("my_news")).filter(|n| !n.is_null()),
        }))
    }

    /// Every computer of the user.
    pub fn computers(&self) -> Result<Vec<ComputerSummary>, HateoasError> {
        Ok(self
            .search(COMPUTER_LIST, &["title", "reference"])?
            .iter()
            .map(|r| ComputerSummary {
                reference: r["reference"].as_str().unwrap_or_default().to_string(),
                title: r["title"].as_str().map(str::to_string),
            })
            .collect())
    }

    /// One computer by reference; None when the master knows no such computer.
    pub fn computer(&self, reference: &str) -> Result<Option<ComputerSummary>, HateoasError> {
        let query = format!("{COMPUTER_LIST} AND reference:=\"{}\"", reference.replace('"', "\\\""));
        let rows = self.search(&query, &["title", "reference", "relative_url"])?;
        let Some(relative_url) = rows.first().and_then(|r| r["relative_url"].as_str()) else { return Ok(None) };
        let doc = self.traverse(relative_url)?;
        let view = &doc["_embedded"]["_view"];
        Ok(Some(ComputerSummary {
            reference: view["my_reference"]["default"].as_str().unwrap_or(reference).to_string(),
            title: view["my_title"]["default"].as_str().map(str::to_string),
        }))
    }

    /// The API's root URL.
    pub fn root(&self) -> &str {
        &self.root
    }
}
