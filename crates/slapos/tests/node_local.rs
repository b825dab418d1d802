//! `slapos node software|instance|report|promise` for real, on a local node
//! (format `--local`, no root needed): our master, the real zc.buildout and
//! supervisord of the project venv, the example software release
//! `examples/hello-http`, loopback HTTP only. As root, every command runs as
//! `nobody` (a local node is owned by the user who runs it).
//!
//! Faults: a profile that fails (reported with its log, the other release
//! still built), supervisord killed (services back on the next run), the
//! master down (offline: services kept, nothing destroyed, exit 3),
//! `kill -9` in the middle of a build (the next run resumes).
//!
//! Slow tier: every test needs the project venv (`cargo test -- --ignored
//! needs_venv`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_slapos");
const NOBODY: u32 = 65534;

struct Cloud {
    dir: tempfile::TempDir,
    bin: PathBuf,
    venv: PathBuf,
    cfg: PathBuf,
    client_cfg: PathBuf,
    master: Option<Child>,
    port: u16,
}

fn as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn chown_tree(p: &Path) {
    if as_root() {
        let s = Command::new("chown").arg("-R").arg(format!("{NOBODY}:{NOBODY}")).arg(p).status().unwrap();
        assert!(s.success());
    }
}

impl Cloud {
    fn new(name: &str) -> Cloud {
        let venv = test_support::python_venv();
        let dir = tempfile::Builder::new().prefix(&format!("slapos-node-{name}-")).tempdir().unwrap();
        let d = dir.path();
        for sub in ["etc", "log", "var/run", "opt/slapgrid", "srv/slapgrid", "sr", "bin"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        // the binary and the example, where the node's user can read them
        let bin = d.join("bin/slapos");
        std::fs::copy(BIN, &bin).unwrap();
        let sr = d.join("sr/hello-http");
        let status = Command::new("cp").arg("-r").arg(test_support::repo_root().join("examples/hello-http")).arg(&sr).status().unwrap();
        assert!(status.success());
        let text = std::fs::read_to_string(sr.join("software.cfg.in")).unwrap().replace("@SR_DIR@", sr.to_str().unwrap());
        std::fs::write(sr.join("software.cfg"), text).unwrap();
        let port = test_support::free_port();
        let (cfg, client_cfg) = test_support::local_node_config(d, &venv, port, 2, None);
        // tempdir is 0700: the node's user must reach it
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        chown_tree(d);
        let mut cloud = Cloud { dir, bin, venv, cfg, client_cfg, master: None, port };
        cloud.start_master();
        cloud
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("PATH", format!("{}/bin:/usr/bin:/bin", self.venv.display()))
            .env("HOME", self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        if as_root() {
            c.uid(NOBODY).gid(NOBODY);
        }
        c
    }

    fn start_master(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("log/proxy.out")).unwrap();
        let cfg = self.cfg.to_str().unwrap().to_string();
        let child = self.command(&["proxy", "start", "--cfg", &cfg]).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "the master did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.master = Some(child);
    }

    fn stop_master(&mut self) {
        if let Some(mut m) = self.master.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut full: Vec<&str> = args.to_vec();
        let cfg = if args[0] == "node" { &self.cfg } else { &self.client_cfg };
        full.push("--cfg");
        full.push(cfg.to_str().unwrap());
        self.command(&full).output().unwrap()
    }

    /// Runs and checks the exit code; returns stdout + stderr.
    fn ok(&self, args: &[&str], code: i32) -> String {
        let o = self.run(args);
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert_eq!(o.status.code(), Some(code), "slapos {}:\n{text}", args.join(" "));
        text
    }

    fn sr_url(&self) -> String {
        self.dir.path().join("sr/hello-http/software.cfg").display().to_string()
    }

    fn show(&self) -> serde_json::Value {
        let o = self.command(&["proxy", "show", "--json", "--cfg", self.cfg.to_str().unwrap()]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8_lossy(&o.stdout);
        serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap()
    }

    fn supervisord_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.path().join("srv/slapgrid/var/run/supervisord.pid")).ok()?.trim().parse().ok()
    }

