//! The planner: configuration + previous state + observed system → the
//! steps to take and the new state. Pure: no system access, so it is tested
//! without root, and a dry run is just printing it.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use crate::addressing::{self, AddressingError};
use crate::config::FormatConfig;
use crate::state::{ComputerState, LinkState, PartitionState};
use crate::system::{Observed, Route};

/// The kind of a tun/tap device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TunTapMode {
    Tap,
    Tun,
}

/// One change to the system.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    CreateGroup { name: String },
    CreateUser { name: String, home: PathBuf, group: String, groups: Vec<String> },
    ModifyUser { name: String, home: PathBuf, group: String, groups: Vec<String> },
    LockPassword { name: String },
    CreateDirectory { path: PathBuf, mode: u32 },
    SetMode { path: PathBuf, mode: u32 },
    SetOwner { path: PathBuf, user: String },
    Sysctl { key: String, value: String },
    /// `interface_name` as a new bridge (`create_bridge`).
    CreateBridge { name: String },
    /// A persistent tun/tap owned by `user` (root when that user does not exist).
    CreateTunTap { name: String, mode: TunTapMode, user: String },
    SetMaster { interface: String, master: String },
    SetUp { interface: String },
    AddAddress {
        interface: String,
        address: IpAddr,
        prefix: u8,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        noprefixroute: bool,
    },
    AddRoute { destination: IpAddr, prefix: u8, interface: String, via: Option<IpAddr> },
    AddLocalRoute { network: Ipv6Addr, prefix: u8 },
    WriteResource { path: PathBuf },
}

impl Step {
    /// A change of the network (applied over netlink or the tun ioctls).
    pub fn is_network(&self) -> bool {
        matches!(
            self,
            Step::CreateBridge { .. }
                | Step::CreateTunTap { .. }
                | Step::SetMaster { .. }
                | Step::SetUp { .. }
                | Step::AddAddress { .. }
                | Step::AddRoute { .. }
                | Step::AddLocalRoute { .. }
        )
    }

    /// The interface a network step acts on.
    pub fn device(&self) -> Option<&str> {
        match self {
            Step::CreateBridge { name } | Step::CreateTunTap { name, .. } => Some(name),
            Step::SetMaster { interface, .. } | Step::SetUp { interface } | Step::AddAddress { interface, .. } | Step::AddRoute { interface, .. } => {
                Some(interface)
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::CreateGroup { name } => write!(f, "groupadd {name}"),
            Step::CreateUser { name, home, group, groups } => {
                write!(f, "useradd -d {} -g {group} -s /bin/sh -r", home.display())?;
                if !groups.is_empty() {
                    write!(f, " -G {}", groups.join(","))?;
                }
                write!(f, " {name}")
            }
            Step::ModifyUser { name, home, group, groups } => {
                write!(f, "usermod -d {} -g {group} -s /bin/sh", home.display())?;
                if !groups.is_empty() {
                    write!(f, " -aG {}", groups.join(","))?;
                }
                write!(f, " {name}")
            }
            Step::LockPassword { name } => write!(f, "passwd -l {name}"),
            Step::CreateDirectory { path, mode } => write!(f, "mkdir -m {mode:o} {}", path.display()),
            Step::SetMode { path, mode } => write!(f, "chmod {mode:o} {}", path.display()),
            Step::SetOwner { path, user } => write!(f, "chown {user}:{user} {}", path.display()),
            Step::Sysctl { key, value } => write!(f, "sysctl {key}={value}"),
            Step::CreateBridge { name } => write!(f, "ip link add {name} type bridge"),
            Step::CreateTunTap { name, mode, user } => {
                let mode = match mode {
                    TunTapMode::Tap => "tap",
                    TunTapMode::Tun => "tun",
                };
                write!(f, "ip tuntap add dev {name} mode {mode} user {user}")
            }
            Step::SetMaster { interface, master } => write!(f, "ip link set {interface} master {master}"),
            Step::SetUp { interface } => write!(f, "ip link set {interface} up"),
            Step::AddAddress { interface, address, prefix, noprefixroute } => {
                write!(f, "ip addr add {address}/{prefix} dev {interface}")?;
                if *noprefixroute {
                    write!(f, " noprefixroute")?;
                }
                Ok(())
            }
            Step::AddRoute { destination, prefix, interface, via } => {
                let six = if destination.is_ipv6() { " -6" } else { "" };
                write!(f, "ip{six} route add {destination}/{prefix} dev {interface}")?;
                if let Some(g) = via {
                    write!(f, " via {g}")?;
                }
                Ok(())
            }
            Step::AddLocalRoute { network, prefix } => write!(f, "ip -6 route add local {network}/{prefix} dev lo"),
            Step::WriteResource { path } => write!(f, "write {}", path.display()),
        }
    }
}

/// What to do, and the state it leads to.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub state: ComputerState,
    /// Things format notices but does not change (a tap with another owner).
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("partition_amount {wanted} is smaller than the {existing} partitions already formatted: partitions are never removed")]
    FewerPartitions { wanted: usize, existing: usize },
    #[error("interface '{0}' (interface_name/ipv6_interface) does not exist")]
    NoInterface(String),
    #[error("interface '{0}' (interface_name) does not exist; set [slapformat] create_bridge = true to let format create it as a bridge")]
    NoBridge(String),
    #[error("interface '{0}' must have at least one global IPv6 address")]
    NoIpv6(String),
    #[error("interface '{0}' would be a new bridge without IPv6 (create_bridge): set ipv6_interface to the interface that holds the node's global IPv6")]
    NewBridgeHasNoIpv6(String),
    #[error("no free IPv4 address left in ipv4_local_network {0}")]
    NoIpv4(String),
    #[error("address {address} for partition {partition} is already used on another interface")]
    Collision { address: IpAddr, partition: String },
    #[error("no free address for {what} of partition {partition} after 10 random tries (the computed one, {address}, is taken)")]
    AddressGeneration { what: &'static str, partition: String, address: String },
    #[error("tap_gateway_interface '{0}' does not exist or has no IPv4 address")]
    TapGateway(String),
    #[error("could not create {wanted} tap interfaces from address {address}/{prefix} (tap_gateway_interface): its subnet is too small")]
    TapGatewayTooSmall { wanted: usize, address: Ipv4Addr, prefix: u8 },
    #[error("'{0}' exists and is not a tun/tap interface: cannot use it as a partition's tap or tun")]
    NotTunTap(String),
    #[error("stored {what} '{value}' of partition {partition} is not valid")]
    BadStored { what: &'static str, value: String, partition: String },
    #[error(transparent)]
    Addressing(#[from] AddressingError),
}

fn is_global_v6(a: &Ipv6Addr) -> bool {
    !(a.is_loopback() || a.is_unspecified() || a.is_multicast() || (a.segments()[0] & 0xffc0) == 0xfe80)
}

/// The interface's base IPv6 `(address, prefix)`: the stored one if still
/// there, else the largest subnet, lowest address (SlapOS 1.23).
fn base_ipv6(obs: &Observed, name: &str, preferred: Option<&str>) -> Result<(Ipv6Addr, u8), PlanError> {
    let iface = obs.interfaces.get(name).ok_or_else(|| PlanError::NoInterface(name.into()))?;
    let mut v6: Vec<(Ipv6Addr, u8)> = iface
        .addresses
        .iter()
        .filter_map(|(a, p, _)| match a {
            IpAddr::V6(a) if is_global_v6(a) => Some((*a, *p)),
            _ => None,
        })
        .collect();
    if v6.is_empty() {
        return Err(PlanError::NoIpv6(name.into()));
    }
    if let Some(pref) = preferred.and_then(|p| p.parse::<Ipv6Addr>().ok()) {
        if let Some(hit) = v6.iter().find(|(a, _)| *a == pref) {
            return Ok(*hit);
        }
    }
    v6.sort_by_key(|(a, p)| (*p, u128::from(*a)));
    Ok(v6[0])
}

/// A deterministic pseudo-random sequence (the caller seeds it), so that the
/// planner stays a pure function.
pub struct Picker(u64);

impl Picker {
    pub fn new(seed: u64) -> Picker {
        Picker(seed | 1)
    }
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// SlapOS's `random.randint(1, 65000)`.
    fn field(&mut self) -> u128 {
        1 + (self.next() % 65000) as u128
    }
}

fn mask128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix as u32)
    }
}

