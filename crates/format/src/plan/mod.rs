//! The planner: configuration + previous state + observed system → the
//! steps to take and the new state. Pure: no system access, so it is tested
//! without root, and a dry run is just printing it.
//!
//! [`plan`] runs its phases in order, one module each: `allocation` (the
//! computer, new partitions, their addresses), `links` (the taps' and tuns'
//! addresses), then the steps of `users`, `directories`, `network` and
//! `resources`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use crate::addressing::AddressingError;
use crate::config::FormatConfig;
use crate::state::ComputerState;
use crate::system::Observed;

mod allocation;
mod directories;
mod links;
mod network;
mod resources;
mod users;

/// The kind of a tun/tap device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TunTapMode {
    /// A tap (ethernet frames; bridged for VMs).
    Tap,
    /// A tun (IP packets; routed).
    Tun,
}

/// One change to the system.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Create the group of a partition user (or of the software user).
    CreateGroup {
        /// The group's name (a partition user's, e.g. `slapuser0`, or the software user's).
        name: String,
    },
    /// Create a user (`useradd`) with its home, primary group and supplementary groups.
    CreateUser {
        /// The user.
        name: String,
        /// Its home directory.
        home: PathBuf,
        /// Its primary group.
        group: String,
        /// Its supplementary groups.
        groups: Vec<String>,
    },
    /// Bring an existing user's home and groups in line (`usermod`).
    ModifyUser {
        /// The user.
        name: String,
        /// Its home directory.
        home: PathBuf,
        /// Its primary group.
        group: String,
        /// Its supplementary groups.
        groups: Vec<String>,
    },
    /// Lock a user's password (`passwd -l`): partition users never log in with one.
    LockPassword {
        /// A user format just created: the software user or a partition user (`slapuser0` …).
        name: String,
    },
    /// Create a directory with a mode.
    CreateDirectory {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Change a path's permission bits.
    SetMode {
        /// The path.
        path: PathBuf,
        /// The new permission bits.
        mode: u32,
    },
    /// Give a path to a user (and that user's group).
    SetOwner {
        /// The path.
        path: PathBuf,
        /// The new owner.
        user: String,
    },
    /// Set a kernel parameter (`/proc/sys`).
    Sysctl {
        /// The parameter, dotted (`net.ipv6.conf.all.forwarding`).
        key: String,
        /// Its value.
        value: String,
    },
    /// `interface_name` as a new bridge (`create_bridge`).
    CreateBridge {
        /// The bridge's name.
        name: String,
    },
    /// A persistent tun/tap owned by `user` (root when that user does not exist).
    CreateTunTap {
        /// The device's name.
        name: String,
        /// Tap or tun.
        mode: TunTapMode,
        /// The owning user.
        user: String,
    },
    /// Attach an interface to a bridge.
    SetMaster {
        /// The attached interface (a tap).
        interface: String,
        /// The bridge.
        master: String,
    },
    /// Bring an interface up.
    SetUp {
        /// The interface.
        interface: String,
    },
    /// Add an address to an interface.
    AddAddress {
        /// The interface.
        interface: String,
        /// The address.
        address: IpAddr,
        /// Its prefix length.
        prefix: u8,
        /// Add no prefix route (`noprefixroute`): the partition's address only.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        noprefixroute: bool,
    },
    /// Add a route in the main table.
    AddRoute {
        /// The destination network.
        destination: IpAddr,
        /// Its prefix length.
        prefix: u8,
        /// The outgoing interface.
        interface: String,
        /// The gateway, if any.
        via: Option<IpAddr>,
    },
    /// Route a partition's IPv6 range locally (`ip -6 route add local … dev lo`).
    AddLocalRoute {
        /// The range.
        network: Ipv6Addr,
        /// Its prefix length.
        prefix: u8,
    },
    /// Write a partition's `.slapos-resource` file (its taps, tuns and addresses).
    WriteResource {
        /// The file.
        path: PathBuf,
    },
    /// Local mode: record in `dir` that `state_file` uses the loopback
    /// range `network`/24.
    ClaimLocalRange {
        /// The range's network address (127.X.Y.0).
        network: Ipv4Addr,
        /// The claims directory shared by the local nodes of this machine.
        dir: PathBuf,
        /// This node's state file, which the claim names.
        state_file: PathBuf,
    },
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
            Step::SetMaster { interface, .. }
            | Step::SetUp { interface }
            | Step::AddAddress { interface, .. }
            | Step::AddRoute { interface, .. } => Some(interface),
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
            Step::ClaimLocalRange { network, dir, .. } => write!(f, "claim {network}/24 in {}", dir.display()),
        }
    }
}

