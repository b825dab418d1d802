//! The planner: configuration + previous state + observed system → the
//! steps to take and the new state. Pure: no system access, so it is tested
//! without root, and a dry run is just printing it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use crate::addressing::{self, AddressingError};
use crate::config::FormatConfig;
use crate::state::{ComputerState, PartitionState};
use crate::system::Observed;

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
    AddAddress { interface: String, address: IpAddr, prefix: u8 },
    AddLocalRoute { network: Ipv6Addr, prefix: u8 },
    WriteResource { path: PathBuf },
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
            Step::AddAddress { interface, address, prefix } => write!(f, "ip addr add {address}/{prefix} dev {interface}"),
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
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("partition_amount {wanted} is smaller than the {existing} partitions already formatted: partitions are never removed")]
    FewerPartitions { wanted: usize, existing: usize },
    #[error("interface '{0}' (interface_name/ipv6_interface) does not exist")]
    NoInterface(String),
    #[error("interface '{0}' must have at least one global IPv6 address")]
    NoIpv6(String),
    #[error("no free IPv4 address left in ipv4_local_network {0}")]
    NoIpv4(String),
    #[error("address {address} for partition {partition} is already used on another interface")]
    Collision { address: IpAddr, partition: String },
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
    let ipv6_iface = cfg.ipv6_interface.clone().or_else(|| cfg.interface_name.clone());
    // the computer address: the interface's base IPv6
    let base = match (&ipv6_iface, cfg.alter_network || obs.interfaces.contains_key(ipv6_iface.as_deref().unwrap_or(""))) {
        // local mode uses IPv6 only when the interface has a global address
        (Some(name), true) if cfg.local => base_ipv6(obs, name, previous.and_then(|p| p.address.as_deref())).ok(),
        (Some(name), true) => Some(base_ipv6(obs, name, previous.and_then(|p| p.address.as_deref()))?),
        _ => None,
    };
    if base.is_some() && cfg.alter_network && cfg.partition_has_ipv6_range {
        addressing::check_shift(base.map(|b| b.1).unwrap_or(64), cfg.ipv6_prefixshift, cfg.partition_amount)?;
    }
    let mut state = ComputerState {
        reference: cfg.computer_id.clone(),
        address: base.map(|(a, _)| a.to_string()).or_else(|| cfg.local.then(|| "127.0.0.1".to_string())),
        netmask: base.map(|(_, p)| addressing::ipv6_netmask(p).to_string()).or_else(|| cfg.local.then(|| "255.0.0.0".to_string())),
        instance_root: cfg.instance_root.clone(),
        software_root: cfg.software_root.clone(),
        software_user: if cfg.alter_user { cfg.software_user.clone() } else { invoking_user.to_string() },
        interface_name: cfg.interface_name.clone(),
        ipv6_interface: cfg.ipv6_interface.clone(),
        ipv4_local_network: cfg.ipv4_local_network.map(|(a, p)| format!("{a}/{p}")),
        ipv6_prefixshift: cfg.ipv6_prefixshift,
        partition_has_ipv6_range: cfg.partition_has_ipv6_range,
        partitions: previous.map(|p| p.partitions.clone()).unwrap_or_default(),
    };
    let mut taken: std::collections::BTreeSet<IpAddr> = obs.all_addresses.clone();
    for p in &state.partitions {
        for (a, _) in &p.addresses {
            if let Ok(ip) = a.parse() {
                taken.insert(ip);
            }
        }
    }
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
            let ip = addressing::partition_ipv6(b, p, i);
            let on_our_interface = obs
                .interfaces
                .get(ipv6_iface.as_deref().unwrap_or(""))
                .is_some_and(|iface| iface.addresses.iter().any(|(a, _, _)| *a == IpAddr::V6(ip)));
            if taken.contains(&IpAddr::V6(ip)) && !on_our_interface {
                return Err(PlanError::Collision { address: IpAddr::V6(ip), partition: reference });
            }
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
            tap_name: format!("{}{i}", cfg.tap_base_name),
            addresses,
            ipv6_range,
        });
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
    let mut dir = |path: &PathBuf, mode: u32, owner: Option<&str>| {
        match obs.paths.get(path) {
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
        }
    };
    dir(&cfg.instance_root, 0o755, None);
    dir(&cfg.software_root, 0o755, cfg.alter_user.then_some(cfg.software_user.as_str()));
    for p in &state.partitions {
        dir(&p.path, 0o750, cfg.alter_user.then_some(p.user.as_str()));
    }
    // network
    if cfg.alter_network {
        let v4_iface = cfg.interface_name.clone().unwrap_or_default();
        let v6_iface = ipv6_iface.clone().unwrap_or_default();
        let present = |iface: &str, ip: IpAddr| obs.interfaces.get(iface).is_some_and(|i| i.addresses.iter().any(|(a, _, _)| *a == ip));
        let mut wants_range = false;
        for p in &state.partitions {
            for (a, _) in &p.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else { continue };
                let (iface, prefix) = match ip {
                    IpAddr::V4(_) => (v4_iface.as_str(), 32),
                    IpAddr::V6(_) => (v6_iface.as_str(), base.map(|b| b.1).unwrap_or(64)),
                };
                if !iface.is_empty() && !present(iface, ip) {
                    steps.push(Step::AddAddress { interface: iface.to_string(), address: ip, prefix });
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
        if wants_range && !obs.nonlocal_bind {
            steps.push(Step::Sysctl { key: "net.ipv6.ip_nonlocal_bind".into(), value: "1".into() });
        }
    }
    // per-partition resource files
    for (i, p) in state.partitions.iter().enumerate() {
        let path = p.path.join(".slapos-resource");
        let content = crate::state::to_json(&state.partitions[i].to_value(&state.software_user), 4);
        if obs.resources.get(&path) != Some(&content) {
            steps.push(Step::WriteResource { path });
        }
    }
    Ok(Plan { steps, state })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;
    use crate::system::{Interface, PathInfo, UserInfo};

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
                Step::AddAddress { interface, address, prefix } => {
                    o.interfaces.get_mut(interface).unwrap().addresses.push((*address, *prefix, false));
                    o.all_addresses.insert(*address);
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
        assert_eq!(plan(&cfg, None, &obs, "root", &mut Picker::new(1)).unwrap_err().to_string(), "interface 'br0' (interface_name/ipv6_interface) does not exist");
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
}
