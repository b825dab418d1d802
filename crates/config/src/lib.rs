//! Reading SlapOS configuration files (`slapos.cfg`, `slapos-client.cfg`).
//!
//! SlapOS reads its files with Python's `configparser`: `[section]` headers,
//! `key = value` or `key: value`, `#`/`;` comment lines, values continued on
//! indented lines (joined with `\n`), option names case-insensitive (lowered),
//! section names case-sensitive. This crate gives the same view, keeps the
//! file's order of sections and options (as Python's ordered `configparser`;
//! `[multimaster/<url>]` sections are ordered), and
//! offers the typed getters every part needs (booleans exactly `true`/`false`
//! in any case, integers) with errors that name the option and the value.
//!
//! The file search order of the `slapos` command lives here too, so that the
//! master, the node and the client commands agree on it.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Errors reading or interpreting a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file does not exist.
    #[error("configuration file {path} does not exist")]
    Missing {
        /// The file looked for.
        path: PathBuf,
    },
    /// The file cannot be read or parsed.
    #[error("cannot read configuration file {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A boolean option that is neither `true` nor `false`.
    #[error("option '{key}' of section [{section}] needs to be \"True\" or \"False\", wrong value: '{value}'")]
    Bool {
        /// The section.
        section: String,
        /// The option.
        key: String,
        /// The value found.
        value: String,
    },
    /// An integer option that does not parse.
    #[error("option '{key}' of section [{section}] must be an integer, wrong value: '{value}'")]
    Int {
        /// The section.
        section: String,
        /// The option.
        key: String,
        /// The value found.
        value: String,
    },
    /// A mandatory option is absent or empty.
    #[error("parameter '{key}' is not defined (section [{section}])")]
    Required {
        /// The section.
        section: String,
        /// The option.
        key: String,
    },
}

/// One `[section]`: option name (lower case) → value, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Section {
    entries: Vec<(String, String)>,
}

impl Section {
    /// The value of `key` (any case); None when absent.
    pub fn get(&self, key: &str) -> Option<&str> {
        let key = key.to_ascii_lowercase();
        self.entries.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }
    /// Sets `key` (lowered) to `value`, in place when present, else at the end.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let key = key.to_ascii_lowercase();
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }
    /// The options in file order, names lowered.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    /// Whether the section has no option.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A parsed configuration file.
#[derive(Debug, Clone, Default)]
pub struct Config {
    path: Option<PathBuf>,
    sections: Vec<(String, Section)>,
}

