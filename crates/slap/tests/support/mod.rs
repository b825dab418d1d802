//! Test helpers: a canned HTTP server that records what it receives, and the
//! real Python master (`slapos proxy start` from slapos.core 1.26.1).
#![allow(dead_code)]

pub mod exercise;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.body.as_bytes()).into_owned().collect()
    }
}

/// A loopback server answering every request with `status` and `body`.
pub struct Canned {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
}

pub fn canned(status: u16, body: &'static str) -> Canned {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let rec = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            if let Some(r) = read_request(&stream) {
                rec.lock().unwrap().push(r);
            }
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
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Received { method, target, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The project venv (zc.buildout, supervisor, slapos.core 1.26.1):
/// `$SLAPOS_VENV`, or made/reused by `scripts/python-venv.sh`.
pub fn python_venv() -> PathBuf {
    if let Some(v) = std::env::var_os("SLAPOS_VENV") {
        let v = PathBuf::from(v);
        if v.join("bin/slapos").exists() {
            return v;
        }
    }
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/python-venv.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("cannot run scripts/python-venv.sh");
    assert!(out.status.success(), "scripts/python-venv.sh failed: the Python reference venv is required");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The real Python master on a free loopback port with a temporary database;
/// killed (by its PID) when dropped.
pub struct PythonMaster {
    pub url: String,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl PythonMaster {
    pub fn start(computer_id: &str) -> PythonMaster {
        let venv = python_venv();
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
        let child = Command::new(venv.join("bin/slapos"))
            .args(["proxy", "start", "--cfg"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start the Python master");
        let mut master = PythonMaster { url: format!("http://127.0.0.1:{port}"), dir, child };
        wait_for_port(port, &mut master.child, &master.dir.path().join("proxy.log"));
        master
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

impl Drop for PythonMaster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
