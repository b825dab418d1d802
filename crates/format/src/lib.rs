//! # slapos-format — `slapos node format` (in progress)
//!
//! Prepares a node: users and groups per partition, network, directories,
//! state files and the report to the master, computing a plan first and
//! then applying it. So far: the address derivation of SlapOS
//! ([`addressing`]); the planner, the system probes and the command come
//! next (issue 5).

pub mod addressing;
pub mod config;
pub mod state;
pub mod system;
pub mod plan;
