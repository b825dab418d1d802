//! The typed SLAP model: computers, computer partitions, software releases,
//! software instances and their states (`slap-protocol.md` §3).
//!
//! Each type reads the marshalled object the Python master sends
//! ([`Computer::from_value`], …) and writes the object the Python proxy sends
//! ([`Computer::to_value`], …): argument tuples `(computer_id)`,
//! `(computer_id, partition_id, None)`, `(url, computer_guid)` and `()`,
//! attributes sorted. Attributes that have no typed field (or whose value does
//! not have the expected type) are kept in `extra` and written back as they
//! came, so nothing a master sends is lost.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::instance_xml;
use crate::marshal::{Object, Value, SLAP_MODULE};

/// A marshalled document that does not have the shape of the SLAP model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The object is not of the class expected.
    #[error("expected a {expected} object, found {found}")]
    WrongType {
        /// The class expected.
        expected: &'static str,
        /// What was found.
        found: String,
    },
    /// A class outside the SLAP model (refused: the decoder builds no arbitrary objects).
    #[error("refusing to read class {module}.{class}: only Computer, ComputerPartition, SoftwareRelease and SoftwareInstance of slapos.slap.slap are allowed")]
    UnknownClass {
        /// Its module.
        module: String,
        /// Its name.
        class: String,
    },
    /// An attribute with the wrong type or missing.
    #[error("{class}: {message}")]
    BadAttribute {
        /// The object's class.
        class: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A state the model does not know.
    #[error("unknown {kind} state '{value}' (expected {expected})")]
    UnknownState {
        /// `instance` or `software`.
        kind: &'static str,
        /// The state found.
        value: String,
        /// The states known.
        expected: &'static str,
    },
}

/// The state a master asks an instance to be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InstanceState {
    /// Services running.
    Started,
    /// Services stopped, partition kept.
    Stopped,
    /// Partition to be emptied and freed.
    Destroyed,
}

impl InstanceState {
    /// The state as SLAP writes it (`started`, `stopped`, `destroyed`).
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Started => "started",
            InstanceState::Stopped => "stopped",
            InstanceState::Destroyed => "destroyed",
        }
    }
}

impl FromStr for InstanceState {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "started" => Ok(InstanceState::Started),
            "stopped" => Ok(InstanceState::Stopped),
            "destroyed" => Ok(InstanceState::Destroyed),
            other => {
                Err(ModelError::UnknownState { kind: "instance", value: other.to_string(), expected: "started, stopped or destroyed" })
            }
        }
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state a master asks a software release to be in on a computer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SoftwareState {
    /// To be built and kept.
    Available,
    /// To be removed from the computer.
    Destroyed,
}

impl SoftwareState {
    /// The state as SLAP writes it (`available`, `destroyed`).
    pub fn as_str(self) -> &'static str {
        match self {
            SoftwareState::Available => "available",
            SoftwareState::Destroyed => "destroyed",
        }
    }
}

impl FromStr for SoftwareState {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "available" => Ok(SoftwareState::Available),
            "destroyed" => Ok(SoftwareState::Destroyed),
            other => {
                Err(ModelError::UnknownState { kind: "software release", value: other.to_string(), expected: "available or destroyed" })
            }
        }
    }
}

impl fmt::Display for SoftwareState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parameters of an instance (`_parameter_dict`): the requested parameters as
/// text, merged with the keys the master adds (`ip_list`, `timestamp`,
/// `slap_software_type`, `slave_instance_list`, …).
pub type ParameterDict = BTreeMap<String, Value>;

/// Published connection parameters (`_connection_dict`); values are text,
/// or None for an empty published value.
pub type ConnectionDict = BTreeMap<String, Value>;

/// Keys the master merges into `_parameter_dict` next to the instance's own
/// parameters (`slap-protocol.md` §3.3).
pub const SLAP_PARAMETER_KEYS: &[&str] = &[
    "ip_list",
    "full_address_list",
    "full_ip_list",
    "slap_software_type",
    "instance_title",
    "root_instance_title",
    "root_instance_short_title",
    "instance_guid",
    "slap_computer_id",
    "slap_computer_partition_id",
    "slap_software_release_url",
    "slave_instance_list",
    "timestamp",
];

