//! The files the node writes for buildout and supervisord, text for text
//! as slapgrid writes them (`node.md` §5.3, §5.4): the tail appended to an
//! instance's `buildout.cfg`, the node's `supervisord.conf`, and one
//! program-group file per partition.
//!
//! Built from typed values, never concatenated blindly: names come as
//! [`crate::names`] types; every other value is checked for its format.
//! supervisord's INI has an escape for `%` (`%%`, it expands `%(…)s` in
//! almost every value) and none for line breaks, `[`/`]` in section names,
//! quotes in `command=`/`environment=` (shlex) or ` ;`/` #` (inline
//! comments): those are refused. Buildout has no escape at all (`$${` stays
//! `$${`): line breaks, `${` and `%(` are refused. Valid input gives
//! slapgrid's bytes.

use std::fmt::Write as _;
use std::path::Path;

use slap::model::InstanceState;

use crate::names::{self, NameError, PartitionId, ProgramName, SoftwareUrl};

/// A value that cannot go into a generated file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A value the file's format cannot hold.
    #[error("cannot write {field} '{shown}' into {file}: {reason}")]
    Refused {
        /// The generated file (`buildout.cfg`, `supervisord.conf`…).
        file: &'static str,
        /// The field of that file the value was for.
        field: &'static str,
        /// The value, as shown to people (escaped, cut).
        shown: String,
        /// Why the format cannot hold it.
        reason: String,
    },
    /// An invalid name.
    #[error(transparent)]
    Name(#[from] NameError),
}

fn refused(file: &'static str, field: &'static str, value: &str, reason: impl Into<String>) -> TemplateError {
    TemplateError::Refused { file, field, shown: names::shown(value), reason: reason.into() }
}

/// A one-line buildout value: no control character or line separator, no
/// `${`, no `%(`.
fn buildout_value<'a>(file: &'static str, field: &'static str, v: &'a str) -> Result<&'a str, TemplateError> {
    if let Some(c) = v.chars().find(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')) {
        return Err(refused(file, field, v, format!("contains the control character {c:?}")));
    }
    names::buildout_safe(field, v).map_err(|e| refused(file, field, v, e.reason))?;
    Ok(v)
}

/// A newline-separated buildout list: each line a one-line value.
fn buildout_list<'a>(file: &'static str, field: &'static str, v: &'a str) -> Result<&'a str, TemplateError> {
    for line in v.split('\n') {
        buildout_value(file, field, line)?;
    }
    Ok(v)
}

/// What the instance buildout learns from the node (`[slap-connection]` …).
/// The partition and the software URL come from the master, so they are
/// typed; the rest is the node's configuration, checked when rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailParams {
    /// `[slap-connection] computer-id`.
    pub computer_id: String,
    /// `[slap-connection] partition-id`.
    pub partition_id: PartitionId,
    /// `[slap-connection] server-url`: the master.
    pub server_url: String,
    /// `[slap-connection] software-release-url`.
    pub software_release_url: SoftwareUrl,
    /// `[slap-connection] key-file`.
    pub key_file: String,
    /// `[slap-connection] cert-file`.
    pub cert_file: String,
    /// Newline-separated directories (empty when unset).
    pub shared_part_list: String,
    /// Newline-separated directories of shared parts usable while building.
    pub build_time_part_list: String,
    /// started, stopped or destroyed.
    pub requested_state: InstanceState,
    /// `[storage-configuration] storage-home` (empty when unset).
    pub storage_home: String,
    /// `[network-information] global-ipv4-network` (empty when unset).
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
pub fn buildout_tail(p: &TailParams) -> Result<String, TemplateError> {
    const F: &str = "the instance buildout.cfg";
    let one = |field, v| buildout_value(F, field, v);
    Ok(format!(
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
        computer_id = one("computer-id", &p.computer_id)?,
        partition_id = p.partition_id,
        server_url = one("server-url", &p.server_url)?,
        software_release_url = p.software_release_url,
        key_file = one("key-file", &p.key_file)?,
        cert_file = one("cert-file", &p.cert_file)?,
        shared = indent_list(buildout_list(F, "shared-part-list", &p.shared_part_list)?),
        build_time = indent_list(buildout_list(F, "build-time-part-list", &p.build_time_part_list)?),
        requested_state = p.requested_state.as_str(),
        storage_home = one("storage-home", &p.storage_home)?,
        global_ipv4_network = one("global-ipv4-network", &p.global_ipv4_network)?,
    ))
}

