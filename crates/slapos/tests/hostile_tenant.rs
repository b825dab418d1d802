//! A hostile tenant against the root node (issue 11, finding 2): for every
//! file root writes or reads in a partition directory, the partition's user
//! plants a link to a root-owned victim outside, or a FIFO, or links its
//! directories elsewhere; then the real node runs as root (`node instance`,
//! `node promise`, `node report` destruction, our master on loopback, the
//! venv's supervisord); the software user does the same in a software path
//! (`node software`). The victims stay unchanged (content, mode, owner,
//! nothing created next to them) and the node never hangs.
//!
//! Root only (test users `slaptest…`, removed even on failure; a temporary
//! directory), and the venv for supervisord: every test here is
//! `needs_root` and `needs_venv`.

use test_support as support;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_slapos");
/// No node command of these tests needs more; a FIFO opened blocking would.
const DEADLINE: Duration = Duration::from_secs(120);
const ID: &str = "slappart0";

fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root (run the slow tier as root: cargo test -- --include-ignored)");
}

/// A test user with its own group, removed when dropped.
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

impl User {
    fn new(tag: &str) -> User {
        let name = format!("slaptest{tag}{}", std::process::id() % 100_000);
        let _ = Command::new("userdel").arg(&name).stderr(Stdio::null()).status();
        let s = Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", &name])
            .status()
            .unwrap();
        assert!(s.success(), "useradd {name}");
        let u = nix::unistd::User::from_name(&name).unwrap().unwrap();
        User { name, uid: u.uid.as_raw(), gid: u.gid.as_raw() }
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
        let _ = Command::new("groupdel").arg(&self.name).stderr(Stdio::null()).status();
    }
}

/// What a tree is, without following links: kind, mode, owner, content.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (String, u32, u32, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let content = if m.is_file() { std::fs::read(&p).unwrap() } else { Vec::new() };
        if m.is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
        out.insert(p, (format!("{:?}", m.file_type()), m.mode(), m.uid(), m.gid(), content));
    }
    out
}

/// A root node with one partition owned by a tenant, a fake installed
/// software release (its `bin/buildout` is a shell script run as the
/// tenant) and root-owned victims.
struct Node {
    dir: tempfile::TempDir,
    venv: PathBuf,
    cfg: PathBuf,
    client_cfg: PathBuf,
    master: Option<std::process::Child>,
    tenant: User,
    software: User,
    victim: PathBuf,
}

