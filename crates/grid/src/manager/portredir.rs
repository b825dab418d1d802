//! The `portredir` manager: port redirections a partition asks for in its
//! `.slapos-port-redirect` (slapos.core's `manager/portredir.py`), run as
//! `socat` programs in the partition's `<partition>-socat` supervisord
//! group.
//!
//! The file is the partition user's, so hostile: it is read through
//! [`Dir`] (regular file, one link, at most [`MAX_FILE`] bytes), must be a
//! JSON list of at most [`MAX_REDIRECTS`] objects, and each entry is
//! validated as slapgrid does and more strictly: `type` `tcp` or `udp`
//! (any case, default `tcp`); `srcPort`/`destPort` a whole number 1–65535
//! (a JSON number or a string of digits; slapgrid's `int()` also took
//! floats and booleans, and 0 or 70000 reached socat); `srcAddress`
//! (optional) and `destAddress` (default: the partition's first IPv6
//! address) IP addresses as text. A bad entry is skipped with a warning,
//! as slapgrid's, never the whole file; a source port twice (same type)
//! keeps the first (slapgrid's last silently won).
//!
//! The programs and their commands are slapgrid's: `socat-<type>-<port>`
//! running `socat TCP4-LISTEN:8080[,bind=ADDR],fork TCP6:[ADDR]:80`, as the
//! partition's user from port 1024 up and as root below (as slapgrid: only
//! root binds a privileged port; the command is entirely the node's).

use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::fsafe::Dir;
use crate::names::PartitionId;
use crate::templates::{self, ManagerProgram, ProgramOwner, TemplateError};

/// The file a partition writes its redirections to.
pub const REDIRECT_FILE: &str = ".slapos-port-redirect";
/// The largest redirection file read, in bytes.
pub const MAX_FILE: u64 = 64 * 1024;
/// At most this many redirections per partition.
pub const MAX_REDIRECTS: usize = 128;
/// The supervisord group suffix: `<partition>-socat`.
pub const GROUP_SUFFIX: &str = "socat";

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `tcp` (the default).
    Tcp,
    /// `udp`.
    Udp,
}

impl Protocol {
    fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One validated redirection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// `type`.
    pub protocol: Protocol,
    /// `srcPort`: where socat listens.
    pub src_port: u16,
    /// `srcAddress`: the address it binds (None: every IPv4 address).
    pub src_address: Option<IpAddr>,
    /// `destPort`.
    pub dest_port: u16,
    /// `destAddress`, or the partition's IPv6 address.
    pub dest_address: IpAddr,
}

impl Redirect {
    /// The program id in the group (`socat-tcp-8080`).
    pub fn program_id(&self) -> String {
        format!("socat-{}-{}", self.protocol.lower(), self.src_port)
    }

    /// slapgrid's socat command line.
    pub fn command(&self, socat: &str) -> String {
        format!("{socat} {}", self.args().join(" "))
    }

    /// The arguments of socat.
    pub fn args(&self) -> Vec<String> {
        let up = self.protocol.lower().to_ascii_uppercase();
        let version = |a: &IpAddr| if a.is_ipv6() { 6 } else { 4 };
        let mut source = format!("{up}{}-LISTEN:{}", self.src_address.as_ref().map_or(4, version), self.src_port);
        if let Some(a) = self.src_address {
            source.push_str(&format!(",bind={a}"));
        }
        source.push_str(",fork");
        let dest = match self.dest_address {
            IpAddr::V6(a) => format!("[{a}]"),
            IpAddr::V4(a) => a.to_string(),
        };
        vec![source, format!("{up}{}:{dest}:{}", version(&self.dest_address), self.dest_port)]
    }

    /// Whether the partition's user runs it (from port 1024 up).
    pub fn as_user(&self) -> bool {
        self.src_port >= 1024
    }
}

/// What the partition's file asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortredirPlan {
    /// The valid redirections, in file order.
    pub redirects: Vec<Redirect>,
    /// Why entries (or the file) were skipped.
    pub warnings: Vec<String>,
}

fn port(v: Option<&Value>, key: &str) -> Result<u16, String> {
    let n = match v {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) if !s.trim().is_empty() && s.trim().bytes().all(|b| b.is_ascii_digit()) => s.trim().parse().ok(),
        None => return Err(format!("no {key}")),
        _ => None,
    };
    match n {
        Some(p @ 1..=65535) => Ok(p as u16),
        _ => Err(format!("bad {key} {}", shown(v))),
    }
}

fn address(v: Option<&Value>, key: &str) -> Result<Option<IpAddr>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| format!("bad {key} {}", shown(v))),
        _ => Err(format!("bad {key} {}", shown(v))),
    }
}

fn shown(v: Option<&Value>) -> String {
    crate::names::shown(&v.map(Value::to_string).unwrap_or_default())
}

fn entry(v: &Value, default_dest: Option<Ipv6Addr>) -> Result<Redirect, String> {
    let o = v.as_object().ok_or_else(|| format!("not an object: {}", shown(Some(v))))?;
    let protocol = match o.get("type") {
        None => Protocol::Tcp,
        Some(Value::String(t)) if t.eq_ignore_ascii_case("tcp") => Protocol::Tcp,
        Some(Value::String(t)) if t.eq_ignore_ascii_case("udp") => Protocol::Udp,
        t => return Err(format!("bad redirection type {}", shown(t))),
    };
    let src_port = port(o.get("srcPort"), "srcPort")?;
    let src_address = address(o.get("srcAddress"), "srcAddress")?;
    let dest_port = port(o.get("destPort"), "destPort")?;
    let dest_address = address(o.get("destAddress"), "destAddress")?
        .or(default_dest.map(IpAddr::V6))
        .ok_or("no destAddress, and the partition has no IPv6 address")?;
    Ok(Redirect { protocol, src_port, src_address, dest_port, dest_address })
}

