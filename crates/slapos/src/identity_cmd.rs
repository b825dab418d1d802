//! Identities from the command line: the administrator mints one-time
//! tokens (`slapos computer token`, `slapos user token`), a node joins with
//! one (`slapos node register`: computer certificate and key, a working
//! `slapos.cfg`, as SlapOS's command writes them), a person gets a
//! certificate with one (`slapos configure client`: `client.crt`,
//! `client.key`, `slapos-client.cfg`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use slap::client::{ClientConfig, SlapClient};

use crate::client_cmd::ClientSettings;
use crate::Global;

/// `slapos computer token COMPUTER_ID`.
#[derive(Debug, clap::Args)]
pub struct ComputerTokenArgs {
    /// The computer the token lets join (e.g. COMP-1234).
    pub computer_id: String,
}

/// `slapos user …` (the administrator).
#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Mint a one-time token with which a person gets their certificate
    /// (`slapos configure client --token`), and open computers to them.
    Token(UserTokenArgs),
    /// Revoke every certificate of a person: refused from their next call on.
    Revoke(UserRevokeArgs),
}

#[derive(Debug, clap::Args)]
pub struct UserRevokeArgs {
    /// The person's user name.
    pub name: String,
}

#[derive(Debug, clap::Args)]
pub struct UserTokenArgs {
    /// The person's user name.
    pub name: String,
    /// A computer they may supply to and request on (repeatable).
    #[arg(long = "computer", value_name = "COMPUTER_ID")]
    pub computers: Vec<String>,
}

/// `slapos node register` (the options of SlapOS's command).
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// The computer id the token was minted for.
    pub node_name: String,
    #[command(flatten)]
    pub join: JoinArgs,
    #[arg(long, default_value = "eth0")]
    pub interface_name: String,
    #[arg(long, default_value_t = 10)]
    pub partition_number: u32,
    #[arg(long, default_value = "10.0.0.0/16")]
    pub ipv4_local_network: String,
    #[arg(long, default_value = "/opt/slapgrid")]
    pub software_root: String,
    #[arg(long, default_value = "/srv/slapgrid")]
    pub instance_root: String,
    /// Create a tap interface per partition.
    #[arg(long, short = 't')]
    pub create_tap: bool,
    /// Where slapos.cfg and ssl/ go.
    #[arg(long, default_value = "/etc/opt/slapos")]
    pub slapos_configuration: PathBuf,
}

/// `slapos configure …`.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigureCommand {
    /// Get a user certificate with a token and write slapos-client.cfg.
    Client(ConfigureClientArgs),
    /// Configure a node and its own master on this machine (slapos.cfg,
    /// slapos-proxy.cfg), from scratch to ready to use.
    Local(crate::configure_local_cmd::ConfigureLocalArgs),
}

#[derive(Debug, clap::Args)]
pub struct ConfigureClientArgs {
    #[command(flatten)]
    pub join: JoinArgs,
}

/// How to reach the master and the one-time token to spend there (`slapos
/// node register`, `slapos configure client`).
#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// The master's URL.
    #[arg(long)]
    pub master_url: String,
    /// The master's CA certificate (to trust its HTTPS certificate).
    #[arg(long)]
    pub master_ca_file: Option<PathBuf>,
    /// The one-time token (`slapos computer token` for a node, `slapos user
    /// token` for a person).
    #[arg(long)]
    pub token: String,
}

fn admin(global: &Global) -> anyhow::Result<SlapClient> {
    ClientSettings::load(global)?.slap()
}

/// `slapos computer token`: prints the token.
pub fn computer_token(args: &ComputerTokenArgs, global: &Global) -> anyhow::Result<u8> {
    let token = admin(global)?.post("identity/token", &[("kind", "computer"), ("name", &args.computer_id)], None)?;
    outln!("{token}");
    Ok(0)
}

/// `slapos user token` (opens the computers, prints the token) and `slapos
/// user revoke`.
pub fn user(cmd: &UserCommand, global: &Global) -> anyhow::Result<u8> {
    let args = match cmd {
        UserCommand::Token(args) => args,
        UserCommand::Revoke(r) => {
            let n = admin(global)?.post("identity/revoke", &[("kind", "user"), ("name", &r.name)], None)?;
            outln!("{n} certificate(s) of {} revoked", r.name);
            return Ok(0);
        }
    };
    let client = admin(global)?;
    for c in &args.computers {
        client.post("identity/grant", &[("kind", "computer"), ("reference", c), ("user", &args.name)], None)?;
    }
    let token = client.post("identity/token", &[("kind", "user"), ("name", &args.name)], None)?;
    outln!("{token}");
    Ok(0)
}