fn v4_prefix(mask: &str) -> Option<u8> {
    let m = u32::from(mask.parse::<Ipv4Addr>().ok()?);
    (m.leading_ones() + m.trailing_zeros() == 32).then_some(m.leading_ones() as u8)
}

fn v6_prefix(mask: &str) -> Option<u8> {
    let m = u128::from(mask.split('/').next()?.parse::<Ipv6Addr>().ok()?);
    (m.leading_ones() + m.trailing_zeros() == 128).then_some(m.leading_ones() as u8)
}

/// A tap's IPv6 fields from its address and prefix: the gateway is the
/// first address of the range, the network `gateway/len` (SlapOS's shape).
fn tap_v6_fields(tap: &mut LinkState, addr: Ipv6Addr, len: u8) {
    let gateway = Ipv6Addr::from((u128::from(addr) & mask128(len)) | 1);
    tap.ipv6_addr = addr.to_string();
    tap.ipv6_netmask = addressing::ipv6_netmask(len).to_string();
    tap.ipv6_gateway = gateway.to_string();
    tap.ipv6_network = format!("{gateway}/{len}");
}

/// The taps' IPv4 from `tap_gateway_interface`: its first IPv4 subnet, every
/// address but the network's and the interface's own, in order (SlapOS).
fn tap_gateway_addresses(obs: &Observed, name: &str, wanted: usize) -> Result<(Vec<Ipv4Addr>, Ipv4Addr, u8), PlanError> {
    let (addr, prefix) = obs
        .interfaces
        .get(name)
        .and_then(|i| {
            i.addresses.iter().find_map(|(a, p, _)| match a {
                IpAddr::V4(a) => Some((*a, *p)),
                _ => None,
            })
        })
        .ok_or_else(|| PlanError::TapGateway(name.into()))?;
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix as u32) };
    let network = u32::from(addr) & mask;
    let size = 1u64 << (32 - prefix as u32);
    let list: Vec<Ipv4Addr> = (0..size.min(wanted as u64 + 2))
        .map(|o| Ipv4Addr::from(network + o as u32))
        .filter(|a| u32::from(*a) != network && *a != addr)
        .take(wanted)
        .collect();
    if list.len() < wanted {
        return Err(PlanError::TapGatewayTooSmall { wanted, address: addr, prefix });
    }
    Ok((list, addr, prefix))
}

