//! Helpers shared by the tests of the workspace (a dev-dependency only,
//! never published): a canned HTTP server that records what it receives, the
//! real Python master (`slapos proxy start` from slapos.core 1.26.1), the
//! wire captures of `testdata/slap-vectors/`, and the guards of the slow
//! tier.
//!
//! The test tiers: the fast tier is plain `cargo test` (no root, no network,
//! no Python). A test that needs root is `#[ignore = "needs root"]` with
//! `needs_root` in its name and calls [`require_root`] first; a test that
//! needs the project venv is `#[ignore = "needs the venv"]` with
//! `needs_venv` in its name and gets the venv from [`python_venv`]. Run
//! without what they need, both fail with a message saying what is missing:
//! a test never passes without having run.

#![warn(missing_docs)]

pub mod browser;
pub mod exercise;
pub mod netns;
pub mod postgres;
pub mod tls;
pub mod tree;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target: path and query string.
    pub target: String,
    /// The headers, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body, as text.
    pub body: String,
}

impl Received {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// The path of the request target, without its leading `/` and query
    /// string (`getFullComputerInformation`).
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default().trim_start_matches('/')
    }
    /// The body decoded as `application/x-www-form-urlencoded`, in wire order.
    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.body.as_bytes()).into_owned().collect()
    }
}

/// A loopback server answering every request with `status` and `body`.
pub struct Canned {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Every request received so far.
    pub received: Arc<Mutex<Vec<Received>>>,
}

/// Starts a [`Canned`] server on a free loopback port (it lives as long as
/// the test process).
pub fn canned(status: u16, body: &'static str) -> Canned {
    serve(move |_| (status, body.to_string()))
}

/// Starts a loopback server whose answer to each request is
/// `handler(request)`: `(status, body)` (it lives as long as the test
/// process). A fake master, for instance, serves a crafted document on
/// `GET /getFullComputerInformation` and records the node's reports.
pub fn serve<F>(handler: F) -> Canned
where
    F: Fn(&Received) -> (u16, String) + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let rec = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let Some(r) = read_request(&stream) else { continue };
            let (status, body) = handler(&r);
            rec.lock().unwrap().push(r);
            let mut s = stream;
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Canned { url, received }
}

fn read_request(stream: &TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Received { method, target, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// The root of the repository (for `examples/`, `scripts/`, `testdata/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The wire captures of the Python client and master
/// (`testdata/slap-vectors/`, see its README).
pub fn vectors_dir() -> PathBuf {
    let dir = repo_root().join("testdata/slap-vectors");
    assert!(dir.join("steps.json").is_file(), "the wire captures are missing: {} (part of the repository)", dir.display());
    dir
}

/// The captures of `testdata/slap-vectors/` (`NNN-*.json`), by file name, in
/// file name order (which is their order of arrival).
pub fn vectors() -> Vec<(String, serde_json::Value)> {
    let mut v: Vec<(String, serde_json::Value)> = std::fs::read_dir(vectors_dir())
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name()?.to_str()?.to_string();
            (name.ends_with(".json") && name.as_bytes()[0].is_ascii_digit()).then(|| {
                let doc = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
                (name, doc)
            })
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// A back-reference bomb for the marshal decoder: `levels` lists, each
/// holding `fanout` references to the one before; the first holds `fanout`
/// strings of `leaf` bytes: a small document that expands to
/// `fanout^levels` values.
pub fn reference_bomb(fanout: usize, levels: usize, leaf: usize) -> String {
    let mut s = String::from("<marshal><list id=\"i1\"><list id=\"i2\">");
    for _ in 0..fanout {
        s.push_str(&format!("<string>{}</string>", "x".repeat(leaf)));
    }
    s.push_str("</list>");
    for l in 1..levels {
        s.push_str(&format!("<list id=\"i{}\">", l + 2));
        for _ in 0..fanout {
            s.push_str(&format!("<reference id=\"i{}\"/>", l + 1));
        }
        s.push_str("</list>");
    }
    s.push_str("</list></marshal>");
    s
}

/// Fails the calling test unless it runs as root. For the tests marked
/// `#[ignore = "needs root"]`: run as root they do their work, run otherwise
/// (`cargo test -- --ignored` as a user) they fail saying why.
#[track_caller]
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (it creates users, network namespaces, files owned by others): run it as root \
         (`cargo test -- --ignored needs_root`); as a user, `cargo test -- --ignored needs_venv` leaves it out"
    );
}

/// Where the project venv is looked for: `$SLAPOS_VENV`, else the default of
/// `scripts/python-venv.sh`.
pub const DEFAULT_VENV: &str = "/var/cache/slapos-e2e/venv-1.26.1";

/// The project venv (zc.buildout, supervisor, slapos.core 1.26.1):
/// `$SLAPOS_VENV`, else [`DEFAULT_VENV`]. For the tests marked
/// `#[ignore = "needs the venv"]`: fails the calling test, saying how to make
/// the venv, when it is not there (tests never download it themselves).
#[track_caller]
pub fn python_venv() -> PathBuf {
    let venv = std::env::var_os("SLAPOS_VENV").filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_VENV));
    assert!(
        venv.join("bin/slapos").is_file() && venv.join("bin/buildout").is_file(),
        "this test needs the project venv (zc.buildout, supervisor, slapos.core 1.26.1) and there is none at {}: \
         make it with `bash scripts/python-venv.sh` (or set SLAPOS_VENV), or run the fast tier only (`cargo test`)",
        venv.display()
    );
    venv
}

