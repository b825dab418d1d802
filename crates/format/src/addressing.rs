//! How `slapos node format` derives a partition's addresses from the
//! interface's IPv6 prefix (`node.md` §2.4), as pure functions.
//!
//! With the interface address `A/p` and the partition index `i`:
//! - partition IPv6: the first `p` bits of `A`, then `i + 2` in the host part
//!   (`::1` is kept for re6st); wraps around in a small host part;
//! - partition IPv6 range: `A`'s `p` bits, a 16-bit field `0x4000 + i + 1`
//!   (for a shift of 16), zeros; prefix `p + shift`;
//! - tap IPv6: field `0x8000 + i + 1`, the rest all ones; gateway: the
//!   first address of that range (`…:0:0:1`);
//! - tun IPv6: field `0xC000 + i + 1`, zeros, then its first address;
//! - tun IPv4: `172.16.0.0/12` cut into `2^ceil(log2(n))` subnets, the
//!   first host of subnet `i`.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Errors of address derivation; each names what does not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressingError {
    /// The node's IPv6 prefix is too long to carve partition addresses or ranges from it.
    #[error("the IPv6 prefix /{prefix} leaves no room for {what} (prefix + ipv6_prefixshift {shift} must be at most 128)")]
    PrefixTooLong {
        /// Prefix length of the interface's IPv6.
        prefix: u8,
        /// `ipv6_prefixshift`.
        shift: u8,
        /// What needed the room (addresses, ranges).
        what: &'static str,
    },
    /// `ipv6_prefixshift` leaves too few subnets for the partitions.
    #[error("ipv6_prefixshift {shift} is too small for {partitions} partitions: 2^shift must be at least 4 × partition_amount")]
    ShiftTooSmall {
        /// `ipv6_prefixshift`.
        shift: u8,
        /// `partition_amount`.
        partitions: usize,
    },
    /// More partitions than tun networks fit in 172.16.0.0/12.
    #[error("{partitions} partitions do not fit in 172.16.0.0/12 for tuns")]
    TooManyTuns {
        /// `partition_amount`.
        partitions: usize,
    },
}

fn mask128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix as u32)
    }
}

/// The netmask of an IPv6 prefix length, as Python writes it (`ffff:ffff:ffff:ffff::`).
pub fn ipv6_netmask(prefix: u8) -> Ipv6Addr {
    Ipv6Addr::from(mask128(prefix))
}

/// Checks that `shift` gives room for the ranges of `partitions` partitions
/// (Python: 2^shift ≥ 4 × partition_amount) under a `/prefix` interface.
pub fn check_shift(prefix: u8, shift: u8, partitions: usize) -> Result<(), AddressingError> {
    if prefix as u32 + shift as u32 > 128 {
        return Err(AddressingError::PrefixTooLong { prefix, shift, what: "partition ranges" });
    }
    if shift < 64 && (1u128 << shift) < 4 * partitions as u128 {
        return Err(AddressingError::ShiftTooSmall { shift, partitions });
    }
    Ok(())
}

/// The partition's own IPv6: the interface prefix with `index + 2` as host part.
pub fn partition_ipv6(base: Ipv6Addr, prefix: u8, index: usize) -> Ipv6Addr {
    let net = u128::from(base) & mask128(prefix);
    let host_bits = 128 - prefix as u32;
    let host = if host_bits >= 128 { index as u128 + 2 } else { (index as u128 + 2) % (1u128 << host_bits) };
    Ipv6Addr::from(net | host)
}

/// A 16-bit field right after the prefix, then `suffix` in the remaining bits.
fn field_address(base: Ipv6Addr, prefix: u8, shift: u8, field: u128, ones: bool) -> Result<(Ipv6Addr, u8), AddressingError> {
    let len = prefix as u32 + shift as u32;
    if len > 128 {
        return Err(AddressingError::PrefixTooLong { prefix, shift, what: "ranges" });
    }
    let net = u128::from(base) & mask128(prefix);
    let field = (field & ((1u128 << shift.min(127)) - 1)) << (128 - len);
    let rest = if ones && len < 128 { u128::MAX >> len } else { 0 };
    Ok((Ipv6Addr::from(net | field | rest), len as u8))
}

/// The routed IPv6 range of a partition: `(network address, prefix length)`.
pub fn partition_range(base: Ipv6Addr, prefix: u8, shift: u8, index: usize) -> Result<(Ipv6Addr, u8), AddressingError> {
    field_address(base, prefix, shift, 0x4000 + index as u128 + 1, false)
}

