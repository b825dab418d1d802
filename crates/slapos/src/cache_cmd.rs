//! `slapos cache lookup …` (also SlapOS's spelling `slapos cachelookup …`):
//! what the binary cache holds for a software release, a URL or a Python
//! package, and whether this node would use it, from the node's
//! `slapos.cfg` `[networkcache]`.

use slapos_config::{node_config_path, Config};
use slapos_grid::networkcache::{self, md5_hex, Client, Machine, Options};

use crate::Global;

/// `slapos cache …`.
#[derive(Debug, clap::Subcommand)]
pub enum CacheCommand {
    /// Query the binary cache (as `slapos cachelookup`).
    #[command(subcommand)]
    Lookup(LookupCommand),
}

/// What to look up.
#[derive(Debug, clap::Subcommand)]
pub enum LookupCommand {
    /// A software release (its URL or the md5 of it): the entries of the
    /// binary cache, and whether this node would install from each.
    BinarySr {
        /// The software release URL, or its md5.
        software_url: String,
    },
    /// A source URL in the download cache (`file-urlmd5:` key).
    Url {
        /// The URL.
        url: String,
    },
    /// A Python package in the download cache (`pypi:NAME=VERSION` key).
    Pypi {
        /// The package name.
        name: String,
        /// Its version.
        #[arg(value_name = "VERSION")]
        package_version: String,
    },
}

/// Runs a lookup; exit 0 when the cache answered (even with no entry,
/// as SlapOS), 1 when it did not.
pub fn run(cmd: LookupCommand, global: &Global) -> anyhow::Result<u8> {
    let path = node_config_path(global.cfg.as_deref());
    let config = Config::load(&path)?;
    let o = Options::from_config(&config).unwrap_or_default();
    match cmd {
        LookupCommand::BinarySr { software_url } => binary_sr(&o, &software_url),
        LookupCommand::Url { url } => generic(&config, &o, &format!("file-urlmd5:{}", md5_hex(&url)), "url"),
        LookupCommand::Pypi { name, package_version } => generic(&config, &o, &format!("pypi:{name}={package_version}"), "basename"),
    }
}

fn binary_sr(o: &Options, software_url: &str) -> anyhow::Result<u8> {
    let looks_md5 = software_url.len() == 32 && software_url.bytes().all(|b| b.is_ascii_hexdigit());
    let key = if looks_md5 { software_url.to_lowercase() } else { md5_hex(software_url) };
    let dir_url = o.download_dir_url.as_deref().ok_or_else(|| anyhow::anyhow!("[networkcache] download-binary-dir-url is not set"))?;
    let client = Client::new(o).map_err(anyhow::Error::msg)?;
    let entries = match client.select(dir_url, &key) {
        Ok(Some(entries)) => entries,
        Ok(None) => {
            tracing::info!("Software release not found in binary cache: {software_url}");
            return Ok(1);
        }
        Err(e) => {
            tracing::error!("Problem occurred while connecting to shacache: {e}");
            return Ok(1);
        }
    };
    let blacklisted = if looks_md5 { None } else { networkcache::matching(&o.download_blacklist, software_url) };
    if let Some(b) = blacklisted {
        outln!("this node never downloads {software_url}: download-from-binary-cache-url-blacklist has {b}");
    }
    if !looks_md5 {
        if let Some(f) = networkcache::matching(&o.force_list, software_url) {
            outln!("this node only installs {software_url} from the cache: download-from-binary-cache-force-url-list has {f}");
        }
    }
    if entries.is_empty() {
        outln!("Object found in cache, but has no binary entries.");
        return Ok(0);
    }
    let here = Machine::this();
    let verdicts: Vec<_> = entries.iter().map(|e| networkcache::examine(e, &o.signature_certificates, &here)).collect();
    let url = verdicts.iter().map(|v| v.software_url.as_str()).find(|u| !u.is_empty()).unwrap_or(software_url);
    outln!("Software URL: {url}");
    outln!("MD5:          {key}");
    outln!("This machine: {} {}", here.multiarch, here.os.join(" "));
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::ASCII_BORDERS_ONLY_CONDENSED);
    table.set_header(["multiarch", "distribution", "version", "id", "compatible?", "verified?", "used? why not"]);
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut first = None;
    for (i, v) in verdicts.iter().enumerate() {
        let why_not = blacklisted.map(|b| format!("the URL is blacklisted ({b})")).or_else(|| v.why_not.clone());
        let used = match (why_not, first) {
            (Some(w), _) => format!("no: {w}"),
            (None, Some(f)) => format!("usable, but entry {f} comes first"),
            (None, None) => {
                first = Some(i);
                "yes".to_string()
            }
        };
        table.add_row([&v.multiarch, &v.os[0], &v.os[1], &v.os[2], yes(v.compatible), yes(v.signed), &used]);
    }
    outln!("{table}");
    Ok(0)
}

/// `url` and `pypi` lookups, in the download cache (`download-dir-url`).
fn generic(config: &Config, o: &Options, key: &str, name_field: &str) -> anyhow::Result<u8> {
    let dir_url = config
        .get_nonempty("networkcache", "download-dir-url")
        .ok_or_else(|| anyhow::anyhow!("[networkcache] download-dir-url is not set"))?
        .trim()
        .to_string();
    let client = Client::new(o).map_err(anyhow::Error::msg)?;
    let entries = match client.select(&dir_url, key) {
        Ok(Some(entries)) => entries,
        Ok(None) => {
            tracing::info!("Object not found in cache.");
            return Ok(1);
        }
        Err(e) => {
            tracing::error!("Problem to connect to shacache: {e}");
            return Ok(1);
        }
    };
    outln!("SHADIR URL: {}/{key}", dir_url.trim_end_matches('/'));
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::ASCII_BORDERS_ONLY_CONDENSED);
    table.set_header([name_field, "sha512", "signed"]);
    for e in &entries {
        let (name, sum, signed) = match e {
            Ok((doc, sig)) => {
                let d: serde_json::Value = serde_json::from_str(doc).unwrap_or_default();
                let field = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
                (field(name_field), field("sha512"), networkcache::verify(&o.signature_certificates, doc, sig))
            }
            Err(why) => (why.clone(), String::new(), false),
        };
        table.add_row([name, sum, signed.to_string()]);
    }
    outln!("{table}");
    Ok(0)
}