/// A loopback TCP port free at the time of the call.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A master program (`PROGRAM proxy start`: ours or the Python one) on a
/// free loopback port, with its configuration and database in a temporary
/// directory; killed (by its PID) when dropped.
pub struct Master {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Holds `slapos.cfg`, `proxy.db` and `proxy.log` (the master's output).
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Master {
    /// Starts `program proxy start` for `computer_id` and waits until it
    /// listens (at most 60 s; fails the test with the master's log otherwise).
    pub fn start(program: &Path, computer_id: &str) -> Master {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = dir.path().join("slapos.cfg");
        std::fs::write(
            &cfg,
            format!(
                "[slapos]\ncomputer_id = {computer_id}\n\n[slapproxy]\nhost = 127.0.0.1\nport = {port}\ndatabase_uri = {}\n",
                dir.path().join("proxy.db").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
        let child = Command::new(program)
            .args(["proxy", "start", "--cfg"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let mut master = Master { url: format!("http://127.0.0.1:{port}"), dir, child };
        wait_for_port(port, &mut master.child, &master.dir.path().join("proxy.log"));
        master
    }

    /// The real Python master of the project venv (see [`python_venv`]).
    #[track_caller]
    pub fn python(computer_id: &str) -> Master {
        Master::start(&python_venv().join("bin/slapos"), computer_id)
    }
}

fn wait_for_port(port: u16, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the master exited ({status}): {}", std::fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the master did not listen on {port} within 60 s: {}", std::fs::read_to_string(log).unwrap_or_default());
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the configuration of a local test node under `dir` and returns
/// the paths of `etc/slapos.cfg` and `etc/slapos-client.cfg`: computer
/// `local` on the loopback interface, with `partitions` partitions, roots
/// and pid files under `dir`, the buildout of `venv`, and our master on
/// `port` (database in `dir/var`). With `certificates`, that directory is the
/// node's `certificate_repository_path`.
pub fn local_node_config(dir: &Path, venv: &Path, port: u16, partitions: usize, certificates: Option<&Path>) -> (PathBuf, PathBuf) {
    let d = dir.display();
    let certificates = certificates.map(|c| format!("certificate_repository_path = {}\n", c.display())).unwrap_or_default();
    let cfg = dir.join("etc/slapos.cfg");
    std::fs::write(
        &cfg,
        format!(
            "[slapos]\ncomputer_id = local\nmaster_url = http://127.0.0.1:{port}\nsoftware_root = {d}/opt/slapgrid\ninstance_root = {d}/srv/slapgrid\n{certificates}buildout = {venv}/bin/buildout\npidfile_software = {d}/var/run/sr.pid\npidfile_instance = {d}/var/run/cp.pid\npidfile_report = {d}/var/run/ur.pid\n\n[slapformat]\npartition_amount = {partitions}\ncomputer_xml = {d}/var/slapos.xml\ninterface_name = lo\ncreate_tap = false\n\n[slapproxy]\nhost = 127.0.0.1\nport = {port}\ndatabase_uri = {d}/var/proxy.db\n",
            venv = venv.display()
        ),
    )
    .unwrap();
    let client_cfg = dir.join("etc/slapos-client.cfg");
    std::fs::write(&client_cfg, format!("[slapos]\nmaster_url = http://127.0.0.1:{port}\n")).unwrap();
    (cfg, client_cfg)
}

/// Stops the process `pid` (a daemon a test's node started, not a child):
/// SIGTERM, then waits up to 5 s for it to be gone.
pub fn terminate(pid: i32) {
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    for _ in 0..100 {
        if nix::sys::signal::kill(pid, None).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
