//! The configuration of the node commands (`node.md` §3): `[slapos]` (or
//! the 0.4 `[slapgrid]`), overridden by the command line.

use std::path::PathBuf;
use std::time::Duration;

use slapos_config::Config;

/// A missing or invalid option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeConfigError {
    /// Mandatory options are missing (their names, comma-separated).
    #[error("Missing mandatory parameters: {0}")]
    Missing(String),
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
    /// Options that contradict each other.
    #[error("{0}")]
    Inconsistent(String),
    /// A file or directory an option names is not there.
    #[error("option '{key}': {path} does not exist")]
    NotFound {
        /// The option that names the file.
        key: &'static str,
        /// The path that does not exist.
        path: String,
    },
}

/// Command-line values that override the file (the 0.4 options too).
#[derive(Debug, Clone, Default)]
pub struct NodeOverrides {
    /// `--computer_id`.
    pub computer_id: Option<String>,
    /// `--master_url`.
    pub master_url: Option<String>,
    /// `--software_root`.
    pub software_root: Option<PathBuf>,
    /// `--instance_root`.
    pub instance_root: Option<PathBuf>,
    /// `--buildout`: the buildout that bootstraps software releases.
    pub buildout: Option<String>,
    /// `--maximum-periodicity`, in seconds.
    pub maximum_periodicity: Option<i64>,
    /// `--promise-timeout`, in seconds.
    pub promise_timeout: Option<u64>,
    /// `--master_ca_file`.
    pub master_ca_file: Option<PathBuf>,
    /// `--key_file` and `--cert_file`: the node's client certificate.
    pub key_file: Option<PathBuf>,
    /// `--cert_file` / `[slapos] cert_file`: the node's certificate for the master (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// `--certificate_repository_path`: where the partitions' certificates
    /// are kept.
    pub certificate_repository_path: Option<PathBuf>,
    /// `--signature_private_key_file`: the key that signs what the node
    /// uploads to the binary cache.
    pub signature_private_key_file: Option<PathBuf>,
    /// `--maximal_delay`: the random sleep before a run, in seconds.
    pub maximal_delay: Option<u64>,
    /// `--supervisord-socket` and `--supervisord-configuration-path`.
    pub supervisord_socket: Option<PathBuf>,
    /// `--supervisord-configuration-path`: accepted as slapgrid does, which ignores it too (a warning names a different path).
    pub supervisord_configuration_path: Option<PathBuf>,
    /// `--partition-timeout`, in seconds (0: none).
    pub partition_timeout: Option<u64>,
}

