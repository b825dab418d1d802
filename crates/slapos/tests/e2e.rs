//! End-to-end acceptance: a whole SlapOS node life cycle, as root, in a
//! network namespace of its own, with the real zc.buildout and supervisord of
//! the project venv and the offline software release `tests/data/e2e-sr/`.
//! One body ([`life_cycle`]) runs in five pairings:
//!
//! - `needs_root_e2e_all_ours`: our master, our node, our client;
//! - `needs_root_e2e_our_node_against_python_master`: the Python master
//!   (slapos.core 1.26.1 `slapos proxy start`), our node and our client;
//! - `needs_root_e2e_python_node_against_our_master`: our master, the Python
//!   node and the Python client;
//! - `needs_root_e2e_https_all_ours`: all ours over HTTPS, our master with
//!   `tls = true` and its CA: the node joins with `slapos computer token` +
//!   `slapos node register`, the user gets a certificate with `slapos user
//!   token` + `slapos configure client`, the instance requests a child as
//!   itself with its partition certificate (checks 36–40 below);
//! - `needs_root_e2e_https_python_node_against_our_master`: the same with the
//!   Python `slapos node register`, `configure client`, node and client
//!   (which send `key_file`/`cert_file` but never verify the master: the
//!   Python slap library raises NotImplementedError on `master_ca_file`).
//!
//! It makes the flow and every check of the reference script
//! `shared/reference/python-e2e/run.sh` (which this test does not need). The
//! connection parameters are always read with the Python `slapos.slap`
//! library, as a client program would. Each assertion message starts with the
//! number of its check:
//!
//! | #  | step: expected exit code, or check                                        |
//! |----|---------------------------------------------------------------------------|
//! | 1  | `node format`: 0                                                          |
//! | 2  | `node format` again: 0                                                    |
//! | 3  | format is idempotent: the computer json is the same after the second run  |
//! | 4  | `supply` of the release to the computer: 0                                |
//! | 5  | `request` of the instance (parameter `greeting`): 0                       |
//! | 6  | `node software`: 0                                                        |
//! | 7  | the release is installed in `software_root/md5(url)` with `.completed`    |
//! | 8  | its instance profile `instance.cfg` was generated                         |
//! | 9  | `node software` again (nothing to do): 0                                  |
//! | 10 | `node software --only-sr <md5>` (installed: not rebuilt): 0               |
//! | 11 | `node software --force`: 0                                                |
//! | 12 | `--force` rebuilds the installed release (`buildingSoftwareRelease` call) |
//! | 13 | `node instance`: 0                                                        |
//! | 14 | `node instance` again (nothing to do): 0                                  |
//! | 15 | `node instance --force`: 0                                                |
//! | 16 | `node instance --only-cp slappart99` (unknown partition): 1               |
//! | 17 | a partition was deployed (its `buildout.cfg` names the release)           |
//! | 18 | `node status`: `<partition>:http-server-on-watch` is RUNNING              |
//! | 19 | the partition's `.timestamp` is written                                   |
//! | 20 | the legacy promise result is OK (`"failed": false`)                       |
//! | 21 | the plugin promise result is OK                                           |
//! | 22 | the connection parameter `greeting` is published                          |
//! | 23 | the service answers the greeting on the published `url`                   |
//! | 24 | `request` again: 0, and it prints the url                                 |
//! | 25 | `node report`: 0                                                          |
//! | 26 | services stopped (`node stop <partition>:*`): `node promise` exits 2      |
//! | 27 | services started again: `node promise` exits 0                            |
//! | 28 | `request` of an instance whose buildout fails: 0; `node instance`: 1      |
//! | 29 | the failing partition has its `.slapgrid-<id>-error.log`                  |
//! | 30 | the healthy partition is not reprocessed in that run                      |
//! | 31 | both instances requested destroyed, `node instance`, `node report`: 0     |
//! | 32 | the destroyed partition is emptied                                        |
//! | 33 | its directory is kept, mode 0750                                          |
//! | 34 | `remove` of the release, `node software`: 0                               |
//! | 35 | the software release directory is removed                                 |
//!
//! Over HTTPS (`needs_root_e2e_https_*`: our master with `tls = true` and its
//! CA, every call authorized), the node and the user first join with
//! one-time tokens, and the instance requests a child as itself:
//!
//! | #  | step: expected exit code, or check                                        |
//! |----|---------------------------------------------------------------------------|
//! | 36 | `node register` with a computer token: 0; its slapos.cfg names the computer, its key is 0600 |
//! | 37 | `node register` again with the spent token: 1                             |
//! | 38 | `configure client` with a user token: 0; `client.key` is 0600             |
//! | 39 | `node instance` deploys the child the instance requested with its partition certificate |
//! | 40 | `partition_pki` is 0711, the child's key 0400 and its user's              |
//! | 41 | (Python node) the slap library's `Computer.generateCertificate()` gets a new certificate with the node's |
//!
//! Clean-up, even when a check fails ([`Site`]'s `Drop`): supervisord and the
//! master stopped by pid, anything left in the namespace killed, the namespace
//! deleted, the `slaptest…` users and groups removed, the work directory
//! removed (kept with `SLAPOS_E2E_KEEP=1`: step logs, `log/http-calls.txt`,
//! `log/timings.txt`).
//!
//! Needs root, `ip`, and the venv at `$SLAPOS_VENV` (default
//! /var/cache/slapos-e2e/venv-1.26.1, made by `scripts/python-venv.sh`);
//! without them the tests fail and say why. Run with
//! `cargo test -p slapos --test e2e -- --ignored --nocapture` (the timing
//! table of each run goes to stderr).

use std::fs::{self, File};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

// the life cycle driven from the web panel in a browser (same Site)
#[path = "e2e-panel/panel.rs"]
mod panel;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Group, Pid, User};
use test_support::netns::{BridgeNamespace, TestUsers};

/// Our `slapos` (the test build of this crate's binary).
const OURS: &str = env!("CARGO_BIN_EXE_slapos");
const SR_DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/e2e-sr");
const DEFAULT_VENV: &str = "/var/cache/slapos-e2e/venv-1.26.1";
const COMPUTER_ID: &str = "COMP-E2E";
const INSTANCE: &str = "e2e-instance";
const BROKEN: &str = "e2e-broken";
/// The child the instance requests with its partition certificate (HTTPS).
const CHILD: &str = "e2e-child";
const GREETING: &str = "hello-from-e2e";
const PARTITIONS: usize = 3;
/// The master's port, on 127.0.0.1 inside the test's own namespace.
const MASTER_PORT: u16 = 8765;

