//! The configuration of `slapos node format` (`node.md` §2.1): `[slapformat]`
//! then `[slapos]` (which wins on a clash), command-line values over both,
//! validated before anything is changed.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use slapos_config::Config;

/// An invalid or missing option, named with its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatConfigError {
    /// A required option (`computer_id`, `master_url`, …) is absent.
    #[error("Parameter '{0}' is not defined.")]
    Missing(&'static str),
    /// A boolean option that is neither `true` nor `false`.
    #[error("Option '{key}' needs to be \"True\" or \"False\", wrong value: '{value}'")]
    Bool {
        /// The option.
        key: &'static str,
        /// The value found.
        value: String,
    },
    /// An option whose value does not parse.
    #[error("option '{key}' must be {what}, wrong value: '{value}'")]
    Invalid {
        /// The option.
        key: &'static str,
        /// What the value should be.
        what: &'static str,
        /// The value found.
        value: String,
    },
    /// An option SlapOS no longer knows (e.g. `bridge_name`).
    #[error("option '{0}' was removed from SlapOS (a bridge is no longer managed by format): remove it from the configuration")]
    Removed(&'static str),
    /// A `key_file`/`cert_file` that does not exist.
    #[error("{key} file {path} does not exist")]
    MissingFile {
        /// The option.
        key: &'static str,
        /// The missing file.
        path: String,
    },
}

/// Command-line values that override the file (`None`: not given).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--computer_xml`: where the state file is written.
    pub computer_xml: Option<PathBuf>,
    /// `--computer_json`: also write the state as JSON here.
    pub computer_json: Option<PathBuf>,
    /// `--alter_user`: create and modify partition users.
    pub alter_user: Option<bool>,
    /// `--alter_network`: change interfaces, addresses and routes.
    pub alter_network: Option<bool>,
    /// `-i`: read partitions and addresses from this definition file.
    pub input_definition_file: Option<PathBuf>,
    /// `-o`: write the computer definition to this file.
    pub output_definition_file: Option<PathBuf>,
    /// `--local`: local mode (no root, loopback addresses, invoking user).
    pub local: bool,
}

/// Everything format needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct FormatConfig {
    /// `[slapos] computer_id`: the computer's reference at the master.
    pub computer_id: String,
    /// `[slapos] master_url`: where the state is reported.
    pub master_url: String,
    /// `[slapos] instance_root`: parent directory of the partitions.
    pub instance_root: PathBuf,
    /// `[slapos] software_root`: where software releases are built.
    pub software_root: PathBuf,
    /// `[slapos] certificate_repository_path`: where the node keeps the
    /// partitions' certificates; created 0700, as SlapOS's format does.
    pub certificate_repository_path: Option<PathBuf>,
    /// `[slapformat] computer_xml`: the state file (`.slapos.xml`).
    pub computer_xml: PathBuf,
    /// `[slapformat] computer_json`: the state also as JSON, if set.
    pub computer_json: Option<PathBuf>,
    /// `[slapformat] partition_amount`: how many partitions the node has.
    pub partition_amount: usize,
    /// `[slapformat] partition_base_name`: partition directory prefix (`slappart`).
    pub partition_base_name: String,
    /// `[slapformat] user_base_name`: partition user prefix (`slapuser`).
    pub user_base_name: String,
    /// `[slapformat] tap_base_name`: tap name prefix (`slaptap`).
    pub tap_base_name: String,
    /// `[slapformat] software_user`: owner of the software releases (`slapsoft`).
    pub software_user: String,
    /// `[slapformat] interface_name`: the interface that gets the partitions' IPv4 and IPv6.
    pub interface_name: Option<String>,
    /// `[slapformat] ipv6_interface`: the interface holding the node's global IPv6, when not `interface_name`.
    pub ipv6_interface: Option<String>,
    /// `[slapformat] ipv4_local_network`: the private IPv4 network partitions get addresses from.
    pub ipv4_local_network: Option<(Ipv4Addr, u8)>,
    /// `[slapformat] partition_has_ipv6_range`: give each partition a routed IPv6 range.
    pub partition_has_ipv6_range: bool,
    /// `[slapformat] ipv6_prefixshift`: bits between the node's prefix and a partition's range.
    pub ipv6_prefixshift: u8,
    /// One tap per partition (`tap_base_name` + index), owned by the
    /// partition user, attached to `interface_name` when it is a bridge.
    pub create_tap: bool,
    /// Give taps an IPv6 range.
    pub tap_ipv6: bool,
    /// Interface whose IPv4 subnet feeds the taps' IPv4 (empty: none).
    pub tap_gateway_interface: String,
    /// One tun per partition (`slaptun` + index).
    pub create_tun: bool,
    /// Give tuns an IPv6 range.
    pub tun_ipv6: bool,
    /// `[slapformat] create_bridge`: create `interface_name` as a bridge
    /// when it does not exist (off by default: an unknown interface is an error).
    pub create_bridge: bool,
    /// `-i`: take partitions and addresses from this definition file.
    pub input_definition_file: Option<PathBuf>,
    /// `-o`: write the computer definition to this file.
    pub output_definition_file: Option<PathBuf>,
    /// `alter_user`: create and modify partition users and groups.
    pub alter_user: bool,
    /// `alter_network`: change interfaces, addresses and routes.
    pub alter_network: bool,
    /// Local mode: partitions owned by the invoking user, loopback
    /// addresses, no user or network change, no root needed.
    pub local: bool,
    /// `[slapformat] root_check`: refuse to run without root (outside local mode).
    pub root_check: bool,
    /// Where local nodes claim their loopback ranges
    /// ([`crate::local_range::default_claims_dir`]).
    pub local_claims_dir: PathBuf,
    /// `[slapos] key_file`: the node's key for the master.
    pub key_file: Option<PathBuf>,
    /// `[slapos] cert_file`: the node's certificate for the master.
    pub cert_file: Option<PathBuf>,
    /// `[slapos] master_ca_file`: the CA the master's HTTPS certificate is
    /// verified against.
    pub master_ca_file: Option<PathBuf>,
}

