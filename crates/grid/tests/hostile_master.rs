//! A hostile master, property-based (issue 11): a fake master serves
//! generated full computer information — partition ids, software release
//! URLs, states and parameters mixing valid values with hostile ones (`../`,
//! absolute paths into a victim directory, newline, `]`, `%(`, `${`, NUL,
//! 10 KB, unicode, `.`, `..`, empty), duplicated ids, missing fields and
//! fields of the wrong type — and the node's own `node software`, `node
//! instance` and `node report` (the library functions the `slapos` binary
//! calls) run against it, in process. Whatever the document:
//!
//! * nothing outside the node's roots is created, changed or removed (a
//!   snapshot of the directories around the roots, with victim directories
//!   and files at every level a `../` can reach, before and after: paths,
//!   kinds, contents, modes, owners, mtimes);
//! * the node never panics (a panic, even in a worker thread, fails the
//!   case and proptest shrinks it) and exits with one of its codes;
//! * every partition id it names to the master or to supervisord is valid.
//!
//! Releases are "built" by a fake buildout (a shell script that writes
//! `bin/buildout` and `instance.cfg`), and supervisord is a fake on the
//! node's socket that answers every XML-RPC call: the fast tier needs
//! neither Python nor root. The `needs_root` variant runs more cases as
//! root, with partitions and the software root owned by `slaptest` users
//! (removed on drop, even on failure), so that every program runs through
//! the privilege drop and every file root writes goes through `fsafe`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use slap::marshal::{Object, Value};
use slapos_grid::config::{NodeConfig, NodeOverrides};
use slapos_grid::names::PartitionId;
use slapos_grid::node::Node;
use test_support::tree::{differences, snapshot};

const COMPUTER: &str = "COMP-HOSTILE";

/// The partition directories a node has (as `node format` made them).
const PARTITIONS: [&str; 4] = ["slappart0", "slappart1", "slappart2", "slappart3"];

// ---------------------------------------------------------------- what is generated

/// A text from the master; the variants other than `Lit` are resolved
/// against the case's directories when the document is built.
#[derive(Debug, Clone)]
enum Name {
    /// As is.
    Lit(String),
    /// The absolute path of the case's victim directory, then the suffix.
    VictimAbs(&'static str),
    /// `../` up to `/` from the instance root, then down to the victim
    /// directory (relative, so only a join makes it an escape).
    VictimUp,
    /// `file://` URL of the case's tiny local profile, then the suffix.
    Profile(&'static str),
}

/// A field of a master object: absent, a text, or a value of the wrong type.
#[derive(Debug, Clone)]
enum Slot {
    Missing,
    Text(Name),
    Wrong(Value),
}

/// A `SoftwareRelease` object.
#[derive(Debug, Clone)]
struct Release {
    url: Slot,
    /// The URL in the object's arguments too (the decoder's fallback when
    /// `_software_release` is missing or not a text).
    args: bool,
    state: Slot,
}

/// What a partition's `_software_release_document` is.
#[derive(Debug, Clone)]
enum ReleaseDoc {
    Missing,
    Object(Release),
    Wrong(Value),
}

/// A `ComputerPartition` object.
#[derive(Debug, Clone)]
struct Partition {
    id: Slot,
    /// The id in the object's arguments too (else they are dropped: the
    /// decoder then has nothing to fall back on).
    args: bool,
    state: Slot,
    release: ReleaseDoc,
    /// `_parameter_dict`: `None` is absent, `Err` a wrong type.
    parameters: Option<Result<Vec<(Name, Slot)>, Value>>,
    /// `_filter_dict`'s `retention_delay`.
    retention: Slot,
    access_status: Slot,
}

/// A `Computer` object.
#[derive(Debug, Clone)]
struct Case {
    partitions: Result<Vec<Partition>, Value>,
    /// The local profile is supplied (first in the list), so that partitions
    /// using it get deployed.
    supplied: bool,
    releases: Result<Vec<Release>, Value>,
}

/// Texts every name source has been attacked with (issue 11).
fn hostile_text() -> BoxedStrategy<Name> {
    let fixed: Vec<&'static str> = vec![
        "../",
        "../victim",
        "../../victim",
        "../../../victim",
        "../..",
        "/abs",
        "/",
        "a\nb",
        "slappart0\n[program:evil]\ncommand=touch /pwned\nuser=root",
        "x]",
        "[buildout]",
        "100%",
        "p%(here)s",
        "%(",
        "${buildout:directory}",
        "a\0b",
        "é🦀",
        ".",
        "..",
        "",
        " ",
        "-rf",
        "a/b",
        "slappart0/../slappart1",
        "slappart0/",
        "\r",
        "http://sr/software.cfg\nextends = file:///etc/shadow",
    ];
    prop_oneof![
        8 => proptest::sample::select(fixed).prop_map(|s| Name::Lit(s.into())),
        1 => Just(Name::Lit("p".repeat(10 * 1024))),
        1 => Just(Name::VictimAbs("")),
        1 => Just(Name::VictimAbs("/precious")),
        1 => Just(Name::VictimUp),
        2 => "\\PC{0,16}".prop_map(Name::Lit),
    ]
    .boxed()
}

/// Values of the wrong type for a text field.
fn wrong() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::None),
        Just(Value::Int(7)),
        Just(Value::Bool(true)),
        Just(Value::Float(1e308)),
        Just(Value::List(vec![Value::str("slappart0")])),
        Just(Value::Dict(BTreeMap::from([("slappart0".to_string(), Value::str("x"))]))),
    ]
}

