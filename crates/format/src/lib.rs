//! # slapos-format — `slapos node format`
//!
//! Prepares a node: users and groups per partition, addresses and routes,
//! partition directories with their owners and modes, the state file and
//! the report to the master. Computes a plan first ([`plan`], pure, tested
//! without root), then prints it (dry run), compares it (check) or applies
//! it ([`apply`]).
//!
//! Layers: [`config`] (slapos.cfg → validated [`config::FormatConfig`]),
//! [`addressing`] (SlapOS's address derivation), [`local_range`] (the
//! loopback range of a local node, free and claimed), [`definition`] (the INI
//! computer definition of `-i`/`-o`), [`state`] (the computer
//! dictionary: state files, resources, report), [`system`] (observe and
//! change the machine: commands, netlink), [`plan`], [`apply`].

#![warn(missing_docs)]

pub mod addressing;
pub mod apply;
pub mod config;
pub mod definition;
pub mod local_range;
pub mod plan;
pub mod state;
pub mod system;
