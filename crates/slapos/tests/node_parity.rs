//! The node's commands beside slapos.core 1.26.1's: every command name of
//! `slapos --help`, `configure local` (the written configuration runs a
//! master and a local format), `node prune` on a fake node, and the slapgrid
//! options each grid command takes.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_slapos");
const NOBODY: u32 = 65534;

/// The commands of slapos.core 1.26.1's `slapos --help` (cliff's command
/// names), checked against the venv by
/// `needs_venv_every_python_command_name_is_ours_too`.
const SLAPOS_1_26_1_COMMANDS: &[&str] = &[
    "cachelookup binary-sr",
    "cachelookup pypi",
    "cachelookup url",
    "complete",
    "computer info",
    "computer list",
    "computer token",
    "configure client",
    "configure local",
    "console",
    "help",
    "node bang",
    "node boot",
    "node collect",
    "node format",
    "node instance",
    "node promise",
    "node prune",
    "node register",
    "node report",
    "node restart",
    "node software",
    "node start",
    "node status",
    "node stop",
    "node supervisorctl",
    "node supervisord",
    "node tail",
    "proxy show",
    "proxy start",
    "remove",
    "request",
    "service info",
    "service list",
    "supply",
];

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).stdin(Stdio::null()).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Whether `slapos <name> --help` is a command of ours.
fn is_ours(name: &str) -> bool {
    if name == "help" {
        // `slapos help node software`, as cliff's
        return run(&["help", "node", "software"]).status.success() && text(&run(&["help", "node", "software"])).contains("--only-sr");
    }
    let mut args: Vec<&str> = name.split(' ').collect();
    args.push("--help");
    run(&args).status.success()
}

fn check_names(names: &[String]) {
    let missing: Vec<&String> = names.iter().filter(|n| !is_ours(n)).collect();
    assert!(missing.is_empty(), "SlapOS commands we lack: {missing:?}");
    // and the top-level help lists them all, grouped
    let help = text(&run(&["--help"]));
    for n in names {
        assert!(help.contains(&format!("\n  {n} ")) || help.contains(&format!("\n  {n}\n")), "`slapos --help` does not list {n}:\n{help}");
    }
    for group in ["client commands:", "node commands:", "other commands:"] {
        assert!(help.contains(group), "{group} missing:\n{help}");
    }
}

#[test]
fn every_slapos_command_name_is_ours_too() {
    check_names(&SLAPOS_1_26_1_COMMANDS.iter().map(|s| s.to_string()).collect::<Vec<_>>());
}

#[test]
#[ignore = "needs the venv"]
fn needs_venv_every_python_command_name_is_ours_too() {
    let venv = test_support::python_venv();
    let script = "from slapos.cli.entry import SlapOSApp\napp = SlapOSApp()\nprint('\\n'.join(sorted(n for n, _ in app.command_manager)))";
    let o = Command::new(venv.join("bin/python3")).arg("-c").arg(script).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let names: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect();
    assert!(names.len() > 20, "{names:?}");
    let mut known: Vec<String> = SLAPOS_1_26_1_COMMANDS.iter().map(|s| s.to_string()).collect();
    known.sort();
    assert_eq!(names, known, "the committed list is slapos.core 1.26.1's");
    check_names(&names);
}

#[test]
fn grid_commands_take_slapgrid_options() {
    // --partition-timeout on the four commands (slapgrid has it on each)
    for cmd in ["software", "instance", "report", "promise"] {
        let o = run(&["node", cmd, "--help"]);
        let help = text(&o);
        for opt in [
            "--partition-timeout",
            "--maximal_delay",
            "--key_file",
            "--cert_file",
            "--master_ca_file",
            "--certificate_repository_path",
            "--signature_private_key_file",
            "--supervisord-socket",
            "--supervisord-configuration-path",
            "--pidfile",
            "--buildout-debug",
            "--now",
        ] {
            assert!(help.contains(opt), "node {cmd} --help lacks {opt}:\n{help}");
        }
    }
}

/// A test directory the node's commands can use: as root they run as
/// nobody (a local node is its user's).
fn dir(prefix: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    d
}

fn as_user(args: &[&str], home: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).env("HOME", home).env("SLAPOS_LOCAL_RANGES", home.join("ranges")).current_dir(home).stdin(Stdio::null());
    if nix::unistd::geteuid().is_root() {
        c.uid(NOBODY).gid(NOBODY);
    }
    c
}

