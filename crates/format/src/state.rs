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
    /// The device's name (`slaptap0`, `slaptun0`).
    pub name: String,
    /// Its IPv4 address.
    pub ipv4_addr: String,
    /// The IPv4 netmask, dotted.
    pub ipv4_netmask: String,
    /// The IPv4 gateway.
    pub ipv4_gateway: String,
    /// The IPv4 network.
    pub ipv4_network: String,
    /// Its IPv6 address.
    pub ipv6_addr: String,
    /// The IPv6 netmask.
    pub ipv6_netmask: String,
    /// The IPv6 gateway.
    pub ipv6_gateway: String,
    /// The IPv6 network.
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

    /// As the dictionary SlapOS stores (keys sorted, as Python's marshal writes them).
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
    /// The partition's reference (`slappart0`).
    pub reference: String,
    /// Its directory under the instance root.
    pub path: PathBuf,
    /// The user owning it.
    pub user: String,
    /// Its tap (only a name when the node has no taps).
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
    /// The computer's reference (`computer_id`).
    pub reference: String,
    /// The node's IPv6 address (on `interface_name`/`ipv6_interface`).
    pub address: Option<String>,
    /// Its netmask.
    pub netmask: Option<String>,
    /// Parent directory of the partitions.
    pub instance_root: PathBuf,
    /// Where software releases are built.
    pub software_root: PathBuf,
    /// Owner of the software releases.
    pub software_user: String,
    /// `interface_name` when the state was written.
    pub interface_name: Option<String>,
    /// `ipv6_interface` when the state was written.
    pub ipv6_interface: Option<String>,
    /// `ipv4_local_network` when the state was written.
    pub ipv4_local_network: Option<String>,
    /// `ipv6_prefixshift` when the state was written.
    pub ipv6_prefixshift: u8,
    /// Whether partitions have IPv6 ranges.
    pub partition_has_ipv6_range: bool,
    /// `tap_gateway_interface` (empty: none).
    pub tap_gateway_interface: String,
    /// Whether taps have IPv6.
    pub tap_ipv6: bool,
    /// The partitions, in index order.
    pub partitions: Vec<PartitionState>,
}

/// A state file that cannot be read back.
#[derive(Debug, thiserror::Error)]
#[error("state file {path}: {message}")]
pub struct StateError {
    /// The state file.
    pub path: PathBuf,
    /// What is wrong with it.
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
            ("address_list", Value::List(self.addresses.iter().map(|(a, m)| dict(vec![("addr", s(a)), ("netmask", s(m))])).collect())),
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
            let capability_list =
                pd.get("capability_list").and_then(Value::as_seq).map(|l| l.iter().filter_map(Value::as_str).map(str::to_string).collect());
            let addresses = pd
                .get("address_list")
                .and_then(Value::as_seq)
                .unwrap_or(&[])
                .iter()
                .filter_map(|a| a.as_dict())
                .filter_map(|a| Some((text(a, "addr")?, text(a, "netmask")?)))
                .collect();
            let ipv6_range = pd
                .get("ipv6_range")
                .and_then(Value::as_dict)
                .and_then(|r| Some((text(r, "addr")?, r.get("prefixlen").and_then(Value::as_int).map(|i| i as u8)?)));
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

/// SlapOS's `json.dumps((platform.platform(), distro.id(), distro.version(),
/// distro.name()))`, e.g. `["Linux-6.1.0-x86_64-with-glibc2.36", "debian",
/// "12", "Debian GNU/Linux"]`.
fn os_type() -> String {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |k: &str| {
        release.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).map(|v| v.trim_matches('"').to_string()).unwrap_or_default()
    };
    let value = serde_json::json!([python_platform(), field("ID"), field("VERSION_ID"), field("NAME")]);
    slap::pyjson::dumps(&value, &slap::pyjson::Options::DEFAULT)
}

/// Python's `platform.platform()` on Linux: `system-release-machine`, then
/// `-with-glibcX.Y` when linked with the GNU C library.
fn python_platform() -> String {
    let Ok(u) = nix::sys::utsname::uname() else { return "Linux".into() };
    let mut text = [u.sysname(), u.release(), u.machine()].map(|p| p.to_string_lossy().into_owned()).join("-");
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: glibc returns a static NUL-terminated version string
        let version = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
        text.push_str(&format!("-with-glibc{}", version.to_string_lossy()));
    }
    // platform._platform: unsafe characters become '-', runs of '-' one
    let text: String = text.chars().map(|c| if " /\\:;\"()".contains(c) { '-' } else { c }).collect();
    text.split('-').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-")
}