fn slot(text: BoxedStrategy<Name>) -> impl Strategy<Value = Slot> {
    prop_oneof![8 => text.prop_map(Slot::Text), 1 => Just(Slot::Missing), 1 => wrong().prop_map(Slot::Wrong)]
}

fn lits(items: &[&'static str]) -> BoxedStrategy<Name> {
    proptest::sample::select(items.to_vec()).prop_map(|s| Name::Lit(s.into())).boxed()
}

fn partition_id() -> BoxedStrategy<Name> {
    prop_oneof![
        6 => lits(&PARTITIONS),
        1 => lits(&["slappart7", "a.b", "A_b-1"]),
        4 => hostile_text(),
    ]
    .boxed()
}

fn url() -> BoxedStrategy<Name> {
    prop_oneof![
        6 => Just(Name::Profile("")),
        1 => Just(Name::Profile("?x=1#f")),
        1 => Just(Name::Profile("\nextends = file:///etc/shadow")),
        1 => lits(&["http://sr/software.cfg", "file:///nonexistent/software.cfg"]),
        3 => hostile_text(),
    ]
    .boxed()
}

fn instance_state() -> BoxedStrategy<Name> {
    prop_oneof![6 => lits(&["started", "stopped", "destroyed"]), 1 => hostile_text()].boxed()
}

fn release() -> impl Strategy<Value = Release> {
    let state = prop_oneof![6 => lits(&["available", "destroyed"]), 1 => hostile_text()].boxed();
    (slot(url()), prop::bool::weighted(0.98), slot(state)).prop_map(|(url, args, state)| Release { url, args, state })
}

fn parameters() -> impl Strategy<Value = Option<Result<Vec<(Name, Slot)>, Value>>> {
    let key = prop_oneof![2 => lits(&["timestamp", "slap_software_type", "retention_delay"]), 3 => hostile_text()];
    let value = prop_oneof![2 => lits(&["1700000000.5", "default", "0"]).prop_map(Slot::Text), 3 => slot(hostile_text())];
    prop_oneof![
        6 => proptest::collection::vec((key, value), 0..4).prop_map(|v| Some(Ok(v))),
        1 => Just(None),
        1 => wrong().prop_map(|v| Some(Err(v))),
    ]
}

fn partition() -> impl Strategy<Value = Partition> {
    let doc =
        prop_oneof![8 => release().prop_map(ReleaseDoc::Object), 1 => Just(ReleaseDoc::Missing), 1 => wrong().prop_map(ReleaseDoc::Wrong)];
    let retention = slot(prop_oneof![lits(&["1", "-1", "nan", "inf", "1e308"]), hostile_text()].boxed());
    (slot(partition_id()), prop::bool::weighted(0.98), slot(instance_state()), doc, parameters(), retention, slot(hostile_text())).prop_map(
        |(id, args, state, release, parameters, retention, access_status)| Partition {
            id,
            args,
            state,
            release,
            parameters,
            retention,
            access_status,
        },
    )
}

fn case() -> impl Strategy<Value = Case> {
    let partitions = prop_oneof![12 => proptest::collection::vec(partition(), 0..5).prop_map(Ok), 1 => wrong().prop_map(Err)];
    let releases = prop_oneof![12 => proptest::collection::vec(release(), 0..3).prop_map(Ok), 1 => wrong().prop_map(Err)];
    (partitions, prop::bool::weighted(0.9), releases).prop_map(|(partitions, supplied, releases)| Case { partitions, supplied, releases })
}

// ---------------------------------------------------------------- the document

/// Characters the marshaller refuses (NUL…) travel as `MARKER + c` (plane
/// 15, private use) and become `&#c;` in the document.
const MARKER: u32 = 0xF0000;

/// Where a case's names point.
struct Places {
    victim: PathBuf,
    up: String,
    profile: PathBuf,
}

impl Places {
    /// The text `n` stands for; the characters the marshaller refuses are
    /// replaced by markers (see [`Places::document`]).
    fn text(&self, n: &Name) -> String {
        let text = match n {
            Name::Lit(s) => s.clone(),
            Name::VictimAbs(suffix) => format!("{}{suffix}", self.victim.display()),
            Name::VictimUp => format!("{}{}", self.up, self.victim.strip_prefix("/").unwrap().display()),
            Name::Profile(suffix) => format!("file://{}{suffix}", self.profile.display()),
        };
        let refused = |c: char| (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || matches!(c, '\u{fffe}' | '\u{ffff}');
        text.chars().map(|c| if refused(c) { char::from_u32(MARKER + c as u32).expect("plane 15") } else { c }).collect()
    }

    fn put(&self, state: &mut BTreeMap<String, Value>, key: &str, s: &Slot) {
        match s {
            Slot::Missing => {}
            Slot::Text(n) => {
                state.insert(key.into(), Value::Str(self.text(n)));
            }
            Slot::Wrong(v) => {
                state.insert(key.into(), v.clone());
            }
        }
    }

    /// An argument of an object: the text of its slot, else `fallback`.
    fn arg(&self, s: &Slot, fallback: Name) -> Value {
        match s {
            Slot::Text(n) => Value::Str(self.text(n)),
            _ => Value::Str(self.text(&fallback)),
        }
    }

    fn release(&self, r: &Release) -> Value {
        let mut state = BTreeMap::from([("_computer_guid".to_string(), Value::str(COMPUTER))]);
        self.put(&mut state, "_software_release", &r.url);
        self.put(&mut state, "_requested_state", &r.state);
        let args = if r.args { vec![self.arg(&r.url, Name::Profile("")), Value::str(COMPUTER)] } else { vec![] };
        object("SoftwareRelease", args, state)
    }

    fn partition(&self, p: &Partition) -> Value {
        let mut state = BTreeMap::from([("_computer_id".to_string(), Value::str(COMPUTER)), ("_request_dict".to_string(), Value::None)]);
        self.put(&mut state, "_partition_id", &p.id);
        self.put(&mut state, "_requested_state", &p.state);
        self.put(&mut state, "_access_status", &p.access_status);
        match &p.release {
            ReleaseDoc::Missing => {}
            ReleaseDoc::Object(r) => {
                state.insert("_software_release_document".into(), self.release(r));
            }
            ReleaseDoc::Wrong(v) => {
                state.insert("_software_release_document".into(), v.clone());
            }
        }
        match &p.parameters {
            None => {}
            Some(Err(v)) => {
                state.insert("_parameter_dict".into(), v.clone());
            }
            Some(Ok(kv)) => {
                let mut d = BTreeMap::new();
                for (k, v) in kv {
                    self.put(&mut d, &self.text(k), v);
                }
                state.insert("_parameter_dict".into(), Value::Dict(d));
            }
        }
        let mut filter = BTreeMap::new();
        self.put(&mut filter, "retention_delay", &p.retention);
        state.insert("_filter_dict".into(), Value::Dict(filter));
        let args = if p.args { vec![Value::str(COMPUTER), self.arg(&p.id, Name::Lit(PARTITIONS[0].into())), Value::None] } else { vec![] };
        object("ComputerPartition", args, state)
    }

    fn releases(&self, supplied: bool, rs: &[Release]) -> Vec<Value> {
        let profile = Release { url: Slot::Text(Name::Profile("")), args: true, state: Slot::Text(Name::Lit("available".into())) };
        supplied.then_some(&profile).into_iter().chain(rs).map(|r| self.release(r)).collect()
    }

    /// The marshalled `Computer` the master serves.
    fn document(&self, c: &Case) -> String {
        let list = |r: Result<Vec<Value>, &Value>| r.map(Value::List).unwrap_or_else(Value::clone);
        let state = BTreeMap::from([
            ("_computer_id".to_string(), Value::str(COMPUTER)),
            ("_computer_partition_list".to_string(), list(c.partitions.as_ref().map(|ps| ps.iter().map(|p| self.partition(p)).collect()))),
            ("_software_release_list".to_string(), list(c.releases.as_ref().map(|rs| self.releases(c.supplied, rs)))),
        ]);
        let doc = slap::marshal::encode(&object("Computer", vec![Value::str(COMPUTER)], state)).expect("markers, no control character");
        // what XML cannot hold is sent as a character reference all the same
        (0..0x20).chain([0xfffe, 0xffff]).fold(doc, |d, c| d.replace(&format!("&#{};", MARKER + c), &format!("&#{c};")))
    }
}

fn object(class: &str, args: Vec<Value>, state: BTreeMap<String, Value>) -> Value {
    Value::Object(Box::new(Object { module: "slapos.slap.slap".into(), class: class.into(), args, state }))
}

// ---------------------------------------------------------------- fake supervisord

/// A supervisord stand-in on the node's socket: it answers every XML-RPC
/// call (`RUNNING`, no process, no change, else `true`) and records the
/// method calls.
struct FakeSupervisord {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl FakeSupervisord {
    fn start(socket: &Path, conf_dir: &Path) -> FakeSupervisord {
        let listener = UnixListener::bind(socket).unwrap();
        let (stop, calls) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (s, rec, conf_dir) = (stop.clone(), calls.clone(), conf_dir.to_path_buf());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                let Some(body) = read_http(&mut stream) else { continue };
                let answer = xmlrpc_answer(&body, &conf_dir);
                rec.lock().unwrap().push(body);
                let _ = write!(stream, "HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{answer}", answer.len());
            }
        });
        FakeSupervisord { socket: socket.to_path_buf(), stop, calls }
    }

    /// The texts of every `<string>` parameter of the calls of `method`.
    fn string_params(&self, method: &str) -> Vec<String> {
        let calls = self.calls.lock().unwrap();
        let tag = format!("<methodName>{method}</methodName>");
        calls
            .iter()
            .filter(|c| c.contains(&tag))
            .flat_map(|c| c.split("<string>").skip(1).filter_map(|s| s.split_once("</string>")).map(|(t, _)| t.to_string()))
            .collect()
    }
}

