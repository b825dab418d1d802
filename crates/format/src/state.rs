//! The computer as format leaves it: the state file (`computer_xml`, an
//! xml_marshaller dictionary pretty-printed like lxml; `computer_json`), the
//! per-partition `.slapos-resource`, and the report to the master — all the
//! same dictionary (`node.md` §2.7, capture 003).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use slap::marshal::{self, Value};

/// A partition's tap or tun as SlapOS stores it: a name and eight strings,
/// empty when unused (`ipv4_network` of a tun is `addr/dotted-mask`, sic).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkState {
    pub name: String,
    pub ipv4_addr: String,
    pub ipv4_netmask: String,
    pub ipv4_gateway: String,
    pub ipv4_network: String,
    pub ipv6_addr: String,
    pub ipv6_netmask: String,
    pub ipv6_gateway: String,
    pub ipv6_network: String,
}

impl LinkState {
    /// A link with only its name.
    pub fn named(name: impl Into<String>) -> LinkState {
        LinkState { name: name.into(), ..Default::default() }
    }

    fn fields(&self) -> [(&'static str, &String); 9] {
        [
            ("ipv4_addr", &self.ipv4_addr),
            ("ipv4_gateway", &self.ipv4_gateway),
            ("ipv4_netmask", &self.ipv4_netmask),
            ("ipv4_network", &self.ipv4_network),
            ("ipv6_addr", &self.ipv6_addr),
            ("ipv6_gateway", &self.ipv6_gateway),
            ("ipv6_netmask", &self.ipv6_netmask),
            ("ipv6_network", &self.ipv6_network),
            ("name", &self.name),
        ]
    }

    pub fn to_value(&self) -> Value {
        dict(self.fields().into_iter().map(|(k, v)| (k, s(v))).collect())
    }

    /// Reads a tap/tun dictionary; missing fields are empty (as in SlapOS).
    pub fn from_dict(d: &BTreeMap<String, Value>) -> LinkState {
        let t = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        LinkState {
            name: t("name"),
            ipv4_addr: t("ipv4_addr"),
            ipv4_netmask: t("ipv4_netmask"),
            ipv4_gateway: t("ipv4_gateway"),
            ipv4_network: t("ipv4_network"),
            ipv6_addr: t("ipv6_addr"),
            ipv6_netmask: t("ipv6_netmask"),
            ipv6_gateway: t("ipv6_gateway"),
            ipv6_network: t("ipv6_network"),
        }
    }
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub reference: String,
    pub path: PathBuf,
    pub user: String,
    pub tap: LinkState,
    /// `None` when the node has no tuns (SlapOS writes `None`).
    pub tun: Option<LinkState>,
    /// `(address, netmask)`: one IPv4 and one IPv6 (when known).
    pub addresses: Vec<(String, String)>,
    /// `(network address, prefix length)` of the routed IPv6 range.
    pub ipv6_range: Option<(String, u8)>,
    /// Capabilities from a definition file (`capability_list`), if any.
    pub capability_list: Option<Vec<String>>,
}

/// The computer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputerState {
    pub reference: String,
    pub address: Option<String>,
    pub netmask: Option<String>,
    pub instance_root: PathBuf,
    pub software_root: PathBuf,
    pub software_user: String,
    pub interface_name: Option<String>,
    pub ipv6_interface: Option<String>,
    pub ipv4_local_network: Option<String>,
    pub ipv6_prefixshift: u8,
    pub partition_has_ipv6_range: bool,
    pub tap_gateway_interface: String,
    pub tap_ipv6: bool,
    pub partitions: Vec<PartitionState>,
}

/// A state file that cannot be read back.
#[derive(Debug, thiserror::Error)]
#[error("state file {path}: {message}")]
pub struct StateError {
    pub path: PathBuf,
    pub message: String,
}

fn s(v: impl Into<String>) -> Value {
    Value::Str(v.into())
}

fn opt(v: &Option<String>) -> Value {
    v.as_deref().map(s).unwrap_or(Value::None)
}

