//! `slapos node format`: prepare the node (users, addresses, partition
//! directories), save its state, report it to the master.

use std::path::PathBuf;

use slapos_config::{node_config_path, Config};
use slapos_format::apply::Mode;
use slapos_format::config::{FormatConfig, Overrides};

use crate::Global;

#[derive(Debug, clap::Args)]
pub struct FormatArgs {
    /// Start at once (SlapOS sleeps a random time first without it; we never
    /// do, the option is accepted for compatibility).
    #[arg(long)]
    pub now: bool,
    /// Print the plan and change nothing (not even the state file).
    #[arg(short = 'n', long = "dry_run", alias = "dry-run")]
    pub dry_run: bool,
    /// Report drift between the state file and the system (a lost address,
    /// a wrong mode, a missing user); exit 1 when there is any.
    #[arg(long, conflicts_with = "dry_run")]
    pub check: bool,
    /// With --dry_run or --check: print JSON.
    #[arg(long)]
    pub json: bool,
    /// Local mode, without root: partitions owned by the invoking user,
    /// loopback addresses, no user or network change.
    #[arg(long)]
    pub local: bool,
    /// The state file (xml_marshaller), overriding [slapformat] computer_xml.
    #[arg(short = 'x', long = "computer_xml", value_name = "FILE")]
    pub computer_xml: Option<PathBuf>,
    /// A JSON copy of the state, overriding [slapformat] computer_json.
    #[arg(long = "computer_json", value_name = "FILE")]
    pub computer_json: Option<PathBuf>,
    /// Take partitions, users and addresses from this computer definition
    /// file (INI: [computer], [partition_N]) instead of the state file.
    #[arg(short = 'i', long = "input_definition_file", value_name = "FILE")]
    pub input_definition_file: Option<PathBuf>,
    /// Write the computer definition (INI) to this file.
    #[arg(short = 'o', long = "output_definition_file", value_name = "FILE")]
    pub output_definition_file: Option<PathBuf>,
    /// Create and modify users and groups (True/False).
    #[arg(long = "alter_user", value_name = "True|False", value_parser = parse_bool)]
    pub alter_user: Option<bool>,
    /// Add addresses and routes (True/False).
    #[arg(long = "alter_network", value_name = "True|False", value_parser = parse_bool)]
    pub alter_network: Option<bool>,
    /// Obsolete SlapOS option, ignored.
    #[arg(short = 'c', long = "console", hide = true)]
    pub console: bool,
}

fn parse_bool(v: &str) -> Result<bool, String> {
    slapos_config::parse_bool(v).ok_or_else(|| format!("needs to be \"True\" or \"False\", wrong value: '{v}'"))
}

pub fn run(args: FormatArgs, global: &Global) -> anyhow::Result<u8> {
    let path = node_config_path(global.cfg.as_deref());
    let config = Config::load(&path)?;
    let overrides = Overrides {
        computer_xml: args.computer_xml,
        computer_json: args.computer_json,
        alter_user: args.alter_user,
        alter_network: args.alter_network,
        input_definition_file: args.input_definition_file,
        output_definition_file: args.output_definition_file,
        local: args.local,
    };
    let cfg = FormatConfig::from_config(&config, &overrides)?;
    let mode = if args.dry_run {
        Mode::DryRun
    } else if args.check {
        Mode::Check
    } else {
        Mode::Apply
    };
    if cfg.root_check && mode == Mode::Apply && !nix::unistd::geteuid().is_root() {
        eprintln!("This slapos command must be run as root (or use --local, or [slapos] root_check = false).");
        return Ok(5);
    }
    if mode != Mode::Apply {
        // the plan and the drift are printed by the format crate with
        // println!: a reader that goes away ends these read-only modes
        // quietly (default SIGPIPE) instead of a panic
        crate::output::die_quietly_on_sigpipe();
    }
    slapos_format::apply::run(&cfg, mode, args.json)
}