#[test]
#[ignore = "needs root"]
fn needs_root_e2e_all_ours() {
    life_cycle(Mode { name: "all-ours", tag: 'o', master: Side::Ours, node: Side::Ours, tls: false, cache: false });
}

#[test]
#[ignore = "needs root"]
fn needs_root_e2e_our_node_against_python_master() {
    life_cycle(Mode { name: "python-master", tag: 'm', master: Side::Python, node: Side::Ours, tls: false, cache: false });
}

#[test]
#[ignore = "needs root"]
fn needs_root_e2e_python_node_against_our_master() {
    life_cycle(Mode { name: "python-node", tag: 'n', master: Side::Ours, node: Side::Python, tls: false, cache: false });
}

#[test]
#[ignore = "needs root"]
fn needs_root_e2e_https_all_ours() {
    life_cycle(Mode { name: "https-all-ours", tag: 'h', master: Side::Ours, node: Side::Ours, tls: true, cache: false });
}

#[test]
#[ignore = "needs root"]
fn needs_root_e2e_https_python_node_against_our_master() {
    life_cycle(Mode { name: "https-python-node", tag: 'y', master: Side::Ours, node: Side::Python, tls: true, cache: false });
}

/// The binary cache across nodes: node A builds the release and uploads it
/// to our master's `/shacache`; node C, whose cache entry was tampered
/// with, refuses it and builds; the Python node P installs A's entry from
/// the cache without building; node B, with an empty software root,
/// installs it from the cache without running buildout, and its instance
/// starts and answers. The nodes take turns on one machine with the same
/// paths (a binary release only runs at the software root it was built at).
#[test]
#[ignore = "needs root"]
fn needs_root_e2e_cache_two_nodes() {
    let mut site = Site::new(Mode { name: "cache", tag: 'c', master: Side::Ours, node: Side::Ours, tls: false, cache: true });
    format(&mut site);
    supply_and_request(&mut site);
    cache_across_nodes(&mut site);
    deploy_instance(&mut site);
    let partition = deployed_partition(&site);
    check_services_and_promises(&mut site, &partition);
    check_connection_parameters(&mut site);
    site.print_timings();
}

/// The whole life cycle of run.sh, in its order.
fn life_cycle(mode: Mode) {
    let mut site = Site::new(mode);
    format(&mut site);
    supply_and_request(&mut site);
    build_software(&mut site);
    deploy_instance(&mut site);
    let partition = deployed_partition(&site);
    if site.mode.tls {
        child_deployed(&mut site);
    }
    check_services_and_promises(&mut site, &partition);
    let url = check_connection_parameters(&mut site);
    site.node("node-report", exits(25, 0), &["report", "--now"]);
    promise_failure_and_recovery(&mut site, &partition, &url);
    broken_instance(&mut site, &partition);
    destruction(&mut site, &partition);
    site.print_timings();
}

/// [1]–[3]: `node format` twice; the second run changes nothing.
fn format(site: &mut Site) {
    site.node("node-format", exits(1, 0), &["format", "--now", "-v"]);
    let json = site.path("var/slapos.json");
    let first = fs::read(&json).expect("[1] node format wrote no var/slapos.json");
    fs::write(site.path("log/slapos.json.first"), &first).unwrap();
    site.node("node-format-again", exits(2, 0), &["format", "--now", "-v"]);
    let again = fs::read(&json).expect("[2] var/slapos.json is gone after a second node format");
    assert!(
        first == again,
        "[3] node format is not idempotent: var/slapos.json changed on a second run (the first one is log/slapos.json.first)"
    );
}

/// [4]–[5]: the release supplied to the computer, the instance requested
/// (over HTTPS, with a child to request through its partition certificate).
fn supply_and_request(site: &mut Site) {
    let sr = site.sr_url();
    site.client("supply", exits(4, 0), &["supply", &sr, COMPUTER_ID]);
    let parameters = site.parameters();
    let mut args = vec!["request", INSTANCE, &sr, "--parameters"];
    args.extend(parameters.iter().map(String::as_str));
    site.client("request", exits(5, 0), &args);
}

/// [39]–[40] (HTTPS): the child the instance requested as itself, with its
/// partition certificate, was deployed by the node; its certificate is the
/// partition's, 0400 and owned by the partition's user, in a 0711 directory.
fn child_deployed(site: &mut Site) {
    site.node("node-instance-child", exits(39, 0), &["instance", "--now"]);
    let want = format!("child-of-{GREETING}");
    let child = site.partitions().into_iter().find(|p| site.partition_file(p, "srv/www/index.html").is_some_and(|t| t.trim() == want));
    let child = child.unwrap_or_else(|| {
        panic!("[39] no partition serves the child's greeting {want}: the instance did not request its child through its certificate")
    });
    let pki = site.path("etc/registered/ssl/partition_pki");
    let mode = fs::metadata(&pki).map(|m| m.permissions().mode() & 0o7777).ok();
    assert_eq!(mode, Some(0o711), "[40] {} is not mode 0711", pki.display());
    let key = fs::metadata(pki.join(format!("{child}.key"))).unwrap_or_else(|e| panic!("[40] no key of {child} in {}: {e}", pki.display()));
    let owner = fs::metadata(site.path("srv/slapgrid").join(&child)).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((key.mode() & 0o7777, key.uid()), (0o400, owner.uid()), "[40] the key of {child} is not 0400 and its user's");
}

/// [6]–[12]: `node software` and its no-op, `--only-sr` and `--force` forms.
fn build_software(site: &mut Site) {
    site.node("node-software", exits(6, 0), &["software", "--now"]);
    let software = site.software_path();
    assert!(software.join(".completed").is_file(), "[7] the software release is not installed: no {}/.completed", software.display());
    assert!(
        software.join("instance.cfg").is_file(),
        "[8] the software release has no instance profile {}/instance.cfg",
        software.display()
    );
    site.node("node-software-noop", exits(9, 0), &["software", "--now"]);
    let md5 = site.sr_md5();
    site.node("node-software-only-sr", exits(10, 0), &["software", "--now", "--only-sr", &md5]);
    let forced = site.node("node-software-force", exits(11, 0), &["software", "--now", "--force"]);
    assert!(
        forced.calls.contains("buildingSoftwareRelease"),
        "[12] `node software --force` did not rebuild the installed release (no buildingSoftwareRelease call); its calls to the master:\n{}",
        forced.calls
    );
}

