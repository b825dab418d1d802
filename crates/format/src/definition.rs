//! The computer definition file (`-i/--input_definition_file`,
//! `-o/--output_definition_file`, `node.md` §2.8): an INI file with a
//! `[computer]` section (`address = <ip>/<netmask>`, `software_user`) and
//! one `[partition_<n>]` section per partition (`address`: space-separated
//! `addr/netmask` items, `ipv6_range` `addr/len`, `user`,
//! `network_interface` (the tap), `pathname` (the reference), optionally
//! `capability_list`, one per line).
//!
//! Differences from SlapOS, on purpose: `-o` writes the addresses this run
//! chose (SlapOS writes the file before formatting, so a fresh node gets
//! empty `address` lines), a partition without a range gets no `ipv6_range`
//! line (SlapOS crashes), and `-i` with `create_tun` works (SlapOS crashes).

use std::path::Path;

use slapos_config::Config;

use crate::config::FormatConfig;
use crate::state::{ComputerState, LinkState, PartitionState};

/// A definition file that cannot be used; names the file, section and key.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// The file cannot be read or parsed.
    #[error("definition file {path}: {message}")]
    Read {
        /// The definition file.
        path: String,
        /// Why.
        message: String,
    },
    /// A partition section lacks a required key.
    #[error("definition file {path}: [{section}] has no '{key}'")]
    Missing {
        /// The definition file.
        path: String,
        /// The `[partition_N]` section.
        section: String,
        /// The missing key.
        key: &'static str,
    },
    /// A key whose value is malformed.
    #[error("definition file {path}: [{section}] {key} = '{value}' is not {what}")]
    Invalid {
        /// The definition file.
        path: String,
        /// The section.
        section: String,
        /// The key.
        key: &'static str,
        /// The value found.
        value: String,
        /// What the value should be.
        what: &'static str,
    },
}

/// Reads the definition of `cfg.partition_amount` partitions.
pub fn read(path: &Path, cfg: &FormatConfig) -> Result<ComputerState, DefinitionError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| DefinitionError::Read { path: shown.clone(), message: e.to_string() })?;
    parse(&text, &shown, cfg)
}

/// Parses definition text (`shown` names it in errors).
pub fn parse(text: &str, shown: &str, cfg: &FormatConfig) -> Result<ComputerState, DefinitionError> {
    let ini = Config::parse(text).map_err(|message| DefinitionError::Read { path: shown.to_string(), message })?;
    let invalid = |section: &str, key: &'static str, value: &str, what: &'static str| DefinitionError::Invalid {
        path: shown.to_string(),
        section: section.to_string(),
        key,
        value: value.to_string(),
        what,
    };
    let (address, netmask) = match ini.get_nonempty("computer", "address") {
        Some(a) => {
            let (addr, mask) = a.trim().split_once('/').ok_or_else(|| invalid("computer", "address", a, "<ip>/<netmask>"))?;
            (Some(addr.to_string()), Some(mask.to_string()))
        }
        None => (None, None),
    };
    // (SlapOS falls back to `slapsoft`, and its own -o never writes the key,
    // so a -o/-i round trip silently changed the software user: we keep the
    // configured one)
    let software_user =
        ini.get_nonempty("computer", "software_user").map(|u| u.trim().to_string()).unwrap_or_else(|| cfg.software_user.clone());
    let mut partitions = Vec::new();
    for i in 0..cfg.partition_amount {
        let section = format!("partition_{i}");
        let get = |key: &'static str| {
            ini.get(&section, key).map(str::trim).ok_or_else(|| DefinitionError::Missing {
                path: shown.to_string(),
                section: section.clone(),
                key,
            })
        };
        let mut addresses = Vec::new();
        for item in get("address")?.split_whitespace() {
            let (a, m) = item.split_once('/').ok_or_else(|| invalid(&section, "address", item, "a list of <ip>/<netmask>"))?;
            addresses.push((a.to_string(), m.to_string()));
        }
        let ipv6_range = match ini.get_nonempty(&section, "ipv6_range") {
            Some(r) => {
                let bad = || invalid(&section, "ipv6_range", r, "<ipv6>/<prefix length>");
                let (a, l) = r.trim().split_once('/').ok_or_else(bad)?;
                a.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
                Some((a.to_string(), l.parse::<u8>().ok().filter(|l| *l <= 128).ok_or_else(bad)?))
            }
            None => None,
        };
        let reference = get("pathname")?.to_string();
        partitions.push(PartitionState {
            path: cfg.instance_root.join(&reference),
            reference,
            user: get("user")?.to_string(),
            tap: LinkState::named(get("network_interface")?),
            tun: cfg.create_tun.then(|| LinkState::named(format!("slaptun{i}"))),
            addresses,
            ipv6_range,
            capability_list: ini
                .get(&section, "capability_list")
                .map(|c| c.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()),
        });
    }
    Ok(ComputerState {
        reference: cfg.computer_id.clone(),
        address,
        netmask,
        instance_root: cfg.instance_root.clone(),
        software_root: cfg.software_root.clone(),
        software_user,
        interface_name: cfg.interface_name.clone(),
        ipv6_interface: cfg.ipv6_interface.clone(),
        ipv4_local_network: cfg.ipv4_local_network.map(|(a, p)| format!("{a}/{p}")),
        ipv6_prefixshift: cfg.ipv6_prefixshift,
        partition_has_ipv6_range: cfg.partition_has_ipv6_range,
        tap_gateway_interface: cfg.tap_gateway_interface.clone(),
        tap_ipv6: cfg.tap_ipv6,
        partitions,
    })
}