/// What to do, and the state it leads to.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The changes, in the order they are applied.
    pub steps: Vec<Step>,
    /// The computer state once the steps are applied (what the state file will hold).
    pub state: ComputerState,
    /// Things format notices but does not change (a tap with another owner).
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
/// Why a plan cannot be made; each names the option or partition at fault.
pub enum PlanError {
    /// Fewer partitions configured than already formatted.
    #[error("partition_amount {wanted} is smaller than the {existing} partitions already formatted: partitions are never removed")]
    FewerPartitions {
        /// `partition_amount`.
        wanted: usize,
        /// Partitions in the state file.
        existing: usize,
    },
    /// `interface_name` or `ipv6_interface` does not exist.
    #[error("interface '{0}' (interface_name/ipv6_interface) does not exist")]
    NoInterface(String),
    /// `interface_name` does not exist and `create_bridge` is off.
    #[error("interface '{0}' (interface_name) does not exist; set [slapformat] create_bridge = true to let format create it as a bridge")]
    NoBridge(String),
    /// The interface has no global IPv6 address.
    #[error("interface '{0}' must have at least one global IPv6 address")]
    NoIpv6(String),
    /// A bridge to create would have no IPv6 and no `ipv6_interface` gives one.
    #[error("interface '{0}' would be a new bridge without IPv6 (create_bridge): set ipv6_interface to the interface that holds the node's global IPv6")]
    NewBridgeHasNoIpv6(String),
    /// Local mode: every loopback range 127.X.Y.0/24 is taken.
    #[error("no free loopback range 127.X.Y.0/24 for this local node: every one is in use")]
    NoLocalRange,
    /// Local mode: more partitions than one loopback /24 holds.
    #[error("a local node holds at most 254 partitions (one loopback /24); {0} asked")]
    TooManyLocalPartitions(usize),
    /// `ipv4_local_network` is exhausted.
    #[error("no free IPv4 address left in ipv4_local_network {0}")]
    NoIpv4(String),
    /// A partition's address is already on another interface.
    #[error("address {address} for partition {partition} is already used on another interface")]
    Collision {
        /// The address.
        address: IpAddr,
        /// The partition.
        partition: String,
    },
    /// SlapOS's random fallback found no free address.
    #[error("no free address for {what} of partition {partition} after 10 random tries (the computed one, {address}, is taken)")]
    AddressGeneration {
        /// Which address (IPv6, range, tap …).
        what: &'static str,
        /// The partition.
        partition: String,
        /// The computed address, taken.
        address: String,
    },
    /// `tap_gateway_interface` is missing or has no IPv4.
    #[error("tap_gateway_interface '{0}' does not exist or has no IPv4 address")]
    TapGateway(String),
    /// The tap gateway's IPv4 subnet cannot hold one address per tap.
    #[error("could not create {wanted} tap interfaces from address {address}/{prefix} (tap_gateway_interface): its subnet is too small")]
    TapGatewayTooSmall {
        /// Taps to address.
        wanted: usize,
        /// The gateway's address.
        address: Ipv4Addr,
        /// Its prefix length.
        prefix: u8,
    },
    /// A partition's tap or tun name is taken by another kind of interface.
    #[error("'{0}' exists and is not a tun/tap interface: cannot use it as a partition's tap or tun")]
    NotTunTap(String),
    /// The state file holds a value that does not parse.
    #[error("stored {what} '{value}' of partition {partition} is not valid")]
    BadStored {
        /// Which value.
        what: &'static str,
        /// The value.
        value: String,
        /// The partition.
        partition: String,
    },
    /// Address derivation failed.
    #[error(transparent)]
    Addressing(#[from] AddressingError),
}

/// A deterministic pseudo-random sequence (the caller seeds it), so that the
/// planner stays a pure function.
pub struct Picker(u64);

impl Picker {
    /// A sequence seeded with `seed` (made odd: xorshift never leaves 0).
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

/// What every phase reads: the options, the observed system, and what
/// allocation found out about the node's interfaces.
struct Context<'a> {
    cfg: &'a FormatConfig,
    obs: &'a Observed,
    /// Whether format changes the network (`alter_network`, not `--local`).
    network: bool,
    /// The interface with the node's IPv6: `ipv6_interface`, else `interface_name`.
    ipv6_iface: Option<String>,
    /// `interface_name`, when it is to be created as a bridge (`create_bridge`).
    new_bridge: Option<String>,
    /// `interface_name`, when it is (or will be) a bridge: taps join it.
    bridge: Option<String>,
    /// The node's base IPv6 and prefix, from which partitions' derive.
    base: Option<(Ipv6Addr, u8)>,
    /// Local mode: the loopback /24 of the partitions' addresses.
    local_net: Option<Ipv4Addr>,
}

impl Context<'_> {
    /// Whether `ip` is already on the interface `iface`.
    fn on(&self, iface: &str, ip: IpAddr) -> bool {
        self.obs.interfaces.get(iface).is_some_and(|i| i.addresses.iter().any(|(a, _, _)| *a == ip))
    }
}

/// Computes the plan, phase by phase: allocation (the computer, its new
/// partitions and their addresses), the taps' and tuns' addresses, then the
/// steps for users, directories, the network and the resource files.
pub fn plan(
    cfg: &FormatConfig,
    previous: Option<&ComputerState>,
    obs: &Observed,
    invoking_user: &str,
    picker: &mut Picker,
) -> Result<Plan, PlanError> {
    let ctx = allocation::context(cfg, previous, obs)?;
    let mut state = allocation::computer(&ctx, previous, invoking_user);
    let mut taken = allocation::taken(obs, &state);
    allocation::new_partitions(&ctx, &mut state, &mut taken, invoking_user, picker)?;
    if ctx.network {
        links::address(&ctx, &mut state, &mut taken, picker)?;
    }
    let mut steps = users::steps(cfg, obs, &state);
    steps.extend(directories::steps(cfg, obs, &state));
    let mut warnings = Vec::new();
    if ctx.network {
        network::steps(&ctx, &state, &mut steps, &mut warnings)?;
    }
    steps.extend(resources::steps(obs, &state));
    if let Some(network) = ctx.local_net.filter(|n| obs.local_claims.get(n) != Some(&cfg.computer_xml)) {
        steps.push(Step::ClaimLocalRange { network, dir: cfg.local_claims_dir.clone(), state_file: cfg.computer_xml.clone() });
    }
    Ok(Plan { steps, state, warnings })
}

#[cfg(test)]
mod tests;