impl Drop for FakeSupervisord {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::os::unix::net::UnixStream::connect(&self.socket);
    }
}

/// The body of one HTTP request (headers up to the blank line, then
/// `Content-Length` bytes).
fn read_http(stream: &mut impl Read) -> Option<String> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                .unwrap_or(0);
            if body.len() >= len {
                return Some(body.to_string());
            }
        }
    }
}

/// The answer to `call`; `reloadConfig` says every group file of
/// `conf_dir` is new.
fn xmlrpc_answer(call: &str, conf_dir: &Path) -> String {
    let empty = "<value><array><data></data></array></value>";
    let groups: String = std::fs::read_dir(conf_dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".conf")).map(str::to_string))
                .map(|g| format!("<value><string>{g}</string></value>"))
                .collect()
        })
        .unwrap_or_default();
    let value = if call.contains("<methodName>supervisor.getState</methodName>") {
        "<value><struct><member><name>statename</name><value><string>RUNNING</string></value></member><member><name>statecode</name><value><int>1</int></value></member></struct></value>".to_string()
    } else if call.contains("<methodName>supervisor.reloadConfig</methodName>") {
        let added = format!("<value><array><data>{groups}</data></array></value>");
        format!("<value><array><data><value><array><data>{added}{empty}{empty}</data></array></value></data></array></value>")
    } else if call.contains("<methodName>supervisor.getAllProcessInfo</methodName>") {
        empty.to_string()
    } else {
        "<value><boolean>1</boolean></value>".to_string()
    };
    format!("<?xml version='1.0'?>\n<methodResponse><params><param>{value}</param></params></methodResponse>")
}

