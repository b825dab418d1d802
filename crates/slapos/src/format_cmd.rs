//! `slapos node format`.
use crate::Global;

#[derive(Debug, clap::Args)]
pub struct FormatArgs {}

pub fn run(_args: FormatArgs, _global: &Global) -> anyhow::Result<u8> {
    anyhow::bail!("slapos node format is not implemented yet")
}
