//! `slapos node format` as root, in a network namespace of its own (a
//! bridge with a ULA prefix) with users of a test prefix, all removed at the
//! end even on failure. Skipped (with a message) when not root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_slapos");

struct Sandbox {
    ns: String,
    prefix: String,
    partitions: usize,
    dir: tempfile::TempDir,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let mut users = vec![format!("{}soft", self.prefix)];
        users.extend((0..self.partitions).map(|i| format!("{}user{i}", self.prefix)));
        for u in users {
            let _ = Command::new("userdel").arg(&u).output();
            let _ = Command::new("groupdel").arg(&u).output();
        }
    }
}

fn sh(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

fn sandbox(tag: char, partitions: usize) -> Option<Sandbox> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (users and a network namespace)");
        return None;
    }
    let id = std::process::id() % 100000;
    let s = Sandbox { ns: format!("tfmt{tag}{id}"), prefix: format!("tf{tag}{id}"), partitions, dir: tempfile::tempdir().unwrap() };
    let ns = s.ns.clone();
    sh(&["ip", "netns", "add", &ns]);
    for cmd in [
        "ip link set lo up",
        "ip link add br0 type bridge",
        "ip link add br0p0 type veth peer name br0p1",
        "ip link set br0p0 master br0",
        "ip link set br0p0 up",
        "ip link set br0p1 up",
        "ip link set br0 up",
        "ip -6 addr add fd00:7e57::1/64 dev br0 nodad",
    ] {
        let mut args = vec!["ip", "netns", "exec", &ns];
        args.extend(cmd.split(' '));
        sh(&args);
    }
    std::fs::set_permissions(s.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    Some(s)
}

fn config(s: &Sandbox, partitions: usize) -> PathBuf {
    let d = s.dir.path();
    let cfg = d.join("slapos.cfg");
    std::fs::write(
        &cfg,
        format!(
            "[slapos]\ncomputer_id = COMP-T\nmaster_url = http://127.0.0.1:9\nsoftware_root = {d}/opt\ninstance_root = {d}/srv\n\n[slapformat]\ninterface_name = br0\npartition_amount = {partitions}\ncomputer_xml = {d}/slapos.xml\ncomputer_json = {d}/slapos.json\nuser_base_name = {p}user\nsoftware_user = {p}soft\ntap_base_name = {p}tap\ncreate_tap = false\nipv4_local_network = 10.0.0.0/16\n",
            d = d.display(),
            p = s.prefix
        ),
    )
    .unwrap();
    cfg
}

fn format(s: &Sandbox, cfg: &Path, extra: &[&str]) -> Output {
    Command::new("ip").args(["netns", "exec", &s.ns, BIN, "node", "format", "--now", "--cfg"]).arg(cfg).args(extra).output().unwrap()
}

fn addresses(s: &Sandbox) -> String {
    String::from_utf8(Command::new("ip").args(["netns", "exec", &s.ns, "ip", "addr", "show", "dev", "br0"]).output().unwrap().stdout).unwrap()
}

fn mode_owner(p: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    (m.mode() & 0o7777, m.uid())
}

#[test]
fn formats_a_node_then_reruns_check_and_dry_run_change_nothing_and_growth_keeps_partitions() {
    let Some(s) = sandbox('a', 3) else { return };
    let cfg = config(&s, 2);
    // dry run: the plan, nothing changed (not even the state file)
    let o = format(&s, &cfg, &["--dry_run"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let plan = String::from_utf8_lossy(&o.stdout);
    assert!(plan.contains(&format!("useradd -d {}/srv/slappart0", s.dir.path().display())), "{plan}");
    assert!(plan.contains("ip addr add fd00:7e57::2/64 dev br0"), "{plan}");
    assert!(!s.dir.path().join("slapos.xml").exists());
    assert!(!addresses(&s).contains("fd00:7e57::2"));
    // the real run: no master listens, so exit 2 (formatted, not reported)
    let o = format(&s, &cfg, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let addrs = addresses(&s);
    assert!(addrs.contains("fd00:7e57::2/64") && addrs.contains("fd00:7e57::3/64"), "{addrs}");
    assert_eq!(addrs.matches("inet 10.0.").count(), 2, "one IPv4 per partition: {addrs}");
    let user0 = nix::unistd::User::from_name(&format!("{}user0", s.prefix)).unwrap().expect("user created");
    assert_eq!(mode_owner(&s.dir.path().join("srv/slappart0")), (0o750, user0.uid.as_raw()));
    assert_eq!(mode_owner(&s.dir.path().join("srv")).0, 0o755);
    let json = std::fs::read_to_string(s.dir.path().join("slapos.json")).unwrap();
    // re-run: nothing to change, same state
    let o = format(&s, &cfg, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing to change"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(s.dir.path().join("slapos.json")).unwrap(), json, "same addresses for the same partitions");
    // check: no drift, then a wrong mode is drift (exit 1), and format repairs it
    assert_eq!(format(&s, &cfg, &["--check"]).status.code(), Some(0));
    std::fs::set_permissions(s.dir.path().join("srv/slappart1"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let o = format(&s, &cfg, &["--check"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("chmod 750"), "{}", String::from_utf8_lossy(&o.stdout));
    format(&s, &cfg, &[]);
    assert_eq!(mode_owner(&s.dir.path().join("srv/slappart1")).0, 0o750);
    // growth keeps the old partitions untouched
    let old: serde_json::Value = serde_json::from_str(&json).unwrap();
    let cfg3 = config(&s, 3);
    assert_eq!(format(&s, &cfg3, &[]).status.code(), Some(2));
    let new: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(s.dir.path().join("slapos.json")).unwrap()).unwrap();
    assert_eq!(new["partition_list"][0], old["partition_list"][0]);
    assert_eq!(new["partition_list"][1], old["partition_list"][1]);
    assert_eq!(new["partition_list"][2]["address_list"][1]["addr"], "fd00:7e57::4");
    // shrinking is refused before anything changes
    let o = format(&s, &config(&s, 1), &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("partition_amount 1 is smaller"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn bad_options_are_named_before_anything_changes() {
    let Some(s) = sandbox('b', 0) else { return };
    let cfg = config(&s, 2);
    let text = std::fs::read_to_string(&cfg).unwrap();
    for (from, to, needle) in [
        ("partition_amount = 2", "partition_amount = two", "'two'"),
        ("ipv4_local_network = 10.0.0.0/16", "ipv4_local_network = 10.0.0.0/40", "'10.0.0.0/40'"),
        ("interface_name = br0", "interface_name = nosuch0", "'nosuch0'"),
        ("create_tap = false", "create_tap = yes", "'yes'"),
    ] {
        std::fs::write(&cfg, text.replace(from, to)).unwrap();
        let o = format(&s, &cfg, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{to}: {err}");
        assert!(err.contains(needle), "{to}: {err}");
        assert!(!s.dir.path().join("slapos.xml").exists(), "{to}: nothing written");
    }
}