// ---------------------------------------------------------------- the node's surroundings

/// The software's programs: the bootstrap (`[slapos] buildout`) writes a
/// `bin/buildout` that, run in a partition, leaves a service there.
const FAKE_BOOTSTRAP: &str = r#"#!/bin/sh
# a fake zc.buildout: "bootstrap" makes bin/buildout and the instance profile
mkdir -p bin
cat > bin/buildout <<'EOF'
#!/bin/sh
# in a partition (it has the software_release link): leave a service
if [ -L software_release ]; then
  mkdir -p etc/service
  printf '#!/bin/sh\nexec sleep 60\n' > etc/service/hello
  chmod 755 etc/service/hello
fi
exit 0
EOF
printf '[buildout]\nparts =\n' > instance.cfg
chmod 755 . bin bin/buildout
chmod 644 instance.cfg
"#;

/// Owners for the root variant: the software root's and each partition's.
struct Owners {
    software: (u32, u32),
    partitions: Vec<(u32, u32)>,
}

/// One case's directories: `<base>/node/{srv,opt}/slapgrid` are the roots;
/// `victim/` (files, a subdirectory) and a `precious` file sit at every
/// level around them; `profile/software.cfg` is the local profile.
struct Site {
    base: tempfile::TempDir,
}

impl Site {
    fn new(owners: Option<&Owners>) -> Site {
        let base = tempfile::Builder::new().prefix("slapos-hostile-master-").tempdir().unwrap();
        let b = base.path().to_path_buf();
        let site = Site { base };
        let b = b.as_path();
        for dir in ["node/srv/slapgrid", "node/opt/slapgrid", "node/run", "profile", "bin"] {
            std::fs::create_dir_all(b.join(dir)).unwrap();
        }
        for level in ["", "node", "node/srv", "node/opt", "profile"] {
            let d = b.join(level);
            std::fs::write(d.join("precious"), "keep me").unwrap();
            std::fs::create_dir_all(d.join("victim/sub")).unwrap();
            std::fs::write(d.join("victim/precious"), "keep me too").unwrap();
            std::fs::write(d.join("victim/sub/deep"), "and me").unwrap();
        }
        std::fs::write(b.join("profile/software.cfg"), "[buildout]\nparts =\n").unwrap();
        let bootstrap = b.join("bin/buildout");
        std::fs::write(&bootstrap, FAKE_BOOTSTRAP).unwrap();
        std::fs::set_permissions(&bootstrap, std::fs::Permissions::from_mode(0o755)).unwrap();
        // the partitions, as format leaves them
        for (i, id) in PARTITIONS.iter().enumerate() {
            let pp = site.instance_root().join(id);
            std::fs::create_dir(&pp).unwrap();
            std::fs::set_permissions(&pp, std::fs::Permissions::from_mode(0o750)).unwrap();
            if let Some(o) = owners {
                chown(&pp, o.partitions[i]);
            }
        }
        if let Some(o) = owners {
            chown(&site.software_root(), o.software);
        }
        // (a temporary directory is 0700: the test users must get through it)
        std::fs::set_permissions(b, std::fs::Permissions::from_mode(0o755)).unwrap();
        site
    }

