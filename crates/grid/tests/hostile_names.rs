//! Hostile names (issue 11, findings 1, 3, 4, and the privilege drop): a
//! fake master serves crafted full computer information, and the node's own
//! `node software|instance|report` run against it (the library functions
//! the `slapos` binary calls). Nothing outside the node's roots may change;
//! invalid names are refused and reported.
//!
//! Tiers (see the project's test convention): `node_software_*` needs
//! nothing; `needs_venv_*` need the project venv (its supervisord); the
//! `needs_root_*` ones need root and the venv, and create `slaptest-*` users
//! (removed on drop, even on failure).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slap::marshal::Value;
use slap::model::{Computer, ComputerPartition, InstanceState, SoftwareRelease};
use slapos_grid::config::{NodeConfig, NodeOverrides};
use slapos_grid::instance::{InstanceOptions, InstanceRun, RunStatus};
use slapos_grid::node::Node;
use slapos_grid::software::ReleaseOutcome;
use test_support::tree::{differences, snapshot};

const COMPUTER: &str = "COMP-HOSTILE";

// ---------------------------------------------------------------- the master

/// A loopback master serving one computer document and recording every
/// request (the node's reports are its POSTs).
struct FakeMaster {
    url: String,
    received: Arc<Mutex<Vec<test_support::Received>>>,
}

impl FakeMaster {
    fn start(computer: &Computer) -> FakeMaster {
        let doc = slap::marshal::encode(&computer.to_value()).unwrap();
        let master = test_support::serve(move |r| match (r.method.as_str(), r.path()) {
            ("GET", "getFullComputerInformation") => (200, doc.clone()),
            ("GET", _) => (404, String::new()),
            _ => (200, String::new()),
        });
        FakeMaster { url: master.url, received: master.received }
    }

    /// Every POST received: `(method, form)`.
    fn posts(&self) -> Vec<(String, BTreeMap<String, String>)> {
        let received = self.received.lock().unwrap();
        received.iter().filter(|r| r.method != "GET").map(|r| (r.path().to_string(), r.form().into_iter().collect())).collect()
    }

    /// The `error_log`/`message` of every error report, with its partition.
    fn errors(&self) -> Vec<(String, String)> {
        self.posts()
            .into_iter()
            .filter(|(m, _)| m.ends_with("Error"))
            .map(|(_, f)| {
                let who = f.get("computer_partition_id").or(f.get("url")).cloned().unwrap_or_default();
                (who, f.get("error_log").or(f.get("message")).cloned().unwrap_or_default())
            })
            .collect()
    }

    /// Every partition id the node named in a call.
    fn partitions_named(&self) -> Vec<String> {
        self.posts().into_iter().filter_map(|(_, f)| f.get("computer_partition_id").cloned()).collect()
    }
}

fn partition(id: &str, state: InstanceState, url: &str) -> ComputerPartition {
    let mut p = ComputerPartition::free(COMPUTER, id);
    p.requested_state = Some(state);
    p.software_release = Some(SoftwareRelease::new(url, COMPUTER));
    p.parameters = Some(BTreeMap::from([("slap_software_type".to_string(), Value::str("default"))]));
    p
}

// ---------------------------------------------------------------- the node

/// A node in a temporary directory: `<tmp>/srv/slapgrid`, `<tmp>/opt/slapgrid`.
struct TestNode {
    dir: tempfile::TempDir,
    node: Option<Node>,
}