impl Node {
    fn new(name: &str) -> Node {
        require_root();
        let venv = support::python_venv();
        let tenant = User::new(&format!("t{name}"));
        let software = User::new(&format!("s{name}"));
        let dir = tempfile::Builder::new().prefix(&format!("slapos-hostile-{name}-")).tempdir().unwrap();
        let d = dir.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["etc", "log", "var/run", "opt/slapgrid", "srv/slapgrid", "victim/dir"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::os::unix::fs::chown(d.join("opt/slapgrid"), Some(software.uid), Some(software.gid)).unwrap();
        // certificate_repository_path, as node format makes it (slapgrid requires it)
        std::fs::create_dir_all(d.join("etc/ssl/partition_pki")).unwrap();
        std::fs::set_permissions(d.join("etc/ssl/partition_pki"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let victim = d.join("victim");
        std::fs::write(victim.join("file"), "precious").unwrap();
        std::fs::write(victim.join("dir/inner"), "inner").unwrap();
        std::fs::set_permissions(victim.join("dir/inner"), std::fs::Permissions::from_mode(0o600)).unwrap();
        // would be run as a promise or report script if a listing went through a link
        std::fs::write(victim.join("dir/run-me"), "#!/bin/sh\necho ran\n").unwrap();
        std::fs::set_permissions(victim.join("dir/run-me"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = support::free_port();
        let (cfg, client_cfg) = support::local_node_config(d, &venv, port, 1, Some(&d.join("etc/ssl/partition_pki")));
        let mut node = Node { dir, venv, cfg, client_cfg, master: None, tenant, software, victim };
        node.start_master(port);
        node.ok(&["node", "format", "--local", "--now"], 0);
        let pp = node.pp();
        std::os::unix::fs::chown(&pp, Some(node.tenant.uid), Some(node.tenant.gid)).unwrap();
        std::fs::set_permissions(&pp, std::fs::Permissions::from_mode(0o750)).unwrap();
        node.fake_software();
        node.ok(&["supply", &node.sr_url(), "local"], 0);
        node.ok(&["request", "hostile", &node.sr_url()], 0);
        node
    }

    fn pp(&self) -> PathBuf {
        self.dir.path().join("srv/slapgrid").join(ID)
    }

    fn sr_url(&self) -> String {
        self.dir.path().join("sr/software.cfg").display().to_string()
    }

    /// An installed release: `instance.cfg`, and a `bin/buildout` that (as
    /// the tenant) adds a legacy promise, fails when the partition holds
    /// `fail-buildout`, and ignores what it cannot do.
    fn fake_software(&self) {
        let url = self.sr_url();
        let out = Command::new("md5sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(url.as_bytes())?;
            c.wait_with_output()
        });
        let hash = String::from_utf8(out.unwrap().stdout).unwrap().split_whitespace().next().unwrap().to_string();
        let sp = self.dir.path().join("opt/slapgrid").join(hash);
        std::fs::create_dir_all(sp.join("bin")).unwrap();
        std::fs::write(sp.join("instance.cfg"), "[buildout]\nparts =\n").unwrap();
        let script = "#!/bin/sh\n[ -e fail-buildout ] && { echo planned failure; exit 1; }\n\
            [ -e etc/promise/check ] || { mkdir -p etc/promise && printf '#!/bin/sh\\necho fine\\n' > etc/promise/check && chmod 755 etc/promise/check; } 2>/dev/null\n\
            exit 0\n";
        std::fs::write(sp.join("bin/buildout"), script).unwrap();
        std::fs::set_permissions(sp.join("bin/buildout"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(sp.join(".completed"), "now").unwrap();
        let s = Command::new("chown").arg("-R").arg(format!("{}:{}", self.software.uid, self.software.gid)).arg(&sp).status().unwrap();
        assert!(s.success());
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("PATH", format!("{}/bin:/usr/sbin:/usr/bin:/sbin:/bin", self.venv.display()))
            .env("HOME", self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }

    fn start_master(&mut self, port: u16) {
        let log = std::fs::File::create(self.dir.path().join("log/proxy.out")).unwrap();
        let cfg = self.cfg.to_str().unwrap().to_string();
        let child = self.command(&["proxy", "start", "--cfg", &cfg]).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the master did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.master = Some(child);
    }

    /// Runs a command under [`DEADLINE`] (its process group killed past
    /// it, a failure: the node hung); returns (exit code, output).
    fn run(&self, args: &[&str]) -> (Option<i32>, String) {
        let mut full: Vec<&str> = args.to_vec();
        let cfg = if args[0] == "node" { &self.cfg } else { &self.client_cfg };
        full.extend(["--cfg", cfg.to_str().unwrap()]);
        let out_path = self.dir.path().join("log/last.out");
        let out = std::fs::File::create(&out_path).unwrap();
        let mut child = self.command(&full).stdout(out.try_clone().unwrap()).stderr(out).process_group(0).spawn().unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > DEADLINE {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-(child.id() as i32)), nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                panic!(
                    "slapos {} hung (killed after {DEADLINE:?}):\n{}",
                    args.join(" "),
                    std::fs::read_to_string(&out_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (status.code(), std::fs::read_to_string(&out_path).unwrap_or_default())
    }

    /// Runs the node commands in order, then checks that the victims did
    /// not change (first: what the suite is about), then the exit codes.
    fn run_all(&self, before: &BTreeMap<PathBuf, (String, u32, u32, u32, Vec<u8>)>, steps: &[(&[&str], i32)]) -> Vec<String> {
        let results: Vec<_> = steps.iter().map(|(args, _)| self.run(args)).collect();
        let after = snapshot(&self.victim);
        let changed: Vec<_> = after.iter().filter(|(p, v)| before.get(*p) != Some(v)).map(|(p, _)| p.display().to_string()).collect();
        let gone: Vec<_> = before.keys().filter(|p| !after.contains_key(*p)).map(|p| p.display().to_string()).collect();
        assert!(changed.is_empty() && gone.is_empty(), "victims outside the tenant's directories changed: {changed:?}, removed: {gone:?}");
        for ((args, code), (got, out)) in steps.iter().zip(&results) {
            assert_eq!(*got, Some(*code), "slapos {}:\n{out}", args.join(" "));
        }
        results.into_iter().map(|(_, out)| out).collect()
    }

    fn ok(&self, args: &[&str], code: i32) -> String {
        let (c, out) = self.run(args);
        assert_eq!(c, Some(code), "slapos {}:\n{out}", args.join(" "));
        out
    }

    /// Plants `rel` in the partition as the tenant would: a link to
    /// `target`, or a FIFO when `target` is None (parents created).
    fn plant(&self, rel: &str, target: Option<&Path>) {
        let p = self.pp().join(rel);
        let parent = p.parent().unwrap();
        std::fs::create_dir_all(parent).unwrap();
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_dir_all(&p);
        match target {
            Some(t) => std::os::unix::fs::symlink(t, &p).unwrap(),
            None => nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap(),
        }
        let s = Command::new("chown").arg("-hR").arg(format!("{}:{}", self.tenant.uid, self.tenant.gid)).arg(self.pp()).status().unwrap();
        assert!(s.success());
    }

    /// The fake release's software path.
    fn sp(&self) -> PathBuf {
        std::fs::read_dir(self.dir.path().join("opt/slapgrid")).unwrap().next().unwrap().unwrap().path()
    }

    fn supervisord_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.path().join("srv/slapgrid/var/run/supervisord.pid")).ok()?.trim().parse().ok()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(pid) = self.supervisord_pid() {
            support::terminate(pid);
        }
        if let Some(mut m) = self.master.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

/// Every file root writes or reads in a partition during `node instance`
/// and `node promise` (the error log needs a failed run).
const FILES: &[&str] = &[
    ".timestamp",
    ".slapgrid/log/instance.log",
    "buildout.cfg",
    "software_release",
    ".slapos-retention-lock-delay",
    ".slapos-request-transaction-slappart0",
    ".slapgrid/promise/result/check.status.json",
    ".slapgrid/promise/cache/check",
];

fn instance_and_promises_leave_the_victims_alone(fifo: bool) {
    let n = Node::new(if fifo { "f" } else { "l" });
    let before = snapshot(&n.victim);
    let victim_file = n.victim.join("file");
    for f in FILES {
        n.plant(f, (!fifo).then_some(victim_file.as_path()));
    }
    let out = n.run_all(&before, &[(&["node", "instance", "--now", "--force"], 0), (&["node", "promise", "--now"], 0)]);
    assert!(out[0].contains(&format!("Processing Computer Partition {ID}")), "{}", out[0]);
    // the error log, written after a failed buildout
    n.plant(".slapgrid-slappart0-error.log", (!fifo).then_some(victim_file.as_path()));
    std::fs::write(n.pp().join("fail-buildout"), "").unwrap();
    let out = n.run_all(&before, &[(&["node", "instance", "--now", "--force"], 1)]);
    assert!(out[0].contains("planned failure"), "{}", out[0]);
    // what root writes replaced the plant, never went through it
    let pp = n.pp();
    for f in [".timestamp", "buildout.cfg", ".slapgrid/promise/result/check.status.json", ".slapgrid-slappart0-error.log"] {
        assert!(std::fs::symlink_metadata(pp.join(f)).unwrap().is_file(), "{f} replaced by a regular file");
    }
    assert!(std::fs::read_to_string(pp.join(".slapgrid-slappart0-error.log")).unwrap().contains("planned failure"));
    assert_eq!(
        std::fs::read_link(pp.join("software_release")).ok().map(|t| t.starts_with(n.dir.path().join("opt"))),
        (!fifo).then_some(true)
    );
    // the key is the tenant's, 0400 from the start, in a 0711 repository (as
    // `node register` makes it: nobody lists it, the tenant reaches its key)
    let pki = n.dir.path().join("etc/ssl/partition_pki");
    assert_eq!(std::fs::metadata(&pki).unwrap().mode() & 0o7777, 0o711);
    let key = std::fs::metadata(pki.join(format!("{ID}.key"))).unwrap();
    assert_eq!((key.mode() & 0o7777, key.uid()), (0o400, n.tenant.uid));
}

#[test]
#[ignore = "needs root and the venv"]
fn needs_root_needs_venv_links_planted_for_every_file_root_writes() {
    instance_and_promises_leave_the_victims_alone(false);
}

#[test]
#[ignore = "needs root and the venv"]
fn needs_root_needs_venv_fifos_planted_for_every_file_root_writes() {
    instance_and_promises_leave_the_victims_alone(true);
}

#[test]
#[ignore = "needs root and the venv"]
fn needs_root_needs_venv_linked_directories_are_never_entered() {
    let n = Node::new("d");
    let before = snapshot(&n.victim);
    let vdir = n.victim.join("dir");
    // the node's own directories, and those it lists, are links to the victim
    for d in [".slapgrid", "etc/promise", "etc/plugin", "etc/run", "etc/service", "etc/report", "var"] {
        n.plant(d, Some(&vdir));
    }
    n.run_all(
        &before,
        &[(&["node", "instance", "--now", "--force"], 0), (&["node", "promise", "--now"], 0), (&["node", "report", "--now"], 0)],
    );
    assert!(!n.pp().join(".slapgrid/promise/result/run-me.status.json").exists());
}

#[test]
#[ignore = "needs root and the venv"]
fn needs_root_needs_venv_destruction_empties_the_partition_and_nothing_else() {
    let n = Node::new("r");
    let before = snapshot(&n.victim);
    n.ok(&["node", "instance", "--now"], 0);
    // retention: the lock date the node writes is planted as a link, then a FIFO
    std::fs::write(n.pp().join(".slapos-retention-lock-delay"), "0.00001").unwrap();
    n.plant(".slapos-retention-lock-date", Some(&n.victim.join("file")));
    n.plant("var/xml_report/fifo.xml", None);
    n.plant("var/xml_report/link.xml", Some(&n.victim.join("file")));
    n.ok(&["request", "hostile", &n.sr_url(), "--state", "destroyed"], 0);
    n.run_all(&before, &[(&["node", "instance", "--now"], 0), (&["node", "report", "--now"], 0)]);
    assert!(n.pp().join(".slapos-retention-lock-date").is_file(), "the link replaced by the lock date");
    // links to the victims everywhere in the tree, an unreadable directory
    for (rel, target) in [("to-dir", "dir"), ("to-file", "file"), ("deep/a/b/to-dir", "dir"), ("deep/a/to-root", ".")] {
        n.plant(rel, Some(&n.victim.join(target)));
    }
    n.plant("deep/fifo", None);
    std::fs::create_dir_all(n.pp().join("locked/inner")).unwrap();
    std::fs::set_permissions(n.pp().join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::write(n.pp().join(".slapos-retention-lock-date"), "0").unwrap();
    n.run_all(&before, &[(&["node", "report", "--now"], 0)]);
    assert_eq!(std::fs::read_dir(n.pp()).unwrap().count(), 0, "the partition is emptied");
    assert_eq!(std::fs::metadata(n.pp()).unwrap().mode() & 0o7777, 0o750);
}

#[test]
#[ignore = "needs root and the venv"]
fn needs_root_needs_venv_the_software_users_links_are_never_followed() {
    let n = Node::new("s");
    let before = snapshot(&n.victim);
    let sp = n.sp();
    let plant = |rel: &str, target: &Path| {
        let p = sp.join(rel);
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_dir_all(&p);
        std::os::unix::fs::symlink(target, &p).unwrap();
        std::os::unix::fs::lchown(&p, Some(n.software.uid), Some(n.software.gid)).unwrap();
    };
    // what `node software` writes in a release it rebuilds (a planted
    // bootstrap marker is only removed: it asks for a new bootstrap)
    for f in [".completed", ".netrc"] {
        plant(f, &n.victim.join("file"));
    }
    n.run_all(&before, &[(&["node", "software", "--now", "--force"], 0)]);
    assert!(std::fs::symlink_metadata(sp.join(".completed")).unwrap().is_file(), "the link replaced by the marker");
    // a directory it creates, linked elsewhere: refused, reported
    plant("extends-cache", &n.victim.join("dir"));
    let out = n.run_all(&before, &[(&["node", "software", "--now", "--force"], 1)]);
    assert!(out[0].contains("extends-cache"), "{}", out[0]);
}

/// The managers (`prerm`, `portredir`) read what the tenant leaves:
/// `.slapos-port-redirect` linked to a root-only file naming a privileged
/// redirection, `etc/prerm` linked to a directory of scripts; neither is
/// followed (no socat group, no script run) and the destruction goes on.
#[test]
#[ignore = "needs root and the venv"]
fn needs_root_needs_venv_managers_never_follow_the_tenants_links() {
    let n = Node::new("m");
    let cfg = std::fs::read_to_string(&n.cfg).unwrap().replace("[slapos]\n", "[slapos]\nmanager_list = prerm, portredir\n");
    std::fs::write(&n.cfg, cfg).unwrap();
    let redirect = n.victim.join("redirect.json");
    std::fs::write(&redirect, r#"[{"srcPort": 80, "destPort": 22, "destAddress": "127.0.0.1"}]"#).unwrap();
    std::fs::set_permissions(&redirect, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = snapshot(&n.victim);
    n.plant(".slapos-port-redirect", Some(&redirect));
    n.plant("etc/prerm", Some(&n.victim.join("dir")));
    let out = n.run_all(&before, &[(&["node", "instance", "--now", "--force"], 0)]);
    assert!(out[0].contains(".slapos-port-redirect not read"), "{}", out[0]);
    let socat = n.dir.path().join("srv/slapgrid/etc/supervisord.conf.d").join(format!("{ID}-socat.conf"));
    assert!(!socat.exists(), "no redirection from a file the tenant cannot read");
    n.ok(&["request", "hostile", &n.sr_url(), "--state", "destroyed"], 0);
    let out = n.run_all(&before, &[(&["node", "instance", "--now"], 0), (&["node", "report", "--now"], 0)]);
    assert!(!out[1].contains("Running pre-delete script"), "nothing listed through the link: {}", out[1]);
    assert_eq!(std::fs::read_dir(n.pp()).unwrap().count(), 0, "destroyed all the same");
}