/// Everything the node commands read from slapos.cfg.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// `[slapos] computer_id`: the computer's reference at the master.
    pub computer_id: String,
    /// `[slapos] master_url`: the master the node obeys.
    pub master_url: String,
    /// `[slapos] software_root`: where software releases are built.
    pub software_root: PathBuf,
    /// `[slapos] instance_root`: parent directory of the partitions.
    pub instance_root: PathBuf,
    /// `[slapos] key_file`: the node's key for the master.
    pub key_file: Option<PathBuf>,
    /// `[slapos] cert_file`: the node's certificate for the master.
    pub cert_file: Option<PathBuf>,
    /// `master_ca_file`: the CA certificates (PEM) that verify the master;
    /// None for the web PKI roots.
    pub master_ca_file: Option<PathBuf>,
    /// `[slapos] certificate_repository_path`: where partitions' certificates are kept.
    pub certificate_repository_path: Option<PathBuf>,
    /// The key that signs what the node uploads to the binary cache
    /// (`[networkcache] signature-private-key-file`, or `[slapos]
    /// signature_private_key_file`): kept for the binary cache, which does
    /// not upload yet.
    pub signature_private_key_file: Option<PathBuf>,
    /// `--supervisord-socket` / `--supervisord-configuration-path` as
    /// given. slapgrid 1.26.1 accepts and ignores them (its supervisord
    /// always uses `<instance_root>/sv.sock` and
    /// `<instance_root>/etc/supervisord.conf`); so does the node, which
    /// warns when they differ from those paths.
    pub supervisord_socket: Option<PathBuf>,
    /// `--supervisord-configuration-path` as given (accepted and ignored, as slapgrid).
    pub supervisord_configuration_path: Option<PathBuf>,
    /// The buildout to bootstrap with (default: `buildout` on PATH).
    pub buildout: String,
    /// Seconds after which an up-to-date partition is reprocessed anyway.
    pub maximum_periodicity: i64,
    /// `[slapos] promise_timeout`: deadline of one promise (20 s).
    pub promise_timeout: Duration,
    /// Timeout of an instance buildout.
    pub partition_timeout: Option<Duration>,
    /// `[slapos] pidfile_software`: lock of `node software`.
    pub pidfile_software: PathBuf,
    /// `[slapos] pidfile_instance`: lock of `node instance`.
    pub pidfile_instance: PathBuf,
    /// `[slapos] pidfile_report`: lock of `node report`.
    pub pidfile_report: PathBuf,
    /// `[slapos] shared_part_list`: newline-separated shared parts directories given to buildout.
    pub shared_part_list: String,
    /// `[slapos] build_time_part_list`: shared parts usable only while building.
    pub build_time_part_list: String,
    /// `[slapos] instance_storage_home`: extra storage given to partitions (empty: none).
    pub instance_storage_home: String,
    /// `[slapos] ipv4_global_network`: the global IPv4 network given to instances (empty: none).
    pub ipv4_global_network: String,
    /// `[slapos] root_check`: refuse to run without root.
    pub root_check: bool,
    /// `maximal_delay`: a random sleep of 1..N seconds before a run
    /// (skipped with `--now`); 0 by default.
    pub maximal_delay: u64,
    /// Free space needed (bytes) before building a software release and
    /// before an instance buildout (`software_min_free_space`,
    /// `instance_min_free_space`, default `1000M`).
    pub software_min_free_space: u64,
    /// `instance_min_free_space`, in bytes.
    pub instance_min_free_space: u64,
    /// `[networkcache]`: the binary cache of software releases, if any.
    pub networkcache: Option<crate::networkcache::Options>,
    /// `[slapos] certificate_renewal_days`: how long before its end a
    /// certificate of the node or of a partition is renewed (None: a third
    /// of its lifetime, at most 30 days; [`crate::certificate`]).
    pub certificate_renewal: Option<Duration>,
    /// `[slapos] manager_list`: the managers run (`prerm`, `portredir`).
    pub managers: crate::manager::Managers,
}

/// slapos.human's `human2bytes`: `1000M`, `1 G`, `2Gi`, `512k`, `10 MB`,
/// `42` (bytes); powers of 1024.
pub fn human_to_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let power = match unit.trim_end_matches("ib").trim_end_matches('i').trim_end_matches('b') {
        "" => 0,
        "k" | "kilo" => 1,
        "m" | "mega" => 2,
        "g" | "giga" => 3,
        "t" | "tera" => 4,
        "p" | "peta" => 5,
        _ => return None,
    };
    Some((num * 1024f64.powi(power)) as u64)
}