fn parse_cidr4(value: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = value.trim().split_once('/')?;
    let addr: Ipv4Addr = a.parse().ok()?;
    let prefix: u8 = p.parse().ok().filter(|p| *p <= 32)?;
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    Some((Ipv4Addr::from(u32::from(addr) & mask), prefix))
}

impl FormatConfig {
    /// Reads `[slapos]`/`[slapformat]` of `config` with the command-line `o` on top, validated.
    pub fn from_config(config: &Config, o: &Overrides) -> Result<FormatConfig, FormatConfigError> {
        // [slapos] wins over [slapformat] (SlapOS loads [slapformat] first)
        let get = |key: &str| config.get("slapos", key).or_else(|| config.get("slapformat", key)).map(str::trim);
        let nonempty = |key: &str| get(key).filter(|v| !v.is_empty()).map(str::to_string);
        let required = |key: &'static str| nonempty(key).ok_or(FormatConfigError::Missing(key));
        let boolean = |key: &'static str, default: bool| -> Result<bool, FormatConfigError> {
            match get(key) {
                None => Ok(default),
                Some(v) => slapos_config::parse_bool(v).ok_or(FormatConfigError::Bool { key, value: v.to_string() }),
            }
        };
        for removed in ["bridge_name", "no_bridge"] {
            if get(removed).is_some() {
                return Err(FormatConfigError::Removed(if removed == "bridge_name" { "bridge_name" } else { "no_bridge" }));
            }
        }
        let local = o.local;
        let alter_user = match o.alter_user {
            Some(b) => b,
            None => boolean("alter_user", true)?,
        } && !local;
        let alter_network = match o.alter_network {
            Some(b) => b,
            None => boolean("alter_network", true)?,
        } && !local;
        let computer_id = required("computer_id")?;
        let master_url = required("master_url")?;
        let instance_root = required("instance_root")?;
        let software_root = required("software_root")?;
        let amount_text = required("partition_amount")?;
        let partition_amount = amount_text.parse().map_err(|_| FormatConfigError::Invalid {
            key: "partition_amount",
            what: "a whole number",
            value: amount_text.clone(),
        })?;
        let ipv4_local_network = match nonempty("ipv4_local_network") {
            None => None,
            Some(v) => Some(parse_cidr4(&v).ok_or(FormatConfigError::Invalid {
                key: "ipv4_local_network",
                what: "an IPv4 network like 10.0.0.0/16",
                value: v,
            })?),
        };
        let shift_text = nonempty("ipv6_prefixshift").unwrap_or_else(|| "16".into());
        let ipv6_prefixshift = shift_text.parse().ok().filter(|s: &u8| *s <= 64).ok_or(FormatConfigError::Invalid {
            key: "ipv6_prefixshift",
            what: "a number of bits (0 to 64)",
            value: shift_text.clone(),
        })?;
        let file = |key: &'static str| -> Result<Option<PathBuf>, FormatConfigError> {
            match nonempty(key) {
                None => Ok(None),
                Some(p) if std::path::Path::new(&p).exists() => Ok(Some(PathBuf::from(p))),
                Some(p) => Err(FormatConfigError::MissingFile { key, path: p }),
            }
        };
        let abs = |p: PathBuf| if p.is_absolute() { p } else { std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p) };
        let definition = |over: &Option<PathBuf>, key: &str| over.clone().or_else(|| nonempty(key).map(PathBuf::from));
        let computer_xml = match &o.computer_xml {
            Some(p) => p.clone(),
            None => PathBuf::from(required("computer_xml")?),
        };
        Ok(FormatConfig {
            computer_id,
            master_url,
            instance_root: abs(PathBuf::from(instance_root)),
            software_root: abs(PathBuf::from(software_root)),
            certificate_repository_path: nonempty("certificate_repository_path").map(|p| abs(PathBuf::from(p))),
            computer_xml: abs(computer_xml),
            computer_json: o.computer_json.clone().or_else(|| nonempty("computer_json").map(PathBuf::from)).map(abs),
            partition_amount,
            partition_base_name: nonempty("partition_base_name").unwrap_or_else(|| "slappart".into()),
            user_base_name: nonempty("user_base_name").unwrap_or_else(|| "slapuser".into()),
            tap_base_name: nonempty("tap_base_name").unwrap_or_else(|| "slaptap".into()),
            software_user: nonempty("software_user").unwrap_or_else(|| "slapsoft".into()),
            interface_name: nonempty("interface_name"),
            ipv6_interface: nonempty("ipv6_interface"),
            ipv4_local_network,
            partition_has_ipv6_range: boolean("partition_has_ipv6_range", true)?,
            ipv6_prefixshift,
            create_tap: boolean("create_tap", true)?,
            tap_ipv6: boolean("tap_ipv6", true)?,
            tap_gateway_interface: nonempty("tap_gateway_interface").unwrap_or_default(),
            create_tun: boolean("create_tun", false)?,
            tun_ipv6: boolean("tun_ipv6", true)?,
            create_bridge: boolean("create_bridge", false)?,
            input_definition_file: definition(&o.input_definition_file, "input_definition_file").map(abs),
            output_definition_file: definition(&o.output_definition_file, "output_definition_file").map(abs),
            alter_user,
            alter_network,
            local,
            root_check: boolean("root_check", true)? && !local,
            local_claims_dir: crate::local_range::default_claims_dir(),
            key_file: file("key_file")?,
            cert_file: file("cert_file")?,
            master_ca_file: file("master_ca_file")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Result<FormatConfig, FormatConfigError> {
        let text = format!(
            "[slapos]\ncomputer_id = C\nmaster_url = http://m\ninstance_root = /srv/slapgrid\nsoftware_root = /opt/slapgrid\n[slapformat]\ncomputer_xml = /var/slapos.xml\npartition_amount = 3\ncreate_tap = false\n{extra}"
        );
        FormatConfig::from_config(&Config::parse(&text).unwrap(), &Overrides::default())
    }

    #[test]
    fn defaults_and_validation_name_option_and_value() {
        let c = cfg("").unwrap();
        assert_eq!((c.partition_amount, c.ipv6_prefixshift, c.alter_user, c.partition_has_ipv6_range), (3, 16, true, true));
        assert_eq!(c.user_base_name, "slapuser");
        assert!(!c.create_tap && c.tap_ipv6 && !c.create_tun && c.tun_ipv6 && !c.create_bridge);
        assert!(cfg("").map(|c| c.tap_gateway_interface.is_empty()).unwrap());
        let taps = cfg("create_tun = true\ncreate_bridge = true\ntap_gateway_interface = eth1\n").unwrap();
        assert!(taps.create_tun && taps.create_bridge && taps.tap_gateway_interface == "eth1");
        assert!(cfg("create_bridge = maybe").unwrap_err().to_string().contains("'create_bridge'"));
        assert_eq!(
            cfg("alter_user = yes").unwrap_err().to_string(),
            "Option 'alter_user' needs to be \"True\" or \"False\", wrong value: 'yes'"
        );
        assert!(cfg("ipv4_local_network = 10.0.0.0/33").unwrap_err().to_string().contains("'10.0.0.0/33'"));
        assert!(matches!(cfg("bridge_name = br0"), Err(FormatConfigError::Removed("bridge_name"))));
        assert!(cfg("key_file = /nonexistent/key").unwrap_err().to_string().contains("/nonexistent/key"));
        let e = FormatConfig::from_config(&Config::parse("[slapos]\ncomputer_id = C\n").unwrap(), &Overrides::default()).unwrap_err();
        assert_eq!(e.to_string(), "Parameter 'master_url' is not defined.");
        assert_eq!(cfg("ipv4_local_network = 10.0.3.4/16").unwrap().ipv4_local_network, Some((Ipv4Addr::new(10, 0, 0, 0), 16)));
        let local = FormatConfig::from_config(
            &Config::parse("[slapos]\ncomputer_id = C\nmaster_url = http://m\ninstance_root = i\nsoftware_root = s\ncomputer_xml = x\npartition_amount = 2\n").unwrap(),
            &Overrides { local: true, ..Default::default() },
        )
        .unwrap();
        assert!(!local.alter_user && !local.alter_network && !local.root_check);
        assert!(local.instance_root.is_absolute());
    }
}