fn slap_object<'a>(value: &'a Value, class: &'static str) -> Result<&'a Object, ModelError> {
    match value {
        Value::Object(o) => {
            if o.module != SLAP_MODULE
                || !matches!(o.class.as_str(), "Computer" | "ComputerPartition" | "SoftwareRelease" | "SoftwareInstance")
            {
                return Err(ModelError::UnknownClass { module: o.module.clone(), class: o.class.clone() });
            }
            if o.class != class {
                return Err(ModelError::WrongType { expected: class, found: format!("a {} object", o.class) });
            }
            Ok(o)
        }
        other => Err(ModelError::WrongType { expected: class, found: format!("<{}>", other.type_name()) }),
    }
}

fn object(class: &str, args: Vec<Value>, state: BTreeMap<String, Value>) -> Value {
    Value::Object(Box::new(Object { module: SLAP_MODULE.to_string(), class: class.to_string(), args, state }))
}

/// Takes a text attribute out of `extra` when it is text; leaves it otherwise.
fn take_str(extra: &mut BTreeMap<String, Value>, key: &str) -> Option<String> {
    match extra.get(key) {
        Some(Value::Str(_)) => match extra.remove(key) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// Takes `_requested_state` out of `extra` when it is a known state; an
/// unknown one stays there (see `unknown_requested_state`).
fn take_state<T: FromStr>(extra: &mut BTreeMap<String, Value>) -> Option<T> {
    let state = extra.get("_requested_state")?.as_str()?.parse().ok()?;
    extra.remove("_requested_state");
    Some(state)
}

fn take_dict(extra: &mut BTreeMap<String, Value>, key: &str) -> Option<BTreeMap<String, Value>> {
    match extra.get(key) {
        Some(Value::Dict(_)) => match extra.remove(key) {
            Some(Value::Dict(d)) => Some(d),
            _ => None,
        },
        _ => None,
    }
}

fn arg_str(o: &Object, index: usize, class: &'static str, what: &str) -> Result<String, ModelError> {
    match o.args.get(index) {
        Some(Value::Str(s)) => Ok(s.clone()),
        Some(other) => Err(ModelError::BadAttribute {
            class,
            message: format!("argument {index} ({what}) must be a string, found <{}>", other.type_name()),
        }),
        None => Err(ModelError::BadAttribute { class, message: format!("missing argument {index} ({what})") }),
    }
}

/// `(interface, address)` pairs of an `ip_list` value.
pub fn ip_list_of(value: Option<&Value>) -> Vec<(String, String)> {
    value
        .and_then(Value::as_seq)
        .map(|items| {
            items
                .iter()
                .filter_map(|item| match item.as_seq() {
                    Some([Value::Str(i), Value::Str(a), ..]) => Some((i.clone(), a.clone())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// An `ip_list` value: a list of `(interface, address)` tuples.
pub fn ip_list_value(ips: &[(String, String)]) -> Value {
    Value::List(ips.iter().map(|(i, a)| Value::Tuple(vec![Value::str(i), Value::str(a)])).collect())
}

// ---------------------------------------------------------------------------

/// A software release as seen by a computer (`SoftwareRelease(url, computer_guid)`).
#[derive(Debug, Clone, PartialEq)]
pub struct SoftwareRelease {
    /// The software release URL.
    pub url: String,
    /// The computer it is supplied to.
    pub computer_id: String,
    /// Only present in a computer's software release list.
    pub requested_state: Option<SoftwareState>,
    /// Attributes without a typed field, kept for the round trip.
    pub extra: BTreeMap<String, Value>,
}

impl SoftwareRelease {
    /// The release `url` on `computer_id`, no state.
    pub fn new(url: impl Into<String>, computer_id: impl Into<String>) -> SoftwareRelease {
        SoftwareRelease { url: url.into(), computer_id: computer_id.into(), requested_state: None, extra: BTreeMap::new() }
    }

    /// The requested state, `available` when the master sent none (as the
    /// Python client's `getState()`).
    pub fn state(&self) -> SoftwareState {
        self.requested_state.unwrap_or(SoftwareState::Available)
    }

    /// Reads a marshalled `SoftwareRelease` object.
    pub fn from_value(value: &Value) -> Result<SoftwareRelease, ModelError> {
        let o = slap_object(value, "SoftwareRelease")?;
        let mut extra = o.state.clone();
        let url = match take_str(&mut extra, "_software_release") {
            Some(u) => u,
            None => arg_str(o, 0, "SoftwareRelease", "url")?,
        };
        let computer_id = match take_str(&mut extra, "_computer_guid") {
            Some(c) => c,
            None => arg_str(o, 1, "SoftwareRelease", "computer_guid").unwrap_or_default(),
        };
        let requested_state = take_state(&mut extra);
        Ok(SoftwareRelease { url, computer_id, requested_state, extra })
    }

    /// The marshalled `SoftwareRelease` object (as the Python master writes it).
    pub fn to_value(&self) -> Value {
        let mut state = BTreeMap::new();
        state.insert("_computer_guid".to_string(), Value::str(&self.computer_id));
        state.insert("_software_instance_list".to_string(), Value::List(vec![]));
        state.insert("_software_release".to_string(), Value::str(&self.url));
        if let Some(s) = self.requested_state {
            state.insert("_requested_state".to_string(), Value::str(s.as_str()));
        }
        state.extend(self.extra.clone());
        object("SoftwareRelease", vec![Value::str(&self.url), Value::str(&self.computer_id)], state)
    }
}

// ---------------------------------------------------------------------------

/// A computer partition (`ComputerPartition(computer_id, partition_id, None)`),
/// as listed in computer information or answered by `registerComputerPartition`.
#[derive(Debug, Clone, PartialEq)]
pub struct ComputerPartition {
    /// The computer's reference.
    pub computer_id: String,
    /// The partition's reference (`slappart0`).
    pub partition_id: String,
    /// `<computer>-<partition>` on the proxy.
    pub instance_guid: Option<String>,
    /// The state the master asks for.
    pub requested_state: Option<InstanceState>,
    /// Whether the master changed the partition since the node last processed it.
    pub need_modification: Option<bool>,
    /// `_software_release_document`; None for a free partition.
    pub software_release: Option<SoftwareRelease>,
    /// Instance parameters (`_parameter_dict`).
    pub parameters: Option<ParameterDict>,
    /// Published connection parameters (`_connection_dict`).
    pub connection: Option<ConnectionDict>,
    /// Attributes without a typed field (`_request_dict`, `_access_status`,
    /// `_filter_dict`, a `_requested_state` that is not a known state, …).
    pub extra: BTreeMap<String, Value>,
}

impl ComputerPartition {
    /// A free partition, as the proxy presents it.
    pub fn free(computer_id: impl Into<String>, partition_id: impl Into<String>) -> ComputerPartition {
        let computer_id = computer_id.into();
        let partition_id = partition_id.into();
        ComputerPartition {
            instance_guid: Some(format!("{computer_id}-{partition_id}")),
            computer_id,
            partition_id,
            requested_state: Some(InstanceState::Destroyed),
            need_modification: Some(false),
            software_release: None,
            parameters: None,
            connection: None,
            extra: BTreeMap::new(),
        }
    }

    /// Reads a marshalled `ComputerPartition` object.
    pub fn from_value(value: &Value) -> Result<ComputerPartition, ModelError> {
        let o = slap_object(value, "ComputerPartition")?;
        let mut extra = o.state.clone();
        let computer_id = match take_str(&mut extra, "_computer_id") {
            Some(c) => c,
            None => arg_str(o, 0, "ComputerPartition", "computer_id")?,
        };
        let partition_id = match take_str(&mut extra, "_partition_id") {
            Some(p) => p,
            None => arg_str(o, 1, "ComputerPartition", "partition_id")?,
        };
        let instance_guid = take_str(&mut extra, "_instance_guid");
        let requested_state = take_state(&mut extra);
        let need_modification = match extra.get("_need_modification") {
            Some(Value::Int(i)) => {
                let b = *i != 0;
                extra.remove("_need_modification");
                Some(b)
            }
            Some(Value::Bool(b)) => {
                let b = *b;
                extra.remove("_need_modification");
                Some(b)
            }
            _ => None,
        };
        let software_release = match extra.get("_software_release_document") {
            Some(v @ Value::Object(_)) => {
                let sr = SoftwareRelease::from_value(v)?;
                extra.remove("_software_release_document");
                Some(sr)
            }
            _ => None,
        };
        // written back by to_value() whenever they are None
        for key in ["_request_dict", "_software_release_document"] {
            if matches!(extra.get(key), Some(Value::None)) {
                extra.remove(key);
            }
        }
        let parameters = take_dict(&mut extra, "_parameter_dict");
        let connection = take_dict(&mut extra, "_connection_dict");
        Ok(ComputerPartition {
            computer_id,
            partition_id,
            instance_guid,
            requested_state,
            need_modification,
            software_release,
            parameters,
            connection,
            extra,
        })
    }

    /// The object the Python proxy sends for this partition.
    pub fn to_value(&self) -> Value {
        self.clone().into_value()
    }

    /// Same as [`ComputerPartition::to_value`], without copying.
    pub fn into_value(self) -> Value {
        let mut state = BTreeMap::new();
        state.insert("_computer_id".to_string(), Value::str(&self.computer_id));
        state.insert("_partition_id".to_string(), Value::str(&self.partition_id));
        state.insert("_request_dict".to_string(), Value::None);
        if let Some(g) = self.instance_guid {
            state.insert("_instance_guid".to_string(), Value::Str(g));
        }
        if let Some(s) = self.requested_state {
            state.insert("_requested_state".to_string(), Value::str(s.as_str()));
        }
        if let Some(n) = self.need_modification {
            state.insert("_need_modification".to_string(), Value::Int(n as i128));
        }
        state.insert(
            "_software_release_document".to_string(),
            self.software_release.as_ref().map(SoftwareRelease::to_value).unwrap_or(Value::None),
        );
        if let Some(p) = self.parameters {
            state.insert("_parameter_dict".to_string(), Value::Dict(p));
        }
        if let Some(c) = self.connection {
            state.insert("_connection_dict".to_string(), Value::Dict(c));
        }
        state.extend(self.extra);
        object("ComputerPartition", vec![Value::Str(self.computer_id), Value::Str(self.partition_id), Value::None], state)
    }

    fn parameter_str(&self, key: &str) -> Option<&str> {
        self.parameters.as_ref()?.get(key)?.as_str()
    }

    /// The software release URL (from the software release document, or a
    /// plain text document as in forwarded answers).
    pub fn software_release_url(&self) -> Option<&str> {
        match &self.software_release {
            Some(sr) => Some(&sr.url),
            None => self.extra.get("_software_release_document").and_then(Value::as_str),
        }
    }
    /// The text of `_requested_state` when it is not a known state.
    pub fn unknown_requested_state(&self) -> Option<&str> {
        self.extra.get("_requested_state").and_then(Value::as_str)
    }
    /// `timestamp` of the parameters: the reprocessing trigger of the node.
    pub fn timestamp(&self) -> Option<&str> {
        self.parameter_str("timestamp")
    }
    /// `slap_software_type` of the parameters.
    pub fn software_type(&self) -> Option<&str> {
        self.parameter_str("slap_software_type")
    }
    /// `instance_title` of the parameters.
    pub fn instance_title(&self) -> Option<&str> {
        self.parameter_str("instance_title")
    }
    /// `root_instance_title` of the parameters.
    pub fn root_instance_title(&self) -> Option<&str> {
        self.parameter_str("root_instance_title")
    }
    /// `(interface, address)` pairs of the parameters' `ip_list`.
    pub fn ip_list(&self) -> Vec<(String, String)> {
        ip_list_of(self.parameters.as_ref().and_then(|p| p.get("ip_list")))
    }
    /// Shared instances hosted by this partition.
    pub fn slave_instance_list(&self) -> Vec<BTreeMap<String, Value>> {
        self.parameters
            .as_ref()
            .and_then(|p| p.get("slave_instance_list"))
            .and_then(Value::as_seq)
            .map(|items| items.iter().filter_map(|i| i.as_dict().cloned()).collect())
            .unwrap_or_default()
    }
    /// The instance's own parameters, without the keys the master adds.
    pub fn instance_parameters(&self) -> ParameterDict {
        let mut p = self.parameters.clone().unwrap_or_default();
        p.retain(|k, _| !SLAP_PARAMETER_KEYS.contains(&k.as_str()));
        p
    }
    /// A free partition: destroyed and without software release.
    pub fn is_free(&self) -> bool {
        self.software_release_url().is_none()
            && matches!(self.requested_state, Some(InstanceState::Destroyed) | None)
            && self.unknown_requested_state().is_none()
    }
    /// The SLA of the instance (`_filter_dict`, never sent by the proxy).
    pub fn filter(&self) -> BTreeMap<String, Value> {
        self.extra.get("_filter_dict").and_then(Value::as_dict).cloned().unwrap_or_default()
    }
    /// `_access_status` (never sent by the proxy).
    pub fn access_status(&self) -> Option<&str> {
        self.extra.get("_access_status").and_then(Value::as_str)
    }
}

// ---------------------------------------------------------------------------

/// A computer and what its node must do (`getFullComputerInformation`).
#[derive(Debug, Clone, PartialEq)]
pub struct Computer {
    /// The computer's reference.
    pub computer_id: String,
    /// Software releases supplied to it.
    pub software_releases: Vec<SoftwareRelease>,
    /// Its partitions.
    pub partitions: Vec<ComputerPartition>,
    /// Attributes without a typed field, kept for the round trip.
    pub extra: BTreeMap<String, Value>,
}

impl Computer {
    /// A computer with nothing to do.
    pub fn new(computer_id: impl Into<String>) -> Computer {
        Computer { computer_id: computer_id.into(), software_releases: vec![], partitions: vec![], extra: BTreeMap::new() }
    }

    /// Reads a marshalled `Computer` object.
    pub fn from_value(value: &Value) -> Result<Computer, ModelError> {
        let o = slap_object(value, "Computer")?;
        let mut extra = o.state.clone();
        let computer_id = match take_str(&mut extra, "_computer_id") {
            Some(c) => c,
            None => arg_str(o, 0, "Computer", "computer_id")?,
        };
        let list = |extra: &mut BTreeMap<String, Value>, key: &str| -> Vec<Value> {
            match extra.remove(key) {
                Some(Value::List(items)) | Some(Value::Tuple(items)) => items,
                Some(other) => {
                    extra.insert(key.to_string(), other);
                    vec![]
                }
                None => vec![],
            }
        };
        let software_releases =
            list(&mut extra, "_software_release_list").iter().map(SoftwareRelease::from_value).collect::<Result<Vec<_>, _>>()?;
        let partitions =
            list(&mut extra, "_computer_partition_list").iter().map(ComputerPartition::from_value).collect::<Result<Vec<_>, _>>()?;
        Ok(Computer { computer_id, software_releases, partitions, extra })
    }

    /// The marshalled `Computer` object (as the Python master writes it).
    pub fn to_value(&self) -> Value {
        self.clone().into_value()
    }

    /// Same as [`Computer::to_value`], without copying.
    pub fn into_value(self) -> Value {
        let mut state = BTreeMap::new();
        state.insert("_computer_id".to_string(), Value::str(&self.computer_id));
        state.insert(
            "_computer_partition_list".to_string(),
            Value::List(self.partitions.into_iter().map(ComputerPartition::into_value).collect()),
        );
        state.insert(
            "_software_release_list".to_string(),
            Value::List(self.software_releases.iter().map(SoftwareRelease::to_value).collect()),
        );
        state.extend(self.extra);
        object("Computer", vec![Value::Str(self.computer_id)], state)
    }

    /// The partition `partition_id`, if listed.
    pub fn partition(&self, partition_id: &str) -> Option<&ComputerPartition> {
        self.partitions.iter().find(|p| p.partition_id == partition_id)
    }
}

// ---------------------------------------------------------------------------

/// The answer of `requestComputerPartition` for an allocated instance (`slap-protocol.md` §3.4).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SoftwareInstance {
    /// Published connection parameters (`_connection_dict`).
    pub connection: Option<ConnectionDict>,
    /// Instance parameters (`_parameter_dict`).
    pub parameters: Option<ParameterDict>,
    /// The instance's unique id.
    pub instance_guid: Option<String>,
    /// The state the instance was requested in.
    pub requested_state: Option<InstanceState>,
    /// Legacy `connection_xml` (instance XML text), used when `connection` is absent.
    pub connection_xml: Option<String>,
    /// `(interface, address)` pairs of the partition.
    pub ip_list: Option<Vec<(String, String)>>,
    /// The computer hosting the instance.
    pub computer_id: Option<String>,
    /// The partition hosting the instance.
    pub partition_id: Option<String>,
    /// Its software release URL.
    pub software_release_url: Option<String>,
    /// Its software type.
    pub software_type: Option<String>,
    /// Attributes without a typed field, kept for the round trip.
    pub extra: BTreeMap<String, Value>,
}

impl SoftwareInstance {
    /// Reads a marshalled `SoftwareInstance` object.
    pub fn from_value(value: &Value) -> Result<SoftwareInstance, ModelError> {
        let o = slap_object(value, "SoftwareInstance")?;
        let mut extra = o.state.clone();
        let requested_state = take_state(&mut extra);
        let ip_list = match extra.get("ip_list") {
            Some(v @ (Value::List(_) | Value::Tuple(_))) => {
                let ips = ip_list_of(Some(v));
                extra.remove("ip_list");
                Some(ips)
            }
            _ => None,
        };
        Ok(SoftwareInstance {
            connection: take_dict(&mut extra, "_connection_dict"),
            parameters: take_dict(&mut extra, "_parameter_dict"),
            instance_guid: take_str(&mut extra, "_instance_guid"),
            requested_state,
            connection_xml: take_str(&mut extra, "connection_xml"),
            ip_list,
            computer_id: take_str(&mut extra, "slap_computer_id"),
            partition_id: take_str(&mut extra, "slap_computer_partition_id"),
            software_release_url: take_str(&mut extra, "slap_software_release_url"),
            software_type: take_str(&mut extra, "slap_software_type"),
            extra,
        })
    }

    /// The object as the Python proxy writes it (`slap_server_url` is the
    /// constant text `slap_server_url` there; add it through `extra`).
    pub fn to_value(&self) -> Value {
        let mut state = BTreeMap::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                state.insert(k.to_string(), v);
            }
        };
        put("_connection_dict", self.connection.clone().map(Value::Dict));
        put("_parameter_dict", self.parameters.clone().map(Value::Dict));
        put("_instance_guid", self.instance_guid.clone().map(Value::Str));
        put("_requested_state", self.requested_state.map(|s| Value::str(s.as_str())));
        put("connection_xml", self.connection_xml.clone().map(Value::Str));
        put("ip_list", self.ip_list.as_deref().map(ip_list_value));
        put("slap_computer_id", self.computer_id.clone().map(Value::Str));
        put("slap_computer_partition_id", self.partition_id.clone().map(Value::Str));
        put("slap_software_release_url", self.software_release_url.clone().map(Value::Str));
        put("slap_software_type", self.software_type.clone().map(Value::Str));
        state.extend(self.extra.clone());
        object("SoftwareInstance", vec![], state)
    }
}

/// What a request answered, whatever the class the master used for it
/// (`SoftwareInstance` normally, `ComputerPartition` for a multimaster forward
/// or the frontend bypass): the view the Python client builds by copying the
/// attributes onto a `ComputerPartition`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestedInstance {
    /// The computer hosting the instance.
    pub computer_id: Option<String>,
    /// The partition hosting the instance.
    pub partition_id: Option<String>,
    /// The instance's unique id.
    pub instance_guid: Option<String>,
    /// The state the instance was requested in.
    pub requested_state: Option<InstanceState>,
    /// Its software release URL.
    pub software_release_url: Option<String>,
    /// Its software type.
    pub software_type: Option<String>,
    /// Instance parameters (the SLAP keys included).
    pub parameters: ParameterDict,
    connection: Option<ConnectionDict>,
    connection_xml: Option<String>,
    /// `(interface, address)` pairs of the partition.
    pub ip_list: Vec<(String, String)>,
}

impl RequestedInstance {
    /// Reads a request's answer, `SoftwareInstance` or `ComputerPartition`.
    pub fn from_value(value: &Value) -> Result<RequestedInstance, ModelError> {
        match value.as_object().map(|o| o.class.as_str()) {
            Some("ComputerPartition") => {
                let p = ComputerPartition::from_value(value)?;
                let ip_list = match p.extra.get("ip_list") {
                    Some(v) => ip_list_of(Some(v)),
                    None => p.ip_list(),
                };
                Ok(RequestedInstance {
                    computer_id: p
                        .extra
                        .get("slap_computer_id")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .or(Some(p.computer_id.clone())),
                    partition_id: p
                        .extra
                        .get("slap_computer_partition_id")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .or(Some(p.partition_id.clone())),
                    instance_guid: p.instance_guid.clone(),
                    requested_state: p.requested_state,
                    software_release_url: p.software_release_url().map(str::to_string),
                    software_type: p.extra.get("slap_software_type").and_then(Value::as_str).map(str::to_string),
                    connection_xml: p.extra.get("connection_xml").and_then(Value::as_str).map(str::to_string),
                    parameters: p.parameters.clone().unwrap_or_default(),
                    connection: p.connection.clone(),
                    ip_list,
                })
            }
            _ => {
                let i = SoftwareInstance::from_value(value)?;
                Ok(RequestedInstance {
                    computer_id: i.computer_id,
                    partition_id: i.partition_id,
                    instance_guid: i.instance_guid,
                    requested_state: i.requested_state,
                    software_release_url: i.software_release_url,
                    software_type: i.software_type,
                    parameters: i.parameters.unwrap_or_default(),
                    connection: i.connection,
                    connection_xml: i.connection_xml,
                    ip_list: i.ip_list.unwrap_or_default(),
                })
            }
        }
    }

    /// Connection parameters as text (None for an empty published value),
    /// from `_connection_dict`, or parsed from the legacy `connection_xml`
    /// (like the Python client's `getConnectionParameterDict`).
    pub fn connection_parameters(&self) -> BTreeMap<String, Option<String>> {
        if let Some(c) = &self.connection {
            return c
                .iter()
                .map(|(k, v)| {
                    let text = match v {
                        Value::None => None,
                        Value::Str(s) => Some(s.clone()),
                        other => Some(instance_xml::python_str(other)),
                    };
                    (k.clone(), text)
                })
                .collect();
        }
        self.connection_xml.as_deref().and_then(|x| instance_xml::xml_to_dict(x).ok()).unwrap_or_default()
    }

    /// The instance's own parameters, without the keys the master adds.
    pub fn instance_parameters(&self) -> ParameterDict {
        let mut p = self.parameters.clone();
        p.retain(|k, _| !SLAP_PARAMETER_KEYS.contains(&k.as_str()));
        p
    }
    /// The instance's timestamp parameter.
    pub fn timestamp(&self) -> Option<&str> {
        self.parameters.get("timestamp").and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marshal::{decode, encode};

    #[test]
    fn states_parse_and_name_bad_values() {
        assert_eq!("stopped".parse::<InstanceState>().unwrap(), InstanceState::Stopped);
        assert_eq!(SoftwareState::Destroyed.to_string(), "destroyed");
        let e = "paused".parse::<InstanceState>().unwrap_err().to_string();
        assert!(e.contains("'paused'"), "{e}");
    }

    #[test]
    fn free_partition_is_written_like_the_proxy() {
        // [cap 017]
        let expected = "<marshal><object id=\"i2\" module=\"slapos.slap.slap\" class=\"ComputerPartition\"><tuple><string>COMP-1234</string><string>slappart2</string><none/></tuple><dictionary id=\"i3\"><string>_computer_id</string><string>COMP-1234</string><string>_instance_guid</string><string>COMP-1234-slappart2</string><string>_need_modification</string><int>0</int><string>_partition_id</string><string>slappart2</string><string>_request_dict</string><none/><string>_requested_state</string><string>destroyed</string><string>_software_release_document</string><none/></dictionary></object></marshal>";
        let p = ComputerPartition::free("COMP-1234", "slappart2");
        assert_eq!(encode(&p.to_value()).unwrap(), expected);
        let back = ComputerPartition::from_value(&decode(expected).unwrap()).unwrap();
        assert_eq!(back, p);
        assert!(back.is_free());
    }

    #[test]
    fn refuses_other_classes() {
        let v =
            decode("<marshal><object id=\"i2\" module=\"os\" class=\"system\"><tuple/><dictionary id=\"i3\"/></object></marshal>").unwrap();
        assert!(matches!(Computer::from_value(&v), Err(ModelError::UnknownClass { .. })));
        let v = decode("<marshal><string>x</string></marshal>").unwrap();
        assert!(matches!(SoftwareInstance::from_value(&v), Err(ModelError::WrongType { .. })));
    }

    #[test]
    fn unknown_requested_state_is_kept_not_fatal() {
        let mut p = ComputerPartition::free("C", "p");
        p.requested_state = None;
        p.extra.insert("_requested_state".into(), Value::str("paused"));
        let back = ComputerPartition::from_value(&p.to_value()).unwrap();
        assert_eq!(back.requested_state, None);
        assert_eq!(back.unknown_requested_state(), Some("paused"));
        assert!(!back.is_free());
    }
}
