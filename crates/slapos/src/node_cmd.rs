//! `slapos node software|instance|report|promise|status|start|stop|…`:
//! the command line of the grid crate.

use std::path::PathBuf;
use std::time::Duration;

use slapos_config::{node_config_path, Config};
use slapos_grid::boot::{BootOptions, BootOutcome, FormatAttempt};
use slapos_grid::config::{NodeConfig, NodeOverrides};
use slapos_grid::instance::{InstanceOptions, InstanceRun, RunStatus, RunSummary};
use slapos_grid::node::{self, Node, PidLock};
use slapos_grid::software::SoftwareOptions;

use crate::Global;

/// slapgrid's exit codes: the grid crate returns typed outcomes, mapped
/// here.
mod exit {
    /// Everything went well.
    pub const SUCCESS: u8 = 0;
    /// A run failed.
    pub const FAIL: u8 = 1;
    /// A promise failed.
    pub const PROMISE_FAIL: u8 = 2;
    /// The master was unreachable: offline mode, services kept running.
    pub const OFFLINE_SUCCESS: u8 = 3;
    /// Another run holds the pid-file lock.
    pub const ALREADY_RUNNING: u8 = 10;
}

/// The exit code of a `node instance|promise` run.
fn summary_code(s: &RunSummary) -> u8 {
    match s.status() {
        RunStatus::Success => exit::SUCCESS,
        RunStatus::PromiseFailed => exit::PROMISE_FAIL,
        RunStatus::Failed => exit::FAIL,
    }
}

/// The exit code of a run that stopped on `e` (logged).
fn failed(e: impl std::fmt::Display) -> u8 {
    tracing::error!("{e}");
    exit::FAIL
}

