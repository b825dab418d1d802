//! # slapos-grid — `slapos node software|instance|report|promise|boot`
//!
//! Installs software releases with the real zc.buildout ([`software`]),
//! instantiates computer partitions in parallel ([`instance`]: decided,
//! then run, each in its own log span), runs their services under the
//! node's real supervisord ([`supervisor`]), checks promises
//! ([`promise`]), reports usage and destroys partitions ([`report`]),
//! samples usage into the node's history ([`collect`], from [`procstat`]
//! and [`cgroup`]),
//! bangs the master when a watched service fails ([`watchdog`]), boots
//! the node ([`boot`]), runs the managers of `manager_list` ([`manager`]:
//! `prerm`, `portredir`) and prunes unused shared parts ([`prune`]). The decisions are pure ([`decision`],
//! [`templates`], [`config`], [`names`]: the grammar of every outside
//! name); the effects are thin ([`fsafe`], [`process`], [`supervisor`]).
//! Runs return typed outcomes; exit codes are the program's.

#![warn(missing_docs)]

pub mod boot;
pub mod certificate;
pub mod cgroup;
pub mod collect;
pub mod config;
pub mod decision;
pub mod fsafe;
pub mod instance;
pub mod manager;
pub mod names;
pub mod networkcache;
pub mod node;
pub mod partition;
pub mod process;
pub mod procstat;
pub mod progress;
pub mod promise;
pub mod prune;
pub mod report;
pub mod software;
pub mod supervisor;
pub mod templates;
pub mod watchdog;
