//! What the master does with each SLAP call (`slap-protocol.md` §4 and §7),
//! as functions over one storage transaction ([`Tx`]). The HTTP layer only
//! parses forms and turns [`Answer`]s and [`MasterError`]s into responses.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use slap::instance_xml::{dict_to_xml, xml_to_dict};
use slap::marshal::{self, python_float_repr, Object, Value, SLAP_MODULE};
use slap::model::{ComputerPartition, InstanceState, SoftwareRelease, SoftwareState};

use crate::store::{AddressRow, ComputerRow, PartitionRow, ReportRow, SlaveRow, SoftwareRow, StoreError, Tx, UsageRow};

/// Why a call failed, with the HTTP status the Python client expects.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// 400: the call is malformed (missing field, bad XML, bad value).
    #[error("{0}")]
    BadRequest(String),
    /// 413: the request, one of its fields or a marshalled document in it is
    /// larger than the master's limits allow.
    #[error("{0}")]
    TooLarge(String),
    /// 403: refused (a token spent, expired or for something else).
    #[error("{0}")]
    Forbidden(String),
    /// 404: nothing can satisfy the request (no free partition, no host…).
    #[error("{0}")]
    NotFound(String),
    /// 500: what the Python proxy answers with an internal error (unknown
    /// partition or computer on the node's read calls); we say why.
    #[error("{0}")]
    Unknown(String),
    /// 408: forwarded, and the other master has no partition for it yet.
    #[error("{0}")]
    NotReady(String),
    /// 523: forwarded, and the other master cannot be reached.
    #[error("{0}")]
    Unreachable(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A successful answer: a plain word (`done`, `OK`, …) or a marshalled document.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A plain word (`done`, `OK`, …), sent as text.
    Text(String),
    /// A marshalled (xml_marshaller) document.
    Marshal(String),
}

pub(crate) fn marshalled(v: &Value) -> Result<Answer, MasterError> {
    marshal::encode(v).map(Answer::Marshal).map_err(|e| MasterError::BadRequest(format!("cannot encode the answer: {e}")))
}

/// Seconds since the epoch, as the Python proxy's `time.time()`.
pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The configured site.
#[derive(Debug, Clone, Default)]
pub struct Site {
    /// The computer every request goes to by default (`[slapos] computer_id`).
    pub computer_id: String,
    /// `software_product_list`: product reference → software release URL.
    pub software_products: BTreeMap<String, String>,
}

fn text_dict(xml: Option<&str>) -> Result<BTreeMap<String, Value>, MasterError> {
    let d = match xml {
        Some(x) => xml_to_dict(x).map_err(|e| MasterError::BadRequest(format!("stored instance XML is invalid: {e}")))?,
        None => BTreeMap::new(),
    };
    Ok(d.into_iter().map(|(k, v)| (k, Value::from(v))).collect())
}

fn opt(v: &Option<String>) -> Value {
    v.as_deref().map(Value::str).unwrap_or(Value::None)
}

fn ip_list(addresses: &[AddressRow]) -> Value {
    Value::List(addresses.iter().map(|a| Value::Tuple(vec![Value::str(&a.interface), Value::str(&a.address)])).collect())
}

/// A partition as the node sees it (Python's `partitiondict2partition`).
pub fn render_partition(tx: &mut dyn Tx, p: &PartitionRow) -> Result<ComputerPartition, MasterError> {
    let addresses = if p.software_release.as_deref().is_some_and(|s| !s.is_empty()) {
        tx.addresses(Some(&p.computer_reference), &p.reference)?
    } else {
        vec![]
    };
    render_partition_with(p, &addresses)
}

/// [`render_partition`] with the partition's addresses already read.
fn render_partition_with(p: &PartitionRow, addresses: &[AddressRow]) -> Result<ComputerPartition, MasterError> {
    let mut cp = ComputerPartition::free(&p.computer_reference, &p.reference);
    let Some(sr) = p.software_release.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(cp);
    };
    cp.need_modification = Some(true);
    match p.requested_state.parse::<InstanceState>() {
        Ok(s) => cp.requested_state = Some(s),
        Err(_) => {
            cp.requested_state = None;
            cp.extra.insert("_requested_state".into(), Value::str(&p.requested_state));
        }
    }
    let mut params = text_dict(p.xml.as_deref())?;
    params.insert("ip_list".into(), ip_list(addresses));
    params.insert("full_address_list".into(), Value::List(vec![]));
    params.insert("slap_software_type".into(), opt(&p.software_type));
    params.insert("instance_title".into(), opt(&p.partition_reference));
    params.insert(
        "root_instance_title".into(),
        if p.requested_by.is_empty() { opt(&p.partition_reference) } else { Value::str(&p.requested_by) },
    );
    params.insert("slap_computer_id".into(), Value::str(&p.computer_reference));
    params.insert("slap_computer_partition_id".into(), Value::str(&p.reference));
    params.insert("slap_software_release_url".into(), Value::str(sr));
    let slaves = match &p.slave_instance_list {
        Some(text) => marshal::decode(text).map_err(|e| MasterError::BadRequest(format!("stored slave list is invalid: {e}")))?,
        None => Value::List(vec![]),
    };
    params.insert("slave_instance_list".into(), slaves);
    if let Some(ts) = p.timestamp.filter(|t| *t != 0.0) {
        params.insert("timestamp".into(), Value::str(python_float_repr(ts)));
    }
    cp.parameters = Some(params);
    cp.connection = Some(text_dict(p.connection_xml.as_deref())?);
    cp.software_release = Some(SoftwareRelease::new(sr, &p.computer_reference));
    Ok(cp)
}