/// Options of every slapgrid command (`node.md` §3), including the 0.4
/// ones that override the configuration file.
#[derive(Debug, Clone, clap::Args)]
pub struct GridArgs {
    /// Start at once (there is no random delay unless maximal_delay is set).
    #[arg(long)]
    pub now: bool,
    /// Overrides [slapos] computer_id.
    #[arg(long = "computer-id", alias = "computer_id", value_name = "ID")]
    pub computer_id: Option<String>,
    /// Overrides [slapos] master_url.
    #[arg(long = "master-url", alias = "master_url", value_name = "URL")]
    pub master_url: Option<String>,
    /// Overrides [slapos] software_root.
    #[arg(long = "software-root", alias = "software_root", value_name = "DIR")]
    pub software_root: Option<PathBuf>,
    /// Overrides [slapos] instance_root.
    #[arg(long = "instance-root", alias = "instance_root", value_name = "DIR")]
    pub instance_root: Option<PathBuf>,
    /// The buildout used to bootstrap software releases (default: `buildout`
    /// on PATH).
    #[arg(long, value_name = "PROGRAM")]
    pub buildout: Option<String>,
    /// Process up-to-date partitions again after this many seconds.
    #[arg(long = "maximum-periodicity", alias = "maximum_periodicity", value_name = "SECONDS")]
    pub maximum_periodicity: Option<i64>,
    /// Time allowed to each promise, in seconds (default 20).
    #[arg(long = "promise-timeout", alias = "promise_timeout", value_name = "SECONDS")]
    pub promise_timeout: Option<u64>,
    /// Overrides [slapos] master_ca_file: the CA certificates (PEM) that
    /// verify the master's certificate (default: the web PKI roots).
    #[arg(long = "master-ca-file", visible_alias = "master_ca_file", value_name = "FILE")]
    pub master_ca_file: Option<PathBuf>,
    /// Overrides [slapos] key_file: the node's key for the master.
    #[arg(long = "key-file", visible_alias = "key_file", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Overrides [slapos] cert_file: the node's certificate for the master.
    #[arg(long = "cert-file", visible_alias = "cert_file", value_name = "FILE")]
    pub cert_file: Option<PathBuf>,
    /// Overrides [slapos] certificate_repository_path: where the
    /// partitions' certificates are kept (must exist).
    #[arg(long = "certificate-repository-path", visible_alias = "certificate_repository_path", value_name = "DIR")]
    pub certificate_repository_path: Option<PathBuf>,
    /// Overrides [networkcache] signature-private-key-file: the key that
    /// will sign uploads to the binary cache (must exist; kept for the
    /// cache, which does not upload yet).
    #[arg(long = "signature-private-key-file", visible_alias = "signature_private_key_file", value_name = "FILE")]
    pub signature_private_key_file: Option<PathBuf>,
    /// Overrides [slapos] maximal_delay: sleep 1..N random seconds before
    /// the run (0: no delay; --now skips it).
    #[arg(long = "maximal-delay", visible_alias = "maximal_delay", value_name = "SECONDS")]
    pub maximal_delay: Option<u64>,
    /// Accepted for SlapOS compatibility and ignored, as slapgrid does:
    /// the node's supervisord listens on <instance_root>/sv.sock.
    #[arg(long = "supervisord-socket", alias = "supervisord_socket", value_name = "PATH")]
    pub supervisord_socket: Option<PathBuf>,
    /// Accepted for SlapOS compatibility and ignored, as slapgrid does:
    /// the configuration is <instance_root>/etc/supervisord.conf.
    #[arg(long = "supervisord-configuration-path", alias = "supervisord_configuration_path", value_name = "PATH")]
    pub supervisord_configuration_path: Option<PathBuf>,
    /// The pid file of this run (default: pidfile_software|instance|report).
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// Run buildout with -D (pdb on errors), attached to this terminal, one
    /// partition at a time.
    #[arg(long = "buildout-debug")]
    pub buildout_debug: bool,
    /// Overrides [slapos] partition_timeout: time allowed to one instance
    /// buildout (node instance; default 3600) and to a partition's
    /// pre-delete scripts (node report, prerm manager), in seconds. Taken by
    /// node software and node promise too, as slapgrid does, where it
    /// changes nothing.
    #[arg(long = "partition-timeout", alias = "partition_timeout", value_name = "SECONDS")]
    pub partition_timeout: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct SoftwareArgs {
    #[command(flatten)]
    pub grid: GridArgs,
    /// Only this software release (URL or md5 of the URL; comma-separated
    /// for several). Does not rebuild an installed release by itself.
    #[arg(long = "only-sr", alias = "only_sr", alias = "only", value_name = "URL|MD5")]
    pub only_sr: Vec<String>,
    /// Rebuild installed releases too (buildout without -N).
    #[arg(long, alias = "all", alias = "develop")]
    pub force: bool,
    /// Delete software paths (software_root/<md5>) that are not supplied.
    #[arg(long = "garbage-collect")]
    pub garbage_collect: bool,
}

#[derive(Debug, clap::Args)]
pub struct InstanceArgs {
    #[command(flatten)]
    pub grid: GridArgs,
    /// Only this partition (comma-separated for several); an unknown id is
    /// an error.
    #[arg(long = "only-cp", alias = "only_cp", alias = "only", value_name = "ID")]
    pub only_cp: Vec<String>,
    /// Process up-to-date partitions too.
    #[arg(long, alias = "all", alias = "develop")]
    pub force: bool,
    /// Stop the services even of started partitions.
    #[arg(long = "force-stop")]
    pub force_stop: bool,
    /// Partitions processed at once (default: 2 per CPU, at most 8).
    #[arg(short = 'j', long, value_name = "N")]
    pub jobs: Option<usize>,
}

#[derive(Debug, clap::Args)]
pub struct PromiseArgs {
    #[command(flatten)]
    pub grid: GridArgs,
    /// Only this partition (comma-separated for several).
    #[arg(long = "only-cp", alias = "only_cp", alias = "only", value_name = "ID")]
    pub only_cp: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub grid: GridArgs,
}

/// `node collect`: slapos.collect's sampling, with an export.
#[derive(Debug, clap::Args)]
pub struct CollectArgs {
    /// Write the whole history as DIR/<date>/dump_<table>.csv (the files
    /// slapos.collect archives each day) and exit, without sampling.
    #[arg(long = "export-csv", value_name = "DIR")]
    pub export_csv: Option<PathBuf>,
    /// Seconds over which CPU percentages are measured.
    #[arg(long = "measure-interval", value_name = "SECONDS", default_value_t = 5.0)]
    pub measure_interval: f64,
}

/// `slapos node collect`.
pub fn collect(args: CollectArgs, global: &Global) -> anyhow::Result<u8> {
    let path = node_config_path(global.cfg.as_deref());
    let config = Config::load(&path)?;
    let mut cfg = slapos_grid::collect::CollectConfig::from_config(&config).map_err(|e| anyhow::anyhow!("{e} (in {})", path.display()))?;
    if let Some(dir) = &args.export_csv {
        let dates = slapos_grid::collect::export_csv(&cfg, dir)?;
        tracing::info!("Exported {} day(s) of history to {}.", dates.len(), dir.display());
        return Ok(0);
    }
    if !(0.0..=600.0).contains(&args.measure_interval) {
        anyhow::bail!("--measure-interval must be between 0 and 600 seconds, not {}", args.measure_interval);
    }
    cfg.measure_interval = Duration::from_secs_f64(args.measure_interval);
    if !nix::unistd::geteuid().is_root() {
        tracing::warn!("not root: only this user's processes are fully readable, and partitions are not put in cgroups");
    }
    let _lock = match lock(&cfg.instance_root.join("var/run/slapos-node-collect.pid")) {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    tracing::info!("Collecting data...");
    let out = slapos_grid::collect::run(&cfg)?;
    tracing::info!(
        "Collected {} process(es) of {} partition(s); {} daily report(s) written, {} day(s) archived, {} old row(s) deleted.",
        out.processes,
        out.partitions,
        out.reports.len(),
        out.dumped.len(),
        out.deleted_rows
    );
    Ok(0)
}

/// `node prune`: SlapOS's options.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Don't delete, just log.
    #[arg(long = "dry-run", alias = "dry_run")]
    pub dry_run: bool,
    /// Additional software directory containing .installed.cfg to consider.
    /// Shared parts used by software in these directories will not be
    /// pruned. Can be specified multiple times.
    #[arg(long = "additional-software-directory", value_name = "DIR")]
    pub additional_software_directory: Vec<PathBuf>,
}

/// `slapos node prune` (see [`slapos_grid::prune`]).
pub fn prune(args: PruneArgs, global: &Global) -> anyhow::Result<u8> {
    let path = node_config_path(global.cfg.as_deref());
    let config = Config::load(&path)?;
    let cfg = slapos_grid::prune::PruneConfig::from_config(&config).map_err(|e| anyhow::anyhow!("{e} (in {})", path.display()))?;
    if cfg.root_check && !nix::unistd::geteuid().is_root() {
        anyhow::bail!("This command must be run as root (or set root_check = False in {})", path.display());
    }
    let _lock = match cfg.pidfile_software.as_deref().map(PidLock::acquire) {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(node::NodeError::AlreadyRunning { pid, .. })) => anyhow::bail!("Cannot prune while software is running (pid {pid})"),
        Some(Err(e)) => return Err(e.into()),
    };
    let parts = slapos_grid::prune::run(&cfg, &args.additional_software_directory, args.dry_run)?;
    let verb = if args.dry_run { "would be removed (dry run)" } else { "removed" };
    tracing::info!("{} unused shared part(s) {verb}.", parts.len());
    Ok(0)
}