/// The redirections of a file's text; `default_dest` is the partition's
/// IPv6 address.
pub fn parse(text: &[u8], default_dest: Option<Ipv6Addr>) -> PortredirPlan {
    let mut plan = PortredirPlan::default();
    let list = match serde_json::from_slice::<Value>(text) {
        Ok(Value::Array(l)) => l,
        Ok(_) => {
            plan.warnings.push(format!("{REDIRECT_FILE} is not a JSON list: ignored"));
            return plan;
        }
        Err(e) => {
            plan.warnings.push(format!("Bad port redirection config file {REDIRECT_FILE}: {e}"));
            return plan;
        }
    };
    if list.len() > MAX_REDIRECTS {
        plan.warnings.push(format!("{REDIRECT_FILE}: {} redirections, only the first {MAX_REDIRECTS} are used", list.len()));
    }
    for (i, v) in list.iter().take(MAX_REDIRECTS).enumerate() {
        match entry(v, default_dest) {
            Ok(r) if plan.redirects.iter().any(|o| o.program_id() == r.program_id()) => {
                plan.warnings.push(format!("redirection {i}: {} already redirected: skipped", r.program_id()))
            }
            Ok(r) => plan.redirects.push(r),
            Err(why) => plan.warnings.push(format!("redirection {i}: {why}: skipped")),
        }
    }
    plan
}

/// The partition's first IPv6 address (`ip_list`, then `full_ip_list`), as
/// slapgrid's default destination.
pub fn partition_ipv6(p: &slap::model::ComputerPartition) -> Option<Ipv6Addr> {
    let full = slap::model::ip_list_of(p.parameters.as_ref().and_then(|d| d.get("full_ip_list")));
    p.ip_list().into_iter().chain(full).find_map(|(_, a)| a.parse::<Ipv6Addr>().ok())
}

/// Reads the partition's redirection file (`pd`); none: an empty plan.
pub fn plan(pd: &Dir, default_dest: Option<Ipv6Addr>) -> PortredirPlan {
    let file = Path::new(REDIRECT_FILE);
    if pd.metadata(file).is_err() {
        return PortredirPlan::default();
    }
    match pd.read(file, MAX_FILE) {
        Ok(text) => parse(&text, default_dest),
        Err(e) => PortredirPlan { redirects: vec![], warnings: vec![format!("{REDIRECT_FILE} not read: {e}")] },
    }
}

/// `socat` on the node's PATH.
pub fn find_socat() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join("socat")).find(|p| p.is_file())
}

/// Why the redirections could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum PortredirError {
    /// socat is not installed.
    #[error("port redirections asked, but socat is not on PATH")]
    NoSocat,
    /// The group file cannot hold a value.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// supervisord refused the group.
    #[error(transparent)]
    Supervisor(#[from] crate::supervisor::SupervisorError),
}

/// The group file of the plan: None when there is nothing to redirect.
/// Programs below port 1024 run as `root_owner` (root on a root node).
pub fn group_conf(
    id: &PartitionId,
    pp: &Path,
    plan: &PortredirPlan,
    socat: &Path,
    owner: &ProgramOwner,
    root_owner: &ProgramOwner,
) -> Result<Option<String>, TemplateError> {
    if plan.redirects.is_empty() {
        return Ok(None);
    }
    let programs: Vec<ManagerProgram> = plan
        .redirects
        .iter()
        .map(|r| ManagerProgram {
            id: r.program_id(),
            program: socat.to_path_buf(),
            args: r.args(),
            owner: if r.as_user() { owner.clone() } else { root_owner.clone() },
        })
        .collect();
    templates::manager_group_conf(id, GROUP_SUFFIX, pp, &programs).map(Some)
}

/// Applies the plan: the `<partition>-socat` group written and its
/// programs started, or removed when nothing is redirected.
pub fn apply(
    supervisor: &crate::supervisor::Supervisor,
    id: &PartitionId,
    pp: &Path,
    plan: &PortredirPlan,
    owner: &ProgramOwner,
) -> Result<(), PortredirError> {
    for w in &plan.warnings {
        tracing::warn!("{id}: {w}");
    }
    let group = format!("{id}-{GROUP_SUFFIX}");
    if plan.redirects.is_empty() {
        // (supervisord is asked only when there is a group to remove)
        if supervisor.has_group(&group) {
            supervisor.install_group(&group, None)?;
        }
        return Ok(());
    }
    let socat = find_socat().ok_or(PortredirError::NoSocat)?;
    let root = if nix::unistd::geteuid().is_root() {
        ProgramOwner { uid: 0, gid: 0, user: "root".into(), home: "/root".into() }
    } else {
        // a node without root cannot switch users: privileged ports will fail
        owner.clone()
    };
    let conf = group_conf(id, pp, plan, &socat, owner, &root)?;
    supervisor.install_group(&group, conf.as_deref())?;
    supervisor.start_group(&group)?;
    tracing::info!("{id}: {} port redirection(s) in place", plan.redirects.len());
    Ok(())
}

#[cfg(test)]
mod tests;