/// A tap's IPv6: `(address, prefix length, gateway)`.
pub fn tap_ipv6(base: Ipv6Addr, prefix: u8, shift: u8, index: usize) -> Result<(Ipv6Addr, u8, Ipv6Addr), AddressingError> {
    let (addr, len) = field_address(base, prefix, shift, 0x8000 + index as u128 + 1, true)?;
    let (net, _) = field_address(base, prefix, shift, 0x8000 + index as u128 + 1, false)?;
    Ok((addr, len, Ipv6Addr::from(u128::from(net) | 1)))
}

/// A tun's IPv6: `(first address of its range, prefix length)`.
pub fn tun_ipv6(base: Ipv6Addr, prefix: u8, shift: u8, index: usize) -> Result<(Ipv6Addr, u8), AddressingError> {
    let (net, len) = field_address(base, prefix, shift, 0xC000 + index as u128 + 1, false)?;
    Ok((Ipv6Addr::from(u128::from(net) | 1), len))
}

/// A tun's IPv4: `(address, netmask)` in `172.16.0.0/12`.
pub fn tun_ipv4(partitions: usize, index: usize) -> Result<(Ipv4Addr, Ipv4Addr), AddressingError> {
    let bits = (partitions.max(1) as f64).log2().ceil() as u32;
    let len = 12 + bits;
    if len > 30 {
        return Err(AddressingError::TooManyTuns { partitions });
    }
    let base = u32::from(Ipv4Addr::new(172, 16, 0, 0));
    let subnet = base + ((index as u32) << (32 - len));
    Ok((Ipv4Addr::from(subnet + 1), Ipv4Addr::from(u32::MAX << (32 - len))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    // the values a real `slapos node format` wrote (node.md §2.12)
    #[test]
    fn matches_the_recorded_python_format() {
        let base = a("fd00:e2e::1");
        assert_eq!(partition_ipv6(base, 64, 0).to_string(), "fd00:e2e::2");
        assert_eq!(partition_ipv6(base, 64, 2).to_string(), "fd00:e2e::4");
        assert_eq!(ipv6_netmask(64).to_string(), "ffff:ffff:ffff:ffff::");
        let (range, len) = partition_range(base, 64, 16, 0).unwrap();
        assert_eq!((range.to_string().as_str(), len), ("fd00:e2e:0:0:4001::", 80));
        assert_eq!(ipv6_netmask(80).to_string(), "ffff:ffff:ffff:ffff:ffff::");
        let (tap, len, gw) = tap_ipv6(base, 64, 16, 0).unwrap();
        assert_eq!((tap.to_string().as_str(), len, gw.to_string().as_str()), ("fd00:e2e::8001:ffff:ffff:ffff", 80, "fd00:e2e::8001:0:0:1"));
        assert_eq!(tap_ipv6(base, 64, 16, 2).unwrap().0.to_string(), "fd00:e2e::8003:ffff:ffff:ffff");
        assert_eq!(tun_ipv6(base, 64, 16, 0).unwrap().0.to_string(), "fd00:e2e::c001:0:0:1");
        // 3 partitions: 4 subnets of 172.16.0.0/12 → /14
        assert_eq!(tun_ipv4(3, 0).unwrap(), (Ipv4Addr::new(172, 16, 0, 1), Ipv4Addr::new(255, 252, 0, 0)));
        assert_eq!(tun_ipv4(3, 1).unwrap().0, Ipv4Addr::new(172, 20, 0, 1));
        assert_eq!(tun_ipv4(3, 2).unwrap().0, Ipv4Addr::new(172, 24, 0, 1));
    }

    #[test]
    fn small_host_parts_wrap_and_bad_shifts_are_named() {
        assert_eq!(partition_ipv6(a("2001:db8::1"), 126, 3).to_string(), "2001:db8::1");
        assert!(matches!(check_shift(120, 16, 3), Err(AddressingError::PrefixTooLong { .. })));
        let e = check_shift(64, 2, 3).unwrap_err().to_string();
        assert!(e.contains("ipv6_prefixshift 2") && e.contains("3 partitions"), "{e}");
        assert!(check_shift(64, 16, 1000).is_ok());
        assert!(partition_range(a("2001:db8::1"), 120, 16, 0).is_err());
    }
}
