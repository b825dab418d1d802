//! # slapos-format — `slapos node format`
//!
//! Prepares a node: users and groups per partition, network, directories,
//! state files and the report to the master. Computes a plan first, then
//! applies it.
