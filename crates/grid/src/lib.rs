//! # slapos-grid — `slapos node software|instance|report|promise`
//!
//! Installs software releases with the real zc.buildout, instantiates
//! computer partitions, runs their services under the real supervisord,
//! checks promises and reports to the master.