    fn url_of(&self, reference: &str, port: u16) -> String {
        let o = self.run(&["request", reference, &self.sr_url(), "--parameters", &format!("port={port}"), "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["url"].as_str().unwrap_or_default().to_string()
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        // the supervisord this test's node started, with its programs
        if let Some(pid) = self.supervisord_pid() {
            test_support::terminate(pid);
        }
        self.stop_master();
    }
}

/// The processes whose parent is `pid`.
impl Cloud {
    /// The master's accounting as JSON (`/api/…`).
    fn api(&self, path_and_query: &str) -> serde_json::Value {
        let text = get(&format!("http://127.0.0.1:{}{path_and_query}", self.port)).expect("the accounting answers");
        serde_json::from_str(&text).unwrap()
    }

    /// A consumption report left in the partition's `var/xml_report/`,
    /// `node report`, then the hourly usage of the tree and its events.
    fn reports_usage_into_the_accounting(&self, pp: &Path) {
        let reports = pp.join("var/xml_report");
        std::fs::create_dir_all(&reports).unwrap();
        let movement = |resource: &str, q: &str| {
            format!("<movement><resource>{resource}</resource><title>{resource}</title><reference>whatever</reference><quantity>{q}</quantity><price>0.0</price><VAT/><category/></movement>")
        };
        let doc = format!(
            "<?xml version='1.0' encoding='utf-8'?><journal><transaction type=\"Sale Packing List\">{}{}{}</transaction></journal>",
            movement("requests", "3"),
            movement("requests", "4.5"),
            movement("bytes", "1024")
        );
        std::fs::write(reports.join("usage.xml"), doc).unwrap();
        chown_tree(&pp.join("var"));
        self.ok(&["node", "report", "--now"], 0);
        assert!(!reports.join("usage.xml").exists(), "the report was consumed");
        let usage = self.api("/api/usage?scope=tree&id=hello&bucket=hour");
        let total = |resource: &str| -> f64 {
            let series = usage["series"].as_array().unwrap();
            let s = series.iter().find(|s| s["resource"] == resource).unwrap_or_else(|| panic!("no {resource}: {usage}"));
            s["points"].as_array().unwrap().iter().map(|p| p["quantity"].as_f64().unwrap()).sum()
        };
        assert_eq!((total("requests"), total("bytes")), (7.5, 1024.0), "{usage}");
        let events = self.api("/api/events?tree=hello");
        let kinds: Vec<&str> = events["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
        assert!(kinds.contains(&"state") && kinds.contains(&"bang"), "the deployment's reports and the watchdog's bang: {events}");
    }
}

fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1).map(str::to_string)))
                .and_then(|pp| pp.parse::<i32>().ok())
                == Some(pid)
        })
        .collect()
}

fn get(url: &str) -> Option<String> {
    let agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(2))).build().new_agent();
    agent.get(url).call().ok()?.body_mut().read_to_string().ok()
}

