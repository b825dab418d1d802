//! # slapos-grid — `slapos node software|instance|report|promise` (in progress)
//!
//! Will install software releases with the real zc.buildout, instantiate
//! computer partitions, run their services under the real supervisord,
//! check promises and report to the master (issue 6). So far, the pure
//! parts: the node configuration ([`config`]), what to do with a partition
//! ([`decision`]), the files the node writes for buildout and
//! supervisord ([`templates`]), and legacy promises with their result files
//! ([`promise`]).

pub mod config;
pub mod decision;
pub mod instance;
pub mod node;
pub mod process;
pub mod progress;
pub mod promise;
pub mod report;
pub mod software;
pub mod supervisor;
pub mod templates;