/// `getFullComputerInformation`.
pub fn computer_information(tx: &mut dyn Tx, site: &Site, computer_id: &str) -> Result<Answer, MasterError> {
    if tx.computer(computer_id)?.is_none() && computer_id != site.computer_id {
        return Err(MasterError::Unknown(format!("Computer '{computer_id}' is not registered (no format report received)")));
    }
    let mut computer = slap::model::Computer::new(computer_id);
    for sr in tx.software_releases(Some(computer_id))? {
        let mut s = SoftwareRelease::new(&sr.url, computer_id);
        match sr.requested_state.parse::<SoftwareState>() {
            Ok(st) => s.requested_state = Some(st),
            Err(_) => {
                s.extra.insert("_requested_state".into(), Value::str(&sr.requested_state));
            }
        }
        computer.software_releases.push(s);
    }
    // one query for every address of the computer, grouped by partition
    let mut addresses: std::collections::HashMap<String, Vec<AddressRow>> = std::collections::HashMap::new();
    for a in tx.computer_addresses(computer_id)? {
        addresses.entry(a.partition_reference.clone()).or_default().push(a);
    }
    for p in tx.partitions(Some(computer_id))? {
        let mine = addresses.get(&p.reference).map(Vec::as_slice).unwrap_or(&[]);
        computer.partitions.push(render_partition_with(&p, mine)?);
    }
    marshalled(&computer.into_value())
}

/// `registerComputerPartition`.
pub fn register_partition(tx: &mut dyn Tx, computer_id: &str, partition_id: &str) -> Result<Answer, MasterError> {
    let p = tx
        .partition(computer_id, partition_id)?
        .ok_or_else(|| MasterError::Unknown(format!("Unknown partition '{partition_id}' on computer '{computer_id}'")))?;
    marshalled(&render_partition(tx, &p)?.into_value())
}

// ---------------------------------------------------------------------------
// format report

/// One partition of a format report: its reference and `(interface, address, netmask)`s.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportedPartition {
    /// The partition's reference (`slappart0`).
    pub reference: String,
    /// Its addresses: `(interface, address, netmask)`.
    pub addresses: Vec<(String, String, String)>,
}

/// Reads the fields the master uses from a format report (`slap-protocol.md` §2.4).
pub fn parse_format_report(v: &Value) -> Result<(ComputerRow, Vec<ReportedPartition>), MasterError> {
    let bad = |m: String| MasterError::BadRequest(format!("invalid format report: {m}"));
    let d = v.as_dict().ok_or_else(|| bad(format!("expected a dictionary, found <{}>", v.type_name())))?;
    let text = |d: &BTreeMap<String, Value>, key: &str, what: &str| -> Result<Option<String>, MasterError> {
        match d.get(key) {
            Some(Value::Str(s)) => Ok(Some(s.clone())),
            Some(Value::None) => Ok(None),
            Some(other) => Err(bad(format!("{what}'{key}' must be a string, found <{}>", other.type_name()))),
            None => Err(bad(format!("{what}'{key}' is missing"))),
        }
    };
    let reference = text(d, "reference", "")?.filter(|s| !s.is_empty()).ok_or_else(|| bad("empty 'reference'".into()))?;
    let computer = ComputerRow { reference, address: text(d, "address", "")?, netmask: text(d, "netmask", "")? };
    let list = d.get("partition_list").and_then(Value::as_seq).ok_or_else(|| bad("'partition_list' must be a list".into()))?;
    let mut partitions = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let what = format!("partition {i}: ");
        let pd = p.as_dict().ok_or_else(|| bad(format!("{what}expected a dictionary")))?;
        let reference = text(pd, "reference", &what)?.filter(|s| !s.is_empty()).ok_or_else(|| bad(format!("{what}empty 'reference'")))?;
        let tap = match pd.get("tap") {
            Some(Value::Dict(t)) => t.get("name").and_then(Value::as_str).unwrap_or("").to_string(),
            Some(Value::None) | None => String::new(),
            Some(other) => return Err(bad(format!("{what}'tap' must be a dictionary, found <{}>", other.type_name()))),
        };
        let interface = if tap.is_empty() { reference.clone() } else { tap };
        let addrs = pd.get("address_list").and_then(Value::as_seq).ok_or_else(|| bad(format!("{what}'address_list' must be a list")))?;
        let mut addresses = Vec::new();
        for a in addrs {
            let ad = a.as_dict().ok_or_else(|| bad(format!("{what}addresses must be dictionaries")))?;
            let addr = text(ad, "addr", &what)?.unwrap_or_default();
            let netmask = text(ad, "netmask", &what)?.unwrap_or_default();
            addresses.push((interface.clone(), addr, netmask));
        }
        partitions.push(ReportedPartition { reference, addresses });
    }
    Ok((computer, partitions))
}

