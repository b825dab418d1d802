//! Multimaster forwarding (`slap-protocol.md` §7.10): requests for which no
//! local instance exists go to another master when their SLA names it
//! (`master_url`, which must be one of the `[multimaster/<url>]` sections:
//! 404 otherwise) or when their software release is in a section's
//! `software_release_list`. The request goes through our SLAP client, under
//! the title `<requester>_<title>`; it is remembered (`proxy show`) and
//! answered with the other master's partition, as the Python proxy answers
//! it. The other master not ready: 408; unreachable: 523.
//!
//! Unlike the Python proxy, an unlisted `master_url` is never contacted: it
//! is this master only when it names the address the request came to.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use slap::client::{ClientConfig, SlapClient, SlapError};
use slap::marshal::{self, Object, Value, SLAP_MODULE};
use slapos_config::Config;

use crate::app::App;
use crate::master::{self, Answer, InstanceRequest, MasterError};
use crate::store::{ForwardRow, Store, Tx};

/// Time allowed to the other master (as the Python client's default).
const TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed to `getRunId` (is the master named this one?).
const SELF_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// One `[multimaster/<url>]` section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Upstream {
    /// The master's URL, as written in the section name.
    pub url: String,
    /// Client key and certificate (required for an https master, as SlapOS).
    pub key: Option<PathBuf>,
    /// The client certificate that goes with `key`.
    pub cert: Option<PathBuf>,
    /// CA certificates that verify an https master (`master_ca_file`);
    /// without it the web PKI roots do (the Python proxy verifies nothing).
    pub ca: Option<PathBuf>,
    /// Request as this partition of the other master (`computer`, `partition`).
    pub computer: Option<String>,
    /// The partition of `computer` to request as.
    pub partition: Option<String>,
    /// Software releases always forwarded there.
    pub software_releases: Vec<String>,
}

/// Every `[multimaster/<url>]` section, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Multimaster {
    /// The other masters, in file order.
    pub upstreams: Vec<Upstream>,
}

impl Multimaster {
    /// Reads the `[multimaster/<url>]` sections of `config`.
    pub fn from_config(config: &Config) -> Multimaster {
        let mut upstreams = Vec::new();
        for (name, section) in config.sections() {
            let Some(url) = name.strip_prefix("multimaster/") else {
                continue;
            };
            let text = |k: &str| section.get(k).map(str::trim).filter(|v| !v.is_empty()).map(str::to_string);
            upstreams.push(Upstream {
                url: url.to_string(),
                key: text("key").map(PathBuf::from),
                cert: text("cert").map(PathBuf::from),
                ca: text("master_ca_file").map(PathBuf::from),
                computer: text("computer"),
                partition: text("partition"),
                software_releases: section
                    .get("software_release_list")
                    .unwrap_or("")
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect(),
            });
        }
        Multimaster { upstreams }
    }

    /// No other master is configured.
    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty()
    }

    /// Where `req` goes, if elsewhere: the master its SLA names (unless
    /// `here` says it is this one), else the one listing its software
    /// release. The bool says whether the master was named (then it may be
    /// this one under another name).
    fn target(&self, req: &InstanceRequest, here: &dyn Fn(&str) -> bool) -> Result<Option<(&Upstream, bool)>, MasterError> {
        if let Some(url) = master::filter_text(&req.filter, "master_url").filter(|u| !u.is_empty() && !here(u)) {
            return match self.upstreams.iter().find(|u| u.url == url) {
                Some(u) => Ok(Some((u, true))),
                None => Err(MasterError::NotFound(format!("External SlapOS Master URL {url} is not listed in multimaster list."))),
            };
        }
        Ok(self.upstreams.iter().find(|u| u.software_releases.contains(&req.software_release)).map(|u| (u, false)))
    }
}

/// What to do with a request.
enum Plan<'a> {
    /// Allocate here (`bypass`: the frontend bypass may answer).
    Here { bypass: bool },
    /// Forward under the title `reference`.
    Forward { upstream: &'a Upstream, named: bool, reference: String },
}

fn plan<'a>(tx: &mut dyn Tx, app: &'a App, req: &InstanceRequest, here: &dyn Fn(&str) -> bool) -> Result<Plan<'a>, MasterError> {
    let (requester_id, requested_by) = master::requester(tx, req)?;
    let exists = if req.shared {
        let computer = master::requested_computer(&app.site, req);
        tx.slave(&format!("{requested_by}_{}", req.title), &computer)?.is_some()
    } else {
        tx.partition_by_title(&req.title, &requested_by)?.is_some()
    };
    if exists && !req.shared {
        return Ok(Plan::Here { bypass: true });
    }
    match app.multimaster.target(req, here)? {
        None => Ok(Plan::Here { bypass: true }),
        Some(_) if exists => Ok(Plan::Here { bypass: false }),
        Some((upstream, named)) => Ok(Plan::Forward { upstream, named, reference: format!("{requester_id}_{}", req.title) }),
    }
}

