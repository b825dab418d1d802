//! The files the node writes for buildout and supervisord, text for text
//! as slapgrid writes them (`node.md` §5.3, §5.4): the tail appended to an
//! instance's `buildout.cfg`, the node's `supervisord.conf`, and one
//! program-group file per partition.

use std::fmt::Write as _;
use std::path::Path;

/// What the instance buildout learns from the node (`[slap-connection]` …).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TailParams {
    pub computer_id: String,
    pub partition_id: String,
    pub server_url: String,
    pub software_release_url: String,
    pub key_file: String,
    pub cert_file: String,
    /// Newline-separated directories (empty when unset).
    pub shared_part_list: String,
    pub build_time_part_list: String,
    /// started, stopped or destroyed.
    pub requested_state: String,
    pub storage_home: String,
    pub global_ipv4_network: String,
}

/// Python's `'  '.join(text.strip().splitlines(True))`: continuation lines
/// indented by two spaces.
fn indent_list(text: &str) -> String {
    let lines: Vec<&str> = text.trim().split_inclusive('\n').collect();
    lines.join("  ")
}

/// The tail slapgrid appends (after two newlines) to the software's
/// `instance.cfg` to make the partition's `buildout.cfg`.
pub fn buildout_tail(p: &TailParams) -> String {
    format!(
        "# This is beginning of zc.buildout profile's tail added by slapgrid
[buildout]
# put buildout generated binaries in specific directory
bin-directory = ${{buildout:directory}}/sbin

# protect software and run parts offline
offline = true

[slap-connection]
computer-id = {computer_id}
partition-id = {partition_id}
server-url = {server_url}
software-release-url = {software_release_url}
key-file = {key_file}
cert-file = {cert_file}
shared-part-list =
  {shared}
build-time-part-list =
  {build_time}
requested-state = {requested_state}

[slap_connection]
# Kept for backward compatiblity
computer_id = {computer_id}
partition_id = {partition_id}
server_url = {server_url}
software_release_url = {software_release_url}
key_file = {key_file}
cert_file = {cert_file}

[storage-configuration]
storage-home = {storage_home}

[network-information]
global-ipv4-network = {global_ipv4_network}
# This is end of zc.buildout profile's tail added by slapgrid
",
        computer_id = p.computer_id,
        partition_id = p.partition_id,
        server_url = p.server_url,
        software_release_url = p.software_release_url,
        key_file = p.key_file,
        cert_file = p.cert_file,
        shared = indent_list(&p.shared_part_list),
        build_time = indent_list(&p.build_time_part_list),
        requested_state = p.requested_state,
        storage_home = p.storage_home,
        global_ipv4_network = p.global_ipv4_network,
    )
}

/// The partition's `buildout.cfg`: the instance profile, two newlines, the tail.
pub fn instance_buildout(profile: &str, tail: &TailParams) -> String {
    format!("{profile}\n\n{}", buildout_tail(tail))
}