/// The partition's `buildout.cfg`: the instance profile, two newlines, the tail.
pub fn instance_buildout(profile: &str, tail: &TailParams) -> Result<String, TemplateError> {
    Ok(format!("{profile}\n\n{}", buildout_tail(tail)?))
}

/// The software's `buildout.cfg`, as Python's configparser writes it
/// (multi-line values with a tab after each newline).
pub fn software_buildout(url: &SoftwareUrl, shared_part_list: &str, build_time_part_list: &str) -> Result<String, TemplateError> {
    const F: &str = "the software buildout.cfg";
    let v = |s: &str| s.replace('\n', "\n\t");
    Ok(format!(
        "[buildout]\nextends = {url}\nshared-part-list = {}\nbuild-time-part-list = {}\n\n",
        v(buildout_list(F, "shared-part-list", shared_part_list)?),
        v(buildout_list(F, "build-time-part-list", build_time_part_list)?)
    ))
}

/// A supervisord value: `%` doubled (supervisord expands `%(…)s`), refused
/// when it holds what its INI cannot (control characters, whitespace — words
/// of `command=` and the start of ` ;` comments —, quotes, backslashes, `%(`).
fn sv_value(field: &'static str, v: &str) -> Result<String, TemplateError> {
    const F: &str = "a supervisord configuration";
    if let Some(c) = v.chars().find(|c| c.is_control() || c.is_whitespace() || matches!(c, '"' | '\'' | '\\')) {
        return Err(refused(F, field, v, format!("contains {c:?}")));
    }
    if v.contains("%(") {
        return Err(refused(F, field, v, "contains '%('"));
    }
    if v.is_empty() {
        return Err(refused(F, field, v, "empty"));
    }
    Ok(v.replace('%', "%%"))
}

/// A path as a supervisord value (see [`sv_value`]).
fn sv_path(field: &'static str, p: &Path) -> Result<String, TemplateError> {
    match p.to_str() {
        Some(s) => sv_value(field, s),
        None => Err(refused("a supervisord configuration", field, &p.to_string_lossy(), "not valid UTF-8")),
    }
}

/// A command line of plain words as a supervisord `command=`.
fn sv_command(field: &'static str, line: &str) -> Result<String, TemplateError> {
    let words: Vec<String> = line.split(' ').map(|w| sv_value(field, w)).collect::<Result<_, _>>()?;
    if let Some(w) = words.iter().find(|w| w.starts_with(';') || w.starts_with('#')) {
        return Err(refused("a supervisord configuration", field, w, "a word starting with ';' or '#' starts a comment"));
    }
    Ok(words.join(" "))
}

/// The node's `instance_root/etc/supervisord.conf`.
pub fn supervisord_conf(instance_root: &Path, watchdog_command: Option<&str>) -> Result<String, TemplateError> {
    let r = sv_path("instance_root", instance_root)?;
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
        let cmd = sv_command("the watchdog command", cmd)?;
        // (slapgrid sets no log file: supervisord then leaves the listener's
        // AUTO logs in the system temp directory; ours go to var/log)
        let _ = write!(
            out,
            "\n[eventlistener:watchdog]\ncommand={cmd}\nevents=PROCESS_STATE_EXITED, PROCESS_STATE_FATAL\nstderr_logfile={r}/var/log/watchdog.log\n"
        );
    }
    Ok(out)
}

/// One supervisord program of a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The file name in `etc/run` or `etc/service`.
    pub id: ProgramName,
    /// The process name (`<id>-on-watch` for `etc/service`).
    pub name: String,
    /// The program's path, under the partition's `etc/run|service`.
    pub command: std::path::PathBuf,
}

/// Whose the programs are: the owner of the partition directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramOwner {
    /// The owner's uid.
    pub uid: u32,
    /// The owner's gid.
    pub gid: u32,
    /// The owner's user name.
    pub user: String,
    /// The owner's home.
    pub home: String,
}

/// `supervisord.conf.d/<partition>.conf`: the group and its programs, run
/// as `owner` (never root: refused).
pub fn partition_group_conf(
    partition_id: &PartitionId,
    instance_path: &Path,
    programs: &[Program],
    owner: &ProgramOwner,
) -> Result<String, TemplateError> {
    if owner.uid == 0 || owner.gid == 0 {
        let who = format!("{}:{}", owner.uid, owner.gid);
        return Err(refused("a supervisord configuration", "user", &who, "a partition's programs never run as root"));
    }
    // the owner is checked even for an empty group
    sv_value("USER", &owner.user)?;
    sv_value("HOME", &owner.home)?;
    let section = |p: &Program| -> Result<GroupProgram, TemplateError> {
        Ok(GroupProgram { id: p.id.to_string(), name: p.name.clone(), command: sv_path("command", &p.command)?, owner: owner.clone() })
    };
    let list = programs.iter().map(section).collect::<Result<Vec<_>, _>>()?;
    group_conf(partition_id.as_str(), instance_path, &list)
}