/// `node status|start|stop|restart|tail|supervisorctl`: arguments passed to
/// supervisorctl.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// Arguments for supervisorctl (e.g. `slappart0:*`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct SupervisordArgs {
    /// Stay in the foreground.
    #[arg(short = 'n', long)]
    pub nodaemon: bool,
}

/// `node watchdog`: run by supervisord as its event listener.
#[derive(Debug, clap::Args)]
pub struct WatchdogArgs {
    #[arg(long = "master-url")]
    pub master_url: String,
    #[arg(long = "computer-id")]
    pub computer_id: String,
    #[arg(long = "instance-root")]
    pub instance_root: PathBuf,
    #[arg(long = "certificate-repository-path")]
    pub certificate_repository_path: Option<PathBuf>,
    /// The node's master_ca_file.
    #[arg(long = "master-ca-file")]
    pub master_ca_file: Option<PathBuf>,
}

pub fn watchdog(args: WatchdogArgs) -> anyhow::Result<u8> {
    let c = slapos_grid::watchdog::WatchdogConfig {
        master_url: args.master_url,
        computer_id: args.computer_id,
        instance_root: args.instance_root,
        certificate_repository_path: args.certificate_repository_path,
        master_ca_file: args.master_ca_file,
    };
    let stdin = std::io::stdin();
    slapos_grid::watchdog::run(&c, &mut stdin.lock(), &mut std::io::stdout().lock())?;
    Ok(0)
}

#[derive(Debug, clap::Args)]
pub struct BootArgs {
    /// Seconds between two format attempts.
    #[arg(long, default_value_t = 15)]
    pub interval: u64,
    /// Give up after this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
    /// A local node (format --local).
    #[arg(long)]
    pub local: bool,
    /// The message of the bang sent to the master.
    #[arg(short, long, default_value = "Reboot")]
    pub message: String,
}

