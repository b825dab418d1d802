//! The live system, observed and changed: users and groups (the system's
//! `groupadd`/`useradd`/`usermod`/`passwd`, the standard auditable way),
//! directories, and the network through netlink (rtnetlink) plus the TUN/TAP
//! ioctls of `/dev/net/tun` (what `ip tuntap add` does).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlag, AddressHeaderFlag};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlag, LinkInfo};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteScope, RouteType};

/// A user as the system knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its home directory.
    pub home: PathBuf,
    /// Its login shell.
    pub shell: String,
    /// Its primary group's name.
    pub group: String,
    /// Supplementary groups.
    pub groups: Vec<String>,
}

/// An interface and its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    /// The interface's name.
    pub name: String,
    /// Its kernel index.
    pub index: u32,
    /// `(address, prefix length, tentative)`.
    pub addresses: Vec<(IpAddr, u8, bool)>,
    /// Administratively up.
    pub up: bool,
    /// A bridge (taps are attached to it).
    pub bridge: bool,
    /// The bridge (or other controller) this interface is attached to.
    pub master: Option<String>,
    /// A tun or tap device.
    pub tuntap: bool,
    /// Owner uid of a tun/tap (`/sys/class/net/<name>/owner`; none: -1 or unreadable).
    pub owner: Option<u32>,
}

/// A route of the main table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// The destination network.
    pub destination: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// The outgoing interface.
    pub interface: String,
    /// The gateway, if any.
    pub via: Option<IpAddr>,
}

/// A path's owner and mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathInfo {
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
}

/// What the planner needs to know of the machine.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The users the plan cares about, by name.
    pub users: BTreeMap<String, UserInfo>,
    /// The groups that exist among those the plan cares about.
    pub groups: BTreeSet<String>,
    /// Interfaces by name (all of them).
    pub interfaces: BTreeMap<String, Interface>,
    /// Routes of the main table (those through taps matter).
    pub routes: BTreeSet<Route>,
    /// Every address on any interface (collisions).
    pub all_addresses: BTreeSet<IpAddr>,
    /// IPv6 routes of the `local` table: `(network, prefix length)`.
    pub local_routes: BTreeSet<(Ipv6Addr, u8)>,
    /// Whether `net.ipv6.ip_nonlocal_bind` is on.
    pub nonlocal_bind: bool,
    /// Owner and mode of the paths the plan cares about.
    pub paths: BTreeMap<PathBuf, PathInfo>,
    /// Current content of the `.slapos-resource` files.
    pub resources: BTreeMap<PathBuf, String>,
    /// Local mode: loopback IPv4 addresses something listens on.
    pub listening: BTreeSet<std::net::Ipv4Addr>,
    /// Local mode: the loopback ranges local nodes claim, with the state
    /// file of each.
    pub local_claims: BTreeMap<std::net::Ipv4Addr, PathBuf>,
}

/// A system call that failed.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// A call failed.
    #[error("{what}: {message}")]
    Failed {
        /// What was attempted.
        what: String,
        /// The system's error.
        message: String,
    },
    /// A named interface is gone.
    #[error("network interface '{0}' does not exist")]
    NoInterface(String),
}

fn failed(what: impl Into<String>, message: impl ToString) -> SystemError {
    SystemError::Failed { what: what.into(), message: message.to_string() }
}

