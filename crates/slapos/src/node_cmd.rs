//! `slapos node software|instance|report|promise|status|start|stop|…`.
use crate::Global;

#[derive(Debug, clap::Subcommand)]
pub enum GridCommand {
    /// Install or remove the software releases supplied to this computer.
    Software,
}

pub fn run(cmd: GridCommand, _global: &Global) -> anyhow::Result<u8> {
    match cmd {
        GridCommand::Software => anyhow::bail!("slapos node software is not implemented yet"),
    }
}
