//! # slapos-proxy — a SlapOS master for one site
//!
//! The master behind `slapos proxy start`: the classic SLAP endpoints of
//! `slap-protocol.md` §4 with the semantics of §7, on SQLite.