/// `loadComputerConfigurationFromXML` (`slap-protocol.md` §7.8).
pub fn load_format_report(tx: &mut dyn Tx, computer: &ComputerRow, partitions: &[ReportedPartition]) -> Result<Answer, MasterError> {
    tx.upsert_computer(computer)?;
    let keep: Vec<String> = partitions.iter().map(|p| p.reference.clone()).collect();
    let dropped = tx.delete_partitions_except(&computer.reference, &keep)?;
    if dropped > 0 {
        tracing::warn!("format report of {}: {dropped} partition(s) no longer reported were deleted", computer.reference);
    }
    tx.delete_slaves_not_hosted_in(&computer.reference, &keep)?;
    let mut addresses = Vec::new();
    for p in partitions {
        tx.insert_partition_if_missing(&computer.reference, &p.reference)?;
        for (interface, address, netmask) in &p.addresses {
            addresses.push(AddressRow {
                partition_reference: p.reference.clone(),
                computer_reference: computer.reference.clone(),
                interface: interface.clone(),
                address: address.clone(),
                netmask: netmask.clone(),
            });
        }
    }
    tx.replace_addresses(&computer.reference, &addresses)?;
    Ok(Answer::Text("done".into()))
}

// ---------------------------------------------------------------------------
// software releases

/// `supplySupply`.
pub fn supply(tx: &mut dyn Tx, url: &str, computer_id: &str, state: &str) -> Result<Answer, MasterError> {
    state.parse::<SoftwareState>().map_err(|e| MasterError::BadRequest(e.to_string()))?;
    tx.upsert_software(&SoftwareRow { url: url.into(), computer_reference: computer_id.into(), requested_state: state.into() })?;
    Ok(Answer::Text(format!("Supplied {} to be {state}", slap::instance_xml::python_repr(&Value::str(url)))))
}

/// The longest report message (error log, bang message) stored, in bytes:
/// longer ones keep their end, where an error log says the most.
pub const MAX_STORED_MESSAGE: usize = 64 * 1024;

/// The last `max` bytes of `s` (on a character boundary), saying how much was cut.
fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[{start} bytes cut]\n{}", &s[start..])
}

/// A state report of a node: recorded (the Python proxy ignores them), its
/// message cut to [`MAX_STORED_MESSAGE`].
pub fn report(
    tx: &mut dyn Tx,
    kind: &str,
    computer_id: &str,
    reference: &str,
    state: &str,
    message: Option<&str>,
) -> Result<(), MasterError> {
    tx.add_report(&ReportRow {
        kind: kind.into(),
        computer_reference: computer_id.into(),
        reference: reference.into(),
        state: state.into(),
        message: message.map(|m| tail(m, MAX_STORED_MESSAGE)),
        time: now(),
        tree: None,
    })?;
    Ok(())
}

/// `destroyedSoftwareRelease`: the node removed it; the row goes.
pub fn software_destroyed(tx: &mut dyn Tx, url: &str, computer_id: &str) -> Result<Answer, MasterError> {
    tx.delete_software(computer_id, url)?;
    report(tx, "software", computer_id, url, "destroyed", None)?;
    Ok(Answer::Text("OK".into()))
}

/// `updateComputerPartitionRelatedInstanceList`: what the partition says it
/// requested in its last run replaces what it said before.
pub fn related_instances(tx: &mut dyn Tx, computer_id: &str, partition_id: &str, titles: &[String]) -> Result<Answer, MasterError> {
    tx.set_related(&crate::store::RelatedRow {
        computer_reference: computer_id.into(),
        partition_reference: partition_id.into(),
        instances: titles.join("\n"),
        time: now(),
    })?;
    Ok(Answer::Text("OK".into()))
}