/// Spends the token of `args` at `route` of the master (`form` holds it):
/// (certificate, key, CA).
fn join(args: &JoinArgs, route: &str, form: &[(&str, &str)]) -> anyhow::Result<(String, String, String)> {
    let mut c = ClientConfig::new(&args.master_url);
    c.ca_file = args.master_ca_file.clone();
    let body = SlapClient::new(c)?.post(route, form, None)?;
    let v: serde_json::Value = serde_json::from_str(&body).context("the master's answer is not JSON")?;
    let get = |k: &str| v[k].as_str().map(str::to_string).with_context(|| format!("no '{k}' in the master's answer"));
    Ok((get("certificate")?, get("key")?, get("ca").unwrap_or_default()))
}

fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    slapos_proxy::ca::write_file(path, text.as_bytes(), mode)?;
    Ok(())
}

/// Writes the key (0600), the certificate (`cert_mode`) and the master's
/// CA if it sent one: the `master_ca_file = …` line naming it (empty
/// without).
fn install(
    (cert, key, ca): &(String, String, String),
    cert_file: &Path,
    cert_mode: u32,
    key_file: &Path,
    ca_file: &Path,
) -> anyhow::Result<String> {
    write(key_file, key, 0o600)?;
    write(cert_file, cert, cert_mode)?;
    if ca.is_empty() {
        return Ok(String::new());
    }
    write(ca_file, ca, 0o644)?;
    Ok(format!("master_ca_file = {}\n", ca_file.display()))
}

/// Creates each directory missing with mode 0711 (as SlapOS's `node
/// register`: partition users reach their own key files, list nothing).
fn private_dirs(dirs: &[&Path]) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    for d in dirs {
        if !d.is_dir() {
            std::fs::DirBuilder::new().recursive(true).mode(0o711).create(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
    }
    Ok(())
}

/// `slapos node register`.
pub fn register(args: &RegisterArgs) -> anyhow::Result<u8> {
    let dir = &args.slapos_configuration;
    let ssl = dir.join("ssl");
    private_dirs(&[dir, &ssl, &ssl.join("partition_pki")])?;
    let joined = join(&args.join, "Person_requestComputer", &[("token", &args.join.token), ("title", &args.node_name)])?;
    let (cert_file, key_file) = (ssl.join("certificate"), ssl.join("key"));
    let ca_line = install(&joined, &cert_file, 0o600, &key_file, &ssl.join("master-ca.crt"))?;
    let cfg = format!(
        "[slapos]\ncomputer_id = {id}\nmaster_url = {url}\nkey_file = {key}\ncert_file = {cert}\n{ca_line}\
         certificate_repository_path = {pki}\nsoftware_root = {sr}\ninstance_root = {ir}\n\n\
         [slapformat]\ninterface_name = {iface}\nipv4_local_network = {net}\npartition_amount = {n}\n\
         create_tap = {tap}\npartition_base_name = slappart\nuser_base_name = slapuser\n\n\
         [networkcache]\n",
        id = args.node_name,
        url = args.join.master_url,
        key = key_file.display(),
        cert = cert_file.display(),
        pki = ssl.join("partition_pki").display(),
        sr = args.software_root,
        ir = args.instance_root,
        iface = args.interface_name,
        net = args.ipv4_local_network,
        n = args.partition_number,
        tap = args.create_tap,
    );
    write(&dir.join("slapos.cfg"), &cfg, 0o644)?;
    outln!("Node {} registered: {} written", args.node_name, dir.join("slapos.cfg").display());
    Ok(0)
}

/// `slapos configure client`: writes next to the client configuration
/// (`--cfg`, default ~/.slapos/slapos-client.cfg).
pub fn configure(cmd: &ConfigureCommand, global: &Global) -> anyhow::Result<u8> {
    let args = match cmd {
        ConfigureCommand::Client(args) => args,
        ConfigureCommand::Local(args) => return crate::configure_local_cmd::run(args, global),
    };
    let cfg = global.cfg.clone().unwrap_or_else(|| match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".slapos/slapos-client.cfg"),
        None => PathBuf::from("slapos-client.cfg"),
    });
    let dir = cfg.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let joined = join(&args.join, "Person_getCertificate", &[("token", &args.join.token)])?;
    if joined.0.is_empty() {
        bail!("the master gave no certificate");
    }
    let (cert_file, key_file) = (dir.join("client.crt"), dir.join("client.key"));
    let ca_line = install(&joined, &cert_file, 0o644, &key_file, &dir.join("master-ca.crt"))?;
    let text = format!(
        "[slapos]\nmaster_url = {}\n\n[slapconsole]\ncert_file = {}\nkey_file = {}\n{ca_line}",
        args.join.master_url,
        cert_file.display(),
        key_file.display()
    );
    write(&cfg, &text, 0o600)?;
    outln!("{} written", cfg.display());
    Ok(0)
}
