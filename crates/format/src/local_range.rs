//! The loopback range of a local node (`--local`): a `127.X.Y.0/24` of its
//! own, so that two local clouds on one machine (or one beside anything
//! else listening on loopback) never share addresses.
//!
//! The range is derived from the instance root (a hash picks the first
//! candidate), skipped while anything listens in it (`/proc/net/tcp{,6}`,
//! `udp{,6}`) or another node's state file claims it (claim files in a
//! machine-wide directory, one per range, naming the claiming state file),
//! then stored in the state file (`ipv4_local_network`) and kept on every
//! re-run.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// The directory of the claims: `$SLAPOS_LOCAL_RANGES`, else
/// `<temporary directory>/slapos-local-ranges`.
pub fn default_claims_dir() -> PathBuf {
    std::env::var_os("SLAPOS_LOCAL_RANGES").map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("slapos-local-ranges"))
}

/// The `/24` network holding `a`.
pub fn network_of(a: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(a) & 0xffff_ff00)
}

fn loopback_v4(a: &SocketAddr) -> Option<Ipv4Addr> {
    match a.ip() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
    .filter(|v4| v4.is_loopback())
}

/// Loopback IPv4 addresses something listens on (TCP) or is bound to (UDP).
pub fn listening() -> BTreeSet<Ipv4Addr> {
    let mut out = BTreeSet::new();
    for list in [procfs::net::tcp(), procfs::net::tcp6()].into_iter().flatten() {
        out.extend(list.iter().filter(|e| e.state == procfs::net::TcpState::Listen).filter_map(|e| loopback_v4(&e.local_address)));
    }
    for list in [procfs::net::udp(), procfs::net::udp6()].into_iter().flatten() {
        out.extend(list.iter().filter_map(|e| loopback_v4(&e.local_address)));
    }
    out
}

/// The claim file of a range.
fn claim_file(dir: &Path, network: Ipv4Addr) -> PathBuf {
    dir.join(network.to_string())
}

/// The live claims of `dir`: range → the state file that claims it. A claim
/// whose state file is gone or no longer holds that range is stale: left out.
pub fn claims(dir: &Path) -> BTreeMap<Ipv4Addr, PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return BTreeMap::new() };
    let mut out = BTreeMap::new();
    for e in rd.flatten() {
        let Some(net) = e.file_name().to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else {
            continue;
        };
        let Ok(owner) = std::fs::read_to_string(e.path()) else { continue };
        let state = PathBuf::from(owner.trim());
        if std::fs::read_to_string(&state).is_ok_and(|t| t.contains(&format!("{net}/24"))) {
            out.insert(net, state);
        }
    }
    out
}

/// Claims `network` for `state_file` in `dir` (made world-writable and
/// sticky, as a temporary directory, so that every user's local node can
/// claim).
pub fn claim(dir: &Path, network: Ipv4Addr, state_file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777))?;
    }
    let path = claim_file(dir, network);
    let tmp = dir.join(format!(".{network}.{}", std::process::id()));
    std::fs::write(&tmp, state_file.display().to_string())?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, &path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// FNV-1a of `text`: the first candidate of a node (stable across versions).
pub fn seed(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Candidates: `127.X.Y.0/24` with X in 1..=254 (127.0.0.0/16 is left to
/// the system), from the one `seed` picks, in order; the first one not
/// `busy`.
pub fn pick(seed: u64, busy: impl Fn(Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
    const COUNT: u64 = 254 * 256;
    (0..COUNT)
        .map(|i| {
            let n = (seed % COUNT + i) % COUNT;
            Ipv4Addr::new(127, (1 + n / 256) as u8, (n % 256) as u8, 0)
        })
        .find(|net| !busy(*net))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_range_is_skipped_for_the_next() {
        let first = pick(seed("/a"), |_| false).unwrap();
        assert_eq!(first, pick(seed("/a"), |_| false).unwrap(), "stable");
        assert_ne!(first, pick(seed("/b"), |_| false).unwrap());
        assert_eq!(first.octets()[3], 0);
        assert!((1..=254).contains(&first.octets()[1]));
        let next = pick(seed("/a"), |n| n == first).unwrap();
        assert_ne!(next, first);
        assert_eq!(pick(u64::MAX, |_| true), None);
        // the last candidate wraps to the first
        assert_eq!(pick(254 * 256 - 1, |_| false), Some(Ipv4Addr::new(127, 254, 255, 0)));
        assert_eq!(pick(254 * 256 - 1, |n| n == Ipv4Addr::new(127, 254, 255, 0)), Some(Ipv4Addr::new(127, 1, 0, 0)));
    }

    #[test]
    fn a_listener_on_loopback_is_seen() {
        let l = std::net::TcpListener::bind("127.77.1.9:0").unwrap();
        assert!(listening().contains(&Ipv4Addr::new(127, 77, 1, 9)));
        drop(l);
        let u = std::net::UdpSocket::bind("127.77.2.9:0").unwrap();
        assert!(listening().contains(&Ipv4Addr::new(127, 77, 2, 9)));
        drop(u);
    }

    #[test]
    fn claims_hold_while_their_state_file_holds_the_range() {
        let d = tempfile::tempdir().unwrap();
        let claims_dir = d.path().join("claims");
        let state = d.path().join("slapos.xml");
        let net = Ipv4Addr::new(127, 9, 8, 0);
        claim(&claims_dir, net, &state).unwrap();
        assert!(claims(&claims_dir).is_empty(), "no state file yet: stale");
        std::fs::write(&state, "<string>127.9.8.0/24</string>").unwrap();
        assert_eq!(claims(&claims_dir), BTreeMap::from([(net, state.clone())]));
        std::fs::write(&state, "<string>127.9.9.0/24</string>").unwrap();
        assert!(claims(&claims_dir).is_empty(), "the state moved on: stale");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&claims_dir).unwrap().permissions().mode() & 0o7777, 0o1777);
    }
}