/// `useComputer`: the journal kept as sent, and read into the accounting's
/// movements (`proxy::accounting`; a journal that cannot be read is still
/// kept, and answered the same).
pub fn use_computer(tx: &mut dyn Tx, computer_id: &str, body: &str) -> Result<Answer, MasterError> {
    let time = now();
    tx.add_usage(&UsageRow { computer_reference: computer_id.into(), body: body.into(), time })?;
    crate::accounting::record_usage(tx, computer_id, body, time)?;
    Ok(Answer::Text("Ignored".into()))
}

/// `computerBang`: recorded as an event of the computer.
pub fn computer_bang(tx: &mut dyn Tx, computer_id: &str, message: &str) -> Result<(), MasterError> {
    report(tx, "computer", computer_id, "", "bang", Some(message))
}

// ---------------------------------------------------------------------------
// requests

/// A `requestComputerPartition` call, decoded.
#[derive(Debug, Clone, Default)]
pub struct InstanceRequest {
    /// The software release URL to instantiate.
    pub software_release: String,
    /// The software type (empty: the default one).
    pub software_type: String,
    /// The instance title (`partition_reference` on the wire).
    pub title: String,
    /// Instance parameters.
    pub parameters: BTreeMap<String, Value>,
    /// The SLA filter (`computer_guid`, `instance_guid`, …).
    pub filter: BTreeMap<String, Value>,
    /// The requested state (`started`, `stopped`, `destroyed`; `None`: started).
    pub state: Option<String>,
    /// A shared (slave) instance, hosted by another partition.
    pub shared: bool,
    /// `X-SlapPartition` header: (computer, partition).
    pub authorization: Option<(String, String)>,
    /// Form fields `computer_id`, `computer_partition_id`.
    pub form_requester: (Option<String>, Option<String>),
    /// Where the request came to (the frontend bypass answers a relay URL
    /// of this master when it is reached over https).
    pub origin: crate::relay::Origin,
    /// No frontend bypass: the request was meant for another master but its
    /// shared instance exists here (as the Python proxy).
    pub no_bypass: bool,
}

/// The root title of the tree a partition belongs to (its `requested_by`, or
/// its own title for a root); None for an unknown or free partition.
fn root_title_of(tx: &mut dyn Tx, computer: &str, partition: &str) -> Result<Option<String>, MasterError> {
    Ok(tx.partition(computer, partition)?.and_then(|p| {
        if p.requested_by.is_empty() {
            p.partition_reference.filter(|t| !t.is_empty())
        } else {
            Some(p.requested_by)
        }
    }))
}

pub(crate) fn filter_text(filter: &BTreeMap<String, Value>, key: &str) -> Option<String> {
    match filter.get(key)? {
        Value::Str(s) => Some(s.clone()),
        Value::None => None,
        other => Some(slap::instance_xml::python_str(other)),
    }
}

const APACHE_FRONTEND: &str = "http://git.erp5.org/gitweb/slapos.git/blob_plain/HEAD:/software/apache-frontend/software.cfg";
const KVM_FRONTEND: &str = "http://git.erp5.org/gitweb/slapos.git/blob_plain/refs/tags/slapos-0.92:/software/kvm/software.cfg";

fn fake_frontend(title: &str, connection: BTreeMap<String, Value>) -> Value {
    let mut state = BTreeMap::new();
    state.insert("_computer_id".to_string(), Value::str(""));
    state.insert("_connection_dict".to_string(), Value::Dict(connection));
    state.insert("_parameter_dict".to_string(), Value::Dict(BTreeMap::new()));
    state.insert("_partition_id".to_string(), Value::str(title));
    state.insert("_request_dict".to_string(), Value::None);
    state.insert("slap_computer_id".to_string(), Value::str(""));
    state.insert("slap_computer_partition_id".to_string(), Value::str(""));
    Value::Object(Box::new(Object {
        module: SLAP_MODULE.into(),
        class: "ComputerPartition".into(),
        args: vec![Value::str(""), Value::str(title), Value::None],
        state,
    }))
}

/// The `secure_access` URL and `domain` of a bypassed frontend for `url`:
/// the URL itself, or, when this master is reached over https, its relay
/// URL (`/http_proxy/…`, so that the access stays https), as the Python proxy.
fn secure_access(origin: &crate::relay::Origin, url: &str) -> (String, String) {
    let (scheme, netloc, path, query, fragment) = crate::relay::urlsplit(url);
    if origin.scheme != "https" {
        return (url.to_string(), netloc.to_string());
    }
    let mut access = crate::relay::relay_url(origin, &scheme, netloc, path);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        access.push('?');
        access.push_str(q);
    }
    if let Some(f) = fragment.filter(|f| !f.is_empty()) {
        access.push('#');
        access.push_str(f);
    }
    (access, origin.host.clone())
}