impl TestNode {
    fn new(master: &FakeMaster, venv: Option<&Path>) -> TestNode {
        let dir = tempfile::Builder::new().prefix("slapos-hostile-").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.path();
        for sub in ["srv/slapgrid", "opt/slapgrid", "run"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let buildout = venv.map(|v| v.join("bin/buildout").display().to_string()).unwrap_or("buildout".into());
        let text = format!(
            "[slapos]\ncomputer_id = {COMPUTER}\nmaster_url = {}\nsoftware_root = {d}/opt/slapgrid\ninstance_root = {d}/srv/slapgrid\nbuildout = {buildout}\npidfile_instance = {d}/run/cp.pid\ninstance_min_free_space = 1M\nsoftware_min_free_space = 1M\n",
            master.url,
            d = d.display()
        );
        let config = slapos_config::Config::parse(&text).unwrap();
        let cfg = NodeConfig::from_config(&config, &NodeOverrides::default()).unwrap();
        let node = Node::new(cfg).unwrap();
        // (check_structure would name this test binary as the watchdog)
        node.supervisor.write_configuration(None).unwrap();
        TestNode { dir, node: Some(node) }
    }

    fn node(&self) -> &Node {
        self.node.as_ref().unwrap()
    }
    fn instance_root(&self) -> PathBuf {
        self.dir.path().join("srv/slapgrid")
    }
    fn software_root(&self) -> PathBuf {
        self.dir.path().join("opt/slapgrid")
    }
}

impl Drop for TestNode {
    /// Stops the supervisord this node started (its own pid file only).
    fn drop(&mut self) {
        let pidfile = self.instance_root().join("var/run/supervisord.pid");
        if let Some(node) = &self.node {
            let _ = node.supervisor.call("supervisor.shutdown", &[]);
        }
        for _ in 0..50 {
            let Some(pid) = std::fs::read_to_string(&pidfile).ok().and_then(|t| t.trim().parse::<i32>().ok()) else { break };
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The project venv (its supervisord), or a clear failure.
fn venv() -> PathBuf {
    let v = PathBuf::from(std::env::var("SLAPOS_VENV").unwrap_or("/var/cache/slapos-e2e/venv-1.26.1".into()));
    assert!(v.join("bin/supervisord").is_file(), "this test needs the project venv with supervisord at {} (set SLAPOS_VENV)", v.display());
    v
}

fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root (run the slow tier as root: cargo test -- --include-ignored)");
}

/// Fails with the paths that differ between two snapshots.
fn assert_unchanged(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>, what: &str) {
    let changed = differences(before, after);
    assert!(changed.is_empty(), "{what}: {changed:#?}");
}

/// A victim directory outside the roots, with a file in it.
fn victim(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    std::fs::write(path.join("precious"), "keep me").unwrap();
}

// ---------------------------------------------------------------- test users

static USERS: Mutex<u32> = Mutex::new(0);

/// A `slaptest-*` user with its own group and one supplementary group,
/// removed on drop.
struct TestUser {
    name: String,
    extra: String,
    uid: u32,
    gid: u32,
    extra_gid: u32,
}

impl TestUser {
    fn create() -> TestUser {
        let mut n = USERS.lock().unwrap_or_else(|e| e.into_inner());
        *n += 1;
        let name = format!("slaptest-nn{}-{}", std::process::id() % 100000, *n);
        let extra = format!("slaptest-gx{}-{}", std::process::id() % 100000, *n);
        let run = |args: &[&str]| {
            let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&["groupadd", &extra]);
        let mut user = TestUser { name: name.clone(), extra: extra.clone(), uid: 0, gid: 0, extra_gid: 0 };
        run(&["useradd", "-M", "-U", "-G", &extra, "-s", "/usr/sbin/nologin", "-d", "/nonexistent", &name]);
        let u = nix::unistd::User::from_name(&name).unwrap().unwrap();
        let g = nix::unistd::Group::from_name(&extra).unwrap().unwrap();
        (user.uid, user.gid, user.extra_gid) = (u.uid.as_raw(), u.gid.as_raw(), g.gid.as_raw());
        user
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _lock = USERS.lock().unwrap_or_else(|e| e.into_inner());
        let _ = Command::new("userdel").arg(&self.name).output();
        let _ = Command::new("groupdel").arg(&self.name).output();
        let _ = Command::new("groupdel").arg(&self.extra).output();
    }
}

fn chown_tree(p: &Path, uid: u32, gid: u32) {
    assert!(Command::new("chown").arg("-R").arg(format!("{uid}:{gid}")).arg(p).status().unwrap().success());
}

// ---------------------------------------------------------------- finding 4

/// Finding 4: a release URL with a newline and `extends = file:///…` is
/// refused: nothing is built or created, the error goes to the master.
/// Every other name source a URL can be (`../`, `/`, `]`, `%(`, 10 KB) either
/// is a valid URL (hashed: the path stays under the software root) or is
/// refused the same way.
#[test]
fn node_software_refuses_a_url_that_could_inject_buildout_lines() {
    let evil = "http://sr/software.cfg\nextends = file:///etc/shadow";
    let refused = [evil, "http://sr/a\rb", "http://sr/${buildout:directory}", "http://sr/%(here)s", &"u".repeat(10 * 1024)];
    let mut c = Computer::new(COMPUTER);
    for url in refused {
        c.software_releases.push(SoftwareRelease::new(url, COMPUTER));
    }
    let master = FakeMaster::start(&c);
    let n = TestNode::new(&master, None);
    let before = snapshot(n.dir.path(), &[]);
    let summary = slapos_grid::software::run(n.node(), &Default::default()).unwrap();
    assert!(!summary.is_clean());
    assert!(summary.releases.iter().all(|(_, o)| matches!(o, ReleaseOutcome::Failed(_))), "{summary:?}");
    assert_unchanged(&before, &snapshot(n.dir.path(), &[]), "nothing built, nothing written");
    let errors = master.errors();
    assert_eq!(errors.len(), refused.len(), "{errors:?}");
    for ((url, log), sent) in errors.iter().zip(refused) {
        assert_eq!(url, sent);
        assert!(log.starts_with("Software release refused: invalid software release URL") && !log.contains('\n'), "{log}");
    }
}

// ---------------------------------------------------------------- finding 3

/// Finding 3: partition ids `../../victim`, absolute paths and the rest of
/// the family, started and destroyed: `node instance` and `node report`
/// (whose destruction empties partitions as root) touch nothing outside
/// the instance root; a partition whose id is fine but whose URL is not is
/// reported in error, and left alone.
#[test]
#[ignore = "needs the venv"]
fn needs_venv_hostile_partition_ids_touch_nothing_outside_the_roots() {
    let venv = venv();
    let base = tempfile::Builder::new().prefix("slapos-victims-").tempdir().unwrap();
    let b = base.path();
    let url = "http://sr/software.cfg";
    let mut c = Computer::new(COMPUTER);
    // the node's instance root will be <tmp>/slapos-hostile-*/srv/slapgrid: climb to /
    let up = "../".repeat(std::env::temp_dir().components().count() - 1 + 3);
    for (i, state) in [InstanceState::Started, InstanceState::Destroyed].into_iter().enumerate() {
        let abs = b.join(format!("abs-victim-{i}"));
        victim(&abs);
        victim(&b.join(format!("rel-victim-{i}")));
        let rel = format!("{up}{}/rel-victim-{i}", b.strip_prefix("/").unwrap().display());
        for id in [
            rel,
            abs.display().to_string(),
            format!("x\n]{i}"),
            format!("p%(here)s{i}"),
            format!("{}{i}", "p".repeat(10 * 1024)),
            ".".into(),
            "..".into(),
        ] {
            c.partitions.push(partition(&id, state, url));
        }
    }
    c.partitions.push(partition("slappart1", InstanceState::Started, "http://sr/software.cfg\nextends = file:///etc/shadow"));
    let master = FakeMaster::start(&c);
    let n = TestNode::new(&master, Some(&venv));
    std::fs::create_dir_all(n.instance_root().join("slappart1")).unwrap();
    std::fs::set_permissions(n.instance_root().join("slappart1"), std::fs::Permissions::from_mode(0o750)).unwrap();
    // what must not change: the victims, and the node's directory but its
    // instance root's var and etc (supervisord's own files)
    let roots = [n.instance_root().join("var"), n.instance_root().join("etc"), n.instance_root().join("sv.sock"), n.dir.path().join("run")];
    let (victims_before, node_before) = (snapshot(b, &[]), snapshot(n.dir.path(), &roots));
    let opts = slapos_grid::instance::InstanceOptions { workers: 2, default_deadline: Duration::from_secs(60), ..Default::default() };
    let _ = slapos_grid::instance::run(n.node(), &opts);
    let _ = slapos_grid::report::run(n.node());
    assert_unchanged(&victims_before, &snapshot(b, &[]), "outside the roots: nothing written, nothing emptied");
    assert_unchanged(&node_before, &snapshot(n.dir.path(), &roots), "nothing written for refused partitions");
    // the master hears only about the partition whose id is valid
    assert!(master.partitions_named().iter().all(|p| p == "slappart1"), "{:?}", master.partitions_named());
    let errors = master.errors();
    assert!(errors.iter().any(|(p, m)| p == "slappart1" && m.contains("invalid software release URL") && m.contains("\\n")), "{errors:?}");
    assert!(!n.instance_root().join("slappart1/buildout.cfg").exists());
}

// ---------------------------------------------------------------- finding 1

/// A software release installed by hand: `instance.cfg` and a `bin/buildout`
/// that does nothing (the instance buildout is not what is tested here).
fn fake_software(n: &TestNode, url: &str) {
    let sp = n.software_root().join(slapos_grid::names::SoftwareHash::of(url).as_str());
    std::fs::create_dir_all(sp.join("bin")).unwrap();
    std::fs::write(sp.join("instance.cfg"), "[buildout]\nparts =\n").unwrap();
    std::fs::write(sp.join("bin/buildout"), "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(sp.join("bin/buildout"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A partition directory (0750) with files, owned by `owner`.
fn partition_dir(n: &TestNode, id: &str, files: &[(&str, &str)], owner: (u32, u32)) -> PathBuf {
    let pp = n.instance_root().join(id);
    std::fs::create_dir_all(&pp).unwrap();
    for (rel, body) in files {
        let path = pp.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&pp, std::fs::Permissions::from_mode(0o750)).unwrap();
    if nix::unistd::geteuid().is_root() {
        chown_tree(&pp, owner.0, owner.1);
    }
    pp
}

/// The programs supervisord knows (`group:name`).
fn supervised(n: &TestNode) -> Vec<String> {
    n.node().supervisor.processes().unwrap().into_iter().map(|(name, _)| name).collect()
}

/// Finding 1: the partition user names a file in `etc/service` so that the
/// group file would carry `[program:evil] … user=root`. The file is refused
/// (the master is told which), no group file carries it, supervisord never
/// knows the program, so never runs it as root.
#[test]
#[ignore = "needs root"]
fn needs_root_an_etc_service_file_name_cannot_make_supervisord_run_root_programs() {
    require_root();
    let venv = venv();
    let user = TestUser::create();
    let url = "http://sr/hello.cfg";
    let mut c = Computer::new(COMPUTER);
    c.partitions.push(partition("slappart0", InstanceState::Started, url));
    let master = FakeMaster::start(&c);
    let n = TestNode::new(&master, Some(&venv));
    fake_software(&n, url);
    let evil = "x\n[program:evil]\ncommand=touch pwned\nuser=root\nautostart=true\nautorestart=true\n";
    partition_dir(
        &n,
        "slappart0",
        &[("etc/service/ok", "#!/bin/sh\nexec sleep 60\n"), (&format!("etc/service/{evil}"), "#!/bin/sh\n")],
        (user.uid, user.gid),
    );
    let opts = slapos_grid::instance::InstanceOptions { workers: 1, default_deadline: Duration::from_secs(60), ..Default::default() };
    assert_eq!(instance_status(&n, &opts), RunStatus::Failed);
    let errors = master.errors();
    assert!(
        errors.iter().any(|(p, m)| p == "slappart0" && m.starts_with("invalid program file name 'etc/service/x\\n[program:evil]")),
        "{errors:?}"
    );
    let conf = n.instance_root().join("etc/supervisord.conf.d/slappart0.conf");
    assert!(std::fs::read_to_string(&conf).map(|t| !t.contains("evil")).unwrap_or(true));
    assert!(!supervised(&n).iter().any(|p| p.contains("evil")), "{:?}", supervised(&n));
    assert!(!n.instance_root().join("pwned").exists() && !Path::new("/pwned").exists());
    // the same partition with the file gone: deployed, as its user
    std::fs::remove_file(n.instance_root().join("slappart0/etc/service").join(evil)).unwrap();
    assert_eq!(instance_status(&n, &opts), RunStatus::Success);
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains(&format!("\nuser={}\ngroup={}\n", user.uid, user.gid)), "{text}");
    assert_eq!(supervised(&n), ["slappart0:ok-on-watch"]);
}

/// How `node instance` went on `n` (the master is up: never offline).
fn instance_status(n: &TestNode, opts: &InstanceOptions) -> RunStatus {
    match slapos_grid::instance::run(n.node(), opts) {
        Ok(InstanceRun::Processed(summary)) => summary.status(),
        other => panic!("node instance did not process the partitions: {other:?}"),
    }
}

// ---------------------------------------------------------------- the other name sources

/// Every other name a partition user chooses: a file in `etc/run`,
/// `etc/promise`, `etc/report` whose name holds a newline, `]`, `%`, `=`…:
/// the partition is refused with an error naming the file.
#[test]
#[ignore = "needs the venv"]
fn needs_venv_partition_file_names_are_refused_naming_the_file() {
    let venv = venv();
    let user = nix::unistd::geteuid().is_root().then(TestUser::create);
    let owner = user.as_ref().map(|u| (u.uid, u.gid)).unwrap_or((nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw()));
    let url = "http://sr/hello.cfg";
    let mut c = Computer::new(COMPUTER);
    for id in ["slappart0", "slappart1", "slappart2", "slappart3"] {
        c.partitions.push(partition(id, InstanceState::Started, url));
    }
    let master = FakeMaster::start(&c);
    let n = TestNode::new(&master, Some(&venv));
    fake_software(&n, url);
    partition_dir(&n, "slappart0", &[("etc/run/a]b", "#!/bin/sh\n")], owner);
    partition_dir(&n, "slappart1", &[("etc/promise/check\nforged", "#!/bin/sh\n")], owner);
    partition_dir(&n, "slappart2", &[("etc/service/100%(ENV_X)s", "#!/bin/sh\n")], owner);
    partition_dir(&n, "slappart3", &[("etc/report/usage=1", "#!/bin/sh\n")], owner);
    let opts = slapos_grid::instance::InstanceOptions { workers: 2, default_deadline: Duration::from_secs(60), ..Default::default() };
    assert_eq!(instance_status(&n, &opts), RunStatus::Failed);
    let _ = slapos_grid::report::run(n.node());
    let errors = master.errors();
    let said = |id: &str, text: &str| errors.iter().any(|(p, m)| p == id && m.contains(text));
    assert!(said("slappart0", "invalid program file name 'etc/run/a]b'"), "{errors:?}");
    assert!(said("slappart1", "invalid promise file name 'etc/promise/check\\nforged'"), "{errors:?}");
    assert!(said("slappart2", "invalid program file name 'etc/service/100%(ENV_X)s'"), "{errors:?}");
    assert!(said("slappart3", "invalid report script file name 'etc/report/usage=1'"), "{errors:?}");
    assert!(supervised(&n).is_empty(), "{:?}", supervised(&n));
}

// ---------------------------------------------------------------- privilege drop

/// Programs run for a partition get exactly their user's groups (its own
/// and its supplementary ones, nothing of root's), through the one drop
/// path: buildout-style runs and legacy promises alike.
#[test]
#[ignore = "needs root"]
fn needs_root_programs_get_exactly_their_users_groups() {
    require_root();
    let user = TestUser::create();
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = d.path().join("ids");
    std::fs::write(&script, "#!/bin/sh\necho $(id -u) $(id -g) $(id -G)\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    chown_tree(d.path(), user.uid, user.gid);
    let mut expected_groups = vec![user.gid, user.extra_gid];
    expected_groups.sort();
    let parse = |out: &str| -> (u32, u32, Vec<u32>) {
        let v: Vec<u32> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
        let mut groups = v[2..].to_vec();
        groups.sort();
        (v[0], v[1], groups)
    };
    let identity = slapos_grid::process::Identity::resolve(user.uid, user.gid).unwrap();
    let mut resolved = identity.groups.clone();
    resolved.sort();
    assert_eq!(resolved, expected_groups, "getgrouplist in the parent");
    let out = slapos_grid::process::run_as_owner(&script.display().to_string(), &[], d.path(), &[], None, |_| {}).unwrap();
    assert_eq!(parse(&out.output), (user.uid, user.gid, expected_groups.clone()), "{}", out.output);
    let r = slapos_grid::promise::run_legacy(&script, d.path(), Some((user.uid, user.gid)), Duration::from_secs(10));
    assert!(!r.failed, "{r:?}");
    assert_eq!(parse(&r.message), (user.uid, user.gid, expected_groups), "legacy promises too");
    // root is never a target
    assert!(slapos_grid::process::Identity::resolve(0, user.gid).is_err());
    assert!(slapos_grid::promise::run_legacy(&script, d.path(), Some((0, 0)), Duration::from_secs(10)).message.contains("refusing"));
}
