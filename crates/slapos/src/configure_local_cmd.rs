//! `slapos configure local` (SlapOS's `cli/configure_local`): a node and
//! its own master on this machine in one step. Writes
//! `<configuration directory>/slapos.cfg` (the node, with the master's
//! `[slapproxy]` section), `slapos-proxy.cfg` (the master alone, as SlapOS
//! writes it), the supervisord program that runs the master under the
//! node's supervisord (`<instance root>/etc/supervisord.conf.d/slapproxy.conf`)
//! and, when there is none, `~/.slapos/slapos-client.cfg` pointing to the
//! node's file, as SlapOS does.
//!
//! SlapOS's options and defaults. Differences: without root (or with
//! `--local`) the node is a local one (`node format --local`): its
//! partitions' loopback `/24` is the free one local mode picks
//! ([`slapos_format::local_range`]) rather than 10.0.0.0/16, and the
//! master's default port 8080 is replaced by a free one when something
//! already listens there; `shared_part_list` is set (for `node prune`) and
//! no public binary cache is configured (SlapOS's example file names
//! shacache.nxdcdn.com). SlapOS then launches supervisord and formats; this
//! command prints those two commands instead (`slapos node supervisord`
//! starts the master, `slapos node format` formats).

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::Global;

/// SlapOS's `DEFAULT_COMPUTER_ID`.
const COMPUTER_ID: &str = "local_computer";

/// `slapos configure local`: SlapOS's options.
#[derive(Debug, clap::Args)]
pub struct ConfigureLocalArgs {
    /// Primary network interface. IP of Partitions will be added to it.
    #[arg(long = "interface-name", default_value = "lo")]
    pub interface_name: String,
    /// Number of partitions to create in the SlapOS Node.
    #[arg(long = "partition-number", default_value_t = 20)]
    pub partition_number: u32,
    /// Subnetwork used to assign local IPv4 addresses (default: 10.0.0.0/16
    /// for a node run as root; for a local node, a free 127.X.Y.0/24).
    #[arg(long = "ipv4-local-network", value_name = "NETWORK")]
    pub ipv4_local_network: Option<String>,
    /// Listening IP of the master ("slapproxy").
    #[arg(long = "daemon-listen-ip", default_value = "127.0.0.1")]
    pub daemon_listen_ip: std::net::IpAddr,
    /// Listening port of the master (default 8080, or a free port when
    /// 8080 is taken).
    #[arg(long = "daemon-listen-port", value_name = "PORT")]
    pub daemon_listen_port: Option<u16>,
    /// Where partitions are made.
    #[arg(long = "slapos-instance-root", default_value = "/srv/slapgrid")]
    pub slapos_instance_root: PathBuf,
    /// Where software releases are built.
    #[arg(long = "slapos-software-root", default_value = "/opt/slapgrid")]
    pub slapos_software_root: PathBuf,
    /// The node's own files: state, logs, the master's database.
    #[arg(long = "slapos-buildout-directory", default_value = "/opt/slapos")]
    pub slapos_buildout_directory: PathBuf,
    /// Where slapos.cfg and slapos-proxy.cfg are written.
    #[arg(long = "slapos-configuration-directory", default_value = "/etc/opt/slapos")]
    pub slapos_configuration_directory: PathBuf,
    /// Turn on the master's binary cache (/shacache) and make the node
    /// download from it.
    #[arg(long = "enable-shacache-proxy")]
    pub enable_shacache_proxy: bool,
    /// A local node (no root needed: partitions owned by this user,
    /// loopback addresses); the default when not run as root.
    #[arg(long)]
    pub local: bool,
}

/// The values the files are written from.
struct Site {
    node_cfg: PathBuf,
    proxy_cfg: PathBuf,
    master_url: String,
    port: u16,
    local: bool,
    ipv4_local_network: String,
}

/// Something listens on `ip:port`.
fn taken(ip: std::net::IpAddr, port: u16) -> bool {
    TcpListener::bind((ip, port)).is_err()
}

fn free_port(ip: std::net::IpAddr) -> anyhow::Result<u16> {
    Ok(TcpListener::bind((ip, 0)).with_context(|| format!("cannot listen on {ip}"))?.local_addr()?.port())
}

