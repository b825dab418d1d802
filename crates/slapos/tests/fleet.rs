//! A fleet, for real: 10 nodes (our `slapos node format|software|instance`,
//! each with its own configuration, roots, `slaptest…` users and network
//! namespace) against two masters (`slapos proxy start`) on one PostgreSQL,
//! behind Debian's HAProxy configured by the README's example ("Large
//! sites"). Every node gets instances of the e2e software release
//! (`tests/data/e2e-sr/`); one master is killed (-9) while the nodes deploy
//! them; HAProxy marks it down and the nodes carry on through the other: every
//! instance reaches `started` with its connection parameters, and its
//! service answers.
//!
//! The network: a hub namespace holds the masters (127.0.0.1:8001 and :8002
//! there) and HAProxy (`:8080`, on the hub's bridge `br0`, 172.31.237.1/24);
//! each node's namespace is plugged into that bridge by a veth pair
//! (`up0`, 172.31.237.(10+i)/24) beside its own `br0` for its partitions,
//! so `master_url = http://172.31.237.1:8080`. PostgreSQL listens on a unix
//! socket only (`test_support::postgres`), which the masters reach through
//! the file system.
//!
//! The software release is built once: the nodes share one software root and
//! one software user (node 0 builds it, the others find it installed and
//! report it available), as nodes sharing a read-only software volume would.
//!
//! Clean-up, even on failure ([`Fleet`]'s `Drop`): the nodes' supervisords,
//! HAProxy and the masters stopped by pid, anything left in the namespaces
//! killed, the namespaces, users and work directory removed (kept with
//! `SLAPOS_E2E_KEEP=1`), PostgreSQL stopped.
//!
//! Needs root, `ip`, `haproxy`, PostgreSQL and the venv; run by the e2e step
//! of `scripts/test.sh` (`cargo test -p slapos --test fleet -- --ignored
//! --nocapture`); prints the duration of each phase.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};
use slapos_proxy::store::{PgStore, ReportRow, Store, Tx};
use test_support::netns::{BridgeNamespace, TestUsers};
use test_support::postgres::TestPostgres;

const OURS: &str = env!("CARGO_BIN_EXE_slapos");
const SR_DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/e2e-sr");
const NODES: usize = 10;
const PARTITIONS: usize = 3;
/// Instances per node (a partition of each node stays free).
const INSTANCES: usize = 2;
const HUB_ADDRESS: &str = "172.31.237.1";
const MASTER_URL: &str = "http://172.31.237.1:8080";
/// The masters, as the README's HAProxy example names them.
const MASTERS: [(&str, u16); 2] = [("master-a", 8001), ("master-b", 8002)];
/// The README example's stats socket, replaced by one in the work directory.
const README_SOCKET: &str = "/run/haproxy/slapos.sock";

#[test]
#[ignore = "needs root"]
fn needs_root_e2e_fleet_ten_nodes_two_masters_behind_haproxy() {
    let mut fleet = Fleet::new();
    fleet.phase("format", |f| f.format_all());
    fleet.phase("supply and request", |f| f.supply_and_request());
    fleet.phase("software", |f| f.build_software());
    let killed_after = fleet.phase("instance, master-a killed", |f| f.deploy_and_kill());
    fleet.phase("converge", |f| f.converge());
    fleet.phase("check", |f| f.check_everything());
    fleet.print_timings(killed_after);
}

/// Everything a run made, removed by `Drop` in reverse order.
struct Fleet {
    venv: PathBuf,
    work: PathBuf,
    prefix: String,
    hub: Option<BridgeNamespace>,
    nodes: Vec<BridgeNamespace>,
    users: TestUsers,
    masters: Vec<Option<Child>>,
    haproxy: Option<Child>,
    pg: Option<TestPostgres>,
    uri: String,
    timings: Vec<(String, Duration)>,
    started: Instant,
    /// The length of master-b's output when master-a was killed.
    b_log_at_kill: usize,
}