/// The frontend bypass of §7.11: a fake partition pointing at the URL itself.
fn frontend_bypass(req: &InstanceRequest) -> Option<Value> {
    let param = |k: &str| req.parameters.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    if req.software_release == APACHE_FRONTEND && matches!(req.software_type.as_str(), "" | "RootSoftwareInstance" | "default") {
        let url = param("url")?;
        let (secure_access, domain) = secure_access(&req.origin, &url);
        let conn = BTreeMap::from([("secure_access".to_string(), Value::str(secure_access)), ("domain".to_string(), Value::str(domain))]);
        return Some(fake_frontend(&format!("Fake frontend for {url}"), conn));
    }
    if req.software_release == KVM_FRONTEND && req.software_type == "frontend" {
        let (mut host, port) = (param("host")?, param("port")?);
        if host.contains(':') && !host.starts_with('[') {
            host = format!("[{host}]");
        }
        let url = format!("https://{host}:{port}/");
        let conn = BTreeMap::from([
            ("url".to_string(), Value::str(&url)),
            ("domainname".to_string(), Value::str(&host)),
            ("port".to_string(), Value::str(&port)),
            ("path".to_string(), Value::str("/")),
        ]);
        return Some(fake_frontend(&format!("Fake KVM VNC frontend for {url}"), conn));
    }
    None
}

/// Who asks (§7.1 step 1): the requester id (`user` for a person) and the
/// root title of its tree (empty for a person). An `X-SlapPartition` header
/// naming an unknown partition is a 400.
pub fn requester(tx: &mut dyn Tx, req: &InstanceRequest) -> Result<(String, String), MasterError> {
    let requester_id = match (&req.authorization, &req.form_requester.1) {
        (Some((_, p)), _) => p.clone(),
        (None, Some(p)) => p.clone(),
        (None, None) => "user".to_string(),
    };
    let mut requested_by = None;
    if let Some((c, p)) = &req.authorization {
        if tx.partition(c, p)?.is_none() {
            return Err(MasterError::BadRequest(format!("No partition matching the authorization header: ({c} / {p})")));
        }
        requested_by = root_title_of(tx, c, p)?;
    }
    if requested_by.is_none() {
        if let (Some(c), Some(p)) = &req.form_requester {
            requested_by = root_title_of(tx, c, p)?;
        }
    }
    Ok((requester_id, requested_by.unwrap_or_default()))
}

/// The computer a request goes to: its SLA's `computer_guid`, else the site's.
pub fn requested_computer(site: &Site, req: &InstanceRequest) -> String {
    filter_text(&req.filter, "computer_guid").unwrap_or_else(|| site.computer_id.clone())
}

/// `requestComputerPartition` (§7.1–7.3, 7.11).
pub fn request(tx: &mut dyn Tx, site: &Site, req: &InstanceRequest) -> Result<Answer, MasterError> {
    if let Some(state) = &req.state {
        state.parse::<InstanceState>().map_err(|e| MasterError::BadRequest(e.to_string()))?;
    }
    let (requester_id, requested_by) = requester(tx, req)?;
    let computer = requested_computer(site, req);
    let asking = Asking { req, requester_id: &requester_id, requested_by: &requested_by, computer: &computer };
    if req.shared {
        if let Some(fake) = frontend_bypass(req).filter(|_| !req.no_bypass) {
            tracing::warn!("bypassing frontend request {} with a fake partition", req.title);
            return marshalled(&fake);
        }
        request_shared(tx, &asking)
    } else {
        request_instance(tx, &asking)
    }
}

/// A request with who asks it and the computer it goes to.
#[derive(Clone, Copy)]
struct Asking<'a> {
    req: &'a InstanceRequest,
    requester_id: &'a str,
    requested_by: &'a str,
    computer: &'a str,
}

