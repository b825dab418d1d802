//! Blocking HTTP client of a SLAP master.