/// `slapos node boot` (see [`slapos_grid::boot`]): this program's `node
/// format` is what formats.
pub fn boot(args: BootArgs, global: &Global) -> anyhow::Result<u8> {
    let path = node_config_path(global.cfg.as_deref());
    let config = Config::load(&path)?;
    let base =
        config.get_first(&["slapformat"], "partition_base_name").map(str::trim).filter(|v| !v.is_empty()).unwrap_or("slappart").to_string();
    let node = load_plain(global)?;
    let exe = std::env::current_exe()?;
    let opts = BootOptions {
        interval: Duration::from_secs(args.interval),
        timeout: (args.timeout > 0).then(|| Duration::from_secs(args.timeout)),
        partition_base_name: base,
        message: args.message.clone(),
    };
    let format = || {
        let mut format = std::process::Command::new(&exe);
        format.args(["node", "format", "--now", "--cfg"]).arg(&path);
        if args.local {
            format.arg("--local");
        }
        Ok(match format.status()?.code() {
            Some(0) => FormatAttempt::Done,
            Some(2) => FormatAttempt::MasterDown,
            code => FormatAttempt::Failed(code),
        })
    };
    Ok(match slapos_grid::boot::boot(&node, &opts, format)? {
        BootOutcome::Booted { .. } => exit::SUCCESS,
        BootOutcome::FormatGaveUp | BootOutcome::BangGaveUp => exit::FAIL,
    })
}

#[derive(Debug, clap::Args)]
pub struct BangArgs {
    /// Why the computer is banged.
    #[arg(short, long)]
    pub message: String,
}