    fn instance_root(&self) -> PathBuf {
        self.base.path().join("node/srv/slapgrid")
    }
    fn software_root(&self) -> PathBuf {
        self.base.path().join("node/opt/slapgrid")
    }
    /// What the node may change: its roots and its pid files.
    fn roots(&self) -> Vec<PathBuf> {
        vec![self.instance_root(), self.software_root(), self.base.path().join("node/run")]
    }

    fn places(&self) -> Places {
        let victim = self.base.path().join("victim");
        let up = "../".repeat(self.instance_root().components().count() - 1);
        Places { victim, up, profile: self.base.path().join("profile/software.cfg") }
    }

    fn node(&self, master_url: &str) -> Node {
        let d = self.base.path();
        let text = format!(
            "[slapos]\ncomputer_id = {COMPUTER}\nmaster_url = {master_url}\nsoftware_root = {}\ninstance_root = {}\nbuildout = {}\n\
             pidfile_instance = {d}/node/run/instance.pid\ninstance_min_free_space = 1M\nsoftware_min_free_space = 1M\n",
            self.software_root().display(),
            self.instance_root().display(),
            d.join("bin/buildout").display(),
            d = d.display()
        );
        let cfg = NodeConfig::from_config(&slapos_config::Config::parse(&text).unwrap(), &NodeOverrides::default()).unwrap();
        let node = Node::new(cfg).unwrap();
        // (check_structure would name this test binary as the watchdog)
        node.supervisor.write_configuration(None).unwrap();
        node
    }
}

