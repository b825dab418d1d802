//! A headless Chromium driven over WebDriver (the `needs_browser` tier):
//! Debian's `chromium` and `chromium-driver`, a chromedriver of our own on a
//! free loopback port, a fresh profile, and [`fantoccini`] as the client.
//! The browser's log (console errors, failed loads) is read from
//! chromedriver; screenshots go under `target/panel-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};

/// Where chromedriver and chromium are on Debian.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// Fails the test with a clear message when the browser is missing.
pub fn require_browser() {
    for p in [CHROMEDRIVER, CHROMIUM] {
        assert!(
            Path::new(p).is_file(),
            "this test needs Debian's chromium and chromium-driver ({p} is missing): `apt-get install chromium chromium-driver` \
             (scripts/install-deps.sh), or run the fast tier only (`cargo test`)"
        );
    }
}

/// A chromedriver of ours, and the browsers it starts; everything is
/// killed by PID when dropped (chromedriver's descendants first).
pub struct Browser {
    /// The WebDriver client (one session).
    pub client: Client,
    /// `http://127.0.0.1:<port>` of our chromedriver.
    driver_url: String,
    _driver: DriverGuard,
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium `width` px wide.
    pub async fn start(width: u32, height: u32) -> Browser {
        require_browser();
        let port = crate::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start chromedriver");
        let driver_url = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().unwrap();
        let guard = DriverGuard(Some(driver));
        wait_for(port);
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--hide-scrollbars".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.as_object().unwrap().clone())
            .connect(&driver_url)
            .await
            .expect("cannot open a WebDriver session with chromium");
        let shots = crate::repo_root().join("target/panel-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        let browser = Browser { client, driver_url, _driver: guard, _profile: profile, shots };
        browser.client.set_window_size(width, height).await.expect("cannot size the window");
        browser
    }

    /// The browser's log since the last call: (level, message).
    pub async fn log(&self) -> Vec<(String, String)> {
        let id = self.client.session_id().await.ok().flatten().unwrap_or_default();
        let url = format!("{}/session/{id}/se/log", self.driver_url);
        let answer: Value = ureq::post(&url)
            .header("Content-Type", "application/json")
            .send(json!({"type": "browser"}).to_string())
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or(Value::Null);
        answer["value"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| (e["level"].as_str().unwrap_or("").to_string(), e["message"].as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The browser's errors since the last call (SEVERE entries) but those
    /// `allowed` says are expected.
    pub async fn errors(&self, allowed: impl Fn(&str) -> bool) -> Vec<String> {
        self.log().await.into_iter().filter(|(level, m)| level == "SEVERE" && !allowed(m)).map(|(_, m)| m).collect()
    }

    /// Saves a screenshot of the window as `<name>.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("cannot take a screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// The document's width and the window's: more means a horizontal scroll.
    pub async fn widths(&self) -> (u64, u64) {
        let v = self
            .client
            .execute("return [document.scrollingElement.scrollWidth, window.innerWidth];", vec![])
            .await
            .expect("cannot measure the page");
        (v[0].as_u64().unwrap_or(u64::MAX), v[1].as_u64().unwrap_or(0))
    }

    /// Waits (at most `limit`) until `script` (a JavaScript expression)
    /// is true in the page; false on timeout.
    pub async fn wait_until(&self, script: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Value::Bool(true)) = self.client.execute(&format!("return !!({script});"), vec![]).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// Ends the session, then stops chromedriver and what it started.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// Kills chromedriver and its descendants (the browsers it started) by
/// PID when dropped, even when the test panicked.
struct DriverGuard(Option<Child>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            for pid in descendants(child.id()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The processes below `root` (from /proc), deepest last.
fn descendants(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // the parent is the 2nd field after the command (which may hold spaces)
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

fn wait_for(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("chromedriver did not listen on {port} within 20 s");
}