fn request_instance(tx: &mut dyn Tx, asking: &Asking) -> Result<Answer, MasterError> {
    let Asking { req, requester_id, requested_by, computer } = *asking;
    let xml = dict_to_xml(&req.parameters);
    let mut state = req.state.clone();
    let mut software_type = req.software_type.clone();
    // two masters asked for one new instance at once allocate it once
    tx.lock_name(&format!("instance\n{requested_by}\n{}", req.title))?;
    let mut p = match tx.partition_by_title(&req.title, requested_by)? {
        None => {
            let mut p = tx
                .first_free_partition(computer)?
                .ok_or_else(|| MasterError::NotFound(format!("No free computer partition found for: {}", req.title)))?;
            if !req.title.is_empty() {
                p.partition_reference = Some(req.title.clone());
            }
            if !requested_by.is_empty() {
                p.requested_by = requested_by.to_string();
            }
            if !requester_id.is_empty() {
                p.requester_id = requester_id.to_string();
            }
            if software_type.is_empty() {
                software_type = "default".into();
            }
            p
        }
        Some(mut p) => {
            if !requested_by.is_empty() {
                if let Some(root) = tx.partition_by_title(requested_by, "")? {
                    if root.requested_state != "started" {
                        // a stopped or destroyed root stops/destroys its children
                        state = Some(root.requested_state);
                    }
                }
            }
            if !requester_id.is_empty() && p.requester_id != requester_id {
                p.requester_id = requester_id.to_string();
            }
            p
        }
    };
    p.slap_state = "busy".into();
    let mut changed = p.timestamp.is_none();
    let new_state = state.clone().unwrap_or_else(|| p.requested_state.clone());
    if p.requested_state != new_state {
        p.requested_state = new_state;
        changed = true;
    }
    if p.software_release.as_deref() != Some(req.software_release.as_str()) {
        p.software_release = Some(req.software_release.clone());
        changed = true;
    }
    if p.software_type.as_deref() != Some(software_type.as_str()) {
        p.software_type = Some(software_type);
        changed = true;
    }
    if p.xml.as_deref() != Some(xml.as_str()) {
        p.xml = Some(xml);
        changed = true;
    }
    if changed {
        p.timestamp = Some(now());
    }
    tx.update_partition(&p)?;
    // the addresses of every partition with that reference, any computer (quirk 11.7)
    let addresses = tx.addresses(None, &p.reference)?;
    let mut params = text_dict(p.xml.as_deref())?;
    params.insert("timestamp".into(), Value::str(python_float_repr(p.timestamp.unwrap_or(0.0))));
    let mut s = BTreeMap::new();
    s.insert("_connection_dict".to_string(), Value::Dict(text_dict(p.connection_xml.as_deref())?));
    s.insert("_parameter_dict".to_string(), Value::Dict(params));
    s.insert("connection_xml".to_string(), opt(&p.connection_xml));
    s.insert("slap_computer_id".to_string(), Value::str(&p.computer_reference));
    s.insert("slap_computer_partition_id".to_string(), Value::str(&p.reference));
    s.insert("slap_software_release_url".to_string(), opt(&p.software_release));
    s.insert("slap_server_url".to_string(), Value::str("slap_server_url"));
    s.insert("slap_software_type".to_string(), opt(&p.software_type));
    s.insert("_instance_guid".to_string(), Value::str(format!("{}-{}", p.computer_reference, p.reference)));
    s.insert("_requested_state".to_string(), Value::str(state.as_deref().unwrap_or("started")));
    s.insert("ip_list".to_string(), ip_list(&addresses));
    marshalled(&software_instance(s))
}

fn software_instance(state: BTreeMap<String, Value>) -> Value {
    Value::Object(Box::new(Object { module: SLAP_MODULE.into(), class: "SoftwareInstance".into(), args: vec![], state }))
}

fn request_shared(tx: &mut dyn Tx, asking: &Asking) -> Result<Answer, MasterError> {
    let Asking { req, requester_id, requested_by, computer } = *asking;
    let software_type = (!req.software_type.is_empty()).then_some(req.software_type.as_str());
    let guid = filter_text(&req.filter, "instance_guid");
    let host_reference = guid.as_deref().map(|g| match g.strip_prefix(computer) {
        Some(rest) if !rest.is_empty() => rest[1..].to_string(),
        _ => g.to_string(),
    });
    let Some(mut host) = tx.find_host(computer, &req.software_release, software_type, host_reference.as_deref())? else {
        let mut what = vec![Value::str(&req.software_release), Value::str(computer)];
        if let Some(t) = software_type {
            what.push(Value::str(t));
        }
        if let Some(r) = &host_reference {
            what.push(Value::str(r));
        }
        return Err(MasterError::NotFound(format!(
            "No partition corresponding to slave request: {}",
            slap::instance_xml::python_repr(&Value::List(what))
        )));
    };
    let slave_reference = format!("{requested_by}_{}", req.title);
    let mut entry = BTreeMap::new();
    entry.insert("slave_title".to_string(), Value::str(&slave_reference));
    entry.insert("slap_software_type".to_string(), Value::str(&req.software_type));
    entry.insert("slave_reference".to_string(), Value::str(&slave_reference));
    for (k, v) in &req.parameters {
        entry.insert(k.clone(), v.clone());
    }
    let entry = Value::Dict(entry);
    let mut list = match &host.slave_instance_list {
        Some(text) => match marshal::decode(text) {
            Ok(Value::List(items)) => items,
            _ => return Err(MasterError::BadRequest(format!("stored slave list of {} is invalid", host.reference))),
        },
        None => vec![],
    };
    let is_this = |v: &Value| v.as_dict().and_then(|d| d.get("slave_reference")).and_then(Value::as_str) == Some(slave_reference.as_str());
    let mut changed = false;
    if req.state.as_deref() == Some("destroyed") {
        let before = list.len();
        list.retain(|v| !is_this(v));
        changed = before != list.len();
    } else {
        match list.iter().position(is_this) {
            Some(i) => {
                if list[i] != entry {
                    list[i] = entry;
                    changed = true;
                }
            }
            None => {
                list.push(entry);
                changed = true;
            }
        }
    }
    host.slave_instance_list =
        Some(marshal::encode(&Value::List(list)).map_err(|e| MasterError::BadRequest(format!("cannot store the shared instance: {e}")))?);
    if changed {
        host.timestamp = Some(now());
    }
    tx.update_partition(&host)?;
    let slave = match tx.slave(&slave_reference, computer)? {
        None => {
            let row = SlaveRow {
                reference: slave_reference.clone(),
                computer_reference: computer.to_string(),
                connection_xml: None,
                hosted_by: Some(host.reference.clone()),
                requester_id: requester_id.to_string(),
            };
            tx.insert_slave(&row)?;
            row
        }
        Some(mut row) => {
            if !requester_id.is_empty() && row.requester_id != requester_id {
                tx.update_slave_requester(&slave_reference, computer, requester_id)?;
                row.requester_id = requester_id.to_string();
            }
            row
        }
    };
    let addresses = tx.addresses(Some(&host.computer_reference), &host.reference)?;
    let params = text_dict(Some(&dict_to_xml(&req.parameters)))?;
    let mut s = BTreeMap::new();
    s.insert("_connection_dict".to_string(), Value::Dict(text_dict(slave.connection_xml.as_deref())?));
    s.insert("_parameter_dict".to_string(), Value::Dict(params));
    s.insert("slap_computer_id".to_string(), Value::str(&host.computer_reference));
    s.insert("slap_computer_partition_id".to_string(), opt(&slave.hosted_by));
    s.insert("slap_software_release_url".to_string(), opt(&host.software_release));
    s.insert("slap_server_url".to_string(), Value::str("slap_server_url"));
    s.insert("slap_software_type".to_string(), opt(&host.software_type));
    s.insert("ip_list".to_string(), ip_list(&addresses));
    marshalled(&software_instance(s))
}