fn chown(p: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
}

// ---------------------------------------------------------------- one case

/// What the cases of a run made the node do (so that a run which refused
/// every document, or deployed nothing, is seen).
#[derive(Debug, Default)]
struct Tally {
    /// Documents that did not decode (`node software` failed at once).
    undecodable: usize,
    /// Partitions the node reported started, stopped or destroyed.
    processed: usize,
    /// Names refused, as reported to the master.
    refused: usize,
}

/// Runs `node software`, `node instance` and `node report` against a master
/// serving `case`, and checks that nothing outside the roots changed.
fn run_case(case: &Case, owners: Option<&Owners>, tally: &Mutex<Tally>) -> Result<(), TestCaseError> {
    let site = Site::new(owners);
    let doc = site.places().document(case);
    let master = test_support::serve(move |r| match (r.method.as_str(), r.path()) {
        ("GET", "getFullComputerInformation") => (200, doc.clone()),
        ("GET", _) => (404, String::new()),
        _ => (200, String::new()),
    });
    let node = site.node(&master.url);
    let supervisord = FakeSupervisord::start(&node.supervisor.socket, &node.supervisor.conf_dir);
    let before = snapshot(site.base.path(), &site.roots());

    let software = slapos_grid::software::SoftwareOptions { garbage_collect: true, ..Default::default() };
    // a document that does not decode is an error, never a panic
    match slapos_grid::software::run(&node, &software) {
        Ok(_summary) => {}
        Err(_) => tally.lock().unwrap().undecodable += 1,
    }
    let opts = slapos_grid::instance::InstanceOptions { workers: 2, default_deadline: Duration::from_secs(30), ..Default::default() };
    // the master answers: never offline (slapgrid's 3); an error is a typed one
    let run = slapos_grid::instance::run(&node, &opts);
    prop_assert!(!matches!(run, Ok(slapos_grid::instance::InstanceRun::Offline)), "node instance went offline against a live master");
    // node report: a summary or a typed error, never a panic
    let _ = slapos_grid::report::run(&node);

    let changed = differences(&before, &snapshot(site.base.path(), &site.roots()));
    prop_assert!(changed.is_empty(), "changed outside the roots: {changed:#?}");
    prop_assert!(!Path::new("/abs").exists() && !Path::new("/pwned").exists());
    // partitions are named (to the master, to supervisord) only by valid ids
    let received = master.received.lock().unwrap();
    let named = received.iter().flat_map(|r| r.form()).filter(|(k, _)| k == "computer_partition_id").map(|(_, v)| v);
    let grouped = supervisord
        .string_params("supervisor.addProcessGroup")
        .into_iter()
        .chain(supervisord.string_params("supervisor.startProcessGroup"));
    for id in named.chain(grouped) {
        prop_assert!(PartitionId::parse(&id).is_ok(), "an invalid partition id went out: {id:?}");
    }
    let mut t = tally.lock().unwrap();
    t.processed += received.iter().filter(|r| r.path().ends_with("ComputerPartition")).count();
    t.refused += received.iter().flat_map(|r| r.form()).filter(|(k, v)| k == "error_log" && v.contains(" refused: ")).count();
    Ok(())
}