/// The user `name` as the system's user database knows it (with its groups from `/etc/group`), if it exists.
pub fn user(name: &str) -> Option<UserInfo> {
    let u = nix::unistd::User::from_name(name).ok().flatten()?;
    let group = nix::unistd::Group::from_gid(u.gid).ok().flatten().map(|g| g.name).unwrap_or_default();
    let groups = read_group_memberships(name);
    Some(UserInfo { uid: u.uid.as_raw(), gid: u.gid.as_raw(), home: u.dir, shell: u.shell.display().to_string(), group, groups })
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

/// Whether the group `name` exists.
pub fn group_exists(name: &str) -> bool {
    nix::unistd::Group::from_name(name).ok().flatten().is_some()
}

/// Mode and owner of `path` (not following a final symlink), if it exists.
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

/// Every link: name, index, flags, kind, controller.
async fn links(handle: &rtnetlink::Handle) -> Result<Vec<Interface>, SystemError> {
    let mut stream = handle.link().get().execute();
    let mut raw = Vec::new();
    while let Some(msg) = stream.try_next().await.map_err(|e| failed("listing interfaces", e))? {
        let mut i = Interface { index: msg.header.index, up: msg.header.flags.contains(&LinkFlag::Up), ..Default::default() };
        let mut master = None;
        for a in &msg.attributes {
            match a {
                LinkAttribute::IfName(n) => i.name = n.clone(),
                LinkAttribute::Controller(m) => master = Some(*m),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            i.bridge = *kind == InfoKind::Bridge;
                            i.tuntap = *kind == InfoKind::Tun;
                        }
                    }
                }
                _ => {}
            }
        }
        raw.push((i, master));
    }
    let names: BTreeMap<u32, String> = raw.iter().map(|(i, _)| (i.index, i.name.clone())).collect();
    Ok(raw
        .into_iter()
        .map(|(mut i, m)| {
            i.master = m.and_then(|m| names.get(&m).cloned());
            if i.tuntap {
                i.owner = tuntap_owner(&i.name);
            }
            i
        })
        .collect())
}

/// The owner uid of a tun/tap, as `/sys/class/net/<name>/owner` shows it.
pub fn tuntap_owner(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/owner")).ok()?;
    text.trim().parse::<i64>().ok().filter(|u| *u >= 0).map(|u| u as u32)
}

