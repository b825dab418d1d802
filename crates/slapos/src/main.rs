//! `slapos`: one binary for the SlapOS master (`slapos proxy`), the node
//! (`slapos node …`) and the client (`slapos request|supply|…|console`).
//!
//! This crate is a thin shell: it parses the command line (clap), sets up
//! logging, reads the configuration and calls the library crates. Each
//! command group lives in its own module with its `Args` and `run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// first: its out!/outln! macros are used by the modules below
#[macro_use]
mod output;
mod cache_cmd;
mod client_cmd;
mod configure_local_cmd;
mod console_cmd;
mod format_cmd;
mod identity_cmd;
mod logging;
mod node_cmd;
mod proxy_cmd;

/// SlapOS: turn ordinary Linux machines into a cloud.
#[derive(Debug, Parser)]
#[command(name = "slapos", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// Configuration file (node and master: $SLAPOS_CONFIGURATION or
    /// /etc/opt/slapos/slapos.cfg; client: $SLAPOS_CLIENT_CONFIGURATION or
    /// ~/.slapos/slapos-client.cfg).
    #[arg(long, global = true, value_name = "FILE")]
    pub cfg: Option<PathBuf>,
    /// More output (repeat for more); -v shows debug messages.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Show debug messages (same as -v).
    #[arg(long, global = true)]
    pub debug: bool,
    /// Also write the log to this file.
    #[arg(long, global = true, value_name = "FILE", visible_aliases = ["logfile", "log_file"])]
    pub log_file: Option<PathBuf>,
    /// Colored log output in the console: auto (the default, as SlapOS:
    /// colors on a terminal, stripped if redirected), always or never.
    #[arg(
        long,
        global = true,
        value_name = "WHEN",
        value_enum,
        num_args = 0..=1,
        require_equals = true,
        default_value = "auto",
        default_missing_value = "auto"
    )]
    pub log_color: ColorWhen,
    /// No timestamp in console log lines. Timestamps are shown by default;
    /// this flag removes them, as SlapOS 1.26.1's `--log-time` does.
    #[arg(long = "log-time", global = true)]
    pub log_time_off: bool,
}

/// When console log lines are colored (`--log-color`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorWhen {
    /// When stderr is a terminal.
    Auto,
    /// Always, even when redirected.
    Always,
    /// Never.
    Never,
}

// parsed once per run: the size of its largest variant (the node's many
// options) does not matter
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The local master: start it, or show what it knows.
    #[command(subcommand)]
    Proxy(proxy_cmd::ProxyCommand),
    /// Node commands: format, software, instance, report, promise, and the
    /// node's supervisord.
    #[command(subcommand)]
    Node(NodeCommand),
    #[command(flatten)]
    Client(client_cmd::ClientCommand),
    /// Interactive console bound to the master (Rhai scripting); runs a
    /// script with FILE [ARG]..., --command CODE or on standard input.
    Console(console_cmd::ConsoleArgs),
    /// People of the master (administrator): tokens to get a certificate.
    #[command(subcommand)]
    User(identity_cmd::UserCommand),
    /// Configure this machine: a client with a certificate from a token, or
    /// a local node with its own master.
    #[command(subcommand)]
    Configure(identity_cmd::ConfigureCommand),
    /// Print a shell completion script (`source <(slapos complete)` in bash).
    Complete(CompleteArgs),
    /// The binary cache: what it holds and whether this node would use it.
    #[command(subcommand)]
    Cache(cache_cmd::CacheCommand),
    /// Query the binary cache (SlapOS's spelling of `slapos cache lookup`).
    #[command(subcommand)]
    Cachelookup(cache_cmd::LookupCommand),
}

/// `slapos complete`: as SlapOS's (cliff's) `complete`, `--shell` defaults to bash.
#[derive(Debug, clap::Args)]
pub struct CompleteArgs {
    /// Shell to complete for.
    #[arg(long, value_enum, default_value = "bash")]
    pub shell: clap_complete::Shell,
    /// Command name to complete (when `slapos` is installed under another name).
    #[arg(long, value_name = "COMMAND_NAME", default_value = "slapos")]
    pub name: String,
}

