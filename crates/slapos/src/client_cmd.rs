//! Client commands: `slapos request|supply|remove|service|computer`.
use crate::Global;

#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Supply a software release to a computer.
    Supply,
}

pub fn run(cmd: ClientCommand, _global: &Global) -> anyhow::Result<u8> {
    match cmd {
        ClientCommand::Supply => anyhow::bail!("slapos supply is not implemented yet"),
    }
}
