//! The live system, observed and changed: users and groups (the system's
//! `groupadd`/`useradd`/`usermod`/`passwd`, the standard auditable way),
//! directories, and the network through netlink (rtnetlink).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlag, AddressHeaderFlag};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteType};

/// A user as the system knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: String,
    pub group: String,
    /// Supplementary groups.
    pub groups: Vec<String>,
}

/// An interface and its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    /// `(address, prefix length, tentative)`.
    pub addresses: Vec<(IpAddr, u8, bool)>,
}

/// A path's owner and mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathInfo {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// What the planner needs to know of the machine.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub users: BTreeMap<String, UserInfo>,
    pub groups: BTreeSet<String>,
    /// Interfaces by name (those named in the configuration).
    pub interfaces: BTreeMap<String, Interface>,
    /// Every address on any interface (collisions).
    pub all_addresses: BTreeSet<IpAddr>,
    /// IPv6 routes of the `local` table: `(network, prefix length)`.
    pub local_routes: BTreeSet<(Ipv6Addr, u8)>,
    pub nonlocal_bind: bool,
    pub paths: BTreeMap<PathBuf, PathInfo>,
    /// Current content of the `.slapos-resource` files.
    pub resources: BTreeMap<PathBuf, String>,
}

/// A system call that failed.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("{what}: {message}")]
    Failed { what: String, message: String },
    #[error("network interface '{0}' does not exist")]
    NoInterface(String),
}

fn failed(what: impl Into<String>, message: impl ToString) -> SystemError {
    SystemError::Failed { what: what.into(), message: message.to_string() }
}

pub fn user(name: &str) -> Option<UserInfo> {
    let u = nix::unistd::User::from_name(name).ok().flatten()?;
    let group = nix::unistd::Group::from_gid(u.gid).ok().flatten().map(|g| g.name).unwrap_or_default();
    let groups = read_group_memberships(name);
    Some(UserInfo {
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        home: u.dir,
        shell: u.shell.display().to_string(),
        group,
        groups,
    })
}

fn read_group_memberships(user: &str) -> Vec<String> {
    std::fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[3].split(',').any(|m| m == user)).then(|| f[0].to_string())
        })
        .collect()
}

pub fn group_exists(name: &str) -> bool {
    nix::unistd::Group::from_name(name).ok().flatten().is_some()
}

pub fn path_info(path: &Path) -> Option<PathInfo> {
    let m = std::fs::symlink_metadata(path).ok()?;
    Some(PathInfo { mode: m.mode() & 0o7777, uid: m.uid(), gid: m.gid() })
}

fn runtime() -> Result<tokio::runtime::Runtime, SystemError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| failed("tokio runtime", e))
}

async fn connect() -> Result<rtnetlink::Handle, SystemError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| failed("netlink connection", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn link_index(handle: &rtnetlink::Handle, name: &str) -> Result<Option<u32>, SystemError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(failed(format!("looking up interface {name}"), e)),
    }
}

async fn addresses(handle: &rtnetlink::Handle, index: Option<u32>) -> Result<Vec<(u32, IpAddr, u8, bool)>, SystemError> {
    let mut req = handle.address().get();
    if let Some(i) = index {
        req = req.set_link_index_filter(i);
    }
    let mut stream = req.execute();
    let mut out = Vec::new();
    while let Some(msg) = stream.try_next().await.map_err(|e| failed("listing addresses", e))? {
        let mut tentative = msg.header.flags.contains(&AddressHeaderFlag::Tentative);
        let mut addr = None;
        for a in &msg.attributes {
            match a {
                AddressAttribute::Address(ip) => addr = Some(*ip),
                AddressAttribute::Local(ip) if addr.is_none() => addr = Some(*ip),
                AddressAttribute::Flags(f) => tentative |= f.contains(&AddressFlag::Tentative),
                _ => {}
            }
        }
        if let Some(ip) = addr {
            out.push((msg.header.index, ip, msg.header.prefix_len, tentative));
        }
    }
    Ok(out)
}

/// Observes what the planner needs: users, groups, interfaces, addresses,
/// local routes, paths and resource files.
pub fn observe(users: &[String], interfaces: &[String], paths: &[PathBuf], resources: &[PathBuf], network: bool) -> Result<Observed, SystemError> {
    let mut o = Observed::default();
    for u in users {
        if let Some(info) = user(u) {
            o.users.insert(u.clone(), info);
        }
        if group_exists(u) {
            o.groups.insert(u.clone());
        }
    }
    for p in paths {
        if let Some(i) = path_info(p) {
            o.paths.insert(p.clone(), i);
        }
    }
    for r in resources {
        if let Ok(c) = std::fs::read_to_string(r) {
            o.resources.insert(r.clone(), c);
        }
    }
    o.nonlocal_bind = std::fs::read_to_string("/proc/sys/net/ipv6/ip_nonlocal_bind").map(|s| s.trim() == "1").unwrap_or(false);
    if !network && interfaces.is_empty() {
        return Ok(o);
    }
    let rt = runtime()?;
    rt.block_on(async {
        let handle = connect().await?;
        for name in interfaces {
            if let Some(index) = link_index(&handle, name).await? {
                let addrs = addresses(&handle, Some(index)).await?;
                o.interfaces.insert(
                    name.clone(),
                    Interface { name: name.clone(), index, addresses: addrs.into_iter().map(|(_, a, p, t)| (a, p, t)).collect() },
                );
            }
        }
        if network {
            for (_, a, _, _) in addresses(&handle, None).await? {
                o.all_addresses.insert(a);
            }
            let mut routes = handle.route().get(rtnetlink::IpVersion::V6).execute();
            while let Some(r) = routes.try_next().await.map_err(|e| failed("listing routes", e))? {
                if r.header.kind != RouteType::Local {
                    continue;
                }
                for a in &r.attributes {
                    if let RouteAttribute::Destination(RouteAddress::Inet6(d)) = a {
                        o.local_routes.insert((*d, r.header.destination_prefix_length));
                    }
                }
            }
        }
        Ok::<(), SystemError>(())
    })?;
    Ok(o)
}

