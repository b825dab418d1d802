use super::*;

const V6: &str = "2001:db8::7";

fn v6() -> Option<Ipv6Addr> {
    Some(V6.parse().unwrap())
}

fn commands(plan: &PortredirPlan) -> Vec<(String, String, bool)> {
    plan.redirects.iter().map(|r| (r.program_id(), r.command("/usr/bin/socat"), r.as_user())).collect()
}

/// The cases of the comparison with slapgrid's manager (see
/// `needs_venv_commands_match_slapgrid_portredir`).
const CASES: &str = r#"[
  {"srcPort": 8080, "destPort": 80},
  {"type": "UDP", "srcPort": "5353", "destPort": 53, "destAddress": "10.0.0.2"},
  {"srcPort": 443, "srcAddress": "2001:db8::1", "destPort": 8443, "destAddress": "2001:db8::2"},
  {"type": "tcp", "srcPort": 2222, "srcAddress": "127.0.0.1", "destPort": 22}
]"#;

#[test]
fn redirections_become_slapgrid_socat_commands() {
    let plan = parse(CASES.as_bytes(), v6());
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    let c = commands(&plan);
    assert_eq!(
        c,
        [
            ("socat-tcp-8080".into(), "/usr/bin/socat TCP4-LISTEN:8080,fork TCP6:[2001:db8::7]:80".into(), true),
            ("socat-udp-5353".into(), "/usr/bin/socat UDP4-LISTEN:5353,fork UDP4:10.0.0.2:53".into(), true),
            ("socat-tcp-443".into(), "/usr/bin/socat TCP6-LISTEN:443,bind=2001:db8::1,fork TCP6:[2001:db8::2]:8443".into(), false),
            ("socat-tcp-2222".into(), "/usr/bin/socat TCP4-LISTEN:2222,bind=127.0.0.1,fork TCP6:[2001:db8::7]:22".into(), true),
        ]
    );
}

#[test]
fn hostile_entries_are_skipped_one_by_one() {
    let text = r#"[
      {"srcPort": 0, "destPort": 80},
      {"srcPort": 70000, "destPort": 80},
      {"srcPort": -1, "destPort": 80},
      {"srcPort": 80.5, "destPort": 80},
      {"srcPort": true, "destPort": 80},
      {"srcPort": "80; rm -rf /", "destPort": 80},
      {"srcPort": 8081, "destPort": 80, "destAddress": "1.2.3.4 -x"},
      {"srcPort": 8082, "destPort": 80, "destAddress": 16909060},
      {"srcPort": 8083, "destPort": 80, "srcAddress": "fe80::1%eth0"},
      {"type": "sctp", "srcPort": 8084, "destPort": 80},
      {"type": ["tcp"], "srcPort": 8085, "destPort": 80},
      {"destPort": 80},
      "socat-tcp-1",
      {"srcPort": 8086, "destPort": 80},
      {"srcPort": 8086, "destPort": 81}
    ]"#;
    let plan = parse(text.as_bytes(), v6());
    assert_eq!(commands(&plan).iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["socat-tcp-8086"], "{:?}", plan.warnings);
    assert_eq!(plan.redirects[0].dest_port, 80, "the first of a duplicate wins");
    assert_eq!(plan.warnings.len(), 14, "{:#?}", plan.warnings);
}

