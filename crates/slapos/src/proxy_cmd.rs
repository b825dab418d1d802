//! `slapos proxy start|show`.
use crate::Global;

#[derive(Debug, clap::Subcommand)]
pub enum ProxyCommand {
    /// Start the local master (SLAP on HTTP, SQLite storage).
    Start,
}

pub fn run(cmd: ProxyCommand, _global: &Global) -> anyhow::Result<u8> {
    match cmd {
        ProxyCommand::Start => anyhow::bail!("slapos proxy start is not implemented yet"),
    }
}