fn dict(pairs: Vec<(&str, Value)>) -> Value {
    Value::Dict(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// The netmask text of an IPv6 prefix length.
fn v6_mask(prefix: u8) -> String {
    crate::addressing::ipv6_netmask(prefix).to_string()
}

impl PartitionState {
    /// The partition's dictionary (also its `.slapos-resource`).
    pub fn to_value(&self, software_user: &str) -> Value {
        let range = match &self.ipv6_range {
            Some((addr, len)) => dict(vec![
                ("addr", s(addr)),
                ("netmask", s(v6_mask(*len))),
                ("network", s(format!("{addr}/{len}"))),
                ("prefixlen", Value::Int(*len as i128)),
            ]),
            None => Value::Dict(BTreeMap::new()),
        };
        let mut fields = vec![
            (
                "address_list",
                Value::List(self.addresses.iter().map(|(a, m)| dict(vec![("addr", s(a)), ("netmask", s(m))])).collect()),
            ),
            ("external_storage_list", Value::List(vec![])),
            ("ipv6_range", range),
            ("path", s(self.path.display().to_string())),
            ("reference", s(&self.reference)),
            ("tap", self.tap.to_value()),
            ("tun", self.tun.as_ref().map(LinkState::to_value).unwrap_or(Value::None)),
            (
                "user",
                dict(vec![
                    ("additional_group_list", Value::List(vec![s(software_user)])),
                    ("name", s(&self.user)),
                    ("path", s(self.path.display().to_string())),
                    ("shell", s("/bin/sh")),
                ]),
            ),
        ];
        if let Some(caps) = &self.capability_list {
            fields.push(("capability_list", Value::List(caps.iter().map(s).collect())));
        }
        dict(fields)
    }
}

impl ComputerState {
    /// The whole dictionary: state file content and report to the master.
    pub fn to_value(&self) -> Value {
        dict(vec![
            ("address", opt(&self.address)),
            ("instance_root", s(self.instance_root.display().to_string())),
            ("instance_storage_home", Value::None),
            (
                "interface",
                dict(vec![
                    ("ipv4_local_network", opt(&self.ipv4_local_network)),
                    ("ipv6_interface", opt(&self.ipv6_interface.clone().or_else(|| self.interface_name.clone()))),
                    ("ipv6_prefixshift", Value::Int(self.ipv6_prefixshift as i128)),
                    ("name", opt(&self.interface_name)),
                ]),
            ),
            ("ipv6_interface", opt(&self.ipv6_interface)),
            ("netmask", opt(&self.netmask)),
            ("os_type", s(os_type())),
            ("partition_has_ipv6_range", Value::Bool(self.partition_has_ipv6_range)),
            ("partition_list", Value::List(self.partitions.iter().map(|p| p.to_value(&self.software_user)).collect())),
            ("public_ipv4_address", Value::None),
            ("python_version", Value::None),
            ("reference", s(&self.reference)),
            ("slapos_version", s(format!("slapos-rs {}", env!("CARGO_PKG_VERSION")))),
            ("software_root", s(self.software_root.display().to_string())),
            ("software_user", s(&self.software_user)),
            ("tap_gateway_interface", s(&self.tap_gateway_interface)),
            ("tap_ipv6", Value::Bool(self.tap_ipv6)),
        ])
    }

    /// Reads a state dictionary (ours or the Python tool's).
    pub fn from_value(v: &Value, path: &Path) -> Result<ComputerState, StateError> {
        let bad = |m: &str| StateError { path: path.to_path_buf(), message: m.to_string() };
        let d = v.as_dict().ok_or_else(|| bad("not a dictionary"))?;
        let text = |d: &BTreeMap<String, Value>, k: &str| d.get(k).and_then(Value::as_str).map(str::to_string);
        let iface = d.get("interface").and_then(Value::as_dict).cloned().unwrap_or_default();
        let mut partitions = Vec::new();
        for p in d.get("partition_list").and_then(Value::as_seq).ok_or_else(|| bad("no partition_list"))? {
            let pd = p.as_dict().ok_or_else(|| bad("a partition is not a dictionary"))?;
            let reference = text(pd, "reference").ok_or_else(|| bad("a partition has no reference"))?;
            let user = pd.get("user").and_then(Value::as_dict).and_then(|u| text(u, "name")).unwrap_or_default();
            // SlapOS: a partition without a tap gets one named after it
            let tap = pd.get("tap").and_then(Value::as_dict).map(LinkState::from_dict).unwrap_or_else(|| LinkState::named(&reference));
            let tun = pd.get("tun").and_then(Value::as_dict).map(LinkState::from_dict);
            let capability_list = pd
                .get("capability_list")
                .and_then(Value::as_seq)
                .map(|l| l.iter().filter_map(Value::as_str).map(str::to_string).collect());
            let addresses = pd
                .get("address_list")
                .and_then(Value::as_seq)
                .unwrap_or(&[])
                .iter()
                .filter_map(|a| a.as_dict())
                .filter_map(|a| Some((text(a, "addr")?, text(a, "netmask")?)))
                .collect();
            let ipv6_range = pd.get("ipv6_range").and_then(Value::as_dict).and_then(|r| {
                Some((text(r, "addr")?, r.get("prefixlen").and_then(Value::as_int).map(|i| i as u8)?))
            });
            partitions.push(PartitionState {
                path: text(pd, "path").map(PathBuf::from).unwrap_or_default(),
                reference,
                user,
                tap,
                tun,
                addresses,
                ipv6_range,
                capability_list,
            });
        }
        Ok(ComputerState {
            reference: text(d, "reference").ok_or_else(|| bad("no reference"))?,
            address: text(d, "address"),
            netmask: text(d, "netmask"),
            instance_root: text(d, "instance_root").map(PathBuf::from).unwrap_or_default(),
            software_root: text(d, "software_root").map(PathBuf::from).unwrap_or_default(),
            software_user: text(d, "software_user").unwrap_or_else(|| "slapsoft".into()),
            interface_name: text(&iface, "name"),
            ipv6_interface: text(d, "ipv6_interface"),
            ipv4_local_network: text(&iface, "ipv4_local_network"),
            ipv6_prefixshift: iface.get("ipv6_prefixshift").and_then(Value::as_int).map(|i| i as u8).unwrap_or(16),
            partition_has_ipv6_range: d.get("partition_has_ipv6_range").and_then(Value::as_bool).unwrap_or(true),
            tap_gateway_interface: text(d, "tap_gateway_interface").unwrap_or_default(),
            tap_ipv6: d.get("tap_ipv6").and_then(Value::as_bool).unwrap_or(true),
            partitions,
        })
    }

    /// Reads `computer_xml` if it exists.
    pub fn load(path: &Path) -> Result<Option<ComputerState>, StateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateError { path: path.to_path_buf(), message: e.to_string() }),
        };
        let v = marshal::decode(&text).map_err(|e| StateError { path: path.to_path_buf(), message: e.to_string() })?;
        Self::from_value(&v, path).map(Some)
    }
}

