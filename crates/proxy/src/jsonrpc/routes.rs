//! What each JSON-RPC route does (`json_rpc.py` of slapos.core 1.26.1),
//! over one transaction, through the master's own functions
//! ([`crate::master`]: request, supply, format, connection parameters,
//! destruction, bang, rename, reports). Beyond the Python proxy, which
//! ignores them, reports, errors and usage are recorded as the SLAP routes
//! record them; lists are limited to what a user may use when the master
//! has identities.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value as J};
use slap::instance_xml::xml_to_dict;
use slap::marshal::{self, Value};

use super::{forbidden, instance_guid, parse_guid, success, Call, Reply};
use crate::master::{self, Answer, InstanceRequest, MasterError, ReportedPartition, Site};
use crate::rules::Identity;
use crate::store::{ComputerRow, PartitionRow, SlaveRow, Tx};

/// A route's function: the validated body in, a reply out, within `tx`.
pub type Function = fn(&mut dyn Tx, &Site, &Call, &J) -> Result<Reply, MasterError>;

/// The function of a route of the OpenAPI documents.
pub fn function(route: &str) -> Option<Function> {
    let name = route.strip_prefix("/slapos.")?;
    Some(match name {
        "remove.v0.compute_node_certificate"
        | "post.v0.compute_node_usage"
        | "put.v0.compute_node_bang"
        | "put.v0.software_installation_error" => computer_report,
        "post.v0.software_installation" => supply,
        "post.v0.compute_node_certificate" | "get.v0.software_instance_certificate" => certificate,
        "allDocs.v0.compute_node_software_installation_list" => software_installation_list,
        "allDocs.v0.compute_node_instance_list" => compute_node_instance_list,
        "allDocs.v0.instance_node_instance_list" => instance_node_instance_list,
        "get.v0.hateoas_url" => hateoas_url,
        "get.v0.compute_node_status" => |_, _, _, _| Ok(Ok(json!({"text": "Unknown (not implemented)"}))),
        "get.v0.software_instance" => software_instance,
        "get.v0.compute_partition" => compute_partition,
        "post.v0.software_instance" => request,
        "get.v0.instance_tree" => instance_tree,
        "put.v0.compute_node_format" => format,
        "put.v0.software_installation_reported_state" => software_installation_reported_state,
        "put.v0.software_instance_reported_state" => software_instance_reported_state,
        "put.v0.software_instance_bang" => bang,
        "put.v0.software_instance_title" => rename,
        "put.v0.software_instance_connection_parameter" => connection_parameter,
        "put.v0.software_instance_error" => instance_error,
        "allDocs.v0.instance_tree_list" => instance_tree_list,
        "allDocs.WIP.compute_node_list" => compute_node_list,
        _ => return None,
    })
}

/// A string field of a validated body ("" when absent).
fn text<'a>(body: &'a J, key: &str) -> &'a str {
    body.get(key).and_then(J::as_str).unwrap_or("")
}

/// A JSON value as the marshalled value Python's `json.loads` would give.
fn to_value(j: &J) -> Value {
    match j {
        J::Null => Value::None,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i.into()),
            (None, Some(u)) => Value::Int(u.into()),
            _ => Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        J::String(s) => Value::str(s),
        J::Array(items) => Value::List(items.iter().map(to_value).collect()),
        J::Object(map) => Value::Dict(map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect()),
    }
}