impl Fleet {
    fn new() -> Fleet {
        let venv = preconditions();
        let pid = std::process::id();
        let base36 = |n: u32| char::from_digit(n % 36, 36).unwrap();
        let prefix = format!("slaptestf{}{}", base36(pid / 36), base36(pid));
        let users = fleet_users(&prefix);
        let work = tempfile::Builder::new().prefix("slapos-fleet-").tempdir().unwrap().keep();
        let pg = TestPostgres::start();
        let uri = pg.database("fleet");
        let mut fleet = Fleet {
            venv,
            work,
            prefix,
            hub: None,
            nodes: Vec::new(),
            users: TestUsers(users),
            masters: Vec::new(),
            haproxy: None,
            pg: Some(pg),
            uri,
            timings: Vec::new(),
            started: Instant::now(),
            b_log_at_kill: 0,
        };
        eprintln!("[fleet] work dir {}, users {}*", fleet.work.display(), fleet.prefix);
        fleet.phase("set-up", |f| {
            f.lay_out();
            f.make_network();
            f.start_masters();
            f.start_haproxy();
        });
        fleet
    }

    /// Runs one timed phase.
    fn phase<T>(&mut self, name: &str, f: impl FnOnce(&mut Fleet) -> T) -> T {
        let start = Instant::now();
        let out = f(self);
        self.timings.push((name.to_string(), start.elapsed()));
        eprintln!("[fleet] {name}: {:.1} s", start.elapsed().as_secs_f64());
        out
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.work.join(relative)
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.path(&format!("node{i}"))
    }

    fn sr_url(&self) -> String {
        self.path("sr/software.cfg").display().to_string()
    }

