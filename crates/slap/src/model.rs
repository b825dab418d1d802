//! Typed SLAP model.