/// Whether `url` names the address the request came to.
fn names_this_address(req: &InstanceRequest, url: &str) -> bool {
    let o = &req.origin;
    !o.host.is_empty() && url.trim_end_matches('/') == format!("{}://{}{}", o.scheme, o.host, o.prefix)
}

/// Whether the master at `up` is this one (same run id).
fn runs_here(up: &Upstream, run_id: &str) -> bool {
    let config = ClientConfig { ca_file: up.ca.clone(), ..ClientConfig::new(&up.url) }.with_timeout(SELF_CHECK_TIMEOUT);
    SlapClient::new(config).and_then(|c| c.get("getRunId", &[])).is_ok_and(|id| id.trim() == run_id)
}

/// Forwards `req` if it must be (blocking: call it on the blocking pool).
/// None: allocate it here (with `req.no_bypass` set when the frontend bypass
/// must not answer).
pub fn route(app: &App, req: &mut InstanceRequest) -> Result<Option<Answer>, MasterError> {
    if app.multimaster.is_empty() {
        return Ok(None);
    }
    let mut this_one: Option<String> = None;
    loop {
        let here = |u: &str| names_this_address(req, u) || this_one.as_deref() == Some(u);
        let planned = app.store.read(|tx| plan(tx, app, req, &here))?;
        match planned {
            Plan::Here { bypass } => {
                req.no_bypass = !bypass;
                return Ok(None);
            }
            Plan::Forward { upstream, named, .. } if named && this_one.is_none() && runs_here(upstream, &app.run_id) => {
                // the master named is this one: on to the software release lists
                this_one = Some(upstream.url.clone());
            }
            Plan::Forward { upstream, reference, .. } => return forward(app, upstream, &reference, req).map(Some),
        }
    }
}

fn encode(v: &Value) -> Result<String, MasterError> {
    marshal::encode(v).map_err(|e| MasterError::BadRequest(format!("cannot encode the forwarded request: {e}")))
}

/// Sends the request to `up` as the Python proxy does, remembers it, and
/// answers with the other master's partition.
fn forward(app: &App, up: &Upstream, reference: &str, req: &InstanceRequest) -> Result<Answer, MasterError> {
    if up.url.starts_with("https") && (up.key.is_none() || up.cert.is_none()) {
        return Err(MasterError::NotFound(format!("External master {} configuration did not specify key or certificate.", up.url)));
    }
    let config =
        ClientConfig { key_file: up.key.clone(), cert_file: up.cert.clone(), ca_file: up.ca.clone(), ..ClientConfig::new(&up.url) }
            .with_timeout(TIMEOUT);
    let client = SlapClient::new(config).map_err(|e| MasterError::Unknown(format!("master {}: {e}", up.url)))?;
    let parameters = encode(&Value::Dict(req.parameters.clone()))?;
    let state = encode(&req.state.as_deref().map(Value::str).unwrap_or(Value::None))?;
    let shared = encode(&Value::Bool(req.shared))?;
    let (sr, st) = (req.software_release.as_str(), req.software_type.as_str());
    tracing::info!("forwarding the request of {reference} (state {:?}) to {}", req.state, up.url);
    let result = match (&up.computer, &up.partition) {
        (Some(c), Some(p)) => {
            let filter = encode(&Value::Dict(req.filter.clone()))?;
            let form = [
                ("computer_id", c.as_str()),
                ("computer_partition_id", p),
                ("software_release", sr),
                ("software_type", st),
                ("partition_reference", reference),
                ("shared_xml", &shared),
                ("partition_parameter_xml", &parameters),
                ("filter_xml", &filter),
                ("state", &state),
            ];
            client.post("requestComputerPartition", &form, Some((c, p)))
        }
        _ => {
            let mut filter = req.filter.clone();
            filter.insert("source_instance_id".into(), Value::str(reference));
            let filter = encode(&Value::Dict(filter))?;
            let form = [
                ("software_release", sr),
                ("partition_reference", reference),
                ("partition_parameter_xml", &parameters),
                ("filter_xml", &filter),
                ("software_type", st),
                ("state", &state),
                ("shared_xml", &shared),
            ];
            client.post("requestComputerPartition", &form, None)
        }
    };
    let instance = match result {
        Ok(body) => Some(marshal::decode_with(&body, &app.limits.marshal).map_err(|e| {
            MasterError::Unknown(format!("the master {} answered an invalid document: {e}", up.url))
        })?),
        Err(SlapError::NotReady { .. }) => None,
        Err(e) if e.is_unreachable() => {
            return Err(MasterError::Unreachable(format!(
                "Couldn't connect to the server. Please double check given master-url argument, and make sure that IPv6 is enabled on your machine and that the server is available. The original error was:\n{e}"
            )))
        }
        Err(e) => return Err(MasterError::Unknown(format!("the master {} refused the forwarded request: {e}", up.url))),
    };
    let destroyed = req.state.as_deref() == Some("destroyed");
    let row = ForwardRow {
        reference: reference.to_string(),
        master_url: up.url.clone(),
        software_release: req.software_release.clone(),
        time: master::now(),
    };
    app.store.transaction(|tx| if destroyed { tx.delete_forward(&row.reference, &row.master_url) } else { tx.add_forward(&row) })?;
    match instance {
        None => Err(MasterError::NotReady("Resource not ready".into())),
        Some(v) => master::marshalled(&forwarded_partition(v, up, req)?),
    }
}