impl NodeConfig {
    /// Reads `[slapos]` (else the 0.4 `[slapgrid]`) of `config` with the command-line `o` on top, validated.
    pub fn from_config(config: &Config, o: &NodeOverrides) -> Result<NodeConfig, NodeConfigError> {
        // [slapos], else the 0.4 [slapgrid] section
        let get = |key: &str| config.get_first(&["slapos", "slapgrid"], key).map(str::trim).filter(|v| !v.is_empty());
        let text = |key: &str| get(key).map(str::to_string);
        let mut missing = Vec::new();
        let mut need = |value: Option<String>, key: &str| {
            if value.is_none() {
                missing.push(key.to_string());
            }
            value.unwrap_or_default()
        };
        let computer_id = need(o.computer_id.clone().or_else(|| text("computer_id")), "computer_id");
        let master_url = need(o.master_url.clone().or_else(|| text("master_url")), "master_url");
        let software_root =
            need(o.software_root.as_ref().map(|p| p.display().to_string()).or_else(|| text("software_root")), "software_root");
        let instance_root =
            need(o.instance_root.as_ref().map(|p| p.display().to_string()).or_else(|| text("instance_root")), "instance_root");
        if !missing.is_empty() {
            return Err(NodeConfigError::Missing(missing.join(", ")));
        }
        let int = |key: &'static str| -> Result<Option<i64>, NodeConfigError> {
            match get(key) {
                None => Ok(None),
                Some(v) => v.parse().map(Some).map_err(|_| NodeConfigError::Invalid { key, what: "a whole number", value: v.into() }),
            }
        };
        let size = |key: &'static str| -> Result<u64, NodeConfigError> {
            match get(key) {
                None => Ok(1000 * 1024 * 1024),
                Some(v) => human_to_bytes(v).ok_or(NodeConfigError::Invalid { key, what: "a size such as 1000M or 2G", value: v.into() }),
            }
        };
        let path = |over: &Option<PathBuf>, key: &str| over.clone().or_else(|| text(key).map(PathBuf::from));
        let key_file = path(&o.key_file, "key_file");
        let cert_file = path(&o.cert_file, "cert_file");
        if key_file.is_some() != cert_file.is_some() {
            return Err(NodeConfigError::Inconsistent("key_file and cert_file go together: set both or neither".into()));
        }
        let file_timeout = int("partition_timeout")?.or(int("partition-timeout")?);
        let partition_timeout = match o.partition_timeout.map(|t| t as i64).or(file_timeout) {
            Some(s) if s > 0 => Some(Duration::from_secs(s as u64)),
            _ => None,
        };
        let root_check = match get("root_check") {
            None => true,
            Some(v) => slapos_config::parse_bool(v).ok_or(NodeConfigError::Invalid {
                key: "root_check",
                what: "True or False",
                value: v.into(),
            })?,
        };
        let pid =
            |key: &str, default: &str| text(key).or_else(|| text("pidfile")).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(default));
        Ok(NodeConfig {
            computer_id,
            master_url,
            software_root: PathBuf::from(software_root),
            instance_root: PathBuf::from(instance_root),
            key_file,
            cert_file,
            master_ca_file: o.master_ca_file.clone().or_else(|| text("master_ca_file").map(PathBuf::from)),
            certificate_repository_path: path(&o.certificate_repository_path, "certificate_repository_path"),
            signature_private_key_file: o.signature_private_key_file.clone().or_else(|| {
                let cache = |k: &str| config.get("networkcache", k).map(str::trim).filter(|v| !v.is_empty());
                cache("signature-private-key-file")
                    .or_else(|| cache("signature_private_key_file"))
                    .or_else(|| get("signature_private_key_file"))
                    .map(PathBuf::from)
            }),
            supervisord_socket: o.supervisord_socket.clone(),
            supervisord_configuration_path: o.supervisord_configuration_path.clone(),
            buildout: o.buildout.clone().or_else(|| text("buildout")).unwrap_or_else(|| "buildout".into()),
            maximum_periodicity: o.maximum_periodicity.or(int("maximum_periodicity")?).unwrap_or(86400),
            // SlapOS ignores the file here (its command-line default always
            // wins); we honour it
            promise_timeout: Duration::from_secs(
                o.promise_timeout.or(int("promise_timeout")?.filter(|t| *t > 0).map(|t| t as u64)).unwrap_or(20),
            ),
            partition_timeout,
            pidfile_software: pid("pidfile_software", "/opt/slapos/slapgrid-sr.pid"),
            pidfile_instance: pid("pidfile_instance", "/opt/slapos/slapgrid-cp.pid"),
            pidfile_report: pid("pidfile_report", "/opt/slapos/slapgrid-ur.pid"),
            shared_part_list: text("shared_part_list").unwrap_or_default(),
            build_time_part_list: text("build_time_part_list").unwrap_or_default(),
            instance_storage_home: text("instance_storage_home").unwrap_or_default(),
            ipv4_global_network: text("ipv4_global_network").unwrap_or_default(),
            root_check,
            maximal_delay: match o.maximal_delay {
                Some(d) => d,
                None => int("maximal_delay")?.filter(|d| *d > 0).unwrap_or(0) as u64,
            },
            software_min_free_space: size("software_min_free_space")?,
            instance_min_free_space: size("instance_min_free_space")?,
            networkcache: crate::networkcache::Options::from_config(config),
            certificate_renewal: int("certificate_renewal_days")?.filter(|d| *d > 0).map(|d| Duration::from_secs(d as u64 * 24 * 3600)),
            managers: crate::manager::Managers::parse(get("manager_list").unwrap_or_default()).map_err(|e| NodeConfigError::Invalid {
                key: "manager_list",
                what: "a list of slapos.core managers (prerm, portredir)",
                value: e.0,
            })?,
        })
    }
}