/// [13]–[16]: `node instance` and its no-op, `--force` and unknown `--only-cp`.
fn deploy_instance(site: &mut Site) {
    site.node("node-instance", exits(13, 0), &["instance", "--now"]);
    site.node("node-instance-noop", exits(14, 0), &["instance", "--now"]);
    site.node("node-instance-force", exits(15, 0), &["instance", "--now", "--force"]);
    site.node("node-instance-only-cp-unknown", exits(16, 1), &["instance", "--now", "--only-cp", "slappart99"]);
}

/// [17]: the first partition (in name order) whose buildout.cfg names a
/// software release: the one the instance went to.
fn deployed_partition(site: &Site) -> String {
    let partition =
        site.partitions().into_iter().find(|p| site.partition_file(p, "buildout.cfg").is_some_and(|t| t.contains("software_release")));
    partition.unwrap_or_else(|| panic!("[17] no partition was deployed: no srv/slapgrid/slappart*/buildout.cfg names a software_release"))
}

/// [18]–[21]: the service runs under supervisord, the partition is marked
/// up to date, both kinds of promise passed.
fn check_services_and_promises(site: &mut Site, partition: &str) {
    // exit code not checked (as run.sh): supervisorctl status exits 3 once a
    // program is FATAL, as the Python node's watchdog listener is here
    let status = site.node("node-status", Expect::Any, &["status"]);
    let program = format!("{partition}:http-server-on-watch");
    let running = status.log.lines().any(|line| {
        let mut words = line.split_whitespace();
        words.next() == Some(program.as_str()) && words.next() == Some("RUNNING")
    });
    assert!(running, "[18] the service {program} is not RUNNING under supervisord; `slapos node status` said:\n{}", status.log);
    let timestamp = site.partition_file(partition, ".timestamp").unwrap_or_default();
    assert!(!timestamp.is_empty(), "[19] {partition}/.timestamp is missing or empty after a successful deployment");
    for (check, kind, file) in [(20, "legacy", "check-http"), (21, "plugin", "check_http")] {
        let result = format!(".slapgrid/promise/result/{file}.status.json");
        let text = site.partition_file(partition, &result).unwrap_or_default();
        assert!(
            text.contains("\"failed\": false"),
            "[{check}] the {kind} promise {file} did not pass: {partition}/{result} holds {text:?}"
        );
    }
}

/// [22]–[24]: the published parameters (read with the Python slap library),
/// the service behind the url, the url printed by `slapos request`.
fn check_connection_parameters(site: &mut Site) -> String {
    let parameters = site.connection_parameters();
    let greeting = parameters.get("greeting").and_then(|v| v.as_str());
    assert_eq!(greeting, Some(GREETING), "[22] the instance did not publish greeting={GREETING}: {parameters}");
    let url = parameters.get("url").and_then(|v| v.as_str()).unwrap_or_else(|| panic!("[22] no url published: {parameters}"));
    let answer = site.http_get(url);
    assert_eq!(answer.as_deref().map(str::trim), Ok(GREETING), "[23] the service at the published url {url} does not answer the greeting");
    let sr = site.sr_url();
    let parameters = site.parameters();
    let mut args = vec!["request", INSTANCE, &sr, "--parameters"];
    args.extend(parameters.iter().map(String::as_str));
    let again = site.client("request-again", exits(24, 0), &args);
    assert!(again.log.contains(url), "[24] `slapos request` does not print the published url {url}:\n{}", again.log);
    url.to_string()
}

/// [26]–[27]: a promise fails while the services are stopped, passes again
/// once they are back.
fn promise_failure_and_recovery(site: &mut Site, partition: &str, url: &str) {
    let group = format!("{partition}:*");
    site.node("node-stop-service", Expect::Any, &["stop", &group]);
    site.node("node-promise-failing", exits(26, 2), &["promise", "--now"]);
    site.node("node-start-service", Expect::Any, &["start", &group]);
    // run.sh sleeps 1 s here; waiting for the service is both faster and surer
    let deadline = Instant::now() + Duration::from_secs(30);
    while site.http_get(url).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    site.node("node-promise", exits(27, 0), &["promise", "--now"]);
}

/// [28]–[30]: an instance whose buildout fails leaves its error log and does
/// not make the node touch the healthy partition.
fn broken_instance(site: &mut Site, healthy: &str) {
    let sr = site.sr_url();
    site.client("request-broken", exits(28, 0), &["request", BROKEN, &sr, "--parameters", "fail-buildout=true"]);
    let run = site.node("node-instance-broken", exits(28, 1), &["instance", "--now"]);
    let with_error_log = site.partitions().into_iter().find(|p| {
        let log = format!(".slapgrid-{p}-error.log");
        site.partition_file(p, &log).is_some_and(|t| t.contains("fail-buildout"))
    });
    assert!(with_error_log.is_some(), "[29] no partition has a .slapgrid-<id>-error.log telling why its buildout failed (fail-buildout)");
    assert!(
        !run.log.contains(&format!("Processing Computer Partition {healthy}.")),
        "[30] the healthy partition {healthy} was reprocessed although nothing changed for it"
    );
}

/// [31]–[35]: both instances destroyed and reported, the release removed.
fn destruction(site: &mut Site, partition: &str) {
    let sr = site.sr_url();
    site.client("request-destroyed", exits(31, 0), &["request", INSTANCE, &sr, "--state", "destroyed"]);
    site.client("request-broken-destroyed", exits(31, 0), &["request", BROKEN, &sr, "--state", "destroyed"]);
    site.node("node-instance-destroyed", exits(31, 0), &["instance", "--now"]);
    site.node("node-report-destroy", exits(31, 0), &["report", "--now"]);
    if site.mode.tls {
        // the root's destruction destroyed its child: one more round frees both
        site.node("node-instance-destroyed-child", exits(31, 0), &["instance", "--now"]);
        site.node("node-report-destroy-child", exits(31, 0), &["report", "--now"]);
    }
    let path = site.path("srv/slapgrid").join(partition);
    let left: Vec<_> = fs::read_dir(&path).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "[32] the destroyed partition {partition} still holds {left:?}");
    let mode = fs::metadata(&path).map(|m| m.permissions().mode() & 0o7777);
    assert_eq!(mode.ok(), Some(0o750), "[33] the destroyed partition's directory {} is not kept with mode 0750", path.display());
    site.client("remove-software", exits(34, 0), &["remove", &sr, COMPUTER_ID]);
    site.node("node-software-destroy", exits(34, 0), &["software", "--now"]);
    let software = site.software_path();
    assert!(!software.exists(), "[35] the removed software release is still installed in {}", software.display());
}

