//! Allocation: the node's interfaces, the computer's address, and the new
//! partitions with their names, users and addresses. Existing partitions are
//! kept as they are (partitions are never removed).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Context, Picker, PlanError};
use crate::addressing;
use crate::config::FormatConfig;
use crate::local_range;
use crate::state::{ComputerState, LinkState, PartitionState};
use crate::system::Observed;

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

/// `interface_name` when it is missing and may be created as a bridge;
/// an error when it is missing and may not.
fn new_bridge(cfg: &FormatConfig, obs: &Observed, network: bool, ipv6_iface: Option<&str>) -> Result<Option<String>, PlanError> {
    let Some(name) = cfg.interface_name.as_ref().filter(|n| network && !obs.interfaces.contains_key(*n)) else { return Ok(None) };
    if !cfg.create_bridge {
        return Err(PlanError::NoBridge(name.clone()));
    }
    if ipv6_iface == Some(name) {
        return Err(PlanError::NewBridgeHasNoIpv6(name.clone()));
    }
    Ok(Some(name.clone()))
}

/// Local mode's loopback /24: the configured `ipv4_local_network` when it
/// is one in 127/8; else the stored one; else the one of the partitions'
/// loopback addresses (a node formatted before ranges were stored); else a
/// free one ([`local_range::pick`]): nothing listens in it, no other local
/// node claims it.
fn local_network(cfg: &FormatConfig, previous: Option<&ComputerState>, obs: &Observed) -> Result<Option<Ipv4Addr>, PlanError> {
    if !cfg.local {
        return Ok(None);
    }
    if cfg.partition_amount > 254 {
        return Err(PlanError::TooManyLocalPartitions(cfg.partition_amount));
    }
    let loopback = |a: Ipv4Addr| a.is_loopback() && a.octets()[1] != 0;
    if let Some((net, _)) = cfg.ipv4_local_network.filter(|(n, _)| loopback(*n)) {
        return Ok(Some(local_range::network_of(net)));
    }
    let stored = previous.and_then(|p| p.ipv4_local_network.as_deref()).and_then(|n| n.split('/').next()?.parse::<Ipv4Addr>().ok());
    let used = previous.into_iter().flat_map(|p| &p.partitions).flat_map(|p| &p.addresses).filter_map(|(a, _)| a.parse::<Ipv4Addr>().ok());
    if let Some(a) = stored.into_iter().chain(used).find(|a| loopback(*a)) {
        return Ok(Some(local_range::network_of(a)));
    }
    let busy = |net: Ipv4Addr| {
        obs.listening.iter().any(|a| local_range::network_of(*a) == net)
            || obs.local_claims.get(&net).is_some_and(|s| *s != cfg.computer_xml)
    };
    local_range::pick(local_range::seed(&cfg.instance_root.display().to_string()), busy).map(Some).ok_or(PlanError::NoLocalRange)
}

/// What the node's interfaces are: checked before anything is planned.
pub(super) fn context<'a>(cfg: &'a FormatConfig, previous: Option<&ComputerState>, obs: &'a Observed) -> Result<Context<'a>, PlanError> {
    let existing = previous.map(|p| p.partitions.len()).unwrap_or(0);
    if cfg.partition_amount < existing {
        return Err(PlanError::FewerPartitions { wanted: cfg.partition_amount, existing });
    }
    let network = cfg.alter_network && !cfg.local;
    let ipv6_iface = cfg.ipv6_interface.clone().or_else(|| cfg.interface_name.clone());
    let new_bridge = new_bridge(cfg, obs, network, ipv6_iface.as_deref())?;
    let bridge =
        cfg.interface_name.clone().filter(|n| new_bridge.as_deref() == Some(n.as_str()) || obs.interfaces.get(n).is_some_and(|i| i.bridge));
    // the computer address: the interface's base IPv6
    let preferred = previous.and_then(|p| p.address.as_deref());
    let base = match (&ipv6_iface, network || obs.interfaces.contains_key(ipv6_iface.as_deref().unwrap_or(""))) {
        // local mode uses IPv6 only when the interface has a global address
        (Some(name), true) if cfg.local => base_ipv6(obs, name, preferred).ok(),
        (Some(name), true) => Some(base_ipv6(obs, name, preferred)?),
        _ => None,
    };
    if base.is_some() && network && cfg.partition_has_ipv6_range {
        addressing::check_shift(base.map(|b| b.1).unwrap_or(64), cfg.ipv6_prefixshift, cfg.partition_amount)?;
    }
    let local_net = local_network(cfg, previous, obs)?;
    Ok(Context { cfg, obs, network, ipv6_iface, new_bridge, bridge, base, local_net })
}