/// A program of a manager's group ([`manager_group_conf`]): its command is
/// written by the node (never a partition's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerProgram {
    /// The program id in its group (`socat-tcp-8080`): letters, digits, `-`, `_`.
    pub id: String,
    /// The program run.
    pub program: std::path::PathBuf,
    /// Its arguments, each one word.
    pub args: Vec<String>,
    /// Who runs it (root only where SlapOS runs it as root: a redirection
    /// from a privileged port).
    pub owner: ProgramOwner,
}

/// `supervisord.conf.d/<partition>-<suffix>.conf`: the group a manager adds
/// to a partition (`portredir`'s `<partition>-socat`), programs as
/// slapgrid's `addProgramToGroup` writes them.
pub fn manager_group_conf(
    partition_id: &PartitionId,
    suffix: &str,
    instance_path: &Path,
    programs: &[ManagerProgram],
) -> Result<String, TemplateError> {
    let group = format!("{partition_id}-{suffix}");
    let plain = |v: &str| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if !plain(suffix) {
        return Err(refused("a supervisord configuration", "group", &group, "a manager's suffix is letters, digits, '-' and '_'"));
    }
    let mut list = Vec::new();
    for p in programs {
        if !plain(&p.id) {
            return Err(refused("a supervisord configuration", "program", &p.id, "letters, digits, '-' and '_' only"));
        }
        let mut words = vec![sv_path("command", &p.program)?];
        for a in &p.args {
            words.push(sv_value("command", a)?);
        }
        if let Some(w) = words.iter().find(|w| w.starts_with(';') || w.starts_with('#')) {
            return Err(refused("a supervisord configuration", "command", w, "a word starting with ';' or '#' starts a comment"));
        }
        list.push(GroupProgram { id: p.id.clone(), name: p.id.clone(), command: words.join(" "), owner: p.owner.clone() });
    }
    group_conf(&group, instance_path, &list)
}

/// One program of a group, its values checked.
struct GroupProgram {
    id: String,
    name: String,
    command: String,
    owner: ProgramOwner,
}

/// A group and its programs (`[group:…]`, then one `[program:…]` each, as
/// slapgrid's program template).
fn group_conf(group: &str, instance_path: &Path, programs: &[GroupProgram]) -> Result<String, TemplateError> {
    let list: Vec<String> = programs.iter().map(|p| format!("{group}_{}", p.id)).collect();
    let mut out = format!("[group:{group}]\nprograms={}\n", list.join(","));
    let path = sv_path("directory", instance_path)?;
    for p in programs {
        let program_id = format!("{group}_{}", p.id);
        let (user, home) = (sv_value("USER", &p.owner.user)?, sv_value("HOME", &p.owner.home)?);
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
            name = sv_value("process_name", &p.name)?,
            uid = p.owner.uid,
            gid = p.owner.gid,
        );
    }
    Ok(out)
}

/// The programs of a partition from the names in `etc/run` and
/// `etc/service` (each sorted): runners first, then services named
/// `<file>-on-watch`; a name in both gives one program, the service.
pub fn partition_programs(instance_path: &Path, runners: &[ProgramName], services: &[ProgramName]) -> Vec<Program> {
    let mut runners: Vec<&ProgramName> = runners.iter().filter(|r| !services.contains(r)).collect();
    runners.sort();
    let mut services: Vec<&ProgramName> = services.iter().collect();
    services.sort();
    let run_dir = instance_path.join("etc/run");
    let service_dir = instance_path.join("etc/service");
    // (a ProgramName is one plain component: the joins stay in their directory)
    runners
        .into_iter()
        .map(|r| Program { id: r.clone(), name: r.to_string(), command: run_dir.join(r) })
        .chain(services.into_iter().map(|s| Program { id: s.clone(), name: format!("{s}-on-watch"), command: service_dir.join(s) }))
        .collect()
}