#[test]
fn without_an_ipv6_address_a_destination_is_needed() {
    let plan = parse(br#"[{"srcPort": 8080, "destPort": 80}, {"srcPort": 8081, "destPort": 80, "destAddress": "10.0.0.1"}]"#, None);
    assert_eq!(plan.redirects.len(), 1);
    assert!(plan.warnings[0].contains("no IPv6 address"), "{:?}", plan.warnings);
}

#[test]
fn bad_documents_give_nothing_and_say_why() {
    for (text, why) in [
        (&b"{\"srcPort\": 1}"[..], "not a JSON list"),
        (b"[{", "Bad port redirection"),
        (b"\xff\xfe", "Bad port redirection"),
        (b"", "Bad port redirection"),
    ] {
        let plan = parse(text, v6());
        assert!(plan.redirects.is_empty());
        assert!(plan.warnings[0].contains(why), "{:?}", plan.warnings);
    }
    // deeply nested: serde_json's recursion limit, an error, never a crash
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(parse(deep.as_bytes(), v6()).redirects.is_empty());
    let many = format!("[{}]", vec![r#"{"srcPort": "x", "destPort": 1}"#; MAX_REDIRECTS + 10].join(","));
    let plan = parse(many.as_bytes(), v6());
    assert_eq!(plan.warnings.len(), MAX_REDIRECTS + 1, "only the first {MAX_REDIRECTS} looked at");
}

#[test]
fn the_file_is_read_safely() {
    let t = tempfile::tempdir().unwrap();
    let pp = t.path().join("pp");
    std::fs::create_dir(&pp).unwrap();
    let pd = Dir::open(&pp).unwrap();
    assert_eq!(plan(&pd, v6()), PortredirPlan::default(), "no file: nothing");
    // a link to a file root can read: not followed
    std::fs::write(t.path().join("secret"), CASES).unwrap();
    std::os::unix::fs::symlink(t.path().join("secret"), pp.join(REDIRECT_FILE)).unwrap();
    let p = plan(&pd, v6());
    assert!(p.redirects.is_empty() && p.warnings.len() == 1, "{p:?}");
    std::fs::remove_file(pp.join(REDIRECT_FILE)).unwrap();
    // a huge file: refused, not read whole
    let big = format!("[{}]", vec![r#"{"srcPort": 8080, "destPort": 80}"#; 10_000].join(","));
    assert!(big.len() as u64 > MAX_FILE);
    std::fs::write(pp.join(REDIRECT_FILE), &big).unwrap();
    let p = plan(&pd, v6());
    assert!(p.redirects.is_empty() && p.warnings[0].contains("not read"), "{p:?}");
    // a FIFO never blocks
    std::fs::remove_file(pp.join(REDIRECT_FILE)).unwrap();
    nix::unistd::mkfifo(&pp.join(REDIRECT_FILE), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    assert!(plan(&pd, v6()).redirects.is_empty());
    std::fs::remove_file(pp.join(REDIRECT_FILE)).unwrap();
    std::fs::write(pp.join(REDIRECT_FILE), CASES).unwrap();
    assert_eq!(plan(&pd, v6()).redirects.len(), 4);
}

#[test]
fn the_group_runs_privileged_ports_as_root_and_others_as_the_user() {
    let plan = parse(CASES.as_bytes(), v6());
    let user = ProgramOwner { uid: 1001, gid: 1001, user: "slapuser0".into(), home: "/srv/slapgrid/slappart0".into() };
    let root = ProgramOwner { uid: 0, gid: 0, user: "root".into(), home: "/root".into() };
    let id = PartitionId::parse("slappart0").unwrap();
    let conf = group_conf(&id, Path::new("/srv/slapgrid/slappart0"), &plan, Path::new("/usr/bin/socat"), &user, &root).unwrap().unwrap();
    assert!(conf.starts_with(
        "[group:slappart0-socat]\nprograms=slappart0-socat_socat-tcp-8080,slappart0-socat_socat-udp-5353,slappart0-socat_socat-tcp-443,slappart0-socat_socat-tcp-2222\n"
    ));
    let section = |name: &str| conf.split("\n[program:").find(|s| s.starts_with(name)).unwrap().to_string();
    assert!(section("slappart0-socat_socat-tcp-443]").contains("\nuser=0\ngroup=0\n"));
    assert!(section("slappart0-socat_socat-tcp-8080]").contains("\nuser=1001\ngroup=1001\n"));
    assert!(section("slappart0-socat_socat-tcp-8080]").contains("\ncommand=/usr/bin/socat TCP4-LISTEN:8080,fork TCP6:[2001:db8::7]:80\n"));
    assert_eq!(group_conf(&id, Path::new("/p"), &PortredirPlan::default(), Path::new("/s"), &user, &root).unwrap(), None);
    // a socat path supervisord cannot hold is refused, not written
    assert!(group_conf(&id, Path::new("/p"), &plan, Path::new("/my bin/socat"), &user, &root).is_err());
}

/// slapgrid's own manager, given the same file, writes the same programs:
/// `Manager.instanceTearDown` of slapos.core 1.26.1 on a partition double
/// that records what it is asked to add.
#[test]
#[ignore = "needs the venv"]
fn needs_venv_commands_match_slapgrid_portredir() {
    let venv = std::env::var("SLAPOS_VENV").unwrap_or_else(|_| "/var/cache/slapos-e2e/venv-1.26.1".into());
    let python = Path::new(&venv).join("bin/python3");
    assert!(python.is_file(), "needs the venv: {} is missing (set SLAPOS_VENV)", python.display());
    let t = tempfile::tempdir().unwrap();
    let bin = t.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(bin.join("socat"), "").unwrap();
    let pp = t.path().join("pp");
    std::fs::create_dir(&pp).unwrap();
    std::fs::write(pp.join(REDIRECT_FILE), CASES).unwrap();
    let script = r#"
import json, sys, contextlib
from slapos.manager.portredir import Manager
class CP:
    def getInstanceParameterDict(self):
        return {'ip_list': [('lo', '10.0.0.9'), ('lo', '2001:db8::7')]}
class RPC:
    def getProcessInfo(self, name): return {'start': 1}
class P:
    instance_path = sys.argv[1]
    computer_partition = CP()
    added = []
    def generateSupervisorConfiguration(self): pass
    def writeSupervisorConfigurationFiles(self): pass
    def addProgramToGroup(self, suffix, program_id, name, command, as_user=True):
        self.added.append([suffix, program_id, command, as_user])
    def getGroupIdFromSuffix(self, suffix): return 'slappart0-' + suffix
    @contextlib.contextmanager
    def getSupervisorRPC(self): yield RPC()
p = P()
Manager({}).instanceTearDown(p)
print(json.dumps(p.added))
"#;
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&pp)
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Vec<(String, String, String, bool)> = serde_json::from_slice(&out.stdout).unwrap();
    let socat = bin.join("socat").display().to_string();
    let pd = Dir::open(&pp).unwrap();
    let ours: Vec<(String, String, String, bool)> =
        plan(&pd, v6()).redirects.iter().map(|r| (GROUP_SUFFIX.to_string(), r.program_id(), r.command(&socat), r.as_user())).collect();
    assert_eq!(ours, theirs);
}