// ---------------------------------------------------------------------------
// what partitions publish and report

/// `setComputerPartitionConnectionXml` (`slap-protocol.md` §4.4, §7.5).
pub fn set_connection(
    tx: &mut dyn Tx,
    computer_id: &str,
    partition_id: &str,
    connection: &BTreeMap<String, Value>,
    slave_reference: Option<&str>,
) -> Result<Answer, MasterError> {
    let xml = dict_to_xml(connection);
    match slave_reference.filter(|s| !s.is_empty() && *s != "None") {
        None => {
            let Some(mut p) = tx.partition(computer_id, partition_id)? else {
                tracing::warn!("connection parameters for unknown partition {partition_id} on {computer_id}: ignored");
                return Ok(Answer::Text("done".into()));
            };
            if p.connection_xml.as_deref() != Some(xml.as_str()) {
                p.connection_xml = Some(xml);
                tx.update_partition(&p)?;
                // the direct requester re-runs to pick the new values up
                if !p.requester_id.is_empty() {
                    tx.set_timestamp(computer_id, &p.requester_id, now())?;
                }
            }
        }
        Some(reference) => {
            let shared = tx.slaves()?.into_iter().find(|s| s.reference == reference);
            tx.update_slave_connection(reference, &xml, partition_id)?;
            if let Some(s) = shared {
                if s.connection_xml.as_deref() != Some(xml.as_str()) && !s.requester_id.is_empty() {
                    tx.set_timestamp(&s.computer_reference, &s.requester_id, now())?;
                }
            }
        }
    }
    Ok(Answer::Text("done".into()))
}

/// `destroyedComputerPartition` (`slap-protocol.md` §7.6).
pub fn partition_destroyed(tx: &mut dyn Tx, computer_id: &str, partition_id: &str) -> Result<Answer, MasterError> {
    let Some(mut p) = tx.partition(computer_id, partition_id)? else {
        return Ok(Answer::Text(format!("Unknown partition '{partition_id}' on '{computer_id}'")));
    };
    report(tx, "partition", computer_id, partition_id, "destroyed", None)?;
    if p.requested_by.is_empty() {
        if let Some(title) = p.partition_reference.clone() {
            let mut children = tx.partitions_requested_by(&title)?;
            if !children.is_empty() {
                for c in children.iter_mut() {
                    c.requested_state = "destroyed".into();
                    tx.update_partition(c)?;
                }
                let mut titles: Vec<String> = children.into_iter().map(|c| c.partition_reference.unwrap_or_default()).collect();
                titles.sort();
                return Ok(Answer::Text(format!("Not destroying yet because this partition has child partitions: {}", titles.join(", "))));
            }
        }
    }
    // the next instance of this partition must not inherit its certificates
    tx.revoke_certificates("partition", partition_id, computer_id, now())?;
    p.slap_state = "free".into();
    p.software_release = None;
    p.xml = None;
    p.connection_xml = None;
    p.slave_instance_list = None;
    p.software_type = None;
    p.partition_reference = None;
    p.requested_by = String::new();
    p.requester_id = String::new();
    p.requested_state = "started".into();
    tx.update_partition(&p)?;
    Ok(Answer::Text("OK".into()))
}