/// A network change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkChange {
    /// `ip addr add A/P dev I`.
    Address { interface: String, addr: IpAddr, prefix: u8 },
    /// `ip -6 route add local N/P dev lo`: the partition's range is routed here.
    LocalRoute { network: Ipv6Addr, prefix: u8 },
}

/// Applies network changes in order, over one netlink connection; stops at
/// the first failure, returning how many were done.
pub fn apply_network(changes: &[NetworkChange]) -> Result<(), (usize, SystemError)> {
    let rt = runtime().map_err(|e| (0, e))?;
    rt.block_on(async {
        let handle = connect().await.map_err(|e| (0, e))?;
        let mut indexes = std::collections::HashMap::new();
        for (done, change) in changes.iter().enumerate() {
            let r = match change {
                NetworkChange::Address { interface, addr, prefix } => {
                    let index = match indexes.get(interface) {
                        Some(i) => *i,
                        None => {
                            let i = link_index(&handle, interface)
                                .await
                                .map_err(|e| (done, e))?
                                .ok_or_else(|| (done, SystemError::NoInterface(interface.clone())))?;
                            indexes.insert(interface.clone(), i);
                            i
                        }
                    };
                    add_address_with(&handle, index, interface, *addr, *prefix).await
                }
                NetworkChange::LocalRoute { network, prefix } => {
                    let lo = match indexes.get("lo") {
                        Some(i) => *i,
                        None => {
                            let i = link_index(&handle, "lo")
                                .await
                                .map_err(|e| (done, e))?
                                .ok_or_else(|| (done, SystemError::NoInterface("lo".into())))?;
                            indexes.insert("lo".to_string(), i);
                            i
                        }
                    };
                    add_local_route_with(&handle, lo, *network, *prefix).await
                }
            };
            r.map_err(|e| (done, e))?;
        }
        Ok(())
    })
}

async fn add_address_with(handle: &rtnetlink::Handle, index: u32, interface: &str, addr: IpAddr, prefix: u8) -> Result<(), SystemError> {
    match handle.address().add(index, addr, prefix).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        Err(e) => Err(failed(format!("adding {addr}/{prefix} to {interface}"), e)),
    }
}

async fn add_local_route_with(handle: &rtnetlink::Handle, lo: u32, network: Ipv6Addr, prefix: u8) -> Result<(), SystemError> {
    {
        let req = handle
            .route()
            .add()
            .v6()
            .destination_prefix(network, prefix)
            .kind(RouteType::Local)
            .table_id(255)
            .output_interface(lo);
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            Err(e) => Err(failed(format!("adding local route {network}/{prefix}"), e)),
        }
    }
}

/// Addresses of `interface` that are still tentative (duplicate address detection).
pub fn tentative(interface: &str) -> Result<Vec<IpAddr>, SystemError> {
    runtime()?.block_on(async {
        let handle = connect().await?;
        let Some(index) = link_index(&handle, interface).await? else { return Ok(vec![]) };
        Ok(addresses(&handle, Some(index)).await?.into_iter().filter(|(_, _, _, t)| *t).map(|(_, a, _, _)| a).collect())
    })
}

/// Runs a system command; its failure is an error with its output.
pub fn run(program: &str, args: &[&str]) -> Result<(), SystemError> {
    tracing::debug!("{program} {}", args.join(" "));
    let out = Command::new(program).args(args).output().map_err(|e| failed(format!("{program} {}", args.join(" ")), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(
            format!("{program} {}", args.join(" ")),
            format!("{}{}", String::from_utf8_lossy(&out.stderr).trim(), String::from_utf8_lossy(&out.stdout).trim()),
        ))
    }
}

pub fn set_mode(path: &Path, mode: u32) -> Result<(), SystemError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| failed(format!("chmod {mode:o} {}", path.display()), e))
}

pub fn set_owner(path: &Path, uid: u32, gid: u32) -> Result<(), SystemError> {
    nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)))
        .map_err(|e| failed(format!("chown {uid}:{gid} {}", path.display()), e))
}