/// Pretty-prints a compact marshal document as SlapOS does (lxml's
/// `tostring(fromstring(xml), pretty_print=True)`): one element per line,
/// 2-space indentation, a leaf with its text on one line, an empty leaf as
/// `<tag/>` (lxml reads `<string></string>` as no text), no XML declaration.
/// Text and attributes are copied as they are escaped in `compact`.
pub fn pretty_marshal(compact: &str) -> Result<String, quick_xml::Error> {
    use quick_xml::events::{BytesStart, BytesText, Event};
    let mut reader = quick_xml::Reader::from_str(compact);
    let mut writer = quick_xml::Writer::new(Vec::with_capacity(compact.len() * 2));
    let mut depth = 0usize;
    // an element just opened: a leaf if its end comes before any child
    let mut open: Option<(BytesStart, Option<BytesText>)> = None;
    let line = |writer: &mut quick_xml::Writer<Vec<u8>>, depth: usize, events: Vec<Event>| -> Result<(), quick_xml::Error> {
        writer.get_mut().extend(std::iter::repeat_n(b' ', 2 * depth));
        for e in events {
            writer.write_event(e)?;
        }
        writer.get_mut().push(b'\n');
        Ok(())
    };
    loop {
        let event = reader.read_event()?;
        // a child (or the end of the document) makes the open element a container
        if matches!(event, Event::Start(_) | Event::Empty(_) | Event::Eof) {
            if let Some((start, text)) = open.take() {
                line(&mut writer, depth, std::iter::once(Event::Start(start)).chain(text.map(Event::Text)).collect())?;
                depth += 1;
            }
        }
        match event {
            Event::Start(e) => open = Some((e, None)),
            Event::Text(t) if t.is_empty() => {}
            Event::Text(t) => match &mut open {
                Some((_, text)) => *text = Some(t),
                None if t.iter().all(u8::is_ascii_whitespace) => {} // lxml replaces the indentation
                None => line(&mut writer, depth, vec![Event::Text(t)])?,
            },
            Event::End(e) => match open.take() {
                Some((start, None)) => line(&mut writer, depth, vec![Event::Empty(start)])?,
                Some((start, Some(text))) => line(&mut writer, depth, vec![Event::Start(start), Event::Text(text), Event::End(e)])?,
                None => {
                    depth = depth.saturating_sub(1);
                    line(&mut writer, depth, vec![Event::End(e)])?;
                }
            },
            Event::Eof => break,
            Event::Decl(_) => {} // tostring(root) writes none
            other => line(&mut writer, depth, vec![other])?,
        }
    }
    Ok(String::from_utf8(writer.into_inner()).expect("the input was UTF-8"))
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
        let name =
            format!("{}{}", path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(), now.format(".%Y%m%d-%H:%M"));
        if let Err(e) = archive_append(&archive, &name, &old, &now) {
            let broken = PathBuf::from(format!("{}{}", archive.display(), now.format("_broken_%Y%m%d-%H:%M")));
            tracing::warn!("cannot add to {} ({e}): moving it to {} and starting a new one", archive.display(), broken.display());
            let retry =
                std::fs::rename(&archive, &broken).map_err(|e| e.to_string()).and_then(|_| archive_append(&archive, &name, &old, &now));
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

/// Our value as JSON (a marshalled object, which the state never holds, as
/// `null`).
pub fn to_json_value(v: &Value) -> serde_json::Value {
    match v {
        Value::None | Value::Object(_) => serde_json::Value::Null,
        Value::Bool(b) => serde_json::json!(b),
        Value::Int(i) => serde_json::json!(*i as i64),
        Value::Float(f) => serde_json::json!(f),
        Value::Str(s) => serde_json::json!(s),
        Value::List(a) | Value::Tuple(a) | Value::Set(a) => serde_json::Value::Array(a.iter().map(to_json_value).collect()),
        Value::Dict(d) => serde_json::Value::Object(d.iter().map(|(k, v)| (k.clone(), to_json_value(v))).collect()),
    }
}

/// Python's `json.dumps(value, sort_keys=True, indent=indent)` for our values
/// (`computer_json`, `.slapos-resource`).
pub fn to_json(v: &Value, indent: usize) -> String {
    slap::pyjson::dumps(&to_json_value(v), &slap::pyjson::Options::indent(indent).sort_keys())
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
        let xml = pretty_marshal(&marshal::encode(&st.to_value()).unwrap()).unwrap();
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

    // What SlapOS 1.26.1's format does with a dictionary (venv Python 3.11,
    // lxml 6.1.3): `xml_marshaller.dumps(d)`, then `prettify_xml` (lxml's
    // `tostring(fromstring(xml), pretty_print=True)`); JSON-quoted as printed.
    const PY_COMPACT: &str = r#""<marshal><dictionary id=\"i2\"><string>address</string><string>fd00::1</string><string>empty</string><string></string><string>flag</string><bool>1</bool><string>n</string><int>16</int><string>none</string><none/><string>partition_list</string><list id=\"i3\"><dictionary id=\"i4\"><string>address_list</string><list id=\"i5\"/><string>tap</string><dictionary id=\"i6\"><string>ipv4_addr</string><string></string><string>name</string><string>t0</string></dictionary><string>user</string><dictionary id=\"i7\"><string>additional_group_list</string><list id=\"i8\"><string>slapsoft</string></list></dictionary></dictionary></list><string>text</string><string>a&amp;amp;b&amp;lt;c&amp;gt;d\"e'f&#13;\tg&#233;&#8364;</string></dictionary></marshal>""#;
    const PY_PRETTY: &str = r#""<marshal>\n  <dictionary id=\"i2\">\n    <string>address</string>\n    <string>fd00::1</string>\n    <string>empty</string>\n    <string/>\n    <string>flag</string>\n    <bool>1</bool>\n    <string>n</string>\n    <int>16</int>\n    <string>none</string>\n    <none/>\n    <string>partition_list</string>\n    <list id=\"i3\">\n      <dictionary id=\"i4\">\n        <string>address_list</string>\n        <list id=\"i5\"/>\n        <string>tap</string>\n        <dictionary id=\"i6\">\n          <string>ipv4_addr</string>\n          <string/>\n          <string>name</string>\n          <string>t0</string>\n        </dictionary>\n        <string>user</string>\n        <dictionary id=\"i7\">\n          <string>additional_group_list</string>\n          <list id=\"i8\">\n            <string>slapsoft</string>\n          </list>\n        </dictionary>\n      </dictionary>\n    </list>\n    <string>text</string>\n    <string>a&amp;amp;b&amp;lt;c&amp;gt;d\"e'f&#13;\tg&#233;&#8364;</string>\n  </dictionary>\n</marshal>\n""#;

    #[test]
    fn the_state_file_is_laid_out_as_slapos_lays_it_out() {
        let compact: String = serde_json::from_str(PY_COMPACT).unwrap();
        let pretty: String = serde_json::from_str(PY_PRETTY).unwrap();
        let value = marshal::decode(&compact).unwrap();
        assert_eq!(marshal::encode(&value).unwrap(), compact, "our encoding is the input SlapOS pretty-prints");
        assert_eq!(pretty_marshal(&compact).unwrap(), pretty);
        assert_eq!(marshal::decode(&pretty).unwrap(), value);
        assert!(pretty_marshal("<marshal></list>").is_err());
    }

    /// Python 3.11's `json.dumps(d, sort_keys=True, indent=4)` (what SlapOS
    /// writes to `.slapos-resource`) of `sample()`'s partition with the user
    /// `slapuser0é`, JSON-quoted as printed.
    const PY_RESOURCE: &str = r#""{\n    \"address_list\": [\n        {\n            \"addr\": \"10.0.1.2\",\n            \"netmask\": \"255.255.255.255\"\n        },\n        {\n            \"addr\": \"fd00:e2e::2\",\n            \"netmask\": \"ffff:ffff:ffff:ffff::\"\n        }\n    ],\n    \"external_storage_list\": [],\n    \"ipv6_range\": {\n        \"addr\": \"fd00:e2e:0:0:4001::\",\n        \"netmask\": \"ffff:ffff:ffff:ffff:ffff::\",\n        \"network\": \"fd00:e2e:0:0:4001::/80\",\n        \"prefixlen\": 80\n    },\n    \"path\": \"/srv/slapgrid/slappart0\",\n    \"reference\": \"slappart0\",\n    \"tap\": {\n        \"ipv4_addr\": \"\",\n        \"ipv4_gateway\": \"\",\n        \"ipv4_netmask\": \"\",\n        \"ipv4_network\": \"\",\n        \"ipv6_addr\": \"fd00:e2e::8001:ffff:ffff:ffff\",\n        \"ipv6_gateway\": \"fd00:e2e::8001:0:0:1\",\n        \"ipv6_netmask\": \"ffff:ffff:ffff:ffff:ffff::\",\n        \"ipv6_network\": \"fd00:e2e::8001:0:0:1/80\",\n        \"name\": \"slaptap0\"\n    },\n    \"tun\": {\n        \"ipv4_addr\": \"172.16.0.1\",\n        \"ipv4_gateway\": \"\",\n        \"ipv4_netmask\": \"255.252.0.0\",\n        \"ipv4_network\": \"172.16.0.1/255.252.0.0\",\n        \"ipv6_addr\": \"\",\n        \"ipv6_gateway\": \"\",\n        \"ipv6_netmask\": \"\",\n        \"ipv6_network\": \"\",\n        \"name\": \"slaptun0\"\n    },\n    \"user\": {\n        \"additional_group_list\": [\n            \"slapsoft\"\n        ],\n        \"name\": \"slapuser0\\u00e9\",\n        \"path\": \"/srv/slapgrid/slappart0\",\n        \"shell\": \"/bin/sh\"\n    }\n}""#;

    #[test]
    fn json_files_are_written_as_python_writes_them() {
        let mut p = sample().partitions[0].clone();
        p.user = "slapuser0é".into();
        let python: String = serde_json::from_str(PY_RESOURCE).unwrap();
        assert_eq!(to_json(&p.to_value("slapsoft"), 4), python);
    }

    /// Runs the venv's Python (slapos.core 1.26.1) on `script` with `args`;
    /// its standard output.
    fn venv_python(script: &str, args: &[&Path]) -> String {
        let venv = std::env::var("SLAPOS_VENV").unwrap_or_else(|_| "/var/cache/slapos-e2e/venv-1.26.1".into());
        let python = format!("{venv}/bin/python3");
        let out = std::process::Command::new(&python)
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("this test needs the venv's {python} (set SLAPOS_VENV): {e}"));
        assert!(out.status.success(), "{python}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// SlapOS's `os_type` from the venv's Python (`platform`, `distro`).
    #[test]
    #[ignore = "needs the venv"]
    fn needs_venv_os_type_is_what_slapos_reports() {
        let script = "import json,platform,distro; print(json.dumps((platform.platform(),distro.id(),distro.version(),distro.name())))";
        assert_eq!(os_type(), venv_python(script, &[]).trim_end());
    }

    /// SlapOS's `Computer.load` reads the state file we write.
    #[test]
    #[ignore = "needs the venv"]
    fn needs_venv_the_python_format_reads_our_state_file() {
        let mut st = sample();
        st.partitions[0].user = "us&<>\"'\r\té€😀".into();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slapos.xml");
        std::fs::write(&path, pretty_marshal(&marshal::encode(&st.to_value()).unwrap()).unwrap()).unwrap();
        let script = "import json,sys,types\nfrom slapos.format import Computer\n\
            c = Computer.load(sys.argv[1], 'COMP-1', None, True, '', True, config=types.SimpleNamespace(partition_amount=1, create_tun=False, tun_ipv6=True))\n\
            p = c.partition_list[0]\n\
            print(json.dumps([c.address, c.netmask, p.reference, p.path, p.user.name, p.address_list, p.ipv6_range['network'], p.tap.ipv6_addr, p.tun.ipv4_network]))";
        let read: serde_json::Value = serde_json::from_str(&venv_python(script, &[&path])).unwrap();
        let p = &st.partitions[0];
        let addresses: Vec<serde_json::Value> = p.addresses.iter().map(|(a, m)| serde_json::json!({"addr": a, "netmask": m})).collect();
        assert_eq!(
            read,
            serde_json::json!([
                st.address,
                st.netmask,
                p.reference,
                p.path,
                p.user,
                addresses,
                "fd00:e2e:0:0:4001::/80",
                p.tap.ipv6_addr,
                p.tun.as_ref().unwrap().ipv4_network
            ])
        );
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
        let broken: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("slapos.xml.zip_broken_"))
            .collect();
        assert_eq!(broken.len(), 1);
    }
}