/// The definition of `state`, as Python's `RawConfigParser.write` lays it
/// out (`key = value`, a blank line after each section, continuation lines
/// indented by a tab).
pub fn write(state: &ComputerState) -> String {
    let mut out = String::from("[computer]\n");
    let set = |out: &mut String, key: &str, value: &str| {
        out.push_str(&format!("{key} = {}\n", value.replace('\n', "\n\t")));
    };
    if let (Some(a), Some(m)) = (&state.address, &state.netmask) {
        set(&mut out, "address", &format!("{a}/{m}"));
    }
    out.push('\n');
    for (i, p) in state.partitions.iter().enumerate() {
        out.push_str(&format!("[partition_{i}]\n"));
        let addresses: Vec<String> = p.addresses.iter().map(|(a, m)| format!("{a}/{m}")).collect();
        set(&mut out, "address", &addresses.join(" "));
        if let Some((a, l)) = &p.ipv6_range {
            set(&mut out, "ipv6_range", &format!("{a}/{l}"));
        }
        set(&mut out, "user", &p.user);
        set(&mut out, "network_interface", &p.tap.name);
        set(&mut out, "pathname", &p.reference);
        if let Some(caps) = &p.capability_list {
            set(&mut out, "capability_list", &format!("\n{}", caps.join("\n")));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn cfg(extra: &str) -> FormatConfig {
        let text = format!(
            "[slapos]\ncomputer_id = COMP-1\nmaster_url = http://m\ninstance_root = /srv/slapgrid\nsoftware_root = /opt/slapgrid\n[slapformat]\ncomputer_xml = /var/slapos.xml\npartition_amount = 2\n{extra}"
        );
        FormatConfig::from_config(&Config::parse(&text).unwrap(), &Overrides::default()).unwrap()
    }

    const DEFINITION: &str = "[computer]\naddress = fd00:e2e::1/ffff:ffff:ffff:ffff::\nsoftware_user = soft\n\n\
        [partition_0]\naddress = 10.0.0.2/255.255.255.255 fd00:e2e::2/ffff:ffff:ffff:ffff::\nipv6_range = fd00:e2e:0:0:4001::/80\n\
        user = u0\nnetwork_interface = tap0\npathname = part0\ncapability_list =\n\tkvm\n\tgpu\n\n\
        [partition_1]\naddress = 10.0.0.3/255.255.255.255 fd00:e2e::3/ffff:ffff:ffff:ffff::\nuser = u1\nnetwork_interface = tap1\npathname = part1\n";

    #[test]
    fn reads_slapos_definitions_and_writes_them_back() {
        let st = parse(DEFINITION, "def.cfg", &cfg("")).unwrap();
        assert_eq!(
            (st.address.as_deref(), st.netmask.as_deref(), st.software_user.as_str()),
            (Some("fd00:e2e::1"), Some("ffff:ffff:ffff:ffff::"), "soft")
        );
        let p0 = &st.partitions[0];
        assert_eq!((p0.reference.as_str(), p0.user.as_str(), p0.tap.name.as_str()), ("part0", "u0", "tap0"));
        assert_eq!(p0.path, Path::new("/srv/slapgrid/part0"));
        assert_eq!(p0.addresses[1], ("fd00:e2e::2".to_string(), "ffff:ffff:ffff:ffff::".to_string()));
        assert_eq!(p0.ipv6_range, Some(("fd00:e2e:0:0:4001::".to_string(), 80)));
        assert_eq!(p0.capability_list, Some(vec!["kvm".to_string(), "gpu".to_string()]));
        assert_eq!((st.partitions[1].ipv6_range.clone(), st.partitions[1].tun.clone()), (None, None));
        // written as Python's RawConfigParser does, and read back the same
        let text = write(&st);
        assert!(text.starts_with(
            "[computer]\naddress = fd00:e2e::1/ffff:ffff:ffff:ffff::\n\n[partition_0]\naddress = 10.0.0.2/255.255.255.255 fd00:e2e::2/ffff:ffff:ffff:ffff::\nipv6_range = fd00:e2e:0:0:4001::/80\nuser = u0\nnetwork_interface = tap0\npathname = part0\ncapability_list = \n\tkvm\n\tgpu\n\n[partition_1]\n"
        ), "{text}");
        assert!(text.ends_with("pathname = part1\n\n"), "{text}");
        let mut back = parse(&text, "out.cfg", &cfg("")).unwrap();
        back.software_user = "soft".into(); // not written, as in SlapOS
        assert_eq!(back, st);
        // tuns: named slaptunN, their addresses come from the planner
        assert_eq!(parse(DEFINITION, "d", &cfg("create_tun = true")).unwrap().partitions[1].tun, Some(LinkState::named("slaptun1")));
    }

    #[test]
    fn errors_name_the_file_section_and_key() {
        let e = parse(DEFINITION, "def.cfg", &cfg("partition_amount = 3")).unwrap_err().to_string();
        assert_eq!(e, "definition file def.cfg: [partition_2] has no 'address'");
        let e = parse(&DEFINITION.replace("80\n", "800\n"), "def.cfg", &cfg("")).unwrap_err().to_string();
        assert!(e.contains("[partition_0] ipv6_range = 'fd00:e2e:0:0:4001::/800'"), "{e}");
        let e = parse(&DEFINITION.replace("10.0.0.3/255.255.255.255", "10.0.0.3"), "def.cfg", &cfg("")).unwrap_err().to_string();
        assert!(e.contains("[partition_1] address = '10.0.0.3'"), "{e}");
    }
}