fn wait_answer(url: &str) -> Option<String> {
    for _ in 0..50 {
        if let Some(a) = get(url) {
            return Some(a);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
#[ignore = "needs the venv"]
fn needs_venv_deploys_the_example_survives_supervisord_and_master_failures() {
    let mut c = Cloud::new("deploy");
    let http_port = test_support::free_port();
    c.ok(&["node", "format", "--local", "--now"], 0);
    c.ok(&["supply", &c.sr_url(), "local"], 0);
    c.run(&["request", "hello", &c.sr_url(), "--parameters", &format!("port={http_port}")]);
    let out = c.ok(&["node", "software", "--now"], 0);
    assert!(out.contains("installed"), "{out}");
    let sp = std::fs::read_dir(c.dir.path().join("opt/slapgrid")).unwrap().next().unwrap().unwrap().path();
    assert!(sp.join(".completed").exists() && sp.join("instance.cfg").exists());
    let again = c.ok(&["node", "software", "--now"], 0);
    assert!(again.contains("already installed") && !again.contains("Launching buildout"), "{again}");

    let out = c.ok(&["node", "instance", "--now"], 0);
    assert!(out.contains("Processing Computer Partition slappart0."), "{out}");
    let url = c.url_of("hello", http_port);
    // the local node's own loopback /24 (never 127.0.x.x, the system's)
    assert!(url.starts_with("http://127.") && !url.starts_with("http://127.0."), "{url}");
    assert_eq!(wait_answer(&url).as_deref().map(str::trim), Some("Hello from SlapOS"));
    let pp = c.dir.path().join("srv/slapgrid/slappart0");
    assert!(pp.join(".timestamp").exists());
    assert!(c.dir.path().join("srv/slapgrid/etc/supervisord.conf.d/slappart0.conf").exists());
    let result = std::fs::read_to_string(pp.join(".slapgrid/promise/result/check-http.status.json")).unwrap();
    assert!(result.contains("\"failed\": false"), "{result}");
    // the partition's own log: the lines of its span, buildout's output among them
    let log = std::fs::read_to_string(pp.join(".slapgrid/log/instance.log")).unwrap();
    assert!(log.contains("INFO     slapos.grid Processing Computer Partition slappart0."), "{log}");
    assert!(log.contains("slapos.grid [slappart0] ") && !log.contains("slappart1"), "{log}");
    // the master knows: started
    let show = c.show();
    let p0 = show["partitions"].as_array().unwrap().iter().find(|p| p["partition"] == "slappart0").unwrap().clone();
    assert_eq!(p0["reported"]["state"], "started", "{p0}");
    assert_eq!(p0["connection_parameters"]["url"], url.as_str());

    // a second run is a no-op: no buildout
    let noop = c.ok(&["node", "instance", "--now"], 0);
    assert!(!noop.contains("Processing Computer Partition"), "{noop}");
    c.ok(&["node", "promise", "--now"], 0);
    let status = c.ok(&["node", "status"], 0);
    assert!(status.contains("slappart0:http-server-on-watch") && status.contains("RUNNING"), "{status}");

    // the service dies: the watchdog bangs the master, whose new timestamp
    // makes the next run reprocess the partition and start it again
    let server = children_of(c.supervisord_pid().unwrap())
        .into_iter()
        .find(|p| std::fs::read(format!("/proc/{p}/cmdline")).map(|c| String::from_utf8_lossy(&c).contains("http.server")).unwrap_or(false))
        .expect("the service under supervisord");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server), nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pp.join(".slapos_latest_bang_timestamp").exists() {
        assert!(Instant::now() < deadline, "no bang recorded by the watchdog");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = c.ok(&["node", "instance", "--now"], 0);
    assert!(out.contains("Processing Computer Partition slappart0."), "reprocessed after the bang: {out}");
    assert!(wait_answer(&url).is_some());

    // usage: what the partition reports itself goes through `node report`
    // into the master's accounting, summed per hour for its tree
    c.reports_usage_into_the_accounting(&pp);

    // supervisord killed: the next run starts it and the services again
    // (as after an OOM kill or a crash of the machine: its services die too)
    let pid = c.supervisord_pid().expect("supervisord pid file");
    for child in children_of(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), nix::sys::signal::Signal::SIGKILL);
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(get(&url).is_none());
    let out = c.ok(&["node", "instance", "--now"], 0);
    assert!(out.contains("Launching supervisord"), "{out}");
    assert_ne!(c.supervisord_pid(), Some(pid));
    assert!(wait_answer(&url).is_some(), "the service answers again after supervisord was restarted:\n{out}");

    // the master down: offline, services kept, nothing destroyed, exit 3
    c.stop_master();
    let t = Instant::now();
    let out = c.ok(&["node", "instance", "--now"], 3);
    assert!(out.contains(&format!("127.0.0.1:{}", c.port)), "the error names the master: {out}");
    assert!(t.elapsed() < Duration::from_secs(30), "retries are bounded: {:?}", t.elapsed());
    assert!(wait_answer(&url).is_some(), "services keep running while the master is down");
    assert!(pp.join(".timestamp").exists() && pp.join("buildout.cfg").exists(), "nothing destroyed");
    c.ok(&["node", "software", "--now"], 1);
    assert!(sp.join(".completed").exists());
    c.start_master();

    // destruction: instance stopped, then emptied by node report
    c.ok(&["request", "hello", &c.sr_url(), "--state", "destroyed"], 0);
    c.ok(&["node", "instance", "--now"], 0);
    assert!(!c.dir.path().join("srv/slapgrid/etc/supervisord.conf.d/slappart0.conf").exists());
    c.ok(&["node", "report", "--now"], 0);
    assert_eq!(std::fs::read_dir(&pp).unwrap().count(), 0, "destroyed partition emptied");
    assert!(get(&url).is_none(), "the service is gone");
}

#[test]
#[ignore = "needs the venv"]
fn needs_venv_a_broken_profile_is_reported_and_the_other_release_still_builds() {
    let c = Cloud::new("broken");
    c.ok(&["node", "format", "--local", "--now"], 0);
    let broken = c.dir.path().join("sr/broken.cfg");
    std::fs::write(&broken, "[buildout]\nparts = broken\noffline = true\nnewest = false\n\n[broken]\nrecipe = ${missing-section:recipe}\n")
        .unwrap();
    chown_tree(&broken);
    let broken_url = broken.display().to_string();
    c.ok(&["supply", &broken_url, "local"], 0);
    c.ok(&["supply", &c.sr_url(), "local"], 0);
    let out = c.ok(&["node", "software", "--now"], 1);
    assert!(out.contains("Failed to run buildout profile in directory"), "{out}");
    let show = c.show();
    let srs = show["software_releases"].as_array().unwrap();
    let report = |url: &str| srs.iter().find(|s| s["url"] == url).unwrap()["reported"].clone();
    let b = report(&broken_url);
    assert_eq!(b["state"], "error", "{b}");
    let msg = b["message"].as_str().unwrap();
    assert!(msg.starts_with("Failed to run buildout profile in directory '") && msg.contains("missing-section"), "{msg}");
    assert_eq!(report(&c.sr_url())["state"], "available");
}

#[test]
#[ignore = "needs the venv"]
fn needs_venv_kill_9_in_the_middle_of_a_build_then_the_next_run_resumes() {
    let c = Cloud::new("kill9");
    c.ok(&["node", "format", "--local", "--now"], 0);
    c.ok(&["supply", &c.sr_url(), "local"], 0);
    let cfg = c.cfg.to_str().unwrap().to_string();
    let mut child = c
        .command(&["node", "software", "--now", "--cfg", &cfg])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = child.id() as i32;
    // wait until buildout is at work, then kill the whole run
    let root = c.dir.path().join("opt/slapgrid");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&root).map(|mut r| r.next().is_none()).unwrap_or(true) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(400));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(-pgid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = child.wait();
    let sp = std::fs::read_dir(&root).unwrap().next().unwrap().unwrap().path();
    assert!(!sp.join(".completed").exists(), "killed before the end");
    // the pid file of the killed run does not block the next one
    c.ok(&["node", "software", "--now"], 0);
    assert!(sp.join(".completed").exists());
    assert!(sp.join("instance.cfg").exists());
}

/// The managers of `manager_list` on a real node: `portredir` relays a
/// port of the partition's `.slapos-port-redirect` to its service through
/// socat under supervisord; `prerm` runs `etc/prerm/*` before the
/// partition is emptied, and the socat group goes with the partition.
#[test]
#[ignore = "needs the venv"]
fn needs_venv_managers_redirect_ports_and_run_pre_delete_scripts() {
    assert!(
        Path::new("/usr/bin/socat").exists() || Command::new("socat").arg("-V").output().is_ok(),
        "needs socat (scripts/install-deps.sh)"
    );
    let c = Cloud::new("managers");
    let cfg = std::fs::read_to_string(&c.cfg).unwrap().replace("[slapos]\n", "[slapos]\nmanager_list = prerm, portredir\n");
    std::fs::write(&c.cfg, cfg).unwrap();
    let http_port = test_support::free_port();
    c.ok(&["node", "format", "--local", "--now"], 0);
    c.ok(&["supply", &c.sr_url(), "local"], 0);
    c.run(&["request", "hello", &c.sr_url(), "--parameters", &format!("port={http_port}")]);
    c.ok(&["node", "software", "--now"], 0);
    c.ok(&["node", "instance", "--now"], 0);
    let url = c.url_of("hello", http_port);
    assert!(wait_answer(&url).is_some(), "{url}");
    let host = url.trim_start_matches("http://").split(':').next().unwrap().to_string();

    // the partition asks for a redirection (and writes nonsense beside it)
    let pp = c.dir.path().join("srv/slapgrid/slappart0");
    let relay = test_support::free_port();
    let redirect = format!(
        r#"[{{"srcPort": {relay}, "srcAddress": "127.0.0.1", "destPort": {http_port}, "destAddress": "{host}"}}, {{"srcPort": "22; reboot", "destPort": 1}}]"#
    );
    std::fs::write(pp.join(".slapos-port-redirect"), redirect).unwrap();
    std::fs::create_dir_all(pp.join("etc/prerm")).unwrap();
    let mark = c.dir.path().join("prerm-ran");
    std::fs::write(pp.join("etc/prerm/save-data"), format!("#!/bin/sh\nid -u > {}\n", mark.display())).unwrap();
    std::fs::set_permissions(pp.join("etc/prerm/save-data"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    chown_tree(&pp);
    let out = c.ok(&["node", "instance", "--now"], 0);
    assert!(out.contains("redirection 1: bad srcPort"), "the bad entry is named: {out}");
    let conf = c.dir.path().join("srv/slapgrid/etc/supervisord.conf.d/slappart0-socat.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains(&format!("TCP4-LISTEN:{relay},bind=127.0.0.1,fork TCP4:{host}:{http_port}")), "{text}");
    let relayed = wait_answer(&format!("http://127.0.0.1:{relay}/"));
    assert_eq!(relayed.as_deref().map(str::trim), Some("Hello from SlapOS"), "the service answers through socat");
    // portredir taken out of manager_list: its group goes on the next run; back in, it comes back
    let with = std::fs::read_to_string(&c.cfg).unwrap();
    std::fs::write(&c.cfg, with.replace("manager_list = prerm, portredir\n", "manager_list = prerm\n")).unwrap();
    c.ok(&["node", "instance", "--now"], 0);
    assert!(!conf.exists(), "the group of a manager no longer listed is removed");
    std::fs::write(&c.cfg, with).unwrap();
    c.ok(&["node", "instance", "--now"], 0);
    assert!(conf.exists());
    // the partition takes its file away: the group goes; puts it back: it comes back
    let file = pp.join(".slapos-port-redirect");
    let kept = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    c.ok(&["node", "instance", "--now"], 0);
    assert!(!conf.exists(), "no file, no redirection");
    std::fs::write(&file, kept).unwrap();
    chown_tree(&pp);
    c.ok(&["node", "instance", "--now"], 0);
    assert!(conf.exists());

    // destruction: the pre-delete script runs as the partition's user, then the partition is emptied
    c.ok(&["request", "hello", &c.sr_url(), "--state", "destroyed"], 0);
    c.ok(&["node", "instance", "--now"], 0);
    assert!(!conf.exists(), "the socat group goes with the partition's");
    assert!(get(&format!("http://127.0.0.1:{relay}/")).is_none());
    assert!(!mark.exists(), "not before the destruction");
    let out = c.ok(&["node", "report", "--now"], 0);
    assert!(out.contains("Running pre-delete script etc/prerm/save-data"), "{out}");
    let uid = std::fs::read_to_string(&mark).expect("the pre-delete script ran");
    let expected = if as_root() { NOBODY } else { nix::unistd::getuid().as_raw() };
    assert_eq!(uid.trim(), expected.to_string(), "as the partition's user");
    assert_eq!(std::fs::read_dir(&pp).unwrap().count(), 0, "then emptied");
}