/// Writes the completion script of the whole command line to stdout.
fn complete(args: CompleteArgs) -> anyhow::Result<u8> {
    let mut command = <Cli as clap::CommandFactory>::command();
    // (generated in memory: clap_complete panics when its writer fails)
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, args.name, &mut script);
    match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::anyhow!("cannot write the completion script: {e}")),
        _ => Ok(0),
    }
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Prepare the node: users, addresses, partition directories; save the
    /// state and report it to the master.
    Format(format_cmd::FormatArgs),
    /// Build the software releases supplied to this computer (buildout),
    /// report them; destroy the ones the master says to destroy.
    Software(node_cmd::SoftwareArgs),
    /// Bring every partition to its requested state: instance buildout,
    /// services under supervisord, promises, reports to the master.
    Instance(node_cmd::InstanceArgs),
    /// Send usage reports and destroy the partitions the master says to
    /// destroy.
    Report(node_cmd::ReportArgs),
    /// Run the promises of the started partitions (nothing is reported).
    Promise(node_cmd::PromiseArgs),
    /// Sample the usage of each partition and of the computer into the
    /// node's history (var/data-log/collector.db); write the daily
    /// consumption reports `node report` sends, and CSV files. Run by cron
    /// every minute, as root.
    Collect(node_cmd::CollectArgs),
    /// Remove the shared parts (shared_part_list) that no software and no
    /// instance uses any more; --dry-run only logs them.
    Prune(node_cmd::PruneArgs),
    /// Status of the node's programs (supervisorctl status).
    Status(node_cmd::CtlArgs),
    /// Start programs (supervisorctl start, e.g. `slappart0:*`).
    Start(node_cmd::CtlArgs),
    /// Stop programs (supervisorctl stop).
    Stop(node_cmd::CtlArgs),
    /// Restart programs (supervisorctl restart).
    Restart(node_cmd::CtlArgs),
    /// Show a program's output (supervisorctl tail).
    Tail(node_cmd::CtlArgs),
    /// Run supervisorctl on the node's supervisord.
    Supervisorctl(node_cmd::CtlArgs),
    /// Write the node's supervisord configuration and launch it.
    Supervisord(node_cmd::SupervisordArgs),
    /// Ask the master to reprocess every instance of this computer.
    Bang(node_cmd::BangArgs),
    /// After a reboot: format until it succeeds, bang the master, and make
    /// the next instance run reprocess every partition.
    Boot(node_cmd::BootArgs),
    /// supervisord's event listener (the node configures it): bangs the
    /// master when a watched service (etc/service) exits or fails.
    Watchdog(node_cmd::WatchdogArgs),
    /// Join a master with a one-time token: the computer's certificate and
    /// key, and a slapos.cfg that uses them.
    Register(identity_cmd::RegisterArgs),
}

/// The group SlapOS's `slapos --help` lists a command in.
fn group_of(top: &str, sub: Option<&str>) -> &'static str {
    match (top, sub) {
        ("node", _) => "node commands",
        ("cache" | "cachelookup", _) => "cachelookup commands",
        ("proxy" | "complete" | "help", _) | ("configure", Some("local")) => "other commands",
        _ => "client commands",
    }
}