/// The loopback /24 `node format --local` will pick for this instance root.
fn local_network(instance_root: &Path) -> anyhow::Result<String> {
    use slapos_format::local_range;
    let listening = local_range::listening();
    let claims = local_range::claims(&local_range::default_claims_dir());
    let busy = |net: Ipv4Addr| listening.iter().any(|a| local_range::network_of(*a) == net) || claims.contains_key(&net);
    let net = local_range::pick(local_range::seed(&instance_root.display().to_string()), busy)
        .context("no free 127.X.Y.0/24 left for a local node")?;
    Ok(format!("{net}/24"))
}

/// `[slapos]` and `[slapproxy]`, shared by both files.
fn common(a: &ConfigureLocalArgs, s: &Site) -> String {
    let b = a.slapos_buildout_directory.display();
    format!(
        "[slapos]\ncomputer_id = {COMPUTER_ID}\nmaster_url = {url}\nsoftware_root = {sr}\ninstance_root = {ir}\nshared_part_list = {sr}/shared\npidfile_software = {b}/var/run/slapos-node-software.pid\npidfile_instance = {b}/var/run/slapos-node-instance.pid\npidfile_report = {b}/var/run/slapos-node-report.pid\n{root_check}\n[slapproxy]\nhost = {host}\nport = {port}\ndatabase_uri = {b}/slapproxy.db\n{cache}",
        url = s.master_url,
        sr = a.slapos_software_root.display(),
        ir = a.slapos_instance_root.display(),
        root_check = if s.local { "root_check = False\n" } else { "" },
        host = a.daemon_listen_ip,
        port = s.port,
        cache = if a.enable_shacache_proxy {
            format!("shacache_content_directory = {b}/shacache/data\nshacache_metadata_directory = {b}/shacache/dir\nshacache_signing_key_path = {b}/shacache/signing-key.pem\nshacache_upstream_cache_url = http://shacache.nxdcdn.com\nshacache_upstream_dir_url = http://shadir.nxdcdn.com\n")
        } else {
            String::new()
        },
    )
}

/// slapos.cfg: the node (`[slapformat]`, the cache it downloads from).
fn node_text(a: &ConfigureLocalArgs, s: &Site) -> String {
    let b = a.slapos_buildout_directory.display();
    let mut text = format!(
        "# Written by `slapos configure local`.\n{common}\n[slapformat]\ninterface_name = {iface}\ncreate_tap = false\nipv4_local_network = {net}\npartition_amount = {n}\ncomputer_xml = {b}/slapos.xml\nlog_file = {b}/log/slapos-node-format.log\n",
        common = common(a, s),
        iface = a.interface_name,
        net = s.ipv4_local_network,
        n = a.partition_number,
    );
    if a.enable_shacache_proxy {
        text.push_str(&format!(
            "\n[networkcache]\ndownload-binary-cache-url = {u}/shacache/cache\ndownload-binary-dir-url = {u}/shacache/dir\ndownload-cache-url = {u}/shacache/cache\ndownload-dir-url = {u}/shacache/dir\n",
            u = s.master_url
        ));
    }
    text
}

/// The master under the node's supervisord, as SlapOS's `_addProxyToSupervisor`.
fn supervisor_program(a: &ConfigureLocalArgs, s: &Site) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("cannot find this program")?;
    let b = a.slapos_buildout_directory.display();
    let user = if s.local { "" } else { "user=0\ngroup=0\n" };
    Ok(format!(
        "[program:slapproxy]\ndirectory={b}\ncommand={exe} proxy start --cfg {cfg}\nprocess_name=slapproxy\nautostart=true\nautorestart=true\nstartsecs=0\nstartretries=0\nexitcodes=0\nstopsignal=TERM\nstopwaitsecs=60\n{user}serverurl=AUTO\nredirect_stderr=true\nstdout_logfile={b}/log/slapos-proxy.log\nstdout_logfile_maxbytes=100KB\nstdout_logfile_backups=1\nstderr_logfile={b}/log/slapos-proxy.log\nstderr_logfile_maxbytes=100KB\nstderr_logfile_backups=1\n",
        exe = exe.display(),
        cfg = s.proxy_cfg.display(),
    ))
}