    /// The work tree (readable by the node users), the release, the
    /// configurations of the masters, the client and the nodes.
    fn lay_out(&self) {
        fs::set_permissions(&self.work, fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir_all(self.path("log")).unwrap();
        copy_tree(Path::new(SR_DATA), &self.path("sr"));
        let sr = self.path("sr");
        let profile = fs::read_to_string(sr.join("software.cfg.in")).unwrap();
        fs::write(sr.join("software.cfg"), profile.replace("@SR_DIR@", sr.to_str().unwrap())).unwrap();
        for (name, port) in MASTERS {
            let cfg =
                format!("[slapos]\ncomputer_id = COMP-0\n\n[slapproxy]\nhost = 127.0.0.1\nport = {port}\ndatabase_uri = {}\n", self.uri);
            fs::write(self.path(&format!("{name}.cfg")), cfg).unwrap();
        }
        fs::write(self.path("slapos-client.cfg"), format!("[slapos]\nmaster_url = {MASTER_URL}\n\n[slapconsole]\n")).unwrap();
        for i in 0..NODES {
            for dir in ["etc", "log", "var/run"] {
                fs::create_dir_all(self.node_dir(i).join(dir)).unwrap();
            }
            fs::write(self.node_dir(i).join("etc/slapos.cfg"), self.node_configuration(i)).unwrap();
        }
    }

    /// Node `i`'s slapos.cfg: its own roots and users, the shared software
    /// root and software user, the master through HAProxy.
    fn node_configuration(&self, i: usize) -> String {
        let node = self.node_dir(i);
        let (w, n, p) = (self.work.display(), node.display(), &self.prefix);
        format!(
            "[slapos]\ncomputer_id = COMP-{i}\nmaster_url = {MASTER_URL}\n\
             software_root = {w}/opt/slapgrid\ninstance_root = {n}/srv/slapgrid\n\
             pidfile_software = {n}/var/run/slapos-node-software.pid\n\
             pidfile_instance = {n}/var/run/slapos-node-instance.pid\n\
             pidfile_report = {n}/var/run/slapos-node-report.pid\n\n\
             [slapformat]\ninterface_name = br0\npartition_amount = {PARTITIONS}\n\
             computer_xml = {n}/var/slapos.xml\ncomputer_json = {n}/var/slapos.json\n\
             log_file = {n}/log/slapos-node-format.log\npartition_base_name = slappart\n\
             user_base_name = {p}{i}u\nsoftware_user = {p}soft\ntap_base_name = {p}{i}t\n\
             create_tap = false\nipv4_local_network = 10.0.0.0/16\n"
        )
    }

    /// The hub (masters, HAProxy) and one namespace per node plugged into it.
    fn make_network(&mut self) {
        let pid = std::process::id();
        let hub = BridgeNamespace::create(&format!("slaptest-fh{pid}"), "fd00:f1ee::1/64");
        run(Command::new("ip").args(["-n", hub.name(), "addr", "add", &format!("{HUB_ADDRESS}/24"), "dev", "br0"]));
        for i in 0..NODES {
            let node = BridgeNamespace::create(&format!("slaptest-f{i}n{pid}"), &format!("fd00:f1ee:{i}::1/64"));
            hub.plug(node.name(), &format!("node{i}"), &format!("172.31.237.{}/24", 10 + i));
            self.nodes.push(node);
        }
        self.hub = Some(hub);
    }

    fn hub_name(&self) -> &str {
        self.hub.as_ref().expect("the hub namespace").name()
    }

    /// `program args…` in namespace `ns`, the venv first on PATH.
    fn command_in(&self, ns: &str, program: &Path) -> Command {
        let mut command = Command::new("ip");
        let path = format!("{}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", self.venv.display());
        command.args(["netns", "exec", ns]).arg(program).env("PATH", path).current_dir(&self.work).stdin(Stdio::null());
        command
    }

    fn start_masters(&mut self) {
        for (name, port) in MASTERS {
            let out = File::create(self.path(&format!("log/{name}.out"))).unwrap();
            let mut command = self.command_in(self.hub_name(), Path::new(OURS));
            command.args(["proxy", "start", "--cfg"]).arg(self.path(&format!("{name}.cfg")));
            // `ip netns exec` execs the program: this child is the master
            let child = command.stdout(out.try_clone().unwrap()).stderr(out).spawn().unwrap();
            self.masters.push(Some(child));
            let hub = self.hub_name().to_string();
            wait_for(&format!("{name} listening"), Duration::from_secs(30), || {
                in_netns(&hub, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
            });
        }
    }

    /// HAProxy with the README's configuration, until it sees both masters up.
    fn start_haproxy(&mut self) {
        let cfg = self.path("haproxy.cfg");
        let socket = self.path("haproxy.sock");
        fs::write(&cfg, readme_haproxy_config().replace(README_SOCKET, socket.to_str().unwrap())).unwrap();
        let check = Command::new("haproxy").args(["-c", "-q", "-f"]).arg(&cfg).output().unwrap();
        assert!(check.status.success(), "the README's HAProxy configuration is refused: {}", String::from_utf8_lossy(&check.stderr));
        let out = File::create(self.path("log/haproxy.out")).unwrap();
        let mut command = self.command_in(self.hub_name(), Path::new("/usr/sbin/haproxy"));
        command.args(["-db", "-f"]).arg(&cfg);
        self.haproxy = Some(command.stdout(out.try_clone().unwrap()).stderr(out).spawn().unwrap());
        wait_for("HAProxy seeing both masters up", Duration::from_secs(30), || {
            let states = server_states(&socket);
            MASTERS.iter().all(|(name, _)| states.get(*name).is_some_and(|s| s == "UP"))
        });
    }

    /// `slapos node SUB --cfg <node i> ARGS…` in node `i`'s namespace: its
    /// exit code (the output goes to the node's `log/<name>.log`).
    fn node(&self, i: usize, name: &str, args: &[&str]) -> Option<i32> {
        let cfg = self.node_dir(i).join("etc/slapos.cfg");
        let log = File::create(self.node_dir(i).join(format!("log/{name}.log"))).unwrap();
        let mut command = self.command_in(self.nodes[i].name(), Path::new(OURS));
        command.arg("node").arg(args[0]).arg("--cfg").arg(&cfg).args(&args[1..]);
        command.stdout(log.try_clone().unwrap()).stderr(log).status().unwrap().code()
    }

    fn node_log(&self, i: usize, name: &str) -> String {
        let text = fs::read_to_string(self.node_dir(i).join(format!("log/{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Runs `slapos node ARGS…` on the nodes `which` at once; their exit codes.
    fn on_nodes(&self, which: &[usize], name: &str, args: &[&str]) -> Vec<(usize, Option<i32>)> {
        std::thread::scope(|s| {
            let handles: Vec<_> = which.iter().map(|&i| (i, s.spawn(move || self.node(i, name, args)))).collect();
            handles.into_iter().map(|(i, h)| (i, h.join().unwrap())).collect()
        })
    }

    /// Asserts that every run of `results` exited 0.
    fn all_ok(&self, results: &[(usize, Option<i32>)], name: &str) {
        for &(i, code) in results {
            assert_eq!(code, Some(0), "node {i}: `{name}` exited {code:?}:\n{}", self.node_log(i, name));
        }
    }

    /// `slapos COMMAND --cfg slapos-client.cfg ARGS…` from the hub, through HAProxy.
    fn client(&self, args: &[&str]) {
        let mut command = self.command_in(self.hub_name(), Path::new(OURS));
        let out = command.arg(args[0]).arg("--cfg").arg(self.path("slapos-client.cfg")).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "slapos {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Node 0 formats first (it creates the shared software user), then the others at once.
    fn format_all(&mut self) {
        let results = self.on_nodes(&[0], "format", &["format", "--now"]);
        self.all_ok(&results, "format");
        let rest: Vec<usize> = (1..NODES).collect();
        let results = self.on_nodes(&rest, "format", &["format", "--now"]);
        self.all_ok(&results, "format");
        let store = self.store();
        let partitions = store.read(|tx: &mut dyn Tx| tx.partitions(None)).unwrap();
        assert_eq!(partitions.len(), NODES * PARTITIONS, "every node's format report reached the masters through HAProxy");
    }

    fn supply_and_request(&mut self) {
        let sr = self.sr_url();
        for i in 0..NODES {
            self.client(&["supply", &sr, &format!("COMP-{i}")]);
            for k in 0..INSTANCES {
                let greeting = format!("greeting={}", greeting(i, k));
                let guid = format!("computer_guid=COMP-{i}");
                self.client(&["request", &title(i, k), &sr, "--node", &guid, "--parameters", &greeting]);
            }
        }
    }

    /// Node 0 builds the shared release; the others find it installed.
    fn build_software(&mut self) {
        let results = self.on_nodes(&[0], "software", &["software", "--now"]);
        self.all_ok(&results, "software");
        let rest: Vec<usize> = (1..NODES).collect();
        let results = self.on_nodes(&rest, "software", &["software", "--now"]);
        self.all_ok(&results, "software");
        let reports = self.last_reports();
        let state = reports.get(&("software".to_string(), "COMP-0".to_string(), self.sr_url())).map(|r| r.state.as_str());
        assert_eq!(state, Some("available"), "node 0 did not report the shared release available");
        for i in 1..NODES {
            let log = self.node_log(i, "software");
            assert!(log.contains("is already installed"), "node {i} did not find the shared release installed:\n{log}");
        }
    }

    /// Every node deploys at once; master-a is killed -9 as soon as the
    /// first instance published its connection parameters. Gives the seconds
    /// from the start of the phase to the kill.
    fn deploy_and_kill(&mut self) -> f64 {
        let start = Instant::now();
        let all: Vec<usize> = (0..NODES).collect();
        let (results, killed_after) = std::thread::scope(|s| {
            let runs = s.spawn(|| self.on_nodes(&all, "instance-1", &["instance", "--now"]));
            let store = self.store();
            let published =
                || store.read(|tx: &mut dyn Tx| tx.partitions(None)).unwrap().iter().any(|p| has_url(p.connection_xml.as_deref()));
            wait_for("a first instance publishing its connection parameters", Duration::from_secs(600), published);
            let a = self.masters[0].as_ref().unwrap().id() as i32;
            kill(Pid::from_raw(a), Signal::SIGKILL).unwrap();
            let b_log = fs::metadata(self.path("log/master-b.out")).map_or(0, |m| m.len() as usize);
            let killed_after = start.elapsed().as_secs_f64();
            eprintln!("[fleet] master-a (pid {a}) killed -9 after {killed_after:.1} s of deployment");
            (runs.join().unwrap(), (killed_after, b_log))
        });
        let (killed_after, b_log) = killed_after;
        self.b_log_at_kill = b_log;
        let _ = self.masters[0].take().map(|mut a| a.wait());
        let failed: Vec<_> = results.iter().filter(|r| r.1 != Some(0)).collect();
        eprintln!("[fleet] first instance runs: {} of {NODES} exited 0, others {failed:?}", NODES - failed.len());
        self.say_why(&results, "instance-1");
        let states = server_states(&self.path("haproxy.sock"));
        assert_eq!(states.get("master-a").map(String::as_str), Some("DOWN"), "HAProxy did not mark the killed master down: {states:?}");
        assert_eq!(states.get("master-b").map(String::as_str), Some("UP"), "HAProxy lost the living master: {states:?}");
        killed_after
    }

    /// Runs `node instance` again on every node (as cron would) until all
    /// instances are published and reported started, then once more on
    /// every node: all through master-b alone, all exit 0.
    fn converge(&mut self) {
        for round in 2..=5 {
            let pending: Vec<usize> = (0..NODES).filter(|&i| !self.node_done(i)).collect();
            if pending.is_empty() {
                break;
            }
            eprintln!("[fleet] round {round}: nodes {pending:?} not done yet");
            let name = format!("instance-{round}");
            let results = self.on_nodes(&pending, &name, &["instance", "--now"]);
            self.say_why(&results, &name);
        }
        let all: Vec<usize> = (0..NODES).collect();
        let results = self.on_nodes(&all, "instance-last", &["instance", "--now"]);
        self.all_ok(&results, "instance-last");
    }

    /// The error lines of the runs of `results` that failed (a run may fail
    /// and the next one succeed, as under cron: they are printed, not asserted).
    fn say_why(&self, results: &[(usize, Option<i32>)], name: &str) {
        for &(i, code) in results.iter().filter(|r| r.1 != Some(0)) {
            let text = fs::read_to_string(self.node_dir(i).join(format!("log/{name}.log"))).unwrap_or_default();
            let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR") || l.contains("rror:")).take(5).collect();
            eprintln!("[fleet] node {i}: `{name}` exited {code:?}:\n  {}", errors.join("\n  "));
        }
    }

    /// Whether node `i`'s instances are published and reported started.
    fn node_done(&self, i: usize) -> bool {
        let reports = self.last_reports();
        let partitions = self.store().read(|tx: &mut dyn Tx| tx.partitions(Some(&format!("COMP-{i}")))).unwrap();
        let busy: Vec<_> = partitions.iter().filter(|p| p.slap_state == "busy").collect();
        busy.len() == INSTANCES
            && busy.iter().all(|p| {
                let key = ("partition".to_string(), p.computer_reference.clone(), p.reference.clone());
                has_url(p.connection_xml.as_deref()) && reports.get(&key).is_some_and(|r| r.state == "started")
            })
    }

    /// Every instance: on the computer asked for, reported started, its
    /// connection parameters published, its service answering its greeting.
    fn check_everything(&mut self) {
        let store = self.store();
        let partitions = store.read(|tx: &mut dyn Tx| tx.partitions(None)).unwrap();
        let reports = self.last_reports();
        for i in 0..NODES {
            for k in 0..INSTANCES {
                let t = title(i, k);
                let p = partitions.iter().find(|p| p.partition_reference.as_deref() == Some(t.as_str()));
                let p = p.unwrap_or_else(|| panic!("instance {t} was never allocated"));
                assert_eq!(p.computer_reference, format!("COMP-{i}"), "{t} is on the wrong computer");
                let key = ("partition".to_string(), p.computer_reference.clone(), p.reference.clone());
                let state = reports.get(&key).map(|r| r.state.as_str());
                assert_eq!(state, Some("started"), "{t} ({}) is not reported started", p.reference);
                let xml = p.connection_xml.as_deref().unwrap_or_default();
                let params = slap::instance_xml::xml_to_dict(xml).unwrap_or_else(|e| panic!("{t}: connection XML: {e}: {xml}"));
                let get = |k: &str| params.get(k).cloned().flatten().unwrap_or_default();
                assert_eq!(get("greeting"), greeting(i, k), "{t}'s published greeting");
                let url = get("url");
                let answer = in_netns(self.nodes[i].name(), || http_get(&url));
                assert_eq!(answer.as_deref().map(str::trim), Ok(greeting(i, k).as_str()), "{t}'s service at {url}");
            }
        }
        let out = |name: &str| fs::read_to_string(self.path(&format!("log/{name}.out"))).unwrap_or_default();
        let (a, b) = (slap_calls(&out("master-a")), slap_calls(&out("master-b")));
        let b_after = slap_calls(out("master-b").get(self.b_log_at_kill..).unwrap_or_default());
        eprintln!("[fleet] SLAP calls answered: master-a {a} (until killed), master-b {b} ({b_after} after the kill)");
        assert!(a > 0 && b_after > 0, "both masters served before the kill, master-b after it (a {a}, b {b}, b after {b_after})");
    }

    fn store(&self) -> PgStore {
        PgStore::open_read_only(&self.uri).unwrap()
    }

    /// The last report of each (kind, computer, reference).
    fn last_reports(&self) -> BTreeMap<(String, String, String), ReportRow> {
        let rows = self.store().read(|tx: &mut dyn Tx| tx.last_reports()).unwrap();
        rows.into_iter().map(|r| ((r.kind.clone(), r.computer_reference.clone(), r.reference.clone()), r)).collect()
    }

    fn print_timings(&self, killed_after: f64) {
        let mut table =
            format!("== fleet: {NODES} nodes × {PARTITIONS} partitions, {} instances, 2 masters, HAProxy, PostgreSQL\n", NODES * INSTANCES);
        for (phase, took) in &self.timings {
            table += &format!("{phase:<28} {:>7.1} s\n", took.as_secs_f64());
        }
        table += &format!(
            "{:<28} {:>7.1} s (master-a killed {killed_after:.1} s into the deployment)\n",
            "total",
            self.started.elapsed().as_secs_f64()
        );
        fs::write(self.path("log/timings.txt"), &table).unwrap();
        eprint!("{table}");
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // the nodes' supervisords (daemons, not our children) stop together
        let supervisords: Vec<Pid> = (0..self.nodes.len())
            .filter_map(|i| fs::read_to_string(self.node_dir(i).join("srv/slapgrid/var/run/supervisord.pid")).ok())
            .filter_map(|t| t.trim().parse::<i32>().ok())
            .map(Pid::from_raw)
            .filter(|&pid| kill(pid, Signal::SIGTERM).is_ok())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while supervisords.iter().any(|&pid| kill(pid, None).is_ok()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for mut child in self.haproxy.take().into_iter().chain(self.masters.iter_mut().filter_map(Option::take)) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let namespaces: Vec<String> = self.nodes.iter().chain(self.hub.iter()).map(|n| n.name().to_string()).collect();
        for ns in &namespaces {
            kill_leftovers(ns);
        }
        self.nodes.clear();
        drop(self.hub.take());
        drop(std::mem::replace(&mut self.users, TestUsers(Vec::new())));
        drop(self.pg.take());
        if std::env::var("SLAPOS_E2E_KEEP").as_deref() == Ok("1") {
            eprintln!("[fleet] work dir kept: {}", self.work.display());
        } else {
            let _ = fs::remove_dir_all(&self.work);
        }
    }
}

fn title(node: usize, k: usize) -> String {
    format!("fleet-{node}-{k}")
}

fn greeting(node: usize, k: usize) -> String {
    format!("hello-{node}-{k}")
}

/// The SLAP calls a master answered 200 (its access lines), health checks
/// (`GET /`) left out.
fn slap_calls(out: &str) -> usize {
    out.lines().filter(|l| l.contains(" HTTP/1.1\" 200 ") && !l.contains("\"GET / HTTP")).count()
}

fn has_url(connection_xml: Option<&str>) -> bool {
    connection_xml.and_then(|x| slap::instance_xml::xml_to_dict(x).ok()).is_some_and(|d| d.get("url").is_some_and(Option::is_some))
}

/// The users the nodes' formats will make (checked free first): the shared
/// software user and each node's partition users.
fn fleet_users(prefix: &str) -> Vec<String> {
    let mut users = vec![format!("{prefix}soft")];
    users.extend((0..NODES).flat_map(|i| (0..PARTITIONS).map(move |k| format!("{prefix}{i}u{k}"))));
    for u in &users {
        let taken = User::from_name(u).ok().flatten().is_some() || nix::unistd::Group::from_name(u).ok().flatten().is_some();
        assert!(!taken, "user or group {u} already exists (left by an interrupted run? `userdel {u}; groupdel {u}`)");
    }
    users
}

/// The ```haproxy block of the README's "Large sites".
fn readme_haproxy_config() -> String {
    let readme = fs::read_to_string(test_support::repo_root().join("README.md")).unwrap();
    let start = readme.find("```haproxy\n").expect("the README has no ```haproxy example") + "```haproxy\n".len();
    let end = start + readme[start..].find("```").unwrap();
    // the example is indented in a list item
    readme[start..end].lines().map(|l| l.strip_prefix("   ").unwrap_or(l)).collect::<Vec<_>>().join("\n") + "\n"
}

/// Server name → status (`UP`, `DOWN`, …) of HAProxy's `show stat`.
fn server_states(socket: &Path) -> BTreeMap<String, String> {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return BTreeMap::new();
    };
    let mut csv = String::new();
    if stream.write_all(b"show stat\n").is_err() || stream.read_to_string(&mut csv).is_err() {
        return BTreeMap::new();
    }
    let header: Vec<&str> = csv.lines().next().unwrap_or_default().trim_start_matches("# ").split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let (Some(sv), Some(status)) = (column("svname"), column("status")) else {
        return BTreeMap::new();
    };
    csv.lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > status)
        .map(|f| (f[sv].to_string(), f[status].to_string()))
        .collect()
}

/// Root, the programs, and a venv every node user can run.
fn preconditions() -> PathBuf {
    test_support::require_root();
    for tool in ["ip", "haproxy", "runuser", "userdel", "groupdel"] {
        let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].iter().any(|d| Path::new(d).join(tool).is_file());
        assert!(found, "needs the program `{tool}` (iproute2, haproxy, util-linux, passwd: scripts/install-deps.sh)");
    }
    let venv = test_support::python_venv();
    let imports = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(venv.join("bin/python3"))
        .args(["-c", "import zc.buildout, supervisor"])
        .output()
        .unwrap();
    assert!(imports.status.success(), "the venv {} cannot be used by an unprivileged user", venv.display());
    venv
}

/// Polls `ready` every 100 ms; fails the test after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `f` on a thread that joined the network namespace `ns`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let handle = File::open(format!("/run/netns/{ns}")).unwrap_or_else(|e| panic!("namespace {ns}: {e}"));
    std::thread::scope(|scope| {
        let thread = scope.spawn(move || {
            // SAFETY: setns(2) with an open namespace file; it changes the
            // network namespace of this thread only
            let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "cannot join the namespace {ns}: {}", std::io::Error::last_os_error());
            f()
        });
        thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn http_get(url: &str) -> Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into();
    let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
    response.body_mut().read_to_string().map_err(|e| e.to_string())
}

/// Whatever still runs in the namespace `ns` was started by this run.
fn kill_leftovers(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

#[track_caller]
fn run(command: &mut Command) {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
            fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
}