fn os_type() -> String {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |k: &str| {
        release
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    serde_json::json!(["Linux", field("ID"), field("VERSION_ID"), field("PRETTY_NAME")]).to_string()
}

/// Pretty-prints a compact marshal document like lxml (`pretty_print=True`):
/// one element per line, 2-space indentation, scalars on one line.
pub fn pretty_marshal(compact: &str) -> String {
    let mut out = String::with_capacity(compact.len() * 2);
    let mut depth = 0usize;
    let mut rest = compact;
    while let Some(start) = rest.find('<') {
        let end = match rest[start..].find('>') {
            Some(e) => start + e + 1,
            None => break,
        };
        let tag = &rest[start..end];
        rest = &rest[end..];
        if tag.starts_with("</") {
            depth = depth.saturating_sub(1);
            out.push_str(&"  ".repeat(depth));
            out.push_str(tag);
            out.push('\n');
        } else if tag.ends_with("/>") {
            out.push_str(&"  ".repeat(depth));
            out.push_str(tag);
            out.push('\n');
        } else {
            // a scalar: text (possibly empty) then its end tag, on one line
            let text_end = rest.find('<').unwrap_or(rest.len());
            if rest[text_end..].starts_with("</") {
                let close_end = text_end + rest[text_end..].find('>').map(|e| e + 1).unwrap_or(0);
                out.push_str(&"  ".repeat(depth));
                out.push_str(tag);
                out.push_str(&rest[..close_end]);
                out.push('\n');
                rest = &rest[close_end..];
            } else {
                out.push_str(&"  ".repeat(depth));
                out.push_str(tag);
                out.push('\n');
                depth += 1;
            }
        }
    }
    out
}

/// Writes `content` to `path` atomically (temporary file + rename), mode 0644.
pub fn write_atomic(path: &Path, content: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, content)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path)
}