/// Which implementation plays a role.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    /// This crate's `slapos`.
    Ours,
    /// slapos.core 1.26.1 from the venv.
    Python,
}

/// One pairing: who is the master, who is the node (and its client).
#[derive(Clone, Copy, Debug)]
struct Mode {
    name: &'static str,
    /// One letter, in user and namespace names (the tests run in parallel).
    tag: char,
    master: Side,
    node: Side,
    /// HTTPS with certificates: the node joins with a token (`node
    /// register`), the user gets a certificate (`configure client`), the
    /// instance requests a child with its partition certificate.
    tls: bool,
    /// The master serves a binary cache, the node uses it and marks its
    /// builds (`needs_root_e2e_cache_two_nodes`).
    cache: bool,
}

/// What a step must exit with.
enum Expect {
    /// The exit code, and the number of the check it is.
    Code { check: u32, code: i32 },
    /// Anything (run.sh does not check it either).
    Any,
}

fn exits(check: u32, code: i32) -> Expect {
    Expect::Code { check, code }
}

/// What a step left: its output, and its calls to the master.
struct Step {
    log: String,
    /// `METHOD /path -> status`, one a line, from the master's access log.
    calls: String,
}

/// The machine under test: a work directory, a network namespace with the
/// master in it, node users; all removed on drop.
struct Site {
    mode: Mode,
    venv: PathBuf,
    prefix: String,
    ns: String,
    work: PathBuf,
    /// Users and groups this run may create (none existed before it).
    users: TestUsers,
    netns: Option<BridgeNamespace>,
    master: Option<Child>,
    timings: Vec<(String, Duration, Option<i32>)>,
}

impl Site {
    fn new(mode: Mode) -> Site {
        let venv = preconditions(mode);
        let pid = std::process::id();
        // ≤ 11 characters, so that tap names (<prefix>tap<n>) would fit IFNAMSIZ
        let base36 = |n: u32| char::from_digit(n % 36, 36).unwrap();
        let prefix = format!("slaptest{}{}{}", mode.tag, base36(pid / 36), base36(pid));
        let mut users = vec![format!("{prefix}soft")];
        users.extend((0..PARTITIONS).map(|i| format!("{prefix}user{i}")));
        for u in &users {
            let taken = User::from_name(u).ok().flatten().is_some() || Group::from_name(u).ok().flatten().is_some();
            assert!(!taken, "user or group {u} already exists (left by an interrupted run? `userdel {u}; groupdel {u}`)");
        }
        let base = std::env::var("SLAPOS_E2E_WORKDIR").unwrap_or_else(|_| "/tmp".into());
        let work = tempfile::Builder::new().prefix(&format!("slapos-e2e-{}-", mode.name)).tempdir_in(base).unwrap().keep();
        let ns = format!("slaptest-e2e-{}{pid}", mode.tag);
        let users = TestUsers(users);
        let mut site = Site { mode, venv, prefix, ns, work, users, netns: None, master: None, timings: Vec::new() };
        eprintln!("[e2e {}] work dir {}, namespace {}, users {}*", mode.name, site.work.display(), site.ns, site.prefix);
        site.lay_out();
        site.create_namespace();
        site.start_master();
        if mode.tls {
            site.enrol();
        }
        site
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.work.join(relative)
    }

    /// The master's URL (https over TLS).
    fn master_url(&self) -> String {
        let scheme = if self.mode.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{MASTER_PORT}")
    }

    /// The instance's parameters, as `--parameters` takes them.
    fn parameters(&self) -> Vec<String> {
        let mut p = vec![format!("greeting={GREETING}")];
        if self.mode.tls {
            p.push(format!("child={CHILD}"));
        }
        p
    }

    fn sr_url(&self) -> String {
        self.path("sr/software.cfg").to_str().unwrap().to_string()
    }

    fn sr_md5(&self) -> String {
        format!("{:x}", Md5::digest(self.sr_url().as_bytes()))
    }

    /// Where SlapOS installs the release: `software_root/md5(url)`.
    fn software_path(&self) -> PathBuf {
        self.path("opt/slapgrid").join(self.sr_md5())
    }