/// The tail of the parity tests (slapgrid's values for the E2E node).
#[cfg(test)]
fn sample_tail() -> TailParams {
    TailParams {
        computer_id: "COMP-E2E".into(),
        partition_id: PartitionId::parse("slappart0").unwrap(),
        server_url: "http://127.0.0.1:5000".into(),
        software_release_url: SoftwareUrl::parse("/sr/software.cfg").unwrap(),
        key_file: String::new(),
        cert_file: String::new(),
        shared_part_list: "/a\n/b\n".into(),
        build_time_part_list: String::new(),
        requested_state: InstanceState::Started,
        storage_home: String::new(),
        global_ipv4_network: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<ProgramName> {
        list.iter().map(|n| ProgramName::parse(n).unwrap()).collect()
    }

    fn owner() -> ProgramOwner {
        ProgramOwner { uid: 995, gid: 1002, user: "slapuser0".into(), home: "/srv/slapgrid/slappart0".into() }
    }

    #[test]
    fn the_tail_is_slapgrids() {
        let t = buildout_tail(&sample_tail()).unwrap();
        assert!(t.starts_with("# This is beginning of zc.buildout profile's tail added by slapgrid\n[buildout]\n"));
        assert!(t.contains("bin-directory = ${buildout:directory}/sbin\n"));
        assert!(t.contains("[slap-connection]\ncomputer-id = COMP-E2E\npartition-id = slappart0\nserver-url = http://127.0.0.1:5000\n"));
        assert!(t.contains("shared-part-list =\n  /a\n  /b\nbuild-time-part-list =\n  \nrequested-state = started\n"), "{t}");
        assert!(t.contains("[slap_connection]\n# Kept for backward compatiblity\ncomputer_id = COMP-E2E\n"));
        assert!(t.ends_with("global-ipv4-network = \n# This is end of zc.buildout profile's tail added by slapgrid\n"));
        assert!(instance_buildout("[buildout]\nparts =", &sample_tail())
            .unwrap()
            .starts_with("[buildout]\nparts =\n\n# This is beginning"));
    }

    #[test]
    fn the_tail_refuses_what_buildout_cannot_hold() {
        for (field, value) in [
            ("computer-id", "C\n[buildout]\nextends = file:///etc/shadow"),
            ("server-url", "http://m/${buildout:x}"),
            ("key-file", "/k%(x)s"),
            ("storage-home", "/s\r"),
            ("storage-home", "/s\0"),
        ] {
            let mut t = sample_tail();
            match field {
                "computer-id" => t.computer_id = value.into(),
                "server-url" => t.server_url = value.into(),
                "key-file" => t.key_file = value.into(),
                _ => t.storage_home = value.into(),
            }
            let e = buildout_tail(&t).unwrap_err().to_string();
            assert!(e.starts_with(&format!("cannot write {field} ")) && !e.contains('\n'), "{e}");
        }
        let mut t = sample_tail();
        t.shared_part_list = "/a\n/b\r\n".into();
        assert!(buildout_tail(&t).is_err(), "a CR inside a list");
        // a lone `$` and `%` are plain text for buildout
        t.shared_part_list = "/a$b\n/100%".into();
        assert!(buildout_tail(&t).unwrap().contains("  /a$b\n  /100%\n"));
    }

    #[test]
    fn the_software_buildout_cfg_is_configparser_shaped_and_holds_one_url() {
        let url = SoftwareUrl::parse("http://sr/software.cfg").unwrap();
        assert_eq!(
            software_buildout(&url, "", "").unwrap(),
            "[buildout]\nextends = http://sr/software.cfg\nshared-part-list = \nbuild-time-part-list = \n\n"
        );
        assert!(software_buildout(&url, "/a\n/b", "").unwrap().contains("shared-part-list = /a\n\t/b\n"));
        assert!(software_buildout(&url, "/a\r", "").is_err());
        // finding 4: the URL cannot carry a second line, so no `extends`
        // can be injected (it never becomes a SoftwareUrl)
        assert!(SoftwareUrl::parse("http://sr/software.cfg\nextends = file:///etc/passwd").is_err());
    }

    #[test]
    fn supervisord_files_are_slapgrids() {
        let c = supervisord_conf(Path::new("/srv/slapgrid"), Some("/usr/bin/slapos node watchdog")).unwrap();
        assert!(c.contains("[include]\nfiles = /srv/slapgrid/etc/supervisord.conf.d/*.conf\n"));
        assert!(c.contains("serverurl = unix:///srv/slapgrid/sv.sock\n"));
        assert!(c.contains("[eventlistener:watchdog]\ncommand=/usr/bin/slapos node watchdog\nevents=PROCESS_STATE_EXITED, PROCESS_STATE_FATAL\nstderr_logfile=/srv/slapgrid/var/log/watchdog.log\n"));
        let pp = Path::new("/srv/slapgrid/slappart0");
        let programs = partition_programs(pp, &names(&["b", "a", "http-server"]), &names(&["http-server"]));
        assert_eq!(programs.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["a", "b", "http-server-on-watch"]);
        let id = PartitionId::parse("slappart0").unwrap();
        let g = partition_group_conf(&id, pp, &programs, &owner()).unwrap();
        assert!(g.starts_with("[group:slappart0]\nprograms=slappart0_a,slappart0_b,slappart0_http-server\n\n[program:slappart0_a]\ndirectory=/srv/slapgrid/slappart0\ncommand=/srv/slapgrid/slappart0/etc/run/a\nprocess_name=a\n"), "{g}");
        assert!(g.contains("[program:slappart0_http-server]\ndirectory=/srv/slapgrid/slappart0\ncommand=/srv/slapgrid/slappart0/etc/service/http-server\nprocess_name=http-server-on-watch\n"));
        assert!(g.contains("user=995\ngroup=1002\n"));
        assert!(g.contains("stdout_logfile=/srv/slapgrid/slappart0/.slappart0_http-server.log\n"));
        assert!(g.ends_with("environment=USER=\"slapuser0\",LOGNAME=\"slapuser0\",HOME=\"/srv/slapgrid/slappart0\"\n"));
    }

    #[test]
    fn supervisord_values_escape_percent_and_refuse_what_ini_cannot_hold() {
        let id = PartitionId::parse("slappart0").unwrap();
        // `%` is doubled wherever supervisord expands it
        let pp = Path::new("/srv/100%/slappart0");
        let g = partition_group_conf(&id, pp, &partition_programs(pp, &names(&["a"]), &[]), &owner()).unwrap();
        assert!(g.contains("directory=/srv/100%%/slappart0\ncommand=/srv/100%%/slappart0/etc/run/a\n"), "{g}");
        assert!(supervisord_conf(Path::new("/srv/100%"), None).unwrap().contains("files = /srv/100%%/etc/supervisord.conf.d/*.conf\n"));
        // no escape for these
        for root in ["/srv/a b", "/srv/a\nb", "/srv/%(here)s", "/srv/a\"b"] {
            assert!(supervisord_conf(Path::new(root), None).is_err(), "{root:?}");
            let pp = Path::new(root).join("slappart0");
            assert!(partition_group_conf(&id, &pp, &partition_programs(&pp, &names(&["a"]), &[]), &owner()).is_err(), "{root:?}");
        }
        assert!(supervisord_conf(Path::new("/srv"), Some("/bin/slapos node watchdog ;x")).is_err());
        let mut o = owner();
        o.home = "/home/a\nuser=0".into();
        assert!(partition_group_conf(&id, pp, &[], &o).is_err());
        // `user=` is always the partition's user, never root
        let root = ProgramOwner { uid: 0, gid: 0, user: "root".into(), home: "/root".into() };
        assert!(partition_group_conf(&id, pp, &[], &root).unwrap_err().to_string().contains("never run as root"));
    }

    /// Finding 1: a partition user names a file in `etc/service` so that its
    /// name carries a program of its own (`user=root`). The name never
    /// becomes a ProgramName, so it never reaches the group file; and every
    /// section of any group file we write is one of ours.
    #[test]
    fn an_injected_program_name_never_reaches_the_group_file() {
        let evil = "x\n[program:evil]\ncommand=/bin/sh -c id\nuser=root\n";
        assert!(ProgramName::parse(evil).is_err());
        for near in ["x]\nuser=root", "x,slappart1_y", "x%(ENV_PATH)s", "x user=root"] {
            assert!(ProgramName::parse(near).is_err(), "{near:?}");
        }
        let pp = Path::new("/srv/slapgrid/slappart0");
        let programs = partition_programs(pp, &names(&["a-b_c.d+e@f~", "été"]), &names(&["x"]));
        let g = partition_group_conf(&PartitionId::parse("slappart0").unwrap(), pp, &programs, &owner()).unwrap();
        let sections: Vec<&str> = g.lines().filter(|l| l.starts_with('[')).collect();
        let ours = ["[group:slappart0]", "[program:slappart0_a-b_c.d+e@f~]", "[program:slappart0_été]", "[program:slappart0_x]"];
        assert_eq!(sections, ours);
        assert_eq!(g.matches("\nuser=995\n").count(), 3);
        assert!(!g.lines().any(|l| l.starts_with("user=") && l != "user=995"));
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
        let ours = buildout_tail(&sample_tail()).unwrap();
        assert_eq!(ours, String::from_utf8(out.stdout).unwrap());
    }
}