/// A marshalled value as JSON (`json.dumps` of the Python value).
fn to_json(v: &Value) -> J {
    match v {
        Value::None | Value::Object(_) => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => i64::try_from(*i).map(J::from).unwrap_or_else(|_| J::from(*i as f64)),
        Value::Float(f) => J::from(*f),
        Value::Str(s) => J::String(s.clone()),
        Value::List(items) | Value::Tuple(items) | Value::Set(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Dict(map) => J::Object(map.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
    }
}

fn dict(j: Option<&J>) -> BTreeMap<String, Value> {
    match j.map(to_value) {
        Some(Value::Dict(d)) => d,
        _ => BTreeMap::new(),
    }
}

/// `xml2dict` of stored instance XML, as a JSON object.
fn xml_json(xml: Option<&str>) -> Result<J, MasterError> {
    let d = xml_to_dict(xml.unwrap_or("")).map_err(|e| MasterError::Unknown(format!("stored instance XML is invalid: {e}")))?;
    Ok(J::Object(d.into_iter().map(|(k, v)| (k, v.map(J::String).unwrap_or(J::Null))).collect()))
}

/// `send_json_rpc_sql_partition`: an allocated partition's instance.
fn partition_document(tx: &mut dyn Tx, p: &PartitionRow) -> Result<Reply, MasterError> {
    let addresses = tx.addresses(Some(&p.computer_reference), &p.reference)?;
    let title = p.partition_reference.clone().map(J::String).unwrap_or(J::Null);
    let own = p.partition_reference.as_deref().unwrap_or("");
    Ok(Ok(json!({
        "title": title,
        "instance_guid": instance_guid(own, &p.requested_by, false),
        "software_release_uri": p.software_release,
        "software_type": p.software_type,
        "state": p.requested_state,
        "connection_parameters": xml_json(p.connection_xml.as_deref())?,
        "parameters": xml_json(p.xml.as_deref())?,
        "shared": false,
        "root_instance_title": if p.requested_by.is_empty() { title.clone() } else { J::String(p.requested_by.clone()) },
        "ip_list": addresses.iter().map(|a| json!([a.interface, a.address])).collect::<Vec<_>>(),
        "full_ip_list": [],
        "sla_parameters": {},
        "computer_guid": p.computer_reference,
        "compute_partition_id": p.reference,
        "processing_timestamp": p.timestamp.unwrap_or(0.0) as i64,
        "access_status_message": "",
    })))
}

/// (requested_by, title) of a shared instance's reference `<root>_<title>`.
fn split_slave_reference(reference: &str) -> Option<(&str, &str)> {
    reference.split_once('_')
}

/// The entries of a host partition's shared instance list.
fn slave_entries(host: &PartitionRow) -> Result<Vec<BTreeMap<String, Value>>, MasterError> {
    let Some(text) = &host.slave_instance_list else {
        return Ok(vec![]);
    };
    match marshal::decode(text) {
        Ok(Value::List(items)) => Ok(items.into_iter().filter_map(|v| if let Value::Dict(d) = v { Some(d) } else { None }).collect()),
        _ => Err(MasterError::Unknown(format!("stored shared instance list of {} is invalid", host.reference))),
    }
}

/// An entry of the shared instance list without what the master added:
/// its parameters.
fn entry_parameters(mut entry: BTreeMap<String, Value>) -> J {
    for k in ["slave_title", "slap_software_type", "slave_reference"] {
        entry.remove(k);
    }
    to_json(&Value::Dict(entry))
}

/// `send_json_rpc_sql_shared`: a shared instance and its host.
fn shared_document(shared: &SlaveRow, host: &PartitionRow) -> Result<Reply, MasterError> {
    let internal = || MasterError::Unknown(format!("shared instance {} not in its host's list", shared.reference));
    let (asked_by, title) = split_slave_reference(&shared.reference).ok_or_else(internal)?;
    let entry = slave_entries(host)?
        .into_iter()
        .find(|e| e.get("slave_title").and_then(Value::as_str) == Some(shared.reference.as_str()))
        .ok_or_else(internal)?;
    Ok(Ok(json!({
        "title": title,
        "instance_guid": instance_guid(title, asked_by, true),
        "software_release_uri": host.software_release,
        "software_type": host.software_type,
        "state": "started",
        "connection_parameters": xml_json(shared.connection_xml.as_deref())?,
        "parameters": entry_parameters(entry),
        "shared": true,
        "root_instance_title": if asked_by.is_empty() { title } else { asked_by },
        "ip_list": [],
        "full_ip_list": [],
        "sla_parameters": {},
        "computer_guid": host.computer_reference,
        "compute_partition_id": host.reference,
        "processing_timestamp": host.timestamp.unwrap_or(0.0) as i64,
        "access_status_message": "",
    })))
}

/// The shared instance with that reference (any computer) and its host.
fn shared_with_host(tx: &mut dyn Tx, reference: &str) -> Result<Option<(SlaveRow, Option<PartitionRow>)>, MasterError> {
    let Some(s) = tx.slaves()?.into_iter().find(|s| s.reference == reference) else {
        return Ok(None);
    };
    let host = match &s.hosted_by {
        Some(h) => tx.partition(&s.computer_reference, h)?,
        None => None,
    };
    Ok(Some((s, host)))
}

/// Reads the body's `instance_guid`, or answers Python's 403.
fn guid_of(body: &J) -> Result<(String, String, bool), Reply> {
    let guid = text(body, "instance_guid");
    parse_guid(guid).ok_or_else(|| forbidden(format!("instance_guid {guid} not handled.")))
}

/// The instance a non-shared id names (None: none).
fn instance_of(tx: &mut dyn Tx, title: &str, root: &str) -> Result<Option<PartitionRow>, MasterError> {
    Ok(tx.partition_by_title(title, root)?)
}

fn not_found(body: &J) -> Reply {
    forbidden(format!("No software instance {} found.", text(body, "instance_guid")))
}

fn computer_known(tx: &mut dyn Tx, body: &J) -> Result<Result<String, Reply>, MasterError> {
    let computer = text(body, "computer_guid");
    if tx.computer(computer)?.is_none() {
        return Ok(Err(forbidden(format!("{computer} is not registered."))));
    }
    Ok(Ok(computer.to_string()))
}

/// The calls answered `Ignored` (certificate removal, usage, computer
/// bang, software error): usage and errors are recorded.
fn computer_report(tx: &mut dyn Tx, _: &Site, _: &Call, body: &J) -> Result<Reply, MasterError> {
    let computer = text(body, "computer_guid");
    if let Some(usage) = body.get("tioxml").and_then(J::as_str) {
        master::use_computer(tx, computer, usage)?;
    } else if body.get("software_release_uri").is_some() {
        let url = text(body, "software_release_uri");
        master::report(tx, "software", computer, url, "error", Some(text(body, "message")))?;
    } else if let Some(message) = body.get("message").and_then(J::as_str) {
        tracing::info!("computer {} banged: {}", crate::limits::excerpt(computer, 300), crate::limits::excerpt(message, 300));
    }
    Ok(success("Ignored"))
}

/// `post.v0.software_installation`: `supplySupply`.
fn supply(tx: &mut dyn Tx, _: &Site, _: &Call, body: &J) -> Result<Reply, MasterError> {
    let (url, state) = (text(body, "software_release_uri"), body.get("state").and_then(J::as_str).unwrap_or("available"));
    master::supply(tx, url, text(body, "computer_guid"), state)?;
    Ok(success(&format!("Supplied {url} to be {state}")))
}

/// The proxy has no certificates here: empty ones.
fn certificate(_: &mut dyn Tx, _: &Site, _: &Call, _: &J) -> Result<Reply, MasterError> {
    Ok(Ok(json!({"key": "", "certificate": ""})))
}

fn software_installation_list(tx: &mut dyn Tx, _: &Site, _: &Call, body: &J) -> Result<Reply, MasterError> {
    let computer = match computer_known(tx, body)? {
        Ok(c) => c,
        Err(reply) => return Ok(reply),
    };
    let list: Vec<J> = tx
        .software_releases(Some(&computer))?
        .into_iter()
        .map(|s| json!({"software_release_uri": s.url, "state": s.requested_state}))
        .collect();
    Ok(Ok(json!({"result_list": list})))
}

fn compute_node_instance_list(tx: &mut dyn Tx, _: &Site, _: &Call, body: &J) -> Result<Reply, MasterError> {
    let computer = match computer_known(tx, body)? {
        Ok(c) => c,
        Err(reply) => return Ok(reply),
    };
    let list: Vec<J> = tx
        .partitions(Some(&computer))?
        .into_iter()
        .filter(|p| p.slap_state == "busy")
        .map(|p| {
            let title = p.partition_reference.as_deref().unwrap_or("");
            json!({
                "title": p.partition_reference,
                "instance_guid": instance_guid(title, &p.requested_by, false),
                "state": p.requested_state,
                "compute_partition_id": p.reference,
                "software_release_uri": p.software_release,
            })
        })
        .collect();
    Ok(Ok(json!({"result_list": list})))
}

/// The shared instances a partition hosts.
fn instance_node_instance_list(tx: &mut dyn Tx, _: &Site, _: &Call, body: &J) -> Result<Reply, MasterError> {
    let (title, root, shared) = match guid_of(body) {
        Ok(g) => g,
        Err(reply) => return Ok(reply),
    };
    let Some(host) = instance_of(tx, &title, &root)?.filter(|_| !shared) else {
        return Ok(not_found(body));
    };
    let mut list = Vec::new();
    for mut entry in slave_entries(&host)? {
        let reference = entry.get("slave_title").and_then(Value::as_str).unwrap_or("").to_string();
        let software_type = entry.remove("slap_software_type").map(|v| to_json(&v)).unwrap_or(J::Null);
        let (asked_by, title) = split_slave_reference(&reference).unwrap_or(("", &reference));
        list.push(json!({
            "title": title,
            "instance_guid": instance_guid(title, asked_by, true),
            "software_type": software_type,
            "state": "started",
            "parameters": entry_parameters(entry),
            "compute_partition_id": host.reference,
        }));
    }
    Ok(Ok(json!({"result_list": list})))
}

/// `url_for('hateoas.hateoas', _external=True)`.
fn hateoas_url(_: &mut dyn Tx, _: &Site, call: &Call, _: &J) -> Result<Reply, MasterError> {
    let o = &call.origin;
    Ok(Ok(json!({"hateoas_url": format!("{}://{}{}/hateoas/", o.scheme, o.host, o.prefix)})))
}

fn software_instance(tx: &mut dyn Tx, _: &Site, _: &Call, body: &J) -> Result<Reply, MasterError> {
    let (title, root, shared) = match guid_of(body) {
        Ok(g) => g,
        Err(reply) => return Ok(reply),
    };
    let guid = text(body, "instance_guid");
    if shared {
        return match shared_with_host(tx, &format!("{root}_{title}"))? {
            None => Ok(forbidden(format!("No shared instance {guid} found."))),
            Some((_, None)) => Ok(forbidden(format!("No partition hosting {guid} found."))),
            Some((s, Some(host))) => shared_document(&s, &host),
        };
    }
    match instance_of(tx, &title, &root)? {
        Some(p) => partition_document(tx, &p),
        None => Ok(not_found(body)),
    }
}

fn compute_partition(tx: &mut dyn Tx, _: &Site, _: &Call, body: &J) -> Result<Reply, MasterError> {
    let id = text(body, "compute_partition_id");
    match tx.partition(text(body, "computer_guid"), id)?.filter(|p| p.partition_reference.is_some()) {
        Some(p) => partition_document(tx, &p),
        None => Ok(forbidden(format!("No instance on partition {id} found."))),
    }
}

/// The [`InstanceRequest`] of a `post.v0.software_instance` body.
pub fn instance_request(body: &J, call: &Call) -> InstanceRequest {
    InstanceRequest {
        software_release: text(body, "software_release_uri").to_string(),
        software_type: text(body, "software_type").to_string(),
        title: text(body, "title").to_string(),
        parameters: dict(body.get("parameters")),
        filter: dict(body.get("sla_parameters")),
        state: Some(body.get("state").and_then(J::as_str).unwrap_or("started").to_string()),
        shared: body.get("shared").and_then(J::as_bool).unwrap_or(false),
        authorization: call.authorization.clone(),
        origin: call.origin.clone(),
        ..Default::default()
    }
}

/// `post.v0.software_instance`: `requestComputerPartition`, answered from
/// the document the master answers (`send_json_rpc_slap_instance`).
fn request(tx: &mut dyn Tx, site: &Site, call: &Call, body: &J) -> Result<Reply, MasterError> {
    request_answered(tx, site, &instance_request(body, call), None, body)
}

/// [`request`] of `req` (after [`crate::multimaster::route`]), or the
/// answer of the master it was forwarded to (`forwarded`).
pub fn request_answered(
    tx: &mut dyn Tx,
    site: &Site,
    req: &InstanceRequest,
    forwarded: Option<&Answer>,
    body: &J,
) -> Result<Reply, MasterError> {
    let (_, requested_by) = master::requester(tx, req)?;
    let answer = match forwarded {
        Some(a) => a.clone(),
        None => master::request(tx, site, req)?,
    };
    let document = match answer {
        Answer::Marshal(text) | Answer::Text(text) => {
            marshal::decode(&text).map_err(|e| MasterError::Unknown(format!("cannot read the master's answer: {e}")))?
        }
    };
    let Value::Object(o) = document else {
        return Err(MasterError::Unknown("the master answered no instance".into()));
    };
    let root = if requested_by.is_empty() { req.title.clone() } else { requested_by.clone() };
    let mut doc = Map::new();
    doc.insert("title".into(), J::from(req.title.as_str()));
    doc.insert("instance_guid".into(), J::from(instance_guid(&req.title, &requested_by, req.shared)));
    extend(
        &mut doc,
        if o.class == "ComputerPartition" { bypass_document(&o, req, body, &root) } else { instance_document(&o, req, &root) },
    );
    Ok(Ok(J::Object(doc)))
}

/// The rest of the answer for a frontend bypass (a fake partition).
fn bypass_document(o: &marshal::Object, req: &InstanceRequest, body: &J, root: &str) -> J {
    let get = |k: &str| o.state.get(k).map(to_json).unwrap_or(J::Null);
    json!({
        "software_release_uri": req.software_release, "software_type": req.software_type, "state": req.state,
        "connection_parameters": get("_connection_dict"), "parameters": body.get("parameters").cloned().unwrap_or(json!({})),
        "shared": req.shared, "root_instance_title": root, "ip_list": [], "full_ip_list": [], "sla_parameters": {},
        "computer_guid": get("_computer_id"), "compute_partition_id": get("_partition_id"), "processing_timestamp": 0,
        "access_status_message": "",
    })
}

/// The rest of the answer for an instance: the `SoftwareInstance` the
/// master answered, its `timestamp` parameter as `processing_timestamp`.
fn instance_document(o: &marshal::Object, req: &InstanceRequest, root: &str) -> J {
    let get = |k: &str| o.state.get(k).map(to_json).unwrap_or(J::Null);
    let mut parameters = get("_parameter_dict");
    let timestamp = if req.shared { None } else { parameters.as_object_mut().and_then(|p| p.shift_remove("timestamp")) };
    let timestamp = timestamp.and_then(|t| t.as_str().and_then(|s| s.parse::<f64>().ok())).unwrap_or(0.0) as i64;
    json!({
        "software_release_uri": get("slap_software_release_url"), "software_type": get("slap_software_type"),
        "state": if req.shared { J::from("started") } else { get("_requested_state") },
        "connection_parameters": get("_connection_dict"), "parameters": parameters, "shared": req.shared,
        "root_instance_title": root, "ip_list": get("ip_list"), "full_ip_list": [], "sla_parameters": {},
        "computer_guid": get("slap_computer_id"), "compute_partition_id": get("slap_computer_partition_id"),
        "processing_timestamp": timestamp, "access_status_message": "",
    })
}

fn extend(doc: &mut Map<String, J>, more: J) {
    if let J::Object(m) = more {
        doc.extend(m);
    }
}

/// The root instances (title given: of that title; "" or absent: all) and
/// the root shared instances, as `getInstanceTreeList`.
fn trees(tx: &mut dyn Tx, title: &str) -> Result<(Vec<PartitionRow>, Vec<SlaveRow>), MasterError> {
    let roots = tx
        .partitions(None)?
        .into_iter()
        .filter(|p| p.slap_state != "free" && p.requested_by.is_empty())
        .filter(|p| title.is_empty() || p.partition_reference.as_deref() == Some(title))
        .collect();
    let wanted = format!("_{title}");
    let shared =
        tx.slaves()?.into_iter().filter(|s| if title.is_empty() { s.reference.starts_with('_') } else { s.reference == wanted }).collect();
    Ok((roots, shared))
}

fn instance_tree(tx: &mut dyn Tx, _: &Site, _: &Call, body: &J) -> Result<Reply, MasterError> {
    let title = text(body, "title");
    let (mut roots, mut shared) = trees(tx, title)?;
    if roots.len() == 1 && shared.is_empty() {
        return partition_document(tx, &roots.remove(0));
    }
    if roots.is_empty() && shared.len() == 1 {
        let s = shared.remove(0);
        let host = match &s.hosted_by {
            Some(h) => tx.partition(&s.computer_reference, h)?,
            None => None,
        };
        return match host {
            Some(host) => shared_document(&s, &host),
            None => Ok(forbidden(format!("No partition hosting {title} found."))),
        };
    }
    Ok(forbidden(format!("No instance tree {title} found.")))
}

/// The titles a user may see (all without identities).
fn visible(tx: &mut dyn Tx, call: &Call, kind: &str, titles: Vec<String>) -> Result<Vec<String>, MasterError> {
    let Some(Identity::User(user)) = &call.identity else {
        return Ok(titles);
    };
    let mut out = Vec::new();
    for t in titles {
        if crate::rules::may_use(tx, kind, &t, user)? {
            out.push(t);
        }
    }
    Ok(out)
}

fn instance_tree_list(tx: &mut dyn Tx, _: &Site, call: &Call, _: &J) -> Result<Reply, MasterError> {
    let (roots, shared) = trees(tx, "")?;
    let mut titles: Vec<String> = roots.into_iter().map(|p| p.partition_reference.unwrap_or_default()).collect();
    titles.extend(shared.iter().map(|s| split_slave_reference(&s.reference).map(|(_, t)| t).unwrap_or("").to_string()));
    let list: Vec<J> = visible(tx, call, "tree", titles)?.into_iter().map(|t| json!({"title": t})).collect();
    Ok(Ok(json!({"result_list": list})))
}

fn compute_node_list(tx: &mut dyn Tx, _: &Site, call: &Call, _: &J) -> Result<Reply, MasterError> {
    let references = tx.computers()?.into_iter().map(|c| c.reference).collect();
    let list: Vec<J> = visible(tx, call, "computer", references)?.into_iter().map(|c| json!({"computer_guid": c})).collect();
    Ok(Ok(json!({"result_list": list})))
}

/// `put.v0.compute_node_format`: the format report (`formatFromDB`: the
/// computer's address is forgotten).
fn format(tx: &mut dyn Tx, _: &Site, _: &Call, body: &J) -> Result<Reply, MasterError> {
    let computer = ComputerRow { reference: text(body, "computer_guid").to_string(), address: None, netmask: None };
    let mut partitions = Vec::new();
    for p in body.get("compute_partition_list").and_then(J::as_array).into_iter().flatten() {
        let mut addresses = Vec::new();
        for ip in p.get("ip_list").and_then(J::as_array).into_iter().flatten() {
            let field = |k: &str| ip.get(k).and_then(J::as_str).map(str::to_string);
            // Python reads these two without a default: a KeyError, a 500
            let (Some(interface), Some(netmask)) = (field("network-interface"), field("netmask")) else {
                return Err(MasterError::Unknown("an address without its network-interface or netmask".into()));
            };
            addresses.push((interface, field("ip-address").unwrap_or_default(), netmask));
        }
        partitions.push(ReportedPartition { reference: text(p, "partition_id").to_string(), addresses });
    }
    master::load_format_report(tx, &computer, &partitions)?;
    Ok(success("Formatted"))
}

fn software_installation_reported_state(tx: &mut dyn Tx, _: &Site, _: &Call, body: &J) -> Result<Reply, MasterError> {
    let (computer, url, state) = (text(body, "computer_guid"), text(body, "software_release_uri"), text(body, "reported_state"));
    if state == "destroyed" {
        master::software_destroyed(tx, url, computer)?;
        return Ok(success("Destroyed"));
    }
    master::report(tx, "software", computer, url, state, None)?;
    Ok(success("Ignored"))
}

fn software_instance_reported_state(tx: &mut dyn Tx, _: &Site, _: &Call, body: &J) -> Result<Reply, MasterError> {
    let state = text(body, "reported_state");
    if state != "destroyed" {
        // recorded for a known instance (the Python proxy ignores it)
        if let Some((title, root, false)) = parse_guid(text(body, "instance_guid")) {
            if let Some(p) = instance_of(tx, &title, &root)? {
                master::report(tx, "partition", &p.computer_reference, &p.reference, state, None)?;
            }
        }
        return Ok(success("Ignored"));
    }
    let (title, root, shared) = match guid_of(body) {
        Ok(g) => g,
        Err(reply) => return Ok(reply),
    };
    if shared {
        return Ok(success("Ignored"));
    }
    let Some(p) = instance_of(tx, &title, &root)? else {
        return Ok(not_found(body));
    };
    // a root with children marks them destroyed (committed) and is refused
    match master::partition_destroyed(tx, &p.computer_reference, &p.reference)? {
        Answer::Text(t) if t.starts_with("Not destroying yet") => Ok(forbidden(t)),
        _ => Ok(success("Destroyed")),
    }
}

/// The instance a non-shared id names, or the reply for a shared id or an
/// unreadable one (the routes that do not handle shared instances).
fn own_instance(tx: &mut dyn Tx, body: &J) -> Result<Result<Option<PartitionRow>, Reply>, MasterError> {
    match guid_of(body) {
        Err(reply) => Ok(Err(reply)),
        Ok((_, _, true)) => Ok(Err(forbidden("NotImplemented".into()))),
        Ok((title, root, false)) => Ok(Ok(instance_of(tx, &title, &root)?)),
    }
}

fn bang(tx: &mut dyn Tx, _: &Site, _: &Call, body: &J) -> Result<Reply, MasterError> {
    match own_instance(tx, body)? {
        Err(reply) => Ok(reply),
        Ok(found) => {
            if let Some(p) = found {
                master::bang(tx, &p.computer_reference, &p.reference, text(body, "message"))?;
            }
            Ok(success("Bang handled"))
        }
    }
}

fn rename(tx: &mut dyn Tx, _: &Site, _: &Call, body: &J) -> Result<Reply, MasterError> {
    match own_instance(tx, body)? {
        Err(reply) => Ok(reply),
        Ok(found) => {
            if let Some(p) = found {
                master::rename(tx, &p.computer_reference, &p.reference, text(body, "title"))?;
            }
            Ok(success("Renamed"))
        }
    }
}

fn connection_parameter(tx: &mut dyn Tx, _: &Site, _: &Call, body: &J) -> Result<Reply, MasterError> {
    let (title, root, shared) = match guid_of(body) {
        Ok(g) => g,
        Err(reply) => return Ok(reply),
    };
    let connection = dict(body.get("connection_parameter_dict"));
    if shared {
        let reference = format!("{root}_{title}");
        if let Some((s, _)) = shared_with_host(tx, &reference)? {
            let host = s.hosted_by.clone().unwrap_or_default();
            master::set_connection(tx, &s.computer_reference, &host, &connection, Some(&reference))?;
        }
    } else if let Some(p) = instance_of(tx, &title, &root)? {
        master::set_connection(tx, &p.computer_reference, &p.reference, &connection, None)?;
    }
    Ok(success("Updated"))
}

/// `put.v0.software_instance_error`: recorded for a known instance.
fn instance_error(tx: &mut dyn Tx, _: &Site, _: &Call, body: &J) -> Result<Reply, MasterError> {
    if let Some((title, root, false)) = parse_guid(text(body, "instance_guid")) {
        if let Some(p) = instance_of(tx, &title, &root)? {
            master::report(tx, "partition", &p.computer_reference, &p.reference, "error", Some(text(body, "message")))?;
        }
    }
    Ok(success("Ignored"))
}