fn split_list(v: &[String]) -> Vec<String> {
    v.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// The command-line values that override slapos.cfg.
fn overrides(g: &GridArgs) -> NodeOverrides {
    NodeOverrides {
        computer_id: g.computer_id.clone(),
        master_url: g.master_url.clone(),
        software_root: g.software_root.clone(),
        instance_root: g.instance_root.clone(),
        buildout: g.buildout.clone(),
        maximum_periodicity: g.maximum_periodicity,
        promise_timeout: g.promise_timeout,
        master_ca_file: g.master_ca_file.clone(),
        key_file: g.key_file.clone(),
        cert_file: g.cert_file.clone(),
        certificate_repository_path: g.certificate_repository_path.clone(),
        signature_private_key_file: g.signature_private_key_file.clone(),
        maximal_delay: g.maximal_delay,
        supervisord_socket: g.supervisord_socket.clone(),
        supervisord_configuration_path: g.supervisord_configuration_path.clone(),
        partition_timeout: g.partition_timeout,
    }
}

fn load(global: &Global, g: &GridArgs) -> anyhow::Result<Node> {
    let path = node_config_path(global.cfg.as_deref());
    let config = Config::load(&path)?;
    let overrides = overrides(g);
    let cfg = NodeConfig::from_config(&config, &overrides).map_err(|e| anyhow::anyhow!("{e} (in {})", path.display()))?;
    cfg.check_files()?;
    if cfg.maximal_delay > 0 && !g.now {
        let secs = rand::random::<u64>() % cfg.maximal_delay + 1;
        tracing::info!("Sleeping for {secs} seconds (maximal_delay; --now skips it)");
        std::thread::sleep(Duration::from_secs(secs));
    }
    let node = Node::new(cfg)?;
    warn_ignored_supervisord_paths(&node);
    Ok(node)
}

/// `--supervisord-socket` and `--supervisord-configuration-path` change
/// nothing (slapgrid 1.26.1 ignores them too): say so when they name
/// another path than the one used.
fn warn_ignored_supervisord_paths(node: &Node) {
    let given = [
        ("--supervisord-socket", &node.cfg.supervisord_socket, &node.supervisor.socket),
        ("--supervisord-configuration-path", &node.cfg.supervisord_configuration_path, &node.supervisor.conf),
    ];
    for (option, given, used) in given {
        if let Some(g) = given.as_ref().filter(|g| g != &used) {
            tracing::warn!("{option} {} is ignored, as slapgrid ignores it: the node's supervisord uses {}", g.display(), used.display());
        }
    }
}

/// Takes the pid-file lock; exit 10 when another run holds it.
fn lock(path: &std::path::Path) -> Result<PidLock, u8> {
    match PidLock::acquire(path) {
        Ok(l) => Ok(l),
        Err(e @ node::NodeError::AlreadyRunning { .. }) => {
            tracing::info!("{e}");
            Err(exit::ALREADY_RUNNING)
        }
        Err(e) => Err(failed(e)),
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get() * 2).unwrap_or(2).clamp(2, 8)
}

pub fn software(args: SoftwareArgs, global: &Global) -> anyhow::Result<u8> {
    let node = load(global, &args.grid)?;
    if let Some(key) = &node.cfg.signature_private_key_file {
        tracing::debug!("signature key {} kept for the binary cache (uploads are not done yet)", key.display());
    }
    let _lock = match lock(args.grid.pidfile.as_deref().unwrap_or(&node.cfg.pidfile_software)) {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    node.check_structure()?;
    let opts = SoftwareOptions {
        only: split_list(&args.only_sr),
        force: args.force,
        garbage_collect: args.garbage_collect,
        buildout_debug: args.grid.buildout_debug,
    };
    Ok(match slapos_grid::software::run(&node, &opts) {
        Ok(summary) if summary.is_clean() => exit::SUCCESS,
        Ok(_) => exit::FAIL,
        Err(e) => failed(e),
    })
}

pub fn instance(args: InstanceArgs, global: &Global) -> anyhow::Result<u8> {
    let node = load(global, &args.grid)?;
    let _lock = match lock(args.grid.pidfile.as_deref().unwrap_or(&node.cfg.pidfile_instance)) {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    node.check_structure()?;
    let opts = InstanceOptions {
        only: split_list(&args.only_cp),
        force: args.force,
        force_stop: args.force_stop,
        workers: args.jobs.unwrap_or_else(default_workers).max(1),
        default_deadline: Duration::from_secs(3600),
        buildout_debug: args.grid.buildout_debug,
    };
    Ok(match slapos_grid::instance::run(&node, &opts) {
        Ok(InstanceRun::Processed(summary)) => summary_code(&summary),
        Ok(InstanceRun::Offline) => exit::OFFLINE_SUCCESS,
        Err(e) => failed(e),
    })
}

pub fn report(args: ReportArgs, global: &Global) -> anyhow::Result<u8> {
    let node = load(global, &args.grid)?;
    let _lock = match lock(args.grid.pidfile.as_deref().unwrap_or(&node.cfg.pidfile_report)) {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    node.check_structure()?;
    Ok(match slapos_grid::report::run(&node) {
        Ok(summary) if summary.is_clean() => exit::SUCCESS,
        Ok(_) => exit::FAIL,
        Err(e) => failed(e),
    })
}

pub fn promise(args: PromiseArgs, global: &Global) -> anyhow::Result<u8> {
    let node = load(global, &args.grid)?;
    let _lock = match lock(args.grid.pidfile.as_deref().unwrap_or(&node.cfg.pidfile_instance)) {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    node.check_structure()?;
    Ok(match slapos_grid::instance::check_promises(&node, &split_list(&args.only_cp), default_workers()) {
        Ok(summary) => summary_code(&summary),
        Err(e) => failed(e),
    })
}

fn load_plain(global: &Global) -> anyhow::Result<Node> {
    load(
        global,
        &GridArgs {
            now: true,
            computer_id: None,
            master_url: None,
            software_root: None,
            instance_root: None,
            buildout: None,
            maximum_periodicity: None,
            promise_timeout: None,
            master_ca_file: None,
            key_file: None,
            cert_file: None,
            certificate_repository_path: None,
            signature_private_key_file: None,
            maximal_delay: None,
            supervisord_socket: None,
            supervisord_configuration_path: None,
            pidfile: None,
            buildout_debug: false,
            partition_timeout: None,
        },
    )
}

/// `supervisorctl -c <conf> <command> <args…>`, supervisord launched first.
pub fn supervisorctl(command: Option<&str>, args: CtlArgs, global: &Global) -> anyhow::Result<u8> {
    let node = load_plain(global)?;
    node.supervisor.write_configuration(None)?;
    node.supervisor.ensure_running()?;
    let ctl = slapos_grid::node::find_program("supervisorctl", &node.supervisor.program);
    let mut cmd = std::process::Command::new(&ctl);
    cmd.arg("-c").arg(&node.supervisor.conf);
    if let Some(c) = command {
        cmd.arg(c);
    }
    cmd.args(&args.args);
    let status = cmd.status().map_err(|e| anyhow::anyhow!("cannot run {ctl}: {e}"))?;
    Ok(status.code().unwrap_or(1).clamp(0, 255) as u8)
}

pub fn supervisord(args: SupervisordArgs, global: &Global) -> anyhow::Result<u8> {
    let node = load_plain(global)?;
    node.supervisor.write_configuration(None)?;
    if args.nodaemon {
        let status = std::process::Command::new(&node.supervisor.program)
            .arg("-n")
            .arg("-c")
            .arg(&node.supervisor.conf)
            .env_clear()
            .status()
            .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", node.supervisor.program))?;
        return Ok(status.code().unwrap_or(1).clamp(0, 255) as u8);
    }
    node.supervisor.ensure_running()?;
    Ok(0)
}

pub fn bang(args: BangArgs, global: &Global) -> anyhow::Result<u8> {
    let node = load_plain(global)?;
    node.client.computer_bang(&node.cfg.computer_id, &args.message)?;
    tracing::info!("Banged computer {}.", node.cfg.computer_id);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use slapos_config::Config;
    use slapos_grid::config::NodeConfig;

    use crate::{Cli, Command, NodeCommand};

    fn grid(args: &[&str]) -> super::GridArgs {
        let cli = Cli::try_parse_from([&["slapos", "node"], args].concat()).unwrap_or_else(|e| panic!("{e}"));
        match cli.command {
            Command::Node(NodeCommand::Software(a)) => a.grid,
            Command::Node(NodeCommand::Instance(a)) => a.grid,
            Command::Node(NodeCommand::Report(a)) => a.grid,
            Command::Node(NodeCommand::Promise(a)) => a.grid,
            other => panic!("not a grid command: {other:?}"),
        }
    }

    #[test]
    fn slapgrid_spellings_reach_the_node_configuration() {
        let file =
            Config::parse("[slapos]\ncomputer_id = C\nmaster_url = https://m\nsoftware_root = s\ninstance_root = i\nmaximal_delay = 600\n")
                .unwrap();
        for command in ["software", "instance", "report", "promise"] {
            let g = grid(&[
                command,
                "--key_file",
                "/k.pem",
                "--cert_file",
                "/c.pem",
                "--master_ca_file",
                "/ca.pem",
                "--certificate_repository_path",
                "/repo",
                "--signature_private_key_file",
                "/sign.key",
                "--maximal_delay",
                "0",
                "--supervisord-socket",
                "/run/sv.sock",
                "--supervisord-configuration-path",
                "/etc/sv.conf",
                "--partition-timeout",
                "42",
            ]);
            let n = NodeConfig::from_config(&file, &super::overrides(&g)).unwrap();
            assert_eq!(n.key_file, Some("/k.pem".into()), "{command}");
            assert_eq!(n.cert_file, Some("/c.pem".into()));
            assert_eq!(n.master_ca_file, Some("/ca.pem".into()));
            assert_eq!(n.certificate_repository_path, Some("/repo".into()));
            assert_eq!(n.signature_private_key_file, Some("/sign.key".into()));
            assert_eq!(n.maximal_delay, 0, "the command line wins over the file's 600");
            assert_eq!(n.supervisord_socket, Some("/run/sv.sock".into()));
            assert_eq!(n.supervisord_configuration_path, Some("/etc/sv.conf".into()));
            assert_eq!(n.partition_timeout, Some(std::time::Duration::from_secs(42)), "{command}");
        }
        // our spelling too
        let g = grid(&["instance", "--key-file", "/k", "--cert-file", "/c", "--maximal-delay", "5"]);
        let n = NodeConfig::from_config(&file, &super::overrides(&g)).unwrap();
        assert_eq!((n.key_file, n.maximal_delay), (Some("/k".into()), 5));
    }

    #[test]
    fn boot_takes_the_message_of_its_bang() {
        let cli = Cli::try_parse_from(["slapos", "node", "boot", "-m", "kernel upgrade"]).unwrap();
        let Command::Node(NodeCommand::Boot(b)) = cli.command else { panic!() };
        assert_eq!(b.message, "kernel upgrade");
        let cli = Cli::try_parse_from(["slapos", "node", "boot"]).unwrap();
        let Command::Node(NodeCommand::Boot(b)) = cli.command else { panic!() };
        assert_eq!(b.message, "Reboot", "SlapOS's default");
    }
}
