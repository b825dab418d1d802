//! `slapos node format` as root, in a network namespace of its own (a
//! bridge with a ULA prefix) with users of a test prefix (`slaptest`), all
//! removed at the end even on failure. Slow tier: every test is
//! `#[ignore = "needs root"]` and fails, saying so, when run without root
//! (`cargo test -- --ignored needs_root`, as root).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use test_support::netns::{BridgeNamespace, TestUsers};

const BIN: &str = env!("CARGO_BIN_EXE_slapos");

/// Field order is drop order: the namespace goes, then the users.
struct Sandbox {
    ns: String,
    _netns: BridgeNamespace,
    _users: TestUsers,
    /// Prefix of the users and groups this test creates (`slaptest...`).
    prefix: String,
    /// Prefix of its taps (interface names are at most 15 bytes).
    tap: String,
    dir: tempfile::TempDir,
}

fn sandbox(tag: char, partitions: usize) -> Sandbox {
    test_support::require_root();
    let id = std::process::id() % 100000;
    let ns = format!("tfmt{tag}{id}");
    let prefix = format!("slaptest{tag}{id}");
    let mut users = vec![format!("{prefix}soft")];
    users.extend((0..partitions).map(|i| format!("{prefix}user{i}")));
    let s = Sandbox {
        _netns: BridgeNamespace::create(&ns, "fd00:7e57::1/64"),
        _users: TestUsers(users),
        ns,
        prefix,
        tap: format!("st{tag}{id}tap"),
        dir: tempfile::tempdir().unwrap(),
    };
    std::fs::set_permissions(s.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    s
}

fn config(s: &Sandbox, partitions: usize) -> PathBuf {
    let d = s.dir.path();
    let cfg = d.join("slapos.cfg");
    std::fs::write(
        &cfg,
        format!(
            "[slapos]\ncomputer_id = COMP-T\nmaster_url = http://127.0.0.1:9\nsoftware_root = {d}/opt\ninstance_root = {d}/srv\n\n[slapformat]\ninterface_name = br0\npartition_amount = {partitions}\ncomputer_xml = {d}/slapos.xml\ncomputer_json = {d}/slapos.json\nuser_base_name = {p}user\nsoftware_user = {p}soft\ntap_base_name = {t}\ncreate_tap = false\nipv4_local_network = 10.0.0.0/16\n",
            d = d.display(),
            p = s.prefix,
            t = s.tap
        ),
    )
    .unwrap();
    cfg
}

/// The sandbox configuration with `create_tap = false` replaced by `options`.
fn config_with(s: &Sandbox, partitions: usize, options: &str) -> PathBuf {
    let cfg = config(s, partitions);
    let text = std::fs::read_to_string(&cfg).unwrap().replace("create_tap = false\n", options);
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// Runs a command in the sandbox's namespace (with its own /sys), returns stdout.
fn in_ns(s: &Sandbox, args: &[&str]) -> String {
    let o = Command::new("ip").args(["netns", "exec", &s.ns]).args(args).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn uid_of(name: &str) -> String {
    nix::unistd::User::from_name(name).unwrap().unwrap_or_else(|| panic!("user {name} exists")).uid.to_string()
}

fn format(s: &Sandbox, cfg: &Path, extra: &[&str]) -> Output {
    Command::new("ip").args(["netns", "exec", &s.ns, BIN, "node", "format", "--now", "--cfg"]).arg(cfg).args(extra).output().unwrap()
}

fn addresses(s: &Sandbox) -> String {
    String::from_utf8(Command::new("ip").args(["netns", "exec", &s.ns, "ip", "addr", "show", "dev", "br0"]).output().unwrap().stdout)
        .unwrap()
}

fn mode_owner(p: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    (m.mode() & 0o7777, m.uid())
}

#[test]
#[ignore = "needs root"]
fn needs_root_formats_a_node_then_reruns_check_and_dry_run_change_nothing_and_growth_keeps_partitions() {
    let s = sandbox('a', 3);
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
    // the replaced state is kept in the zip history, readable by Python's zipfile
    let zip = s.dir.path().join("slapos.xml.zip");
    assert!(zip.exists(), "history of the replaced state file");
    let o = Command::new("python3")
        .args(["-c", "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); assert z.testzip() is None; print(z.namelist())"])
        .arg(&zip)
        .output()
        .expect("python3 (installed by scripts/install-deps.sh)");
    let list = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && list.contains("slapos.xml.20"), "{list}{}", String::from_utf8_lossy(&o.stderr));
    // shrinking is refused before anything changes
    let o = format(&s, &config(&s, 1), &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("partition_amount 1 is smaller"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
#[ignore = "needs root"]
fn needs_root_bad_options_are_named_before_anything_changes() {
    let s = sandbox('b', 0);
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

#[test]
#[ignore = "needs root"]
fn needs_root_taps_and_tuns_are_owned_by_the_partition_user_attached_to_the_bridge_and_kept_on_rerun() {
    let s = sandbox('c', 2);
    let cfg = config_with(&s, 2, "create_tap = true\ncreate_tun = true\n");
    let (tap0, tap1) = (format!("{}0", s.tap), format!("{}1", s.tap));
    // a dry run plans the taps and creates none
    let o = format(&s, &cfg, &["--dry_run"]);
    let plan = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success() && plan.contains(&format!("ip tuntap add dev {tap0} mode tap user {}user0", s.prefix)), "{plan}");
    assert!(in_ns(&s, &["ip", "link", "show", &tap0]).is_empty(), "no tap after a dry run");
    let o = format(&s, &cfg, &[]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{err}");
    for (i, tap) in [&tap0, &tap1].into_iter().enumerate() {
        let user = format!("{}user{i}", s.prefix);
        assert_eq!(in_ns(&s, &["cat", &format!("/sys/class/net/{tap}/owner")]), uid_of(&user), "{tap} belongs to {user}");
        assert!(in_ns(&s, &["readlink", &format!("/sys/class/net/{tap}/master")]).ends_with("/br0"), "{tap} is attached to br0");
        // IFF_TAP | IFF_NO_PI | IFF_PERSIST, as `ip tuntap add` makes it
        assert_eq!(in_ns(&s, &["cat", &format!("/sys/class/net/{tap}/tun_flags")]), "0x1802");
        let tun = format!("slaptun{i}");
        assert_eq!(in_ns(&s, &["cat", &format!("/sys/class/net/{tun}/owner")]), uid_of(&user), "{tun} belongs to {user}");
        assert_eq!(in_ns(&s, &["cat", &format!("/sys/class/net/{tun}/tun_flags")]), "0x1801");
    }
    let link = in_ns(&s, &["ip", "link", "show", "dev", &tap0]);
    assert!(link.contains(",UP") || link.contains("<UP") || link.contains(",UP,"), "{link}");
    let addr = in_ns(&s, &["ip", "-6", "addr", "show", "dev", &tap0]);
    assert!(addr.contains("fd00:7e57::8001:ffff:ffff:ffff/80") && addr.contains("noprefixroute"), "{addr}");
    let routes = in_ns(&s, &["ip", "-6", "route", "show", "dev", &tap0]);
    assert!(routes.contains("fd00:7e57::8001:0:0:1 "), "host route to the gateway: {routes}");
    assert!(routes.contains("fd00:7e57:0:0:8001::/80 via fd00:7e57::8001:0:0:1"), "range through the gateway: {routes}");
    let tun = in_ns(&s, &["ip", "addr", "show", "dev", "slaptun1"]);
    assert!(tun.contains("172.24.0.1/13") && tun.contains("fd00:7e57::c002:0:0:1/80"), "{tun}");
    // the state file has SlapOS's tap and tun dictionaries
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(s.dir.path().join("slapos.json")).unwrap()).unwrap();
    let p0 = &json["partition_list"][0];
    assert_eq!(p0["tap"]["name"], tap0.as_str());
    assert_eq!(p0["tap"]["ipv6_gateway"], "fd00:7e57::8001:0:0:1");
    assert_eq!(p0["tap"]["ipv6_network"], "fd00:7e57::8001:0:0:1/80");
    assert_eq!(p0["tap"]["ipv4_addr"], "");
    assert_eq!(p0["tun"]["ipv4_network"], "172.16.0.1/255.248.0.0");
    let resource: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.dir.path().join("srv/slappart0/.slapos-resource")).unwrap()).unwrap();
    assert_eq!(&resource["tap"], &p0["tap"], "instances read their tap from .slapos-resource");
    // re-run: the taps are kept, nothing to change, no drift
    let o = format(&s, &cfg, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing to change"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = format(&s, &cfg, &["--check"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stdout));
    // a lost tap is drift, and format creates it again
    in_ns(&s, &["ip", "link", "del", &tap1]);
    let o = format(&s, &cfg, &["--check"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("ip tuntap add dev {tap1} mode tap user {}user1", s.prefix)), "{out}");
    assert_eq!(format(&s, &cfg, &[]).status.code(), Some(2));
    assert_eq!(in_ns(&s, &["cat", &format!("/sys/class/net/{tap1}/owner")]), uid_of(&format!("{}user1", s.prefix)));
    assert!(in_ns(&s, &["ip", "-6", "route", "show", "dev", &tap1]).contains("8002::/80 via"));
    assert_eq!(format(&s, &cfg, &["--check"]).status.code(), Some(0));
}

#[test]
#[ignore = "needs root"]
fn needs_root_a_missing_interface_becomes_a_bridge_only_with_create_bridge() {
    let s = sandbox('d', 2);
    let cfg = config_with(&s, 2, "create_tap = true\n");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("interface_name = br0\n", "interface_name = br1\nipv6_interface = br0\n");
    std::fs::write(&cfg, &text).unwrap();
    let o = format(&s, &cfg, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("'br1'") && err.contains("create_bridge"), "{err}");
    assert!(in_ns(&s, &["ip", "link", "show", "br1"]).is_empty(), "nothing created");
    std::fs::write(&cfg, format!("{text}create_bridge = true\n")).unwrap();
    let o = format(&s, &cfg, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("creating bridge interface br1"), "{err}");
    assert!(!in_ns(&s, &["ls", "/sys/class/net/br1/bridge"]).is_empty(), "br1 is a bridge");
    let tap0 = format!("{}0", s.tap);
    assert!(in_ns(&s, &["readlink", &format!("/sys/class/net/{tap0}/master")]).ends_with("/br1"));
    let br1 = in_ns(&s, &["ip", "addr", "show", "dev", "br1"]);
    assert_eq!(br1.matches("inet 10.0.").count(), 2, "the partitions' IPv4 are on interface_name: {br1}");
    assert!(addresses(&s).contains("fd00:7e57::2/64"), "the IPv6 on ipv6_interface");
    let o = format(&s, &cfg, &[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing to change"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
#[ignore = "needs root"]
fn needs_root_the_definition_file_is_written_with_o_and_used_with_i() {
    let s = sandbox('e', 2);
    let d = s.dir.path();
    let cfg = config(&s, 2);
    let def = d.join("computer.def");
    let o = format(&s, &cfg, &["-o", def.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&def).unwrap();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("slapos.json")).unwrap()).unwrap();
    let p1 = &json["partition_list"][1];
    let line = format!(
        "address = {}/255.255.255.255 {}/ffff:ffff:ffff:ffff::",
        p1["address_list"][0]["addr"].as_str().unwrap(),
        p1["address_list"][1]["addr"].as_str().unwrap()
    );
    assert!(text.starts_with("[computer]\naddress = fd00:7e57::1/ffff:ffff:ffff:ffff::\n\n[partition_0]\n"), "{text}");
    assert!(
        text.contains(&format!(
            "[partition_1]\n{line}\nipv6_range = fd00:7e57:0:0:4002::/80\nuser = {}user1\nnetwork_interface = {}1\npathname = slappart1\n",
            s.prefix, s.tap
        )),
        "{text}"
    );
    // a node formatted from a definition: its names and addresses, not derived ones
    std::fs::remove_file(d.join("slapos.xml")).unwrap();
    std::fs::write(&def, text.replace("pathname = slappart1", "pathname = custom1")).unwrap();
    let o = format(&s, &cfg, &["-i", def.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("slapos.json")).unwrap()).unwrap();
    assert_eq!(json["partition_list"][1]["reference"], "custom1");
    assert_eq!(json["partition_list"][1]["address_list"], p1["address_list"]);
    let user1 = uid_of(&format!("{}user1", s.prefix));
    assert_eq!(mode_owner(&d.join("srv/custom1")).1.to_string(), user1);
    assert!(d.join("srv/custom1/.slapos-resource").exists());
    // and a re-run from the same definition changes nothing
    let o = format(&s, &cfg, &["-i", def.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing to change"), "{}", String::from_utf8_lossy(&o.stderr));
}