fn chown(p: &Path) {
    if nix::unistd::geteuid().is_root() {
        assert!(Command::new("chown").arg("-R").arg(format!("{NOBODY}:{NOBODY}")).arg(p).status().unwrap().success());
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn configure_local_writes_a_configuration_the_master_and_format_run() {
    let d = dir("slapos-configure-local-");
    let home = d.path();
    // the binary where nobody can run it
    let bin = home.join("slapos");
    std::fs::copy(BIN, &bin).unwrap();
    chown(home);
    let p = |s: &str| home.join(s).display().to_string();
    let port = test_support::free_port();
    let args = [
        "configure",
        "local",
        "--partition-number",
        "2",
        "--daemon-listen-port",
        &port.to_string(),
        "--slapos-instance-root",
        &p("srv/slapgrid"),
        "--slapos-software-root",
        &p("opt/slapgrid"),
        "--slapos-buildout-directory",
        &p("opt/slapos"),
        "--slapos-configuration-directory",
        &p("etc/opt/slapos"),
    ];
    let o = as_user(&args, home).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("slapos node format --cfg"), "the next steps are printed: {}", text(&o));
    let cfg = home.join("etc/opt/slapos/slapos.cfg");
    let written = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        written.contains("computer_id = local_computer") && written.contains(&format!("master_url = http://127.0.0.1:{port}")),
        "{written}"
    );
    let net = written.lines().find_map(|l| l.strip_prefix("ipv4_local_network = ")).unwrap().to_string();
    assert!(net.starts_with("127.") && !net.starts_with("127.0.") && net.ends_with(".0/24"), "a local node's own loopback range: {net}");
    assert!(home.join("etc/opt/slapos/slapos-proxy.cfg").is_file());
    let program = std::fs::read_to_string(home.join("srv/slapgrid/etc/supervisord.conf.d/slapproxy.conf")).unwrap();
    assert!(program.contains("proxy start --cfg ") && program.contains("slapos-proxy.cfg"), "{program}");
    assert_eq!(std::fs::read_link(home.join(".slapos/slapos-client.cfg")).unwrap(), cfg);
    // a second run refuses to overwrite
    let again = as_user(&args, home).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again).contains("already exist"), "{}", text(&again));

    // the master starts from slapos-proxy.cfg, the node formats from slapos.cfg
    let proxy_cfg = p("etc/opt/slapos/slapos-proxy.cfg");
    let mut master = Command::new(&bin);
    master.args(["proxy", "start", "--cfg", &proxy_cfg]).stdout(Stdio::null()).stderr(Stdio::null()).stdin(Stdio::null());
    if nix::unistd::geteuid().is_root() {
        master.uid(NOBODY).gid(NOBODY);
    }
    let _master = Killed(master.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the master did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = as_user(&["node", "format", "--cfg", cfg.to_str().unwrap(), "--local", "--now"], home).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(home.join("srv/slapgrid/slappart1").is_dir(), "{}", text(&o));
    // the client reads the node's file through the link: the master knows the computer
    let show = as_user(&["proxy", "show", "--cfg", &proxy_cfg], home).output().unwrap();
    assert!(text(&show).contains("local_computer"), "{}", text(&show));
    let state = std::fs::read_to_string(home.join("opt/slapos/slapos.xml")).unwrap();
    assert!(state.contains(&net), "format took the configured range {net}");
    // and node prune reads it (its shared parts' directory is made)
    assert!(home.join("opt/slapgrid/shared").is_dir());
    let o = as_user(&["node", "prune", "--cfg", cfg.to_str().unwrap(), "--dry-run"], home).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn configure_local_refuses_values_a_configuration_cannot_hold() {
    let d = dir("slapos-configure-bad-");
    let o = run(&[
        "configure",
        "local",
        "--slapos-configuration-directory",
        &d.path().join("etc").display().to_string(),
        "--interface-name",
        "lo\n[evil]",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("cannot go into slapos.cfg"), "{}", text(&o));
    assert!(!d.path().join("etc/slapos.cfg").exists());
}

#[test]
fn node_prune_removes_unused_shared_parts_and_dry_run_only_logs() {
    let d = dir("slapos-prune-");
    let root = d.path();
    let shared = root.join("shared");
    let used = shared.join("gcc/aaaabbbbccccdddd");
    let unused = shared.join("old/eeeeffff00001111");
    for p in [&used, &unused] {
        std::fs::create_dir_all(p.join("lib")).unwrap();
        std::fs::write(p.join(".buildout-shared.json"), "{}").unwrap();
    }
    let sr = root.join("software/0123");
    std::fs::create_dir_all(&sr).unwrap();
    std::fs::write(sr.join(".installed.cfg"), format!("location = {}\n", used.display())).unwrap();
    std::fs::create_dir_all(root.join("instance")).unwrap();
    let cfg = root.join("slapos.cfg");
    std::fs::write(
        &cfg,
        format!(
            "[slapos]\nsoftware_root = {r}/software\ninstance_root = {r}/instance\nshared_part_list = {r}/shared\npidfile_software = {r}/sr.pid\nroot_check = False\n",
            r = root.display()
        ),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    // while node software runs (its pid file names a live slapos): refused
    let busy = Command::new(BIN)
        .args(["node", "watchdog", "--master-url", "http://127.0.0.1:9", "--computer-id", "C", "--instance-root", "/nonexistent"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let busy = Killed(busy);
    std::fs::write(root.join("sr.pid"), busy.0.id().to_string()).unwrap();
    let o = run(&["node", "prune", "--cfg", &cfg]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("Cannot prune while software is running"), "{}", text(&o));
    assert!(unused.exists());
    drop(busy);
    let o = run(&["node", "prune", "--cfg", &cfg, "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("Unused shared parts at {}", unused.display())), "{}", text(&o));
    assert!(unused.exists() && used.exists(), "a dry run removes nothing");
    let o = run(&["node", "prune", "--cfg", &cfg]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(" ... removed"), "{}", text(&o));
    assert!(!unused.exists() && used.exists());
    // without shared_part_list: SlapOS's error
    std::fs::write(
        root.join("bare.cfg"),
        format!("[slapos]\nsoftware_root = {0}\ninstance_root = {0}\nroot_check = False\n", root.display()),
    )
    .unwrap();
    let o = run(&["node", "prune", "--cfg", &root.join("bare.cfg").display().to_string()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("No shared_part_list options in slapos config"), "{}", text(&o));
}

/// docs/commands.md is what `scripts/slapos-commands.py` writes for this
/// binary (run it again after changing the command line).
#[test]
#[ignore = "needs the venv"]
fn needs_venv_the_command_table_is_up_to_date() {
    let venv = test_support::python_venv();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let o = Command::new(venv.join("bin/python3")).arg(root.join("scripts/slapos-commands.py")).arg(BIN).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let committed = std::fs::read_to_string(root.join("docs/commands.md")).unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout) == committed,
        "docs/commands.md is stale: run `$SLAPOS_VENV/bin/python3 scripts/slapos-commands.py target/debug/slapos > docs/commands.md`"
    );
}
