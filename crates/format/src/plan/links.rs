//! The taps' and tuns' addresses, which SlapOS fills in while formatting and
//! keeps in the state: a stored address is kept, a missing one derived.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{mask128, v6_prefix, Context, Picker, PlanError};
use crate::addressing;
use crate::state::{ComputerState, LinkState, PartitionState};
use crate::system::Observed;

/// The taps' IPv4 from `tap_gateway_interface`: the addresses to hand out,
/// the gateway and its prefix.
type TapGateway = (Vec<Ipv4Addr>, Ipv4Addr, u8);

/// Fills in the addresses of every partition's tap (`create_tap`) and tun.
pub(super) fn address(
    ctx: &Context,
    state: &mut ComputerState,
    taken: &mut BTreeSet<IpAddr>,
    picker: &mut Picker,
) -> Result<(), PlanError> {
    let cfg = ctx.cfg;
    // the partitions' routed ranges, which a tap's range must not overlap
    let mut ranges: BTreeSet<(u128, u8)> = BTreeSet::new();
    for p in &state.partitions {
        if let Some((a, l)) = &p.ipv6_range {
            if let Ok(a) = a.parse::<Ipv6Addr>() {
                ranges.insert((u128::from(a) & mask128(*l), *l));
            }
        }
    }
    let gateway = match (cfg.create_tap, cfg.tap_gateway_interface.as_str()) {
        (true, name) if !name.is_empty() => Some(tap_gateway_addresses(ctx.obs, name, state.partitions.len())?),
        _ => None,
    };
    for (i, p) in state.partitions.iter_mut().enumerate() {
        if cfg.create_tap {
            tap_ipv4(&mut p.tap, gateway.as_ref(), i);
            tap_ipv6(ctx, p, i, taken, &mut ranges, picker)?;
        }
        if let Some(tun) = &mut p.tun {
            tun_addresses(ctx, tun, i)?;
        }
    }
    Ok(())
}

/// The taps' IPv4 from `tap_gateway_interface`: its first IPv4 subnet, every
/// address but the network's and the interface's own, in order (SlapOS).
fn tap_gateway_addresses(obs: &Observed, name: &str, wanted: usize) -> Result<TapGateway, PlanError> {
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

/// Tap `i`'s IPv4: from the gateway's subnet (kept once given), none without one.
fn tap_ipv4(tap: &mut LinkState, gateway: Option<&TapGateway>, i: usize) {
    match gateway {
        Some((list, gw, prefix)) => {
            if tap.ipv4_addr.is_empty() {
                let mask = if *prefix == 0 { 0 } else { u32::MAX << (32 - *prefix as u32) };
                tap.ipv4_addr = list[i].to_string();
                tap.ipv4_netmask = Ipv4Addr::from(mask).to_string();
                tap.ipv4_gateway = gw.to_string();
                tap.ipv4_network = Ipv4Addr::from(u32::from(*gw) & mask).to_string();
            }
        }
        None => {
            tap.ipv4_addr.clear();
            tap.ipv4_netmask.clear();
            tap.ipv4_gateway.clear();
            tap.ipv4_network.clear();
        }
    }
}

/// Tap `i`'s IPv6 range (`tap_ipv6`): the stored one, else a derived one.
fn tap_ipv6(
    ctx: &Context,
    p: &mut PartitionState,
    i: usize,
    taken: &mut BTreeSet<IpAddr>,
    ranges: &mut BTreeSet<(u128, u8)>,
    picker: &mut Picker,
) -> Result<(), PlanError> {
    match (ctx.cfg.tap_ipv6, ctx.base) {
        (true, Some((b, pl))) => {
            let (addr, len) = if p.tap.ipv6_addr.is_empty() {
                new_tap_ipv6(ctx, p, i, (b, pl), taken, ranges, picker)?
            } else {
                let addr = p.tap.ipv6_addr.parse::<Ipv6Addr>().map_err(|_| PlanError::BadStored {
                    what: "tap IPv6",
                    value: p.tap.ipv6_addr.clone(),
                    partition: p.reference.clone(),
                })?;
                (addr, v6_prefix(&p.tap.ipv6_netmask).unwrap_or(pl.saturating_add(ctx.cfg.ipv6_prefixshift).min(128)))
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
    Ok(())
}

/// A new tap IPv6 for partition `i`: derived from the base; when taken (or
/// its range overlaps another), SlapOS's random one (default shift only).
fn new_tap_ipv6(
    ctx: &Context,
    p: &PartitionState,
    i: usize,
    (b, pl): (Ipv6Addr, u8),
    taken: &BTreeSet<IpAddr>,
    ranges: &BTreeSet<(u128, u8)>,
    picker: &mut Picker,
) -> Result<(Ipv6Addr, u8), PlanError> {
    let (addr, len, _) = addressing::tap_ipv6(b, pl, ctx.cfg.ipv6_prefixshift, i)?;
    let free = |a: Ipv6Addr, len: u8| {
        (!taken.contains(&IpAddr::V6(a)) || ctx.on(&p.tap.name, IpAddr::V6(a))) && !ranges.contains(&(u128::from(a) & mask128(len), len))
    };
    if free(addr, len) {
        return Ok((addr, len));
    }
    if ctx.cfg.ipv6_prefixshift != 16 {
        return Err(PlanError::Collision { address: IpAddr::V6(addr), partition: p.reference.clone() });
    }
    let net = u128::from(b) & mask128(pl);
    let len16 = pl.saturating_add(16).min(128);
    let ones = if len16 >= 128 { 0 } else { u128::MAX >> len16 };
    let random =
        (0..10).map(|_| Ipv6Addr::from(net | (picker.field() << (128 - len16 as u32)) | ones)).find(|a| free(*a, len16)).ok_or_else(
            || PlanError::AddressGeneration { what: "the tap IPv6 range", partition: p.reference.clone(), address: addr.to_string() },
        )?;
    Ok((random, len))
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

/// Tun `i`'s addresses: a 172.16/12 subnet, and an IPv6 range (`tun_ipv6`).
fn tun_addresses(ctx: &Context, tun: &mut LinkState, i: usize) -> Result<(), PlanError> {
    if tun.ipv4_addr.is_empty() {
        let (addr, mask) = addressing::tun_ipv4(ctx.cfg.partition_amount, i)?;
        tun.ipv4_addr = addr.to_string();
        tun.ipv4_netmask = mask.to_string();
        tun.ipv4_network = format!("{addr}/{mask}");
    }
    if let (true, true, Some((b, pl))) = (tun.ipv6_addr.is_empty(), ctx.cfg.tun_ipv6, ctx.base) {
        let (addr, len) = addressing::tun_ipv6(b, pl, ctx.cfg.ipv6_prefixshift, i)?;
        tun.ipv6_addr = addr.to_string();
        tun.ipv6_netmask = addressing::ipv6_netmask(len).to_string();
        tun.ipv6_network = format!("{addr}/{len}");
    }
    Ok(())
}