/// The computer with its previous partitions (none yet added).
pub(super) fn computer(ctx: &Context, previous: Option<&ComputerState>, invoking_user: &str) -> ComputerState {
    let cfg = ctx.cfg;
    // without an interface to read, the stored (or defined) address stays
    let (address, netmask) = match ctx.base {
        Some((a, p)) => (Some(a.to_string()), Some(addressing::ipv6_netmask(p).to_string())),
        None if cfg.local => (Some("127.0.0.1".to_string()), Some("255.0.0.0".to_string())),
        None => (previous.and_then(|p| p.address.clone()), previous.and_then(|p| p.netmask.clone())),
    };
    ComputerState {
        reference: cfg.computer_id.clone(),
        address,
        netmask,
        instance_root: cfg.instance_root.clone(),
        software_root: cfg.software_root.clone(),
        software_user: if cfg.alter_user { cfg.software_user.clone() } else { invoking_user.to_string() },
        interface_name: cfg.interface_name.clone(),
        ipv6_interface: cfg.ipv6_interface.clone(),
        ipv4_local_network: match ctx.local_net {
            Some(net) => Some(format!("{net}/24")),
            None => cfg.ipv4_local_network.map(|(a, p)| format!("{a}/{p}")),
        },
        ipv6_prefixshift: cfg.ipv6_prefixshift,
        partition_has_ipv6_range: cfg.partition_has_ipv6_range,
        tap_gateway_interface: cfg.tap_gateway_interface.clone(),
        tap_ipv6: cfg.tap_ipv6,
        partitions: previous.map(|p| p.partitions.clone()).unwrap_or_default(),
    }
}

/// The addresses in use: on the system, or kept by a partition.
pub(super) fn taken(obs: &Observed, state: &ComputerState) -> BTreeSet<IpAddr> {
    let mut taken = obs.all_addresses.clone();
    for p in &state.partitions {
        taken.extend(p.addresses.iter().filter_map(|(a, _)| a.parse::<IpAddr>().ok()));
    }
    taken
}

/// Adds the partitions up to `partition_amount`, with their addresses.
pub(super) fn new_partitions(
    ctx: &Context,
    state: &mut ComputerState,
    taken: &mut BTreeSet<IpAddr>,
    invoking_user: &str,
    picker: &mut Picker,
) -> Result<(), PlanError> {
    let cfg = ctx.cfg;
    for i in state.partitions.len()..cfg.partition_amount {
        let reference = format!("{}{i}", cfg.partition_base_name);
        let user = if cfg.alter_user { format!("{}{i}", cfg.user_base_name) } else { invoking_user.to_string() };
        let mut addresses: Vec<(String, String)> = ipv4(ctx, i, taken, picker)?.into_iter().collect();
        let mut ipv6_range = None;
        if let Some((address, range)) = ipv6(ctx, i, &reference, taken, picker)? {
            addresses.push(address);
            ipv6_range = range;
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
    Ok(())
}

/// Partition `i`'s IPv4: `.i+1` of the node's loopback /24 in local mode, else a random free one in
/// `ipv4_local_network` (kept in the state afterwards), else none.
fn ipv4(ctx: &Context, i: usize, taken: &mut BTreeSet<IpAddr>, picker: &mut Picker) -> Result<Option<(String, String)>, PlanError> {
    if let Some(net) = ctx.local_net {
        let [a, b, c, _] = net.octets();
        return Ok(Some((format!("{a}.{b}.{c}.{}", i + 1), "255.255.255.255".to_string())));
    }
    let Some((net, prefix)) = ctx.cfg.ipv4_local_network else { return Ok(None) };
    let size = 1u64 << (32 - prefix as u32);
    let ip = (0..1000)
        .map(|_| {
            let host = if size > 2 { 1 + picker.next() % (size - 2) } else { 0 };
            IpAddr::V4(Ipv4Addr::from(u32::from(net) + host as u32))
        })
        .find(|ip| !taken.contains(ip))
        .ok_or_else(|| PlanError::NoIpv4(format!("{net}/{prefix}")))?;
    taken.insert(ip);
    Ok(Some((ip.to_string(), "255.255.255.255".to_string())))
}

/// An address with its netmask, and maybe a routed range.
type Ipv6Allocation = ((String, String), Option<(String, u8)>);

/// Partition `i`'s IPv6 derived from the base (SlapOS: a random last group
/// when it is taken, with the default shift only) and its routed range.
fn ipv6(
    ctx: &Context,
    i: usize,
    reference: &str,
    taken: &mut BTreeSet<IpAddr>,
    picker: &mut Picker,
) -> Result<Option<Ipv6Allocation>, PlanError> {
    let cfg = ctx.cfg;
    let Some((b, p)) = ctx.base.filter(|_| !cfg.local) else { return Ok(None) };
    let mut ip = addressing::partition_ipv6(b, p, i);
    let free = |ip: Ipv6Addr| !taken.contains(&IpAddr::V6(ip)) || ctx.on(ctx.ipv6_iface.as_deref().unwrap_or(""), IpAddr::V6(ip));
    if !free(ip) {
        if cfg.ipv6_prefixshift != 16 {
            return Err(PlanError::Collision { address: IpAddr::V6(ip), partition: reference.to_string() });
        }
        let computed = ip;
        ip = (0..10).map(|_| Ipv6Addr::from((u128::from(b) & !0xffff) | picker.field())).find(|a| free(*a)).ok_or_else(|| {
            PlanError::AddressGeneration { what: "the IPv6 address", partition: reference.to_string(), address: computed.to_string() }
        })?;
    }
    taken.insert(IpAddr::V6(ip));
    let range = match cfg.partition_has_ipv6_range {
        true => {
            let (net, len) = addressing::partition_range(b, p, cfg.ipv6_prefixshift, i)?;
            Some((net.to_string(), len))
        }
        false => None,
    };
    Ok(Some(((ip.to_string(), addressing::ipv6_netmask(p).to_string()), range)))
}