impl Config {
    /// Reads and parses `path`. A missing file is an error (SlapOS refuses to
    /// start without its configuration).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::Missing { path: path.to_path_buf() });
        }
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read { path: path.to_path_buf(), message: e.to_string() })?;
        let mut config = Config::parse(&text).map_err(|message| ConfigError::Read { path: path.to_path_buf(), message })?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses configuration text (Python `configparser` rules, no interpolation).
    ///
    /// Sections and options keep their file order, as Python's ordered
    /// `configparser` does: the configparser crate's `indexmap` mode stores
    /// them in insertion order. Options before the first `[section]` are
    /// refused, as Python's `MissingSectionHeaderError`.
    pub fn parse(text: &str) -> Result<Config, String> {
        let mut ini = configparser::ini::Ini::new_cs();
        ini.set_multiline(true);
        ini.set_comment_symbols(&['#', ';']);
        // a name no `[header]` can spell, so that options outside any section show
        ini.set_default_section(NO_SECTION);
        let map = ini.read(text.to_string())?;
        if map.contains_key(NO_SECTION) {
            return Err("options before the first [section] header".to_string());
        }
        let sections = map
            .into_iter()
            .map(|(name, values)| {
                let mut section = Section::default();
                for (k, v) in values {
                    section.set(&k, v.unwrap_or_default());
                }
                (name, section)
            })
            .collect();
        Ok(Config { path: None, sections })
    }

    /// The file the configuration was read from (None when parsed from text).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
    /// The section `name` (case-sensitive, as SlapOS).
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }
    /// The section `name`, added at the end when missing.
    pub fn section_mut(&mut self, name: &str) -> &mut Section {
        if let Some(i) = self.sections.iter().position(|(n, _)| n == name) {
            return &mut self.sections[i].1;
        }
        self.sections.push((name.to_string(), Section::default()));
        &mut self.sections.last_mut().unwrap().1
    }
    /// Whether the section `name` exists.
    pub fn has_section(&self, name: &str) -> bool {
        self.section(name).is_some()
    }
    /// The sections in file order.
    pub fn sections(&self) -> impl Iterator<Item = (&str, &Section)> {
        self.sections.iter().map(|(n, s)| (n.as_str(), s))
    }
    /// The raw value of `key` in `section`; an empty value is returned as `Some("")`.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.section(section).and_then(|s| s.get(key))
    }
    /// The value, with empty values treated as absent.
    pub fn get_nonempty(&self, section: &str, key: &str) -> Option<&str> {
        self.get(section, key).map(str::trim).filter(|v| !v.is_empty())
    }
    /// A file name option, non-empty, with a leading `~` expanded as
    /// Python's `os.path.expanduser` does for the client's files.
    pub fn get_path(&self, section: &str, key: &str) -> Option<PathBuf> {
        self.get_nonempty(section, key).map(expand_user)
    }
    /// First section of `sections` that has `key` (e.g. `["slapos", "slapgrid"]`).
    pub fn get_first(&self, sections: &[&str], key: &str) -> Option<&str> {
        sections.iter().find_map(|s| self.get(s, key))
    }
    /// The non-empty value of a mandatory option; the error names it.
    pub fn require(&self, section: &str, key: &str) -> Result<&str, ConfigError> {
        self.get_nonempty(section, key).ok_or_else(|| ConfigError::Required { section: section.to_string(), key: key.to_string() })
    }
    /// A boolean option: exactly `true` or `false`, in any case, as SlapOS.
    pub fn get_bool(&self, section: &str, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(section, key) {
            None => Ok(None),
            Some(v) => parse_bool(v).map(Some).ok_or_else(|| ConfigError::Bool {
                section: section.to_string(),
                key: key.to_string(),
                value: v.to_string(),
            }),
        }
    }
    /// An integer option; the error names the option and the value.
    pub fn get_int(&self, section: &str, key: &str) -> Result<Option<i64>, ConfigError> {
        match self.get_nonempty(section, key) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| ConfigError::Int {
                section: section.to_string(),
                key: key.to_string(),
                value: v.to_string(),
            }),
        }
    }
    /// All options of `section` as a map (later duplicates win).
    pub fn section_map(&self, section: &str) -> BTreeMap<String, String> {
        self.section(section).map(|s| s.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).unwrap_or_default()
    }
}

/// `~` and `~/rest` → under `$HOME` (as `os.path.expanduser`); any other
/// path, or no `$HOME`, is kept as written.
pub fn expand_user(path: &str) -> PathBuf {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty());
    match (path.strip_prefix('~'), home) {
        (Some(""), Some(home)) => PathBuf::from(home),
        (Some(rest), Some(home)) if rest.starts_with('/') => PathBuf::from(home).join(rest.trim_start_matches('/')),
        _ => PathBuf::from(path),
    }
}

/// `true`/`false` in any case, as SlapOS's option checks; anything else is None.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// The section that options before any `[header]` fall in (a name that
/// contains a newline, so that no header line can name it).
const NO_SECTION: &str = "\n(no section)";

/// Default location of the node/master configuration.
pub const DEFAULT_NODE_CONFIG: &str = "/etc/opt/slapos/slapos.cfg";

/// The node and master configuration file, in SlapOS's order: `--cfg`, then
/// `$SLAPOS_CONFIGURATION`, then `/etc/opt/slapos/slapos.cfg`.
pub fn node_config_path(cli: Option<&Path>) -> PathBuf {
    search(cli, std::env::var_os("SLAPOS_CONFIGURATION"), || PathBuf::from(DEFAULT_NODE_CONFIG))
}

/// The client configuration file, in SlapOS's order: `--cfg`, then
/// `$SLAPOS_CLIENT_CONFIGURATION`, then `~/.slapos/slapos-client.cfg`.
pub fn client_config_path(cli: Option<&Path>) -> PathBuf {
    search(cli, std::env::var_os("SLAPOS_CLIENT_CONFIGURATION"), || {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
        home.join(".slapos").join("slapos-client.cfg")
    })
}

/// The search order itself: the command line, then a non-empty environment
/// variable, then the default.
fn search(cli: Option<&Path>, env: Option<OsString>, default: impl FnOnce() -> PathBuf) -> PathBuf {
    match (cli, env) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(p)) if !p.is_empty() => PathBuf::from(p),
        _ => default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# comment
[slapos]
computer_id = COMP-1
Master_URL = http://127.0.0.1:5000
software_root: /opt/slapgrid

[slapformat]
create_tap = false
partition_amount = 3
bad = yes
shared_part_list =
  /a
  /b