/// Computes the plan.
pub fn plan(
    cfg: &FormatConfig,
    previous: Option<&ComputerState>,
    obs: &Observed,
    invoking_user: &str,
    picker: &mut Picker,
) -> Result<Plan, PlanError> {
    let existing = previous.map(|p| p.partitions.len()).unwrap_or(0);
    if cfg.partition_amount < existing {
        return Err(PlanError::FewerPartitions { wanted: cfg.partition_amount, existing });
    }
    let network = cfg.alter_network && !cfg.local;
    let ipv6_iface = cfg.ipv6_interface.clone().or_else(|| cfg.interface_name.clone());
    // interface_name must exist, or be created as a bridge (create_bridge)
    let mut new_bridge = None;
    if let (Some(name), true) = (&cfg.interface_name, network) {
        if !obs.interfaces.contains_key(name) {
            if !cfg.create_bridge {
                return Err(PlanError::NoBridge(name.clone()));
            }
            if ipv6_iface.as_deref() == Some(name) {
                return Err(PlanError::NewBridgeHasNoIpv6(name.clone()));
            }
            new_bridge = Some(name.clone());
        }
    }
    let bridge = cfg
        .interface_name
        .clone()
        .filter(|n| new_bridge.as_deref() == Some(n.as_str()) || obs.interfaces.get(n).is_some_and(|i| i.bridge));
    // the computer address: the interface's base IPv6
    let base = match (&ipv6_iface, network || obs.interfaces.contains_key(ipv6_iface.as_deref().unwrap_or(""))) {
        // local mode uses IPv6 only when the interface has a global address
        (Some(name), true) if cfg.local => base_ipv6(obs, name, previous.and_then(|p| p.address.as_deref())).ok(),
        (Some(name), true) => Some(base_ipv6(obs, name, previous.and_then(|p| p.address.as_deref()))?),
        _ => None,
    };
    if base.is_some() && network && cfg.partition_has_ipv6_range {
        addressing::check_shift(base.map(|b| b.1).unwrap_or(64), cfg.ipv6_prefixshift, cfg.partition_amount)?;
    }
    // without an interface to read, the stored (or defined) address stays
    let (address, netmask) = match base {
        Some((a, p)) => (Some(a.to_string()), Some(addressing::ipv6_netmask(p).to_string())),
        None if cfg.local => (Some("127.0.0.1".to_string()), Some("255.0.0.0".to_string())),
        None => (previous.and_then(|p| p.address.clone()), previous.and_then(|p| p.netmask.clone())),
    };
    let mut state = ComputerState {
        reference: cfg.computer_id.clone(),
        address,
        netmask,
        instance_root: cfg.instance_root.clone(),
        software_root: cfg.software_root.clone(),
        software_user: if cfg.alter_user { cfg.software_user.clone() } else { invoking_user.to_string() },
        interface_name: cfg.interface_name.clone(),
        ipv6_interface: cfg.ipv6_interface.clone(),
        ipv4_local_network: cfg.ipv4_local_network.map(|(a, p)| format!("{a}/{p}")),
        ipv6_prefixshift: cfg.ipv6_prefixshift,
        partition_has_ipv6_range: cfg.partition_has_ipv6_range,
        tap_gateway_interface: cfg.tap_gateway_interface.clone(),
        tap_ipv6: cfg.tap_ipv6,
        partitions: previous.map(|p| p.partitions.clone()).unwrap_or_default(),
    };
    let mut taken: BTreeSet<IpAddr> = obs.all_addresses.clone();
    for p in &state.partitions {
        for (a, _) in &p.addresses {
            if let Ok(ip) = a.parse() {
                taken.insert(ip);
            }
        }
    }
    let on = |iface: &str, ip: IpAddr| obs.interfaces.get(iface).is_some_and(|i| i.addresses.iter().any(|(a, _, _)| *a == ip));
    for i in existing..cfg.partition_amount {
        let reference = format!("{}{i}", cfg.partition_base_name);
        let user = if cfg.alter_user { format!("{}{i}", cfg.user_base_name) } else { invoking_user.to_string() };
        let mut addresses = Vec::new();
        // IPv4: random in ipv4_local_network (stable: stored), loopback in local mode
        if cfg.local {
            addresses.push((format!("127.1.{}.{}", i / 254, i % 254 + 1), "255.255.255.255".to_string()));
        } else if let Some((net, prefix)) = cfg.ipv4_local_network {
            let size = 1u64 << (32 - prefix as u32);
            let mut chosen = None;
            for _ in 0..1000 {
                let host = if size > 2 { 1 + picker.next() % (size - 2) } else { 0 };
                let ip = IpAddr::V4(Ipv4Addr::from(u32::from(net) + host as u32));
                if !taken.contains(&ip) {
                    chosen = Some(ip);
                    break;
                }
            }
            let ip = chosen.ok_or_else(|| PlanError::NoIpv4(format!("{net}/{prefix}")))?;
            taken.insert(ip);
            addresses.push((ip.to_string(), "255.255.255.255".to_string()));
        }
        let mut ipv6_range = None;
        if let (Some((b, p)), false) = (base, cfg.local) {
            let mut ip = addressing::partition_ipv6(b, p, i);
            let free = |ip: Ipv6Addr| !taken.contains(&IpAddr::V6(ip)) || on(ipv6_iface.as_deref().unwrap_or(""), IpAddr::V6(ip));
            if !free(ip) {
                // SlapOS: random last group (10 tries) with the default shift, else abort
                if cfg.ipv6_prefixshift != 16 {
                    return Err(PlanError::Collision { address: IpAddr::V6(ip), partition: reference });
                }
                let computed = ip;
                ip = (0..10)
                    .map(|_| Ipv6Addr::from((u128::from(b) & !0xffff) | picker.field()))
                    .find(|a| free(*a))
                    .ok_or_else(|| PlanError::AddressGeneration { what: "the IPv6 address", partition: reference.clone(), address: computed.to_string() })?;
            }
            taken.insert(IpAddr::V6(ip));
            addresses.push((ip.to_string(), addressing::ipv6_netmask(p).to_string()));
            if cfg.partition_has_ipv6_range {
                let (net, len) = addressing::partition_range(b, p, cfg.ipv6_prefixshift, i)?;
                ipv6_range = Some((net.to_string(), len));
            }
        }
        state.partitions.push(PartitionState {
            path: cfg.instance_root.join(&reference),
            reference,
            user,
            tap: LinkState::named(format!("{}{i}", cfg.tap_base_name)),
            tun: cfg.create_tun.then(|| LinkState::named(format!("slaptun{i}"))),
            addresses,
            ipv6_range,
            capability_list: None,
        });
    }

    // taps and tuns: their addresses (SlapOS fills them while formatting)
    let mut warnings = Vec::new();
    if network {
        let mut ranges: BTreeSet<(u128, u8)> = BTreeSet::new();
        for p in &state.partitions {
            if let Some((a, l)) = &p.ipv6_range {
                if let Ok(a) = a.parse::<Ipv6Addr>() {
                    ranges.insert((u128::from(a) & mask128(*l), *l));
                }
            }
        }
        let gateway = match (cfg.create_tap, cfg.tap_gateway_interface.as_str()) {
            (true, name) if !name.is_empty() => Some(tap_gateway_addresses(obs, name, state.partitions.len())?),
            _ => None,
        };
        for (i, p) in state.partitions.iter_mut().enumerate() {
            if cfg.create_tap {
                match &gateway {
                    Some((list, gw, prefix)) => {
                        if p.tap.ipv4_addr.is_empty() {
                            let mask = if *prefix == 0 { 0 } else { u32::MAX << (32 - *prefix as u32) };
                            p.tap.ipv4_addr = list[i].to_string();
                            p.tap.ipv4_netmask = Ipv4Addr::from(mask).to_string();
                            p.tap.ipv4_gateway = gw.to_string();
                            p.tap.ipv4_network = Ipv4Addr::from(u32::from(*gw) & mask).to_string();
                        }
                    }
                    None => {
                        p.tap.ipv4_addr.clear();
                        p.tap.ipv4_netmask.clear();
                        p.tap.ipv4_gateway.clear();
                        p.tap.ipv4_network.clear();
                    }
                }
                match (cfg.tap_ipv6, base) {
                    (true, Some((b, pl))) => {
                        let (addr, len) = if p.tap.ipv6_addr.is_empty() {
                            let (mut addr, len, _) = addressing::tap_ipv6(b, pl, cfg.ipv6_prefixshift, i)?;
                            let tap_name = p.tap.name.clone();
                            let free = |a: Ipv6Addr, len: u8| {
                                (!taken.contains(&IpAddr::V6(a)) || on(&tap_name, IpAddr::V6(a))) && !ranges.contains(&(u128::from(a) & mask128(len), len))
                            };
                            if !free(addr, len) {
                                if cfg.ipv6_prefixshift != 16 {
                                    return Err(PlanError::Collision { address: IpAddr::V6(addr), partition: p.reference.clone() });
                                }
                                let computed = addr;
                                let net = u128::from(b) & mask128(pl);
                                let len16 = pl.saturating_add(16).min(128);
                                let ones = if len16 >= 128 { 0 } else { u128::MAX >> len16 };
                                addr = (0..10)
                                    .map(|_| Ipv6Addr::from(net | (picker.field() << (128 - len16 as u32)) | ones))
                                    .find(|a| free(*a, len16))
                                    .ok_or_else(|| PlanError::AddressGeneration {
                                        what: "the tap IPv6 range",
                                        partition: p.reference.clone(),
                                        address: computed.to_string(),
                                    })?;
                            }
                            (addr, len)
                        } else {
                            let addr = p.tap.ipv6_addr.parse::<Ipv6Addr>().map_err(|_| PlanError::BadStored {
                                what: "tap IPv6",
                                value: p.tap.ipv6_addr.clone(),
                                partition: p.reference.clone(),
                            })?;
                            let len = v6_prefix(&p.tap.ipv6_netmask).unwrap_or(pl.saturating_add(cfg.ipv6_prefixshift).min(128));
                            (addr, len)
                        };
                        taken.insert(IpAddr::V6(addr));
                        ranges.insert((u128::from(addr) & mask128(len), len));
                        tap_v6_fields(&mut p.tap, addr, len);
                    }
                    (false, _) => {
                        p.tap.ipv6_addr.clear();
                        p.tap.ipv6_netmask.clear();
                        p.tap.ipv6_gateway.clear();
                        p.tap.ipv6_network.clear();
                    }
                    (true, None) => {}
                }
            }
            if let Some(tun) = &mut p.tun {
                if tun.ipv4_addr.is_empty() {
                    let (addr, mask) = addressing::tun_ipv4(cfg.partition_amount, i)?;
                    tun.ipv4_addr = addr.to_string();
                    tun.ipv4_netmask = mask.to_string();
                    tun.ipv4_network = format!("{addr}/{mask}");
                }
                if let (true, true, Some((b, pl))) = (tun.ipv6_addr.is_empty(), cfg.tun_ipv6, base) {
                    let (addr, len) = addressing::tun_ipv6(b, pl, cfg.ipv6_prefixshift, i)?;
                    tun.ipv6_addr = addr.to_string();
                    tun.ipv6_netmask = addressing::ipv6_netmask(len).to_string();
                    tun.ipv6_network = format!("{addr}/{len}");
                }
            }
        }
    }

    let mut steps = Vec::new();
    // users and groups
    if cfg.alter_user {
        let mut wanted = vec![(cfg.software_user.clone(), cfg.software_root.clone(), vec![])];
        for p in &state.partitions {
            wanted.push((p.user.clone(), p.path.clone(), vec![cfg.software_user.clone()]));
        }
        for (name, home, groups) in wanted {
            if !obs.groups.contains(&name) {
                steps.push(Step::CreateGroup { name: name.clone() });
            }
            match obs.users.get(&name) {
                None => {
                    steps.push(Step::CreateUser { name: name.clone(), home, group: name.clone(), groups });
                    steps.push(Step::LockPassword { name });
                }
                Some(u) => {
                    let missing_group = groups.iter().any(|g| !u.groups.contains(g));
                    if u.home != home || u.shell != "/bin/sh" || u.group != name || missing_group {
                        steps.push(Step::ModifyUser { name: name.clone(), home, group: name, groups });
                    }
                }
            }
        }
    }
    // directories: roots 0755, partitions 0750 owned by their user
    let mut dir = |path: &PathBuf, mode: u32, owner: Option<&str>| match obs.paths.get(path) {
        None => {
            steps.push(Step::CreateDirectory { path: path.clone(), mode });
            if let Some(o) = owner {
                steps.push(Step::SetOwner { path: path.clone(), user: o.to_string() });
            }
        }
        Some(info) => {
            if info.mode != mode {
                steps.push(Step::SetMode { path: path.clone(), mode });
            }
            if let Some(o) = owner {
                let uid = obs.users.get(o).map(|u| u.uid);
                if uid != Some(info.uid) {
                    steps.push(Step::SetOwner { path: path.clone(), user: o.to_string() });
                }
            }
        }
    };
    dir(&cfg.instance_root, 0o755, None);
    dir(&cfg.software_root, 0o755, cfg.alter_user.then_some(cfg.software_user.as_str()));
    for p in &state.partitions {
        dir(&p.path, 0o750, cfg.alter_user.then_some(p.user.as_str()));
    }
    // network
    if network {
        if let Some(name) = &new_bridge {
            steps.push(Step::CreateBridge { name: name.clone() });
            steps.push(Step::SetUp { interface: name.clone() });
        }
        let v4_iface = cfg.interface_name.clone().unwrap_or_default();
        let v6_iface = ipv6_iface.clone().unwrap_or_default();
        let mut wants_range = false;
        for p in &state.partitions {
            for (a, _) in &p.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else { continue };
                let (iface, prefix) = match ip {
                    IpAddr::V4(_) => (v4_iface.as_str(), 32),
                    IpAddr::V6(_) => (v6_iface.as_str(), base.map(|b| b.1).unwrap_or(64)),
                };
                if !iface.is_empty() && !on(iface, ip) {
                    steps.push(Step::AddAddress { interface: iface.to_string(), address: ip, prefix, noprefixroute: false });
                }
            }
            if let Some((net, len)) = &p.ipv6_range {
                wants_range = true;
                if let Ok(n) = net.parse::<Ipv6Addr>() {
                    if !obs.local_routes.contains(&(n, *len)) {
                        steps.push(Step::AddLocalRoute { network: n, prefix: *len });
                    }
                }
            }
        }
        for p in &state.partitions {
            // the owner: the partition user, root when it does not exist (SlapOS)
            let owner_uid = obs.users.get(&p.user).map(|u| u.uid);
            let device = |name: &str, mode: TunTapMode, steps: &mut Vec<Step>, warnings: &mut Vec<String>| -> Result<(), PlanError> {
                match obs.interfaces.get(name) {
                    None => {
                        steps.push(Step::CreateTunTap { name: name.to_string(), mode, user: p.user.clone() });
                        if let (TunTapMode::Tap, Some(b)) = (mode, &bridge) {
                            steps.push(Step::SetMaster { interface: name.to_string(), master: b.clone() });
                        }
                        steps.push(Step::SetUp { interface: name.to_string() });
                    }
                    Some(i) if !i.tuntap => return Err(PlanError::NotTunTap(name.to_string())),
                    Some(i) => {
                        // an existing tun/tap is never recreated (SlapOS)
                        let expected = owner_uid.unwrap_or(0);
                        if i.owner != Some(expected) {
                            warnings.push(format!(
                                "Wrong owner of TUN/TAP interface {name}! Not touching it. Expected {expected} ({}) got {}",
                                p.user,
                                i.owner.map(|o| o.to_string()).unwrap_or_else(|| "none".into())
                            ));
                        }
                        if let (TunTapMode::Tap, Some(b)) = (mode, &bridge) {
                            if i.master.as_deref() != Some(b.as_str()) {
                                steps.push(Step::SetMaster { interface: name.to_string(), master: b.clone() });
                            }
                        }
                        if !i.up {
                            steps.push(Step::SetUp { interface: name.to_string() });
                        }
                    }
                }
                Ok(())
            };
            if cfg.create_tap {
                let tap = &p.tap;
                device(&tap.name, TunTapMode::Tap, &mut steps, &mut warnings)?;
                if let (Ok(addr), Some(len)) = (tap.ipv6_addr.parse::<Ipv6Addr>(), v6_prefix(&tap.ipv6_netmask)) {
                    if !on(&tap.name, IpAddr::V6(addr)) {
                        steps.push(Step::AddAddress { interface: tap.name.clone(), address: IpAddr::V6(addr), prefix: len, noprefixroute: true });
                    }
                }
                let mut route = |destination: IpAddr, prefix: u8, via: Option<IpAddr>| {
                    let r = Route { destination, prefix, interface: tap.name.clone(), via };
                    if !obs.routes.contains(&r) {
                        steps.push(Step::AddRoute { destination, prefix, interface: r.interface, via });
                    }
                };
                if let Ok(a) = tap.ipv4_addr.parse::<Ipv4Addr>() {
                    route(IpAddr::V4(a), 32, None);
                }
                if let (Ok(g), Some(len)) = (tap.ipv6_gateway.parse::<Ipv6Addr>(), v6_prefix(&tap.ipv6_netmask)) {
                    route(IpAddr::V6(g), 128, None);
                    route(IpAddr::V6(Ipv6Addr::from(u128::from(g) & mask128(len))), len, Some(IpAddr::V6(g)));
                }
            }
            if let Some(tun) = &p.tun {
                device(&tun.name, TunTapMode::Tun, &mut steps, &mut warnings)?;
                if let (Ok(a), Some(len)) = (tun.ipv4_addr.parse::<Ipv4Addr>(), v4_prefix(&tun.ipv4_netmask)) {
                    if !on(&tun.name, IpAddr::V4(a)) {
                        steps.push(Step::AddAddress { interface: tun.name.clone(), address: IpAddr::V4(a), prefix: len, noprefixroute: false });
                    }
                }
                if let (Ok(a), Some(len)) = (tun.ipv6_addr.parse::<Ipv6Addr>(), v6_prefix(&tun.ipv6_netmask)) {
                    if !on(&tun.name, IpAddr::V6(a)) {
                        steps.push(Step::AddAddress { interface: tun.name.clone(), address: IpAddr::V6(a), prefix: len, noprefixroute: false });
                    }
                }
            }
        }
        if wants_range && !obs.nonlocal_bind {
            steps.push(Step::Sysctl { key: "net.ipv6.ip_nonlocal_bind".into(), value: "1".into() });
        }
    }
    // per-partition resource files
    for p in &state.partitions {
        let path = p.path.join(".slapos-resource");
        let content = crate::state::to_json(&p.to_value(&state.software_user), 4);
        if obs.resources.get(&path) != Some(&content) {
            steps.push(Step::WriteResource { path });
        }
    }
    Ok(Plan { steps, state, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;
    use crate::system::{Interface, PathInfo, Route, UserInfo};

    fn config(extra: &str) -> FormatConfig {
        let text = format!(
            "[slapos]\ncomputer_id = COMP-1\nmaster_url = http://m\ninstance_root = /srv/slapgrid\nsoftware_root = /opt/slapgrid\n[slapformat]\ncomputer_xml = /var/slapos.xml\npartition_amount = 2\ncreate_tap = false\ninterface_name = br0\nipv4_local_network = 10.0.0.0/16\nuser_base_name = tuser\nsoftware_user = tsoft\n{extra}"
        );
        FormatConfig::from_config(&slapos_config::Config::parse(&text).unwrap(), &Overrides::default()).unwrap()
    }

    fn fresh_node() -> Observed {
        let mut o = Observed::default();
        o.interfaces.insert(
            "br0".into(),
            Interface {
                name: "br0".into(),
                index: 3,
                addresses: vec![("fe80::1".parse().unwrap(), 64, false), ("fd00:e2e::1".parse().unwrap(), 64, false)],
                up: true,
                bridge: true,
                ..Default::default()
            },
        );
        o.all_addresses.insert("fd00:e2e::1".parse().unwrap());
        o
    }

    /// The system as it is after applying `plan` (what apply would do).
    fn after(mut o: Observed, plan: &Plan) -> Observed {
        let mut uid = 990;
        for s in &plan.steps {
            match s {
                Step::CreateGroup { name } => {
                    o.groups.insert(name.clone());
                }
                Step::CreateUser { name, home, group, groups } => {
                    uid += 1;
                    o.users.insert(name.clone(), UserInfo { uid, gid: uid, home: home.clone(), shell: "/bin/sh".into(), group: group.clone(), groups: groups.clone() });
                }
                Step::CreateDirectory { path, mode } | Step::SetMode { path, mode } => {
                    o.paths.entry(path.clone()).or_insert(PathInfo { mode: *mode, uid: 0, gid: 0 }).mode = *mode;
                }
                Step::SetOwner { path, user } => {
                    let u = o.users[user].uid;
                    o.paths.get_mut(path).unwrap().uid = u;
                }
                Step::AddAddress { interface, address, prefix, .. } => {
                    o.interfaces.get_mut(interface).unwrap().addresses.push((*address, *prefix, false));
                    o.all_addresses.insert(*address);
                }
                Step::CreateBridge { name } => {
                    o.interfaces.insert(name.clone(), Interface { name: name.clone(), bridge: true, ..Default::default() });
                }
                Step::CreateTunTap { name, user, .. } => {
                    let owner = Some(o.users.get(user).map(|u| u.uid).unwrap_or(0));
                    o.interfaces.insert(name.clone(), Interface { name: name.clone(), tuntap: true, owner, ..Default::default() });
                }
                Step::SetMaster { interface, master } => o.interfaces.get_mut(interface).unwrap().master = Some(master.clone()),
                Step::SetUp { interface } => o.interfaces.get_mut(interface).unwrap().up = true,
                Step::AddRoute { destination, prefix, interface, via } => {
                    o.routes.insert(Route { destination: *destination, prefix: *prefix, interface: interface.clone(), via: *via });
                }
                Step::AddLocalRoute { network, prefix } => {
                    o.local_routes.insert((*network, *prefix));
                }
                Step::Sysctl { .. } => o.nonlocal_bind = true,
                Step::WriteResource { path } => {
                    let i = plan.state.partitions.iter().position(|p| p.path.join(".slapos-resource") == *path).unwrap();
                    o.resources.insert(path.clone(), crate::state::to_json(&plan.state.partitions[i].to_value(&plan.state.software_user), 4));
                }
                _ => {}
            }
        }
        o
    }

    #[test]
    fn a_fresh_node_gets_users_dirs_addresses_ranges_then_a_rerun_is_empty() {
        let cfg = config("");
        let obs = fresh_node();
        let p = plan(&cfg, None, &obs, "root", &mut Picker::new(42)).unwrap();
        let text: Vec<String> = p.steps.iter().map(|s| s.to_string()).collect();
        for expected in [
            "groupadd tsoft",
            "useradd -d /opt/slapgrid -g tsoft -s /bin/sh -r tsoft",
            "useradd -d /srv/slapgrid/slappart0 -g tuser0 -s /bin/sh -r -G tsoft tuser0",
            "passwd -l tuser1",
            "mkdir -m 750 /srv/slapgrid/slappart1",
            "chown tuser1:tuser1 /srv/slapgrid/slappart1",
            "ip addr add fd00:e2e::2/64 dev br0",
            "ip addr add fd00:e2e::3/64 dev br0",
            "ip -6 route add local fd00:e2e:0:0:4001::/80 dev lo",
            "sysctl net.ipv6.ip_nonlocal_bind=1",
        ] {
            assert!(text.iter().any(|t| t == expected), "missing '{expected}' in {text:#?}");
        }
        assert!(text.iter().filter(|t| t.starts_with("ip addr add 10.0.")).count() == 2, "{text:#?}");
        assert_eq!(p.state.address.as_deref(), Some("fd00:e2e::1"));
        // re-run on the formatted node: nothing to do, same state
        let obs2 = after(obs, &p);
        let p2 = plan(&cfg, Some(&p.state), &obs2, "root", &mut Picker::new(7)).unwrap();
        assert_eq!(p2.steps, vec![], "a re-run changes nothing");
        assert_eq!(p2.state, p.state, "same addresses for the same partitions");
        // growing keeps the old partitions untouched
        let cfg3 = config("partition_amount = 3");
        let p3 = plan(&cfg3, Some(&p.state), &obs2, "root", &mut Picker::new(9)).unwrap();
        assert_eq!(&p3.state.partitions[..2], &p.state.partitions[..]);
        assert_eq!(p3.state.partitions[2].addresses[1].0, "fd00:e2e::4");
        assert!(p3.steps.iter().all(|s| !s.to_string().contains("slappart0")), "{:#?}", p3.steps);
        // shrinking is refused
        let cfg1 = config("partition_amount = 1");
        assert!(matches!(plan(&cfg1, Some(&p.state), &obs2, "root", &mut Picker::new(1)), Err(PlanError::FewerPartitions { .. })));
    }

    #[test]
    fn bad_networks_are_named_before_anything_changes() {
        let cfg = config("");
        let mut obs = fresh_node();
        obs.interfaces.clear();
        assert_eq!(plan(&cfg, None, &obs, "root", &mut Picker::new(1)).unwrap_err().to_string(), "interface 'br0' (interface_name) does not exist; set [slapformat] create_bridge = true to let format create it as a bridge");
        let mut obs = fresh_node();
        obs.interfaces.get_mut("br0").unwrap().addresses.retain(|(a, _, _)| a.to_string().starts_with("fe80"));
        assert!(plan(&cfg, None, &obs, "root", &mut Picker::new(1)).unwrap_err().to_string().contains("global IPv6"));
        let cfg = config("ipv6_prefixshift = 1");
        assert!(plan(&cfg, None, &fresh_node(), "root", &mut Picker::new(1)).unwrap_err().to_string().contains("ipv6_prefixshift 1"));
    }

    #[test]
    fn local_mode_changes_no_user_and_no_network() {
        let text = "[slapos]\ncomputer_id = C\nmaster_url = http://m\ninstance_root = /tmp/i\nsoftware_root = /tmp/s\ncomputer_xml = /tmp/x.xml\npartition_amount = 2\n";
        let cfg = FormatConfig::from_config(&slapos_config::Config::parse(text).unwrap(), &Overrides { local: true, ..Default::default() }).unwrap();
        let p = plan(&cfg, None, &Observed::default(), "alice", &mut Picker::new(1)).unwrap();
        for s in &p.steps {
            assert!(matches!(s, Step::CreateDirectory { .. } | Step::WriteResource { .. }), "{s}");
        }
        assert_eq!(p.state.partitions[0].user, "alice");
        assert_eq!(p.state.partitions[1].addresses, vec![("127.1.0.2".to_string(), "255.255.255.255".to_string())]);
    }

    fn texts(p: &Plan) -> Vec<String> {
        p.steps.iter().map(|s| s.to_string()).collect()
    }

    fn assert_has(text: &[String], expected: &[&str]) {
        for e in expected {
            assert!(text.iter().any(|t| t == e), "missing '{e}' in {text:#?}");
        }
    }

    #[test]
    fn taps_are_created_owned_attached_addressed_and_routed_then_kept() {
        let cfg = config("create_tap = true\ntap_base_name = ttap\npartition_amount = 3");
        let obs = fresh_node();
        let p = plan(&cfg, None, &obs, "root", &mut Picker::new(42)).unwrap();
        let text = texts(&p);
        assert_has(
            &text,
            &[
                "ip tuntap add dev ttap0 mode tap user tuser0",
                "ip link set ttap0 master br0",
                "ip link set ttap0 up",
                "ip addr add fd00:e2e::8001:ffff:ffff:ffff/80 dev ttap0 noprefixroute",
                "ip -6 route add fd00:e2e::8001:0:0:1/128 dev ttap0",
                "ip -6 route add fd00:e2e:0:0:8001::/80 dev ttap0 via fd00:e2e::8001:0:0:1",
                "ip addr add fd00:e2e::8003:ffff:ffff:ffff/80 dev ttap2 noprefixroute",
            ],
        );
        // the tap's creation comes before what is done on it
        let pos = |t: &str| text.iter().position(|x| x == t).unwrap();
        assert!(pos("ip tuntap add dev ttap0 mode tap user tuser0") < pos("ip link set ttap0 master br0"));
        assert!(pos("ip link set ttap0 up") < pos("ip addr add fd00:e2e::8001:ffff:ffff:ffff/80 dev ttap0 noprefixroute"));
        // recorded by the Python format (node.md §2.12)
        let tap = &p.state.partitions[0].tap;
        assert_eq!(
            (tap.name.as_str(), tap.ipv6_addr.as_str(), tap.ipv6_netmask.as_str(), tap.ipv6_gateway.as_str(), tap.ipv6_network.as_str()),
            ("ttap0", "fd00:e2e::8001:ffff:ffff:ffff", "ffff:ffff:ffff:ffff:ffff::", "fd00:e2e::8001:0:0:1", "fd00:e2e::8001:0:0:1/80")
        );
        assert_eq!((tap.ipv4_addr.as_str(), tap.ipv4_gateway.as_str()), ("", ""));
        assert_eq!(p.state.partitions[0].tun, None);
        // re-run: the taps are kept, nothing to do
        let obs2 = after(obs, &p);
        let p2 = plan(&cfg, Some(&p.state), &obs2, "root", &mut Picker::new(7)).unwrap();
        assert_eq!(p2.steps, vec![]);
        assert_eq!(p2.state, p.state);
        assert_eq!(p2.warnings, Vec::<String>::new());
        // a lost tap is drift: created again with its stored address and routes
        let mut lost = obs2.clone();
        lost.interfaces.remove("ttap1");
        lost.routes.retain(|r| r.interface != "ttap1");
        let p3 = plan(&cfg, Some(&p.state), &lost, "root", &mut Picker::new(7)).unwrap();
        assert_has(&texts(&p3), &["ip tuntap add dev ttap1 mode tap user tuser1", "ip addr add fd00:e2e::8002:ffff:ffff:ffff/80 dev ttap1 noprefixroute"]);
        assert!(texts(&p3).iter().all(|t| !t.contains("ttap0") && !t.contains("ttap2")), "{:#?}", p3.steps);
        assert_eq!(p3.state, p.state);
        // another owner is reported, never changed; a detached tap is attached again
        let mut odd = obs2.clone();
        odd.interfaces.get_mut("ttap2").unwrap().owner = Some(4242);
        odd.interfaces.get_mut("ttap2").unwrap().master = None;
        let p4 = plan(&cfg, Some(&p.state), &odd, "root", &mut Picker::new(7)).unwrap();
        assert_eq!(texts(&p4), vec!["ip link set ttap2 master br0"]);
        assert!(p4.warnings[0].contains("Wrong owner of TUN/TAP interface ttap2") && p4.warnings[0].contains("got 4242"), "{:?}", p4.warnings);
        // an interface of that name that is not a tap is refused
        let mut clash = obs2;
        clash.interfaces.get_mut("ttap0").unwrap().tuntap = false;
        assert!(matches!(plan(&cfg, Some(&p.state), &clash, "root", &mut Picker::new(7)), Err(PlanError::NotTunTap(n)) if n == "ttap0"));
    }

    #[test]
    fn taps_get_ipv4_from_the_gateway_interface_and_no_bridge_means_no_master() {
        let cfg = config("create_tap = true\ntap_gateway_interface = eth1\ntap_ipv6 = false\ninterface_name = lo0\nipv6_interface = br0");
        let mut obs = fresh_node();
        obs.interfaces.insert("lo0".into(), Interface { name: "lo0".into(), up: true, ..Default::default() });
        obs.interfaces.insert(
            "eth1".into(),
            Interface { name: "eth1".into(), addresses: vec![("10.8.0.1".parse().unwrap(), 24, false)], up: true, ..Default::default() },
        );
        let p = plan(&cfg, None, &obs, "root", &mut Picker::new(3)).unwrap();
        let tap = &p.state.partitions[0].tap;
        assert_eq!(
            (tap.ipv4_addr.as_str(), tap.ipv4_netmask.as_str(), tap.ipv4_gateway.as_str(), tap.ipv4_network.as_str()),
            ("10.8.0.2", "255.255.255.0", "10.8.0.1", "10.8.0.0")
        );
        assert_eq!(p.state.partitions[1].tap.ipv4_addr, "10.8.0.3");
        assert_eq!(tap.ipv6_addr, "", "tap_ipv6 = false");
        let text = texts(&p);
        assert_has(&text, &["ip route add 10.8.0.2/32 dev slaptap0", "ip tuntap add dev slaptap1 mode tap user tuser1"]);
        assert!(text.iter().all(|t| !t.contains("master")), "lo0 is not a bridge: {text:#?}");
        assert!(p.state.to_value().as_dict().unwrap()["tap_gateway_interface"].as_str() == Some("eth1"));
        // a gateway subnet too small for the partitions is refused
        obs.interfaces.get_mut("eth1").unwrap().addresses = vec![("10.8.0.1".parse().unwrap(), 31, false)];
        assert!(matches!(plan(&cfg, None, &obs, "root", &mut Picker::new(3)), Err(PlanError::TapGatewayTooSmall { .. })));
        obs.interfaces.remove("eth1");
        assert!(plan(&cfg, None, &obs, "root", &mut Picker::new(3)).unwrap_err().to_string().contains("'eth1'"));
    }

    #[test]
    fn tuns_get_a_172_16_subnet_and_an_ipv6_range() {
        let cfg = config("create_tun = true\npartition_amount = 3");
        let obs = fresh_node();
        let p = plan(&cfg, None, &obs, "root", &mut Picker::new(5)).unwrap();
        let tun = p.state.partitions[0].tun.clone().unwrap();
        // recorded by the Python format (node.md §2.12)
        assert_eq!(
            (tun.name.as_str(), tun.ipv4_addr.as_str(), tun.ipv4_netmask.as_str(), tun.ipv4_network.as_str(), tun.ipv4_gateway.as_str()),
            ("slaptun0", "172.16.0.1", "255.252.0.0", "172.16.0.1/255.252.0.0", "")
        );
        assert_eq!(
            (tun.ipv6_addr.as_str(), tun.ipv6_netmask.as_str(), tun.ipv6_network.as_str(), tun.ipv6_gateway.as_str()),
            ("fd00:e2e::c001:0:0:1", "ffff:ffff:ffff:ffff:ffff::", "fd00:e2e::c001:0:0:1/80", "")
        );
        assert_eq!(p.state.partitions[2].tun.as_ref().unwrap().ipv4_addr, "172.24.0.1");
        assert_has(
            &texts(&p),
            &[
                "ip tuntap add dev slaptun0 mode tun user tuser0",
                "ip link set slaptun0 up",
                "ip addr add 172.16.0.1/14 dev slaptun0",
                "ip addr add fd00:e2e::c001:0:0:1/80 dev slaptun0",
            ],
        );
        assert!(texts(&p).iter().all(|t| !t.contains("slaptun0 master")), "tuns are not bridged");
        let obs2 = after(obs, &p);
        let p2 = plan(&cfg, Some(&p.state), &obs2, "root", &mut Picker::new(6)).unwrap();
        assert_eq!(p2.steps, vec![]);
        assert_eq!(p2.state, p.state);
    }

    #[test]
    fn a_missing_interface_is_created_as_a_bridge_only_when_asked() {
        let cfg = config("interface_name = br1\nipv6_interface = br0\ncreate_tap = true");
        let e = plan(&cfg, None, &fresh_node(), "root", &mut Picker::new(1)).unwrap_err().to_string();
        assert!(e.contains("'br1'") && e.contains("create_bridge = true"), "{e}");
        let cfg = config("interface_name = br1\nipv6_interface = br0\ncreate_tap = true\ncreate_bridge = true");
        let obs = fresh_node();
        let p = plan(&cfg, None, &obs, "root", &mut Picker::new(1)).unwrap();
        let text = texts(&p);
        assert_eq!(&text[text.iter().position(|t| t.starts_with("ip link add")).unwrap()..][..2], ["ip link add br1 type bridge", "ip link set br1 up"]);
        assert_has(&text, &["ip link set slaptap0 master br1", "ip addr add fd00:e2e::2/64 dev br0"]);
        assert_eq!(text.iter().filter(|t| t.starts_with("ip addr add 10.0.") && t.ends_with("dev br1")).count(), 2, "{text:#?}");
        let p2 = plan(&cfg, Some(&p.state), &after(obs, &p), "root", &mut Picker::new(2)).unwrap();
        assert_eq!(p2.steps, vec![]);
        // a new bridge has no IPv6 to derive the partitions' from
        let cfg = config("interface_name = br1\ncreate_bridge = true");
        let e = plan(&cfg, None, &fresh_node(), "root", &mut Picker::new(1)).unwrap_err().to_string();
        assert!(e.contains("ipv6_interface"), "{e}");
    }

    #[test]
    fn taken_addresses_fall_back_to_random_ones_with_the_default_shift() {
        let mut obs = fresh_node();
        obs.interfaces.insert(
            "eth9".into(),
            Interface {
                name: "eth9".into(),
                addresses: vec![("fd00:e2e::2".parse().unwrap(), 64, false), ("fd00:e2e::8001:ffff:ffff:ffff".parse().unwrap(), 80, false)],
                ..Default::default()
            },
        );
        obs.all_addresses.insert("fd00:e2e::2".parse().unwrap());
        obs.all_addresses.insert("fd00:e2e::8001:ffff:ffff:ffff".parse().unwrap());
        let cfg = config("create_tap = true");
        let p = plan(&cfg, None, &obs, "root", &mut Picker::new(11)).unwrap();
        let v6 = &p.state.partitions[0].addresses[1].0;
        assert!(v6.starts_with("fd00:e2e::") && v6 != "fd00:e2e::2", "{v6}");
        assert_eq!(p.state.partitions[1].addresses[1].0, "fd00:e2e::3", "only the taken one changes");
        let tap = &p.state.partitions[0].tap;
        assert!(tap.ipv6_addr.starts_with("fd00:e2e::") && tap.ipv6_addr.ends_with(":ffff:ffff:ffff"), "{}", tap.ipv6_addr);
        assert_ne!(tap.ipv6_addr, "fd00:e2e::8001:ffff:ffff:ffff");
        assert_eq!(tap.ipv6_gateway, format!("{}:0:0:1", tap.ipv6_addr.trim_end_matches(":ffff:ffff:ffff")));
        // another shift aborts, as in SlapOS
        let e = plan(&config("ipv6_prefixshift = 20"), None, &obs, "root", &mut Picker::new(11)).unwrap_err();
        assert!(matches!(e, PlanError::Collision { .. }), "{e}");
    }

    #[test]
    fn a_defined_computer_keeps_its_address_without_an_interface() {
        let cfg = config("interface_name = nosuch0\nalter_network = false");
        let defined = crate::definition::parse(
            "[computer]\naddress = fd00:1::1/ffff:ffff:ffff:ffff::\n[partition_0]\naddress = 10.1.0.2/255.255.255.255 fd00:1::2/ffff:ffff:ffff:ffff::\nuser = duser0\nnetwork_interface = dtap0\npathname = dpart0\n[partition_1]\naddress = \nuser = duser1\nnetwork_interface = dtap1\npathname = dpart1\n",
            "def.cfg",
            &cfg,
        )
        .unwrap();
        let p = plan(&cfg, Some(&defined), &Observed::default(), "root", &mut Picker::new(1)).unwrap();
        assert_eq!((p.state.address.as_deref(), p.state.netmask.as_deref()), (Some("fd00:1::1"), Some("ffff:ffff:ffff:ffff::")));
        assert_eq!(p.state.partitions, defined.partitions, "the definition is used as it is");
        assert_has(&texts(&p), &["useradd -d /srv/slapgrid/dpart1 -g duser1 -s /bin/sh -r -G tsoft duser1", "mkdir -m 750 /srv/slapgrid/dpart0"]);
    }
}
