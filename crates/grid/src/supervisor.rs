//! The node's supervisord (`node.md` §5.4): one per node, the real one from
//! PyPI, started with its own configuration and socket; driven through its
//! XML-RPC interface over the unix socket (the same calls slapgrid and
//! `supervisorctl update` make).
//!
//! The XML-RPC client is small on purpose: supervisord only needs strings,
//! integers, booleans, arrays and structs, and a request is one HTTP/1.0
//! exchange on a unix socket.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::templates;

/// supervisord fault codes we act on.
pub const BAD_NAME: i64 = 10;
/// The server is shutting down.
pub const SHUTDOWN_STATE: i64 = 6;
/// The group is already added (`addProcessGroup`).
pub const ALREADY_ADDED: i64 = 90;
/// The group still runs (`removeProcessGroup`).
pub const STILL_RUNNING: i64 = 91;
/// The process is not running (`stopProcess`).
pub const NOT_RUNNING: i64 = 70;
/// The process is already started (`startProcess`).
pub const ALREADY_STARTED: i64 = 60;

#[derive(Debug, thiserror::Error)]
/// Talking to the node's supervisord went wrong.
pub enum SupervisorError {
    /// The socket does not answer.
    #[error("supervisord does not answer on {socket}: {source}")]
    Unreachable {
        /// The socket.
        socket: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// supervisord answered with an XML-RPC fault.
    #[error("supervisord fault {code}: {message}")]
    Fault {
        /// The fault code (see the constants).
        code: i64,
        /// The fault string.
        message: String,
    },
    /// The answer is not the XML-RPC expected.
    #[error("unexpected answer from supervisord: {0}")]
    Protocol(String),
    /// supervisord could not be started.
    #[error("Failed to launch supervisord: {0}")]
    Launch(String),
    /// Reading or writing its files failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl SupervisorError {
    /// The XML-RPC fault code, if this is a fault.
    pub fn fault_code(&self) -> Option<i64> {
        match self {
            SupervisorError::Fault { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// An XML-RPC value.
#[derive(Debug, Clone, PartialEq)]
pub enum XValue {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A double.
    Double(f64),
    /// An array.
    Array(Vec<XValue>),
    /// A struct.
    Struct(BTreeMap<String, XValue>),
    /// Nil (supervisord's extension).
    Nil,
}

impl XValue {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            XValue::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            XValue::Int(i) => Some(*i),
            _ => None,
        }
    }
    /// The elements of an array (empty for anything else).
    pub fn as_array(&self) -> &[XValue] {
        match self {
            XValue::Array(a) => a,
            _ => &[],
        }
    }
    /// The member `key` of a struct.
    pub fn get(&self, key: &str) -> Option<&XValue> {
        match self {
            XValue::Struct(m) => m.get(key),
            _ => None,
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn encode_value(v: &XValue, out: &mut String) {
    out.push_str("<value>");
    match v {
        XValue::Str(s) => {
            out.push_str("<string>");
            out.push_str(&escape(s));
            out.push_str("</string>");
        }
        XValue::Int(i) => out.push_str(&format!("<int>{i}</int>")),
        XValue::Bool(b) => out.push_str(&format!("<boolean>{}</boolean>", u8::from(*b))),
        XValue::Double(d) => out.push_str(&format!("<double>{d}</double>")),
        XValue::Nil => out.push_str("<nil/>"),
        XValue::Array(a) => {
            out.push_str("<array><data>");
            for x in a {
                encode_value(x, out);
            }
            out.push_str("</data></array>");
        }
        XValue::Struct(m) => {
            out.push_str("<struct>");
            for (k, x) in m {
                out.push_str(&format!("<member><name>{}</name>", escape(k)));
                encode_value(x, out);
                out.push_str("</member>");
            }
            out.push_str("</struct>");
        }
    }
    out.push_str("</value>");
}

/// The body of a method call.
pub fn encode_call(method: &str, params: &[XValue]) -> String {
    let mut out = format!("<?xml version=\"1.0\"?>\n<methodCall><methodName>{}</methodName><params>", escape(method));
    for p in params {
        out.push_str("<param>");
        encode_value(p, &mut out);
        out.push_str("</param>");
    }
    out.push_str("</params></methodCall>");
    out
}

/// A tree of elements, enough for XML-RPC answers.
#[derive(Debug, Default)]
struct Element {
    name: String,
    text: String,
    children: Vec<Element>,
}

fn parse_tree(xml: &str) -> Result<Element, SupervisorError> {
    let mut reader = Reader::from_str(xml);
    let mut stack = vec![Element::default()];
    loop {
        match reader.read_event().map_err(|e| SupervisorError::Protocol(e.to_string()))? {
            Event::Start(s) => {
                stack.push(Element { name: String::from_utf8_lossy(s.local_name().as_ref()).into_owned(), ..Default::default() })
            }
            Event::Empty(s) => {
                let e = Element { name: String::from_utf8_lossy(s.local_name().as_ref()).into_owned(), ..Default::default() };
                stack.last_mut().expect("root").children.push(e);
            }
            Event::End(_) => {
                let e = stack.pop().expect("balanced");
                stack.last_mut().ok_or_else(|| SupervisorError::Protocol("unbalanced XML".into()))?.children.push(e);
            }
            Event::Text(t) => {
                let t = t.unescape().map_err(|e| SupervisorError::Protocol(e.to_string()))?;
                stack.last_mut().expect("root").text.push_str(&t);
            }
            Event::CData(t) => stack.last_mut().expect("root").text.push_str(&String::from_utf8_lossy(&t)),
            Event::Eof => break,
            _ => {}
        }
    }
    let mut root = stack.pop().ok_or_else(|| SupervisorError::Protocol("empty answer".into()))?;
    root.children.pop().ok_or_else(|| SupervisorError::Protocol("empty answer".into()))
}

fn decode_value(e: &Element) -> Result<XValue, SupervisorError> {
    // <value> holds a typed child, or bare text (a string)
    let Some(t) = e.children.first() else {
        return Ok(XValue::Str(e.text.clone()));
    };
    let bad = |what: &str| SupervisorError::Protocol(format!("bad {what}: {}", t.text));
    Ok(match t.name.as_str() {
        "string" => XValue::Str(t.text.clone()),
        "int" | "i4" | "i8" => XValue::Int(t.text.trim().parse().map_err(|_| bad("int"))?),
        "boolean" => XValue::Bool(t.text.trim() == "1"),
        "double" => XValue::Double(t.text.trim().parse().map_err(|_| bad("double"))?),
        "nil" => XValue::Nil,
        "array" => {
            let data = t.children.first();
            XValue::Array(data.map(|d| d.children.iter().map(decode_value).collect::<Result<_, _>>()).transpose()?.unwrap_or_default())
        }
        "struct" => {
            let mut m = BTreeMap::new();
            for member in &t.children {
                let name = member.children.iter().find(|c| c.name == "name").map(|c| c.text.clone()).unwrap_or_default();
                if let Some(v) = member.children.iter().find(|c| c.name == "value") {
                    m.insert(name, decode_value(v)?);
                }
            }
            XValue::Struct(m)
        }
        other => XValue::Str(format!("<{other}>{}", t.text)),
    })
}

/// Decodes a `<methodResponse>`: the value, or the fault as an error.
pub fn decode_response(xml: &str) -> Result<XValue, SupervisorError> {
    let root = parse_tree(xml)?;
    if root.name != "methodResponse" {
        return Err(SupervisorError::Protocol(format!("expected methodResponse, got {}", root.name)));
    }
    let first = root.children.first().ok_or_else(|| SupervisorError::Protocol("empty methodResponse".into()))?;
    let value_of = |e: &Element| -> Result<XValue, SupervisorError> {
        let v = e.children.iter().find(|c| c.name == "value").ok_or_else(|| SupervisorError::Protocol("no value".into()))?;
        decode_value(v)
    };
    match first.name.as_str() {
        "fault" => {
            let v = value_of(first)?;
            Err(SupervisorError::Fault {
                code: v.get("faultCode").and_then(XValue::as_int).unwrap_or(0),
                message: v.get("faultString").and_then(XValue::as_str).unwrap_or_default().to_string(),
            })
        }
        "params" => {
            let param = first.children.first().ok_or_else(|| SupervisorError::Protocol("no param".into()))?;
            value_of(param)
        }
        other => Err(SupervisorError::Protocol(format!("unexpected {other}"))),
    }
}

/// The node's supervisord: its files under `instance_root` and its socket.
#[derive(Debug)]
pub struct Supervisor {
    /// The instance root the configuration lives under.
    pub instance_root: PathBuf,
    /// The unix socket of its XML-RPC interface (the legacy `supervisord.socket` when present, else `sv.sock`).
    pub socket: PathBuf,
    /// `etc/supervisord.conf`.
    pub conf: PathBuf,
    /// `etc/supervisord.conf.d`: one file per partition.
    pub conf_dir: PathBuf,
    /// The `supervisord` program to launch.
    pub program: String,
    /// Serialises configuration updates (partitions are processed in
    /// parallel; supervisord's reload is global).
    update_lock: Mutex<()>,
}

impl Supervisor {
    /// The supervisord of the node whose partitions are under `instance_root`, launched as `program`.
    pub fn new(instance_root: &Path, program: impl Into<String>) -> Supervisor {
        let legacy = instance_root.join("supervisord.socket");
        let socket = if legacy.exists() { legacy } else { instance_root.join("sv.sock") };
        Supervisor {
            instance_root: instance_root.to_path_buf(),
            socket,
            conf: instance_root.join("etc/supervisord.conf"),
            conf_dir: instance_root.join("etc/supervisord.conf.d"),
            program: program.into(),
            update_lock: Mutex::new(()),
        }
    }

    /// Creates or refreshes `etc/`, `etc/supervisord.conf`,
    /// `etc/supervisord.conf.d/` and `var/{log,run}` (`node.md` §5.4 modes).
    pub fn write_configuration(&self, watchdog_command: Option<&str>) -> std::io::Result<()> {
        let etc = self.instance_root.join("etc");
        mkdir_mode(&etc, 0o700)?;
        mkdir_mode(&self.conf_dir, 0o700)?;
        let var = self.instance_root.join("var");
        mkdir_mode(&var, 0o755)?;
        mkdir_mode(&var.join("log"), 0o700)?;
        mkdir_mode(&var.join("run"), 0o700)?;
        let text = templates::supervisord_conf(&self.instance_root, watchdog_command).map_err(std::io::Error::other)?;
        write_if_changed(&self.conf, &text, 0o600)?;
        Ok(())
    }

    /// One XML-RPC call.
    pub fn call(&self, method: &str, params: &[XValue]) -> Result<XValue, SupervisorError> {
        let unreachable = |source| SupervisorError::Unreachable { socket: self.socket.clone(), source };
        let mut stream = UnixStream::connect(&self.socket).map_err(unreachable)?;
        let timeout = Some(Duration::from_secs(120));
        stream.set_read_timeout(timeout)?;
        stream.set_write_timeout(timeout)?;
        let body = encode_call(method, params);
        let request =
            format!("POST /RPC2 HTTP/1.0\r\nHost: localhost\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        stream.write_all(request.as_bytes()).map_err(unreachable)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).map_err(unreachable)?;
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer.split_once("\r\n\r\n").ok_or_else(|| SupervisorError::Protocol("no HTTP header".into()))?;
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            return Err(SupervisorError::Protocol(format!("HTTP {status}: {}", body.trim())));
        }
        decode_response(body)
    }

    /// supervisord's state name (RUNNING, SHUTDOWN…), or an error when it
    /// does not answer.
    pub fn state(&self) -> Result<String, SupervisorError> {
        let v = self.call("supervisor.getState", &[])?;
        Ok(v.get("statename").and_then(XValue::as_str).unwrap_or_default().to_string())
    }

    /// Starts supervisord unless it answers (`node.md` §5.4 "Launch"); true when it
    /// was launched by this call.
    pub fn ensure_running(&self) -> Result<bool, SupervisorError> {
        for _ in 0..5 {
            match self.state() {
                Ok(s) if s == "RUNNING" => return Ok(false),
                Ok(s) if s == "SHUTDOWN" || s == "SHUTDOWN_STATE" => std::thread::sleep(Duration::from_secs(1)),
                Ok(_) => return Ok(false),
                Err(SupervisorError::Fault { code: SHUTDOWN_STATE, .. }) => std::thread::sleep(Duration::from_secs(1)),
                Err(_) => break,
            }
        }
        tracing::info!("Launching supervisord with clean environment.");
        // a stale socket left by a killed supervisord would make it refuse
        if self.socket.exists() && self.state().is_err() {
            let _ = std::fs::remove_file(&self.socket);
        }
        let output = std::process::Command::new(&self.program)
            .arg("-c")
            .arg(&self.conf)
            .env_clear()
            .current_dir(&self.instance_root)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| SupervisorError::Launch(format!("cannot run {}: {e}", self.program)))?;
        if !output.status.success() {
            return Err(SupervisorError::Launch(format!(
                "{} exited with {}: {}{}",
                self.program,
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(s) = self.state() {
                if s == "RUNNING" {
                    tracing::info!("Supervisord started.");
                    return Ok(true);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(SupervisorError::Launch(format!("no answer on {} after 20 seconds", self.socket.display())))
    }

    /// `supervisorctl update`: reload, then remove, replace and add the
    /// groups whose files changed.
    pub fn update(&self) -> Result<(), SupervisorError> {
        let _guard = self.update_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.update_locked()
    }

    fn update_locked(&self) -> Result<(), SupervisorError> {
        let changes = self.call("supervisor.reloadConfig", &[])?;
        let lists = changes.as_array().first().map(XValue::as_array).unwrap_or(&[]);
        let names = |i: usize| -> Vec<String> {
            lists.get(i).map(XValue::as_array).unwrap_or(&[]).iter().filter_map(|v| v.as_str().map(str::to_string)).collect()
        };
        let (added, changed, removed) = (names(0), names(1), names(2));
        for g in &removed {
            self.stop_and_remove(g)?;
        }
        for g in &changed {
            self.stop_and_remove(g)?;
            self.add_group(g)?;
        }
        for g in &added {
            self.add_group(g)?;
        }
        Ok(())
    }

    fn add_group(&self, group: &str) -> Result<(), SupervisorError> {
        match self.call("supervisor.addProcessGroup", &[XValue::Str(group.into())]) {
            Err(e) if e.fault_code() == Some(ALREADY_ADDED) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    fn stop_and_remove(&self, group: &str) -> Result<(), SupervisorError> {
        match self.call("supervisor.stopProcessGroup", &[XValue::Str(group.into())]) {
            Err(e) if e.fault_code() == Some(BAD_NAME) => return Ok(()),
            _ => {}
        }
        let mut tries = 0;
        loop {
            match self.call("supervisor.removeProcessGroup", &[XValue::Str(group.into())]) {
                Ok(_) => return Ok(()),
                Err(e) if e.fault_code() == Some(BAD_NAME) => return Ok(()),
                Err(e) if e.fault_code() == Some(STILL_RUNNING) && tries < 10 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes a partition's group file (when changed) and updates.
    pub fn install_group(&self, partition_id: &str, text: Option<&str>) -> Result<(), SupervisorError> {
        let path = self.conf_dir.join(format!("{partition_id}.conf"));
        match text {
            Some(t) => {
                write_if_changed(&path, t, 0o600)?;
            }
            None => {
                if path.exists() {
                    std::fs::remove_file(&path)?;
                }
            }
        }
        self.update()
    }

    /// Whether a group has its file (`supervisord.conf.d/<group>.conf`).
    pub fn has_group(&self, group: &str) -> bool {
        self.conf_dir.join(format!("{group}.conf")).exists()
    }

    /// Starts every program of a partition's group.
    pub fn start_group(&self, partition_id: &str) -> Result<(), SupervisorError> {
        match self.call("supervisor.startProcessGroup", &[XValue::Str(partition_id.into()), XValue::Bool(false)]) {
            Err(e) if e.fault_code() == Some(BAD_NAME) => {
                tracing::info!("Nothing to start on {partition_id}...");
                Ok(())
            }
            Err(e) if e.fault_code() == Some(ALREADY_STARTED) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Stops a partition: its group file goes, and with it the group, and
    /// the groups managers added (`<partition>-socat`, and the
    /// `<partition>-prerm` a Python node may have left), as slapgrid's.
    pub fn stop_partition(&self, partition_id: &str) -> Result<(), SupervisorError> {
        for suffix in MANAGER_GROUPS {
            let path = self.conf_dir.join(format!("{partition_id}-{suffix}.conf"));
            if path.exists() {
                std::fs::remove_file(&path)?;
            }
        }
        self.install_group(partition_id, None)
    }

    /// Every process: (group:name, state name).
    pub fn processes(&self) -> Result<Vec<(String, String)>, SupervisorError> {
        let v = self.call("supervisor.getAllProcessInfo", &[])?;
        Ok(v.as_array()
            .iter()
            .map(|p| {
                let s = |k| p.get(k).and_then(XValue::as_str).unwrap_or_default().to_string();
                (format!("{}:{}", s("group"), s("name")), s("statename"))
            })
            .collect())
    }
}

/// The suffixes of the groups managers add to a partition.
const MANAGER_GROUPS: &[&str] = &["socat", "prerm"];

pub(crate) fn mkdir_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    if !path.is_dir() {
        std::fs::create_dir_all(path)?;
    }
    let current = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if current != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Writes `text` atomically when the file differs; true when written.
pub(crate) fn write_if_changed(path: &Path, text: &str, mode: u32) -> std::io::Result<bool> {
    if std::fs::read(path).ok().as_deref() == Some(text.as_bytes()) {
        return Ok(false);
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_encoded_and_answers_decoded() {
        assert_eq!(
            encode_call("supervisor.startProcessGroup", &[XValue::Str("slappart0".into()), XValue::Bool(false)]),
            "<?xml version=\"1.0\"?>\n<methodCall><methodName>supervisor.startProcessGroup</methodName><params><param><value><string>slappart0</string></value></param><param><value><boolean>0</boolean></value></param></params></methodCall>"
        );
        let answer = "<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n<value><array><data>\n<value><array><data>\n<value><array><data>\n<value><string>slappart0</string></value>\n</data></array></value>\n<value><array><data>\n</data></array></value>\n<value><array><data>\n<value>slappart1</value>\n</data></array></value>\n</data></array></value>\n</data></array></value>\n</param>\n</params>\n</methodResponse>\n";
        let v = decode_response(answer).unwrap();
        let lists = v.as_array()[0].as_array(); // [[added, changed, removed]]
        assert_eq!(lists[0].as_array(), [XValue::Str("slappart0".into())]);
        assert!(lists[1].as_array().is_empty());
        assert_eq!(lists[2].as_array(), [XValue::Str("slappart1".into())]);
        let state = "<methodResponse><params><param><value><struct><member><name>statecode</name><value><int>1</int></value></member><member><name>statename</name><value><string>RUNNING</string></value></member></struct></value></param></params></methodResponse>";
        assert_eq!(decode_response(state).unwrap().get("statename").unwrap().as_str(), Some("RUNNING"));
    }

    #[test]
    fn faults_become_errors_with_their_code() {
        let fault = "<methodResponse><fault><value><struct><member><name>faultCode</name><value><int>10</int></value></member><member><name>faultString</name><value><string>BAD_NAME: slappart9</string></value></member></struct></value></fault></methodResponse>";
        let e = decode_response(fault).unwrap_err();
        assert_eq!(e.fault_code(), Some(BAD_NAME));
        assert!(e.to_string().contains("BAD_NAME: slappart9"));
        assert!(decode_response("<html>").is_err());
    }

    #[test]
    fn a_missing_supervisord_is_unreachable_not_a_hang() {
        let d = tempfile::tempdir().unwrap();
        let s = Supervisor::new(d.path(), "supervisord");
        assert!(matches!(s.state(), Err(SupervisorError::Unreachable { .. })));
        s.write_configuration(None).unwrap();
        let mode = std::fs::metadata(&s.conf).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!write_if_changed(&s.conf, &std::fs::read_to_string(&s.conf).unwrap(), 0o600).unwrap());
    }
}