/// Saves `computer_xml` with its history, as SlapOS does (`node.md` §2.7):
/// when the new document differs from the file, the old file is first
/// appended to `<computer_xml>.zip` as `<basename>.YYYYMMDD-HH:MM`
/// (deflated; a later copy in the same minute gets `.1`, `.2`… since a zip
/// entry name is unique). A zip that cannot be read is moved to
/// `<zip>_broken_YYYYMMDD-HH:MM` and a new one is started; if even that
/// fails, the history is skipped with a warning and the state is still
/// written. Unlike SlapOS, an unchanged file is never archived (SlapOS
/// archives it once, on the first re-run, because there is no zip yet).
/// Returns whether the file was written.
pub fn save_xml(path: &Path, xml: &str) -> std::io::Result<bool> {
    let old = match std::fs::read_to_string(path) {
        Ok(old) if old == xml => return Ok(false),
        Ok(old) => Some(old),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if let Some(old) = old {
        let now = chrono::Local::now();
        let archive = PathBuf::from(format!("{}.zip", path.display()));
        let name = format!("{}{}", path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(), now.format(".%Y%m%d-%H:%M"));
        if let Err(e) = archive_append(&archive, &name, &old, &now) {
            let broken = PathBuf::from(format!("{}{}", archive.display(), now.format("_broken_%Y%m%d-%H:%M")));
            tracing::warn!("cannot add to {} ({e}): moving it to {} and starting a new one", archive.display(), broken.display());
            let retry = std::fs::rename(&archive, &broken).map_err(|e| e.to_string()).and_then(|_| archive_append(&archive, &name, &old, &now));
            if let Err(e) = retry {
                tracing::warn!("Can't backup {}: {e}", path.display());
            }
        }
    }
    write_atomic(path, xml)?;
    Ok(true)
}

/// Appends `content` as `name` (made unique) to the zip `archive`, created if missing.
fn archive_append(archive: &Path, name: &str, content: &str, now: &chrono::DateTime<chrono::Local>) -> Result<(), String> {
    use chrono::{Datelike, Timelike};
    use std::io::Write;
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(archive).map_err(|e| e.to_string())?;
    let empty = file.metadata().map_err(|e| e.to_string())?.len() == 0;
    let mut names = std::collections::BTreeSet::new();
    let mut zip = if empty {
        zip::ZipWriter::new(file)
    } else {
        let reader = zip::ZipArchive::new(&file).map_err(|e| e.to_string())?;
        names.extend(reader.file_names().map(str::to_string));
        zip::ZipWriter::new_append(file).map_err(|e| e.to_string())?
    };
    let mut unique = name.to_string();
    let mut n = 0;
    while names.contains(&unique) {
        n += 1;
        unique = format!("{name}.{n}");
    }
    let time = zip::DateTime::from_date_and_time(
        now.year().clamp(1980, 2107) as u16,
        now.month() as u8,
        now.day() as u8,
        now.hour() as u8,
        now.minute() as u8,
        now.second().min(59) as u8,
    )
    .unwrap_or_default();
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated).last_modified_time(time);
    zip.start_file(unique, options).map_err(|e| e.to_string())?;
    zip.write_all(content.as_bytes()).map_err(|e| e.to_string())?;
    zip.finish().map_err(|e| e.to_string())?;
    Ok(())
}