/// `softwareInstanceBang`: the whole tree is reprocessed.
pub fn bang(tx: &mut dyn Tx, computer_id: &str, partition_id: &str, message: &str) -> Result<Answer, MasterError> {
    if let Some(root) = root_title_of(tx, computer_id, partition_id)? {
        let t = now();
        if let Some(mut r) = tx.partition_by_title(&root, "")? {
            r.timestamp = Some(t);
            tx.update_partition(&r)?;
        }
        for mut c in tx.partitions_requested_by(&root)? {
            c.timestamp = Some(t);
            tx.update_partition(&c)?;
        }
        report(tx, "partition", computer_id, partition_id, "bang", Some(message))?;
    }
    Ok(Answer::Text("OK".into()))
}

/// `softwareInstanceRename`.
pub fn rename(tx: &mut dyn Tx, computer_id: &str, partition_id: &str, new_name: &str) -> Result<Answer, MasterError> {
    let Some(mut p) = tx.partition(computer_id, partition_id)? else {
        return Ok(Answer::Text(format!("Unknown partition '{partition_id}' on '{computer_id}'")));
    };
    if p.requested_by.is_empty() {
        if let Some(old) = p.partition_reference.clone() {
            for mut c in tx.partitions_requested_by(&old)? {
                c.requested_by = new_name.to_string();
                tx.update_partition(&c)?;
            }
        }
    }
    // re-read: the partition may be one of the children updated above
    if let Some(fresh) = tx.partition(computer_id, partition_id)? {
        p = fresh;
    }
    p.partition_reference = Some(new_name.to_string());
    tx.update_partition(&p)?;
    Ok(Answer::Text("done".into()))
}

/// `getSoftwareReleaseListFromSoftwareProduct`.
pub fn product_list(site: &Site, product: Option<&str>, url: Option<&str>) -> Result<Answer, MasterError> {
    match (product, url) {
        (Some(p), None) => {
            let list = site.software_products.get(p).map(|u| vec![Value::str(u)]).unwrap_or_default();
            marshalled(&Value::List(list))
        }
        (None, Some(_)) => Err(MasterError::BadRequest("software_release_url is not supported".into())),
        _ => Err(MasterError::BadRequest("give exactly one of software_product_reference and software_release_url".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_report_errors_name_the_field() {
        let v =
            marshal::decode("<marshal><dictionary id=\"i2\"><string>reference</string><string>C</string></dictionary></marshal>").unwrap();
        let e = parse_format_report(&v).unwrap_err().to_string();
        assert!(e.contains("'address' is missing"), "{e}");
        let e = parse_format_report(&Value::str("x")).unwrap_err().to_string();
        assert!(e.contains("expected a dictionary"), "{e}");
    }

    #[test]
    fn frontend_bypass_answers_the_url() {
        let mut req = InstanceRequest { software_release: APACHE_FRONTEND.into(), shared: true, ..Default::default() };
        req.parameters.insert("url".into(), Value::str("http://[2001:db8::2]:8080/app?x=1"));
        let v = frontend_bypass(&req).unwrap();
        // [cap 059]
        assert_eq!(
            marshal::encode(&v).unwrap(),
            "<marshal><object id=\"i2\" module=\"slapos.slap.slap\" class=\"ComputerPartition\"><tuple><string></string><string>Fake frontend for http://[2001:db8::2]:8080/app?x=1</string><none/></tuple><dictionary id=\"i3\"><string>_computer_id</string><string></string><string>_connection_dict</string><dictionary id=\"i4\"><string>domain</string><string>[2001:db8::2]:8080</string><string>secure_access</string><string>http://[2001:db8::2]:8080/app?x=1</string></dictionary><string>_parameter_dict</string><dictionary id=\"i5\"/><string>_partition_id</string><string>Fake frontend for http://[2001:db8::2]:8080/app?x=1</string><string>_request_dict</string><none/><string>slap_computer_id</string><string></string><string>slap_computer_partition_id</string><string></string></dictionary></object></marshal>"
        );
    }

    #[test]
    fn long_messages_keep_their_end() {
        assert_eq!(tail("short", 10), "short");
        assert_eq!(tail("0123456789", 4), "[6 bytes cut]\n6789");
        // never inside a character
        assert_eq!(tail("aéé", 3), "[3 bytes cut]\né");
    }
}