[multimaster/https://b]
key = k
[multimaster/http://a]
";

    #[test]
    fn reads_sections_keys_and_continuations() {
        let c = Config::parse(SAMPLE).unwrap();
        assert_eq!(c.get("slapos", "computer_id"), Some("COMP-1"));
        assert_eq!(c.get("slapos", "master_url"), Some("http://127.0.0.1:5000"), "keys are case-insensitive");
        assert_eq!(c.get("slapos", "software_root"), Some("/opt/slapgrid"), "':' separator");
        assert_eq!(c.get("slapformat", "shared_part_list").map(str::trim), Some("/a\n/b"));
        assert_eq!(c.get("slapformat", "missing"), None);
        let names: Vec<&str> = c.sections().map(|(n, _)| n).collect();
        assert_eq!(names, ["slapos", "slapformat", "multimaster/https://b", "multimaster/http://a"]);
    }

    #[test]
    fn options_keep_file_order() {
        let c = Config::parse("[s]\nzeta = 1\nalpha = 2\n  continued\nMid: 3\nkey_b =\n[t]\nb = 1\na = 2\n").unwrap();
        let keys: Vec<&str> = c.section("s").unwrap().iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["zeta", "alpha", "mid", "key_b"], "file order, not sorted, names lowered");
        assert_eq!(c.get("s", "alpha"), Some("2\ncontinued"));
        let keys: Vec<&str> = c.section("t").unwrap().iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["b", "a"]);
    }

    #[test]
    fn options_outside_a_section_are_refused() {
        assert!(Config::parse("computer_id = C\n[slapos]\n").unwrap_err().contains("[section]"));
        assert!(Config::parse("# only a comment\n\n[slapos]\na = 1\n").is_ok());
    }

    #[test]
    fn typed_getters_name_the_option() {
        let c = Config::parse(SAMPLE).unwrap();
        assert_eq!(c.get_bool("slapformat", "create_tap").unwrap(), Some(false));
        let e = c.get_bool("slapformat", "bad").unwrap_err().to_string();
        assert!(e.contains("'bad'") && e.contains("'yes'"), "{e}");
        assert_eq!(c.get_int("slapformat", "partition_amount").unwrap(), Some(3));
        assert!(c.get_int("slapos", "computer_id").is_err());
        assert!(c.require("slapos", "instance_root").unwrap_err().to_string().contains("instance_root"));
    }

    #[test]
    fn missing_file_is_an_error() {
        let e = Config::load(Path::new("/nonexistent/slapos.cfg")).unwrap_err();
        assert!(matches!(e, ConfigError::Missing { .. }));
    }

    #[test]
    fn paths_expand_the_home_directory() {
        let home = std::env::var("HOME").expect("HOME is set");
        assert_eq!(expand_user("~/.slapos/key"), Path::new(&home).join(".slapos/key"));
        assert_eq!(expand_user("~"), PathBuf::from(&home));
        assert_eq!(expand_user("/etc/ca.pem"), PathBuf::from("/etc/ca.pem"));
        assert_eq!(expand_user("~other/x"), PathBuf::from("~other/x"));
        let c = Config::parse("[slapos]\nmaster_ca_file = ~/ca.pem\nempty =\n").unwrap();
        assert_eq!(c.get_path("slapos", "master_ca_file"), Some(Path::new(&home).join("ca.pem")));
        assert_eq!(c.get_path("slapos", "empty"), None);
    }

    #[test]
    fn search_order_is_cli_then_environment_then_default() {
        let default = || PathBuf::from("/default.cfg");
        let env = || Some(OsString::from("/env.cfg"));
        assert_eq!(search(Some(Path::new("/cli.cfg")), env(), default), PathBuf::from("/cli.cfg"), "--cfg wins");
        assert_eq!(search(None, env(), default), PathBuf::from("/env.cfg"), "then the environment");
        assert_eq!(search(None, Some(OsString::new()), default), PathBuf::from("/default.cfg"), "an empty variable is unset");
        assert_eq!(search(None, None, default), PathBuf::from("/default.cfg"));
        // the public functions read their own variables and defaults
        assert_eq!(node_config_path(Some(Path::new("/x.cfg"))), PathBuf::from("/x.cfg"));
        let node = std::env::var_os("SLAPOS_CONFIGURATION").filter(|v| !v.is_empty());
        assert_eq!(node_config_path(None), node.map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_NODE_CONFIG)));
        let client = client_config_path(None);
        match std::env::var_os("SLAPOS_CLIENT_CONFIGURATION").filter(|v| !v.is_empty()) {
            Some(p) => assert_eq!(client, PathBuf::from(p)),
            None => assert!(client.ends_with(".slapos/slapos-client.cfg"), "{}", client.display()),
        }
    }
}
