//! `slapos console`.
use crate::Global;

#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {}

pub fn run(_args: ConsoleArgs, _global: &Global) -> anyhow::Result<u8> {
    anyhow::bail!("slapos console is not implemented yet")
}