/// The other master's `SoftwareInstance` as the `ComputerPartition` the
/// Python client makes of it, with what the Python proxy adds [cap 062].
fn forwarded_partition(instance: Value, up: &Upstream, req: &InstanceRequest) -> Result<Value, MasterError> {
    let Value::Object(object) = instance else {
        return Err(MasterError::Unknown(format!("the master {} answered <{}>, not an instance", up.url, instance.type_name())));
    };
    let computer = object.state.get("slap_computer_id").cloned().unwrap_or(Value::None);
    let partition = object.state.get("slap_computer_partition_id").cloned().unwrap_or(Value::None);
    let mut state = BTreeMap::from([
        ("_computer_id".to_string(), computer.clone()),
        ("_partition_id".to_string(), partition.clone()),
        ("_request_dict".to_string(), Value::None),
        ("_hateoas_navigator".to_string(), Value::None),
    ]);
    state.extend(object.state);
    if req.shared {
        state.insert("_synced".into(), Value::Bool(true));
    }
    state.insert("_master_url".into(), Value::str(&up.url));
    state.insert("_connection_helper".into(), Value::None);
    state.insert("_software_release_document".into(), Value::str(&req.software_release));
    Ok(Value::Object(Box::new(Object {
        module: SLAP_MODULE.into(),
        class: "ComputerPartition".into(),
        args: vec![computer, partition, Value::None],
        state,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(sr: &str, master_url: Option<&str>) -> InstanceRequest {
        let mut req = InstanceRequest { software_release: sr.into(), title: "T".into(), ..Default::default() };
        if let Some(u) = master_url {
            req.filter.insert("master_url".into(), Value::str(u));
        }
        req
    }

    #[test]
    fn sections_are_read_and_targets_chosen() {
        let c = Config::parse(
            "[slapos]\ncomputer_id = C\n[multimaster/http://b/]\nsoftware_release_list =\n  http://sr/a\n  http://sr/b\n[multimaster/https://c/]\nkey = /k\ncert = /c\n",
        )
        .unwrap();
        let mm = Multimaster::from_config(&c);
        assert_eq!(mm.upstreams.len(), 2);
        assert_eq!(mm.upstreams[0].software_releases, ["http://sr/a", "http://sr/b"]);
        assert_eq!(mm.upstreams[1].key.as_deref(), Some(std::path::Path::new("/k")));
        let nowhere = |_: &str| false;
        assert_eq!(
            mm.target(&request("http://sr/b", None), &nowhere).unwrap().map(|(u, n)| (u.url.as_str(), n)),
            Some(("http://b/", false))
        );
        assert!(mm.target(&request("http://sr/x", None), &nowhere).unwrap().is_none());
        assert_eq!(
            mm.target(&request("http://sr/x", Some("https://c/")), &nowhere).unwrap().map(|(u, n)| (u.url.as_str(), n)),
            Some(("https://c/", true))
        );
        let e = mm.target(&request("http://sr/x", Some("http://unlisted/")), &nowhere).unwrap_err();
        assert!(matches!(e, MasterError::NotFound(ref m) if m.contains("http://unlisted/ is not listed")), "{e}");
        // naming this master: on to the lists
        let here = |u: &str| u == "http://me/";
        assert_eq!(mm.target(&request("http://sr/a", Some("http://me/")), &here).unwrap().map(|(u, _)| u.url.as_str()), Some("http://b/"));
    }
}