/// Every command, by group, as SlapOS's (cliff's) `slapos --help` lists
/// them after the options: `node format`, `proxy start`…
fn command_groups(cmd: &clap::Command) -> String {
    let mut groups: std::collections::BTreeMap<&str, Vec<(String, String)>> = Default::default();
    // the first clause, on one line
    let about = |c: &clap::Command| {
        let text = c.get_about().map(|a| a.to_string()).unwrap_or_default();
        let end = text.find([';', '(', ':']).unwrap_or(text.len()).min(text.find(". ").unwrap_or(text.len()));
        let mut short = text[..end].trim_end_matches(['.', ',', ' ']).to_string();
        if short.chars().count() > 60 {
            short = short.chars().take(59).collect::<String>().trim_end().to_string() + "…";
        }
        short
    };
    for top in cmd.get_subcommands() {
        let subs: Vec<&clap::Command> = top.get_subcommands().filter(|c| c.get_name() != "help").collect();
        if subs.is_empty() {
            groups.entry(group_of(top.get_name(), None)).or_default().push((top.get_name().to_string(), about(top)));
        }
        for sub in subs {
            let name = format!("{} {}", top.get_name(), sub.get_name());
            groups.entry(group_of(top.get_name(), Some(sub.get_name()))).or_default().push((name, about(sub)));
        }
    }
    groups.entry("other commands").or_default().push(("help".into(), "Print the help of a command".into()));
    let mut out = String::new();
    for (group, mut commands) in groups {
        commands.sort();
        out.push_str(&format!("{group}:\n"));
        for (name, about) in commands {
            out.push_str(&format!("  {name:<14} {about}\n"));
        }
        out.push('\n');
    }
    out
}

fn main() -> ExitCode {
    let command = <Cli as clap::CommandFactory>::command();
    let groups = command_groups(&command);
    let parsed = command.after_help(groups).try_get_matches().and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                // SlapOS (cliff) exits 5 on an unknown command or option
                _ => 5,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if let Err(e) = logging::init(&cli.global) {
        eprintln!("slapos: {e:#}");
        return ExitCode::from(1);
    }
    let result = match cli.command {
        Command::Proxy(cmd) => proxy_cmd::run(cmd, &cli.global),
        Command::Node(cmd) => match cmd {
            NodeCommand::Format(args) => format_cmd::run(args, &cli.global),
            NodeCommand::Software(args) => node_cmd::software(args, &cli.global),
            NodeCommand::Instance(args) => node_cmd::instance(args, &cli.global),
            NodeCommand::Report(args) => node_cmd::report(args, &cli.global),
            NodeCommand::Promise(args) => node_cmd::promise(args, &cli.global),
            NodeCommand::Collect(args) => node_cmd::collect(args, &cli.global),
            NodeCommand::Prune(args) => node_cmd::prune(args, &cli.global),
            NodeCommand::Status(args) => node_cmd::supervisorctl(Some("status"), args, &cli.global),
            NodeCommand::Start(args) => node_cmd::supervisorctl(Some("start"), args, &cli.global),
            NodeCommand::Stop(args) => node_cmd::supervisorctl(Some("stop"), args, &cli.global),
            NodeCommand::Restart(args) => node_cmd::supervisorctl(Some("restart"), args, &cli.global),
            NodeCommand::Tail(args) => node_cmd::supervisorctl(Some("tail"), args, &cli.global),
            NodeCommand::Supervisorctl(args) => node_cmd::supervisorctl(None, args, &cli.global),
            NodeCommand::Supervisord(args) => node_cmd::supervisord(args, &cli.global),
            NodeCommand::Bang(args) => node_cmd::bang(args, &cli.global),
            NodeCommand::Boot(args) => node_cmd::boot(args, &cli.global),
            NodeCommand::Watchdog(args) => node_cmd::watchdog(args),
            NodeCommand::Register(args) => identity_cmd::register(&args),
        },
        Command::Client(cmd) => client_cmd::run(cmd, &cli.global),
        Command::Console(args) => console_cmd::run(args, &cli.global),
        Command::Complete(args) => complete(args),
        Command::Cache(cache_cmd::CacheCommand::Lookup(cmd)) | Command::Cachelookup(cmd) => cache_cmd::run(cmd, &cli.global),
        Command::User(cmd) => identity_cmd::user(&cmd, &cli.global),
        Command::Configure(cmd) => identity_cmd::configure(&cmd, &cli.global),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}