/// Python's `json.dumps(value, sort_keys=True, indent=indent)` for our values.
pub fn to_json(v: &Value, indent: usize) -> String {
    fn j(v: &Value) -> serde_json::Value {
        match v {
            Value::None => serde_json::Value::Null,
            Value::Bool(b) => serde_json::json!(b),
            Value::Int(i) => serde_json::json!(*i as i64),
            Value::Float(f) => serde_json::json!(f),
            Value::Str(s) => serde_json::json!(s),
            Value::List(a) | Value::Tuple(a) | Value::Set(a) => serde_json::Value::Array(a.iter().map(j).collect()),
            Value::Dict(d) => serde_json::Value::Object(d.iter().map(|(k, v)| (k.clone(), j(v))).collect()),
            Value::Object(_) => serde_json::Value::Null,
        }
    }
    let mut buf = Vec::new();
    let indent_bytes = " ".repeat(indent);
    let fmt = serde_json::ser::PrettyFormatter::with_indent(indent_bytes.as_bytes());
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    serde::Serialize::serialize(&j(v), &mut ser).expect("serialisable");
    String::from_utf8(buf).expect("utf-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ComputerState {
        ComputerState {
            reference: "COMP-1".into(),
            address: Some("fd00:e2e::1".into()),
            netmask: Some("ffff:ffff:ffff:ffff::".into()),
            instance_root: "/srv/slapgrid".into(),
            software_root: "/opt/slapgrid".into(),
            software_user: "slapsoft".into(),
            interface_name: Some("br0".into()),
            ipv6_interface: None,
            ipv4_local_network: Some("10.0.0.0/16".into()),
            ipv6_prefixshift: 16,
            partition_has_ipv6_range: true,
            tap_gateway_interface: String::new(),
            tap_ipv6: true,
            partitions: vec![PartitionState {
                reference: "slappart0".into(),
                path: "/srv/slapgrid/slappart0".into(),
                user: "slapuser0".into(),
                tap: LinkState {
                    name: "slaptap0".into(),
                    ipv6_addr: "fd00:e2e::8001:ffff:ffff:ffff".into(),
                    ipv6_netmask: "ffff:ffff:ffff:ffff:ffff::".into(),
                    ipv6_gateway: "fd00:e2e::8001:0:0:1".into(),
                    ipv6_network: "fd00:e2e::8001:0:0:1/80".into(),
                    ..Default::default()
                },
                tun: Some(LinkState {
                    name: "slaptun0".into(),
                    ipv4_addr: "172.16.0.1".into(),
                    ipv4_netmask: "255.252.0.0".into(),
                    ipv4_network: "172.16.0.1/255.252.0.0".into(),
                    ..Default::default()
                }),
                addresses: vec![("10.0.1.2".into(), "255.255.255.255".into()), ("fd00:e2e::2".into(), "ffff:ffff:ffff:ffff::".into())],
                ipv6_range: Some(("fd00:e2e:0:0:4001::".into(), 80)),
                capability_list: None,
            }],
        }
    }

    #[test]
    fn state_round_trips_through_the_pretty_xml() {
        let st = sample();
        let xml = pretty_marshal(&marshal::encode(&st.to_value()).unwrap());
        assert!(xml.starts_with("<marshal>\n  <dictionary id=\"i2\">\n    <string>address</string>\n"), "{xml}");
        assert!(xml.contains("        <string>addr</string>\n"), "{xml}");
        let back = ComputerState::from_value(&marshal::decode(&xml).unwrap(), Path::new("x")).unwrap();
        assert_eq!(back, st);
        // the partition dictionary has the shape of the Python report [cap 003]
        let p = st.partitions[0].to_value("slapsoft");
        let keys: Vec<&String> = p.as_dict().unwrap().keys().collect();
        assert_eq!(keys, ["address_list", "external_storage_list", "ipv6_range", "path", "reference", "tap", "tun", "user"]);
        assert!(to_json(&p, 4).contains("\n    \"address_list\": ["));
    }

    #[test]
    fn the_state_file_history_is_a_zip_of_the_replaced_versions() {
        let dir = tempfile::tempdir().unwrap();
        let xml = dir.path().join("slapos.xml");
        let zip_path = dir.path().join("slapos.xml.zip");
        let entries = || {
            let mut z = zip::ZipArchive::new(std::fs::File::open(&zip_path).unwrap()).unwrap();
            let names: Vec<String> = z.file_names().map(str::to_string).collect();
            let mut sorted = names.clone();
            sorted.sort();
            let mut contents = Vec::new();
            for n in &sorted {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut z.by_name(n).unwrap(), &mut text).unwrap();
                contents.push((n.clone(), text));
            }
            contents
        };
        assert!(save_xml(&xml, "<v1/>").unwrap());
        assert!(!zip_path.exists(), "nothing to keep yet");
        assert!(!save_xml(&xml, "<v1/>").unwrap(), "unchanged: left alone");
        assert!(!zip_path.exists(), "an unchanged file is not archived");
        assert!(save_xml(&xml, "<v2/>").unwrap());
        assert!(save_xml(&xml, "<v3/>").unwrap());
        assert_eq!(std::fs::read_to_string(&xml).unwrap(), "<v3/>");
        let e = entries();
        assert_eq!(e.len(), 2);
        assert!(e[0].0.starts_with("slapos.xml.20") && e[0].0.len() == "slapos.xml.YYYYMMDD-HH:MM".len(), "{e:?}");
        let contents: Vec<&str> = e.iter().map(|(_, c)| c.as_str()).collect();
        assert!(contents.contains(&"<v1/>") && contents.contains(&"<v2/>"), "{e:?}");
        // a corrupt zip is moved aside and a new one started
        std::fs::write(&zip_path, "not a zip").unwrap();
        assert!(save_xml(&xml, "<v4/>").unwrap());
        assert_eq!(entries().iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(), ["<v3/>"]);
        let broken: Vec<_> = std::fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with("slapos.xml.zip_broken_")).collect();
        assert_eq!(broken.len(), 1);
    }
}