fn mkdirs(dirs: &[PathBuf]) -> anyhow::Result<()> {
    for d in dirs {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    Ok(())
}

/// Values that end up in INI files: one line each, no `%(` (interpolation).
fn check_values(a: &ConfigureLocalArgs) -> anyhow::Result<()> {
    let paths = [&a.slapos_instance_root, &a.slapos_software_root, &a.slapos_buildout_directory, &a.slapos_configuration_directory];
    for v in paths.iter().map(|p| p.display().to_string()).chain([a.interface_name.clone()]).chain(a.ipv4_local_network.clone()) {
        if v.is_empty() || v.chars().any(|c| c.is_control()) || v.contains("%(") || v.contains(' ') {
            bail!("'{}' cannot go into slapos.cfg (empty, a space, a control character or '%(')", v.escape_debug());
        }
    }
    Ok(())
}

/// `slapos configure local`.
pub fn run(a: &ConfigureLocalArgs, _global: &Global) -> anyhow::Result<u8> {
    check_values(a)?;
    let conf_dir = &a.slapos_configuration_directory;
    let node_cfg = conf_dir.join("slapos.cfg");
    if node_cfg.exists() {
        bail!("A SlapOS configuration directory already exist at {}. Aborting.", node_cfg.display());
    }
    let local = a.local || !nix::unistd::geteuid().is_root();
    let port = match a.daemon_listen_port {
        Some(p) => p,
        None if taken(a.daemon_listen_ip, 8080) => {
            let p = free_port(a.daemon_listen_ip)?;
            tracing::info!("Port 8080 of {} is taken: the master will listen on port {p}.", a.daemon_listen_ip);
            p
        }
        None => 8080,
    };
    let host = match a.daemon_listen_ip {
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let ipv4_local_network = match (&a.ipv4_local_network, local) {
        (Some(n), _) => n.clone(),
        (None, true) => local_network(&a.slapos_instance_root)?,
        (None, false) => "10.0.0.0/16".into(),
    };
    let s = Site {
        proxy_cfg: conf_dir.join("slapos-proxy.cfg"),
        node_cfg,
        master_url: format!("http://{host}:{port}"),
        port,
        local,
        ipv4_local_network,
    };
    let b = &a.slapos_buildout_directory;
    mkdirs(&[
        conf_dir.clone(),
        b.join("log"),
        b.join("var/run"),
        a.slapos_software_root.join("shared"),
        a.slapos_instance_root.join("etc/supervisord.conf.d"),
    ])?;
    if a.enable_shacache_proxy {
        mkdirs(&[b.join("shacache/data"), b.join("shacache/dir")])?;
        signing_key(&b.join("shacache/signing-key.pem"))?;
    }
    write(&s.node_cfg, &node_text(a, &s))?;
    write(&s.proxy_cfg, &format!("# Written by `slapos configure local`.\n{}", common(a, &s)))?;
    write(&a.slapos_instance_root.join("etc/supervisord.conf.d/slapproxy.conf"), &supervisor_program(a, &s)?)?;
    client_link(&s.node_cfg);
    let local_flag = if local { " --local" } else { "" };
    println!("SlapOS node and master configured in {}: the master at {}.", conf_dir.display(), s.master_url);
    println!(
        "Next: slapos node supervisord --cfg {0}   (starts the master under the node's supervisord; or: slapos proxy start --cfg {1})",
        s.node_cfg.display(),
        s.proxy_cfg.display()
    );
    println!("      slapos node format --cfg {}{local_flag} --now", s.node_cfg.display());
    Ok(0)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!("Wrote {}.", path.display());
    Ok(())
}

/// `~/.slapos/slapos-client.cfg` → the node's file, when there is none (SlapOS).
fn client_link(node_cfg: &Path) {
    let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else { return };
    let client = home.join(".slapos/slapos-client.cfg");
    if std::fs::symlink_metadata(&client).is_ok() {
        return;
    }
    let made = std::fs::create_dir_all(home.join(".slapos")).and_then(|()| std::os::unix::fs::symlink(node_cfg, &client));
    match made {
        Ok(()) => tracing::info!("{} now points to {}.", client.display(), node_cfg.display()),
        Err(e) => tracing::warn!("cannot link {}: {e}", client.display()),
    }
}

/// The cache's signing key (RSA 2048, as SlapOS, through openssl), 0600.
fn signing_key(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let status =
        std::process::Command::new("openssl").arg("genrsa").arg("-out").arg(path).arg("2048").stderr(std::process::Stdio::null()).status();
    match status {
        Ok(s) if s.success() => {
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            Ok(())
        }
        _ => {
            tracing::warn!(
                "openssl could not make the cache's signing key {}: make one (openssl genrsa -out {} 2048)",
                path.display(),
                path.display()
            );
            Ok(())
        }
    }
}