    /// The partition directories, in name order.
    fn partitions(&self) -> Vec<String> {
        let entries = fs::read_dir(self.path("srv/slapgrid")).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
        let mut names: Vec<String> = entries
            .iter()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("slappart"))
            .collect();
        names.sort();
        names
    }

    fn partition_file(&self, partition: &str, relative: &str) -> Option<String> {
        let bytes = fs::read(self.path("srv/slapgrid").join(partition).join(relative)).ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn program(&self, side: Side) -> PathBuf {
        match side {
            Side::Ours => PathBuf::from(OURS),
            Side::Python => self.venv.join("bin/slapos"),
        }
    }

    /// The work tree (readable by the node users), the release, the configurations.
    fn lay_out(&self) {
        fs::set_permissions(&self.work, fs::Permissions::from_mode(0o755)).unwrap();
        for dir in ["etc", "log", "var/run"] {
            fs::create_dir_all(self.path(dir)).unwrap();
        }
        copy_tree(Path::new(SR_DATA), &self.path("sr"));
        let sr_dir = self.path("sr");
        let profile = fs::read_to_string(sr_dir.join("software.cfg.in")).unwrap();
        let mut profile = profile.replace("@SR_DIR@", sr_dir.to_str().unwrap());
        if self.mode.cache {
            profile = self.with_build_marker(&profile);
        }
        fs::write(sr_dir.join("software.cfg"), profile).unwrap();
        fs::remove_file(sr_dir.join("software.cfg.in")).unwrap();
        let mut configuration = self.node_configuration();
        if self.mode.cache {
            configuration += &self.cache_configuration();
        }
        fs::write(self.path("etc/slapos.cfg"), configuration).unwrap();
        if !self.mode.tls {
            // over HTTPS, `configure client` writes it
            let client = format!("[slapos]\nmaster_url = http://127.0.0.1:{MASTER_PORT}\n\n[slapconsole]\n");
            fs::write(self.path("etc/slapos-client.cfg"), client).unwrap();
        }
    }

    /// run.sh's slapos.cfg: node, format and master sections.
    fn node_configuration(&self) -> String {
        let (w, p) = (self.work.display(), &self.prefix);
        let (url, tls) = (self.master_url(), if self.mode.tls { "tls = true\n" } else { "" });
        format!(
            "[slapos]\ncomputer_id = {COMPUTER_ID}\nmaster_url = {url}\n\
             software_root = {w}/opt/slapgrid\ninstance_root = {w}/srv/slapgrid\n\
             pidfile_software = {w}/var/run/slapos-node-software.pid\n\
             pidfile_instance = {w}/var/run/slapos-node-instance.pid\n\
             pidfile_report = {w}/var/run/slapos-node-report.pid\n\n\
             [slapformat]\ninterface_name = br0\npartition_amount = {PARTITIONS}\n\
             computer_xml = {w}/var/slapos.xml\ncomputer_json = {w}/var/slapos.json\n\
             log_file = {w}/log/slapos-node-format.log\npartition_base_name = slappart\n\
             user_base_name = {p}user\nsoftware_user = {p}soft\ntap_base_name = {p}tap\n\
             create_tap = false\nipv4_local_network = 10.0.0.0/16\n\n\
             [slapproxy]\nhost = 127.0.0.1\nport = {MASTER_PORT}\ndatabase_uri = {w}/var/proxy.db\n{tls}"
        )
    }

    /// The namespace: loopback, and a bridge `br0` (a veth port gives it
    /// carrier) with the ULA fd00:e2e::1/64.
    fn create_namespace(&mut self) {
        self.netns = Some(BridgeNamespace::create(&self.ns, "fd00:e2e::1/64"));
    }

    /// `program …` inside the namespace, with the venv first on PATH (buildout,
    /// supervisord), in the work directory.
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("ip");
        let path = format!("{}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", self.venv.display());
        command.args(["netns", "exec", &self.ns]).arg(program).env("PATH", path).current_dir(&self.work).stdin(Stdio::null());
        command
    }

    fn start_master(&mut self) {
        let out_path = self.path("log/slapos-proxy.out");
        let out = File::create(&out_path).unwrap();
        let cfg = self.path("etc/slapos.cfg");
        let log = self.path("log/slapos-proxy.log");
        let mut command = self.command(&self.program(self.mode.master));
        command.args(["proxy", "start", "--cfg"]).arg(cfg).arg("--log-file").arg(log);
        // `ip netns exec` execs the program: this child is the master itself
        let child = command.stdout(out.try_clone().unwrap()).stderr(out).spawn().expect("cannot run `ip netns exec`");
        let master = self.master.insert(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let up = || TcpStream::connect_timeout(&([127, 0, 0, 1], MASTER_PORT).into(), Duration::from_secs(1)).is_ok();
        while !in_netns(&self.ns, up) {
            let exited = master.try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                let out = fs::read_to_string(&out_path).unwrap_or_default();
                panic!("the master ({:?}) did not start on 127.0.0.1:{MASTER_PORT} ({exited:?}):\n{out}", self.mode.master);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `slapos node SUBCOMMAND --cfg slapos.cfg ARGS…` of the node under test.
    fn node(&mut self, name: &str, expect: Expect, args: &[&str]) -> Step {
        let cfg = self.path("etc/slapos.cfg");
        let mut full = vec!["node", args[0], "--cfg", cfg.to_str().unwrap()];
        full.extend(&args[1..]);
        self.step(name, expect, &full)
    }

    /// `slapos COMMAND --cfg slapos-client.cfg ARGS…` of the client under test.
    fn client(&mut self, name: &str, expect: Expect, args: &[&str]) -> Step {
        let cfg = self.path("etc/slapos-client.cfg");
        let mut full = vec![args[0], "--cfg", cfg.to_str().unwrap()];
        full.extend(&args[1..]);
        self.step(name, expect, &full)
    }

    /// Runs one timed step of the node or client under test.
    fn step(&mut self, name: &str, expect: Expect, args: &[&str]) -> Step {
        self.step_as(self.mode.node, name, expect, args)
    }

    /// Runs one timed step of `side`'s `slapos`, output in `log/<name>.log`,
    /// and checks its exit code.
    fn step_as(&mut self, side: Side, name: &str, expect: Expect, args: &[&str]) -> Step {
        let log_path = self.path(&format!("log/{name}.log"));
        let log = File::create(&log_path).unwrap();
        let master_out = self.path("log/slapos-proxy.out");
        let before = fs::metadata(&master_out).map(|m| m.len()).unwrap_or(0);
        let start = Instant::now();
        let mut command = self.command(&self.program(side));
        let status = command.args(args).stdout(log.try_clone().unwrap()).stderr(log).status().expect("cannot run `ip netns exec`");
        self.timings.push((name.to_string(), start.elapsed(), status.code()));
        let log = String::from_utf8_lossy(&fs::read(&log_path).unwrap()).into_owned();
        let calls = access_lines(&read_from(&master_out, before));
        append(&self.path("log/http-calls.txt"), &format!("== {name}\n{calls}"));
        if let Expect::Code { check, code } = expect {
            let tail: Vec<&str> = log.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
            assert!(
                status.code() == Some(code),
                "[{check}] step {name}: `slapos {}` exited with {status}, expected {code}; the end of its output:\n{}",
                args.join(" "),
                tail.join("\n")
            );
        }
        Step { log, calls }
    }

    /// [36]–[38] (HTTPS): the administrator (ours: `ca/admin.crt`) mints a
    /// computer token and a user token; the node under test joins with the
    /// first (`node register`), the client gets its certificate with the
    /// second (`configure client`); the node's slapos.cfg gets the key,
    /// certificate and partition certificates of the registration.
    fn enrol(&mut self) {
        let (url, ca) = (self.master_url(), self.path("var/ca"));
        let admin = format!(
            "[slapos]\nmaster_url = {url}\n\n[slapconsole]\ncert_file = {0}/admin.crt\nkey_file = {0}/admin.key\nmaster_ca_file = {0}/ca.crt\n",
            ca.display()
        );
        fs::write(self.path("etc/admin.cfg"), admin).unwrap();
        let admin = self.path("etc/admin.cfg").display().to_string();
        let token = |site: &mut Site, name: &str, args: &[&str]| {
            let mut full = args.to_vec();
            full.extend(["--cfg", &admin]);
            let step = site.step_as(Side::Ours, name, exits(36, 0), &full);
            let line = step.log.lines().rev().find(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit()));
            line.unwrap_or_else(|| panic!("[36] `slapos {}` printed no token:\n{}", args.join(" "), step.log)).to_string()
        };
        let computer_token = token(self, "computer-token", &["computer", "token", COMPUTER_ID]);
        self.register("node-register", &computer_token, "etc/registered", exits(36, 0));
        let registered = fs::read_to_string(self.path("etc/registered/slapos.cfg")).unwrap();
        let names_it =
            registered.lines().any(|l| l.split_once('=').is_some_and(|(k, v)| k.trim() == "computer_id" && v.trim() == COMPUTER_ID));
        assert!(names_it, "[36] the registered slapos.cfg does not name computer {COMPUTER_ID}:\n{registered}");
        let ssl = self.path("etc/registered/ssl");
        let key_mode = fs::metadata(ssl.join("key")).map(|m| m.permissions().mode() & 0o777).ok();
        assert_eq!(key_mode, Some(0o600), "[36] the node's key {}/key is not mode 0600", ssl.display());
        self.register("node-register-reused-token", &computer_token, "etc/registered-again", exits(37, 1));
        let user_token = token(self, "user-token", &["user", "token", "e2e-user", "--computer", COMPUTER_ID]);
        let client = self.path("etc/slapos-client.cfg").display().to_string();
        let mut args = vec!["configure", "client", "--master-url", &url, "--token", &user_token, "--cfg", &client];
        let ca_file = ca.join("ca.crt").display().to_string();
        match self.mode.node {
            Side::Ours => args.extend(["--master-ca-file", &ca_file]),
            Side::Python => args.extend(["--master-url-web", &url]),
        }
        self.step("configure-client", exits(38, 0), &args);
        let key_mode = fs::metadata(self.path("etc/client.key")).map(|m| m.permissions().mode() & 0o777).ok();
        assert_eq!(key_mode, Some(0o600), "[38] etc/client.key is not mode 0600");
        // the Python slap library raises NotImplementedError on master_ca_file (it never verifies the master)
        let verify = match self.mode.node {
            Side::Ours => format!("master_ca_file = {}/master-ca.crt\n", ssl.display()),
            Side::Python => String::new(),
        };
        let extra = format!(
            "[slapos]\nkey_file = {0}/key\ncert_file = {0}/certificate\ncertificate_repository_path = {0}/partition_pki\n{verify}",
            ssl.display()
        );
        let cfg = fs::read_to_string(self.path("etc/slapos.cfg")).unwrap().replacen("[slapos]\n", &extra, 1);
        fs::write(self.path("etc/slapos.cfg"), cfg).unwrap();
        if self.mode.node == Side::Python {
            self.python_renewal(&ssl);
        }
    }

    /// [41]: the Python slap library renews a computer certificate through
    /// our master (its slapgrid never does it by itself).
    fn python_renewal(&self, ssl: &Path) {
        const SCRIPT: &str = "import sys\nimport slapos.slap\nurl, computer, key, cert = sys.argv[1:5]\n\
            slap = slapos.slap.slap()\nslap.initializeConnection(url, key, cert)\n\
            new = slap.registerComputer(computer).generateCertificate()\n\
            assert '-----BEGIN CERTIFICATE-----' in new['certificate'] and 'PRIVATE KEY' in new['key'], new\nprint('renewed')\n";
        let (key, cert) = (ssl.join("key").display().to_string(), ssl.join("certificate").display().to_string());
        let mut command = self.command(&self.venv.join("bin/python3"));
        let out = command.args(["-c", SCRIPT, &self.master_url(), COMPUTER_ID, &key, &cert]).output().unwrap();
        assert!(out.status.success(), "[41] Computer.generateCertificate() failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `slapos node register COMPUTER_ID` of the node under test into `dir`.
    fn register(&mut self, name: &str, token: &str, dir: &str, expect: Expect) {
        let (url, ca_file) = (self.master_url(), self.path("var/ca/ca.crt").display().to_string());
        let dir = self.path(dir).display().to_string();
        let cfg = format!("{dir}/slapos.cfg");
        let mut args = vec!["node", "register", COMPUTER_ID, "--master-url", &url, "--token", token, "--interface-name", "br0"];
        match self.mode.node {
            Side::Ours => args.extend(["--master-ca-file", &ca_file, "--slapos-configuration", &dir]),
            Side::Python => args.extend(["--master-url-web", &url, "--cfg", &cfg]),
        }
        self.step(name, expect, &args);
    }

    /// The instance's connection parameters, as a client program gets them:
    /// the Python slap library's request, then getConnectionParameterDict.
    fn connection_parameters(&self) -> serde_json::Value {
        const SCRIPT: &str = "import json, sys\nimport slapos.slap\n\
            master_url, sr, reference, kw, key, cert = sys.argv[1:7]\n\
            slap = slapos.slap.slap()\nslap.initializeConnection(master_url, key or None, cert or None)\n\
            partition = slap.registerOpenOrder().request(software_release=sr, partition_reference=reference, \
            partition_parameter_kw=json.loads(kw), state='started')\n\
            print(json.dumps(partition.getConnectionParameterDict(), sort_keys=True))\n";
        let master = self.master_url();
        let kw: serde_json::Map<String, serde_json::Value> =
            self.parameters().iter().filter_map(|p| p.split_once('=')).map(|(k, v)| (k.to_string(), v.into())).collect();
        let kw = serde_json::Value::Object(kw).to_string();
        // over HTTPS, as the user, with the certificate `configure client` wrote
        let (cert, key) = if self.mode.tls {
            (self.path("etc/client.crt").display().to_string(), self.path("etc/client.key").display().to_string())
        } else {
            (String::new(), String::new())
        };
        let mut command = self.command(&self.venv.join("bin/python3"));
        let out = command.args(["-c", SCRIPT, &master, &self.sr_url(), INSTANCE, &kw, &key, &cert]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        fs::write(self.path("log/connection-parameters.json"), &text).unwrap();
        assert!(
            out.status.success(),
            "[22] the slap library could not read the connection parameters: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("[22] connection parameters are not JSON ({e}): {text}"))
    }

    /// GET `url` from inside the namespace (5 s at most).
    fn http_get(&self, url: &str) -> Result<String, String> {
        let get = || {
            let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into();
            let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
            response.body_mut().read_to_string().map_err(|e| e.to_string())
        };
        in_netns(&self.ns, get)
    }

    fn print_timings(&self) {
        let (m, n) = (self.mode.master, self.mode.node);
        let mut table = format!("== e2e {}: master {m:?}, node and client {n:?}\n", self.mode.name);
        for (step, took, code) in &self.timings {
            let code = code.map_or("signal".to_string(), |c| c.to_string());
            table += &format!("{step:<30} {:>7.2} s  rc={code}\n", took.as_secs_f64());
        }
        let total: Duration = self.timings.iter().map(|t| t.1).sum();
        table += &format!("{:<30} {:>7.2} s\n", "total of the steps", total.as_secs_f64());
        fs::write(self.path("log/timings.txt"), &table).unwrap();
        eprint!("{table}");
    }
}

impl Drop for Site {
    /// Everything this run started or created goes, whether it passed or not.
    fn drop(&mut self) {
        self.stop_supervisord();
        if let Some(mut master) = self.master.take() {
            stop(Pid::from_raw(master.id() as i32), Duration::from_secs(10));
            let _ = master.kill();
            let _ = master.wait();
        }
        if self.netns.is_some() {
            self.kill_leftovers();
        }
        drop(self.netns.take());
        drop(std::mem::replace(&mut self.users, TestUsers(Vec::new())));
        self.remove_watchdog_logs();
        if std::env::var("SLAPOS_E2E_KEEP").as_deref() == Ok("1") {
            eprintln!("[e2e {}] work dir kept: {}", self.mode.name, self.work.display());
        } else {
            let _ = fs::remove_dir_all(&self.work);
        }
    }
}

impl Site {
    /// The node's supervisord (a daemon: not our child) and its programs.
    fn stop_supervisord(&self) {
        let Ok(text) = fs::read_to_string(self.path("srv/slapgrid/var/run/supervisord.pid")) else {
            return;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            return;
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("supervisord") {
            stop(Pid::from_raw(pid), Duration::from_secs(30));
        }
    }

    /// Whatever still runs in the namespace was started by this run.
    fn kill_leftovers(&self) {
        let Ok(out) = Command::new("ip").args(["netns", "pids", &self.ns]).output() else {
            return;
        };
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            eprintln!("[e2e {}] killing leftover process {pid}: {}", self.mode.name, String::from_utf8_lossy(&cmdline).replace('\0', " "));
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    /// supervisord (started with an empty environment) writes the AUTO logs of
    /// the watchdog listener into /tmp: those of this run go.
    fn remove_watchdog_logs(&self) {
        let Ok(since) = fs::metadata(self.path("etc/slapos.cfg")).and_then(|m| m.modified()) else {
            return;
        };
        let Ok(entries) = fs::read_dir("/tmp") else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = name.starts_with("watchdog-std") && name.contains("---supervisor-") && name.ends_with(".log");
            if ours && entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= since) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Root, the tools the clean-up needs, and a venv every node user can run.
fn preconditions(mode: Mode) -> PathBuf {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root: this test creates users and a network namespace (run `cargo test -p slapos --test e2e -- --ignored` as root)"
    );
    for tool in ["ip", "runuser", "userdel", "groupdel"] {
        let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].iter().any(|d| Path::new(d).join(tool).is_file());
        assert!(found, "needs the program `{tool}` (iproute2, util-linux, passwd)");
    }
    let venv = std::env::var_os("SLAPOS_VENV").map_or_else(|| PathBuf::from(DEFAULT_VENV), PathBuf::from);
    let python = venv.join("bin/python3");
    let remake = "make it with `bash scripts/python-venv.sh` (or point SLAPOS_VENV to one)";
    assert!(python.is_file(), "needs the venv {} (zc.buildout, supervisor, slapos.core 1.26.1): {remake}", venv.display());
    let imports = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(&python)
        .args(["-c", "import slapos.slap, zc.buildout, supervisor"])
        .output()
        .unwrap();
    assert!(
        imports.status.success(),
        "{} cannot import slapos.slap, zc.buildout and supervisor as an unprivileged user (an interpreter under /root?): {remake}",
        python.display()
    );
    let pip_conf = fs::read_to_string(venv.join("pip.conf")).unwrap_or_default();
    assert!(
        pip_conf.contains("no-build-isolation"),
        "the venv's pip.conf does not turn off build isolation (the offline develop egg would need the index): {remake}"
    );
    if mode.node == Side::Python || mode.master == Side::Python {
        let help = Command::new(venv.join("bin/slapos")).args(["help", "node", "instance"]).output().unwrap();
        assert!(
            help.status.success(),
            "the venv's slapos has no `node instance` command (on Python 3.11 the py311_resources_compat shim is missing): {remake}"
        );
    }
    venv
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

/// Sends SIGTERM, waits up to `grace` for the process to go, then SIGKILL.
fn stop(pid: Pid, grace: Duration) {
    if kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        let zombie = fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "));
        if kill(pid, None).is_err() || zombie {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

/// `METHOD /path -> status` for each Werkzeug-style access line
/// (`… "POST /path HTTP/1.1" 200 -`), one a line.
fn access_lines(text: &str) -> String {
    let call = |line: &str| {
        let (_, rest) = line.split_once('"')?;
        let (request, after) = rest.split_once('"')?;
        let mut words = request.split(' ');
        let (method, path, protocol) = (words.next()?, words.next()?, words.next()?);
        let status = after.split_whitespace().next()?;
        protocol.starts_with("HTTP/").then(|| format!("{method} {path} -> {status}\n"))
    };
    text.lines().filter_map(call).collect()
}

/// The text of `path` from byte `offset` on.
fn read_from(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(bytes.get(offset as usize..).unwrap_or_default()).into_owned()
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
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

/// What a build step leaves: the marker `[build-marker]` writes (only when
/// buildout runs it).
const BUILD_MARKER: &str = "build-marker/built";

/// [c0]–[c10]: a release on the force list is not built; node A builds and uploads; node C refuses a tampered tarball
/// and builds; the Python node P and node B install from the cache without
/// building.
fn cache_across_nodes(site: &mut Site) {
    let marker = site.path(BUILD_MARKER);
    // a release on the force list is never built: the empty cache fails it
    let cfg = site.path("etc/slapos.cfg");
    let configuration = fs::read_to_string(&cfg).unwrap();
    let forced = format!("{configuration}download-from-binary-cache-force-url-list = {}\n", site.path("sr").display());
    fs::write(&cfg, forced).unwrap();
    let f = site.node("node-forced-software", Expect::Any, &["software", "--now"]);
    fs::write(&cfg, configuration).unwrap();
    assert!(
        f.log.lines().any(|l| l.contains("Binary cache forced for") && l.contains("no entry for") && l.contains("will retry again")),
        "[c0] a release on download-from-binary-cache-force-url-list missing from the cache did not fail saying so:\n{}",
        f.log
    );
    assert!(!marker.exists() && !site.software_path().exists(), "[c0] a release on the force list was built");
    let built = site.node("node-a-software", exits(6, 0), &["software", "--now"]);
    assert!(marker.is_file(), "[c1] node A's build did not run its build step (no {})", marker.display());
    assert!(built.log.contains("uploaded") && built.log.contains("to the binary cache"), "[c2] node A did not upload:\n{}", built.log);
    let tarballs = site.cached_tarballs();
    assert_eq!(tarballs.len(), 1, "[c2] the master's cache should hold one tarball: {tarballs:?}");
    // node C: A's tarball tampered with on the master
    let original = fs::read(&tarballs[0]).unwrap();
    fs::write(&tarballs[0], b"tampered").unwrap();
    site.fresh_software_root("node-a");
    fs::remove_file(&marker).unwrap();
    let c = site.node("node-c-software", exits(6, 0), &["software", "--now"]);
    assert!(
        c.log.lines().any(|l| l.contains("binary cache not used") && l.contains("does not match its SHA-512")),
        "[c3] node C did not say why it refused the tampered tarball:\n{}",
        c.log
    );
    assert!(marker.is_file(), "[c4] node C refused the tampered tarball but did not build the release");
    assert!(site.software_path().join(".completed").is_file(), "[c4] node C's release is not completed");
    assert!(site.leftovers_in_software_root().is_empty(), "[c5] node C left {:?}", site.leftovers_in_software_root());
    fs::write(&tarballs[0], original).unwrap();
    // node P: the Python node (slapos.core 1.26.1) installs what ours uploaded
    site.fresh_software_root("node-c");
    fs::remove_file(&marker).unwrap();
    let p = site.python_node("python-node-software", exits(6, 0), &["software", "--now"]);
    assert!(!marker.exists(), "[c10] the Python node built the release instead of installing it from our cache:\n{}", p.log);
    assert!(site.software_path().join(".completed").is_file(), "[c10] the Python node did not install the release:\n{}", p.log);
    // node B: an empty software root, installed from the cache
    site.fresh_software_root("node-p");
    let lookup = site.node_cmd("cache-lookup", exits(7, 0), &["cache", "lookup", "binary-sr", &site.sr_url()]);
    assert!(lookup.log.contains("yes"), "[c6] `slapos cache lookup` shows no usable entry:\n{}", lookup.log);
    let b = site.node("node-b-software", exits(6, 0), &["software", "--now"]);
    assert!(b.log.contains("from the binary cache"), "[c7] node B did not install from the binary cache:\n{}", b.log);
    assert!(!b.log.contains("Launching buildout"), "[c8] node B ran buildout:\n{}", b.log);
    assert!(!marker.exists(), "[c8] node B ran the build step ({} is back)", marker.display());
    let software = site.software_path();
    assert!(software.join(".completed").is_file() && software.join("instance.cfg").is_file(), "[c9] node B's release is not installed");
    assert!(site.leftovers_in_software_root().is_empty(), "[c9] node B left {:?}", site.leftovers_in_software_root());
}

impl Site {
    /// The release profile with a part that writes [`BUILD_MARKER`].
    fn with_build_marker(&self, profile: &str) -> String {
        let dir = self.path("build-marker");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        let part =
            format!("\n[build-marker]\nrecipe = e2erecipe:template\ncontent = built\noutput = {}\n", self.path(BUILD_MARKER).display());
        profile.replacen("parts =\n", "parts =\n  build-marker\n", 1) + &part
    }

    /// The master's cache and the node's `[networkcache]`, with a signing
    /// key made for this run.
    fn cache_configuration(&self) -> String {
        let (key, cert) = (self.path("etc/signature.key"), self.path("etc/signature.crt"));
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=e2e-cache"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("needs the program openssl");
        assert!(made.status.success(), "openssl req: {}", String::from_utf8_lossy(&made.stderr));
        let cert = fs::read_to_string(cert).unwrap().lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n");
        let (w, base) = (self.work.display(), format!("http://127.0.0.1:{MASTER_PORT}/shacache"));
        format!(
            "shacache_content_directory = {w}/srv/shacache\nshacache_metadata_directory = {w}/srv/shadir\n\n\
             [networkcache]\ndownload-binary-cache-url = {base}/cache\ndownload-binary-dir-url = {base}/dir\n\
             upload-binary-cache-url = {base}/cache\nupload-binary-dir-url = {base}/dir\n\
             signature-private-key-file = {}\nsignature-certificate-list =\n{cert}\n",
            key.display()
        )
    }

    /// The tarballs in the master's content directory.
    fn cached_tarballs(&self) -> Vec<PathBuf> {
        let entries = fs::read_dir(self.path("srv/shacache")).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
        entries.iter().map(|e| e.path()).filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.')).collect()
    }

    /// Moves the software root aside (`opt/slapgrid-<name>`) and makes an
    /// empty one with the same owner and mode: the next node starts empty.
    fn fresh_software_root(&self, name: &str) {
        use std::os::unix::fs::MetadataExt;
        let root = self.path("opt/slapgrid");
        let m = fs::metadata(&root).unwrap();
        fs::rename(&root, self.path(&format!("opt/slapgrid-{name}"))).unwrap();
        fs::create_dir(&root).unwrap();
        std::os::unix::fs::chown(&root, Some(m.uid()), Some(m.gid())).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(m.mode() & 0o7777)).unwrap();
    }

    /// What is in the software root besides the release.
    fn leftovers_in_software_root(&self) -> Vec<String> {
        let entries = fs::read_dir(self.path("opt/slapgrid")).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
        let md5 = self.sr_md5();
        entries.iter().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| *n != md5).collect()
    }

    /// `slapos node SUBCOMMAND --cfg slapos.cfg ARGS…` of the Python node.
    fn python_node(&mut self, name: &str, expect: Expect, args: &[&str]) -> Step {
        let node = std::mem::replace(&mut self.mode.node, Side::Python);
        let step = self.node(name, expect, args);
        self.mode.node = node;
        step
    }

    /// `slapos COMMAND… --cfg slapos.cfg` (a node-side command outside `node`).
    fn node_cmd(&mut self, name: &str, expect: Expect, args: &[&str]) -> Step {
        let cfg = self.path("etc/slapos.cfg");
        let mut full = args.to_vec();
        full.extend(["--cfg", cfg.to_str().unwrap()]);
        self.step(name, expect, &full)
    }
}
