//! Client side of the HATEOAS API (`slap-protocol.md` §10) used by `slapos service|computer list|info`.