fn route_of(header: &RouteHeader, attributes: &[RouteAttribute], names: &BTreeMap<u32, String>) -> Option<Route> {
    let mut table = header.table as u32;
    let (mut dest, mut via, mut oif) = (None, None, None);
    for a in attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dest = Some(IpAddr::V4(*d)),
            RouteAttribute::Destination(RouteAddress::Inet6(d)) => dest = Some(IpAddr::V6(*d)),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(IpAddr::V4(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => via = Some(IpAddr::V6(*g)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != RouteHeader::RT_TABLE_MAIN as u32 || header.kind != RouteType::Unicast {
        return None;
    }
    Some(Route { destination: dest?, prefix: header.destination_prefix_length, interface: names.get(&oif?)?.clone(), via })
}

/// Observes what the planner needs: users, groups, interfaces, addresses,
/// routes, paths and resource files. `network`: also every address and the
/// routes (what altering the network needs); `interfaces`: read the
/// interfaces even without `network` (the computer address).
pub fn observe(
    users: &[String],
    interfaces: &[String],
    paths: &[PathBuf],
    resources: &[PathBuf],
    network: bool,
) -> Result<Observed, SystemError> {
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
        let mut by_index = BTreeMap::new();
        for i in links(&handle).await? {
            by_index.insert(i.index, i);
        }
        let names: BTreeMap<u32, String> = by_index.iter().map(|(k, i)| (*k, i.name.clone())).collect();
        for (index, a, p, t) in addresses(&handle, None).await? {
            if let Some(i) = by_index.get_mut(&index) {
                i.addresses.push((a, p, t));
            }
            if network {
                o.all_addresses.insert(a);
            }
        }
        o.interfaces = by_index.into_values().map(|i| (i.name.clone(), i)).collect();
        if network {
            for version in [rtnetlink::IpVersion::V4, rtnetlink::IpVersion::V6] {
                let v6 = version == rtnetlink::IpVersion::V6;
                let mut routes = handle.route().get(version).execute();
                while let Some(r) = routes.try_next().await.map_err(|e| failed("listing routes", e))? {
                    if v6 && r.header.kind == RouteType::Local {
                        for a in &r.attributes {
                            if let RouteAttribute::Destination(RouteAddress::Inet6(d)) = a {
                                o.local_routes.insert((*d, r.header.destination_prefix_length));
                            }
                        }
                    } else if let Some(route) = route_of(&r.header, &r.attributes, &names) {
                        o.routes.insert(route);
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
    /// `ip link add N type bridge`.
    Bridge {
        /// The bridge.
        name: String,
    },
    /// `ip tuntap add dev N mode tap|tun user U`: a persistent tun/tap owned by `uid`.
    TunTap {
        /// The device.
        name: String,
        /// A tap (else a tun).
        tap: bool,
        /// The owner.
        uid: u32,
    },
    /// `ip link set I master M`.
    Master {
        /// The attached interface.
        interface: String,
        /// The bridge.
        master: String,
    },
    /// `ip link set I up`.
    Up {
        /// The interface.
        interface: String,
    },
    /// `ip addr add A/P dev I [noprefixroute]`.
    Address {
        /// The interface.
        interface: String,
        /// The address.
        addr: IpAddr,
        /// Its prefix length.
        prefix: u8,
        /// No prefix route.
        noprefixroute: bool,
    },
    /// `ip route add D/P dev I [via G]` (main table).
    Route {
        /// The destination network.
        destination: IpAddr,
        /// Its prefix length.
        prefix: u8,
        /// The outgoing interface.
        interface: String,
        /// The gateway, if any.
        via: Option<IpAddr>,
    },
    /// `ip -6 route add local N/P dev lo`: the partition's range is routed here.
    LocalRoute {
        /// The partition's IPv6 range.
        network: Ipv6Addr,
        /// Its prefix length.
        prefix: u8,
    },
}

nix::ioctl_write_ptr_bad!(
    /// `TUNSETIFF`: attach the open `/dev/net/tun` to a named tun/tap (created if needed).
    tun_set_iff,
    libc::TUNSETIFF,
    libc::ifreq
);
nix::ioctl_write_int_bad!(
    /// `TUNSETOWNER`: the uid allowed to use the device.
    tun_set_owner,
    libc::TUNSETOWNER
);
nix::ioctl_write_int_bad!(
    /// `TUNSETPERSIST`: keep the device once the file descriptor is closed.
    tun_set_persist,
    libc::TUNSETPERSIST
);

/// Creates a persistent tun or tap owned by `uid`, as `ip tuntap add` does:
/// `TUNSETIFF` (`IFF_TAP` or `IFF_TUN`, with `IFF_NO_PI`), `TUNSETOWNER`,
/// `TUNSETPERSIST 1` on `/dev/net/tun`, then the descriptor is closed (the
/// device stays, without carrier until a program opens it).
pub fn create_tuntap(name: &str, tap: bool, uid: u32) -> Result<(), SystemError> {
    use std::os::fd::AsRawFd;
    let what = || format!("creating {} {name}", if tap { "tap" } else { "tun" });
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(failed(what(), format!("an interface name has 1 to {} characters", libc::IFNAMSIZ - 1)));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| failed(what(), format!("/dev/net/tun: {e}")))?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = ((if tap { libc::IFF_TAP } else { libc::IFF_TUN }) | libc::IFF_NO_PI) as libc::c_short;
    let fd = file.as_raw_fd();
    // SAFETY: fd is an open /dev/net/tun descriptor and req lives across the calls
    unsafe {
        tun_set_iff(fd, &req).map_err(|e| failed(what(), format!("TUNSETIFF: {e}")))?;
        tun_set_owner(fd, uid as libc::c_int).map_err(|e| failed(what(), format!("TUNSETOWNER {uid}: {e}")))?;
        tun_set_persist(fd, 1).map_err(|e| failed(what(), format!("TUNSETPERSIST: {e}")))?;
    }
    Ok(())
}

async fn index_of(handle: &rtnetlink::Handle, cache: &mut std::collections::HashMap<String, u32>, name: &str) -> Result<u32, SystemError> {
    if let Some(i) = cache.get(name) {
        return Ok(*i);
    }
    let i = link_index(handle, name).await?.ok_or_else(|| SystemError::NoInterface(name.to_string()))?;
    cache.insert(name.to_string(), i);
    Ok(i)
}

fn exists_ok(r: Result<(), rtnetlink::Error>, what: impl FnOnce() -> String) -> Result<(), SystemError> {
    match r {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        Err(e) => Err(failed(what(), e)),
    }
}

/// Applies network changes in order, over one netlink connection; stops at
/// the first failure, returning how many were done.
pub fn apply_network(changes: &[NetworkChange]) -> Result<(), (usize, SystemError)> {
    let rt = runtime().map_err(|e| (0, e))?;
    rt.block_on(async {
        let handle = connect().await.map_err(|e| (0, e))?;
        let mut indexes = std::collections::HashMap::new();
        for (done, change) in changes.iter().enumerate() {
            let r = async {
                match change {
                    NetworkChange::Bridge { name } => {
                        exists_ok(handle.link().add().bridge(name.clone()).execute().await, || format!("creating bridge {name}"))
                    }
                    NetworkChange::TunTap { name, tap, uid } => create_tuntap(name, *tap, *uid),
                    NetworkChange::Master { interface, master } => {
                        let i = index_of(&handle, &mut indexes, interface).await?;
                        let m = index_of(&handle, &mut indexes, master).await?;
                        handle
                            .link()
                            .set(i)
                            .controller(m)
                            .execute()
                            .await
                            .map_err(|e| failed(format!("attaching {interface} to {master}"), e))
                    }
                    NetworkChange::Up { interface } => {
                        let i = index_of(&handle, &mut indexes, interface).await?;
                        handle.link().set(i).up().execute().await.map_err(|e| failed(format!("bringing {interface} up"), e))
                    }
                    NetworkChange::Address { interface, addr, prefix, noprefixroute } => {
                        let index = index_of(&handle, &mut indexes, interface).await?;
                        let mut req = handle.address().add(index, *addr, *prefix);
                        if *noprefixroute {
                            req.message_mut().attributes.push(AddressAttribute::Flags(vec![AddressFlag::Noprefixroute]));
                        }
                        exists_ok(req.execute().await, || format!("adding {addr}/{prefix} to {interface}"))
                    }
                    NetworkChange::Route { destination, prefix, interface, via } => {
                        let index = index_of(&handle, &mut indexes, interface).await?;
                        let what = || format!("adding route {destination}/{prefix} dev {interface}");
                        match (destination, via) {
                            (IpAddr::V4(d), via) => {
                                let mut req = handle.route().add().v4().destination_prefix(*d, *prefix).output_interface(index);
                                match via {
                                    Some(IpAddr::V4(g)) => req = req.gateway(*g),
                                    _ => req = req.scope(RouteScope::Link),
                                }
                                exists_ok(req.execute().await, what)
                            }
                            (IpAddr::V6(d), via) => {
                                let mut req = handle.route().add().v6().destination_prefix(*d, *prefix).output_interface(index);
                                if let Some(IpAddr::V6(g)) = via {
                                    req = req.gateway(*g);
                                }
                                exists_ok(req.execute().await, what)
                            }
                        }
                    }
                    NetworkChange::LocalRoute { network, prefix } => {
                        let lo = index_of(&handle, &mut indexes, "lo").await?;
                        add_local_route_with(&handle, lo, *network, *prefix).await
                    }
                }
            }
            .await;
            r.map_err(|e| (done, e))?;
        }
        Ok(())
    })
}

async fn add_local_route_with(handle: &rtnetlink::Handle, lo: u32, network: Ipv6Addr, prefix: u8) -> Result<(), SystemError> {
    {
        let req = handle.route().add().v6().destination_prefix(network, prefix).kind(RouteType::Local).table_id(255).output_interface(lo);
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

/// Sets `path`'s permission bits.
pub fn set_mode(path: &Path, mode: u32) -> Result<(), SystemError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| failed(format!("chmod {mode:o} {}", path.display()), e))
}

/// Gives `path` to `uid`:`gid`.
pub fn set_owner(path: &Path, uid: u32, gid: u32) -> Result<(), SystemError> {
    nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)))
        .map_err(|e| failed(format!("chown {uid}:{gid} {}", path.display()), e))
}