/// The node's `instance_root/etc/supervisord.conf`.
pub fn supervisord_conf(instance_root: &Path, watchdog_command: Option<&str>) -> String {
    let r = instance_root.display();
    let mut out = format!(
        "[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[include]
files = {r}/etc/supervisord.conf.d/*.conf

[supervisorctl]
serverurl = unix://{r}/sv.sock

[supervisord]
loglevel = info
logfile = {r}/var/log/supervisord.log
logfile_maxbytes = 50MB
nodaemon = false
pidfile = {r}/var/run/supervisord.pid
logfile-backups = 10
# Do not set minfds. select() does not support file descriptors
# greater than 1023.
# minfds = 

[unix_http_server]
file={r}/sv.sock
chmod=0700
"
    );
    if let Some(cmd) = watchdog_command {
        // (slapgrid sets no log file: supervisord then leaves the listener's
        // AUTO logs in the system temp directory; ours go to var/log)
        let _ = write!(
            out,
            "\n[eventlistener:watchdog]\ncommand={cmd}\nevents=PROCESS_STATE_EXITED, PROCESS_STATE_FATAL\nstderr_logfile={r}/var/log/watchdog.log\n"
        );
    }
    out
}

/// One supervisord program of a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The file name in `etc/run` or `etc/service`.
    pub id: String,
    /// The process name (`<id>-on-watch` for `etc/service`).
    pub name: String,
    pub command: String,
}

/// Whose the programs are: the owner of the partition directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramOwner {
    pub uid: u32,
    pub gid: u32,
    pub user: String,
    pub home: String,
}

/// `supervisord.conf.d/<partition>.conf`: the group and its programs.
pub fn partition_group_conf(partition_id: &str, instance_path: &Path, programs: &[Program], owner: &ProgramOwner) -> String {
    let list: Vec<String> = programs.iter().map(|p| format!("{partition_id}_{}", p.id)).collect();
    let mut out = format!("[group:{partition_id}]\nprograms={}\n", list.join(","));
    let path = instance_path.display();
    for p in programs {
        let program_id = format!("{partition_id}_{}", p.id);
        let _ = write!(
            out,
            "\n[program:{program_id}]
directory={path}
command={command}
process_name={name}
autostart=false
autorestart=false
startsecs=0
startretries=0
exitcodes=0
stopsignal=TERM
stopwaitsecs=60
stopasgroup=true
killasgroup=true
user={uid}
group={gid}
serverurl=AUTO
redirect_stderr=true
stdout_logfile={path}/.{program_id}.log
stdout_logfile_maxbytes=100KB
stdout_logfile_backups=1
stderr_logfile={path}/.{program_id}.log
stderr_logfile_maxbytes=100KB
stderr_logfile_backups=1
environment=USER=\"{user}\",LOGNAME=\"{user}\",HOME=\"{home}\"
",
            command = p.command,
            name = p.name,
            uid = owner.uid,
            gid = owner.gid,
            user = owner.user,
            home = owner.home,
        );
    }
    out
}

/// The programs of a partition from the names in `etc/run` and
/// `etc/service` (each sorted): runners first, then services named
/// `<file>-on-watch`; a name in both gives one program, the service.
pub fn partition_programs(instance_path: &Path, runners: &[String], services: &[String]) -> Vec<Program> {
    let mut runners: Vec<&String> = runners.iter().filter(|r| !services.contains(r)).collect();
    runners.sort();
    let mut services: Vec<&String> = services.iter().collect();
    services.sort();
    let run_dir = instance_path.join("etc/run");
    let service_dir = instance_path.join("etc/service");
    runners
        .into_iter()
        .map(|r| Program { id: r.clone(), name: r.clone(), command: run_dir.join(r).display().to_string() })
        .chain(services.into_iter().map(|s| Program {
            id: s.clone(),
            name: format!("{s}-on-watch"),
            command: service_dir.join(s).display().to_string(),
        }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_slapgrids() {
        let t = buildout_tail(&TailParams {
            computer_id: "COMP-E2E".into(),
            partition_id: "slappart0".into(),
            server_url: "http://127.0.0.1:5000".into(),
            software_release_url: "/sr/software.cfg".into(),
            shared_part_list: "/a\n/b\n".into(),
            requested_state: "started".into(),
            ..Default::default()
        });
        assert!(t.starts_with("# This is beginning of zc.buildout profile's tail added by slapgrid\n[buildout]\n"));
        assert!(t.contains("bin-directory = ${buildout:directory}/sbin\n"));
        assert!(t.contains("[slap-connection]\ncomputer-id = COMP-E2E\npartition-id = slappart0\nserver-url = http://127.0.0.1:5000\n"));
        assert!(t.contains("shared-part-list =\n  /a\n  /b\nbuild-time-part-list =\n  \nrequested-state = started\n"), "{t}");
        assert!(t.contains("[slap_connection]\n# Kept for backward compatiblity\ncomputer_id = COMP-E2E\n"));
        assert!(t.ends_with("global-ipv4-network = \n# This is end of zc.buildout profile's tail added by slapgrid\n"));
        assert!(instance_buildout("[buildout]\nparts =", &TailParams::default()).starts_with("[buildout]\nparts =\n\n# This is beginning"));
    }

    #[test]
    fn supervisord_files_are_slapgrids() {
        let c = supervisord_conf(Path::new("/srv/slapgrid"), Some("/usr/bin/slapos node watchdog"));
        assert!(c.contains("[include]\nfiles = /srv/slapgrid/etc/supervisord.conf.d/*.conf\n"));
        assert!(c.contains("serverurl = unix:///srv/slapgrid/sv.sock\n"));
        assert!(c.contains("[eventlistener:watchdog]\ncommand=/usr/bin/slapos node watchdog\nevents=PROCESS_STATE_EXITED, PROCESS_STATE_FATAL\nstderr_logfile=/srv/slapgrid/var/log/watchdog.log\n"));
        let pp = Path::new("/srv/slapgrid/slappart0");
        let programs = partition_programs(pp, &["b".into(), "a".into(), "http-server".into()], &["http-server".into()]);
        assert_eq!(programs.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["a", "b", "http-server-on-watch"]);
        let owner = ProgramOwner { uid: 995, gid: 1002, user: "slapuser0".into(), home: "/srv/slapgrid/slappart0".into() };
        let g = partition_group_conf("slappart0", pp, &programs, &owner);
        assert!(g.starts_with("[group:slappart0]\nprograms=slappart0_a,slappart0_b,slappart0_http-server\n\n[program:slappart0_a]\ndirectory=/srv/slapgrid/slappart0\ncommand=/srv/slapgrid/slappart0/etc/run/a\nprocess_name=a\n"), "{g}");
        assert!(g.contains("[program:slappart0_http-server]\ndirectory=/srv/slapgrid/slappart0\ncommand=/srv/slapgrid/slappart0/etc/service/http-server\nprocess_name=http-server-on-watch\n"));
        assert!(g.contains("user=995\ngroup=1002\n"));
        assert!(g.contains("stdout_logfile=/srv/slapgrid/slappart0/.slappart0_http-server.log\n"));
        assert!(g.ends_with("environment=USER=\"slapuser0\",LOGNAME=\"slapuser0\",HOME=\"/srv/slapgrid/slappart0\"\n"));
    }
}

#[cfg(test)]
mod python_parity {
    use super::*;

    /// The tail rendered by slapos.core's own template (the venv's copy):
    /// byte for byte the same as ours.
    #[test]
    #[ignore = "needs the venv"]
    fn needs_venv_tail_matches_the_python_template() {
        let python = test_support::python_venv().join("bin/python3");
        let script = r#"
import os, slapos.grid
t = open(os.path.join(os.path.dirname(slapos.grid.__file__), 'templates', 'buildout-tail.cfg.in')).read()
d = dict(computer_id='COMP-E2E', partition_id='slappart0', server_url='http://127.0.0.1:5000',
         software_release_url='/sr/software.cfg', key_file='', cert_file='', requested_state='started',
         storage_home='', global_ipv4_network_prefix='',
         shared_part_list='  '.join('/a\n/b\n'.strip().splitlines(True)),
         build_time_part_list='  '.join(''.strip().splitlines(True)))
import sys; sys.stdout.write(t % d)
"#;
        let out = std::process::Command::new(&python).args(["-c", script]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let ours = buildout_tail(&TailParams {
            computer_id: "COMP-E2E".into(),
            partition_id: "slappart0".into(),
            server_url: "http://127.0.0.1:5000".into(),
            software_release_url: "/sr/software.cfg".into(),
            shared_part_list: "/a\n/b\n".into(),
            requested_state: "started".into(),
            ..Default::default()
        });
        assert_eq!(ours, String::from_utf8(out.stdout).unwrap());
    }
}