/// Runs `cases` generated cases, then checks that they exercised the node.
fn run_cases(cases: u32, owners: Option<&Owners>) {
    let started = Instant::now();
    let tally = Mutex::new(Tally::default());
    let config = ProptestConfig { cases, max_shrink_time: 60_000, ..ProptestConfig::default() };
    proptest!(config, |(case in case())| { run_case(&case, owners, &tally)?; });
    let t = tally.into_inner().unwrap();
    eprintln!("{cases} cases in {:.1} s: {t:?}", started.elapsed().as_secs_f64());
    assert!(t.processed > 0 && t.refused > 0, "the cases did not exercise the node: {t:?}");
}

/// The fast tier: 32 generated documents, as the current user (as root,
/// partitions and software belong to `nobody`: root never runs a program
/// as root).
#[test]
fn a_hostile_master_cannot_make_the_node_touch_anything_outside_its_roots() {
    let owners = nix::unistd::geteuid().is_root().then(|| {
        let nobody = nix::unistd::User::from_name("nobody").unwrap().expect("the user nobody");
        let ids = (nobody.uid.as_raw(), nobody.gid.as_raw());
        Owners { software: ids, partitions: vec![ids; PARTITIONS.len()] }
    });
    run_cases(32, owners.as_ref());
}

// ---------------------------------------------------------------- as root

/// `slaptest` users, removed on drop (even when a case fails).
struct TestUsers(Vec<String>);

impl TestUsers {
    fn create(n: usize) -> TestUsers {
        let mut users = TestUsers(Vec::new());
        for i in 0..n {
            let name = format!("slaptest-hm{}-{i}", std::process::id() % 100_000);
            let out = Command::new("useradd").args(["-M", "-U", "-s", "/usr/sbin/nologin", "-d", "/nonexistent", &name]).output().unwrap();
            assert!(out.status.success(), "useradd {name}: {}", String::from_utf8_lossy(&out.stderr));
            users.0.push(name);
        }
        users
    }

    fn ids(&self) -> Vec<(u32, u32)> {
        self.0
            .iter()
            .map(|n| {
                let u = nix::unistd::User::from_name(n).unwrap().unwrap();
                (u.uid.as_raw(), u.gid.as_raw())
            })
            .collect()
    }
}

impl Drop for TestUsers {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("userdel").arg(name).output();
            let _ = Command::new("groupdel").arg(name).output();
        }
    }
}

/// The slow tier: 128 documents as root, partitions and software owned by
/// test users (every program through the privilege drop, every write of
/// root in a partition through `fsafe`).
#[test]
#[ignore = "needs root"]
fn needs_root_a_hostile_master_cannot_make_a_root_node_touch_anything_outside_its_roots() {
    test_support::require_root();
    let users = TestUsers::create(PARTITIONS.len() + 1);
    let ids = users.ids();
    let owners = Owners { software: ids[0], partitions: ids[1..].to_vec() };
    run_cases(128, Some(&owners));
}
