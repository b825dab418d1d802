//! # slapos-grid — `slapos node software|instance|report|promise` (in progress)
//!
//! Will install software releases with the real zc.buildout, instantiate
//! computer partitions, run their services under the real supervisord,
//! check promises and report to the master (issue 6). So far: the files the
//! node writes for buildout and supervisord ([`templates`]).

pub mod templates;
