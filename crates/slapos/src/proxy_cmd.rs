//! `slapos proxy start|show`: the local master.

use std::path::PathBuf;

use anyhow::Context;
use slapos_config::{node_config_path, Config};
use slapos_proxy::{AnyStore, Database, ProxyConfig};

use crate::Global;

#[derive(Debug, clap::Subcommand)]
pub enum ProxyCommand {
    /// Start the master: SLAP over HTTP for nodes and clients, on a SQLite
    /// file or a PostgreSQL database (several masters may share one). Reads [slapos] computer_id and [slapproxy] host, port,
    /// database_uri from the configuration; stops on SIGTERM/SIGINT.
    Start(StartArgs),
    /// Print what the master knows: computers, software releases,
    /// partitions, instances with their parameters and connection
    /// parameters, and what nodes reported.
    Show(ShowArgs),
    /// Copy a site from one database to another, empty one (SQLite to
    /// PostgreSQL or back), keeping every answer; stop the masters first.
    Migrate(MigrateArgs),
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The database to copy: a SQLite file (path or sqlite:PATH) or postgresql://…
    #[arg(long, value_name = "URI")]
    pub from: String,
    /// The empty database to copy into (created if needed).
    #[arg(long, value_name = "URI")]
    pub to: String,
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Address to listen on (default: [slapproxy] host, else 127.0.0.1).
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on (default: [slapproxy] port, else 8080).
    #[arg(long)]
    pub port: Option<u16>,
    /// SQLite database file (a path or sqlite:PATH) or PostgreSQL URI
    /// (postgresql://…) (default: [slapproxy] database_uri, else proxy.db
    /// next to the configuration file).
    #[arg(short = 'u', long = "database-uri", value_name = "URI")]
    pub database_uri: Option<String>,
    /// Root of local software releases (default: [slapproxy]
    /// local_software_release_root, else /): when it moves, software
    /// releases given as paths under the old root are rebased onto it.
    #[arg(long = "local-software-release-root", value_name = "DIR")]
    pub local_software_release_root: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Show computers (and usage reports). Without any of these section
    /// flags, every section is shown.
    #[arg(long)]
    pub computers: bool,
    /// Show software releases.
    #[arg(long)]
    pub software: bool,
    /// Show partitions (and forwarded requests, related instances).
    #[arg(long)]
    pub partitions: bool,
    /// Show shared (slave) instances.
    #[arg(long)]
    pub slaves: bool,
    /// Show instance and published (connection) parameters.
    #[arg(long)]
    pub params: bool,
    /// Show the addresses of the partitions in use.
    #[arg(long)]
    pub network: bool,
    /// SQLite database file or PostgreSQL URI (default: from the configuration).
    #[arg(short = 'u', long = "database-uri", value_name = "URI")]
    pub database_uri: Option<String>,
}

fn load(global: &Global) -> anyhow::Result<ProxyConfig> {
    let path = node_config_path(global.cfg.as_deref());
    let config = Config::load(&path)?;
    ProxyConfig::from_config(&config)
}

pub fn run(cmd: ProxyCommand, global: &Global) -> anyhow::Result<u8> {
    match cmd {
        ProxyCommand::Start(args) => {
            let mut config = load(global)?;
            if let Some(h) = args.host {
                config.host = h;
            }
            if let Some(p) = args.port {
                config.port = p;
            }
            if let Some(d) = args.database_uri {
                config.database = Database::parse(&d);
            }
            if let Some(r) = args.local_software_release_root {
                config.local_software_release_root = Some(r);
            }
            slapos_proxy::run(&config)?;
            Ok(0)
        }
        ProxyCommand::Migrate(args) => {
            let (from, to) = (Database::parse(&args.from), Database::parse(&args.to));
            let c = slapos_proxy::migrate::migrate(&from, &to)?;
            outln!(
                "copied {} computer(s), {} partition(s), {} software release(s), {} shared instance(s), {} address(es), {} report(s), {} usage report(s) from {} to {}",
                c.computers,
                c.partitions,
                c.software,
                c.shared,
                c.addresses,
                c.reports,
                c.usage,
                from.shown(),
                to.shown()
            );
            Ok(0)
        }
        ProxyCommand::Show(args) => {
            let database = match args.database_uri {
                Some(d) => Database::parse(&d),
                None => load(global)?.database,
            };
            let store =
                AnyStore::open_read_only(&database).with_context(|| format!("cannot read the master's database {}", database.shown()))?;
            let sections = slapos_proxy::show::Sections {
                computers: args.computers,
                software: args.software,
                partitions: args.partitions,
                slaves: args.slaves,
                params: args.params,
                network: args.network,
            }
            .or_all();
            let snapshot = slapos_proxy::show::filter(slapos_proxy::show::snapshot(&store)?, &sections);
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&snapshot)?);
            } else {
                out!("{}", slapos_proxy::show::render_sections(&snapshot, &sections));
            }
            Ok(0)
        }
    }
}
