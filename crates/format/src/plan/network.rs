//! Network steps (`alter_network`, not `--local`): a new bridge, the
//! partitions' addresses and routed ranges, then each partition's tap and
//! tun (created, attached, up, addressed, routed), then the sysctl that lets
//! services bind in the ranges.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{mask128, v4_prefix, v6_prefix, Context, PlanError, Step, TunTapMode};
use crate::state::{ComputerState, LinkState, PartitionState};
use crate::system::Route;

/// Appends the network steps; warns about what it will not touch.
pub(super) fn steps(ctx: &Context, state: &ComputerState, steps: &mut Vec<Step>, warnings: &mut Vec<String>) -> Result<(), PlanError> {
    if let Some(name) = &ctx.new_bridge {
        steps.push(Step::CreateBridge { name: name.clone() });
        steps.push(Step::SetUp { interface: name.clone() });
    }
    let wants_range = partition_addresses(ctx, state, steps);
    for p in &state.partitions {
        if ctx.cfg.create_tap {
            tap(ctx, p, steps, warnings)?;
        }
        if let Some(tun) = &p.tun {
            self::tun(ctx, p, tun, steps, warnings)?;
        }
    }
    if wants_range && !ctx.obs.nonlocal_bind {
        steps.push(Step::Sysctl { key: "net.ipv6.ip_nonlocal_bind".into(), value: "1".into() });
    }
    Ok(())
}

/// The partitions' addresses on the node's interfaces and their ranges as
/// local routes; whether any partition has a range.
fn partition_addresses(ctx: &Context, state: &ComputerState, steps: &mut Vec<Step>) -> bool {
    let v4_iface = ctx.cfg.interface_name.clone().unwrap_or_default();
    let v6_iface = ctx.ipv6_iface.clone().unwrap_or_default();
    let mut wants_range = false;
    for p in &state.partitions {
        for (a, _) in &p.addresses {
            let Ok(ip) = a.parse::<IpAddr>() else { continue };
            let (iface, prefix) = match ip {
                IpAddr::V4(_) => (v4_iface.as_str(), 32),
                IpAddr::V6(_) => (v6_iface.as_str(), ctx.base.map(|b| b.1).unwrap_or(64)),
            };
            if !iface.is_empty() && !ctx.on(iface, ip) {
                steps.push(Step::AddAddress { interface: iface.to_string(), address: ip, prefix, noprefixroute: false });
            }
        }
        if let Some((net, len)) = &p.ipv6_range {
            wants_range = true;
            if let Ok(n) = net.parse::<Ipv6Addr>() {
                if !ctx.obs.local_routes.contains(&(n, *len)) {
                    steps.push(Step::AddLocalRoute { network: n, prefix: *len });
                }
            }
        }
    }
    wants_range
}

/// A partition's tun or tap device `name`: created (owned by the partition
/// user, root when that user does not exist, as SlapOS), a tap attached to
/// the bridge, up. An existing one is never recreated; another owner is
/// reported, not changed; another kind of interface is an error.
fn device(
    ctx: &Context,
    p: &PartitionState,
    name: &str,
    mode: TunTapMode,
    steps: &mut Vec<Step>,
    warnings: &mut Vec<String>,
) -> Result<(), PlanError> {
    let attach = |steps: &mut Vec<Step>, master: Option<&str>| match (mode, &ctx.bridge) {
        (TunTapMode::Tap, Some(b)) if master != Some(b.as_str()) => {
            steps.push(Step::SetMaster { interface: name.to_string(), master: b.clone() })
        }
        _ => {}
    };
    match ctx.obs.interfaces.get(name) {
        None => {
            steps.push(Step::CreateTunTap { name: name.to_string(), mode, user: p.user.clone() });
            attach(steps, None);
            steps.push(Step::SetUp { interface: name.to_string() });
        }
        Some(i) if !i.tuntap => return Err(PlanError::NotTunTap(name.to_string())),
        Some(i) => {
            let expected = ctx.obs.users.get(&p.user).map(|u| u.uid).unwrap_or(0);
            if i.owner != Some(expected) {
                warnings.push(format!(
                    "Wrong owner of TUN/TAP interface {name}! Not touching it. Expected {expected} ({}) got {}",
                    p.user,
                    i.owner.map(|o| o.to_string()).unwrap_or_else(|| "none".into())
                ));
            }
            attach(steps, i.master.as_deref());
            if !i.up {
                steps.push(Step::SetUp { interface: name.to_string() });
            }
        }
    }
    Ok(())
}

/// The partition's tap: the device, its IPv6, and routes to its IPv4, its
/// gateway and its range through the gateway.
fn tap(ctx: &Context, p: &PartitionState, steps: &mut Vec<Step>, warnings: &mut Vec<String>) -> Result<(), PlanError> {
    let tap = &p.tap;
    device(ctx, p, &tap.name, TunTapMode::Tap, steps, warnings)?;
    if let (Ok(addr), Some(len)) = (tap.ipv6_addr.parse::<Ipv6Addr>(), v6_prefix(&tap.ipv6_netmask)) {
        if !ctx.on(&tap.name, IpAddr::V6(addr)) {
            steps.push(Step::AddAddress { interface: tap.name.clone(), address: IpAddr::V6(addr), prefix: len, noprefixroute: true });
        }
    }
    let mut route = |destination: IpAddr, prefix: u8, via: Option<IpAddr>| {
        let r = Route { destination, prefix, interface: tap.name.clone(), via };
        if !ctx.obs.routes.contains(&r) {
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
    Ok(())
}

/// The partition's tun: the device and its IPv4 and IPv6.
fn tun(ctx: &Context, p: &PartitionState, tun: &LinkState, steps: &mut Vec<Step>, warnings: &mut Vec<String>) -> Result<(), PlanError> {
    device(ctx, p, &tun.name, TunTapMode::Tun, steps, warnings)?;
    let v4 = tun.ipv4_addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4).zip(v4_prefix(&tun.ipv4_netmask));
    let v6 = tun.ipv6_addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6).zip(v6_prefix(&tun.ipv6_netmask));
    for (address, prefix) in v4.into_iter().chain(v6) {
        if !ctx.on(&tun.name, address) {
            steps.push(Step::AddAddress { interface: tun.name.clone(), address, prefix, noprefixroute: false });
        }
    }
    Ok(())
}