impl NodeConfig {
    /// slapgrid's `check_missing_files`, before anything runs: the
    /// signature key must be a file and `certificate_repository_path` a
    /// directory. (The TLS files are checked when the master client is
    /// built, with an error naming the file.)
    pub fn check_files(&self) -> Result<(), NodeConfigError> {
        if let Some(f) = &self.signature_private_key_file {
            if !f.is_file() {
                return Err(NodeConfigError::NotFound { key: "signature_private_key_file", path: f.display().to_string() });
            }
        }
        if let Some(d) = &self.certificate_repository_path {
            if !d.is_dir() {
                return Err(NodeConfigError::NotFound { key: "certificate_repository_path", path: d.display().to_string() });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slapos_section_then_the_0_4_slapgrid_section_then_the_command_line() {
        let c = Config::parse(
            "[slapgrid]\ncomputer_id = OLD\nmaster_url = http://m\nsoftware_root = /opt/slapgrid\ninstance_root = /srv/slapgrid\n",
        )
        .unwrap();
        let n = NodeConfig::from_config(&c, &NodeOverrides::default()).unwrap();
        assert_eq!(n.computer_id, "OLD");
        assert_eq!((n.maximum_periodicity, n.promise_timeout, n.buildout.as_str()), (86400, Duration::from_secs(20), "buildout"));
        assert_eq!(n.pidfile_instance, PathBuf::from("/opt/slapos/slapgrid-cp.pid"));
        assert_eq!(n.master_ca_file, None);
        let o = NodeOverrides { computer_id: Some("CLI".into()), instance_root: Some("/tmp/i".into()), ..Default::default() };
        let n = NodeConfig::from_config(&c, &o).unwrap();
        assert_eq!((n.computer_id.as_str(), n.instance_root.to_str().unwrap()), ("CLI", "/tmp/i"));
    }

    #[test]
    fn master_ca_file_from_the_file_or_the_command_line() {
        let c = Config::parse("[slapos]\ncomputer_id = C\nmaster_url = https://m\nsoftware_root = s\ninstance_root = i\nmaster_ca_file = /etc/opt/slapos/ssl/master-ca.pem\n").unwrap();
        let n = NodeConfig::from_config(&c, &NodeOverrides::default()).unwrap();
        assert_eq!(n.master_ca_file, Some(PathBuf::from("/etc/opt/slapos/ssl/master-ca.pem")));
        let o = NodeOverrides { master_ca_file: Some("/cli/ca.pem".into()), ..Default::default() };
        assert_eq!(NodeConfig::from_config(&c, &o).unwrap().master_ca_file, Some(PathBuf::from("/cli/ca.pem")));
    }

    #[test]
    fn sizes_are_read_like_slapos_human2bytes() {
        assert_eq!(human_to_bytes("1000M"), Some(1000 * 1024 * 1024));
        assert_eq!(human_to_bytes("1 K"), Some(1024));
        assert_eq!(human_to_bytes("1 Gi"), Some(1 << 30));
        assert_eq!(human_to_bytes("10 MB"), Some(10 << 20));
        assert_eq!(human_to_bytes("0"), Some(0));
        assert_eq!(human_to_bytes("lots"), None);
        let c = Config::parse(
            "[slapos]\ncomputer_id = C\nmaster_url = m\nsoftware_root = s\ninstance_root = i\ninstance_min_free_space = 2G\n",
        )
        .unwrap();
        let n = NodeConfig::from_config(&c, &NodeOverrides::default()).unwrap();
        assert_eq!((n.software_min_free_space, n.instance_min_free_space), (1000 << 20, 2 << 30));
    }

    #[test]
    fn errors_name_what_is_missing_or_wrong() {
        let c = Config::parse("[slapos]\ncomputer_id = C\n").unwrap();
        assert_eq!(
            NodeConfig::from_config(&c, &NodeOverrides::default()).unwrap_err().to_string(),
            "Missing mandatory parameters: master_url, software_root, instance_root"
        );
        let c =
            Config::parse("[slapos]\ncomputer_id = C\nmaster_url = m\nsoftware_root = s\ninstance_root = i\nmaximum_periodicity = often\n")
                .unwrap();
        assert!(NodeConfig::from_config(&c, &NodeOverrides::default()).unwrap_err().to_string().contains("'often'"));
        let c = Config::parse("[slapos]\ncomputer_id = C\nmaster_url = m\nsoftware_root = s\ninstance_root = i\nkey_file = k\n").unwrap();
        assert!(matches!(NodeConfig::from_config(&c, &NodeOverrides::default()), Err(NodeConfigError::Inconsistent(_))));
    }

    const BASE: &str = "[slapos]\ncomputer_id = C\nmaster_url = https://m\nsoftware_root = s\ninstance_root = i\n";

    #[test]
    fn every_slapgrid_option_reaches_the_configuration() {
        let file = format!(
            "{BASE}key_file = /f/key\ncert_file = /f/cert\ncertificate_repository_path = /f/repo\nmaximal_delay = 30\n\
             [networkcache]\nsignature-private-key-file = /f/sign.key\n"
        );
        let c = Config::parse(&file).unwrap();
        let n = NodeConfig::from_config(&c, &NodeOverrides::default()).unwrap();
        assert_eq!((n.key_file.as_deref(), n.cert_file.as_deref()), (Some("/f/key".as_ref()), Some("/f/cert".as_ref())));
        assert_eq!(n.certificate_repository_path, Some("/f/repo".into()));
        assert_eq!(n.signature_private_key_file, Some("/f/sign.key".into()));
        assert_eq!(n.maximal_delay, 30);
        assert_eq!((n.supervisord_socket.as_ref(), n.supervisord_configuration_path.as_ref()), (None, None));
        let o = NodeOverrides {
            key_file: Some("/cli/key".into()),
            cert_file: Some("/cli/cert".into()),
            certificate_repository_path: Some("/cli/repo".into()),
            signature_private_key_file: Some("/cli/sign.key".into()),
            maximal_delay: Some(0),
            supervisord_socket: Some("/cli/sv.sock".into()),
            supervisord_configuration_path: Some("/cli/sv.conf".into()),
            ..Default::default()
        };
        let n = NodeConfig::from_config(&c, &o).unwrap();
        assert_eq!((n.key_file, n.cert_file), (Some("/cli/key".into()), Some("/cli/cert".into())));
        assert_eq!(n.certificate_repository_path, Some("/cli/repo".into()));
        assert_eq!(n.signature_private_key_file, Some("/cli/sign.key".into()));
        assert_eq!(n.maximal_delay, 0, "--maximal_delay 0 turns the file's delay off");
        assert_eq!(n.supervisord_socket, Some("/cli/sv.sock".into()));
        assert_eq!(n.supervisord_configuration_path, Some("/cli/sv.conf".into()));
    }

    #[test]
    fn the_signature_key_is_read_where_slapgrid_reads_it() {
        let c = Config::parse(&format!("{BASE}signature_private_key_file = /slapos.key\n")).unwrap();
        let n = NodeConfig::from_config(&c, &NodeOverrides::default()).unwrap();
        assert_eq!(n.signature_private_key_file, Some("/slapos.key".into()));
        let c = Config::parse(&format!(
            "{BASE}signature_private_key_file = /slapos.key\n[networkcache]\nsignature_private_key_file = /cache.key\n"
        ))
        .unwrap();
        let n = NodeConfig::from_config(&c, &NodeOverrides::default()).unwrap();
        assert_eq!(n.signature_private_key_file, Some("/cache.key".into()), "[networkcache] first, as merged_options");
    }

    #[test]
    fn a_key_file_from_the_command_line_needs_its_certificate() {
        let c = Config::parse(BASE).unwrap();
        let o = NodeOverrides { key_file: Some("/k".into()), ..Default::default() };
        assert!(matches!(NodeConfig::from_config(&c, &o), Err(NodeConfigError::Inconsistent(_))));
    }

    #[test]
    fn missing_files_are_named_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::parse(BASE).unwrap();
        let mut n = NodeConfig::from_config(&c, &NodeOverrides::default()).unwrap();
        assert_eq!(n.check_files(), Ok(()));
        n.signature_private_key_file = Some(dir.path().join("nokey"));
        let e = n.check_files().unwrap_err().to_string();
        assert!(e.contains("signature_private_key_file") && e.contains("nokey"), "{e}");
        n.signature_private_key_file = None;
        n.certificate_repository_path = Some(dir.path().join("norepo"));
        assert!(n.check_files().unwrap_err().to_string().contains("norepo"));
        n.certificate_repository_path = Some(dir.path().to_path_buf());
        assert_eq!(n.check_files(), Ok(()));
    }
}
